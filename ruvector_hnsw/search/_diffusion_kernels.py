"""numba kernels of graph diffusion: per-query graph build, CG solve, ranking and values, result merge.

Serial ``nogil`` kernels over a range of query rows (run in row chunks on the kernel pool by
:mod:`ruvector_hnsw.search.diffusion` and the ``diffusion`` eval method). Nodes are integer ids
``0..N-1``; ``nbr`` is the layer-0 neighbour table in those ids (``-1`` padding) with the edge
similarities ``nbr_sim``.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _gather_into(cand: np.ndarray, nbr: np.ndarray, slot: np.ndarray) -> np.ndarray:
    """Candidates (in order) then their neighbours, each once, in order of first entry.

    ``slot`` (N,) is -1 on entry for every id; on return ``slot[nodes[i]] == i`` (the caller resets
    those entries with :func:`_release`). Linear in the links read: no sort.
    """
    C = cand.shape[0]
    K = nbr.shape[1]
    buf = np.empty(C * (K + 1), dtype=np.int64)
    m = 0
    for c in range(C):
        u = cand[c]
        if u >= 0 and slot[u] < 0:
            slot[u] = m
            buf[m] = u
            m += 1
    for c in range(C):
        u = cand[c]
        if u < 0:
            continue
        for j in range(K):
            v = nbr[u, j]
            if v >= 0 and slot[v] < 0:
                slot[v] = m
                buf[m] = v
                m += 1
    return buf[:m].copy()


@njit(cache=True, nogil=True)
def _release(nodes: np.ndarray, slot: np.ndarray) -> None:
    """Reset the ``slot`` entries :func:`_gather_into` set for ``nodes``."""
    for i in range(nodes.shape[0]):
        slot[nodes[i]] = -1


@njit(cache=True, nogil=True)
def _gather_nodes(cand: np.ndarray, nbr: np.ndarray) -> np.ndarray:
    """Candidates (in order) then their neighbours, each label once, in order of first entry."""
    slot = np.full(nbr.shape[0], -1, dtype=np.int64)
    return _gather_into(cand, nbr, slot)


@njit(cache=True, nogil=True)
def _sort_segment(cols: np.ndarray, wts: np.ndarray, lo: int, hi: int) -> None:
    """Sort ``cols[lo:hi]`` ascending in place, ``wts`` along (insertion sort; argsort past 32 entries)."""
    if hi - lo > 32:
        order = np.argsort(cols[lo:hi])
        c = cols[lo:hi][order]
        w = wts[lo:hi][order]
        cols[lo:hi] = c
        wts[lo:hi] = w
        return
    for t in range(lo + 1, hi):
        c, w = cols[t], wts[t]
        s = t - 1
        while s >= lo and cols[s] > c:
            cols[s + 1] = cols[s]
            wts[s + 1] = wts[s]
            s -= 1
        cols[s + 1] = c
        wts[s + 1] = w


@njit(cache=True, nogil=True)
def _link_in_set(nbr: np.ndarray, slot: np.ndarray, u: int, j: int, i: int) -> int:
    """Position in the node set of row ``u``'s ``j``-th link (``u`` at position ``i``); -1: padding,
    outside the set, or ``u`` itself."""
    v = nbr[u, j]
    if v < 0:
        return -1
    jj = slot[v]
    return -1 if jj == i else jj


@njit(cache=True, nogil=True)
def _affinity(nodes: np.ndarray, slot: np.ndarray, nbr: np.ndarray, nbr_sim: np.ndarray,
              gamma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`build_affinity` with ``slot[nodes[i]] == i`` (-1 elsewhere) as the id -> position map.

    Two passes over the links (count per row, then fill both directions), then each row's few
    entries sorted by column and merged (the larger weight): linear in the links but for the rows'
    own sorts.
    """
    n = nodes.shape[0]
    K = nbr.shape[1]
    start = np.zeros(n + 1, dtype=np.int64)
    for i in range(n):
        for j in range(K):
            jj = _link_in_set(nbr, slot, nodes[i], j, i)
            if jj < 0:
                continue
            start[i + 1] += 1
            start[jj + 1] += 1
    for i in range(n):
        start[i + 1] += start[i]
    m = start[n]
    fill = start[:n].copy()
    cols = np.empty(m, dtype=np.int64)
    wts = np.empty(m, dtype=np.float64)
    for i in range(n):
        u = nodes[i]
        for j in range(K):
            jj = _link_in_set(nbr, slot, u, j, i)
            if jj < 0:
                continue
            w = max(float(nbr_sim[u, j]), 0.0) ** gamma
            cols[fill[i]] = jj
            wts[fill[i]] = w
            fill[i] += 1
            cols[fill[jj]] = i
            wts[fill[jj]] = w
            fill[jj] += 1
    indptr = np.zeros(n + 1, dtype=np.int64)
    indices = np.empty(m, dtype=np.int64)
    data = np.empty(m, dtype=np.float64)
    e = 0
    for i in range(n):
        lo, hi = start[i], start[i + 1]
        _sort_segment(cols, wts, lo, hi)
        for t in range(lo, hi):
            if t > lo and cols[t] == cols[t - 1]:
                if wts[t] > data[e - 1]:
                    data[e - 1] = wts[t]
                continue
            indices[e] = cols[t]
            data[e] = wts[t]
            e += 1
        indptr[i + 1] = e
    return indptr, indices[:e], data[:e]


@njit(cache=True, nogil=True)
def build_affinity(nodes: np.ndarray, nbr: np.ndarray, nbr_sim: np.ndarray,
                   gamma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Symmetric CSR ``W`` over ``nodes``: ``W_ij = max(s_ij, 0) ** gamma`` for layer-0 links i->j or j->i.

    Links between two nodes of the set are kept (from either end; if both ends hold the link,
    the larger weight); links leaving the set are dropped. Each row's columns ascend. Returns
    ``indptr, indices, data``.
    """
    slot = np.full(nbr.shape[0], -1, dtype=np.int64)
    for i in range(nodes.shape[0]):
        slot[nodes[i]] = i
    return _affinity(nodes, slot, nbr, nbr_sim, gamma)


@njit(cache=True, nogil=True)
def _matvec(indptr: np.ndarray, indices: np.ndarray, scaled: np.ndarray, dinv: np.ndarray, a: float,
            x: np.ndarray, out: np.ndarray) -> None:
    """``out = (I - a D^-1/2 W D^-1/2) x``; ``scaled[t] = W_ij * dinv[j]`` of entry ``t = (i, j)``."""
    n = x.shape[0]
    for i in range(n):
        acc = 0.0
        for t in range(indptr[i], indptr[i + 1]):
            acc += scaled[t] * x[indices[t]]
        out[i] = x[i] - a * dinv[i] * acc


@njit(cache=True, nogil=True)
def solve_diffusion(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, y: np.ndarray, a: float,
                    iterations: int, tol: float) -> tuple[np.ndarray, int]:
    """Conjugate gradient on ``(I - a S) f = y``, ``S = D^-1/2 W D^-1/2`` (isolated nodes: ``S`` row 0).

    Stops after ``iterations`` steps or when ``|r| <= tol |y|``. Returns ``f`` and the steps taken.
    """
    n = y.shape[0]
    deg = np.zeros(n)
    for i in range(n):
        for t in range(indptr[i], indptr[i + 1]):
            deg[i] += data[t]
    dinv = np.zeros(n)
    for i in range(n):
        if deg[i] > 0.0:
            dinv[i] = 1.0 / np.sqrt(deg[i])
    scaled = np.empty(data.shape[0])
    for t in range(data.shape[0]):
        scaled[t] = data[t] * dinv[indices[t]]
    f = np.zeros(n)
    r = y.copy()
    p = r.copy()
    ap = np.empty(n)
    rr = float(np.dot(r, r))
    stop = (tol * tol) * rr
    steps = 0
    while steps < iterations and rr > stop and rr > 0.0:
        _matvec(indptr, indices, scaled, dinv, a, p, ap)
        step = rr / float(np.dot(p, ap))
        f += step * p
        r -= step * ap
        rr_new = float(np.dot(r, r))
        p = r + (rr_new / rr) * p
        rr = rr_new
        steps += 1
    return f, steps


@njit(cache=True, nogil=True)
def diffuse_rows(lo: int, hi: int, cand: np.ndarray, cand_sim: np.ndarray, nbr: np.ndarray, nbr_sim: np.ndarray,
                 n_seeds: int, gamma: float, a: float, iterations: int, tol: float, out_ids: np.ndarray,
                 out_n: np.ndarray, out_steps: np.ndarray) -> None:
    """Rows ``lo..hi`` of ``cand`` (nq, C): diffusion ranking of candidates + neighbours into ``out_ids``.

    The seed of row ``q`` is ``y_c = max(cand_sim[q, c], 0) ** gamma`` on its first ``n_seeds``
    candidates; nodes are ranked by ``f`` (ties: order of entry, candidates first in HNSW order).
    """
    slot = np.full(nbr.shape[0], -1, dtype=np.int64)
    for q in range(lo, hi):
        nodes = _gather_into(cand[q], nbr, slot)
        n = nodes.shape[0]
        indptr, indices, data = _affinity(nodes, slot, nbr, nbr_sim, gamma)
        _release(nodes, slot)
        y = np.zeros(n)
        c_valid = 0
        for c in range(cand.shape[1]):
            if cand[q, c] >= 0:
                if c_valid < n_seeds:
                    y[c_valid] = max(float(cand_sim[q, c]), 0.0) ** gamma
                c_valid += 1
        f, steps = solve_diffusion(indptr, indices, data, y, a, iterations, tol)
        order = np.argsort(-f, kind="mergesort")
        for i in range(n):
            out_ids[q, i] = nodes[order[i]]
        out_n[q] = n
        out_steps[q] = steps


@njit(cache=True, nogil=True)
def merge_rows(lo: int, hi: int, diff_ids: np.ndarray, diff_n: np.ndarray, tail: np.ndarray, tail_dist: np.ndarray,
               queries: np.ndarray, vectors: np.ndarray, l2: bool, out_ids: np.ndarray,
               out_dist: np.ndarray) -> None:
    """Rows ``lo..hi``: the diffusion list, then the HNSW ``tail`` items not in it, cut at ``k``.

    Distances are the index distances to the query (``1 - dot`` or squared L2 from
    ``vectors``, the HNSW distance for tail items).
    """
    k = out_ids.shape[1]
    d = vectors.shape[1]
    for q in range(lo, hi):
        n = diff_n[q]
        take = min(n, k)
        for i in range(take):
            v = diff_ids[q, i]
            out_ids[q, i] = v
            acc = 0.0
            if l2:
                for t in range(d):
                    diff = float(queries[q, t]) - float(vectors[v, t])
                    acc += diff * diff
                out_dist[q, i] = acc
            else:
                for t in range(d):
                    acc += float(queries[q, t]) * float(vectors[v, t])
                out_dist[q, i] = 1.0 - acc
        if take == k:
            continue
        seen = np.sort(diff_ids[q, :n])
        pos = take
        for j in range(tail.shape[1]):
            if pos >= k:
                break
            v = tail[q, j]
            if v < 0:
                continue
            p = np.searchsorted(seen, v)
            if p < n and seen[p] == v:
                continue
            out_ids[q, pos] = v
            out_dist[q, pos] = tail_dist[q, j]
            pos += 1


@njit(cache=True, nogil=True)
def diffusion_values(lo: int, hi: int, seeds: np.ndarray, seed_sim: np.ndarray, nbr: np.ndarray,
                     nbr_sim: np.ndarray, gamma: float, a: float, iterations: int, tol: float, out_ids: np.ndarray,
                     out_f: np.ndarray) -> None:
    """Rows ``lo..hi`` of ``seeds`` (nq, S): the node set (seeds, then their links) and ``f / max f``.

    The seed vector is ``y_s = max(seed_sim[q, s], 0) ** gamma`` on the valid seeds (``-1`` skipped);
    ``f`` solves ``(I - a S) f = y`` (:func:`solve_diffusion`). Padding: ids -1, values 0.
    """
    slot = np.full(nbr.shape[0], -1, dtype=np.int64)
    for q in range(lo, hi):
        nodes = _gather_into(seeds[q], nbr, slot)
        n = nodes.shape[0]
        if n == 0:
            continue
        indptr, indices, data = _affinity(nodes, slot, nbr, nbr_sim, gamma)
        _release(nodes, slot)
        y = np.zeros(n)
        c = 0
        for j in range(seeds.shape[1]):
            if seeds[q, j] >= 0:
                y[c] = max(float(seed_sim[q, j]), 0.0) ** gamma
                c += 1
        f, _ = solve_diffusion(indptr, indices, data, y, a, iterations, tol)
        top = f.max()
        for i in range(n):
            out_ids[q, i] = nodes[i]
            out_f[q, i] = f[i] / top if top > 0.0 else 0.0
