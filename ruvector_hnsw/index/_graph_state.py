"""hnswlib's graph buffers, read in place: the raw half of an :class:`~ruvector_hnsw.index.graph.HNSWGraph`.

``Index.__getstate__()`` hands out fresh copies of ``data_level0`` and ``link_lists`` on every
call, so a snapshot may keep them as they are and read them through zero-copy word views (layout
in ``shared/DESIGN.md`` section 2 and :mod:`ruvector_hnsw.index._graph_kernels`). Only the small
per-row arrays (labels, levels, deleted marks) and, on demand, a contiguous copy of the vectors
are decoded. hnswlib appends elements and never moves an internal id, so row ``i`` of two
snapshots of one index is the same element.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ruvector_hnsw.errors import IndexCorruptedError
from ruvector_hnsw.index import _delta_kernels as dk
from ruvector_hnsw.index._graph_kernels import COUNT_MASK

__all__ = ["RawGraph", "VectorStore", "parse_state"]


def _as_bytes(buf: Any) -> np.ndarray:
    if isinstance(buf, (bytes, bytearray, memoryview)):
        return np.frombuffer(buf, dtype=np.uint8)
    return np.ascontiguousarray(buf).reshape(-1).view(np.uint8)


def _readonly(*arrays: np.ndarray) -> None:
    for a in arrays:
        a.flags.writeable = False


@dataclass(frozen=True)
class RawGraph:
    """The two hnswlib buffers of one snapshot as word views, plus where each node's blocks start.

    Attributes
    ----------
    rec : (n, words) uint32
        Level-0 records (read-only view of ``data_level0``).
    up : (blocks, 1 + max_m) uint32
        Upper-layer link blocks (read-only view of ``link_lists``).
    first_block : (n,) int64
        Row of ``up`` holding node ``i``'s layer-1 block (exclusive prefix sum of the levels).
    levels : (n,) int64
        Top layer of every node.
    entry : int
        Internal id of the entry node (-1 when empty).
    """

    rec: np.ndarray
    up: np.ndarray
    first_block: np.ndarray
    levels: np.ndarray
    entry: int
    dim: int
    M: int
    max_m0: int
    max_m: int
    voff: int
    loff: int
    recf: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "recf", self.rec.view(np.float32))

    @property
    def n(self) -> int:
        return int(self.rec.shape[0])

    def layout(self) -> tuple[int, ...]:
        """What two snapshots must share to be compared row by row."""
        return (int(self.rec.shape[1]), self.dim, self.M, self.max_m0, self.max_m, self.voff, self.loff)

    def counts0(self) -> np.ndarray:
        """Layer-0 neighbour count of every node, int64."""
        return (self.rec[:, 0] & COUNT_MASK).astype(np.int64)

    def labels(self, rows: np.ndarray | slice) -> np.ndarray:
        """Labels of ``rows``, int64 (hnswlib stores uint64; this package only adds ids < 2**63)."""
        words = np.ascontiguousarray(self.rec[rows, self.loff : self.loff + 2])
        return words.view(np.uint64).reshape(-1).astype(np.int64)

    def deleted(self, rows: np.ndarray | slice) -> np.ndarray:
        """Deleted marks of ``rows``."""
        return ((self.rec[rows, 0] >> 16) & 1).astype(bool)

    def vectors(self, rows: np.ndarray | slice) -> np.ndarray:
        """Contiguous float32 copy of the vectors of ``rows``."""
        return np.ascontiguousarray(self.recf[rows, self.voff : self.voff + self.dim])

    def check(self, rows: np.ndarray) -> None:
        """Raise :class:`IndexCorruptedError` if a row among ``rows`` has a link count out of range or
        links to an id beyond the element count."""
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        if dk.first_bad_record(self.rec, rows, self.max_m0, self.n) >= 0:
            raise IndexCorruptedError("hnswlib graph has a layer-0 link count or element id out of range")
        if dk.first_bad_blocks(self.up, self.first_block, self.levels, rows, self.max_m, self.n) >= 0:
            raise IndexCorruptedError("hnswlib graph has an upper-layer link count or element id out of range")

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["recf"]  # a view of rec: rebuilt, not pickled twice
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            object.__setattr__(self, key, value)
        _readonly(self.rec, self.up, self.first_block, self.levels)
        object.__setattr__(self, "recf", self.rec.view(np.float32))


def parse_state(state: dict[str, Any]) -> RawGraph:
    """Word views over the buffers of ``hnswlib.Index.__getstate__()[0]`` (no link is read here).

    Raises
    ------
    IndexCorruptedError
        If the buffer sizes or the record layout are not the ones hnswlib 0.8 writes.
    """
    n = int(state["cur_element_count"])
    dim = int(state["dim"])
    size_el = int(state["size_data_per_element"])
    max_m0 = int(state["max_M0"])
    max_m = int(state["max_M"])
    size_links = int(state["size_links_per_element"])
    offset_data = int(state["offset_data"])
    label_offset = int(state["label_offset"])
    data = _as_bytes(state["data_level0"])
    if (data.shape[0] != n * size_el or offset_data != 4 * max_m0 + 4 or size_links != 4 * max_m + 4
            or label_offset != offset_data + 4 * dim or size_el != label_offset + 8):
        raise IndexCorruptedError("hnswlib level-0 buffer has an unexpected size or layout")
    levels = np.asarray(state["element_levels"], dtype=np.int64)[:n].copy()
    if levels.shape[0] != n or (levels < 0).any():
        raise IndexCorruptedError("hnswlib graph has a level out of range")
    links = _as_bytes(state["link_lists"])
    total_blocks = int(levels.sum())
    if links.shape[0] != total_blocks * size_links:
        raise IndexCorruptedError("hnswlib upper-layer link buffer has an unexpected size")
    rec = data.view(np.uint32).reshape(n, size_el // 4)
    up = links.view(np.uint32).reshape(total_blocks, size_links // 4)
    first_block = np.zeros(n, dtype=np.int64)
    if n > 1:
        np.cumsum(levels[:-1], out=first_block[1:])
    entry = int(state["enterpoint_node"])
    _readonly(rec, up, first_block, levels)
    return RawGraph(rec=rec, up=up, first_block=first_block, levels=levels,
                    entry=entry if n and 0 <= entry < n else -1, dim=dim, M=int(state["M"]),
                    max_m0=max_m0, max_m=max_m, voff=offset_data // 4, loff=label_offset // 4)


class VectorStore:
    """Append-only float32 row storage that successive snapshots of one index share.

    A snapshot of ``n`` rows reads ``buf[:n]``; the snapshot after it appends its new rows in
    place when nothing else has appended since (rows past a snapshot's ``n`` are invisible to
    it), otherwise it starts a store of its own. Rows already handed out are never written.
    """

    def __init__(self, rows: np.ndarray) -> None:
        n, dim = rows.shape
        self._buf = np.empty((n + max(n // 2, 64), dim), dtype=np.float32)
        self._buf[:n] = rows
        self._fill = n
        self._lock = threading.Lock()

    def view(self, n: int) -> np.ndarray:
        """Read-only view of the first ``n`` rows."""
        out = self._buf[:n]
        out.flags.writeable = False
        return out

    def append(self, n_old: int, rows: np.ndarray) -> bool:
        """Store ``rows`` at ``n_old ..`` if the store holds exactly ``n_old`` rows and has room."""
        with self._lock:
            end = n_old + rows.shape[0]
            if self._fill != n_old or end > self._buf.shape[0]:
                return False
            self._buf[n_old:end] = rows
            self._fill = end
            return True
