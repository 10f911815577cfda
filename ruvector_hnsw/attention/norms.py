"""Normalisation layers for stacked attention blocks: LayerNorm and RMSNorm with analytic backward.

Both normalise over the last axis of ``x`` (any leading shape) and scale by a learnable ``gain``
(LayerNorm also adds a learnable ``bias``)::

    LayerNorm:  xhat = (x - mean(x)) / sqrt(var(x) + eps),   y = gain * xhat + bias
    RMSNorm:    xhat = x / sqrt(mean(x^2) + eps),            y = gain * xhat

The pure functions (:func:`layer_norm_forward` / :func:`layer_norm_backward`,
:func:`rms_norm_forward` / :func:`rms_norm_backward`) return an explicit cache and never write on
their inputs; :class:`LayerNorm` / :class:`RMSNorm` hold the parameters (``params`` dict, updated
in place by the optimizers, initialised to ``gain = 1``, ``bias = 0``) and follow the attention
protocol's ``forward -> (out, cache)`` / ``backward(cache, grad) -> dict`` convention. The
backward formulas (with ``g' = grad_y * gain``, means over the last axis)::

    LayerNorm:  dx = (g' - mean(g') - xhat * mean(g' * xhat)) / sqrt(var + eps)
    RMSNorm:    dx = (g' - xhat * mean(g' * xhat)) / sqrt(mean(x^2) + eps)
    dgain = sum over rows of grad_y * xhat,   dbias = sum over rows of grad_y
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ruvector_hnsw.attention.base import check_positive_float, check_positive_int, resolve_dtype
from ruvector_hnsw.errors import ConfigError, ShapeMismatchError

__all__ = [
    "NORMS",
    "LayerNorm",
    "NormCache",
    "RMSNorm",
    "layer_norm_backward",
    "layer_norm_forward",
    "make_norm",
    "rms_norm_backward",
    "rms_norm_forward",
]

#: names accepted by :func:`make_norm` (None = no normalisation)
NORMS: tuple[str, ...] = ("layer", "rms")
_DEFAULT_EPS = 1e-5


@dataclass(frozen=True)
class NormCache:
    """What a norm's backward needs: the normalised input and the inverse scale ``1 / sigma``."""

    xhat: np.ndarray  #: (..., d) normalised input
    inv: np.ndarray   #: (..., 1) ``1 / sqrt(var + eps)`` (LayerNorm) or ``1 / rms`` (RMSNorm)
    gain: np.ndarray  #: (d,) the gain used by the forward (a copy)


def _check(x: np.ndarray, gain: np.ndarray, bias: np.ndarray | None) -> None:
    d = x.shape[-1] if x.ndim else -1
    if gain.shape != (d,):
        raise ShapeMismatchError(f"gain: expected shape ({d},), got {gain.shape}")
    if bias is not None and bias.shape != (d,):
        raise ShapeMismatchError(f"bias: expected shape ({d},), got {bias.shape}")


def layer_norm_forward(x: np.ndarray, gain: np.ndarray, bias: np.ndarray, eps: float = _DEFAULT_EPS
                       ) -> tuple[np.ndarray, NormCache]:
    """LayerNorm over the last axis: ``y = gain * (x - mean) / sqrt(var + eps) + bias``; pure."""
    x = np.asarray(x)
    _check(x, gain, bias)
    mu = x.mean(axis=-1, keepdims=True)
    xc = x - mu
    var = (xc * xc).mean(axis=-1, keepdims=True)
    inv = 1.0 / np.sqrt(var + eps)
    xhat = xc * inv
    return xhat * gain + bias, NormCache(xhat=xhat, inv=inv, gain=gain.copy())


def layer_norm_backward(cache: NormCache, grad_y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients ``(dx, dgain, dbias)`` of ``sum(grad_y * y)`` for :func:`layer_norm_forward`."""
    g = np.asarray(grad_y)
    xhat = cache.xhat
    gp = g * cache.gain
    dx = (gp - gp.mean(axis=-1, keepdims=True) - xhat * (gp * xhat).mean(axis=-1, keepdims=True)) * cache.inv
    d = xhat.shape[-1]
    dgain = (g * xhat).reshape(-1, d).sum(axis=0)
    dbias = g.reshape(-1, d).sum(axis=0)
    return dx, dgain, dbias


def rms_norm_forward(x: np.ndarray, gain: np.ndarray, eps: float = _DEFAULT_EPS) -> tuple[np.ndarray, NormCache]:
    """RMSNorm over the last axis: ``y = gain * x / sqrt(mean(x^2) + eps)``; pure."""
    x = np.asarray(x)
    _check(x, gain, None)
    inv = 1.0 / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)
    xhat = x * inv
    return xhat * gain, NormCache(xhat=xhat, inv=inv, gain=gain.copy())


def rms_norm_backward(cache: NormCache, grad_y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gradients ``(dx, dgain)`` of ``sum(grad_y * y)`` for :func:`rms_norm_forward`."""
    g = np.asarray(grad_y)
    xhat = cache.xhat
    gp = g * cache.gain
    dx = (gp - xhat * (gp * xhat).mean(axis=-1, keepdims=True)) * cache.inv
    dgain = (g * xhat).reshape(-1, xhat.shape[-1]).sum(axis=0)
    return dx, dgain


class LayerNorm:
    """LayerNorm module: ``params = {"gain", "bias"}`` of shape ``(dim,)``.

    Parameters
    ----------
    dim : int
    eps : float
        Added to the variance (> 0).
    dtype : float32 or float64
    """

    kind = "layer"

    def __init__(self, dim: int, *, eps: float = _DEFAULT_EPS, dtype: Any = np.float32) -> None:
        self.dim = check_positive_int(dim, "dim")
        self.eps = check_positive_float(eps, "eps")
        self.dtype = resolve_dtype(dtype)
        self.params: dict[str, np.ndarray] = {"gain": np.ones(self.dim, self.dtype),
                                              "bias": np.zeros(self.dim, self.dtype)}

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, NormCache]:
        """``(y, cache)`` in the module's dtype; pure."""
        xx = np.asarray(x, dtype=self.dtype)
        y, cache = layer_norm_forward(xx, self.params["gain"], self.params["bias"], self.eps)
        return y.astype(self.dtype, copy=False), cache

    def backward(self, cache: NormCache, grad_y: np.ndarray) -> dict[str, np.ndarray]:
        """``{"x": dx, "gain": dgain, "bias": dbias}``; pure."""
        dx, dgain, dbias = layer_norm_backward(cache, np.asarray(grad_y, dtype=self.dtype))
        return {"x": dx.astype(self.dtype, copy=False), "gain": dgain.astype(self.dtype, copy=False),
                "bias": dbias.astype(self.dtype, copy=False)}


class RMSNorm:
    """RMSNorm module: ``params = {"gain"}`` of shape ``(dim,)`` (no bias, no centring).

    Parameters
    ----------
    dim : int
    eps : float
        Added to the mean square (> 0).
    dtype : float32 or float64
    """

    kind = "rms"

    def __init__(self, dim: int, *, eps: float = _DEFAULT_EPS, dtype: Any = np.float32) -> None:
        self.dim = check_positive_int(dim, "dim")
        self.eps = check_positive_float(eps, "eps")
        self.dtype = resolve_dtype(dtype)
        self.params: dict[str, np.ndarray] = {"gain": np.ones(self.dim, self.dtype)}

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, NormCache]:
        """``(y, cache)`` in the module's dtype; pure."""
        xx = np.asarray(x, dtype=self.dtype)
        y, cache = rms_norm_forward(xx, self.params["gain"], self.eps)
        return y.astype(self.dtype, copy=False), cache

    def backward(self, cache: NormCache, grad_y: np.ndarray) -> dict[str, np.ndarray]:
        """``{"x": dx, "gain": dgain}``; pure."""
        dx, dgain = rms_norm_backward(cache, np.asarray(grad_y, dtype=self.dtype))
        return {"x": dx.astype(self.dtype, copy=False), "gain": dgain.astype(self.dtype, copy=False)}


def make_norm(kind: str | None, dim: int, *, dtype: Any = np.float32) -> LayerNorm | RMSNorm | None:
    """``"layer"`` -> :class:`LayerNorm`, ``"rms"`` -> :class:`RMSNorm`, None -> None."""
    if kind is None:
        return None
    if kind == "layer":
        return LayerNorm(dim, dtype=dtype)
    if kind == "rms":
        return RMSNorm(dim, dtype=dtype)
    raise ConfigError(f"norm must be one of {NORMS} or None, got {kind!r}")
