"""ContextEncoder: analytic gradients of the residual score vs central finite differences (float64)."""

from __future__ import annotations

import numpy as np
import pytest

from ruvector_hnsw.attention import Context
from ruvector_hnsw.attention.scaled_dot import ScaledDotAttention
from ruvector_hnsw.search._encoder import ContextEncoder


def _problem(seed: int = 0):
    rng = np.random.default_rng(seed)
    N, d, p, B, K, P = 30, 6, 4, 3, 5, 4
    table = rng.standard_normal((N, d))
    ids_q = rng.integers(-1, N, (B, K))
    ids_q[:, 0] = rng.integers(0, N, B)
    rows_v = rng.integers(0, N, 7)
    ids_v = rng.integers(-1, N, (7, K))
    ids_v[:, 0] = rng.integers(0, N, 7)
    pool_map = rng.integers(0, 7, (B, P))
    base = rng.standard_normal((B, P))
    weights = rng.standard_normal((B, P))
    return table, ids_q, rows_v, ids_v, pool_map, base, weights, (N, d, p, B, K, P), None


def _loss(enc: ContextEncoder, prob, want_grads: bool):
    table, ids_q, rows_v, ids_v, pool_map, base, weights, dims, _ = prob
    B, K = dims[3], dims[4]
    uq = table[:B] * 0.7
    ctx_q = Context(dist=np.abs(table[:B, :K]))
    eq = enc.encode(uq, table, ids_q, ids_q >= 0, ctx_q)
    ev = enc.encode(table[rows_v], table, ids_v, ids_v >= 0, Context(dist=np.abs(table[:7, :K])))
    zv = ev.zhat[pool_map]
    s = enc.scores(base, eq.zhat, zv)
    loss = float((weights * s).sum())
    if not want_grads:
        return loss, None
    grads = enc.zero_grads()
    gzq, gzv = enc.scores_backward(base, eq.zhat, zv, weights, grads)
    g_rows = np.zeros_like(ev.zhat)
    np.add.at(g_rows, pool_map.ravel(), gzv.reshape(-1, gzv.shape[-1]))
    enc.backward(ev, g_rows, grads)
    enc.backward(eq, gzq, grads)
    return loss, grads


@pytest.mark.parametrize("alpha", [0.0, 0.8])
def test_encoder_gradients_match_finite_differences(alpha: float) -> None:
    prob = _problem()
    mech = ScaledDotAttention(6, dtype=np.float64, seed=1)
    enc = ContextEncoder(mech, 6, 4, seed=2, dtype=np.float64)
    enc.own["alpha"][0] = alpha
    enc.own["beta"][0] = 1.3
    # make W_a differ from W_u so its gradient is exercised independently
    enc.own["W_a"] += 0.1 * np.random.default_rng(3).standard_normal(enc.own["W_a"].shape)
    _, grads = _loss(enc, prob, True)
    assert grads is not None
    eps = 1e-6
    for name, param in enc.params.items():
        num = np.zeros_like(param)
        it = np.nditer(param, flags=["multi_index"])
        for _ in it:
            i = it.multi_index
            old = param[i]
            param[i] = old + eps
            lp, _ = _loss(enc, prob, False)
            param[i] = old - eps
            lm, _ = _loss(enc, prob, False)
            param[i] = old
            num[i] = (lp - lm) / (2 * eps)
        np.testing.assert_allclose(grads[name], num, rtol=1e-5, atol=1e-7, err_msg=name)


def test_untrained_scores_are_the_base_term() -> None:
    mech = ScaledDotAttention(6, dtype=np.float64, seed=1)
    enc = ContextEncoder(mech, 6, 4, seed=2, dtype=np.float64)
    rng = np.random.default_rng(0)
    base = rng.standard_normal((3, 5))
    zq = rng.standard_normal((3, 4))
    zv = rng.standard_normal((3, 5, 4))
    np.testing.assert_array_equal(enc.scores(base, zq, zv), base)
