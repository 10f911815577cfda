"""ruvector_hnsw.threads: per-call limits restored on exit, nesting, concurrency, the row-chunk runner, RWLock."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import faiss
import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from ruvector_hnsw import threads as T
from ruvector_hnsw.errors import ConfigError

WAIT = 60.0  # seconds an event may take before the test fails (a hang guard, not a timing assert)


def blas_threads(openmp: bool = False) -> set[int]:
    """Threads of the process-wide (pthreads) BLAS libraries, or of those built on OpenMP."""
    return {int(i["num_threads"]) for i in threadpool_info()
            if i["user_api"] == "blas" and (i.get("threading_layer") == "openmp") == openmp}


HAS_OMP_BLAS = bool(blas_threads(openmp=True))  # FAISS's wheel bundles an OpenMP OpenBLAS


def state() -> tuple[int, int, set[int], set[int]]:
    return T.get_num_threads(), int(faiss.omp_get_max_threads()), blas_threads(), blas_threads(openmp=True)


def expect(kernels: int, faiss_n: int, blas: int) -> tuple[int, int, set[int], set[int]]:
    """An OpenMP BLAS follows this thread's OpenMP setting, i.e. the FAISS limit."""
    return kernels, faiss_n, {blas}, ({faiss_n} if HAS_OMP_BLAS else set())


@pytest.fixture
def baseline() -> Iterator[tuple[int, int, set[int], set[int]]]:
    """Known settings different from the limits under test: kernels 5, FAISS 3, BLAS 3."""
    old_default, old_faiss = T.get_num_threads(), int(faiss.omp_get_max_threads())
    T.set_num_threads(5)
    faiss.omp_set_num_threads(3)
    with threadpool_limits(limits=3, user_api="blas"):
        before = state()
        assert before == expect(5, 3, 3)
        yield before
    faiss.omp_set_num_threads(old_faiss)
    T.set_num_threads(old_default)


def test_resolve_threads() -> None:
    assert T.resolve_threads(-1) == T.available_threads() >= 1
    assert T.resolve_threads(3) == 3 and T.resolve_threads(np.int32(2)) == 2
    for bad in (0, -2, 1.5, True, "2", None):
        with pytest.raises(ConfigError, match="num_threads"):
            T.resolve_threads(bad)


def test_limits_apply_inside_and_are_restored_after(baseline) -> None:
    with T.thread_limits(1) as n:
        assert n == 1
        assert state() == expect(1, 1, 1)
    assert state() == baseline


def test_limits_are_restored_after_an_exception(baseline) -> None:
    with pytest.raises(RuntimeError, match="boom"), T.thread_limits(2):
        assert state() == expect(2, 2, 2)
        raise RuntimeError("boom")
    assert state() == baseline


def test_bad_n_changes_nothing(baseline) -> None:
    with pytest.raises(ConfigError), T.thread_limits(0):
        pass  # pragma: no cover
    assert state() == baseline


def test_minus_one_means_all_cores(baseline) -> None:
    with T.thread_limits(-1) as n:
        assert n == T.available_threads()
        assert T.get_num_threads() == n and faiss.omp_get_max_threads() == n
    assert state() == baseline


def test_nested_blocks(baseline) -> None:
    with T.thread_limits(2):
        with T.thread_limits(4):
            assert state() == expect(4, 4, 4)  # the innermost applies
        assert state() == expect(2, 2, 2)
        with T.thread_limits(1):
            assert state() == expect(1, 1, 1)
        assert state() == expect(2, 2, 2)
    assert state() == baseline


def test_the_process_default_is_never_changed(baseline) -> None:
    seen: list[int] = []
    with T.thread_limits(1):
        t = threading.Thread(target=lambda: seen.append(T.get_num_threads()))
        t.start()
        t.join(WAIT)
    assert seen == [5]  # another thread keeps the default during the block
    assert T.get_num_threads() == 5


@pytest.mark.parametrize("first_out", ["a", "b"])
def test_concurrent_blocks_in_two_threads(baseline, first_out) -> None:
    inside = {name: threading.Event() for name in "ab"}
    leave = {name: threading.Event() for name in "ab"}
    left = {name: threading.Event() for name in "ab"}
    seen: dict[str, tuple[int, int]] = {}
    errors: list[BaseException] = []

    def worker(name: str, n: int) -> None:
        try:
            seen[name + "_before"] = (T.get_num_threads(), int(faiss.omp_get_max_threads()))
            with T.thread_limits(n):
                inside[name].set()
                assert leave[name].wait(WAIT)
                seen[name] = (T.get_num_threads(), int(faiss.omp_get_max_threads()))
            seen[name + "_after"] = (T.get_num_threads(), int(faiss.omp_get_max_threads()))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            left[name].set()

    ta = threading.Thread(target=worker, args=("a", 1))
    tb = threading.Thread(target=worker, args=("b", 2))
    ta.start()
    assert inside["a"].wait(WAIT)
    tb.start()
    assert inside["b"].wait(WAIT)
    # blocks in other threads change neither this thread's limits nor the process-wide BLAS
    assert state() == baseline
    with T.thread_limits(4):  # and this thread can still limit itself meanwhile
        assert state() == expect(4, 4, 4)
    assert state() == baseline
    other = "b" if first_out == "a" else "a"
    leave[first_out].set()
    assert left[first_out].wait(WAIT)
    leave[other].set()
    ta.join(WAIT)
    tb.join(WAIT)
    assert not errors
    assert seen["a"] == (1, 1) and seen["b"] == (2, 2)  # per-thread kernel and FAISS limits
    for name in "ab":  # restored in each thread
        assert seen[name + "_after"] == seen[name + "_before"] and seen[name + "_before"][0] == 5
    assert state() == baseline


def test_run_row_chunks_follows_the_limit() -> None:
    def ranges(lo: int, hi: int) -> tuple[int, int, str]:
        return lo, hi, threading.current_thread().name

    big = T.MIN_PARALLEL_WORK
    with T.thread_limits(1):
        assert [r[:2] for r in T.run_row_chunks(ranges, 10, big)] == [(0, 10)]
    with T.thread_limits(3):
        parts = T.run_row_chunks(ranges, 10, big)
        assert [r[:2] for r in parts] == [(0, 3), (3, 6), (6, 10)]
        assert all(r[2].startswith("ruvector-kernels") for r in parts)
        assert [r[:2] for r in T.run_row_chunks(ranges, 10, big - 1)] == [(0, 10)]  # small: inline
        assert [r[:2] for r in T.run_row_chunks(ranges, 2, big)] == [(0, 1), (1, 2)]  # never more chunks than rows


def test_run_row_chunks_runs_inline_inside_a_worker() -> None:
    def outer(lo: int, hi: int) -> list[tuple[int, int]]:
        return [(a, b) for a, b in T.run_row_chunks(lambda x, y: (x, y), 8, T.MIN_PARALLEL_WORK)]

    with T.thread_limits(2):
        assert T.run_row_chunks(outer, 4, T.MIN_PARALLEL_WORK) == [[(0, 8)], [(0, 8)]]


def test_join_row_chunks() -> None:
    parts = [(np.arange(2), np.ones(2), True), (np.arange(2, 5), np.zeros(3), False)]
    a, b, ok = T.join_row_chunks(parts)
    np.testing.assert_array_equal(a, np.arange(5))
    np.testing.assert_array_equal(b, [1, 1, 0, 0, 0])
    assert ok is False
    single = (np.arange(3), True)
    assert T.join_row_chunks([single]) is single


def test_set_num_threads_validates() -> None:
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ConfigError):
            T.set_num_threads(bad)


def test_rwlock_readers_share_and_a_writer_excludes_them() -> None:
    lock = T.RWLock()
    second_in = threading.Event()
    written = threading.Event()

    def reader() -> None:
        with lock.read():
            second_in.set()

    def writer() -> None:
        with lock.write():
            written.set()

    with lock.read():
        t = threading.Thread(target=reader)
        t.start()
        assert second_in.wait(WAIT)  # a second reader gets in while the first holds the lock
        t.join(WAIT)
        w = threading.Thread(target=writer)
        w.start()
        with lock._cond:  # wait until the writer is queued
            assert lock._cond.wait_for(lambda: lock._waiting_writers == 1, WAIT)
        assert not written.is_set()  # a reader holds the lock: the writer waits
    w.join(WAIT)
    assert written.is_set()
