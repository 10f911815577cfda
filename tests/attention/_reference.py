"""Plain-numpy references and finite-difference helpers for the attention tests (float64, row loops)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numpy as np

from ruvector_hnsw.attention.base import Context
from ruvector_hnsw.threads import get_num_threads, thread_limits

_T = TypeVar("_T")


def softmax_masked(s: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Softmax of one row over ``mask``; all-zero for an empty mask."""
    w = np.zeros_like(s, dtype=np.float64)
    if mask.any():
        x = s[mask] - s[mask].max()
        e = np.exp(x)
        w[mask] = e / e.sum()
    return w


def scaled_dot(q, K, V, mask, temperature=1.0):
    """Reference scaled dot-product attention: ``(out (B, dv), weights (B, n))``."""
    B, n, d = K.shape
    out = np.zeros((B, V.shape[2]))
    W = np.zeros((B, n))
    for b in range(B):
        s = np.array([q[b] @ K[b, j] for j in range(n)]) / (np.sqrt(d) * temperature)
        W[b] = softmax_masked(s, mask[b])
        out[b] = W[b] @ V[b]
    return out, W


def multi_head(p, q, K, V, mask, heads, head_dim, temperature=1.0):
    """Reference multi-head attention in the textbook projection form."""
    B, n, _ = K.shape
    out = np.zeros((B, p["W_o"].shape[1]))
    W = np.zeros((B, heads, n))
    for b in range(B):
        parts = []
        for h in range(heads):
            sl = slice(h * head_dim, (h + 1) * head_dim)
            qh = q[b] @ p["W_q"][:, sl]
            Kh = K[b] @ p["W_k"][:, sl]
            Vh = V[b] @ p["W_v"][:, sl]
            s = Kh @ qh / (np.sqrt(head_dim) * temperature)
            W[b, h] = softmax_masked(s, mask[b])
            parts.append(W[b, h] @ Vh)
        out[b] = np.concatenate(parts) @ p["W_o"]
    return out, W


def rotate(k: np.ndarray, pos: float, base: float = 10000.0) -> np.ndarray:
    """Rotary embedding of one vector by explicit 2x2 rotations of pairs (2i, 2i+1)."""
    d = k.shape[0]
    out = k.astype(np.float64).copy()
    for i in range(d // 2):
        ang = pos * base ** (-2.0 * i / d)
        R = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
        out[2 * i : 2 * i + 2] = R @ k[2 * i : 2 * i + 2]
    return out


def rope(q, K, V, mask, pos, base=10000.0, temperature=1.0):
    """Reference RoPE attention: rotate each key by its position, then scaled dot."""
    B, n, _ = K.shape
    Kr = np.stack([np.stack([rotate(K[b, j], pos[b, j], base) for j in range(n)]) for b in range(B)])
    return scaled_dot(q, Kr, V, mask, temperature)


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def local_global(p, q, K, V, mask, layer, temperature=1.0):
    """Reference local/global attention: ``(out, local_w, global_w, gate)``."""
    B, n, d = K.shape
    dv = V.shape[2]
    out = np.zeros((B, dv))
    WL = np.zeros((B, n))
    WG = np.zeros((B, n))
    gate = np.zeros(B)
    for b in range(B):
        loc = mask[b] & (layer[b] == 0)
        glo = mask[b] & (layer[b] >= 1)
        ql = p["W_local"] @ q[b]
        qg = p["W_global"] @ q[b]
        sl = K[b] @ ql / (np.sqrt(d) * temperature)
        sg = K[b] @ qg / (np.sqrt(d) * temperature)
        WL[b] = softmax_masked(sl, loc)
        WG[b] = softmax_masked(sg, glo)
        ol, og = WL[b] @ V[b], WG[b] @ V[b]
        z = p["w_gate"] @ np.concatenate([ol, og, q[b]]) + p["b_gate"][0]
        if loc.any() and glo.any():
            g = sigmoid(z)
        elif loc.any():
            g = 1.0
        else:
            g = 0.0
        gate[b] = g
        out[b] = g * ol + (1 - g) * og
    return out, WL, WG, gate


def performer(q, K, V, mask, features, temperature=1.0):
    """Reference FAVOR+ with the explicit positive feature maps (moderate inputs only)."""
    B, n, d = K.shape
    m = features.shape[0]
    c = 1.0 / (d**0.25 * np.sqrt(temperature))

    def phi(x):
        return np.exp(features @ x - x @ x / 2) / np.sqrt(m)

    out = np.zeros((B, V.shape[2]))
    W = np.zeros((B, n))
    for b in range(B):
        fq = phi(c * q[b])
        a = np.array([fq @ phi(c * K[b, j]) if mask[b, j] else 0.0 for j in range(n)])
        if a.sum() > 0:
            W[b] = a / a.sum()
        out[b] = W[b] @ V[b]
    return out, W


# ----------------------------------------------------------------------------------------------
def with_threads(n: int, fn: Callable[[], _T]) -> _T:
    """``fn()`` with the kernels, BLAS and FAISS limited to ``n`` threads (restored afterwards)."""
    with thread_limits(n):
        assert get_num_threads() == n
        return fn()


def gather_and_dense(mech, q, table, ids, context=None, *, rng):
    """Forward + backward of ``mech`` in gather form (``table``, ``ids``) and in the equivalent
    dense form (rows gathered, ``-1`` slots zero and masked), with one cotangent ``G`` drawn from
    ``rng`` after the gather forward. Returns ``(out_gather, grads_gather, out_dense, grads_dense)``."""
    out_g, cache = mech.forward(q, table, table, None, context, ids=ids)
    G = rng.standard_normal(out_g.shape)
    gg = mech.backward(cache, G)
    dense = np.where((ids >= 0)[:, :, None], table[np.maximum(ids, 0)], 0.0)
    out_d, cache = mech.forward(q, dense, dense, ids >= 0, context)
    gd = mech.backward(cache, G)
    return out_g, gg, out_d, gd


def scatter_rows(grad_rows: np.ndarray, ids: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Dense-form row gradients ``(B, n, d)`` scatter-added into a zero table shaped like ``like``.

    Slots whose id is ``-1`` are skipped."""
    ref = np.zeros_like(like)
    np.add.at(ref, ids[ids >= 0], grad_rows[ids >= 0])
    return ref


def numeric_grad(f: Callable[[], float], x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central finite differences of ``f()`` w.r.t. every element of ``x`` (perturbed in place)."""
    g = np.zeros_like(x, dtype=np.float64)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + eps
        fp = f()
        x[idx] = old - eps
        fm = f()
        x[idx] = old
        g[idx] = (fp - fm) / (2 * eps)
    return g


def check_gradients(
    mech,
    query: np.ndarray,
    keys: np.ndarray,
    values: np.ndarray,
    mask: np.ndarray | None = None,
    context: Context | None = None,
    ids: np.ndarray | None = None,
    seed: int = 0,
    tol: float = 1e-6,
) -> dict[str, float]:
    """Compare ``mech.backward`` with central differences for every param and input.

    Returns the max abs error per gradient (and asserts each is within ``tol`` relative).
    """
    rng = np.random.default_rng(seed)
    q, K, V = (np.array(a, dtype=np.float64) for a in (query, keys, values))
    out, cache = mech.forward(q, K, V, mask=mask, context=context, ids=ids)
    G = rng.standard_normal(out.shape)
    grads = mech.backward(cache, G)
    expected = set(mech.params) | {"query", "keys", "values"}
    assert set(grads) == expected, (set(grads), expected)

    def loss() -> float:
        return float((mech.forward(q, K, V, mask=mask, context=context, ids=ids)[0] * G).sum())

    errs = {}
    for name, arr in [*mech.params.items(), ("query", q), ("keys", K), ("values", V)]:
        num = numeric_grad(loss, arr)
        got = grads[name]
        assert got.shape == arr.shape, (name, got.shape, arr.shape)
        err = float(np.abs(num - got).max())
        scale = max(1.0, float(np.abs(num).max()))
        assert err <= tol * scale, f"{name}: max abs error {err} (scale {scale})"
        errs[name] = err
    return errs


# ----------------------------------------------------------------------------------------------
# the part-A mechanisms with small configs and the context each needs (shared by the generic tests)
PART_A = ("scaled_dot", "multi_head", "flash", "linear", "rope", "local_global")


def make_mechanism(name: str, dim: int, dv: int, dtype=np.float32, seed: int = 0):
    from ruvector_hnsw.attention import MECHANISMS

    kwargs: dict = {"dtype": dtype, "seed": seed}
    if name == "multi_head":
        kwargs.update(heads=2, value_dim=dv, out_dim=dim)
    elif name == "local_global":
        kwargs.update(value_dim=dv)
    elif name == "flash":
        kwargs.update(block_size=3)
    elif name == "linear":
        kwargs.update(num_features=16)
    return MECHANISMS[name](dim, **kwargs)


def make_context(B: int, n: int, seed: int = 0, unbatched: bool = False) -> Context:
    rng = np.random.default_rng(seed)
    layer = rng.integers(0, 3, (B, n)).astype(np.int8)
    layer[:, 0] = 0
    layer[:, -1] = 1
    ctx = Context(dist=rng.random((B, n)), layer=layer, hops=rng.integers(0, 4, (B, n)))
    if unbatched:
        ctx = Context(dist=ctx.dist[0], layer=ctx.layer[0], hops=ctx.hops[0])
    return ctx
