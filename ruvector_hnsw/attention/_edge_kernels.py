"""Fused numba forward kernel of GATv2-style edge-featured attention.

Plain ``@njit`` function, no state. Keys and values are gathered by ids inside the kernel
(``-1`` = masked); a fully masked row gets zero weights and a zero read-out.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, fastmath={"reassoc", "nsz"})
def edge_forward_kernel(
    q: np.ndarray,
    ktab: np.ndarray,
    vtab: np.ndarray,
    ids: np.ndarray,
    feats: np.ndarray,
    w_q: np.ndarray,
    w_k: np.ndarray,
    w_e: np.ndarray,
    bias: np.ndarray,
    att: np.ndarray,
    slope: float,
) -> tuple[np.ndarray, np.ndarray, bool]:  # pragma: no cover - jit
    """Weights ``(B, n)``, read-out ``sum_j w_j v_j`` ``(B, dv)`` of GATv2 attention, and ``ok``.

    ``score_j = att . LeakyReLU(q W_q + k_j W_k + f_j W_e + bias)``, softmax over ``ids >= 0``.
    ``w_q, w_k, w_e, bias, att`` are float64 (scores are accumulated in float64).
    ``ok`` is False when a key/value row read through ``ids`` holds NaN or infinity (the
    caller raises; the tables are not scanned as a whole).
    """
    B, d = q.shape
    n = ids.shape[1]
    h = w_q.shape[1]
    f = w_e.shape[0]
    dv = vtab.shape[1]
    wts = np.zeros((B, n), dtype=q.dtype)
    agg = np.zeros((B, dv), dtype=q.dtype)
    zq = np.empty(h)
    z = np.empty(h)
    s = np.empty(n)
    kb = np.empty((n, d))  # one row's gathered keys (float64), reused: never a (B, n, d) copy
    pos = np.empty(n, dtype=np.int64)
    chk = 0.0
    for b in range(B):
        for c in range(h):
            zq[c] = bias[c]
        for i in range(d):
            qi = float(q[b, i])
            for c in range(h):
                zq[c] += qi * w_q[i, c]
        cnt = 0
        for j in range(n):
            r = ids[b, j]
            if r < 0:
                continue
            for i in range(d):
                x = float(ktab[r, i])
                chk += x * 0.0
                kb[cnt, i] = x
            pos[j] = cnt
            cnt += 1
        if cnt == 0:
            continue
        zk = np.dot(kb[:cnt], w_k)  # (cnt, h) through BLAS
        smax = -np.inf
        for j in range(n):
            if ids[b, j] < 0:
                continue
            row = pos[j]
            for c in range(h):
                z[c] = zq[c] + zk[row, c]
            for e in range(f):
                fe = float(feats[b, j, e])
                for c in range(h):
                    z[c] += fe * w_e[e, c]
            acc = 0.0
            for c in range(h):
                zc = z[c]
                if zc < 0.0:
                    zc *= slope
                acc += att[c] * zc
            s[j] = acc
            if acc > smax:
                smax = acc
        tot = 0.0
        for j in range(n):
            if ids[b, j] >= 0:
                s[j] = np.exp(s[j] - smax)
                tot += s[j]
        for j in range(n):
            r = ids[b, j]
            if r < 0:
                continue
            w = s[j] / tot
            wts[b, j] = w
            for i in range(dv):
                vi = vtab[r, i]
                chk += vi * 0.0
                agg[b, i] += w * vi
    return wts, agg, chk == 0.0
