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
                xq, xk = exp0(sig * qv[e:e + h], curvature_h), exp0(sig * kv[e:e + h], curvature_h)
                comp[j, 1] = -dist_k(xq, xk, curvature_h) / sig
            if s:
                xq, xk = exp0(sig * qv[e + h:], curvature_s), exp0(sig * kv[e + h:], curvature_s)
                comp[j, 2] = -dist_k(xq, xk, curvature_s) / sig
        for eta in range(H):
            z = np.where(present, mix[eta], -np.inf)
            w = np.exp(z - z.max())
            w /= w.sum()
            Wh[b, eta] = softmax_masked(comp @ w / temperature, mask[b])
        Wm[b] = Wh[b].mean(axis=0)
        out[b] = Wm[b] @ V[b]
    return out, Wm, Wh
