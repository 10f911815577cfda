"""numba kernels of the query path: fused gather + distance + latent similarity, pool merging."""

from __future__ import annotations

import numba as nb
import numpy as np

METRIC_L2 = 0
METRIC_IP = 1  # 1 - dot (hnswlib "ip", and "cosine" over normalised vectors)


@nb.njit(cache=True, nogil=True, fastmath={"reassoc", "nsz", "contract"})
def score_pool(queries: np.ndarray, vectors: np.ndarray, zq: np.ndarray, latent: np.ndarray,
               pos: np.ndarray, metric: int, alpha: float, beta: float, inv_s0: float,
               scores: np.ndarray, dist: np.ndarray, lo: int, hi: int) -> None:
    """Rows ``lo:hi``: residual score ``beta * (-dist / s0) + alpha * <zq, latent[pos]>`` and the distance.

    ``pos`` (B, P) holds table rows, -1 = empty slot (score -inf, distance +inf).
    ``alpha == 0`` skips the latent term entirely. Serial and GIL-free: callers split rows
    over threads.
    """
    P = pos.shape[1]
    d = vectors.shape[1]
    p = latent.shape[1]
    for b in range(lo, hi):
        for j in range(P):
            v = pos[b, j]
            if v < 0:
                scores[b, j] = -np.inf
                dist[b, j] = np.inf
                continue
            acc = 0.0
            if metric == METRIC_L2:
                for t in range(d):
                    diff = queries[b, t] - vectors[v, t]
                    acc += diff * diff
            else:
                for t in range(d):
                    acc += queries[b, t] * vectors[v, t]
                acc = 1.0 - acc
            s = -beta * acc * inv_s0
            if alpha != 0.0:
                sim = 0.0
                for t in range(p):
                    sim += zq[b, t] * latent[v, t]
                s += alpha * sim
            scores[b, j] = s
            dist[b, j] = acc


def unique_rows(pos: np.ndarray, invalid: np.ndarray | None = None) -> np.ndarray:
    """Per row: drop duplicates and -1 (and rows' ``invalid[pos]`` items), compact to the left.

    Returns a (B, P') int64 array padded with -1, P' = the largest row count.
    """
    s = np.sort(pos, axis=1)
    dup = np.zeros_like(s, dtype=bool)
    dup[:, 1:] = s[:, 1:] == s[:, :-1]
    drop = dup | (s < 0)
    if invalid is not None:
        drop |= invalid[np.maximum(s, 0)] & (s >= 0)
    s[drop] = -1
    # move kept items to the front: sort by (dropped, value)
    order = np.argsort(drop, axis=1, kind="stable")
    s = np.take_along_axis(s, order, axis=1)
    width = int((~drop).sum(axis=1).max()) if s.size else 0
    return np.ascontiguousarray(s[:, : max(width, 1)])
