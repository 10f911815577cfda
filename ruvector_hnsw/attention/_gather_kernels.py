"""numba kernels that gather rows of a table by ids and scatter-add gradients back.

Plain ``@njit`` functions, no state. ``ids`` use ``-1`` for padding; a padded slot gathers
zeros and receives no gradient.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def gather_rows(table: np.ndarray, ids: np.ndarray) -> np.ndarray:  # pragma: no cover - jit
    """Return ``out[b, j] = table[ids[b, j]]`` (zeros where ``ids[b, j] < 0``)."""
    B, n = ids.shape
    d = table.shape[1]
    out = np.zeros((B, n, d), dtype=table.dtype)
    for b in range(B):
        for j in range(n):
            r = ids[b, j]
            if r >= 0:
                for k in range(d):
                    out[b, j, k] = table[r, k]
    return out


@njit(cache=True, nogil=True)
def scatter_add_rows(grad: np.ndarray, ids: np.ndarray, n_rows: int) -> np.ndarray:  # pragma: no cover
    """Return the ``(n_rows, d)`` table gradient: ``sum`` of ``grad[b, j]`` into row ``ids[b, j]``."""
    B, n, d = grad.shape
    out = np.zeros((n_rows, d), dtype=grad.dtype)
    for b in range(B):
        for j in range(n):
            r = ids[b, j]
            if r >= 0:
                for k in range(d):
                    out[r, k] += grad[b, j, k]
    return out
