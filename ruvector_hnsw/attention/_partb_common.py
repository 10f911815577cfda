"""Small numpy helpers shared by the edge_featured / hyperbolic / moe / dual_space mechanisms."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ruvector_hnsw.attention.base import AttentionBatch


def masked_softmax(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Softmax over the last axis restricted to ``mask``; fully masked rows give all zeros."""
    s = np.where(mask, scores, -np.inf)
    smax = np.max(s, axis=-1, keepdims=True)
    smax = np.where(np.isfinite(smax), smax, 0.0)
    e = np.where(mask, np.exp(s - smax), 0.0)
    tot = np.sum(e, axis=-1, keepdims=True)
    return (e / np.where(tot > 0, tot, 1.0)).astype(scores.dtype, copy=False)


def softmax_backward(w: np.ndarray, dw: np.ndarray) -> np.ndarray:
    """Gradient of the scores given the weights ``w`` and the weight cotangent ``dw`` (masked -> 0)."""
    return w * (dw - np.sum(w * dw, axis=-1, keepdims=True))


def dense_ids(mask: np.ndarray) -> np.ndarray:
    """Gather ids addressing a ``(B*n, .)`` reshape of dense ``(B, n, .)`` keys; masked slots ``-1``."""
    B, n = mask.shape
    ids = np.arange(B * n, dtype=np.int64).reshape(B, n)
    return np.ascontiguousarray(np.where(mask, ids, -1))


def fused_tables(batch: AttentionBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Key table, value table (the keys when no values were given) and ids, masked slots ``-1``.

    The input of the fused kernels that mark masked slots by a negative id: the caller's tables
    in the gather form, the ``(B*n, .)`` reshapes with :func:`dense_ids` in the dense form.
    """
    if batch.ids is not None:
        ids = np.ascontiguousarray(np.where(batch.mask, batch.ids, -1))
        return batch.keys, batch.values if batch.values is not None else batch.keys, ids
    B, n, d = batch.keys.shape
    kt = batch.keys.reshape(B * n, d)
    vt = kt if batch.values is None else batch.values.reshape(B * n, batch.values.shape[2])
    return kt, vt, dense_ids(batch.mask)
