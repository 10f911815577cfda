"""Score smoothing over the graph for the queries served without the label term.

Two training-free operators, whose weights :func:`ruvector_hnsw.search.training.fit` learns on
classes the encoder never saw (each 0 = off), re-score a query's pool after the diffusion stage:

- **DBA** (database-side augmentation): every item's vector averaged with its :data:`DBA_LINKS`
  nearest layer-0 links (alpha-QE weights, exponent :data:`DBA_ALPHA`; see
  :func:`~ruvector_hnsw.search.expansion.expand_vectors`). The distance term moves towards the
  augmented vectors ``v~``::

      s += dba * (d(q, v) - d(q, v~)) / s0

- **Query expansion in the score space**: the query is expanded by its ``qe_top`` best items
  (ranked with the DBA term),
  ``q' = q + qe * mean(top)``, in both parts of the residual score (the distance part over the
  vectors the ranking reads, the augmented ones when DBA is on, the latent part over the codes)::

      s += qe * (beta * (-d(mean x_top, v) / s0) + alpha * <mean z_top, z_v>)

  For ``cosine`` and ``ip`` the score is linear in the query, so this is exactly the mean of the
  top items' own scores of ``v``; for ``l2`` it differs from that mean by a constant per query,
  which leaves the ranking unchanged.

Both only re-rank the pool: no item joins it.
"""

from __future__ import annotations

import numpy as np

from ruvector_hnsw.search.quant import CodeRows
from ruvector_hnsw.search.scoring import ResidualScorer

__all__ = ["DBA_ALPHA", "DBA_LINKS", "dba_term", "expanded_query", "qe_term", "smooth_scores"]

#: layer-0 links averaged into an item's augmented vector, and the exponent of their weights
DBA_LINKS = 10
DBA_ALPHA = 3.0


def expanded_query(pool: np.ndarray, scores: np.ndarray, vectors: np.ndarray, codes: CodeRows | None, top: int
                   ) -> tuple[np.ndarray, np.ndarray | None]:
    """Mean vector ``(B, d)`` and mean code ``(B, width)`` (None without codes) of each query's ``top`` best items.

    Padding (-1 or -inf scores) is left out of the means; a query with no item gets zeros.
    """
    n = max(1, min(int(top), pool.shape[1]))
    order = np.argsort(-scores, axis=1, kind="stable")[:, :n]
    rows = np.take_along_axis(pool, order, axis=1)
    ok = (rows >= 0) & np.isfinite(np.take_along_axis(scores, order, axis=1))
    w = ok / np.maximum(ok.sum(axis=1, keepdims=True), 1)
    safe = np.where(ok, rows, 0)
    xbar = np.einsum("bn,bnd->bd", w, vectors[safe]).astype(np.float32)
    zbar = None if codes is None else np.einsum("bn,bnd->bd", w, codes[safe]).astype(np.float32)
    return np.ascontiguousarray(xbar), (None if zbar is None else np.ascontiguousarray(zbar))


def dba_term(scorer: ResidualScorer, stored: np.ndarray, augmented: np.ndarray, codes: CodeRows, pool: np.ndarray,
             dist: np.ndarray) -> np.ndarray:
    """``beta * (d(q, v) - d(q, v~)) / s0`` over the pool (0 on padding): the DBA term at weight 1."""
    plain = ResidualScorer(alpha=0.0, beta=1.0, s0=scorer.s0, space=scorer.space)
    _, dist_aug = plain.score(stored, augmented, None, codes, pool, None)
    gap = np.zeros(pool.shape, dtype=np.float32)
    np.subtract(dist, dist_aug, out=gap, where=pool >= 0)
    return (np.float32(scorer.beta / scorer.s0) * gap).astype(np.float32)


def qe_term(scorer: ResidualScorer, read: np.ndarray, codes: CodeRows, pool: np.ndarray, scores: np.ndarray,
            top: int) -> np.ndarray:
    """The expanded query's residual score of every pool item at weight 1 (0 on padding).

    ``read`` are the vectors the distance part reads (the augmented ones when DBA is on); the
    ``top`` best items by ``scores`` expand the query.
    """
    latent = codes if scorer.alpha != 0.0 else None
    xbar, zbar = expanded_query(pool, scores, read, latent, top)
    s_exp, _ = scorer.score(xbar, read, zbar, codes, pool, None)
    return np.where(pool >= 0, s_exp, 0.0).astype(np.float32)


def smooth_scores(scorer: ResidualScorer, stored: np.ndarray, vectors: np.ndarray, augmented: np.ndarray | None,
                  codes: CodeRows, pool: np.ndarray, dist: np.ndarray, scores: np.ndarray, dba: float, qe: float,
                  qe_top: int) -> np.ndarray:
    """``scores`` of ``pool`` with the DBA term (weight ``dba``) and the score-space QE (``qe``, ``qe_top`` items).

    ``scorer`` carries the latent weight ``alpha`` and ``beta`` the queries were scored with,
    ``dist`` the index distances of the pool, ``augmented`` the DBA vectors (needed when
    ``dba > 0``). Padding stays ``-inf``.
    """
    out = scores.astype(np.float32, copy=True)
    read = vectors
    if dba > 0.0:
        assert augmented is not None
        out += np.float32(dba) * dba_term(scorer, stored, augmented, codes, pool, dist)
        read = augmented
    if qe > 0.0:
        out += np.float32(qe) * qe_term(scorer, read, codes, pool, np.where(pool >= 0, out, -np.inf), qe_top)
    return np.where(pool >= 0, out, -np.inf).astype(np.float32)
