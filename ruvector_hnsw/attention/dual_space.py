"""Dual-space attention: graph neighbours x latent (FAISS) neighbours (``dual_space``).

Three read-outs fused by a learned gate::

    graph   o_g = sum_j softmax_j(q . k_j / sqrt(d)) v_j                 (graph neighbours, masked)
    latent  o_l = sum_m softmax_m(s(q P, x_m P)) x_m                      (latent neighbours x_m)
    cross   o_c = sum_m softmax_m(s(o_g P, x_m P)) x_m                    (graph output attends to them)
    gate    g   = softmax(q W_f + b_f)                                    (3 weights per row)
    out     = g_0 o_g + g_1 o_l + g_2 o_c

``P (d, latent_dim)`` is the learned latent projection (PCA of the first database, or random
with ``init="random"``). The latent
neighbours ``x_m`` are the ``k_latent`` database rows nearest to ``q P`` in the latent space,
found with :class:`~ruvector_hnsw.index.LatentIndex` over ``database @ P``. The latent score is
``s(a, z) = (a . z - 0.5 |z|^2) / sqrt(latent_dim)`` for ``latent_metric="l2"`` (the softmax of
``-|a - z|^2 / (2 sqrt(latent_dim))``) and ``a . z / sqrt(latent_dim)`` for ``"ip"``.

The neighbour search is not differentiable (the found ids are constants of the backward);
gradients flow through the three attentions, into ``P`` (latent query/keys and the cross
query), into ``W_f, b_f`` and into query/keys/values. The database itself receives no gradient.

The latent index is rebuilt lazily when ``P`` changed since it was built (``refresh="auto"``,
the default; an O(N d latent_dim) projection + FAISS add) or only on :meth:`refresh_index`
(``refresh="manual"``: the neighbour search then uses the ``P`` of the last refresh for both the
database and the query, while the attention scores use the current ``P``).

The database comes from ``database=``/:meth:`~DualSpaceAttention.set_database` (pinned), or else
from the key table of a gather-form call (``ids=``), re-adopted when a later call passes another
table (e.g. after adds). ``P`` is PCA-initialised at the first database unless it was changed
(trained or restored) before.

Values must have width ``dim`` (the latent neighbours are database rows of that width and the
cross query projects ``o_g`` with ``P``). A fully masked graph row has ``o_g = 0``; the latent
and cross read-outs do not depend on the graph mask, so such a row still gets
``g_1 o_l + g_2 o_c`` (non-zero, never NaN). A query that is itself a database row usually
finds itself among its latent neighbours.

``weights()`` returns the graph-attention weights ``(B, n)`` over the given items (the latent
neighbours are not among them; see ``last_latent_ids`` / ``last_gate`` after a forward).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ruvector_hnsw.attention._partb_common import masked_softmax, softmax_backward
from ruvector_hnsw.attention.base import (
    AttentionBatch,
    AttentionMechanism,
    as_float_array,
    check_positive_int,
)
from ruvector_hnsw.errors import (
    ConfigError,
    DimensionMismatchError,
    EmptyInputError,
    NonFiniteError,
    NotFittedError,
)

__all__ = ["DualSpaceAttention"]


class DualSpaceAttention(AttentionMechanism):
    """Graph attention + latent attention over FAISS neighbours + cross attention, gated.

    Parameters
    ----------
    dim : int
        Query/key/value dimensionality ``d`` (also the database width).
    database : array (N, d), optional
        The database table the latent neighbours come from; may be given later with
        :meth:`set_database` (which pins it). Without a pinned database, a gather-form call
        (``ids=``) adopts its key table as the database (and re-adopts when a later call passes
        a different table, e.g. after adds); a dense-form call without a database raises
        NotFittedError naming it.
    k_latent : int
        Latent neighbours per query (default 8).
    latent_dim : int, optional
        Width of the latent space (default ``min(dim, 32)``).
    init : {"pca", "random"}
        Initial ``P``: principal directions of the database (at the first ``set_database``;
        random until then) or scaled Gaussian.
    latent_metric : {"l2", "ip"}
        Latent search metric and matching latent score (see the module docstring).
    index_kind : {"flat", "hnsw", "ivf"}
        :class:`~ruvector_hnsw.index.LatentIndex` family (default exact ``"flat"``).
    refresh : {"auto", "manual"}
        Rebuild the latent index when ``P`` changed (auto) or only on :meth:`refresh_index`.
    num_threads : int
        FAISS threads (-1 = FAISS default).
    dtype, seed
        See :class:`~ruvector_hnsw.attention.base.AttentionMechanism`.

    Params: ``P (d, latent_dim)``, ``W_f (d, 3)``, ``b_f (3,)``.

    Attributes
    ----------
    last_latent_ids : ndarray (B, k_latent) int64
        Database rows found as latent neighbours by the last forward (``-1`` = none).
    last_gate : ndarray (B, 3)
        Fusion weights (graph, latent, cross) of the last forward.
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
        database: Any = None,
        k_latent: int = 8,
        latent_dim: int | None = None,
        init: str = "pca",
        latent_metric: str = "l2",
        index_kind: str = "flat",
        refresh: str = "auto",
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
        if refresh not in ("auto", "manual"):
            raise ConfigError(f"refresh must be 'auto' or 'manual', got {refresh!r}")
        if num_threads != -1:
            check_positive_int(num_threads, "num_threads")
        self.init = init
        self.latent_metric = latent_metric
        self.index_kind = index_kind
        self.refresh = refresh
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
        self._database: np.ndarray | None = None
        self._pinned = False
        self._index: Any = None
        self._indexed_P: np.ndarray | None = None
        self._pca_done = False
        self.last_latent_ids: np.ndarray | None = None
        self.last_gate: np.ndarray | None = None
        if database is not None:
            self.set_database(database)

    # -- database / latent index ---------------------------------------------------------------
    @property
    def database(self) -> np.ndarray | None:
        """The database table (N, d) or None."""
        return self._database

    def set_database(self, database: Any) -> DualSpaceAttention:
        """Set the database table ``(N, d)`` the latent neighbours come from; (re)build the index.

        With ``init="pca"`` the first call sets ``P`` (in place) to the top ``latent_dim``
        principal directions of the database, unless ``P`` was changed since construction
        (trained, or restored with ``set_params``), which is kept.
        Returns ``self``.
        """
        db = as_float_array(database, "database", self.dtype, (2,))
        if db.shape[0] == 0:
            raise EmptyInputError("database is empty (N = 0)")
        if db.shape[1] != self.dim:
            raise DimensionMismatchError(f"{self.name}: database has dimension {db.shape[1]}, expected {self.dim}")
        self._adopt(db)
        self._pinned = True
        return self

    def _adopt(self, db: np.ndarray) -> None:
        self._database = db
        P = self._params["P"]
        untouched = np.array_equal(P, self._P_init)  # not trained / loaded since construction
        if self.init == "pca" and not self._pca_done and untouched and db.shape[0] > 1:
            x = db.astype(np.float64)
            mu = x.mean(axis=0)
            cov = (x.T @ x) / x.shape[0] - np.outer(mu, mu)
            _evals, evecs = np.linalg.eigh(cov)  # ascending
            P[...] = evecs[:, ::-1][:, : self.latent_dim]
            self._pca_done = True
        self.refresh_index()

    def _maybe_adopt(self, batch: AttentionBatch) -> None:
        """Adopt the gather-form key table as the database unless one was pinned."""
        if self._pinned or batch.ids is None:
            return
        table = batch.keys
        cur = self._database
        if cur is not None and (
            cur is table or (cur.shape == table.shape and np.array_equal(cur, table))
        ):
            return
        if not np.isfinite(table).all():
            self._raise_nonfinite_rows()
        self._adopt(table)

    fit = set_database

    def refresh_index(self) -> None:
        """Rebuild the latent index over ``database @ P`` with the current ``P``."""
        if self._database is None:
            raise NotFittedError(f"{self.name} has no database: pass database= or call set_database()")
        from ruvector_hnsw.latent import LatentIndex

        P = self._params["P"]
        Z = np.ascontiguousarray(self._database @ P, dtype=np.float32)
        if not np.isfinite(Z).all():
            raise NotFittedError(f"{self.name}: latent projection of the database is not finite")
        index = LatentIndex(self.latent_dim, metric=self.latent_metric, kind=self.index_kind,
                            num_threads=self.num_threads)
        index.add(Z)
        self._index = index
        self._indexed_P = P.copy()

    def latent_neighbors(self, query: Any) -> np.ndarray:
        """Ids ``(B, k_latent)`` of the database rows nearest to ``query @ P`` (``-1`` = none)."""
        q = as_float_array(query, "query", self.dtype, (1, 2))
        q2 = q[None] if q.ndim == 1 else q
        if q2.shape[1] != self.dim:
            raise DimensionMismatchError(f"{self.name}: query has dimension {q2.shape[1]}, expected {self.dim}")
        ids = self._search(q2)
        return ids[0] if q.ndim == 1 else ids

    def _search(self, q: np.ndarray) -> np.ndarray:
        if self._database is None:
            raise NotFittedError(
                f"{self.name} needs the database table: pass database= to the constructor, call set_database(), "
                "or use the gather form (ids=), whose key table is adopted"
            )
        P = self._params["P"]
        if self.refresh == "auto" and (self._indexed_P is None or not np.array_equal(P, self._indexed_P)):
            self.refresh_index()
        # search in the latent space the index was built in (the current P in "auto" mode)
        zq = np.ascontiguousarray(q @ self._indexed_P, dtype=np.float32)
        ids, _ = self._index.search(zq, self.k_latent)
        return np.ascontiguousarray(ids, dtype=np.int64)

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
            refresh=self.refresh,
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
        self._maybe_adopt(batch)
        if self._database is None:
            raise NotFittedError(
                f"{self.name} needs the database table: pass database= to the constructor, call set_database(), "
                "or use the gather form (ids=), whose key table is adopted"
            )
        return self._graph._weights(batch)

    def _forward(self, batch: AttentionBatch) -> tuple[np.ndarray, Any]:
        self._maybe_adopt(batch)
        q = batch.query
        assert batch.values is not None
        lids = self._search(q)
        lmask = lids >= 0
        db = self._database
        assert db is not None  # _search raised otherwise
        X = db[np.maximum(lids, 0)] * lmask[:, :, None]  # (B, m, d)
        P = self._params["P"]
        Z = X @ P
        try:
            og, gcache = self._graph._forward(batch)  # fused gather + softmax(q.k / sqrt(d)) v
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
        self.last_latent_ids = lids
        self.last_gate = gate
        cache = (q, gcache, X, Z, lmask, og, zq, wl, ol, zc, wc, oc, gate)
        return np.ascontiguousarray(out, dtype=self.dtype), cache

    def _backward(self, grad_out: np.ndarray, cache: Any) -> dict[str, np.ndarray]:
        q, gcache, X, Z, lmask, og, zq, wl, ol, zc, wc, oc, gate = cache
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
        gg = self._graph._backward(np.ascontiguousarray(dog, dtype=self.dtype), gcache)
        grads.update(query=dq + gg["query"], keys=gg["keys"], values=gg["values"])
        dt = self.dtype
        return {k: np.ascontiguousarray(v, dtype=dt) for k, v in grads.items()}
