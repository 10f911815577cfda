"""Row-chunked parallelism for the serial (``nogil``) numba kernels.

The kernels are compiled serial with ``cache=True`` and release the GIL, so splitting the batch
into contiguous row chunks and running them on a small thread pool gives multi-core speed
without ``parallel=True`` (whose combination with ``cache=True`` is fragile) and without a
compile at every start. Small calls run inline (no dispatch overhead).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from ruvector_hnsw.errors import ConfigError

__all__ = ["get_num_threads", "join_row_chunks", "run_row_chunks", "set_num_threads"]

R = TypeVar("R")

#: below this many multiply-adds a call runs on the calling thread
MIN_PARALLEL_WORK = 2_000_000

_lock = threading.Lock()
_num_threads = max(1, min(os.cpu_count() or 1, 8))
_pool: ThreadPoolExecutor | None = None


def set_num_threads(n: int) -> None:
    """Set how many threads the attention kernels may use (``1`` = run inline)."""
    global _num_threads, _pool
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"num_threads must be a positive int, got {n!r}")
    with _lock:
        if n != _num_threads and _pool is not None:
            _pool.shutdown(wait=True)
            _pool = None
        _num_threads = n


def get_num_threads() -> int:
    """Threads the attention kernels may use."""
    return _num_threads


def _get_pool() -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=_num_threads, thread_name_prefix="ruvector-attn")
        return _pool


def run_row_chunks(func: Callable[[int, int], R], n_rows: int, work: float) -> list[R]:
    """Run ``func(lo, hi)`` over contiguous row ranges covering ``[0, n_rows)``.

    Uses up to :func:`get_num_threads` chunks when ``work`` (multiply-adds) is large enough,
    otherwise one inline call. Results come back in row order.
    """
    k = min(_num_threads, n_rows)
    if k <= 1 or work < MIN_PARALLEL_WORK or threading.current_thread().name.startswith("ruvector-attn"):
        return [func(0, n_rows)]
    bounds = [n_rows * i // k for i in range(k + 1)]
    pool = _get_pool()
    futures = [pool.submit(func, bounds[i], bounds[i + 1]) for i in range(k)]
    return [f.result() for f in futures]


def join_row_chunks(parts: list[tuple[Any, ...]]) -> tuple[Any, ...]:
    """Join what :func:`run_row_chunks` returned for a kernel giving ``(array, ..., ok)``.

    The arrays are concatenated along the rows, the trailing ``ok`` flags are and-ed; a single
    chunk is returned as it is.
    """
    if len(parts) == 1:
        return parts[0]
    last = len(parts[0]) - 1
    arrays = tuple(np.concatenate([p[i] for p in parts]) for i in range(last))
    return (*arrays, all(p[last] for p in parts))
