"""flash: equals scaled_dot (batched and gather forms), gradients, attend_all accuracy and memory."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from ruvector_hnsw.attention.flash import FlashAttention
from ruvector_hnsw.attention.scaled_dot import ScaledDotAttention
from ruvector_hnsw.errors import DimensionMismatchError, EmptyInputError, ShapeMismatchError
from tests.attention import _reference as ref


@pytest.mark.parametrize(("n", "block"), [(1, 4), (7, 3), (64, 64), (200, 16), (130, 128)])
def test_equals_scaled_dot(n, block):
    rng = np.random.default_rng(n)
    B, d = 5, 16
    q = rng.standard_normal((B, d)).astype(np.float32) * 3
    K = rng.standard_normal((B, n, d)).astype(np.float32)
    V = rng.standard_normal((B, n, 8)).astype(np.float32)
    mask = rng.random((B, n)) > 0.4
    mask[:, 0] = True
    mask[-1] = False
    fl = FlashAttention(d, block_size=block, temperature=0.8)
    sd = ScaledDotAttention(d, temperature=0.8)
    np.testing.assert_allclose(fl.forward(q, K, V, mask)[0], sd.forward(q, K, V, mask)[0], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(fl.weights(q, K, mask), sd.weights(q, K, mask), atol=1e-6)
    np.testing.assert_allclose(fl.forward(q, K, V, mask)[0], ref.scaled_dot(q, K, V, mask, 0.8)[0], atol=1e-5)
    assert np.all(fl.forward(q, K, V, mask)[0][-1] == 0)


def test_gather_form_equals_scaled_dot():
    rng = np.random.default_rng(0)
    table = rng.standard_normal((300, 12)).astype(np.float32)
    ids = rng.integers(-1, 300, size=(40, 50))
    q = rng.standard_normal((40, 12)).astype(np.float32)
    a = FlashAttention(12, block_size=8).forward(q, table, table, ids=ids)[0]
    b = ScaledDotAttention(12).forward(q, table, table, ids=ids)[0]
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_gradients_dense_and_gather():
    rng = np.random.default_rng(1)
    q, K, V = rng.standard_normal((3, 3)), rng.standard_normal((3, 5, 3)), rng.standard_normal((3, 5, 2))
    mask = rng.random((3, 5)) > 0.3
    mask[2] = False
    ref.check_gradients(FlashAttention(3, block_size=2, dtype=np.float64), q, K, V, mask)
    ids = np.array([[0, 1, -1], [2, 2, 3]])
    ref.check_gradients(
        FlashAttention(3, block_size=2, dtype=np.float64),
        rng.standard_normal((2, 3)), rng.standard_normal((4, 3)), rng.standard_normal((4, 2)), ids=ids,
    )


def _dense_reference(Q, K, V, scale):
    S = Q @ K.T * scale
    S -= S.max(axis=1, keepdims=True)
    np.exp(S, out=S)
    S /= S.sum(axis=1, keepdims=True)
    return S @ V


@pytest.mark.parametrize(("M", "N", "bq", "bk"), [(1, 1, 128, 512), (37, 301, 8, 64), (200, 1000, 128, 512)])
def test_attend_all_matches_dense(M, N, bq, bk):
    rng = np.random.default_rng(M)
    Q = rng.standard_normal((M, 16)).astype(np.float32)
    K = rng.standard_normal((N, 16)).astype(np.float32)
    V = rng.standard_normal((N, 5)).astype(np.float32)
    fl = FlashAttention(16)
    got = fl.attend_all(Q, K, V, block_q=bq, block_k=bk)
    want = _dense_reference(Q.astype(np.float64), K.astype(np.float64), V.astype(np.float64), fl.scale)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_attend_all_key_mask_and_empty_mask():
    rng = np.random.default_rng(2)
    Q, K, V = rng.standard_normal((9, 4)), rng.standard_normal((30, 4)), rng.standard_normal((30, 3))
    km = rng.random(30) > 0.5
    fl = FlashAttention(4, dtype=np.float64)
    got = fl.attend_all(Q, K, V, key_mask=km, block_q=4, block_k=7)
    np.testing.assert_allclose(got, _dense_reference(Q, K[km], V[km], fl.scale), atol=1e-12)
    assert np.all(fl.attend_all(Q, K, V, key_mask=np.zeros(30, bool)) == 0)


def test_attend_all_huge_scale_finite():
    rng = np.random.default_rng(3)
    Q = (rng.standard_normal((10, 8)) * 1e20).astype(np.float32)
    K = (rng.standard_normal((40, 8)) * 1e20).astype(np.float32)
    V = rng.standard_normal((40, 3)).astype(np.float32)
    out = FlashAttention(8).attend_all(Q, K, V, block_k=16)
    assert np.isfinite(out).all()
    s = Q.astype(np.float64) @ K.T.astype(np.float64)
    np.testing.assert_allclose(out, V[s.argmax(axis=1)], atol=1e-6)  # softmax is one-hot at this scale


def test_attend_all_memory_is_small_fraction_of_dense():
    rng = np.random.default_rng(0)
    M = N = 2048
    Q = rng.standard_normal((M, 32)).astype(np.float32)
    K = rng.standard_normal((N, 32)).astype(np.float32)
    V = rng.standard_normal((N, 32)).astype(np.float32)
    fl = FlashAttention(32)
    fl.attend_all(Q[:4], K[:8], V[:8])

    def peak(f):
        tracemalloc.start()
        f()
        p = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return p

    dense = peak(lambda: _dense_reference(Q, K, V, fl.scale))
    flash = peak(lambda: fl.attend_all(Q, K, V))
    assert dense >= M * N * 4  # the reference really builds the score matrix
    assert flash <= 0.10 * dense, (flash, dense)


def test_attend_all_errors():
    fl = FlashAttention(4)
    with pytest.raises(DimensionMismatchError):
        fl.attend_all(np.zeros((2, 3)), np.zeros((5, 4)), np.zeros((5, 2)))
    with pytest.raises(ShapeMismatchError):
        fl.attend_all(np.zeros((2, 4)), np.zeros((5, 4)), np.zeros((6, 2)))
    with pytest.raises(EmptyInputError):
        fl.attend_all(np.zeros((0, 4)), np.zeros((5, 4)), np.zeros((5, 2)))
    with pytest.raises(ShapeMismatchError):
        fl.attend_all(np.zeros((2, 4)), np.zeros((5, 4)), np.zeros((5, 2)), key_mask=np.ones(4, bool))
