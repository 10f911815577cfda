"""What the pipeline derives from the index for one model: table, row contexts, codes.

:class:`DatabaseState` is aligned with the rows of one graph snapshot:

- ``table``: standardised stored vectors (what attention reads as keys and values);
- ``contexts``: every row's graph neighbourhood (:class:`~ruvector_hnsw.search.context.RowContexts`);
- ``codes``: the cached codes and the latent kNN over them
  (:class:`~ruvector_hnsw.search.codes.LatentCodes`; only once the model is fitted);
- ``table_state``: the mechanism's explicit per-table state (``prepare_table``; dual_space's latent
  neighbours), refreshed with the codes.

:meth:`DatabaseState.sync` brings it to a newer snapshot of the same index incrementally: only the
rows whose neighbourhood changed (``HNSWGraph.neighborhood_changes``: new rows and rows whose links
hnswlib rewired or whose context lost a deleted item) get a new context and a new code; new rows
get diffusion coordinates by the Nystrom rule from their older neighbours. The result equals a
state built from scratch on the new snapshot with the same diffusion coordinates (tested).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ruvector_hnsw.index import HNSWGraph
from ruvector_hnsw.search import diffusion, smoothing, spectral
from ruvector_hnsw.search._rows import GrowableRows
from ruvector_hnsw.search.codes import LatentCodes
from ruvector_hnsw.search.context import RowContexts
from ruvector_hnsw.search.encoder import ContextEncoder
from ruvector_hnsw.search.expansion import expand_vectors
from ruvector_hnsw.search.labels import UNKNOWN_TOP, LabelHead, LabelSpace, top_classes
from ruvector_hnsw.search.model import Scale, SearchModel
from ruvector_hnsw.threads import thread_limits

__all__ = ["ENCODE_BLOCK", "DatabaseState", "aligned_blocks"]

#: database codes are computed in blocks of exactly this many rows, row ``r`` at position ``r % ENCODE_BLOCK``
#: (:func:`aligned_blocks`): BLAS sums small matrices, the remainder rows of a matrix and the rows of a tile
#: at different positions in other orders, so only a fixed block shape and a fixed position make a row's
#: code independent of which rows are encoded with it. The size is a multiple of every micro-kernel
#: width of the row dimension (OpenBLAS 0.3.31's Haswell sgemm walks the rows in panels of 6; 64 rows
#: put a block's rows at other panel positions once it was not the first block of a call), so a block
#: starts a panel wherever it sits in a call. Small blocks also keep BLAS on the calling thread
ENCODE_BLOCK = 96
#: aligned blocks encoded per call (one attention / GEMM call over ENCODE_GROUP * ENCODE_BLOCK rows)
ENCODE_GROUP = 24
#: neighbours whose affinities define the diffusion graph and the Nystrom rule
DIFFUSION_K = 10


def aligned_blocks(rows: np.ndarray, size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pack ``rows`` into blocks of ``size`` rows with row ``r`` at position ``r % size``.

    Returns ``(at, block)`` pairs: ``block`` (size,) holds the rows ``rows[at]`` at their
    positions and copies of ``rows[0]`` elsewhere. ``arange(n)`` packs into the aligned blocks
    ``[0, size), [size, 2 size), ...``; ``m`` rows with distinct residues need one block.
    """
    residue = rows % size
    order = np.argsort(residue, kind="stable")
    sr = residue[order]
    starts = np.flatnonzero(np.concatenate([[True], sr[1:] != sr[:-1]]))
    rank = np.empty(rows.shape[0], dtype=np.int64)
    rank[order] = np.arange(rows.shape[0]) - np.repeat(starts, np.diff(np.append(starts, rows.shape[0])))
    by_block = np.argsort(rank, kind="stable")
    bounds = np.searchsorted(rank[by_block], np.arange(int(rank.max()) + 2))
    out = []
    for b in range(bounds.shape[0] - 1):
        at = by_block[bounds[b] : bounds[b + 1]]
        block = np.full(size, rows[0], dtype=np.int64)
        block[residue[at]] = rows[at]
        out.append((at, block))
    return out


class DatabaseState:
    """Row-aligned table, contexts and codes of one model over one index (see the module docstring).

    Build with :meth:`build`; keep in line with the index with :meth:`sync`.
    """

    def __init__(self, graph: HNSWGraph, table: GrowableRows, contexts: RowContexts, space: str) -> None:
        self.graph = graph
        self.table = table
        self.contexts = contexts
        self.space = space
        self.codes: LatentCodes | None = None
        self.table_state: Any = None
        self._labels: tuple[Any, int, LabelSpace, tuple[np.ndarray, np.ndarray]] | None = None
        self._unknown: tuple[Any, Any, Any, tuple[np.ndarray, np.ndarray]] | None = None
        self._links: tuple[Any, tuple[np.ndarray, np.ndarray, float]] | None = None
        self._augmented: tuple[Any, GrowableRows] | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, model: SearchModel, graph: HNSWGraph, space: str) -> DatabaseState:
        """Contexts (and, for a fitted model, codes) of every row of ``graph``.

        Sets ``model.scale`` from this graph when the model has none yet.
        """
        cfg = model.config
        s0 = model.scale.s0 if model.scale is not None else None
        contexts = RowContexts(graph, cfg.k_local, cfg.k_global, s0)
        if model.scale is None:
            model.scale = Scale.of(graph.vectors, contexts.s0)
        table = GrowableRows(model.scale.standardise(graph.vectors))
        return cls(graph, table, contexts, space)

    @property
    def n(self) -> int:
        return len(self.graph)

    def _grown(self, labels: LabelSpace) -> LabelSpace:
        """``labels`` over this graph's rows (rows added after fit are marked unknown); cached."""
        cached = self._labels
        if cached is None or cached[0] is not labels or cached[1] != self.n:
            grown = labels.grown(self.n)
            cached = (labels, self.n, grown, grown.members())
            self._labels = cached
        return cached[2]

    def row_class(self, labels: LabelSpace) -> np.ndarray:
        """Class of every row of this graph (rows added after fit are marked unknown)."""
        return self._grown(labels).row_class

    def class_members(self, labels: LabelSpace) -> tuple[np.ndarray, np.ndarray]:
        """CSR of each class's rows for this graph (rows added after fit are marked unknown)."""
        self._grown(labels)
        assert self._labels is not None
        return self._labels[3]

    def unknown_predictions(self, labels: LabelSpace, head: LabelHead) -> tuple[np.ndarray, np.ndarray]:
        """The label head's classes of every row whose label is unknown: ``(classes, probabilities)``.

        Both ``(N, UNKNOWN_TOP)``, most probable first; ``classes`` is -1 on labelled and deleted
        rows. A row's prediction reads its vector and the labels of its layer-0 links, like the
        database rows the head was trained on. Computed for all such rows at once (one BLAS
        thread) and cached per snapshot, so a synced state and a fresh one agree.
        """
        cached = self._unknown
        if cached is not None and cached[0] is labels and cached[1] is head and cached[2] is self.graph:
            return cached[3]
        row_class = self.row_class(labels)
        t = min(UNKNOWN_TOP, head.n_classes)
        cls = np.full((self.n, t), -1, dtype=np.int64)
        proba = np.zeros((self.n, t), dtype=np.float32)
        rows = np.flatnonzero((row_class >= labels.n_known) & ~self.graph.deleted)
        if rows.size and head.n_classes:
            ctx_cls, dist, mask = self.label_context(row_class, rows)
            with thread_limits(1):
                logp = head.log_proba(self.table.view[rows], ctx_cls, dist, mask)
            cls[rows], proba[rows] = top_classes(logp, t)
        out = (cls, proba)
        self._unknown = (labels, head, self.graph, out)
        return out

    def label_context(self, row_class: np.ndarray, rows: np.ndarray | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What the label head reads of table rows: their layer-0 links' classes, distances / s0, mask.

        Each ``(len(rows), k_local)`` (every row when ``rows`` is None); padding is class 0, distance 0.
        """
        kl = self.contexts.k_local
        sel = slice(None) if rows is None else rows
        pos = self.contexts.pos[sel, :kl]
        mask = self.contexts.mask[sel, :kl]
        return (np.where(mask, row_class[np.maximum(pos, 0)], 0), np.where(mask, self.contexts.dist[sel, :kl], 0.0),
                mask)

    def diffusion_links(self) -> tuple[np.ndarray, np.ndarray, float]:
        """Every row's nearest layer-0 links (``(N, LINKS)`` rows, -1 padding), their similarities, ``sigma``.

        What the diffusion stage walks (:mod:`ruvector_hnsw.search.diffusion`); cached per snapshot.
        """
        if self._links is not None and self._links[0] is self.graph:
            return self._links[1]
        k = min(diffusion.LINKS, self.contexts.k_local)
        pos = np.ascontiguousarray(self.contexts.pos[:, :k], dtype=np.int64)
        ok = self.contexts.mask[:, :k] & (pos >= 0)
        dist = self.contexts.dist[:, :k].astype(np.float64) * float(self.contexts.s0)
        sigma = 1.0
        if self.space == "l2" and ok.any():
            sigma = float(dist[ok].mean()) or 1.0
        sim = np.where(ok, diffusion.link_similarity(dist, self.space, sigma), 0.0).astype(np.float32)
        out = (np.where(ok, pos, -1), sim, sigma)
        self._links = (self.graph, out)
        return out

    def augmented_vectors(self) -> np.ndarray:
        """Every row's DBA vector (:mod:`ruvector_hnsw.search.smoothing`), ``(N, d)`` float32.

        Built on first use from the rows' nearest layer-0 links (their local context); :meth:`sync`
        then recomputes only the rows whose links or linked vectors changed, in place.
        """
        if self._augmented is None or self._augmented[0] is not self.graph:
            self._augmented = (self.graph, GrowableRows(self._dba_rows(np.arange(self.n))))
        return self._augmented[1].view

    def _dba_rows(self, rows: np.ndarray, block: int = 8192) -> np.ndarray:
        """The DBA vectors of ``rows``, ``(len(rows), d)`` float32."""
        n = min(smoothing.DBA_LINKS, self.contexts.k_local)
        vec = self.graph.vectors
        out = np.empty((rows.size, vec.shape[1]), dtype=np.float32)
        for s in range(0, rows.size, block):
            r = rows[s : s + block]
            pos = self.contexts.pos[r, :n]
            mask = self.contexts.mask[r, :n] & (pos >= 0)
            out[s : s + block] = expand_vectors(vec[r], vec[np.where(mask, pos, 0)], mask, alpha=smoothing.DBA_ALPHA,
                                                metric=self.space)
        return out

    # ------------------------------------------------------------------ diffusion coordinates
    def neighbour_weights(self, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(pos, weights)`` of the ``k`` nearest local context items of ``rows``."""
        pos = self.contexts.pos[rows, :k]
        d = self.contexts.dist[rows, :k] * np.float32(self.contexts.s0)
        w = np.where(pos >= 0, spectral.affinity_weights(d, self.space, self.contexts.s0), 0.0)
        return pos, w

    def diffusion(self, width: int, t: int, seed: int) -> np.ndarray:
        """Diffusion coordinates of every row (a seeded lazy-walk sketch of the layer-0 graph)."""
        if width == 0:
            return np.zeros((self.n, 0), dtype=np.float32)
        k = min(DIFFUSION_K, self.contexts.k_local)
        pos, w = self.neighbour_weights(np.arange(self.n), k)
        return spectral.diffusion_coordinates(pos, w, width, t, seed)

    def nystrom(self, phi: Any, rows: np.ndarray, limit: int) -> np.ndarray:
        """Coordinates of ``rows`` from their neighbours among the first ``limit`` rows (which have ``phi``).

        ``phi``: an ``(N, m)`` array or stored rows (:class:`~ruvector_hnsw.search.quant.CodeRows`).
        """
        pos, w = self.neighbour_weights(rows, self.contexts.k_local)
        keep = (pos >= 0) & (pos < limit)
        return spectral.nystrom(phi, np.where(keep, pos, -1), np.where(keep, w, 0.0))

    # ------------------------------------------------------------------ codes
    def encode_rows(self, encoder: ContextEncoder, rows: np.ndarray) -> np.ndarray:
        """Unit codes ``(len(rows), p)`` of table rows, attending over their graph contexts.

        A row's code is the same whichever rows are encoded with it, so incremental updates
        equal a full refresh exactly: rows are encoded in blocks of :data:`ENCODE_BLOCK`, and
        row ``r`` always sits at position ``r % ENCODE_BLOCK`` of its block (BLAS kernels treat
        the rows of a tile differently by position; the other rows of a block never matter).
        """
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((rows.shape[0], encoder.latent_dim), dtype=np.float32)
        if rows.shape[0] == 0:
            return out
        table = self.table.view
        blocks = aligned_blocks(rows, ENCODE_BLOCK)
        for g in range(0, len(blocks), ENCODE_GROUP):
            # several aligned blocks per call: every row still sits at position r % ENCODE_BLOCK of
            # a full ENCODE_BLOCK-row tile, so its code is the same as in any other grouping
            group = blocks[g : g + ENCODE_GROUP]
            batch = np.concatenate([block for _, block in group])
            ids, mask, ctx = self.contexts.of_rows(batch)
            if self.table_state is not None:
                ctx.table_state = self.table_state
            z = encoder.encode(table[batch], table, ids, mask, ctx).zhat
            for j, (at, _) in enumerate(group):
                out[at] = z[j * ENCODE_BLOCK + rows[at] % ENCODE_BLOCK]
        return out

    def refresh_codes(self, model: SearchModel, *, kind: str | None = None, phi: np.ndarray | None = None,
                      phi_fitted: int | None = None, dtype: str | None = None) -> None:
        """Recompute every code (and the mechanism's table state); rebuild the latent kNN.

        ``phi`` gives the diffusion coordinates of the first ``phi_fitted`` rows (default: all of
        ``phi``); later rows get theirs by the Nystrom rule. Without ``phi`` the current
        coordinates are kept when they cover the graph, and the sketch is computed otherwise.
        ``dtype`` is the storage of the codes (default: the model's ``code_dtype``; training
        refreshes in ``float32``).
        """
        cfg = model.config
        self.table_state = model.encoder.prepare_table(self.table.view)
        z = self.encode_rows(model.encoder, np.arange(self.n))
        if phi is None and self.codes is not None and self.codes.phi.shape == (self.n, cfg.spectral):
            phi, phi_fitted = self.codes.phi_values(), self.codes.phi_fitted
        if phi is None or phi.shape[1] != cfg.spectral:
            phi, phi_fitted = self.diffusion(cfg.spectral, cfg.spectral_time, cfg.seed), self.n
        fitted = phi.shape[0] if phi_fitted is None else int(phi_fitted)
        fitted = min(fitted, phi.shape[0], self.n)
        full = np.zeros((self.n, phi.shape[1]), dtype=np.float32)
        full[:fitted] = phi[:fitted]
        if phi.shape[1] and fitted < self.n:
            later = np.arange(fitted, self.n)
            full[later] = self.nystrom(full, later, fitted)
        self.codes = LatentCodes(z, full, model.rho, kind=kind or cfg.latent, seed=cfg.seed, phi_fitted=fitted,
                                 dtype=dtype or cfg.code_dtype)

    # ------------------------------------------------------------------ incremental sync
    def sync(self, model: SearchModel, graph: HNSWGraph) -> np.ndarray:
        """Bring the state to ``graph`` (a newer snapshot of the same index); return the re-encoded rows."""
        old = self.graph
        n_old, n = len(old), len(graph)
        cfg = model.config
        rows = graph.neighborhood_changes(old, cfg.k_local, cfg.k_global)
        record = graph.changed_rows(old)
        assert model.scale is not None
        self.table.resize(n)
        kept = record[record < n_old]
        vec_rows = np.concatenate([kept[_vector_changed(old, graph, kept)], record[record >= n_old]])
        if vec_rows.size:
            self.table.set_rows(vec_rows, model.scale.standardise(graph.vectors[vec_rows]))
        self.graph = graph
        self.contexts.update(graph, rows)
        encode = np.union1d(rows, vec_rows).astype(np.int64)
        if self._augmented is not None:  # rows whose links or linked vectors changed
            redo = encode
            if vec_rows.size:
                n_links = min(smoothing.DBA_LINKS, self.contexts.k_local)
                linking = np.flatnonzero(np.isin(self.contexts.pos[:, :n_links], vec_rows).any(axis=1))
                redo = np.union1d(redo, linking).astype(np.int64)
            table = self._augmented[1]
            table.resize(n)
            table.set_rows(redo, self._dba_rows(redo))
            self._augmented = (graph, table)
        if self.codes is not None:
            if self.table_state is not None:
                self.table_state = model.encoder.prepare_table(self.table.view)
            phi_rows = phi_values = None
            if self.codes.phi.width:
                phi_rows = encode[encode >= self.codes.phi_fitted]
                phi_values = self.nystrom(self.codes.phi, phi_rows, self.codes.phi_fitted)
            self.codes.update(encode, self.encode_rows(model.encoder, encode), n, phi_rows, phi_values)
        return encode


def _vector_changed(old: HNSWGraph, new: HNSWGraph, rows: np.ndarray) -> np.ndarray:
    if rows.size == 0:
        return np.zeros(0, dtype=bool)
    return np.any(old.vectors[rows] != new.vectors[rows], axis=1)
