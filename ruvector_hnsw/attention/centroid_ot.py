"""Entropic optimal transport between the query's demand and the context's clusters (``centroid_ot``).

The database keys are clustered once into ``M`` centroids ``c_1..c_M`` (seeded k-means,
:meth:`CentroidOTAttention.prepare_table`). For one row with attended items ``J``::

    l_j      = nearest centroid of k_j                         (cached per table row)
    omega_j  = softmax over the items of cluster l_j of  q.k_j / (sqrt(d) tau)
    O_c      = sum_{j in c} omega_j v_j                        (cluster read-out)
    mu_c     = |{j in J : l_j = c}| / |J|                      (centroid masses: the context's make-up)
    nu       = softmax_c( exp(zeta) q.c_c / sqrt(d) )          (query-side masses over all M centroids)
    pi       = semi-relaxed entropic OT plan between nu and mu, cost C_cc' = |c_c - c_c'|^2 / mean
    beta_c'  = sum_c pi_cc'                                    (mass delivered by cluster c')
    out      = sum_c' beta_c' O_c'        (item weights w_j = beta_{l_j} omega_j; they sum to 1)

Why semi-relaxed
    With both marginals exact, ``beta = mu`` whatever the query, so the transport would carry no
    information. Here the row marginal (the query's demand ``nu``) is exact and the column
    marginal is a KL penalty ``rho KL(pi^T 1 | mu)`` (Chizat et al. 2018): a cluster absent
    from the context (``mu_c = 0``) delivers nothing, the demand for it is carried to the present
    clusters nearest to it (in centroid distance, blurred by ``eps``), and ``rho`` trades the
    query's demand (``rho -> 0``: ``beta`` = ``nu`` moved onto the present clusters) against the
    context's make-up (``rho -> inf``: ``beta = mu``, the balanced plan).

Sinkhorn (log domain, fixed iterations ``I``; ``K = -C / eps``, ``lam = rho / (rho + eps)``)::

    G^0 = 0;  for k = 1..I:  F^k = log nu - LSE_c'(G^{k-1} + K),   G^k = lam (log mu - LSE_c(F^k + K))
    F^{I+1} = log nu - LSE_c'(G^I + K);   pi_cc' = exp(F^{I+1}_c + G^I_c' + K_cc')

Every exponential is taken after subtracting the maximum (stable for any ``eps``); the last
update is a row update, so the rows of ``pi`` sum to ``nu`` exactly and the weights to 1.

Backward: exact reverse mode through the ``I`` fixed iterations (no envelope or implicit
approximation: the function differentiated is the one computed), into the query (through
``nu`` and the within-cluster softmax), ``zeta``, ``log_rho``, the keys (within-cluster softmax)
and the values. Cluster labels are piecewise constant (no gradient); the centroids are part of
the table state (data).

Table state
    ``state = att.prepare_table(table)`` runs a seeded k-means (k-means++ start, ``kmeans_iters``
    Lloyd steps on at most ``kmeans_sample`` seeded rows) and labels every table row; pass it as
    ``Context(table_state=state)``. Both forms need it: the gather form reads the cached labels
    (``O(1)`` per item), the dense form labels its keys against the state's centroids
    (``O(n M d)`` per row, the same rule, so both forms agree). Without a state forward raises
    :class:`~ruvector_hnsw.errors.MissingContextError` naming ``prepare_table``. The state
    depends on the table only (not on the params): re-prepare when the table changes (its row
    count is checked).

Cost per row: ``O(n d)`` scores and read-out + ``O(M d)`` demand + ``O(I M^2)`` Sinkhorn
(plus ``O(M dv)``): ``O(n + M^2)`` in ``n`` and ``M``. Fully masked row: zero weights, zero output.

Params: ``log_demand_scale`` ``zeta (1,)`` (0) and ``log_rho`` ``(1,)`` (``log rho``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ruvector_hnsw.attention._ot_kernels import ot_backward, ot_forward
from ruvector_hnsw.attention._select_kernels import nearest_centroid
from ruvector_hnsw.attention.base import (
    AttentionBatch,
    AttentionMechanism,
    ForwardResult,
    as_float_array,
    check_positive_float,
    check_positive_int,
    dense_ids,
)
from ruvector_hnsw.errors import (
    DimensionMismatchError,
    EmptyInputError,
    InvalidInputError,
    MissingContextError,
    ShapeMismatchError,
)
from ruvector_hnsw.threads import join_row_chunks, run_row_chunks

__all__ = ["CentroidOTAttention", "CentroidTableState", "kmeans"]


@dataclass(frozen=True, eq=False)
class CentroidTableState:
    """Clusters of one key table for :class:`CentroidOTAttention` (read-only arrays).

    Attributes
    ----------
    centroids : ndarray (M, d)
        k-means centroids in the mechanism's dtype (``M = min(num_centroids, N)``).
    labels : ndarray (N,) int64
        Nearest centroid of every table row.
    cost : ndarray (M, M) float64
        ``|c_a - c_b|^2`` divided by its mean off-diagonal entry (1 where that mean is 0).
    """

    centroids: np.ndarray
    labels: np.ndarray
    cost: np.ndarray

    @property
    def rows(self) -> int:
        """Rows ``N`` of the table the state was prepared for."""
        return int(self.labels.shape[0])


def _labels(X: np.ndarray, C: np.ndarray) -> np.ndarray:
    """Row-chunked :func:`nearest_centroid` (a row's label never depends on the chunking)."""
    N = X.shape[0]
    parts = run_row_chunks(lambda lo, hi: nearest_centroid(X[lo:hi], C), N, float(N) * C.size)
    labels, _ok = join_row_chunks(parts)
    return np.ascontiguousarray(labels, dtype=np.int64)


def kmeans(X: np.ndarray, k: int, iters: int, rng: np.random.Generator) -> np.ndarray:
    """Seeded k-means (k-means++ start, ``iters`` Lloyd steps); returns ``(k, d)`` centroids like ``X``.

    Deterministic given ``rng``'s state. An emptied cluster keeps its previous centroid. With
    ``k >= len(X)`` the rows themselves are the centroids.
    """
    N, d = X.shape
    if k >= N:
        return np.ascontiguousarray(X.copy())
    x = X.astype(np.float64)
    centers = np.empty((k, d))
    centers[0] = x[rng.integers(N)]
    d2 = ((x - centers[0]) ** 2).sum(axis=1)
    for i in range(1, k):
        tot = d2.sum()
        pick = int(rng.choice(N, p=d2 / tot)) if tot > 0 else int(rng.integers(N))
        centers[i] = x[pick]
        d2 = np.minimum(d2, ((x - centers[i]) ** 2).sum(axis=1))
    C = np.ascontiguousarray(centers, dtype=X.dtype)
    for _ in range(iters):
        lab = _labels(X, C)
        sums = np.zeros((k, d))
        np.add.at(sums, lab, x)
        counts = np.bincount(lab, minlength=k)
        nz = counts > 0
        new = C.astype(np.float64)
        new[nz] = sums[nz] / counts[nz, None]
        C = np.ascontiguousarray(new, dtype=X.dtype)
    return C


def _cost(C: np.ndarray) -> np.ndarray:
    c = C.astype(np.float64)
    sq = (c * c).sum(axis=1)
    cost = np.maximum(sq[:, None] + sq[None, :] - 2.0 * c @ c.T, 0.0)
    np.fill_diagonal(cost, 0.0)
    M = cost.shape[0]
    mean = cost.sum() / (M * (M - 1)) if M > 1 else 0.0
    return np.ascontiguousarray(cost / mean if mean > 0 else cost)


class CentroidOTAttention(AttentionMechanism):
    """Attention whose cluster masses come from a semi-relaxed entropic OT plan (see module docstring).

    Parameters
    ----------
    dim : int
        Query/key dimension ``d``.
    num_centroids : int, default 16
        Clusters ``M`` of the key table.
    epsilon : float, default 0.1
        Entropic regularisation (relative to the normalised cost).
    rho : float, default 1.0
        Initial weight of the KL penalty on the context marginal (trained as ``log_rho``).
    iterations : int, default 10
        Sinkhorn iterations ``I``.
    kmeans_iters : int, default 20
        Lloyd steps of :meth:`prepare_table`.
    kmeans_sample : int, default 16384
        Rows (seeded sample) the centroids are fitted on; every row is labelled.
    temperature : float, default 1.0
        Temperature of the within-cluster softmax.
    dtype, seed
        See :class:`~ruvector_hnsw.attention.base.AttentionMechanism`.
    """

    name = "centroid_ot"
    fused_gather = True
    checks_table_rows = True

    def __init__(
        self,
        dim: int,
        *,
        num_centroids: int = 16,
        epsilon: float = 0.1,
        rho: float = 1.0,
        iterations: int = 10,
        kmeans_iters: int = 20,
        kmeans_sample: int = 16384,
        temperature: float = 1.0,
        dtype: Any = np.float32,
        seed: int | None = None,
    ) -> None:
        super().__init__(dim, dtype=dtype, seed=seed)
        self.num_centroids = check_positive_int(num_centroids, "num_centroids")
        self.epsilon = check_positive_float(epsilon, "epsilon")
        self.rho = check_positive_float(rho, "rho")
        self.iterations = check_positive_int(iterations, "iterations")
        self.kmeans_iters = check_positive_int(kmeans_iters, "kmeans_iters", minimum=0)
        self.kmeans_sample = check_positive_int(kmeans_sample, "kmeans_sample")
        self.temperature = check_positive_float(temperature, "temperature")
        self._params = {
            "log_demand_scale": np.zeros(1, dtype=self.dtype),
            "log_rho": np.full(1, np.log(self.rho), dtype=self.dtype),
        }

    @property
    def scale(self) -> float:
        """Within-cluster score factor ``1 / (sqrt(d) * temperature)``."""
        return float(1.0 / (np.sqrt(self.dim) * self.temperature))

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "num_centroids": self.num_centroids,
            "epsilon": self.epsilon,
            "rho": self.rho,
            "iterations": self.iterations,
            "kmeans_iters": self.kmeans_iters,
            "kmeans_sample": self.kmeans_sample,
            "temperature": self.temperature,
        }

    # -- table state ---------------------------------------------------------------------------
    def prepare_table(self, table: Any) -> CentroidTableState:
        """Cluster the key table ``(N, d)`` (seeded k-means) and label every row.

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
        rng = self._rng(2)
        N = db.shape[0]
        fit = db
        if N > self.kmeans_sample:
            fit = np.ascontiguousarray(db[np.sort(rng.choice(N, self.kmeans_sample, replace=False))])
        C = kmeans(fit, min(self.num_centroids, N), self.kmeans_iters, rng)
        labels = _labels(db, C)
        cost = _cost(C)
        for arr in (C, labels, cost):
            arr.flags.writeable = False
        return CentroidTableState(centroids=C, labels=labels, cost=cost)

    def _state(self, batch: AttentionBatch) -> CentroidTableState:
        st = None if batch.context is None else batch.context.table_state
        if st is None:
            raise MissingContextError(
                f"{self.name} needs context.table_state = prepare_table(table) (the key clusters), "
                "which was not given")
        if not isinstance(st, CentroidTableState):
            raise InvalidInputError(
                f"{self.name}: context.table_state must come from prepare_table, got {type(st).__name__}")
        if st.centroids.dtype != self.dtype or st.centroids.shape[1] != self.dim:
            raise InvalidInputError(
                f"{self.name}: context.table_state was prepared by another configuration (dtype "
                f"{st.centroids.dtype}, width {st.centroids.shape[1]}); call prepare_table on this mechanism")
        if batch.ids is not None and st.rows != batch.keys.shape[0]:
            raise ShapeMismatchError(
                f"{self.name}: context.table_state was prepared for a table of {st.rows} rows, the key "
                f"table has {batch.keys.shape[0]}: call prepare_table(table) again after the table changes")
        return st

    def _constants(self) -> tuple[float, float]:
        cscale = float(np.exp(np.float64(self._params["log_demand_scale"][0])) / np.sqrt(self.dim))
        rho = float(np.exp(np.float64(self._params["log_rho"][0])))
        return cscale, rho / (rho + self.epsilon)

    def _run(self, batch: AttentionBatch, readout: bool) -> tuple[Any, ...]:
        st = self._state(batch)
        T, Vt, ids = batch.table_form()
        if batch.ids is not None:
            LT, lids = st.labels, ids
        else:
            B, n = batch.mask.shape
            LT, lids = _labels(T, st.centroids), dense_ids(B, n)
        V = Vt if (readout and Vt is not None) else T
        C = st.centroids
        Kc = np.ascontiguousarray(-st.cost / self.epsilon)
        cscale, lam = self._constants()
        Q, mask = batch.query, batch.mask
        B, n = mask.shape
        scale, iters = self.scale, self.iterations
        work = float(B) * (n * (self.dim + V.shape[1]) + C.shape[0] * self.dim + 4 * iters * C.shape[0] ** 2)

        def run(lo: int, hi: int) -> tuple[Any, ...]:
            return ot_forward(Q[lo:hi], T, V, ids[lo:hi], mask[lo:hi], LT, lids[lo:hi], C, Kc, scale, cscale, lam,
                              iters, readout)

        res = join_row_chunks(run_row_chunks(run, B, work))
        if not res[-1]:
            self._raise_nonfinite_rows()
        return (T, V, ids, LT, lids, C, Kc, cscale, lam, *res[:-1])

    def _forward(self, batch: AttentionBatch) -> ForwardResult:
        res = self._run(batch, True)
        R, W = res[9], res[10]
        data = (batch, *res[:9], *res[10:])
        return ForwardResult(R, data, weights=W)

    def _weights(self, batch: AttentionBatch) -> np.ndarray:
        W: np.ndarray = self._run(batch, False)[10]
        return W

    def _backward(self, grad_out: np.ndarray, data: Any, input_grads: bool) -> dict[str, np.ndarray]:
        batch, T, V, ids, LT, lids, C, Kc, cscale, lam, W, Win, Z, cnt, beta, Ob = data
        Q, mask = batch.query, batch.mask
        B = Q.shape[0]
        scale, iters = self.scale, self.iterations

        def run(lo: int, hi: int) -> tuple[Any, ...]:
            return ot_backward(Q[lo:hi], T, V, ids[lo:hi], mask[lo:hi], LT, lids[lo:hi], C, Kc, scale, cscale, lam,
                               iters, W[lo:hi], Win[lo:hi], Z[lo:hi], cnt[lo:hi], beta[lo:hi], Ob[lo:hi],
                               grad_out[lo:hi], input_grads, T.shape[0])

        if input_grads:
            dQ, dzeta, dlam, dT, dV = run(0, B)
        else:
            work = float(B) * (mask.shape[1] * self.dim + 6 * iters * C.shape[0] ** 2)
            parts = run_row_chunks(run, B, work)
            dQ = np.concatenate([p[0] for p in parts])
            dzeta = np.concatenate([p[1] for p in parts])
            dlam = np.concatenate([p[2] for p in parts])
            dT = dV = np.zeros((0, self.dim), dtype=self.dtype)
        dt = self.dtype
        grads = {
            "log_demand_scale": np.array([dzeta.sum()], dtype=dt),
            "log_rho": np.array([dlam.sum() * lam * (1.0 - lam)], dtype=dt),
            "query": dQ,
        }
        grads.update(self._input_grad_entries(batch, dT, dV, input_grads))
        return grads
