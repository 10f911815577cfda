"""rope: rotation reference, norms preserved, pos = 0 equals scaled_dot exactly, gradients, context."""

from __future__ import annotations

import numpy as np
import pytest

from ruvector_hnsw.attention import Context
from ruvector_hnsw.attention.rope import RoPEAttention
from ruvector_hnsw.attention.scaled_dot import ScaledDotAttention
from ruvector_hnsw.errors import ConfigError, MissingContextError, ShapeMismatchError
from tests.attention import _reference as ref


def _inputs(B=3, n=5, d=6, dv=4, seed=0):
    rng = np.random.default_rng(seed)
    mask = rng.random((B, n)) > 0.3
    mask[:, 0] = True
    ctx = Context(
        dist=rng.random((B, n)) * 3,
        layer=rng.integers(0, 3, (B, n)).astype(np.int8),
        hops=rng.integers(0, 4, (B, n)),
    )
    return rng.standard_normal((B, d)), rng.standard_normal((B, n, d)), rng.standard_normal((B, n, dv)), mask, ctx


@pytest.mark.parametrize("d", [6, 7])
@pytest.mark.parametrize(
    ("position", "scale", "base"), [("dist", 1.0, 10000.0), ("layer", 0.5, 100.0), ("hops", 2.0, 10.0)]
)
def test_matches_reference(position, scale, base, d):
    q, K, V, mask, ctx = _inputs(d=d)
    att = RoPEAttention(d, position=position, scale=scale, base=base, dtype=np.float64)
    pos = np.asarray(getattr(ctx, position), dtype=np.float64) * scale
    want, W = ref.rope(q, K, V, mask, pos, base)
    np.testing.assert_allclose(att.forward(q, K, V, mask, context=ctx)[0], want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(att.weights(q, K, mask, context=ctx), W, rtol=1e-10, atol=1e-12)


def test_norms_preserved_and_rotation_changes_keys():
    q, K, V, mask, ctx = _inputs()
    att = RoPEAttention(6, dtype=np.float64)
    batch, *_ = att._prepare(q, K, V, mask, ctx, None)
    Kr = att.rotated_keys(batch)
    np.testing.assert_allclose(np.linalg.norm(Kr, axis=-1)[mask], np.linalg.norm(K, axis=-1)[mask], rtol=1e-12)
    assert not np.allclose(Kr[mask], K[mask])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zero_positions_equal_scaled_dot_exactly(dtype):
    q, K, V, mask, _ = _inputs(B=20, n=30, d=16, dv=5)
    zero = Context(dist=np.zeros((20, 30)))
    a = RoPEAttention(16, dtype=dtype).forward(q, K, V, mask, context=zero)[0]
    b = ScaledDotAttention(16, dtype=dtype).forward(q, K, V, mask)[0]
    np.testing.assert_array_equal(a, b)
    rng = np.random.default_rng(0)
    table = rng.standard_normal((100, 16))
    ids = rng.integers(-1, 100, size=(20, 30))
    a = RoPEAttention(16, dtype=dtype).forward(q, table, table, context=zero, ids=ids)[0]
    b = ScaledDotAttention(16, dtype=dtype).forward(q, table, table, ids=ids)[0]
    np.testing.assert_array_equal(a, b)


def test_gradients_dense_and_gather():
    q, K, V, mask, ctx = _inputs(B=2, n=4, d=5, dv=2)
    ref.check_gradients(RoPEAttention(5, scale=1.3, base=50.0, dtype=np.float64), q, K, V, mask, context=ctx)
    rng = np.random.default_rng(2)
    ids = np.array([[0, 2, 2, -1], [4, 1, 3, 0]])
    ref.check_gradients(
        RoPEAttention(5, position="hops", dtype=np.float64),
        rng.standard_normal((2, 5)), rng.standard_normal((5, 5)), rng.standard_normal((5, 3)),
        context=Context(hops=np.array([[0, 1, 2, 0], [3, 1, 1, 2]])), ids=ids,
    )


def test_context_errors():
    q, K, V, mask, ctx = _inputs()
    with pytest.raises(MissingContextError, match=r"context.dist"):
        RoPEAttention(6).forward(q, K, V, mask)
    with pytest.raises(MissingContextError, match=r"context.hops"):
        RoPEAttention(6, position="hops").forward(q, K, V, mask, context=Context(dist=ctx.dist))[0]
    with pytest.raises(ShapeMismatchError, match=r"context.dist"):
        RoPEAttention(6).forward(q, K, V, mask, context=Context(dist=np.zeros((3, 4))))
    with pytest.raises(ConfigError, match="position"):
        RoPEAttention(6, position="angle")
    with pytest.raises(ConfigError, match="base"):
        RoPEAttention(6, base=0)
