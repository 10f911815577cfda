"""One exception hierarchy for the whole package.

Every error raised on purpose by ``ruvector_hnsw`` derives from :class:`RuvectorError`
and from the builtin that fits it (``ValueError`` for bad values, ``KeyError`` for
unknown ids, ``OSError`` for files), so callers may catch either.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DimensionMismatchError",
    "DuplicateIdError",
    "EmptyInputError",
    "FileFormatError",
    "FilterError",
    "IdExistsError",
    "IndexCorruptedError",
    "IndexMismatchError",
    "InvalidDTypeError",
    "InvalidInputError",
    "LayoutError",
    "MissingContextError",
    "MissingDependencyError",
    "NonFiniteError",
    "NotFittedError",
    "RuvectorError",
    "ShapeMismatchError",
    "UnknownIdError",
]


class RuvectorError(Exception):
    """Base class of every error this package raises on purpose."""


class InvalidInputError(RuvectorError, ValueError):
    """An argument has a value the call cannot accept."""


class ConfigError(InvalidInputError):
    """A constructor or configuration parameter is out of range or unknown."""


class DimensionMismatchError(InvalidInputError):
    """Vectors have a different dimensionality than the index or mechanism expects."""


class ShapeMismatchError(InvalidInputError):
    """Arrays that must agree in shape (batch, neighbours, mask) do not."""


class IndexMismatchError(ShapeMismatchError):
    """A saved model does not belong to the index it is loaded onto (dimension, space or items differ)."""


class InvalidDTypeError(InvalidInputError):
    """An array has a dtype that cannot be converted safely (complex, object, string)."""


class NonFiniteError(InvalidInputError):
    """An array holds NaN or infinity where finite values are required."""


class EmptyInputError(InvalidInputError):
    """An array that must hold at least one row is empty."""


class DuplicateIdError(InvalidInputError):
    """The same id appears more than once in one call."""


class IdExistsError(InvalidInputError):
    """An id to be added is already present."""


class FilterError(InvalidInputError):
    """A search filter is ambiguous or malformed (e.g. a boolean mask shorter than the largest id)."""


class MissingContextError(InvalidInputError):
    """A mechanism needs a context field (distances, layers, edge features) that was not given."""


class NotFittedError(RuvectorError, ValueError):
    """An operation needs a fitted/built object."""


class UnknownIdError(RuvectorError, KeyError):
    """An id is not present (never added, or deleted where that matters)."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class FileFormatError(RuvectorError, OSError, ValueError):
    """A file is truncated, corrupted, or not in the expected format."""


class IndexCorruptedError(FileFormatError):
    """A saved index or model artifact failed validation (truncated, checksum, version)."""


class LayoutError(IndexCorruptedError):
    """hnswlib's in-memory layout is not the one the graph export reads (another hnswlib version?)."""


class MissingDependencyError(RuvectorError, ImportError):
    """An optional dependency (h5py, matplotlib, scikit-learn, tqdm) is needed but not installed."""
