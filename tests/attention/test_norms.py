"""LayerNorm / RMSNorm: forward against plain numpy references, backward against finite differences (float64)."""

from __future__ import annotations

import numpy as np
import pytest

from ruvector_hnsw.attention.norms import (
    LayerNorm,
    RMSNorm,
    layer_norm_backward,
    layer_norm_forward,
    make_norm,
    rms_norm_backward,
    rms_norm_forward,
)
from ruvector_hnsw.errors import ConfigError, ShapeMismatchError

EPS = 1e-5


def _ref_layer(x, gain, bias):
    out = np.empty_like(x)
    for idx in np.ndindex(*x.shape[:-1]):
        row = x[idx]
        mu = sum(row) / row.size
        var = sum((r - mu) ** 2 for r in row) / row.size
        out[idx] = [gain[j] * (row[j] - mu) / np.sqrt(var + EPS) + bias[j] for j in range(row.size)]
    return out


def _ref_rms(x, gain):
    out = np.empty_like(x)
    for idx in np.ndindex(*x.shape[:-1]):
        row = x[idx]
        rms = np.sqrt(sum(r * r for r in row) / row.size + EPS)
        out[idx] = [gain[j] * row[j] / rms for j in range(row.size)]
    return out


def _inputs(shape, seed=0):
    rng = np.random.default_rng(seed)
    d = shape[-1]
    return rng.standard_normal(shape) * 2 + 0.7, 1 + 0.3 * rng.standard_normal(d), 0.2 * rng.standard_normal(d)


@pytest.mark.parametrize("shape", [(5, 7), (3, 4, 6), (7,)])
def test_forward_matches_plain_numpy(shape):
    x, gain, bias = _inputs(shape)
    y, _ = layer_norm_forward(x, gain, bias, EPS)
    np.testing.assert_allclose(y, _ref_layer(x, gain, bias), rtol=1e-12, atol=1e-12)
    y2, _ = rms_norm_forward(x, gain, EPS)
    np.testing.assert_allclose(y2, _ref_rms(x, gain), rtol=1e-12, atol=1e-12)
    x0 = x.copy()
    layer_norm_forward(x, gain, bias, EPS)
    np.testing.assert_array_equal(x, x0)  # pure


def _fd(f, arr, eps=1e-6):
    out = np.zeros_like(arr)
    flat, g = arr.reshape(-1), out.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up = f()
        flat[i] = old - eps
        down = f()
        flat[i] = old
        g[i] = (up - down) / (2 * eps)
    return out


@pytest.mark.parametrize("shape", [(4, 5), (2, 3, 4)])
def test_backward_matches_finite_differences(shape):
    x, gain, bias = _inputs(shape, seed=1)
    gy = np.random.default_rng(2).standard_normal(shape)

    def lfun():
        return float((layer_norm_forward(x, gain, bias, EPS)[0] * gy).sum())

    def rfun():
        return float((rms_norm_forward(x, gain, EPS)[0] * gy).sum())

    dx, dg, db = layer_norm_backward(layer_norm_forward(x, gain, bias, EPS)[1], gy)
    np.testing.assert_allclose(dx, _fd(lfun, x), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dg, _fd(lfun, gain), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(db, _fd(lfun, bias), rtol=1e-6, atol=1e-8)
    dx, dg = rms_norm_backward(rms_norm_forward(x, gain, EPS)[1], gy)
    np.testing.assert_allclose(dx, _fd(rfun, x), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dg, _fd(rfun, gain), rtol=1e-6, atol=1e-8)


def test_modules_params_dtypes_and_errors():
    ln, rn = LayerNorm(6), RMSNorm(6, dtype=np.float64)
    assert set(ln.params) == {"gain", "bias"} and set(rn.params) == {"gain"}
    np.testing.assert_array_equal(ln.params["gain"], np.ones(6, np.float32))
    x = np.random.default_rng(0).standard_normal((3, 6))
    y, cache = ln.forward(x)
    assert y.dtype == np.float32
    g = ln.backward(cache, np.ones((3, 6)))
    assert set(g) == {"x", "gain", "bias"} and g["x"].dtype == np.float32
    y64, _ = rn.forward(x)
    np.testing.assert_allclose(y64, _ref_rms(x, np.ones(6)), rtol=1e-12)
    ln.params["gain"][...] = 2.0  # params are read at forward time, the cache keeps its own copy
    np.testing.assert_allclose(ln.forward(x)[0], 2 * y, rtol=1e-6)
    assert isinstance(make_norm("layer", 4), LayerNorm) and isinstance(make_norm("rms", 4), RMSNorm)
    assert make_norm(None, 4) is None
    with pytest.raises(ConfigError, match="norm"):
        make_norm("batch", 4)
    with pytest.raises(ConfigError, match="dim"):
        LayerNorm(0)
    with pytest.raises(ConfigError, match="eps"):
        RMSNorm(3, eps=0.0)
    with pytest.raises(ShapeMismatchError, match="gain"):
        layer_norm_forward(x, np.ones(5), np.zeros(6))
    with pytest.raises(ShapeMismatchError, match="bias"):
        layer_norm_forward(x, np.ones(6), np.zeros(5))
