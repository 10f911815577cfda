"""Poincare-ball operations (numpy, any float dtype) and a fused numba forward kernel.

Conventions: the ball of curvature ``c < 0`` is ``{x : kappa * |x|^2 < 1}`` with ``kappa = -c``.
Every function takes ``kappa = -c > 0``. Points are the last axis of an array.
The numba kernels gather keys/values by ids (``-1`` = masked) and compute in float64: the forward
kernel through one norm factor per row (:func:`hyperbolic_forward_kernel`), with the direct
coordinate-by-coordinate form (:func:`hyperbolic_forward_exact`) as its fallback and test twin.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from ruvector_hnsw.attention._prefetch import prefetch_table_row

_SMALL = 1e-7
_FMH = {"reassoc", "nsz"}
#: items ahead whose key row the forward kernel prefetches
PREFETCH_AHEAD = 8
#: ``|q - y|^2`` from ``|q|^2 + |y|^2 - 2 q.y`` unless it is below this fraction of ``|q|^2 + |y|^2``
#: (then coordinate by coordinate): the relative error of the squared distance stays below ~1e-12
CANCEL = 1e-4


def ball_radius(kappa: float, eps: float) -> float:
    """Largest norm kept after :func:`project`: ``(1 - eps) / sqrt(kappa)``."""
    return (1.0 - eps) / math.sqrt(kappa)


def project(x: np.ndarray, kappa: float, eps: float) -> np.ndarray:
    """Pull points with ``|x| > (1 - eps)/sqrt(kappa)`` radially back inside the ball."""
    r = ball_radius(kappa, eps)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    scale = np.where(n > r, r / np.maximum(n, 1e-300), 1.0)
    return x * scale


def project_backward(x: np.ndarray, g: np.ndarray, kappa: float, eps: float) -> np.ndarray:
    """Vector-Jacobian product of :func:`project` at ``x`` with cotangent ``g``."""
    r = ball_radius(kappa, eps)
    n = np.sqrt(np.sum(x * x, axis=-1, keepdims=True))
    out_side = n > r
    if not out_side.any():
        return g
    safe_n = np.where(out_side, n, 1.0)
    xh = x / safe_n
    radial = np.where(out_side, np.sum(xh * g, axis=-1, keepdims=True), 0.0)
    return np.where(out_side, r / safe_n, 1.0) * (g - xh * radial)


def mobius_add(x: np.ndarray, y: np.ndarray, kappa: float) -> np.ndarray:
    """Mobius addition ``x (+) y`` on the ball of curvature ``-kappa``."""
    xy = np.sum(x * y, axis=-1, keepdims=True)
    x2 = np.sum(x * x, axis=-1, keepdims=True)
    y2 = np.sum(y * y, axis=-1, keepdims=True)
    num = (1.0 + 2.0 * kappa * xy + kappa * y2) * x + (1.0 - kappa * x2) * y
    den = 1.0 + 2.0 * kappa * xy + kappa * kappa * x2 * y2
    return num / den


def expmap0(u: np.ndarray, kappa: float) -> np.ndarray:
    """Exponential map at the origin: ``tanh(sqrt(k)|u|) u / (sqrt(k)|u|)``."""
    a = math.sqrt(kappa)
    n = np.linalg.norm(u, axis=-1, keepdims=True)
    an = a * n
    g = np.where(an > _SMALL, np.tanh(an) / np.maximum(an, _SMALL), 1.0 - an * an / 3.0)
    return u * g


def expmap0_backward(u: np.ndarray, g_out: np.ndarray, kappa: float) -> np.ndarray:
    """VJP of :func:`expmap0` (its Jacobian is symmetric)."""
    a = math.sqrt(kappa)
    n = np.linalg.norm(u, axis=-1, keepdims=True)
    an = a * n
    big = an > 1e-4
    safe_an = np.maximum(an, 1e-4)
    g = np.where(big, np.tanh(safe_an) / safe_an, 1.0 - an * an / 3.0)
    # g'(r)/r with r = |u|:  (a r sech^2(a r) - tanh(a r)) / (a r^3)
    sech2 = 1.0 / np.cosh(np.minimum(safe_an, 350.0)) ** 2
    safe_n = np.maximum(n, 1e-300)
    gp_over_r = np.where(
        big, (safe_an * sech2 - np.tanh(safe_an)) / (a * safe_n**3 + 1e-300), -2.0 * kappa / 3.0
    )
    return g * g_out + gp_over_r * np.sum(u * g_out, axis=-1, keepdims=True) * u


def logmap0(y: np.ndarray, kappa: float) -> np.ndarray:
    """Logarithmic map at the origin: ``artanh(sqrt(k)|y|) y / (sqrt(k)|y|)``; ``y`` strictly inside."""
    a = math.sqrt(kappa)
    n = np.linalg.norm(y, axis=-1, keepdims=True)
    an = a * n
    big = np.arctanh(np.minimum(an, 1.0 - 1e-16)) / np.maximum(an, _SMALL)
    h = np.where(an > _SMALL, big, 1.0 + an * an / 3.0)
    return y * h


def logmap0_backward(y: np.ndarray, g_out: np.ndarray, kappa: float) -> np.ndarray:
    """VJP of :func:`logmap0` (symmetric Jacobian)."""
    a = math.sqrt(kappa)
    n = np.linalg.norm(y, axis=-1, keepdims=True)
    an = a * n
    big = an > 1e-4
    safe_an = np.clip(an, 1e-4, 1.0 - 1e-16)
    safe_n = np.maximum(n, 1e-300)
    h = np.where(big, np.arctanh(safe_an) / safe_an, 1.0 + an * an / 3.0)
    # h'(m)/m = (a m / (1 - a^2 m^2) - artanh(a m)) / (a m^3)
    hp_over_m = np.where(
        big,
        (safe_an / (1.0 - safe_an * safe_an) - np.arctanh(safe_an)) / (a * safe_n**3 + 1e-300),
        2.0 * kappa / 3.0,
    )
    return h * g_out + hp_over_m * np.sum(y * g_out, axis=-1, keepdims=True) * y


def poincare_distance(x: np.ndarray, y: np.ndarray, kappa: float) -> np.ndarray:
    """Geodesic distance ``arcosh(1 + 2k|x-y|^2 / ((1-k|x|^2)(1-k|y|^2))) / sqrt(k)`` (broadcasting)."""
    diff = np.sum((x - y) ** 2, axis=-1)
    ax = 1.0 - kappa * np.sum(x * x, axis=-1)
    ay = 1.0 - kappa * np.sum(y * y, axis=-1)
    z = 2.0 * kappa * diff / (ax * ay)
    return np.log1p(z + np.sqrt(z * (z + 2.0))) / math.sqrt(kappa)


@njit(cache=True, nogil=True, fastmath={"reassoc", "nsz"})
def hyperbolic_forward_exact(
    q: np.ndarray,
    ktab: np.ndarray,
    vtab: np.ndarray,
    ids: np.ndarray,
    kappa: float,
    eps: float,
    inv_tau: float,
    scale: float,
    expmap_inputs: bool,
    tangent_output: bool,
) -> tuple[np.ndarray, np.ndarray, bool]:  # pragma: no cover - jit
    """Fused gather + Poincare attention for a batch, coordinate by coordinate; float64.

    The direct form of :func:`hyperbolic_forward_kernel` (every mapped key/value coordinate is
    formed and checked): it serves the rows whose fast path meets a non-finite intermediate
    (NaN/inf in a referenced row, or an overflow of a float64 norm), and the tests compare the two.
    Inputs are multiplied by ``scale`` before they are mapped to the ball; the tangent output
    is divided by it (back to input units).
    ``ids[b, j] < 0`` marks a masked slot. A fully masked row returns weights 0 and output 0
    (the origin, which is inside the ball). Returns ``(out (B, dv), weights (B, n), ok)``;
    ``ok`` is False when a key/value row read through ``ids`` holds NaN or infinity.
    """
    B, d = q.shape
    n = ids.shape[1]
    dv = vtab.shape[1]
    a = math.sqrt(kappa)
    rmax = (1.0 - eps) / a
    out = np.zeros((B, dv), dtype=q.dtype)
    wts = np.zeros((B, n), dtype=q.dtype)
    qp = np.empty(d)
    kp = np.empty(d)
    s = np.empty(n)
    u = np.empty(dv)
    t = np.empty(dv)
    chk = 0.0
    for b in range(B):
        # query -> ball point
        nq = 0.0
        for i in range(d):
            qp[i] = scale * q[b, i]
            nq += qp[i] * qp[i]
        nq = math.sqrt(nq)
        if expmap_inputs:
            an = a * nq
            g = math.tanh(an) / an if an > 1e-7 else 1.0 - an * an / 3.0
            nq2 = 0.0
            for i in range(d):
                qp[i] *= g
                nq2 += qp[i] * qp[i]
            nq = math.sqrt(nq2)
        if nq > rmax:
            sc = rmax / nq
            for i in range(d):
                qp[i] *= sc
            nq = rmax
        aq = 1.0 - kappa * nq * nq
        smax = -np.inf
        for j in range(n):
            r = ids[b, j]
            if r < 0:
                s[j] = -np.inf
                continue
            nk = 0.0
            for i in range(d):
                kp[i] = scale * ktab[r, i]
                chk += kp[i] * 0.0
                nk += kp[i] * kp[i]
            nk = math.sqrt(nk)
            if expmap_inputs:
                an = a * nk
                g = math.tanh(an) / an if an > 1e-7 else 1.0 - an * an / 3.0
                nk2 = 0.0
                for i in range(d):
                    kp[i] *= g
                    nk2 += kp[i] * kp[i]
                nk = math.sqrt(nk2)
            if nk > rmax:
                sc = rmax / nk
                for i in range(d):
                    kp[i] *= sc
                nk = rmax
            ak = 1.0 - kappa * nk * nk
            diff = 0.0
            for i in range(d):
                dd = qp[i] - kp[i]
                diff += dd * dd
            z = 2.0 * kappa * diff / (aq * ak)
            dist = math.log1p(z + math.sqrt(z * (z + 2.0))) / a
            s[j] = -dist * inv_tau
            if s[j] > smax:
                smax = s[j]
        if smax == -np.inf:
            continue
        tot = 0.0
        for j in range(n):
            if ids[b, j] >= 0:
                s[j] = math.exp(s[j] - smax)
                tot += s[j]
            else:
                s[j] = 0.0
        for i in range(dv):
            u[i] = 0.0
        for j in range(n):
            r = ids[b, j]
            if r < 0:
                continue
            w = s[j] / tot
            wts[b, j] = w
            nv = 0.0
            for i in range(dv):
                t[i] = scale * vtab[r, i]
                chk += t[i] * 0.0
                nv += t[i] * t[i]
            nv = math.sqrt(nv)
            if expmap_inputs:
                an = a * nv
                g = math.tanh(an) / an if an > 1e-7 else 1.0 - an * an / 3.0
                nv2 = 0.0
                for i in range(dv):
                    t[i] *= g
                    nv2 += t[i] * t[i]
                nv = math.sqrt(nv2)
            if nv > rmax:
                sc = rmax / nv
                for i in range(dv):
                    t[i] *= sc
                nv = rmax
            am = a * nv
            h = math.atanh(min(am, 1.0 - 1e-16)) / am if am > 1e-7 else 1.0 + am * am / 3.0
            for i in range(dv):
                u[i] += w * h * t[i]
        if tangent_output:
            for i in range(dv):
                out[b, i] = u[i] / scale
            continue
        nu = 0.0
        for i in range(dv):
            nu += u[i] * u[i]
        nu = math.sqrt(nu)
        an = a * nu
        g = math.tanh(an) / an if an > 1e-7 else 1.0 - an * an / 3.0
        ny = g * nu
        sc = g
        if ny > rmax:
            sc = g * rmax / ny
        for i in range(dv):
            out[b, i] = u[i] * sc
    return out, wts, chk == 0.0


@njit(cache=True, nogil=True, fastmath=_FMH, inline="always")
def _ball_coef(n2: float, scale: float, a: float, rmax: float, expm: bool) -> tuple[float, float]:  # pragma: no cover
    """``(c, r)`` for a raw row ``x`` with ``|x|^2 = n2``: its ball point is ``c * x`` and ``r`` its norm.

    The maps of :func:`hyperbolic_forward_exact` (scale, optional ``exp_0``, projection) act on
    a row only through its norm, so one factor carries them; like there, a projected point's
    norm is taken as the radius ``rmax``.
    """
    nrm = scale * math.sqrt(n2)
    c = scale
    if expm:
        an = a * nrm
        g = math.tanh(an) / an if an > 1e-7 else 1.0 - an * an / 3.0
        c *= g
        nrm *= g
    if nrm > rmax:
        c *= rmax / nrm
        nrm = rmax
    return c, nrm


@njit(cache=True, nogil=True, fastmath=_FMH, inline="always")
def _sq64(x: np.ndarray) -> float:  # pragma: no cover - jit
    s = 0.0
    for i in range(x.shape[0]):
        v = np.float64(x[i])
        s += v * v
    return s


@njit(cache=True, nogil=True, fastmath=_FMH, inline="always")
def _hyp_row(qp, aq, ktab, vtab, ids, b, kappa, a, rmax, inv_tau, scale, expm, shared, z, ck, s, u):  # pragma: no cover
    """Row ``b`` on the fast path: weights into ``s``, the tangent read-out into ``u``.

    Returns 1 (done), 0 (no attended item) or -1 (a non-finite norm: the caller redoes the row
    with :func:`hyperbolic_forward_exact`). Three passes: (1) each key row once (prefetched
    ``PREFETCH_AHEAD`` items ahead): its squared norm and its dot product with ``q_p`` in one
    loop, hence its ball factor ``c_j`` (see :func:`_ball_coef`) and
    ``|q_p - c_j k_j|^2 = |q_p|^2 + c_j^2 |k_j|^2 - 2 c_j q_p.k_j`` -> ``z_j`` (recomputed
    coordinate by coordinate when that difference cancels, see ``CANCEL``); (2) scalars only, in loops of
    independent iterations: distances, softmax, and each value's log-map factor; (3) the
    read-out ``u = sum_j w_j h_j c_j v_j``. With ``shared`` (values are the key table) a value's
    factor is its key's and pass 3 reads rows that pass 1 brought into cache.
    """
    n = ids.shape[1]
    d = qp.shape[0]
    dv = u.shape[0]
    nq2 = 0.0
    for i in range(d):
        nq2 += qp[i] * qp[i]
    for j in range(min(PREFETCH_AHEAD, n)):
        if ids[b, j] >= 0:
            prefetch_table_row(ktab, ids[b, j])
    cnt = 0
    for j in range(n):
        jj = j + PREFETCH_AHEAD
        if jj < n and ids[b, jj] >= 0:
            prefetch_table_row(ktab, ids[b, jj])
        r = ids[b, j]
        if r < 0:
            continue
        kr = ktab[r]
        n2 = 0.0
        qk = 0.0
        for i in range(d):
            x = np.float64(kr[i])
            n2 += x * x
            qk += qp[i] * x
        if not np.isfinite(n2) or not np.isfinite(scale * math.sqrt(n2)):
            return -1
        c, nk = _ball_coef(n2, scale, a, rmax, expm)
        big = nq2 + c * c * n2
        diff = big - 2.0 * c * qk
        if diff <= CANCEL * big:
            # q_p and the key's ball point nearly coincide: |q_p - c k|^2 coordinate by coordinate
            diff = 0.0
            for i in range(d):
                dd = qp[i] - c * np.float64(kr[i])
                diff += dd * dd
        z[j] = 2.0 * kappa * diff / (aq * (1.0 - kappa * nk * nk))
        ck[0, j] = c
        ck[1, j] = nk
        cnt += 1
    if cnt == 0:
        return 0
    smax = -np.inf
    for j in range(n):
        if ids[b, j] >= 0:
            zj = z[j]
            sj = -(math.log1p(zj + math.sqrt(zj * (zj + 2.0))) / a) * inv_tau
            s[j] = sj
            if sj > smax:
                smax = sj
    tot = 0.0
    for j in range(n):
        if ids[b, j] >= 0:
            e = math.exp(s[j] - smax)
            s[j] = e
            tot += e
        else:
            s[j] = 0.0
    if not shared:
        for j in range(n):
            r = ids[b, j]
            if r >= 0:
                n2 = _sq64(vtab[r])
                if not np.isfinite(n2) or not np.isfinite(scale * math.sqrt(n2)):
                    return -1
                c, nv = _ball_coef(n2, scale, a, rmax, expm)
                ck[0, j] = c
                ck[1, j] = nv
    for j in range(n):
        if ids[b, j] >= 0:
            w = s[j] / tot
            s[j] = w
            am = a * ck[1, j]
            h = math.atanh(min(am, 1.0 - 1e-16)) / am if am > 1e-7 else 1.0 + am * am / 3.0
            z[j] = w * h * ck[0, j]
    for i in range(dv):
        u[i] = 0.0
    for j in range(n):
        jj = j + PREFETCH_AHEAD
        if jj < n and ids[b, jj] >= 0:
            prefetch_table_row(vtab, ids[b, jj])
        r = ids[b, j]
        if r >= 0:
            coef = z[j]
            vr = vtab[r]
            for i in range(dv):
                u[i] += coef * np.float64(vr[i])
    return 1


@njit(cache=True, nogil=True, fastmath=_FMH)
def hyperbolic_forward_kernel(
    q: np.ndarray,
    ktab: np.ndarray,
    vtab: np.ndarray,
    ids: np.ndarray,
    kappa: float,
    eps: float,
    inv_tau: float,
    scale: float,
    expmap_inputs: bool,
    tangent_output: bool,
    shared: bool,
) -> tuple[np.ndarray, np.ndarray, bool]:  # pragma: no cover - jit
    """Fused gather + Poincare attention for a batch; float64 accumulation.

    Same mathematics as :func:`hyperbolic_forward_exact`, organised for speed: the maps to the
    ball act on a row only through its norm, so a key's ball point is ``c_j k_j`` with one scalar
    ``c_j`` and is never formed; the transcendental functions run in short scalar loops; rows
    are prefetched. ``shared`` says that ``vtab`` is ``ktab`` (same array), so the values reuse
    the keys' norms. A row with a non-finite intermediate is redone by the exact kernel, which
    also reports NaN/inf. Inputs are multiplied by ``scale`` before they are mapped to the ball;
    the tangent output is divided by it. ``ids[b, j] < 0`` marks a masked slot; a fully masked
    row returns weights 0 and output 0. Returns ``(out (B, dv), weights (B, n), ok)``; ``ok``
    is False when a key/value row read through ``ids`` holds NaN or infinity.
    """
    B, d = q.shape
    n = ids.shape[1]
    dv = vtab.shape[1]
    a = math.sqrt(kappa)
    rmax = (1.0 - eps) / a
    dt = q.dtype.type
    out = np.zeros((B, dv), dtype=q.dtype)
    wts = np.zeros((B, n), dtype=q.dtype)
    qp = np.empty(d)
    z = np.empty(n)
    ck = np.empty((2, n))
    s = np.empty(n)
    u = np.empty(dv)
    ok = True
    for b in range(B):
        n2q = _sq64(q[b])
        if not np.isfinite(n2q) or not np.isfinite(scale * math.sqrt(n2q)):
            st = -1
        else:
            c, nq = _ball_coef(n2q, scale, a, rmax, expmap_inputs)
            for i in range(d):
                qp[i] = c * np.float64(q[b, i])
            aq = 1.0 - kappa * nq * nq
            st = _hyp_row(qp, aq, ktab, vtab, ids, b, kappa, a, rmax, inv_tau, scale, expmap_inputs, shared,
                          z, ck, s, u)
        if st == 0:
            continue
        if st < 0:
            o1, w1, ok1 = hyperbolic_forward_exact(q[b:b + 1], ktab, vtab, ids[b:b + 1], kappa, eps, inv_tau, scale,
                                                   expmap_inputs, tangent_output)
            ok = ok and ok1
            out[b] = o1[0]
            wts[b] = w1[0]
            continue
        for j in range(n):
            wts[b, j] = dt(s[j])
        if tangent_output:
            for i in range(dv):
                out[b, i] = dt(u[i] / scale)
            continue
        nu = 0.0
        for i in range(dv):
            nu += u[i] * u[i]
        nu = math.sqrt(nu)
        an = a * nu
        g = math.tanh(an) / an if an > 1e-7 else 1.0 - an * an / 3.0
        ny = g * nu
        sc = g
        if ny > rmax:
            sc = g * rmax / ny
        for i in range(dv):
            out[b, i] = dt(u[i] * sc)
    return out, wts, ok


# ----------------------------------------------------------------------------------------------
# backward kernel (row by row, float64, no (B, n, d) temporaries besides the gradients)
# ----------------------------------------------------------------------------------------------
@njit(cache=True, nogil=True, inline="always")
def _to_ball(xt: np.ndarray, out: np.ndarray, a: float, rmax: float, expm: bool) -> None:  # pragma: no cover
    """``out = project(exp_0(xt))`` (or ``project(xt)``)."""
    n = 0.0
    for i in range(xt.shape[0]):
        n += xt[i] * xt[i]
    n = math.sqrt(n)
    g = 1.0
    if expm:
        an = a * n
        g = math.tanh(an) / an if an > 1e-7 else 1.0 - an * an / 3.0
        n = g * n
    if n > rmax:
        g *= rmax / n
    for i in range(xt.shape[0]):
        out[i] = xt[i] * g


@njit(cache=True, nogil=True, inline="always")
def _to_ball_vjp(
    xt: np.ndarray, g: np.ndarray, out: np.ndarray, a: float, kappa: float, rmax: float, expm: bool
) -> None:  # pragma: no cover
    """``out = J^T g`` of :func:`_to_ball` at ``xt``."""
    d = xt.shape[0]
    r = 0.0
    for i in range(d):
        r += xt[i] * xt[i]
    r = math.sqrt(r)
    fac = 1.0  # xe = fac * xt
    if expm:
        an = a * r
        fac = math.tanh(an) / an if an > 1e-7 else 1.0 - an * an / 3.0
    ne = fac * r
    # project VJP at xe (xe_hat = xt_hat)
    if ne > rmax:
        dot = 0.0
        for i in range(d):
            dot += xt[i] * g[i]
        dot /= r * r
        sc = rmax / ne
        for i in range(d):
            out[i] = sc * (g[i] - xt[i] * dot)
    else:
        for i in range(d):
            out[i] = g[i]
    if expm:
        an = a * r
        if an > 1e-4:
            sech = 1.0 / math.cosh(min(an, 350.0))
            gp_over_r = (an * sech * sech - math.tanh(an)) / (a * r * r * r)
        else:
            gp_over_r = -2.0 * kappa / 3.0
        dot = 0.0
        for i in range(d):
            dot += xt[i] * out[i]
        for i in range(d):
            out[i] = fac * out[i] + gp_over_r * dot * xt[i]


@njit(cache=True, nogil=True, fastmath={"reassoc", "nsz"})
def hyperbolic_backward_kernel(
    q: np.ndarray,
    ktab: np.ndarray,
    vtab: np.ndarray,
    ids: np.ndarray,
    wts: np.ndarray,
    grad_out: np.ndarray,
    kappa: float,
    eps: float,
    tau: float,
    scale: float,
    expmap_inputs: bool,
    tangent_output: bool,
    need_input_grads: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # pragma: no cover - jit
    """Backward of :func:`hyperbolic_forward_kernel` given its weights.

    Returns ``dq (B, d)``, per-slot ``dK (B, n, d)``, ``dV (B, n, dv)`` (zero at masked slots;
    zero-size when ``need_input_grads`` is False) and the gradients of ``log_temperature``
    and ``log_scale`` row by row (``(B,)`` each: the caller sums them over all rows at once, so
    the total does not depend on how the rows were split into chunks). The per-slot key/value
    cotangents are needed either way (``log_scale`` scales the keys and values); without input
    gradients they go to one row of scratch instead of the ``(B, n, .)`` arrays (same loops, so
    the same rounding of the sums).
    """
    B, d = q.shape
    n = ids.shape[1]
    dv = vtab.shape[1]
    a = math.sqrt(kappa)
    rmax = (1.0 - eps) / a
    dq = np.zeros((B, d))
    dK = np.zeros((B if need_input_grads else 0, n, d))
    dV = np.zeros((B if need_input_grads else 0, n, dv))
    dk_row = np.empty(d)  # scratch for the per-slot cotangents when they are not returned
    dv_row = np.empty(dv)
    dlt = np.zeros(B)
    dls = np.zeros(B)
    qt = np.empty(d)
    qp = np.empty(d)
    dqp = np.empty(d)
    tmp = np.empty(d)
    kt = np.empty(d)
    kp = np.empty((n, d))
    vt = np.empty(dv)
    vp = np.empty((n, dv))
    t = np.empty((n, dv))
    z = np.empty(n)
    ak = np.empty(n)
    dw = np.empty(n)
    u = np.empty(dv)
    du = np.empty(dv)
    gv = np.empty(dv)
    tv = np.empty(dv)
    for b in range(B):
        valid = False
        for j in range(n):
            if ids[b, j] >= 0:
                valid = True
        if not valid:
            continue
        dlog_tau = 0.0
        dlog_scale = 0.0
        for i in range(d):
            qt[i] = scale * q[b, i]
        _to_ball(qt, qp, a, rmax, expmap_inputs)
        nq2 = 0.0
        for i in range(d):
            nq2 += qp[i] * qp[i]
        aq = 1.0 - kappa * nq2
        for i in range(dv):
            u[i] = 0.0
        for j in range(n):
            r = ids[b, j]
            if r < 0:
                continue
            for i in range(d):
                kt[i] = scale * ktab[r, i]
            _to_ball(kt, kp[j], a, rmax, expmap_inputs)
            nk2 = 0.0
            delta = 0.0
            for i in range(d):
                nk2 += kp[j, i] * kp[j, i]
                dd = qp[i] - kp[j, i]
                delta += dd * dd
            ak[j] = 1.0 - kappa * nk2
            z[j] = 2.0 * kappa * delta / (aq * ak[j])
            for i in range(dv):
                vt[i] = scale * vtab[r, i]
            _to_ball(vt, vp[j], a, rmax, expmap_inputs)
            nv = 0.0
            for i in range(dv):
                nv += vp[j, i] * vp[j, i]
            am = a * math.sqrt(nv)
            h = math.atanh(min(am, 1.0 - 1e-16)) / am if am > 1e-7 else 1.0 + am * am / 3.0
            wj = float(wts[b, j])
            for i in range(dv):
                t[j, i] = h * vp[j, i]
                u[i] += wj * t[j, i]
        # d out -> d u
        if tangent_output:
            gu = 0.0
            for i in range(dv):
                du[i] = grad_out[b, i] / scale
                gu += grad_out[b, i] * u[i]
            dlog_scale -= gu / scale
        else:
            for i in range(dv):
                gv[i] = grad_out[b, i]
            _to_ball_vjp(u, gv, du, a, kappa, rmax, True)
        # weights and values
        sw = 0.0
        for j in range(n):
            if ids[b, j] < 0:
                continue
            acc = 0.0
            for i in range(dv):
                acc += du[i] * t[j, i]
            dw[j] = acc
            sw += float(wts[b, j]) * acc
        for j in range(n):
            r = ids[b, j]
            if r < 0:
                continue
            wj = float(wts[b, j])
            # logmap VJP at vp_j with cotangent w_j du
            nv = 0.0
            for i in range(dv):
                nv += vp[j, i] * vp[j, i]
            m = math.sqrt(nv)
            am = a * m
            if am > 1e-4:
                amc = min(am, 1.0 - 1e-16)
                h = math.atanh(amc) / am
                hp_over_m = (amc / (1.0 - amc * amc) - math.atanh(amc)) / (a * m * m * m)
            else:
                h = 1.0 + am * am / 3.0
                hp_over_m = 2.0 * kappa / 3.0
            dot = 0.0
            for i in range(dv):
                dot += vp[j, i] * du[i]
            for i in range(dv):
                tv[i] = wj * (h * du[i] + hp_over_m * dot * vp[j, i])
            for i in range(dv):
                vt[i] = scale * vtab[r, i]
            _to_ball_vjp(vt, tv, gv, a, kappa, rmax, expmap_inputs)
            dv_out = dV[b, j] if need_input_grads else dv_row
            for i in range(dv):
                dv_out[i] = scale * gv[i]
                dlog_scale += vt[i] * gv[i]
        # scores -> distances -> ball points
        for i in range(d):
            dqp[i] = 0.0
        cq = 0.0
        for j in range(n):
            r = ids[b, j]
            if r < 0:
                continue
            wj = float(wts[b, j])
            ds = wj * (dw[j] - sw)
            zj = z[j]
            dist = math.log1p(zj + math.sqrt(zj * (zj + 2.0))) / a
            dlog_tau += ds * dist / tau  # s = -dist / tau, d s / d log tau = -s
            root = math.sqrt(zj * (zj + 2.0))
            if root <= 1e-12:
                continue
            dz = (-ds / tau) / (a * root)
            c1 = dz * 2.0 * kappa / (aq * ak[j])
            cq += dz * zj
            ck = dz * zj / ak[j] * 2.0 * kappa
            for i in range(d):
                diff = qp[i] - kp[j, i]
                dqp[i] += 2.0 * c1 * diff
                tmp[i] = -2.0 * c1 * diff + ck * kp[j, i]
            for i in range(d):
                kt[i] = scale * ktab[r, i]
            _to_ball_vjp(kt, tmp, qt, a, kappa, rmax, expmap_inputs)  # qt reused as output buffer
            dk_out = dK[b, j] if need_input_grads else dk_row
            for i in range(d):
                dk_out[i] = scale * qt[i]
                dlog_scale += kt[i] * qt[i]
        for i in range(d):
            qt[i] = scale * q[b, i]
            dqp[i] += cq / aq * 2.0 * kappa * qp[i]
        _to_ball_vjp(qt, dqp, tmp, a, kappa, rmax, expmap_inputs)
        for i in range(d):
            dq[b, i] = scale * tmp[i]
            dlog_scale += qt[i] * tmp[i]
        dlt[b] = dlog_tau
        dls[b] = dlog_scale
    return dq, dK, dV, dlt, dls
