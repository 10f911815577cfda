"""`AttentionSearch`: HNSW candidates -> graph context -> attention codes -> residual score -> expansion.

The searcher only wires the stages (:mod:`ruvector_hnsw.search.pipeline`) and holds their state:

- :class:`~ruvector_hnsw.search.model.SearchModel`: what ``fit`` trains and ``save``/``load`` keep;
- :class:`~ruvector_hnsw.search.state.DatabaseState`: table, row contexts and cached codes, aligned
  with the rows of the index's current graph snapshot and brought up to date incrementally after
  ``index.add``/``delete`` (only rows whose neighbourhood changed are re-encoded);
- the default search knobs (``candidates``, ``expand``, ``latent_k``, ``walk_top``): every
  :meth:`AttentionSearch.search` call may override them.

Query-independent work - every database row's code - is computed once after ``fit`` and cached;
a query touches only its candidates, its own context and its expansion.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ruvector_hnsw._validation import as_ids, as_matrix, check_positive_int
from ruvector_hnsw.errors import (
    ConfigError,
    IndexCorruptedError,
    IndexMismatchError,
    InvalidInputError,
    ShapeMismatchError,
)
from ruvector_hnsw.index import HNSWGraph, HNSWIndex
from ruvector_hnsw.search import pipeline
from ruvector_hnsw.search.codes import LatentCodes
from ruvector_hnsw.search.model import ModelConfig, SearchModel
from ruvector_hnsw.search.objectives import check_toolkit
from ruvector_hnsw.search.pipeline import Knobs
from ruvector_hnsw.search.quant import check_code_dtype
from ruvector_hnsw.search.state import DatabaseState
from ruvector_hnsw.threads import RWLock, resolve_threads, thread_limits
from ruvector_hnsw.training.checkpoint import load_checkpoint, save_checkpoint
from ruvector_hnsw.training.miners import Miner
from ruvector_hnsw.training.schedules import Curriculum
from ruvector_hnsw.training.trainer import TrainingHistory

__all__ = ["AttentionSearch", "check_model_index", "items_checksum"]

FORMAT_VERSION = 5
_MODEL_KIND = "attention_search"
#: a search that raced with ``index.add`` is redone on the new state, up to this many times
_CONSISTENT_TRIES = 8


class AttentionSearch:
    """Attention-aware search over an :class:`~ruvector_hnsw.HNSWIndex`.

    Parameters
    ----------
    index : HNSWIndex
        The index whose graph provides candidates and context (never modified by the searcher).
    mechanism : str
        A name of :data:`ruvector_hnsw.attention.MECHANISMS`. (The training-free baselines are
        :class:`~ruvector_hnsw.search.AlphaQESearch` and :class:`~ruvector_hnsw.search.DBASearch`.)
    candidates : int
        Default HNSW candidates re-scored per query (``C``; the HNSW search runs at ``ef = C``).
    expand : int
        Default expansion rounds: each adds the latent neighbours of the query code and the
        layer-0 links of the best items, then scores the union. 0 = re-rank the candidates only.
        Before ``fit`` (or with a calibrated ``alpha = 0``) results are HNSW's, unchanged.
    k_local, k_global : int
        Context sizes: layer-0 neighbours and upper-layer (hub) links per node.
    seed : int
        Seeds the mechanism, the projections, the diffusion sketch and training.
    latent_dim : int, optional
        Width of the learned codes (default ``min(dim, 64)``).
    spectral, spectral_time : int
        Width of the diffusion coordinates of the layer-0 graph appended to the codes (0 = none)
        and the length of the lazy walks they sketch; their weight is calibrated at ``fit``.
    latent_k, walk_top : int
        Default latent neighbours fetched per expansion round and best items whose layer-0 links
        are followed.
    latent : {"auto", "flat", "hnsw"}
        The latent kNN over the codes: exact (``flat``), an hnswlib graph (``hnsw``), or exact up
        to :data:`~ruvector_hnsw.search.codes.FLAT_MAX` rows (``auto``).
    label_head : bool
        When ``fit`` gets item labels, also learn the class of a query from its vector and the
        labels its HNSW neighbours carry (:mod:`ruvector_hnsw.search.labels`), and add
        ``lam * e(q) * log P(same class | q, v)`` to the score, ``lam`` calibrated (0 included),
        ``e(q)`` the share of the query's neighbourhood whose labels are known. Items of the
        most probable class nearest to the query join the pool (``class_pool`` of them, at least
        ``k``). Unknown labels (``< 0``) are no class: such items are scored by the class the
        head predicts for them, and a query among unlabelled items only is ranked by the codes.
        Queries the label term does not apply to (label evidence below the calibrated gate) take
        the open path: the codes, the demotion of labelled items (``demote``), then graph
        diffusion and score smoothing whose settings ``fit``
        calibrates on training classes held out of the encoder (:mod:`ruvector_hnsw.search.diffusion`,
        :mod:`ruvector_hnsw.search.smoothing`).
    label_hidden : int or None
        Width of a hidden ReLU layer in the label head; 0: softmax regression on the query. None
        (default): ``fit`` trains both a linear head and a 256-wide one and keeps the wide one only when
        its log-loss on the validation queries is lower by more than two standard errors of the
        paired differences (so on the real text set, not on the synthetic sets whose classes a
        linear head already separates; see the README).
    num_threads : int
        Threads of every call (index search, FAISS, numba kernels, BLAS), applied for the call's
        duration only (-1 = all cores). The index's own setting is never changed.
    layers : int
        Stacked encoder blocks (``norm -> attention -> dropout -> residual``, each with its own
        mechanism; every block attends over the raw context rows): 1 is the single-block encoder.
        See :mod:`ruvector_hnsw.search.encoder`.
    norm : {"layer", "rms"} or None
        Each block's input normalisation (learnable gain, and bias for ``"layer"``).
    dropout : float
        Dropout rate on each block's attention read-out during ``fit`` (inference: identity).
    code_dtype : {"float32", "float16", "int8"}
        Storage of the database code cache (every row's code, read by the scorer) and of the
        latent index at search time (:mod:`ruvector_hnsw.search.quant`): ``float16`` is stored
        in half precision, ``int8`` with one power-of-two scale per row (symmetric); both are
        computed in float32, and their latent graph keeps only its links (it reads the compact
        cache). Training always uses float32 codes (the codes refreshed during ``fit`` stay
        float32); the choice applies to the cache ``fit`` leaves for search, to every refresh or
        incremental update after it, and is saved with the model. :meth:`memory_bytes` measures
        it; :meth:`set_code_dtype` converts a fitted searcher without refitting.
    context : {"graph", "none"}
        What the encoder attends over: the HNSW graph context (the product), or nothing (an
        ablation: codes from the vector alone, a trained linear map; everything else unchanged).
    demote : bool
        Whether ``fit`` may demote the items with a known label for the queries of the open path
        (a query the label head places in no known class is unlikely to share an item's known
        class). The weight is calibrated like the other open-path settings, on the held-out
        classes with their items unlabelled and on the known classes' queries the gate sends to
        the open path; False is the ablation (never demoted).
    **mech_config
        Passed to the mechanism's constructor (e.g. ``temperature``, ``heads``).
    """

    def __init__(
        self,
        index: HNSWIndex,
        mechanism: str = "local_global",
        candidates: int = 100,
        expand: int = 1,
        k_local: int = 16,
        k_global: int = 8,
        seed: int = 0,
        *,
        latent_dim: int | None = None,
        spectral: int = 64,
        spectral_time: int = 32,
        latent_k: int = 32,
        walk_top: int = 2,
        latent: str = "auto",
        label_head: bool = True,
        label_hidden: int | None = None,
        class_pool: int = 100,
        num_threads: int = -1,
        layers: int = 1,
        norm: str | None = None,
        dropout: float = 0.0,
        code_dtype: str = "float32",
        context: str = "graph",
        demote: bool = True,
        **mech_config: Any,
    ) -> None:
        if not isinstance(index, HNSWIndex):
            raise InvalidInputError(f"index must be an HNSWIndex, got {type(index).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ConfigError(f"seed must be an int, got {seed!r}")
        config = ModelConfig(
            mechanism=mechanism, dim=index.dim,
            latent_dim=min(index.dim, 64) if latent_dim is None else latent_dim,
            k_local=k_local, k_global=k_global, spectral=spectral, spectral_time=spectral_time,
            seed=int(seed), latent=latent, label_head=label_head, label_hidden=label_hidden, class_pool=class_pool,
            mech_config=dict(mech_config), layers=layers, norm=norm, dropout=dropout, code_dtype=code_dtype,
            context=context, demote=demote,
        )
        self.index = index
        self.model = SearchModel(config)
        self.knobs = Knobs(candidates=candidates, expand=expand, latent_k=latent_k, walk_top=walk_top)
        self.num_threads = num_threads
        self._lock = RWLock()
        self._db: DatabaseState | None = None

    # ------------------------------------------------------------------ configuration
    def _set_knob(self, **kw: Any) -> None:
        self.knobs = Knobs(**{**self.knobs.__dict__, **kw})

    @property
    def candidates(self) -> int:
        """Default HNSW candidates per query (settable)."""
        return self.knobs.candidates

    @candidates.setter
    def candidates(self, value: int) -> None:
        self._set_knob(candidates=value)

    @property
    def expand(self) -> int:
        """Default expansion rounds (settable)."""
        return self.knobs.expand

    @expand.setter
    def expand(self, value: int) -> None:
        self._set_knob(expand=value)

    @property
    def latent_k(self) -> int:
        """Default latent neighbours per expansion round (settable)."""
        return self.knobs.latent_k

    @latent_k.setter
    def latent_k(self, value: int) -> None:
        self._set_knob(latent_k=value)

    @property
    def walk_top(self) -> int:
        """Default number of best items whose layer-0 links are followed (settable)."""
        return self.knobs.walk_top

    @walk_top.setter
    def walk_top(self, value: int) -> None:
        self._set_knob(walk_top=value)

    @property
    def num_threads(self) -> int:
        """Threads of each call (resolved: -1 became the core count); applied per call only."""
        return self._num_threads

    @num_threads.setter
    def num_threads(self, value: int) -> None:
        self._num_threads = resolve_threads(value)

    @property
    def mechanism_name(self) -> str:
        return self.model.config.mechanism

    @property
    def k_local(self) -> int:
        return self.model.config.k_local

    @property
    def k_global(self) -> int:
        return self.model.config.k_global

    @property
    def seed(self) -> int:
        return self.model.config.seed

    @property
    def latent_dim(self) -> int:
        return self.model.config.latent_dim

    @property
    def code_dtype(self) -> str:
        """Storage of the code cache and latent index at search time (see the class docstring)."""
        return self.model.config.code_dtype

    def set_code_dtype(self, code_dtype: str) -> None:
        """Store the code cache and latent index in another dtype, without refitting.

        The model's parameters and calibrated weights are kept; the cached codes are converted
        (from ``float32`` exactly what a model fitted with that ``code_dtype`` stores before its
        final calibration; from a compact dtype the read-back values are converted) and the
        latent index is rebuilt over them. The choice is saved with the model.

        Raises
        ------
        ConfigError
            If ``code_dtype`` is not one of ``"float32"``, ``"float16"``, ``"int8"``.
        """
        check_code_dtype(code_dtype)
        with thread_limits(self._num_threads):
            self._synced()
            with self._lock.write():
                self.model.config = replace(self.model.config, code_dtype=code_dtype)
                db = self._db
                if db is not None and db.codes is not None and db.codes.dtype != code_dtype:
                    db.codes = db.codes.astype(code_dtype)

    def memory_bytes(self) -> dict[str, int]:
        """Bytes of the code cache and latent index per part (see :meth:`LatentCodes.memory_bytes`).

        ``{"codes", "phi", "z", "latent_index", "total"}``; all 0 before ``fit``.
        """
        db = self.database_state()
        if db.codes is None:
            return {"codes": 0, "phi": 0, "z": 0, "latent_index": 0, "total": 0}
        with self._lock.read():
            return db.codes.memory_bytes()

    @property
    def fitted(self) -> bool:
        """True once :meth:`fit` (or :meth:`load`) gave the model a learned signal."""
        return self.model.fitted

    @property
    def alpha(self) -> float:
        """Calibrated weight of the learned term (0: the model ranks like the index)."""
        return self.model.alpha if self.model.fitted else 0.0

    def __repr__(self) -> str:
        return (f"AttentionSearch(mechanism={self.mechanism_name!r}, candidates={self.candidates}, "
                f"expand={self.expand}, k_local={self.k_local}, k_global={self.k_global}, fitted={self.fitted})")

    # ------------------------------------------------------------------ state
    def database_state(self) -> DatabaseState:
        """The synced table/contexts/codes (brought up to date with the index first)."""
        with thread_limits(self._num_threads):
            return self._synced()

    def _synced(self) -> DatabaseState:
        g = self.index.graph()
        with self._lock.read():
            db = self._db
            if db is not None and db.graph is g:
                return db
        with self._lock.write():
            g = self.index.graph()
            db = self._db
            if db is None:
                db = DatabaseState.build(self.model, g, self.index.space)
                if self.model.fitted:
                    db.refresh_codes(self.model)
                self._db = db
            elif db.graph is not g:
                db.sync(self.model, g)
            return db

    def refresh(self) -> None:
        """Recompute every context and code from scratch (incremental updates make this unnecessary)."""
        with thread_limits(self._num_threads), self._lock.write():
            codes = self._db.codes if self._db is not None else None
            db = DatabaseState.build(self.model, self.index.graph(), self.index.space)
            if self.model.fitted:
                if codes is not None:
                    db.refresh_codes(self.model, phi=codes.phi_values(), phi_fitted=codes.phi_fitted)
                else:
                    db.refresh_codes(self.model)
            self._db = db

    # ------------------------------------------------------------------ search
    def search(self, queries: Any, k: int = 10, *, candidates: int | None = None, expand: int | None = None,
               latent_k: int | None = None, walk_top: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Attention-aware k nearest neighbours.

        Parameters
        ----------
        queries : array_like, (nq, dim) or (dim,)
        k : int
            Results per query. May exceed the candidates: the re-scored (and expanded) items
            come first, then the rest of the HNSW ranking in HNSW order.
        candidates, expand, latent_k, walk_top : int, optional
            Per-call overrides of the defaults (see the class docstring).

        Returns
        -------
        ids : (nq, k) int64
            Labels, best first; -1 where fewer than k exist. Deleted items never appear.
            Searches may run concurrently with each other and with ``index.add``/``delete``: a
            search that raced with a change of the index is redone on the new state, so results
            are those of one state of the index (under a continuous stream of writes, after
            :data:`_CONSISTENT_TRIES` attempts the last attempt is returned).
        scores : (nq, k) float32
            Higher = better; -inf on padding. Before ``fit`` the order is exactly HNSW's.
        """
        q = as_matrix(queries, "queries", self.index.dim)
        k = check_positive_int(k, "k")
        knobs = self.knobs
        over = {name: v for name, v in (("candidates", candidates), ("expand", expand), ("latent_k", latent_k),
                                        ("walk_top", walk_top)) if v is not None}
        if over:
            knobs = Knobs(**{**knobs.__dict__, **over})
        with thread_limits(self._num_threads):
            for _ in range(_CONSISTENT_TRIES):
                db = self._synced()
                with self._lock.read():
                    g = db.graph
                    out = self._search(db, q, k, knobs)
                    if self.index.graph() is g:  # no add/delete landed while HNSW was searched
                        return out
            return out

    def _search(self, db: DatabaseState, q: np.ndarray, k: int, knobs: Knobs) -> tuple[np.ndarray, np.ndarray]:
        C = knobs.candidates
        qb = pipeline.candidates(self.index, db.graph, self.model, q, max(C, k), max(C, k), self._num_threads)
        scorer = self.model.scorer(self.index.space)
        m = self.model
        if db.codes is None or not (scorer.alpha or m.lam or m.mu or m.dba_weight or m.qe_weight or m.demote_known):
            return pipeline.hnsw_ranking(qb, k, scorer.s0, db.graph)
        pool, scores, _ = pipeline.expand_and_score(self.model, db, qb, k, knobs, scorer, self._num_threads)
        return pipeline.finish(qb, pool, scores, k, db.graph)

    # ------------------------------------------------------------------ training
    def fit(
        self,
        train_queries: Any,
        labels: Any = None,
        query_labels: Any = None,
        *,
        positives: Any = None,
        epochs: int = 8,
        batch_size: int = 128,
        lr: float = 1e-2,
        temperature: float = 0.1,
        extra_positives: int = 16,
        random_negatives: int = 48,
        latent_negatives: int = 32,
        val_fraction: float = 0.1,
        patience: int = 2,
        weight_decay: float = 1e-4,
        fresh_rows: int | None = 1024,
        loss: str = "infonce",
        margin: float = 0.2,
        local_weight: float = 1.0,
        miner: str | Miner = "hard",
        curriculum: Curriculum | str | None = None,
        regularizer: Any = None,
        reg_weight: float = 0.1,
        optimizer: str = "adam",
        progress: bool = False,
        checkpoint_dir: str | Path | None = None,
        resume: bool | str | Path = False,
        step_runner: Any = None,
        label_weight_decay: float | None = None,
    ) -> TrainingHistory:
        """Train the attention encoder contrastively on labelled queries.

        Parameters
        ----------
        train_queries : array_like, (nq, dim)
            Training queries (keep them disjoint from evaluation queries).
        labels : array_like or mapping
            ``labels[id]`` = label of index item ``id`` (an array indexed by id, or a mapping).
        query_labels : array_like, (nq,)
            Label of each training query; relevant items share it.
        positives : array_like, (nq, p) of ids, optional
            Instead of labels: explicit relevant ids per query (-1 padding).
        epochs, batch_size, lr, weight_decay : int, int, float, float
            Adam with warm-up + cosine learning rate.
        temperature : float
            InfoNCE temperature of the latent similarity.
        extra_positives, random_negatives, latent_negatives : int
            Pool composition per training query: random relevant items, uniformly random items,
            hard negatives from the current codes (re-mined every epoch).
        val_fraction, patience : float, int
            Held-out share of the training queries (seeded split); early stopping on their mAP@R,
            or, when labels hold out classes from the encoder (``labels`` and ``query_labels``
            with at least five classes), on the mAP@R of those classes' queries: how the codes
            transfer to classes they never saw. ``alpha`` and the open path's weights (diffusion,
            DBA, query expansion) are calibrated on them, or on the held-out classes' queries,
            over grids that include 0, so the fitted model is never below the index's ranking there.
        fresh_rows : int or None
            Distinct pool rows per step encoded with the current parameters and back-propagated:
            those with the largest gradient under the codes of the last refresh (refreshed every
            epoch); the other pool rows score with those codes, as constants. ``None`` encodes
            every pool row each step (the exact gradient; several times slower on large pools).
        loss : {"infonce", "triplet", "local_contrastive"}
            The pool loss: multi-positive InfoNCE; the margin triplet loss over every
            (relevant, other) pair of a pool (``margin`` on the code cosine); or InfoNCE plus a
            graph-local contrastive term on the encoded rows' codes (their layer-0 HNSW
            neighbours are positives), weighted by ``local_weight``.
            See :mod:`ruvector_hnsw.search.objectives`.
        miner : {"hard", "semihard", "random"} or Miner
            How the ``latent_negatives`` of each epoch are chosen among the latent top-``4m`` of
            the current codes (relevant rows never): the highest-scoring, the semi-hard ones
            (below the weakest relevant row by less than ``margin``), uniformly random, or by
            your :class:`~ruvector_hnsw.training.Miner`.
        curriculum : Curriculum or str, optional
            Per-epoch stages of temperature and mined negatives
            (:class:`~ruvector_hnsw.training.Curriculum`, or its text form ``"E/T/N+E/T/N"``, see
            :meth:`~ruvector_hnsw.training.Curriculum.parse`); epochs past the last stage stay in it.
        regularizer : None, "laplacian" or CodeTerm
            A term on the encoded rows' codes: ``"laplacian"`` is ``reg_weight`` times the mean
            squared code distance over their layer-0 links (smooth codes along the graph).
        optimizer : {"adam", "adamw", "sgd", "natural"}
            ``sgd`` has momentum 0.9; ``natural`` is the diagonal-Fisher natural gradient.
        progress : bool
            Show a progress bar (needs tqdm): per-epoch loss, validation mAP@R and seconds.
        checkpoint_dir, resume
            Trainer checkpoints and resuming from them.
        step_runner : callable, optional
            ``step_runner(trainable, pools, state) -> (loss, grads)`` computes every step's loss and
            gradients from the sampled pools (e.g. :class:`ruvector_hnsw.distributed.DataParallel`).
        label_weight_decay : float, optional
            L2 weight of the label head (both heads ``fit`` trains). None: ``1e-4`` for the linear
            head, ``3e-3`` with a hidden layer (``label_hidden``), where the smaller weight overfits
            (:data:`ruvector_hnsw.search.training.LABEL_WEIGHT_DECAY`).

        Returns
        -------
        TrainingHistory
            Per-epoch loss, validation mAP@R (and calibrated alpha), lr and times; the best
            epoch's parameters are restored. ``time_split`` gives the wall seconds per phase
            (sync, candidates, sampling, mining, forward, backward, code_refresh, validation,
            calibration, latent_index, label_head, total).
        """
        from ruvector_hnsw.search import training

        epochs = check_positive_int(epochs, "epochs")
        batch_size = check_positive_int(batch_size, "batch_size")
        if fresh_rows is not None:
            fresh_rows = check_positive_int(fresh_rows, "fresh_rows")
        if isinstance(curriculum, str):
            curriculum = Curriculum.parse(curriculum)
        check_toolkit(loss=loss, miner=miner, curriculum=curriculum, regularizer=regularizer, optimizer=optimizer,
                      margin=margin, local_weight=local_weight, reg_weight=reg_weight)
        q = as_matrix(train_queries, "train_queries", self.index.dim)
        with thread_limits(self._num_threads):
            t_sync = time.perf_counter()
            db = self._synced()
            t_sync = time.perf_counter() - t_sync
            with self._lock.write():
                pos_lists = positive_lists(db.graph, q.shape[0], labels, query_labels, positives)
                classes = None
                if positives is None:
                    row_lab, known = row_labels(db.graph, labels)
                    classes = (row_lab, known, np.asarray(query_labels))
                opts = training.FitOptions(
                    epochs=epochs, batch_size=batch_size, lr=lr, temperature=temperature,
                    extra_positives=extra_positives, random_negatives=random_negatives,
                    latent_negatives=latent_negatives, val_fraction=val_fraction, patience=patience,
                    weight_decay=weight_decay, fresh_rows=fresh_rows, loss=loss, margin=margin,
                    local_weight=local_weight, miner=miner, curriculum=curriculum, regularizer=regularizer,
                    reg_weight=reg_weight, optimizer=optimizer, progress=progress,
                    checkpoint_dir=checkpoint_dir, resume=resume, step_runner=step_runner,
                    label_weight_decay=label_weight_decay)
                history = training.fit(self.model, db, self.index, q, pos_lists, self.knobs, opts,
                                       self._num_threads, classes)
        split = {"sync": round(t_sync, 3), **history.time_split}
        split["total"] = round(split["total"] + split["sync"], 3)
        history.time_split = split
        return history

    # ------------------------------------------------------------------ persistence
    def _state_tree(self) -> dict[str, Any]:
        db = self._db
        state: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "model": self.model.state(),
            "knobs": dict(self.knobs.__dict__),
            "index": _index_meta(self.index),
            "database": None,
        }
        if db is not None and db.codes is not None:
            codes = db.codes.state()
            graph = codes.pop("graph", None)
            state["database"] = {"fingerprint": graph_fingerprint(db.graph), "codes": codes,
                                 "latent_graph": None if graph is None else _index_bytes(graph)}
        return state

    def save(self, path: str | Path) -> None:
        """Write the model to ``path.npz`` (arrays) + ``path.json`` (versioned config, SHA-256).

        Besides the trained parameters, the cached codes, diffusion coordinates and latent graph
        are saved with a fingerprint of the graph they belong to, so that :meth:`load` on the same
        index ranks exactly like this object. Each file is written atomically. The index is saved
        separately (:meth:`HNSWIndex.save`).
        """
        with self._lock.read():
            state = self._state_tree()
        save_checkpoint(path, state, kind=_MODEL_KIND)

    @classmethod
    def load(cls, path: str | Path, index: HNSWIndex, *, num_threads: int = -1,
             same_items: bool = False) -> AttentionSearch:
        """Load a model written by :meth:`save` onto ``index`` (which must match its dim and space).

        When ``index`` still holds the graph the model was saved with, its saved codes and latent
        graph are reused (exact equality with the saved object); otherwise they are recomputed,
        and rows added since get diffusion coordinates by the Nystrom rule.

        Parameters
        ----------
        path : str or Path
            The stem given to :meth:`save`.
        index : HNSWIndex
            The index to search.
        num_threads : int
            Threads of each call (-1 = all cores).
        same_items : bool
            Also require ``index`` to hold exactly the items the model was saved with (same ids,
            same vectors; see :func:`check_model_index`). Off by default, so that a model can be
            loaded onto an index that grew since.

        Raises
        ------
        FileNotFoundError
            If the files are missing.
        IndexCorruptedError, FileFormatError
            Checksum mismatch, another kind of file, a newer format, malformed state.
        IndexMismatchError
            If the index's dim/space differ from the model's (a :class:`ShapeMismatchError`), or,
            with ``same_items``, its items do.
        """
        state = load_checkpoint(path, kind=_MODEL_KIND)
        if same_items:
            check_model_index(state, index, where=str(path))
        return cls._from_state(state, index, num_threads, str(path))

    @classmethod
    def _from_state(cls, state: dict[str, Any], index: HNSWIndex, num_threads: int, where: str) -> AttentionSearch:
        try:
            version = int(state["format_version"])
            if version > FORMAT_VERSION:
                raise IndexCorruptedError(f"{where}: model format {version} is newer than supported")
            if version < FORMAT_VERSION:
                raise IndexCorruptedError(f"{where}: model format {version} is from an older release; retrain")
            _check_dim_space(state["index"], index, where)
            model = SearchModel.from_state(state["model"])
            obj = cls.__new__(cls)
            obj.index = index
            obj.model = model
            obj.knobs = Knobs(**{k: int(v) for k, v in state["knobs"].items()})
            obj.num_threads = num_threads
            obj._lock = RWLock()
            obj._db = None
            saved = state["database"]
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, (ShapeMismatchError, IndexCorruptedError, ConfigError)):
                raise
            raise IndexCorruptedError(f"{where}: invalid model state ({exc})") from exc
        if saved is not None and model.fitted:
            obj._adopt(saved, where)
        return obj

    def _adopt(self, saved: dict[str, Any], where: str) -> None:
        """Use saved codes where the index still has the saved graph; else recompute them."""
        with thread_limits(self._num_threads):
            g = self.index.graph()
            db = DatabaseState.build(self.model, g, self.index.space)
            codes = dict(saved["codes"])
            try:
                phi = LatentCodes.phi_of_state(codes)
                same = saved["fingerprint"] == graph_fingerprint(g)
                if same:
                    if saved["latent_graph"] is not None:
                        codes["graph"] = _index_from_bytes(np.asarray(saved["latent_graph"]), where)
                    db.codes = LatentCodes.from_state(codes)
                    db.table_state = self.model.encoder.prepare_table(db.table.view)
                    if len(db.codes) != db.n:
                        raise IndexCorruptedError(f"{where}: saved codes do not match the graph")
                else:  # another graph (grown since): the fitted coordinates, Nystrom for the rest
                    fitted = int(codes["phi_fitted"])
                    if 0 < fitted <= db.n and phi.shape[0] >= fitted:
                        db.refresh_codes(self.model, phi=phi[:fitted], phi_fitted=fitted)
                    else:
                        db.refresh_codes(self.model)
            except (KeyError, TypeError, ValueError) as exc:
                if isinstance(exc, IndexCorruptedError):
                    raise
                raise IndexCorruptedError(f"{where}: invalid saved codes ({exc})") from exc
            self._db = db

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict[str, Any]:
        with self._lock.read():
            return {"tree": self._state_tree(), "index": self.index, "num_threads": self._num_threads}

    def __setstate__(self, state: dict[str, Any]) -> None:
        obj = self._from_state(state["tree"], state["index"], state["num_threads"], "<pickle>")
        self.__dict__.update(obj.__dict__)


# ---------------------------------------------------------------------- helpers
def items_checksum(graph: HNSWGraph) -> str:
    """SHA-256 over the live items of a snapshot: their ids (sorted) and their stored vectors.

    Unlike :func:`graph_fingerprint` it ignores the links, so two indexes built over the same
    ids and vectors with other parameters (``M``, seed, insertion order) have the same checksum.
    """
    import hashlib

    live = np.flatnonzero(~np.asarray(graph.deleted, dtype=bool))
    labels = np.asarray(graph.labels)[live]
    order = live[np.argsort(labels, kind="stable")]
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(np.asarray(graph.labels)[order], dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(np.asarray(graph.vectors)[order], dtype=np.float32).tobytes())
    return h.hexdigest()


def _index_meta(index: HNSWIndex) -> dict[str, Any]:
    g = index.graph()
    return {"dim": index.dim, "space": index.space, "count": int(len(g) - int(np.count_nonzero(g.deleted))),
            "items_sha256": items_checksum(g)}


def _check_dim_space(meta: Mapping[str, Any], index: HNSWIndex, where: str) -> None:
    if int(meta["dim"]) != index.dim or meta["space"] != index.space:
        raise IndexMismatchError(
            f"{where}: the model was trained for dim={meta['dim']} space={meta['space']!r}, "
            f"the index has dim={index.dim} space={index.space!r}")


def check_model_index(model: str | Path | Mapping[str, Any], index: HNSWIndex, *, where: str | None = None) -> None:
    """Check that a saved model belongs to ``index``: same dimension, space and items.

    Parameters
    ----------
    model : str, Path or mapping
        The stem of a model written by :meth:`AttentionSearch.save`, or its loaded state.
    index : HNSWIndex
        The index it is meant for.
    where : str, optional
        How to name the model in messages (default: the path).

    Raises
    ------
    IndexMismatchError
        If the dimension or space differ, if the index holds another number of live items, or
        other ids/vectors (:func:`items_checksum`), or if the model records neither the item
        checksum nor the graph fingerprint (saved by an older release) and so cannot be checked.
    FileNotFoundError, IndexCorruptedError
        If ``model`` is a path whose files are missing or invalid.
    """
    if isinstance(model, Mapping):
        state: Mapping[str, Any] = model
        where = where or "model"
    else:
        state = load_checkpoint(model, kind=_MODEL_KIND)
        where = where or str(model)
    try:
        meta = state["index"]
        _check_dim_space(meta, index, where)
        g = index.graph()
        count = int(len(g) - int(np.count_nonzero(g.deleted)))
        if "count" in meta and int(meta["count"]) != count:
            raise IndexMismatchError(
                f"{where}: the model was trained on an index of {int(meta['count'])} items, this index has {count}")
        if "items_sha256" in meta:
            if str(meta["items_sha256"]) != items_checksum(g):
                raise IndexMismatchError(
                    f"{where}: the model was trained on other items (ids or vectors differ) than this "
                    f"index's {count}")
            return
        saved = state.get("database")
        if saved is not None and "fingerprint" in saved:
            if saved["fingerprint"] != graph_fingerprint(g):
                raise IndexMismatchError(f"{where}: the model was saved with another graph than this index's")
            return
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, (ShapeMismatchError, IndexCorruptedError)):
            raise
        raise IndexCorruptedError(f"{where}: invalid model state ({exc})") from exc
    raise IndexMismatchError(f"{where}: the model records no item checksum (an older release saved it); "
                             "its items cannot be checked against the index")


def graph_fingerprint(graph: HNSWGraph) -> str:
    """SHA-256 over a snapshot's labels, levels, deleted flags, links and vectors."""
    import hashlib

    h = hashlib.sha256()
    for arr in (graph.labels, graph.levels, graph.deleted, graph.vectors):
        h.update(np.ascontiguousarray(arr).tobytes())
    for layer in range(graph.num_layers):
        indptr, idx = graph.layer(layer)
        h.update(np.ascontiguousarray(indptr).tobytes())
        h.update(np.ascontiguousarray(idx).tobytes())
    return h.hexdigest()


def _index_bytes(index: HNSWIndex) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "latent.rvh"
        index.save(p)
        return np.frombuffer(p.read_bytes(), dtype=np.uint8).copy()


def _index_from_bytes(data: np.ndarray, where: str) -> HNSWIndex:
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "latent.rvh"
        p.write_bytes(np.ascontiguousarray(data, dtype=np.uint8).tobytes())
        try:
            return HNSWIndex.load(p, num_threads=1)
        except OSError as exc:
            raise IndexCorruptedError(f"{where}: the saved latent graph is unreadable ({exc})") from exc


def row_labels(g: HNSWGraph, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(label of every graph row, known mask)``: ``labels`` indexed by id (array) or a mapping.

    Integer labels ``< 0`` mean unknown.
    """
    if isinstance(labels, Mapping):
        try:
            lab = np.array([labels[int(v)] for v in g.labels.tolist()])
        except KeyError as exc:
            raise InvalidInputError(f"labels has no entry for index id {exc.args[0]}") from exc
    else:
        arr = np.asarray(labels)
        if arr.ndim != 1 or arr.shape[0] <= int(g.labels.max(initial=0)):
            raise ShapeMismatchError(
                f"labels must be indexed by id (length > {int(g.labels.max(initial=0))}), got shape {arr.shape}")
        lab = arr[g.labels]
    known = (lab >= 0) if lab.dtype.kind in "iu" else np.ones(lab.shape, dtype=bool)
    return lab, np.asarray(known, dtype=bool)


def positive_lists(g: HNSWGraph, nq: int, labels: Any, query_labels: Any, positives: Any) -> list[np.ndarray]:
    """Relevant table rows of every training query, from labels or explicit positives.

    Labels ``< 0`` (integer labels) mean "unknown": such items are never positives.
    """
    if positives is not None:
        arr = np.asarray(positives)
        if arr.ndim != 2 or arr.shape[0] != nq:
            raise ShapeMismatchError(f"positives must be (n_queries={nq}, p), got shape {arr.shape}")
        out = []
        for row in arr:
            ids = as_ids(row[row >= 0], "positives", unique=False)
            out.append(np.unique(g.positions(ids)))
        return out
    if labels is None or query_labels is None:
        raise InvalidInputError("fit needs labels= and query_labels=, or positives=")
    lab, known = row_labels(g, labels)
    qlab = np.asarray(query_labels)
    if qlab.shape != (nq,):
        raise ShapeMismatchError(f"query_labels must have shape ({nq},), got {qlab.shape}")
    alive = ~g.deleted & known
    order = np.argsort(lab, kind="stable")
    sorted_lab = lab[order]
    out = []
    for value in qlab.tolist():
        if isinstance(value, (int, np.integer)) and value < 0:
            out.append(np.zeros(0, dtype=np.int64))
            continue
        lo, hi = np.searchsorted(sorted_lab, value, "left"), np.searchsorted(sorted_lab, value, "right")
        rows = order[lo:hi]
        out.append(np.sort(rows[alive[rows]]))
    return out


