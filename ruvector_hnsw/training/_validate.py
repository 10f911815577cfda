"""Input validation shared by the training parts (private).

Every check raises a typed error from :mod:`ruvector_hnsw.errors` whose message names
the offending argument, and none of them mutates its input.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ruvector_hnsw.errors import (
    ConfigError,
    EmptyInputError,
    InvalidDTypeError,
    InvalidInputError,
    NonFiniteError,
    ShapeMismatchError,
)

__all__ = [
    "as_bool_matrix",
    "as_float",
    "as_float_table",
    "as_id_array",
    "check_csr",
    "check_finite_rows",
    "check_positive",
]


def _float_dtype(arr: np.ndarray, name: str) -> np.ndarray:
    """``arr`` with float32/float64 kept and other real dtypes (ints, bools, float16) -> float64."""
    if arr.dtype.kind in "biu":
        return arr.astype(np.float64)
    if arr.dtype.kind != "f":
        raise InvalidDTypeError(f"{name}: expected a real numeric array, got dtype {arr.dtype}")
    if arr.dtype not in (np.float32, np.float64):
        return arr.astype(np.float64)
    return arr


def as_float(x: Any, name: str, *, ndim: int | tuple[int, ...] | None = None, allow_empty: bool = True) -> np.ndarray:
    """Return ``x`` as a finite float32/float64 array (float64 kept, other dtypes -> float64).

    float32 and float64 inputs keep their dtype (the float64 path is what the
    finite-difference tests use); integers and bools are promoted to float64.
    """
    try:
        arr = np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic array-likes
        raise InvalidDTypeError(f"{name}: cannot convert to an array ({exc})") from exc
    arr = _float_dtype(arr, name)
    if ndim is not None:
        dims = (ndim,) if isinstance(ndim, int) else ndim
        if arr.ndim not in dims:
            want = " or ".join(map(str, dims))
            raise ShapeMismatchError(f"{name}: expected {want} dimensions, got shape {arr.shape}")
    if not allow_empty and arr.size == 0:
        raise EmptyInputError(f"{name}: must not be empty (shape {arr.shape})")
    if not np.all(np.isfinite(arr)):
        raise NonFiniteError(f"{name}: contains NaN or infinity")
    return arr


def as_bool_matrix(x: Any, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Return ``x`` as a bool array of exactly ``shape``."""
    arr = np.asarray(x)
    if arr.dtype != np.bool_:
        if arr.dtype.kind not in "biu":
            raise InvalidDTypeError(f"{name}: expected a boolean mask, got dtype {arr.dtype}")
        if arr.size and not np.all((arr == 0) | (arr == 1)):
            raise InvalidInputError(f"{name}: an integer mask must hold only 0 and 1")
        arr = arr.astype(bool)
    if arr.shape != tuple(shape):
        raise ShapeMismatchError(f"{name}: expected shape {tuple(shape)}, got {arr.shape}")
    return arr


def as_id_array(x: Any, name: str, *, ndim: int | None = None) -> np.ndarray:
    """Return ``x`` as an int64 array (``-1`` is the padding value and is allowed)."""
    arr = np.asarray(x)
    if arr.dtype.kind == "f":
        if arr.size and not np.all(np.isfinite(arr)):
            raise NonFiniteError(f"{name}: contains NaN or infinity")
        if arr.size and not np.all(arr == np.round(arr)):
            raise InvalidDTypeError(f"{name}: ids must be integers")
    elif arr.dtype.kind not in "iu":
        raise InvalidDTypeError(f"{name}: ids must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if ndim is not None and arr.ndim != ndim:
        raise ShapeMismatchError(f"{name}: expected {ndim} dimensions, got shape {arr.shape}")
    if arr.size and arr.min() < -1:
        raise InvalidInputError(f"{name}: ids must be >= 0 (or -1 for padding), got {int(arr.min())}")
    return arr


def check_positive(value: float, name: str, *, allow_zero: bool = False) -> float:
    """Return ``float(value)`` if it is finite and > 0 (or >= 0 with ``allow_zero``)."""
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: expected a number, got {value!r}") from exc
    if not np.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ConfigError(f"{name}: must be {'>= 0' if allow_zero else '> 0'} and finite, got {value!r}")
    return v


def check_csr(indptr: Any, indices: Any, n_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate a CSR adjacency over ``n_nodes`` nodes; returns (indptr, indices) as int64.

    ``indptr`` has ``n_nodes + 1`` non-decreasing entries starting at 0 and ending at
    ``len(indices)``; every index lies in ``[0, n_nodes)`` or is ``-1`` (padding, ignored).
    """
    ip = np.asarray(indptr)
    ix = np.asarray(indices)
    if ip.dtype.kind not in "iu" or (ix.dtype.kind not in "iu" and ix.size):
        raise InvalidDTypeError("indptr/indices: CSR arrays must be integer arrays")
    ip = ip.astype(np.int64, copy=False)
    ix = ix.astype(np.int64, copy=False)
    if ip.ndim != 1 or ix.ndim != 1:
        raise ShapeMismatchError(f"indptr/indices: must be 1-D, got shapes {ip.shape} and {ix.shape}")
    if ip.shape[0] != n_nodes + 1:
        raise ShapeMismatchError(f"indptr: expected {n_nodes + 1} entries for {n_nodes} nodes, got {ip.shape[0]}")
    if ip[0] != 0 or ip[-1] != ix.shape[0] or np.any(np.diff(ip) < 0):
        raise InvalidInputError("indptr: must start at 0, be non-decreasing and end at len(indices)")
    if ix.size and (ix.min() < -1 or ix.max() >= n_nodes):
        raise InvalidInputError(f"indices: node ids must lie in [0, {n_nodes}) (or -1 for padding)")
    return ip, ix


def as_float_table(x: Any, name: str) -> np.ndarray:
    """A 2-D float32/float64 table (other real dtypes -> float64) *without* the finiteness scan.

    For large tables of which a call touches only some rows: check the gathered rows with
    :func:`check_finite_rows` instead of scanning the whole table.
    """
    arr = _float_dtype(np.asarray(x), name)
    if arr.ndim != 2:
        raise ShapeMismatchError(f"{name}: expected 2 dimensions, got shape {arr.shape}")
    return arr


def check_finite_rows(rows: np.ndarray, name: str) -> None:
    """Raise :class:`NonFiniteError` naming ``name`` if the gathered rows hold NaN/inf."""
    if not np.all(np.isfinite(rows)):
        raise NonFiniteError(f"{name}: contains NaN or infinity (in the rows this call uses)")
