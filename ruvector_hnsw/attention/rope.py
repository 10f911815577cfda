"""Rotary position embedding by graph distance (or layer, or hop count)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ruvector_hnsw.attention._kernels import mq_backward, rope_apply, rope_forward, rope_unapply_scatter
from ruvector_hnsw.attention.base import (
    AttentionBatch,
    AttentionMechanism,
    ForwardResult,
    check_positive_float,
    dense_ids,
)
from ruvector_hnsw.errors import ConfigError
from ruvector_hnsw.threads import run_row_chunks

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

    def _trig_chunks(
        self, pos: np.ndarray, lo: int = 0, hi: int | None = None, angles: int = 1 << 18
    ) -> Any:
        """Yield ``(lo, cos, sin)`` over row chunks of ``pos[lo:hi]``; angles ``pos * theta`` in
        float64, cos/sin evaluated (vectorised numpy) in the mechanism dtype; ~``angles`` a chunk."""
        B, n = pos.shape
        hi = B if hi is None else hi
        half = self.theta.shape[0]
        step = max(1, angles // max(1, n * half))
        for a in range(lo, hi, step):
            ang = (pos[a : min(a + step, hi), :, None] * self.theta[None, None, :]).astype(self.dtype)
            yield a, np.cos(ang), np.sin(ang)

    def _rotate(self, batch: AttentionBatch, pos: np.ndarray) -> np.ndarray:
        T, _, ids = batch.table_form()
        B, n = batch.mask.shape
        out = np.zeros((B, n, self.dim), dtype=self.dtype)
        # smaller trig chunks than the forward's: next to the (B, n, d) output they bound the
        # scratch of backward (which rebuilds the rotated keys) to ~1 MiB
        for lo, cs, sn in self._trig_chunks(pos, angles=1 << 16):
            rope_apply(T, ids, batch.mask, cs, sn, out, lo)
        return out

    def rotated_keys(self, batch: AttentionBatch) -> np.ndarray:
        """The rotated keys ``(B, n, d)`` (zero in masked slots)."""
        return self._rotate(batch, self.positions(batch))

    def _forward(self, batch: AttentionBatch) -> ForwardResult:
        # keys are rotated on the fly inside the kernel (no (B, n, d) copy); same dot routine and
        # softmax as scaled_dot, so all-zero positions reproduce it bit for bit
        T, Vt, ids = batch.table_form()
        assert Vt is not None
        pos = self.positions(batch)
        B, n = batch.mask.shape
        R = np.zeros((B, Vt.shape[1]), dtype=self.dtype)
        W = np.zeros((B, n), dtype=self.dtype)
        q = batch.query

        def run(lo: int, hi: int) -> bool:
            ok = True
            for a, cs, sn in self._trig_chunks(pos, lo, hi):
                ok &= bool(rope_forward(q, T, Vt, ids, batch.mask, cs, sn, a, self.scale, R, W))
            return ok

        if not all(run_row_chunks(run, B, float(B) * n * (2 * self.dim + Vt.shape[1]))):
            self._raise_nonfinite_rows()
        return ForwardResult(R, (batch, pos, W[:, None, :]), weights=W)

    def _weights(self, batch: AttentionBatch) -> np.ndarray:
        B, n = batch.mask.shape
        Kr = self.rotated_keys(batch)
        kid = dense_ids(B, n)
        return self._softmax_weights(batch.query, Kr.reshape(B * n, self.dim), kid, batch.mask, self.scale)

    def _backward(self, grad_out: np.ndarray, data: Any, input_grads: bool) -> dict[str, np.ndarray]:
        batch, pos, W = data
        T, Vt, ids = batch.table_form()
        assert Vt is not None
        B, n = batch.mask.shape
        Kr = self._rotate(batch, pos)
        tg = input_grads
        dQ, dKr, dV = mq_backward(
            batch.query[:, None, :], Kr.reshape(B * n, self.dim), Vt, dense_ids(B, n), ids, batch.mask, W,
            grad_out[:, None, :], self.scale, B * n, Vt.shape[0], tg,
        )
        grads = {"query": dQ[:, 0, :]}
        if tg:
            dK = np.zeros_like(T)
            dKr3 = dKr.reshape(B, n, self.dim)
            for lo, cs, sn in self._trig_chunks(pos):
                rope_unapply_scatter(dKr3, ids, batch.mask, cs, sn, dK, lo)
            grads["keys"] = batch.table_grad_to_input(dK)
            grads["values"] = batch.table_grad_to_input(dV)
        return grads
