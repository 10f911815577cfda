"""Small numba helpers shared by the transport and diffusion kernels (plain functions, no state).

* bounded selection: keep the ``cap`` largest values seen so far in a descending buffer
  (equal values keep their arrival order, so selections are deterministic and the earliest
  item wins a tie);
* insertion sort of a short array together with an order array;
* the row-wise projection ``X @ Theta.T`` with a fixed summation order (a row's projection does
  not depend on the other rows of its call, so a table prepared once and the same rows projected
  in a later call agree bit for bit);
* nearest-centroid labels with the same property.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_FM = {"reassoc", "contract", "nsz"}


@njit(cache=True, nogil=True, inline="always")
def insert_desc(vals, idx, size, cap, v, j):  # pragma: no cover - jit
    """Insert ``(v, j)`` into the descending buffer ``vals[:size]`` / ``idx[:size]``.

    The buffer holds at most ``cap`` entries; when full, ``v`` must beat the last one. Returns
    the new size. Equal values stay in arrival order.
    """
    if cap == 0:
        return size
    if size == cap:
        if not v > vals[cap - 1]:
            return size
        pos = cap - 1
    else:
        pos = size
        size += 1
    while pos > 0 and vals[pos - 1] < v:
        vals[pos] = vals[pos - 1]
        idx[pos] = idx[pos - 1]
        pos -= 1
    vals[pos] = v
    idx[pos] = j
    return size


@njit(cache=True, nogil=True, inline="always")
def sort_with_order(vals, order, a):  # pragma: no cover - jit
    """Sort ``vals[:a]`` ascending in place, permuting ``order[:a]`` alongside (stable)."""
    for i in range(1, a):
        v = vals[i]
        o = order[i]
        k = i - 1
        while k >= 0 and vals[k] > v:
            vals[k + 1] = vals[k]
            order[k + 1] = order[k]
            k -= 1
        vals[k + 1] = v
        order[k + 1] = o


@njit(cache=True, nogil=True, inline="always")
def sort_values(vals, a):  # pragma: no cover - jit
    """Sort ``vals[:a]`` ascending in place (insertion sort: the arrays here are short)."""
    for i in range(1, a):
        v = vals[i]
        k = i - 1
        while k >= 0 and vals[k] > v:
            vals[k + 1] = vals[k]
            k -= 1
        vals[k + 1] = v


@njit(cache=True, nogil=True, fastmath=_FM)
def project_rows(X, Theta, out_dtype_like):  # pragma: no cover - jit
    """``X (N, d) @ Theta (P, d).T`` accumulated in float64 row by row, stored like ``out_dtype_like``."""
    N, d = X.shape
    P = Theta.shape[0]
    out = np.empty((N, P), dtype=out_dtype_like.dtype)
    dt = out_dtype_like.dtype.type
    for i in range(N):
        x = X[i]
        for p in range(P):
            th = Theta[p]
            s = 0.0
            for k in range(d):
                s += np.float64(x[k]) * th[k]
            out[i, p] = dt(s)
    return out


@njit(cache=True, nogil=True, fastmath=_FM)
def nearest_centroid(X, C):  # pragma: no cover - jit
    """Label ``(N,)`` int64 of the nearest row of ``C (M, d)`` to each row of ``X`` (squared L2).

    Computed as ``|c|^2 - 2 x.c`` in float64 (``|x|^2`` is common to a row); ties go to the
    lowest centroid index. Returns ``(labels, ok)``; ``ok`` is False when a row is not finite.
    """
    N, d = X.shape
    M = C.shape[0]
    csq = np.empty(M, dtype=np.float64)
    for m in range(M):
        s = 0.0
        for k in range(d):
            s += np.float64(C[m, k]) * np.float64(C[m, k])
        csq[m] = s
    labels = np.zeros(N, dtype=np.int64)
    ok = True
    for i in range(N):
        best = np.inf
        lab = 0
        for m in range(M):
            s = 0.0
            for k in range(d):
                s += np.float64(X[i, k]) * np.float64(C[m, k])
            v = csq[m] - 2.0 * s
            if v < best:
                best = v
                lab = m
        if not np.isfinite(best):
            ok = False
        labels[i] = lab
    return labels, ok
