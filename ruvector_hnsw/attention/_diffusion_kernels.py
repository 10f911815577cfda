"""numba kernels of ``diffusion`` attention (plain functions, no state).

Keys/values are read as table rows through ``ids`` (dense form: the ``(B*n, d)`` reshape with
``ids[b, j] = b*n + j``). See :mod:`ruvector_hnsw.attention.diffusion` for the formula.
Laplacian codes: 0 = unnormalised ``D - W``, 1 = symmetric ``I - D^-1/2 W D^-1/2``,
2 = random walk ``I - D^-1 W`` (mass evolves by its transpose).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ruvector_hnsw.attention._kernels import _dot64, _dot_as
from ruvector_hnsw.attention._select_kernels import insert_desc

_FM = {"reassoc", "contract", "nsz"}

UNNORMALISED, SYMMETRIC, RANDOM_WALK = 0, 1, 2


@njit(cache=True, nogil=True, inline="always")
def _apply(u, y, off, idx, ms, lap, transpose):  # pragma: no cover - jit
    """``y = Lambda u`` (``transpose``: ``Lambda^T u``) on the row's graph (CSR ``off``/``idx``).

    Mass evolves as ``du/dt = -Lambda u`` with ``Lambda = D - W`` (unnormalised),
    ``I - D^-1/2 W D^-1/2`` (symmetric) or ``I - W D^-1`` (random walk: the transpose of
    ``I - D^-1 W``). Isolated nodes (degree 0) do not move.
    """
    for i in range(ms):
        lo = off[i]
        di = off[i + 1] - lo
        if di == 0:
            y[i] = 0.0
            continue
        s = 0.0
        if lap == 0:
            for e in range(lo, lo + di):
                s += u[idx[e]]
            y[i] = di * u[i] - s
        elif lap == 1:
            for e in range(lo, lo + di):
                j = idx[e]
                s += u[j] / np.sqrt(np.float64(off[j + 1] - off[j]) * di)
            y[i] = u[i] - s
        elif transpose:  # (I - W D^-1)^T = I - D^-1 W
            for e in range(lo, lo + di):
                s += u[idx[e]]
            y[i] = u[i] - s / di
        else:
            for e in range(lo, lo + di):
                j = idx[e]
                s += u[j] / (off[j + 1] - off[j])
            y[i] = u[i] - s


@njit(cache=True, nogil=True)
def _build_graph(knn, ms, off, idx, cnt, inoff, inl, stamp):  # pragma: no cover - jit
    """CSR of the symmetrised graph ``j in knn[i] or i in knn[j]`` over ``ms`` nodes (in ``off``/``idx``).

    ``knn (m, k)`` holds each node's directed neighbours (``-1`` pad); scratch ``cnt``/``inoff``
    (``m + 1``), ``inl`` (``m k``), ``stamp`` (``m``). Each node lists its own kNN first (nearest
    first), then the nodes that chose it, without repeats. Returns the largest degree.
    """
    k = knn.shape[1]
    for i in range(ms + 1):
        cnt[i] = 0
    for i in range(ms):
        for e in range(k):
            j = knn[i, e]
            if j >= 0:
                cnt[j + 1] += 1
    inoff[0] = 0
    for i in range(ms):
        inoff[i + 1] = inoff[i] + cnt[i + 1]
        cnt[i + 1] = 0
    for i in range(ms):
        for e in range(k):
            j = knn[i, e]
            if j >= 0:
                inl[inoff[j] + cnt[j + 1]] = i
                cnt[j + 1] += 1
    for i in range(ms):
        stamp[i] = -1
    pos = 0
    dmax = 0
    for i in range(ms):
        off[i] = pos
        stamp[i] = i  # no self loops
        for e in range(k):
            j = knn[i, e]
            if j >= 0 and stamp[j] != i:
                stamp[j] = i
                idx[pos] = j
                pos += 1
        for e in range(inoff[i], inoff[i + 1]):
            j = inl[e]
            if stamp[j] != i:
                stamp[j] = i
                idx[pos] = j
                pos += 1
        if pos - off[i] > dmax:
            dmax = pos - off[i]
    off[ms] = pos
    return dmax


@njit(cache=True, nogil=True, inline="always")
def _substeps(dmax, lap, h):  # pragma: no cover - jit
    """Euler sub-steps per step so that each keeps the weights non-negative (``h_sub * rate <= 1``)."""
    rate = np.float64(dmax) if lap == 0 else 1.0
    k = int(np.ceil(h * rate - 1e-12))
    return k if k > 1 else 1


@njit(cache=True, nogil=True, fastmath=_FM)
def diff_forward(Q, T, Vt, ids, mask, scale, times, num_steps, k_graph, m, lap, readout):  # pragma: no cover
    """Heat-diffused softmax attention, one output per time in ``times (S,)``.

    Returns ``R (B, S, dv)``, ``W (B, S, n)`` (diffused weights), ``A (B, n)`` (undiffused
    softmax weights), ``sel (B, m)`` (positions of the diffused items, best score first),
    ``knn (B, m, k)`` (each diffused item's nearest fellow items, as indices into ``sel``; the
    graph is their symmetrisation), ``nsub (B, S)`` (Euler sub-steps per step) and ``ok``.
    """
    B, d = Q.shape
    n = ids.shape[1]
    S = times.shape[0]
    dv = Vt.shape[1] if readout else 0
    k = min(k_graph, max(m - 1, 0))
    ct = Q.dtype.type
    dt = Q.dtype.type
    R = np.zeros((B, S, dv), dtype=Q.dtype)
    W = np.zeros((B, S, n), dtype=Q.dtype)
    A = np.zeros((B, n), dtype=Q.dtype)
    sel = np.full((B, m), -1, dtype=np.int64)
    knn = np.full((B, m, k), -1, dtype=np.int64)
    nsub = np.ones((B, S), dtype=np.int64)
    s = np.empty(n, dtype=np.float64)
    a = np.empty(n, dtype=np.float64)
    topv = np.empty(m, dtype=np.float64)
    topi = np.empty(m, dtype=np.int64)
    kv = np.empty(max(k, 1), dtype=np.float64)
    ki = np.empty(max(k, 1), dtype=np.int64)
    off = np.empty(m + 1, dtype=np.int64)
    idx = np.empty(max(2 * m * k, 1), dtype=np.int64)
    cnt = np.empty(m + 1, dtype=np.int64)
    inoff = np.empty(m + 1, dtype=np.int64)
    inl = np.empty(max(m * k, 1), dtype=np.int64)
    stamp = np.empty(m, dtype=np.int64)
    u = np.empty(m, dtype=np.float64)
    y = np.empty(m, dtype=np.float64)
    base = np.empty(dv, dtype=np.float64)
    acc = np.empty(dv, dtype=np.float64)
    ok = True
    for b in range(B):
        q = Q[b]
        size = 0
        bad = False
        mx = -np.inf
        for j in range(n):
            if mask[b, j]:
                kr = T[ids[b, j]]
                v = float(_dot_as(q, kr, ct))
                if not np.isfinite(v):
                    v = _dot64(q, kr)
                    if not np.isfinite(v):
                        bad = True
                        break
                v *= scale
                s[j] = v
                if v > mx:
                    mx = v
                size = insert_desc(topv, topi, size, m, v, j)
        if bad:
            ok = False
            continue
        if size == 0:
            continue
        tot = 0.0
        for j in range(n):
            if mask[b, j]:
                e = np.exp(s[j] - mx)
                a[j] = e
                tot += e
        for j in range(n):
            if mask[b, j]:
                a[j] /= tot
                A[b, j] = dt(a[j])
        # kNN among the selected items (squared L2 of the keys, in the keys' dtype: it only
        # ranks), symmetrised into a CSR graph
        for r in range(size):
            sel[b, r] = topi[r]
        for r in range(size):
            kr = T[ids[b, topi[r]]]
            c = 0
            for r2 in range(size):
                if r2 != r:
                    k2 = T[ids[b, topi[r2]]]
                    dd = ct(0.0)
                    for kk in range(d):
                        df = kr[kk] - k2[kk]
                        dd += df * df
                    c = insert_desc(kv, ki, c, k, -np.float64(dd), r2)
            for e in range(c):
                knn[b, r, e] = ki[e]
        dmax = _build_graph(knn[b], size, off, idx, cnt, inoff, inl, stamp)
        if readout:
            base[:] = 0.0
            for j in range(n):
                if mask[b, j]:
                    vr = Vt[ids[b, j]]
                    w = a[j]
                    for kk in range(dv):
                        base[kk] += w * np.float64(vr[kk])
        for si in range(S):
            t = times[si]
            for r in range(size):
                u[r] = a[topi[r]]
            if t > 0.0 and dmax > 0:
                sub = _substeps(dmax, lap, t / num_steps)
                nsub[b, si] = sub
                hh = t / (num_steps * sub)
                for _ in range(num_steps * sub):
                    _apply(u, y, off, idx, size, lap, False)
                    for r in range(size):
                        u[r] -= hh * y[r]
                if lap == 1:  # the symmetric operator does not conserve mass: restore it
                    ma = 0.0
                    mu = 0.0
                    for r in range(size):
                        ma += a[topi[r]]
                        mu += u[r]
                    f = ma / mu
                    for r in range(size):
                        u[r] *= f
            for j in range(n):
                if mask[b, j]:
                    W[b, si, j] = dt(a[j])
            for r in range(size):
                W[b, si, topi[r]] = dt(u[r])
            if readout:
                for kk in range(dv):
                    acc[kk] = base[kk]
                for r in range(size):
                    du = u[r] - a[topi[r]]
                    if du != 0.0:
                        vr = Vt[ids[b, topi[r]]]
                        for kk in range(dv):
                            acc[kk] += du * np.float64(vr[kk])
                for kk in range(dv):
                    if not np.isfinite(acc[kk]):
                        bad = True
                    R[b, si, kk] = dt(acc[kk])
        if bad:
            ok = False
    return R, W, A, sel, knn, nsub, ok


@njit(cache=True, nogil=True, fastmath=_FM)
def diff_backward(Q, T, Vt, ids, mask, scale, t, num_steps, lap, A, W, sel, knn, nsub, G, need,
                  n_rows):  # pragma: no cover
    """Gradients of :func:`diff_forward` (one time ``t``) given ``G (B, dv)``.

    Returns ``dQ (B, d)``, ``dt (B,)`` (per-row gradient of ``t``) and ``dT``/``dV`` table
    gradients (zero-size unless ``need``). The top-m choice and the graph are constants.
    """
    B, d = Q.shape
    n = ids.shape[1]
    dv = Vt.shape[1]
    m = sel.shape[1]
    k = knn.shape[2]
    rows = n_rows if need else 0
    dQ = np.zeros((B, d), dtype=Q.dtype)
    dtime = np.zeros(B, dtype=np.float64)
    dT = np.zeros((rows, d), dtype=Q.dtype)
    dV = np.zeros((rows, dv), dtype=Q.dtype)
    da = np.empty(n, dtype=np.float64)
    lam = np.empty(m, dtype=np.float64)
    y = np.empty(m, dtype=np.float64)
    acc = np.empty(d, dtype=np.float64)
    off = np.empty(m + 1, dtype=np.int64)
    idx = np.empty(max(2 * m * k, 1), dtype=np.int64)
    cnt = np.empty(m + 1, dtype=np.int64)
    inoff = np.empty(m + 1, dtype=np.int64)
    inl = np.empty(max(m * k, 1), dtype=np.int64)
    stamp = np.empty(m, dtype=np.int64)
    for b in range(B):
        size = 0
        for r in range(m):
            if sel[b, r] >= 0:
                size += 1
        if size == 0:
            continue
        for j in range(n):
            if mask[b, j]:
                r = ids[b, j]
                da[j] = _dot64(G[b], Vt[r])
                if need:
                    w = np.float64(W[b, 0, j])
                    for kk in range(dv):
                        dV[r, kk] += w * G[b, kk]
        dmax = _build_graph(knn[b], size, off, idx, cnt, inoff, inl, stamp)
        if t > 0.0 and dmax > 0:
            N = num_steps * nsub[b, 0]
            hh = t / N
            U = np.empty((N + 1, size), dtype=np.float64)
            for r in range(size):
                U[0, r] = np.float64(A[b, sel[b, r]])
            for st in range(N):
                _apply(U[st], y, off, idx, size, lap, False)
                for r in range(size):
                    U[st + 1, r] = U[st, r] - hh * y[r]
            for r in range(size):
                lam[r] = da[sel[b, r]]
            dmass = 0.0
            if lap == 1:  # w = u * ma / mu
                ma = 0.0
                mu = 0.0
                for r in range(size):
                    ma += U[0, r]
                    mu += U[N, r]
                g = 0.0
                for r in range(size):
                    g += lam[r] * U[N, r]
                dmass = g / mu
                for r in range(size):
                    lam[r] = (ma / mu) * lam[r] - (ma / (mu * mu)) * g
            dh = 0.0
            for st in range(N - 1, -1, -1):
                _apply(U[st], y, off, idx, size, lap, False)
                for r in range(size):
                    dh -= lam[r] * y[r]
                _apply(lam, y, off, idx, size, lap, True)
                for r in range(size):
                    lam[r] -= hh * y[r]
            dtime[b] = dh / N
            for r in range(size):
                da[sel[b, r]] = lam[r] + dmass
        # softmax backward
        c = 0.0
        for j in range(n):
            if mask[b, j]:
                c += np.float64(A[b, j]) * da[j]
        q = Q[b]
        acc[:] = 0.0
        for j in range(n):
            if mask[b, j]:
                ds = np.float64(A[b, j]) * (da[j] - c) * scale
                if ds != 0.0:
                    r = ids[b, j]
                    kr = T[r]
                    for kk in range(d):
                        acc[kk] += ds * kr[kk]
                    if need:
                        for kk in range(d):
                            dT[r, kk] += ds * q[kk]
        for kk in range(d):
            dQ[b, kk] = acc[kk]
    return dQ, dtime, dT, dV
