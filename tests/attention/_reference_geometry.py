"""Plain-numpy references of the mixed_curvature / topology_gated / info_bottleneck mechanisms.

Written from the definitions (explicit points and Mobius operations, explicit softmaxes, row
loops), independently of the kernels' tangent-space forms.
"""

from __future__ import annotations

import numpy as np

from tests.attention._reference import softmax_masked


# ----------------------------------------------------------------------------------------------
# kappa-stereographic model (kappa < 0: Poincare ball, kappa > 0: stereographic sphere)
# ----------------------------------------------------------------------------------------------
def tan_k(r: float, kappa: float) -> float:
    s = np.sqrt(abs(kappa))
    return np.tanh(s * r) / s if kappa < 0 else np.tan(s * r) / s


def arctan_k(r: float, kappa: float) -> float:
    s = np.sqrt(abs(kappa))
    return np.arctanh(s * r) / s if kappa < 0 else np.arctan(s * r) / s


def exp0(v: np.ndarray, kappa: float) -> np.ndarray:
    """Exponential map at the origin of the kappa-stereographic model."""
    r = np.linalg.norm(v)
    return v.copy() if r == 0 else tan_k(r, kappa) * v / r


def ball(x: np.ndarray, kappa: float, radius: float = 1 - 1e-5) -> np.ndarray:
    """``x`` pulled radially inside ``radius / sqrt(-kappa)`` when it lies beyond."""
    r = np.sqrt(-kappa) * np.linalg.norm(x)
    return x * (radius / r) if r > radius else x


def mobius_add(x: np.ndarray, y: np.ndarray, kappa: float) -> np.ndarray:
    xy, x2, y2 = x @ y, x @ x, y @ y
    num = (1 - 2 * kappa * xy - kappa * y2) * x + (1 + kappa * x2) * y
    return num / (1 - 2 * kappa * xy + kappa**2 * x2 * y2)


def dist_k(x: np.ndarray, y: np.ndarray, kappa: float) -> float:
    """Geodesic distance ``2 arctan_k(|(-x) (+) y|)``."""
    return 2 * arctan_k(np.linalg.norm(mobius_add(-x, y, kappa)), kappa)


def mixed_curvature(q, K, V, mask, dims, mix, curvature_h=-1.0, curvature_s=1.0, temperature=1.0,
                    input_scale=None):
    """Reference product-space attention: ``(out (B, dv), mean weights (B, n), head weights (B, H, n))``."""
    B, n, d = K.shape
    e, h, s = dims
    sig = 1 / np.sqrt(d) if input_scale is None else input_scale
    present = np.array([e > 0, h > 0, s > 0])
    H = mix.shape[0]
    out = np.zeros((B, V.shape[2]))
    Wm = np.zeros((B, n))
    Wh = np.zeros((B, H, n))
    for b in range(B):
        comp = np.zeros((n, 3))
        for j in range(n):
            qv, kv = q[b], K[b, j]
            comp[j, 0] = qv[:e] @ kv[:e] / np.sqrt(d)
            if h:
                xq, xk = ball(sig * qv[e:e + h], curvature_h), ball(sig * kv[e:e + h], curvature_h)
                comp[j, 1] = -dist_k(xq, xk, curvature_h) / sig
            if s:
                comp[j, 2] = -dist_k(sig * qv[e + h:], sig * kv[e + h:], curvature_s) / sig
        for eta in range(H):
            z = np.where(present, mix[eta], -np.inf)
            w = np.exp(z - z.max())
            w /= w.sum()
            Wh[b, eta] = softmax_masked(comp @ w / temperature, mask[b])
        Wm[b] = Wh[b].mean(axis=0)
        out[b] = Wm[b] @ V[b]
    return out, Wm, Wh


# ----------------------------------------------------------------------------------------------
# topology_gated
# ----------------------------------------------------------------------------------------------
def topology_gated(q, K, V, mask, tau, ctx=None, prev=None, cmult=2.0, top_k=8, t_c=0.6, t_f=0.85, hyst=0.05,
                   mw=(1.0, 1.0, 1.0, 1.0), query_value=None):
    """Reference: ``(out, weights, modes, metrics (B, 5): risk, boundary, cut, disagreement, simvar)``."""
    B, n, d = K.shape
    qv = q if query_value is None else query_value
    out = np.zeros((B, V.shape[2]))
    W = np.zeros((B, n))
    modes = np.zeros(B, dtype=int)
    metrics = np.zeros((B, 5))
    prev = np.zeros(B, dtype=int) if prev is None else prev
    for b in range(B):
        m = mask[b]
        if not m.any():
            modes[b] = 2
            out[b] = qv[b]
            continue
        s = np.array([q[b] @ K[b, j] for j in range(n)]) / (np.sqrt(d) * tau)
        w = softmax_masked(s, m)
        ws = np.stack([softmax_masked(s * f, m) for f in (1.0, 2.0, 0.5)])
        dis = min(1.0, 1.5 * ws[:, m].var(axis=0).sum())
        simvar = s[m].var()
        boundary = 0.0
        if ctx is not None and ctx.hops is not None:
            h = np.asarray(ctx.hops)[b]
            if h[m].max() > h[m].min():
                boundary = w[m & (h == h[m].max())].sum()
        elif ctx is not None and ctx.dist is not None:
            dd = np.asarray(ctx.dist, dtype=np.float64)[b]
            lo, hi = dd[m].min(), dd[m].max()
            if hi > lo:
                boundary = w[m & (dd > (lo + hi) / 2)].sum()
        cut = 0.0
        if ctx is not None and ctx.layer is not None:
            ml = w[m & (np.asarray(ctx.layer)[b] == 0)].sum()
            cut = 4 * ml * (1 - ml)
        risk = (mw[0] * boundary + mw[1] * cut + mw[2] * dis + mw[3] * simvar / (1 + simvar)) / sum(mw)
        metrics[b] = risk, boundary, cut, dis, simvar
        enter = 2 if risk >= t_f else (1 if risk >= t_c else 0)
        p = prev[b]
        if enter >= p:
            mode = enter
        elif p == 2 and risk >= t_f - hyst:
            mode = 2
        elif p >= 1 and risk >= t_c - hyst:
            mode = 1
        else:
            mode = enter
        modes[b] = mode
        if mode == 2:
            out[b] = qv[b]
            continue
        if mode == 1:
            idx = [j for j in np.argsort(-np.where(m, s, -np.inf), kind="stable")[: min(top_k, m.sum())]]
            sel = np.zeros(n, dtype=bool)
            sel[idx] = True
            w = softmax_masked(s / cmult, sel)
        W[b] = w
        out[b] = w @ V[b]
    return out, W, modes, metrics


# ----------------------------------------------------------------------------------------------
# info_bottleneck
# ----------------------------------------------------------------------------------------------
def info_bottleneck(p, q, K, V, mask, temperature=1.0, eps=None):
    """Reference VIB read-out: ``(out, mu, logvar, kl_mean)``; ``eps`` (B, p) selects training."""
    from tests.attention._reference import scaled_dot

    a, _ = scaled_dot(q, K, V, mask, temperature)
    mu = a @ p["W_mu"] + p["b_mu"]
    lv = np.clip(a @ p["W_lv"] + p["b_lv"], -20, 20)
    out = mu if eps is None else mu + np.exp(lv / 2) * eps
    kl = 0.5 * (mu**2 + np.exp(lv) - 1 - lv).sum(axis=1)
    return out, mu, lv, float(kl.mean())
