"""numba kernels of ``sliced_wasserstein`` attention (plain functions, no state).

Keys and values are read as rows of tables through ``ids`` (the dense form passes the
``(B*n, d)`` reshape with ``ids[b, j] = b*n + j``); the projected coordinates of the items are
rows of a second table ``PT (R, P)`` read through ``pids`` (the cached projections of a prepared
key table, or the projections of this call's items). See
:mod:`ruvector_hnsw.attention.sliced_wasserstein` for the formula.

A row's token sets are positions ``j`` in ``[0, n)`` of the row's items; ``-1`` pads. The query
itself is token 0 of the query set and is not stored.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ruvector_hnsw.attention._kernels import _dot64, _dot_as
from ruvector_hnsw.attention._select_kernels import insert_desc, sort_values, sort_with_order

_FM = {"reassoc", "contract", "nsz"}


@njit(cache=True, nogil=True, inline="always")
def _w2_sorted(X, a, Y, b):  # pragma: no cover - jit
    """Squared 2-Wasserstein distance of two 1-D empirical measures with uniform weights.

    ``X[:a]`` and ``Y[:b]`` are sorted; the quantile functions are piecewise constant with breaks
    at ``i/a`` and ``k/b``, merged exactly in integer arithmetic (``u = num / (a*b)``).
    """
    i = 0
    k = 0
    u = 0
    acc = 0.0
    while i < a and k < b:
        ea = (i + 1) * b
        eb = (k + 1) * a
        e = ea if ea < eb else eb
        df = X[i] - Y[k]
        acc += (e - u) * df * df
        u = e
        if ea <= eb:
            i += 1
        if eb <= ea:
            k += 1
    return acc / (a * b)


@njit(cache=True, nogil=True, inline="always")
def _w2_sorted_grad(X, a, Y, b, coef, gX, gY):  # pragma: no cover - jit
    """Add ``coef * dW2/dX`` to ``gX[:a]`` and ``coef * dW2/dY`` to ``gY[:b]`` (sorted positions)."""
    i = 0
    k = 0
    u = 0
    inv = coef * 2.0 / (a * b)
    while i < a and k < b:
        ea = (i + 1) * b
        eb = (k + 1) * a
        e = ea if ea < eb else eb
        g = (e - u) * (X[i] - Y[k]) * inv
        gX[i] += g
        gY[k] -= g
        u = e
        if ea <= eb:
            i += 1
        if eb <= ea:
            k += 1


@njit(cache=True, nogil=True, fastmath=_FM, inline="always")
def _sq_dists(YT, y, n, dist):  # pragma: no cover - jit
    """``dist[j] = sum_p (YT[p, j] - y[p])^2`` for every ``j < n`` (vectorised over ``j``)."""
    P = YT.shape[0]
    for j in range(n):
        dist[j] = 0.0
    for p in range(P):
        yp = y[p]
        row = YT[p]
        for j in range(n):
            df = row[j] - yp
            dist[j] += df * df


@njit(cache=True, nogil=True, fastmath=_FM)
def sw_forward(Q, T, Vt, ids, mask, PT, pids, Theta, cw, m, t, readout):  # pragma: no cover - jit
    """Sliced-Wasserstein attention over row chunks' worth of rows.

    Returns ``R (B, dv)`` (zero-width when ``readout`` is False), ``W (B, n)``, the selected
    positions ``sel (B, m)``, the query set's context tokens ``qtok (B, t-1)``, each selected
    item's context tokens ``itok (B, m, t-1)``, the per-projection squared distances
    ``D (B, m, P)`` (float64) and ``ok`` (False when a row read holds NaN/inf).

    Neighbour searches run in the coordinates' own dtype (they only rank); the 1-D transport
    distances, the scores and the read-out are accumulated in float64.
    """
    B = Q.shape[0]
    n = ids.shape[1]
    P = Theta.shape[0]
    dv = Vt.shape[1] if readout else 0
    tq = t - 1
    ct = Q.dtype.type
    dt = Q.dtype.type
    R = np.zeros((B, dv), dtype=Q.dtype)
    W = np.zeros((B, n), dtype=Q.dtype)
    sel = np.full((B, m), -1, dtype=np.int64)
    qtok = np.full((B, tq), -1, dtype=np.int64)
    itok = np.full((B, m, tq), -1, dtype=np.int64)
    D = np.zeros((B, m, P), dtype=np.float64)
    topv = np.empty(m, dtype=np.float64)
    topi = np.empty(m, dtype=np.int64)
    nv = np.empty(max(tq, 1), dtype=np.float64)
    ni = np.empty(max(tq, 1), dtype=np.int64)
    YT = np.zeros((P, n), dtype=PT.dtype)
    dist = np.empty(n, dtype=PT.dtype)
    x = np.empty(P, dtype=np.float64)
    xc = np.empty(P, dtype=PT.dtype)
    yc = np.empty(P, dtype=PT.dtype)
    Xs = np.empty((P, t), dtype=np.float64)
    Ys = np.empty(t, dtype=np.float64)
    sig = np.empty(m, dtype=np.float64)
    acc = np.empty(dv, dtype=np.float64)
    ok = True
    for b in range(B):
        q = Q[b]
        size = 0
        bad = False
        for j in range(n):
            if mask[b, j]:
                kr = T[ids[b, j]]
                v = float(_dot_as(q, kr, ct))
                if not np.isfinite(v):
                    v = _dot64(q, kr)
                    if not np.isfinite(v):
                        bad = True
                        break
                size = insert_desc(topv, topi, size, m, v, j)
                if tq > 0:
                    pr = PT[pids[b, j]]
                    for p in range(P):
                        YT[p, j] = pr[p]
        if bad:
            ok = False
            continue
        if size == 0:
            continue
        if tq == 0:  # only the selected items' coordinates are read
            for r in range(size):
                pr = PT[pids[b, topi[r]]]
                for p in range(P):
                    YT[p, topi[r]] = pr[p]
        for p in range(P):
            x[p] = _dot64(Theta[p], q)
            xc[p] = x[p]
        # the query's token set: q and its t-1 nearest attended items (projected space)
        nq = 0
        if tq > 0:
            _sq_dists(YT, xc, n, dist)
            for j in range(n):
                if mask[b, j]:
                    nq = insert_desc(nv, ni, nq, tq, -np.float64(dist[j]), j)
        for k in range(nq):
            qtok[b, k] = ni[k]
        a = nq + 1
        for p in range(P):
            Xs[p, 0] = x[p]
            for k in range(nq):
                Xs[p, k + 1] = YT[p, ni[k]]
            sort_values(Xs[p], a)
        mx = -np.inf
        for r in range(size):
            jr = topi[r]
            sel[b, r] = jr
            nn = 0
            if tq > 0:
                for p in range(P):
                    yc[p] = YT[p, jr]
                _sq_dists(YT, yc, n, dist)
                for i in range(n):
                    if mask[b, i] and i != jr:
                        nn = insert_desc(nv, ni, nn, tq, -np.float64(dist[i]), i)
            for k in range(nn):
                itok[b, r, k] = ni[k]
            bs = nn + 1
            sc = 0.0
            for p in range(P):
                Ys[0] = YT[p, jr]
                for k in range(nn):
                    Ys[k + 1] = YT[p, ni[k]]
                sort_values(Ys, bs)
                w2 = _w2_sorted(Xs[p], a, Ys, bs)
                D[b, r, p] = w2
                sc -= cw[p] * w2
            sig[r] = sc
            if sc > mx:
                mx = sc
        tot = 0.0
        for r in range(size):
            e = np.exp(sig[r] - mx)
            sig[r] = e
            tot += e
        for r in range(size):
            sig[r] /= tot
            W[b, topi[r]] = dt(sig[r])
        if readout:
            acc[:] = 0.0
            for r in range(size):
                vr = Vt[ids[b, topi[r]]]
                w = sig[r]
                for k in range(dv):
                    acc[k] += w * np.float64(vr[k])
            for k in range(dv):
                if not np.isfinite(acc[k]):
                    bad = True
                R[b, k] = acc[k]
            if bad:
                ok = False
    return R, W, sel, qtok, itok, D, ok


@njit(cache=True, nogil=True, fastmath=_FM)
def sw_backward(Q, T, Vt, ids, mask, PT, pids, Theta, cw, W, sel, qtok, itok, D, G, need, n_rows):  # pragma: no cover
    """Gradients of :func:`sw_forward` given ``G (B, dv)``.

    Returns ``dQ (B, d)``, ``dw (B, P)`` (per-row gradient of ``cw``'s log-weights: the caller
    sums the rows), ``dT (n_rows, d)`` and ``dV (n_rows, dv)`` (zero-size unless ``need``). The
    key-table gradient flows through the projected coordinates of every token (the cached
    projections are ``T @ Theta.T``); the top-m filter and the neighbour choices are constants.
    """
    B, d = Q.shape
    n = ids.shape[1]
    P = Theta.shape[0]
    dv = Vt.shape[1]
    m = sel.shape[1]
    tq = qtok.shape[1]
    t = tq + 1
    rows = n_rows if need else 0
    dQ = np.zeros((B, d), dtype=Q.dtype)
    dw = np.zeros((B, P), dtype=np.float64)
    dT = np.zeros((rows, d), dtype=Q.dtype)
    dV = np.zeros((rows, dv), dtype=Q.dtype)
    dsig = np.empty(m, dtype=np.float64)
    x = np.empty(P, dtype=np.float64)
    Xs = np.empty((P, t), dtype=np.float64)
    Xo = np.empty((P, t), dtype=np.int64)
    Ys = np.empty(t, dtype=np.float64)
    Yo = np.empty(t, dtype=np.int64)
    gX = np.empty(t, dtype=np.float64)
    gY = np.empty(t, dtype=np.float64)
    gq = np.empty(P, dtype=np.float64)
    gc = np.zeros((n, P), dtype=np.float64)
    touched = np.empty(t * (m + 1), dtype=np.int64)
    stamp = np.full(n, -1, dtype=np.int64)
    for b in range(B):
        size = 0
        for r in range(m):
            if sel[b, r] >= 0:
                size += 1
        if size == 0:
            continue
        q = Q[b]
        c = 0.0
        for r in range(size):
            j = sel[b, r]
            g = _dot64(G[b], Vt[ids[b, j]])
            dsig[r] = g
            c += np.float64(W[b, j]) * g
        for r in range(size):
            j = sel[b, r]
            w = np.float64(W[b, j])
            dsig[r] = w * (dsig[r] - c)
            if need:
                row = ids[b, j]
                for k in range(dv):
                    dV[row, k] += w * G[b, k]
        for p in range(P):
            x[p] = _dot64(Theta[p], q)
        nq = 0
        for k in range(tq):
            if qtok[b, k] >= 0:
                nq += 1
        a = nq + 1
        nt = 0
        for k in range(nq):
            j = qtok[b, k]
            if stamp[j] != b:
                stamp[j] = b
                touched[nt] = j
                nt += 1
        for p in range(P):
            Xs[p, 0] = x[p]
            Xo[p, 0] = -1
            for k in range(nq):
                j = qtok[b, k]
                Xs[p, k + 1] = PT[pids[b, j], p]
                Xo[p, k + 1] = j
            sort_with_order(Xs[p], Xo[p], a)
        gq[:] = 0.0
        for r in range(size):
            jr = sel[b, r]
            nn = 0
            for k in range(tq):
                if itok[b, r, k] >= 0:
                    nn += 1
            for k in range(-1, nn):
                j = jr if k < 0 else itok[b, r, k]
                if stamp[j] != b:
                    stamp[j] = b
                    touched[nt] = j
                    nt += 1
            if dsig[r] == 0.0:
                continue
            bs = nn + 1
            for p in range(P):
                coef = -dsig[r] * cw[p]
                dw[b, p] += coef * D[b, r, p]
                Ys[0] = PT[pids[b, jr], p]
                Yo[0] = jr
                for k in range(nn):
                    j = itok[b, r, k]
                    Ys[k + 1] = PT[pids[b, j], p]
                    Yo[k + 1] = j
                sort_with_order(Ys, Yo, bs)
                gX[:a] = 0.0
                gY[:bs] = 0.0
                _w2_sorted_grad(Xs[p], a, Ys, bs, coef, gX, gY)
                for k in range(a):
                    o = Xo[p, k]
                    if o < 0:
                        gq[p] += gX[k]
                    else:
                        gc[o, p] += gX[k]
                for k in range(bs):
                    gc[Yo[k], p] += gY[k]
        for k in range(d):
            s = 0.0
            for p in range(P):
                s += gq[p] * Theta[p, k]
            dQ[b, k] = s
        for u in range(nt):
            j = touched[u]
            if need:
                row = ids[b, j]
                for k in range(d):
                    s = 0.0
                    for p in range(P):
                        s += gc[j, p] * Theta[p, k]
                    dT[row, k] += s
            for p in range(P):
                gc[j, p] = 0.0
    return dQ, dw, dT, dV
