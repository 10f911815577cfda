"""The alpha-QE / DBA averaging rule, shared by the training-free search modes and the evaluation baselines."""

from __future__ import annotations

from typing import Any

import numpy as np

from ruvector_hnsw._validation import METRIC_ALIASES
from ruvector_hnsw.errors import ConfigError, ShapeMismatchError

__all__ = ["expand_vectors"]



def _unit(x: np.ndarray, axis: int = -1) -> np.ndarray:
    n = np.linalg.norm(x, axis=axis, keepdims=True)
    return np.asarray(x / np.maximum(n, 1e-12), dtype=np.float64)


def expand_vectors(v: Any, neigh: Any, mask: Any, *, alpha: float, metric: str) -> np.ndarray:
    """Weighted average of each vector with its neighbours (alpha-QE / DBA rule).

    ``w_j = max(cos(v, x_j), 0) ** alpha`` over the valid neighbours, then

    - ``cosine``: ``normalize(v/|v| + sum_j w_j x_j/|x_j|)``;
    - ``ip``: the same direction, rescaled to ``|v|``;
    - ``l2``: the weighted mean ``(v + sum_j w_j x_j) / (1 + sum_j w_j)`` (stays in the data's scale).

    Parameters
    ----------
    v : array_like, shape (B, d)
        Vectors to expand (queries, or database items for DBA).
    neigh : array_like, shape (B, n, d)
        Their top-n neighbours' vectors.
    mask : array_like of bool, shape (B, n)
        Valid neighbours (False for padding).
    alpha : float
        Exponent of the similarity weights (``alpha = 0``: plain average of the positively
        similar neighbours).
    metric : {"l2", "ip", "cosine"}
        Selects the normalisation above.

    Returns
    -------
    numpy.ndarray of float32, shape (B, d)
    """
    key = METRIC_ALIASES.get(str(metric).lower(), "")
    if not key:
        raise ConfigError(f"unknown metric {metric!r}")
    if alpha < 0 or not np.isfinite(alpha):
        raise ConfigError(f"alpha must be a finite number >= 0, got {alpha!r}")
    vv = np.asarray(v, dtype=np.float64)
    xx = np.asarray(neigh, dtype=np.float64)
    m = np.asarray(mask, dtype=bool)
    if xx.ndim != 3 or xx.shape[0] != vv.shape[0] or xx.shape[2] != vv.shape[1] or m.shape != xx.shape[:2]:
        raise ShapeMismatchError(f"expand_vectors: v {vv.shape}, neigh {xx.shape} and mask {m.shape} do not agree")
    vu = _unit(vv)
    xu = _unit(xx)
    s = np.einsum("bd,bnd->bn", vu, xu)
    w = np.where(m, np.maximum(s, 0.0), 0.0)
    w = w**alpha if alpha != 0 else (w > 0).astype(np.float64)
    w = np.where(m, w, 0.0)
    if key == "l2":
        out = (vv + np.einsum("bn,bnd->bd", w, xx)) / (1.0 + w.sum(axis=1, keepdims=True))
    else:
        out = _unit(vu + np.einsum("bn,bnd->bd", w, xu))
        if key == "ip":
            out = out * np.linalg.norm(vv, axis=1, keepdims=True)
    return np.ascontiguousarray(out, dtype=np.float32)
