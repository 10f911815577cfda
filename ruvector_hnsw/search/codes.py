"""Cached database codes and the latent kNN over them (the encoder's query-independent output).

Every graph row ``v`` has a code ``Z[v] = [zhat_v, sqrt(rho) * phi_v]``: the encoder's unit code
and, when the diffusion weight ``rho`` is non-zero, the row's diffusion coordinates. Inner
products of codes are ``<zhat, zhat'> + rho <phi, phi'>``, the learned term of the score.

:class:`LatentCodes` stores them in growable, row-aligned buffers (so ``index.add`` appends in
amortised O(rows added) and updates rows in place) and answers latent kNN queries:

- ``"flat"``: exact inner-product search over the current buffer (``faiss.knn``), nothing to
  maintain, and results that depend only on the codes;
- ``"hnsw"``: an hnswlib graph over the codes (space ``ip``), built single-threaded in row order
  (so a given set of codes always gives the same graph) and updated in place for changed rows.
  A graph updated row by row is not the graph a rebuild gives: expansion results can then differ
  from a freshly built model's by the latent graph's approximation.

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
FLAT_MAX = 20_000
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
        self._codes = GrowableRows(self._compose(self.z.view, self.phi.view))
        self._graph: HNSWIndex | None = None
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
        """Codes of query rows: ``[z, sqrt(rho) phi]`` (``z`` alone when the diffusion part is off)."""
        return self._compose(z, phi)

    def _compose(self, z: np.ndarray, phi: np.ndarray | None) -> np.ndarray:
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
        """Rows of the ``k`` codes with the largest inner product with each ``zq`` row (-1 padded)."""
        n = len(self)
        B = zq.shape[0]
        out = np.full((B, k), -1, dtype=np.int64)
        if n == 0:
            return out
        kk = min(k, n)
        if self._graph is None:
            _, idx = faiss.knn(np.ascontiguousarray(zq, dtype=np.float32), self._codes.view, kk,
                               metric=faiss.METRIC_INNER_PRODUCT)
            out[:, :kk] = idx
        else:
            ids, _ = self._graph.search(zq, k=kk, ef=max(self.ef, kk))
            out[:, :kk] = ids
        out[out >= n] = -1
        return out

    # ------------------------------------------------------------------ updates
    def update(self, rows: np.ndarray, z_rows: np.ndarray, n: int, phi_rows: np.ndarray | None = None,
               phi_values: np.ndarray | None = None) -> None:
        """Grow to ``n`` rows and set the codes of ``rows`` (new rows must all be in ``rows``).

        ``phi_rows`` (a subset of ``rows``) get the diffusion coordinates ``phi_values``.
        """
        old = len(self)
        self.z.resize(n)
        if self.phi.view.shape[1]:
            self.phi.resize(n)
            if phi_rows is not None and phi_values is not None and phi_rows.size:
                self.phi.set_rows(phi_rows, phi_values)
        self._codes.resize(n)
        if rows.size:
            self.z.set_rows(rows, z_rows)
            self._codes.set_rows(rows, self._compose(self.z.view[rows], self.phi.view[rows]
                                                     if self.phi.view.shape[1] else None))
        if self._graph is not None and rows.size:
            stale = rows[rows < old]
            if stale.size:
                self._graph.delete(stale)
            self._graph.add(self._codes.view[rows], ids=rows)
        elif self._graph is None and self.kind == "auto" and self.resolved_kind == "hnsw":
            self._graph = self._build_graph()

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
        obj._codes = GrowableRows(obj._compose(obj.z.view, obj.phi.view))
        graph = state.get("graph")
        obj._graph = graph if graph is not None else (obj._build_graph() if obj.resolved_kind == "hnsw" else None)
        return obj
