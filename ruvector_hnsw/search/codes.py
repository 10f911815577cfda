"""Cached database codes and the latent kNN over them (the encoder's query-independent output).

Every graph row ``v`` has a code ``Z[v] = [zhat_v, sqrt(rho) * phi_v]``: the encoder's unit code
and, when the diffusion weight ``rho`` is non-zero, the row's diffusion coordinates. Inner
products of codes are ``<zhat, zhat'> + rho <phi, phi'>``, the learned term of the score.

:class:`LatentCodes` stores them in growable, row-aligned buffers (so ``index.add`` appends in
amortised O(rows added) and updates rows in place) and answers latent kNN queries:

- ``"flat"``: exact inner-product search over the current buffer (``faiss.knn``), nothing to
  maintain, and results that depend only on the codes;
- ``"hnsw"``: an hnswlib graph over the codes (space ``ip``), built single-threaded in row order
  (so a given set of codes always gives the same graph). Rows added or re-encoded after the build
  form a *delta* that is searched exactly and merged with the graph's answer (their stale graph
  entries are dropped), so an update costs no graph insertion; the graph is rebuilt when the delta
  grows past a quarter of the rows. Its answers are approximate, as any HNSW graph's: a model
  updated this way and one built afresh can differ by the latent graph's approximation.

``"auto"`` picks ``flat`` up to :data:`FLAT_MAX` rows.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from ruvector_hnsw.errors import ConfigError
from ruvector_hnsw.index import HNSWIndex
from ruvector_hnsw.search._rows import GrowableRows

__all__ = ["FLAT_MAX", "LATENT_KINDS", "LatentCodes"]

#: the ``"auto"`` latent index is exact up to this many rows
FLAT_MAX = 5_000
#: the latent graph is rebuilt when the delta holds more than this share of the rows ...
DELTA_MAX_FRACTION = 0.25
#: ... and more than this many rows
DELTA_MIN = 8_000
LATENT_KINDS = ("auto", "flat", "hnsw")


class LatentCodes:
    """Row-aligned codes ``[zhat, sqrt(rho) phi]`` and latent kNN over them.

    Parameters
    ----------
    z : (N, p) float32
        Encoder codes (unit rows).
    phi : (N, m) float32
        Diffusion coordinates (``m = 0``: none).
    rho : float
        Weight of the diffusion part (0 leaves it out of the codes altogether).
    kind : {"auto", "flat", "hnsw"}
    seed : int
        Seed of the latent HNSW graph.
    ef : int
        Search ``ef`` of the latent HNSW graph.
    phi_fitted : int, optional
        Rows whose diffusion coordinates come from the sketch (default: all of ``phi``); the
        coordinates of later rows are a function of their contexts (Nystrom rule over these rows).
    """

    def __init__(self, z: np.ndarray, phi: np.ndarray, rho: float, *, kind: str = "auto", seed: int = 0,
                 ef: int = 64, phi_fitted: int | None = None) -> None:
        if kind not in LATENT_KINDS:
            raise ConfigError(f"latent must be one of {LATENT_KINDS}, got {kind!r}")
        self.kind = kind
        self.seed = int(seed)
        self.ef = int(ef)
        self.rho = float(rho)
        self.z = GrowableRows(np.ascontiguousarray(z, dtype=np.float32))
        self.phi = GrowableRows(np.ascontiguousarray(phi, dtype=np.float32))
        #: rows whose diffusion coordinates come from the sketch (later rows: Nystrom from these)
        self.phi_fitted = int(self.phi.view.shape[0] if phi_fitted is None else phi_fitted)
        self._codes = GrowableRows(self.compose(self.z.view, self.phi.view))
        self._graph: HNSWIndex | None = None
        #: (N, 1) rows whose code the latent graph does not hold (answered by the exact delta search)
        self._stale = GrowableRows(np.zeros((len(self.z), 1), dtype=bool))
        if self.resolved_kind == "hnsw":
            self._graph = self._build_graph()

    # ------------------------------------------------------------------ shape
    @property
    def uses_phi(self) -> bool:
        return self.rho != 0.0 and self.phi.view.shape[1] > 0

    @property
    def width(self) -> int:
        return int(self._codes.view.shape[1])

    @property
    def resolved_kind(self) -> str:
        if self.kind != "auto":
            return self.kind
        return "flat" if len(self.z) <= FLAT_MAX else "hnsw"

    @property
    def codes(self) -> np.ndarray:
        """The live ``(N, width)`` code matrix (a view: do not write)."""
        return self._codes.view

    def __len__(self) -> int:
        return len(self.z)

    def compose(self, z: np.ndarray, phi: np.ndarray | None) -> np.ndarray:
        """Codes of rows: ``[z, sqrt(rho) phi]`` (``z`` alone when the diffusion part is off)."""
        if self.rho == 0.0 or phi is None or phi.shape[1] == 0:
            return np.ascontiguousarray(z, dtype=np.float32)
        return np.ascontiguousarray(np.concatenate([z, np.float32(np.sqrt(self.rho)) * phi], axis=1),
                                    dtype=np.float32)

    # ------------------------------------------------------------------ latent graph
    def _build_graph(self) -> HNSWIndex:
        codes = self._codes.view
        g = HNSWIndex(codes.shape[1], space="ip", M=16, ef_construction=100, seed=self.seed, num_threads=1,
                      max_elements=max(codes.shape[0], 16))
        if codes.shape[0]:
            g.add(codes, ids=np.arange(codes.shape[0]))
        g.ef = self.ef
        return g

    def search(self, zq: np.ndarray, k: int, num_threads: int = 1) -> np.ndarray:
        """Rows of the ``k`` codes with the largest inner product with each ``zq`` row (-1 padded).

        ``hnsw``: the latent graph's answer over the rows it holds with their current codes, merged
        with an exact search over the *delta* (rows added or re-encoded since the graph was built).
        """
        n = len(self)
        B = zq.shape[0]
        out = np.full((B, k), -1, dtype=np.int64)
        if n == 0:
            return out
        zq = np.ascontiguousarray(zq, dtype=np.float32)
        kk = min(k, n)
        if self._graph is None:
            _, idx = faiss.knn(zq, self._codes.view, kk, metric=faiss.METRIC_INNER_PRODUCT)
            out[:, :kk] = idx
            out[out >= n] = -1
            return out
        fetch = min(kk + 8 + kk // 4, len(self._graph)) if len(self._graph) else 0
        parts = []
        if fetch:
            ids, _ = self._graph.search(zq, k=fetch, ef=max(self.ef, fetch))
            ids = np.where((ids >= 0) & ~self._stale.view[np.maximum(ids, 0), 0], ids, -1)
            parts.append(ids)
        delta = np.flatnonzero(self._stale.view[:, 0])
        if delta.size:
            _, local = faiss.knn(zq, np.ascontiguousarray(self._codes.view[delta]), min(kk, delta.size),
                                 metric=faiss.METRIC_INNER_PRODUCT)
            parts.append(np.where(local >= 0, delta[np.maximum(local, 0)], -1))
        cand = np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
        sims = np.einsum("bd,bkd->bk", zq, self._codes.view[np.maximum(cand, 0)])
        sims = np.where(cand >= 0, sims, -np.inf)
        order = np.argsort(-sims, axis=1, kind="stable")[:, :kk]
        out[:, :kk] = np.take_along_axis(cand, order, axis=1)
        return out

    @property
    def delta_size(self) -> int:
        """Rows answered by the exact delta search (``hnsw`` only: added or re-encoded since the build)."""
        return int(self._stale.view[:, 0].sum()) if self._graph is not None else 0

    # ------------------------------------------------------------------ updates
    def update(self, rows: np.ndarray, z_rows: np.ndarray, n: int, phi_rows: np.ndarray | None = None,
               phi_values: np.ndarray | None = None) -> None:
        """Grow to ``n`` rows and set the codes of ``rows`` (new rows must all be in ``rows``).

        ``phi_rows`` (a subset of ``rows``) get the diffusion coordinates ``phi_values``. With an
        ``hnsw`` latent graph the changed rows join the exact delta; the graph is rebuilt (in row
        order, single-threaded) once the delta exceeds :data:`DELTA_MAX_FRACTION` of the rows.
        """
        self.z.resize(n)
        if self.phi.view.shape[1]:
            self.phi.resize(n)
            if phi_rows is not None and phi_values is not None and phi_rows.size:
                self.phi.set_rows(phi_rows, phi_values)
        self._codes.resize(n)
        self._stale.resize(n, True)
        if rows.size:
            self.z.set_rows(rows, z_rows)
            self._codes.set_rows(rows, self.compose(self.z.view[rows], self.phi.view[rows]
                                                     if self.phi.view.shape[1] else None))
            self._stale.set_rows(rows, True)
        if self.kind == "auto" and self._graph is None and self.resolved_kind == "hnsw":
            self._rebuild()
        elif self._graph is not None and self.delta_size > max(DELTA_MIN, DELTA_MAX_FRACTION * n):
            self._rebuild()

    def _rebuild(self) -> None:
        self._graph = self._build_graph()
        self._stale = GrowableRows(np.zeros((len(self), 1), dtype=bool))

    def with_rho(self, rho: float) -> LatentCodes:
        """The same codes with another diffusion weight (latent index rebuilt)."""
        return LatentCodes(self.z.view, self.phi.view, rho, kind=self.kind, seed=self.seed, ef=self.ef,
                           phi_fitted=self.phi_fitted)

    # ------------------------------------------------------------------ persistence
    def state(self) -> dict[str, Any]:
        """Arrays and settings that rebuild this object exactly (the latent graph as hnswlib bytes)."""
        out: dict[str, Any] = {"z": self.z.view.copy(), "phi": self.phi.view.copy(), "rho": self.rho,
                               "kind": self.kind, "seed": self.seed, "ef": self.ef, "phi_fitted": self.phi_fitted}
        if self._graph is not None:
            out["graph"] = self._graph
            out["stale"] = self._stale.view[:, 0].copy()
        return out

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> LatentCodes:
        obj = cls.__new__(cls)
        obj.kind = str(state["kind"])
        obj.seed = int(state["seed"])
        obj.ef = int(state["ef"])
        obj.rho = float(state["rho"])
        obj.z = GrowableRows(np.ascontiguousarray(state["z"], dtype=np.float32))
        obj.phi = GrowableRows(np.ascontiguousarray(state["phi"], dtype=np.float32))
        obj.phi_fitted = int(state["phi_fitted"])
        obj._codes = GrowableRows(obj.compose(obj.z.view, obj.phi.view))
        graph = state.get("graph")
        obj._stale = GrowableRows(np.zeros((len(obj.z), 1), dtype=bool))
        if graph is not None:
            obj._graph = graph
            stale = state.get("stale")
            if stale is not None:
                obj._stale = GrowableRows(np.asarray(stale, dtype=bool).reshape(-1, 1).copy())
        else:
            obj._graph = obj._build_graph() if obj.resolved_kind == "hnsw" else None
        return obj
