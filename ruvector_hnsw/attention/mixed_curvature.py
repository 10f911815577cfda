"""Attention in a product of constant-curvature spaces ``E^e x H^h x S^s`` (``mixed_curvature``).

Geometry
--------
The ``d`` coordinates of queries and keys are split into blocks: ``[0, e)`` Euclidean,
``[e, e + h)`` hyperbolic (curvature ``c_h < 0``, ``kh = -c_h``), ``[e + h, d)`` spherical
(curvature ``c_s > 0``, ``ks = c_s``). Scaled by ``sigma`` (``input_scale``, default
``1/sqrt(d)``, so standardised vectors of norm about ``sqrt(d)`` land well inside the ball), the
hyperbolic block is a point of the Poincare ball ``|x| < 1/sqrt(kh)`` - a point at or beyond
``(1 - 1e-5)/sqrt(kh)`` is pulled radially back to that radius (its norm then gets no
gradient) - and the spherical block a point of the stereographic model of the sphere of radius
``1/sqrt(ks)`` (every point of ``R^s`` is one). Per-component similarities:

* ``S_E = q_E . k_E / sqrt(d)``  (the scaled dot product);
* ``S_H = -d_H(x_q, x_k) / sigma``  (minus the Poincare distance at curvature ``c_h``,
  ``d_H = (1/sqrt(kh)) arcosh(1 + 2 kh |x - y|^2 / ((1 - kh|x|^2)(1 - kh|y|^2)))``);
* ``S_S = -d_S(x_q, x_k) / sigma``  (minus the spherical geodesic distance: the spherical angle
  between the two points divided by ``sqrt(ks)``),

divided by ``sigma`` to be measured in input units (for small inputs ``d_H / sigma`` and
``d_S / sigma`` tend to ``2 |q - k|`` over the block, the conformal factor 2 of both models at
the origin). Each distance is a function of the blocks' squared norms and dot product, so the
kernels in :mod:`ruvector_hnsw.attention._mixed_kernels` get all three blocks from one pass over
the coordinates. Every finite input gives finite scores.

Scores, mixing and read-out
---------------------------
Head ``eta`` (``heads`` of them) mixes the components with learned weights
``w_eta = softmax(mix[eta, present components])`` (absent blocks - width 0 - are left out)::

    s_eta,j = (w_E S_E + w_H S_H + w_S S_S) / temperature
    W_eta   = softmax_j(s_eta)  over the attended items
    out     = sum_j Wbar_j v_j,    Wbar = mean_eta W_eta

The read-out is the tangent-space aggregation at the origin (the log map at the origin takes the
product manifold to one vector space, where the weighted mean is a plain sum): the value rows are
taken as tangent vectors at the origin, in input units, so the read-out is the weighted sum of
the value rows themselves, of width ``dv``, in one loop. With ``h = s = 0`` the only component is Euclidean, ``w_E = 1``
for any params, and the mechanism equals ``scaled_dot`` at the same temperature.

Shapes and cost
---------------
``query (B, d)``, keys ``(B, n, d)``, values ``(B, n, dv)`` (or tables + ``ids``), output
``(B, dv)``; :meth:`weights` / ``cache.weights`` are the head-averaged ``Wbar (B, n)``,
``cache.inspect["head_weights"]`` the per-head ``W (B, heads, n)``. Cost per item: one pass
over the ``d`` key coordinates (dot products and block norms; the row a few items ahead is
prefetched), a few scalar transcendental functions per block in short independent loops,
``heads`` exponentials and one pass over the ``dv`` value coordinates. The params-only backward
runs rows in chunks on the thread pool.
Fully masked row: zero weights and zero output. Params: ``mix (heads, 3)`` (mixing logits of
the E/H/S components, per head). Curvatures are fixed (constructor arguments).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ruvector_hnsw.attention._mixed_kernels import mc_backward, mc_forward
from ruvector_hnsw.attention.base import (
    AttentionBatch,
    AttentionMechanism,
    ForwardResult,
    check_positive_float,
    check_positive_int,
)
from ruvector_hnsw.errors import ConfigError
from ruvector_hnsw.threads import run_row_chunks

__all__ = ["MixedCurvatureAttention", "default_dims"]


def default_dims(dim: int) -> tuple[int, int, int]:
    """The default split ``(e, h, s)``: a quarter of the coordinates hyperbolic, a quarter
    spherical, the rest Euclidean."""
    q = dim // 4
    return dim - 2 * q, q, q


def _curvature(value: Any, name: str, sign: int) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not np.isfinite(v) or v * sign <= 0:
        raise ConfigError(f"{name} must be a finite number {'< 0' if sign < 0 else '> 0'}, got {v}")
    return v


class MixedCurvatureAttention(AttentionMechanism):
    """Product-space attention ``E^e x H^h x S^s`` with learned per-head mixing weights.

    Parameters
    ----------
    dim : int
        Query/key dimensionality ``d``.
    dims : tuple of 3 ints, optional
        Block widths ``(e, h, s)`` (non-negative, summing to ``dim``); default
        :func:`default_dims` (``d - 2*(d//4), d//4, d//4``).
    curvature_h : float
        Curvature ``c_h < 0`` of the hyperbolic factor (default ``-1``).
    curvature_s : float
        Curvature ``c_s > 0`` of the spherical factor (default ``1``).
    heads : int
        Number of mixing heads (default 1; each further head costs one exponential per item).
    temperature : float
        Softmax temperature (default 1).
    input_scale : float, optional
        Tangent-vector scale ``sigma`` (default ``1/sqrt(dim)``).
    dtype, seed
        See :class:`~ruvector_hnsw.attention.base.AttentionMechanism`.
    """

    name = "mixed_curvature"
    fused_gather = True
    checks_table_rows = True

    def __init__(
        self,
        dim: int,
        *,
        dims: tuple[int, int, int] | list[int] | None = None,
        curvature_h: float = -1.0,
        curvature_s: float = 1.0,
        heads: int = 1,
        temperature: float = 1.0,
        input_scale: float | None = None,
        dtype: Any = np.float32,
        seed: int | None = None,
    ) -> None:
        super().__init__(dim, dtype=dtype, seed=seed)
        if dims is None:
            split = default_dims(self.dim)
        else:
            if isinstance(dims, (str, bytes)) or len(dims) != 3:
                raise ConfigError(f"dims must be three block widths (e, h, s), got {dims!r}")
            split = tuple(check_positive_int(v, "dims entry", minimum=0) for v in dims)  # type: ignore[assignment]
            if sum(split) != self.dim:
                raise ConfigError(f"dims {tuple(split)} must sum to dim={self.dim}")
        self.dims: tuple[int, int, int] = (int(split[0]), int(split[1]), int(split[2]))
        self.curvature_h = _curvature(curvature_h, "curvature_h", -1)
        self.curvature_s = _curvature(curvature_s, "curvature_s", 1)
        self.heads = check_positive_int(heads, "heads")
        self.temperature = check_positive_float(temperature, "temperature")
        self.input_scale = check_positive_float(
            1.0 / np.sqrt(self.dim) if input_scale is None else input_scale, "input_scale")
        self._input_scale_given = input_scale is not None
        rng = self._rng()
        self._params = {"mix": np.ascontiguousarray(0.1 * rng.standard_normal((self.heads, 3)), dtype=self.dtype)}

    # -- description ---------------------------------------------------------------------------
    @property
    def scale(self) -> float:
        """The factor of the Euclidean dot product: ``1 / (sqrt(d) * temperature)``."""
        return float(1.0 / (np.sqrt(self.dim) * self.temperature))

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(), "dims": self.dims, "curvature_h": self.curvature_h,
            "curvature_s": self.curvature_s, "heads": self.heads, "temperature": self.temperature,
            "input_scale": self.input_scale if self._input_scale_given else None,
        }

    def mixing_weights(self) -> np.ndarray:
        """Current per-head component weights ``(heads, 3)`` (E, H, S; zero for absent blocks)."""
        present = np.array([w > 0 for w in self.dims])
        z = np.where(present, self._params["mix"].astype(np.float64), -np.inf)
        z = z - z.max(axis=1, keepdims=True)
        ez = np.where(present, np.exp(z), 0.0)
        return ez / ez.sum(axis=1, keepdims=True)

    def _constants(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(C (heads, 3), geo (6,), w (heads, 3))`` handed to the kernels."""
        kh, ks = -self.curvature_h, self.curvature_s
        sig = self.input_scale
        unit_h = -2.0 / (np.sqrt(kh) * sig)
        unit_s = -2.0 / (np.sqrt(ks) * sig)
        w = self.mixing_weights()
        inv_tau = 1.0 / self.temperature
        C = np.empty((self.heads, 3), dtype=np.float64)
        C[:, 0] = w[:, 0] * self.scale  # exactly scaled_dot's factor when w_E = 1
        C[:, 1] = w[:, 1] * (unit_h * inv_tau)
        C[:, 2] = w[:, 2] * (unit_s * inv_tau)
        geo = np.array([np.sqrt(kh), np.sqrt(ks), sig, 1.0 / np.sqrt(self.dim), unit_h, unit_s])
        return np.ascontiguousarray(C), geo, w

    # -- compute -------------------------------------------------------------------------------
    def _run(self, batch: AttentionBatch, need_readout: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        T, Vt, ids = batch.table_form()
        if Vt is None:
            Vt = T
        C, geo, _ = self._constants()
        e, h, _ = self.dims
        mask = batch.mask
        q = batch.query
        n = ids.shape[1]
        work = float(q.shape[0]) * n * (2 * self.dim + (Vt.shape[1] if need_readout else 0) + 40)
        B = q.shape[0]
        R = np.zeros((B if need_readout else 0, Vt.shape[1]), dtype=q.dtype)
        Wm = np.zeros((B, n), dtype=q.dtype)
        Wh = np.zeros((B, C.shape[0], n), dtype=q.dtype)
        parts = run_row_chunks(  # the chunks write into R, Wm, Wh (row slices)
            lambda lo, hi: mc_forward(q[lo:hi], T, Vt, ids[lo:hi], mask[lo:hi], e, h, C, geo, need_readout,
                                      R[lo:hi], Wm[lo:hi], Wh[lo:hi]),
            B, work,
        )
        if not all(parts):
            self._raise_nonfinite_rows()
        return R, Wm, Wh

    def _forward(self, batch: AttentionBatch) -> ForwardResult:
        R, Wm, Wh = self._run(batch, True)
        return ForwardResult(R, (batch, Wh), weights=Wm, inspect={"head_weights": Wh})

    def _weights(self, batch: AttentionBatch) -> np.ndarray:
        return self._run(batch, False)[1]

    def _backward(self, grad_out: np.ndarray, data: Any, input_grads: bool) -> dict[str, np.ndarray]:
        batch, Wh = data
        T, Vt, ids = batch.table_form()
        assert Vt is not None
        C, geo, w = self._constants()
        e, h, _ = self.dims
        q, mask, inv_tau = batch.query, batch.mask, 1.0 / self.temperature
        if input_grads:  # table gradients: one serial call (the rows scatter into the same tables)
            dQ, dT, dV, dmix = mc_backward(q, T, Vt, ids, mask, e, h, C, geo, Wh, grad_out, w, inv_tau,
                                           T.shape[0], True)
        else:  # rows are independent: chunks on the thread pool
            work = float(q.shape[0]) * ids.shape[1] * (3 * self.dim + Vt.shape[1] + 60)
            parts = run_row_chunks(
                lambda lo, hi: mc_backward(q[lo:hi], T, Vt, ids[lo:hi], mask[lo:hi], e, h, C, geo, Wh[lo:hi],
                                           grad_out[lo:hi], w, inv_tau, 0, False),
                q.shape[0], work,
            )
            dQ = np.concatenate([p_[0] for p_ in parts]) if len(parts) > 1 else parts[0][0]
            dmix = np.concatenate([p_[3] for p_ in parts]) if len(parts) > 1 else parts[0][3]
            dT = dV = None
        grads = {"mix": np.ascontiguousarray(dmix.sum(axis=0), dtype=self.dtype), "query": dQ}
        if input_grads:
            assert dT is not None and dV is not None
            grads.update(self._input_grad_entries(batch, dT, dV, True))
        return grads
