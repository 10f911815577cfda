"""Dual-space attention: graph neighbours x latent (FAISS) neighbours (``dual_space``).

Three read-outs fused by a learned gate::

    graph   o_g = sum_j softmax_j(q . k_j / sqrt(d)) v_j                 (graph neighbours, masked)
    latent  o_l = sum_m softmax_m(s(q P, x_m P)) x_m                      (latent neighbours x_m)
    cross   o_c = sum_m softmax_m(s(o_g P, x_m P)) x_m                    (graph output attends to them)
    gate    g   = softmax(q W_f + b_f)                                    (3 weights per row)
    out     = g_0 o_g + g_1 o_l + g_2 o_c

``P (d, latent_dim)`` is the learned latent projection (PCA of the first table given to
:meth:`~DualSpaceAttention.prepare_table`, or random with ``init="random"``). The latent
neighbours ``x_m`` are the ``k_latent`` database rows nearest to ``q P0`` in the latent space,
found with :class:`~ruvector_hnsw.latent.LatentIndex` over ``database @ P0``, where ``P0`` is the
projection at the time the table state was prepared. The latent score is
``s(a, z) = (a . z - 0.5 |z|^2) / sqrt(latent_dim)`` for ``latent_metric="l2"`` (the softmax of
``-|a - z|^2 / (2 sqrt(latent_dim))``) and ``a . z / sqrt(latent_dim)`` for ``"ip"``; the scores
use the current ``P``.

The neighbour search is not differentiable (the found ids are constants of the backward);
gradients flow through the three attentions, into ``P`` (latent query/keys and the cross
query), into ``W_f, b_f`` and into query/keys/values. The database itself receives no gradient.

Table state
-----------
The latent-neighbour structure is explicit: ``state = att.prepare_table(table)`` projects the
``(N, d)`` database table with the current ``P`` and indexes it (FAISS, ``index_kind``), and the
caller passes it with every call as ``Context(table_state=state)``. Nothing is built or refreshed
by a forward: the caller calls ``prepare_table`` again after training steps that changed ``P``
(until then the search uses the ``P`` of the last preparation, the scores the current one) and
after the table changed. Both forms need the state: the gather form (``ids=``) checks that its
key table has the shape the state was prepared for; in the dense form the latent neighbours are
rows of the state's table. Without a state, forward raises
:class:`~ruvector_hnsw.errors.MissingContextError` naming ``prepare_table``; ``weights()`` (the
graph weights) needs none. The state (:class:`LatentTableState`) is immutable and picklable (its
FAISS index is rebuilt from the table and the stored projection when unpickled: identical for
the exact ``"flat"`` kind, up to the approximation of ``"hnsw"``/``"ivf"``).

With ``init="pca"`` the first ``prepare_table`` call made while ``P`` still holds its constructor
value (not trained, not restored with ``set_params``) first sets ``P``, in place, to the table's
top ``latent_dim`` principal directions - a one-time data-dependent initialisation, the only
write any call of this class makes besides ``set_params``.

Values must have width ``dim`` (the latent neighbours are database rows of that width and the
cross query projects ``o_g`` with ``P``). A fully masked graph row has ``o_g = 0``; the latent
and cross read-outs do not depend on the graph mask, so such a row still gets
``g_1 o_l + g_2 o_c`` (non-zero, never NaN). A query that is itself a database row usually
finds itself among its latent neighbours.

``weights()`` returns the graph-attention weights ``(B, n)`` over the given items (the latent
neighbours are not among them); a forward's cache has them as ``cache.weights`` and the latent
neighbours and fusion weights as ``cache.inspect["latent_ids"]`` ``(B, k_latent)`` (``-1`` =
none) and ``cache.inspect["gate"]`` ``(B, 3)`` (graph, latent, cross).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ruvector_hnsw.attention._partb_common import masked_softmax, softmax_backward
from ruvector_hnsw.attention.base import (
    AttentionBatch,
    AttentionMechanism,
    ForwardResult,
    as_float_array,
    check_positive_int,
)
from ruvector_hnsw.errors import (
    ConfigError,
    DimensionMismatchError,
    EmptyInputError,
    InvalidInputError,
    MissingContextError,
    NonFiniteError,
    ShapeMismatchError,
)

if TYPE_CHECKING:
    from ruvector_hnsw.latent import LatentIndex

__all__ = ["DualSpaceAttention", "LatentTableState"]


def _latent_index(Z: np.ndarray, metric: str, kind: str, num_threads: int) -> LatentIndex:
    """A :class:`LatentIndex` over the projected table ``Z (N, latent_dim)`` float32 (ids = rows)."""
    from ruvector_hnsw.latent import LatentIndex  # FAISS is imported only when a state is built

    index = LatentIndex(Z.shape[1], metric=metric, kind=kind, num_threads=num_threads)
    index.add(Z)
    return index


def _project(table: np.ndarray, projection: np.ndarray) -> np.ndarray:
    """``table @ projection`` as C-contiguous float32; NaN/inf raise NonFiniteError."""
    Z = np.ascontiguousarray(table @ projection, dtype=np.float32)
    if not np.isfinite(Z).all():
        raise NonFiniteError("dual_space: the latent projection of the table is not finite")
    return Z


@dataclass(frozen=True, eq=False)
class LatentTableState:
    """The latent-neighbour structure of :class:`DualSpaceAttention` over one database table.

    Built by :meth:`DualSpaceAttention.prepare_table`; pass it as ``Context(table_state=...)``.
    Immutable; picklable (the FAISS index is not pickled but rebuilt from ``table`` and
    ``projection`` on load).

    Attributes
    ----------
    table : ndarray (N, d)
        The database table (the mechanism's dtype; the caller's array when it already was).
    projection : ndarray (d, latent_dim)
        A copy of ``P`` when the state was prepared; the table was indexed, and queries are
        searched, in this latent space.
    index : LatentIndex
        FAISS index over ``table @ projection`` (ids = table rows).
    latent_metric, index_kind : str
    num_threads : int
        FAISS threads of the searches.
    """

    table: np.ndarray
    projection: np.ndarray
    index: LatentIndex
    latent_metric: str
    index_kind: str
    num_threads: int

    @property
    def shape(self) -> tuple[int, int]:
        """Shape ``(N, d)`` of the table the state was prepared for."""
        return (int(self.table.shape[0]), int(self.table.shape[1]))

    def search(self, query: np.ndarray, k: int) -> np.ndarray:
        """Rows ``(B, k)`` int64 of the table nearest to ``query @ projection`` (``-1`` = none)."""
        zq = np.ascontiguousarray(query @ self.projection, dtype=np.float32)
        ids, _ = self.index.search(zq, k)
        return np.ascontiguousarray(ids, dtype=np.int64)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["index"]  # FAISS objects do not pickle through LatentIndex: rebuilt on load
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            object.__setattr__(self, k, v)
        Z = _project(state["table"], state["projection"])
        object.__setattr__(
            self, "index", _latent_index(Z, state["latent_metric"], state["index_kind"], state["num_threads"])
        )


class DualSpaceAttention(AttentionMechanism):
    """Graph attention + latent attention over FAISS neighbours + cross attention, gated.

    Parameters
    ----------
    dim : int
        Query/key/value dimensionality ``d`` (also the database width).
    k_latent : int
        Latent neighbours per query (default 8).
    latent_dim : int, optional
        Width of the latent space (default ``min(dim, 32)``).
    init : {"pca", "random"}
        Initial ``P``: principal directions of the first table given to :meth:`prepare_table`
        (random until then) or scaled Gaussian.
    latent_metric : {"l2", "ip"}
        Latent search metric and matching latent score (see the module docstring).
    index_kind : {"flat", "hnsw", "ivf"}
        :class:`~ruvector_hnsw.latent.LatentIndex` family (default exact ``"flat"``).
    num_threads : int
        FAISS threads (-1 = FAISS default).
    dtype, seed
        See :class:`~ruvector_hnsw.attention.base.AttentionMechanism`.

    Params: ``P (d, latent_dim)``, ``W_f (d, 3)``, ``b_f (3,)``.

    The latent-neighbour structure lives outside the mechanism: see :meth:`prepare_table` and
    the module docstring ("Table state").
    """

    name = "dual_space"
    #: the graph branch runs the fused-gather ``scaled_dot`` kernels (no (B, n, d) copy)
    fused_gather = True
    checks_table_rows = True
    BRANCHES = ("graph", "latent", "cross")

    def __init__(
        self,
        dim: int,
        *,
        k_latent: int = 8,
        latent_dim: int | None = None,
        init: str = "pca",
        latent_metric: str = "l2",
        index_kind: str = "flat",
        num_threads: int = -1,
        dtype: Any = np.float32,
        seed: int | None = None,
    ) -> None:
        super().__init__(dim, dtype=dtype, seed=seed)
        self.k_latent = check_positive_int(k_latent, "k_latent")
        self.latent_dim = check_positive_int(
            min(self.dim, 32) if latent_dim is None else latent_dim, "latent_dim", maximum=self.dim
        )
        if init not in ("pca", "random"):
            raise ConfigError(f"init must be 'pca' or 'random', got {init!r}")
        if latent_metric not in ("l2", "ip"):
            raise ConfigError(f"latent_metric must be 'l2' or 'ip', got {latent_metric!r}")
        if index_kind not in ("flat", "hnsw", "ivf"):
            raise ConfigError(f"index_kind must be 'flat', 'hnsw' or 'ivf', got {index_kind!r}")
        if num_threads != -1:
            check_positive_int(num_threads, "num_threads")
        self.init = init
        self.latent_metric = latent_metric
        self.index_kind = index_kind
        self.num_threads = int(num_threads)
        rng = self._rng()
        d, dl, dt = self.dim, self.latent_dim, self.dtype
        self._params = {
            "P": (rng.standard_normal((d, dl)) / math.sqrt(d)).astype(dt),
            "W_f": np.zeros((d, 3), dtype=dt),
            "b_f": np.zeros(3, dtype=dt),
        }
        from ruvector_hnsw.attention.scaled_dot import ScaledDotAttention

        self._graph = ScaledDotAttention(self.dim, dtype=self.dtype)
        self._P_init = self._params["P"].copy()
        self._pca_done = False

    # -- table state ---------------------------------------------------------------------------
    def prepare_table(self, table: Any) -> LatentTableState:
        """Project the database ``table (N, d)`` with the current ``P`` and index it.

        Pass the result as ``Context(table_state=...)``; call again after ``P`` was trained or
        the table changed. With ``init="pca"``, the first call made while ``P`` still holds its
        constructor value first sets ``P`` (in place) to the table's top ``latent_dim``
        principal directions.

        Raises
        ------
        EmptyInputError, DimensionMismatchError, NonFiniteError
            Empty table, wrong width, NaN/inf in the table (the whole table is scanned).
        """
        db = self._check_table(table)
        P = self._params["P"]
        untouched = np.array_equal(P, self._P_init)  # not trained / loaded since construction
        if self.init == "pca" and not self._pca_done and untouched and db.shape[0] > 1:
            x = db.astype(np.float64)
            mu = x.mean(axis=0)
            cov = (x.T @ x) / x.shape[0] - np.outer(mu, mu)
            _evals, evecs = np.linalg.eigh(cov)  # ascending
            P[...] = evecs[:, ::-1][:, : self.latent_dim]
            self._pca_done = True
        return self._build_state(db)

    def _check_table(self, table: Any) -> np.ndarray:
        db = as_float_array(table, "table", self.dtype, (2,))
        if db.shape[0] == 0:
            raise EmptyInputError("table is empty (N = 0)")
        if db.shape[1] != self.dim:
            raise DimensionMismatchError(f"{self.name}: table has dimension {db.shape[1]}, expected {self.dim}")
        return db

    def _build_state(self, db: np.ndarray) -> LatentTableState:
        projection = self._params["P"].copy()
        Z = _project(db, projection)
        return LatentTableState(
            table=db,
            projection=projection,
            index=_latent_index(Z, self.latent_metric, self.index_kind, self.num_threads),
            latent_metric=self.latent_metric,
            index_kind=self.index_kind,
            num_threads=self.num_threads,
        )

    def _warmup_table_state(self, table: np.ndarray) -> LatentTableState:
        return self._build_state(self._check_table(table))  # no PCA: warmup leaves P alone

    def _table_state(self, batch: AttentionBatch) -> LatentTableState:
        """The validated ``context.table_state`` of ``batch``."""
        st = None if batch.context is None else batch.context.table_state
        if st is None:
            raise MissingContextError(
                f"{self.name} needs context.table_state = prepare_table(table) (its latent-neighbour index "
                "over the database table), which was not given"
            )
        if not isinstance(st, LatentTableState):
            raise InvalidInputError(
                f"{self.name}: context.table_state must come from prepare_table, got {type(st).__name__}"
            )
        if (
            st.table.dtype != self.dtype
            or st.projection.shape != self._params["P"].shape
            or st.latent_metric != self.latent_metric
        ):
            raise InvalidInputError(
                f"{self.name}: context.table_state was prepared by a different configuration "
                f"(dtype {st.table.dtype}, latent width {st.projection.shape[1]}, metric {st.latent_metric}); "
                "call prepare_table on this mechanism"
            )
        if batch.ids is not None and batch.keys.shape != st.shape:
            raise ShapeMismatchError(
                f"{self.name}: context.table_state was prepared for a table of shape {st.shape}, the key table "
                f"has shape {batch.keys.shape}: call prepare_table(table) again after the table changes"
            )
        return st

    def latent_neighbors(self, query: Any, table_state: LatentTableState) -> np.ndarray:
        """Rows ``(B, k_latent)`` of the state's table nearest to ``query`` in its latent space
        (``-1`` = none); pure, like forward."""
        q = as_float_array(query, "query", self.dtype, (1, 2))
        q2 = q[None] if q.ndim == 1 else q
        if q2.shape[1] != self.dim:
            raise DimensionMismatchError(f"{self.name}: query has dimension {q2.shape[1]}, expected {self.dim}")
        if not isinstance(table_state, LatentTableState):
            raise InvalidInputError(
                f"{self.name}: table_state must come from prepare_table, got {type(table_state).__name__}"
            )
        ids = table_state.search(q2, self.k_latent)
        return ids[0] if q.ndim == 1 else ids

    # -- description ---------------------------------------------------------------------------
    def check_value_dim(self, value_dim: int) -> None:
        if value_dim != self.dim:
            raise DimensionMismatchError(f"{self.name}: values must have width dim={self.dim}, got {value_dim}")

    def get_config(self) -> dict[str, Any]:
        cfg = super().get_config()
        cfg.update(
            k_latent=self.k_latent,
            latent_dim=self.latent_dim,
            init=self.init,
            latent_metric=self.latent_metric,
            index_kind=self.index_kind,
            num_threads=self.num_threads,
        )
        return cfg

    # -- compute -------------------------------------------------------------------------------
    def _latent_scores(self, a: np.ndarray, Z: np.ndarray) -> np.ndarray:
        s = np.matmul(Z, a[:, :, None])[:, :, 0]
        if self.latent_metric == "l2":
            s = s - 0.5 * np.sum(Z * Z, axis=-1)
        return s / math.sqrt(self.latent_dim)

    def _weights(self, batch: AttentionBatch) -> np.ndarray:
        return self._graph._weights(batch)

    def _forward(self, batch: AttentionBatch) -> ForwardResult:
        st = self._table_state(batch)
        q = batch.query
        assert batch.values is not None
        lids = st.search(q, self.k_latent)
        lmask = lids >= 0
        X = st.table[np.maximum(lids, 0)] * lmask[:, :, None]  # (B, m, d)
        P = self._params["P"]
        Z = X @ P
        try:
            graph = self._graph._forward(batch)  # fused gather + softmax(q.k / sqrt(d)) v
            og, gcache = graph.out, graph.data
        except NonFiniteError as exc:
            raise NonFiniteError(f"{self.name}: keys/values rows referenced by ids contain NaN or infinity") from exc
        zq = q @ P
        wl = masked_softmax(self._latent_scores(zq, Z), lmask)
        ol = np.matmul(wl[:, None, :], X)[:, 0, :]
        zc = og @ P
        wc = masked_softmax(self._latent_scores(zc, Z), lmask)
        oc = np.matmul(wc[:, None, :], X)[:, 0, :]
        gate = masked_softmax(q @ self._params["W_f"] + self._params["b_f"], np.ones((q.shape[0], 3), bool))
        out = gate[:, 0:1] * og + gate[:, 1:2] * ol + gate[:, 2:3] * oc
        data = (q, gcache, X, Z, lmask, og, zq, wl, ol, zc, wc, oc, gate)
        return ForwardResult(
            np.ascontiguousarray(out, dtype=self.dtype), data, weights=graph.weights,
            inspect={"latent_ids": lids, "gate": gate},
        )

    def _backward(self, grad_out: np.ndarray, data: Any, input_grads: bool) -> dict[str, np.ndarray]:
        q, gcache, X, Z, lmask, og, zq, wl, ol, zc, wc, oc, gate = data
        p = self._params
        P = p["P"]
        sl = math.sqrt(self.latent_dim)
        G = grad_out
        # fusion gate
        dgate = np.stack([np.sum(G * og, 1), np.sum(G * ol, 1), np.sum(G * oc, 1)], axis=1)
        dlog = softmax_backward(gate, dgate)
        grads: dict[str, np.ndarray] = {"W_f": q.T @ dlog, "b_f": dlog.sum(axis=0)}
        dq = dlog @ p["W_f"].T
        dog = gate[:, 0:1] * G
        dol = gate[:, 1:2] * G
        doc = gate[:, 2:3] * G
        dP = np.zeros_like(P)
        dZ = np.zeros_like(Z)

        def latent_back(a: np.ndarray, w: np.ndarray, do: np.ndarray) -> np.ndarray:
            """Backprop one latent read-out; accumulates into dZ/dP; returns d(a)."""
            nonlocal dZ
            dw = np.matmul(X, do[:, :, None])[:, :, 0]
            ds = softmax_backward(w, dw) * lmask / sl
            da = np.matmul(ds[:, None, :], Z)[:, 0, :]
            if self.latent_metric == "l2":
                dZ = dZ + ds[:, :, None] * (a[:, None, :] - Z)
            else:
                dZ = dZ + ds[:, :, None] * a[:, None, :]
            return da

        dzc = latent_back(zc, wc, doc)
        dP += og.T @ dzc
        dog = dog + dzc @ P.T
        dzq = latent_back(zq, wl, dol)
        dP += q.T @ dzq
        dq = dq + dzq @ P.T
        dP += X.reshape(-1, X.shape[2]).T @ dZ.reshape(-1, dZ.shape[2])
        grads["P"] = dP
        # graph attention (table gradients in the gather form, dense otherwise)
        gg = self._graph._backward(np.ascontiguousarray(dog, dtype=self.dtype), gcache, input_grads)
        grads["query"] = dq + gg["query"]
        if input_grads:
            grads.update(keys=gg["keys"], values=gg["values"])
        dt = self.dtype
        return {k: np.ascontiguousarray(v, dtype=dt) for k, v in grads.items()}
