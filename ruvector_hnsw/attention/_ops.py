"""Python wrappers that run the numba kernels of ``_kernels`` over row chunks on threads."""

from __future__ import annotations

import numpy as np

from ruvector_hnsw.attention import _kernels as K
from ruvector_hnsw.threads import join_row_chunks, run_row_chunks

__all__ = [
    "flash_attend",
    "grouped_attend",
    "grouped_grads",
    "grouped_pattern",
    "mq_attend",
    "mq_attn_weights",
    "sd_attend",
]


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


def grouped_attend(
    Q: np.ndarray, T: np.ndarray, Vt: np.ndarray, ids: np.ndarray, group: np.ndarray, scale: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """:func:`_kernels.grouped_forward` over row chunks: ``(R (B,G,dv), W (B,n), count (B,G), ok)``.

    The chunks write into one set of outputs. Rows are independent, so the result is the same
    bit for bit at any thread count.
    """
    B, G, d = Q.shape
    n = ids.shape[1]
    dv = Vt.shape[1]
    R = np.zeros((B, G, dv), dtype=Q.dtype)
    W = np.zeros((B, n), dtype=Q.dtype)
    count = np.zeros((B, G), dtype=np.int64)
    work = float(B) * n * (d + dv)
    parts = run_row_chunks(
        lambda lo, hi: K.grouped_forward(Q[lo:hi], T, Vt, ids[lo:hi], group[lo:hi], scale, R[lo:hi], W[lo:hi],
                                         count[lo:hi]),
        B, work,
    )
    return R, W, count, all(parts)


def grouped_pattern(group: np.ndarray, W: np.ndarray, geff: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_kernels.grouped_pattern` over row chunks: ``(local, glob, comb)``, each ``(B, n)``."""
    B, n = W.shape
    loc, glob, comb = (np.empty((B, n), dtype=W.dtype) for _ in range(3))
    run_row_chunks(
        lambda lo, hi: K.grouped_pattern(group[lo:hi], W[lo:hi], geff[lo:hi], loc[lo:hi], glob[lo:hi], comb[lo:hi]),
        B, float(B) * n * 64,
    )
    return loc, glob, comb


def grouped_grads(
    Q: np.ndarray,
    T: np.ndarray,
    Vt: np.ndarray,
    ids: np.ndarray,
    group: np.ndarray,
    W: np.ndarray,
    dR: np.ndarray,
    scale: float,
    n_rows: int,
    need_table_grads: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_kernels.grouped_backward`: ``(dQ (B,G,d), dT, dV)``.

    Without table gradients the rows are independent and run in chunks on the thread pool; the
    table gradients scatter-add over every row into one table, so they are summed by one serial
    call (a split would change the order of the sums with the thread count).
    """
    if need_table_grads:
        return K.grouped_backward(Q, T, Vt, ids, group, W, dR, scale, n_rows, True)
    B, _, d = Q.shape
    n = ids.shape[1]
    work = float(B) * n * (2 * d + Vt.shape[1])
    parts = run_row_chunks(
        lambda lo, hi: K.grouped_backward(Q[lo:hi], T, Vt, ids[lo:hi], group[lo:hi], W[lo:hi], dR[lo:hi], scale,
                                          n_rows, False),
        B, work,
    )
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([p[0] for p in parts]), parts[0][1], parts[0][2]
