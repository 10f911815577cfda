"""multi_head: textbook-projection numpy reference, per-head weights, FD gradients (dense + gather)."""

from __future__ import annotations

import numpy as np
import pytest

from ruvector_hnsw.attention.multi_head import MultiHeadAttention
from ruvector_hnsw.errors import ConfigError, DimensionMismatchError
from tests.attention import _reference as ref


def _inputs(B=3, n=5, d=6, dv=4, seed=0):
    rng = np.random.default_rng(seed)
    mask = rng.random((B, n)) > 0.3
    mask[0, 0] = True
    mask[-1] = False
    return rng.standard_normal((B, d)), rng.standard_normal((B, n, d)), rng.standard_normal((B, n, dv)), mask


@pytest.mark.parametrize(("heads", "head_dim"), [(1, 6), (2, 3), (3, 4), (16, 1)])
def test_matches_reference(heads, head_dim):
    q, K, V, mask = _inputs()
    att = MultiHeadAttention(6, heads=heads, head_dim=head_dim, value_dim=4, out_dim=5, seed=2)
    out, _ = att.forward(q, K, V, mask)
    p = {k: v.astype(np.float64) for k, v in att.params.items()}
    want, W = ref.multi_head(p, q, K, V, mask, heads, head_dim)
    assert out.shape == (3, 5)
    np.testing.assert_allclose(out, want, rtol=2e-4, atol=2e-5)
    w = att.weights(q, K, mask)
    assert w.shape == (3, heads, 5)
    np.testing.assert_allclose(w, W, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(w[:2].sum(-1), 1.0, rtol=1e-5)
    assert np.all(out[-1] == 0) and np.all(w[-1] == 0)


def test_param_shapes_and_defaults():
    att = MultiHeadAttention(8, heads=2)
    shapes = {k: v.shape for k, v in att.params.items()}
    assert shapes == {"W_q": (8, 8), "W_k": (8, 8), "W_v": (8, 8), "W_o": (8, 8)}
    assert att.output_dim(8) == 8


def test_gradients_dense():
    q, K, V, mask = _inputs(B=2, n=4, d=4, dv=3)
    att = MultiHeadAttention(4, heads=2, head_dim=2, value_dim=3, out_dim=3, dtype=np.float64, seed=1)
    ref.check_gradients(att, q, K, V, mask)


def test_gradients_gather():
    rng = np.random.default_rng(5)
    tk, tv = rng.standard_normal((6, 4)), rng.standard_normal((6, 3))
    ids = np.array([[0, 2, 2, -1], [5, 4, 1, 0]])
    att = MultiHeadAttention(4, heads=2, head_dim=2, value_dim=3, out_dim=2, dtype=np.float64, seed=1)
    ref.check_gradients(att, rng.standard_normal((2, 4)), tk, tv, ids=ids)


def test_params_update_in_place_changes_output():
    q, K, V, mask = _inputs(dv=6)
    att = MultiHeadAttention(6, heads=2, seed=0)
    before, _ = att.forward(q, K, V, mask)
    W = att.params["W_o"]
    W *= 2.0  # optimizers update in place
    after, _ = att.forward(q, K, V, mask)
    np.testing.assert_allclose(after, 2 * before, rtol=1e-5, atol=1e-6)


def test_errors():
    with pytest.raises(ConfigError, match="heads"):
        MultiHeadAttention(8, heads=17)
    with pytest.raises(ConfigError, match="heads"):
        MultiHeadAttention(8, heads=0)
    q, K, V, mask = _inputs(dv=4)
    with pytest.raises(DimensionMismatchError, match="value_dim"):
        MultiHeadAttention(6, heads=2).forward(q, K, V, mask)[0]
