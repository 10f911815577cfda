"""Flash attention: tiled online softmax, equal to scaled_dot, never materialising the score matrix."""

from __future__ import annotations

from typing import Any

import numpy as np

from ruvector_hnsw.attention._kernels import mq_backward, weights_from_lse
from ruvector_hnsw.attention._ops import flash_attend
from ruvector_hnsw.attention.base import (
    AttentionBatch,
    AttentionMechanism,
    ForwardResult,
    as_float_array,
    check_mask,
    check_positive_float,
    check_positive_int,
)
from ruvector_hnsw.errors import DimensionMismatchError, EmptyInputError, ShapeMismatchError

__all__ = ["FlashAttention"]


class FlashAttention(AttentionMechanism):
    """Scaled dot-product attention computed by a tiled online softmax.

    ``forward`` visits each row's items in tiles of ``block_size``, keeping only a running max,
    a running sum and the partial read-out (equal to ``scaled_dot`` to float rounding). It stores
    the per-row log-sum-exp, not the weights; ``backward`` (and ``cache.weights``, at each
    access) recomputes the weights from it.
    :meth:`attend_all` is the many-queries x many-keys form (one key set shared by all queries)
    that never materialises the ``Q x N`` score matrix.

    Parameters
    ----------
    dim : int
    temperature : float, default 1.0
    block_size : int, default 64
        Key tile of the batched kernel.
    dtype, seed
        See :class:`~ruvector_hnsw.attention.base.AttentionMechanism`.
    """

    name = "flash"
    fused_gather = True
    checks_table_rows = True

    def __init__(
        self,
        dim: int,
        *,
        temperature: float = 1.0,
        block_size: int = 64,
        dtype: Any = np.float32,
        seed: int | None = None,
    ) -> None:
        super().__init__(dim, dtype=dtype, seed=seed)
        self.temperature = check_positive_float(temperature, "temperature")
        self.block_size = check_positive_int(block_size, "block_size")

    @property
    def scale(self) -> float:
        """Score factor ``1 / (sqrt(d) * temperature)``."""
        return float(1.0 / (np.sqrt(self.dim) * self.temperature))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "temperature": self.temperature, "block_size": self.block_size}

    def _forward(self, batch: AttentionBatch) -> ForwardResult:
        T, Vt, ids = batch.table_form()
        assert Vt is not None
        out, lse, ok = flash_attend(batch.query, T, Vt, ids, batch.mask, self.scale, self.block_size)
        if not ok:
            self._raise_nonfinite_rows()
        scale = self.scale

        def weights() -> np.ndarray:
            W: np.ndarray = weights_from_lse(batch.query, T, ids, batch.mask, scale, lse)[:, 0, :]
            return W

        return ForwardResult(out, (batch, lse), weights=weights)

    def _weights(self, batch: AttentionBatch) -> np.ndarray:
        T, _, ids = batch.table_form()
        return self._softmax_weights(batch.query, T, ids, batch.mask, self.scale)

    def _backward(self, grad_out: np.ndarray, data: Any, input_grads: bool) -> dict[str, np.ndarray]:
        batch, lse = data
        T, Vt, ids = batch.table_form()
        assert Vt is not None
        Q = batch.query[:, None, :]
        W = weights_from_lse(batch.query, T, ids, batch.mask, self.scale, lse)
        dQ, dT, dV = mq_backward(
            Q, T, Vt, ids, ids, batch.mask, W, grad_out[:, None, :], self.scale, T.shape[0], Vt.shape[0],
            input_grads,
        )
        return {"query": dQ[:, 0, :], **self._input_grad_entries(batch, dT, dV, input_grads)}

    # ------------------------------------------------------------------------------------------
    def attend_all(
        self,
        queries: Any,
        keys: Any,
        values: Any,
        key_mask: Any = None,
        *,
        block_q: int = 128,
        block_k: int = 512,
    ) -> np.ndarray:
        """Every query attends over the same ``N`` keys: ``softmax(Q K^T * scale) V`` in tiles.

        Memory beyond inputs and output is ``O(block_q * block_k + block_q * dv)``: the
        ``Q x N`` score matrix is never built. Tiles use BLAS; a tile whose scores overflow the
        working dtype is recomputed in float64. Not part of the backward cache.

        Parameters
        ----------
        queries : (M, d)
        keys : (N, d)
        values : (N, dv)
        key_mask : (N,) bool, optional
            Keys to attend (``True``); with no attended key every output row is zero.
        block_q, block_k : int
            Tile sizes.

        Returns
        -------
        ndarray (M, dv)
        """
        dt = self.dtype
        Q = as_float_array(queries, "queries", dt, (2,))
        K = as_float_array(keys, "keys", dt, (2,))
        V = as_float_array(values, "values", dt, (2,))
        bq = check_positive_int(block_q, "block_q")
        bk = check_positive_int(block_k, "block_k")
        M, d = Q.shape
        N = K.shape[0]
        if d != self.dim or K.shape[1] != self.dim:
            raise DimensionMismatchError(
                f"flash.attend_all: queries/keys have dimensions {d}/{K.shape[1]}, expected {self.dim}"
            )
        if V.shape[0] != N:
            raise ShapeMismatchError(f"values have {V.shape[0]} rows, keys have {N}")
        if M == 0 or N == 0:
            raise EmptyInputError("attend_all needs at least one query and one key")
        km = None if key_mask is None else check_mask(key_mask, (N,), "key_mask")
        dv = V.shape[1]
        scale = self.scale
        out = np.zeros((M, dv), dtype=dt)
        S = np.empty((min(bq, M), min(bk, N)), dtype=dt)
        acc = np.empty((min(bq, M), dv), dtype=np.float64)
        mrun = np.empty(min(bq, M), dtype=np.float64)
        lrun = np.empty(min(bq, M), dtype=np.float64)
        for q0 in range(0, M, bq):
            q1 = min(q0 + bq, M)
            nq = q1 - q0
            Qb = Q[q0:q1] * dt.type(scale)
            a, m, ls = acc[:nq], mrun[:nq], lrun[:nq]
            a[...] = 0.0
            m[...] = -np.inf
            ls[...] = 0.0
            for k0 in range(0, N, bk):
                k1 = min(k0 + bk, N)
                Sb = S[:nq, : k1 - k0]
                with np.errstate(over="ignore", invalid="ignore"):
                    np.matmul(Qb, K[k0:k1].T, out=Sb)
                Sw: np.ndarray = Sb
                if not np.isfinite(Sb).all():  # float32 overflow: redo this tile in float64
                    Sw = (Q[q0:q1].astype(np.float64) * scale) @ K[k0:k1].T.astype(np.float64)
                if km is not None:
                    Sw[:, ~km[k0:k1]] = -np.inf
                bm = Sw.max(axis=1)
                new_m = np.maximum(m, bm)
                live = new_m > -np.inf
                f = np.zeros(nq)
                np.subtract(m, new_m, out=f, where=live)
                np.exp(f, out=f, where=live)
                Sw -= np.where(live, new_m, 0.0)[:, None].astype(Sw.dtype)
                np.exp(Sw, out=Sw)
                ls *= f
                ls += Sw.sum(axis=1, dtype=np.float64)
                a *= f[:, None]
                a += Sw @ V[k0:k1]
                m[...] = new_m
            nz = ls > 0
            out[q0:q1][nz] = a[nz] / ls[nz, None]
        return out
