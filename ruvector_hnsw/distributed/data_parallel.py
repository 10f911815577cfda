"""Synchronous data-parallel training of an :class:`~ruvector_hnsw.search.AttentionSearch` on Ray workers.

Each step of ``fit`` (the trainer, the sampling, validation and code refreshes stay on the driver):

1. the driver samples the pools of the **global** batch as local ``fit`` does (HNSW candidates, random
   positives and negatives, mined negatives: the same random draws);
2. the batch is cut into contiguous, 96-row-aligned slices, one per worker; each worker holds a replica of
   the model and the database state (table, row contexts) received once, gets the current parameters
   (one object-store put per step) and computes the loss and parameter gradients of its slice;
3. the driver averages them, weighted by each slice's number of queries that have a positive in their
   pool (the rows InfoNCE averages over), and steps the optimizer.

Mechanism table state and the stale codes that ``fresh_rows`` scores with are re-sent whenever the driver
refreshes its codes (every epoch).

Exactness. With one worker the slice is the global batch and the worker's result is returned unchanged:
``fit`` is bit-for-bit the local one (dropout included: the worker draws from the driver's generator and
hands its state back). With more workers and ``fresh_rows=None``, ``dropout=0`` the loss and gradients
are the global batch's up to float rounding (per-slice means recombined, the pool rows of each slice encoded
in other GEMM blocks), and the loss curve matches local training to ~1e-6 (tested to 1e-5). Two things
differ by design with several workers: ``fresh_rows`` picks the ``fresh_rows`` most important rows of each
*slice* (so up to ``workers * fresh_rows`` rows per step are encoded fresh instead of ``fresh_rows``), and
dropout masks of workers ``j > 0`` come from their own streams (seeded by step and worker), so neither is
the global batch's computation. The same holds for terms that are not means over queries: the
mechanisms' auxiliary losses (moe's load balance over a slice's rows) and the code terms of
``loss="local_contrastive"`` / ``regularizer`` (links among a slice's encoded rows) are computed per slice
and averaged. The loss parts (``history.train_terms``) are averaged with the same weights.
"""

from __future__ import annotations

import copy
import dataclasses
import pickle
import types
from typing import Any

import numpy as np

from ruvector_hnsw.attention import Context
from ruvector_hnsw.distributed import _remote
from ruvector_hnsw.distributed.cluster import resolve_workers, shard_bounds
from ruvector_hnsw.errors import ConfigError
from ruvector_hnsw.search import AttentionSearch
from ruvector_hnsw.search.pipeline import QueryBatch
from ruvector_hnsw.search.training import PhaseClock, SearchTrainingModel
from ruvector_hnsw.training.trainer import EpochState, TrainingHistory

__all__ = ["DataParallel", "GradWorker", "fit", "slice_pools", "slice_weights"]

BACKENDS = ("ray", "local")
_ITEM_FIELDS = ("dist", "layer", "edge_features", "hops", "degree", "node_ids")


def _slice_context(ctx: Context, a: int, b: int, B: int) -> Context:
    """Rows ``a:b`` of a batch context (table state dropped: the workers keep their own)."""
    updates: dict[str, Any] = {name: getattr(ctx, name)[a:b] for name in _ITEM_FIELDS
                               if getattr(ctx, name) is not None}
    updates["extra"] = {key: (v[a:b] if isinstance(v, np.ndarray) and v.ndim and v.shape[0] == B else v)
                        for key, v in ctx.extra.items()}
    updates["table_state"] = None
    return dataclasses.replace(ctx, **updates)


def slice_pools(pools: tuple[Any, ...], a: int, b: int) -> tuple[Any, ...]:
    """Queries ``a:b`` of the sampled pools ``(qb, (ids, mask, ctx), pool, posmask)`` of one batch."""
    qb, (ids_q, mask_q, ctx_q), pool, posmask = pools
    B = pool.shape[0]
    sub = QueryBatch(stored=qb.stored[a:b], standard=qb.standard[a:b], hnsw_rows=qb.hnsw_rows[a:b],
                     hnsw_dist=qb.hnsw_dist[a:b])
    return sub, (ids_q[a:b], mask_q[a:b], _slice_context(ctx_q, a, b, B)), pool[a:b], posmask[a:b]


def _replica(trainable: SearchTrainingModel) -> SearchTrainingModel:
    """What a worker needs of the trainable: model, table, row contexts, options (no training state)."""
    db = copy.copy(trainable.db)
    db.codes, db.table_state = None, None
    rep = copy.copy(trainable)
    rep.db, rep.step_runner, rep.clock = db, None, PhaseClock()
    rep.state = None  # type: ignore[assignment]  # the training queries stay on the driver
    rep.relevant = None  # type: ignore[assignment]  # sampling (which reads it) stays on the driver
    return rep


def _stale_view(z: np.ndarray | None) -> Any:
    """An object with ``z_values()`` (what :meth:`SearchTrainingModel.pool_loss` reads of the codes), or None."""
    return None if z is None else types.SimpleNamespace(z_values=lambda: z)


def slice_weights(active: list[int]) -> np.ndarray:
    """Weight of each slice's mean loss/gradient in the batch's: its share of the queries InfoNCE averages."""
    w = np.asarray(active, dtype=np.float64)
    return w / w.sum()


class GradWorker:
    """One data-parallel worker: a replica of the trainable; loss and gradients of pool slices."""

    def __init__(self, replica: SearchTrainingModel | bytes) -> None:
        # shipped pickled: arrays the object store hands out are read-only, the replica's parameters are written
        self.t = pickle.loads(replica) if isinstance(replica, bytes) else replica

    def set_database(self, table_state: Any, stale: np.ndarray | None) -> None:
        self.t.db.table_state = table_state
        self.t.db.codes = _stale_view(stale)

    def step(self, params: dict[str, np.ndarray], pools: tuple[Any, ...], state: EpochState,
             rng_state: dict[str, Any]) -> tuple[float, dict[str, np.ndarray], dict[str, Any], dict[str, float]]:
        for name, value in params.items():
            self.t.params[name][...] = value
        ctx = pools[1][2]
        ctx.table_state = self.t.db.table_state
        rng = np.random.default_rng()
        rng.bit_generator.state = rng_state
        loss, grads, parts = self.t.pool_loss(pools, dataclasses.replace(state, rng=rng))
        return float(loss), {k: np.asarray(v) for k, v in grads.items() if k in self.t.params}, \
            rng.bit_generator.state, dict(parts)


class DataParallel:
    """A ``step_runner`` for :meth:`AttentionSearch.fit`: each global batch's gradients on ``workers`` workers.

    Parameters
    ----------
    workers : int, optional
        Slices per batch (one actor each; default the cluster's CPUs). Slices are 96-row aligned, so a
        batch of ``B`` queries uses at most ``ceil(B / 96)`` workers.
    backend : {"ray", "local"}
        ``"local"``: the same slices computed one after the other on in-process replicas (no Ray).

    Use as a context manager (or call :meth:`close`) to end the actors; see the module docstring for
    what is exact.
    """

    def __init__(self, workers: int | None = None, *, backend: str = "ray") -> None:
        if backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.backend = backend
        self.workers = resolve_workers(workers) if backend == "ray" else int(workers or 1)
        self._pool: list[Any] = []
        self._owner: SearchTrainingModel | None = None
        self._codes_seen: Any = ()
        #: (step, active queries per slice) of every step run (for inspection)
        self.log: list[tuple[int, list[int]]] = []

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """End the worker actors."""
        if self.backend == "ray" and self._pool:
            _remote.kill(self._pool)
        self._pool, self._owner, self._codes_seen = [], None, ()

    def __enter__(self) -> DataParallel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, args: list[tuple[Any, ...]]) -> list[Any]:
        if self.backend == "local":
            return [getattr(w, method)(*a) for w, a in zip(self._pool, args, strict=True)]
        return _remote.get([getattr(w, method).remote(*a) for w, a in zip(self._pool, args, strict=True)])

    def _ensure(self, trainable: SearchTrainingModel) -> None:
        if self._owner is not trainable:
            self.close()
            blob = pickle.dumps(_replica(trainable), protocol=pickle.HIGHEST_PROTOCOL)
            if self.backend == "local":
                self._pool = [GradWorker(blob) for _ in range(self.workers)]
            else:
                ref = _remote.put(blob)
                actor = _remote.remote(GradWorker)
                self._pool = [actor.remote(ref) for _ in range(self.workers)]
            self._owner = trainable
        codes = trainable.db.codes
        if codes is not self._codes_seen:  # refreshed on the driver: send the new table state / stale codes
            stale = codes.z_values() if (trainable.fresh_rows is not None and codes is not None) else None
            payload: Any = (trainable.db.table_state, stale)
            if self.backend == "ray":
                payload = (_remote.put(payload[0]), None if stale is None else _remote.put(stale))
            self._call("set_database", [payload] * len(self._pool))
            self._codes_seen = codes

    # ------------------------------------------------------------------ one step
    def __call__(self, trainable: SearchTrainingModel, pools: tuple[Any, ...], state: EpochState
                 ) -> tuple[float, dict[str, np.ndarray], dict[str, float]]:
        self._ensure(trainable)
        posmask = pools[3]
        bounds = shard_bounds(posmask.shape[0], len(self._pool))
        active = [int(np.count_nonzero(posmask[a:b].any(axis=1))) for a, b in bounds]
        jobs = [(i, a, b) for i, (a, b) in enumerate(bounds) if active[i] > 0]
        self.log.append((int(state.step), active))
        with trainable.clock.phase("data_parallel"):
            params: Any = {k: np.array(v, copy=True) for k, v in trainable.params.items()}
            if self.backend == "ray":
                params = _remote.put(params)
            light = dataclasses.replace(state, rng=None)  # type: ignore[arg-type]  # each worker gets its own
            args = []
            for j, (i, a, b) in enumerate(jobs):
                # the first slice draws from the driver's generator (handed back below); others from their own
                rng_state = state.rng.bit_generator.state if j == 0 else \
                    np.random.default_rng((int(state.step), i, 0x5EED)).bit_generator.state
                args.append((params, slice_pools(pools, a, b), light, rng_state))
            pool = self._pool
            if self.backend == "local":
                results = [pool[i].step(*arg) for (i, _, _), arg in zip(jobs, args, strict=True)]
            else:
                results = _remote.get([pool[i].step.remote(*arg) for (i, _, _), arg in zip(jobs, args, strict=True)])
        state.rng.bit_generator.state = results[0][2]
        if len(results) == 1:
            return results[0][0], results[0][1], results[0][3]
        weights = slice_weights([active[i] for i, _, _ in jobs])
        loss = float(sum(w * r[0] for w, r in zip(weights, results, strict=True)))
        parts = {k: float(sum(w * r[3].get(k, 0.0) for w, r in zip(weights, results, strict=True)))
                 for k in dict.fromkeys(k for r in results for k in r[3])}
        grads: dict[str, np.ndarray] = {}
        for name, ref in trainable.params.items():
            acc = np.zeros(ref.shape, dtype=np.float64)
            for w, r in zip(weights, results, strict=True):
                if name in r[1]:
                    acc += w * r[1][name]
            grads[name] = acc.astype(ref.dtype)
        return loss, grads, parts


def fit(searcher: AttentionSearch, train_queries: Any, labels: Any = None, query_labels: Any = None, *,
        workers: int | None = None, backend: str = "ray", **fit_options: Any) -> TrainingHistory:
    """``searcher.fit(...)`` with each step's gradients computed data-parallel on ``workers`` workers.

    ``fit_options`` are those of :meth:`AttentionSearch.fit`; the actors end when the fit does.
    """
    with DataParallel(workers, backend=backend) as runner:
        return searcher.fit(train_queries, labels, query_labels, step_runner=runner, **fit_options)
