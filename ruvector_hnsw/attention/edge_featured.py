"""GATv2-style attention with edge features (``edge_featured``).

Score of item ``j`` for query ``q``::

    z_j = q W_q + k_j W_k + f_j W_e + b          (hidden width h)
    e_j = a . LeakyReLU(z_j)                      (negative slope ``negative_slope``)
    w   = softmax(e) over the mask
    out = (sum_j w_j v_j) W_v                     (or sum_j w_j v_j with ``project_values=False``)

Edge features ``f_j``
---------------------
* ``edge_dim=None`` (default): derived from the context, ``f_j = [dist_j, log1p(degree_j),
  onehot(layer_j)]`` of width ``2 + num_layers``. ``context.dist`` and ``context.layer`` are
  required; ``context.degree`` is optional (a zero column when absent); layers above
  ``num_layers - 1`` share the last one-hot slot. ``dist`` is used as given (index metric).
* ``edge_dim=f``: ``context.edge_features`` of shape ``(B, n, f)`` is required and used as is.

Fully masked rows: weights 0, output 0 (no bias on the output). Edge features are context,
not inputs: no gradient is returned for them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ruvector_hnsw.attention._edge_kernels import edge_backward_kernel, edge_forward_kernel
from ruvector_hnsw.attention._gather_kernels import scatter_add_rows
from ruvector_hnsw.attention._partb_common import fused_tables
from ruvector_hnsw.attention.base import (
    AttentionBatch,
    AttentionMechanism,
    ForwardResult,
    check_positive_float,
    check_positive_int,
)
from ruvector_hnsw.errors import ConfigError, DimensionMismatchError, MissingContextError, NonFiniteError
from ruvector_hnsw.threads import join_row_chunks, run_row_chunks

__all__ = ["EdgeFeaturedAttention"]


class EdgeFeaturedAttention(AttentionMechanism):
    """GATv2 attention whose scores see edge features (distance, HNSW layer, degree, ...).

    Parameters
    ----------
    dim : int
        Query/key dimensionality ``d``.
    hidden : int, optional
        Width ``h`` of the score MLP (default ``dim``).
    edge_dim : int, optional
        Width of ``context.edge_features``; ``None`` derives features from dist/layer/degree
        (see the module docstring).
    num_layers : int
        One-hot width of the layer feature in derived mode (default 4).
    project_values : bool
        Learn ``W_v`` (``value_dim x out_dim``); ``False`` returns ``sum_j w_j v_j``.
    value_dim, out_dim : int, optional
        Value width (default ``dim``) and output width (default ``value_dim``) with
        ``project_values``. ``W_v`` starts as the identity when they are equal.
    negative_slope : float
        LeakyReLU slope (default 0.2).
    dtype, seed
        See :class:`~ruvector_hnsw.attention.base.AttentionMechanism`.

    Params: ``W_q (d, h)``, ``W_k (d, h)``, ``W_e (f, h)``, ``b (h,)``, ``a (h,)`` and ``W_v``.
    """

    name = "edge_featured"
    fused_gather = True
    #: the kernel flags NaN/inf in the table rows it reads (tables are not scanned whole)
    checks_table_rows = True

    def __init__(
        self,
        dim: int,
        *,
        hidden: int | None = None,
        edge_dim: int | None = None,
        num_layers: int = 4,
        project_values: bool = True,
        value_dim: int | None = None,
        out_dim: int | None = None,
        negative_slope: float = 0.2,
        dtype: Any = np.float32,
        seed: int | None = None,
    ) -> None:
        super().__init__(dim, dtype=dtype, seed=seed)
        self.hidden = check_positive_int(self.dim if hidden is None else hidden, "hidden")
        self.num_layers = check_positive_int(num_layers, "num_layers")
        self.edge_dim = None if edge_dim is None else check_positive_int(edge_dim, "edge_dim")
        self.feature_dim = (2 + self.num_layers) if self.edge_dim is None else self.edge_dim
        if not isinstance(project_values, (bool, np.bool_)):
            raise ConfigError(f"project_values must be a bool, got {project_values!r}")
        self.project_values = bool(project_values)
        self.value_dim = check_positive_int(self.dim if value_dim is None else value_dim, "value_dim")
        self.out_dim = check_positive_int(self.value_dim if out_dim is None else out_dim, "out_dim")
        self.negative_slope = check_positive_float(negative_slope, "negative_slope", allow_zero=True)
        if self.negative_slope >= 1.0:
            raise ConfigError(f"negative_slope must be < 1, got {self.negative_slope}")
        rng = self._rng()
        d, h, f, dt = self.dim, self.hidden, self.feature_dim, self.dtype
        self._params = {
            "W_q": (rng.standard_normal((d, h)) / np.sqrt(d)).astype(dt),
            "W_k": (rng.standard_normal((d, h)) / np.sqrt(d)).astype(dt),
            "W_e": (rng.standard_normal((f, h)) / np.sqrt(f)).astype(dt),
            "b": np.zeros(h, dtype=dt),
            "a": (rng.standard_normal(h) / np.sqrt(h)).astype(dt),
        }
        if self.project_values:
            if self.value_dim == self.out_dim:
                wv = np.eye(self.value_dim)
            else:
                wv = rng.standard_normal((self.value_dim, self.out_dim)) / np.sqrt(self.value_dim)
            self._params["W_v"] = np.ascontiguousarray(wv, dtype=dt)

    # -- description ---------------------------------------------------------------------------
    def required_context(self) -> tuple[str, ...]:
        return ("dist", "layer") if self.edge_dim is None else ("edge_features",)

    def output_dim(self, value_dim: int) -> int:
        return self.out_dim if self.project_values else value_dim

    def check_value_dim(self, value_dim: int) -> None:
        if self.project_values and value_dim != self.value_dim:
            raise DimensionMismatchError(
                f"{self.name}: values have width {value_dim}, W_v expects value_dim={self.value_dim}"
            )

    def get_config(self) -> dict[str, Any]:
        cfg = super().get_config()
        cfg.update(
            hidden=self.hidden,
            edge_dim=self.edge_dim,
            num_layers=self.num_layers,
            project_values=self.project_values,
            value_dim=self.value_dim,
            out_dim=self.out_dim,
            negative_slope=self.negative_slope,
        )
        return cfg

    # -- features ------------------------------------------------------------------------------
    def edge_features(self, batch: AttentionBatch) -> np.ndarray:
        """The ``(B, n, f)`` features the scores see for ``batch`` (given or derived)."""
        ctx = batch.context
        B, n = batch.B, batch.n
        if self.edge_dim is not None:
            ef = batch.require("edge_features", self.name)
            if ef.shape[2] != self.edge_dim:
                raise DimensionMismatchError(
                    f"{self.name}: context.edge_features has width {ef.shape[2]}, edge_dim={self.edge_dim}"
                )
            return np.ascontiguousarray(ef)
        if ctx is None or ctx.dist is None or ctx.layer is None:
            raise MissingContextError(
                f"{self.name} needs context.dist and context.layer (or edge_dim= and context.edge_features)"
            )
        feats = np.zeros((B, n, self.feature_dim), dtype=self.dtype)
        feats[:, :, 0] = ctx.dist
        if ctx.degree is not None:
            feats[:, :, 1] = np.log1p(np.maximum(ctx.degree, 0.0))
        lay = np.clip(ctx.layer.astype(np.int64), 0, self.num_layers - 1)
        np.put_along_axis(feats[:, :, 2:], lay[:, :, None], 1.0, axis=2)
        return feats

    # -- compute -------------------------------------------------------------------------------
    def _run(self, batch: AttentionBatch, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        kt, vt, ids = fused_tables(batch)
        p = self._params
        f8 = np.float64
        wq, wk, we = p["W_q"].astype(f8), np.ascontiguousarray(p["W_k"].T, dtype=f8), p["W_e"].astype(f8)
        bias, att, slope = p["b"].astype(f8), p["a"].astype(f8), float(self.negative_slope)
        q = batch.query
        B, n = ids.shape
        work = float(B) * n * (self.dim * self.hidden + vt.shape[1])
        parts = run_row_chunks(
            lambda lo, hi: edge_forward_kernel(
                q[lo:hi], kt, vt, ids[lo:hi], feats[lo:hi], wq, wk, we, bias, att, slope
            ),
            B,
            work,
        )
        w, agg, ok = join_row_chunks(parts)
        if not ok:
            raise NonFiniteError(f"{self.name}: keys/values rows referenced by ids contain NaN or infinity")
        return w, agg

    def _weights(self, batch: AttentionBatch) -> np.ndarray:
        feats = self.edge_features(batch)
        w, _ = self._run(batch, feats)
        return w

    def _forward(self, batch: AttentionBatch) -> ForwardResult:
        feats = self.edge_features(batch)
        w, agg = self._run(batch, feats)
        out = agg @ self._params["W_v"] if self.project_values else agg
        return ForwardResult(np.ascontiguousarray(out, dtype=self.dtype), (batch, feats, w, agg), weights=w)

    def _backward(self, grad_out: np.ndarray, data: Any, input_grads: bool) -> dict[str, np.ndarray]:
        batch, feats, w, agg = data
        p = self._params
        f8 = np.float64
        grads: dict[str, np.ndarray] = {}
        if self.project_values:
            grads["W_v"] = agg.astype(f8).T @ grad_out.astype(f8)
            dagg = grad_out.astype(f8) @ p["W_v"].astype(f8).T
        else:
            dagg = grad_out.astype(f8)
        kt, vt, ids = fused_tables(batch)
        wq, we = p["W_q"].astype(f8), p["W_e"].astype(f8)
        wk = np.ascontiguousarray(p["W_k"], dtype=f8)
        wkt = np.ascontiguousarray(wk.T)
        bias, att, slope = p["b"].astype(f8), p["a"].astype(f8), float(self.negative_slope)
        q = batch.query
        B, n = ids.shape
        parts = run_row_chunks(
            lambda lo, hi: edge_backward_kernel(
                q[lo:hi], kt, vt, ids[lo:hi], feats[lo:hi], wq, wkt, wk, we, bias, att, slope, w[lo:hi],
                dagg[lo:hi], input_grads,
            ),
            B,
            2.0 * B * n * (self.dim * self.hidden + vt.shape[1]),
        )
        for k, idx in (("W_q", 3), ("W_k", 4), ("W_e", 5), ("b", 6), ("a", 7)):
            grads[k] = sum(r[idx] for r in parts[1:]) + parts[0][idx]
        grads["query"] = np.concatenate([r[0] for r in parts])
        if input_grads:
            dK = np.concatenate([r[1] for r in parts])
            dV = np.concatenate([r[2] for r in parts])
            if batch.ids is not None:
                assert batch.values is not None
                dK = scatter_add_rows(dK, ids, batch.keys.shape[0])
                dV = scatter_add_rows(dV, ids, batch.values.shape[0])
            grads["keys"] = dK
            grads["values"] = dV
        dt = self.dtype
        return {k: np.ascontiguousarray(v, dtype=dt) for k, v in grads.items()}
