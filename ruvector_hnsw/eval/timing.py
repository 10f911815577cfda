"""Throughput and latency measurement of a search callable.

Conventions (see DESIGN.md section 6):

- **QPS** comes from one batch call over all queries: ``n_queries / wall_seconds``.
- **Latency** percentiles (p50/p95/p99, milliseconds) come from single-query calls
  (batches of one row) over a fixed subset of the queries, so they include the per-call
  Python overhead a service would pay.
- A **warm-up** call on a few queries runs first and is never timed, so numba JIT
  compilation, FAISS/BLAS thread-pool start-up and first-touch page faults are excluded.
- Wall-clock time via :func:`time.perf_counter`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from ruvector_hnsw.threads import available_threads

__all__ = ["SearchFn", "available_threads", "measure_latency", "measure_qps", "warm_up"]

#: A search callable: ``search(queries (nq, d) float32, k) -> (ids (nq, k) int64, dists (nq, k) float32)``.
SearchFn = Callable[[npt.NDArray[np.float32], int], tuple[Any, Any]]


def warm_up(search: SearchFn, queries: npt.NDArray[np.float32], k: int, n: int = 8) -> None:
    """Call ``search`` once on the first ``n`` queries (untimed) to pay JIT and pool start-up."""
    n = max(1, min(int(n), queries.shape[0]))
    search(np.ascontiguousarray(queries[:n]), k)


def measure_qps(
    search: SearchFn, queries: npt.NDArray[np.float32], k: int
) -> tuple[float, float, tuple[Any, Any]]:
    """Time one batch call over all queries.

    Returns
    -------
    qps : float
        ``n_queries / seconds``.
    seconds : float
        Wall time of the call.
    result : tuple
        What ``search`` returned, so the call can double as the quality run.
    """
    q = np.ascontiguousarray(queries)
    t0 = time.perf_counter()
    result = search(q, k)
    dt = time.perf_counter() - t0
    qps = q.shape[0] / dt if dt > 0 else float("inf")
    return qps, dt, result


def measure_latency(
    search: SearchFn,
    queries: npt.NDArray[np.float32],
    k: int,
    n: int = 200,
    *,
    seed: int = 0,
) -> dict[str, float | int]:
    """Per-query latency percentiles from ``n`` single-query calls.

    The subset is ``n`` query rows drawn without replacement with ``seed`` (all rows if
    there are fewer), each searched alone as a ``(1, d)`` batch.

    Returns
    -------
    dict
        ``p50_ms``, ``p95_ms``, ``p99_ms``, ``mean_ms`` and ``latency_queries`` (the subset size).
    """
    nq = queries.shape[0]
    n = max(1, min(int(n), nq))
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(nq, size=n, replace=False)) if n < nq else np.arange(nq)
    singles = [np.ascontiguousarray(queries[i : i + 1]) for i in rows]
    times = np.empty(n, dtype=np.float64)
    for j, qi in enumerate(singles):
        t0 = time.perf_counter()
        search(qi, k)
        times[j] = time.perf_counter() - t0
    ms = times * 1e3
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {
        "p50_ms": float(p50),
        "p95_ms": float(p95),
        "p99_ms": float(p99),
        "mean_ms": float(ms.mean()),
        "latency_queries": int(n),
    }
