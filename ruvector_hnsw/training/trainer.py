"""A generic, deterministic, resumable mini-batch trainer over numpy parameter dicts.

Model protocol
--------------
The trainer drives any object that has

``params: dict[str, numpy.ndarray]``
    The trainable arrays, updated **in place** by the optimizer.
``loss_and_grads(batch: Batch, state: EpochState) -> tuple[float, Mapping[str, numpy.ndarray]]``
    Loss of one mini-batch and its gradients, one per parameter name (extra keys, such
    as input gradients, are ignored; missing names are not updated). It may return a
    third item, a mapping of named loss parts (e.g. ``{"infonce": ..., "kl": ...}``): their
    per-epoch means (weighted by batch rows) are recorded in ``history.train_terms``. Use ``state.rng``
    for any randomness (negative sampling, dropout) so that runs are reproducible and
    resumable, and ``state.temperature`` / ``state.num_negatives`` / ``state.extra`` for
    the curriculum.

and optionally any of these hooks (looked up by name, all may be omitted):

``on_epoch_start(state)`` / ``on_epoch_end(state)``
    E.g. refresh a cache of database representations before validation.
``on_params_loaded()``
    Called after the trainer wrote parameters into ``params`` (best restored, resume).
``get_extra_state() -> dict`` / ``set_extra_state(dict)``
    Extra model state saved in checkpoints (e.g. a miner's ``state_dict()``): a tree of
    JSON scalars and numpy arrays (see :mod:`~ruvector_hnsw.training.checkpoint`).
``fisher_vector_product(batch, state) -> fvp``
    Needed only by an optimizer that declares ``wants_fvp`` (``NaturalGradient(mode="exact")``):
    called after ``loss_and_grads`` on the same batch, it returns ``fvp(v) -> F v`` (dicts of
    arrays shaped like the parameters), handed to ``optimizer.step(grads, lr=lr, fvp=fvp)``.

Validation
----------
``validate(model) -> float | Mapping[str, float]`` is called after every epoch (and once
before training unless ``validate_initial=False``). A mapping is logged whole and
``monitor`` picks the number that drives early stopping and best-checkpoint selection
(``mode="max"``: higher is better, as for mAP@R). :func:`retrieval_validator` builds one
from a search function and labelled queries (mAP@R via :mod:`ruvector_hnsw.eval`).

Determinism and resuming
------------------------
All randomness comes from ``seed``: two generators (batch shuffling, and ``state.rng``
for the model) are spawned from it. At the end of every epoch the trainer writes
``<checkpoint_dir>/last.{npz,json}`` (parameters, optimizer state, both generator states,
epoch and step counters, early-stopping state, best parameters, history, model extra
state) and, when the monitored metric improves, ``<checkpoint_dir>/best.{npz,json}``.
``fit(data, resume=True)`` (or a path) continues from ``last`` exactly as the
uninterrupted run would have (same batches, same negatives, same parameters bit for bit),
given the same data, model and configuration.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from ruvector_hnsw.errors import (
    ConfigError,
    EmptyInputError,
    FileFormatError,
    InvalidInputError,
    NonFiniteError,
    ShapeMismatchError,
)
from ruvector_hnsw.ranking import labelled_metrics
from ruvector_hnsw.training.checkpoint import load_checkpoint, save_checkpoint
from ruvector_hnsw.training.optim import Adam, Optimizer
from ruvector_hnsw.training.schedules import Curriculum, Schedule

__all__ = [
    "Batch",
    "EpochState",
    "TrainableModel",
    "Trainer",
    "TrainingHistory",
    "retrieval_validator",
]

LAST = "last"
BEST = "best"
_NO_STAGE = -1


@dataclass(frozen=True)
class Batch:
    """One mini-batch: the row indices into the training set and every training array sliced by them.

    ``batch["queries"]`` is ``data["queries"][batch.indices]``; ``len(batch)`` is the batch size.
    """

    indices: np.ndarray
    data: Mapping[str, np.ndarray]

    def __getitem__(self, key: str) -> np.ndarray:
        return self.data[key]

    def __len__(self) -> int:
        return int(self.indices.shape[0])


@dataclass
class EpochState:
    """What the model may read during a step (the trainer updates it before each call).

    Attributes
    ----------
    epoch : int
        0-based epoch.
    step : int
        Global optimizer step about to be taken (0-based).
    lr : float
        Learning rate of this step.
    temperature, num_negatives : float or None, int or None
        From the curriculum stage (None without a curriculum).
    stage : int
        Curriculum stage index (-1 without a curriculum).
    extra : Mapping[str, Any]
        The stage's free-form extras.
    rng : numpy.random.Generator
        Trainer-owned generator for the model's randomness (checkpointed).
    """

    epoch: int
    step: int
    lr: float
    rng: np.random.Generator
    temperature: float | None = None
    num_negatives: int | None = None
    stage: int = _NO_STAGE
    extra: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class TrainableModel(Protocol):
    """See the module docstring."""

    params: dict[str, np.ndarray]

    def loss_and_grads(self, batch: Batch, state: EpochState) -> tuple[Any, ...]: ...


@dataclass
class TrainingHistory:
    """Per-epoch record of a run (lists aligned by epoch) and the outcome.

    ``initial_metric`` is the validation value before any training (None if not measured);
    ``best_epoch = -1`` means the initial parameters were never beaten.
    """

    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    #: per epoch: mean of each named loss part the model reports (``{}`` when it reports none),
    #: e.g. ``infonce`` and the mechanisms' auxiliary losses with their weights
    train_terms: list[dict[str, float]] = field(default_factory=list)
    val_metric: list[float | None] = field(default_factory=list)
    val_metrics: list[dict[str, float]] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    stage: list[int] = field(default_factory=list)
    epoch_time_s: list[float] = field(default_factory=list)
    val_time_s: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    #: wall seconds per phase of the whole run, when the model reports them (e.g. mining, forward,
    #: backward, validation, code refresh)
    time_split: dict[str, float] = field(default_factory=dict)
    initial_metric: float | None = None
    best_epoch: int | None = None
    best_metric: float | None = None
    stopped_early: bool = False
    resumed_from_epoch: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainingHistory:
        """Inverse of :meth:`to_dict` (unknown keys ignored)."""
        names = set(cls.__dataclass_fields__)
        return cls(**{k: copy.deepcopy(v) for k, v in d.items() if k in names})


def _unpack_step(result: Any) -> tuple[float, Mapping[str, np.ndarray], Mapping[str, Any]]:
    """``(loss, grads)`` or ``(loss, grads, parts)`` from ``loss_and_grads``, checked."""
    if not isinstance(result, tuple) or len(result) not in (2, 3):
        raise InvalidInputError("loss_and_grads(): expected (loss, grads) or (loss, grads, parts)")
    loss = _to_float(result[0], "loss_and_grads() loss")
    parts = result[2] if len(result) == 3 else {}
    if not isinstance(parts, Mapping):
        raise InvalidInputError(f"loss_and_grads(): the loss parts must be a mapping, got {type(parts).__name__}")
    return loss, result[1], parts


def _to_float(value: Any, what: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{what}: expected a number, got {value!r}") from exc
    return v


def _progress_bar(enabled: bool, total: int, initial: int) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # optional dependency: silently no bar
        return None
    return tqdm(total=total, initial=initial, unit="batch", dynamic_ncols=True, leave=True)


class Trainer:
    """Mini-batch training loop with validation, early stopping, best/last checkpoints and resume.

    Parameters
    ----------
    model : TrainableModel
        See the module docstring for the protocol.
    optimizer : Optimizer, optional
        Built over ``model.params``; default ``Adam(model.params, lr=1e-3)``.
    epochs : int, optional
        Number of epochs; default the curriculum's total, else 10.
    batch_size : int
        Rows per mini-batch.
    schedule : callable, optional
        ``schedule(step) -> lr``, applied before every step; default keeps ``optimizer.lr``.
    curriculum : Curriculum, optional
        Per-epoch temperature / number of negatives handed to the model.
    validate : callable, optional
        ``validate(model) -> float | Mapping[str, float]``.
    monitor : str
        Key of the monitored value when ``validate`` returns a mapping.
    mode : {"max", "min"}
        Whether the monitored value should go up (mAP@R) or down.
    patience : int, optional
        Stop after this many epochs without an improvement greater than ``min_delta``.
    min_delta : float
        Minimal improvement that resets the patience counter.
    validate_initial : bool
        Validate before training; the initial parameters then compete for "best".
    validate_every : int
        Validate every this many epochs (and after the last one); ``patience`` counts
        validations, not epochs. Skipped epochs log ``None``.
    restore_best : bool
        At the end, write the best parameters back into ``model.params`` (in place).
    checkpoint_dir : str or PathLike, optional
        Directory for ``last``/``best`` checkpoints (created if missing).
    seed : int
        Root seed of all randomness.
    shuffle, drop_last : bool
        Shuffle rows every epoch; drop a last incomplete batch.
    progress : bool
        Show a tqdm progress bar when tqdm is installed.
    callbacks : list of callables, optional
        ``callback(trainer, history)`` after every epoch (after checkpointing); raising
        ``StopIteration`` ends training gracefully.
    """

    def __init__(
        self,
        model: TrainableModel,
        optimizer: Optimizer | None = None,
        *,
        epochs: int | None = None,
        batch_size: int = 256,
        schedule: Schedule | Callable[[int], float] | None = None,
        curriculum: Curriculum | None = None,
        validate: Callable[[Any], float | Mapping[str, float]] | None = None,
        monitor: str = "map_at_r",
        mode: Literal["max", "min"] = "max",
        patience: int | None = None,
        min_delta: float = 0.0,
        validate_initial: bool = True,
        validate_every: int = 1,
        restore_best: bool = True,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        progress: bool = False,
        callbacks: list[Callable[[Trainer, TrainingHistory], None]] | None = None,
    ) -> None:
        params = getattr(model, "params", None)
        if not isinstance(params, dict) or not callable(getattr(model, "loss_and_grads", None)):
            raise ConfigError("model: needs a `params` dict and a `loss_and_grads(batch, state)` method")
        self.model = model
        self.optimizer = optimizer if optimizer is not None else Adam(params, lr=1e-3)
        if self.optimizer.params is not params:
            raise ConfigError("optimizer: must be built over the model's own params dict")
        self._wants_fvp = bool(getattr(self.optimizer, "wants_fvp", False))
        if self._wants_fvp and not callable(getattr(model, "fisher_vector_product", None)):
            raise ConfigError(
                f"optimizer: {type(self.optimizer).__name__} needs Fisher-vector products; the model has no "
                "`fisher_vector_product(batch, state)` method (use NaturalGradient(mode='diagonal'))"
            )
        if curriculum is not None and not isinstance(curriculum, Curriculum):
            raise ConfigError("curriculum: expected a Curriculum")
        self.curriculum = curriculum
        if epochs is None:
            epochs = curriculum.total_epochs if curriculum is not None else 10
        if isinstance(epochs, bool) or int(epochs) != epochs or epochs < 1:
            raise ConfigError(f"epochs: expected an int >= 1, got {epochs!r}")
        self.epochs = int(epochs)
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise ConfigError(f"batch_size: expected an int >= 1, got {batch_size!r}")
        self.batch_size = int(batch_size)
        if schedule is not None and not callable(schedule):
            raise ConfigError("schedule: expected a callable step -> lr")
        self.schedule = schedule
        if mode not in ("max", "min"):
            raise ConfigError(f"mode: expected 'max' or 'min', got {mode!r}")
        self.mode = mode
        self.monitor = monitor
        self.validate = validate
        if patience is not None:
            if validate is None:
                raise ConfigError("patience: early stopping needs a validate callable")
            if isinstance(patience, bool) or int(patience) != patience or patience < 1:
                raise ConfigError(f"patience: expected an int >= 1, got {patience!r}")
        self.patience = None if patience is None else int(patience)
        if not math.isfinite(min_delta) or min_delta < 0:
            raise ConfigError(f"min_delta: must be finite and >= 0, got {min_delta!r}")
        self.min_delta = float(min_delta)
        self.validate_initial = bool(validate_initial)
        if isinstance(validate_every, bool) or int(validate_every) != validate_every or validate_every < 1:
            raise ConfigError(f"validate_every: expected an int >= 1, got {validate_every!r}")
        self.validate_every = int(validate_every)
        self.restore_best = bool(restore_best)
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        if isinstance(seed, bool) or int(seed) != seed or seed < 0:
            raise ConfigError(f"seed: expected an int >= 0, got {seed!r}")
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.progress = bool(progress)
        self.callbacks = list(callbacks or [])
        self._reset_run_state()

    # ------------------------------------------------------------------ state

    def _reset_run_state(self) -> None:
        shuffle_seq, model_seq = np.random.SeedSequence(self.seed).spawn(2)
        self.shuffle_rng = np.random.default_rng(shuffle_seq)
        self.model_rng = np.random.default_rng(model_seq)
        self.epoch = 0  # epochs completed
        self.step = 0  # optimizer steps taken
        self.bad_epochs = 0
        self.best_metric: float | None = None
        self.best_epoch: int | None = None
        self.best_params: dict[str, np.ndarray] | None = None
        self.history = TrainingHistory()

    def _improved(self, value: float) -> bool:
        if self.best_metric is None or not math.isfinite(self.best_metric):
            return math.isfinite(value)
        if self.mode == "max":
            return value > self.best_metric + self.min_delta
        return value < self.best_metric - self.min_delta

    def _snapshot_params(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.model.params.items()}

    def _write_params(self, values: Mapping[str, np.ndarray]) -> None:
        params = self.model.params
        if set(values) != set(params):
            raise ShapeMismatchError(
                f"params: checkpoint names {sorted(values)} differ from the model's {sorted(params)}"
            )
        for k, v in values.items():
            if np.shape(v) != params[k].shape:
                raise ShapeMismatchError(f"params[{k!r}]: checkpoint shape {np.shape(v)} != {params[k].shape}")
        for k, v in values.items():
            params[k][...] = v
        hook = getattr(self.model, "on_params_loaded", None)
        if callable(hook):
            hook()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: see the module docstring."""
        extra_fn = getattr(self.model, "get_extra_state", None)
        return {
            "epoch": self.epoch,
            "step": self.step,
            "params": self._snapshot_params(),
            "optimizer": self.optimizer.state_dict(),
            "rng": {"shuffle": self.shuffle_rng.bit_generator.state, "model": self.model_rng.bit_generator.state},
            "early_stopping": {
                "bad_epochs": self.bad_epochs,
                "best_metric": self.best_metric,
                "best_epoch": self.best_epoch,
            },
            "best_params": self.best_params if self.best_params is not None else {},
            "has_best_params": self.best_params is not None,
            "history": self.history.to_dict(),
            "model_extra": extra_fn() if callable(extra_fn) else {},
            "config": {
                "seed": self.seed,
                "batch_size": self.batch_size,
                "shuffle": self.shuffle,
                "drop_last": self.drop_last,
                "mode": self.mode,
                "monitor": self.monitor,
            },
        }

    def load_state_dict(self, state: Mapping[str, Any], *, n_train: int | None = None) -> None:
        """Restore a :meth:`state_dict` (validated before anything changes)."""
        try:
            cfg = dict(state["config"])
            params = dict(state["params"])
            rng = dict(state["rng"])
            es = dict(state["early_stopping"])
            epoch, step = int(state["epoch"]), int(state["step"])
        except (KeyError, TypeError, ValueError) as exc:
            raise FileFormatError(f"checkpoint: not a trainer state ({exc})") from exc
        for key in ("batch_size", "shuffle", "drop_last", "seed"):
            if cfg.get(key) != getattr(self, key):
                raise ConfigError(
                    f"{key}: checkpoint was written with {key}={cfg.get(key)!r}, this trainer has "
                    f"{getattr(self, key)!r}; resuming would not continue the same run"
                )
        if n_train is not None and state.get("n_train") not in (None, n_train):
            raise ShapeMismatchError(f"data: checkpoint was trained on {state.get('n_train')} rows, got {n_train}")
        # validate params against the model before mutating anything
        model_params = self.model.params
        if set(params) != set(model_params) or any(np.shape(params[k]) != model_params[k].shape for k in params):
            raise ShapeMismatchError("params: checkpoint parameters do not match the model's names/shapes")
        probe = copy.deepcopy(self.optimizer.state_dict())
        self.optimizer.load_state_dict(state["optimizer"])  # validates, raises before mutating
        try:
            self._write_params(params)
        except Exception:
            self.optimizer.load_state_dict(probe)
            raise
        self.shuffle_rng.bit_generator.state = dict(rng["shuffle"])
        self.model_rng.bit_generator.state = dict(rng["model"])
        self.epoch, self.step = epoch, step
        self.bad_epochs = int(es.get("bad_epochs", 0))
        self.best_metric = None if es.get("best_metric") is None else float(es["best_metric"])
        self.best_epoch = None if es.get("best_epoch") is None else int(es["best_epoch"])
        self.best_params = (
            {k: np.array(v) for k, v in dict(state["best_params"]).items()} if state.get("has_best_params") else None
        )
        self.history = TrainingHistory.from_dict(state.get("history", {}))
        self.history.resumed_from_epoch = epoch
        extra_set = getattr(self.model, "set_extra_state", None)
        if callable(extra_set) and state.get("model_extra"):
            extra_set(state["model_extra"])

    def save(self, path: str | os.PathLike[str], *, n_train: int | None = None) -> None:
        """Write the full trainer state (resumable checkpoint) to ``path`` (npz + json stem)."""
        st = self.state_dict()
        st["n_train"] = n_train
        save_checkpoint(path, st, kind="trainer_last")

    # ------------------------------------------------------------------ data

    @staticmethod
    def _as_data(data: Any) -> tuple[dict[str, np.ndarray], int]:
        if isinstance(data, Mapping):
            arrays = {str(k): np.asarray(v) for k, v in data.items()}
        else:
            arrays = {"data": np.asarray(data)}
        if not arrays:
            raise EmptyInputError("data: no arrays given")
        lengths = {k: (v.shape[0] if v.ndim else -1) for k, v in arrays.items()}
        n = next(iter(lengths.values()))
        if any(v != n for v in lengths.values()) or n < 0:
            raise ShapeMismatchError(f"data: every array needs the same number of rows, got {lengths}")
        if n == 0:
            raise EmptyInputError("data: the training set is empty")
        return arrays, n

    def _batches(self, n: int) -> list[np.ndarray]:
        order = self.shuffle_rng.permutation(n) if self.shuffle else np.arange(n)
        chunks = [order[i : i + self.batch_size] for i in range(0, n, self.batch_size)]
        if self.drop_last and len(chunks) > 1 and len(chunks[-1]) < self.batch_size:
            chunks.pop()
        return chunks

    def _n_batches(self, n: int) -> int:
        full, rest = divmod(n, self.batch_size)
        return full + (1 if rest and (not self.drop_last or full == 0) else 0)

    # ------------------------------------------------------------------ validation

    def _run_validation(self) -> tuple[float | None, dict[str, float], float]:
        if self.validate is None:
            return None, {}, 0.0
        t0 = time.perf_counter()
        result = self.validate(self.model)
        elapsed = time.perf_counter() - t0
        if isinstance(result, Mapping):
            metrics = {str(k): _to_float(v, f"validate()[{k!r}]") for k, v in result.items()}
            if self.monitor not in metrics:
                raise InvalidInputError(f"monitor: validate() returned {sorted(metrics)}, no {self.monitor!r}")
            value = metrics[self.monitor]
        else:
            value = _to_float(result, "validate()")
            metrics = {self.monitor: value}
        return value, metrics, elapsed

    # ------------------------------------------------------------------ main loop

    def _epoch_state(self, epoch: int) -> EpochState:
        st = EpochState(epoch=epoch, step=self.step, lr=self.optimizer.lr, rng=self.model_rng)
        if self.curriculum is not None:
            idx = self.curriculum.stage_index(epoch)
            stage = self.curriculum.stages[idx]
            st.stage = idx
            st.temperature = float(stage.temperature)
            st.num_negatives = int(stage.num_negatives)
            st.extra = dict(stage.extra)
        return st

    def fit(self, data: Any, *, resume: bool | str | os.PathLike[str] = False) -> TrainingHistory:
        """Train for ``epochs`` epochs (minus those already done when resuming).

        Parameters
        ----------
        data : Mapping[str, array_like] or array_like
            Training arrays with a common first dimension; each batch slices all of them
            (a bare array is available as ``batch["data"]``).
        resume : bool or path
            ``True``: continue from ``<checkpoint_dir>/last`` if it exists (start fresh
            otherwise); a path: continue from that checkpoint stem (must exist);
            ``False``: start fresh.

        Returns
        -------
        TrainingHistory
            Also kept as ``self.history``.
        """
        arrays, n = self._as_data(data)
        self._reset_run_state()
        if self.checkpoint_dir is not None:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        resumed = False
        if resume:
            if resume is True:
                if self.checkpoint_dir is None:
                    raise ConfigError("resume=True: needs checkpoint_dir (or pass a checkpoint path)")
                stem: Path | None = self.checkpoint_dir / LAST
                if not (self.checkpoint_dir / f"{LAST}.json").exists():
                    stem = None
            else:
                stem = Path(resume)
            if stem is not None:
                self.load_state_dict(load_checkpoint(stem, kind="trainer_last"), n_train=n)
                resumed = True

        if not resumed and self.validate is not None and self.validate_initial:
            value, _, _ = self._run_validation()
            self.history.initial_metric = value
            if value is not None and math.isfinite(value):
                self.best_metric, self.best_epoch = value, -1
                self.best_params = self._snapshot_params()

        n_batches = self._n_batches(n)
        bar = _progress_bar(self.progress, self.epochs * n_batches, min(self.epoch, self.epochs) * n_batches)
        try:
            while self.epoch < self.epochs and not self.history.stopped_early:
                if not self._train_one_epoch(arrays, n, bar):
                    break
        finally:
            if bar is not None:
                bar.close()

        if self.best_epoch is None or self.best_metric is None:
            self.best_epoch = self.epoch - 1 if self.epoch > 0 else None
        self.history.best_epoch = self.best_epoch
        self.history.best_metric = self.best_metric
        if self.restore_best and self.best_params is not None:
            self._write_params(self.best_params)
        return self.history

    def _train_one_epoch(self, arrays: Mapping[str, np.ndarray], n: int, bar: Any) -> bool:
        """One epoch, validation, checkpoints, callbacks; returns False to stop."""
        epoch = self.epoch
        state = self._epoch_state(epoch)
        hook = getattr(self.model, "on_epoch_start", None)
        if callable(hook):
            hook(state)
        t0 = time.perf_counter()
        loss_sum, rows = 0.0, 0
        term_sums: dict[str, float] = {}
        for idx in self._batches(n):
            lr = float(self.schedule(self.step)) if self.schedule is not None else self.optimizer.lr
            state.step, state.lr = self.step, lr
            batch = Batch(indices=idx, data={k: v[idx] for k, v in arrays.items()})
            result = self.model.loss_and_grads(batch, state)
            loss, grads, terms = _unpack_step(result)
            for name, value in terms.items():
                term_sums[name] = term_sums.get(name, 0.0) + _to_float(value, f"loss part {name!r}") * len(idx)
            if not math.isfinite(loss):
                raise NonFiniteError(f"loss: non-finite value {loss} at epoch {epoch}, step {self.step}")
            if self._wants_fvp:
                fvp = self.model.fisher_vector_product(batch, state)  # type: ignore[attr-defined]
                self.optimizer.step(grads, lr=lr, fvp=fvp)  # type: ignore[call-arg]
            else:
                self.optimizer.step(grads, lr=lr)
            self.step += 1
            loss_sum += loss * len(idx)
            rows += len(idx)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss:.4f}", refresh=False)
        train_time = time.perf_counter() - t0
        hook = getattr(self.model, "on_epoch_end", None)
        if callable(hook):
            hook(state)
        due = (epoch + 1) % self.validate_every == 0 or epoch + 1 == self.epochs
        value, metrics, val_time = self._run_validation() if due else (None, {}, 0.0)
        self.epoch += 1

        h = self.history
        h.epoch.append(epoch)
        h.train_loss.append(loss_sum / max(rows, 1))
        h.train_terms.append({k: v / max(rows, 1) for k, v in term_sums.items()})
        h.val_metric.append(value)
        h.val_metrics.append(metrics)
        h.lr.append(state.lr)
        h.stage.append(state.stage)
        h.epoch_time_s.append(train_time)
        h.val_time_s.append(val_time)
        h.steps.append(self.step)

        improved = False
        if value is not None:
            if self._improved(value):
                improved = True
                self.best_metric, self.best_epoch = value, epoch
                self.best_params = self._snapshot_params()
                self.bad_epochs = 0
            else:
                self.bad_epochs += 1
                if self.patience is not None and self.bad_epochs >= self.patience:
                    h.stopped_early = True
        elif self.validate is None:  # no validation at all: the latest parameters are the best we know
            self.best_epoch = epoch
            self.best_params = self._snapshot_params()
            improved = True
        h.best_epoch, h.best_metric = self.best_epoch, self.best_metric
        if bar is not None:
            bar.set_postfix(
                epoch=epoch + 1, loss=f"{h.train_loss[-1]:.4f}", val="-" if value is None else f"{value:.4f}",
                epoch_s=f"{train_time + val_time:.1f}",
            )

        if self.checkpoint_dir is not None:
            if improved:
                self._save_best(epoch, value)
            self.save(self.checkpoint_dir / LAST, n_train=n)
        for cb in self.callbacks:
            try:
                cb(self, h)
            except StopIteration:
                h.stopped_early = True
        return not h.stopped_early

    def _save_best(self, epoch: int, value: float | None) -> None:
        assert self.checkpoint_dir is not None
        extra_fn = getattr(self.model, "get_extra_state", None)
        save_checkpoint(
            self.checkpoint_dir / BEST,
            {
                "params": self._snapshot_params(),
                "epoch": epoch,
                "metric": value,
                "monitor": self.monitor,
                "model_extra": extra_fn() if callable(extra_fn) else {},
            },
            kind="trainer_best",
        )

    @staticmethod
    def load_best(path: str | os.PathLike[str]) -> dict[str, Any]:
        """Read a ``best`` checkpoint (stem or directory): ``{"params", "epoch", "metric", ...}``."""
        p = Path(path)
        if p.is_dir():
            p = p / BEST
        return load_checkpoint(p, kind="trainer_best")


def retrieval_validator(
    search: Callable[[Any, np.ndarray, int], np.ndarray],
    queries: Any,
    query_labels: Any,
    labels: Any,
    *,
    k: int | None = None,
    cap: int = 100,
) -> Callable[[Any], dict[str, float]]:
    """Build ``validate(model)`` reporting mAP@R (and mAP@cap, P@1) of ``search``.

    Parameters
    ----------
    search : callable
        ``search(model, queries, k) -> ids (nq, k)`` (``-1`` padded), best first.
    queries : array_like, shape (nq, d)
        Validation queries (disjoint from the training queries).
    query_labels : array_like, shape (nq,)
    labels : array_like
        Label of every database id (indexed by id).
    k : int, optional
        Result list length; default the size of the largest class (so mAP@R is exact).
    cap : int
        ``R`` cap of the second figure (``map_at_{cap}``).

    Returns
    -------
    callable
        ``validate(model) -> {"map_at_r": ..., f"map_at_{cap}": ..., "p_at_1": ...}``; use
        ``monitor="map_at_r"`` (the default) or ``f"map_at_{cap}"`` in the trainer.
    """
    q = np.asarray(queries)
    ql = np.asarray(query_labels)
    lab = np.asarray(labels)
    if ql.shape != (q.shape[0],):
        raise ShapeMismatchError(f"query_labels: expected shape ({q.shape[0]},), got {ql.shape}")
    if k is None:
        _, counts = np.unique(lab, return_counts=True)
        k = int(counts.max()) if counts.size else 1
    k_eff = int(k)

    def validate(model: Any) -> dict[str, float]:
        ids = np.asarray(search(model, q, k_eff))
        out = labelled_metrics(ids, lab, ql, k=1, cap=cap)
        return {
            "map_at_r": float(out["map_at_r"]),
            f"map_at_{cap}": float(out[f"map_at_{cap}"]),
            "p_at_1": float(out["p_at_1"]),
        }

    return validate
