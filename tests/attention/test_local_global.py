"""local_global: numpy reference, one-group-empty behaviour, attention pattern, FD gradients."""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from ruvector_hnsw.attention import Context
from ruvector_hnsw.attention.local_global import LocalGlobalAttention
from ruvector_hnsw.errors import DimensionMismatchError, InvalidInputError, MissingContextError
from tests.attention import _reference as ref


def _inputs(B=4, n=7, d=5, dv=5, seed=0):
    rng = np.random.default_rng(seed)
    mask = rng.random((B, n)) > 0.2
    layer = rng.integers(0, 3, (B, n)).astype(np.int8)
    layer[0, :3], layer[0, 3:] = 0, 1  # row 0 has both groups
    mask[0] = True
    layer[1] = 0  # row 1: local only
    layer[2] = 2  # row 2: global only
    mask[3] = False  # row 3: nothing
    return rng.standard_normal((B, d)), rng.standard_normal((B, n, d)), rng.standard_normal((B, n, dv)), mask, layer


def _randomise(att, seed=1):
    rng = np.random.default_rng(seed)
    att.set_params({k: rng.standard_normal(v.shape) * 0.5 for k, v in att.params.items()})


@pytest.mark.parametrize("dv", [5, 3])
def test_matches_reference(dv):
    q, K, V, mask, layer = _inputs(dv=dv)
    att = LocalGlobalAttention(5, value_dim=dv, temperature=0.9, dtype=np.float64, seed=0)
    _randomise(att)
    out, cache = att.forward(q, K, V, mask, context=Context(layer=layer))
    want, WL, WG, gate = ref.local_global(att.params, q, K, V, mask, layer, temperature=0.9)
    np.testing.assert_allclose(out, want, rtol=1e-10, atol=1e-12)
    ins = cache.inspect
    assert set(ins) == {"local_weights", "global_weights", "gate", "local_count", "global_count"}
    np.testing.assert_allclose(ins["local_weights"], WL, atol=1e-12)
    np.testing.assert_allclose(ins["global_weights"], WG, atol=1e-12)
    np.testing.assert_allclose(ins["gate"], gate, atol=1e-12)
    assert gate[1] == 1.0 and gate[2] == 0.0
    assert list(ins["local_count"]) == [3, int(mask[1].sum()), 0, 0]
    np.testing.assert_allclose(cache.weights.sum(1), [1, 1, 1, 0], atol=1e-12)
    w = att.weights(q, K, mask, context=Context(layer=layer), values=V)
    np.testing.assert_allclose(w, cache.weights, atol=1e-12)
    pat = att.attention_pattern(q, K, V, mask, context=Context(layer=layer))  # the separate pure call
    np.testing.assert_array_equal(pat.combined, cache.weights)
    np.testing.assert_array_equal(pat.gate, ins["gate"])
    assert np.all(out[3] == 0)


def test_one_group_empty_gives_other_group_only():
    q, K, V, mask, layer = _inputs()
    att = LocalGlobalAttention(5, dtype=np.float64, seed=0)
    _randomise(att)
    out, _ = att.forward(q, K, V, mask, context=Context(layer=layer))
    # row 1 is all local: plain softmax attention with the local query
    s = K[1] @ (att.params["W_local"] @ q[1]) / np.sqrt(5)
    np.testing.assert_allclose(out[1], ref.softmax_masked(s, mask[1]) @ V[1], atol=1e-12)
    s = K[2] @ (att.params["W_global"] @ q[2]) / np.sqrt(5)
    np.testing.assert_allclose(out[2], ref.softmax_masked(s, mask[2]) @ V[2], atol=1e-12)


def test_starts_as_two_scaled_dot_attentions():
    q, K, V, mask, layer = _inputs()
    att = LocalGlobalAttention(5, dtype=np.float64, seed=0)
    pat = att.attention_pattern(q, K, V, mask, context=Context(layer=layer))
    loc = mask & (layer == 0)
    for b in range(2):
        s = K[b] @ q[b] / np.sqrt(5)
        np.testing.assert_allclose(pat.local_weights[b], ref.softmax_masked(s, loc[b]), atol=0.05)


def test_gradients_dense_and_gather():
    q, K, V, mask, layer = _inputs(B=4, n=5, d=3, dv=2)
    att = LocalGlobalAttention(3, value_dim=2, dtype=np.float64, seed=0)
    _randomise(att, 3)
    ref.check_gradients(att, q, K, V, mask, context=Context(layer=layer))
    rng = np.random.default_rng(4)
    ids = np.array([[0, 2, 2, -1], [4, 1, 3, 0]])
    lay = np.array([[0, 1, 0, 1], [1, 0, 2, 0]], dtype=np.int8)
    att = LocalGlobalAttention(3, value_dim=2, dtype=np.float64, seed=1)
    _randomise(att, 5)
    ref.check_gradients(
        att, rng.standard_normal((2, 3)), rng.standard_normal((5, 3)), rng.standard_normal((5, 2)),
        context=Context(layer=lay), ids=ids,
    )


def test_unbatched_pattern():
    q, K, V, mask, layer = _inputs()
    att = LocalGlobalAttention(5, seed=0)
    out, cache = att.forward(q[0], K[0], V[0], mask[0], context=Context(layer=layer[0]))
    assert out.shape == (5,)
    assert cache.inspect["local_weights"].shape == (7,) and cache.weights.shape == (7,)
    assert np.ndim(cache.inspect["gate"]) == 0
    pat = att.attention_pattern(q[0], K[0], V[0], mask[0], context=Context(layer=layer[0]))
    np.testing.assert_array_equal(pat.local_weights, cache.inspect["local_weights"])


def test_errors():
    q, K, V, mask, layer = _inputs(dv=3)
    att = LocalGlobalAttention(5, value_dim=3)
    with pytest.raises(MissingContextError, match=r"context.layer"):
        att.forward(q, K, V, mask)
    with pytest.raises(DimensionMismatchError, match="value_dim"):
        LocalGlobalAttention(5).forward(q, K, V, mask, context=Context(layer=layer))
    with pytest.raises(InvalidInputError, match="values="):
        att.weights(q, K, mask, context=Context(layer=layer))


def test_threaded_row_chunks_equal_single_thread_and_reference():
    """Large enough for the row-chunk split (forward, pattern, params-only backward): the same
    bits on 1 and 2 kernel threads, and the chunked result matches the plain-numpy reference.

    BLAS stays on one thread in both runs: the param gradients' ``dQ.T @ q`` products are BLAS
    GEMMs, whose multi-threaded OpenBLAS sums round differently from the single-threaded ones."""
    rng = np.random.default_rng(7)
    Bb, n, d, rows = 1200, 40, 32, 700
    table = rng.standard_normal((rows, d)).astype(np.float32)
    ids = rng.integers(-1, rows, (Bb, n))
    layer = rng.integers(0, 3, (Bb, n)).astype(np.int8)
    q = rng.standard_normal((Bb, d)).astype(np.float32)
    G = rng.standard_normal((Bb, d)).astype(np.float32)
    att = LocalGlobalAttention(d, seed=0)
    _randomise(att, 2)
    ctx = Context(layer=layer)

    def run():
        with threadpool_limits(1, user_api="blas"):
            out, cache = att.forward(q, table, table, context=ctx, ids=ids)
            return out, dict(cache.inspect), cache.weights, att.backward(cache, G, input_grads=False)

    one, two = ref.with_threads(1, run), ref.with_threads(2, run)
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_array_equal(one[2], two[2])
    for k in one[1]:
        np.testing.assert_array_equal(one[1][k], two[1][k], err_msg=k)
    for k in one[3]:
        np.testing.assert_array_equal(one[3][k], two[3][k], err_msg=k)
    mask = ids >= 0
    K = np.where(mask[..., None], table[np.maximum(ids, 0)], 0.0).astype(np.float64)
    p64 = {k: v.astype(np.float64) for k, v in att.params.items()}
    want, WL, WG, gate = ref.local_global(p64, q.astype(np.float64), K, K, mask, layer)
    np.testing.assert_allclose(two[0], want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(two[1]["local_weights"], WL, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(two[1]["global_weights"], WG, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(two[1]["gate"], gate, rtol=1e-4, atol=1e-6)
