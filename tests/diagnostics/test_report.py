"""GeometryReport: grading, health, the recommendation rules, determinism, JSON, index vs graph."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ruvector_hnsw.attention import MECHANISMS
from ruvector_hnsw.diagnostics import FAMILIES, METRICS, GeometryReport, grade
from ruvector_hnsw.errors import InvalidInputError
from ruvector_hnsw.index import HNSWIndex

#: a value set that fires no rule before the last: every rule's condition is false
NEUTRAL = {"ot_ratio": 0.7, "boundary_mass": 0.89, "gromov_delta": 0.6, "level_deviation": 0.2,
           "dirichlet_energy": 0.5, "attention_entropy": 0.7}


@pytest.fixture(scope="module")
def index() -> HNSWIndex:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((6, 8)) * 4
    x = (centres[rng.integers(0, 6, 700)] + rng.standard_normal((700, 8))).astype(np.float32)
    idx = HNSWIndex(8, space="l2", M=8, ef_construction=50, seed=1, num_threads=1, max_elements=700)
    idx.add(x, ids=np.arange(700))
    return idx


def test_grade_boundaries():
    assert grade("ot_ratio", 0.65) == "healthy"
    assert grade("ot_ratio", 0.6501) == "warning"
    assert grade("ot_ratio", 0.80) == "warning"
    assert grade("ot_ratio", 0.8001) == "critical"
    # a band: both sides
    assert grade("attention_entropy", 0.30) == "healthy" and grade("attention_entropy", 0.85) == "healthy"
    assert grade("attention_entropy", 0.29) == "warning" and grade("attention_entropy", 0.90) == "warning"
    assert grade("attention_entropy", 0.14) == "critical" and grade("attention_entropy", 0.96) == "critical"
    for name, spec in METRICS.items():
        assert grade(name, spec.healthy[1]) == "healthy"
        assert grade(name, spec.warning[1] + 1e-9) == "critical"
    with pytest.raises(InvalidInputError, match="unknown metric"):
        grade("nope", 0.1)
    with pytest.raises(InvalidInputError, match="finite"):
        grade("ot_ratio", float("nan"))


def test_health_is_the_mean_grade_score_in_unit_interval():
    healthy = {n: s.healthy[1] for n, s in METRICS.items()}
    assert GeometryReport.from_values(healthy).health == 1.0
    critical = {n: s.warning[1] + 1.0 for n, s in METRICS.items()}
    assert GeometryReport.from_values(critical).health == 0.0
    mixed = dict(healthy, ot_ratio=0.7, boundary_mass=5.0)  # one warning, one critical
    np.testing.assert_allclose(GeometryReport.from_values(mixed).health, (4 + 0.5) / 6)
    rng = np.random.default_rng(0)
    for _ in range(20):
        r = GeometryReport.from_values({n: float(rng.uniform(0, 1.5)) for n in METRICS})
        assert 0.0 <= r.health <= 1.0


@pytest.mark.parametrize("change, family", [
    ({"gromov_delta": 0.35}, "geometric"),
    ({"gromov_delta": 0.2, "ot_ratio": 0.1}, "geometric"),  # the first rule wins
    ({"ot_ratio": 0.60}, "transport"),
    ({"dirichlet_energy": 0.40, "boundary_mass": 0.88}, "diffusion"),
    ({"dirichlet_energy": 0.30, "boundary_mass": 0.885}, "standard"),  # smooth but incoherent: no diffusion
    ({"attention_entropy": 0.85}, "sparse"),
    ({"boundary_mass": 0.90}, "sparse"),
    ({}, "standard"),
])
def test_each_recommendation_branch(change, family):
    r = GeometryReport.from_values({**NEUTRAL, **change})
    assert r.recommendation == family
    assert r.mechanisms == FAMILIES[family]
    assert r.reasons and all(isinstance(x, str) for x in r.reasons)


def test_families_name_real_mechanisms():
    assert set(FAMILIES) == {"standard", "sparse", "geometric", "diffusion", "transport"}
    for mechs in FAMILIES.values():
        assert mechs and set(mechs) <= set(MECHANISMS)


def test_from_values_rejects_missing_unknown_and_non_finite():
    with pytest.raises(InvalidInputError, match="missing"):
        GeometryReport.from_values({k: v for k, v in NEUTRAL.items() if k != "ot_ratio"})
    with pytest.raises(InvalidInputError, match="unknown"):
        GeometryReport.from_values({**NEUTRAL, "extra": 1.0})
    with pytest.raises(InvalidInputError):
        GeometryReport.from_values({**NEUTRAL, "ot_ratio": float("inf")})


def test_analyze_index_and_graph_agree_and_are_deterministic(index):
    a = GeometryReport.analyze(index, sample=128, seed=3)
    b = GeometryReport.analyze(index.graph(), sample=128, seed=3)
    assert a == b
    assert a.to_dict() == GeometryReport.analyze(index, sample=128, seed=3).to_dict()
    c = GeometryReport.analyze(index, sample=128, seed=4)
    assert c.to_dict()["metrics"] != a.to_dict()["metrics"]  # the seed does matter
    assert set(a.metrics) == set(METRICS)
    for m in a.metrics.values():
        assert np.isfinite(m.value) and m.grade in ("healthy", "warning", "critical")
    assert a.info["sample"] == 128 and a.info["nodes"] == 700 and a.info["space"] == "l2"
    assert 0.0 <= a.health <= 1.0 and a.recommendation in FAMILIES


def test_analyze_values_are_in_their_ranges(index):
    r = GeometryReport.analyze(index, sample=700, seed=0)  # the whole graph
    v = {k: m.value for k, m in r.metrics.items()}
    assert 0 < v["ot_ratio"] < 1 and 0 < v["dirichlet_energy"] < 1  # clustered data: links shorter than random
    assert 0 <= v["boundary_mass"] <= 1 and 0 <= v["gromov_delta"] <= 1 and 0 <= v["attention_entropy"] <= 1
    assert r.metrics["level_deviation"].details["observed"][0] == int((index.graph().levels >= 1).sum())


def test_json_round_trip(index):
    r = GeometryReport.analyze(index, sample=64, seed=0)
    back = GeometryReport.from_dict(json.loads(json.dumps(r.to_dict())))
    assert back == r
    with pytest.raises(InvalidInputError):
        GeometryReport.from_dict({"metrics": 3})


def test_format_is_a_readable_table(index):
    r = GeometryReport.analyze(index, sample=64, seed=0)
    text = r.format()
    for name in METRICS:
        assert name in text
    assert f"health: {r.health:.3f}" in text
    assert f"recommendation: {r.recommendation} (try {', '.join(r.mechanisms)})" in text
    assert str(r) == text


def test_analyze_rejects_bad_input(index):
    with pytest.raises(InvalidInputError, match="HNSWIndex or HNSWGraph"):
        GeometryReport.analyze(np.zeros((3, 3)))
    with pytest.raises(InvalidInputError, match="sample"):
        GeometryReport.analyze(index, sample=0)
    with pytest.raises(InvalidInputError, match="seed"):
        GeometryReport.analyze(index, seed=1.5)


def test_analyze_is_the_same_at_any_thread_count(index):
    from ruvector_hnsw.threads import thread_limits

    with thread_limits(1):
        one = GeometryReport.analyze(index, sample=256, seed=5)
    with thread_limits(2):
        two = GeometryReport.analyze(index, sample=256, seed=5)
    assert one == two
