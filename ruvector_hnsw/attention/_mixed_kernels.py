"""numba kernels of the ``mixed_curvature`` mechanism (plain functions, no state).

Every item's key row is split into a Euclidean block ``[0, e)``, a hyperbolic block
``[e, e + h)`` and a spherical block ``[e + h, d)``. The query and key blocks are tangent
vectors at the origin of each factor, mapped there by the exponential map (scaled by ``sigma``),
so each factor's geodesic distance follows from the law of cosines in three scalars per block -
the two norms and the dot product - that one pass over the coordinates accumulates::

    y = sinh^2(a - b) + sinh(2a) sinh(2b) (1 - cos phi) / 2      (hyperbolic, curvature -kh)
    u = sin^2(A - B)  + sin(2A)  sin(2B)  (1 - cos psi) / 2      (spherical, curvature ks)

with ``a = min(sqrt(kh) sigma |q_H|, A_MAX)``, ``b`` likewise for the key, ``A = sqrt(ks)
sigma |q_S|``, ``phi``/``psi`` the angles between the blocks. Then ``cosh(sqrt(kh) d_H) = 1 + 2y``
and ``cos(sqrt(ks) d_S) = 1 - 2u``, i.e. ``d_H = (2/sqrt(kh)) asinh(sqrt(y))`` and ``d_S =
(2/sqrt(ks)) atan(sqrt(u / (1 - u)))``. The kernels use the smoothed forms
``g(y) = asinh(sqrt(y + EPS)) - asinh(sqrt(EPS))`` and ``f(u) = atan(sqrt((u + EPS) / (1 - u +
EPS))) - f0`` (``EPS = 1e-12``): within ``1e-6`` of the exact distances, with bounded derivatives
at coinciding and antipodal points.

Head ``eta``'s score is ``s = C[eta, 0] * (q_E . k_E) + C[eta, 1] * g(y) + C[eta, 2] * f(u)``
(the caller folds mixing weights, temperature and units into ``C``). The Euclidean dot product
accumulates in the storage dtype (float64 when it overflows), the hyperbolic/spherical sums and
all scalar geometry in float64. Softmax per head; the read-out uses the head-averaged weights.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from ruvector_hnsw.attention._kernels import _dot64, _dot_as
from ruvector_hnsw.attention._prefetch import prefetch_table_row

_FM = {"reassoc", "contract", "nsz"}

#: smoothing of the distance functions at coinciding / antipodal points
EPS = 1e-12
_G0 = math.asinh(math.sqrt(EPS))
#: items ahead whose key row the coordinate pass prefetches
PREFETCH_AHEAD = 4
#: the clamp of the hyperbolic tangent arguments ``a = sqrt(kh) sigma |v|`` (ball radius 1 - 2e-13)
A_MAX = 15.0


@njit(cache=True, nogil=True, fastmath=_FM, inline="always")
def _dot_sq(q, k):  # pragma: no cover - jit
    """``(q . k, |k|^2)`` in float64."""
    dot = 0.0
    k2 = 0.0
    for t in range(q.shape[0]):
        kv = np.float64(k[t])
        dot += np.float64(q[t]) * kv
        k2 += kv * kv
    return dot, k2


@njit(cache=True, nogil=True, fastmath=_FM, inline="always")
def _sq(q):  # pragma: no cover - jit
    s = 0.0
    for t in range(q.shape[0]):
        v = np.float64(q[t])
        s += v * v
    return s


@njit(cache=True, nogil=True, inline="always")
def _g(y):  # pragma: no cover - jit
    # asinh(x) = log(x + sqrt(1 + x^2)) with x^2 = y + EPS (cheaper than the library asinh)
    return math.log(math.sqrt(y + EPS) + math.sqrt(1.0 + y + EPS)) - _G0


@njit(cache=True, nogil=True, inline="always")
def _g_prime(y):  # pragma: no cover - jit
    return 0.5 / (math.sqrt(y + EPS) * math.sqrt(1.0 + y + EPS))


@njit(cache=True, nogil=True, inline="always")
def _f(u):  # pragma: no cover - jit
    return math.atan(math.sqrt((u + EPS) / (1.0 - u + EPS))) - math.atan(math.sqrt(EPS / (1.0 + EPS)))


@njit(cache=True, nogil=True, inline="always")
def _f_prime(u):  # pragma: no cover - jit
    return 0.5 / (math.sqrt(u + EPS) * math.sqrt(1.0 - u + EPS))


@njit(cache=True, nogil=True, inline="always")
def _cos_angle(dot, nq, nk):  # pragma: no cover - jit
    if nq <= 0.0 or nk <= 0.0:
        return 0.0
    c = dot / (nq * nk)
    return min(1.0, max(-1.0, c))


@njit(cache=True, nogil=True, inline="always")
def _clamp_arg(x):  # pragma: no cover - jit
    return x if x < A_MAX else A_MAX


@njit(cache=True, nogil=True, inline="always")
def _row_geometry(q, e, h, d, geo, rq):  # pragma: no cover - jit
    """Query-side scalars of a row into ``rq``: |q_H|, a, sinh 2a, cosh 2a, |q_S|, A, sin 2A, cos 2A,
    and whether a was clamped (1.0) - returns False when a norm overflows."""
    sk_h, sk_s, sigma = geo[0], geo[1], geo[2]
    nqh = math.sqrt(_sq(q[e:e + h])) if h > 0 else 0.0
    nqs = math.sqrt(_sq(q[e + h:])) if e + h < d else 0.0
    if not (np.isfinite(nqh) and np.isfinite(nqs)):
        return False
    a_raw = sk_h * sigma * nqh
    a = _clamp_arg(a_raw)
    A = sk_s * sigma * nqs
    rq[0] = nqh
    rq[1] = a
    rq[2] = math.sinh(2.0 * a)
    rq[3] = math.cosh(2.0 * a)
    rq[4] = nqs
    rq[5] = A
    rq[6] = math.sin(2.0 * A)
    rq[7] = math.cos(2.0 * A)
    rq[8] = 1.0 if a_raw >= A_MAX else 0.0
    ea = math.exp(a)
    rq[9] = ea
    rq[10] = 1.0 / ea
    rq[11] = math.sin(A)
    rq[12] = math.cos(A)
    return True


@njit(cache=True, nogil=True, fastmath=_FM, inline="always")
def _item_sums(q, kr, e, h, ct, P, j):  # pragma: no cover - jit
    """The coordinate pass of one item: ``P[:, j] = (q_E.k_E, q_H.k_H, |k_H|^2, q_S.k_S, |k_S|^2)``.

    Returns False when a sum is not finite (a NaN/inf key row or a float64 overflow)."""
    de = np.float64(_dot_as(q[:e], kr[:e], ct)) if e > 0 else 0.0
    if not np.isfinite(de):
        de = _dot64(q[:e], kr[:e])
    dh, kh2 = _dot_sq(q[e:e + h], kr[e:e + h])
    ds, ks2 = _dot_sq(q[e + h:], kr[e + h:])
    P[0, j] = de
    P[1, j] = dh
    P[2, j] = kh2
    P[3, j] = ds
    P[4, j] = ks2
    return np.isfinite(de) and np.isfinite(dh) and np.isfinite(kh2) and np.isfinite(ds) and np.isfinite(ks2)


@njit(cache=True, nogil=True)
def _hyp_item(dot, k2, nqh, sh2a, ea, iea, skh_sigma):  # pragma: no cover - jit
    """Hyperbolic item scalars: ``(y, |k_H|, cos phi, e^b, b clamped)`` (scalars only)."""
    nk = math.sqrt(k2)
    b_raw = skh_sigma * nk
    b = _clamp_arg(b_raw)
    cphi = _cos_angle(dot, nqh, nk)
    eb = math.exp(b)
    ieb = 1.0 / eb
    sab = 0.5 * (ea * ieb - eb * iea)  # sinh(a - b)
    sh2b = 0.5 * (eb * eb - ieb * ieb)
    y = sab * sab + 0.5 * sh2a * sh2b * (1.0 - cphi)
    return max(y, 0.0), nk, cphi, eb, b_raw >= A_MAX


@njit(cache=True, nogil=True)
def _sph_item(dot, k2, nqs, s2A, sA, cA, sks_sigma):  # pragma: no cover - jit
    """Spherical item scalars: ``(u, |k_S|, cos psi, sin B, cos B)`` (scalars only)."""
    nk = math.sqrt(k2)
    B = sks_sigma * nk
    cpsi = _cos_angle(dot, nqs, nk)
    sB = math.sin(B)
    cB = math.cos(B)
    sAB = sA * cB - cA * sB  # sin(A - B)
    u = sAB * sAB + 0.5 * s2A * (2.0 * sB * cB) * (1.0 - cpsi)
    return min(1.0, max(0.0, u)), nk, cpsi, sB, cB


@njit(cache=True, nogil=True, fastmath=_FM, inline="always")
def _row_weights(q, T, ids, mask, b, e, h, C, geo, rq, P, s, mx, ct):  # pragma: no cover - jit
    """Per-head softmax weights of row ``b`` into ``s (H, n)``; returns -1 on a bad value, 0 for
    an empty row, 1 otherwise.

    First the coordinate pass over the attended items' key rows (sums into ``P``; the row
    ``PREFETCH_AHEAD`` items ahead is prefetched), then each block's geometry from ``P`` alone in
    short loops whose iterations are independent (``g(y)`` into ``P[1]``, ``f(u)`` into ``P[3]``),
    then the scores and the softmax."""
    H = C.shape[0]
    n = ids.shape[1]
    d = q.shape[0]
    cnt = 0
    for j in range(min(PREFETCH_AHEAD, n)):
        if mask[b, j]:
            prefetch_table_row(T, ids[b, j])
    for j in range(n):
        jj = j + PREFETCH_AHEAD
        if jj < n and mask[b, jj]:
            prefetch_table_row(T, ids[b, jj])
        if mask[b, j]:
            cnt += 1
            if not _item_sums(q, T[ids[b, j]], e, h, ct, P, j):
                return -1
    # the block geometry in short loops of independent iterations (pipelined by the CPU):
    # y into P[2], g(y) into P[1]; u into P[4], f(u) into P[3]
    if h > 0:
        skh_sigma = geo[0] * geo[2]
        nqh, sh2a, ea, iea = rq[0], rq[2], rq[9], rq[10]
        for j in range(n):
            if mask[b, j]:
                P[2, j] = _hyp_item(P[1, j], P[2, j], nqh, sh2a, ea, iea, skh_sigma)[0]
        for j in range(n):
            if mask[b, j]:
                P[1, j] = _g(P[2, j])
    else:
        P[1, :] = 0.0
    if e + h < d:
        sks_sigma = geo[1] * geo[2]
        nqs, s2A, sA, cA = rq[4], rq[6], rq[11], rq[12]
        for j in range(n):
            if mask[b, j]:
                P[4, j] = _sph_item(P[3, j], P[4, j], nqs, s2A, sA, cA, sks_sigma)[0]
        for j in range(n):
            if mask[b, j]:
                P[3, j] = _f(P[4, j])
    else:
        P[3, :] = 0.0
    if cnt == 0:
        return 0
    for hh in range(H):
        mx[hh] = -np.inf
    for j in range(n):
        if mask[b, j]:
            for hh in range(H):
                v = C[hh, 0] * P[0, j] + C[hh, 1] * P[1, j] + C[hh, 2] * P[3, j]
                if not np.isfinite(v):
                    return -1
                s[hh, j] = v
                if v > mx[hh]:
                    mx[hh] = v
    for hh in range(H):
        tot = 0.0
        for j in range(n):
            if mask[b, j]:
                p = np.exp(s[hh, j] - mx[hh])
                s[hh, j] = p
                tot += p
        inv = 1.0 / tot
        for j in range(n):
            if mask[b, j]:
                s[hh, j] *= inv
    return 1


@njit(cache=True, nogil=True, fastmath=_FM)
def mc_forward(Q, T, Vt, ids, mask, e, h, C, geo, need_readout):  # pragma: no cover - jit
    """Mixed-curvature attention of ``Q (B, d)`` over ``T[ids]`` with values ``Vt[ids]``.

    Returns ``R (B, dv)`` (the read-out with the head-averaged weights; zero-size unless
    ``need_readout``), ``Wm (B, n)`` (head-averaged weights), ``Wh (B, H, n)`` (per-head
    weights) and ``ok`` (False on NaN/inf in a referenced row or an overflow).
    """
    B, d = Q.shape
    n = ids.shape[1]
    H = C.shape[0]
    dv = Vt.shape[1]
    dt = Q.dtype.type
    ct = Q.dtype.type
    R = np.zeros((B if need_readout else 0, dv), dtype=Q.dtype)
    Wm = np.zeros((B, n), dtype=Q.dtype)
    Wh = np.zeros((B, H, n), dtype=Q.dtype)
    s = np.empty((H, n), dtype=np.float64)
    P = np.empty((5, n), dtype=np.float64)
    mx = np.empty(H, dtype=np.float64)
    rq = np.zeros(13, dtype=np.float64)
    acc = np.empty(dv, dtype=Q.dtype)
    acc64 = np.empty(dv, dtype=np.float64)
    invH = 1.0 / H
    ok = True
    for b in range(B):
        q = Q[b]
        if not _row_geometry(q, e, h, d, geo, rq):
            ok = False
            continue
        st = _row_weights(q, T, ids, mask, b, e, h, C, geo, rq, P, s, mx, ct)
        if st < 0:
            ok = False
            continue
        if st == 0:
            continue
        for j in range(n):
            if mask[b, j]:
                m = 0.0
                for hh in range(H):
                    w = s[hh, j]
                    Wh[b, hh, j] = dt(w)
                    m += w
                s[0, j] = m * invH  # the head-averaged weight (head 0's row is no longer needed)
                Wm[b, j] = dt(s[0, j])
        if not need_readout:
            continue
        acc[:] = 0.0
        for j in range(n):
            if mask[b, j]:
                wc = ct(s[0, j])
                vr = Vt[ids[b, j]]
                for k in range(dv):
                    acc[k] += wc * ct(vr[k])
        good = True
        for k in range(dv):
            if not np.isfinite(acc[k]):
                good = False
        if good:
            for k in range(dv):
                R[b, k] = acc[k]
            continue
        acc64[:] = 0.0
        for j in range(n):
            if mask[b, j]:
                w = s[0, j]
                vr = Vt[ids[b, j]]
                for k in range(dv):
                    acc64[k] += w * np.float64(vr[k])
        for k in range(dv):
            if not np.isfinite(acc64[k]):
                ok = False
            R[b, k] = dt(acc64[k])
    return R, Wm, Wh, ok


@njit(cache=True, nogil=True, fastmath=_FM, inline="always")
def _axpy(acc, c, x):  # pragma: no cover - jit
    for t in range(acc.shape[0]):
        acc[t] += c * x[t]


@njit(cache=True, nogil=True, fastmath=_FM)
def mc_backward(Q, T, Vt, ids, mask, e, h, C, geo, Wh, G, comp_w, inv_tau, n_rows,
                need_table_grads):  # pragma: no cover - jit
    """Gradients of :func:`mc_forward` given ``G (B, dv)``.

    ``comp_w (H, 3)`` are the per-head mixing weights (softmax of the mixing logits over the
    present components) and ``inv_tau = 1 / temperature``. Returns ``dQ (B, d)``, ``dT (n_rows, d)``
    and ``dV (n_rows, dv)`` (zero-size unless ``need_table_grads``) and ``dmix (B, H, 3)`` (per
    row; the logit gradient is their sum over rows). Per row: a pass over the value rows, the
    coordinate pass over the key rows, the block geometry and the per-item coefficients in short
    loops, then one more pass over the key rows accumulating the query gradient (and the table
    gradients).
    """
    B, d = Q.shape
    n = ids.shape[1]
    H = C.shape[0]
    dv = Vt.shape[1]
    sk_h, sk_s, sigma = geo[0], geo[1], geo[2]
    inv_sqrt_d = geo[3]
    unit_h = geo[4]  # S_H = unit_h * g(y): -2 / (sqrt(kh) sigma)
    unit_s = geo[5]  # S_S = unit_s * f(u)
    skh_sigma = sk_h * sigma
    sks_sigma = sk_s * sigma
    sdim = d - e - h
    rows = n_rows if need_table_grads else 0
    dQ = np.zeros((B, d), dtype=Q.dtype)
    dT = np.zeros((rows, d), dtype=Q.dtype)
    dV = np.zeros((rows, dv), dtype=Q.dtype)
    dmix = np.zeros((B, H, 3), dtype=np.float64)
    tj = np.empty(n, dtype=np.float64)
    cbar = np.empty(H, dtype=np.float64)
    P = np.empty((5, n), dtype=np.float64)
    HA = np.zeros((7, n), dtype=np.float64)  # y, |k_H|, cos phi, e^b, clamped, g(y), g'(y)
    SA = np.zeros((7, n), dtype=np.float64)  # u, |k_S|, cos psi, sin B, cos B, f(u), f'(u)
    CO = np.zeros((5, n), dtype=np.float64)  # coefficients: k_E, k_H, k_H (dk), k_S, k_S (dk)
    acc = np.empty(d, dtype=np.float64)
    rq = np.zeros(13, dtype=np.float64)
    ct = np.float64
    invH = 1.0 / H
    for b in range(B):
        q = Q[b]
        if not _row_geometry(q, e, h, d, geo, rq):
            continue
        nqh, sh2a, ch2a, ea, iea = rq[0], rq[2], rq[3], rq[9], rq[10]
        nqs, s2A, c2A, sA, cA = rq[4], rq[6], rq[7], rq[11], rq[12]
        a_clamped = rq[8] > 0.0
        cnt = 0
        for hh in range(H):
            cbar[hh] = 0.0
        # values: t_j = G . v_j, the value gradients
        for j in range(n):
            jj = j + PREFETCH_AHEAD
            if jj < n and mask[b, jj]:
                prefetch_table_row(Vt, ids[b, jj])
            if mask[b, j]:
                cnt += 1
                rv = ids[b, j]
                t = _dot64(G[b], Vt[rv])
                tj[j] = t
                wbar = 0.0
                for hh in range(H):
                    w = np.float64(Wh[b, hh, j])
                    cbar[hh] += w * t
                    wbar += w
                if need_table_grads:
                    wbar *= invH
                    for k in range(dv):
                        dV[rv, k] += wbar * G[b, k]
        if cnt == 0:
            continue
        # keys: coordinate sums
        for j in range(n):
            jj = j + PREFETCH_AHEAD
            if jj < n and mask[b, jj]:
                prefetch_table_row(T, ids[b, jj])
            if mask[b, j]:
                _item_sums(q, T[ids[b, j]], e, h, ct, P, j)
        # block geometry
        if h > 0:
            for j in range(n):
                if mask[b, j]:
                    y, nk, cphi, eb, clamped = _hyp_item(P[1, j], P[2, j], nqh, sh2a, ea, iea, skh_sigma)
                    HA[0, j] = y
                    HA[1, j] = nk
                    HA[2, j] = cphi
                    HA[3, j] = eb
                    HA[4, j] = 1.0 if clamped else 0.0
            for j in range(n):
                if mask[b, j]:
                    HA[5, j] = _g(HA[0, j])
                    HA[6, j] = _g_prime(HA[0, j])
        if sdim > 0:
            for j in range(n):
                if mask[b, j]:
                    u, nk, cpsi, sB, cB = _sph_item(P[3, j], P[4, j], nqs, s2A, sA, cA, sks_sigma)
                    SA[0, j] = u
                    SA[1, j] = nk
                    SA[2, j] = cpsi
                    SA[3, j] = sB
                    SA[4, j] = cB
            for j in range(n):
                if mask[b, j]:
                    SA[5, j] = _f(SA[0, j])
                    SA[6, j] = _f_prime(SA[0, j])
        # per-item coefficients
        coef_qh = 0.0
        coef_qs = 0.0
        for j in range(n):
            if not mask[b, j]:
                continue
            SE = P[0, j] * inv_sqrt_d
            SH = unit_h * HA[5, j]
            SS = unit_s * SA[5, j]
            dE = 0.0
            dG = 0.0
            dF = 0.0
            for hh in range(H):
                ds = invH * np.float64(Wh[b, hh, j]) * (tj[j] - cbar[hh])
                dE += ds * C[hh, 0]
                dG += ds * C[hh, 1]
                dF += ds * C[hh, 2]
                wE, wH, wS = comp_w[hh, 0], comp_w[hh, 1], comp_w[hh, 2]
                sbar = wE * SE + wH * SH + wS * SS
                f = ds * inv_tau
                dmix[b, hh, 0] += f * wE * (SE - sbar)
                dmix[b, hh, 1] += f * wH * (SH - sbar)
                dmix[b, hh, 2] += f * wS * (SS - sbar)
            CO[0, j] = dE
            ck = 0.0
            ckk = 0.0
            if h > 0:
                nk, cphi, eb = HA[1, j], HA[2, j], HA[3, j]
                dy = dG * HA[6, j]
                ieb = 1.0 / eb
                e2 = (ea * ieb) ** 2  # e^{2(a - b)}
                s2ab = 0.5 * (e2 - 1.0 / e2)
                sh2b = 0.5 * (eb * eb - ieb * ieb)
                ch2b = 0.5 * (eb * eb + ieb * ieb)
                one_c = 1.0 - cphi
                da = dy * (s2ab + ch2a * sh2b * one_c)
                db = dy * (-s2ab + sh2a * ch2b * one_c)
                dc = dy * (-0.5 * sh2a * sh2b)
                if nk > 0.0:
                    if nqh > 0.0:
                        coef_qh += -dc * cphi / (nqh * nqh)
                        ck = dc / (nqh * nk)
                        ckk = -dc * cphi / (nk * nk)
                    if HA[4, j] == 0.0:
                        ckk += db * skh_sigma / nk
                if nqh > 0.0 and not a_clamped:
                    coef_qh += da * skh_sigma / nqh
            CO[1, j] = ck
            CO[2, j] = ckk
            ck = 0.0
            ckk = 0.0
            if sdim > 0:
                nk, cpsi, sB, cB = SA[1, j], SA[2, j], SA[3, j], SA[4, j]
                du = dF * SA[6, j]
                s2AB = 2.0 * (sA * cB - cA * sB) * (cA * cB + sA * sB)
                s2B = 2.0 * sB * cB
                c2B = cB * cB - sB * sB
                one_c = 1.0 - cpsi
                dA = du * (s2AB + c2A * s2B * one_c)
                dB = du * (-s2AB + s2A * c2B * one_c)
                dc = du * (-0.5 * s2A * s2B)
                if nk > 0.0:
                    if nqs > 0.0:
                        coef_qs += -dc * cpsi / (nqs * nqs)
                        ck = dc / (nqs * nk)
                        ckk = -dc * cpsi / (nk * nk)
                    ckk += dB * sks_sigma / nk
                if nqs > 0.0:
                    coef_qs += dA * sks_sigma / nqs
            CO[3, j] = ck
            CO[4, j] = ckk
        # the query gradient (and the key-table gradient) from the key rows
        acc[:] = 0.0
        accE = acc[:e]
        accH = acc[e:e + h]
        accS = acc[e + h:]
        qE = q[:e]
        qH = q[e:e + h]
        qS = q[e + h:]
        for j in range(n):
            if not mask[b, j]:
                continue
            r = ids[b, j]
            kr = T[r]
            kE = kr[:e]
            kH = kr[e:e + h]
            kS = kr[e + h:]
            _axpy(accE, CO[0, j], kE)
            _axpy(accH, CO[1, j], kH)
            _axpy(accS, CO[3, j], kS)
            if need_table_grads:
                tr = dT[r]
                tE = tr[:e]
                tH = tr[e:e + h]
                tS = tr[e + h:]
                _axpy(tE, CO[0, j], qE)
                _axpy(tH, CO[1, j], qH)
                _axpy(tH, CO[2, j], kH)
                _axpy(tS, CO[3, j], qS)
                _axpy(tS, CO[4, j], kS)
        _axpy(accH, coef_qh, qH)
        _axpy(accS, coef_qs, qS)
        for k in range(d):
            dQ[b, k] = acc[k]
    return dQ, dT, dV, dmix
