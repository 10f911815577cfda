"""Scaled dot-product attention: ``softmax(q.k / sqrt(d) / temperature) v`` over the mask."""

from __future__ import annotations

from typing import Any

import numpy as np

from ruvector_hnsw.attention._kernels import mq_backward
from ruvector_hnsw.attention._ops import sd_attend
from ruvector_hnsw.attention.base import (
    AttentionBatch,
    AttentionMechanism,
    ForwardResult,
    check_positive_float,
)

__all__ = ["ScaledDotAttention"]


class ScaledDotAttention(AttentionMechanism):
    """Scaled dot-product attention (no trainable params; backward gives input gradients).

    ``out = sum_j softmax_j(q.k_j / (sqrt(d) * temperature)) v_j`` over the attended items;
    output width = value width. Fully masked row: zero weights, zero output.
    Gathers table rows by ``ids`` inside the kernel (``fused_gather``) and checks only the rows
    it reads for NaN/inf.

    Parameters
    ----------
    dim : int
        Query/key dimension ``d``.
    temperature : float, default 1.0
        Softmax temperature (> 0).
    dtype, seed
        See :class:`~ruvector_hnsw.attention.base.AttentionMechanism`.
    """

    name = "scaled_dot"
    fused_gather = True
    checks_table_rows = True

    def __init__(
        self, dim: int, *, temperature: float = 1.0, dtype: Any = np.float32, seed: int | None = None
    ) -> None:
        super().__init__(dim, dtype=dtype, seed=seed)
        self.temperature = check_positive_float(temperature, "temperature")

    @property
    def scale(self) -> float:
        """The factor applied to ``q.k``: ``1 / (sqrt(d) * temperature)``."""
        return float(1.0 / (np.sqrt(self.dim) * self.temperature))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "temperature": self.temperature}

    def _forward(self, batch: AttentionBatch) -> ForwardResult:
        T, Vt, ids = batch.table_form()
        assert Vt is not None
        R, W, ok = sd_attend(batch.query, T, Vt, ids, batch.mask, self.scale)
        if not ok:
            self._raise_nonfinite_rows()
        return ForwardResult(R, (batch, W[:, None, :]), weights=W)

    def _weights(self, batch: AttentionBatch) -> np.ndarray:
        T, _, ids = batch.table_form()
        return self._softmax_weights(batch.query, T, ids, batch.mask, self.scale)

    def _backward(self, grad_out: np.ndarray, data: Any, input_grads: bool) -> dict[str, np.ndarray]:
        batch, W = data
        T, Vt, ids = batch.table_form()
        assert Vt is not None
        dQ, dT, dV = mq_backward(
            batch.query[:, None, :], T, Vt, ids, ids, batch.mask, W, grad_out[:, None, :], self.scale,
            T.shape[0], Vt.shape[0], input_grads,
        )
        return {"query": dQ[:, 0, :], **self._input_grad_entries(batch, dT, dV, input_grads)}
