"""Divergences used as auxiliary losses and diagnostics (plain numpy, float64, in nats).

* :func:`kl_gaussian_unit` - ``KL(N(mu, diag(exp(logvar))) || N(0, I))
  = 1/2 sum_i (mu_i^2 + exp(logvar_i) - 1 - logvar_i)``, with its gradient
  :func:`kl_gaussian_unit_grad` (``d/dmu = mu``, ``d/dlogvar = (exp(logvar) - 1) / 2``);
* :func:`kl_categorical` - ``KL(p || q) = sum_i p_i log(p_i / q_i)`` (``0 log 0 = 0``; ``+inf``
  when ``q_i = 0 < p_i``);
* :func:`js_divergence` - ``JS(p, q) = KL(p || m)/2 + KL(q || m)/2`` with ``m = (p + q)/2``;
  symmetric, in ``[0, log 2]``.

Each reduces over ``axis`` (default the last) and broadcasts over the others. Probability
vectors must be non-negative and finite (they are not renormalised: pass distributions).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ruvector_hnsw.errors import InvalidInputError, NonFiniteError, ShapeMismatchError

__all__ = ["js_divergence", "kl_categorical", "kl_gaussian_unit", "kl_gaussian_unit_grad"]


def _real(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise InvalidInputError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise NonFiniteError(f"{name} contains NaN or infinity")
    return arr


def _pair(a: Any, b: Any, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    x, y = _real(a, names[0]), _real(b, names[1])
    if x.shape != y.shape:
        raise ShapeMismatchError(f"{names[0]} and {names[1]} must have the same shape, got {x.shape} and {y.shape}")
    return x, y


def _probabilities(p: Any, q: Any) -> tuple[np.ndarray, np.ndarray]:
    x, y = _pair(p, q, ("p", "q"))
    if (x < 0).any() or (y < 0).any():
        raise InvalidInputError("probabilities must be non-negative")
    return x, y


def kl_gaussian_unit(mu: Any, logvar: Any, axis: int = -1) -> np.ndarray:
    """``KL(N(mu, diag(exp(logvar))) || N(0, I))`` summed over ``axis``."""
    m, lv = _pair(mu, logvar, ("mu", "logvar"))
    return np.asarray(0.5 * np.sum(m * m + np.exp(lv) - 1.0 - lv, axis=axis))


def kl_gaussian_unit_grad(mu: Any, logvar: Any) -> tuple[np.ndarray, np.ndarray]:
    """Elementwise gradient of :func:`kl_gaussian_unit`: ``(mu, (exp(logvar) - 1) / 2)``."""
    m, lv = _pair(mu, logvar, ("mu", "logvar"))
    return m, 0.5 * (np.exp(lv) - 1.0)


def _xlogy_ratio(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``p log(p / q)`` elementwise with ``0 log 0 = 0`` and ``+inf`` where ``q = 0 < p``."""
    out = np.zeros_like(p)
    pos = p > 0
    with np.errstate(divide="ignore"):
        out[pos] = p[pos] * (np.log(p[pos]) - np.log(q[pos]))
    return out


def kl_categorical(p: Any, q: Any, axis: int = -1) -> np.ndarray:
    """``KL(p || q) = sum p log(p / q)`` over ``axis``."""
    x, y = _probabilities(p, q)
    return np.asarray(np.sum(_xlogy_ratio(x, y), axis=axis))


def js_divergence(p: Any, q: Any, axis: int = -1) -> np.ndarray:
    """Jensen-Shannon divergence ``KL(p || m)/2 + KL(q || m)/2``, ``m = (p + q)/2``, over ``axis``."""
    x, y = _probabilities(p, q)
    m = 0.5 * (x + y)
    return np.asarray(0.5 * np.sum(_xlogy_ratio(x, m), axis=axis) + 0.5 * np.sum(_xlogy_ratio(y, m), axis=axis))
