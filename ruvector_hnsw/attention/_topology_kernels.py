"""numba kernels of the ``topology_gated`` mechanism (plain functions, no state).

One forward kernel computes, per row: the scaled dot scores of the attended items, their softmax,
the four coherence metrics of the key window, the risk, the mode (with hysteresis against the
previous mode) and the output of that mode. The backward kernel is softmax attention's with a
per-row scale and a per-row selection mask (the items the selected mode attends), plus the
gradient of the log-temperature. See :mod:`ruvector_hnsw.attention.topology_gated` for the
definitions.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ruvector_hnsw.attention._kernels import _dot64, _dot_as

_FM = {"reassoc", "contract", "nsz"}

STABLE, CAUTIOUS, FREEZE = 0, 1, 2


@njit(cache=True, nogil=True, inline="always")
def decide_mode(r, prev, t_c, t_f, hyst):  # pragma: no cover - jit
    """The mode for risk ``r`` given the previous mode: escalate at once, de-escalate only once
    ``r`` fell below the mode's entry threshold minus ``hyst``."""
    enter = FREEZE if r >= t_f else (CAUTIOUS if r >= t_c else STABLE)
    if enter >= prev:
        return enter
    if prev == FREEZE and r >= t_f - hyst:
        return FREEZE
    if prev >= CAUTIOUS and r >= t_c - hyst:
        return CAUTIOUS
    return enter


@njit(cache=True, nogil=True, fastmath=_FM, inline="always")
def _readout(Vt, ids, b, sel, w, acc, out_row):  # pragma: no cover - jit
    """``out_row = sum_j w[j] Vt[ids[b, j]]`` over ``sel``; False when not finite."""
    ct = acc.dtype.type
    dv = Vt.shape[1]
    acc[:] = 0.0
    for j in range(ids.shape[1]):
        if sel[j]:
            wc = ct(w[j])
            vr = Vt[ids[b, j]]
            for k in range(dv):
                acc[k] += wc * ct(vr[k])
    for k in range(dv):
        if not np.isfinite(acc[k]):
            return False
    dt = out_row.dtype.type
    for k in range(dv):
        out_row[k] = dt(acc[k])
    return True


@njit(cache=True, nogil=True, fastmath=_FM)
def tg_forward(Q, T, Vt, ids, mask, hops, dist, layer, flags, prev, QV, scale, cmult, top_k,
               t_c, t_f, hyst, mw, need_readout):  # pragma: no cover - jit
    """Topology-gated attention of ``Q (B, d)`` over ``T[ids]``.

    ``flags = (has_hops, has_dist, has_layer)``; ``prev (B,)`` int8 previous modes; ``QV (B, dv)``
    the query-side values of frozen rows; ``mw (4,)`` metric weights (boundary, cut,
    disagreement, similarity variance). Returns ``R (B, dv)`` (zero-size unless
    ``need_readout``), ``W (B, n)`` (weights of the mode's read-out; zero for frozen rows),
    ``sel (B, n)`` (the items that read-out attends), ``mode (B,)`` int8, ``metrics (B, 5)``
    (risk, boundary mass, cut, disagreement, similarity variance), ``row_scale (B,)`` (score
    factor of the mode; 0 for frozen rows) and ``ok``.
    """
    B = Q.shape[0]
    n = ids.shape[1]
    dv = Vt.shape[1]
    dt = Q.dtype.type
    ct = Q.dtype.type
    R = np.zeros((B if need_readout else 0, dv), dtype=Q.dtype)
    W = np.zeros((B, n), dtype=Q.dtype)
    sel = np.zeros((B, n), dtype=np.bool_)
    mode = np.zeros(B, dtype=np.int8)
    metrics = np.zeros((B, 5), dtype=np.float64)
    row_scale = np.zeros(B, dtype=np.float64)
    s = np.empty(n, dtype=np.float64)
    w = np.empty(n, dtype=np.float64)
    acc = np.empty(dv, dtype=Q.dtype)
    acc64 = np.empty(dv, dtype=np.float64)
    has_hops, has_dist, has_layer = flags[0], flags[1], flags[2]
    wsum = mw[0] + mw[1] + mw[2] + mw[3]
    ok = True
    for b in range(B):
        cnt = 0
        mx = -np.inf
        bad = False
        for j in range(n):
            if mask[b, j]:
                cnt += 1
                kr = T[ids[b, j]]
                v = scale * np.float64(_dot_as(Q[b], kr, ct))
                if not np.isfinite(v):
                    v = scale * _dot64(Q[b], kr)
                    if not np.isfinite(v):
                        bad = True
                        break
                s[j] = v
                if v > mx:
                    mx = v
        if bad:
            ok = False
            continue
        if cnt == 0:
            mode[b] = FREEZE
            if need_readout:
                for k in range(dv):
                    R[b, k] = QV[b, k]
            continue
        # softmax at the temperature and at half / twice it (for the disagreement)
        t1 = 0.0
        t2 = 0.0
        th = 0.0
        mean_s = 0.0
        for j in range(n):
            if mask[b, j]:
                x = s[j] - mx
                t1 += np.exp(x)
                t2 += np.exp(2.0 * x)
                th += np.exp(0.5 * x)
                mean_s += s[j]
        mean_s /= cnt
        dis = 0.0
        var_s = 0.0
        hmax = -1
        hmin = 1 << 62
        dmax = -np.inf
        dmin = np.inf
        for j in range(n):
            if mask[b, j]:
                x = s[j] - mx
                w1 = np.exp(x) / t1
                w2 = np.exp(2.0 * x) / t2
                wh = np.exp(0.5 * x) / th
                w[j] = w1
                m3 = (w1 + w2 + wh) / 3.0
                dis += ((w1 - m3) ** 2 + (w2 - m3) ** 2 + (wh - m3) ** 2) / 3.0
                var_s += (s[j] - mean_s) ** 2
                if has_hops:
                    hmax = max(hmax, hops[b, j])
                    hmin = min(hmin, hops[b, j])
                if has_dist:
                    dmax = max(dmax, np.float64(dist[b, j]))
                    dmin = min(dmin, np.float64(dist[b, j]))
        var_s /= cnt
        boundary = 0.0
        local = 0.0
        mid = 0.5 * (dmin + dmax)
        for j in range(n):
            if mask[b, j]:
                if has_hops:
                    if hmax > hmin and hops[b, j] == hmax:
                        boundary += w[j]
                elif has_dist:
                    if dmax > dmin and np.float64(dist[b, j]) > mid:
                        boundary += w[j]
                if has_layer and layer[b, j] == 0:
                    local += w[j]
        cut = 4.0 * local * (1.0 - local) if has_layer else 0.0
        dis_n = min(1.0, 1.5 * dis)
        var_n = var_s / (1.0 + var_s)
        risk = (mw[0] * boundary + mw[1] * cut + mw[2] * dis_n + mw[3] * var_n) / wsum
        metrics[b, 0] = risk
        metrics[b, 1] = boundary
        metrics[b, 2] = cut
        metrics[b, 3] = dis_n
        metrics[b, 4] = var_s
        m = decide_mode(risk, prev[b], t_c, t_f, hyst)
        mode[b] = m
        if m == FREEZE:
            if need_readout:
                for k in range(dv):
                    R[b, k] = QV[b, k]
            continue
        if m == STABLE:
            row_scale[b] = scale
            for j in range(n):
                if mask[b, j]:
                    sel[b, j] = True
        else:
            # top-k attended items by score (ties: the earlier item), softmax at cmult x temperature
            kk = min(top_k, cnt)
            for _t in range(kk):
                best = -1
                bv = -np.inf
                for j in range(n):
                    if mask[b, j] and not sel[b, j] and (best < 0 or s[j] > bv):
                        best = j
                        bv = s[j]
                sel[b, best] = True
            row_scale[b] = scale / cmult
            smx = -np.inf
            for j in range(n):
                if sel[b, j] and s[j] > smx:
                    smx = s[j]
            tot = 0.0
            for j in range(n):
                if sel[b, j]:
                    w[j] = np.exp((s[j] - smx) / cmult)
                    tot += w[j]
            for j in range(n):
                if sel[b, j]:
                    w[j] /= tot
        for j in range(n):
            if sel[b, j]:
                W[b, j] = dt(w[j])
        if need_readout and not _readout(Vt, ids, b, sel[b], w, acc, R[b]):
            if not _readout(Vt, ids, b, sel[b], w, acc64, R[b]):
                ok = False
    return R, W, sel, mode, metrics, row_scale, ok


@njit(cache=True, nogil=True, fastmath=_FM)
def tg_backward(Q, T, Vt, ids, sel, W, G, row_scale, n_rows, need_table_grads):  # pragma: no cover - jit
    """Gradients of the attending rows of :func:`tg_forward` given ``G (B, dv)``.

    Returns ``dQ (B, d)``, ``dT (n_rows, d)``, ``dV (n_rows, dv)`` (zero-size unless
    ``need_table_grads``) and ``dlog_tau (B,)`` (the gradient of the log-temperature, per row;
    scores are ``row_scale * q.k`` with ``row_scale`` proportional to ``1 / tau``).
    """
    B, d = Q.shape
    n = ids.shape[1]
    dv = Vt.shape[1]
    rows = n_rows if need_table_grads else 0
    dQ = np.zeros((B, d), dtype=Q.dtype)
    dT = np.zeros((rows, d), dtype=Q.dtype)
    dV = np.zeros((rows, dv), dtype=Q.dtype)
    dlt = np.zeros(B, dtype=np.float64)
    tj = np.empty(n, dtype=np.float64)
    acc = np.empty(d, dtype=np.float64)
    for b in range(B):
        sc = row_scale[b]
        if sc == 0.0:
            continue
        c = 0.0
        for j in range(n):
            if sel[b, j]:
                r = ids[b, j]
                t = _dot64(G[b], Vt[r])
                tj[j] = t
                c += np.float64(W[b, j]) * t
        acc[:] = 0.0
        lt = 0.0
        for j in range(n):
            if sel[b, j]:
                r = ids[b, j]
                kr = T[r]
                wj = np.float64(W[b, j])
                ds = wj * (tj[j] - c)
                lt -= ds * sc * _dot64(Q[b], kr)
                f = ds * sc
                for k in range(d):
                    acc[k] += f * kr[k]
                if need_table_grads:
                    for k in range(d):
                        dT[r, k] += f * Q[b, k]
                    for k in range(dv):
                        dV[r, k] += wj * G[b, k]
        dlt[b] = lt
        for k in range(d):
            dQ[b, k] = acc[k]
    return dQ, dT, dV, dlt
