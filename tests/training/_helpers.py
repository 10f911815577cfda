"""Shared test helpers: central finite differences in float64."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def fd_grad(f: Callable[[np.ndarray], float], x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central finite-difference gradient of scalar ``f`` at ``x`` (float64)."""
    x = np.array(x, dtype=np.float64)
    g = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        idx = it.multi_index
        old = x[idx]
        x[idx] = old + eps
        fp = f(x.copy())
        x[idx] = old - eps
        fm = f(x.copy())
        x[idx] = old
        g[idx] = (fp - fm) / (2 * eps)
    return g
