"""Attention on the Poincare ball (``hyperbolic``).

With curvature ``c < 0`` (``kappa = -c``) the ball is ``{x : |x| < 1/sqrt(kappa)}``.

1. Inputs are first multiplied by a learned scale ``sigma = exp(log_scale)`` (initial value
   ``input_scale``, default 1; e.g. ``1/sqrt(d)`` for standardised data whose norms are about
   ``sqrt(d)``). Then to ball points: ``input_map="project"`` (default) treats them as ball
   points and pulls any point with ``|x| > (1 - eps)/sqrt(kappa)`` (at or outside the boundary)
   radially back to that radius; ``input_map="expmap"`` treats them as tangent vectors at the
   origin and maps them with ``exp_0`` (then the same projection, since ``tanh`` saturates).
2. Scores ``s_j = -d_c(q, k_j) / tau`` with the geodesic distance
   ``d_c(x, y) = (2/sqrt(kappa)) artanh(sqrt(kappa) |(-x) (+)_c y|)`` (computed by the equivalent
   ``arcosh`` form) and a learned temperature ``tau = exp(log_temperature)``.
3. Aggregation in the tangent space at the origin: ``u = sum_j w_j log_0(v_j)``.
4. ``output="ball"`` (default): ``out = project(exp_0(u))`` - strictly inside the ball for any
   finite input. ``output="tangent"``: ``out = u / sigma`` (a Euclidean vector back in input
   units - for small inputs close to the weighted mean of the values; used by ``moe``).

Fully masked rows: weights 0, ``u = 0``, output the origin (zero vector).
The Mobius helpers live in :mod:`ruvector_hnsw.attention._hyperbolic_kernels`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ruvector_hnsw.attention._gather_kernels import gather_rows, scatter_add_rows
from ruvector_hnsw.attention._hyperbolic_kernels import (
    expmap0,
    expmap0_backward,
    hyperbolic_backward_kernel,
    hyperbolic_forward_kernel,
    logmap0,
    logmap0_backward,
    project,
    project_backward,
)
from ruvector_hnsw.attention._partb_common import dense_ids, fused_tables, softmax_backward
from ruvector_hnsw.attention.base import (
    AttentionBatch,
    AttentionMechanism,
    ForwardResult,
    check_positive_float,
)
from ruvector_hnsw.errors import ConfigError, NonFiniteError
from ruvector_hnsw.threads import join_row_chunks, run_row_chunks

__all__ = ["HyperbolicAttention"]


class HyperbolicAttention(AttentionMechanism):
    """Poincare-ball attention: negative geodesic distance scores, tangent-space aggregation.

    Parameters
    ----------
    dim : int
        Query/key dimensionality ``d``.
    curvature : float
        Curvature ``c < 0`` of the ball (default ``-1.0``).
    eps : float
        Relative margin kept from the boundary, ``0 < eps < 0.5`` (default ``1e-5``; at least
        ``1e-6`` with float32, so that rounding the output cannot reach the boundary).
    temperature : float
        Initial temperature ``tau > 0`` (learned as ``log_temperature``).
    input_scale : float
        Initial input scale ``sigma > 0`` (learned as ``log_scale``).
    input_map : {"project", "expmap"}
        How inputs become ball points (see the module docstring).
    output : {"ball", "tangent"}
        Return the ball point ``exp_0(u)`` or the tangent vector ``u``.
    dtype, seed
        See :class:`~ruvector_hnsw.attention.base.AttentionMechanism`.

    Params: ``log_temperature (1,)``, ``log_scale (1,)``.
    """

    name = "hyperbolic"
    fused_gather = True
    #: the kernel flags NaN/inf in the table rows it reads (tables are not scanned whole)
    checks_table_rows = True

    def __init__(
        self,
        dim: int,
        *,
        curvature: float = -1.0,
        eps: float = 1e-5,
        temperature: float = 1.0,
        input_scale: float = 1.0,
        input_map: str = "project",
        output: str = "ball",
        dtype: Any = np.float32,
        seed: int | None = None,
    ) -> None:
        super().__init__(dim, dtype=dtype, seed=seed)
        if isinstance(curvature, bool) or not isinstance(curvature, (int, float, np.integer, np.floating)):
            raise ConfigError(f"curvature must be a number < 0, got {curvature!r}")
        if not (np.isfinite(curvature) and curvature < 0):
            raise ConfigError(f"curvature must be a finite number < 0, got {curvature}")
        self.curvature = float(curvature)
        self.kappa = -self.curvature
        self.eps = check_positive_float(eps, "eps")
        if self.eps >= 0.5:
            raise ConfigError(f"eps must be < 0.5, got {self.eps}")
        if self.dtype == np.float32 and self.eps < 1e-6:
            # float32 rounding of the output (relative 6e-8) must not reach the boundary
            raise ConfigError(f"eps must be >= 1e-6 with dtype float32, got {self.eps}")
        tau = check_positive_float(temperature, "temperature")
        sigma = check_positive_float(input_scale, "input_scale")
        if input_map not in ("project", "expmap"):
            raise ConfigError(f"input_map must be 'project' or 'expmap', got {input_map!r}")
        if output not in ("ball", "tangent"):
            raise ConfigError(f"output must be 'ball' or 'tangent', got {output!r}")
        self.input_map = input_map
        self.output = output
        self.temperature = tau  # initial values (the learned ones are params)
        self.input_scale = sigma
        self._params = {
            "log_temperature": np.array([math.log(tau)], dtype=self.dtype),
            "log_scale": np.array([math.log(sigma)], dtype=self.dtype),
        }

    @property
    def radius(self) -> float:
        """Largest output norm, ``(1 - eps) / sqrt(-curvature)``."""
        return (1.0 - self.eps) / math.sqrt(self.kappa)

    def get_config(self) -> dict[str, Any]:
        cfg = super().get_config()
        cfg.update(curvature=self.curvature, eps=self.eps, temperature=self.temperature,
                   input_scale=self.input_scale, input_map=self.input_map, output=self.output)
        return cfg

    # -- compute -------------------------------------------------------------------------------
    def _run(self, batch: AttentionBatch) -> tuple[np.ndarray, np.ndarray]:
        kt, vt, ids = fused_tables(batch)
        inv_tau = math.exp(-float(self._params["log_temperature"][0]))
        sigma = math.exp(float(self._params["log_scale"][0]))
        q, kap, eps = batch.query, self.kappa, self.eps
        expm, tang = self.input_map == "expmap", self.output == "tangent"
        B, n = ids.shape
        shared = vt is kt or (vt.shape == kt.shape and vt.dtype == kt.dtype and vt.strides == kt.strides
                              and vt.__array_interface__["data"][0] == kt.__array_interface__["data"][0])
        parts = run_row_chunks(
            lambda lo, hi: hyperbolic_forward_kernel(
                q[lo:hi], kt, vt, ids[lo:hi], kap, eps, inv_tau, sigma, expm, tang, shared
            ),
            B,
            float(B) * n * (q.shape[1] + vt.shape[1]) * 4,
        )
        out, w, ok = join_row_chunks(parts)
        if not ok:
            raise NonFiniteError(f"{self.name}: keys/values rows referenced by ids contain NaN or infinity")
        return out, w

    def _weights(self, batch: AttentionBatch) -> np.ndarray:
        return self._run(batch)[1]

    def _forward(self, batch: AttentionBatch) -> ForwardResult:
        out, w = self._run(batch)
        return ForwardResult(out, (batch, w), weights=w)

    def _to_ball(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        xe = expmap0(x, self.kappa) if self.input_map == "expmap" else x
        return xe, project(xe, self.kappa, self.eps)

    def _from_ball_grad(self, x: np.ndarray, xe: np.ndarray, g: np.ndarray) -> np.ndarray:
        g = project_backward(xe, g, self.kappa, self.eps)
        if self.input_map == "expmap":
            g = expmap0_backward(x, g, self.kappa)
        return g

    def _backward(self, grad_out: np.ndarray, data: Any, input_grads: bool) -> dict[str, np.ndarray]:
        batch, w = data
        if batch.ids is not None:
            ids = np.ascontiguousarray(np.where(batch.mask, batch.ids, -1))
            kt, vt = batch.keys, batch.values
        else:
            B0, n0, d0 = batch.keys.shape
            kt = batch.keys.reshape(B0 * n0, d0)
            vt = batch.values.reshape(B0 * n0, batch.values.shape[2])
            ids = dense_ids(batch.mask)
        tau = math.exp(float(self._params["log_temperature"][0]))
        sigma = math.exp(float(self._params["log_scale"][0]))
        q, kap, eps = batch.query, self.kappa, self.eps
        expm, tang = self.input_map == "expmap", self.output == "tangent"
        B, n = ids.shape
        parts = run_row_chunks(
            lambda lo, hi: hyperbolic_backward_kernel(
                q[lo:hi], kt, vt, ids[lo:hi], w[lo:hi], grad_out[lo:hi], kap, eps, tau, sigma, expm, tang,
                input_grads,
            ),
            B,
            float(B) * n * (q.shape[1] + vt.shape[1]) * 12,
        )
        grads: dict[str, np.ndarray] = {
            # per-row terms summed once over every row: the same total at any thread count
            "log_temperature": np.array([np.sum(np.concatenate([r[3] for r in parts]))]),
            "log_scale": np.array([np.sum(np.concatenate([r[4] for r in parts]))]),
            "query": np.concatenate([r[0] for r in parts]),
        }
        if input_grads:
            dK = np.concatenate([r[1] for r in parts])
            dV = np.concatenate([r[2] for r in parts])
            if batch.ids is not None:
                dK = scatter_add_rows(dK, ids, batch.keys.shape[0])
                dV = scatter_add_rows(dV, ids, batch.values.shape[0])
            grads["keys"] = dK
            grads["values"] = dV
        dtp = self.dtype
        return {k: np.ascontiguousarray(v, dtype=dtp) for k, v in grads.items()}

    def _backward_numpy(self, grad_out: np.ndarray, data: Any) -> dict[str, np.ndarray]:
        """Vectorised numpy twin of the backward kernel (kept as a cross-check in the tests)."""
        batch, w = data
        f8 = np.float64
        kap = self.kappa
        mask = batch.mask
        if batch.ids is not None:
            ids = np.ascontiguousarray(np.where(mask, batch.ids, -1))
            K = gather_rows(batch.keys, ids).astype(f8)
            V = gather_rows(batch.values, ids).astype(f8)
        else:
            K, V = batch.keys.astype(f8), batch.values.astype(f8)
        sigma = math.exp(float(self._params["log_scale"][0]))
        q = batch.query.astype(f8) * sigma
        K = K * sigma
        V = V * sigma
        w = w.astype(f8)
        go = grad_out.astype(f8)
        log_tau = float(self._params["log_temperature"][0])
        tau = math.exp(log_tau)
        qe, qp = self._to_ball(q)
        ke, kp = self._to_ball(K)
        ve, vp = self._to_ball(V)
        t = logmap0(vp, kap)
        u = np.matmul(w[:, None, :], t)[:, 0, :]
        if self.output == "ball":
            y = expmap0(u, kap)
            du = expmap0_backward(u, project_backward(y, go, kap, self.eps), kap)
        else:
            du = go / sigma  # out = u / sigma
        dw = np.matmul(t, du[:, :, None])[:, :, 0]
        dt = w[:, :, None] * du[:, None, :]
        dV = self._from_ball_grad(V, ve, logmap0_backward(vp, dt, kap))
        ds = softmax_backward(w, dw) * mask
        # distances, recomputed in float64
        aq = 1.0 - kap * np.sum(qp * qp, axis=-1)  # (B,)
        ak = 1.0 - kap * np.sum(kp * kp, axis=-1)  # (B, n)
        diff = qp[:, None, :] - kp  # (B, n, d)
        delta = np.sum(diff * diff, axis=-1)
        den = aq[:, None] * ak
        z = 2.0 * kap * delta / den
        dist = np.log1p(z + np.sqrt(z * (z + 2.0))) / math.sqrt(kap)
        s = -dist / tau
        grads: dict[str, np.ndarray] = {"log_temperature": np.array([-np.sum(ds * s)])}
        ddist = -ds / tau
        root = np.sqrt(z * (z + 2.0))
        dz = np.where(root > 1e-12, ddist / (math.sqrt(kap) * np.maximum(root, 1e-12)), 0.0) * mask
        c1 = dz * 2.0 * kap / den  # coefficient of d(delta)
        dqp = np.matmul((2.0 * c1)[:, None, :], diff)[:, 0, :]
        dqp += (np.sum(dz * z, axis=1) / aq * 2.0 * kap)[:, None] * qp
        dkp = -2.0 * c1[:, :, None] * diff + (dz * z / ak * 2.0 * kap)[:, :, None] * kp
        dq = self._from_ball_grad(q, qe, dqp)
        dK = self._from_ball_grad(K, ke, dkp)
        # inputs entered as sigma * x: d/dx = sigma * d/d(sigma x), d/dlog(sigma) = sum (sigma x) . d/d(sigma x)
        dlog_scale = np.sum(q * dq) + np.sum(K * dK) + np.sum(V * dV)
        if self.output == "tangent":
            dlog_scale -= np.sum(go * u) / sigma  # the explicit 1/sigma of the output
        grads["log_scale"] = np.array([dlog_scale])
        grads["query"] = dq * sigma
        dK = dK * sigma
        dV = dV * sigma
        if batch.ids is not None:
            dK = scatter_add_rows(np.ascontiguousarray(dK), ids, batch.keys.shape[0])
            dV = scatter_add_rows(np.ascontiguousarray(dV), ids, batch.values.shape[0])
        grads["keys"] = dK
        grads["values"] = dV
        dtp = self.dtype
        return {k: np.ascontiguousarray(v, dtype=dtp) for k, v in grads.items()}
