"""Compact storage of the per-row codes: ``float32``, ``float16`` or per-row symmetric ``int8``.

:class:`CodeRows` is a row-aligned, growable buffer of float rows kept in one of
:data:`CODE_DTYPES`; what is written is float32, what is stored is the chosen dtype, and every
computation reads it back as float32:

- ``"float32"``: stored as given (reads return the buffer itself, no copy);
- ``"float16"``: stored in half precision (round to nearest), computed in float32;
- ``"int8"``: per-row symmetric scale quantization. Row ``x`` is stored as ``q = rint(x / s)``
  (int8 in ``[-127, 127]``) and one float32 scale ``s`` per row, the power of two just above
  ``max|x| / 127``; it reads back as ``q * s``. The power-of-two scale makes the read-back exact
  in float32 and quantization idempotent (quantizing a read-back row returns the same ``q`` and
  ``s``), so rows written from read-back values - an incremental update, a rebuilt state - are
  bit-identical to the originals. A row's stored form depends on that row alone (the scale is
  per row, not per dimension), so appending or rewriting rows never changes the others. Each
  entry is off by at most ``s / 2 <= max|x| / 127``, and an inner product ``<y, x>`` by at most
  ``||y||_1 s / 2``.

Per-row rather than per-dimension scales: incremental updates (``index.add`` re-encodes a few
rows) need a row's stored form to be independent of the other rows; a per-dimension range would
have to be fitted on the first rows and clip or re-quantize later ones.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ruvector_hnsw.errors import ConfigError
from ruvector_hnsw.search._rows import GrowableRows

__all__ = ["CODE_DTYPES", "CodeRows", "check_code_dtype", "dequantize_int8", "half_table", "quantize_int8"]

#: the storage dtypes of the code cache (``code_dtype=``)
CODE_DTYPES = ("float32", "float16", "int8")
_STORAGE = {"float32": np.float32, "float16": np.float16, "int8": np.int8}
_HALF_TABLE: np.ndarray | None = None


def check_code_dtype(value: Any) -> str:
    """``value`` if it names a code dtype, else :class:`ConfigError` naming it."""
    if not isinstance(value, str) or value not in CODE_DTYPES:
        raise ConfigError(f"code_dtype must be one of {CODE_DTYPES}, got {value!r}")
    return value


def half_table() -> np.ndarray:
    """(32,) float32: ``2 ** (max(e, 1) - 25)`` per float16 exponent field ``e``.

    A finite float16 with bits ``(sign, e, m)`` is ``(-1)**sign * (m + 1024 [e > 0]) * table[e]``;
    the kernels decode with it (exactly).
    """
    global _HALF_TABLE
    if _HALF_TABLE is None:
        e = np.arange(32)
        _HALF_TABLE = np.exp2(np.maximum(e, 1) - 25.0).astype(np.float32)
    return _HALF_TABLE


def quantize_int8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row symmetric int8: ``(q (n, w) int8, s (n,) float32)`` with ``x ~ q * s[:, None]``.

    ``s`` is the power of two just above ``max|x_row| / 127`` (0 for an all-zero row).
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D array, got shape {x.shape}")
    absmax = np.abs(x).max(axis=1) if x.shape[1] else np.zeros(x.shape[0], np.float32)
    absmax = absmax.astype(np.float64)
    scale = np.zeros(x.shape[0], dtype=np.float64)
    pos = absmax > 0
    scale[pos] = np.exp2(np.ceil(np.log2(absmax[pos] / 127.0)))
    inv = np.zeros_like(scale)
    inv[pos] = 1.0 / scale[pos]
    q = np.rint(x.astype(np.float64) * inv[:, None])
    return np.clip(q, -127, 127).astype(np.int8), scale.astype(np.float32)


def dequantize_int8(q: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``q * s[:, None]`` in float32 (exact: ``s`` is a power of two)."""
    return np.ascontiguousarray(q.astype(np.float32) * np.asarray(s, np.float32).reshape(-1, 1))


class CodeRows:
    """Row-aligned float rows stored as ``float32``, ``float16`` or ``int8`` (see the module docstring).

    Parameters
    ----------
    x : (n, w) array_like
        The rows (float32 values).
    dtype : {"float32", "float16", "int8"}
    """

    def __init__(self, x: np.ndarray, dtype: str = "float32") -> None:
        self.dtype = check_code_dtype(dtype)
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2:
            raise ValueError(f"expected a 2-D array, got shape {x.shape}")
        data, scale = self._encode(x)
        self._data = GrowableRows(data)
        self._scale = None if scale is None else GrowableRows(scale.reshape(-1, 1))

    def _encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if self.dtype == "int8":
            q, s = quantize_int8(x)
            return q, s
        return np.ascontiguousarray(x, dtype=_STORAGE[self.dtype]), None

    # ------------------------------------------------------------------ shape
    def __len__(self) -> int:
        return len(self._data)

    @property
    def width(self) -> int:
        return int(self._data.view.shape[1])

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self), self.width)

    @property
    def raw(self) -> np.ndarray:
        """The stored ``(n, w)`` array in its own dtype (a live view: do not write)."""
        return self._data.view

    @property
    def scale(self) -> np.ndarray | None:
        """``(n,)`` float32 per-row scales (``int8`` only; None otherwise)."""
        return None if self._scale is None else self._scale.view[:, 0]

    def kernel_args(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
        """``(codes, scale, half_lut, half)`` as the numba kernels read them.

        ``codes``: float32/int8 as stored, float16 as its uint16 bit patterns (``half`` true, read
        through ``half_lut``); ``scale``: per-row scales (empty: none).
        """
        empty = np.zeros(0, dtype=np.float32)
        if self.dtype == "float16":
            return self.raw.view(np.uint16), empty, half_table(), True
        scale = self.scale
        return self.raw, (empty if scale is None else np.ascontiguousarray(scale)), empty, False

    # ------------------------------------------------------------------ values
    def values(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Float32 values of ``rows`` (all by default; ``float32`` storage: the buffer itself, no copy)."""
        if rows is None:
            data = self.raw
            scale = self.scale
        else:
            rows = np.asarray(rows, dtype=np.int64)
            data = self.raw[rows]
            scale = None if self._scale is None else self._scale.view[rows, 0]
        if self.dtype == "float32":
            return data
        if scale is not None:
            return dequantize_int8(data, scale)
        return np.ascontiguousarray(data, dtype=np.float32)

    def __getitem__(self, idx: np.ndarray) -> np.ndarray:
        """Float32 rows for an integer index array of any shape: ``(*idx.shape, w)``."""
        idx = np.asarray(idx, dtype=np.int64)
        return self.values(idx.ravel()).reshape(*idx.shape, self.width)

    # ------------------------------------------------------------------ updates
    def resize(self, n: int) -> None:
        """Grow (or shrink) to ``n`` rows; new rows read as 0."""
        self._data.resize(n)
        if self._scale is not None:
            self._scale.resize(n)

    def set_rows(self, rows: np.ndarray, x: np.ndarray) -> None:
        """Write float32 ``x`` (len(rows), w) into ``rows`` (stored in this dtype)."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return
        data, scale = self._encode(np.asarray(x, dtype=np.float32).reshape(rows.shape[0], self.width))
        self._data.set_rows(rows, data)
        if self._scale is not None and scale is not None:
            self._scale.set_rows(rows, scale.reshape(-1, 1))

    # ------------------------------------------------------------------ memory, persistence
    def memory_bytes(self) -> int:
        """Bytes of the stored rows (and scales) - the live rows, not the growth reserve."""
        n = self.raw.nbytes
        if self._scale is not None:
            n += self._scale.view.nbytes
        return int(n)

    def state(self) -> dict[str, Any]:
        """The stored arrays, exactly (``from_state`` rebuilds a bit-identical object)."""
        out: dict[str, Any] = {"dtype": self.dtype, "data": self.raw.copy()}
        if self.scale is not None:
            out["scale"] = self.scale.copy()
        return out

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> CodeRows:
        obj = cls.__new__(cls)
        obj.dtype = check_code_dtype(str(state["dtype"]))
        data = np.ascontiguousarray(state["data"], dtype=_STORAGE[obj.dtype])
        if data.ndim != 2:
            raise ValueError(f"stored codes must be 2-D, got shape {data.shape}")
        obj._data = GrowableRows(data)
        obj._scale = None
        if obj.dtype == "int8":
            scale = np.ascontiguousarray(state["scale"], dtype=np.float32).reshape(-1, 1)
            if scale.shape[0] != data.shape[0]:
                raise ValueError("stored scales do not match the stored rows")
            obj._scale = GrowableRows(scale)
        return obj
