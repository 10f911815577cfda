"""numba kernels of the ``mixed_curvature`` mechanism (plain functions, no state).

Every item's key row is split into a Euclidean block ``[0, e)``, a hyperbolic block
``[e, e + h)`` and a spherical block ``[e + h, d)``. Scaled by ``sigma``, the hyperbolic block is
a point ``x`` of the Poincare ball of curvature ``-kh`` (radially pulled inside the radius
``R / sqrt(kh)``, ``R = 1 - 1e-5``, when it lies beyond) and the spherical block a point of the
stereographic model of the sphere of curvature ``ks``. Each factor's geodesic distance is a
function of three scalars per block - the two squared norms and the dot product, which one pass
over the coordinates accumulates - through::

    t_H = kh |x - y|^2 / ((1 - kh |x|^2)(1 - kh |y|^2)),   d_H = (2/sqrt(kh)) asinh(sqrt(t_H))
    t_S = ks |x - y|^2 / ((1 + ks |x|^2)(1 + ks |y|^2)),   d_S = (2/sqrt(ks)) asin(sqrt(t_S))

(``cosh(sqrt(kh) d_H) = 1 + 2 t_H``; ``t_S = sin^2`` of half the spherical angle). The kernels use
the smoothed forms ``g(t) = asinh(sqrt(t + EPS)) - asinh(sqrt(EPS))`` and ``f(t) = atan(sqrt((t +
EPS) / (1 - t + EPS))) - f0`` (``EPS = 1e-12``): within ``1e-6`` of the exact distances, with
bounded derivatives at coinciding and antipodal points. No transcendental function of a single
item's norm is needed, only ``g`` and ``f`` per item.

Head ``eta``'s score is ``s = C[eta, 0] * (q_E . k_E) + C[eta, 1] * g(t_H) + C[eta, 2] * f(t_S)``
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
#: items ahead whose key (value) row the coordinate (read-out) pass prefetches
PREFETCH_AHEAD = 8
#: hyperbolic points are kept within ``BALL_R / sqrt(kh)`` of the origin
BALL_R = 1.0 - 1e-5


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


@njit(cache=True, nogil=True, fastmath=_FM, inline="always")
def _g(y):  # pragma: no cover - jit
    # asinh(x) = log(x + sqrt(1 + x^2)) with x^2 = y + EPS (cheaper than the library asinh)
    return math.log(math.sqrt(y + EPS) + math.sqrt(1.0 + y + EPS)) - _G0


@njit(cache=True, nogil=True, inline="always")
def _g_prime(y):  # pragma: no cover - jit
    return 0.5 / (math.sqrt(y + EPS) * math.sqrt(1.0 + y + EPS))


@njit(cache=True, nogil=True, fastmath=_FM, inline="always")
def _f(u):  # pragma: no cover - jit
    return math.atan(math.sqrt((u + EPS) / (1.0 - u + EPS))) - math.atan(math.sqrt(EPS / (1.0 + EPS)))


@njit(cache=True, nogil=True, inline="always")
def _f_prime(u):  # pragma: no cover - jit
    return 0.5 / (math.sqrt(u + EPS) * math.sqrt(1.0 - u + EPS))


@njit(cache=True, nogil=True, inline="always")
def _ball_factor(r2):  # pragma: no cover - jit
    """Scale that pulls a point with ``kh |x|^2 = r2`` inside the ball radius (1 when inside)."""
    return BALL_R / math.sqrt(r2) if r2 > BALL_R * BALL_R else 1.0


@njit(cache=True, nogil=True, inline="always")
def _row_geometry(q, e, h, d, geo, rq):  # pragma: no cover - jit
    """Query-side scalars of a row into ``rq``: |q_H|, ball factor p_q, |x_q|^2 (hyperbolic),
    projected (1.0), |q_S|, |x_q|^2 (spherical). Returns False when a norm overflows."""
    kh, sigma = geo[0] * geo[0], geo[2]
    q2h = _sq(q[e:e + h]) if h > 0 else 0.0
    q2s = _sq(q[e + h:]) if e + h < d else 0.0
    if not (np.isfinite(q2h) and np.isfinite(q2s)):
        return False
    r2 = kh * sigma * sigma * q2h
    p = _ball_factor(r2)
    rq[0] = math.sqrt(q2h)
    rq[1] = p
    rq[2] = sigma * sigma * p * p * q2h
    rq[3] = 1.0 if p < 1.0 else 0.0
    rq[4] = math.sqrt(q2s)
    rq[5] = sigma * sigma * q2s
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


@njit(cache=True, nogil=True, fastmath=_FM, inline="always")
def _hyp_item(dot, k2, X2, pq, kh, s2):  # pragma: no cover - jit
    """Hyperbolic item scalars ``(t_H, |y|^2, x.y, p_k)`` from the key's sums (scalars only).

    ``X2`` = |x_q|^2, ``pq`` the query's ball factor, ``s2 = sigma^2``."""
    pk = _ball_factor(kh * s2 * k2)
    Y2 = s2 * pk * pk * k2
    XY = s2 * pq * pk * dot
    D2 = max(X2 + Y2 - 2.0 * XY, 0.0)
    t = kh * D2 / ((1.0 - kh * X2) * (1.0 - kh * Y2))
    return t, Y2, XY, pk


@njit(cache=True, nogil=True, fastmath=_FM, inline="always")
def _sph_item(dot, k2, X2, ks, s2):  # pragma: no cover - jit
    """Spherical item scalars ``(t_S, |y|^2, x.y)`` from the key's sums (scalars only)."""
    Y2 = s2 * k2
    XY = s2 * dot
    D2 = max(X2 + Y2 - 2.0 * XY, 0.0)
    t = ks * D2 / ((1.0 + ks * X2) * (1.0 + ks * Y2))
    return min(t, 1.0), Y2, XY


@njit(cache=True, nogil=True, fastmath=_FM, inline="always")
def _row_weights(q, T, ids, mask, b, e, h, C, geo, rq, P, s, mx, ct):  # pragma: no cover - jit
    """Per-head softmax weights of row ``b`` into ``s (H, n)``; returns -1 on a bad value, 0 for
    an empty row, 1 otherwise.

    First the coordinate pass over the attended items' key rows (sums into ``P``; the row
    ``PREFETCH_AHEAD`` items ahead is prefetched), then one loop over the items computing each
    block's geometry from ``P`` alone and the head scores, then the softmax."""
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
    if cnt == 0:
        return 0
    # per item, from P alone: each block's geometry, the head scores and their maxima (one loop;
    # its iterations are independent, so the CPU overlaps the items' scalar functions)
    s2 = geo[2] * geo[2]
    has_h = h > 0
    has_s = e + h < d
    kh, X2, pq = geo[0] * geo[0], rq[2], rq[1]
    ks, X2s = geo[1] * geo[1], rq[5]
    for hh in range(H):
        mx[hh] = -np.inf
    for j in range(n):
        if mask[b, j]:
            gh = _g(_hyp_item(P[1, j], P[2, j], X2, pq, kh, s2)[0]) if has_h else 0.0
            fs = _f(_sph_item(P[3, j], P[4, j], X2s, ks, s2)[0]) if has_s else 0.0
            for hh in range(H):
                v = C[hh, 0] * P[0, j] + C[hh, 1] * gh + C[hh, 2] * fs
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
def mc_forward(Q, T, Vt, ids, mask, e, h, C, geo, need_readout, R, Wm, Wh):  # pragma: no cover - jit
    """Mixed-curvature attention of ``Q (B, d)`` over ``T[ids]`` with values ``Vt[ids]``.

    Writes into the caller's zero-filled arrays (row slices of the whole batch's, so row chunks
    need no joining copy) ``R (B, dv)`` (the read-out with the head-averaged weights; only when
    ``need_readout``, zero-size otherwise), ``Wm (B, n)`` (head-averaged weights) and
    ``Wh (B, H, n)`` (per-head weights). Returns ``ok`` (False on NaN/inf in a referenced row or
    an overflow).
    """
    B, d = Q.shape
    n = ids.shape[1]
    H = C.shape[0]
    dv = Vt.shape[1]
    dt = Q.dtype.type
    ct = Q.dtype.type
    s = np.empty((H, n), dtype=np.float64)
    P = np.empty((5, n), dtype=np.float64)
    mx = np.empty(H, dtype=np.float64)
    rq = np.zeros(6, dtype=np.float64)
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
        # the weights and (in the same pass) the read-out with the head-averaged weights
        acc[:] = 0.0
        for j in range(n):
            jj = j + PREFETCH_AHEAD
            if need_readout and jj < n and mask[b, jj]:
                prefetch_table_row(Vt, ids[b, jj])
            if mask[b, j]:
                m = 0.0
                for hh in range(H):
                    w = s[hh, j]
                    Wh[b, hh, j] = dt(w)
                    m += w
                s[0, j] = m * invH  # the head-averaged weight (head 0's row is no longer needed)
                Wm[b, j] = dt(s[0, j])
                if need_readout:
                    wc = ct(s[0, j])
                    vr = Vt[ids[b, j]]
                    for k in range(dv):
                        acc[k] += wc * ct(vr[k])
        if not need_readout:
            continue
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
    return ok


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
    kh, ks, sigma = geo[0] * geo[0], geo[1] * geo[1], geo[2]
    s2 = sigma * sigma
    inv_sqrt_d = geo[3]
    unit_h = geo[4]  # S_H = unit_h * g(t_H): -2 / (sqrt(kh) sigma)
    unit_s = geo[5]  # S_S = unit_s * f(t_S)
    sdim = d - e - h
    rows = n_rows if need_table_grads else 0
    dQ = np.zeros((B, d), dtype=Q.dtype)
    dT = np.zeros((rows, d), dtype=Q.dtype)
    dV = np.zeros((rows, dv), dtype=Q.dtype)
    dmix = np.zeros((B, H, 3), dtype=np.float64)
    tj = np.empty(n, dtype=np.float64)
    cbar = np.empty(H, dtype=np.float64)
    P = np.empty((5, n), dtype=np.float64)
    HA = np.zeros((6, n), dtype=np.float64)  # t, |y|^2, x.y, p_k, g(t), g'(t)
    SA = np.zeros((5, n), dtype=np.float64)  # t, |y|^2, x.y, f(t), f'(t)
    # coefficients: k_E (dq; q_E in dk), k_H in dq, k_H in dk, q_H in dk, k_S in dq, k_S in dk, q_S in dk
    CO = np.zeros((7, n), dtype=np.float64)
    acc = np.empty(d, dtype=np.float64)
    rq = np.zeros(6, dtype=np.float64)
    ct = np.float64
    invH = 1.0 / H
    for b in range(B):
        q = Q[b]
        if not _row_geometry(q, e, h, d, geo, rq):
            continue
        pq, X2, q_projected = rq[1], rq[2], rq[3] > 0.0
        X2s = rq[5]
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
                    t, Y2, XY, pk = _hyp_item(P[1, j], P[2, j], X2, pq, kh, s2)
                    HA[0, j] = t
                    HA[1, j] = Y2
                    HA[2, j] = XY
                    HA[3, j] = pk
            for j in range(n):
                if mask[b, j]:
                    HA[4, j] = _g(HA[0, j])
                    HA[5, j] = _g_prime(HA[0, j])
        if sdim > 0:
            for j in range(n):
                if mask[b, j]:
                    t, Y2, XY = _sph_item(P[3, j], P[4, j], X2s, ks, s2)
                    SA[0, j] = t
                    SA[1, j] = Y2
                    SA[2, j] = XY
            for j in range(n):
                if mask[b, j]:
                    SA[3, j] = _f(SA[0, j])
                    SA[4, j] = _f_prime(SA[0, j])
        # per-item coefficients
        cx2h = 0.0  # sum_j dL/d|x_q|^2 (hyperbolic)
        cx2s = 0.0
        for j in range(n):
            if not mask[b, j]:
                continue
            SE = P[0, j] * inv_sqrt_d
            SH = unit_h * HA[4, j]
            SS = unit_s * SA[3, j]
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
            if h > 0:
                t, Y2, XY, pk = HA[0, j], HA[1, j], HA[2, j], HA[3, j]
                dt = dG * HA[5, j]
                al = 1.0 - kh * X2
                be = 1.0 - kh * Y2
                base = kh / (al * be)
                cx2h += dt * (base + t * kh / al)
                cy2 = dt * (base + t * kh / be)
                cxy = dt * (-2.0 * base)
                CO[1, j] = s2 * cxy * pk  # k_H in dq (before the query's ball factor)
                cq = s2 * cxy * pq * pk  # q_H in dk
                CO[3, j] = cq
                if pk < 1.0:  # the key was pulled inside the ball: |y| fixed, only its direction moves
                    CO[2, j] = -cq * P[1, j] / P[2, j]
                else:
                    CO[2, j] = 2.0 * s2 * cy2
            if sdim > 0:
                t, Y2, XY = SA[0, j], SA[1, j], SA[2, j]
                dt = dF * SA[4, j]
                al = 1.0 + ks * X2s
                be = 1.0 + ks * Y2
                base = ks / (al * be)
                cx2s += dt * (base - t * ks / al)
                cy2 = dt * (base - t * ks / be)
                cxy = dt * (-2.0 * base)
                CO[4, j] = s2 * cxy
                CO[5, j] = 2.0 * s2 * cy2
                CO[6, j] = s2 * cxy
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
            _axpy(accS, CO[4, j], kS)
            if need_table_grads:
                tr = dT[r]
                tE = tr[:e]
                tH = tr[e:e + h]
                tS = tr[e + h:]
                _axpy(tE, CO[0, j], qE)
                _axpy(tH, CO[3, j], qH)
                _axpy(tH, CO[2, j], kH)
                _axpy(tS, CO[6, j], qS)
                _axpy(tS, CO[5, j], kS)
        if h > 0:
            if q_projected:  # |x_q| fixed: keep the tangential part of p_q * sum_j c_j k_j
                nq2 = rq[0] * rq[0]
                proj = 0.0
                for t_ in range(h):
                    proj += accH[t_] * qH[t_]
                proj /= nq2
                for t_ in range(h):
                    accH[t_] = pq * (accH[t_] - proj * qH[t_])
            else:
                _axpy(accH, 2.0 * s2 * cx2h, qH)
        _axpy(accS, 2.0 * s2 * cx2s, qS)
        for k in range(d):
            dQ[b, k] = acc[k]
    return dQ, dT, dV, dmix
