"""Multi-head attention with learned ``W_q``, ``W_k``, ``W_v``, ``W_o``."""

from __future__ import annotations

from typing import Any

import numpy as np

from ruvector_hnsw.attention._kernels import mq_backward
from ruvector_hnsw.attention._ops import mq_attend
from ruvector_hnsw.attention.base import (
    AttentionBatch,
    AttentionMechanism,
    ForwardResult,
    check_positive_float,
    check_positive_int,
)
from ruvector_hnsw.errors import DimensionMismatchError

__all__ = ["MultiHeadAttention"]


class MultiHeadAttention(AttentionMechanism):
    """``h`` heads of scaled dot-product attention with learned projections.

    Head ``i`` scores item ``j`` by ``(q W_q^i).(k_j W_k^i) / (sqrt(head_dim) * temperature)``,
    reads ``sum_j w_ij v_j W_v^i`` and the heads are concatenated and mapped by ``W_o``:
    ``out = concat_i(...) W_o`` (no biases, so a fully masked row outputs zero).

    The kernel never projects keys or values: it maps each head's query back into key space
    (``W_k^i (q W_q^i)``, a ``d``-vector), attends over the raw key rows (gathered by ``ids`` in
    the kernel) and projects the per-head read-out of raw values afterwards. Same result, cost
    ``O(h n (d + dv))`` per row and no ``(B, n, h*head_dim)`` intermediates.

    Parameters
    ----------
    dim : int
        Query/key dimension ``d``.
    heads : int, default 4
        Number of heads ``h`` (1..16).
    head_dim : int, optional
        Per-head width; default ``max(1, dim // heads)``.
    value_dim : int, optional
        Width ``dv`` of the values; default ``dim``.
    out_dim : int, optional
        Output width; default ``dim``.
    temperature : float, default 1.0
    dtype, seed
        See :class:`~ruvector_hnsw.attention.base.AttentionMechanism`.

    Attributes
    ----------
    params : ``W_q (d, h*head_dim)``, ``W_k (d, h*head_dim)``, ``W_v (dv, h*head_dim)``,
        ``W_o (h*head_dim, out_dim)``, initialised ``N(0, 1/fan_in)`` from ``seed``.
    """

    name = "multi_head"
    fused_gather = True
    checks_table_rows = True

    def __init__(
        self,
        dim: int,
        *,
        heads: int = 4,
        head_dim: int | None = None,
        value_dim: int | None = None,
        out_dim: int | None = None,
        temperature: float = 1.0,
        dtype: Any = np.float32,
        seed: int | None = None,
    ) -> None:
        super().__init__(dim, dtype=dtype, seed=seed)
        self.heads = check_positive_int(heads, "heads", maximum=16)
        self.head_dim = check_positive_int(
            max(1, self.dim // self.heads) if head_dim is None else head_dim, "head_dim"
        )
        self.value_dim = check_positive_int(self.dim if value_dim is None else value_dim, "value_dim")
        self.out_dim = check_positive_int(self.dim if out_dim is None else out_dim, "out_dim")
        self.temperature = check_positive_float(temperature, "temperature")
        rng = self._rng()
        e = self.heads * self.head_dim
        dt = self.dtype

        def init(rows: int, cols: int) -> np.ndarray:
            return np.ascontiguousarray(rng.standard_normal((rows, cols)) / np.sqrt(rows), dtype=dt)

        self._params = {
            "W_q": init(self.dim, e),
            "W_k": init(self.dim, e),
            "W_v": init(self.value_dim, e),
            "W_o": init(e, self.out_dim),
        }

    @property
    def scale(self) -> float:
        """Score factor ``1 / (sqrt(head_dim) * temperature)``."""
        return float(1.0 / (np.sqrt(self.head_dim) * self.temperature))

    def output_dim(self, value_dim: int) -> int:
        return self.out_dim

    def check_value_dim(self, value_dim: int) -> None:
        if value_dim != self.value_dim:
            raise DimensionMismatchError(
                f"multi_head: values have width {value_dim}, mechanism expects value_dim={self.value_dim}"
            )

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "heads": self.heads,
            "head_dim": self.head_dim,
            "value_dim": self.value_dim,
            "out_dim": self.out_dim,
            "temperature": self.temperature,
        }

    def _head_queries(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``qp (B, h, head_dim)`` and their key-space images ``Qt (B, h, d)``."""
        h, e = self.heads, self.head_dim
        qp = (q @ self._params["W_q"]).reshape(q.shape[0], h, e)
        Wk = self._params["W_k"]
        Qt = np.empty((q.shape[0], h, self.dim), dtype=self.dtype)
        for i in range(h):  # BLAS per head (einsum would not use it)
            Qt[:, i, :] = qp[:, i, :] @ Wk[:, i * e : (i + 1) * e].T
        return qp, Qt

    def _forward(self, batch: AttentionBatch) -> ForwardResult:
        T, Vt, ids = batch.table_form()
        assert Vt is not None
        qp, Qt = self._head_queries(batch.query)
        R, W, ok = mq_attend(Qt, T, Vt, ids, batch.mask, self.scale)
        if not ok:
            self._raise_nonfinite_rows()
        B, h, e = batch.B, self.heads, self.head_dim
        Wv = self._params["W_v"]
        O = np.empty((B, h * e), dtype=self.dtype)
        for i in range(h):
            O[:, i * e : (i + 1) * e] = R[:, i, :] @ Wv[:, i * e : (i + 1) * e]
        out = O @ self._params["W_o"]
        return ForwardResult(np.ascontiguousarray(out, dtype=self.dtype), (batch, qp, Qt, R, W, O), weights=W)

    def _weights(self, batch: AttentionBatch) -> np.ndarray:
        T, _, ids = batch.table_form()
        _, Qt = self._head_queries(batch.query)
        return self._softmax_weights(Qt, T, ids, batch.mask, self.scale)

    def _backward(self, grad_out: np.ndarray, data: Any, input_grads: bool) -> dict[str, np.ndarray]:
        batch, qp, Qt, R, W, O = data
        T, Vt, ids = batch.table_form()
        assert Vt is not None
        B, h, e = batch.B, self.heads, self.head_dim
        p = self._params
        dW_o = O.T @ grad_out
        dO = grad_out @ p["W_o"].T  # (B, h*e)
        Wv, Wk = p["W_v"], p["W_k"]
        dWv = np.empty_like(Wv)
        dR = np.empty(R.shape, dtype=self.dtype)
        for i in range(h):
            sl = slice(i * e, (i + 1) * e)
            dWv[:, sl] = R[:, i, :].T @ dO[:, sl]
            dR[:, i, :] = dO[:, sl] @ Wv[:, sl].T
        dQt, dT, dV = mq_backward(
            Qt, T, Vt, ids, ids, batch.mask, W, dR, self.scale, T.shape[0], Vt.shape[0], input_grads
        )
        dqp_flat = np.empty((B, h * e), dtype=dQt.dtype)
        dWk = np.empty_like(Wk)
        for i in range(h):
            sl = slice(i * e, (i + 1) * e)
            dqp_flat[:, sl] = dQt[:, i, :] @ Wk[:, sl]
            dWk[:, sl] = dQt[:, i, :].T @ qp[:, i, :]
        dt = self.dtype
        return {
            "W_q": np.ascontiguousarray(batch.query.T @ dqp_flat, dtype=dt),
            "W_k": np.ascontiguousarray(dWk, dtype=dt),
            "W_v": np.ascontiguousarray(dWv, dtype=dt),
            "W_o": np.ascontiguousarray(dW_o, dtype=dt),
            "query": np.ascontiguousarray(dqp_flat @ p["W_q"].T, dtype=dt),
            **self._input_grad_entries(batch, dT, dV, input_grads),
        }
