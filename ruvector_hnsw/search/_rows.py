"""A row-aligned buffer that grows in amortised O(rows added) (appends after ``index.add``)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["GrowableRows"]


class GrowableRows:
    """A row-aligned 2-D buffer with amortised O(1) appends; ``.view`` is the live ``(n, w)`` part."""

    def __init__(self, data: np.ndarray) -> None:
        self._buf = np.ascontiguousarray(data)
        self._n = data.shape[0]

    @property
    def view(self) -> np.ndarray:
        return self._buf[: self._n]

    def __len__(self) -> int:
        return self._n

    def resize(self, n: int, fill: Any = 0) -> None:
        """Grow (or shrink) to ``n`` rows; new rows hold ``fill``."""
        if n > self._buf.shape[0]:
            cap = max(n, 2 * self._buf.shape[0], 16)
            buf = np.empty((cap, *self._buf.shape[1:]), dtype=self._buf.dtype)
            buf[: self._n] = self._buf[: self._n]
            self._buf = buf
        if n > self._n:
            self._buf[self._n : n] = fill
        self._n = n

    def set_rows(self, rows: np.ndarray, values: np.ndarray | bool | float) -> None:
        self._buf[rows] = values

    def __getstate__(self) -> dict[str, Any]:
        return {"data": self.view.copy()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["data"])  # type: ignore[misc]
