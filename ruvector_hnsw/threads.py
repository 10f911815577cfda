"""Threads: per-call limits for the kernel pool, BLAS and FAISS; the row-chunk runner; an RW lock.

This is a low-level module: it imports nothing from the package's subpackages, so ``index``,
``attention``, ``training``, ``search`` and ``eval`` can all use it.

Three thread pools can run at once in this package and each spins its own threads:

* the **kernel pool** -- the serial (``nogil``) numba kernels are split into contiguous row
  chunks by :func:`run_row_chunks` and run on a small ``ThreadPoolExecutor``;
* **BLAS** (numpy's and FAISS's OpenBLAS), controlled through ``threadpoolctl``;
* **FAISS** (OpenMP), controlled with ``faiss.omp_set_num_threads``.

:func:`thread_limits` applies one number to all three for the duration of a ``with`` block and
restores every one of them on exit, also when the block raises. hnswlib is not among them: its
threads are a per-call argument that :class:`~ruvector_hnsw.index.HNSWIndex` passes from its own
``num_threads``, and ``thread_limits`` never changes an index.

Nested and concurrent use
-------------------------
* The kernel-pool limit is **per thread**: a block limits the :func:`run_row_chunks` calls made
  from the thread that entered it; other threads keep their own setting. Nested blocks stack
  (the innermost applies; leaving it brings back the outer one).
* The FAISS limit is **per thread** as well (OpenMP keeps ``nthreads`` per calling thread): it
  governs FAISS calls made from the thread that entered the block and nests like the kernel limit.
* BLAS is limited only by blocks entered **from the main thread**, and there it nests the same
  way. A pthreads BLAS (numpy's OpenBLAS) has one process-wide setting that OpenBLAS does not
  reliably let other threads change (threadpoolctl, too, is meant for the main thread), so a
  block entered from another thread leaves BLAS as it is. A BLAS built on OpenMP (the OpenBLAS
  inside FAISS's wheel) follows the calling thread's OpenMP setting, i.e. the FAISS limit, in
  every thread.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np
from threadpoolctl import ThreadpoolController

from ruvector_hnsw.errors import ConfigError

__all__ = [
    "MIN_PARALLEL_WORK",
    "RWLock",
    "available_threads",
    "get_num_threads",
    "join_row_chunks",
    "resolve_threads",
    "run_row_chunks",
    "set_num_threads",
    "thread_limits",
]

R = TypeVar("R")

#: below this many multiply-adds a :func:`run_row_chunks` call runs on the calling thread
MIN_PARALLEL_WORK = 2_000_000

_WORKER_PREFIX = "ruvector-kernels"


def available_threads() -> int:
    """Number of CPUs this process may run on (affinity-aware where the OS reports it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def resolve_threads(n: Any) -> int:
    """Return a thread count: ``-1`` means every available core, a positive int itself.

    Raises
    ------
    ConfigError
        If ``n`` is not ``-1`` or an integer >= 1 (bools are rejected).
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise ConfigError(f"num_threads: expected an integer >= 1 or -1, got {n!r}")
    if n == -1:
        return available_threads()
    if n < 1:
        raise ConfigError(f"num_threads: expected an integer >= 1 or -1, got {n!r}")
    return int(n)


# ------------------------------------------------------------------ kernel pool
_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_default_threads = max(1, min(available_threads(), 8))
_local = threading.local()


def _stack() -> list[int]:
    stack: list[int] | None = getattr(_local, "stack", None)
    if stack is None:
        stack = []
        _local.stack = stack
    return stack


def get_num_threads() -> int:
    """Kernel-pool threads for calls from this thread (the innermost :func:`thread_limits`, else the default)."""
    stack = _stack()
    return stack[-1] if stack else _default_threads


def set_num_threads(n: int) -> None:
    """Set the process-wide default of kernel-pool threads (``1`` = run inline).

    This is permanent and shared by every thread; prefer :func:`thread_limits` for one call.
    Threads inside a ``thread_limits`` block keep the block's limit.

    Raises
    ------
    ConfigError
        If ``n`` is not an integer >= 1.
    """
    global _default_threads
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"num_threads must be a positive int, got {n!r}")
    _default_threads = int(n)


def _submit_all(func: Callable[[int, int], R], bounds: list[int]) -> list[Any]:
    """Submit every chunk under the pool lock (the pool may be replaced by a larger one meanwhile)."""
    global _pool, _pool_size
    k = len(bounds) - 1
    with _pool_lock:
        if _pool is None or _pool_size < k:
            old = _pool
            _pool = ThreadPoolExecutor(max_workers=k, thread_name_prefix=_WORKER_PREFIX)
            _pool_size = k
            if old is not None:
                old.shutdown(wait=False)  # chunks already queued there still run
        return [_pool.submit(func, bounds[i], bounds[i + 1]) for i in range(k)]


def run_row_chunks(func: Callable[[int, int], R], n_rows: int, work: float) -> list[R]:
    """Run ``func(lo, hi)`` over contiguous row ranges covering ``[0, n_rows)``.

    Uses up to :func:`get_num_threads` chunks on the kernel pool when ``work`` (multiply-adds)
    is at least :data:`MIN_PARALLEL_WORK`, otherwise one inline call; a call made from a pool
    worker always runs inline (no nested fan-out, no deadlock). Results come back in row order.
    """
    k = min(get_num_threads(), n_rows)
    if k <= 1 or work < MIN_PARALLEL_WORK or threading.current_thread().name.startswith(_WORKER_PREFIX):
        return [func(0, n_rows)]
    bounds = [n_rows * i // k for i in range(k + 1)]
    return [f.result() for f in _submit_all(func, bounds)]


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


def _faiss() -> Any:
    import faiss  # imported on first use: ``import ruvector_hnsw.attention`` does not pay for it

    return faiss


@contextmanager
def thread_limits(n: int) -> Iterator[int]:
    """Limit the kernel pool, BLAS and FAISS to ``n`` threads inside a ``with`` block.

    Parameters
    ----------
    n : int
        Threads; ``-1`` = every available core (:func:`resolve_threads`).

    Yields
    ------
    int
        The resolved thread count.

    Notes
    -----
    Everything is restored on exit, also when the block raises. The kernel-pool and FAISS
    limits are per thread and nest (the innermost block applies); BLAS is limited by blocks
    entered from the main thread only (see the module docstring). The caller's index and the process-wide kernel default
    (:func:`set_num_threads`) are never changed.

    Raises
    ------
    ConfigError
        If ``n`` is not ``-1`` or an integer >= 1 (nothing is changed then).

    Examples
    --------
    >>> with thread_limits(1):          # doctest: +SKIP
    ...     ids, scores = model.search(queries, k=10)
    """
    threads = resolve_threads(n)
    faiss = _faiss()
    stack = _stack()
    old_faiss = int(faiss.omp_get_max_threads())
    stack.append(threads)
    try:
        faiss.omp_set_num_threads(threads)
        if threading.current_thread() is threading.main_thread():
            libs = _blas_libraries()
            old_blas = [lib.num_threads for lib in libs]
            for lib, old in zip(libs, old_blas, strict=True):
                if old != threads:
                    lib.set_num_threads(threads)
            try:
                yield threads
            finally:
                for lib, old in zip(libs, old_blas, strict=True):
                    if lib.num_threads != old:
                        lib.set_num_threads(old)
        else:
            yield threads
    finally:
        faiss.omp_set_num_threads(old_faiss)
        stack.pop()


_BLAS_LIBS: list[Any] | None = None


def _blas_libraries() -> list[Any]:
    """threadpoolctl's controllers of the loaded BLAS libraries, found once (scanning them costs ~2 ms)."""
    global _BLAS_LIBS
    if _BLAS_LIBS is None:
        _faiss()  # FAISS may bring its own BLAS: load it before looking
        _BLAS_LIBS = list(ThreadpoolController().select(user_api="blas").lib_controllers)
    return _BLAS_LIBS


# ------------------------------------------------------------------ readers-writer lock
class RWLock:
    """Writer-preferring readers-writer lock: many concurrent readers, one exclusive writer.

    hnswlib allows concurrent searches but not a search concurrent with ``add_items``/``resize``
    (hnswlib issue #562), so the index takes the write side for every mutation; the search
    model uses the same lock for its caches. Writers never starve under a stream of reads.
    Neither side is re-entrant.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        """Hold the shared (read) side for the block."""
        with self._cond:
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        """Hold the exclusive (write) side for the block."""
        with self._cond:
            self._waiting_writers += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()
