"""A variational information bottleneck on the attention read-out (``info_bottleneck``).

Formula
-------
With the scaled-dot read-out ``a = sum_j softmax_j(q.k_j / (sqrt(d) tau)) v_j`` (width ``dv``)::

    mu     = a W_mu + b_mu                       (B, p)    mean head
    logvar = clip(a W_lv + b_lv, -20, 20)        (B, p)    log-variance head
    out    = mu + exp(logvar / 2) * eps          training: eps ~ N(0, I) (reparameterised sample)
    out    = mu                                  inference
    KL     = mean_b 1/2 sum_i (mu^2 + exp(logvar) - 1 - logvar)     (to a unit Gaussian)

Training vs inference is chosen per call, explicitly, by the context: ``Context(extra=
{"sample_seed": s})`` (an int >= 0) samples ``eps`` from ``numpy.random.default_rng(s)`` (so
a call is reproducible and the mechanism keeps no RNG state); without it the call is an
inference call and returns the mean. Nothing on the mechanism changes either way.

Auxiliary loss
--------------
``cache.aux_losses["kl"]`` is the KL above (unweighted, mean over the batch rows). Like moe's
load balance, :meth:`backward` returns the gradients of ``sum(grad_out * out) + beta * KL``
with ``beta`` from a linear annealing schedule :class:`LinearBetaSchedule` (``beta_at(step)``:
0 at step 0 rising linearly to ``beta`` at ``beta_warmup`` steps). The step comes with the call,
``Context(extra={"step": t})``; without it the final ``beta`` applies. The schedule is plain,
training-free code: :func:`beta_at` / :class:`LinearBetaSchedule` can be used on their own.
``cache.inspect``: ``mu``, ``logvar`` ``(B, p)``, per-row ``kl`` ``(B,)`` and the ``beta`` the
backward uses, repeated per row ``(B,)``.

Shapes and cost
---------------
``query (B, d)``, keys ``(B, n, d)``, values ``(B, n, dv)`` (or tables + ``ids``), output
``(B, p)`` with ``p = bottleneck_dim`` (default ``dv``). Cost: scaled-dot attention (fused
gather kernel) plus two ``(B, dv) x (dv, p)`` products. At initialisation ``W_mu`` is the
identity (``p = dv``), ``b_mu = 0``, ``W_lv = 0``, ``b_lv = init_logvar``, so an inference call
equals ``scaled_dot``. Fully masked row: zero read-out ``a = 0``, so ``mu = b_mu`` (the bias is
the documented constant term of that row; zero at initialisation), plus the noise in training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ruvector_hnsw.attention._kernels import mq_backward
from ruvector_hnsw.attention._ops import sd_attend
from ruvector_hnsw.attention.base import (
    AttentionBatch,
    AttentionMechanism,
    ForwardResult,
    check_positive_float,
    check_positive_int,
)
from ruvector_hnsw.attention.divergences import kl_gaussian_unit
from ruvector_hnsw.errors import ConfigError, DimensionMismatchError, InvalidInputError

__all__ = ["LOGVAR_CLIP", "InfoBottleneckAttention", "LinearBetaSchedule", "beta_at"]

#: the log-variance head is clipped to ``[-LOGVAR_CLIP, LOGVAR_CLIP]`` (zero gradient beyond)
LOGVAR_CLIP = 20.0


def _step(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise InvalidInputError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


def beta_at(step: int, beta: float, warmup_steps: int = 0, start: float = 0.0) -> float:
    """Linear annealing: ``start`` at step 0 to ``beta`` at ``warmup_steps``, then ``beta``."""
    s = _step(step, "step")
    if warmup_steps <= 0 or s >= warmup_steps:
        return float(beta)
    return float(start + (beta - start) * s / warmup_steps)


@dataclass(frozen=True)
class LinearBetaSchedule:
    """The KL weight over training steps (see :func:`beta_at`); immutable, training-free."""

    beta: float
    warmup_steps: int = 0
    start: float = 0.0

    def __post_init__(self) -> None:
        check_positive_float(self.beta, "beta", allow_zero=True)
        check_positive_float(self.start, "start", allow_zero=True)
        check_positive_int(self.warmup_steps, "warmup_steps", minimum=0)

    def beta_at(self, step: int) -> float:
        """The weight at ``step`` (>= 0)."""
        return beta_at(step, self.beta, self.warmup_steps, self.start)


class InfoBottleneckAttention(AttentionMechanism):
    """Scaled-dot attention followed by a variational information bottleneck (KL aux loss).

    Parameters
    ----------
    dim : int
        Query/key dimensionality ``d``.
    value_dim : int, optional
        Width of the values ``dv`` (default ``dim``).
    bottleneck_dim : int, optional
        Width ``p`` of the bottleneck = output width (default ``value_dim``).
    temperature : float
        Softmax temperature of the attention (default 1).
    beta : float
        Final KL weight (default ``1e-3``; 0 disables the KL gradient).
    beta_warmup : int
        Steps of the linear ramp of ``beta`` from 0 (default 0: constant ``beta``).
    init_logvar : float
        Initial log-variance bias ``b_lv`` (default -4: noise std about 0.14).
    dtype, seed
        See :class:`~ruvector_hnsw.attention.base.AttentionMechanism`.

    Params: ``W_mu (dv, p)``, ``b_mu (p,)``, ``W_lv (dv, p)``, ``b_lv (p,)``.
    """

    name = "info_bottleneck"
    fused_gather = True
    checks_table_rows = True

    def __init__(
        self,
        dim: int,
        *,
        value_dim: int | None = None,
        bottleneck_dim: int | None = None,
        temperature: float = 1.0,
        beta: float = 1e-3,
        beta_warmup: int = 0,
        init_logvar: float = -4.0,
        dtype: Any = np.float32,
        seed: int | None = None,
    ) -> None:
        super().__init__(dim, dtype=dtype, seed=seed)
        self.value_dim = check_positive_int(self.dim if value_dim is None else value_dim, "value_dim")
        self.bottleneck_dim = check_positive_int(
            self.value_dim if bottleneck_dim is None else bottleneck_dim, "bottleneck_dim")
        self.temperature = check_positive_float(temperature, "temperature")
        self.beta = check_positive_float(beta, "beta", allow_zero=True)
        self.beta_warmup = check_positive_int(beta_warmup, "beta_warmup", minimum=0)
        if isinstance(init_logvar, bool) or not isinstance(init_logvar, (int, float, np.integer, np.floating)) \
                or not abs(float(init_logvar)) <= LOGVAR_CLIP:
            raise ConfigError(f"init_logvar must be a number in [-{LOGVAR_CLIP}, {LOGVAR_CLIP}], got {init_logvar!r}")
        self.init_logvar = float(init_logvar)
        dv, p, dt = self.value_dim, self.bottleneck_dim, self.dtype
        self._params = {
            "W_mu": np.ascontiguousarray(np.eye(dv, p), dtype=dt),
            "b_mu": np.zeros(p, dtype=dt),
            "W_lv": np.zeros((dv, p), dtype=dt),
            "b_lv": np.full(p, self.init_logvar, dtype=dt),
        }

    # -- description ---------------------------------------------------------------------------
    @property
    def scale(self) -> float:
        """Score factor ``1 / (sqrt(d) * temperature)``."""
        return float(1.0 / (np.sqrt(self.dim) * self.temperature))

    @property
    def schedule(self) -> LinearBetaSchedule:
        """The KL-weight schedule of this mechanism (built from ``beta`` / ``beta_warmup``)."""
        return LinearBetaSchedule(self.beta, self.beta_warmup)

    def output_dim(self, value_dim: int) -> int:
        return self.bottleneck_dim

    def check_value_dim(self, value_dim: int) -> None:
        if value_dim != self.value_dim:
            raise DimensionMismatchError(
                f"{self.name}: values have width {value_dim}, mechanism expects value_dim={self.value_dim}")

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(), "value_dim": self.value_dim, "bottleneck_dim": self.bottleneck_dim,
            "temperature": self.temperature, "beta": self.beta, "beta_warmup": self.beta_warmup,
            "init_logvar": self.init_logvar,
        }

    # -- the call mode ---------------------------------------------------------------------------
    def _mode(self, batch: AttentionBatch) -> tuple[int | None, float]:
        """``(sample_seed or None, beta)`` of a call, from ``context.extra``."""
        extra = {} if batch.context is None else batch.context.extra
        if not isinstance(extra, dict):
            raise InvalidInputError(f"context.extra must be a dict, got {type(extra).__name__}")
        seed = extra.get("sample_seed")
        if seed is not None:
            seed = _step(seed, "context.extra['sample_seed']")
        step = extra.get("step")
        beta = self.beta if step is None else self.schedule.beta_at(_step(step, "context.extra['step']"))
        return seed, beta

    # -- compute -------------------------------------------------------------------------------
    def _attend(self, batch: AttentionBatch) -> tuple[np.ndarray, np.ndarray]:
        T, Vt, ids = batch.table_form()
        assert Vt is not None
        R, W, ok = sd_attend(batch.query, T, Vt, ids, batch.mask, self.scale)
        if not ok:
            self._raise_nonfinite_rows()
        return R, W

    def _forward(self, batch: AttentionBatch) -> ForwardResult:
        seed, beta = self._mode(batch)
        a, W = self._attend(batch)
        p = self._params
        a64 = a.astype(np.float64)
        mu = a64 @ p["W_mu"].astype(np.float64) + p["b_mu"]
        raw_lv = a64 @ p["W_lv"].astype(np.float64) + p["b_lv"]
        lv = np.clip(raw_lv, -LOGVAR_CLIP, LOGVAR_CLIP)
        eps = None
        z = mu
        if seed is not None:
            eps = np.random.default_rng(seed).standard_normal(mu.shape)
            z = mu + np.exp(0.5 * lv) * eps
        kl_rows = kl_gaussian_unit(mu, lv)
        B = batch.B
        data = (batch, W, a, mu, lv, np.abs(raw_lv) <= LOGVAR_CLIP, eps, beta)
        return ForwardResult(
            np.ascontiguousarray(z, dtype=self.dtype), data, weights=W,
            aux_losses={"kl": float(kl_rows.mean())}, aux_weights={"kl": float(beta)},
            inspect={"mu": mu.astype(self.dtype), "logvar": lv.astype(self.dtype),
                     "kl": kl_rows.astype(self.dtype), "beta": np.full(B, beta, dtype=self.dtype)},
        )

    def _weights(self, batch: AttentionBatch) -> np.ndarray:
        T, _, ids = batch.table_form()
        return self._softmax_weights(batch.query, T, ids, batch.mask, self.scale)

    def _backward(self, grad_out: np.ndarray, data: Any, input_grads: bool) -> dict[str, np.ndarray]:
        batch, W, a, mu, lv, inside, eps, beta = data
        p = self._params
        B = batch.B
        g = grad_out.astype(np.float64)
        dmu = g + (beta / B) * mu
        dlv = (beta / B) * 0.5 * (np.exp(lv) - 1.0)
        if eps is not None:
            dlv = dlv + g * eps * 0.5 * np.exp(0.5 * lv)
        dlv = np.where(inside, dlv, 0.0)
        a64 = a.astype(np.float64)
        da = dmu @ p["W_mu"].T.astype(np.float64) + dlv @ p["W_lv"].T.astype(np.float64)
        T, Vt, ids = batch.table_form()
        assert Vt is not None
        dt = self.dtype
        dQ, dT, dV = mq_backward(
            batch.query[:, None, :], T, Vt, ids, ids, batch.mask, W[:, None, :],
            np.ascontiguousarray(da[:, None, :], dtype=dt), self.scale, T.shape[0], Vt.shape[0], input_grads,
        )
        return {
            "W_mu": np.ascontiguousarray(a64.T @ dmu, dtype=dt),
            "b_mu": np.ascontiguousarray(dmu.sum(axis=0), dtype=dt),
            "W_lv": np.ascontiguousarray(a64.T @ dlv, dtype=dt),
            "b_lv": np.ascontiguousarray(dlv.sum(axis=0), dtype=dt),
            "query": dQ[:, 0, :],
            **self._input_grad_entries(batch, dT, dV, input_grads),
        }
