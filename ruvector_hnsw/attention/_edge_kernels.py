"""Fused numba forward kernel of GATv2-style edge-featured attention.

Plain ``@njit`` function, no state. Keys and values are gathered by ids inside the kernel
(``-1`` = masked); a fully masked row gets zero weights and a zero read-out.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_FM = {"reassoc", "contract", "nsz"}


@njit(cache=True, nogil=True, fastmath=_FM)
def _project_rows(kb: np.ndarray, cnt: int, w_kt: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover
    """``out[:cnt] = kb[:cnt] @ w_kt.T``, four output columns per pass over a key row."""
    d = kb.shape[1]
    h = w_kt.shape[0]
    for j in range(cnt):
        c = 0
        while c + 4 <= h:
            a0 = 0.0
            a1 = 0.0
            a2 = 0.0
            a3 = 0.0
            for i in range(d):
                x = kb[j, i]
                a0 += x * w_kt[c, i]
                a1 += x * w_kt[c + 1, i]
                a2 += x * w_kt[c + 2, i]
                a3 += x * w_kt[c + 3, i]
            out[j, c] = a0
            out[j, c + 1] = a1
            out[j, c + 2] = a2
            out[j, c + 3] = a3
            c += 4
        while c < h:
            acc = 0.0
            for i in range(d):
                acc += kb[j, i] * w_kt[c, i]
            out[j, c] = acc
            c += 1


@njit(cache=True, nogil=True, fastmath=_FM)
def edge_forward_kernel(
    q: np.ndarray,
    ktab: np.ndarray,
    vtab: np.ndarray,
    ids: np.ndarray,
    feats: np.ndarray,
    w_q: np.ndarray,
    w_kt: np.ndarray,
    w_e: np.ndarray,
    bias: np.ndarray,
    att: np.ndarray,
    slope: float,
) -> tuple[np.ndarray, np.ndarray, bool]:  # pragma: no cover - jit
    """Weights ``(B, n)``, read-out ``sum_j w_j v_j`` ``(B, dv)`` of GATv2 attention, and ``ok``.

    ``score_j = att . LeakyReLU(q W_q + k_j W_k + f_j W_e + bias)``, softmax over ``ids >= 0``.
    ``w_q, w_kt (= W_k transposed, (h, d)), w_e, bias, att`` are float64 C-contiguous (scores are
    accumulated in float64). No BLAS call inside (it would oversubscribe the cores when the
    caller runs row chunks on threads).
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
    zk = np.empty((n, h))
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
        _project_rows(kb, cnt, w_kt, zk)
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


@njit(cache=True, nogil=True, fastmath=_FM)
def edge_backward_kernel(
    q: np.ndarray,
    ktab: np.ndarray,
    vtab: np.ndarray,
    ids: np.ndarray,
    feats: np.ndarray,
    w_q: np.ndarray,
    w_kt: np.ndarray,
    w_k: np.ndarray,
    w_e: np.ndarray,
    bias: np.ndarray,
    att: np.ndarray,
    slope: float,
    wts: np.ndarray,
    dagg: np.ndarray,
    need_input_grads: bool,
) -> tuple[
    np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray
]:  # pragma: no cover - jit
    """Backward of :func:`edge_forward_kernel` given the weights and ``dagg = d out / d agg``.

    ``w_kt`` is ``W_k`` transposed and ``w_k`` ``W_k`` itself (both float64, C-contiguous).

    Recomputes the scores row by row (keys gathered by ids). Returns ``dq (B, d)``, per-slot
    ``dK (B, n, d)`` and ``dV (B, n, dv)`` (zero at masked slots; the caller scatters them into
    table gradients) and the param gradients ``dW_q, dW_k (d, h), dW_e (f, h), db, da (h,)`` of
    these rows (float64). With ``need_input_grads`` False both arrays are zero-size, the key
    cotangents (``W_k dz``, ``d h`` per item) are skipped and the value row ``w_j dagg`` (``dv``
    multiplies) goes to one row of scratch, so the loop computing ``dw`` - and its rounding - is
    the same as with input gradients.
    """
    B, d = q.shape
    n = ids.shape[1]
    h = w_q.shape[1]
    f = w_e.shape[0]
    dv = vtab.shape[1]
    dq = np.zeros((B, d))
    dK = np.zeros((B if need_input_grads else 0, n, d))
    dV = np.zeros((B if need_input_grads else 0, n, dv))
    dv_row = np.empty(dv)
    dWq = np.zeros((d, h))
    dWk = np.zeros((d, h))
    dWe = np.zeros((f, h))
    dbias = np.zeros(h)
    datt = np.zeros(h)
    zq = np.empty(h)
    kb = np.empty((n, d))
    zk = np.empty((n, h))
    pos = np.empty(n, dtype=np.int64)
    dw = np.empty(n)
    dzs = np.empty(h)
    dz = np.empty(h)
    for b in range(B):
        cnt = 0
        for j in range(n):
            r = ids[b, j]
            if r < 0:
                continue
            for i in range(d):
                kb[cnt, i] = ktab[r, i]
            pos[j] = cnt
            cnt += 1
        if cnt == 0:
            continue
        for c in range(h):
            zq[c] = bias[c]
        for i in range(d):
            qi = float(q[b, i])
            for c in range(h):
                zq[c] += qi * w_q[i, c]
        _project_rows(kb, cnt, w_kt, zk)
        # d loss / d w_j and the softmax backward
        sw = 0.0
        for j in range(n):
            r = ids[b, j]
            if r < 0:
                continue
            acc = 0.0
            wj = float(wts[b, j])
            dv_out = dV[b, j] if need_input_grads else dv_row  # same loop either way: same rounding of dw
            for i in range(dv):
                acc += float(vtab[r, i]) * dagg[b, i]
                dv_out[i] = wj * dagg[b, i]
            dw[j] = acc
            sw += wj * acc
        for c in range(h):
            dzs[c] = 0.0
        for j in range(n):
            r = ids[b, j]
            if r < 0:
                continue
            ds = float(wts[b, j]) * (dw[j] - sw)
            row = pos[j]
            for c in range(h):
                z = zq[c] + zk[row, c]
                for e in range(f):
                    z += float(feats[b, j, e]) * w_e[e, c]
                if z > 0.0:
                    datt[c] += ds * z
                    dz[c] = ds * att[c]
                else:
                    datt[c] += ds * slope * z
                    dz[c] = ds * att[c] * slope
                dzs[c] += dz[c]
            for e in range(f):
                fe = float(feats[b, j, e])
                for c in range(h):
                    dWe[e, c] += fe * dz[c]
            if need_input_grads:
                for i in range(d):
                    ki = kb[row, i]
                    acc = 0.0
                    for c in range(h):
                        dWk[i, c] += ki * dz[c]
                        acc += w_k[i, c] * dz[c]
                    dK[b, j, i] = acc
            else:
                for i in range(d):
                    ki = kb[row, i]
                    for c in range(h):
                        dWk[i, c] += ki * dz[c]
        for i in range(d):
            qi = float(q[b, i])
            acc = 0.0
            for c in range(h):
                dWq[i, c] += qi * dzs[c]
                acc += w_q[i, c] * dzs[c]
            dq[b, i] = acc
        for c in range(h):
            dbias[c] += dzs[c]
    return dq, dK, dV, dWq, dWk, dWe, dbias, datt
