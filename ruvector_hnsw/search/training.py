"""Contrastive training of a search model (the body of ``AttentionSearch.fit``).

Every training query gets a pool of items: its HNSW top-C candidates, a few random relevant items
(so the model learns to reach relevant items HNSW missed), as many uniformly random items (so "far
from the query" does not predict "relevant"), and hard negatives from the current codes (re-mined
every epoch). The latent similarity of the pool is trained with the multi-positive InfoNCE loss;
gradients flow through the unit-norm codes, the projections and the attention mechanism on both
sides (query and database row), from the caches of one forward each (attention protocol v2).

The trainer owns its state (:class:`TrainingState`: the standardised training queries, their HNSW
candidates, the mined negatives, the validation split); the searcher's model and database state
are passed in explicitly.

Calibration is cheap: the validation queries' pools, distances and latent similarities are
computed once per calibration, and every ``alpha`` of the grid only re-sorts them (the pool of
one expansion round does not depend on ``alpha``); ``alpha = 0`` is the index's own ranking, so a
calibrated model is never below the index on the validation queries. The diffusion weight ``rho``
is calibrated jointly once, after training. The loop is :class:`ruvector_hnsw.training.Trainer`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ruvector_hnsw.attention import Context
from ruvector_hnsw.errors import ConfigError
from ruvector_hnsw.index import HNSWIndex
from ruvector_hnsw.ranking import map_at_r
from ruvector_hnsw.search import _kernels, diffusion, pipeline, smoothing
from ruvector_hnsw.search.codes import LatentCodes
from ruvector_hnsw.search.context import query_context
from ruvector_hnsw.search.encoder import ContextEncoder
from ruvector_hnsw.search.labels import LabelHead, LabelSpace
from ruvector_hnsw.search.model import SearchModel
from ruvector_hnsw.search.objectives import (
    CodeTerm,
    LocalContrastiveTerm,
    make_fit_optimizer,
    make_miner,
    make_regularizer,
    pool_objective,
)
from ruvector_hnsw.search.pipeline import Knobs, QueryBatch
from ruvector_hnsw.search.scoring import ResidualScorer, append_tail, rank
from ruvector_hnsw.search.state import DatabaseState
from ruvector_hnsw.training.miners import Miner
from ruvector_hnsw.training.schedules import Curriculum, WarmupCosineSchedule
from ruvector_hnsw.training.trainer import Batch, EpochState, Trainer, TrainingHistory

__all__ = [
    "ALPHA_GRID",
    "AUTO_HIDDEN",
    "LABEL_WEIGHT_DECAY",
    "RHO_GRID",
    "FitOptions",
    "PhaseClock",
    "RelevantRows",
    "SearchTrainingModel",
    "TrainingState",
    "ap_at_r_of_rows",
    "calibrate",
    "calibrate_demotion",
    "calibrate_diffusion",
    "calibrate_gate",
    "calibrate_smoothing",
    "choose_gate",
    "choose_head_width",
    "contrastive_loss",
    "fit",
    "held_out_classes",
    "map_at_r_of_rows",
    "rows_in_lists",
]

#: candidate weights of the latent term; 0 keeps the index's ranking
ALPHA_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 512.0, 2048.0)
#: candidate weights of the diffusion coordinates relative to the learned codes; 0 = codes only
RHO_GRID = (0.0, 0.25, 1.0, 4.0, 16.0)
_VAL_CAP = 1000
#: candidate weights of the label term ``log p(class(v) | q)``; 0 = off
LAM_GRID = (0.0, 0.25, 1.0, 4.0, 16.0, 1000.0)
#: a non-zero alpha must beat alpha = 0 by this many standard errors of the per-query AP gain
SIGNIFICANCE = 2.0
#: share of the training queries' classes held out of the encoder's training and of the gate's second
#: label head: their queries calibrate ``alpha_open`` and the gate (the label head proper learns them)
GATE_HOLDOUT = 0.2
#: fewer classes with training queries than this: nothing is held out
HOLDOUT_MIN_CLASSES = 5
#: at most this many queries of the held-out classes calibrate ``alpha_open`` and the gate
GATE_QUERIES = 300
#: weights of the diffusion stage tried (times the query's score spread; 0 keeps it off)
MU_GRID = (0.0, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
#: affinity exponents of the diffusion stage tried with every ``mu`` (sharper kernels follow thin classes)
GAMMA_GRID = (5.0, 10.0, 20.0, 30.0)
#: seeds of the diffusion stage tried (more seeds reach further along a class)
SEEDS_GRID = (100, 200, 400)
#: score smoothing tried on the same queries: DBA weights, query-expansion weights and sizes (0: off)
DBA_GRID = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
QE_GRID = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0)
QE_TOP_GRID = (5, 10, 20)
#: weights of the known-label demotion tried (times the query's score spread; 0 keeps it off, the largest
#: puts every unlabelled item of the pool ahead of the labelled ones of unlikely classes)
DEMOTE_GRID = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 1000.0)
#: mean AP@R of the held-out classes a gate may give up for the known classes (0: none; apt_minilm's
#: unseen classes lost 0.025 mAP@100 to a gate that gave up 0.005 on the held-out ones)
GATE_TOLERANCE = 0.0
#: the label head's L2 weight by default: (without a hidden layer, with one); measured on apt_minilm and
#: digits (seen classes): a hidden layer overfits at the linear head's 1e-4 (apt_minilm 0.744 head accuracy
#: at width 512 against 0.778 at 3e-3)
LABEL_WEIGHT_DECAY = (1e-4, 3e-3)
#: the hidden width ``fit`` tries beside the linear head when ``label_hidden`` is None
AUTO_HIDDEN = 256
#: gates tried (label evidence ``e(q)`` needed for the label term). None above 1: a query whose
#: neighbourhood is fully labelled always gets the label term (whether it helps at all is ``lam``'s call)
GATE_GRID = (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


@dataclass(frozen=True)
class FitOptions:
    """The options of :meth:`AttentionSearch.fit` (see there)."""

    epochs: int = 8
    batch_size: int = 128
    lr: float = 1e-2
    temperature: float = 0.1
    extra_positives: int = 16
    random_negatives: int = 48
    latent_negatives: int = 32
    val_fraction: float = 0.1
    patience: int = 2
    weight_decay: float = 1e-4
    fresh_rows: int | None = 1024
    loss: str = "infonce"
    margin: float = 0.2
    local_weight: float = 1.0
    miner: str | Miner = "hard"
    curriculum: Curriculum | None = None
    regularizer: Any = None
    reg_weight: float = 0.1
    optimizer: str = "adam"
    progress: bool = False
    checkpoint_dir: str | os.PathLike[str] | None = None
    resume: bool | str | os.PathLike[str] = False
    #: ``step_runner(trainable, pools, state) -> (loss, grads)`` computes each step's loss and gradients
    #: from the sampled pools instead of :meth:`SearchTrainingModel.pool_loss` (data-parallel training)
    step_runner: Any = None
    #: the label head's L2 weight (None: :data:`LABEL_WEIGHT_DECAY` by the head's width)
    label_weight_decay: float | None = None

    def __post_init__(self) -> None:
        wd = self.label_weight_decay
        if wd is not None and (isinstance(wd, bool) or not isinstance(wd, (int, float, np.integer, np.floating))
                               or not np.isfinite(wd) or wd < 0):
            raise ConfigError(f"label_weight_decay must be a finite number >= 0 or None, got {wd!r}")

    def head_weight_decay(self, hidden: int) -> float:
        """The label head's L2 weight for a head of hidden width ``hidden`` (0: none)."""
        if self.label_weight_decay is not None:
            return float(self.label_weight_decay)
        return LABEL_WEIGHT_DECAY[1 if hidden else 0]


def ap_at_r_of_rows(result_rows: np.ndarray, pos_lists: list[np.ndarray], cap: int | None = None, *,
                    relevant: RelevantRows | None = None) -> np.ndarray:
    """Per-query AP@R of ranked table rows against each query's relevant rows (NaN without relevant rows).

    ``relevant``: a :class:`RelevantRows` of ``pos_lists`` built once for repeated calls.
    """
    idx = np.arange(result_rows.shape[0])
    rel = relevant(result_rows, idx) if relevant is not None else rows_in_lists(result_rows, pos_lists, idx)
    n_rel = np.array([len(r) for r in pos_lists])
    return np.asarray(map_at_r(rel, n_rel, cap=cap, per_query=True), dtype=np.float64)


def map_at_r_of_rows(result_rows: np.ndarray, pos_lists: list[np.ndarray], cap: int | None = None) -> float:
    """mAP@R of ranked table rows against each query's relevant rows (R capped at ``cap``)."""
    ap = ap_at_r_of_rows(result_rows, pos_lists, cap)
    ok = np.isfinite(ap)
    return float(ap[ok].mean()) if ok.any() else 0.0


@dataclass
class PhaseClock:
    """Wall seconds spent per named phase (what ``fit`` reports as ``history.time_split``)."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the ``with`` body and add it to ``name``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def rounded(self) -> dict[str, float]:
        """The phases in seconds, rounded to ms, with their ``total``."""
        out = {k: round(v, 3) for k, v in self.seconds.items()}
        out["total"] = round(sum(self.seconds.values()), 3)
        return out


@dataclass
class TrainingState:
    """What the trainer keeps between steps (none of it lives on the searcher)."""

    queries: QueryBatch             #: the training queries (standardised, stored) and their HNSW candidates
    pos_lists: list[np.ndarray]     #: relevant table rows per training query
    mined: np.ndarray               #: (nq, m) latent hard negatives of the current epoch


def _sample_positives(rng: np.random.Generator, pos_lists: list[np.ndarray], idx: np.ndarray, m: int) -> np.ndarray:
    out = np.full((idx.shape[0], m), -1, dtype=np.int64)
    for r, i in enumerate(idx.tolist()):
        rows = pos_lists[i]
        if rows.size and m:
            out[r] = rows[rng.integers(0, rows.size, m)]
    return out


class RelevantRows:
    """``relevant(rows, idx)[r, j]``: is table row ``rows[r, j]`` in ``lists[idx[r]]``; built once, asked often.

    A dense ``(len(lists), n_rows)`` bitmap when it has at most :attr:`DENSE_LIMIT` cells (one
    gather per test), else the sorted ``(query, row)`` keys of every list (one ``searchsorted``).
    """

    #: cells of the dense form (64 MiB of bools)
    DENSE_LIMIT = 1 << 26

    def __init__(self, lists: list[np.ndarray], n_rows: int) -> None:
        arrays = [np.asarray(r, dtype=np.int64) for r in lists]
        self.n_rows = int(max(n_rows, max((int(a.max()) + 1 for a in arrays if a.size), default=0), 1))
        sizes = np.array([a.size for a in arrays], dtype=np.int64)
        q = np.repeat(np.arange(len(arrays), dtype=np.int64), sizes)
        r = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
        self._dense: np.ndarray | None = None
        self._keys = np.zeros(0, dtype=np.int64)
        if len(arrays) * self.n_rows <= self.DENSE_LIMIT:
            self._dense = np.zeros((len(arrays), self.n_rows), dtype=bool)
            self._dense[q, r] = True
        else:
            self._keys = np.sort(q * self.n_rows + r)

    def __call__(self, rows: np.ndarray, idx: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        idx = np.asarray(idx, dtype=np.int64)
        ok = (rows >= 0) & (rows < self.n_rows)
        safe = np.where(ok, rows, 0)
        if self._dense is not None:
            return self._dense[idx[:, None], safe] & ok
        if self._keys.size == 0:
            return np.zeros(rows.shape, dtype=bool)
        probe = idx[:, None] * self.n_rows + safe
        at = np.minimum(np.searchsorted(self._keys, probe), self._keys.size - 1)
        return (self._keys[at] == probe) & ok


def rows_in_lists(rows: np.ndarray, lists: list[np.ndarray], idx: np.ndarray) -> np.ndarray:
    """``out[r, j] = rows[r, j] >= 0 and rows[r, j] in lists[idx[r]]`` for a (B, m) array of table rows.

    A one-off :class:`RelevantRows` over the chosen lists (build one yourself for repeated tests).
    """
    chosen = [lists[i] for i in np.asarray(idx, dtype=np.int64).tolist()]
    return RelevantRows(chosen, 0)(rows, np.arange(len(chosen)))


def _subset(qb: QueryBatch, idx: np.ndarray) -> QueryBatch:
    return QueryBatch(stored=qb.stored[idx], standard=qb.standard[idx], hnsw_rows=qb.hnsw_rows[idx],
                      hnsw_dist=qb.hnsw_dist[idx])


class SearchTrainingModel:
    """Adapter of a search model + database state to the :class:`~ruvector_hnsw.training.Trainer` protocol.

    ``batch["query"]`` holds indices into the training queries.
    """

    def __init__(self, model: SearchModel, db: DatabaseState, state: TrainingState, *, candidates: int,
                 temperature: float, extra_positives: int, random_negatives: int, latent_negatives: int,
                 unknown: np.ndarray | None = None, fresh_rows: int | None = None, objective: str = "infonce",
                 margin: float = 0.2, code_terms: Sequence[CodeTerm] = (), miner: Miner | None = None,
                 step_runner: Any = None) -> None:
        self.model, self.db, self.state = model, db, state
        #: the pool loss, its triplet margin and the terms on the encoded rows' codes
        self.objective, self.margin, self.code_terms = objective, float(margin), tuple(code_terms)
        #: re-mines the hard negatives of every epoch from the current codes (None: no mining)
        self.miner = miner
        #: optional ``step_runner(self, pools, state) -> (loss, grads[, parts])`` replacing :meth:`pool_loss`
        self.step_runner = step_runner
        #: which table rows are relevant to which training query (built once)
        self.relevant = RelevantRows(state.pos_lists, db.n)
        #: distinct pool rows per step encoded with the current parameters (None: all)
        self.fresh_rows = fresh_rows
        self.clock = PhaseClock()
        #: (N,) rows whose label is unknown: never a positive, never a negative
        self.unknown = unknown if unknown is not None and unknown.any() else None
        self.candidates = candidates
        self.temperature = temperature
        self.extra_positives = extra_positives
        self.random_negatives = random_negatives
        self.latent_negatives = latent_negatives
        #: the arrays the optimizer updates, shared with the encoder
        self.params: dict[str, np.ndarray] = model.encoder.params

    # -- trainer hooks ------------------------------------------------------------------------
    def on_epoch_start(self, state: EpochState) -> None:
        m = self.latent_negatives if state.num_negatives is None else int(state.num_negatives)
        if m and self.miner is not None and self.db.codes is not None:
            with self.clock.phase("mining"):
                qb, ts = self.state.queries, self.state
                zq = pipeline.encode_queries(self.model, self.db, qb, qb.hnsw_rows[:, : self.candidates],
                                             qb.hnsw_dist[:, : self.candidates])
                cand = self.db.codes.search(zq, 4 * m)
                z = self.db.codes.z_values()
                scores = np.empty(cand.shape, dtype=np.float32)
                for lo in range(0, cand.shape[0], 1024):  # bounded (B, 4m, p) gathers
                    c = cand[lo: lo + 1024]
                    scores[lo: lo + 1024] = np.where(
                        c >= 0, np.einsum("bp,bcp->bc", zq[lo: lo + 1024], z[np.maximum(c, 0)]), -np.inf)
                positive = self.relevant(cand, np.arange(cand.shape[0]))
                mined = self.miner(cand, positive_mask=positive, scores=scores, num_negatives=m)
                ts.mined = mined.ids
        elif not m:
            self.state.mined = np.full((self.state.mined.shape[0], 0), -1, dtype=np.int64)

    def get_extra_state(self) -> dict[str, Any]:
        """The miner's state (checkpointed by the trainer, so a resumed run mines the same negatives)."""
        return {"miner": self.miner.state_dict()} if self.miner is not None else {}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if self.miner is not None and "miner" in state:
            self.miner.load_state_dict(state["miner"])

    def on_epoch_end(self, state: EpochState) -> None:
        with self.clock.phase("code_refresh"):
            self.db.refresh_codes(self.model, kind="flat", dtype="float32")

    def on_params_loaded(self) -> None:
        with self.clock.phase("code_refresh"):
            self.db.refresh_codes(self.model, kind="flat", dtype="float32")

    # -- one step -----------------------------------------------------------------------------
    def loss_and_grads(self, batch: Batch, state: EpochState
                       ) -> tuple[float, dict[str, np.ndarray], dict[str, float]]:
        """Loss, gradients and the loss's parts (``"infonce"`` and the mechanisms' aux losses)."""
        with self.clock.phase("sampling"):
            pools = self._sample(batch, state)
        if pools is None:
            return 0.0, self.model.encoder.zero_grads(), {}
        if self.step_runner is not None:
            return tuple(self.step_runner(self, pools, state))
        return self._loss(pools, state)

    def pool_loss(self, pools: tuple[Any, ...], state: EpochState
                  ) -> tuple[float, dict[str, np.ndarray], dict[str, float]]:
        """Loss, gradients and loss parts of sampled ``pools`` (what a step runner's workers compute)."""
        return self._loss(pools, state)

    def _extra(self, state: EpochState, side: int) -> dict[str, Any]:
        """``Context.extra`` of a training forward: the step (annealing schedules) and a sample seed.

        The seed (info_bottleneck's reparameterised sample) comes from ``(model seed, step, side)``,
        not from ``state.rng``, so mechanisms that do not sample leave the random stream unchanged.
        """
        seq = np.random.SeedSequence([int(self.model.config.seed), int(state.step), side])
        return {"step": int(state.step), "sample_seed": int(seq.generate_state(1, np.uint32)[0])}

    def _sample(self, batch: Batch, state: EpochState) -> tuple[Any, ...] | None:
        """The pool of each query of the batch, its positives and the query contexts (None: no positive)."""
        db, ts = self.db, self.state
        b = np.asarray(batch["query"], dtype=np.int64)
        rng = state.rng
        qb = _subset(ts.queries, b)
        n = db.n
        parts = [qb.hnsw_rows[:, : self.candidates], _sample_positives(rng, ts.pos_lists, b, self.extra_positives),
                 rng.integers(0, n, (b.shape[0], self.random_negatives)).astype(np.int64)]
        if ts.mined.shape[1]:
            parts.append(ts.mined[b])
        merged = np.concatenate(parts, axis=1)
        invalid = db.graph.deleted if self.unknown is None else (db.graph.deleted | self.unknown)
        pool, _ = _kernels.unique_rows(merged, np.zeros(merged.shape, np.float32), invalid)
        posmask = self.relevant(pool, b)
        if not posmask.any():
            return None
        ids_q, mask_q, ctx_q = query_context(qb.stored, db.graph.vectors, qb.hnsw_rows[:, : self.candidates],
                                             qb.hnsw_dist[:, : self.candidates], db.contexts, db.space)
        if db.table_state is not None:
            ctx_q.table_state = db.table_state
        ctx_q.extra = {**ctx_q.extra, **self._extra(state, 0)}
        return qb, (ids_q, mask_q, ctx_q), pool, posmask

    def _loss(self, pools: tuple[Any, ...], state: EpochState
              ) -> tuple[float, dict[str, np.ndarray], dict[str, float]]:
        enc, db = self.model.encoder, self.db
        qb, query_ctx, pool, posmask = pools
        table = db.table.view
        row_extra = self._extra(state, 1)

        def row_context(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, Context]:
            ids_v, mask_v, ctx_v = db.contexts.of_rows(rows)
            if db.table_state is not None:
                ctx_v.table_state = db.table_state
            ctx_v.extra = {**ctx_v.extra, **row_extra}
            return ids_v, mask_v, ctx_v

        temperature = state.temperature if state.temperature is not None else self.temperature
        stale = db.codes.z_values() if (self.fresh_rows is not None and db.codes is not None) else None
        terms: dict[str, float] = {}
        loss, grads = contrastive_loss(enc, table, qb.standard, query_ctx, pool, posmask, row_context, temperature,
                                       stale=stale, fresh_rows=self.fresh_rows, clock=self.clock, rng=state.rng,
                                       terms=terms, objective=self.objective, margin=self.margin,
                                       code_terms=self.code_terms)
        return loss, grads, terms


def _sum_by_row(values: np.ndarray, rows: np.ndarray, n: int, dtype: np.dtype) -> np.ndarray:
    """``out[r] = sum of values[i] with rows[i] == r`` (summed in occurrence order, like ``np.add.at``)."""
    out = np.zeros((n, values.shape[1]), dtype=dtype)
    if rows.size == 0:
        return out
    order = np.argsort(rows, kind="stable")
    sr = rows[order]
    starts = np.flatnonzero(np.concatenate([[True], sr[1:] != sr[:-1]]))
    out[sr[starts]] = np.add.reduceat(values[order], starts, axis=0)
    return out


def _importance_rows(g_sim: np.ndarray, pool: np.ndarray, valid: np.ndarray, uniq: np.ndarray, inv: np.ndarray,
                     budget: int) -> np.ndarray:
    """The ``budget`` distinct pool rows with the largest summed ``|dL/dsim|`` (sorted row ids).

    Ties go to the lower row (stable order), so the choice is deterministic.
    """
    weight = np.bincount(inv, weights=np.abs(g_sim[valid]).astype(np.float64), minlength=uniq.shape[0])
    top = np.argsort(-weight, kind="stable")[:budget]
    return np.sort(uniq[top])


def contrastive_loss(enc: ContextEncoder, table: np.ndarray, queries: np.ndarray,
                     query_ctx: tuple[np.ndarray, np.ndarray, Context], pool: np.ndarray, posmask: np.ndarray,
                     row_context: Any, temperature: float, *, stale: np.ndarray | None = None,
                     fresh_rows: int | None = None, clock: PhaseClock | None = None,
                     rng: np.random.Generator | None = None, terms: dict[str, float] | None = None,
                     objective: str = "infonce", margin: float = 0.2, code_terms: Sequence[CodeTerm] = ()
                     ) -> tuple[float, dict[str, np.ndarray]]:
    """The pool loss (multi-positive InfoNCE by default) over each query's table rows, and its gradients.

    Parameters
    ----------
    enc : ContextEncoder
    table : (N, d)
        Standardised table (attention keys/values).
    queries : (B, d)
        Standardised queries; their ``(ids, mask, Context)`` (``query_ctx``).
    pool : (B, P)
        Table rows per query (-1 = empty slot); ``posmask`` (B, P) marks the positives.
    row_context : callable
        ``row_context(rows) -> (ids, mask, Context)``: the graph contexts of sorted table rows.
    temperature : float
    stale, fresh_rows : (N, p) array and int, optional
        With both given and more than ``fresh_rows`` distinct rows in the pool, only the
        ``fresh_rows`` rows with the largest gradient ``|dL/dsim|`` under the ``stale`` codes
        (the codes of the last refresh) are encoded with the current parameters and
        back-propagated; the other rows score with their stale codes, as constants. Without
        them every distinct row is encoded (the exact gradient).
    clock : PhaseClock, optional
        Receives the ``forward`` and ``backward`` seconds.
    rng : numpy.random.Generator, optional
        Draws the encoder's dropout masks (only when its ``dropout > 0``) and whatever the
        ``code_terms`` sample (the local term's negatives); nothing is drawn otherwise.
    objective, margin : str, float
        The pool loss (:func:`~ruvector_hnsw.search.objectives.pool_objective`: ``"infonce"``,
        ``"triplet"`` with ``margin``, ``"local_contrastive"``).
    code_terms : sequence of CodeTerm
        Terms on the codes of the encoded rows (the graph-local contrastive term, the link
        Laplacian), added to the loss under their ``name``; their neighbours are the rows'
        layer-0 context columns from ``row_context``.
    terms : dict, optional
        Receives the loss's parts: the pool loss under its name, each code term's value, and per
        auxiliary loss of the mechanisms
        (moe's ``load_balance``, info_bottleneck's ``kl``) its value summed over the query and
        row sides and ``"<name>.weight"``, the weight it enters the loss with.

    Returns
    -------
    loss : float
        InfoNCE plus every auxiliary loss of the two encoder forwards times its weight (the
        objective whose gradient ``grads`` is: the mechanisms' backward includes the aux terms).
    grads : dict
        One entry per encoder param (one forward and one backward per side, from the caches).
    """
    clock = clock if clock is not None else PhaseClock()
    t0 = time.perf_counter()
    ids_q, mask_q, ctx_q = query_ctx
    valid = pool >= 0
    dt = enc.dtype
    enc_q = enc.encode(queries, table, ids_q, mask_q, ctx_q, rng=rng)
    uniq = np.unique(pool[valid])
    inv = np.searchsorted(uniq, pool[valid])
    zv = np.zeros((*pool.shape, enc.latent_dim), dtype=enc_q.zhat.dtype)
    fresh = uniq
    if stale is not None and fresh_rows is not None and uniq.shape[0] > fresh_rows:
        zv[valid] = stale[pool[valid]]
        sim0 = np.where(valid, np.einsum("bp,bcp->bc", enc_q.zhat, zv), 0.0)
        _, g0 = pool_objective(objective, sim0, posmask, valid, temperature=temperature, margin=margin)
        fresh = _importance_rows(np.asarray(g0), pool, valid, uniq, inv, int(fresh_rows))
    ids_v, mask_v, ctx_v = row_context(fresh)
    enc_v = enc.encode(table[fresh], table, ids_v, mask_v, ctx_v, rng=rng)
    at = np.minimum(np.searchsorted(fresh, pool[valid]), fresh.shape[0] - 1)
    is_fresh = fresh[at] == pool[valid]
    vz = zv[valid]
    vz[is_fresh] = enc_v.zhat[at[is_fresh]]
    zv[valid] = vz
    sim = np.where(valid, np.einsum("bp,bcp->bc", enc_q.zhat, zv), 0.0)
    loss, g_sim = pool_objective(objective, sim, posmask, valid, temperature=temperature, margin=margin)
    g_sim = np.asarray(g_sim, dtype=dt)
    gzq = np.einsum("bc,bcp->bp", g_sim, zv)
    gzv = (g_sim[:, :, None] * enc_q.zhat[:, None, :])[valid][is_fresh]
    gzv_rows = _sum_by_row(gzv, at[is_fresh], fresh.shape[0], dt)
    parts: dict[str, float] = {"infonce" if objective == "local_contrastive" else objective: float(loss)}
    total = float(loss)
    if code_terms:
        linked = mask_v & (np.asarray(ctx_v.layer) == 0) if ctx_v.layer is not None else mask_v
        for term in code_terms:
            value, g_codes = term(enc_v.zhat, fresh, ids_v, linked, rng)
            total += float(value)
            parts[term.name] = float(value)
            gzv_rows += np.asarray(g_codes, dtype=dt)
    grads = enc.zero_grads()
    clock.seconds["forward"] = clock.seconds.get("forward", 0.0) + time.perf_counter() - t0
    with clock.phase("backward"):
        enc.backward(enc_v, gzv_rows, grads)
        enc.backward(enc_q, gzq.astype(dt), grads)
    for side in (enc_q, enc_v):
        for name, (value, weight) in enc.aux_terms(side).items():
            total += weight * value
            parts[name] = parts.get(name, 0.0) + value
            parts[f"{name}.weight"] = weight
    if terms is not None:
        terms.update(parts)
    return total, grads


# ---------------------------------------------------------------------- calibration
@dataclass(frozen=True)
class _ValPools:
    pool: np.ndarray
    dist: np.ndarray
    sim: np.ndarray
    label: np.ndarray  # e(q) * log P(same class | q, v), 0 without a label head
    view: pipeline.LabelView | None  # what the label head said of the queries (None: no head)

    def label_on(self, gate: float) -> np.ndarray:
        """(B,) bool: the queries the label term applies to at ``gate`` (none without a head)."""
        if self.view is None:
            return np.zeros(self.pool.shape[0], dtype=bool)
        return self.view.applies(gate)


def _val_pools(model: SearchModel, db: DatabaseState, qb: QueryBatch, k: int, knobs: Knobs, num_threads: int,
               *, latent: bool) -> _ValPools:
    """Pools with their index distances, latent similarities and label terms (weight-free).

    ``latent``: the pool of one expansion round (what ``alpha > 0`` serves), else the HNSW
    candidates only (what ``alpha = 0`` serves); class members join when there is a label head.
    """
    s0 = db.contexts.s0
    probe = ResidualScorer(alpha=1.0 if latent else 0.0, beta=0.0, s0=s0, space=db.space)
    pool, sim, dist, zq = pipeline.metric_pool(model, db, qb, k, replace(knobs, expand=min(knobs.expand, 1)), probe,
                                               num_threads)
    label = np.zeros(pool.shape, dtype=np.float32)
    view = pipeline.label_view(model, db, qb)
    if view is not None and model.labels is not None and db.codes is not None:
        pool, known = pipeline.with_class_members(model, db, qb, pool, dist, view, max(k, model.config.class_pool),
                                                  view.applies(0.0))
        sim, dist = probe.score(qb.stored, db.graph.vectors, zq, db.codes.store, pool, known)
        label = pipeline.label_term(model, db, pool, view)
    else:
        view = None
    if not latent:
        sim = np.zeros(pool.shape, dtype=np.float32)
    return _ValPools(pool=pool, dist=dist, sim=sim, label=label, view=view)


def _ranking(qb: QueryBatch, pools: _ValPools, alpha: float | np.ndarray, lam: float | np.ndarray, s0: float,
             k: int) -> np.ndarray:
    """The top ``k`` rows of every query; ``alpha`` and ``lam`` scalars or per query (B,)."""
    if np.ndim(alpha) == 0 and np.ndim(lam) == 0 and alpha == 0.0 and lam == 0.0:
        return qb.hnsw_rows[:, :k]
    return _top_rows(qb, pools.pool, pipeline.combine_scores(pools.pool, pools.dist, pools.sim, alpha, lam,
                                                             pools.label, s0), k)


def _top_rows(qb: QueryBatch, pool: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` best rows of each query: the pool by score, then the HNSW tail."""
    pool, scores = rank(pool, scores)
    pool, _ = append_tail(qb.hnsw_rows, pool, scores, k)
    return pool[:, :k]


def _list_k(lengths: Iterable[int], n: int) -> int:
    """Ranking length of a calibration group: its largest relevant list, at most :data:`_VAL_CAP` and ``n`` (>= 1)."""
    return max(1, int(min(max(lengths, default=1), _VAL_CAP, n)))


def _significant_gain(ap: np.ndarray, base: np.ndarray, ok: np.ndarray, best: float) -> float | None:
    """Mean AP of ``ap`` if it beats ``best``, and ``base`` by more than SIGNIFICANCE paired standard errors."""
    diff = (ap - base)[ok]
    if diff.size < 2:
        return None
    value = float(ap[ok].mean())
    se = float(diff.std(ddof=1) / np.sqrt(diff.size))
    return value if value > best + 1e-9 and diff.mean() > SIGNIFICANCE * se else None


class _Incumbent:
    """The best setting of a calibration grid so far, tried simplest first.

    It starts as ``setting`` with the per-query AP ``ap0`` of the ranking without the stage; an
    offered setting replaces it only when :func:`_significant_gain` over the incumbent's APs holds.
    """

    def __init__(self, ap0: np.ndarray, setting: tuple[Any, ...]) -> None:
        self.ok = np.isfinite(ap0)
        self.ap = ap0
        self.value = float(ap0[self.ok].mean()) if self.ok.any() else 0.0
        self.setting = setting

    def offer(self, ap: np.ndarray, setting: tuple[Any, ...]) -> None:
        value = _significant_gain(ap, self.ap, self.ok, self.value)
        if value is not None:
            self.ap, self.value, self.setting = ap, value, setting


def calibrate(model: SearchModel, db: DatabaseState, qb: QueryBatch, pos_lists: list[np.ndarray], knobs: Knobs,
              num_threads: int, *, set_alpha: bool = True, use_labels: bool = True) -> tuple[float, float]:
    """Pick ``alpha`` (``beta = 1``) and the label weight by validation mAP@R; return ``(value, alpha)``.

    ``alpha`` comes from :data:`ALPHA_GRID`, the label weight from :data:`LAM_GRID` (only 0 without a
    label head). A non-zero pair is taken only when it beats the index's own ranking (both 0) by
    more than :data:`SIGNIFICANCE` standard errors of the paired per-query AP differences, so a
    model that learned nothing (random labels, unseen classes it cannot help) falls back to the
    index's ranking instead of fitting the validation noise. ``use_labels=False`` calibrates
    ``alpha`` alone (the label weight 0), as served to queries the label term does not apply to.
    """
    k = _list_k((len(r) for r in pos_lists), db.n)
    s0 = db.contexts.s0
    lams = LAM_GRID if model.label_head is not None and use_labels else (0.0,)
    pools = {True: _val_pools(model, db, qb, k, knobs, num_threads, latent=True)}
    if len(lams) > 1:
        pools[False] = _val_pools(model, db, qb, k, knobs, num_threads, latent=False)
    relevant = RelevantRows(pos_lists, db.n)
    base = ap_at_r_of_rows(qb.hnsw_rows[:, :k], pos_lists, cap=_VAL_CAP, relevant=relevant)
    ok = np.isfinite(base)
    best = (float(base[ok].mean()) if ok.any() else 0.0, 0.0, 0.0)
    for lam in lams:
        for a in ALPHA_GRID:
            if a == 0.0 and lam == 0.0:
                continue
            pp = pools[a != 0.0]
            ap = ap_at_r_of_rows(_ranking(qb, pp, a, lam, s0, k), pos_lists, cap=_VAL_CAP, relevant=relevant)
            value = _significant_gain(ap, base, ok, best[0])
            if value is not None:
                best = (value, a, lam)
    if set_alpha:
        model.alpha, model.beta, model.lam = best[1], 1.0, best[2]
    return float(best[0]), float(best[1])


def train_label_head(model: SearchModel, db: DatabaseState, queries: QueryBatch, query_labels: np.ndarray,
                     row_labels: np.ndarray, known: np.ndarray, weight_decay: float = LABEL_WEIGHT_DECAY[0],
                     hidden: int = 0) -> tuple[LabelSpace, LabelHead] | None:
    """A label head trained on the queries with a known class and the labelled database rows (None: < 2 classes).

    ``hidden`` is its hidden width (0: none), ``weight_decay`` its L2 weight on ``W`` (and ``W1``).
    """
    space = LabelSpace.of(row_labels, known)
    if space.n_known < 2:
        return None
    query_class = space.classes_of(np.asarray(query_labels))
    query_class = np.where(query_class == space.unknown, -1, query_class)  # unknown: not a target
    q_u, q_cls, q_dist, q_mask = pipeline.head_inputs(db, space.row_class, queries)
    keep = query_class >= 0
    v_cls, v_dist, v_mask = db.label_context(space.row_class)
    alive = ~db.graph.deleted & (space.row_class < space.n_known)  # unknown labels: context only, no target
    u = np.concatenate([q_u[keep], db.table.view[alive]])
    cls = np.concatenate([q_cls[keep], v_cls[alive]])
    dist = np.concatenate([q_dist[keep], v_dist[alive]]).astype(np.float64)
    mask = np.concatenate([q_mask[keep], v_mask[alive]])
    target = np.concatenate([query_class[keep], space.row_class[alive]])
    head = LabelHead(model.config.dim, space.n_known, hidden=hidden, seed=model.config.seed)
    head.train(u, cls, dist, mask, target, seed=model.config.seed, weight_decay=weight_decay)
    return space, head


def head_log_loss(db: DatabaseState, labels: tuple[LabelSpace, LabelHead], queries: QueryBatch,
                  query_labels: np.ndarray) -> np.ndarray:
    """Per-query ``-log p(class | q)`` of the queries whose class the head knows (the others left out)."""
    space, head = labels
    cls = space.classes_of(np.asarray(query_labels))
    ok = cls != space.unknown
    logp = head.log_proba(*(x[ok] for x in pipeline.head_inputs(db, space.row_class, queries)))
    return -logp[np.arange(logp.shape[0]), cls[ok]]


def choose_head_width(linear: np.ndarray, wide: np.ndarray) -> bool:
    """True: the hidden-layer head, whose per-query log-loss ``wide`` beats the linear head's ``linear`` by
    more than :data:`SIGNIFICANCE` standard errors of the paired differences (the linear head otherwise)."""
    diff = np.asarray(linear, dtype=np.float64) - np.asarray(wide, dtype=np.float64)
    if diff.size < 2:
        return False
    return bool(diff.mean() > SIGNIFICANCE * diff.std(ddof=1) / np.sqrt(diff.size))


def fit_label_head(model: SearchModel, db: DatabaseState, queries: QueryBatch, query_labels: np.ndarray,
                   row_labels: np.ndarray, known: np.ndarray, opts: FitOptions,
                   val: tuple[QueryBatch, np.ndarray] | None) -> int:
    """Train the label head on the training queries (with a known class) and the database rows; return its width.

    With ``model.config.label_hidden`` None, a linear head and an :data:`AUTO_HIDDEN`-wide one are
    both trained and the validation queries ``val`` (vectors, labels) choose
    (:func:`choose_head_width` on their log-loss); without them, the linear head is kept.
    """
    width = model.config.label_hidden
    args = (model, db, queries, query_labels, row_labels, known)
    got = train_label_head(*args, opts.head_weight_decay(width or 0), width or 0)
    if width is None and got is not None and val is not None:
        wide = train_label_head(*args, opts.head_weight_decay(AUTO_HIDDEN), AUTO_HIDDEN)
        assert wide is not None
        if choose_head_width(head_log_loss(db, got, *val), head_log_loss(db, wide, *val)):
            got = wide
    model.labels, model.label_head = (None, None) if got is None else got
    return 0 if got is None else got[1].hidden


def held_out_classes(classes: tuple[np.ndarray, np.ndarray, np.ndarray], seed: int) -> np.ndarray | None:
    """The classes ``fit`` keeps out of the encoder's training and out of the gate's second head.

    :data:`GATE_HOLDOUT` of the labelled classes that have training queries (seeded), at least
    one; None with fewer than :data:`HOLDOUT_MIN_CLASSES` such classes.
    """
    row_lab, known, query_labels = classes
    qlab = np.asarray(query_labels)
    have = np.unique(qlab[np.isin(qlab, np.unique(row_lab[known]))])
    if have.size < HOLDOUT_MIN_CLASSES:
        return None
    rng = np.random.default_rng([int(seed), 13])
    return np.sort(rng.choice(have, max(1, round(GATE_HOLDOUT * have.size)), replace=False))


@contextmanager
def _label_model(model: SearchModel, labels: tuple[LabelSpace, LabelHead]) -> Iterator[None]:
    """``model`` with the label space and head ``labels`` for the duration (its own restored after)."""
    saved = model.labels, model.label_head
    model.labels, model.label_head = labels
    try:
        yield
    finally:
        model.labels, model.label_head = saved


def calibrate_gate(model: SearchModel, db: DatabaseState, known_group: tuple[QueryBatch, list[np.ndarray]],
                   open_group: tuple[QueryBatch, list[np.ndarray]], held_labels: tuple[LabelSpace, LabelHead],
                   knobs: Knobs, num_threads: int) -> float:
    """The label evidence a query needs for the label term (``model.gate``), calibrated on held-out classes.

    ``held_labels`` is a second label head trained like the first with the held-out classes
    hidden (their items unlabelled). The queries of those classes (``open_group``, which the
    encoder never saw either) stand for classes the labels never covered, the validation queries of
    the other classes (``known_group``) for the known ones. Of the gates of :data:`GATE_GRID` whose
    held-out-class mean AP@R is within :data:`GATE_TOLERANCE` of the best, the one with the best
    known-class mean AP@R is kept (ties: the lowest): unseen classes come first, the known ones
    decide among the gates that serve them equally.
    """
    assert model.labels is not None and model.label_head is not None
    groups = []
    for qb, lists in (known_group, open_group):
        groups.append((qb, lists, _list_k((len(r) for r in lists), db.n)))
    latent = max(model.alpha, model.alpha_open) != 0.0
    with _label_model(model, held_labels):
        pools = [_val_pools(model, db, qb, k, knobs, num_threads, latent=latent) for qb, _, k in groups]
    s0 = db.contexts.s0
    relevant = [RelevantRows(lists, db.n) for _, lists, _ in groups]
    means = []  # (held-out classes, known classes) mean AP@R per gate
    for gate in GATE_GRID:
        vals = []
        for (qb, lists, k), pp, rel in zip(groups, pools, relevant, strict=True):
            on = pp.label_on(gate)
            rows = _ranking(qb, pp, np.where(on, model.alpha, model.alpha_open), np.where(on, model.lam, 0.0), s0, k)
            vals.append(float(np.nanmean(ap_at_r_of_rows(rows, lists, cap=_VAL_CAP, relevant=rel))))
        means.append((vals[1], vals[0]))
    return choose_gate(GATE_GRID, means)


@dataclass(frozen=True)
class _OpenRanking:
    """Queries ranked as served without the label term, before the open path's stages."""

    probe: ResidualScorer  #: scores the latent similarity alone (``alpha`` 1 or 0, ``beta`` 0)
    alpha: float           #: the served ``alpha`` (0 when the latent term is off)
    pool: np.ndarray
    dist: np.ndarray
    zq: np.ndarray | None
    scores: np.ndarray

    @classmethod
    def of(cls, model: SearchModel, db: DatabaseState, qb: QueryBatch, k: int, knobs: Knobs, num_threads: int,
           alpha: float) -> _OpenRanking:
        s0 = float(db.contexts.s0)
        latent = alpha != 0.0
        probe = ResidualScorer(alpha=1.0 if latent else 0.0, beta=0.0, s0=s0, space=db.space)
        pool, sim, dist, zq = pipeline.metric_pool(model, db, qb, k, replace(knobs, expand=min(knobs.expand, 1)),
                                                   probe, num_threads)
        a = alpha if latent else 0.0
        return cls(probe=probe, alpha=a, pool=pool, dist=dist, zq=zq,
                   scores=pipeline.combine_scores(pool, dist, sim, a, 0.0, None, s0))


def calibrate_demotion(model: SearchModel, db: DatabaseState,
                       groups: Sequence[tuple[QueryBatch, list[np.ndarray], tuple[LabelSpace, LabelHead]]],
                       knobs: Knobs, num_threads: int, alpha: float) -> float:
    """The known-label demotion ``model.demote_known`` of queries ranked without the label term (0: off).

    Each group ``(queries, relevant lists, (label space, label head))`` is ranked as such queries
    are served (``alpha``, no label term) and demoted (:class:`~ruvector_hnsw.search.pipeline.Demotion`
    with that label model) at every weight of :data:`DEMOTE_GRID`; a weight replaces the incumbent
    (at first no demotion) only when the mean AP@R over all the groups' queries beats the
    incumbent's by more than :data:`SIGNIFICANCE` standard errors of the paired per-query
    differences. ``fit`` passes the held-out classes' queries with the head that never learned
    them (what a query of an unseen class meets) and the known classes' validation queries the
    gate leaves without the label term, with the model's own head (whom a demotion can hurt).
    """
    runs = []
    for qb, lists, labels in groups:
        k = _list_k((len(r) for r in lists), db.n)
        r = _OpenRanking.of(model, db, qb, k, knobs, num_threads, alpha)
        everyone = np.ones(r.pool.shape[0], dtype=bool)
        with _label_model(model, labels):
            unit = pipeline.Demotion.of(model, db, pipeline.label_view(model, db, qb), pipeline.spread(r.scores),
                                        everyone, weight=1.0).penalty(r.pool)
        runs.append((qb, lists, k, r, unit, RelevantRows(lists, db.n)))
    if not runs:
        return 0.0

    def ap_of(weight: float) -> np.ndarray:
        return np.concatenate([ap_at_r_of_rows(_top_rows(qb, r.pool, r.scores - np.float32(weight) * unit, k), lists,
                                               cap=_VAL_CAP, relevant=relevant)
                               for qb, lists, k, r, unit, relevant in runs])

    best = _Incumbent(ap_of(0.0), (0.0,))
    for weight in DEMOTE_GRID:
        if weight:
            best.offer(ap_of(weight), (float(weight),))
    return float(best.setting[0])


def calibrate_diffusion(model: SearchModel, db: DatabaseState, qb: QueryBatch, pos_lists: list[np.ndarray],
                        knobs: Knobs, num_threads: int, alpha: float) -> tuple[float, float, int]:
    """The diffusion stage's ``(mu, gamma, seeds)`` for queries ranked without the label term (``mu = 0``: off).

    The queries ``qb`` are ranked as such queries are served (``alpha``, no label term, the
    known-label demotion as calibrated), then with the diffusion stage at every ``seeds`` of
    :data:`SEEDS_GRID`, ``gamma`` of :data:`GAMMA_GRID` and ``mu`` of :data:`MU_GRID`, simplest
    first; a setting replaces the incumbent (at first the ranking without the stage) only when its
    mean AP@R beats the incumbent's by more than :data:`SIGNIFICANCE` standard errors of the paired
    per-query differences, so that a sharper or wider diffusion has to earn its place on these few
    classes. Off, ``gamma`` and ``seeds`` stay the defaults of :mod:`ruvector_hnsw.search.diffusion`.
    """
    assert db.codes is not None
    k = _list_k((len(r) for r in pos_lists), db.n)
    s0 = float(db.contexts.s0)
    r = _OpenRanking.of(model, db, qb, k, knobs, num_threads, alpha)
    everyone = np.ones(r.pool.shape[0], dtype=bool)
    sd = pipeline.spread(r.scores)
    width = sd[:, None].astype(np.float32)
    view = pipeline.label_view(model, db, qb) if model.demote_known else None
    demotion = pipeline.Demotion.of(model, db, view, sd, everyone)
    base = demotion(r.pool, r.scores)
    relevant = RelevantRows(pos_lists, db.n)
    ap0 = ap_at_r_of_rows(_top_rows(qb, r.pool, base, k), pos_lists, cap=_VAL_CAP, relevant=relevant)
    best = _Incumbent(ap0, (0.0, diffusion.GAMMA, diffusion.DIFFUSION_SEEDS))
    for seeds in SEEDS_GRID:
        for gamma in GAMMA_GRID:
            new, known, fv = pipeline.diffusion_pool(db, r.pool, base, r.dist, everyone, gamma, seeds)
            sim2, dist2 = r.probe.score(qb.stored, db.graph.vectors, r.zq, db.codes.store, new, known)
            base2 = pipeline.combine_scores(new, dist2, sim2, r.alpha, 0.0, None, s0)
            for mu in MU_GRID:
                if mu == 0.0:
                    continue
                ap = ap_at_r_of_rows(_top_rows(qb, new, demotion(new, base2 + np.float32(mu) * width * fv), k),
                                     pos_lists, cap=_VAL_CAP, relevant=relevant)
                best.offer(ap, (float(mu), float(gamma), int(seeds)))
    mu, gamma, seeds = best.setting
    return mu, gamma, seeds


def calibrate_smoothing(model: SearchModel, db: DatabaseState, qb: QueryBatch, pos_lists: list[np.ndarray],
                        knobs: Knobs, num_threads: int, alpha: float) -> tuple[float, float, int]:
    """The score smoothing ``(dba_weight, qe_weight, qe_top)`` of queries ranked without the label term.

    The queries ``qb`` are ranked as such queries are served (``alpha``, no label term, the
    diffusion stage as calibrated), then with every DBA weight of :data:`DBA_GRID`, QE weight of
    :data:`QE_GRID` and expansion size of :data:`QE_TOP_GRID`
    (:mod:`ruvector_hnsw.search.smoothing`); a setting replaces the incumbent (at first the ranking
    without smoothing) only when its mean AP@R beats the incumbent's by more than
    :data:`SIGNIFICANCE` standard errors of the paired per-query differences.
    """
    assert db.codes is not None
    k = _list_k((len(r) for r in pos_lists), db.n)
    model.dba_weight, model.qe_weight, model.qe_top = 0.0, 0.0, 0
    scorer = ResidualScorer(alpha=alpha, beta=1.0, s0=float(db.contexts.s0), space=db.space)
    served = replace(knobs, expand=min(knobs.expand, 1))
    pool, scores, dist = pipeline.expand_and_score(model, db, qb, k, served, scorer, num_threads, lam=0.0)
    relevant = RelevantRows(pos_lists, db.n)

    def ap_of(s: np.ndarray) -> np.ndarray:
        return ap_at_r_of_rows(_top_rows(qb, pool, s, k), pos_lists, cap=_VAL_CAP, relevant=relevant)

    best = _Incumbent(ap_of(scores), (0.0, 0.0, 0))
    codes = db.codes.store
    aug = db.augmented_vectors()
    d_term = smoothing.dba_term(scorer, qb.stored, aug, codes, pool, dist)
    for dba in DBA_GRID:
        moved = np.where(pool >= 0, scores + np.float32(dba) * d_term, -np.inf).astype(np.float32)
        read = aug if dba else db.graph.vectors
        for top in QE_TOP_GRID:
            term = smoothing.qe_term(scorer, read, codes, pool, moved, top)
            for qe in QE_GRID:
                if (not dba and not qe) or (not qe and top != QE_TOP_GRID[0]):
                    continue
                best.offer(ap_of(moved + np.float32(qe) * term), (float(dba), float(qe), int(top) if qe else 0))
    dba, qe, top = best.setting
    return dba, qe, top


def _open_path_groups(model: SearchModel, db: DatabaseState,
                      held_group: tuple[QueryBatch, list[np.ndarray], tuple[LabelSpace, LabelHead]] | None,
                      known_group: tuple[QueryBatch, list[np.ndarray]], labelled: bool
                      ) -> list[tuple[QueryBatch, list[np.ndarray], tuple[LabelSpace, LabelHead]]]:
    """The query groups the open path serves, for :func:`calibrate_demotion`.

    The held-out classes' queries with the label head that never learned them, and the known
    classes' validation queries the gate leaves without the label term (all of them when the label
    term is off) with the model's own.
    """
    assert model.labels is not None and model.label_head is not None
    groups = [] if held_group is None else [held_group]
    qb, lists = known_group
    view = pipeline.label_view(model, db, qb) if labelled else None
    below = np.flatnonzero(np.ones(qb.stored.shape[0], dtype=bool) if view is None else ~view.applies(model.gate))
    if below.size:
        groups.append((_subset(qb, below), [lists[i] for i in below.tolist()], (model.labels, model.label_head)))
    return groups


def choose_gate(grid: Sequence[float], means: Sequence[tuple[float, float]], tolerance: float = GATE_TOLERANCE
                ) -> float:
    """The gate of ``grid`` (ascending) by ``means[i] = (held-out-class AP, known-class AP)``.

    Among the gates within ``tolerance`` of the best held-out-class AP, the best known-class AP
    (ties: the lowest gate).
    """
    top = max(u for u, _ in means)
    best = (-np.inf, 0.0)
    for gate, (u, known_ap) in zip(grid, means, strict=True):
        if u >= top - tolerance and known_ap > best[0] + 1e-9:
            best = (known_ap, float(gate))
    return float(best[1])


# ---------------------------------------------------------------------- fit
def fit(model: SearchModel, db: DatabaseState, index: HNSWIndex, q: np.ndarray, pos_lists: list[np.ndarray],
        knobs: Knobs, opts: FitOptions, num_threads: int,
        classes: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> TrainingHistory:
    """Train ``model`` in place on ``db`` (best validation epoch restored, codes refreshed); return the history.

    ``classes`` = ``(row_labels, known, query_labels)`` (per graph row, a mask of known row labels,
    per training query) trains the label head too (when the config enables it); rows whose label is
    unknown are left out of the contrastive loss (neither positives nor negatives). With the label
    head on and at least :data:`HOLDOUT_MIN_CLASSES` classes of training queries,
    :func:`held_out_classes` are kept out of the encoder's training (their items count as unknown
    there, their queries are not trained on): their queries choose the encoder's
    best epoch (and stop it early) and calibrate ``alpha_open``, the label gate and the open path on
    classes the codes never saw. The label head learns them.
    """
    cfg = model.config
    model.labels, model.label_head, model.lam = None, None, 0.0
    model.gate, model.alpha_open, model.mu = 0.0, 0.0, 0.0
    model.diffusion_gamma, model.diffusion_seeds = diffusion.GAMMA, diffusion.DIFFUSION_SEEDS
    model.dba_weight, model.qe_weight, model.qe_top = 0.0, 0.0, 0
    model.demote_known = 0.0
    rng = np.random.default_rng(cfg.seed)
    nq = q.shape[0]
    perm = rng.permutation(nq)
    n_val = round(opts.val_fraction * nq) if nq >= 20 else 0
    val_idx, tr_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    head_idx = tr_idx  # the label head learns every class
    held = held_out_classes(classes, cfg.seed) if classes is not None and cfg.label_head and n_val else None
    open_idx = np.zeros(0, dtype=np.int64)
    unknown = None if classes is None else ~classes[1]
    if held is not None and classes is not None:
        in_held = np.isin(np.asarray(classes[2]), held)
        if (~in_held[val_idx]).sum() >= 2 and (~in_held[tr_idx]).any():
            # the encoder never sees the held-out classes: their queries measure how the codes transfer
            val_idx, tr_idx = val_idx[~in_held[val_idx]], tr_idx[~in_held[tr_idx]]
            open_idx = np.flatnonzero(in_held)
            if open_idx.size > GATE_QUERIES:
                open_idx = np.sort(np.random.default_rng([cfg.seed, 17]).choice(open_idx, GATE_QUERIES,
                                                                                replace=False))
            unknown = ~classes[1] | np.isin(classes[0], held)
        else:
            held = None
    C = knobs.candidates
    n_cand = max(C, 1)
    clock = PhaseClock()
    with clock.phase("candidates"):
        all_q = pipeline.candidates(index, db.graph, model, q, n_cand, n_cand, num_threads)
        val_k = _list_k((len(pos_lists[i]) for i in val_idx.tolist()), db.n)
        val_q = pipeline.candidates(index, db.graph, model, q[val_idx], max(C, val_k), max(C, val_k),
                                    num_threads) if n_val else None
        open_k = _list_k((len(pos_lists[i]) for i in open_idx.tolist()), db.n)
        open_q = pipeline.candidates(index, db.graph, model, q[open_idx], max(C, open_k), max(C, open_k),
                                     num_threads) if open_idx.size >= 2 else None
    model.fitted = True  # codes are needed for mining and validation
    model.rho = 0.0
    with clock.phase("code_refresh"):
        db.refresh_codes(model, kind="flat", dtype="float32")
    ts = TrainingState(queries=_subset(all_q, tr_idx), pos_lists=[pos_lists[i] for i in tr_idx.tolist()],
                       mined=np.full((tr_idx.shape[0], 0), -1, dtype=np.int64))
    code_terms: list[CodeTerm] = []
    if opts.loss == "local_contrastive":
        code_terms.append(LocalContrastiveTerm(weight=opts.local_weight, temperature=opts.temperature))
    reg = make_regularizer(opts.regularizer, opts.reg_weight)
    if reg is not None:
        code_terms.append(reg)
    miner = make_miner(opts.miner, max(opts.latent_negatives, 1), margin=opts.margin, seed=cfg.seed) \
        if opts.latent_negatives or opts.curriculum is not None else None
    trainable = SearchTrainingModel(model, db, ts, candidates=C, temperature=opts.temperature,
                                    extra_positives=opts.extra_positives, random_negatives=opts.random_negatives,
                                    latent_negatives=opts.latent_negatives, fresh_rows=opts.fresh_rows,
                                    unknown=unknown, objective=opts.loss,
                                    margin=opts.margin, code_terms=code_terms, miner=miner,
                                    step_runner=opts.step_runner)
    trainable.clock = clock
    val_pos = [pos_lists[i] for i in val_idx.tolist()]
    open_pos = [pos_lists[i] for i in open_idx.tolist()]

    # the epochs are judged on the held-out classes when there are some: the codes serve the queries the
    # label term leaves alone (those of classes the labels never covered), and how they transfer to
    # classes the encoder never saw is what those queries measure; else on the validation queries
    sel_q, sel_pos = (open_q, open_pos) if open_q is not None else (val_q, val_pos)

    def validate(_: Any) -> dict[str, float]:
        assert sel_q is not None
        with clock.phase("validation"):
            value, alpha = calibrate(model, db, sel_q, sel_pos, knobs, num_threads)
        return {"map_at_r": value, "alpha": alpha}

    steps = max(1, int(np.ceil(tr_idx.shape[0] / opts.batch_size)))
    trainer = Trainer(
        trainable,
        make_fit_optimizer(opts.optimizer, trainable.params, lr=opts.lr, weight_decay=opts.weight_decay),
        epochs=opts.epochs,
        curriculum=opts.curriculum,
        batch_size=opts.batch_size,
        schedule=WarmupCosineSchedule(opts.lr, total_steps=opts.epochs * steps, warmup_steps=min(steps, 50)),
        validate=validate if n_val else None,
        patience=opts.patience if n_val else None,
        checkpoint_dir=opts.checkpoint_dir,
        seed=cfg.seed,
        progress=opts.progress,
    )
    history = trainer.fit({"query": np.arange(tr_idx.shape[0])}, resume=opts.resume)
    with clock.phase("code_refresh"):
        db.refresh_codes(model, kind="flat", dtype="float32")  # the restored (best) parameters
    t_cal = time.perf_counter()
    if n_val and val_q is not None and cfg.spectral and db.codes is not None:
        # weight of the diffusion coordinates: joint grid with alpha on exact latent search
        base = db.codes
        best = (-np.inf, 0.0)
        for rho in RHO_GRID:
            db.codes = base.with_rho(rho)
            model.rho = rho
            value, _ = calibrate(model, db, val_q, val_pos, knobs, num_threads, set_alpha=False)
            if value > best[0] + 1e-9:
                best = (value, rho)
        model.rho = best[1]
        db.codes = base
    clock.seconds["calibration"] = clock.seconds.get("calibration", 0.0) + time.perf_counter() - t_cal
    # the serving codes (stored in the model's code_dtype) and latent index, then alpha for them
    assert db.codes is not None
    with clock.phase("latent_index"):
        db.codes = LatentCodes(db.codes.z_values(), db.codes.phi_values(), model.rho, kind=cfg.latent,
                               seed=cfg.seed, phi_fitted=db.codes.phi_fitted, dtype=cfg.code_dtype)
    # the head learns every class: the held-out queries too (ts has them only when nothing is held out)
    head_q = ts.queries if held is None else _subset(all_q, head_idx)
    head_width = 0
    if classes is not None and cfg.label_head and n_val:
        with clock.phase("label_head"):
            head_width = fit_label_head(model, db, head_q, classes[2][head_idx], classes[0], classes[1], opts,
                                        None if val_q is None else (val_q, np.asarray(classes[2])[val_idx]))
    with clock.phase("calibration"):
        if n_val and val_q is not None:
            if model.label_head is not None:  # alpha of the queries the label term will not apply to
                # on the classes the encoder never saw when there are some, else on the validation queries
                cal_q, cal_pos = (open_q, open_pos) if open_q is not None else (val_q, val_pos)
                _, model.alpha_open = calibrate(model, db, cal_q, cal_pos, knobs, num_threads, set_alpha=False,
                                                use_labels=False)
            calibrate(model, db, val_q, val_pos, knobs, num_threads)
        else:  # nothing to calibrate on: keep the index's ranking (alpha = 0)
            model.alpha, model.lam = 0.0, 0.0
    held_labels = None  # the label head with the held-out classes hidden (their items unlabelled)
    if model.lam and classes is not None and val_q is not None and open_q is not None and held is not None:
        assert unknown is not None  # the encoder's: unlabelled or of a held-out class
        with clock.phase("label_head"):
            held_labels = train_label_head(model, db, head_q, np.asarray(classes[2])[head_idx], classes[0], ~unknown,
                                           opts.head_weight_decay(head_width), head_width)
            if held_labels is not None:
                model.gate = calibrate_gate(model, db, (val_q, val_pos), (open_q, open_pos), held_labels, knobs,
                                            num_threads)
    if val_q is not None:
        with clock.phase("calibration"):  # the open path: the queries served without the label term
            labelled = model.lam != 0.0
            held_group = (open_q, open_pos, held_labels) if (labelled and open_q is not None
                                                             and held_labels is not None) else None
            cal_q, cal_pos = (held_group[0], held_group[1]) if held_group is not None else (val_q, val_pos)
            open_alpha = model.alpha_open if labelled else model.alpha
            if cfg.demote and model.labels is not None and model.label_head is not None:
                groups = _open_path_groups(model, db, held_group, (val_q, val_pos), labelled)
                model.demote_known = calibrate_demotion(model, db, groups, knobs, num_threads, open_alpha)
            # the held-out classes' queries are served as an unseen class's: by a head that never learned them
            with _label_model(model, held_group[2]) if held_group is not None else nullcontext():
                model.mu, model.diffusion_gamma, model.diffusion_seeds = calibrate_diffusion(
                    model, db, cal_q, cal_pos, knobs, num_threads, open_alpha)
                model.dba_weight, model.qe_weight, model.qe_top = calibrate_smoothing(
                    model, db, cal_q, cal_pos, knobs, num_threads, open_alpha)
    history.time_split = clock.rounded()
    return history
