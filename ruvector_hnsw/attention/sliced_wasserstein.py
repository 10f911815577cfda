"""Optimal-transport attention: items compared to the query as neighbourhoods (``sliced_wasserstein``).

The score between the query and item ``j`` is minus a sliced 2-Wasserstein distance between two
small empirical distributions (token sets) drawn from the row's context, so an item is compared
with the query as a neighbourhood, not as a point::

    Q_b   = {q}   + the t-1 attended items nearest to q          (the query's own context set)
    S_j   = {k_j} + the t-1 other attended items nearest to k_j  (item j's neighbourhood)
    x_p   = theta_p . x          (P fixed unit directions theta_p, seeded; "projections")
    W_p(j)^2 = int_0^1 (F^-1_{theta_p Q_b}(u) - F^-1_{theta_p S_j}(u))^2 du   (1-D OT: sorted matching)
    s_j   = -(sqrt(d) / (2 tau)) * sum_p c_p W_p(j)^2,    c_p = exp(omega_p) / P
    out   = sum_{j in top-m} softmax_j(s_j) v_j

Token sets
    The context items *are* the graph neighbourhood the searcher gives (a database row's
    layer-0 and hub links, a query's best HNSW candidates and their hub links), so the tokens
    of an item are itself and its nearest fellow context items: its graph neighbourhood as
    seen inside this context. "Nearest" is measured in the projected space
    (``sum_p (theta_p . (x - y))^2``, the same geometry the score uses; ``t - 1`` neighbours,
    ties to the earlier item). Sets are unordered: the result does not depend on the order of
    the items (up to ties). When a row has fewer than ``t`` items the sets are smaller and may
    differ in size; the 1-D distance then merges the two quantile functions exactly.

One token per set (``tokens=1``)
    ``s_j = -(sqrt(d) / (2 tau P)) sum_p exp(omega_p) (theta_p.q - theta_p.k_j)^2``; with
    ``omega = 0`` that is ``-(sqrt(d)/(2 tau)) * mean_p (theta_p.q - theta_p.k_j)^2``, an
    unbiased estimate of ``-|q - k_j|^2 / (2 tau sqrt(d))`` (the L2 form of scaled-dot attention).

Two-stage filter
    Stage 1 ranks the attended items by the cheap dot product ``q . k_j`` and keeps the best
    ``top_m`` (ties to the earlier item); stage 2 computes the transport scores of those only.
    Items outside the top-m get weight 0; the filter is a constant of the backward.

Cached projections (``prepare_table``)
    The projected coordinates of the keys do not depend on the query:
    ``state = att.prepare_table(table)`` computes ``table @ theta.T`` (``(N, P)``, row by row in
    float64) once; pass it as ``Context(table_state=state)`` in the gather form. The state
    depends on the table only (``theta`` is fixed, not trained), so training never makes it
    stale; call ``prepare_table`` again when the table changes (its row count is checked).
    Without a state, and always in the dense form (whose keys are not table rows; a given state
    is ignored there), the coordinates of the row's items are computed per call
    (``O(n P d)`` more per row). The key gradient is that of the output with the coordinates
    recomputed from the keys (as a re-prepared state would be).

Cost per row (``n`` attended items, ``m = min(top_m, n)``, ``t`` tokens, ``P`` projections):
    ``O(n d)`` filter + ``O(P d)`` query projection + ``O(n P)`` query set + ``O(m n P)``
    item neighbourhoods + ``O(m P t log t)`` sorting and 1-D matching + ``O(m dv)`` read-out.
    Sorting a whole context per projection (``O(n P log n)``) is never needed: each set has at
    most ``t`` tokens. Memory ``O(n P)`` per row; the state is ``N x P``.

Trainable params: ``slice_log_weights`` ``omega (P,)`` (zeros: all projections weigh the same;
their common shift is a learned temperature). Gradients flow into ``omega``, the query (through
``theta_p . q``), the keys (through the coordinates of every token they are in) and the values;
the filter and the neighbour choices are piecewise constant. Fully masked row: zero weights,
zero output. Output width = value width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ruvector_hnsw.attention._gather_kernels import gather_rows
from ruvector_hnsw.attention._select_kernels import project_rows
from ruvector_hnsw.attention._sliced_kernels import sw_backward, sw_forward
from ruvector_hnsw.attention.base import (
    AttentionBatch,
    AttentionMechanism,
    ForwardResult,
    as_float_array,
    check_positive_float,
    check_positive_int,
    dense_ids,
)
from ruvector_hnsw.errors import DimensionMismatchError, EmptyInputError, InvalidInputError, ShapeMismatchError
from ruvector_hnsw.threads import join_row_chunks, run_row_chunks

__all__ = ["SlicedTableState", "SlicedWassersteinAttention"]


@dataclass(frozen=True, eq=False)
class SlicedTableState:
    """Cached key projections of one table for :class:`SlicedWassersteinAttention`.

    Attributes
    ----------
    projections : ndarray (N, P)
        ``table @ theta.T`` in the mechanism's dtype (read-only).
    theta : ndarray (P, d) float64
        The directions used (read-only copy); a state is accepted only by a mechanism with the
        same directions.
    """

    projections: np.ndarray
    theta: np.ndarray

    @property
    def rows(self) -> int:
        """Rows ``N`` of the table the state was prepared for."""
        return int(self.projections.shape[0])


def _project(X: np.ndarray, theta: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Row-chunked :func:`project_rows` (a row's result never depends on the chunking)."""
    like = np.empty(0, dtype=dtype)
    N = X.shape[0]
    parts = run_row_chunks(lambda lo, hi: project_rows(X[lo:hi], theta, like), N, float(N) * theta.size)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


class SlicedWassersteinAttention(AttentionMechanism):
    """Sliced-Wasserstein attention between the query's and each item's context neighbourhood.

    See the module docstring for the formula, the token sets, the two-stage filter, the cached
    projections and the cost.

    Parameters
    ----------
    dim : int
        Query/key dimension ``d``.
    num_projections : int, default 16
        Random unit directions ``P`` (seeded; fixed, not trained).
    tokens : int, default 4
        Tokens per set ``t`` (the point itself plus ``t - 1`` neighbours); 1 = points.
    top_m : int, default 16
        Items kept by the dot-product filter.
    temperature : float, default 1.0
    dtype, seed
        See :class:`~ruvector_hnsw.attention.base.AttentionMechanism`.

    Attributes
    ----------
    projections : ndarray (P, d) float64
        The directions ``theta``.
    params : ``slice_log_weights (P,)``.
    """

    name = "sliced_wasserstein"
    fused_gather = True
    checks_table_rows = True

    def __init__(
        self,
        dim: int,
        *,
        num_projections: int = 16,
        tokens: int = 4,
        top_m: int = 16,
        temperature: float = 1.0,
        dtype: Any = np.float32,
        seed: int | None = None,
    ) -> None:
        super().__init__(dim, dtype=dtype, seed=seed)
        self.num_projections = check_positive_int(num_projections, "num_projections")
        self.tokens = check_positive_int(tokens, "tokens")
        self.top_m = check_positive_int(top_m, "top_m")
        self.temperature = check_positive_float(temperature, "temperature")
        g = self._rng(1).standard_normal((self.num_projections, self.dim))
        norms = np.linalg.norm(g, axis=1, keepdims=True)
        theta = np.ascontiguousarray(g / np.where(norms > 0, norms, 1.0), dtype=np.float64)
        theta.flags.writeable = False
        self.projections = theta
        self._params = {"slice_log_weights": np.zeros(self.num_projections, dtype=self.dtype)}

    @property
    def coefficient(self) -> float:
        """The score factor ``sqrt(d) / (2 tau)``."""
        return float(np.sqrt(self.dim) / (2.0 * self.temperature))

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "num_projections": self.num_projections,
            "tokens": self.tokens,
            "top_m": self.top_m,
            "temperature": self.temperature,
        }

    # -- table state ---------------------------------------------------------------------------
    def prepare_table(self, table: Any) -> SlicedTableState:
        """Project the key table ``(N, d)`` on the directions (``O(N P d)``, once per table).

        Raises
        ------
        EmptyInputError, DimensionMismatchError, NonFiniteError
            Empty table, wrong width, NaN/inf in the table (the whole table is scanned).
        """
        db = as_float_array(table, "table", self.dtype, (2,))
        if db.shape[0] == 0:
            raise EmptyInputError("table is empty (N = 0)")
        if db.shape[1] != self.dim:
            raise DimensionMismatchError(f"{self.name}: table has dimension {db.shape[1]}, expected {self.dim}")
        proj = _project(db, self.projections, self.dtype)
        proj.flags.writeable = False
        return SlicedTableState(projections=proj, theta=self.projections)

    def _coordinates(self, batch: AttentionBatch, T: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(PT, pids)``: the projection table and the rows of it holding each item's coordinates."""
        st = None if batch.context is None else batch.context.table_state
        if batch.ids is not None and st is not None:
            if not isinstance(st, SlicedTableState):
                raise InvalidInputError(
                    f"{self.name}: context.table_state must come from prepare_table, got {type(st).__name__}")
            if st.projections.dtype != self.dtype or not np.array_equal(st.theta, self.projections):
                raise InvalidInputError(
                    f"{self.name}: context.table_state was prepared by a mechanism with other projections "
                    "(seed, num_projections or dtype); call prepare_table on this mechanism")
            if st.rows != T.shape[0]:
                raise ShapeMismatchError(
                    f"{self.name}: context.table_state was prepared for a table of {st.rows} rows, the key "
                    f"table has {T.shape[0]}: call prepare_table(table) again after the table changes")
            return st.projections, ids
        B, n = batch.mask.shape
        rows = T if batch.ids is None else gather_rows(T, ids).reshape(B * n, self.dim)
        return _project(rows, self.projections, self.dtype), dense_ids(B, n)

    def _weights_vector(self) -> np.ndarray:
        w = np.exp(self._params["slice_log_weights"].astype(np.float64))
        return np.ascontiguousarray(self.coefficient * w / self.num_projections)

    def _run(self, batch: AttentionBatch, readout: bool) -> tuple[Any, ...]:
        T, Vt, ids = batch.table_form()
        PT, pids = self._coordinates(batch, T, ids)
        V = Vt if (readout and Vt is not None) else T
        cw = self._weights_vector()
        theta = self.projections
        m, t = self.top_m, self.tokens
        mask = batch.mask
        Q = batch.query
        B, n = mask.shape
        work = float(B) * n * (self.dim + m * self.num_projections)

        def run(lo: int, hi: int) -> tuple[Any, ...]:
            return sw_forward(Q[lo:hi], T, V, ids[lo:hi], mask[lo:hi], PT, pids[lo:hi], theta, cw, m, t, readout)

        res = join_row_chunks(run_row_chunks(run, B, work))
        if not res[-1]:
            self._raise_nonfinite_rows()
        return (T, V, ids, PT, pids, cw, *res[:-1])

    def _forward(self, batch: AttentionBatch) -> ForwardResult:
        T, V, ids, PT, pids, cw, R, W, sel, qtok, itok, D = self._run(batch, True)
        data = (batch, T, V, ids, PT, pids, cw, W, sel, qtok, itok, D)
        return ForwardResult(R, data, weights=W)

    def _weights(self, batch: AttentionBatch) -> np.ndarray:
        W: np.ndarray = self._run(batch, False)[7]
        return W

    def _backward(self, grad_out: np.ndarray, data: Any, input_grads: bool) -> dict[str, np.ndarray]:
        batch, T, V, ids, PT, pids, cw, W, sel, qtok, itok, D = data
        Q, mask, theta = batch.query, batch.mask, self.projections
        B = mask.shape[0]

        def run(lo: int, hi: int) -> tuple[Any, ...]:
            return sw_backward(Q[lo:hi], T, V, ids[lo:hi], mask[lo:hi], PT, pids[lo:hi], theta, cw, W[lo:hi],
                               sel[lo:hi], qtok[lo:hi], itok[lo:hi], D[lo:hi], grad_out[lo:hi], input_grads,
                               T.shape[0])

        if input_grads:  # one chunk: the table gradients are summed in one pass
            dQ, dw, dT, dV = run(0, B)
        else:
            parts = run_row_chunks(run, B, float(B) * self.top_m * self.tokens * self.num_projections * self.dim)
            dQ = np.concatenate([p[0] for p in parts])
            dw = np.concatenate([p[1] for p in parts])
            dT = dV = np.zeros((0, self.dim), dtype=self.dtype)
        grads = {
            "slice_log_weights": np.ascontiguousarray(dw.sum(axis=0), dtype=self.dtype),
            "query": dQ,
        }
        grads.update(self._input_grad_entries(batch, dT, dV, input_grads))
        return grads
