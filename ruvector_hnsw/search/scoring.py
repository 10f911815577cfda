"""The scorer stage and the final ranking: residual scores, sorting, the HNSW tail, labels.

The score of table row ``v`` for a query is the residual form::

    s(q, v) = beta * (-dist(q, v) / s0) + alpha * <Zq, Z[v]>

``dist`` is the index's own distance (known from the HNSW search where available, recomputed
from the stored vectors otherwise) and ``Z`` the cached codes. ``alpha = 0`` (an untrained or
calibrated-off model) ranks exactly like the index.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ruvector_hnsw.search import _kernels
from ruvector_hnsw.search import _quant_kernels as qk
from ruvector_hnsw.search.quant import CodeRows
from ruvector_hnsw.threads import run_row_chunks

__all__ = ["ResidualScorer", "append_tail", "rank", "to_labels"]


@dataclass(frozen=True)
class ResidualScorer:
    """``beta * (-dist / s0) + alpha * <zq, codes[v]>`` over pools of table rows."""

    alpha: float
    beta: float
    s0: float
    space: str

    def score(self, queries_stored: np.ndarray, vectors: np.ndarray, zq: np.ndarray | None,
              codes: np.ndarray | CodeRows, pool: np.ndarray, known: np.ndarray | None
              ) -> tuple[np.ndarray, np.ndarray]:
        """Scores and index distances ``(B, P)`` of ``pool`` (-1 = empty: -inf / +inf).

        ``codes``: the float32 code matrix or a :class:`~ruvector_hnsw.search.quant.CodeRows`
        (compact codes are read back as float32 in the kernel). ``known`` holds already known
        distances, NaN where they must be computed.
        """
        if isinstance(codes, CodeRows):
            if codes.dtype != "float32":
                return self._score_compact(queries_stored, vectors, zq, codes, pool, known)
            codes = codes.raw
        B, P = pool.shape
        scores = np.empty((B, P), dtype=np.float32)
        dist = np.empty((B, P), dtype=np.float32)
        known_arr = np.full((B, P), np.nan, dtype=np.float32) if known is None else np.ascontiguousarray(
            known, dtype=np.float32)
        use_latent = self.alpha != 0.0 and zq is not None
        latent = codes if use_latent else np.zeros((1, 1), dtype=np.float32)
        zq_arr = zq if (use_latent and zq is not None) else np.zeros((B, 1), dtype=np.float32)
        metric = _kernels.METRIC_L2 if self.space == "l2" else _kernels.METRIC_IP
        pool = np.ascontiguousarray(pool, dtype=np.int64)
        alpha = self.alpha if use_latent else 0.0
        work = float(B) * P * (latent.shape[1] + (vectors.shape[1] if known is None else 0))

        def run(lo: int, hi: int) -> None:
            _kernels.score_pool(queries_stored, vectors, zq_arr, latent, pool, known_arr, metric, alpha,
                                self.beta, 1.0 / self.s0, scores, dist, lo, hi)

        run_row_chunks(run, B, work)
        return scores, dist

    def _score_compact(self, queries_stored: np.ndarray, vectors: np.ndarray, zq: np.ndarray | None,
                       codes: CodeRows, pool: np.ndarray, known: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        B, P = pool.shape
        scores = np.empty((B, P), dtype=np.float32)
        dist = np.empty((B, P), dtype=np.float32)
        known_arr = np.full((B, P), np.nan, dtype=np.float32) if known is None else np.ascontiguousarray(
            known, dtype=np.float32)
        use_latent = self.alpha != 0.0 and zq is not None
        data, scale, lut, half = codes.kernel_args()
        zq_arr = np.ascontiguousarray(zq, dtype=np.float32) if (use_latent and zq is not None) else np.zeros(
            (B, data.shape[1]), dtype=np.float32)
        metric = _kernels.METRIC_L2 if self.space == "l2" else _kernels.METRIC_IP
        pool = np.ascontiguousarray(pool, dtype=np.int64)
        alpha = self.alpha if use_latent else 0.0
        work = float(B) * P * (data.shape[1] + (vectors.shape[1] if known is None else 0))

        def run(lo: int, hi: int) -> None:
            qk.score_pool(queries_stored, vectors, zq_arr, data, scale, lut, half, pool, known_arr, metric, alpha,
                          self.beta, 1.0 / self.s0, scores, dist, lo, hi)

        run_row_chunks(run, B, work)
        return scores, dist


def rank(pool: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``pool`` and ``scores`` sorted by descending score (stable: ties keep pool order)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(pool, order, axis=1), np.take_along_axis(scores, order, axis=1)


def append_tail(hnsw_rows: np.ndarray, pool: np.ndarray, scores: np.ndarray, k: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Fill ranked ``pool`` up to ``k`` with the HNSW ranking's unseen rows, scored below every item."""
    need = k - pool.shape[1]
    if need <= 0:
        return pool, scores
    B = hnsw_rows.shape[0]
    tail = np.full((B, need), -1, dtype=np.int64)
    tail_s = np.full((B, need), -np.inf, dtype=np.float32)
    floor = np.where(np.isfinite(scores), scores, np.inf).min(axis=1) if scores.shape[1] else np.zeros(B)
    floor = np.where(np.isfinite(floor), floor, 0.0)
    for b in range(B):
        seen = pool[b][pool[b] >= 0]
        row = hnsw_rows[b]
        rest = row[(row >= 0) & ~np.isin(row, seen)][:need]
        tail[b, : rest.shape[0]] = rest
        tail_s[b, : rest.shape[0]] = floor[b] - 1.0 - np.arange(rest.shape[0], dtype=np.float32)
    return np.concatenate([pool, tail], axis=1), np.concatenate([scores, tail_s], axis=1)


def to_labels(rows: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Table rows -> labels (-1 stays -1); scores of padding become -inf."""
    ids = np.where(rows >= 0, labels[np.maximum(rows, 0)], -1).astype(np.int64)
    return ids, np.where(rows >= 0, scores, -np.inf).astype(np.float32)
