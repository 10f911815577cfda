"""An immutable, exact snapshot of an hnswlib graph, in labels.

hnswlib keeps its links in two byte buffers (see ``shared/DESIGN.md`` section 2):
``data_level0`` (one fixed-size record per element: a 4-byte header holding the uint16
neighbour count and the deleted mark, ``max_M0`` uint32 internal ids, the vector, the uint64
label) and ``link_lists`` (per element, one block of ``4 + 4 * max_M`` bytes for each layer
above 0). A snapshot keeps both buffers of ``Index.__getstate__()`` as they are and reads them
in place (:mod:`ruvector_hnsw.index._graph_state`); per-layer CSR arrays and a contiguous copy
of the vectors are built on first use.

Node order in the snapshot is hnswlib's internal order (insertion order); every public
method speaks labels. hnswlib appends new elements and never moves an internal id (a deleted
id added again keeps its row), so a row is the same element in every snapshot of one index:
:func:`graph_from_state` derives a snapshot from the previous one by comparing the two
snapshots' buffers row by row and decoding only the rows that changed, and
:meth:`HNSWGraph.changed_rows` / :meth:`HNSWGraph.neighborhood_changes` say which rows a
consumer has to refresh.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from typing import Any

import numpy as np

from ruvector_hnsw._validation import as_ids
from ruvector_hnsw.errors import InvalidInputError, LayoutError, UnknownIdError
from ruvector_hnsw.index import _delta_kernels as dk
from ruvector_hnsw.index import _graph_kernels as kernels
from ruvector_hnsw.index._graph_state import RawGraph, VectorStore, parse_state

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


def _check_k(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise InvalidInputError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


def _label_table(labels: np.ndarray) -> np.ndarray | None:
    """Dense label -> position table when labels are compact (the usual 0..n-1 ids), else None."""
    n = labels.shape[0]
    if not n or labels.min() < 0:
        return None
    top = int(labels.max()) + 1
    if top > 4 * n + 1024:
        return None
    lut = np.full(top, -1, dtype=np.int64)
    lut[labels] = np.arange(n, dtype=np.int64)
    return lut


class HNSWGraph:
    """Exact snapshot of the HNSW graph: layers, levels, entry point, labels and vectors.

    Do not construct directly; call :meth:`HNSWIndex.graph`. All arrays are read-only. Rows
    (positions) are hnswlib's internal ids: stable across the snapshots of one index, new
    elements appended at the end.

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
        Stored vectors (normalised for ``cosine``), aligned with ``labels``; C-contiguous.
    """

    def __init__(
        self,
        raw: RawGraph,
        *,
        labels: np.ndarray,
        deleted: np.ndarray,
        space: str,
        lut: np.ndarray | None,
        vector_seed: tuple[VectorStore, int] | None = None,
        delta: tuple[HNSWGraph, np.ndarray, np.ndarray] | None = None,
    ) -> None:
        self._raw = raw
        self.labels = labels
        self.levels = raw.levels
        self.deleted = deleted
        self.space = space
        self.M = int(raw.M)
        self.max_level = int(raw.levels.max()) if raw.n else -1
        self.entry_point = int(labels[raw.entry]) if raw.entry >= 0 else -1
        self._metric = kernels.METRIC_L2 if space == "l2" else kernels.METRIC_IP
        self._lut = lut
        _readonly(labels, deleted)
        if lut is not None:
            _readonly(lut)
        # caches, built on first use
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None
        self._csr: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._edge_dist_cache: dict[int, np.ndarray] = {}
        self._store: VectorStore | None = None
        self._vectors: np.ndarray | None = None
        self._vector_seed = vector_seed  # (the previous snapshot's store, its row count)
        # (previous snapshot, its changed rows, their flags): what changed_rows(previous) returns
        self._delta: tuple[weakref.ref[HNSWGraph], np.ndarray, np.ndarray] | None = None
        if delta is not None:
            self._delta = (weakref.ref(delta[0]), delta[1], delta[2])

    def __getstate__(self) -> dict[str, Any]:
        # the raw buffers, labels, deleted marks and lookup table; caches are rebuilt on use
        return {"raw": self._raw, "labels": self.labels, "deleted": self.deleted, "space": self.space,
                "lut": self._lut}

    def __setstate__(self, state: dict[str, Any]) -> None:
        HNSWGraph.__init__(self, state["raw"], labels=state["labels"], deleted=state["deleted"],
                           space=state["space"], lut=state["lut"])

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

    @property
    def vectors(self) -> np.ndarray:
        """Stored vectors ``(n, dim)`` float32, C-contiguous, read-only (built on first use)."""
        out = self._vectors
        if out is None:
            n = len(self)
            seed, self._vector_seed = self._vector_seed, None
            store = None
            if seed is not None and seed[0].append(seed[1], self._raw.vectors(slice(seed[1], n))):
                store = seed[0]  # the previous snapshot's rows, shared; ours appended after them
            if store is None:
                store = VectorStore(self._raw.vectors(slice(None)))
            self._store = store
            out = self._vectors = store.view(n)
        return out

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
        if self._sorted is None:
            order = np.argsort(self.labels, kind="stable")
            self._sorted = (order, self.labels[order])
        order, sorted_labels = self._sorted
        n = sorted_labels.shape[0]
        where = np.searchsorted(sorted_labels, lab)
        found = where < n
        found[found] = sorted_labels[where[found]] == lab[found]
        if not found.all():
            raise UnknownIdError(f"label {int(lab[~found][0])} is not in the graph")
        return order[where]

    def _check_layer(self, layer: int) -> int:
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or layer < 0:
            raise InvalidInputError(f"layer must be an integer >= 0, got {layer!r}")
        return int(layer)

    def _layer_counts(self, layer: int) -> np.ndarray:
        raw = self._raw
        if layer == 0:
            return raw.counts0()
        counts = np.zeros(raw.n, dtype=np.int64)
        if layer <= self.max_level:
            present = np.flatnonzero(raw.levels >= layer)
            counts[present] = raw.up[raw.first_block[present] + (layer - 1), 0] & kernels.COUNT_MASK
        return counts

    def _layer_positions(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """CSR of one layer over positions (built on first use, cached)."""
        cached = self._csr.get(layer)
        if cached is not None:
            return cached
        raw = self._raw
        n = raw.n
        if layer > self.max_level:
            indptr, pos = np.zeros(n + 1, dtype=np.int64), np.zeros(0, dtype=np.int64)
        elif layer == 0:
            counts = raw.counts0()
            col = np.arange(raw.max_m0)
            pos = raw.rec[:, 1 : 1 + raw.max_m0][col[None, :] < counts[:, None]].astype(np.int64)
            indptr = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(counts, out=indptr[1:])
        else:
            present = np.flatnonzero(raw.levels >= layer)
            blocks = raw.up[raw.first_block[present] + (layer - 1)]
            block_counts = (blocks[:, 0] & kernels.COUNT_MASK).astype(np.int64)
            col = np.arange(raw.max_m)
            pos = blocks[:, 1:][col[None, :] < block_counts[:, None]].astype(np.int64)
            counts = np.zeros(n, dtype=np.int64)
            counts[present] = block_counts
            indptr = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(counts, out=indptr[1:])
        _readonly(indptr, pos)
        self._csr[layer] = (indptr, pos)
        return indptr, pos

    def _links(self, p: int, layer: int) -> np.ndarray:
        """Positions linked from row ``p`` on ``layer`` (empty above its level)."""
        raw = self._raw
        if layer == 0:
            return raw.rec[p, 1 : 1 + (int(raw.rec[p, 0]) & kernels.COUNT_MASK)].astype(np.int64)
        if layer > int(raw.levels[p]):
            return np.zeros(0, dtype=np.int64)
        blk = int(raw.first_block[p]) + layer - 1
        return raw.up[blk, 1 : 1 + (int(raw.up[blk, 0]) & kernels.COUNT_MASK)].astype(np.int64)

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
        return self.labels[self._links(p, layer)]

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
        return self._layer_counts(self._check_layer(layer))

    def num_edges(self, layer: int | None = None) -> int:
        """Number of directed links on one layer, or on all layers."""
        if layer is None:
            raw = self._raw
            return int(raw.counts0().sum() + (raw.up[:, 0] & kernels.COUNT_MASK).astype(np.int64).sum())
        return int(self._layer_counts(self._check_layer(layer)).sum())

    def _check_ks(self, k_local: int | None, k_global: int | None) -> tuple[int, int]:
        k_local = _check_k("k_local", 2 * self.M if k_local is None else k_local)
        k_global = _check_k("k_global", self.M if k_global is None else k_global)
        if k_local + k_global == 0:
            raise InvalidInputError("k_local + k_global must be >= 1")
        return k_local, k_global

    def _neighborhood_rows(self, nodes: np.ndarray, k_local: int, k_global: int,
                           include_deleted: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        raw = self._raw
        scratch = max(64, (self.max_level + 1) * (2 * self.M + 1) ** 2 * (self.M + 1))
        n = raw.n
        return kernels.neighborhoods(
            nodes, raw.rec, raw.recf, raw.voff, raw.dim, raw.up, raw.first_block, raw.levels, self.deleted,
            self._metric, self.max_level, k_local, k_global, bool(include_deleted), scratch,
            np.zeros(n, dtype=np.int64), np.empty(n, dtype=np.int64), np.zeros(n, dtype=np.int64),
        )

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
            is a hub with an upper-layer link, of the hubs two hops away (``hops`` = 3).
        include_deleted : bool
            Keep deleted nodes as context items (default: drop them).

        Returns
        -------
        Neighborhood
            ``K = k_local + k_global`` columns, local first.
        """
        k_local, k_global = self._check_ks(k_local, k_global)
        nodes = self.positions(labels)
        pos, dist, lay, hops = self._neighborhood_rows(nodes, k_local, k_global, include_deleted)
        mask = pos >= 0
        ids = np.where(mask, self.labels[np.maximum(pos, 0)], -1).astype(np.int64)
        return Neighborhood(ids=ids, dist=dist, layer=lay, mask=mask, hops=hops, k_local=int(k_local))

    # ------------------------------------------------------------------ changes between snapshots
    def _check_previous(self, previous: Any) -> None:
        if not isinstance(previous, HNSWGraph):
            raise InvalidInputError(f"previous must be an HNSWGraph, got {type(previous).__name__}")
        if (previous.space != self.space or previous._raw.layout() != self._raw.layout()
                or len(previous) > len(self)):
            raise InvalidInputError(
                "previous is not an earlier snapshot of this index (other space, dimension, M, or more rows)")

    def _row_flags(self, previous: HNSWGraph) -> np.ndarray:
        """Change flags (``_delta_kernels``) of every row of ``self`` against ``previous``."""
        n_old = len(previous)
        flags = np.full(len(self), dk.ALL, dtype=np.uint8)
        delta = self._delta
        if delta is not None and delta[0]() is previous:
            flags[:n_old] = 0
            flags[delta[1]] = delta[2]
        elif previous is self:
            flags[:] = 0
        else:
            flags[:n_old] = _compare_rows(self._raw, previous._raw)
        return flags

    def changed_rows(self, previous: HNSWGraph) -> np.ndarray:
        """Rows of this snapshot whose graph record differs from ``previous``.

        Parameters
        ----------
        previous : HNSWGraph
            An earlier snapshot of the same index (same space and layout, at most as many rows).
            Rows are hnswlib's internal ids, which never move: row ``i`` is the same element in
            both snapshots.

        Returns
        -------
        numpy.ndarray of int64
            Sorted positions in ``self``: rows whose links on any layer, level, deleted mark,
            vector (bit for bit) or label differ, plus every row ``>= len(previous)``. Free for the
            snapshot ``HNSWIndex.graph()`` derived this one from; one pass over both buffers for
            any other.

        Raises
        ------
        InvalidInputError
            If ``previous`` cannot be an earlier snapshot of this index.
        """
        self._check_previous(previous)
        return np.flatnonzero(self._row_flags(previous)).astype(np.int64)

    def neighborhood_changes(
        self,
        previous: HNSWGraph,
        k_local: int,
        k_global: int,
        *,
        include_deleted: bool = False,
    ) -> np.ndarray:
        """Rows whose :meth:`neighborhoods` output differs from ``previous``'s, plus all new rows.

        Exactly the rows ``r`` for which ``self.neighborhoods([labels[r]], k_local, k_global,
        include_deleted=...)`` differs (in ``ids``, ``dist``, ``layer``, ``hops`` or ``mask``) from
        ``previous.neighborhoods`` of the same label, plus every row ``>= len(previous)``.

        Notes
        -----
        Dependency rule. Let a row's *attributes* be its deleted mark, vector, label and level.
        The neighbourhood of ``v`` reads: (a) ``v``'s own layer-0 links, vector, level and upper
        links; (b) the attributes of each layer-0 neighbour ``u``; (c) when ``v`` is at level 0,
        the upper links of the hubs (level >= 1) among its neighbours; (d) the attributes of each
        upper-layer item collected in (a) or (c); (e) on the 3-hop path (``v`` at level 0, no hub
        with an upper link among its neighbours) the layer-0 links of each neighbour ``w``, the
        level and upper links of each ``h`` linked from ``w``, and (d) for those links. So with
        ``k_global == 0`` only (a) links/vector and (b) count. The candidates are the rows of
        ``self`` where one of these inputs changed: (1) the row changed (:meth:`changed_rows`);
        (2) a layer-0 neighbour's attributes changed; (3) level >= 1: an upper link points to a
        row whose attributes changed; (4) level 0: a hub neighbour's upper links changed or point
        to such a row; (5) 3-hop rows: a neighbour's layer-0 links changed, or a row linked from a
        neighbour had its attributes changed or is a hub as in (4). A row outside (1)-(5) reads
        the same links, levels, hubs and values in both snapshots, so its output is equal; the
        candidates (found in one O(E) pass over the links) are recomputed on both snapshots
        and kept where any output differs.

        Parameters
        ----------
        previous : HNSWGraph
            An earlier snapshot of the same index (see :meth:`changed_rows`); its labels must
            be the first ``len(previous)`` labels of this one.
        k_local, k_global : int
            As in :meth:`neighborhoods` (``k_local + k_global >= 1``).
        include_deleted : bool
            As in :meth:`neighborhoods`.

        Returns
        -------
        numpy.ndarray of int64
            Sorted positions in ``self``.

        Raises
        ------
        InvalidInputError
            If ``previous`` cannot be an earlier snapshot of this index, or for bad ``k_*``.
        """
        self._check_previous(previous)
        k_local, k_global = self._check_ks(k_local, k_global)
        n_old = len(previous)
        if not np.array_equal(previous.labels, self.labels[:n_old]):
            raise InvalidInputError("previous is not an earlier snapshot of this index (labels differ)")
        rows = self._neighborhood_candidates(previous, k_global)
        old = rows[rows < n_old]
        ours = self._neighborhood_rows(old, k_local, k_global, include_deleted)
        theirs = previous._neighborhood_rows(old, k_local, k_global, include_deleted)
        # positions of old rows are the same in both snapshots and so are their labels (checked)
        differs = np.zeros(old.shape[0], dtype=bool)
        for a, b in zip(ours, theirs, strict=True):
            differs |= (a != b).any(axis=1)
        return np.concatenate([old[differs], np.arange(n_old, len(self), dtype=np.int64)])

    def _neighborhood_candidates(self, previous: HNSWGraph, k_global: int) -> np.ndarray:
        """Sorted rows whose neighbourhood may differ from ``previous``'s (a superset, see
        :meth:`neighborhood_changes`)."""
        raw = self._raw
        flags = self._row_flags(previous)
        mask = dk.neighborhood_candidates(raw.rec, raw.up, raw.first_block, raw.levels, flags,
                                          k_global > 0 and self.max_level >= 1)
        return np.flatnonzero(mask).astype(np.int64)

    def stats(self) -> dict[str, Any]:
        """Summary statistics: node/edge counts, levels histogram, degrees per layer, memory.

        ``memory_bytes`` is the size of the exported arrays: vectors, the CSR of every layer
        (int64), labels and levels.
        """
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
        n, edges = len(self), self.num_edges()
        csr_rows = max(self.num_layers, 1) * n + 1
        return {
            "nodes": n,
            "deleted": int(self.deleted.sum()),
            "space": self.space,
            "dim": int(self._raw.dim),
            "M": self.M,
            "max_level": self.max_level,
            "entry_point": self.entry_point,
            "levels_histogram": [int(c) for c in hist],
            "layers": per_layer,
            "edges": edges,
            "memory_bytes": int(4 * n * self._raw.dim + 8 * edges + 8 * csr_rows
                                + self.labels.nbytes + self.levels.nbytes),
        }


def _compare_rows(new: RawGraph, old: RawGraph) -> np.ndarray:
    """Change flags of rows ``0 .. old.n - 1`` (same layout; ``old.n <= new.n``)."""
    n_old = old.n
    flags = dk.record_flags(new.rec, old.rec, n_old, new.voff, new.dim, new.loff)
    dk.block_flags(new.up, new.first_block, new.levels, old.up, old.first_block, old.levels, flags)
    dk.hub_sequence_flags(new.rec, new.levels, old.rec, old.levels, flags)
    return flags


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


def graph_from_state(state: dict[str, Any], space: str, previous: HNSWGraph | None = None) -> HNSWGraph:
    """Build an :class:`HNSWGraph` from the dict inside ``hnswlib.Index.__getstate__()``.

    Parameters
    ----------
    state : dict
        ``hnswlib.Index.__getstate__()[0]``; the snapshot keeps its two buffers (hnswlib hands
        out fresh copies on every call).
    space : str
        The index's space.
    previous : HNSWGraph, optional
        An earlier snapshot of the same index. Its rows are compared with the new buffers and
        only the rows that changed (and the new ones) are decoded and checked; the result is
        exactly the snapshot built without it. Ignored when its space or layout differ or it has
        more rows.

    Raises
    ------
    LayoutError
        If the state does not have the layout this export reads (:func:`check_layout`).
    IndexCorruptedError
        If the buffers are inconsistent (wrong sizes, link counts or ids out of range).
    """
    check_layout(state)
    raw = parse_state(state)
    n = raw.n
    usable = (previous is not None and previous.space == space and previous._raw.layout() == raw.layout()
              and len(previous) <= n)
    if not usable or previous is None:
        raw.check(np.arange(n, dtype=np.int64))
        labels = raw.labels(slice(None))
        return HNSWGraph(raw, labels=labels, deleted=raw.deleted(slice(None)), space=space,
                         lut=_label_table(labels))
    n_old = len(previous)
    flags = _compare_rows(raw, previous._raw)
    changed = np.flatnonzero(flags).astype(np.int64)
    fresh = np.arange(n_old, n, dtype=np.int64)
    raw.check(np.concatenate([changed, fresh]))  # unchanged rows link below n_old <= n already
    flag_of = flags[changed]
    labels = np.empty(n, dtype=np.int64)
    labels[:n_old] = previous.labels
    labels[n_old:] = raw.labels(fresh)
    relabelled = changed[(flag_of & dk.LABEL) != 0]
    labels[relabelled] = raw.labels(relabelled)
    deleted = np.empty(n, dtype=bool)
    deleted[:n_old] = previous.deleted
    deleted[n_old:] = raw.deleted(fresh)
    marked = changed[(flag_of & dk.DELETED) != 0]
    deleted[marked] = raw.deleted(marked)
    lut = previous._lut
    if relabelled.size or lut is None:
        lut = _label_table(labels)
    else:
        lut = _extend_label_table(lut, labels, n_old)
    store = previous._store
    seed = (store, n_old) if store is not None and not (flag_of & dk.VECTOR).any() else None
    return HNSWGraph(raw, labels=labels, deleted=deleted, space=space, lut=lut, vector_seed=seed,
                     delta=(previous, changed, flag_of))


def _extend_label_table(lut: np.ndarray, labels: np.ndarray, n_old: int) -> np.ndarray | None:
    """``_label_table(labels)`` from the table of ``labels[:n_old]`` (the first rows unchanged)."""
    n = labels.shape[0]
    added = labels[n_old:]
    if added.size == 0:
        return lut
    if added.min() < 0:
        return None
    top = max(lut.shape[0], int(added.max()) + 1)
    if top > 4 * n + 1024:
        return None
    out = np.full(top, -1, dtype=np.int64)
    out[: lut.shape[0]] = lut
    out[added] = np.arange(n_old, n, dtype=np.int64)
    return out
