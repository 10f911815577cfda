"""The query path as stages over arrays: candidates -> query codes -> expansion + scoring -> ranking.

Each function takes the model, the synced :class:`~ruvector_hnsw.search.state.DatabaseState` and
arrays, and returns arrays; only :class:`~ruvector_hnsw.search.AttentionSearch` holds references
to all of them. One batch of queries::

    candidates(index, q, C)           HNSW at ef = C: table rows + index distances, best first
    encode_queries(...)               attention over the best candidates + hub links -> codes zq
    expand_pool(...)                  + latent kNN of zq + layer-0 links of the best items (rounds)
    scorer.score(...)                 beta * (-dist / s0) + alpha * <zq, Z[pool]>
    finish(...)                       sorted, the HNSW tail appended when k > pool, labels
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ruvector_hnsw._validation import check_positive_int
from ruvector_hnsw.attention import Context
from ruvector_hnsw.errors import ConfigError, UnknownIdError
from ruvector_hnsw.index import HNSWGraph, HNSWIndex
from ruvector_hnsw.search import _kernels, spectral
from ruvector_hnsw.search.context import query_context
from ruvector_hnsw.search.labels import class_candidates
from ruvector_hnsw.search.model import SearchModel
from ruvector_hnsw.search.scoring import ResidualScorer, append_tail, rank, to_labels
from ruvector_hnsw.search.state import DIFFUSION_K, DatabaseState

__all__ = ["Knobs", "QueryBatch", "candidates", "encode_queries", "expand_and_score", "finish", "stored_queries"]


def _nonneg(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 0:
        raise ConfigError(f"{name}: expected an integer >= 0, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class Knobs:
    """Per-call search settings (validated).

    Attributes
    ----------
    candidates : int
        HNSW candidates re-scored per query (the HNSW search runs at ``ef = candidates``).
    expand : int
        Expansion rounds (0 = re-rank the candidates only).
    latent_k : int
        Latent neighbours fetched per round (at least ``k`` are fetched).
    walk_top : int
        Best items whose layer-0 links join the pool per round.
    """

    candidates: int = 100
    expand: int = 1
    latent_k: int = 32
    walk_top: int = 2

    def __post_init__(self) -> None:
        check_positive_int(self.candidates, "candidates", ConfigError)
        _nonneg(self.expand, "expand")
        check_positive_int(self.latent_k, "latent_k", ConfigError)
        _nonneg(self.walk_top, "walk_top")


@dataclass(frozen=True)
class QueryBatch:
    """A batch of queries in the three forms the stages need, with its HNSW candidates."""

    stored: np.ndarray       #: (B, d) as the index compares them (unit rows for cosine)
    standard: np.ndarray     #: (B, d) standardised (what attention reads)
    hnsw_rows: np.ndarray    #: (B, max(C, k)) table rows, best first (-1 padding)
    hnsw_dist: np.ndarray    #: (B, max(C, k)) index distances


def stored_queries(q: np.ndarray, space: str) -> np.ndarray:
    """Queries as the index compares them (normalised for cosine)."""
    if space == "cosine":
        q = q / (np.linalg.norm(q, axis=1, keepdims=True) + 1e-12)
    return np.ascontiguousarray(q, dtype=np.float32)


def rows_of(graph: HNSWGraph, labels: np.ndarray) -> np.ndarray:
    """Table rows of labels (-1 stays -1; labels the snapshot does not know - added since - become -1)."""
    rows = np.full(labels.shape, -1, dtype=np.int64)
    ok = labels >= 0
    if not ok.any():
        return rows
    lab = labels[ok]
    try:  # the usual case: every label is in the snapshot (one table lookup)
        rows[ok] = graph.positions(lab)
        return rows
    except UnknownIdError:  # the index has grown since the snapshot was taken
        pass
    known = np.isin(lab, graph.labels)
    sub = np.full(lab.shape, -1, dtype=np.int64)
    if known.any():
        sub[known] = graph.positions(lab[known])
    rows[ok] = sub
    return rows


def candidates(index: HNSWIndex, graph: HNSWGraph, model: SearchModel, q: np.ndarray, n: int, ef: int,
               num_threads: int) -> QueryBatch:
    """HNSW's ``n`` best for each query (at ``ef``), as table rows of ``graph``."""
    ids, dist = index.search(q, k=n, ef=max(ef, n), num_threads=num_threads)
    rows = rows_of(graph, ids)
    dist = np.where(rows >= 0, dist, np.inf).astype(np.float32)
    stored = stored_queries(q, index.space)
    standard = model.scale.standardise(stored) if model.scale is not None else stored
    return QueryBatch(stored=stored, standard=standard, hnsw_rows=rows, hnsw_dist=dist)


def encode_queries(model: SearchModel, db: DatabaseState, qb: QueryBatch, ctx_rows: np.ndarray,
                   ctx_dist: np.ndarray) -> np.ndarray:
    """Query codes: attention over the context rows (best first) + hub links, then the diffusion part."""
    assert db.codes is not None
    ids, mask, ctx = query_context(qb.stored, db.graph.vectors, ctx_rows, ctx_dist, db.contexts, db.space)
    if db.table_state is not None:
        ctx = Context(dist=ctx.dist, layer=ctx.layer, hops=ctx.hops, table_state=db.table_state)
    z = model.encoder.encode(qb.standard, db.table.view, ids, mask, ctx).zhat
    if not db.codes.uses_phi:
        return db.codes.compose(z, None)
    k = min(DIFFUSION_K, ctx_rows.shape[1])
    pos = ctx_rows[:, :k]
    w = np.where(pos >= 0, spectral.affinity_weights(ctx_dist[:, :k], db.space, db.contexts.s0), 0.0)
    return db.codes.compose(z, spectral.nystrom(db.codes.phi, pos, w))


def label_log_proba(model: SearchModel, db: DatabaseState, qb: QueryBatch) -> np.ndarray | None:
    """``log p(class | q)`` (B, n_classes) from the label head over the query's best candidates (None: no head)."""
    head, space = model.label_head, model.labels
    if head is None or space is None:
        return None
    kl = db.contexts.k_local
    rows = qb.hnsw_rows[:, :kl]
    mask = rows >= 0
    row_class = db.row_class(space)
    cls = np.where(mask, row_class[np.maximum(rows, 0)], 0)
    d = np.where(mask, qb.hnsw_dist[:, :kl] / np.float32(db.contexts.s0), 0.0)
    return head.log_proba(qb.standard, cls, d, mask)


def with_class_members(model: SearchModel, db: DatabaseState, qb: QueryBatch, pool: np.ndarray, known: np.ndarray,
                       logp: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """The pool plus the ``m`` members of each query's most probable class nearest to it."""
    assert model.labels is not None
    indptr, members = db.class_members(model.labels)
    top = np.argmax(logp, axis=1)
    cand = class_candidates(qb.stored, db.graph.vectors, top, indptr, members, m, db.space, ~db.graph.deleted)
    merged = np.concatenate([pool, cand], axis=1)
    known = np.concatenate([known, np.full(cand.shape, np.nan, np.float32)], axis=1)
    return _kernels.unique_rows(merged, known, db.graph.deleted)


def label_term(pool: np.ndarray, logp: np.ndarray, row_class: np.ndarray) -> np.ndarray:
    """``log p(class(v) | q)`` of every pool item (0 on padding)."""
    cls = row_class[np.maximum(pool, 0)]
    return np.where(pool >= 0, np.take_along_axis(logp, cls, axis=1), 0.0).astype(np.float32)


def metric_pool(model: SearchModel, db: DatabaseState, qb: QueryBatch, k: int, knobs: Knobs, scorer: ResidualScorer,
                num_threads: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Candidates + expansion rounds: ``(pool rows, scores, distances, zq)`` (no label term yet)."""
    assert db.codes is not None
    C = knobs.candidates
    vectors = db.graph.vectors
    codes = db.codes.store
    pool = qb.hnsw_rows[:, :C]
    dist = qb.hnsw_dist[:, :C]
    if scorer.alpha == 0.0:  # the learned term is off: no code, no latent expansion
        scores, dist = scorer.score(qb.stored, vectors, None, codes, pool, dist)
        return pool, scores, dist, None
    zq = encode_queries(model, db, qb, pool, dist)
    if knobs.expand == 0:
        scores, dist = scorer.score(qb.stored, vectors, zq, codes, pool, dist)
        return pool, scores, dist, zq
    reach = max(knobs.latent_k, k)
    kl = db.contexts.k_local
    scores = np.zeros(pool.shape, dtype=np.float32)
    for round_ in range(knobs.expand):
        lat = db.codes.search(zq, reach, num_threads)
        if round_ == 0:  # the best items by the learned term: the latent neighbours, nearest first
            top = lat[:, : knobs.walk_top]
        else:  # the best re-scored items; the query code is refined with them as its context
            ranked = np.argsort(-scores, axis=1, kind="stable")
            top = np.take_along_axis(pool, ranked[:, : knobs.walk_top], axis=1)
        walk = np.where(top[:, :, None] >= 0, db.contexts.pos[np.maximum(top, 0), :kl], -1).reshape(len(pool), -1)
        merged = np.concatenate([pool, lat, walk], axis=1)
        known = np.concatenate([dist, np.full(lat.shape, np.nan, np.float32),
                                np.full(walk.shape, np.nan, np.float32)], axis=1)
        pool, known = _kernels.unique_rows(merged, known, db.graph.deleted)
        scores, dist = scorer.score(qb.stored, vectors, zq, codes, pool, known)
        if round_ + 1 < knobs.expand:
            ranked = np.argsort(-scores, axis=1, kind="stable")[:, :kl]
            zq = encode_queries(model, db, qb, np.take_along_axis(pool, ranked, axis=1),
                                np.take_along_axis(dist, ranked, axis=1))
    return pool, scores, dist, zq


def expand_and_score(model: SearchModel, db: DatabaseState, qb: QueryBatch, k: int, knobs: Knobs,
                     scorer: ResidualScorer, num_threads: int, lam: float | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The re-scored pool of each query: ``(pool rows, scores, distances)``, unsorted.

    With the label term on (``lam > 0``), the members of each query's most probable class nearest
    to it join the pool and every item gets ``lam * log p(class(v) | q)`` added.
    """
    pool, scores, dist, zq = metric_pool(model, db, qb, k, knobs, scorer, num_threads)
    lam = model.lam if lam is None else lam
    logp = label_log_proba(model, db, qb) if lam else None
    if logp is None or model.labels is None:
        return pool, scores, dist
    assert db.codes is not None
    pool, known = with_class_members(model, db, qb, pool, dist, logp, max(k, model.config.class_pool))
    scores, dist = scorer.score(qb.stored, db.graph.vectors, zq, db.codes.store, pool, known)
    scores = scores + np.float32(lam) * label_term(pool, logp, db.row_class(model.labels))
    return pool, np.where(pool >= 0, scores, -np.inf).astype(np.float32), dist


def finish(qb: QueryBatch, pool: np.ndarray, scores: np.ndarray, k: int, graph: HNSWGraph
           ) -> tuple[np.ndarray, np.ndarray]:
    """Sort the pool, append the HNSW tail up to ``k``, and map rows to labels."""
    pool, scores = rank(pool, scores)
    pool, scores = append_tail(qb.hnsw_rows, pool, scores, k)
    return to_labels(pool[:, :k], scores[:, :k], graph.labels)


def hnsw_ranking(qb: QueryBatch, k: int, s0: float, graph: HNSWGraph) -> tuple[np.ndarray, np.ndarray]:
    """HNSW's own ranking with scores ``-dist / s0`` (what an untrained model returns)."""
    rows = qb.hnsw_rows[:, :k]
    scores = np.where(rows >= 0, -qb.hnsw_dist[:, :k] / np.float32(s0), -np.inf).astype(np.float32)
    return to_labels(rows, scores, graph.labels)
