"""mixed_curvature: product-space attention against explicit Mobius geometry, gradients, scaled_dot limit."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ruvector_hnsw.attention import MECHANISMS
from ruvector_hnsw.attention.mixed_curvature import MixedCurvatureAttention, default_dims
from ruvector_hnsw.errors import ConfigError
from tests.attention import _reference as ref
from tests.attention import _reference_geometry as rg

SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _inputs(B=3, n=6, d=9, dv=4, seed=0):
    rng = np.random.default_rng(seed)
    mask = rng.random((B, n)) > 0.3
    mask[:, 0] = True
    return rng.standard_normal((B, d)), rng.standard_normal((B, n, d)), rng.standard_normal((B, n, dv)), mask


def _mech(d, dims, heads=2, seed=0, **kw):
    m = MixedCurvatureAttention(d, dims=dims, heads=heads, dtype=np.float64, seed=seed, **kw)
    m.params["mix"][...] = np.random.default_rng(seed + 10).standard_normal(m.params["mix"].shape)
    return m


CASES = [
    ((3, 3, 3), {}),
    ((0, 9, 0), {"curvature_h": -0.4}),
    ((0, 0, 9), {"curvature_s": 2.5, "input_scale": 0.3}),
    ((4, 5, 0), {"temperature": 0.6}),
    ((2, 0, 7), {"input_scale": 0.5, "curvature_s": 0.7}),
    ((1, 4, 4), {"curvature_h": -2.0, "curvature_s": 0.5, "input_scale": 0.25}),
]


@pytest.mark.parametrize(("dims", "kw"), CASES)
def test_matches_the_explicit_mobius_reference(dims, kw):
    q, K, V, mask = _inputs()
    m = _mech(9, dims, heads=3, **kw)
    out, cache = m.forward(q, K, V, mask)
    want, wm, wh = rg.mixed_curvature(q, K, V, mask, dims, m.params["mix"], kw.get("curvature_h", -1.0),
                                      kw.get("curvature_s", 1.0), kw.get("temperature", 1.0), kw.get("input_scale"))
    np.testing.assert_allclose(out, want, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(cache.weights, wm, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(cache.inspect["head_weights"], wh, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(m.weights(q, K, mask), wm, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("dims", "kw"), CASES[:4])
def test_gradients_match_finite_differences(dims, kw):
    q, K, V, mask = _inputs(seed=1)
    ref.check_gradients(_mech(9, dims, **kw), q, K, V, mask, tol=1e-6)


def test_gradients_in_the_gather_form_and_at_coinciding_points():
    rng = np.random.default_rng(2)
    table = rng.standard_normal((12, 9))
    q = table[[3, 5]].copy()  # each query coincides with one of its items
    ids = np.array([[3, 1, 7, -1, 3], [5, 0, 2, 11, -1]])
    m = _mech(9, (3, 3, 3))
    ref.check_gradients(m, q, table, table.copy(), ids=ids, tol=1e-5)
    _, cache = m.forward(q, table, table, ids=ids)
    assert all(np.isfinite(g).all() for g in m.backward(cache, np.ones((2, 9))).values())


@pytest.mark.parametrize("heads", [1, 3])
def test_without_curved_blocks_it_is_scaled_dot(heads):
    rng = np.random.default_rng(3)
    d, B, n = 16, 5, 40
    table = rng.standard_normal((300, d), dtype=np.float32) * 2
    q = rng.standard_normal((B, d), dtype=np.float32) * 2
    ids = rng.integers(-1, 300, (B, n))
    sd = MECHANISMS["scaled_dot"](d, temperature=0.8)
    mc = MixedCurvatureAttention(d, dims=(d, 0, 0), heads=heads, temperature=0.8, seed=1)
    mc.params["mix"][...] = rng.standard_normal(mc.params["mix"].shape)  # any mixing logits: w_E = 1
    a, ca = sd.forward(q, table, table, ids=ids)
    b, cb = mc.forward(q, table, table, ids=ids)
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(cb.weights, ca.weights, rtol=1e-6, atol=1e-7)
    G = rng.standard_normal(a.shape).astype(np.float32)
    ga, gb = sd.backward(ca, G), mc.backward(cb, G)
    for k in ("query", "keys", "values"):
        np.testing.assert_allclose(gb[k], ga[k], rtol=1e-5, atol=1e-5, err_msg=k)
    np.testing.assert_array_equal(gb["mix"], 0)
    # float64: equal to rounding
    sd64 = MECHANISMS["scaled_dot"](d, temperature=0.8, dtype=np.float64)
    mc64 = MixedCurvatureAttention(d, dims=(d, 0, 0), heads=heads, temperature=0.8, dtype=np.float64)
    np.testing.assert_allclose(mc64.forward(q, table, table, ids=ids)[0], sd64.forward(q, table, table, ids=ids)[0],
                               rtol=1e-13, atol=1e-14)


def test_mixing_weights_are_a_softmax_over_the_present_blocks():
    m = _mech(9, (4, 0, 5), heads=2)
    w = m.mixing_weights()
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    assert np.all(w[:, 1] == 0)
    q, K, V, mask = _inputs()
    _, cache = m.forward(q, K, V, mask)
    g = m.backward(cache, np.ones((3, 4)))["mix"]
    assert np.all(g[:, 1] == 0) and np.any(g[:, [0, 2]] != 0)


def test_distances_are_geodesic_on_each_factor():
    """Points on one ray through the origin: the distances are differences of distances to the origin."""
    d, sig = 6, 0.1
    q = np.full((1, d), 1.0)
    K = np.stack([q[0] * 2.0, q[0] * 3.0])[None]
    r = sig * np.linalg.norm(np.stack([q[0], K[0, 0], K[0, 1]]), axis=1)
    for dims, dist0 in (((0, 6, 0), lambda x: 2 * np.arctanh(x)), ((0, 0, 6), lambda x: 2 * np.arctan(x))):
        m = MixedCurvatureAttention(d, dims=dims, input_scale=sig, dtype=np.float64)
        s = -np.abs(dist0(r[1:]) - dist0(r[0])) / sig
        np.testing.assert_allclose(m.weights(q, K)[0], np.exp(s - s.max()) / np.exp(s - s.max()).sum(), rtol=1e-9)


def test_points_beyond_the_ball_are_pulled_inside():
    rng = np.random.default_rng(6)
    q = rng.standard_normal((3, 9)) * 3
    K = rng.standard_normal((3, 6, 9)) * 3
    K[:, ::2] *= 0.1  # some keys inside the ball, some beyond
    q[1] *= 0.05
    V = rng.standard_normal((3, 6, 4))
    m = _mech(9, (3, 3, 3), input_scale=0.5)
    assert (0.5 * np.linalg.norm(q[:, 3:6], axis=1) > 1).sum() == 2
    want = rg.mixed_curvature(q, K, V, np.ones((3, 6), bool), (3, 3, 3), m.params["mix"], input_scale=0.5)[0]
    np.testing.assert_allclose(m.forward(q, K, V)[0], want, rtol=1e-6, atol=1e-8)
    ref.check_gradients(m, q, K, V, tol=1e-6)
    # a pulled-in point's norm gets no gradient: scaling the query's block does not change the output
    q2 = q.copy()
    q2[0, 3:6] *= 1.5
    np.testing.assert_allclose(m.forward(q2, K, V)[0][0], m.forward(q, K, V)[0][0], rtol=1e-12)


def test_config_errors():
    with pytest.raises(ConfigError, match="sum to dim"):
        MixedCurvatureAttention(8, dims=(4, 4, 4))
    with pytest.raises(ConfigError, match="three"):
        MixedCurvatureAttention(8, dims=(4, 4))
    with pytest.raises(ConfigError):
        MixedCurvatureAttention(8, dims=(10, -1, -1))
    with pytest.raises(ConfigError, match="curvature_h"):
        MixedCurvatureAttention(8, curvature_h=0.5)
    with pytest.raises(ConfigError, match="curvature_s"):
        MixedCurvatureAttention(8, curvature_s=-1.0)
    with pytest.raises(ConfigError, match="heads"):
        MixedCurvatureAttention(8, heads=0)
    with pytest.raises(ConfigError, match="input_scale"):
        MixedCurvatureAttention(8, input_scale=0.0)
    assert default_dims(128) == (64, 32, 32) and default_dims(3) == (3, 0, 0)
    m = MixedCurvatureAttention(8, dims=[2, 3, 3], seed=5)
    assert MixedCurvatureAttention(**m.get_config()).get_config() == m.get_config()


# -- hypothesis properties ----------------------------------------------------------------------
@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), scale=st.sampled_from([1e-30, 1e-6, 1.0, 1e3, 1e12, 1e30]),
       vscale=st.sampled_from([1e-20, 1.0, 1e20]), n=st.integers(1, 8))
def test_finite_for_finite_inputs_of_any_scale(seed, scale, vscale, n):
    rng = np.random.default_rng(seed)
    q = (rng.standard_normal((3, 8)) * scale).astype(np.float32)
    K = (rng.standard_normal((3, n, 8)) * scale).astype(np.float32)
    V = (rng.standard_normal((3, n, 3)) * vscale).astype(np.float32)
    mask = rng.random((3, n)) > 0.3
    m = MixedCurvatureAttention(8, seed=1)
    out, cache = m.forward(q, K, V, mask)
    assert np.isfinite(out).all() and np.isfinite(cache.weights).all()
    rows = mask.any(axis=1)
    np.testing.assert_allclose(cache.weights.sum(axis=1)[rows], 1.0, rtol=1e-4)
    assert all(np.isfinite(g).all() for g in m.backward(cache, np.ones_like(out)).values())


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 7))
def test_fully_masked_rows_give_zero_output_weights_and_gradients(seed, n):
    q, K, V, mask = _inputs(n=n, seed=seed % 1000)
    mask[1] = False
    m = _mech(9, (3, 3, 3), seed=seed % 7)
    out, cache = m.forward(q, K, V, mask)
    assert np.all(out[1] == 0) and np.all(cache.weights[1] == 0)
    g = m.backward(cache, np.ones_like(out))
    assert np.all(g["keys"][~mask] == 0) and np.all(g["values"][~mask] == 0) and np.all(g["query"][1] == 0)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 9), scale=st.sampled_from([0.01, 1.0, 30.0]))
def test_identical_keys_give_uniform_weights(seed, n, scale):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((2, 9)) * scale
    K = np.repeat(rng.standard_normal((2, 1, 9)) * scale, n, axis=1)
    mask = rng.random((2, n)) > 0.3
    mask[:, 0] = True
    w = _mech(9, (3, 3, 3), seed=seed % 5).weights(q, K, mask)
    np.testing.assert_allclose(w, np.where(mask, 1.0 / mask.sum(axis=1, keepdims=True), 0.0), rtol=1e-9, atol=1e-12)


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_deterministic_given_seed(seed):
    q, K, V, mask = _inputs()
    a, b = MixedCurvatureAttention(9, seed=seed), MixedCurvatureAttention(9, seed=seed)
    np.testing.assert_array_equal(a.params["mix"], b.params["mix"])
    np.testing.assert_array_equal(a.forward(q, K, V, mask)[0], b.forward(q, K, V, mask)[0])
    assert not np.array_equal(a.params["mix"], MixedCurvatureAttention(9, seed=seed + 1).params["mix"])


def test_row_chunks_on_threads_write_the_same_outputs():
    """A batch large enough for the row-chunk split (the chunks write into shared outputs): the
    same bits on 1 and 2 threads, the weights-only call agrees, and a sample of rows matches the
    explicit reference."""
    rng = np.random.default_rng(5)
    Bb, n, d, rows = 900, 32, 16, 400  # work 900 * 32 * 88 > MIN_PARALLEL_WORK
    dims = (6, 5, 5)
    table = rng.standard_normal((rows, d))
    ids = rng.integers(-1, rows, (Bb, n))
    q = rng.standard_normal((Bb, d))
    m = _mech(d, dims, heads=2)

    def run():
        out, cache = m.forward(q, table, table, ids=ids)
        return out, cache.weights, cache.inspect["head_weights"], m.weights(q, table, ids=ids)

    one, two = ref.with_threads(1, run), ref.with_threads(2, run)
    for a, b in zip(one, two, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(two[1], two[3])
    rows_ = np.r_[0:3, 448:453, Bb - 3:Bb]
    mask = ids[rows_] >= 0
    K = np.where(mask[..., None], table[np.maximum(ids[rows_], 0)], 0.0)
    want, wm, wh = rg.mixed_curvature(q[rows_], K, K, mask, dims, m.params["mix"], -1.0, 1.0, 1.0, None)
    np.testing.assert_allclose(two[0][rows_], want, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(two[1][rows_], wm, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(two[2][rows_], wh, rtol=1e-9, atol=1e-12)
