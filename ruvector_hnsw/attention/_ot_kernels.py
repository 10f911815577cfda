"""numba kernels of ``centroid_ot`` attention (plain functions, no state).

Keys/values are read as table rows through ``ids`` (dense form: the ``(B*n, d)`` reshape with
``ids[b, j] = b*n + j``), the cluster label of item ``j`` as ``LT[lids[b, j]]``. See
:mod:`ruvector_hnsw.attention.centroid_ot` for the formula; the Sinkhorn iterations run in the
log domain (every exponential is of a number <= 0 after subtracting a maximum).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ruvector_hnsw.attention._kernels import _dot64, _dot_as

_FM = {"reassoc", "contract", "nsz"}


#: below this a factorised sum may have lost precision to underflow: redo it in the log domain
_TINY = 1e-200


@njit(cache=True, nogil=True, fastmath=_FM, inline="always")
def _shifted_exp(v, p, e):  # pragma: no cover - jit
    """``e[:p] = exp(v[:p] - max(v[:p]))``; returns the max."""
    mx = -np.inf
    for c in range(p):
        if v[c] > mx:
            mx = v[c]
    for c in range(p):
        e[c] = np.exp(v[c] - mx)
    return mx


@njit(cache=True, nogil=True, fastmath=_FM, inline="always")
def _lse_probs(v, vmax, ev, Kl, Ke, p, probs):  # pragma: no cover - jit
    """``L = log sum_c exp(v_c + Kl_c)`` and, when ``probs`` has room, ``probs_c = exp(v_c + Kl_c - L)``.

    Fast path: ``sum_c ev_c Ke_c`` with ``ev = exp(v - vmax)`` and ``Ke = exp(Kl)`` (both <= 1),
    one multiply-add per entry. When that sum is below ``_TINY`` (terms may have underflowed)
    the sum is redone in the log domain (maximum subtracted before every exponential).
    """
    s = 0.0
    for c in range(p):
        s += ev[c] * Ke[c]
    if s > _TINY:
        L = vmax + np.log(s)
        if probs.shape[0]:
            inv = 1.0 / s
            for c in range(p):
                probs[c] = ev[c] * Ke[c] * inv
        return L
    mx = -np.inf
    for c in range(p):
        t = v[c] + Kl[c]
        if t > mx:
            mx = t
    s = 0.0
    for c in range(p):
        s += np.exp(v[c] + Kl[c] - mx)
    L = mx + np.log(s)
    if probs.shape[0]:
        for c in range(p):
            probs[c] = np.exp(v[c] + Kl[c] - L)
    return L


@njit(cache=True, nogil=True)
def compact_kernels(Kc, pres, p):  # pragma: no cover - jit
    """``Kc[:, pres[:p]]`` and its exponential, row-major ``(M, p)`` and transposed ``(p, M)``."""
    M = Kc.shape[0]
    Kl = np.empty((M, p))
    KlT = np.empty((p, M))
    for m in range(M):
        for c in range(p):
            v = Kc[m, pres[c]]
            Kl[m, c] = v
            KlT[c, m] = v
    return Kl, np.exp(Kl), KlT, np.exp(KlT)


@njit(cache=True, nogil=True)
def sinkhorn(a, bl, p, Kl, Ke, KlT, KeT, lam, iters, Fh, Gh, beta):  # pragma: no cover - jit
    """Semi-relaxed log-domain Sinkhorn; fills ``Fh (iters+2, M)``, ``Gh (iters+1, p)``, ``beta (p,)``.

    ``a (M,)``: log demand (exact row marginal); ``bl (p,)``: log supply of the ``p`` present
    columns (relaxed with ``lam = rho / (rho + eps)``); ``Kl (M, p)`` = ``-cost / eps`` on
    those columns, ``Ke = exp(Kl)``, ``KlT``/``KeT`` their transposes.
    ``G^0 = 0``; ``F^k = a - LSE_c(G^{k-1} + K)``, ``G^k = lam (bl - LSE_m(F^k + K))`` for
    ``k = 1..iters``; a last row update ``F^{iters+1}``; ``beta_c = sum_m pi_mc`` with
    ``pi = exp(F^{iters+1}_m + G^{iters}_c + K_mc)``.
    """
    M = a.shape[0]
    ev = np.empty(max(M, p))
    none = np.empty(0)
    for c in range(p):
        Gh[0, c] = 0.0
    for k in range(1, iters + 2):
        gmax = _shifted_exp(Gh[k - 1], p, ev)
        for m in range(M):
            Fh[k, m] = a[m] - _lse_probs(Gh[k - 1], gmax, ev, Kl[m], Ke[m], p, none)
        if k <= iters:
            fmax = _shifted_exp(Fh[k], M, ev)
            for c in range(p):
                Gh[k, c] = lam * (bl[c] - _lse_probs(Fh[k], fmax, ev, KlT[c], KeT[c], M, none))
    fmax = _shifted_exp(Fh[iters + 1], M, ev)
    for c in range(p):
        beta[c] = np.exp(Gh[iters, c] + _lse_probs(Fh[iters + 1], fmax, ev, KlT[c], KeT[c], M, none))


@njit(cache=True, nogil=True)
def sinkhorn_backward(a, bl, p, Kl, Ke, KlT, KeT, lam, iters, Fh, Gh, beta, dbeta, da):  # pragma: no cover
    """Reverse mode through :func:`sinkhorn` (its filled ``Fh``/``Gh``/``beta``) given ``dbeta (p,)``.

    Writes ``da (M,)`` (gradient of the log demand) and returns the gradient of ``lam``.
    """
    M = a.shape[0]
    dF = np.zeros(M)
    dG = np.zeros(p)
    ev = np.empty(max(M, p))
    probs = np.empty(max(M, p))
    Fl = Fh[iters + 1]
    Gl = Gh[iters]
    for m in range(M):
        s = 0.0
        for c in range(p):
            s += np.exp(Fl[m] + Gl[c] + Kl[m, c]) * dbeta[c]
        dF[m] = s
    for c in range(p):
        dG[c] = beta[c] * dbeta[c]
    for m in range(M):
        da[m] = 0.0
    dlam = 0.0
    k = iters + 1
    while True:
        # row update k: F^k = a - LSE_c(G^{k-1} + K)
        gmax = _shifted_exp(Gh[k - 1], p, ev)
        for m in range(M):
            da[m] += dF[m]
            _lse_probs(Gh[k - 1], gmax, ev, Kl[m], Ke[m], p, probs)
            f = dF[m]
            for c in range(p):
                dG[c] -= f * probs[c]
        k -= 1
        if k == 0:
            break
        # column update k: G^k = lam (bl - LSE_m(F^k + K)); dG holds dL/dG^k
        for m in range(M):
            dF[m] = 0.0
        fmax = _shifted_exp(Fh[k], M, ev)
        for c in range(p):
            L = _lse_probs(Fh[k], fmax, ev, KlT[c], KeT[c], M, probs)
            dlam += dG[c] * (bl[c] - L)
            g = lam * dG[c]
            for m in range(M):
                dF[m] -= g * probs[m]
            dG[c] = 0.0
    return dlam


@njit(cache=True, nogil=True, fastmath=_FM, inline="always")
def _readout(Vt, ids, mask, b, e, lab, acc):  # pragma: no cover - jit
    """Unnormalised cluster read-outs ``acc[g] = sum_{j in g} e_j v_j`` in ``acc``'s dtype; False
    when a sum is not finite (the caller then redoes it in float64 or reports the row)."""
    n = ids.shape[1]
    dv = Vt.shape[1]
    ct = acc.dtype.type
    acc[:, :] = 0.0
    for j in range(n):
        if mask[b, j]:
            w = ct(e[j])
            vr = Vt[ids[b, j]]
            ag = acc[lab[j]]
            for k in range(dv):
                ag[k] += w * ct(vr[k])
    for g in range(acc.shape[0]):
        for k in range(dv):
            if not np.isfinite(acc[g, k]):
                return False
    return True


@njit(cache=True, nogil=True, fastmath=_FM)
def ot_forward(Q, T, Vt, ids, mask, LT, lids, C, Kc, scale, cscale, lam, iters, readout):  # pragma: no cover
    """Centroid-OT attention of the rows of ``Q``.

    Returns ``R (B, dv)``, ``W (B, n)`` (final item weights), ``Win (B, n)`` (within-cluster
    softmax weights), ``Z (B, M)`` (demand logits), ``cnt (B, M)`` (attended items per cluster),
    ``beta (B, M)`` (delivered cluster masses), ``Ob (B, M, dv)`` (within-cluster read-outs) and
    ``ok``.
    """
    B = Q.shape[0]
    n = ids.shape[1]
    M = C.shape[0]
    dv = Vt.shape[1] if readout else 0
    ct = Q.dtype.type
    dt = Q.dtype.type
    R = np.zeros((B, dv), dtype=Q.dtype)
    W = np.zeros((B, n), dtype=Q.dtype)
    Win = np.zeros((B, n), dtype=Q.dtype)
    Z = np.zeros((B, M), dtype=np.float64)
    cnt = np.zeros((B, M), dtype=np.int64)
    beta_out = np.zeros((B, M), dtype=np.float64)
    Ob = np.zeros((B, M, dv), dtype=Q.dtype)
    s = np.empty(n, dtype=np.float64)
    lab = np.empty(n, dtype=np.int64)
    mx = np.empty(M, dtype=np.float64)
    tot = np.empty(M, dtype=np.float64)
    acc = np.empty((M, dv), dtype=np.float64)
    accf = np.empty((M, dv), dtype=Q.dtype)
    racc = np.empty(dv, dtype=np.float64)
    a = np.empty(M, dtype=np.float64)
    bl = np.empty(M, dtype=np.float64)
    pres = np.empty(M, dtype=np.int64)
    Fh = np.empty((iters + 2, M), dtype=np.float64)
    Gh = np.empty((iters + 1, M), dtype=np.float64)
    beta = np.empty(M, dtype=np.float64)
    ok = True
    for b in range(B):
        q = Q[b]
        total = 0
        bad = False
        for g in range(M):
            mx[g] = -np.inf
            tot[g] = 0.0
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
                g = LT[lids[b, j]]
                lab[j] = g
                s[j] = v
                if v > mx[g]:
                    mx[g] = v
                cnt[b, g] += 1
                total += 1
        if bad:
            ok = False
            continue
        if total == 0:
            continue
        for j in range(n):
            if mask[b, j]:
                g = lab[j]
                e = np.exp(s[j] - mx[g])
                s[j] = e
                tot[g] += e
        if readout and not _readout(Vt, ids, mask, b, s, lab, accf):
            if not _readout(Vt, ids, mask, b, s, lab, acc):
                ok = False
                continue
            for g in range(M):
                for k in range(dv):
                    accf[g, k] = acc[g, k]
        p = 0
        for g in range(M):
            if cnt[b, g] > 0:
                pres[p] = g
                bl[p] = np.log(cnt[b, g] / total)
                p += 1
        # demand over all centroids: a = log softmax(cscale * C q)
        zmax = -np.inf
        for g in range(M):
            z = cscale * _dot64(C[g], q)
            Z[b, g] = z
            if z > zmax:
                zmax = z
        zs = 0.0
        for g in range(M):
            zs += np.exp(Z[b, g] - zmax)
        lz = zmax + np.log(zs)
        for g in range(M):
            a[g] = Z[b, g] - lz
        Kl, Ke, KlT, KeT = compact_kernels(Kc, pres, p)
        sinkhorn(a, bl, p, Kl, Ke, KlT, KeT, lam, iters, Fh, Gh, beta)
        for c in range(p):
            beta_out[b, pres[c]] = beta[c]
        for j in range(n):
            if mask[b, j]:
                g = lab[j]
                w = s[j] / tot[g]
                Win[b, j] = dt(w)
                W[b, j] = dt(w * beta_out[b, g])
        if readout:
            for k in range(dv):
                racc[k] = 0.0
            for c in range(p):
                g = pres[c]
                inv = 1.0 / tot[g]
                for k in range(dv):
                    o = np.float64(accf[g, k]) * inv
                    Ob[b, g, k] = dt(o)
                    racc[k] += beta[c] * o
            for k in range(dv):
                if not np.isfinite(racc[k]):
                    bad = True
                R[b, k] = dt(racc[k])
            if bad:
                ok = False
    return R, W, Win, Z, cnt, beta_out, Ob, ok


@njit(cache=True, nogil=True, fastmath=_FM)
def ot_backward(Q, T, Vt, ids, mask, LT, lids, C, Kc, scale, cscale, lam, iters, W, Win, Z, cnt, beta_in, Ob,
                G, need, n_rows):  # pragma: no cover
    """Gradients of :func:`ot_forward` given ``G (B, dv)``.

    Returns ``dQ (B, d)``, ``dz (B,)`` (gradient of the log demand scale), ``dlam (B,)`` (of
    ``lam``) per row, and ``dT``/``dV`` table gradients (zero-size unless ``need``).
    """
    B, d = Q.shape
    n = ids.shape[1]
    M = C.shape[0]
    dv = Vt.shape[1]
    rows = n_rows if need else 0
    dQ = np.zeros((B, d), dtype=Q.dtype)
    dzeta = np.zeros(B, dtype=np.float64)
    dlam = np.zeros(B, dtype=np.float64)
    dT = np.zeros((rows, d), dtype=Q.dtype)
    dV = np.zeros((rows, dv), dtype=Q.dtype)
    a = np.empty(M, dtype=np.float64)
    nu = np.empty(M, dtype=np.float64)
    bl = np.empty(M, dtype=np.float64)
    pres = np.empty(M, dtype=np.int64)
    Fh = np.empty((iters + 2, M), dtype=np.float64)
    Gh = np.empty((iters + 1, M), dtype=np.float64)
    beta = np.empty(M, dtype=np.float64)
    dbeta = np.empty(M, dtype=np.float64)
    gO = np.empty(M, dtype=np.float64)
    da = np.empty(M, dtype=np.float64)
    accq = np.empty(d, dtype=np.float64)
    for b in range(B):
        total = 0
        p = 0
        for g in range(M):
            if cnt[b, g] > 0:
                total += cnt[b, g]
        if total == 0:
            continue
        for g in range(M):
            if cnt[b, g] > 0:
                pres[p] = g
                bl[p] = np.log(cnt[b, g] / total)
                gO[g] = _dot64(G[b], Ob[b, g])
                dbeta[p] = gO[g]
                p += 1
        zmax = -np.inf
        for g in range(M):
            if Z[b, g] > zmax:
                zmax = Z[b, g]
        zs = 0.0
        for g in range(M):
            zs += np.exp(Z[b, g] - zmax)
        lz = zmax + np.log(zs)
        for g in range(M):
            a[g] = Z[b, g] - lz
            nu[g] = np.exp(a[g])
        Kl, Ke, KlT, KeT = compact_kernels(Kc, pres, p)
        sinkhorn(a, bl, p, Kl, Ke, KlT, KeT, lam, iters, Fh, Gh, beta)
        dlam[b] = sinkhorn_backward(a, bl, p, Kl, Ke, KlT, KeT, lam, iters, Fh, Gh, beta, dbeta, da)
        sda = 0.0
        for g in range(M):
            sda += da[g]
        q = Q[b]
        for k in range(d):
            accq[k] = 0.0
        dzb = 0.0
        for g in range(M):
            dz = da[g] - nu[g] * sda
            dzb += dz * Z[b, g]
            f = dz * cscale
            cg = C[g]
            for k in range(d):
                accq[k] += f * cg[k]
        dzeta[b] = dzb
        # within-cluster softmax
        for j in range(n):
            if mask[b, j]:
                g = LT[lids[b, j]]
                w = np.float64(W[b, j])
                r = ids[b, j]
                vr = Vt[r]
                gv = _dot64(G[b], vr)
                ds = w * (gv - gO[g]) * scale
                kr = T[r]
                for k in range(d):
                    accq[k] += ds * kr[k]
                if need:
                    for k in range(d):
                        dT[r, k] += ds * q[k]
                    for k in range(dv):
                        dV[r, k] += w * G[b, k]
        for k in range(d):
            dQ[b, k] = accq[k]
    return dQ, dzeta, dlam, dT, dV
