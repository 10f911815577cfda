"""Shared numba kernels of the softmax-attention mechanisms (plain functions, no state).

Every kernel reads keys/values as rows of a *table* through ``ids`` (``(B, n)`` int64): the
gather-by-ids form passes the database table and the caller's ids; the dense form passes the
``(B*n, d)`` reshape of ``(B, n, d)`` keys with ``ids[b, j] = b*n + j``. So one compiled kernel
serves both and no ``(B, n, d)`` copy is ever made.

Forward kernels compute each row in the storage dtype first and, if a score or read-out
overflows, recompute that row with float64 accumulation, so float32 inputs of any finite
magnitude give finite results at float32 speed; softmax subtracts the row maximum (online:
running max and sum, the read-out rescaled when the max grows, each row read once). Backward
kernels accumulate in float64. A row (or head/group) with no
attended item gets all-zero weights and a zero read-out (the package-wide convention, see
``base.py``). ``fastmath`` is limited to re-association/contraction (inputs are validated
finite before any kernel runs), which lets LLVM vectorise the dot products.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ruvector_hnsw.attention._prefetch import prefetch_table_row

_FM = {"reassoc", "contract", "nsz"}

#: items ahead whose table row the grouped kernels prefetch (8 measured best of 2..16 at n = 1K, d = 128)
PREFETCH_AHEAD = 8


@njit(cache=True, nogil=True, fastmath=_FM, inline="always")
def _dot64(a: np.ndarray, b: np.ndarray) -> float:  # pragma: no cover - jit
    s = 0.0
    for k in range(a.shape[0]):
        s += np.float64(a[k]) * np.float64(b[k])
    return s


@njit(cache=True, nogil=True, fastmath=_FM, inline="always")
def _dot_as(a, b, ct):  # pragma: no cover - jit
    """``a.b`` accumulated in the scalar type ``ct`` (float32 fast path or float64)."""
    s = ct(0.0)
    for k in range(a.shape[0]):
        s += ct(a[k]) * ct(b[k])
    return s


# ----------------------------------------------------------------------------------------------
# multi-query attention: H query vectors per row, all attending over the same items
# (scaled_dot: H = 1; multi_head: H heads with queries mapped back into key space)
# ----------------------------------------------------------------------------------------------
@njit(cache=True, nogil=True, fastmath=_FM)
def mq_weights(Q, T, ids, mask, scale):  # pragma: no cover
    """The weights ``(B, H, n)`` of :func:`mq_forward` without the read-out; plus ``ok``."""
    B, H, _ = Q.shape
    n = ids.shape[1]
    dt = Q.dtype.type
    W = np.zeros((B, H, n), dtype=Q.dtype)
    s = np.empty((H, n), dtype=np.float64)
    mx = np.empty(H, dtype=np.float64)
    ok = True
    for b in range(B):
        cnt = 0
        bad = False
        for h in range(H):
            mx[h] = -np.inf
        for j in range(n):
            if mask[b, j]:
                cnt += 1
                kr = T[ids[b, j]]
                for h in range(H):
                    v = scale * np.float64(_dot_as(Q[b, h], kr, dt))
                    if not np.isfinite(v):
                        v = scale * _dot64(Q[b, h], kr)
                        if not np.isfinite(v):
                            bad = True
                            v = 0.0
                    s[h, j] = v
                    if v > mx[h]:
                        mx[h] = v
        if bad:
            ok = False
            continue
        if cnt == 0:
            continue
        for h in range(H):
            tot = 0.0
            for j in range(n):
                if mask[b, j]:
                    e = np.exp(s[h, j] - mx[h])
                    s[h, j] = e
                    tot += e
            inv = 1.0 / tot
            for j in range(n):
                if mask[b, j]:
                    W[b, h, j] = dt(s[h, j] * inv)
    return W, ok


@njit(cache=True, nogil=True, fastmath=_FM)
def mq_backward(Q, T, Vt, ids, vids, mask, W, dR, scale, n_rows, v_rows, need_table_grads):  # pragma: no cover
    """Gradients of :func:`mq_forward` given ``dR (B, H, dv)``.

    Returns ``dQ (B, H, d)``, ``dT (n_rows, d)`` (scatter-added over ``ids``) and
    ``dV (v_rows, dv)`` (over ``vids``); both zero-size when ``need_table_grads`` is False.
    """
    B, H, d = Q.shape
    n = ids.shape[1]
    dv = Vt.shape[1]
    dQ = np.zeros((B, H, d), dtype=Q.dtype)
    dT = np.zeros((n_rows if need_table_grads else 0, d), dtype=Q.dtype)
    dV = np.zeros((v_rows if need_table_grads else 0, dv), dtype=Q.dtype)
    dw = np.empty((H, n), dtype=np.float64)
    c = np.empty(H, dtype=np.float64)
    acc = np.empty((H, d), dtype=np.float64)
    for b in range(B):
        for h in range(H):
            c[h] = 0.0
        for j in range(n):
            if mask[b, j]:
                vr = Vt[vids[b, j]]
                for h in range(H):
                    g = _dot64(dR[b, h], vr)
                    dw[h, j] = g
                    c[h] += np.float64(W[b, h, j]) * g
        acc[:, :] = 0.0
        for j in range(n):
            if mask[b, j]:
                r = ids[b, j]
                rv = vids[b, j]
                kr = T[r]
                for h in range(H):
                    w = np.float64(W[b, h, j])
                    ds = scale * w * (dw[h, j] - c[h])
                    for k in range(d):
                        acc[h, k] += ds * kr[k]
                    if need_table_grads:
                        for k in range(d):
                            dT[r, k] += ds * Q[b, h, k]
                        for k in range(dv):
                            dV[rv, k] += w * dR[b, h, k]
        for h in range(H):
            for k in range(d):
                dQ[b, h, k] = acc[h, k]
    return dQ, dT, dV


# ----------------------------------------------------------------------------------------------
# single query per row (scaled_dot, rope): the H = 1 case of mq_forward with 1-D scratch, which
# LLVM vectorises better (about 1.6x faster than mq_forward with H = 1)
# ----------------------------------------------------------------------------------------------
@njit(cache=True, nogil=True, fastmath=_FM, inline="always")
def _sd_readout(Vt, vids, mask, b, mx, s, acc):  # pragma: no cover
    """Second half of a single-query row: scores ``s`` (row max ``mx``) -> exponentials in
    ``s``, unnormalised read-out of ``Vt[vids[b]]`` in ``acc``; returns the sum of
    exponentials, 0 for an empty row (``mx = -inf``), -1 on a non-finite read-out."""
    if mx == -np.inf:
        return 0.0
    n = vids.shape[1]
    dv = Vt.shape[1]
    ct = acc.dtype.type
    acc[:] = 0.0
    t = 0.0
    for j in range(n):
        if mask[b, j]:
            p = np.exp(s[j] - mx)
            s[j] = p
            t += p
            pc = ct(p)
            vr = Vt[vids[b, j]]
            for k in range(dv):
                acc[k] += pc * ct(vr[k])
    for k in range(dv):
        if not np.isfinite(acc[k]):
            return -1.0
    return t


@njit(cache=True, nogil=True, fastmath=_FM, inline="always")
def _sd_row(q, T, Vt, ids, vids, mask, scale, b, s, acc):  # pragma: no cover
    """Scores into ``s``, exponentials (max subtracted) into ``s``, unnormalised read-out into
    ``acc``; returns the sum of exponentials, 0 for an empty row, -1 on a non-finite value."""
    n = ids.shape[1]
    ct = acc.dtype.type
    mx = -np.inf
    for j in range(n):
        if mask[b, j]:
            v = scale * np.float64(_dot_as(q, T[ids[b, j]], ct))
            if not np.isfinite(v):
                return -1.0
            s[j] = v
            if v > mx:
                mx = v
    return _sd_readout(Vt, vids, mask, b, mx, s, acc)


@njit(cache=True, nogil=True, fastmath=_FM, inline="always")
def _sd_write(row, n, mrow, s, acc, t, R, W):  # pragma: no cover
    """Normalise into ``R[row]`` and ``W[row]`` (``mrow`` = the 1-D mask of that row)."""
    dt = R.dtype.type
    inv = 1.0 / t
    for k in range(acc.shape[0]):
        R[row, k] = dt(acc[k] * inv)
    for j in range(n):
        if mrow[j]:
            W[row, j] = dt(s[j] * inv)


@njit(cache=True, nogil=True, fastmath=_FM)
def mq_forward(Q, T, Vt, ids, vids, mask, scale):  # pragma: no cover
    """Softmax attention of ``Q (B, H, d)`` over key rows ``T[ids]`` with values ``Vt[vids]``.

    Head by head with the single-query row routine (a row's key/value rows stay in cache across
    heads). Returns ``R (B, H, dv)`` (read-outs), ``W (B, H, n)`` (weights, zero where masked)
    and ``ok`` - False when a row stays non-finite even with float64 accumulation (a referenced
    table row holds NaN/inf; the gather form validates the rows it reads here instead of
    scanning the whole table).
    """
    B, H, _ = Q.shape
    n = ids.shape[1]
    dv = Vt.shape[1]
    R = np.zeros((B, H, dv), dtype=Q.dtype)
    W = np.zeros((B, H, n), dtype=Q.dtype)
    s = np.empty(n, dtype=np.float64)
    acc = np.empty(dv, dtype=Q.dtype)
    acc64 = np.empty(dv, dtype=np.float64)
    ok = True
    for b in range(B):
        Rb = R[b]
        Wb = W[b]
        for h in range(H):
            t = _sd_row(Q[b, h], T, Vt, ids, vids, mask, scale, b, s, acc)
            if t > 0.0:
                _sd_write(h, n, mask[b], s, acc, t, Rb, Wb)
            elif t < 0.0:
                t = _sd_row(Q[b, h], T, Vt, ids, vids, mask, scale, b, s, acc64)
                if t < 0.0:
                    ok = False
                elif t > 0.0:
                    _sd_write(h, n, mask[b], s, acc64, t, Rb, Wb)
    return R, W, ok


@njit(cache=True, nogil=True, fastmath=_FM)
def sd_forward(Q, T, Vt, ids, vids, mask, scale):  # pragma: no cover
    """Softmax attention of ``Q (B, d)`` over ``T[ids]`` with values ``Vt[vids]``.

    Returns ``R (B, dv)``, ``W (B, n)`` and ``ok`` (see :func:`mq_forward`).
    """
    B = Q.shape[0]
    n = ids.shape[1]
    dv = Vt.shape[1]
    R = np.zeros((B, dv), dtype=Q.dtype)
    W = np.zeros((B, n), dtype=Q.dtype)
    s = np.empty(n, dtype=np.float64)
    acc = np.empty(dv, dtype=Q.dtype)
    acc64 = np.empty(dv, dtype=np.float64)
    ok = True
    for b in range(B):
        t = _sd_row(Q[b], T, Vt, ids, vids, mask, scale, b, s, acc)
        if t > 0.0:
            _sd_write(b, n, mask[b], s, acc, t, R, W)
        elif t < 0.0:
            t = _sd_row(Q[b], T, Vt, ids, vids, mask, scale, b, s, acc64)
            if t < 0.0:
                ok = False
            elif t > 0.0:
                _sd_write(b, n, mask[b], s, acc64, t, R, W)
    return R, W, ok


# ----------------------------------------------------------------------------------------------
# grouped attention: every item belongs to one group g (or none, -1); group g attends only its
# own items with its own query vector. Cost O(n d) per row whatever the number of groups.
# ----------------------------------------------------------------------------------------------
@njit(cache=True, nogil=True, fastmath=_FM, inline="always")
def _grouped_row(Q, T, Vt, ids, group, scale, b, s, acc, mx, tot):  # pragma: no cover
    """Two passes: scores and per-group max, then exponentials and per-group read-outs.

    Each pass asks for the key (value) row ``PREFETCH_AHEAD`` items ahead (a hint only: the
    values computed are the same), which overlaps the table's cache misses with the dot products.
    """
    G = Q.shape[1]
    n = ids.shape[1]
    dv = Vt.shape[1]
    ct = acc.dtype.type
    for g in range(G):
        mx[g] = -np.inf
        tot[g] = 0.0
    for j in range(min(PREFETCH_AHEAD, n)):
        if group[b, j] >= 0:
            prefetch_table_row(T, ids[b, j])
    for j in range(n):
        jj = j + PREFETCH_AHEAD
        if jj < n and group[b, jj] >= 0:
            prefetch_table_row(T, ids[b, jj])
        g = group[b, j]
        if g >= 0:
            v = scale * np.float64(_dot_as(Q[b, g], T[ids[b, j]], ct))
            if not np.isfinite(v):
                return False
            s[j] = v
            if v > mx[g]:
                mx[g] = v
    acc[:, :] = 0.0
    for j in range(n):
        jj = j + PREFETCH_AHEAD
        if jj < n and group[b, jj] >= 0:
            prefetch_table_row(Vt, ids[b, jj])
        g = group[b, j]
        if g >= 0:
            p = np.exp(s[j] - mx[g])
            s[j] = p
            tot[g] += p
            pc = ct(p)
            a = acc[g]
            vr = Vt[ids[b, j]]
            for k in range(dv):
                a[k] += pc * ct(vr[k])
    for g in range(G):
        for k in range(dv):
            if not np.isfinite(acc[g, k]):
                return False
    return True


@njit(cache=True, nogil=True, fastmath=_FM, inline="always")
def _grouped_write(b, group, s, acc, mx, tot, R, W, count):  # pragma: no cover
    dt = R.dtype.type
    for j in range(group.shape[1]):
        g = group[b, j]
        if g >= 0:
            count[b, g] += 1
            W[b, j] = dt(s[j] / tot[g])
    for g in range(acc.shape[0]):
        if tot[g] > 0.0:
            inv = 1.0 / tot[g]
            for k in range(acc.shape[1]):
                R[b, g, k] = dt(acc[g, k] * inv)


@njit(cache=True, nogil=True, fastmath=_FM)
def grouped_forward(Q, T, Vt, ids, group, scale, R, W, count):  # pragma: no cover
    """Per-group softmax attention; ``group (B, n)`` int8 in ``[-1, G)``, ``Q (B, G, d)``.

    Writes into the caller's zero-filled arrays (row slices of the whole batch's, so row chunks
    need no joining copy): ``R (B, G, dv)`` (zero for an empty group), ``W (B, n)`` (weight of
    each item within its own group; zero for group -1) and ``count (B, G)`` (items per group).
    Returns ``ok``.
    """
    B, G, _ = Q.shape
    n = ids.shape[1]
    dv = Vt.shape[1]
    s = np.empty(n, dtype=np.float64)
    mx = np.empty(G, dtype=np.float64)
    tot = np.empty(G, dtype=np.float64)
    acc = np.empty((G, dv), dtype=Q.dtype)
    acc64 = np.empty((G, dv), dtype=np.float64)
    ok = True
    for b in range(B):
        if _grouped_row(Q, T, Vt, ids, group, scale, b, s, acc, mx, tot):
            _grouped_write(b, group, s, acc, mx, tot, R, W, count)
        elif _grouped_row(Q, T, Vt, ids, group, scale, b, s, acc64, mx, tot):
            _grouped_write(b, group, s, acc64, mx, tot, R, W, count)
        else:
            ok = False
    return ok


@njit(cache=True, nogil=True)
def grouped_pattern(group, W, geff, loc, glob, comb):  # pragma: no cover
    """Split grouped weights ``W (B, n)`` into group 0's and group 1's and mix them by ``geff (B,)``.

    Writes (every element, into the caller's arrays of ``W``'s dtype) ``loc`` (``W`` where
    ``group == 0``, else 0), ``glob`` (``W`` where ``group == 1``) and
    ``comb = geff * loc + (1 - geff) * glob`` (float64 products rounded to ``W``'s dtype): one
    pass instead of five numpy temporaries.
    """
    B, n = W.shape
    dt = W.dtype.type
    zero = dt(0.0)
    for b in range(B):
        ge = np.float64(geff[b])
        for j in range(n):
            g = group[b, j]
            w = W[b, j]
            wl = w if g == 0 else zero
            wg = w if g == 1 else zero
            loc[b, j] = wl
            glob[b, j] = wg
            comb[b, j] = dt(ge * np.float64(wl)) + dt((1.0 - ge) * np.float64(wg))


@njit(cache=True, nogil=True, fastmath=_FM)
def grouped_backward(Q, T, Vt, ids, group, W, dR, scale, n_rows, need_table_grads):  # pragma: no cover
    """Gradients of :func:`grouped_forward` given ``dR (B, G, dv)``: ``dQ``, ``dT``, ``dV``."""
    B, G, d = Q.shape
    n = ids.shape[1]
    dv = Vt.shape[1]
    dQ = np.zeros((B, G, d), dtype=Q.dtype)
    rows = n_rows if need_table_grads else 0
    dT = np.zeros((rows, d), dtype=Q.dtype)
    dV = np.zeros((rows, dv), dtype=Q.dtype)
    dw = np.empty(n, dtype=np.float64)
    c = np.empty(G, dtype=np.float64)
    acc = np.empty((G, d), dtype=np.float64)
    for b in range(B):
        c[:] = 0.0
        for j in range(n):
            g = group[b, j]
            if g >= 0:
                x = _dot64(dR[b, g], Vt[ids[b, j]])
                dw[j] = x
                c[g] += np.float64(W[b, j]) * x
        acc[:, :] = 0.0
        for j in range(n):
            g = group[b, j]
            if g >= 0:
                r = ids[b, j]
                kr = T[r]
                w = np.float64(W[b, j])
                ds = scale * w * (dw[j] - c[g])
                for k in range(d):
                    acc[g, k] += ds * kr[k]
                if need_table_grads:
                    for k in range(d):
                        dT[r, k] += ds * Q[b, g, k]
                    for k in range(dv):
                        dV[r, k] += w * dR[b, g, k]
        for g in range(G):
            for k in range(d):
                dQ[b, g, k] = acc[g, k]
    return dQ, dT, dV


# ----------------------------------------------------------------------------------------------
# flash: single pass, tiled online softmax (running max and sum, rescaled once per tile)
# ----------------------------------------------------------------------------------------------
@njit(cache=True, nogil=True, fastmath=_FM, inline="always")
def _flash_row(Q, T, Vt, ids, mask, scale, block, b, s, acc):  # pragma: no cover
    """One row; returns ``(max, sum)`` (``sum = -1`` on a non-finite score or read-out)."""
    n = ids.shape[1]
    dv = Vt.shape[1]
    ct = acc.dtype.type
    m = -np.inf
    l_sum = 0.0
    acc[:] = 0.0
    for j0 in range(0, n, block):
        j1 = min(j0 + block, n)
        bm = -np.inf
        for j in range(j0, j1):
            if mask[b, j]:
                v = scale * np.float64(_dot_as(Q[b], T[ids[b, j]], ct))
                if not np.isfinite(v):
                    return m, -1.0
                s[j - j0] = v
                if v > bm:
                    bm = v
        if bm == -np.inf:
            continue
        if bm > m:
            if l_sum > 0.0:
                f = np.exp(m - bm)
                l_sum *= f
                fc = ct(f)
                for k in range(dv):
                    acc[k] *= fc
            m = bm
        for j in range(j0, j1):
            if mask[b, j]:
                p = np.exp(s[j - j0] - m)
                l_sum += p
                pc = ct(p)
                vr = Vt[ids[b, j]]
                for k in range(dv):
                    acc[k] += pc * ct(vr[k])
    for k in range(dv):
        if not np.isfinite(acc[k]):
            return m, -1.0
    return m, l_sum


@njit(cache=True, nogil=True, fastmath=_FM)
def flash_forward(Q, T, Vt, ids, mask, scale, block):  # pragma: no cover
    """Online-softmax attention of ``Q (B, d)`` over ``T[ids]``; keys visited in tiles of ``block``.

    Returns ``out (B, dv)``, ``lse (B,)`` (log-sum-exp of the scaled scores; ``-inf`` for a
    fully masked row, whose output is zero) and ``ok`` (False on NaN/inf in a referenced row).
    Only O(block + dv) scratch per row; no weights are stored.
    """
    B = Q.shape[0]
    dv = Vt.shape[1]
    dt = Q.dtype.type
    out = np.zeros((B, dv), dtype=Q.dtype)
    lse = np.full(B, -np.inf, dtype=np.float64)
    s = np.empty(block, dtype=np.float64)
    acc = np.empty(dv, dtype=Q.dtype)
    acc64 = np.empty(dv, dtype=np.float64)
    ok = True
    for b in range(B):
        m, l_sum = _flash_row(Q, T, Vt, ids, mask, scale, block, b, s, acc)
        if l_sum > 0.0:
            inv = 1.0 / l_sum
            for k in range(dv):
                out[b, k] = dt(acc[k] * inv)
        elif l_sum < 0.0:
            m, l_sum = _flash_row(Q, T, Vt, ids, mask, scale, block, b, s, acc64)
            if l_sum < 0.0:
                ok = False
                continue
            if l_sum > 0.0:
                inv = 1.0 / l_sum
                for k in range(dv):
                    out[b, k] = dt(acc64[k] * inv)
        if l_sum > 0.0:
            lse[b] = m + np.log(l_sum)
    return out, lse, ok


@njit(cache=True, nogil=True, fastmath=_FM)
def weights_from_lse(Q, T, ids, mask, scale, lse):  # pragma: no cover
    """Recompute softmax weights ``(B, 1, n)`` from the stored log-sum-exp (flash backward)."""
    B = Q.shape[0]
    n = ids.shape[1]
    dt = Q.dtype.type
    W = np.zeros((B, 1, n), dtype=Q.dtype)
    for b in range(B):
        if lse[b] == -np.inf:
            continue
        for j in range(n):
            if mask[b, j]:
                W[b, 0, j] = dt(np.exp(scale * _dot64(Q[b], T[ids[b, j]]) - lse[b]))
    return W


# ----------------------------------------------------------------------------------------------
# linear (Performer FAVOR+) in the log domain
# ----------------------------------------------------------------------------------------------
@njit(cache=True, nogil=True, fastmath=_FM, inline="always")
def _favor_logits(X, T, ids, mask, Wf, c, b, a, e, wide):  # pragma: no cover
    """Fill ``a_i = w_i.x`` and ``e_ij = a_i + w_i.y_j - |y_j|^2/2`` (``y = c k``); return max.

    Dots accumulate in the storage dtype unless ``wide`` (float64; the caller retries a row
    wide when its max is not finite)."""
    n = ids.shape[1]
    m = Wf.shape[0]
    ct = X.dtype.type
    for i in range(m):
        a[i] = _dot64(Wf[i], X[b])
    mx = -np.inf
    for j in range(n):
        if mask[b, j]:
            kr = T[ids[b, j]]
            half = 0.5 * c * c * _dot64(kr, kr)
            for i in range(m):
                if wide:
                    dd = _dot64(Wf[i], kr)
                else:
                    dd = np.float64(_dot_as(Wf[i], kr, ct))
                v = a[i] + c * dd - half
                e[i, j] = v
                if v > mx:
                    mx = v
    return mx


@njit(cache=True, nogil=True, fastmath=_FM)
def favor_forward(X, T, Vt, ids, mask, Wf, c, need_weights):  # pragma: no cover
    """Positive-random-feature attention, evaluated stably in the log domain.

    With ``x`` the scaled query, ``y_j = c k_j`` the scaled keys, ``a_i = w_i.x`` and
    ``e_ij = a_i + w_i.y_j - |y_j|^2 / 2``, the FAVOR+ estimate
    ``sum_j [sum_i exp(e_ij)] v_j / sum_ij exp(e_ij)`` is a softmax over feature x item pairs;
    subtracting the pair maximum makes it finite for any finite input (the ``exp(-|x|^2/2)``
    and ``1/m`` factors of the feature maps cancel). ``Wf (m, d)`` are the random features.

    Returns ``out (B, dv)``, ``Wt (B, n)`` (item weights; zero-size unless ``need_weights``)
    and ``ok`` (False when a logit is not finite).
    """
    B = X.shape[0]
    n = ids.shape[1]
    m = Wf.shape[0]
    dv = Vt.shape[1]
    dt = X.dtype.type
    out = np.zeros((B, dv), dtype=X.dtype)
    Wt = np.zeros((B if need_weights else 0, n), dtype=X.dtype)
    a = np.empty(m, dtype=np.float64)
    e = np.empty((m, n), dtype=np.float64)
    wj = np.empty(n, dtype=np.float64)
    acc = np.empty(dv, dtype=np.float64)
    ok = True
    for b in range(B):
        mx = _favor_logits(X, T, ids, mask, Wf, c, b, a, e, False)
        if mx == -np.inf:
            continue
        if not np.isfinite(mx):
            mx = _favor_logits(X, T, ids, mask, Wf, c, b, a, e, True)
            if not np.isfinite(mx):
                ok = False
                continue
        tot = 0.0
        for j in range(n):
            wj[j] = 0.0
            if mask[b, j]:
                sj = 0.0
                for i in range(m):
                    sj += np.exp(e[i, j] - mx)
                wj[j] = sj
                tot += sj
        acc[:] = 0.0
        for j in range(n):
            if mask[b, j]:
                w = wj[j] / tot
                if need_weights:
                    Wt[b, j] = dt(w)
                vr = Vt[ids[b, j]]
                for k in range(dv):
                    acc[k] += w * vr[k]
        for k in range(dv):
            if not np.isfinite(acc[k]):
                ok = False
            out[b, k] = dt(acc[k])
    return out, Wt, ok


@njit(cache=True, nogil=True, fastmath=_FM)
def favor_backward(X, T, Vt, ids, mask, Wf, c, G, n_rows, need_table_grads):  # pragma: no cover
    """Gradients of :func:`favor_forward` (recomputed, nothing cached) given ``G (B, dv)``.

    Returns ``dX (B, d)`` (w.r.t. the scaled query), ``dK (n_rows, d)`` (w.r.t. the raw key
    rows, scatter-added) and ``dV (n_rows, dv)``.
    """
    B, d = X.shape
    n = ids.shape[1]
    m = Wf.shape[0]
    dv = Vt.shape[1]
    dX = np.zeros((B, d), dtype=X.dtype)
    rows = n_rows if need_table_grads else 0
    dK = np.zeros((rows, d), dtype=X.dtype)
    dV = np.zeros((rows, dv), dtype=X.dtype)
    a = np.empty(m, dtype=np.float64)
    e = np.empty((m, n), dtype=np.float64)
    wj = np.empty(n, dtype=np.float64)
    t = np.empty(n, dtype=np.float64)
    da = np.empty(m, dtype=np.float64)
    gx = np.empty(d, dtype=np.float64)
    gy = np.empty(d, dtype=np.float64)
    for b in range(B):
        mx = _favor_logits(X, T, ids, mask, Wf, c, b, a, e, True)
        if not np.isfinite(mx):
            continue
        tot = 0.0
        for j in range(n):
            if mask[b, j]:
                sj = 0.0
                for i in range(m):
                    p = np.exp(e[i, j] - mx)
                    e[i, j] = p
                    sj += p
                wj[j] = sj
                tot += sj
        inv = 1.0 / tot
        tbar = 0.0
        for j in range(n):
            if mask[b, j]:
                r = ids[b, j]
                tj = _dot64(G[b], Vt[r])
                t[j] = tj
                w = wj[j] * inv
                tbar += w * tj
                if need_table_grads:
                    for k in range(dv):
                        dV[r, k] += w * G[b, k]
        da[:] = 0.0
        for j in range(n):
            if mask[b, j]:
                r = ids[b, j]
                kr = T[r]
                csum = 0.0
                gy[:] = 0.0
                for i in range(m):
                    x = e[i, j] * inv * (t[j] - tbar)  # d loss / d e_ij
                    da[i] += x
                    csum += x
                    if need_table_grads:
                        for k in range(d):
                            gy[k] += x * Wf[i, k]
                if need_table_grads:
                    for k in range(d):
                        dK[r, k] += c * gy[k] - csum * c * c * kr[k]
        gx[:] = 0.0
        for i in range(m):
            x = da[i]
            for k in range(d):
                gx[k] += x * Wf[i, k]
        for k in range(d):
            dX[b, k] = gx[k]
    return dX, dK, dV


# ----------------------------------------------------------------------------------------------
# rotary position embedding of gathered key rows (cos/sin precomputed by the caller, vectorised)
# ----------------------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def rope_apply(T, ids, mask, cs, sn, out, lo):  # pragma: no cover
    """Write rotated keys of rows ``lo .. lo + len(cs)`` into ``out (B, n, d)``.

    Pair ``(2i, 2i+1)`` of ``T[ids[b, j]]`` is turned by the angle whose cosine/sine are
    ``cs/sn[b - lo, j, i]``; an odd last coordinate is copied; masked slots stay as they are
    (zero in a fresh array). With angle 0 (cos 1, sin 0) the rotation is the identity bit for bit.
    """
    nb, n, half = cs.shape
    d = T.shape[1]
    dt = out.dtype.type
    for bb in range(nb):
        b = lo + bb
        for j in range(n):
            if mask[b, j]:
                kr = T[ids[b, j]]
                for i in range(half):
                    c = cs[bb, j, i]
                    s = sn[bb, j, i]
                    x0 = kr[2 * i]
                    x1 = kr[2 * i + 1]
                    out[b, j, 2 * i] = dt(x0 * c - x1 * s)
                    out[b, j, 2 * i + 1] = dt(x0 * s + x1 * c)
                for k in range(2 * half, d):
                    out[b, j, k] = kr[k]


@njit(cache=True, nogil=True)
def rope_unapply_scatter(dKr, ids, mask, cs, sn, out, lo):  # pragma: no cover
    """Rotate the gradients ``dKr`` of rows ``lo ..`` back and scatter-add them into ``out (N, d)``."""
    nb, n, half = cs.shape
    d = dKr.shape[2]
    for bb in range(nb):
        b = lo + bb
        for j in range(n):
            if mask[b, j]:
                r = ids[b, j]
                for i in range(half):
                    c = cs[bb, j, i]
                    s = sn[bb, j, i]
                    g0 = dKr[b, j, 2 * i]
                    g1 = dKr[b, j, 2 * i + 1]
                    out[r, 2 * i] += g0 * c + g1 * s
                    out[r, 2 * i + 1] += -g0 * s + g1 * c
                for k in range(2 * half, d):
                    out[r, k] += dKr[b, j, k]


@njit(cache=True, nogil=True, fastmath=_FM, inline="always")
def _rope_row(q, T, Vt, ids, mask, cs, sn, bb, b, scale, s, acc, kbuf):  # pragma: no cover
    """:func:`_sd_row` with each key row rotated into ``kbuf`` on the fly (same dot routine)."""
    n = ids.shape[1]
    half = cs.shape[2]
    d = T.shape[1]
    ct = acc.dtype.type
    kt = kbuf.dtype.type
    mx = -np.inf
    for j in range(n):
        if mask[b, j]:
            kr = T[ids[b, j]]
            for i in range(half):
                c = cs[bb, j, i]
                sv = sn[bb, j, i]
                x0 = kr[2 * i]
                x1 = kr[2 * i + 1]
                kbuf[2 * i] = kt(x0 * c - x1 * sv)
                kbuf[2 * i + 1] = kt(x0 * sv + x1 * c)
            for k in range(2 * half, d):
                kbuf[k] = kr[k]
            v = scale * np.float64(_dot_as(q, kbuf, ct))
            if not np.isfinite(v):
                return -1.0
            s[j] = v
            if v > mx:
                mx = v
    return _sd_readout(Vt, ids, mask, b, mx, s, acc)


@njit(cache=True, nogil=True, fastmath=_FM)
def rope_forward(Q, T, Vt, ids, mask, cs, sn, lo, scale, R, W):  # pragma: no cover
    """RoPE attention for rows ``lo .. lo + len(cs)`` written into ``R (B, dv)``, ``W (B, n)``.

    Keys are rotated on the fly (cos/sin of the chunk given), never stored. Returns ``ok``.
    """
    nb = cs.shape[0]
    n = ids.shape[1]
    dv = Vt.shape[1]
    s = np.empty(n, dtype=np.float64)
    acc = np.empty(dv, dtype=Q.dtype)
    acc64 = np.empty(dv, dtype=np.float64)
    kbuf = np.empty(T.shape[1], dtype=T.dtype)
    ok = True
    for bb in range(nb):
        b = lo + bb
        t = _rope_row(Q[b], T, Vt, ids, mask, cs, sn, bb, b, scale, s, acc, kbuf)
        if t > 0.0:
            _sd_write(b, n, mask[b], s, acc, t, R, W)
        elif t < 0.0:
            t = _rope_row(Q[b], T, Vt, ids, mask, cs, sn, bb, b, scale, s, acc64, kbuf)
            if t < 0.0:
                ok = False
            elif t > 0.0:
                _sd_write(b, n, mask[b], s, acc64, t, R, W)
    return ok
