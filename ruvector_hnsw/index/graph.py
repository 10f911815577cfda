"""An immutable, exact snapshot of an hnswlib graph, in labels.

hnswlib keeps its links in two byte buffers (see ``shared/DESIGN.md`` section 2):
``data_level0`` (one fixed-size record per element: a 4-byte header holding the uint16
neighbour count and the deleted mark, ``max_M0`` uint32 internal ids, the vector, the uint64
label) and ``link_lists`` (per element, one block of ``4 + 4 * max_M`` bytes for each layer
above 0). :func:`graph_from_state` reads both, vectorised, from ``Index.__getstate__()``.

Node order in the snapshot is hnswlib's internal order (insertion order); every public
method speaks labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import metadata
from typing import Any

import numpy as np

from ruvector_hnsw._validation import as_ids
from ruvector_hnsw.errors import IndexCorruptedError, InvalidInputError, LayoutError, UnknownIdError
from ruvector_hnsw.index import _graph_kernels as kernels

__all__ = ["STATE_KEYS", "HNSWGraph", "Neighborhood", "check_layout", "graph_from_state"]

#: keys of hnswlib's ``Index.__getstate__()[0]`` that the export reads
STATE_KEYS = frozenset({
    "ser_version", "dim", "cur_element_count", "offset_level0", "size_data_per_element", "label_offset",
    "offset_data", "enterpoint_node", "max_M", "max_M0", "M", "size_links_per_element", "element_levels",
    "data_level0", "link_lists",
})
#: the state serialisation version of hnswlib's Python bindings this module reads (hnswlib 0.8)
SER_VERSION = 1


@dataclass(frozen=True)
class Neighborhood:
    """A padded batch of graph contexts, one row per requested label.

    Attributes
    ----------
    ids : (B, K) int64
        Labels of the context items; -1 marks padding.
    dist : (B, K) float32
        Distance from the row's node to each item (index metric); +inf on padding.
    layer : (B, K) int8
        HNSW layer the link lives on: 0 = local, >= 1 = global; -1 on padding.
    mask : (B, K) bool
        True where an item is present.
    hops : (B, K) int8
        1 for the node's own links, 2 for links of a hub among its layer-0 neighbours,
        3 for links of a hub two layer-0 hops away (used only when no 1-hop hub exists);
        0 on padding.
    k_local : int
        Columns ``[0, k_local)`` are local items, ``[k_local, K)`` global items.
    """

    ids: np.ndarray
    dist: np.ndarray
    layer: np.ndarray
    mask: np.ndarray
    hops: np.ndarray
    k_local: int

    def __len__(self) -> int:
        return int(self.ids.shape[0])


def _readonly(*arrays: np.ndarray) -> None:
    for a in arrays:
        a.flags.writeable = False


class HNSWGraph:
    """Exact snapshot of the HNSW graph: layers, levels, entry point, labels and vectors.

    Do not construct directly; call :meth:`HNSWIndex.graph`. All arrays are read-only.

    Attributes
    ----------
    labels : (n,) int64
        Label of every node, in snapshot order (hnswlib's internal order).
    levels : (n,) int
        Top layer of every node (aligned with ``labels``).
    deleted : (n,) bool
        Nodes marked deleted (still linked in hnswlib's graph).
    max_level : int
        Highest layer in the graph.
    entry_point : int
        Label of the entry node (-1 for an empty graph).
    space : str
        ``"l2"``, ``"ip"`` or ``"cosine"``; distances follow hnswlib's conventions.
    vectors : (n, dim) float32
        Stored vectors (normalised for ``cosine``), aligned with ``labels``.
    """

    def __init__(
        self,
        *,
        labels: np.ndarray,
        levels: np.ndarray,
        deleted: np.ndarray,
        indptr: np.ndarray,
        indices: np.ndarray,
        entry_point: int,
        space: str,
        vectors: np.ndarray,
        M: int,
    ) -> None:
        self.labels = labels
        self.levels = levels
        self.deleted = deleted
        self.vectors = vectors
        self.space = space
        self.M = int(M)
        self.max_level = int(levels.max()) if levels.size else -1
        self.entry_point = int(entry_point)
        self._indptr = indptr  # CSR over (layer, node) rows, positions
        self._indices = indices
        self._metric = kernels.METRIC_L2 if space == "l2" else kernels.METRIC_IP
        self._order = np.argsort(labels, kind="stable")
        self._sorted_labels = labels[self._order]
        # dense label -> position table when labels are compact (the usual 0..n-1 ids)
        top = int(labels.max()) + 1 if labels.size else 0
        self._lut: np.ndarray | None = None
        if labels.size and labels.min() >= 0 and top <= 4 * labels.size + 1024:
            self._lut = np.full(top, -1, dtype=np.int64)
            self._lut[labels] = np.arange(labels.size, dtype=np.int64)
        self._edge_dist_cache: dict[int, np.ndarray] = {}
        _readonly(labels, levels, deleted, vectors, indptr, indices)

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __repr__(self) -> str:
        return (f"HNSWGraph(n={len(self)}, space={self.space!r}, max_level={self.max_level}, "
                f"entry_point={self.entry_point}, edges={self.num_edges()})")

    @property
    def num_layers(self) -> int:
        """Number of layers (``max_level + 1``; 0 for an empty graph)."""
        return self.max_level + 1

    def positions(self, labels: Any) -> np.ndarray:
        """Positions (rows of ``labels``/``vectors``) of the given labels.

        Raises
        ------
        UnknownIdError
            If a label is not in the graph.
        """
        lab = as_ids(labels, "labels", unique=False, allow_negative=True)
        if self._lut is not None:
            inside = (lab >= 0) & (lab < self._lut.shape[0])
            pos = np.where(inside, self._lut[np.where(inside, lab, 0)], -1)
            if (pos < 0).any():
                raise UnknownIdError(f"label {int(lab[pos < 0][0])} is not in the graph")
            return pos
        n = self._sorted_labels.shape[0]
        where = np.searchsorted(self._sorted_labels, lab)
        found = where < n
        found[found] = self._sorted_labels[where[found]] == lab[found]
        if not found.all():
            raise UnknownIdError(f"label {int(lab[~found][0])} is not in the graph")
        return self._order[where]

    def _check_layer(self, layer: int) -> int:
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or layer < 0:
            raise InvalidInputError(f"layer must be an integer >= 0, got {layer!r}")
        return int(layer)

    def _layer_positions(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        n = len(self)
        if layer > self.max_level:
            return np.zeros(n + 1, dtype=np.int64), np.zeros(0, dtype=np.int64)
        start = layer * n
        ptr = self._indptr[start : start + n + 1]
        return ptr - ptr[0], self._indices[ptr[0] : ptr[-1]]

    # ------------------------------------------------------------------ public export
    def layer(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """CSR adjacency of one layer over ``labels`` order.

        Returns
        -------
        indptr : (n + 1,) int64
        indices : (E,) int64
            Labels of the neighbours; row ``i`` (node ``labels[i]``) owns
            ``indices[indptr[i]:indptr[i + 1]]`` in hnswlib's link order. Nodes absent from
            the layer have no entries; layers above ``max_level`` are empty.
        """
        layer = self._check_layer(layer)
        indptr, pos = self._layer_positions(layer)
        return indptr, self.labels[pos]

    def neighbors(self, label: int, layer: int = 0) -> np.ndarray:
        """Labels linked from ``label`` on ``layer`` (empty above the node's level)."""
        layer = self._check_layer(layer)
        p = int(self.positions([label])[0])
        indptr, pos = self._layer_positions(layer)
        return self.labels[pos[indptr[p] : indptr[p + 1]]]

    def edge_distances(self, layer: int) -> np.ndarray:
        """Distances of the edges of :meth:`layer`, float32, aligned with its ``indices``.

        Recomputed from the stored vectors with the index's convention (squared L2,
        ``1 - dot`` for ip, ``1 - cos`` for cosine).
        """
        layer = self._check_layer(layer)
        cached = self._edge_dist_cache.get(layer)
        if cached is None:
            indptr, pos = self._layer_positions(layer)
            rows = np.arange(len(self), dtype=np.int64)
            cached = kernels.edge_distances(self.vectors, rows, indptr, pos, self._metric)
            _readonly(cached)
            self._edge_dist_cache[layer] = cached
        return cached

    def degrees(self, layer: int = 0) -> np.ndarray:
        """Out-degree of every node on ``layer`` (aligned with ``labels``)."""
        indptr, _ = self._layer_positions(self._check_layer(layer))
        return np.diff(indptr)

    def num_edges(self, layer: int | None = None) -> int:
        """Number of directed links on one layer, or on all layers."""
        if layer is None:
            return int(self._indices.shape[0])
        return int(self._layer_positions(self._check_layer(layer))[1].shape[0])

    def neighborhoods(
        self,
        labels: Any,
        k_local: int | None = None,
        k_global: int | None = None,
        *,
        include_deleted: bool = False,
    ) -> Neighborhood:
        """Padded local + global graph context of each label.

        Parameters
        ----------
        labels : array_like of int
            Nodes whose context is wanted (repeats allowed).
        k_local : int, optional
            Local (layer-0) items kept per row, nearest first. Default ``2 * M``.
        k_global : int, optional
            Global (layer >= 1) items kept per row, nearest first. Default ``M``. Global items
            are the node's own upper-layer links when its level >= 1, otherwise the upper-layer
            links of the hubs among its layer-0 neighbours (``hops`` = 2), or, if none of those
            is a hub, of the hubs two hops away (``hops`` = 3).
        include_deleted : bool
            Keep deleted nodes as context items (default: drop them).

        Returns
        -------
        Neighborhood
            ``K = k_local + k_global`` columns, local first.
        """
        k_local = 2 * self.M if k_local is None else k_local
        k_global = self.M if k_global is None else k_global
        for name, value in (("k_local", k_local), ("k_global", k_global)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise InvalidInputError(f"{name} must be an integer >= 0, got {value!r}")
        if k_local + k_global == 0:
            raise InvalidInputError("k_local + k_global must be >= 1")
        nodes = self.positions(labels)
        scratch = max(64, (self.max_level + 1) * (2 * self.M + 1) ** 2 * (self.M + 1))
        pos, dist, lay, hops = kernels.neighborhoods(
            nodes, self._indptr, self._indices, self.levels.astype(np.int64), self.deleted,
            self.vectors, self._metric, max(len(self), 1), int(k_local), int(k_global),
            bool(include_deleted), scratch,
        )
        mask = pos >= 0
        ids = np.where(mask, self.labels[np.maximum(pos, 0)], -1).astype(np.int64)
        return Neighborhood(ids=ids, dist=dist, layer=lay, mask=mask, hops=hops, k_local=int(k_local))

    def stats(self) -> dict[str, Any]:
        """Summary statistics: node/edge counts, levels histogram, degrees per layer, memory."""
        hist = np.bincount(self.levels, minlength=max(self.num_layers, 1)) if len(self) else np.zeros(0)
        per_layer = []
        for layer in range(self.num_layers):
            deg = self.degrees(layer)
            present = deg[self.levels >= layer]
            per_layer.append({
                "layer": layer,
                "nodes": int(present.shape[0]),
                "edges": int(deg.sum()),
                "mean_degree": float(present.mean()) if present.size else 0.0,
                "max_degree": int(present.max()) if present.size else 0,
            })
        return {
            "nodes": len(self),
            "deleted": int(self.deleted.sum()),
            "space": self.space,
            "dim": int(self.vectors.shape[1]),
            "M": self.M,
            "max_level": self.max_level,
            "entry_point": self.entry_point,
            "levels_histogram": [int(c) for c in hist],
            "layers": per_layer,
            "edges": self.num_edges(),
            "memory_bytes": int(self.vectors.nbytes + self._indices.nbytes + self._indptr.nbytes
                                + self.labels.nbytes + self.levels.nbytes),
        }


def _as_bytes(buf: Any) -> np.ndarray:
    if isinstance(buf, (bytes, bytearray, memoryview)):
        return np.frombuffer(buf, dtype=np.uint8)
    return np.ascontiguousarray(buf).reshape(-1).view(np.uint8)


@cache
def _hnswlib_version() -> str:
    try:
        return metadata.version("hnswlib")
    except metadata.PackageNotFoundError:  # pragma: no cover - hnswlib built in place
        return "of unknown version"


def check_layout(state: dict[str, Any]) -> None:
    """Check that hnswlib's state dict has the layout :func:`graph_from_state` reads.

    The export reads hnswlib's private buffers directly (``shared/DESIGN.md`` section 2): per
    element a 4-byte header, ``max_M0`` uint32 links, the float32 vector and the uint64 label at
    ``offset_data = 4 * max_M0 + 4`` and ``label_offset = offset_data + 4 * dim``; upper-layer
    blocks of ``4 * max_M + 4`` bytes. A different hnswlib may change any of it.

    Raises
    ------
    LayoutError
        If a key is missing or a size/offset differs from that layout; the message names the
        installed hnswlib version.
    """
    where = f"hnswlib {_hnswlib_version()}"
    missing = sorted(STATE_KEYS - set(state))
    if missing:
        raise LayoutError(f"{where}: the index state lacks {missing}; this graph export reads the "
                          "hnswlib 0.8 layout")
    try:
        got = {k: int(state[k]) for k in STATE_KEYS - {"element_levels", "data_level0", "link_lists"}}
    except (TypeError, ValueError) as exc:
        raise LayoutError(f"{where}: the index state holds a non-integer field ({exc})") from exc
    m, max_m, max_m0, dim = got["M"], got["max_M"], got["max_M0"], got["dim"]
    expected = {
        "ser_version": SER_VERSION,
        "offset_level0": 0,
        "max_M": m,
        "max_M0": 2 * m,
        "offset_data": 4 * max_m0 + 4,
        "label_offset": 4 * max_m0 + 4 + 4 * dim,
        "size_data_per_element": 4 * max_m0 + 4 + 4 * dim + 8,
        "size_links_per_element": 4 * max_m + 4,
    }
    wrong = [f"{k}={got[k]} (expected {v})" for k, v in expected.items() if got[k] != v]
    if wrong:
        raise LayoutError(f"{where}: the index memory layout differs from the hnswlib 0.8 layout this graph "
                          f"export reads: {', '.join(wrong)}")


def graph_from_state(state: dict[str, Any], space: str) -> HNSWGraph:
    """Build an :class:`HNSWGraph` from the dict inside ``hnswlib.Index.__getstate__()``.

    Raises
    ------
    LayoutError
        If the state does not have the layout this export reads (:func:`check_layout`).
    IndexCorruptedError
        If the buffers are inconsistent (wrong sizes, link counts or ids out of range).
    """
    check_layout(state)
    n = int(state["cur_element_count"])
    dim = int(state["dim"])
    size_el = int(state["size_data_per_element"])
    max_m0 = int(state["max_M0"])
    max_m = int(state["max_M"])
    size_links = int(state["size_links_per_element"])
    offset_data = int(state["offset_data"])
    label_offset = int(state["label_offset"])
    data = _as_bytes(state["data_level0"])
    if data.shape[0] != n * size_el or offset_data != 4 * max_m0 + 4 or size_links != 4 * max_m + 4:
        raise IndexCorruptedError(f"hnswlib level-0 buffer holds {data.shape[0]} bytes, expected {n} elements "
                                  f"x {size_el} bytes")
    rec = data.reshape(n, size_el)
    counts0 = rec[:, 0:2].copy().view(np.uint16).ravel().astype(np.int64)
    deleted = (rec[:, 2] & 0x01).astype(bool)
    links0 = rec[:, 4 : 4 + 4 * max_m0].copy().view(np.uint32).reshape(n, max_m0)
    vectors = np.ascontiguousarray(rec[:, offset_data : offset_data + 4 * dim].copy().view(np.float32))
    labels = rec[:, label_offset : label_offset + 8].copy().view(np.uint64).ravel().astype(np.int64)
    levels = np.asarray(state["element_levels"], dtype=np.int64)[:n].copy()
    if (counts0 > max_m0).any() or (levels < 0).any():
        raise IndexCorruptedError("hnswlib graph has a link count or level out of range")
    max_level = int(levels.max()) if n else 0
    n_layers = max_level + 1 if n else 1

    # layer 0
    col = np.arange(max_m0)
    idx0 = links0[col[None, :] < counts0[:, None]].astype(np.int64)
    per_layer_counts = [counts0]
    per_layer_indices = [idx0]

    # layers >= 1 from the link_lists blocks
    links = _as_bytes(state["link_lists"])
    total_blocks = int(levels.sum())
    if links.shape[0] != total_blocks * size_links:
        raise IndexCorruptedError("hnswlib upper-layer link buffer has an unexpected size")
    if total_blocks:
        blocks = links.reshape(total_blocks, size_links)
        block_counts = blocks[:, 0:2].copy().view(np.uint16).ravel().astype(np.int64)
        block_ids = blocks[:, 4:].copy().view(np.uint32).reshape(total_blocks, max_m)
        if (block_counts > max_m).any():
            raise IndexCorruptedError("hnswlib graph has an upper-layer link count out of range")
        first_block = np.concatenate(([0], np.cumsum(levels)[:-1]))
        colm = np.arange(max_m)
        for layer in range(1, n_layers):
            counts = np.zeros(n, dtype=np.int64)
            present = np.flatnonzero(levels >= layer)
            rows = first_block[present] + (layer - 1)
            counts[present] = block_counts[rows]
            ids_l = block_ids[rows]
            idx_l = ids_l[colm[None, :] < block_counts[rows][:, None]].astype(np.int64)
            per_layer_counts.append(counts)
            per_layer_indices.append(idx_l)

    all_counts = np.concatenate(per_layer_counts)
    indptr = np.zeros(all_counts.shape[0] + 1, dtype=np.int64)
    np.cumsum(all_counts, out=indptr[1:])
    indices = np.concatenate(per_layer_indices) if per_layer_indices else np.zeros(0, dtype=np.int64)
    if indices.size and (indices.max() >= n):
        raise IndexCorruptedError("hnswlib graph links to an element id beyond the element count")
    entry = int(state["enterpoint_node"])
    entry_label = int(labels[entry]) if n and 0 <= entry < n else -1
    return HNSWGraph(labels=labels, levels=levels, deleted=deleted, indptr=indptr, indices=indices,
                     entry_point=entry_label, space=space, vectors=vectors, M=int(state["M"]))
