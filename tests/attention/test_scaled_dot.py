"""scaled_dot: numpy reference, gradients (dense and gather form), gather semantics, errors."""

from __future__ import annotations

import numpy as np
import pytest

from ruvector_hnsw.attention import MECHANISMS
from ruvector_hnsw.attention.scaled_dot import ScaledDotAttention
from ruvector_hnsw.errors import ConfigError, NonFiniteError
from tests.attention import _reference as ref


def _inputs(B=4, n=6, d=5, dv=3, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, d))
    K = rng.standard_normal((B, n, d))
    V = rng.standard_normal((B, n, dv))
    mask = rng.random((B, n)) > 0.3
    mask[0, 0] = True
    mask[-1] = False  # one fully masked row
    return q, K, V, mask


def test_registered():
    assert MECHANISMS["scaled_dot"] is ScaledDotAttention


@pytest.mark.parametrize("temperature", [1.0, 0.5, 3.0])
def test_matches_reference(temperature):
    q, K, V, mask = _inputs()
    att = ScaledDotAttention(5, temperature=temperature)
    out, _ = att.forward(q, K, V, mask)
    want, W = ref.scaled_dot(q, K, V, mask, temperature)
    assert out.dtype == np.float32 and out.shape == (4, 3)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(att.weights(q, K, mask), W, rtol=1e-5, atol=1e-7)
    assert np.all(out[-1] == 0) and np.all(att.weights(q, K, mask)[-1] == 0)


def test_float64_path_is_float64_and_exact():
    q, K, V, mask = _inputs()
    att = ScaledDotAttention(5, dtype=np.float64)
    out, _ = att.forward(q, K, V, mask)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, ref.scaled_dot(q, K, V, mask)[0], rtol=1e-12, atol=1e-14)


def test_unbatched():
    q, K, V, mask = _inputs()
    att = ScaledDotAttention(5, dtype=np.float64)
    batched = att.forward(q[1:2], K[1:2], V[1:2], mask[1:2])[0][0]
    out, cache = att.forward(q[1], K[1], V[1], mask[1])
    assert out.shape == (3,)
    np.testing.assert_allclose(out, batched)
    g = att.backward(cache, np.ones(3))
    assert g["query"].shape == (5,) and g["keys"].shape == (6, 5) and g["values"].shape == (6, 3)
    assert att.weights(q[1], K[1]).shape == (6,)


def test_gradients_dense():
    q, K, V, mask = _inputs(B=3, n=4, d=3, dv=2)
    ref.check_gradients(ScaledDotAttention(3, temperature=0.7, dtype=np.float64), q, K, V, mask)


def test_gradients_gather():
    rng = np.random.default_rng(3)
    table_k = rng.standard_normal((7, 3))
    table_v = rng.standard_normal((7, 2))
    ids = np.array([[0, 3, 3, -1], [6, 1, 2, 5], [-1, -1, -1, -1]])
    q = rng.standard_normal((3, 3))
    errs = ref.check_gradients(ScaledDotAttention(3, dtype=np.float64), q, table_k, table_v, ids=ids)
    assert set(errs) == {"query", "keys", "values"}


def test_gather_equals_dense_and_scatters():
    rng = np.random.default_rng(1)
    table = rng.standard_normal((50, 8)).astype(np.float32)
    ids = rng.integers(-1, 50, size=(5, 9))
    ids[2] = -1
    q = rng.standard_normal((5, 8)).astype(np.float32)
    extra = rng.random((5, 9)) > 0.2
    att = ScaledDotAttention(8)
    out_g, cache = att.forward(q, table, table, mask=extra, ids=ids)
    G = rng.standard_normal(out_g.shape).astype(np.float32)
    gg = att.backward(cache, G)
    dense_k = table[np.maximum(ids, 0)]
    m = (ids >= 0) & extra
    out_d, cache = att.forward(q, dense_k, dense_k, mask=m)
    gd = att.backward(cache, G)
    np.testing.assert_allclose(out_g, out_d, rtol=1e-6, atol=1e-7)
    assert np.all(out_g[2] == 0)
    for name in ("keys", "values"):
        want = np.zeros_like(table)
        np.add.at(want, ids[m], gd[name][m])
        assert gg[name].shape == table.shape
        np.testing.assert_allclose(gg[name], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gg["query"], gd["query"], rtol=1e-5, atol=1e-6)


def test_gather_checks_referenced_rows_only():
    rng = np.random.default_rng(0)
    table = rng.standard_normal((10, 4)).astype(np.float32)
    table[7, 1] = np.nan
    q = rng.standard_normal((2, 4))
    att = ScaledDotAttention(4)
    out = att.forward(q, table, table, ids=np.array([[0, 1, 2], [3, 4, -1]]))[0]  # row 7 untouched: fine
    assert np.isfinite(out).all()
    with pytest.raises(NonFiniteError, match="attended items"):
        att.forward(q, table, table, ids=np.array([[0, 7, 2], [3, 4, -1]]))
    table[7, 1] = np.inf
    with pytest.raises(NonFiniteError):
        att.forward(q, table, table, ids=np.array([[0, 7, 2], [3, 4, -1]]))


def test_large_batch_threaded_matches_serial():
    rng = np.random.default_rng(0)
    table = rng.standard_normal((500, 32)).astype(np.float32)
    ids = rng.integers(0, 500, size=(600, 40))
    q = rng.standard_normal((600, 32)).astype(np.float32)
    att = ScaledDotAttention(32)
    a = ref.with_threads(1, lambda: att.forward(q, table, table, ids=ids)[0])
    b = ref.with_threads(2, lambda: att.forward(q, table, table, ids=ids)[0])
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), "x", True])
def test_bad_temperature(bad):
    with pytest.raises(ConfigError, match="temperature"):
        ScaledDotAttention(4, temperature=bad)
