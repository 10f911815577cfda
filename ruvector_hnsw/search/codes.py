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

Compact codes (``dtype="float16"`` or ``"int8"``, :mod:`ruvector_hnsw.search.quant`): the codes
and the diffusion coordinates are stored in that dtype (no float32 copy of the encoder codes is
kept) and read back as float32 in every computation. The latent kNN reads the same compact codes:
``flat`` is an exact search over them (numba, no second copy), ``hnsw`` a :class:`LinkGraph` -
the links of an hnswlib graph built (single-threaded, in row order) over the read-back codes, its
float vectors dropped - searched by the same HNSW algorithm over the compact codes. Codes are
composed from the *stored* diffusion coordinates, so a row's stored code is a function of its
float32 encoder code and stored coordinates alone: incremental updates equal a fresh build.
:meth:`LatentCodes.memory_bytes` reports the bytes of each part.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from ruvector_hnsw.errors import ConfigError
from ruvector_hnsw.index import HNSWIndex
from ruvector_hnsw.search import _quant_kernels as qk
from ruvector_hnsw.search._rows import GrowableRows
from ruvector_hnsw.search.quant import CodeRows, check_code_dtype
from ruvector_hnsw.threads import run_row_chunks

__all__ = ["FLAT_MAX", "LATENT_KINDS", "LatentCodes", "LinkGraph", "hnswlib_bytes"]

#: the ``"auto"`` latent index is exact up to this many rows
FLAT_MAX = 5_000
#: the latent graph is rebuilt when the delta holds more than this share of the rows ...
DELTA_MAX_FRACTION = 0.25
#: ... and more than this many rows
DELTA_MIN = 8_000
LATENT_KINDS = ("auto", "flat", "hnsw")
#: links per node of the latent graph (``2 * GRAPH_M`` on layer 0) and its build beam
GRAPH_M = 16
GRAPH_EF_CONSTRUCTION = 100


def hnswlib_bytes(graph: HNSWIndex) -> int:
    """Bytes of an hnswlib graph's element storage.

    Per element: the layer-0 record (``2 M`` links + count, the float32 vector, the label), the
    pointer to its upper link lists and its level; per upper layer of an element, ``M`` links +
    count. (hnswlib's label hash map and fixed-size lock tables are left out.)
    """
    g = graph.graph()
    n = len(g)
    m = int(graph.M)
    level0 = (2 * m + 1) * 4 + 4 * graph.dim + 8
    upper = int(np.asarray(g.levels, dtype=np.int64).sum()) * (m + 1) * 4
    return int(n * (level0 + 8 + 4) + upper)


def _reorder_csr(indptr: np.ndarray, idx: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The CSR whose row ``r`` is row ``order[r]`` of ``(indptr, idx)``."""
    counts = np.diff(indptr)[order]
    new_ptr = np.zeros(order.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=new_ptr[1:])
    src = np.repeat(indptr[:-1][order] - new_ptr[:-1], counts) + np.arange(int(new_ptr[-1]), dtype=np.int64)
    return new_ptr, idx[src]


class LinkGraph:
    """The links of an HNSW graph over row-aligned codes, without vectors (searched over compact codes).

    Built by :meth:`build`: an hnswlib graph (space ``ip``, :data:`GRAPH_M`, single-threaded, rows
    inserted in order, so given codes always give the same links) over float32 codes; its links
    are kept as CSR arrays (layer 0: ``l0_ptr``/``l0_idx`` over all rows; upper layers per
    (node, layer) pair) and the graph itself is dropped. :meth:`search` runs HNSW's search
    (greedy descent, then a beam of width ``ef`` on layer 0) reading a :class:`CodeRows`.
    """

    def __init__(self, arrays: dict[str, np.ndarray], entry: int, max_level: int) -> None:
        self.l0_ptr = np.ascontiguousarray(arrays["l0_ptr"], dtype=np.int64)
        self.l0_idx = np.ascontiguousarray(arrays["l0_idx"], dtype=np.int32)
        self.up_nodes = np.ascontiguousarray(arrays["up_nodes"], dtype=np.int64)
        self.up_first = np.ascontiguousarray(arrays["up_first"], dtype=np.int64)
        self.up_ptr = np.ascontiguousarray(arrays["up_ptr"], dtype=np.int64)
        self.up_idx = np.ascontiguousarray(arrays["up_idx"], dtype=np.int32)
        self.entry = int(entry)
        self.max_level = int(max_level)

    def __len__(self) -> int:
        return int(self.l0_ptr.shape[0] - 1)

    @classmethod
    def build(cls, codes: np.ndarray, seed: int) -> LinkGraph:
        """Links of the hnswlib graph over ``codes`` (float32, row ``r`` inserted as id ``r``)."""
        n, w = codes.shape
        g = HNSWIndex(max(w, 1), space="ip", M=GRAPH_M, ef_construction=GRAPH_EF_CONSTRUCTION, seed=seed,
                      num_threads=1, max_elements=max(n, 16))
        if n:
            g.add(codes, ids=np.arange(n))
        snap = g.graph()
        labels = np.asarray(snap.labels, dtype=np.int64)
        order = np.argsort(labels, kind="stable")  # position of row r (labels are the rows)
        l0_ptr, l0_idx = _reorder_csr(*snap.layer(0), order)
        levels = np.asarray(snap.levels, dtype=np.int64)[order]
        up_nodes = np.flatnonzero(levels >= 1).astype(np.int64)
        up_first = np.zeros(up_nodes.shape[0] + 1, dtype=np.int64)
        np.cumsum(levels[up_nodes], out=up_first[1:])
        n_pairs = int(up_first[-1])
        counts = np.zeros(n_pairs, dtype=np.int64)
        layers = []
        for layer in range(1, int(snap.max_level) + 1):
            ptr, idx = _reorder_csr(*snap.layer(layer), order)
            at = np.flatnonzero(levels[up_nodes] >= layer)
            pair = up_first[at] + layer - 1
            counts[pair] = np.diff(ptr)[up_nodes[at]]
            layers.append((pair, ptr, idx, up_nodes[at]))
        up_ptr = np.zeros(n_pairs + 1, dtype=np.int64)
        np.cumsum(counts, out=up_ptr[1:])
        up_idx = np.zeros(int(up_ptr[-1]), dtype=np.int64)
        for pair, ptr, idx, nodes in layers:
            c = counts[pair]
            dst = np.repeat(up_ptr[pair], c) + _ranks(c)
            src = np.repeat(ptr[nodes], c) + _ranks(c)
            up_idx[dst] = idx[src]
        entry = int(snap.entry_point) if n else -1
        return cls({"l0_ptr": l0_ptr, "l0_idx": l0_idx, "up_nodes": up_nodes, "up_first": up_first,
                    "up_ptr": up_ptr, "up_idx": up_idx}, entry, int(snap.max_level) if n else 0)

    def search(self, zq: np.ndarray, codes: CodeRows, fetch: int, ef: int) -> np.ndarray:
        """``(B, fetch)`` rows with the largest inner product found (-1 padded)."""
        data, scale, lut, half = codes.kernel_args()
        zq = np.ascontiguousarray(zq, dtype=np.float32)
        out = np.full((zq.shape[0], fetch), -1, dtype=np.int64)
        ef = max(int(ef), fetch, 1)

        def run(lo: int, hi: int) -> None:
            qk.graph_search(zq, data, scale, lut, half, self.l0_ptr, self.l0_idx, self.up_nodes, self.up_first,
                            self.up_ptr, self.up_idx, self.entry, self.max_level, ef, out, lo, hi)

        run_row_chunks(run, zq.shape[0], float(zq.shape[0]) * ef * 32 * data.shape[1])
        return out

    def memory_bytes(self) -> int:
        """Bytes of the link arrays."""
        return int(sum(a.nbytes for a in (self.l0_ptr, self.l0_idx, self.up_nodes, self.up_first, self.up_ptr,
                                          self.up_idx)))

    def state(self) -> dict[str, Any]:
        return {"l0_ptr": self.l0_ptr.copy(), "l0_idx": self.l0_idx.copy(), "up_nodes": self.up_nodes.copy(),
                "up_first": self.up_first.copy(), "up_ptr": self.up_ptr.copy(), "up_idx": self.up_idx.copy(),
                "entry": self.entry, "max_level": self.max_level}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> LinkGraph:
        return cls({k: np.asarray(state[k]) for k in ("l0_ptr", "l0_idx", "up_nodes", "up_first", "up_ptr",
                                                      "up_idx")}, int(state["entry"]), int(state["max_level"]))


def _ranks(counts: np.ndarray) -> np.ndarray:
    """``concatenate([arange(c) for c in counts])``."""
    total = int(counts.sum())
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(total, dtype=np.int64) - starts


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
    dtype : {"float32", "float16", "int8"}
        Storage of the codes and diffusion coordinates (see the module docstring). ``float32``
        also keeps the encoder codes ``z`` apart (exactly); compact dtypes read them back from
        the codes.
    """

    def __init__(self, z: np.ndarray, phi: np.ndarray, rho: float, *, kind: str = "auto", seed: int = 0,
                 ef: int = 64, phi_fitted: int | None = None, dtype: str = "float32") -> None:
        if kind not in LATENT_KINDS:
            raise ConfigError(f"latent must be one of {LATENT_KINDS}, got {kind!r}")
        self.dtype = check_code_dtype(dtype)
        self.kind = kind
        self.seed = int(seed)
        self.ef = int(ef)
        self.rho = float(rho)
        z = np.ascontiguousarray(z, dtype=np.float32)
        self.z_width = int(z.shape[1])
        self._z = GrowableRows(z) if self.dtype == "float32" else None
        self.phi = CodeRows(np.ascontiguousarray(phi, dtype=np.float32), self.dtype)
        #: rows whose diffusion coordinates come from the sketch (later rows: Nystrom from these)
        self.phi_fitted = int(len(self.phi) if phi_fitted is None else phi_fitted)
        self._codes = CodeRows(self.compose(z, self.phi.values()), self.dtype)
        self._graph: HNSWIndex | LinkGraph | None = None
        #: (N, 1) rows whose code the latent graph does not hold (answered by the exact delta search)
        self._stale = GrowableRows(np.zeros((z.shape[0], 1), dtype=bool))
        if self.resolved_kind == "hnsw":
            self._graph = self._build_graph()

    # ------------------------------------------------------------------ shape
    @property
    def compact(self) -> bool:
        """True for ``float16``/``int8`` storage."""
        return self.dtype != "float32"

    @property
    def uses_phi(self) -> bool:
        return self.rho != 0.0 and self.phi.width > 0

    @property
    def width(self) -> int:
        return self._codes.width

    @property
    def resolved_kind(self) -> str:
        if self.kind != "auto":
            return self.kind
        return "flat" if len(self) <= FLAT_MAX else "hnsw"

    @property
    def store(self) -> CodeRows:
        """The stored codes (what the scorer and the latent kNN read)."""
        return self._codes

    @property
    def codes(self) -> np.ndarray:
        """The ``(N, width)`` float32 code matrix (``float32``: the live buffer, do not write; else a copy)."""
        return self._codes.values()

    def z_values(self) -> np.ndarray:
        """``(N, p)`` float32 encoder codes (compact dtypes: read back from the stored codes)."""
        if self._z is not None:
            return self._z.view
        return np.ascontiguousarray(self._codes.values()[:, : self.z_width])

    def phi_values(self) -> np.ndarray:
        """``(N, m)`` float32 diffusion coordinates as stored."""
        return self.phi.values()

    def __len__(self) -> int:
        return len(self._codes)

    def compose(self, z: np.ndarray, phi: np.ndarray | None) -> np.ndarray:
        """Codes of rows: ``[z, sqrt(rho) phi]`` (``z`` alone when the diffusion part is off)."""
        if self.rho == 0.0 or phi is None or phi.shape[1] == 0:
            return np.ascontiguousarray(z, dtype=np.float32)
        return np.ascontiguousarray(np.concatenate([z, np.float32(np.sqrt(self.rho)) * phi], axis=1),
                                    dtype=np.float32)

    # ------------------------------------------------------------------ latent graph
    def _build_graph(self) -> HNSWIndex | LinkGraph:
        codes = self._codes.values()
        if self.compact:
            return LinkGraph.build(codes, self.seed)
        g = HNSWIndex(codes.shape[1], space="ip", M=GRAPH_M, ef_construction=GRAPH_EF_CONSTRUCTION, seed=self.seed,
                      num_threads=1, max_elements=max(codes.shape[0], 16))
        if codes.shape[0]:
            g.add(codes, ids=np.arange(codes.shape[0]))
        g.ef = self.ef
        return g

    def _exact(self, zq: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
        """Compact codes: the ``k`` of ``rows`` with the largest inner product, best first (-1 padded)."""
        data, scale, lut, half = self._codes.kernel_args()
        out = np.full((zq.shape[0], k), -1, dtype=np.int64)
        rows = np.ascontiguousarray(rows, dtype=np.int64)

        def run(lo: int, hi: int) -> None:
            qk.exact_topk(zq, data, scale, lut, half, rows, out, lo, hi)

        run_row_chunks(run, zq.shape[0], float(zq.shape[0]) * rows.shape[0] * data.shape[1])
        return out

    def _pair_sims(self, zq: np.ndarray, cand: np.ndarray) -> np.ndarray:
        if not self.compact:
            sims = np.einsum("bd,bkd->bk", zq, self._codes.raw[np.maximum(cand, 0)])
            return np.where(cand >= 0, sims, -np.inf)
        data, scale, lut, half = self._codes.kernel_args()
        out = np.empty(cand.shape, dtype=np.float32)
        cand = np.ascontiguousarray(cand, dtype=np.int64)

        def run(lo: int, hi: int) -> None:
            qk.pair_sims(zq, data, scale, lut, half, cand, out, lo, hi)

        run_row_chunks(run, zq.shape[0], float(cand.size) * data.shape[1])
        return out

    def search(self, zq: np.ndarray, k: int, num_threads: int = 1) -> np.ndarray:
        """Rows of the ``k`` codes with the largest inner product with each ``zq`` row (-1 padded).

        ``hnsw``: the latent graph's answer over the rows it holds with their current codes, merged
        with an exact search over the *delta* (rows added or re-encoded since the graph was built).
        Compact codes are searched as stored (read back as float32).
        """
        n = len(self)
        B = zq.shape[0]
        out = np.full((B, k), -1, dtype=np.int64)
        if n == 0:
            return out
        zq = np.ascontiguousarray(zq, dtype=np.float32)
        kk = min(k, n)
        if self._graph is None:
            if self.compact:
                out[:, :kk] = self._exact(zq, np.arange(n), kk)
                return out
            _, idx = faiss.knn(zq, self._codes.raw, kk, metric=faiss.METRIC_INNER_PRODUCT)
            out[:, :kk] = idx
            out[out >= n] = -1
            return out
        fetch = min(kk + 8 + kk // 4, len(self._graph)) if len(self._graph) else 0
        parts = []
        if fetch:
            if isinstance(self._graph, LinkGraph):
                ids = self._graph.search(zq, self._codes, fetch, max(self.ef, fetch))
            else:
                ids, _ = self._graph.search(zq, k=fetch, ef=max(self.ef, fetch))
            ids = np.where((ids >= 0) & ~self._stale.view[np.maximum(ids, 0), 0], ids, -1)
            parts.append(ids)
        delta = np.flatnonzero(self._stale.view[:, 0])
        if delta.size:
            if self.compact:
                parts.append(self._exact(zq, delta, min(kk, delta.size)))
            else:
                _, local = faiss.knn(zq, np.ascontiguousarray(self._codes.raw[delta]), min(kk, delta.size),
                                     metric=faiss.METRIC_INNER_PRODUCT)
                parts.append(np.where(local >= 0, delta[np.maximum(local, 0)], -1))
        cand = np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
        sims = self._pair_sims(zq, cand)
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
        Codes are stored in this object's dtype, composed from the stored coordinates.
        """
        if self._z is not None:
            self._z.resize(n)
        if self.phi.width:
            self.phi.resize(n)
            if phi_rows is not None and phi_values is not None and phi_rows.size:
                self.phi.set_rows(phi_rows, phi_values)
        self._codes.resize(n)
        self._stale.resize(n, True)
        if rows.size:
            if self._z is not None:
                self._z.set_rows(rows, z_rows)
                z_new = self._z.view[rows]
            else:
                z_new = np.asarray(z_rows, dtype=np.float32)
            self._codes.set_rows(rows, self.compose(z_new, self.phi.values(rows) if self.phi.width else None))
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
        return LatentCodes(self.z_values(), self.phi_values(), rho, kind=self.kind, seed=self.seed, ef=self.ef,
                           phi_fitted=self.phi_fitted, dtype=self.dtype)

    def astype(self, dtype: str) -> LatentCodes:
        """The same codes stored in another dtype (latent index rebuilt over them).

        From ``float32`` this is exactly what a model with that ``code_dtype`` stores; from a
        compact dtype the read-back values are converted (the float32 originals are gone).
        """
        return LatentCodes(self.z_values(), self.phi_values(), self.rho, kind=self.kind, seed=self.seed,
                           ef=self.ef, phi_fitted=self.phi_fitted, dtype=check_code_dtype(dtype))

    # ------------------------------------------------------------------ memory
    def memory_bytes(self) -> dict[str, int]:
        """Bytes held per part: ``codes`` (the scored cache), ``phi`` (diffusion coordinates),
        ``z`` (the float32 encoder codes kept apart, ``float32`` only), ``latent_index`` (the
        latent graph: hnswlib's element storage, or the link arrays; 0 for ``flat``) and
        ``total``. Live rows only (buffers keep a growth reserve of up to as many rows again).
        """
        out = {"codes": self._codes.memory_bytes(), "phi": self.phi.memory_bytes(),
               "z": 0 if self._z is None else int(self._z.view.nbytes), "latent_index": 0}
        if isinstance(self._graph, LinkGraph):
            out["latent_index"] = self._graph.memory_bytes()
        elif self._graph is not None:
            out["latent_index"] = hnswlib_bytes(self._graph)
        out["latent_index"] += int(self._stale.view.nbytes) if self._graph is not None else 0
        out["total"] = sum(out.values())
        return out

    # ------------------------------------------------------------------ persistence
    def state(self) -> dict[str, Any]:
        """Arrays and settings that rebuild this object exactly (the hnswlib graph as an object, links as arrays)."""
        out: dict[str, Any] = {"dtype": self.dtype, "rho": self.rho, "kind": self.kind, "seed": self.seed,
                               "ef": self.ef, "phi_fitted": self.phi_fitted}
        if self._z is not None:
            out["z"] = self._z.view.copy()
            out["phi"] = self.phi.raw.copy()
        else:
            out["z_width"] = self.z_width
            out["codes"] = self._codes.state()
            out["phi"] = self.phi.state()
        if isinstance(self._graph, LinkGraph):
            out["links"] = self._graph.state()
        elif self._graph is not None:
            out["graph"] = self._graph
        if self._graph is not None:
            out["stale"] = self._stale.view[:, 0].copy()
        return out

    @staticmethod
    def phi_of_state(state: dict[str, Any]) -> np.ndarray:
        """The float32 diffusion coordinates recorded in a :meth:`state`."""
        phi = state["phi"]
        if isinstance(phi, dict):
            return CodeRows.from_state(phi).values()
        return np.ascontiguousarray(phi, dtype=np.float32)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> LatentCodes:
        obj = cls.__new__(cls)
        obj.dtype = check_code_dtype(str(state.get("dtype", "float32")))
        obj.kind = str(state["kind"])
        obj.seed = int(state["seed"])
        obj.ef = int(state["ef"])
        obj.rho = float(state["rho"])
        if obj.dtype == "float32":
            z = np.ascontiguousarray(state["z"], dtype=np.float32)
            obj.z_width = int(z.shape[1])
            obj._z = GrowableRows(z)
            obj.phi = CodeRows(np.ascontiguousarray(state["phi"], dtype=np.float32), "float32")
            obj._codes = CodeRows(obj.compose(z, obj.phi.values()), "float32")
        else:
            obj.z_width = int(state["z_width"])
            obj._z = None
            obj.phi = CodeRows.from_state(state["phi"])
            obj._codes = CodeRows.from_state(state["codes"])
            if obj.phi.dtype != obj.dtype or obj._codes.dtype != obj.dtype or len(obj.phi) != len(obj._codes):
                raise ValueError("stored codes and coordinates do not match")
        obj.phi_fitted = int(state["phi_fitted"])
        obj._stale = GrowableRows(np.zeros((len(obj), 1), dtype=bool))
        obj._graph = None
        if state.get("graph") is not None:
            obj._graph = state["graph"]
        elif state.get("links") is not None:
            obj._graph = LinkGraph.from_state(state["links"])
        elif obj.resolved_kind == "hnsw":
            obj._graph = obj._build_graph()
        if obj._graph is not None and state.get("stale") is not None and (
                state.get("graph") is not None or state.get("links") is not None):
            obj._stale = GrowableRows(np.asarray(state["stale"], dtype=bool).reshape(-1, 1).copy())
        return obj
