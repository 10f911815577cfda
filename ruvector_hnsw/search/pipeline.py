"""The query path as stages over arrays: candidates -> query codes -> expansion + scoring -> ranking.

Each function takes the model, the synced :class:`~ruvector_hnsw.search.state.DatabaseState` and
arrays, and returns arrays; only :class:`~ruvector_hnsw.search.AttentionSearch` holds references
to all of them. One batch of queries::

    candidates(index, q, C)           HNSW at ef = C: table rows + index distances, best first
    encode_queries(...)               attention over the best candidates + hub links -> codes zq
    expand_pool(...)                  + latent kNN of zq + layer-0 links of the best items (rounds)
    scorer.score(...)                 beta * (-dist / s0) + alpha * <zq, Z[pool]> (+ the label term)
    diffusion_pool(...)               queries without the label term: graph diffusion from their best items
    smoothed(...)                     ... and DBA + score-space query expansion over their pool
    finish(...)                       sorted, the HNSW tail appended when k > pool, labels
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ruvector_hnsw._validation import check_positive_int
from ruvector_hnsw.attention import Context
from ruvector_hnsw.errors import ConfigError, UnknownIdError
from ruvector_hnsw.index import HNSWGraph, HNSWIndex
from ruvector_hnsw.search import _kernels, diffusion, smoothing, spectral
from ruvector_hnsw.search.context import query_context
from ruvector_hnsw.search.labels import class_candidates, same_class_log_proba
from ruvector_hnsw.search.model import SearchModel
from ruvector_hnsw.search.scoring import ResidualScorer, append_tail, rank, to_labels
from ruvector_hnsw.search.state import DIFFUSION_K, DatabaseState

__all__ = ["Demotion", "Knobs", "LabelView", "QueryBatch", "candidates", "combine_scores", "encode_queries",
           "expand_and_score", "finish", "stored_queries"]


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


@dataclass(frozen=True)
class LabelView:
    """What the label head says of a batch of queries."""

    logp: np.ndarray      #: (B, n_known) log p(class | q)
    evidence: np.ndarray  #: (B,) attention mass of the labelled candidates: weights and gates the label term

    def applies(self, gate: float) -> np.ndarray:
        """(B,) bool: the queries the label term applies to (evidence above 0 and at least ``gate``)."""
        return (self.evidence > 0.0) & (self.evidence >= gate)


def head_inputs(db: DatabaseState, row_class: np.ndarray, qb: QueryBatch
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What a label head reads of queries: ``(standardised vectors, candidate classes, distances / s0, mask)``.

    The candidates are each query's ``k_local`` best HNSW rows, ``row_class`` the class of every row.
    """
    kl = db.contexts.k_local
    rows = qb.hnsw_rows[:, :kl]
    mask = rows >= 0
    cls = np.where(mask, row_class[np.maximum(rows, 0)], 0)
    d = np.where(mask, qb.hnsw_dist[:, :kl] / np.float32(db.contexts.s0), 0.0)
    return qb.standard, cls, d, mask


def label_view(model: SearchModel, db: DatabaseState, qb: QueryBatch) -> LabelView | None:
    """The label head over the query's best candidates (None: no head)."""
    head, space = model.label_head, model.labels
    if head is None or space is None:
        return None
    u, cls, d, mask = head_inputs(db, db.row_class(space), qb)
    return LabelView(logp=head.log_proba(u, cls, d, mask), evidence=head.evidence(cls, d, mask))


def with_class_members(model: SearchModel, db: DatabaseState, qb: QueryBatch, pool: np.ndarray, known: np.ndarray,
                       view: LabelView, m: int, on: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pool plus the ``m`` members of each query's most probable class nearest to it (queries ``on`` only)."""
    assert model.labels is not None
    indptr, members = db.class_members(model.labels)
    cand = np.full((pool.shape[0], m), -1, dtype=np.int64)
    if on.any():
        top = np.argmax(view.logp[on], axis=1)
        cand[on] = class_candidates(qb.stored[on], db.graph.vectors, top, indptr, members, m, db.space,
                                    ~db.graph.deleted)
    merged = np.concatenate([pool, cand], axis=1)
    known = np.concatenate([known, np.full(cand.shape, np.nan, np.float32)], axis=1)
    return _kernels.unique_rows(merged, known, db.graph.deleted)


def label_term(model: SearchModel, db: DatabaseState, pool: np.ndarray, view: LabelView) -> np.ndarray:
    """``evidence(q) * log P(same class | q, v)`` of every pool item (0 on padding)."""
    assert model.labels is not None and model.label_head is not None
    uc, up = db.unknown_predictions(model.labels, model.label_head)
    same = same_class_log_proba(pool, view.logp, db.row_class(model.labels), uc, up)
    return (view.evidence[:, None].astype(np.float32) * same).astype(np.float32)


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


def spread(scores: np.ndarray) -> np.ndarray:
    """(B,) standard deviation of each query's finite scores (1 where there are fewer than 2)."""
    ok = np.isfinite(scores)
    n = ok.sum(axis=1)
    x = np.where(ok, scores, 0.0).astype(np.float64)
    mean = x.sum(axis=1) / np.maximum(n, 1)
    var = (np.where(ok, (x - mean[:, None]) ** 2, 0.0)).sum(axis=1) / np.maximum(n, 1)
    sd = np.sqrt(var)
    return np.where((n >= 2) & (sd > 0), sd, 1.0)


def values_at(ids: np.ndarray, values: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    """Per query, ``values`` of ``rows`` looked up among ``ids`` (0 where absent; ``ids`` unique per row)."""
    uid, uval = _kernels.unique_rows(ids, values)  # ascending per row, -1 padding last
    B = uid.shape[0]
    base = (np.arange(B, dtype=np.int64) * (n + 1))[:, None]
    keys = (base + np.where(uid >= 0, uid, n)).ravel()
    want = base + np.where(rows >= 0, rows, n)
    at = np.minimum(np.searchsorted(keys, want), keys.size - 1)
    hit = (keys[at] == want) & (rows >= 0)
    return np.where(hit, np.nan_to_num(uval.ravel()[at]), 0.0).astype(np.float32)


def diffusion_pool(db: DatabaseState, pool: np.ndarray, scores: np.ndarray, dist: np.ndarray, apply: np.ndarray,
                   gamma: float, seeds: int, grow: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The diffusion stage over each query's pool: ``(pool, known distances, weights)``.

    Seeds are the best ``seeds`` items of each query in ``apply`` (others get weight 0); the weights are
    :func:`~ruvector_hnsw.search.diffusion.log_weight` of ``f / max f`` at affinity exponent
    ``gamma`` (see :mod:`ruvector_hnsw.search.diffusion`). With ``grow`` the diffusion's nodes join
    the pool; without, the pool is kept as it is (re-ranking only).
    """
    nbr, nsim, sigma = db.diffusion_links()
    order = np.argsort(-scores, axis=1, kind="stable")[:, : min(int(seeds), pool.shape[1])]
    rows = np.take_along_axis(pool, order, axis=1).copy()
    rows[~apply] = -1
    sd = np.take_along_axis(dist, order, axis=1).astype(np.float64)
    sim = np.where(rows >= 0, diffusion.link_similarity(np.where(rows >= 0, sd, 0.0), db.space, sigma), 0.0)
    ids, f = diffusion.diffuse(rows, sim, nbr, nsim, gamma)
    if grow:
        pool, dist = _kernels.unique_rows(np.concatenate([ids, pool], axis=1), np.concatenate(
            [np.full(ids.shape, np.nan, np.float32), dist], axis=1), db.graph.deleted)
    return pool, dist, values_at(ids, diffusion.log_weight(f), pool, db.n)


@dataclass(frozen=True)
class Demotion:
    """The known-label demotion of the queries served without the label term.

    An item whose known class the label head finds unlikely for the query falls behind the
    unlabelled items: ``scores - weight * width(q) * (1 - P(class(v) | q))`` on the labelled items
    of the chosen queries (unlabelled items and the other queries unchanged). A query of a class
    the labels never covered spreads ``P`` over the known classes and demotes every labelled item;
    a known-class query keeps the items of its probable class. ``width`` is each query's score
    spread before the open path's stages.
    """

    row_class: np.ndarray | None  #: (N,) class of every row (``proba``'s last column: unknown); None: off
    proba: np.ndarray             #: (B, n_known + 1) ``P(class | q)``, 0 in the unknown column
    step: np.ndarray              #: (B, 1) float32 ``weight * width`` (0 on the queries it does not apply to)

    @classmethod
    def of(cls, model: SearchModel, db: DatabaseState, view: LabelView | None, width: np.ndarray,
           rows: np.ndarray, weight: float | None = None) -> Demotion:
        """``model``'s demotion (``weight`` overrides ``model.demote_known``) of the queries ``rows``.

        ``view`` is what ``model``'s label head says of the queries (None: no demotion).
        """
        w = model.demote_known if weight is None else weight
        step = np.where(rows, np.float32(w) * width, 0.0).astype(np.float32)[:, None]
        if not w or view is None or model.labels is None:
            return cls(row_class=None, proba=np.zeros((step.shape[0], 1), np.float32), step=step)
        proba = np.concatenate([np.exp(view.logp), np.zeros((step.shape[0], 1))], axis=1).astype(np.float32)
        return cls(row_class=db.row_class(model.labels), proba=proba, step=step)

    def penalty(self, pool: np.ndarray) -> np.ndarray:
        """(B, P) float32: what each pool item loses (0 on padding and unlabelled items)."""
        if self.row_class is None:
            return np.zeros(pool.shape, dtype=np.float32)
        unknown = self.proba.shape[1] - 1
        cls = np.where(pool >= 0, self.row_class[np.maximum(pool, 0)], unknown)
        p = np.take_along_axis(self.proba, cls, axis=1)
        return np.where(cls < unknown, self.step * (1.0 - p), 0.0).astype(np.float32)

    def __call__(self, pool: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """``scores`` of the pool items with the demotion."""
        if self.row_class is None:
            return scores.astype(np.float32, copy=False)
        return (scores - self.penalty(pool)).astype(np.float32)


def combine_scores(pool: np.ndarray, dist: np.ndarray, sim: np.ndarray, alpha: float | np.ndarray,
                   lam: float | np.ndarray, label: np.ndarray | None, s0: float, beta: float = 1.0) -> np.ndarray:
    """``beta * (-dist / s0) + alpha * sim + lam * label`` over a pool (-inf on padding).

    ``alpha`` and ``lam`` are scalars or per query (B,); ``label`` None means no label term.
    """
    ok = pool >= 0
    a = np.asarray(alpha, dtype=np.float32).reshape(-1, 1)
    scores = np.float32(beta) * (-np.where(ok, dist, 0.0) / np.float32(s0)) + a * np.where(ok, sim, 0.0)
    if label is not None:
        scores = scores + np.asarray(lam, dtype=np.float32).reshape(-1, 1) * label
    return np.where(ok, scores, -np.inf).astype(np.float32)


def expand_and_score(model: SearchModel, db: DatabaseState, qb: QueryBatch, k: int, knobs: Knobs,
                     scorer: ResidualScorer, num_threads: int, lam: float | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The re-scored pool of each query: ``(pool rows, scores, distances)``, unsorted.

    With the label term on (``lam > 0``), each query the label term applies to (label evidence at
    least ``model.gate``) gets the members of its most probable class nearest to it in its pool,
    ``scorer.alpha`` and ``lam * e(q) * log P(same class | q, v)`` added to every item
    (:mod:`ruvector_hnsw.search.labels`); the other queries are scored with ``model.alpha_open``
    and no label term; the items whose known class the label head finds unlikely for such a query
    fall behind the unlabelled ones (``model.demote_known``, :class:`Demotion`, kept through the
    later stages). With ``model.mu > 0`` the queries without the label term get the diffusion
    stage on top (:mod:`ruvector_hnsw.search.diffusion`, ``model.diffusion_gamma`` and
    ``model.diffusion_seeds``); its nodes join the pool unless ``knobs.expand == 0``. Then the
    scores of those queries are smoothed over the graph (DBA and the score-space query expansion of
    :mod:`ruvector_hnsw.search.smoothing`: ``model.dba_weight``, ``model.qe_weight``, ``model.qe_top``).
    """
    assert db.codes is not None
    lam = model.lam if lam is None else lam
    demoting = bool(model.demote_known) and model.labels is not None
    view = label_view(model, db, qb) if (lam or demoting) else None
    B = qb.stored.shape[0]
    if not lam or view is None or model.labels is None:
        pool, scores, dist, zq = metric_pool(model, db, qb, k, knobs, scorer, num_threads)
        on = np.zeros(B, dtype=bool)
        alpha_q = np.full(B, scorer.alpha, dtype=np.float32)
    else:
        on = view.applies(model.gate)
        alpha_q = np.where(on, scorer.alpha, model.alpha_open).astype(np.float32)
        reach = replace(scorer, alpha=float(alpha_q.max()))  # codes and latent expansion if any query uses them
        pool, _, dist, zq = metric_pool(model, db, qb, k, knobs, reach, num_threads)
        pool, known = with_class_members(model, db, qb, pool, dist, view, max(k, model.config.class_pool), on)
        sim, dist = replace(scorer, alpha=1.0, beta=0.0).score(qb.stored, db.graph.vectors, zq, db.codes.store, pool,
                                                               known)
        scores = combine_scores(pool, dist, sim, alpha_q, np.where(on, lam, 0.0), label_term(model, db, pool, view),
                                scorer.s0, scorer.beta)
    if on.all():
        return pool, scores, dist
    width = spread(scores)
    demotion = Demotion.of(model, db, view, width, ~on)
    scores = demotion(pool, scores)
    if model.mu:
        pool, known, fv = diffusion_pool(db, pool, scores, dist, ~on, model.diffusion_gamma,
                                         model.diffusion_seeds, knobs.expand > 0)
        sim, dist = replace(scorer, alpha=1.0, beta=0.0).score(qb.stored, db.graph.vectors, zq, db.codes.store,
                                                               pool, known)
        label = label_term(model, db, pool, view) if (view is not None and lam) else None
        scores = combine_scores(pool, dist, sim, alpha_q, np.where(on, lam, 0.0), label, scorer.s0, scorer.beta)
        scores = demotion(pool, scores + np.float32(model.mu) * width[:, None].astype(np.float32) * fv)
    if model.dba_weight or model.qe_weight:
        scores = smoothed(model, db, qb, pool, dist, scores, ~on, replace(scorer, alpha=float(alpha_q[~on][0])))
    return pool, scores, dist


def smoothed(model: SearchModel, db: DatabaseState, qb: QueryBatch, pool: np.ndarray, dist: np.ndarray,
             scores: np.ndarray, rows: np.ndarray, scorer: ResidualScorer) -> np.ndarray:
    """``scores`` with the model's score smoothing on the queries ``rows`` (bool, (B,)) scored by ``scorer``."""
    assert db.codes is not None
    sel = np.flatnonzero(rows)
    out = scores.copy()
    out[sel] = smoothing.smooth_scores(
        scorer, qb.stored[sel], db.graph.vectors,
        db.augmented_vectors() if model.dba_weight else None, db.codes.store, pool[sel], dist[sel], scores[sel],
        model.dba_weight, model.qe_weight, model.qe_top)
    return out


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
