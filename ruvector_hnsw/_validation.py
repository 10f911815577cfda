"""Input validation shared by the index, search and dataset code.

Every function either returns a clean, C-contiguous array of the documented dtype or raises a
typed error from :mod:`ruvector_hnsw.errors` whose message names the argument and the problem.
None of them mutates its input.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ruvector_hnsw.errors import (
    DimensionMismatchError,
    DuplicateIdError,
    EmptyInputError,
    InvalidDTypeError,
    InvalidInputError,
    NonFiniteError,
    ShapeMismatchError,
)

__all__ = ["METRIC_ALIASES", "as_ids", "as_matrix", "check_positive_int"]

#: every accepted spelling of a distance metric -> the package's name for it ("l2", "ip", "cosine");
#: ann-benchmarks' ``euclidean``/``angular``/``dot`` included
METRIC_ALIASES: dict[str, str] = {
    "l2": "l2",
    "euclidean": "l2",
    "ip": "ip",
    "dot": "ip",
    "inner_product": "ip",
    "cosine": "cosine",
    "angular": "cosine",
}


def _numeric(arr: np.ndarray, name: str) -> None:
    kind = arr.dtype.kind
    if kind not in "fiub":
        what = {"c": "complex", "O": "object", "U": "string", "S": "bytes", "V": "structured"}.get(kind, str(arr.dtype))
        raise InvalidDTypeError(f"{name}: dtype {arr.dtype} ({what}) cannot be used; pass real numbers")


def as_matrix(
    x: Any,
    name: str = "vectors",
    dim: int | None = None,
    *,
    dtype: type = np.float32,
    allow_vector: bool = True,
    allow_empty: bool = False,
) -> np.ndarray:
    """Convert ``x`` to a finite, C-contiguous ``(n, dim)`` array of ``dtype``.

    Parameters
    ----------
    x : array_like
        Real numbers; float64 and integers are converted, complex/object/string rejected.
    name : str
        Argument name used in error messages.
    dim : int, optional
        Required number of columns.
    dtype : numpy dtype
        Output dtype (float32 unless stated).
    allow_vector : bool
        Accept a 1-d array of length ``dim`` as one row.
    allow_empty : bool
        Accept zero rows.

    Returns
    -------
    numpy.ndarray
        A new or the same array, ``(n, dim)``, C-contiguous.

    Raises
    ------
    InvalidDTypeError, ShapeMismatchError, DimensionMismatchError, EmptyInputError, NonFiniteError
    """
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as exc:  # ragged lists and the like
        raise InvalidDTypeError(f"{name}: cannot be converted to an array ({exc})") from exc
    _numeric(arr, name)
    if arr.ndim == 1 and allow_vector:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2:
        raise ShapeMismatchError(f"{name}: expected a 2-d array (n, dim), got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise DimensionMismatchError(f"{name}: expected dimension {dim}, got {arr.shape[1]}")
    if arr.shape[0] == 0 and not allow_empty:
        raise EmptyInputError(f"{name}: no rows given")
    out: np.ndarray = np.ascontiguousarray(arr, dtype=dtype)
    if out.size and not np.isfinite(out).all():
        bad = int(np.flatnonzero(~np.isfinite(out).all(axis=1))[0])
        raise NonFiniteError(f"{name}: row {bad} holds NaN or infinity")
    return out


def as_ids(
    ids: Any,
    name: str = "ids",
    n: int | None = None,
    *,
    unique: bool = True,
    allow_negative: bool = False,
) -> np.ndarray:
    """Convert ``ids`` to a 1-d int64 array, checking count, sign, integrality and uniqueness.

    Raises
    ------
    InvalidDTypeError, ShapeMismatchError, InvalidInputError, DuplicateIdError
    """
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    _numeric(arr, name)
    if arr.ndim != 1:
        raise ShapeMismatchError(f"{name}: expected a 1-d array of ids, got shape {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or not np.array_equal(arr, np.round(arr)):
            raise InvalidDTypeError(f"{name}: ids must be integers")
    if arr.dtype.kind == "u" and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        raise InvalidInputError(f"{name}: id {int(arr.max())} does not fit in int64")
    out = arr.astype(np.int64)
    if n is not None and out.shape[0] != n:
        raise ShapeMismatchError(f"{name}: got {out.shape[0]} ids for {n} vectors")
    if not allow_negative and out.size and out.min() < 0:
        raise InvalidInputError(f"{name}: ids must be >= 0 (-1 is the padding id), got {int(out.min())}")
    if unique and out.size > 1:
        s = np.sort(out)
        dup = s[1:][s[1:] == s[:-1]]
        if dup.size:
            raise DuplicateIdError(f"{name}: id {int(dup[0])} appears more than once in one call")
    return out


def check_positive_int(value: Any, name: str, error: type[InvalidInputError] = InvalidInputError) -> int:
    """Return ``value`` as an int if it is an integer >= 1, else raise ``error`` (InvalidInputError)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise error(f"{name}: expected an integer >= 1, got {value!r}")
    return int(value)
