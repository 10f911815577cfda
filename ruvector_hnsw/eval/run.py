"""Evaluation runs: quality, throughput and latency of several methods on one dataset.

:func:`evaluate` follows the protocol of DESIGN.md section 6:

1. **Result-list length.**  ANN recall needs ``k`` results; labelled metrics need ``R`` ranks
   (mAP@R, R-precision), ``R`` = relevant base items of the query.  Each method is therefore
   asked once for ``search_k = max(k, 10, min(max R, max_results))`` results, where
   ``max_results`` defaults to ``len(base)`` (i.e. no cap).  For classes with thousands of
   members pass a smaller ``max_results``: metrics then treat ranks beyond the list as
   non-relevant (a lower bound) and the result row says ``"r_truncated": true``.
   ``map_at_100`` only needs ``min(R, 100)`` ranks and stays exact whenever
   ``max_results >= 100``.
2. **Warm-up** (untimed): one call on the first few queries with the same ``k``, so numba
   JIT compilation and thread-pool start-up are excluded.
3. **Quality call**: one batch over all queries at ``search_k``.
4. **QPS**: timed batches over all queries at ``k`` (the operating point users run); the
   reported ``qps`` is the best of ``qps_repeats`` (default 3) such calls, which filters out
   interference from other processes on a shared machine.  ``qps_search_k`` reports the
   throughput of the (single) quality call as well.
5. **Latency**: p50/p95/p99 over ``latency_queries`` (default 200, or all queries if fewer)
   single-query calls at ``k``.
6. **Threads**: each row states the thread count the method searches with (its
   ``threads`` attribute; for a plain callable, the CPUs available to the process).

All labelled metrics (mAP@R, P@1, nDCG@10, ...) are computed on the long list of the
quality call (so a cheaper ``ef`` of HNSW does not show there: the long call searches with
``ef >= search_k``; compare ``ef`` settings by ANN recall).  ANN recall (``recall_at_k``,
and ``recall_at_10`` when ``k >= 10``) is computed on the results of the first timed call
at ``k`` -- the operating point whose QPS is reported (for HNSW a call with ``k = R``
searches with ``ef >= R`` and would flatter recall).

Labelled metrics are ``None`` on datasets without labels; ``recall_at_10`` (ANN recall,
ann-benchmarks' tie rule) is ``None`` where the dataset has no ground-truth ``neighbors``
(or fewer than 10 columns) unless ``compute_ground_truth=True`` asks for an exact FAISS
search to make them.  Queries with ``R = 0`` are excluded from labelled means
(``n_excluded_queries`` counts them).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from ruvector_hnsw.errors import (
    ConfigError,
    DimensionMismatchError,
    EmptyInputError,
    InvalidInputError,
    ShapeMismatchError,
)
from ruvector_hnsw.eval import metrics as M
from ruvector_hnsw.eval.timing import available_threads, measure_latency, measure_qps, warm_up

__all__ = ["RESULT_KEYS", "check_dataset", "dataset_info", "dataset_labels", "evaluate", "ground_truth"]

#: Keys present in every result row (values may be None where a metric does not apply).
RESULT_KEYS: tuple[str, ...] = (
    "method",
    "map_at_r",
    "map_at_100",
    "p_at_1",
    "p_at_10",
    "r_precision",
    "mrr",
    "ndcg_at_10",
    "hit_rate_at_10",
    "recall_at_10",
    "qps",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "mean_ms",
    "threads",
    "n_queries",
    "k",
    "search_k",
    "r_max",
    "r_truncated",
    "n_excluded_queries",
    "latency_queries",
    "qps_search_k",
    "params",
)

_LABELLED_KEYS = ("map_at_r", "map_at_100", "p_at_1", "p_at_10", "r_precision", "mrr", "ndcg_at_10",
                  "hit_rate_at_10")


def _labels(ds: Any) -> tuple[npt.NDArray[Any] | None, npt.NDArray[Any] | None]:
    bl = getattr(ds, "base_labels", None)
    ql = getattr(ds, "query_labels", None)
    if bl is None or ql is None:
        return None, None
    return np.asarray(bl).reshape(-1), np.asarray(ql).reshape(-1)


def dataset_info(dataset: Any) -> dict[str, Any]:
    """JSON-able summary of a dataset: name, metric, sizes, labels, ground truth.

    Keys ``name``, ``metric``, ``n_base``, ``n_queries``, ``dim``, ``labelled``, ``n_classes``,
    ``ground_truth_k`` always; the dataset's own ``describe()`` dict (or ``info``/``params``
    mapping attribute) is merged in for anything else it reports.
    """
    base = np.asarray(dataset.base)
    queries = np.asarray(dataset.queries)
    bl, _ = _labels(dataset)
    nb = getattr(dataset, "neighbors", None)
    out: dict[str, Any] = {
        "name": str(getattr(dataset, "name", "unnamed")),
        "metric": str(getattr(dataset, "metric", "")),
        "n_base": int(base.shape[0]),
        "n_queries": int(queries.shape[0]),
        "dim": int(base.shape[1]) if base.ndim == 2 else None,
        "labelled": bl is not None,
        "n_classes": int(np.unique(bl).shape[0]) if bl is not None else None,
        "ground_truth_k": int(np.asarray(nb).shape[1]) if nb is not None else None,
    }
    describe = getattr(dataset, "describe", None)
    if callable(describe):
        extras: list[Any] = [describe()]
    else:
        extras = [getattr(dataset, attr, None) for attr in ("info", "params")]
    for extra in extras:
        if isinstance(extra, Mapping):
            for key, val in extra.items():
                out.setdefault(str(key), val)
    return out


def _check_dataset(ds: Any) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], str]:
    for attr in ("base", "queries", "metric"):
        if not hasattr(ds, attr):
            raise InvalidInputError(f"dataset has no attribute {attr!r}")
    base = np.asarray(ds.base)
    queries = np.ascontiguousarray(ds.queries, dtype=np.float32)
    if base.ndim != 2 or queries.ndim != 2:
        raise ShapeMismatchError(f"base {base.shape} and queries {queries.shape} must be 2-D")
    if base.shape[0] == 0 or queries.shape[0] == 0:
        raise EmptyInputError("dataset has no base vectors or no queries")
    if base.shape[1] != queries.shape[1]:
        raise DimensionMismatchError(f"queries have dim {queries.shape[1]} but base has dim {base.shape[1]}")
    metric = M.METRICS_ALIASES.get(str(ds.metric).lower())
    if metric is None:
        raise ConfigError(f"dataset metric {ds.metric!r} is not one of 'l2', 'ip', 'cosine'")
    bl, ql = _labels(ds)
    if bl is not None and ql is not None:
        if bl.shape[0] != base.shape[0] or ql.shape[0] != queries.shape[0]:
            raise ShapeMismatchError(
                f"labels do not match: {bl.shape[0]} base labels for {base.shape[0]} base rows, "
                f"{ql.shape[0]} query labels for {queries.shape[0]} queries"
            )
    return base, queries, metric


def _check_result(name: str, res: Any, nq: int) -> npt.NDArray[np.int64]:
    if not isinstance(res, tuple) or len(res) != 2:
        raise InvalidInputError(f"method {name!r} must return (ids, dists), got {type(res).__name__}")
    ids = np.asarray(res[0])
    if ids.ndim != 2 or ids.shape[0] != nq:
        raise ShapeMismatchError(f"method {name!r} returned ids of shape {ids.shape}, expected ({nq}, k)")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise InvalidInputError(f"method {name!r} returned non-integer ids (dtype {ids.dtype})")
    return ids.astype(np.int64, copy=False)


def _ground_truth(ds: Any, k: int, compute: bool) -> npt.NDArray[np.int64] | None:
    nb = getattr(ds, "neighbors", None)
    if nb is not None:
        arr = np.asarray(nb)
        if arr.ndim != 2:
            raise ShapeMismatchError(f"neighbors must be 2-D (n_queries, k), got shape {arr.shape}")
        return arr.astype(np.int64, copy=False)
    if not compute:
        return None
    from ruvector_hnsw.eval.methods import make_exact

    ids, _ = make_exact(ds)(np.ascontiguousarray(ds.queries, dtype=np.float32), k)
    return ids


def evaluate(
    dataset: Any,
    methods: Mapping[str, Callable[..., Any]] | Sequence[Any],
    k: int = 10,
    *,
    max_results: int | None = None,
    qps_repeats: int = 3,
    latency_queries: int = 200,
    warmup_queries: int = 8,
    compute_ground_truth: bool = False,
    seed: int = 0,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Measure quality, QPS and latency of each method on ``dataset``.

    Parameters
    ----------
    dataset : object
        Duck-typed: ``base`` (N, d), ``queries`` (nq, d), ``metric`` ("l2" | "ip" |
        "cosine"), optional ``base_labels``/``query_labels`` (None when unlabelled),
        ``neighbors`` (nq, >= k) ground-truth base rows or None, ``name``.
    methods : mapping or sequence
        Name -> callable ``search(queries, k) -> (ids, dists)``; ids are base row indices,
        ``-1`` padded.  A ``threads`` attribute and a ``params`` dict on the callable are
        reported when present (the :class:`~ruvector_hnsw.eval.methods.SearchMethod` objects
        have them).  A sequence of callables with a ``name`` attribute is accepted too.
    k : int
        Cut-off of ANN recall and the operating point timed for QPS/latency.
    max_results : int, optional
        Cap on the result-list length asked for labelled metrics (default ``len(base)``,
        i.e. max R).  See the module docstring.
    qps_repeats : int
        Timed batch calls at ``k``; ``qps`` is the best of them.
    latency_queries : int
        Single-query calls for the latency percentiles (0 skips them: values None).
    warmup_queries : int
        Queries in the untimed warm-up call.
    compute_ground_truth : bool
        If the dataset has no ``neighbors``, compute them with an exact FAISS search so
        ``recall_at_10`` is reported.
    seed : int
        Seed of the latency subset.
    progress : bool
        Show a tqdm progress bar over methods (silently off without tqdm).

    Returns
    -------
    list of dict
        One row per method with the keys of :data:`RESULT_KEYS` (plus ``p_at_{k}``,
        ``ndcg_at_{k}``, ``hit_rate_at_{k}``, ``recall_at_{k}`` when ``k != 10``).
    """
    k = M.check_k(k)
    qps_repeats = M.check_k(qps_repeats, "qps_repeats")
    if not isinstance(methods, Mapping):
        seq = list(methods)
        if not all(hasattr(m, "name") for m in seq):
            raise ConfigError("methods given as a sequence need a 'name' attribute; pass a dict instead")
        methods = {str(m.name): m for m in seq}
        if len(methods) != len(seq):
            raise ConfigError("method names are not unique")
    if not methods:
        raise ConfigError("no methods to evaluate")
    if max_results is not None:
        max_results = M.check_k(max_results, "max_results")
    base, queries, metric = _check_dataset(dataset)
    nq, nb = queries.shape[0], base.shape[0]
    bl, ql = _labels(dataset)
    labelled = bl is not None and ql is not None

    r_max = 0
    if labelled:
        assert bl is not None and ql is not None
        _, n_rel = M.relevance(np.zeros((nq, 0), dtype=np.int64), bl, ql)
        r_max = int(n_rel.max()) if n_rel.size else 0
    cap = max_results if max_results is not None else nb
    search_k = max(k, 10, min(r_max, cap))
    r_truncated = labelled and search_k < r_max

    recall_ks = sorted({10, k})
    gt = _ground_truth(dataset, max(recall_ks), compute_ground_truth)
    if gt is not None and gt.shape[0] != nq:
        raise ShapeMismatchError(f"neighbors has {gt.shape[0]} rows but there are {nq} queries")

    items = list(methods.items())
    iterator: Any = items
    if progress:
        try:
            from tqdm.auto import tqdm

            iterator = tqdm(items, desc="eval", unit="method")
        except ImportError:  # pragma: no cover - optional
            pass

    rows: list[dict[str, Any]] = []
    for name, fn in iterator:
        t_start = time.perf_counter()
        warm_up(fn, queries, search_k, warmup_queries)
        qps_s, _, res = measure_qps(fn, queries, search_k)
        ids = _check_result(name, res, nq)
        if search_k != k:
            warm_up(fn, queries, k, warmup_queries)
        timed = [measure_qps(fn, queries, k) for _ in range(qps_repeats)]
        qps = max(t[0] for t in timed)
        ids_k = _check_result(name, timed[0][2], nq)
        lat: dict[str, Any]
        if latency_queries > 0:
            lat = measure_latency(fn, queries, k, latency_queries, seed=seed)
        else:
            lat = {"p50_ms": None, "p95_ms": None, "p99_ms": None, "mean_ms": None, "latency_queries": 0}

        row: dict[str, Any] = {"method": str(name)}
        if labelled:
            lm = M.labelled_metrics(ids, bl, ql, k=10, cap=100)
            row.update({key: lm[key] for key in _LABELLED_KEYS})
            row["n_excluded_queries"] = lm["n_excluded_queries"]
            if k != 10:
                rel, n_rel = M.relevance(ids, bl, ql)
                row[f"p_at_{k}"] = float(M.precision_at_k(rel, n_rel, k))
                row[f"ndcg_at_{k}"] = float(M.ndcg_at_k(rel, n_rel, k))
                row[f"hit_rate_at_{k}"] = float(M.hit_rate_at_k(rel, n_rel, k))
        else:
            row.update(dict.fromkeys(_LABELLED_KEYS))
            row["n_excluded_queries"] = None
        for kk in recall_ks:
            # ANN recall is judged at the timed operating point (k results), not on the long
            # list: for HNSW a k=R call searches with ef >= R and would flatter recall
            src = ids_k if kk <= k else ids
            if gt is not None and gt.shape[1] >= kk and src.shape[1] > 0:
                row[f"recall_at_{kk}"] = float(
                    M.ann_recall_at_k(src, gt, queries=queries, base=base, metric=metric, k=kk)
                )
            else:
                row[f"recall_at_{kk}"] = None
        threads = getattr(fn, "threads", None)
        row.update(
            {
                "qps": float(qps),
                **lat,
                "threads": int(threads) if threads is not None else available_threads(),
                "n_queries": int(nq),
                "k": int(k),
                "search_k": int(search_k),
                "r_max": int(r_max) if labelled else None,
                "r_truncated": bool(r_truncated),
                "qps_search_k": float(qps_s),
                "params": dict(getattr(fn, "params", {}) or {}),
                "eval_seconds": time.perf_counter() - t_start,
            }
        )
        rows.append({key: row.get(key) for key in RESULT_KEYS} | row)
    return rows


#: the validation and look-ups of :func:`evaluate`, for runners that split its work (``ruvector_hnsw.distributed``)
check_dataset = _check_dataset
dataset_labels = _labels
ground_truth = _ground_truth
