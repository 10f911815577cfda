"""linear (Performer FAVOR+): explicit feature-map reference, error falls with num_features, gradients."""

from __future__ import annotations

import numpy as np
import pytest

from ruvector_hnsw.attention.linear import LinearAttention, orthogonal_gaussian_features
from ruvector_hnsw.errors import ConfigError
from tests.attention import _reference as ref


def _inputs(B=4, n=6, d=8, dv=3, seed=0, scale=0.5):
    rng = np.random.default_rng(seed)
    mask = rng.random((B, n)) > 0.3
    mask[:, 0] = True
    return (
        rng.standard_normal((B, d)) * scale,
        rng.standard_normal((B, n, d)) * scale,
        rng.standard_normal((B, n, dv)),
        mask,
    )


@pytest.mark.parametrize("orthogonal", [True, False])
def test_matches_explicit_feature_maps(orthogonal):
    q, K, V, mask = _inputs()
    att = LinearAttention(8, num_features=32, orthogonal=orthogonal, temperature=1.5, seed=3, dtype=np.float64)
    want, W = ref.performer(q, K, V, mask, att.features, temperature=1.5)
    np.testing.assert_allclose(att.forward(q, K, V, mask)[0], want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(att.weights(q, K, mask), W, rtol=1e-10, atol=1e-12)
    att32 = LinearAttention(8, num_features=32, orthogonal=orthogonal, temperature=1.5, seed=3)
    np.testing.assert_allclose(att32.forward(q, K, V, mask)[0], want, rtol=1e-4, atol=1e-5)


def test_error_vs_softmax_falls_with_num_features():
    q, K, V, mask = _inputs(B=16, n=12, d=8, seed=1, scale=0.6)
    exact = ref.scaled_dot(q, K, V, mask)[0]
    errs = []
    for m in (4, 32, 256, 2048):
        e = [
            np.abs(LinearAttention(8, num_features=m, seed=s, dtype=np.float64).forward(q, K, V, mask)[0] - exact)
            .mean()
            for s in range(6)
        ]
        errs.append(float(np.mean(e)))
    assert errs[0] > errs[1] > errs[2] > errs[3], errs
    assert errs[3] < 0.2 * errs[0], errs


def test_orthogonal_features():
    rng = np.random.default_rng(0)
    W = orthogonal_gaussian_features(20, 8, rng)
    assert W.shape == (20, 8)
    block = W[:8] / np.linalg.norm(W[:8], axis=1, keepdims=True)
    np.testing.assert_allclose(block @ block.T, np.eye(8), atol=1e-10)


def test_gradients_dense_and_gather():
    q, K, V, mask = _inputs(B=2, n=4, d=3, dv=2, seed=4, scale=1.0)
    mask[1] = False
    ref.check_gradients(LinearAttention(3, num_features=5, seed=0, dtype=np.float64), q, K, V, mask)
    rng = np.random.default_rng(9)
    ids = np.array([[0, 2, 2, -1], [4, 1, 3, 0]])
    ref.check_gradients(
        LinearAttention(3, num_features=4, temperature=0.7, seed=1, dtype=np.float64),
        rng.standard_normal((2, 3)), rng.standard_normal((5, 3)), rng.standard_normal((5, 2)), ids=ids,
    )


def test_no_params_and_seeded_features():
    a, b = LinearAttention(6, seed=7), LinearAttention(6, seed=7)
    assert a.params == {}
    np.testing.assert_array_equal(a.features, b.features)
    assert not np.array_equal(a.features, LinearAttention(6, seed=8).features)


def test_bad_config():
    with pytest.raises(ConfigError, match="num_features"):
        LinearAttention(4, num_features=0)
    with pytest.raises(ConfigError, match="orthogonal"):
        LinearAttention(4, orthogonal="yes")
