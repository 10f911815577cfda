"""Rotary position embedding by graph distance (or layer, or hop count)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ruvector_hnsw.attention._kernels import mq_backward, rope_rotate, rope_unrotate_scatter
from ruvector_hnsw.attention._ops import mq_attend, mq_attn_weights
from ruvector_hnsw.attention.base import AttentionBatch, AttentionMechanism, check_positive_float
from ruvector_hnsw.errors import ConfigError

__all__ = ["RoPEAttention"]

_POSITIONS = {"dist": "dist", "layer": "layer", "hops": "hops"}


class RoPEAttention(AttentionMechanism):
    """Scaled dot-product attention over keys rotated by their position relative to the query.

    Key ``j`` is rotated pairwise, coordinates ``(2i, 2i+1)`` by the angle
    ``pos_j * base^(-2i/d)`` (an odd last coordinate is left alone), where
    ``pos_j = scale * context.<position>[j]``; the query sits at the origin (position 0, not
    rotated). Rotations preserve norms; with every ``pos = 0`` the result equals ``scaled_dot``
    exactly (same kernel, identical keys). Values are not rotated. No trainable params;
    ``backward`` gives the input gradients. Fully masked row: zero output.

    Parameters
    ----------
    dim : int
    position : {"dist", "layer", "hops"}, default "dist"
        Context field giving the positions.
    scale : float, default 1.0
        Multiplier of the positions (>= 0).
    base : float, default 10000.0
        Frequency base (> 0).
    temperature : float, default 1.0
    dtype, seed
        See :class:`~ruvector_hnsw.attention.base.AttentionMechanism`.
    """

    name = "rope"
    fused_gather = True
    checks_table_rows = True

    def __init__(
        self,
        dim: int,
        *,
        position: str = "dist",
        scale: float = 1.0,
        base: float = 10000.0,
        temperature: float = 1.0,
        dtype: Any = np.float32,
        seed: int | None = None,
    ) -> None:
        super().__init__(dim, dtype=dtype, seed=seed)
        if position not in _POSITIONS:
            raise ConfigError(f"position must be one of {sorted(_POSITIONS)}, got {position!r}")
        self.position = position
        self.pos_scale = check_positive_float(scale, "scale", allow_zero=True)
        self.base = check_positive_float(base, "base")
        self.temperature = check_positive_float(temperature, "temperature")
        half = self.dim // 2
        self.theta = self.base ** (-2.0 * np.arange(half, dtype=np.float64) / self.dim)

    @property
    def scale(self) -> float:
        """Score factor ``1 / (sqrt(d) * temperature)`` (same as ``scaled_dot``)."""
        return float(1.0 / (np.sqrt(self.dim) * self.temperature))

    def required_context(self) -> tuple[str, ...]:
        return (_POSITIONS[self.position],)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "position": self.position,
            "scale": self.pos_scale,
            "base": self.base,
            "temperature": self.temperature,
        }

    def positions(self, batch: AttentionBatch) -> np.ndarray:
        """``pos (B, n)`` float64 = ``scale * context.<position>``."""
        raw = batch.require(_POSITIONS[self.position], self.name)
        return np.ascontiguousarray(np.asarray(raw, dtype=np.float64) * self.pos_scale)

    def rotated_keys(self, batch: AttentionBatch) -> np.ndarray:
        """The rotated keys ``(B, n, d)`` (zero in masked slots)."""
        T, _, ids = batch.table_form()
        return rope_rotate(T, ids, batch.mask, self.positions(batch), self.theta)

    def _forward(self, batch: AttentionBatch) -> tuple[np.ndarray, Any]:
        T, Vt, ids = batch.table_form()
        assert Vt is not None
        pos = self.positions(batch)
        Kr = rope_rotate(T, ids, batch.mask, pos, self.theta)
        B, n = batch.mask.shape
        kid = np.arange(B * n, dtype=np.int64).reshape(B, n)
        R, W, ok = mq_attend(batch.query[:, None, :], Kr.reshape(B * n, self.dim), Vt, kid, batch.mask,
                             self.scale, vids=ids)
        if not ok:
            self._raise_nonfinite_rows()
        return R[:, 0, :], (batch, pos, Kr, W)

    def _weights(self, batch: AttentionBatch) -> np.ndarray:
        B, n = batch.mask.shape
        Kr = self.rotated_keys(batch)
        kid = np.arange(B * n, dtype=np.int64).reshape(B, n)
        W, ok = mq_attn_weights(batch.query[:, None, :], Kr.reshape(B * n, self.dim), kid, batch.mask, self.scale)
        if not ok:
            self._raise_nonfinite_rows()
        return W[:, 0, :]

    def _backward(self, grad_out: np.ndarray, cache: Any) -> dict[str, np.ndarray]:
        batch, pos, Kr, W = cache
        T, Vt, ids = batch.table_form()
        assert Vt is not None
        B, n = batch.mask.shape
        kid = np.arange(B * n, dtype=np.int64).reshape(B, n)
        dQ, dKr, dV = mq_backward(
            batch.query[:, None, :], Kr.reshape(B * n, self.dim), Vt, kid, ids, batch.mask, W,
            grad_out[:, None, :], self.scale, B * n, Vt.shape[0],
        )
        dK = rope_unrotate_scatter(dKr.reshape(B, n, self.dim), ids, batch.mask, pos, self.theta, T.shape[0])
        return {
            "query": dQ[:, 0, :],
            "keys": batch.table_grad_to_input(dK),
            "values": batch.table_grad_to_input(dV),
        }
