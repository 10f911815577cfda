"""topology_gated: metrics and modes against a numpy reference, per-mode gradients, the hysteresis state."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ruvector_hnsw.attention import MECHANISMS, Context
from ruvector_hnsw.attention.topology_gated import MODES, TopologyGatedAttention, TopologyState, next_state
from ruvector_hnsw.errors import ConfigError, DimensionMismatchError, InvalidInputError, ShapeMismatchError
from tests.attention import _reference as ref
from tests.attention import _reference_geometry as rg

SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
B, N, D = 8, 9, 5


def _inputs(seed=0, dv=D):
    rng = np.random.default_rng(seed)
    mask = rng.random((B, N)) > 0.2
    mask[:, :2] = True
    ctx = Context(dist=rng.random((B, N)), layer=rng.integers(0, 2, (B, N)), hops=rng.integers(1, 4, (B, N)))
    return (rng.standard_normal((B, D)) * 1.5, rng.standard_normal((B, N, D)) * 1.5,
            rng.standard_normal((B, N, dv)), mask, ctx)


def _mech(**kw):
    kw.setdefault("temperature", 0.8)
    kw.setdefault("top_k", 3)
    return TopologyGatedAttention(D, dtype=np.float64, **kw)


def _ref(m, q, K, V, mask, ctx, prev=None, query_value=None):
    return rg.topology_gated(q, K, V, mask, float(np.exp(m.params["log_temperature"][0])), ctx, prev,
                             m.cautious_temperature, m.top_k, m.cautious_threshold, m.freeze_threshold,
                             m.hysteresis, m.metric_weights, query_value)


@pytest.mark.parametrize("fields", [("dist", "layer", "hops"), ("dist", "layer"), ("dist",), ()])
def test_metrics_modes_and_outputs_match_the_reference(fields):
    q, K, V, mask, full = _inputs()
    ctx = Context(**{f: getattr(full, f) for f in fields})
    risks = _ref(_mech(), q, K, V, mask, ctx)[3][:, 0]
    lo, hi = np.quantile(risks, [0.3, 0.7])  # thresholds between the rows' risks: every mode occurs
    m = _mech(cautious_threshold=float(lo) + 1e-9, freeze_threshold=float(hi) + 1e-9, cautious_temperature=3.0)
    out, cache = m.forward(q, K, V, mask, context=ctx)
    want, W, modes, metrics = _ref(m, q, K, V, mask, ctx)
    assert set(modes) == {0, 1, 2}
    np.testing.assert_array_equal(cache.inspect["mode"], modes)
    for i, key in enumerate(("risk", "boundary_mass", "cut", "disagreement", "similarity_variance")):
        np.testing.assert_allclose(cache.inspect[key], metrics[:, i], rtol=1e-10, atol=1e-13, err_msg=key)
    np.testing.assert_allclose(out, want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cache.weights, W, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(m.weights(q, K, mask, context=ctx), W, rtol=1e-10, atol=1e-13)
    if "hops" not in fields and "dist" not in fields:
        assert np.all(cache.inspect["boundary_mass"] == 0)
    if "layer" not in fields:
        assert np.all(cache.inspect["cut"] == 0)


def test_each_mode_reads_out_as_documented():
    q, K, V, mask, ctx = _inputs(1)
    stable, _ = _mech(cautious_threshold=2.0, freeze_threshold=2.0).forward(q, K, V, mask, context=ctx)
    sd = ref.scaled_dot(q, K, V, mask, temperature=0.8)[0]
    np.testing.assert_allclose(stable, sd, rtol=1e-12)
    m = _mech(cautious_threshold=0.0, freeze_threshold=2.0)
    _, cache = m.forward(q, K, V, mask, context=ctx)
    assert np.all(cache.inspect["mode"] == 1)
    assert np.all((cache.weights > 0).sum(axis=1) == 3)  # top_k items
    frozen, cache = _mech(cautious_threshold=0.0, freeze_threshold=0.0).forward(q, K, V, mask, context=ctx)
    np.testing.assert_array_equal(frozen, q)  # the query-side value, unchanged
    assert np.all(cache.weights == 0) and np.all(cache.inspect["mode"] == 2)


@pytest.mark.parametrize("thresholds", [(2.0, 2.0), (0.0, 2.0), (0.0, 0.0), "mixed"])
def test_gradients_flow_through_the_selected_mode(thresholds):
    q, K, V, mask, ctx = _inputs(2)
    if thresholds == "mixed":
        risks = _ref(_mech(), q, K, V, mask, ctx)[3][:, 0]
        lo, hi = np.quantile(risks, [0.3, 0.7])
        thresholds = (float(lo) + 1e-9, float(hi) + 1e-9)
    m = _mech(cautious_threshold=thresholds[0], freeze_threshold=thresholds[1])
    m.params["log_temperature"][0] = -0.3
    ref.check_gradients(m, q, K, V, mask, context=ctx)
    # frozen rows pass the query through: identity Jacobian, nothing to keys/values/temperature
    out, cache = m.forward(q, K, V, mask, context=ctx)
    frozen = cache.inspect["mode"] == 2
    G = np.random.default_rng(0).standard_normal(out.shape)
    g = m.backward(cache, G)
    np.testing.assert_array_equal(g["query"][frozen], G[frozen])
    assert np.all(g["keys"][frozen] == 0) and np.all(g["values"][frozen] == 0)


def test_explicit_query_values_for_frozen_rows():
    q, K, V, mask, ctx = _inputs(3, dv=3)
    m = _mech(cautious_threshold=0.0, freeze_threshold=0.0)
    with pytest.raises(DimensionMismatchError, match="query_value"):
        m.forward(q, K, V, mask, context=ctx)
    qv = np.random.default_rng(1).standard_normal((B, 3))
    c2 = Context(dist=ctx.dist, layer=ctx.layer, hops=ctx.hops, extra={"query_value": qv})
    out, cache = m.forward(q, K, V, mask, context=c2)
    np.testing.assert_array_equal(out, qv)
    g = m.backward(cache, np.ones_like(out))
    assert np.all(g["query"] == 0)  # context data gets no gradient, and nothing reaches the query
    with pytest.raises(ShapeMismatchError, match="query_value"):
        m.forward(q, K, V, mask, context=Context(extra={"query_value": qv[:2]}))
    mixed = _mech()
    ref.check_gradients(mixed, q, K, V, mask, context=c2)


def _risk_inputs(risks):
    """One row per call, two items whose scores are +-c: risk = V/(1+V) with V = c^2 (metric_weights (0,0,0,1))."""
    out = []
    for r in risks:
        c = np.sqrt(r / (1 - r))
        beta = 2 * c  # s = +-beta / sqrt(4), temperature 1
        q = np.array([[1.0, 0, 0, 0]])
        K = np.array([[[beta, 0, 0, 0], [-beta, 0, 0, 0]]])
        out.append((q, K))
    return out


def test_hysteresis_state_threaded_through_a_sequence_gives_the_documented_modes():
    m = TopologyGatedAttention(4, cautious_threshold=0.4, freeze_threshold=0.7, hysteresis=0.1,
                               metric_weights=(0, 0, 0, 1), dtype=np.float64)
    risks = [0.2, 0.45, 0.35, 0.25, 0.75, 0.65, 0.5, 0.1, 0.65]
    # escalate at once; leave cautious below 0.3, freeze below 0.6 (possibly straight to stable)
    threaded = ["stable", "cautious", "cautious", "stable", "freeze", "freeze", "cautious", "stable", "cautious"]
    stateless = ["stable", "cautious", "stable", "stable", "freeze", "cautious", "cautious", "stable", "cautious"]
    state = None
    seen, fresh = [], []
    for (q, K), r in zip(_risk_inputs(risks), risks, strict=True):
        ctx = Context(extra={} if state is None else {"topology_state": state})
        _, cache = m.forward(q, K, K, context=ctx)
        np.testing.assert_allclose(cache.inspect["risk"], [r], rtol=1e-9)
        state = next_state(cache)
        seen.extend(state.names())
        fresh.extend(next_state(m.forward(q, K, K)[1]).names())
    assert seen == threaded
    assert fresh == stateless
    # the state object is plain data: equal inputs and states give equal results, nothing sticks on m
    s0 = TopologyState(np.array([2], dtype=np.int8))
    q, K = _risk_inputs([0.65])[0]
    a = m.forward(q, K, K, context=Context(extra={"topology_state": s0}))[1].inspect["mode"]
    b = m.forward(q, K, K, context=Context(extra={"topology_state": s0}))[1].inspect["mode"]
    assert a.tolist() == b.tolist() == [2]
    assert m.forward(q, K, K)[1].inspect["mode"].tolist() == [1]


def test_unbatched_calls_and_state():
    q, K, V, mask, ctx = _inputs(4)
    m = _mech()
    one, cache = m.forward(q[0], K[0], V[0], mask[0],
                           context=Context(dist=ctx.dist[0], layer=ctx.layer[0], hops=ctx.hops[0]))
    st = next_state(cache)
    assert st.mode.shape == (1,) and cache.inspect["mode"].shape == ()
    again, _ = m.forward(q[0], K[0], V[0], mask[0], context=Context(dist=ctx.dist[0], layer=ctx.layer[0],
                                                                     hops=ctx.hops[0], extra={"topology_state": st}))
    assert again.shape == one.shape


def test_state_errors():
    q, K, V, mask, _ = _inputs()
    m = _mech()
    with pytest.raises(InvalidInputError, match="TopologyState"):
        m.forward(q, K, V, mask, context=Context(extra={"topology_state": np.zeros(B)}))
    with pytest.raises(ShapeMismatchError, match="rows"):
        m.forward(q, K, V, mask, context=Context(extra={"topology_state": TopologyState.initial(B - 1)}))
    with pytest.raises(InvalidInputError, match="mode codes"):
        TopologyState(np.array([3]))
    with pytest.raises(InvalidInputError, match="topology_gated"):
        next_state(MECHANISMS["scaled_dot"](D).forward(q, K, V)[1])
    st = TopologyState.initial(2)
    with pytest.raises(ValueError):
        st.mode[0] = 1  # read-only
    assert MODES[2] == "freeze"


def test_fully_masked_rows_are_frozen():
    q, K, V, mask, ctx = _inputs(5)
    mask[2] = False
    out, cache = _mech(cautious_threshold=2.0, freeze_threshold=2.0).forward(q, K, V, mask, context=ctx)
    assert cache.inspect["mode"][2] == 2 and np.all(cache.weights[2] == 0)
    np.testing.assert_array_equal(out[2], q[2])


def test_config_errors():
    for bad in ({"cautious_threshold": 0.9, "freeze_threshold": 0.5}, {"cautious_temperature": 0.5},
                {"top_k": 0}, {"hysteresis": -0.1}, {"metric_weights": (0, 0, 0, 0)},
                {"metric_weights": (1, 1)}, {"cautious_threshold": float("nan")}):
        with pytest.raises(ConfigError):
            TopologyGatedAttention(4, **bad)
    m = TopologyGatedAttention(4, top_k=5, seed=2)
    assert TopologyGatedAttention(**m.get_config()).get_config() == m.get_config()


# -- hypothesis properties ----------------------------------------------------------------------
@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), scale=st.sampled_from([1e-30, 1e-8, 1.0, 1e4, 1e20, 1e30]),
       vscale=st.sampled_from([1e-20, 1.0, 1e20]), n=st.integers(1, 9))
def test_finite_for_finite_inputs_of_any_scale(seed, scale, vscale, n):
    rng = np.random.default_rng(seed)
    q = (rng.standard_normal((3, 4)) * scale).astype(np.float32)
    K = (rng.standard_normal((3, n, 4)) * scale).astype(np.float32)
    V = (rng.standard_normal((3, n, 4)) * vscale).astype(np.float32)
    mask = rng.random((3, n)) > 0.3
    ctx = Context(layer=rng.integers(0, 2, (3, n)), hops=rng.integers(1, 3, (3, n)))
    m = TopologyGatedAttention(4, seed=1, top_k=2)
    out, cache = m.forward(q, K, V, mask, context=ctx)
    assert np.isfinite(out).all() and np.isfinite(cache.weights).all()
    assert all(np.isfinite(np.asarray(v, dtype=np.float64)).all() for v in cache.inspect.values())
    attending = cache.inspect["mode"] < 2
    np.testing.assert_allclose(cache.weights.sum(axis=1)[attending], 1.0, rtol=1e-4)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 9), scale=st.sampled_from([0.01, 1.0, 50.0]))
def test_identical_keys_give_uniform_weights_in_stable_mode(seed, n, scale):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((2, 4)) * scale
    K = np.repeat(rng.standard_normal((2, 1, 4)) * scale, n, axis=1)
    mask = rng.random((2, n)) > 0.3
    mask[:, 0] = True
    m = TopologyGatedAttention(4, dtype=np.float64)
    _, cache = m.forward(q, K, K, mask)
    # equal scores: no disagreement, no similarity variance, no layer/hops context -> risk 0, stable
    assert np.all(cache.inspect["risk"] < 1e-12) and np.all(cache.inspect["mode"] == 0)
    np.testing.assert_allclose(cache.weights, np.where(mask, 1.0 / mask.sum(axis=1, keepdims=True), 0.0),
                               rtol=1e-9, atol=1e-12)


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_deterministic(seed):
    q, K, V, mask, ctx = _inputs(seed % 100)
    a, b = TopologyGatedAttention(D, seed=seed), TopologyGatedAttention(D, seed=seed)
    np.testing.assert_array_equal(a.forward(q, K, V, mask, context=ctx)[0], b.forward(q, K, V, mask, context=ctx)[0])
