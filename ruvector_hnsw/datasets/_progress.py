"""Optional progress bars: tqdm when installed and wanted, otherwise silent."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

__all__ = ["progress_iter"]


def progress_iter(
    iterable: Iterable[T], *, total: int | None = None, desc: str | None = None, enabled: bool = True
) -> Iterator[T]:
    """Iterate ``iterable`` under a tqdm bar (stderr) if ``enabled`` and tqdm is importable."""
    if enabled:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            pass
        else:
            yield from tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)
            return
    yield from iterable
