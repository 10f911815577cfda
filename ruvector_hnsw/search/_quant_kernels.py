"""numba kernels over compact codes (float16 as uint16 bit patterns, or int8 + per-row scale).

Every kernel reads a code row through :func:`_sim`: ``<zq[b], codes[v]>`` accumulated in float32
over the float32 value of each stored entry, times the row's scale for int8. A float16 entry is
decoded arithmetically, exactly (``mantissa * 2**exponent`` by integer shifts, which vectorise;
finite values only - codes never hold inf/NaN); numba has no float16 type. ``lut`` (the float16
power table of :func:`~ruvector_hnsw.search.quant.half_table`) is passed along for reference
decoders and is not read by :func:`_sim`. Serial and GIL-free:
callers split query rows over threads (each query's result depends on that query alone).
"""

from __future__ import annotations

import numba as nb
import numpy as np

_FM = {"reassoc", "nsz", "contract"}


@nb.njit(cache=True, nogil=True, inline="always", fastmath=_FM)
def _sim(zq: np.ndarray, b: int, codes: np.ndarray, scale: np.ndarray, lut: np.ndarray, half: bool,
         v: int) -> np.float32:
    p = codes.shape[1]
    acc = np.float32(0.0)
    if half:
        for t in range(p):
            h = np.int32(codes[v, t])
            e = (h >> 10) & 31
            normal = (e + 31) >> 5  # 1 for a normal number (e > 0), 0 for zero / subnormal
            mant = (h & 1023) + normal * 1024  # the implicit leading 1 of normal numbers
            # mant * 2 ** (max(e, 1) - 25), exact: an 11-bit integer times powers of two
            val = np.float32(mant * (np.int32(1) << (e + 1 - normal))) * np.float32(2.0**-25)
            acc += zq[b, t] * (val - np.float32(2.0) * val * np.float32((h >> 15) & 1))
    else:
        for t in range(p):
            acc += zq[b, t] * np.float32(codes[v, t])
    if scale.shape[0]:
        acc *= scale[v]
    return acc


@nb.njit(cache=True, nogil=True, fastmath=_FM)
def pair_sims(zq: np.ndarray, codes: np.ndarray, scale: np.ndarray, lut: np.ndarray, half: bool,
              cand: np.ndarray, out: np.ndarray, lo: int, hi: int) -> None:
    """``out[b, j] = <zq[b], codes[cand[b, j]]>`` for rows ``lo:hi`` (-inf where ``cand < 0``)."""
    for b in range(lo, hi):
        for j in range(cand.shape[1]):
            v = cand[b, j]
            out[b, j] = -np.inf if v < 0 else _sim(zq, b, codes, scale, lut, half, v)


@nb.njit(cache=True, nogil=True, fastmath=_FM)
def exact_topk(zq: np.ndarray, codes: np.ndarray, scale: np.ndarray, lut: np.ndarray, half: bool,
               rows: np.ndarray, out: np.ndarray, lo: int, hi: int) -> None:
    """``out[b]``: the ``out.shape[1]`` of ``rows`` with the largest inner product, best first (-1 padded).

    Ties keep the order of ``rows``.
    """
    m = rows.shape[0]
    k = min(out.shape[1], m)
    sims = np.empty(m, dtype=np.float32)
    for b in range(lo, hi):
        for i in range(m):
            sims[i] = -_sim(zq, b, codes, scale, lut, half, rows[i])
        order = np.argsort(sims, kind="mergesort")
        for j in range(k):
            out[b, j] = rows[order[j]]
        for j in range(k, out.shape[1]):
            out[b, j] = -1


@nb.njit(cache=True, nogil=True, fastmath=_FM)
def graph_search(zq: np.ndarray, codes: np.ndarray, scale: np.ndarray, lut: np.ndarray, half: bool,
                 l0_ptr: np.ndarray, l0_idx: np.ndarray, up_nodes: np.ndarray, up_first: np.ndarray,
                 up_ptr: np.ndarray, up_idx: np.ndarray, entry: int, max_level: int, ef: int,
                 out: np.ndarray, lo: int, hi: int) -> None:
    """HNSW search (largest inner product) over link arrays, reading the compact codes.

    Greedy descent from ``entry`` through layers ``max_level .. 1``, then a best-first beam of
    width ``ef`` on layer 0; ``out[b]`` gets the best ``out.shape[1]`` rows found (-1 padded).
    Layer ``l >= 1`` links of upper node ``up_nodes[i]`` (sorted) are
    ``up_idx[up_ptr[p]:up_ptr[p + 1]]`` with ``p = up_first[i] + l - 1``.
    """
    n = l0_ptr.shape[0] - 1
    fetch = out.shape[1]
    visited = np.zeros(n, dtype=np.int32)
    res_s = np.empty(ef, dtype=np.float32)
    res_v = np.empty(ef, dtype=np.int64)
    done = np.zeros(ef, dtype=np.bool_)
    tag = 0
    for b in range(lo, hi):
        for j in range(fetch):
            out[b, j] = -1
        if n == 0 or entry < 0:
            continue
        tag += 1
        cur = entry
        cur_s = _sim(zq, b, codes, scale, lut, half, cur)
        for layer in range(max_level, 0, -1):
            changed = True
            while changed:
                changed = False
                i = np.searchsorted(up_nodes, cur)
                p = up_first[i] + layer - 1
                for e in range(up_ptr[p], up_ptr[p + 1]):
                    v = up_idx[e]
                    s = _sim(zq, b, codes, scale, lut, half, v)
                    if s > cur_s:
                        cur_s = s
                        cur = v
                        changed = True
        m = 1
        res_s[0] = cur_s
        res_v[0] = cur
        done[0] = False
        visited[cur] = tag
        while True:
            j = -1
            for t in range(m):  # results are sorted: the first unexpanded one is the best candidate
                if not done[t]:
                    j = t
                    break
            if j < 0:
                break
            done[j] = True
            u = res_v[j]
            for e in range(l0_ptr[u], l0_ptr[u + 1]):
                v = l0_idx[e]
                if visited[v] == tag:
                    continue
                visited[v] = tag
                s = _sim(zq, b, codes, scale, lut, half, v)
                if m == ef and s <= res_s[m - 1]:
                    continue
                at = m if m < ef else ef - 1
                while at > 0 and res_s[at - 1] < s:  # insertion after equal scores
                    if at < ef:
                        res_s[at] = res_s[at - 1]
                        res_v[at] = res_v[at - 1]
                        done[at] = done[at - 1]
                    at -= 1
                res_s[at] = s
                res_v[at] = v
                done[at] = False
                if m < ef:
                    m += 1
        for t in range(min(fetch, m)):
            out[b, t] = res_v[t]


@nb.njit(cache=True, nogil=True, fastmath=_FM)
def score_pool(queries: np.ndarray, vectors: np.ndarray, zq: np.ndarray, codes: np.ndarray, scale: np.ndarray,
               lut: np.ndarray, half: bool, pos: np.ndarray, known: np.ndarray, metric: int, alpha: float,
               beta: float, inv_s0: float, scores: np.ndarray, dist: np.ndarray, lo: int, hi: int) -> None:
    """:func:`ruvector_hnsw.search._kernels.score_pool` with the latent term read from compact codes."""
    P = pos.shape[1]
    d = vectors.shape[1]
    for b in range(lo, hi):
        for j in range(P):
            v = pos[b, j]
            if v < 0:
                scores[b, j] = -np.inf
                dist[b, j] = np.inf
                continue
            acc = known[b, j]
            if acc != acc:  # NaN: not known yet
                acc = 0.0
                if metric == 0:
                    for t in range(d):
                        diff = queries[b, t] - vectors[v, t]
                        acc += diff * diff
                else:
                    for t in range(d):
                        acc += queries[b, t] * vectors[v, t]
                    acc = 1.0 - acc
            s = -beta * acc * inv_s0
            if alpha != 0.0:
                s += alpha * _sim(zq, b, codes, scale, lut, half, v)
            scores[b, j] = s
            dist[b, j] = acc
