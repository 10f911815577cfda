"""numba kernels of the query path: fused gather + distance + latent similarity, pool merging."""

from __future__ import annotations

import numba as nb
import numpy as np

from ruvector_hnsw.threads import run_row_chunks

METRIC_L2 = 0
METRIC_IP = 1  # 1 - dot (hnswlib "ip", and "cosine" over normalised vectors)


@nb.njit(cache=True, nogil=True, fastmath={"reassoc", "nsz", "contract"})
def score_pool(queries: np.ndarray, vectors: np.ndarray, zq: np.ndarray, latent: np.ndarray,
               pos: np.ndarray, known: np.ndarray, metric: int, alpha: float, beta: float, inv_s0: float,
               scores: np.ndarray, dist: np.ndarray, lo: int, hi: int) -> None:
    """Rows ``lo:hi``: residual score ``beta * (-dist / s0) + alpha * <zq, latent[pos]>`` and the distance.

    ``pos`` (B, P) holds table rows, -1 = empty slot (score -inf, distance +inf). ``known``
    (B, P) holds already known distances (from the HNSW search), NaN where the distance must
    be computed from the vectors. ``alpha == 0`` skips the latent term entirely. Serial and
    GIL-free: callers split rows over threads.
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
            acc = known[b, j]
            if acc != acc:  # NaN: not known yet
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


@nb.njit(cache=True, nogil=True)
def _unique_rows_kernel(pos: np.ndarray, companion: np.ndarray, invalid: np.ndarray, out_pos: np.ndarray,
                        out_comp: np.ndarray, counts: np.ndarray, lo: int, hi: int) -> None:
    for b in range(lo, hi):
        order = np.argsort(pos[b], kind="mergesort")  # stable: the leftmost duplicate comes first
        m = 0
        prev = -1
        for j in order:
            v = pos[b, j]
            if v < 0 or v == prev:
                continue
            prev = v
            if invalid.shape[0] and invalid[v]:
                continue
            out_pos[b, m] = v
            out_comp[b, m] = companion[b, j]
            m += 1
        counts[b] = m


def unique_rows(pos: np.ndarray, companion: np.ndarray, invalid: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Per row: drop duplicates and -1 (and ``invalid[pos]`` items), compact to the left.

    ``companion`` (same shape) is permuted alongside; of duplicates, the leftmost occurrence's
    companion value is kept. Returns ``(pos, companion)`` padded with -1 / NaN to the largest
    row count; kept items are in ascending ``pos`` order.
    """
    pos = np.ascontiguousarray(pos, dtype=np.int64)
    companion = np.ascontiguousarray(companion, dtype=np.float32)
    B, P = pos.shape
    out_pos = np.full((B, P), -1, dtype=np.int64)
    out_comp = np.full((B, P), np.nan, dtype=np.float32)
    counts = np.zeros(B, dtype=np.int64)
    inv = np.zeros(0, dtype=np.bool_) if invalid is None else np.ascontiguousarray(invalid, dtype=np.bool_)

    def run(lo: int, hi: int) -> None:
        _unique_rows_kernel(pos, companion, inv, out_pos, out_comp, counts, lo, hi)

    run_row_chunks(run, B, float(B) * P * 64)  # a merge sort per row: ~P log P compares plus copies
    width = max(int(counts.max()) if B else 0, 1)
    return np.ascontiguousarray(out_pos[:, :width]), np.ascontiguousarray(out_comp[:, :width])
