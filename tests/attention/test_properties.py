"""Hypothesis properties of the part-A mechanisms: finite at any scale, masked rows, uniform weights, seeds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ruvector_hnsw.attention import Context
from tests.attention import _reference as ref

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _weights(att, name, q, K, V, mask, ctx):
    if name == "local_global":
        return att.weights(q, K, mask, context=ctx, values=V)
    return att.weights(q, K, mask, context=ctx)


@pytest.mark.parametrize("name", ref.PART_A)
@SETTINGS
@given(
    seed=st.integers(0, 2**31 - 1),
    scale=st.sampled_from([1e-30, 1e-8, 1.0, 1e4, 1e12, 1e20, 1e30]),
    vscale=st.sampled_from([1e-20, 1.0, 1e20]),
    B=st.integers(1, 4),
    n=st.integers(1, 9),
)
def test_finite_outputs_for_finite_inputs_of_any_scale(name, seed, scale, vscale, B, n):
    rng = np.random.default_rng(seed)
    d, dv = 4, 3
    q = (rng.standard_normal((B, d)) * scale).astype(np.float32)
    K = (rng.standard_normal((B, n, d)) * scale).astype(np.float32)
    V = (rng.standard_normal((B, n, dv)) * vscale).astype(np.float32)
    mask = rng.random((B, n)) > 0.3
    ctx = ref.make_context(B, n, seed=seed % 1000)
    att = ref.make_mechanism(name, d, dv, seed=1)
    out, _ = att.forward(q, K, V, mask, context=ctx)
    assert np.isfinite(out).all()
    w = _weights(att, name, q, K, V, mask, ctx)
    assert np.isfinite(w).all()
    rows = mask.any(axis=1)
    np.testing.assert_allclose(w.sum(axis=-1)[rows], 1.0, rtol=1e-4)
    assert np.all(w[~rows] == 0)


@pytest.mark.parametrize("name", ref.PART_A)
@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 8))
def test_fully_masked_rows_give_zero_output_weights_and_gradients(name, seed, n):
    rng = np.random.default_rng(seed)
    B, d, dv = 3, 4, 3
    q, K, V = rng.standard_normal((B, d)), rng.standard_normal((B, n, d)), rng.standard_normal((B, n, dv))
    mask = rng.random((B, n)) > 0.2
    mask[1] = False
    ctx = ref.make_context(B, n, seed=seed % 1000)
    att = ref.make_mechanism(name, d, dv, dtype=np.float64, seed=2)
    out, cache = att.forward(q, K, V, mask, context=ctx)
    assert np.all(out[1] == 0) and np.isfinite(out).all()
    assert np.all(_weights(att, name, q, K, V, mask, ctx)[1] == 0)
    g = att.backward(cache, np.ones_like(out))
    assert np.all(g["keys"][1] == 0) and np.all(g["values"][1] == 0)
    assert all(np.isfinite(v).all() for v in g.values())
    # masked items never receive gradient
    assert np.all(g["keys"][~mask] == 0) and np.all(g["values"][~mask] == 0)


@pytest.mark.parametrize("name", ref.PART_A)
@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 10), scale=st.sampled_from([0.01, 1.0, 100.0]))
def test_identical_keys_give_uniform_weights(name, seed, n, scale):
    rng = np.random.default_rng(seed)
    B, d, dv = 2, 4, 3
    q = rng.standard_normal((B, d)) * scale
    K = np.repeat(rng.standard_normal((B, 1, d)) * scale, n, axis=1)
    V = rng.standard_normal((B, n, dv))
    mask = rng.random((B, n)) > 0.3
    mask[:, 0] = True
    layer = rng.integers(0, 2, (B, n)).astype(np.int8)
    ctx = Context(dist=np.full((B, n), 0.7), layer=layer, hops=np.ones((B, n), np.int64))  # same position
    att = ref.make_mechanism(name, d, dv, dtype=np.float64, seed=3)
    if name == "local_global":
        _, cache = att.forward(q, K, V, mask, context=ctx)
        ins = cache.inspect
        for w, grp in ((ins["local_weights"], layer == 0), (ins["global_weights"], layer >= 1)):
            sel = mask & grp
            for b in range(B):
                if sel[b].any():
                    np.testing.assert_allclose(w[b][sel[b]], 1.0 / sel[b].sum(), rtol=1e-9)
        return
    w = att.weights(q, K, mask, context=ctx)
    cnt = mask.sum(axis=1)
    expect = np.where(mask, 1.0 / cnt[:, None], 0.0)
    if w.ndim == 3:
        expect = np.repeat(expect[:, None], w.shape[1], axis=1)
    np.testing.assert_allclose(w, expect, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ref.PART_A)
@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_deterministic_given_seed(name, seed):
    rng = np.random.default_rng(seed)
    B, n, d, dv = 3, 6, 4, 3
    q, K, V = rng.standard_normal((B, d)), rng.standard_normal((B, n, d)), rng.standard_normal((B, n, dv))
    ctx = ref.make_context(B, n)
    a = ref.make_mechanism(name, d, dv, seed=seed)
    b = ref.make_mechanism(name, d, dv, seed=seed)
    np.testing.assert_array_equal(a.forward(q, K, V, context=ctx)[0], b.forward(q, K, V, context=ctx)[0])
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    other = ref.make_mechanism(name, d, dv, seed=seed + 1)
    if a.params:
        assert any(not np.array_equal(a.params[k], other.params[k]) for k in a.params)
    if name == "linear":
        assert not np.array_equal(a.features, other.features)
