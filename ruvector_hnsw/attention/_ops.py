"""Python wrappers that run the numba kernels of ``_kernels`` over row chunks on threads."""

from __future__ import annotations

import numpy as np

from ruvector_hnsw.attention import _kernels as K
from ruvector_hnsw.threads import join_row_chunks, run_row_chunks

__all__ = ["flash_attend", "mq_attend", "mq_attn_weights", "sd_attend"]


def mq_attend(
    Q: np.ndarray,
    T: np.ndarray,
    Vt: np.ndarray,
    ids: np.ndarray,
    mask: np.ndarray,
    scale: float,
    vids: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """:func:`_kernels.mq_forward` over row chunks: ``(R (B,H,dv), W (B,H,n), ok)``.

    ``vids`` (value-row ids) default to ``ids``.
    """
    vi = ids if vids is None else vids
    B, H, d = Q.shape
    n = ids.shape[1]
    work = float(B) * n * H * (d + Vt.shape[1])
    parts = run_row_chunks(
        lambda lo, hi: K.mq_forward(Q[lo:hi], T, Vt, ids[lo:hi], vi[lo:hi], mask[lo:hi], scale), B, work
    )
    return join_row_chunks(parts)


def mq_attn_weights(
    Q: np.ndarray, T: np.ndarray, ids: np.ndarray, mask: np.ndarray, scale: float
) -> tuple[np.ndarray, bool]:
    """:func:`_kernels.mq_weights` over row chunks: ``(W (B,H,n), ok)``."""
    B, H, d = Q.shape
    n = ids.shape[1]
    parts = run_row_chunks(lambda lo, hi: K.mq_weights(Q[lo:hi], T, ids[lo:hi], mask[lo:hi], scale), B, B * n * H * d)
    return join_row_chunks(parts)


def flash_attend(
    Q: np.ndarray, T: np.ndarray, Vt: np.ndarray, ids: np.ndarray, mask: np.ndarray, scale: float, block: int
) -> tuple[np.ndarray, np.ndarray, bool]:
    """:func:`_kernels.flash_forward` over row chunks: ``(out (B,dv), lse (B,), ok)``."""
    B, d = Q.shape
    n = ids.shape[1]
    work = float(B) * n * (d + Vt.shape[1])
    parts = run_row_chunks(
        lambda lo, hi: K.flash_forward(Q[lo:hi], T, Vt, ids[lo:hi], mask[lo:hi], scale, block), B, work
    )
    return join_row_chunks(parts)


def sd_attend(
    Q: np.ndarray,
    T: np.ndarray,
    Vt: np.ndarray,
    ids: np.ndarray,
    mask: np.ndarray,
    scale: float,
    vids: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """:func:`_kernels.sd_forward` (one query per row) over row chunks: ``(R (B,dv), W (B,n), ok)``."""
    B, d = Q.shape
    n = ids.shape[1]
    vi = ids if vids is None else vids
    work = float(B) * n * (d + Vt.shape[1])
    parts = run_row_chunks(
        lambda lo, hi: K.sd_forward(Q[lo:hi], T, Vt, ids[lo:hi], vi[lo:hi], mask[lo:hi], scale), B, work
    )
    return join_row_chunks(parts)
