"""Contrastive losses with analytic gradients.

Calling convention (every loss)
-------------------------------
A loss takes **one differentiable array** (a score matrix ``S`` (B,C), a distance
matrix, or node embeddings ``Z`` (N,d)) plus non-differentiable structure (masks, index
lists, graphs) and keyword hyper-parameters, and returns ``(loss, grad)``:
``loss`` is a Python ``float`` and ``grad`` has the shape and dtype of the
differentiable input. Scores are "higher = more similar".

Reduction: every loss is a **mean over the rows (anchors) that have at least one
positive** (and, for the triplet loss, at least one negative); rows without any are
ignored and receive a zero gradient. When no row qualifies the loss is ``0.0`` with an
all-zero gradient. ``reduction="sum"`` sums over the same rows instead.

Scores from embeddings: :class:`DotSimilarity` and :class:`CosineSimilarity` follow the
attention protocol (``forward`` then ``backward(grad_scores)`` -> dict of input grads), so
``dL/dq`` is ``sim.backward(info_nce(sim.forward(q, c), pos)[1])["query"]``.

float64 inputs are computed in float64 (the finite-difference test path); float32 inputs
are computed in float64 internally and the gradient is returned as float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ruvector_hnsw.errors import ConfigError, InvalidInputError, ShapeMismatchError
from ruvector_hnsw.training import _kernels
from ruvector_hnsw.training._validate import (
    as_bool_matrix,
    as_float,
    as_float_table,
    as_id_array,
    check_csr,
    check_finite_rows,
    check_positive,
)

__all__ = [
    "CosineSimilarity",
    "DotSimilarity",
    "RowGrad",
    "columns_to_mask",
    "ids_to_mask",
    "info_nce",
    "local_contrastive",
    "sample_non_neighbors",
    "triplet",
]


# ----------------------------------------------------------------------------- masks


def columns_to_mask(columns: Any, n_columns: int) -> np.ndarray:
    """Turn per-row column index lists (B,p) (``-1`` = padding) into a (B, n_columns) bool mask.

    Parameters
    ----------
    columns : array_like of int, shape (B, p)
        Column indices into the score matrix; ``-1`` entries are ignored.
    n_columns : int
        Number of columns ``C`` of the score matrix.

    Returns
    -------
    numpy.ndarray of bool, shape (B, n_columns)
    """
    cols = as_id_array(columns, "columns", ndim=2)
    if cols.size and cols.max() >= n_columns:
        raise InvalidInputError(f"columns: index {int(cols.max())} out of range for {n_columns} columns")
    mask = np.zeros((cols.shape[0], n_columns), dtype=bool)
    rows, js = np.nonzero(cols >= 0)
    mask[rows, cols[rows, js]] = True
    return mask


def ids_to_mask(candidate_ids: Any, positive_ids: Any) -> np.ndarray:
    """Mark which candidates are listed as positives: ``mask[b, c] = candidate_ids[b, c] in positive_ids[b]``.

    Parameters
    ----------
    candidate_ids : array_like of int, shape (B, C)
        Candidate ids per query (``-1`` = padding, never positive).
    positive_ids : array_like of int, shape (B, p)
        Positive ids per query (``-1`` = padding).

    Returns
    -------
    numpy.ndarray of bool, shape (B, C)
    """
    cand = as_id_array(candidate_ids, "candidate_ids", ndim=2)
    pos = as_id_array(positive_ids, "positive_ids", ndim=2)
    if pos.shape[0] != cand.shape[0]:
        raise ShapeMismatchError(f"positive_ids: {pos.shape[0]} rows but candidate_ids has {cand.shape[0]}")
    if cand.size == 0 or pos.size == 0:
        return np.zeros(cand.shape, dtype=bool)
    # Row-offset keys make one vectorised membership test for the whole batch.
    span = int(max(cand.max(), pos.max())) + 2
    row = np.arange(cand.shape[0], dtype=np.int64)[:, None] * span
    pos_keys = np.where(pos >= 0, pos + 1 + row, -1)
    cand_keys = cand + 1 + row
    mask = np.isin(cand_keys, pos_keys[pos_keys >= 0])
    return mask & (cand >= 0)


def _positive_mask(positives: Any, shape: tuple[int, int]) -> np.ndarray:
    arr = np.asarray(positives)
    if arr.dtype == np.bool_:
        return as_bool_matrix(arr, "positives", shape)
    if arr.dtype.kind in "iu" and arr.ndim == 2 and arr.shape[0] == shape[0]:
        return columns_to_mask(arr, shape[1])
    raise InvalidInputError(
        f"positives: expected a bool mask of shape {shape} or integer column lists (B, p), "
        f"got dtype {arr.dtype} shape {arr.shape}"
    )


def _reduce_rows(
    row_loss: np.ndarray, active: np.ndarray, row_grad: np.ndarray, reduction: str, out_dtype: np.dtype
) -> tuple[float, np.ndarray]:
    n_active = int(active.sum())
    if n_active == 0:
        return 0.0, np.zeros(row_grad.shape, dtype=out_dtype)
    scale = 1.0 / n_active if reduction == "mean" else 1.0
    loss = float(row_loss[active].sum() * scale)
    grad = row_grad * scale
    grad[~active] = 0.0
    return loss, grad.astype(out_dtype, copy=False)


def _check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "sum"):
        raise ConfigError(f"reduction: expected 'mean' or 'sum', got {reduction!r}")


# ----------------------------------------------------------------------------- InfoNCE


def info_nce(
    scores: Any,
    positives: Any,
    *,
    temperature: float = 0.1,
    candidate_mask: Any = None,
    form: Literal["supcon", "logsumexp"] = "supcon",
    reduction: Literal["mean", "sum"] = "mean",
) -> tuple[float, np.ndarray]:
    """Multi-positive InfoNCE (supervised-contrastive) loss on a score matrix.

    With ``a_ic = S_ic / temperature`` over the valid columns ``V_i`` of row ``i`` and its
    positives ``P_i ⊆ V_i``:

    - ``form="supcon"`` (Khosla et al. 2020, ``L_out``):
      ``L_i = -(1/|P_i|) sum_{p in P_i} [a_ip - logsumexp_{c in V_i} a_ic]``;
      gradient ``(softmax_V(a)_ic - [c in P_i]/|P_i|) / temperature``.
    - ``form="logsumexp"`` (``L_in``, "any positive"):
      ``L_i = logsumexp_{c in V_i} a_ic - logsumexp_{p in P_i} a_ip``;
      gradient ``(softmax_V(a)_ic - softmax_P(a)_ic) / temperature``.

    The denominator holds every valid column, positives included. Both forms equal the
    usual single-positive InfoNCE when ``|P_i| = 1``.

    Parameters
    ----------
    scores : array_like, shape (B, C)
        Similarities (higher = more similar), finite.
    positives : array_like
        Either a bool mask (B, C) or integer column lists (B, p) with ``-1`` padding.
    temperature : float, default 0.1
        Softmax temperature, > 0.
    candidate_mask : array_like of bool, shape (B, C), optional
        Which columns exist (False = padding, e.g. candidate id ``-1``). Default: all.
        Positives outside the candidate mask are dropped.
    form : {"supcon", "logsumexp"}
        See above.
    reduction : {"mean", "sum"}
        Mean (or sum) over rows with at least one valid positive; other rows are ignored.

    Returns
    -------
    loss : float
    grad : numpy.ndarray, shape (B, C)
        ``dloss/dscores``; zero on invalid columns and on ignored rows.
    """
    s = as_float(scores, "scores", ndim=2)
    tau = check_positive(temperature, "temperature")
    _check_reduction(reduction)
    if form not in ("supcon", "logsumexp"):
        raise ConfigError(f"form: expected 'supcon' or 'logsumexp', got {form!r}")
    pos = _positive_mask(positives, s.shape)
    valid = (
        np.ones(s.shape, bool) if candidate_mask is None else as_bool_matrix(candidate_mask, "candidate_mask", s.shape)
    )
    pos = pos & valid
    n_pos = pos.sum(axis=1)
    active = n_pos > 0

    a = s.astype(np.float64) / tau
    neg_inf = np.where(valid, a, -np.inf)
    row_max = np.max(neg_inf, axis=1, keepdims=True, initial=-np.inf)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)
    ex = np.exp(np.where(valid, a - row_max, -np.inf))
    denom = ex.sum(axis=1, keepdims=True)
    safe_denom = np.where(denom > 0, denom, 1.0)
    lse = np.log(safe_denom) + row_max  # (B,1)
    softmax = ex / safe_denom
    safe_npos = np.maximum(n_pos, 1)[:, None]

    if form == "supcon":
        mean_pos_logit = np.where(pos, a, 0.0).sum(axis=1, keepdims=True) / safe_npos
        row_loss = (lse - mean_pos_logit)[:, 0]
        row_grad = (softmax - pos / safe_npos) / tau
    else:
        pos_max = np.max(np.where(pos, a, -np.inf), axis=1, keepdims=True, initial=-np.inf)
        pos_max = np.where(np.isfinite(pos_max), pos_max, 0.0)
        pex = np.exp(np.where(pos, a - pos_max, -np.inf))
        psum = pex.sum(axis=1, keepdims=True)
        safe_psum = np.where(psum > 0, psum, 1.0)
        row_loss = (lse - np.log(safe_psum) - pos_max)[:, 0]
        row_grad = (softmax - pex / safe_psum) / tau
    return _reduce_rows(row_loss, active, row_grad, reduction, s.dtype)


# ----------------------------------------------------------------------------- triplet


def triplet(
    values: Any,
    positives: Any,
    negatives: Any = None,
    *,
    margin: float = 0.2,
    kind: Literal["scores", "distances"] = "scores",
    mining: Literal["all", "hardest"] = "all",
    soft: bool = False,
    candidate_mask: Any = None,
    reduction: Literal["mean", "sum"] = "mean",
) -> tuple[float, np.ndarray]:
    """Margin triplet loss over the (positive, negative) column pairs of each row.

    Violation of a triplet (anchor = row ``i``, positive ``p``, negative ``n``):
    ``margin - S_ip + S_in`` for ``kind="scores"`` (higher = closer) and
    ``margin + D_ip - D_in`` for ``kind="distances"``; the triplet loss is
    ``max(0, violation)`` (``soft=True``: ``softplus(violation)``, smooth everywhere).

    ``mining="all"``: a row's loss is the mean over all its ``|P_i| x |N_i|`` triplets.
    ``mining="hardest"`` ("batch hard"): one triplet per row, the hardest positive
    (lowest score / largest distance) with the hardest negative (highest score /
    smallest distance); ties go to the first column.
    Rows are then averaged over those with at least one positive and one negative.

    Parameters
    ----------
    values : array_like, shape (B, C)
        Scores or distances (see ``kind``).
    positives : array_like
        Bool mask (B, C) or integer column lists (B, p) with ``-1`` padding.
    negatives : array_like, optional
        Bool mask (B, C) or column lists (B, n). Default: every valid non-positive column.
        A column marked both positive and negative counts as positive.
    margin : float, default 0.2
        Margin, >= 0.
    kind : {"scores", "distances"}
    mining : {"all", "hardest"}
    soft : bool, default False
        Softplus instead of the hinge.
    candidate_mask : array_like of bool, shape (B, C), optional
        Valid columns (False = padding).
    reduction : {"mean", "sum"}

    Returns
    -------
    loss : float
    grad : numpy.ndarray, shape (B, C)
        ``dloss/dvalues``. At a hinge kink (violation exactly 0) the subgradient 0 is used.
    """
    v = as_float(values, "values", ndim=2)
    m = check_positive(margin, "margin", allow_zero=True)
    _check_reduction(reduction)
    if kind not in ("scores", "distances"):
        raise ConfigError(f"kind: expected 'scores' or 'distances', got {kind!r}")
    if mining not in ("all", "hardest"):
        raise ConfigError(f"mining: expected 'all' or 'hardest', got {mining!r}")
    valid = (
        np.ones(v.shape, bool) if candidate_mask is None else as_bool_matrix(candidate_mask, "candidate_mask", v.shape)
    )
    pos = _positive_mask(positives, v.shape) & valid
    neg = (~pos & valid) if negatives is None else (_positive_mask(negatives, v.shape) & valid & ~pos)
    sign = 1.0 if kind == "scores" else -1.0
    v64 = np.ascontiguousarray(v, dtype=np.float64)

    if mining == "hardest":
        # similarity-oriented values: larger = closer
        sim = sign * v64
        has = pos.any(axis=1) & neg.any(axis=1)
        p_col = np.argmin(np.where(pos, sim, np.inf), axis=1)
        n_col = np.argmax(np.where(neg, sim, -np.inf), axis=1)
        rows = np.arange(v.shape[0])
        z = m - sim[rows, p_col] + sim[rows, n_col]
        if soft:
            row_loss = np.logaddexp(0.0, z)
            dz = 0.5 * (1.0 + np.tanh(0.5 * z))  # sigmoid, overflow-safe
        else:
            row_loss = np.maximum(z, 0.0)
            dz = (z > 0).astype(np.float64)
        row_grad = np.zeros(v.shape, np.float64)
        row_grad[rows, p_col] -= sign * dz
        row_grad[rows, n_col] += sign * dz
        return _reduce_rows(row_loss, has, row_grad, reduction, v.dtype)

    row_loss = np.zeros(v.shape[0], np.float64)
    row_count = np.zeros(v.shape[0], np.int64)
    row_grad = np.zeros(v.shape, np.float64)
    _kernels.triplet_all_pairs(
        v64,
        np.ascontiguousarray(pos),
        np.ascontiguousarray(neg),
        m,
        sign,
        bool(soft),
        row_loss,
        row_count,
        row_grad,
    )
    return _reduce_rows(row_loss, row_count > 0, row_grad, reduction, v.dtype)


# ----------------------------------------------------------------------------- similarities


_WRT = ("query", "candidates")


class _Similarity:
    """Shared plumbing: ``forward(query, candidates)`` -> scores; ``backward(grad_scores)``.

    ``check_finite=False`` skips the NaN/inf scan of the inputs (for hot paths whose
    inputs were validated upstream, e.g. rows gathered from a checked table).
    """

    def __init__(self, *, check_finite: bool = True) -> None:
        self.check_finite = bool(check_finite)
        self._cache: tuple[Any, ...] | None = None

    def forward(self, query: Any, candidates: Any) -> np.ndarray:  # pragma: no cover - abstract
        """Scores (B, C) of ``query`` (B, d) against ``candidates`` (C, d) or (B, C, d)."""
        raise NotImplementedError

    def backward(
        self, grad_scores: Any, *, wrt: tuple[str, ...] = _WRT
    ) -> dict[str, np.ndarray]:  # pragma: no cover - abstract
        """``{"query": dL/dquery, "candidates": dL/dcandidates}`` given ``dL/dS``."""
        raise NotImplementedError

    def _check(self, query: Any, candidates: Any) -> tuple[np.ndarray, np.ndarray, bool]:
        if self.check_finite:
            q = as_float(query, "query", ndim=2)
            c = as_float(candidates, "candidates", ndim=(2, 3))
        else:
            q, c = _as_float_unchecked(query, "query"), _as_float_unchecked(candidates, "candidates")
            if q.ndim != 2 or c.ndim not in (2, 3):
                raise ShapeMismatchError(
                    f"query/candidates: expected (B,d) and (C,d)|(B,C,d), got {q.shape}, {c.shape}"
                )
        shared = c.ndim == 2
        if c.shape[-1] != q.shape[1]:
            raise ShapeMismatchError(f"candidates: dimension {c.shape[-1]} != query dimension {q.shape[1]}")
        if not shared and c.shape[0] != q.shape[0]:
            raise ShapeMismatchError(f"candidates: batch {c.shape[0]} != query batch {q.shape[0]}")
        return q, c, shared

    @staticmethod
    def _dot(q: np.ndarray, c: np.ndarray, shared: bool) -> np.ndarray:
        return q @ c.T if shared else np.einsum("bd,bcd->bc", q, c)

    @staticmethod
    def _dot_backward(
        q: np.ndarray, c: np.ndarray, g: np.ndarray, shared: bool, wrt: tuple[str, ...]
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        dq = dc = None
        if "query" in wrt:
            dq = g @ c if shared else np.einsum("bc,bcd->bd", g, c)
        if "candidates" in wrt:
            dc = g.T @ q if shared else g[:, :, None] * q[:, None, :]
        return dq, dc

    def _grad(self, grad_scores: Any, wrt: tuple[str, ...]) -> tuple[np.ndarray, tuple[Any, ...]]:
        if self._cache is None:
            raise InvalidInputError("backward called before forward")
        unknown = set(wrt) - set(_WRT)
        if unknown:
            raise ConfigError(f"wrt: unknown inputs {sorted(unknown)}; expected a subset of {_WRT}")
        cache = self._cache
        g = as_float(grad_scores, "grad_scores", ndim=2)
        if g.shape != cache[0]:
            raise ShapeMismatchError(f"grad_scores: expected shape {cache[0]}, got {g.shape}")
        return g, cache


def _as_float_unchecked(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind != "f":
        if arr.dtype.kind not in "biu":
            raise InvalidInputError(f"{name}: expected a real numeric array, got dtype {arr.dtype}")
        arr = arr.astype(np.float64)
    return arr


class DotSimilarity(_Similarity):
    """Dot-product scores ``S_bc = q_b . c_c`` (shared candidates (C,d)) or ``q_b . c_bc`` ((B,C,d)).

    ``backward(grad_scores, wrt=("query", "candidates"))`` returns ``{"query": (B,d),
    "candidates": same shape as candidates}`` restricted to ``wrt`` (skipping the
    (B,C,d) candidate gradient saves time when only the query side is trained).
    """

    def forward(self, query: Any, candidates: Any) -> np.ndarray:
        """Scores (B, C) in the inputs' float dtype."""
        q, c, shared = self._check(query, candidates)
        s = self._dot(q, c, shared)
        self._cache = (s.shape, q, c, shared)
        return s

    def backward(self, grad_scores: Any, *, wrt: tuple[str, ...] = _WRT) -> dict[str, np.ndarray]:
        """Gradients of the inputs named in ``wrt`` given ``dL/dS`` (B, C)."""
        g, (_, q, c, shared) = self._grad(grad_scores, wrt)
        dq, dc = self._dot_backward(q, c, g.astype(q.dtype, copy=False), shared, wrt)
        return {k: v for k, v in (("query", dq), ("candidates", dc)) if v is not None}


class CosineSimilarity(_Similarity):
    """Cosine scores ``S_bc = q_b . c_c / (|q_b| |c_c|)`` with norms clamped below by ``eps``.

    Same shapes and ``backward`` as :class:`DotSimilarity`. A zero vector scores 0 against
    everything (its gradient is the clamped-norm gradient, finite).
    """

    def __init__(self, eps: float = 1e-8, *, check_finite: bool = True) -> None:
        super().__init__(check_finite=check_finite)
        self.eps = check_positive(eps, "eps")

    def forward(self, query: Any, candidates: Any) -> np.ndarray:
        """Scores (B, C) in [-1, 1]."""
        q, c, shared = self._check(query, candidates)
        qn = np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), self.eps)
        cn = np.maximum(np.linalg.norm(c, axis=-1, keepdims=True), self.eps)
        qh, ch = q / qn, c / cn
        s = self._dot(qh, ch, shared)
        self._cache = (s.shape, qh, ch, qn, cn, shared)
        return s

    def backward(self, grad_scores: Any, *, wrt: tuple[str, ...] = _WRT) -> dict[str, np.ndarray]:
        """Gradients of the inputs named in ``wrt`` given ``dL/dS`` (B, C)."""
        g, (_, qh, ch, qn, cn, shared) = self._grad(grad_scores, wrt)
        dqh, dch = self._dot_backward(qh, ch, g.astype(qh.dtype, copy=False), shared, wrt)
        out: dict[str, np.ndarray] = {}
        # d(x/|x|) applied to upstream u: (u - xh (xh.u)) / |x|
        if dqh is not None:
            out["query"] = (dqh - qh * np.sum(dqh * qh, axis=-1, keepdims=True)) / qn
        if dch is not None:
            out["candidates"] = (dch - ch * np.sum(dch * ch, axis=-1, keepdims=True)) / cn
        return out


# ----------------------------------------------------------------------------- graph-local contrastive


@dataclass(frozen=True)
class RowGrad:
    """A gradient that is zero outside a few rows of an (N, d) table.

    Attributes
    ----------
    rows : numpy.ndarray of int64, shape (m,)
        Sorted, unique row ids.
    values : numpy.ndarray, shape (m, d)
        Gradient of those rows.
    num_rows : int
        ``N``.
    """

    rows: np.ndarray
    values: np.ndarray
    num_rows: int

    def to_dense(self) -> np.ndarray:
        """The (N, d) array."""
        out = np.zeros((self.num_rows, self.values.shape[1]), dtype=self.values.dtype)
        out[self.rows] = self.values
        return out


def _row_grad_result(rows: np.ndarray, values: np.ndarray, n: int, sparse: bool) -> np.ndarray | RowGrad:
    g = RowGrad(rows=rows.astype(np.int64, copy=False), values=values, num_rows=n)
    return g if sparse else g.to_dense()


def sample_non_neighbors(
    indptr: Any,
    indices: Any,
    nodes: Any,
    num_negatives: int,
    rng: np.random.Generator,
    *,
    num_nodes: int | None = None,
    max_rounds: int = 8,
) -> np.ndarray:
    """Sample, per anchor node, distinct nodes that are neither the anchor nor its CSR neighbours.

    Parameters
    ----------
    indptr, indices : array_like of int
        CSR adjacency (``indices`` may hold ``-1`` padding).
    nodes : array_like of int, shape (B,)
        Anchor nodes.
    num_negatives : int
        Negatives per anchor.
    rng : numpy.random.Generator
        Source of randomness (advanced by the call).
    num_nodes : int, optional
        Node count; default ``len(indptr) - 1``.
    max_rounds : int
        Rejection-sampling rounds before giving up on a row.

    Returns
    -------
    numpy.ndarray of int64, shape (B, num_negatives)
        ``-1`` where fewer eligible nodes exist than requested.
    """
    n = int(np.asarray(indptr).shape[0] - 1) if num_nodes is None else int(num_nodes)
    ip, ix = check_csr(indptr, indices, n)
    anchors = as_id_array(nodes, "nodes", ndim=1)
    if anchors.size and (anchors.min() < 0 or anchors.max() >= n):
        raise InvalidInputError(f"nodes: ids must lie in [0, {n})")
    m = int(num_negatives)
    if m < 0:
        raise ConfigError(f"num_negatives: must be >= 0, got {num_negatives}")
    out = np.full((anchors.shape[0], m), -1, dtype=np.int64)
    if m == 0 or anchors.size == 0 or n <= 1:
        return out
    todo = np.arange(anchors.shape[0])
    for _ in range(max(1, int(max_rounds))):
        draws = rng.integers(0, n, size=(todo.shape[0], 2 * m + 4), dtype=np.int64)
        sub = np.ascontiguousarray(out[todo])
        _kernels.filter_non_neighbors(draws, anchors[todo], ip, ix, m, sub)
        out[todo] = sub
        todo = todo[(out[todo] < 0).any(axis=1)]
        if todo.size == 0:
            break
    return out


def local_contrastive(
    embeddings: Any,
    indptr: Any,
    indices: Any,
    *,
    nodes: Any = None,
    negatives: Any = None,
    num_negatives: int = 16,
    rng: np.random.Generator | None = None,
    temperature: float = 0.1,
    similarity: Literal["cosine", "dot"] = "cosine",
    form: Literal["supcon", "logsumexp"] = "supcon",
    reduction: Literal["mean", "sum"] = "mean",
    sparse_grad: bool = False,
) -> tuple[float, np.ndarray | RowGrad]:
    """Graph-local contrastive loss: a node's graph neighbours are its positives.

    For every anchor ``i`` in ``nodes``, the columns are its CSR neighbours ``N(i)``
    (positives; self loops and ``-1`` padding skipped) followed by its negatives, the
    scores are ``sim(z_i, z_c)`` and the row loss is :func:`info_nce` over those columns.
    Gradients flow into both the anchor and the column embeddings (scatter-added).

    Parameters
    ----------
    embeddings : array_like, shape (N, d)
        Node embeddings ``Z`` (rows aligned with the CSR node ids, e.g. HNSW labels).
    indptr, indices : array_like of int
        CSR adjacency, e.g. ``HNSWGraph.layer(0)``.
    nodes : array_like of int, shape (B,), optional
        Anchors; default every node.
    negatives : array_like of int, shape (B, m), optional
        Explicit negatives (``-1`` padding). Default: :func:`sample_non_neighbors` with
        ``num_negatives`` and ``rng`` (required then). Pass them explicitly to evaluate the
        same loss twice (finite differences).
    num_negatives : int
    rng : numpy.random.Generator, optional
    temperature : float
    similarity : {"cosine", "dot"}
    form, reduction
        As in :func:`info_nce`; rows (anchors) without neighbours are ignored.
    sparse_grad : bool
        Return the gradient as a :class:`RowGrad` over the touched rows (anchors, their
        neighbours, their negatives) instead of a dense (N, d) array.

    Returns
    -------
    loss : float
    grad : numpy.ndarray, shape (N, d), or RowGrad
        ``dloss/dembeddings`` (in the dtype of ``embeddings``).

    Notes
    -----
    Only the touched rows of ``embeddings`` are read (and checked for NaN/inf), so a
    mini-batch over a large table costs O(batch), not O(N), apart from the dense result.
    """
    z = as_float_table(embeddings, "embeddings")
    n = z.shape[0]
    ip, ix = check_csr(indptr, indices, n)
    if similarity not in ("cosine", "dot"):
        raise ConfigError(f"similarity: expected 'cosine' or 'dot', got {similarity!r}")
    anchors = np.arange(n, dtype=np.int64) if nodes is None else as_id_array(nodes, "nodes", ndim=1)
    if anchors.size and (anchors.min() < 0 or anchors.max() >= n):
        raise InvalidInputError(f"nodes: ids must lie in [0, {n})")
    if negatives is None:
        if rng is None:
            raise ConfigError("rng: required when negatives are not given (or pass negatives=...)")
        neg = sample_non_neighbors(ip, ix, anchors, num_negatives, rng, num_nodes=n)
    else:
        neg = as_id_array(negatives, "negatives", ndim=2)
        if neg.shape[0] != anchors.shape[0]:
            raise ShapeMismatchError(f"negatives: {neg.shape[0]} rows but {anchors.shape[0]} anchor nodes")
        if neg.size and neg.max() >= n:
            raise InvalidInputError(f"negatives: ids must lie in [0, {n}) or be -1")

    # padded positive lists from the CSR rows of the anchors
    deg = ip[anchors + 1] - ip[anchors]
    width = int(deg.max()) if deg.size else 0
    offs = np.arange(width, dtype=np.int64)
    take = offs[None, :] < deg[:, None]
    pos = np.full((anchors.shape[0], width), -1, dtype=np.int64)
    if width:
        flat = ip[anchors][:, None] + offs[None, :]
        pos[take] = ix[flat[take]]
    pos[pos == anchors[:, None]] = -1  # self loops are not positives

    cols = np.concatenate([pos, neg], axis=1)
    valid = cols >= 0
    pos_mask = np.zeros(cols.shape, dtype=bool)
    pos_mask[:, :width] = valid[:, :width]
    # work on the touched rows only (a mini-batch of a large table)
    touched = np.unique(np.concatenate([anchors, cols[valid]]))
    z_sub = np.asarray(z[touched])
    check_finite_rows(z_sub, "embeddings")
    if cols.shape[1] == 0 or touched.size == 0:
        return 0.0, _row_grad_result(touched, np.zeros((touched.size, z.shape[1]), z.dtype), n, sparse_grad)
    a_loc = np.searchsorted(touched, anchors)
    c_loc = np.where(valid, np.searchsorted(touched, np.where(valid, cols, touched[0])), -1)
    gathered = z_sub[np.maximum(c_loc, 0)]  # (B, P+m, d)
    sim: _Similarity = CosineSimilarity() if similarity == "cosine" else DotSimilarity()
    scores = sim.forward(z_sub[a_loc], gathered)
    loss, g_scores = info_nce(
        scores, pos_mask, temperature=temperature, candidate_mask=valid, form=form, reduction=reduction
    )
    grads = sim.backward(g_scores)
    dz = np.zeros(z_sub.shape, dtype=np.float64)
    _kernels.scatter_add_rows(
        dz, a_loc[:, None].copy(), np.ascontiguousarray(grads["query"][:, None, :], dtype=np.float64)
    )
    _kernels.scatter_add_rows(
        dz, np.ascontiguousarray(c_loc), np.ascontiguousarray(grads["candidates"], dtype=np.float64)
    )
    return loss, _row_grad_result(touched, dz.astype(z.dtype, copy=False), n, sparse_grad)
