"""sliced_wasserstein: numpy reference, the one-token reduction, token-order invariance, the cached
projections, FD gradients (dense and gather), fully masked rows, typed errors, properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ruvector_hnsw.attention import Context
from ruvector_hnsw.attention.sliced_wasserstein import SlicedTableState, SlicedWassersteinAttention
from ruvector_hnsw.errors import (
    ConfigError,
    DimensionMismatchError,
    EmptyInputError,
    InvalidInputError,
    NonFiniteError,
    ShapeMismatchError,
)
from tests.attention import _reference as ref
from tests.attention import _transport_reference as tref

SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _mech(d=5, **kw):
    kw.setdefault("num_projections", 6)
    kw.setdefault("tokens", 3)
    kw.setdefault("top_m", 4)
    att = SlicedWassersteinAttention(d, dtype=np.float64, seed=0, **kw)
    omega = np.random.default_rng(7).standard_normal(att.num_projections) * 0.4
    att.set_params({"slice_log_weights": omega})
    return att


def _dense(seed=0, B=4, n=8, d=5, dv=3):
    rng = np.random.default_rng(seed)
    mask = rng.random((B, n)) > 0.25
    mask[0] = True
    mask[1, 2:] = False  # two items: sets smaller than the token count
    return rng.standard_normal((B, d)), rng.standard_normal((B, n, d)), rng.standard_normal((B, n, dv)), mask


def _ref(att, q, K, V, mask):
    return tref.sliced_wasserstein(q, K, V, mask, att.projections, att.params["slice_log_weights"], att.tokens,
                                   att.top_m, att.temperature)


@pytest.mark.parametrize("kw", [{}, {"tokens": 1}, {"tokens": 5, "top_m": 20}, {"top_m": 1, "temperature": 0.3}])
def test_matches_reference_dense(kw):
    att = _mech(**kw)
    q, K, V, mask = _dense()
    out, cache = att.forward(q, K, V, mask)
    want, W = _ref(att, q, K, V, mask)
    np.testing.assert_allclose(out, want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cache.weights, W, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(att.weights(q, K, mask), W, rtol=1e-10, atol=1e-12)
    assert ((cache.weights > 0).sum(1) == np.minimum(mask.sum(1), att.top_m)).all()  # the filter's size


def test_gather_form_with_and_without_state_equals_dense():
    att = _mech()
    rng = np.random.default_rng(1)
    T, Vt = rng.standard_normal((20, 5)), rng.standard_normal((20, 3))
    ids = rng.integers(-1, 20, (4, 7))
    ids[-1] = -1  # a fully padded row
    q = rng.standard_normal((4, 5))
    state = att.prepare_table(T)
    assert isinstance(state, SlicedTableState) and state.rows == 20 and not state.projections.flags.writeable
    np.testing.assert_allclose(state.projections, T @ att.projections.T, rtol=1e-12, atol=1e-12)
    with_state, c1 = att.forward(q, T, Vt, context=Context(table_state=state), ids=ids)
    without, _ = att.forward(q, T, Vt, ids=ids)
    m = ids >= 0
    dense, c3 = att.forward(q, T[np.maximum(ids, 0)], Vt[np.maximum(ids, 0)], mask=m,
                            context=Context(table_state=state))  # the dense form ignores a state
    np.testing.assert_array_equal(with_state, without)
    np.testing.assert_array_equal(with_state, dense)
    assert np.all(with_state[-1] == 0)
    G = rng.standard_normal(with_state.shape)
    g1, g3 = att.backward(c1, G), att.backward(c3, G)
    np.testing.assert_allclose(g1["keys"], ref.scatter_rows(g3["keys"], ids, T), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g1["values"], ref.scatter_rows(g3["values"], ids, Vt), rtol=1e-10, atol=1e-12)
    for k in ("query", "slice_log_weights"):
        np.testing.assert_allclose(g1[k], g3[k], rtol=1e-10, atol=1e-12)


def test_one_token_per_set_is_the_mean_squared_projected_distance():
    """tokens=1: s_j = -(sqrt(d)/(2 tau)) mean_p (theta_p.q - theta_p.k_j)^2 (omega = 0)."""
    att = SlicedWassersteinAttention(6, num_projections=32, tokens=1, top_m=100, temperature=0.7,
                                     dtype=np.float64, seed=3)
    rng = np.random.default_rng(2)
    q, K = rng.standard_normal((3, 6)), rng.standard_normal((3, 9, 6))
    mask = np.ones((3, 9), bool)
    th = att.projections
    s = -np.sqrt(6) / (2 * 0.7) * np.mean(((q @ th.T)[:, None, :] - K @ th.T) ** 2, axis=-1)
    want = np.exp(s - s.max(1, keepdims=True))
    want /= want.sum(1, keepdims=True)
    np.testing.assert_allclose(att.weights(q, K, mask), want, rtol=1e-10, atol=1e-13)
    # and with many directions it estimates -|q - k|^2 / (2 tau sqrt(d)) (unit directions: E (theta.z)^2 = |z|^2/d)
    big = SlicedWassersteinAttention(6, num_projections=4000, tokens=1, top_m=100, dtype=np.float64, seed=1)
    w = big.weights(q, K, mask)
    exact = -((q[:, None, :] - K) ** 2).sum(-1) / (2 * np.sqrt(6))
    ew = np.exp(exact - exact.max(1, keepdims=True))
    np.testing.assert_allclose(w, ew / ew.sum(1, keepdims=True), atol=0.02)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 9), tokens=st.integers(1, 5))
def test_invariant_to_the_order_of_tokens(seed, n, tokens):
    att = _mech(tokens=tokens, top_m=3)
    rng = np.random.default_rng(seed)
    q, K, V = rng.standard_normal((2, 5)), rng.standard_normal((2, n, 5)), rng.standard_normal((2, n, 3))
    mask = rng.random((2, n)) > 0.2
    out, c = att.forward(q, K, V, mask)
    perm = rng.permutation(n)
    out_p, cp = att.forward(q, K[:, perm], V[:, perm], mask[:, perm])
    np.testing.assert_allclose(out_p, out, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cp.weights, c.weights[:, perm], rtol=1e-10, atol=1e-12)


def test_transport_sees_neighbourhoods_not_points():
    """Two items at the same distance from the query: the one whose context neighbourhood has the
    shape of the query's scores higher with token sets; with one token per set they tie exactly."""
    q = np.zeros(2)
    K = np.array([[0.0, 0.3], [0.0, -0.3],                   # the query's own neighbours
                  [1.0, 0.0], [1.0, 0.3], [1.0, -0.3],       # A: the same shape, shifted
                  [-1.0, 0.0], [-1.0, 0.7], [-1.0, -0.7]])   # B: same distance, wider neighbourhood
    mask = np.ones(8, bool)
    kw = {"num_projections": 64, "top_m": 8, "temperature": 0.05, "dtype": np.float64, "seed": 0}
    w1 = SlicedWassersteinAttention(2, tokens=1, **kw).weights(q, K, mask)
    np.testing.assert_allclose(w1[2], w1[5], rtol=1e-12)
    w3 = SlicedWassersteinAttention(2, tokens=3, **kw).weights(q, K, mask)
    assert w3[2] > 1.5 * w3[5], w3


def test_gradients_dense_fd():
    q, K, V, mask = _dense(seed=3, B=3, n=6, d=4, dv=2)
    for kw in ({"tokens": 1}, {"tokens": 3, "top_m": 3}, {"tokens": 4, "top_m": 10}):
        att = _mech(d=4, **kw)
        ref.check_gradients(att, q, K, V, mask)


def test_gradients_gather_fd_with_the_state_reprepared():
    """In the gather form the key gradient includes the cached coordinates (re-prepared from the table)."""
    att = _mech(d=4)
    rng = np.random.default_rng(4)
    q, T, Vt = rng.standard_normal((3, 4)), rng.standard_normal((11, 4)), rng.standard_normal((11, 2))
    ids = rng.integers(-1, 11, (3, 6))
    out, cache = att.forward(q, T, Vt, context=Context(table_state=att.prepare_table(T)), ids=ids)
    G = rng.standard_normal(out.shape)
    grads = att.backward(cache, G)

    def loss() -> float:
        o, _ = att.forward(q, T, Vt, context=Context(table_state=att.prepare_table(T)), ids=ids)
        return float((o * G).sum())

    omega = att.params["slice_log_weights"]
    for name, arr in (("query", q), ("keys", T), ("values", Vt), ("slice_log_weights", omega)):
        num = ref.numeric_grad(loss, arr)
        np.testing.assert_allclose(grads[name], num, rtol=1e-6, atol=1e-7, err_msg=name)
    part = att.backward(cache, G, input_grads=False)
    assert set(part) == {"query", "slice_log_weights"}
    np.testing.assert_array_equal(part["query"], grads["query"])


def test_fully_masked_rows_are_zero_and_finite():
    att = _mech()
    q, K, V, mask = _dense()
    mask[2] = False
    out, cache = att.forward(q, K, V, mask)
    assert np.all(out[2] == 0) and np.all(cache.weights[2] == 0) and np.isfinite(out).all()
    g = att.backward(cache, np.ones_like(out))
    assert np.all(g["keys"][2] == 0) and np.all(g["values"][2] == 0) and np.all(g["query"][2] == 0)
    assert np.all(g["values"][~mask] == 0) and np.all(g["keys"][~mask] == 0)


def test_items_outside_the_filter_are_never_read():
    att = _mech(top_m=2, tokens=1)
    q, K, V, mask = _dense()
    w = att.weights(q, K, mask)
    V2 = V.copy()
    V2[(w == 0) & mask] = np.nan  # values of attended items the filter dropped
    np.testing.assert_array_equal(att.forward(q, K, V2, mask)[0], att.forward(q, K, V, mask)[0])
    V2[0, np.argmax(w[0])] = np.nan
    with pytest.raises(NonFiniteError):
        att.forward(q, K, V2, mask)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), scale=st.sampled_from([1e-20, 1e-3, 1.0, 1e3, 1e15, 1e30]),
       n=st.integers(1, 10), B=st.integers(1, 3))
def test_finite_and_normalised_for_any_scale(seed, scale, n, B):
    rng = np.random.default_rng(seed)
    att = SlicedWassersteinAttention(4, num_projections=5, tokens=3, top_m=4, seed=seed % 7)
    q = (rng.standard_normal((B, 4)) * scale).astype(np.float32)
    K = (rng.standard_normal((B, n, 4)) * scale).astype(np.float32)
    V = rng.standard_normal((B, n, 2)).astype(np.float32)
    mask = rng.random((B, n)) > 0.3
    out, cache = att.forward(q, K, V, mask)
    assert np.isfinite(out).all() and out.dtype == np.float32
    w = cache.weights
    rows = mask.any(1)
    np.testing.assert_allclose(w.sum(1)[rows], 1.0, rtol=1e-5)
    assert np.all(w[~rows] == 0) and np.all(w[~mask] == 0) and (w >= 0).all()
    assert ((w > 0).sum(1) <= 4).all()
    if scale <= 1e3:  # beyond, the true gradient (it scales like the squared inputs) leaves float32
        g = att.backward(cache, np.ones_like(out))
        assert all(np.isfinite(v).all() for v in g.values())


def test_deterministic_given_seed_and_directions_are_unit():
    a, b = SlicedWassersteinAttention(8, seed=5), SlicedWassersteinAttention(8, seed=5)
    np.testing.assert_array_equal(a.projections, b.projections)
    np.testing.assert_allclose(np.linalg.norm(a.projections, axis=1), 1.0)
    assert not np.array_equal(a.projections, SlicedWassersteinAttention(8, seed=6).projections)
    assert a.get_config()["num_projections"] == 16 and a.get_config()["tokens"] == 4


def test_state_and_config_errors():
    att = _mech()
    rng = np.random.default_rng(0)
    T = rng.standard_normal((10, 5))
    q, ids = rng.standard_normal((2, 5)), rng.integers(0, 10, (2, 4))
    other = SlicedWassersteinAttention(5, num_projections=6, dtype=np.float64, seed=1).prepare_table(T)
    with pytest.raises(InvalidInputError, match="other projections"):
        att.forward(q, T, T, context=Context(table_state=other), ids=ids)
    with pytest.raises(ShapeMismatchError, match="prepare_table"):
        att.forward(q, T, T, context=Context(table_state=att.prepare_table(T[:8])), ids=ids)
    with pytest.raises(InvalidInputError, match="prepare_table"):
        att.forward(q, T, T, context=Context(table_state=object()), ids=ids)
    with pytest.raises(DimensionMismatchError):
        att.prepare_table(T[:, :4])
    with pytest.raises(EmptyInputError):
        att.prepare_table(T[:0])
    bad = T.copy()
    bad[3, 1] = np.inf
    with pytest.raises(NonFiniteError):
        att.prepare_table(bad)
    for kw in ({"num_projections": 0}, {"tokens": 0}, {"top_m": 0}, {"temperature": 0.0}, {"tokens": 1.5}):
        with pytest.raises(ConfigError):
            SlicedWassersteinAttention(4, **kw)
