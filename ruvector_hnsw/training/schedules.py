"""Learning-rate schedules (lr as a function of the global step) and a training curriculum.

A schedule is any callable ``schedule(step: int) -> float`` (``step`` counts optimizer
steps from 0). The :class:`~ruvector_hnsw.training.trainer.Trainer` sets
``optimizer.lr = schedule(step)`` before every step.

A :class:`Curriculum` is a list of stages, each lasting some epochs with its own softmax
temperature and number of negatives (plus free-form extras); the trainer asks it for the
stage of every epoch and hands the values to the model in the epoch state.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ruvector_hnsw.errors import ConfigError
from ruvector_hnsw.training._validate import check_positive

__all__ = [
    "ConstantSchedule",
    "Curriculum",
    "CurriculumStage",
    "Schedule",
    "StepSchedule",
    "WarmupCosineSchedule",
]


@runtime_checkable
class Schedule(Protocol):
    """``schedule(step) -> lr`` for ``step >= 0``."""

    def __call__(self, step: int) -> float: ...


def _check_step(step: int) -> int:
    if isinstance(step, bool) or int(step) != step or step < 0:
        raise ConfigError(f"step: expected an int >= 0, got {step!r}")
    return int(step)


@dataclass(frozen=True)
class ConstantSchedule:
    """``lr`` at every step."""

    lr: float

    def __post_init__(self) -> None:
        check_positive(self.lr, "lr")

    def __call__(self, step: int) -> float:
        """Learning rate at ``step``."""
        _check_step(step)
        return float(self.lr)


@dataclass(frozen=True)
class StepSchedule:
    """``lr * gamma ** (step // step_size)`` (step decay)."""

    lr: float
    step_size: int
    gamma: float = 0.1

    def __post_init__(self) -> None:
        check_positive(self.lr, "lr")
        if int(self.step_size) < 1:
            raise ConfigError(f"step_size: must be >= 1, got {self.step_size!r}")
        check_positive(self.gamma, "gamma")

    def __call__(self, step: int) -> float:
        """Learning rate at ``step``."""
        return float(self.lr * self.gamma ** (_check_step(step) // int(self.step_size)))


@dataclass(frozen=True)
class WarmupCosineSchedule:
    """Linear warm-up then cosine decay to ``min_lr``.

    - ``step < warmup_steps``: ``lr * (step + 1) / warmup_steps`` (the first step is not
      wasted at lr 0; the last warm-up step reaches ``lr``);
    - ``warmup_steps <= step <= total_steps``: with
      ``progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)``,
      ``min_lr + (lr - min_lr) * (1 + cos(pi * progress)) / 2``;
    - ``step > total_steps``: ``min_lr``.
    """

    lr: float
    total_steps: int
    warmup_steps: int = 0
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        check_positive(self.lr, "lr")
        check_positive(self.min_lr, "min_lr", allow_zero=True)
        if self.min_lr > self.lr:
            raise ConfigError(f"min_lr: {self.min_lr} exceeds lr {self.lr}")
        if int(self.total_steps) < 1:
            raise ConfigError(f"total_steps: must be >= 1, got {self.total_steps!r}")
        if not 0 <= int(self.warmup_steps) <= int(self.total_steps):
            raise ConfigError(f"warmup_steps: must lie in [0, total_steps], got {self.warmup_steps!r}")

    def __call__(self, step: int) -> float:
        """Learning rate at ``step``."""
        s = _check_step(step)
        w, total = int(self.warmup_steps), int(self.total_steps)
        if s < w:
            return float(self.lr * (s + 1) / w)
        progress = min(1.0, (s - w) / max(1, total - w))
        return float(self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress)))


@dataclass(frozen=True)
class CurriculumStage:
    """One stage: lasts ``epochs`` epochs with this ``temperature`` and ``num_negatives``.

    ``extra`` carries any further per-stage settings (e.g. ``{"miner": "semi_hard"}``),
    passed through to the model untouched.
    """

    epochs: int
    temperature: float = 0.1
    num_negatives: int = 16
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.epochs, bool) or int(self.epochs) != self.epochs or self.epochs < 1:
            raise ConfigError(f"epochs: each stage needs an int >= 1, got {self.epochs!r}")
        check_positive(self.temperature, "temperature")
        if (
            isinstance(self.num_negatives, bool)
            or int(self.num_negatives) != self.num_negatives
            or (self.num_negatives < 0)
        ):
            raise ConfigError(f"num_negatives: expected an int >= 0, got {self.num_negatives!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "epochs": int(self.epochs),
            "temperature": float(self.temperature),
            "num_negatives": int(self.num_negatives),
            "extra": dict(self.extra),
        }


class Curriculum:
    """Ordered stages; epoch ``e`` (0-based) belongs to the stage whose epoch range holds it.

    Epochs past the last stage stay in the last stage. ``total_epochs`` is the sum of the
    stage lengths (the trainer's default number of epochs when given a curriculum).

    Examples
    --------
    >>> cur = Curriculum([CurriculumStage(2, temperature=0.2, num_negatives=8),
    ...                   CurriculumStage(3, temperature=0.07, num_negatives=32)])
    >>> [cur.stage_index(e) for e in range(6)]
    [0, 0, 1, 1, 1, 1]
    """

    def __init__(self, stages: Iterable[CurriculumStage | Mapping[str, Any]]) -> None:
        parsed: list[CurriculumStage] = []
        for st in stages:
            if isinstance(st, CurriculumStage):
                parsed.append(st)
            elif isinstance(st, Mapping):
                try:
                    parsed.append(CurriculumStage(**st))
                except TypeError as exc:
                    raise ConfigError(f"stages: {exc}") from exc
            else:
                raise ConfigError(f"stages: expected CurriculumStage or mapping, got {type(st).__name__}")
        if not parsed:
            raise ConfigError("stages: a curriculum needs at least one stage")
        self.stages: tuple[CurriculumStage, ...] = tuple(parsed)
        self._ends = []
        acc = 0
        for st in self.stages:
            acc += int(st.epochs)
            self._ends.append(acc)

    @classmethod
    def parse(cls, text: str) -> Curriculum:
        """Stages from ``"E/T/N+E/T/N..."``: epochs, temperature and negatives of each stage.

        Examples
        --------
        >>> Curriculum.parse("2/0.2/8+3/0.07/32").to_list()[1]
        {'epochs': 3, 'temperature': 0.07, 'num_negatives': 32, 'extra': {}}
        """
        stages = []
        for part in str(text).split("+"):
            fields = part.strip().split("/")
            if len(fields) != 3:
                raise ConfigError(f"curriculum: expected stages 'epochs/temperature/negatives' joined by '+', "
                                  f"got {text!r}")
            try:
                stages.append(CurriculumStage(int(fields[0]), float(fields[1]), int(fields[2])))
            except ValueError as exc:
                raise ConfigError(f"curriculum: bad stage {part!r} in {text!r} ({exc})") from exc
        return cls(stages)

    @property
    def total_epochs(self) -> int:
        """Sum of the stage lengths."""
        return self._ends[-1]

    def stage_index(self, epoch: int) -> int:
        """Index of the stage of 0-based ``epoch``."""
        e = _check_step(epoch)
        for i, end in enumerate(self._ends):
            if e < end:
                return i
        return len(self.stages) - 1

    def stage_at(self, epoch: int) -> CurriculumStage:
        """The stage of 0-based ``epoch``."""
        return self.stages[self.stage_index(epoch)]

    def to_list(self) -> list[dict[str, Any]]:
        """JSON-serialisable form (``Curriculum(cur.to_list())`` rebuilds it)."""
        return [st.to_dict() for st in self.stages]

    def __repr__(self) -> str:
        return f"Curriculum({self.to_list()!r})"
