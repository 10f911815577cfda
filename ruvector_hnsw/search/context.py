"""The context stage: what attention sees for a database row and for a query.

Database rows
    :class:`RowContexts` holds every graph row's padded neighbourhood (``HNSWGraph.neighborhoods``:
    ``k_local`` layer-0 links nearest first, then ``k_global`` upper-layer links), as table rows,
    with distances divided by the model's distance scale ``s0``. It is query-independent, built once
    per graph snapshot and updated row by row after ``index.add``/``delete``
    (:meth:`RowContexts.updated`).

Queries
    :func:`query_context`: the query's best HNSW candidates (local part, their HNSW distances) and
    the upper-layer links of the hubs around its best candidate (global part, borrowed from that
    candidate's row context). Every distance is the index's own (:func:`index_distances`: squared
    L2, ``1 - dot`` for ip, ``1 - cos`` for cosine over the stored, normalised vectors), the same
    convention the database side gets from the graph, so both sides agree for every space.
"""

from __future__ import annotations

import numpy as np

from ruvector_hnsw.attention import Context
from ruvector_hnsw.index import HNSWGraph
from ruvector_hnsw.search._rows import GrowableRows

__all__ = ["RowContexts", "index_distances", "query_context"]


def index_distances(queries: np.ndarray, vectors: np.ndarray, rows: np.ndarray, space: str) -> np.ndarray:
    """The index's distance from each query to ``vectors[rows]`` ((B, n) rows, -1 = padding -> 0).

    ``queries`` must be as the index stores them (unit rows for cosine).
    """
    safe = np.maximum(rows, 0)
    x = vectors[safe].astype(np.float64)
    q = queries.astype(np.float64)[:, None, :]
    if space == "l2":
        d = ((x - q) ** 2).sum(-1)
    else:  # "ip" and "cosine": 1 - dot over the stored vectors
        d = 1.0 - (x * q).sum(-1)
    return np.where(rows >= 0, d, 0.0).astype(np.float32)


class RowContexts:
    """Padded graph context of every row of the synced graph snapshot (row-aligned, growable).

    Arrays (views over growable buffers; do not write):

    - ``pos`` (N, K) int64: table rows of the context items (-1 = padding), local columns first;
    - ``dist`` (N, K) float32: index distance to each item divided by ``s0`` (0 on padding);
    - ``layer`` (N, K) int8, ``hops`` (N, K) int64, ``mask`` (N, K) bool.

    Parameters
    ----------
    graph : HNSWGraph
        The snapshot whose rows are described.
    k_local, k_global : int
        Context sizes.
    s0 : float, optional
        Distance scale; ``None`` takes the median local distance of this graph.
    """

    def __init__(self, graph: HNSWGraph, k_local: int, k_global: int, s0: float | None = None) -> None:
        self.k_local = int(k_local)
        self.k_global = int(k_global)
        pos, dist, layer, hops, mask = self.raw(graph, np.arange(len(graph)), self.k_local, self.k_global)
        if s0 is None:
            local = dist[:, : self.k_local][mask[:, : self.k_local]]
            s0 = float(np.median(local)) if local.size else 1.0
            s0 = s0 if s0 > 0 and np.isfinite(s0) else 1.0
        self.s0 = float(s0)
        self._pos = GrowableRows(pos)
        self._dist = GrowableRows((dist / np.float32(self.s0)).astype(np.float32))
        self._layer = GrowableRows(layer)
        self._hops = GrowableRows(hops)
        self._mask = GrowableRows(mask)

    def __len__(self) -> int:
        return len(self._pos)

    @property
    def pos(self) -> np.ndarray:
        return self._pos.view

    @property
    def dist(self) -> np.ndarray:
        return self._dist.view

    @property
    def layer(self) -> np.ndarray:
        return self._layer.view

    @property
    def hops(self) -> np.ndarray:
        return self._hops.view

    @property
    def mask(self) -> np.ndarray:
        return self._mask.view

    @staticmethod
    def raw(graph: HNSWGraph, rows: np.ndarray, k_local: int, k_global: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Unscaled ``(pos, dist, layer, hops, mask)`` of graph rows ``rows`` (deleted items left out)."""
        nb = graph.neighborhoods(graph.labels[rows], k_local, k_global, include_deleted=False)
        pos = np.full(nb.ids.shape, -1, dtype=np.int64)
        pos[nb.mask] = graph.positions(nb.ids[nb.mask])
        dist = np.where(nb.mask, nb.dist, 0.0).astype(np.float32)
        layer = np.where(nb.mask, nb.layer, 0).astype(np.int8)
        return pos, dist, layer, nb.hops.astype(np.int64), np.ascontiguousarray(nb.mask)

    def update(self, graph: HNSWGraph, rows: np.ndarray) -> None:
        """Grow to ``len(graph)`` rows and recompute ``rows`` (which must include every new row) in place."""
        n = len(graph)
        for buf, fill in ((self._pos, -1), (self._dist, 0), (self._layer, 0), (self._hops, 0), (self._mask, False)):
            buf.resize(n, fill)
        if rows.size:
            p, d, lay, h, m = self.raw(graph, rows, self.k_local, self.k_global)
            self._pos.set_rows(rows, p)
            self._dist.set_rows(rows, d / np.float32(self.s0))
            self._layer.set_rows(rows, lay)
            self._hops.set_rows(rows, h)
            self._mask.set_rows(rows, m)

    def of_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, Context]:
        """``(ids, mask, Context)`` of table rows ``rows``, ready for the encoder."""
        return (self.pos[rows], self.mask[rows],
                Context(dist=self.dist[rows], layer=self.layer[rows], hops=self.hops[rows]))


def query_context(queries_stored: np.ndarray, vectors: np.ndarray, cand_pos: np.ndarray, cand_dist: np.ndarray,
                  rows: RowContexts, space: str) -> tuple[np.ndarray, np.ndarray, Context]:
    """Context of each query: its best ``k_local`` candidates + the hub links of its best candidate.

    Parameters
    ----------
    queries_stored : (B, d)
        The queries as the index compares them (unit rows for cosine).
    vectors : (N, d)
        The graph's stored vectors.
    cand_pos, cand_dist : (B, C)
        Candidate table rows (-1 = padding), best first, and their index distances.
    rows : RowContexts
        The database contexts (the best candidate's global part is reused).
    space : str
        The index space.

    Returns
    -------
    ids : (B, K) int64, mask : (B, K) bool, context : Context (dist / s0, layer, hops)
    """
    s0 = np.float32(rows.s0)
    kl = min(rows.k_local, cand_pos.shape[1])
    local = cand_pos[:, :kl]
    lmask = local >= 0
    ldist = np.where(lmask, cand_dist[:, :kl] / s0, 0.0).astype(np.float32)
    if rows.k_global:
        top = np.maximum(cand_pos[:, 0], 0)
        glob = rows.pos[top, rows.k_local:].copy()
        glob[cand_pos[:, 0] < 0] = -1
        gmask = glob >= 0
        gdist = (index_distances(queries_stored, vectors, glob, space) / s0).astype(np.float32)
        glayer = np.where(gmask, rows.layer[top, rows.k_local:], 0).astype(np.int8)
        ghops = np.where(gmask, rows.hops[top, rows.k_local:] + 1, 0).astype(np.int64)
        ids = np.concatenate([local, glob], axis=1)
        mask = np.concatenate([lmask, gmask], axis=1)
        dist = np.concatenate([ldist, np.where(gmask, gdist, 0.0).astype(np.float32)], axis=1)
        layer = np.concatenate([np.zeros(local.shape, dtype=np.int8), glayer], axis=1)
        hops = np.concatenate([lmask.astype(np.int64), ghops], axis=1)
    else:
        ids, mask, dist = local, lmask, ldist
        layer = np.zeros(local.shape, dtype=np.int8)
        hops = lmask.astype(np.int64)
    ids = np.ascontiguousarray(np.where(mask, ids, -1), dtype=np.int64)
    return ids, np.ascontiguousarray(mask), Context(dist=dist, layer=layer, hops=hops)
