"""`AttentionSearch`: HNSW candidates -> graph context -> attention -> re-ranked, expanded results.

Data flow of one batch of queries::

    index.search(q, C)                      HNSW candidates (labels -> table rows)
    context(q) = top candidates + hubs      the query's own graph context
    zq = [encoder(q, context), phi(q)]      attention, linear map, unit norm (+ diffusion coordinates)
    pool = candidates
         + latent kNN of zq                 an HNSW graph (or exact FAISS search) over the cached codes Z
         + layer-0 links of the best items  graph walk
    score = beta * (-dist / s0) + alpha * <zq, Z[pool]>   residual score, alpha = 0 untrained
    top k by score, then the HNSW tail

Query-independent work - every database node's code ``Z[v] = [encoder(x_v, graph context of v), phi_v]``
- is computed once after ``fit`` and cached, aligned with the graph's rows; items added to the
index later get their codes (and their neighbours' codes) computed incrementally on the next call.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ruvector_hnsw._validation import as_ids, as_matrix, check_positive_int
from ruvector_hnsw.attention import MECHANISMS, Context
from ruvector_hnsw.attention._threads import run_row_chunks
from ruvector_hnsw.errors import (
    ConfigError,
    IndexCorruptedError,
    InvalidInputError,
    NotFittedError,
    ShapeMismatchError,
)
from ruvector_hnsw.index import HNSWGraph, HNSWIndex, LatentIndex
from ruvector_hnsw.index._rwlock import RWLock
from ruvector_hnsw.search import _kernels
from ruvector_hnsw.search._encoder import ContextEncoder
from ruvector_hnsw.search.expansion import expand_vectors
from ruvector_hnsw.training.checkpoint import load_checkpoint, save_checkpoint
from ruvector_hnsw.training.trainer import TrainingHistory

__all__ = ["TRAINING_FREE", "AttentionSearch"]

TRAINING_FREE = ("alpha_qe", "dba")
FORMAT_VERSION = 1
_MODEL_KIND = "attention_search"
_ENCODE_CHUNK = 4096
_FLAT_LATENT_MAX = 5000


def _mechanism_names() -> tuple[str, ...]:
    return tuple(MECHANISMS) + TRAINING_FREE


class AttentionSearch:
    """Attention-aware search over an :class:`~ruvector_hnsw.HNSWIndex`.

    Parameters
    ----------
    index : HNSWIndex
        The index whose graph provides candidates and context.
    mechanism : str
        A name of :data:`ruvector_hnsw.attention.MECHANISMS`, or the training-free ``"alpha_qe"``
        (alpha query expansion over the top candidates, then re-search) or ``"dba"``
        (database-side augmentation over layer-0 neighbours, then re-score).
    candidates : int
        HNSW candidates re-scored per query (``C``; the HNSW search runs at ``ef = C``).
    expand : int
        Rounds of candidate expansion: each adds the latent neighbours of the attention-refined
        query code and the layer-0 links of the best items (round 1: the best latent neighbours;
        later rounds: the best re-scored items, which also become the query's context), then
        scores the union once. 0 = re-rank the HNSW candidates only. Expansion needs a trained
        model (before ``fit`` results are HNSW's, unchanged).
    k_local, k_global : int
        Context sizes: layer-0 neighbours and upper-layer (hub) links per node.

    Two further settable attributes tune the expansion: ``latent_k`` (latent neighbours fetched
    per round, at least ``k``; default 32) and ``walk_top`` (best items whose layer-0 links are
    followed; default 2).
    seed : int
        Seeds the mechanism, the projection and training.
    latent_dim : int, optional
        Width of the learned codes (default ``min(dim, 64)``).
    spectral : int
        Width of the diffusion coordinates of the layer-0 graph appended to every code (0 = none):
        a query-independent, graph-derived signal that connects items along chains of neighbours
        (see :mod:`ruvector_hnsw.search.spectral`). Computed once at ``fit`` (``spectral_time``
        sparse products over the graph); its weight is calibrated on validation queries together
        with ``alpha`` (0 included), so it is used only where it helps.
    spectral_time : int
        Length of the lazy random walks the coordinates sketch.
    num_threads : int
        One knob for numba kernels, FAISS and the index (-1 = all cores).
    **mech_config
        Passed to the mechanism's constructor (e.g. ``temperature``, ``heads``), or to the
        training-free methods (``n``, ``alpha``).
    """

    def __init__(
        self,
        index: HNSWIndex,
        mechanism: str = "local_global",
        candidates: int = 100,
        expand: int = 1,
        k_local: int = 16,
        k_global: int = 8,
        seed: int = 0,
        *,
        latent_dim: int | None = None,
        spectral: int = 64,
        spectral_time: int = 32,
        num_threads: int = -1,
        **mech_config: Any,
    ) -> None:
        if not isinstance(index, HNSWIndex):
            raise InvalidInputError(f"index must be an HNSWIndex, got {type(index).__name__}")
        names = _mechanism_names()
        if mechanism not in names:
            raise ConfigError(f"unknown mechanism {mechanism!r}; choose one of {sorted(names)}")
        self.index = index
        self.mechanism_name = mechanism
        self.candidates = candidates
        self.expand = expand
        self.k_local = check_positive_int(k_local, "k_local", ConfigError)
        if isinstance(k_global, bool) or not isinstance(k_global, int) or k_global < 0:
            raise ConfigError(f"k_global must be an integer >= 0, got {k_global!r}")
        self.k_global = k_global
        self.seed = int(seed)
        self.latent_dim = (min(index.dim, 64) if latent_dim is None
                           else check_positive_int(latent_dim, "latent_dim", ConfigError))
        if isinstance(spectral, bool) or not isinstance(spectral, (int, np.integer)) or spectral < 0:
            raise ConfigError(f"spectral must be an integer >= 0, got {spectral!r}")
        self.spectral = int(spectral)
        self.spectral_time = check_positive_int(spectral_time, "spectral_time", ConfigError)
        self.num_threads = num_threads
        self.walk_top = 2
        self.latent_k = 32
        self.mech_config = dict(mech_config)
        self._lock = RWLock()
        self._graph: HNSWGraph | None = None
        self._preset_scale = False  # True when load() restored the standardisation
        # caches aligned with the graph's rows (filled by _sync)
        self._mu: np.ndarray = np.zeros(index.dim, dtype=np.float32)
        self._sigma = 1.0
        self._s0 = 1.0
        self._table: np.ndarray = np.zeros((0, index.dim), dtype=np.float32)
        self._nb_pos: np.ndarray = np.zeros((0, 0), dtype=np.int64)
        self._nb_dist: np.ndarray = np.zeros((0, 0), dtype=np.float32)
        self._nb_layer: np.ndarray = np.zeros((0, 0), dtype=np.int8)
        self._nb_hops: np.ndarray = np.zeros((0, 0), dtype=np.int64)
        self._nb_mask: np.ndarray = np.zeros((0, 0), dtype=bool)
        self._codes: np.ndarray = np.zeros((0, self.latent_dim), dtype=np.float32)
        self._phi: np.ndarray = np.zeros((0, 0), dtype=np.float32)  # diffusion coordinates per row
        self._rho = 0.0  # weight of the diffusion coordinates in the latent term (calibrated)
        self._latent: LatentIndex | HNSWIndex | None = None
        self._qe_n, self._qe_alpha = 10, 3.0
        self._dba_cache: tuple[HNSWGraph, np.ndarray] | None = None  # (graph snapshot, augmented vectors)
        self._fitted = False
        self._encoder: ContextEncoder | None = None
        if mechanism in TRAINING_FREE:
            self._qe_n = int(self.mech_config.pop("n", 10))
            self._qe_alpha = float(self.mech_config.pop("alpha", 3.0))
            if self.mech_config:
                raise ConfigError(f"{mechanism} takes only n and alpha, got {sorted(self.mech_config)}")
        else:
            self._encoder = self._make_encoder(init=None)

    # ------------------------------------------------------------------ configuration
    @property
    def candidates(self) -> int:
        """HNSW candidates re-scored per query (settable; the HNSW search runs at ``ef = C``)."""
        return self._candidates

    @candidates.setter
    def candidates(self, value: int) -> None:
        self._candidates = check_positive_int(value, "candidates", ConfigError)

    @property
    def expand(self) -> int:
        """Rounds of candidate expansion (settable; 0 = re-rank the HNSW candidates only)."""
        return self._expand

    @expand.setter
    def expand(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ConfigError(f"expand: expected an integer >= 0, got {value!r}")
        self._expand = int(value)

    @property
    def num_threads(self) -> int:
        """Threads for the index, FAISS, the numba kernels and BLAS (via threadpoolctl when installed).

        Setting it applies process-wide limits to the kernels and BLAS.
        """
        return self._num_threads

    @num_threads.setter
    def num_threads(self, value: int) -> None:
        from ruvector_hnsw.attention import _threads

        self.index.num_threads = value
        self._num_threads = self.index.num_threads
        _threads.set_num_threads(self._num_threads)
        try:  # BLAS too, where threadpoolctl is installed (it comes with the scikit-learn extra)
            from threadpoolctl import threadpool_limits
        except ImportError:
            return
        threadpool_limits(limits=self._num_threads, user_api="blas")

    @property
    def fitted(self) -> bool:
        """True once :meth:`fit` (or :meth:`load`) gave the model a learned signal."""
        return self._fitted

    @property
    def encoder(self) -> ContextEncoder | None:
        """The trainable encoder (None for training-free mechanisms)."""
        return self._encoder

    def _make_encoder(self, init: np.ndarray | None) -> ContextEncoder:
        cls = MECHANISMS[self.mechanism_name]
        cfg = dict(self.mech_config)
        cfg.setdefault("seed", self.seed)
        try:
            mech = cls(self.index.dim, **cfg)
        except TypeError as exc:
            raise ConfigError(f"{self.mechanism_name}: bad configuration ({exc})") from exc
        return ContextEncoder(mech, self.index.dim, self.latent_dim, init=init, seed=self.seed)

    def __repr__(self) -> str:
        return (f"AttentionSearch(mechanism={self.mechanism_name!r}, candidates={self.candidates}, "
                f"expand={self.expand}, k_local={self.k_local}, k_global={self.k_global}, fitted={self._fitted})")

    # ------------------------------------------------------------------ caches
    def _standardise(self, x: np.ndarray) -> np.ndarray:
        if self.index.space == "cosine":
            x = x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)
        return np.ascontiguousarray((x - self._mu) / self._sigma, dtype=np.float32)

    def _stored_query(self, q: np.ndarray) -> np.ndarray:
        """The query as the index compares it (normalised for cosine)."""
        if self.index.space == "cosine":
            q = q / (np.linalg.norm(q, axis=1, keepdims=True) + 1e-12)
        return np.ascontiguousarray(q, dtype=np.float32)

    def _sync(self) -> HNSWGraph:
        """Bring the caches in line with the index (incrementally after adds)."""
        g = self.index.graph()
        if g is self._graph:
            return g
        old = self._graph
        n_old = 0 if old is None else len(old)
        if old is None and not self._preset_scale:
            vec = g.vectors
            self._mu = vec.mean(axis=0).astype(np.float32)
            self._sigma = float(np.sqrt(((vec - self._mu) ** 2).sum(axis=1).mean())) / np.sqrt(g.vectors.shape[1])
            self._sigma = max(self._sigma, 1e-6)
        self._table = self._standardise(g.vectors) if old is None else np.concatenate(
            [self._table, self._standardise(g.vectors[n_old:])])
        nb = g.neighborhoods(g.labels, self.k_local, self.k_global, include_deleted=False)
        pos = np.full(nb.ids.shape, -1, dtype=np.int64)
        pos[nb.mask] = g.positions(nb.ids[nb.mask])
        if old is None and not self._preset_scale:
            local = nb.dist[:, : self.k_local][nb.mask[:, : self.k_local]]
            self._s0 = float(np.median(local)) if local.size else 1.0
            self._s0 = self._s0 if self._s0 > 0 else 1.0
        self._nb_pos = pos
        self._nb_dist = np.where(nb.mask, nb.dist / self._s0, 0.0).astype(np.float32)
        self._nb_layer = np.where(nb.mask, nb.layer, 0).astype(np.int8)
        self._nb_hops = nb.hops.astype(np.int64)
        self._nb_mask = nb.mask
        self._graph = g
        if self._encoder is not None and self._fitted:
            if old is None or n_old == 0:
                self._refresh_codes()
            else:
                changed = np.arange(n_old, len(g))
                touched = pos[changed][:, : self.k_local]
                rows = np.unique(np.concatenate([changed, touched[touched >= 0]]))
                self._update_codes(rows, new_from=n_old)
        return g

    def _encode_rows(self, rows: np.ndarray) -> np.ndarray:
        assert self._encoder is not None
        out = np.empty((rows.shape[0], self.latent_dim), dtype=np.float32)
        for lo in range(0, rows.shape[0], _ENCODE_CHUNK):
            r = rows[lo : lo + _ENCODE_CHUNK]
            ctx = Context(dist=self._nb_dist[r], layer=self._nb_layer[r], hops=self._nb_hops[r])
            enc = self._encoder.encode(self._table[r], self._table, self._nb_pos[r], self._nb_mask[r], ctx)
            out[lo : lo + r.shape[0]] = enc.zhat
        return out

    def _compose(self, z: np.ndarray, phi: np.ndarray) -> np.ndarray:
        """The latent vector ``[z, sqrt(rho) phi]``: its inner products are ``<z,z'> + rho <phi,phi'>``.

        With ``rho = 0`` the diffusion part is left out altogether (narrower codes, cheaper search).
        """
        if not self.spectral or self._phi.shape[0] == 0 or self._rho == 0.0:
            return np.ascontiguousarray(z, dtype=np.float32)
        return np.ascontiguousarray(np.concatenate([z, np.sqrt(self._rho) * phi], axis=1), dtype=np.float32)

    def _neighbour_weights(self, dist_scaled: np.ndarray) -> np.ndarray:
        from ruvector_hnsw.search.spectral import affinity_weights

        return affinity_weights(dist_scaled * self._s0, self.index.space, self._s0)

    def _build_spectral(self) -> None:
        from ruvector_hnsw.search.spectral import diffusion_coordinates

        k = min(10, self.k_local)
        w = np.where(self._nb_mask[:, :k], self._neighbour_weights(self._nb_dist[:, :k]), 0.0)
        self._phi = diffusion_coordinates(self._nb_pos[:, :k], w, self.spectral, self.spectral_time, self.seed)

    def _extend_spectral(self, new_from: int) -> None:
        """Nystrom coordinates for rows added after the eigen-solve (from their older neighbours)."""
        from ruvector_hnsw.search.spectral import nystrom

        n = self._table.shape[0]
        if self._phi.shape[0] >= n:
            return
        start = self._phi.shape[0]
        rows = np.arange(start, n)
        pos = self._nb_pos[rows, : self.k_local]
        pos = np.where(pos < start, pos, -1)  # only rows that already have coordinates
        w = np.where(pos >= 0, self._neighbour_weights(self._nb_dist[rows, : self.k_local]), 0.0)
        self._phi = np.concatenate([self._phi, nystrom(self._phi, pos, w)])

    def _query_phi(self, ctx_pos: np.ndarray, ctx_dist: np.ndarray) -> np.ndarray:
        from ruvector_hnsw.search.spectral import affinity_weights, nystrom

        k = min(10, ctx_pos.shape[1])
        pos = ctx_pos[:, :k]
        w = np.where(pos >= 0, affinity_weights(ctx_dist[:, :k], self.index.space, self._s0), 0.0)
        return nystrom(self._phi, pos, w)

    def _set_rho(self, rho: float, exact: bool = True) -> None:
        """Change the diffusion weight: recompose the codes and rebuild the latent index."""
        self._rho = float(rho)
        z = self._codes[:, : self.latent_dim]
        self._codes = self._compose(z, self._phi)
        self._rebuild_latent(exact)

    def _rebuild_latent(self, exact: bool) -> None:
        self._latent = self._new_latent_index(self._codes.shape[0], exact)
        self._latent.add(self._codes, np.arange(self._codes.shape[0]))

    def _refresh_codes(self, exact: bool = False) -> None:
        """Recompute every database code and rebuild the latent index.

        ``exact=True`` builds a flat (exhaustive, FAISS) latent index, used while training;
        otherwise an HNSW graph over the codes (hnswlib, ``1 - dot``) serves more than
        ``_FLAT_LATENT_MAX`` nodes: exhaustive search over the codes would cost more than the
        HNSW search itself.
        """
        g = self._graph
        assert g is not None
        if self._encoder is not None:  # the mechanism's per-table state (dual_space: latent index)
            self._encoder.prepare_table(self._table)
        if self.spectral and self._phi.shape[0] != len(g):
            if self._phi.shape[0] == 0 or self._phi.shape[0] > len(g):
                self._build_spectral()
            else:
                self._extend_spectral(self._phi.shape[0])
        self._codes = self._compose(self._encode_rows(np.arange(len(g))), self._phi)
        self._rebuild_latent(exact)

    def _update_codes(self, rows: np.ndarray, new_from: int) -> None:
        if self.spectral and self._phi.shape[0]:
            self._extend_spectral(new_from)
        codes = self._compose(self._encode_rows(rows), self._phi[rows] if self._phi.shape[0] else self._phi)
        grown = np.zeros((len(self._table), self._codes.shape[1]), dtype=np.float32)
        grown[: self._codes.shape[0]] = self._codes
        grown[rows] = codes
        self._codes = grown
        fresh = np.arange(new_from, len(self._table))
        self._latent_index().add(self._codes[fresh], fresh)

    def _latent_index(self) -> LatentIndex | HNSWIndex:
        if self._latent is None:
            raise NotFittedError("the latent index is built by fit(); call fit() or load a fitted model")
        return self._latent

    def _new_latent_index(self, n: int, exact: bool = False) -> LatentIndex | HNSWIndex:
        width = self._codes.shape[1]
        if exact or n <= _FLAT_LATENT_MAX:
            return LatentIndex(width, metric="ip", kind="flat", num_threads=self._num_threads)
        serving = HNSWIndex(width, space="ip", M=16, ef_construction=100, seed=self.seed,
                            num_threads=self._num_threads, max_elements=n)
        serving.ef = max(32, self.latent_k)
        return serving

    # ------------------------------------------------------------------ query path
    def _hnsw(self, q: np.ndarray, k: int, g: HNSWGraph) -> tuple[np.ndarray, np.ndarray]:
        ids, dist = self.index.search(q, k=k, ef=max(self.candidates, k))
        pos = np.full(ids.shape, -1, dtype=np.int64)
        ok = ids >= 0
        pos[ok] = g.positions(ids[ok])
        return pos, dist

    def _query_context(self, qs: np.ndarray, ctx_pos: np.ndarray, ctx_dist: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, Context]:
        """Context of each query: its best items (layer 0) + the hubs' links of its best item."""
        kl = min(self.k_local, ctx_pos.shape[1])
        local = ctx_pos[:, :kl]
        lmask = local >= 0
        ldist = np.where(lmask, ctx_dist[:, :kl] / self._s0, 0.0)
        if self.k_global:
            top = np.maximum(ctx_pos[:, 0], 0)
            glob = self._nb_pos[top, self.k_local :].copy()
            glob[ctx_pos[:, 0] < 0] = -1
            gmask = glob >= 0
            gl = self._table[np.maximum(glob, 0)]
            gdist = np.where(gmask, ((gl - qs[:, None, :]) ** 2).sum(-1) * (self._sigma ** 2) / self._s0, 0.0)
            if self.index.space != "l2":  # 1 - cos between unit vectors = |a - b|^2 / 2
                gdist = gdist / 2.0
            glayer = np.where(gmask, self._nb_layer[top, self.k_local :], 0)
            ghops = np.where(gmask, self._nb_hops[top, self.k_local :] + 1, 0)
            ids = np.concatenate([local, glob], axis=1)
            mask = np.concatenate([lmask, gmask], axis=1)
            dist = np.concatenate([ldist, gdist], axis=1).astype(np.float32)
            layer = np.concatenate([np.zeros_like(local, dtype=np.int8), glayer.astype(np.int8)], axis=1)
            hops = np.concatenate([lmask.astype(np.int64), ghops.astype(np.int64)], axis=1)
        else:
            ids, mask, dist = local, lmask, ldist.astype(np.float32)
            layer = np.zeros_like(local, dtype=np.int8)
            hops = lmask.astype(np.int64)
        ids = np.where(mask, ids, -1)
        return np.ascontiguousarray(ids), mask, Context(dist=dist, layer=layer, hops=hops)

    def _encode_queries(self, qs: np.ndarray, ctx_pos: np.ndarray, ctx_dist: np.ndarray) -> np.ndarray:
        assert self._encoder is not None
        ids, mask, ctx = self._query_context(qs, ctx_pos, ctx_dist)
        z = self._encoder.encode(qs, self._table, ids, mask, ctx).zhat
        if self.spectral and self._phi.shape[0] and self._rho != 0.0:
            return self._compose(z, self._query_phi(ctx_pos, ctx_dist))
        return z

    def _score(self, qv: np.ndarray, zq: np.ndarray | None, pool: np.ndarray, known: np.ndarray | None,
               g: HNSWGraph) -> tuple[np.ndarray, np.ndarray]:
        B, P = pool.shape
        scores = np.empty((B, P), dtype=np.float32)
        dist = np.empty((B, P), dtype=np.float32)
        known_arr = np.full((B, P), np.nan, dtype=np.float32) if known is None else known
        enc = self._encoder
        alpha = enc.alpha if (enc is not None and self._fitted) else 0.0
        beta = float(enc.own["beta"][0]) if (enc is not None and self._fitted) else 1.0
        latent = self._codes if alpha != 0.0 else np.zeros((1, 1), dtype=np.float32)
        zq_arr = zq if (zq is not None and alpha != 0.0) else np.zeros((B, 1), dtype=np.float32)
        metric = _kernels.METRIC_L2 if self.index.space == "l2" else _kernels.METRIC_IP
        vectors = g.vectors
        work = float(B) * P * (latent.shape[1] + (vectors.shape[1] if known is None else 0))

        def run(lo: int, hi: int) -> None:
            _kernels.score_pool(qv, vectors, zq_arr, latent, pool, known_arr, metric, alpha, beta,
                                1.0 / self._s0, scores, dist, lo, hi)

        run_row_chunks(run, B, work)
        return scores, dist

    def search(self, queries: Any, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Attention-aware k nearest neighbours.

        Parameters
        ----------
        queries : array_like, (nq, dim) or (dim,)
        k : int
            Results per query. May exceed ``candidates``: the re-scored (and expanded) items
            come first, then the rest of the HNSW ranking in HNSW order.

        Returns
        -------
        ids : (nq, k) int64
            Labels, best first; -1 where fewer than k exist.
        scores : (nq, k) float32
            Higher = better; -inf on padding. Before ``fit`` the order is exactly HNSW's.
        """
        q = as_matrix(queries, "queries", self.index.dim)
        k = check_positive_int(k, "k")
        with self._lock.read():
            g = self._graph
        if g is None or g is not self.index.graph():
            with self._lock.write():
                g = self._sync()
        with self._lock.read():
            return self._search(q, k, g)

    def _search(self, q: np.ndarray, k: int, g: HNSWGraph) -> tuple[np.ndarray, np.ndarray]:
        if self.mechanism_name in TRAINING_FREE:
            return self._search_training_free(q, k, g)
        C = self.candidates
        hn_pos, hn_dist = self._hnsw(q, max(C, k), g)
        qv = self._stored_query(q)
        if not self._fitted:
            scores = np.where(hn_pos >= 0, -hn_dist / self._s0, -np.inf).astype(np.float32)
            return self._finish(hn_pos[:, :k], scores[:, :k], g)
        qs = self._standardise(q)
        pool = hn_pos[:, :C]
        dist = hn_dist[:, :C]
        zq = self._encode_queries(qs, pool, dist)
        if self.expand == 0:
            scores, dist = self._score(qv, zq, pool, dist, g)
        reach = max(self.latent_k, k)
        for round_ in range(self.expand):
            lat_pos, _ = self._latent_index().search(zq, reach)
            if round_ == 0:  # the best items by the learned term: the latent neighbours, nearest first
                top = lat_pos[:, : self.walk_top]
            else:  # the best re-scored items; the query code is refined with them as its context
                ranked = np.argsort(-scores, axis=1, kind="stable")
                top = np.take_along_axis(pool, ranked[:, : self.walk_top], axis=1)
            walk = np.where(top[:, :, None] >= 0, self._nb_pos[np.maximum(top, 0), : self.k_local], -1)
            walk = walk.reshape(len(q), -1)
            merged = np.concatenate([pool, lat_pos, walk], axis=1)
            known = np.concatenate([dist, np.full(lat_pos.shape, np.nan, np.float32),
                                    np.full(walk.shape, np.nan, np.float32)], axis=1)
            pool, known = _kernels.unique_rows(merged, known, g.deleted)
            scores, dist = self._score(qv, zq, pool, known, g)
            if round_ + 1 < self.expand:
                ranked = np.argsort(-scores, axis=1, kind="stable")[:, : self.k_local]
                zq = self._encode_queries(qs, np.take_along_axis(pool, ranked, axis=1),
                                          np.take_along_axis(dist, ranked, axis=1))
        order = np.argsort(-scores, axis=1, kind="stable")
        pool = np.take_along_axis(pool, order, axis=1)
        scores = np.take_along_axis(scores, order, axis=1)
        if pool.shape[1] < k:  # the HNSW tail, in HNSW order, below every re-scored item
            tail_pos, tail_scores = self._tail(hn_pos, pool, scores, k)
            pool = np.concatenate([pool, tail_pos], axis=1)
            scores = np.concatenate([scores, tail_scores], axis=1)
        return self._finish(pool[:, :k], scores[:, :k], g)

    @staticmethod
    def _tail(hn_pos: np.ndarray, pool: np.ndarray, scores: np.ndarray, k: int
              ) -> tuple[np.ndarray, np.ndarray]:
        need = k - pool.shape[1]
        B = hn_pos.shape[0]
        tail = np.full((B, need), -1, dtype=np.int64)
        tail_s = np.full((B, need), -np.inf, dtype=np.float32)
        floor = np.where(np.isfinite(scores), scores, np.inf).min(axis=1)
        floor = np.where(np.isfinite(floor), floor, 0.0)
        for b in range(B):
            seen = set(pool[b][pool[b] >= 0].tolist())
            rest = [p for p in hn_pos[b].tolist() if p >= 0 and p not in seen][:need]
            tail[b, : len(rest)] = rest
            tail_s[b, : len(rest)] = floor[b] - 1.0 - np.arange(len(rest), dtype=np.float32)
        return tail, tail_s

    def _finish(self, pos: np.ndarray, scores: np.ndarray, g: HNSWGraph) -> tuple[np.ndarray, np.ndarray]:
        ids = np.where(pos >= 0, g.labels[np.maximum(pos, 0)], -1).astype(np.int64)
        if ids.shape[1] < scores.shape[1]:
            scores = scores[:, : ids.shape[1]]
        out_scores = np.where(pos >= 0, scores, -np.inf).astype(np.float32)
        return ids, out_scores

    # ------------------------------------------------------------------ training-free baselines
    def _search_training_free(self, q: np.ndarray, k: int, g: HNSWGraph) -> tuple[np.ndarray, np.ndarray]:
        C = self.candidates
        qv = self._stored_query(q)
        if self.mechanism_name == "dba":
            vectors = self._dba_vectors(g)
        else:
            vectors = g.vectors
        hn_pos, _ = self._hnsw(q, max(C, k), g)
        if self.mechanism_name == "alpha_qe":
            top = hn_pos[:, : self._qe_n]
            q2 = expand_vectors(qv, vectors[np.maximum(top, 0)], top >= 0, alpha=self._qe_alpha,
                                metric=self.index.space)
            hn_pos, _ = self._hnsw(q2, max(C, k), g)
            qv = q2
        pool = hn_pos[:, :C]
        B, P = pool.shape
        scores = np.empty((B, P), dtype=np.float32)
        dist = np.empty((B, P), dtype=np.float32)
        metric = _kernels.METRIC_L2 if self.index.space == "l2" else _kernels.METRIC_IP
        _kernels.score_pool(qv, vectors, np.zeros((B, 1), np.float32), np.zeros((1, 1), np.float32), pool,
                            np.full((B, P), np.nan, np.float32), metric, 0.0, 1.0, 1.0, scores, dist, 0, B)
        order = np.argsort(-scores, axis=1, kind="stable")
        pool = np.take_along_axis(pool, order, axis=1)
        scores = np.take_along_axis(scores, order, axis=1)
        if pool.shape[1] < k:
            tail_pos, tail_scores = self._tail(hn_pos, pool, scores, k)
            pool = np.concatenate([pool, tail_pos], axis=1)
            scores = np.concatenate([scores, tail_scores], axis=1)
        return self._finish(pool[:, :k], scores[:, :k], g)

    def _dba_vectors(self, g: HNSWGraph) -> np.ndarray:
        cached = self._dba_cache
        if cached is not None and cached[0] is g:
            return cached[1]
        top = self._nb_pos[:, : self._qe_n]
        vec = expand_vectors(g.vectors, g.vectors[np.maximum(top, 0)], top >= 0, alpha=self._qe_alpha,
                             metric=self.index.space)
        self._dba_cache = (g, vec)
        return vec

    # ------------------------------------------------------------------ training
    def fit(
        self,
        train_queries: Any,
        labels: Any = None,
        query_labels: Any = None,
        *,
        positives: Any = None,
        epochs: int = 8,
        batch_size: int = 128,
        lr: float = 1e-2,
        temperature: float = 0.1,
        extra_positives: int = 16,
        random_negatives: int = 48,
        latent_negatives: int = 32,
        val_fraction: float = 0.1,
        patience: int = 3,
        weight_decay: float = 1e-4,
        progress: bool = False,
        checkpoint_dir: str | Path | None = None,
        resume: bool | str | Path = False,
    ) -> TrainingHistory:
        """Train the attention encoder contrastively on labelled queries.

        Parameters
        ----------
        train_queries : array_like, (nq, dim)
            Training queries (keep them disjoint from evaluation queries).
        labels : array_like or mapping
            ``labels[id]`` = label of index item ``id`` (an array indexed by id, or a mapping).
        query_labels : array_like, (nq,)
            Label of each training query; relevant items share it.
        positives : array_like, (nq, p) of ids, optional
            Instead of labels: explicit relevant ids per query (-1 padding).
        epochs, batch_size, lr, weight_decay : int, int, float, float
            Adam with warm-up + cosine learning rate.
        temperature : float
            InfoNCE temperature of the latent similarity (trains the attention and the codes).
            The weight ``alpha`` of the latent term in the residual score is then calibrated on
            the validation queries (a grid including 0, so never below the index there).
        extra_positives : int
            Random relevant items added to each query's pool, so the model learns to reach
            relevant items outside the HNSW top-C.
        random_negatives : int
            Uniformly random database items added to each pool (mostly irrelevant), so that
            distance from the query alone does not predict the random positives.
        latent_negatives : int
            Hard negatives from the current latent codes (re-mined every epoch).
        val_fraction, patience : float, int
            Held-out share of the training queries; early stopping on their mAP@R.
        progress : bool
            Show a progress bar (needs tqdm).
        checkpoint_dir, resume
            Trainer checkpoints (``last`` every epoch, ``best`` on improvement) and resuming
            from them (``resume=True`` or a checkpoint path).

        Returns
        -------
        TrainingHistory
            Per-epoch loss, validation mAP@R (and calibrated alpha), lr and times; the best
            epoch's parameters are restored.
        """
        if self._encoder is None:
            raise ConfigError(f"{self.mechanism_name} is training-free; there is nothing to fit")
        from ruvector_hnsw.search._training import fit_attention_search

        with self._lock.write():
            g = self._sync()
            q = as_matrix(train_queries, "train_queries", self.index.dim)
            pos_lists = _positive_lists(g, q.shape[0], labels, query_labels, positives)
            return fit_attention_search(
                self, g, q, pos_lists, epochs=check_positive_int(epochs, "epochs"),
                batch_size=check_positive_int(batch_size, "batch_size"), lr=lr, temperature=temperature,
                extra_positives=extra_positives, random_negatives=random_negatives,
                latent_negatives=latent_negatives, val_fraction=val_fraction, patience=patience,
                weight_decay=weight_decay, progress=progress, checkpoint_dir=checkpoint_dir, resume=resume,
            )

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        """Write the model to ``path.npz`` (arrays) + ``path.json`` (versioned config, SHA-256).

        Each file is written atomically. The index is saved separately (:meth:`HNSWIndex.save`).
        """
        state: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "mechanism": self.mechanism_name,
            "candidates": self.candidates,
            "expand": self.expand,
            "k_local": self.k_local,
            "k_global": self.k_global,
            "seed": self.seed,
            "latent_dim": self.latent_dim,
            "spectral": self.spectral,
            "spectral_time": self.spectral_time,
            "rho": self._rho,
            "phi": self._phi,
            "mech_config": _jsonable_config(self.mech_config),
            "qe": {"n": self._qe_n, "alpha": self._qe_alpha} if self._encoder is None else None,
            "fitted": self._fitted,
            "index": {"dim": self.index.dim, "space": self.index.space},
            "params": dict(self._encoder.params) if self._encoder is not None else {},
            "scale": ({"mu": self._mu, "sigma": self._sigma, "s0": self._s0}
                      if self._graph is not None or self._preset_scale else None),
        }
        save_checkpoint(path, state, kind=_MODEL_KIND)

    @classmethod
    def load(cls, path: str | Path, index: HNSWIndex) -> AttentionSearch:
        """Load a model written by :meth:`save` onto ``index`` (which must match its dim and space).

        Raises
        ------
        FileNotFoundError
            If the files are missing.
        IndexCorruptedError, FileFormatError
            Checksum mismatch, another kind of file, a newer format, missing or misshaped params.
        ShapeMismatchError
            If the index's dim/space differ from the model's.
        """
        state = load_checkpoint(path, kind=_MODEL_KIND)
        try:
            if int(state["format_version"]) > FORMAT_VERSION:
                raise IndexCorruptedError(f"{path}: model format {state['format_version']} is newer than supported")
            meta_index = state["index"]
            if int(meta_index["dim"]) != index.dim or meta_index["space"] != index.space:
                raise ShapeMismatchError(
                    f"model was trained for dim={meta_index['dim']} space={meta_index['space']!r}, "
                    f"the index has dim={index.dim} space={index.space!r}")
            cfg = dict(state["mech_config"])
            if state["qe"] is not None:
                cfg.update(state["qe"])
            obj = cls(index, str(state["mechanism"]), candidates=int(state["candidates"]),
                      expand=int(state["expand"]), k_local=int(state["k_local"]), k_global=int(state["k_global"]),
                      seed=int(state["seed"]), latent_dim=int(state["latent_dim"]),
                      spectral=int(state["spectral"]), spectral_time=int(state["spectral_time"]), **cfg)
            obj._rho = float(state["rho"])
            obj._phi = np.ascontiguousarray(state["phi"], dtype=np.float32)
            if obj._phi.ndim != 2 or (obj._phi.size and obj._phi.shape[1] > obj.spectral):
                raise IndexCorruptedError(f"{path}: diffusion coordinates of the wrong shape")
            if obj._encoder is not None:
                saved = state["params"]
                params = obj._encoder.params
                if set(saved) != set(params) or any(np.shape(saved[k]) != params[k].shape for k in params):
                    raise IndexCorruptedError(f"{path}: parameters do not match the mechanism's")
                for k, v in params.items():
                    v[...] = saved[k]
            if state["scale"] is not None:
                obj._mu = np.asarray(state["scale"]["mu"], dtype=np.float32)
                obj._sigma = float(state["scale"]["sigma"])
                obj._s0 = float(state["scale"]["s0"])
                obj._preset_scale = True
            obj._fitted = bool(state["fitted"])
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, (ShapeMismatchError, IndexCorruptedError, ConfigError)):
                raise
            raise IndexCorruptedError(f"{path}: invalid model state ({exc})") from exc
        return obj


def _jsonable_config(cfg: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        if isinstance(v, type):
            v = np.dtype(v).name
        elif isinstance(v, np.dtype):
            v = v.name
        elif isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out


def _positive_lists(g: HNSWGraph, nq: int, labels: Any, query_labels: Any, positives: Any) -> list[np.ndarray]:
    """Relevant table rows of every training query, from labels or explicit positives."""
    if positives is not None:
        arr = np.asarray(positives)
        if arr.ndim != 2 or arr.shape[0] != nq:
            raise ShapeMismatchError(f"positives must be (n_queries={nq}, p), got shape {arr.shape}")
        out = []
        for row in arr:
            ids = as_ids(row[row >= 0], "positives", unique=False)
            out.append(np.unique(g.positions(ids)))
        return out
    if labels is None or query_labels is None:
        raise InvalidInputError("fit needs labels= and query_labels=, or positives=")
    if isinstance(labels, Mapping):
        try:
            lab = np.array([labels[int(v)] for v in g.labels.tolist()])
        except KeyError as exc:
            raise InvalidInputError(f"labels has no entry for index id {exc.args[0]}") from exc
    else:
        arr = np.asarray(labels)
        if arr.ndim != 1 or arr.shape[0] <= int(g.labels.max(initial=0)):
            raise ShapeMismatchError(
                f"labels must be indexed by id (length > {int(g.labels.max(initial=0))}), got shape {arr.shape}")
        lab = arr[g.labels]
    qlab = np.asarray(query_labels)
    if qlab.shape != (nq,):
        raise ShapeMismatchError(f"query_labels must have shape ({nq},), got {qlab.shape}")
    alive = ~g.deleted
    order = np.argsort(lab, kind="stable")
    sorted_lab = lab[order]
    out = []
    for value in qlab.tolist():
        lo, hi = np.searchsorted(sorted_lab, value, "left"), np.searchsorted(sorted_lab, value, "right")
        rows = order[lo:hi]
        out.append(np.sort(rows[alive[rows]]))
    return out

