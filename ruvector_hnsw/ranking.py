"""Retrieval and ranking quality metrics, vectorised over queries (numpy only).

This module sits at the bottom of the package (next to ``errors`` and ``_validation``) so that
``training`` and ``search`` can validate on mAP@R without importing ``eval``;
:mod:`ruvector_hnsw.eval.metrics` re-exports every public name.

Two different questions are measured here and they must not be confused:

**Approximate nearest-neighbour (ANN) quality** -- *did the index return the true nearest
neighbours?* :func:`ann_recall_at_k` computes recall@k exactly as ann-benchmarks does: the
distances of the returned items are *recomputed from the vectors* in the dataset metric, and a
returned item counts when its distance is ``<= d_k + 1e-3`` where ``d_k`` is the k-th true
distance.  Items tied with the k-th neighbour therefore count, and an index is not punished
for returning a different member of a tie.  The answer is a fraction of ``k``.

**Labelled (metric-learning) retrieval quality** -- *are the returned items of the query's
class?*  An item is *relevant* when its base label equals the query label; ``R`` is the
number of relevant base items of the query.  The functions take a boolean relevance matrix
``rel`` (nq, m) (rank order, column 0 is the best hit) and ``n_relevant`` (nq,), both
produced by :func:`relevance`:

- :func:`precision_at_k` -- P@k = (relevant in top k) / k; P@1 is ``precision_at_k(.., 1)``.
- :func:`r_precision` -- P@R.
- :func:`map_at_r` -- mAP@R (Musgrave, Belongie, Lim, *A Metric Learning Reality Check*,
  ECCV 2020): ``AP@R = (1/R) * sum_{i<=R} P@i * rel_i``; with ``cap=c`` R is replaced by
  ``min(R, c)`` (``map_at_100`` = ``cap=100``).
- :func:`mrr` -- mean reciprocal rank of the first relevant item (0 when none is returned).
- :func:`ndcg_at_k` -- binary-gain nDCG@k, ideal DCG over ``min(R, k)`` relevant items.
- :func:`hit_rate_at_k` (alias :func:`ml_recall_at_k`) -- the metric-learning "Recall@k"
  of the deep metric learning literature: 1 when *at least one* relevant item is in the
  top k, else 0.  **This is not ANN recall@k**: it asks "is any hit in the top k", not "what
  fraction of the k true nearest neighbours was found".  The two can differ wildly (an index
  returning k random members of the right class has hit rate 1 and ANN recall near 0).

Conventions shared by all labelled metrics:

- Padding ids ``-1`` (fewer results than asked) are never relevant.  Missing ranks (a
  result list shorter than the cut-off) count as non-relevant, so a truncated list gives a
  lower bound, never an inflated value.
- Queries with ``R = 0`` (their label occurs nowhere in the base) are **excluded** from the
  means: no ranking can be judged for them.  Their per-query value is NaN; a mean over no
  valid query is NaN.
- Every function returns the mean over valid queries as a python ``float``, or with
  ``per_query=True`` the float64 array of per-query values.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from ruvector_hnsw._validation import METRIC_ALIASES
from ruvector_hnsw.errors import (
    ConfigError,
    EmptyInputError,
    InvalidDTypeError,
    InvalidInputError,
    NonFiniteError,
    ShapeMismatchError,
)

__all__ = [
    "ANN_RECALL_EPSILON",
    "METRICS_ALIASES",
    "ann_recall_at_k",
    "check_k",
    "hit_rate_at_k",
    "labelled_metrics",
    "map_at_r",
    "metric_distances",
    "ml_recall_at_k",
    "mrr",
    "ndcg_at_k",
    "precision_at_k",
    "r_precision",
    "relevance",
]

#: Accepted spellings of the three metrics.
METRICS_ALIASES: dict[str, str] = METRIC_ALIASES

ANN_RECALL_EPSILON = 1e-3

FloatArray = npt.NDArray[np.float64]


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------


def _ids_2d(ids: Any, name: str = "ids") -> npt.NDArray[np.int64]:
    arr = np.asarray(ids)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ShapeMismatchError(f"{name} must be a 2-D array (n_queries, n_results), got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        integral = np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr))
        if integral and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise InvalidDTypeError(f"{name} must hold integer ids, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _vectors(x: Any, name: str) -> npt.NDArray[np.float64]:
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiub":
        raise InvalidDTypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ShapeMismatchError(f"{name} must be 2-D (n, dim), got shape {arr.shape}")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise NonFiniteError(f"{name} holds NaN or infinity")
    return arr


def _normalise_metric(metric: str) -> str:
    key = METRICS_ALIASES.get(str(metric).lower())
    if key is None:
        raise ConfigError(f"unknown metric {metric!r}; expected one of 'l2', 'ip', 'cosine'")
    return key


def check_k(k: Any, name: str = "k") -> int:
    """Return ``k`` as an int if it is a positive integer, else raise :class:`ConfigError`."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or int(k) <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {k!r}")
    return int(k)


def _reduce(values: Any, valid: npt.NDArray[np.bool_], per_query: bool) -> float | FloatArray:
    values = np.asarray(values, dtype=np.float64)
    out = np.where(valid, values, np.nan)
    if per_query:
        return out
    if not np.any(valid):
        return float("nan")
    return float(np.mean(values[valid]))


def _rel_and_r(rel: Any, n_relevant: Any) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.int64]]:
    r = np.asarray(rel)
    if r.ndim == 1:
        r = r[:, None]
    if r.ndim != 2:
        raise ShapeMismatchError(f"rel must be 2-D (n_queries, n_results), got shape {r.shape}")
    if r.dtype != np.bool_:
        if r.size and not np.all((r == 0) | (r == 1)):
            raise InvalidInputError("rel must be boolean (or 0/1)")
        r = r.astype(bool)
    n = np.asarray(n_relevant)
    if n.ndim != 1 or n.shape[0] != r.shape[0]:
        raise ShapeMismatchError(
            f"n_relevant must have shape ({r.shape[0]},) to match rel {r.shape}, got {n.shape}"
        )
    if n.size and (not np.issubdtype(n.dtype, np.integer) or np.any(n < 0)):
        raise InvalidInputError("n_relevant must hold non-negative integers")
    n = n.astype(np.int64, copy=False)
    # a query cannot have more relevant results in its list than relevant items overall
    if r.size and np.any(r.sum(axis=1) > n):
        raise InvalidInputError("rel marks more relevant results than n_relevant allows for some query")
    return r, n


# --------------------------------------------------------------------------------------------
# ANN recall (ann-benchmarks)
# --------------------------------------------------------------------------------------------


def metric_distances(
    queries: Any, base: Any, ids: Any, metric: str, *, block: int = 4096
) -> npt.NDArray[np.float64]:
    """Distances from each query to the base rows it lists, in the dataset metric.

    The scales follow ann-benchmarks, which the 1e-3 tie tolerance of :func:`ann_recall_at_k`
    was designed for: ``l2`` -> Euclidean distance (not squared), ``cosine`` -> ``1 - cos``,
    ``ip`` -> ``1 - dot`` (hnswlib's inner-product distance).

    Parameters
    ----------
    queries : array_like, shape (nq, d)
    base : array_like, shape (N, d)
    ids : array_like of int, shape (nq, m)
        Base row indices; ``-1`` (padding) gives distance ``+inf``.
    metric : {"l2", "ip", "cosine"}
    block : int
        Queries processed per block (bounds memory to ``block * m * d`` floats).

    Returns
    -------
    numpy.ndarray of float64, shape (nq, m)
    """
    metric = _normalise_metric(metric)
    q = _vectors(queries, "queries")
    b = np.asarray(base)
    if b.ndim != 2:
        raise ShapeMismatchError(f"base must be 2-D (n, dim), got shape {b.shape}")
    if b.shape[1] != q.shape[1]:
        raise ShapeMismatchError(f"queries have dim {q.shape[1]} but base has dim {b.shape[1]}")
    idx = _ids_2d(ids)
    if idx.shape[0] != q.shape[0]:
        raise ShapeMismatchError(f"ids has {idx.shape[0]} rows but there are {q.shape[0]} queries")
    if idx.size and (idx.max() >= b.shape[0] or idx.min() < -1):
        raise InvalidInputError(f"ids must lie in [-1, {b.shape[0]}), got range [{idx.min()}, {idx.max()}]")
    out = np.full(idx.shape, np.inf, dtype=np.float64)
    for s in range(0, q.shape[0], max(1, int(block))):
        qi = q[s : s + block]
        ii = idx[s : s + block]
        valid = ii >= 0
        vec = np.asarray(b[np.where(valid, ii, 0)], dtype=np.float64)  # (bq, m, d)
        if metric == "l2":
            diff = vec - qi[:, None, :]
            d = np.sqrt(np.einsum("qmd,qmd->qm", diff, diff))
        elif metric == "ip":
            d = 1.0 - np.einsum("qmd,qd->qm", vec, qi)
        else:
            qn = np.linalg.norm(qi, axis=1)[:, None]
            vn = np.linalg.norm(vec, axis=2)
            denom = np.maximum(qn * vn, 1e-30)
            d = 1.0 - np.einsum("qmd,qd->qm", vec, qi) / denom
        out[s : s + block] = np.where(valid, d, np.inf)
    return out


def ann_recall_at_k(
    ids: Any,
    neighbors: Any,
    *,
    queries: Any,
    base: Any,
    metric: str,
    k: int = 10,
    epsilon: float = ANN_RECALL_EPSILON,
    per_query: bool = False,
) -> float | FloatArray:
    """ANN recall@k with ann-benchmarks' tie rule.

    For query ``i`` let ``t_i = D_i[k-1] + epsilon`` where ``D_i`` are the distances of the
    true neighbours ``neighbors[i, :k]`` recomputed from the vectors (sorted ascending).
    Recall is ``#{j < k : dist(q_i, base[ids[i, j]]) <= t_i} / k`` with the returned
    distances also recomputed from the vectors (a method's own distance output is not
    trusted: it may live in a transformed space).  Padding ``-1`` never counts.  As in
    ann-benchmarks, the returned list is not de-duplicated.

    Parameters
    ----------
    ids : array_like of int, shape (nq, m), m >= k preferred
        Returned base row indices in rank order (only the first k are judged; fewer than k
        columns count as misses).
    neighbors : array_like of int, shape (nq, >= k)
        True nearest neighbours (base row indices), nearest first.
    queries, base : array_like
        The vectors, to recompute distances.
    metric : {"l2", "ip", "cosine"}
        Distance scale as in :func:`metric_distances` (Euclidean for ``l2``).
    k : int
    epsilon : float
        Additive tie tolerance (1e-3 in ann-benchmarks).
    per_query : bool
        Return the per-query recall array instead of the mean.

    Returns
    -------
    float or numpy.ndarray
    """
    k = check_k(k)
    idx = _ids_2d(ids)
    gt = _ids_2d(neighbors, "neighbors")
    if idx.shape[0] != gt.shape[0]:
        raise ShapeMismatchError(f"ids has {idx.shape[0]} rows but neighbors has {gt.shape[0]}")
    if idx.shape[0] == 0:
        raise EmptyInputError("no queries to evaluate")
    if gt.shape[1] < k:
        raise InvalidInputError(f"neighbors has {gt.shape[1]} columns, fewer than k={k}")
    if np.any(gt[:, :k] < 0):
        raise InvalidInputError("neighbors holds -1 within the first k columns (incomplete ground truth)")
    true_d = metric_distances(queries, base, gt[:, :k], metric)
    thresh = np.sort(true_d, axis=1)[:, k - 1] + float(epsilon)
    top = idx[:, :k]
    run_d = metric_distances(queries, base, top, metric)
    hits = (run_d <= thresh[:, None]).sum(axis=1).astype(np.float64) / k
    return _reduce(hits, np.ones(hits.shape[0], dtype=bool), per_query)


# --------------------------------------------------------------------------------------------
# labelled retrieval
# --------------------------------------------------------------------------------------------


def relevance(
    ids: Any, base_labels: Any, query_labels: Any
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.int64]]:
    """Relevance matrix and relevant-set sizes for labelled retrieval.

    Parameters
    ----------
    ids : array_like of int, shape (nq, m)
        Returned base row indices in rank order; ``-1`` marks padding.
    base_labels : array_like, shape (N,)
    query_labels : array_like, shape (nq,)

    Returns
    -------
    rel : numpy.ndarray of bool, shape (nq, m)
        ``rel[i, j]`` is True when ``ids[i, j] >= 0``, its label equals the query's, and the
        id did not already occur earlier in the row (repeats earn no credit).
    n_relevant : numpy.ndarray of int64, shape (nq,)
        ``R`` per query: the number of base items sharing the query label (0 possible).
    """
    idx = _ids_2d(ids)
    bl = np.asarray(base_labels)
    ql = np.asarray(query_labels)
    if bl.ndim != 1 or ql.ndim != 1:
        raise ShapeMismatchError("base_labels and query_labels must be 1-D")
    if ql.shape[0] != idx.shape[0]:
        raise ShapeMismatchError(f"query_labels has {ql.shape[0]} entries but ids has {idx.shape[0]} rows")
    if idx.size and (idx.max() >= bl.shape[0] or idx.min() < -1):
        raise InvalidInputError(f"ids must lie in [-1, {bl.shape[0]}), got range [{idx.min()}, {idx.max()}]")
    uniq, inv, counts = np.unique(bl, return_inverse=True, return_counts=True)
    pos = np.searchsorted(uniq, ql)
    pos_c = np.clip(pos, 0, max(len(uniq) - 1, 0))
    found = (pos < len(uniq)) & (uniq[pos_c] == ql) if len(uniq) else np.zeros(ql.shape, dtype=bool)
    n_rel = np.where(found, counts[pos_c] if len(uniq) else 0, 0).astype(np.int64)
    # compare label codes (ints) instead of raw labels: works for any label dtype
    q_code = np.where(found, pos_c, -1)
    b_code = inv.reshape(-1)
    valid = idx >= 0
    rel = valid & (b_code[np.where(valid, idx, 0)] == q_code[:, None])
    # a repeated id is relevant only at its first occurrence (a list cannot earn credit twice)
    if idx.shape[1] > 1:
        order = np.argsort(idx, axis=1, kind="stable")
        srt = np.take_along_axis(idx, order, axis=1)
        dup_sorted = np.zeros(idx.shape, dtype=bool)
        dup_sorted[:, 1:] = (srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)
        dup = np.zeros(idx.shape, dtype=bool)
        np.put_along_axis(dup, order, dup_sorted, axis=1)
        rel &= ~dup
    return rel, n_rel


def precision_at_k(rel: Any, n_relevant: Any, k: int, *, per_query: bool = False) -> float | FloatArray:
    """P@k = (number of relevant items among the first k) / k.

    Missing ranks (fewer than k columns) count as non-relevant.  P@1 is ``k=1``.
    """
    k = check_k(k)
    r, n = _rel_and_r(rel, n_relevant)
    vals = r[:, :k].sum(axis=1) / float(k)
    return _reduce(vals, n > 0, per_query)


def r_precision(rel: Any, n_relevant: Any, *, per_query: bool = False) -> float | FloatArray:
    """R-precision: P@R with ``R`` the query's number of relevant base items."""
    r, n = _rel_and_r(rel, n_relevant)
    cols = np.arange(r.shape[1])[None, :]
    hits = (r & (cols < n[:, None])).sum(axis=1)
    vals = hits / np.maximum(n, 1)
    return _reduce(vals, n > 0, per_query)


def map_at_r(
    rel: Any, n_relevant: Any, *, cap: int | None = None, per_query: bool = False
) -> float | FloatArray:
    """mAP@R (Musgrave et al. 2020).

    ``AP@R = (1/R) * sum_{i=1..R} P@i * rel_i`` where ``P@i`` is the precision of the first
    ``i`` results.  With ``cap`` given, ``R`` is replaced by ``min(R, cap)`` in both the
    cut-off and the normaliser (``cap=100`` gives ``map_at_100``), which keeps the metric
    meaningful for classes with thousands of members.

    Ranks beyond the returned list count as non-relevant: if fewer than ``R`` results were
    returned the value is a lower bound.
    """
    r, n = _rel_and_r(rel, n_relevant)
    if cap is not None:
        cap = check_k(cap, "cap")
        n_eff = np.minimum(n, cap)
    else:
        n_eff = n
    rf = r.astype(np.float64)
    ranks = np.arange(1, r.shape[1] + 1, dtype=np.float64)[None, :]
    prec = np.cumsum(rf, axis=1) / ranks
    within = ranks <= n_eff[:, None]
    vals = (prec * rf * within).sum(axis=1) / np.maximum(n_eff, 1)
    return _reduce(vals, n > 0, per_query)


def mrr(rel: Any, n_relevant: Any, *, k: int | None = None, per_query: bool = False) -> float | FloatArray:
    """Mean reciprocal rank of the first relevant result (0 when none in the first ``k``).

    ``k=None`` uses the whole returned list.
    """
    r, n = _rel_and_r(rel, n_relevant)
    if k is not None:
        r = r[:, : check_k(k)]
    any_hit = r.any(axis=1)
    first = np.argmax(r, axis=1)
    vals = np.where(any_hit, 1.0 / (first + 1.0), 0.0)
    return _reduce(vals, n > 0, per_query)


def ndcg_at_k(rel: Any, n_relevant: Any, k: int, *, per_query: bool = False) -> float | FloatArray:
    """Binary-gain nDCG@k.

    ``DCG = sum_{i=1..k} rel_i / log2(i + 1)``; the ideal DCG places ``min(R, k)`` relevant
    items first.
    """
    k = check_k(k)
    r, n = _rel_and_r(rel, n_relevant)
    rk = r[:, :k].astype(np.float64)
    disc = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))
    dcg = (rk * disc[None, : rk.shape[1]]).sum(axis=1)
    ideal_cum = np.concatenate([[0.0], np.cumsum(disc)])
    idcg = ideal_cum[np.minimum(n, k)]
    vals = dcg / np.where(idcg > 0, idcg, 1.0)
    return _reduce(vals, n > 0, per_query)


def hit_rate_at_k(rel: Any, n_relevant: Any, k: int, *, per_query: bool = False) -> float | FloatArray:
    """Metric-learning "Recall@k": 1 if any of the first k results is relevant, else 0.

    Not to be confused with :func:`ann_recall_at_k` (fraction of the true k nearest
    neighbours found).
    """
    k = check_k(k)
    r, n = _rel_and_r(rel, n_relevant)
    vals = r[:, :k].any(axis=1).astype(np.float64)
    return _reduce(vals, n > 0, per_query)


#: Alias of :func:`hit_rate_at_k` under the name used in metric-learning papers.
ml_recall_at_k = hit_rate_at_k


def labelled_metrics(
    ids: Any, base_labels: Any, query_labels: Any, *, k: int = 10, cap: int = 100
) -> dict[str, float | int]:
    """All labelled metrics of one result list, as a flat dict.

    Keys: ``map_at_r``, ``map_at_{cap}``, ``p_at_1``, ``p_at_{k}``, ``r_precision``, ``mrr``
    (whole list), ``ndcg_at_{k}``, ``hit_rate_at_{k}``, ``n_valid_queries`` (queries with
    R > 0) and ``n_excluded_queries`` (R = 0, excluded from every mean).
    """
    rel, n = relevance(ids, base_labels, query_labels)
    out: dict[str, float | int] = {
        "map_at_r": float(map_at_r(rel, n)),
        f"map_at_{cap}": float(map_at_r(rel, n, cap=cap)),
        "p_at_1": float(precision_at_k(rel, n, 1)),
        f"p_at_{k}": float(precision_at_k(rel, n, k)),
        "r_precision": float(r_precision(rel, n)),
        "mrr": float(mrr(rel, n)),
        f"ndcg_at_{k}": float(ndcg_at_k(rel, n, k)),
        f"hit_rate_at_{k}": float(hit_rate_at_k(rel, n, k)),
        "n_valid_queries": int(np.count_nonzero(n > 0)),
        "n_excluded_queries": int(np.count_nonzero(n == 0)),
    }
    return out
