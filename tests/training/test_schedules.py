from __future__ import annotations

import math

import pytest

from ruvector_hnsw.errors import ConfigError
from ruvector_hnsw.training.schedules import (
    ConstantSchedule,
    Curriculum,
    CurriculumStage,
    Schedule,
    StepSchedule,
    WarmupCosineSchedule,
)


def test_constant_and_step():
    assert ConstantSchedule(0.3)(0) == 0.3 == ConstantSchedule(0.3)(1000)
    s = StepSchedule(1.0, step_size=3, gamma=0.5)
    assert [s(i) for i in range(7)] == [1, 1, 1, 0.5, 0.5, 0.5, 0.25]
    assert isinstance(s, Schedule)


def test_warmup_cosine_values():
    s = WarmupCosineSchedule(lr=1.0, total_steps=10, warmup_steps=4, min_lr=0.1)
    assert [s(i) for i in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert s(4) == pytest.approx(1.0)
    for i in range(4, 11):
        p = (i - 4) / 6
        assert s(i) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))
    assert s(7) == pytest.approx(0.55)
    assert s(10) == pytest.approx(0.1) and s(50) == pytest.approx(0.1)
    nowarm = WarmupCosineSchedule(lr=2.0, total_steps=4)
    assert nowarm(0) == 2.0 and nowarm(2) == pytest.approx(1.0) and nowarm(4) == pytest.approx(0.0)


def test_schedule_errors():
    with pytest.raises(ConfigError, match="warmup_steps"):
        WarmupCosineSchedule(1.0, total_steps=5, warmup_steps=6)
    with pytest.raises(ConfigError, match="min_lr"):
        WarmupCosineSchedule(1.0, total_steps=5, min_lr=2.0)
    with pytest.raises(ConfigError, match="step"):
        ConstantSchedule(1.0)(-1)
    with pytest.raises(ConfigError, match="step_size"):
        StepSchedule(1.0, step_size=0)


def test_curriculum_stages():
    cur = Curriculum(
        [
            CurriculumStage(2, temperature=0.2, num_negatives=8),
            {"epochs": 3, "temperature": 0.05, "num_negatives": 32, "extra": {"miner": "hard"}},
        ]
    )
    assert cur.total_epochs == 5
    assert [cur.stage_index(e) for e in range(7)] == [0, 0, 1, 1, 1, 1, 1]
    assert cur.stage_at(1).num_negatives == 8 and cur.stage_at(2).temperature == 0.05
    assert cur.stage_at(4).extra["miner"] == "hard"
    again = Curriculum(cur.to_list())
    assert again.to_list() == cur.to_list()
    with pytest.raises(ConfigError, match="epochs"):
        CurriculumStage(0)
    with pytest.raises(ConfigError, match="at least one"):
        Curriculum([])
    with pytest.raises(ConfigError, match="num_negatives"):
        CurriculumStage(1, num_negatives=-2)
