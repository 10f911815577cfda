"""numba kernels of the training parts (private; state lives in the callers).

All kernels are serial (``cache=True``), take validated, C-contiguous arrays and write
their results into preallocated outputs. Each is compiled once per float dtype.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def triplet_all_pairs(values, pos, neg, margin, sign, soft, row_loss, row_count, grad):  # pragma: no cover
    """Per-row mean triplet loss over every (positive, negative) pair, and its gradient.

    ``values`` (B,C) scores (``sign = +1``: violation ``margin - v_p + v_n``) or distances
    (``sign = -1``: violation ``margin + v_p - v_n``). ``pos``/``neg`` (B,C) bool.
    ``soft``: softplus instead of the hinge. ``row_loss``/``row_count`` (B,) and ``grad``
    (B,C) are outputs; ``grad`` holds d(row mean)/d(values) (not yet batch-reduced).
    """
    n_rows, n_cols = values.shape
    for i in range(n_rows):
        n_pos = 0
        n_neg = 0
        for c in range(n_cols):
            if pos[i, c]:
                n_pos += 1
            elif neg[i, c]:
                n_neg += 1
        count = n_pos * n_neg
        row_count[i] = count
        row_loss[i] = 0.0
        if count == 0:
            continue
        inv = 1.0 / count
        total = 0.0
        for p in range(n_cols):
            if not pos[i, p]:
                continue
            vp = values[i, p]
            for q in range(n_cols):
                if pos[i, q] or not neg[i, q]:
                    continue
                z = margin - sign * (vp - values[i, q])
                if soft:
                    # softplus(z) and its derivative sigmoid(z), overflow-safe
                    if z > 0.0:
                        ez = np.exp(-z)
                        total += z + np.log1p(ez)
                        d = 1.0 / (1.0 + ez)
                    else:
                        ez = np.exp(z)
                        total += np.log1p(ez)
                        d = ez / (1.0 + ez)
                elif z > 0.0:
                    total += z
                    d = 1.0
                else:
                    d = 0.0
                if d != 0.0:
                    grad[i, p] -= sign * d * inv
                    grad[i, q] += sign * d * inv
        row_loss[i] = total * inv


@njit(cache=True)
def laplacian_edges(z, src, dst, weights, has_weights, grad):  # pragma: no cover
    """R = sum_e w_e ||z[src_e] - z[dst_e]||^2 over the edges; adds dR/dz into ``grad``.

    Edges with ``dst < 0`` (padding) or ``dst == src`` (self loops) contribute nothing.
    Returns (R, number of edges counted).
    """
    d = z.shape[1]
    total = 0.0
    count = 0
    for e in range(src.shape[0]):
        i = src[e]
        j = dst[e]
        if j < 0 or j == i:
            continue
        w = weights[e] if has_weights else 1.0
        acc = 0.0
        for k in range(d):
            diff = np.float64(z[i, k]) - np.float64(z[j, k])
            acc += diff * diff
            g = 2.0 * w * diff
            grad[i, k] += g
            grad[j, k] -= g
        total += w * acc
        count += 1
    return total, count


@njit(cache=True)
def scatter_add_rows(target, ids, src):  # pragma: no cover
    """``target[ids[b, c]] += src[b, c]`` for every ``ids[b, c] >= 0`` (src (B,C,d))."""
    n_rows, n_cols = ids.shape
    d = target.shape[1]
    for b in range(n_rows):
        for c in range(n_cols):
            t = ids[b, c]
            if t < 0:
                continue
            for k in range(d):
                target[t, k] += src[b, c, k]


@njit(cache=True)
def filter_non_neighbors(draws, nodes, indptr, indices, m, out):  # pragma: no cover
    """Fill ``out`` (B,m; -1 = still empty) with distinct draws that are neither the node nor its neighbours.

    ``draws`` (B,K) random node ids; rows already holding some values keep them. Returns
    the number of rows that are still not full.
    """
    n_rows, n_draws = draws.shape
    missing = 0
    for b in range(n_rows):
        node = nodes[b]
        filled = 0
        while filled < m and out[b, filled] >= 0:
            filled += 1
        for t in range(n_draws):
            if filled >= m:
                break
            cand = draws[b, t]
            if cand == node:
                continue
            bad = False
            for e in range(indptr[node], indptr[node + 1]):
                if indices[e] == cand:
                    bad = True
                    break
            if bad:
                continue
            for f in range(filled):
                if out[b, f] == cand:
                    bad = True
                    break
            if bad:
                continue
            out[b, filled] = cand
            filled += 1
        if filled < m:
            missing += 1
    return missing
