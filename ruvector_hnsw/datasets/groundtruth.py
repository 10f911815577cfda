"""Exact k-nearest-neighbour ground truth with FAISS, blockwise over the database.

Distances follow :class:`ruvector_hnsw.HNSWIndex`: ``"l2"`` squared Euclidean, ``"ip"``
``1 - dot``, ``"cosine"`` ``1 - cos`` (zero vectors have cosine 0 with everything).
The database is processed in blocks (a memory-mapped ``.fvecs`` never needs to fit in RAM)
and the running top-k merged, so the result equals one flat search over all of it.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import numpy as np

from ruvector_hnsw.datasets._progress import progress_iter
from ruvector_hnsw.errors import ConfigError, DimensionMismatchError, EmptyInputError, NonFiniteError
from ruvector_hnsw.threads import thread_limits

__all__ = ["exact_knn", "normalize_rows"]

_METRICS = ("l2", "ip", "cosine")


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Return float32 rows scaled to unit L2 norm (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, np.float32(1e-30)), dtype=np.float32)


def _block(x: Any, metric: str, name: str) -> np.ndarray:
    b = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(b).all():
        raise NonFiniteError(f"{name}: holds NaN or infinity")
    return normalize_rows(b) if metric == "cosine" else b


def exact_knn(
    base: Any,
    queries: Any,
    k: int,
    metric: str = "l2",
    *,
    block_size: int | None = None,
    query_block: int = 4096,
    num_threads: int | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``k`` nearest base rows of every query, nearest first.

    Parameters
    ----------
    base : array_like, shape (N, d)
        Database (any real dtype; memory maps are read block by block).
    queries : array_like, shape (nq, d)
        Queries.
    k : int
        Neighbours per query; if ``k > N`` the tail is padded with id -1 and distance +inf.
    metric : {"l2", "ip", "cosine"}
        Metric, in the distance convention of the module docstring.
    block_size : int, optional
        Database rows per FAISS flat search (default: about 256 MB of float32 per block).
    query_block : int
        Queries per FAISS call (bounds the merge buffers; sets the progress granularity).
    num_threads : int, optional
        Threads for FAISS and BLAS during the call (:func:`ruvector_hnsw.threads.thread_limits`,
        restored afterwards); default unchanged.
    progress : bool
        Show a progress bar over the (base block, query block) steps (tqdm, if installed).

    Returns
    -------
    ids : ndarray of int64, shape (nq, k)
    distances : ndarray of float32, shape (nq, k)

    Raises
    ------
    ConfigError
        Unknown metric or ``k < 1``.
    DimensionMismatchError, EmptyInputError, NonFiniteError
        Inconsistent or invalid inputs.
    """
    import faiss

    if metric not in _METRICS:
        raise ConfigError(f"metric must be one of {_METRICS}, got {metric!r}")
    k = int(k)
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    if np.ndim(base) != 2 or np.ndim(queries) != 2:
        raise DimensionMismatchError("base and queries must be 2-D (n, d) arrays")
    n, d = np.shape(base)
    nq, dq = np.shape(queries)
    if dq != d:
        raise DimensionMismatchError(f"queries have dimension {dq}, base has {d}")
    if n == 0:
        raise EmptyInputError("base holds no vectors")
    q = _block(queries, metric, "queries")
    if block_size is None:
        block_size = max(1024, (256 << 20) // (4 * d))
    block_size = int(block_size)
    if block_size < 1 or query_block < 1:
        raise ConfigError(f"block_size and query_block must be >= 1, got {block_size}, {query_block}")

    best_i = np.full((nq, k), -1, dtype=np.int64)
    best_d = np.full((nq, k), np.inf, dtype=np.float32)
    if nq == 0:
        return best_i, best_d
    limits = thread_limits(int(num_threads)) if num_threads is not None and num_threads > 0 else nullcontext()
    with limits:
        starts = range(0, n, block_size)
        q_starts = range(0, nq, query_block)
        steps = ((s0, q0) for s0 in starts for q0 in q_starts)
        total = len(starts) * len(q_starts)
        index = None
        for start, q0 in progress_iter(steps, total=total, desc="ground truth", enabled=progress and total > 1):
            stop = min(n, start + block_size)
            if q0 == 0:
                xb = _block(base[start:stop], metric, f"base rows {start}..{stop}")
                index = faiss.IndexFlatL2(d) if metric == "l2" else faiss.IndexFlatIP(d)
                index.add(xb)
            assert index is not None
            q1 = min(nq, q0 + query_block)
            kb = min(k, stop - start)
            dist, ids = index.search(q[q0:q1], kb)
            if metric != "l2":
                dist = (1.0 - dist).astype(np.float32)
            ids = np.where(ids >= 0, ids + start, -1)
            dist = np.where(ids >= 0, dist, np.inf).astype(np.float32)
            if start == 0 and kb == k:
                best_i[q0:q1], best_d[q0:q1] = ids, dist
                continue
            cat_i = np.concatenate([best_i[q0:q1], ids], axis=1)
            cat_d = np.concatenate([best_d[q0:q1], dist], axis=1)
            # stable: on equal distances the earlier (smaller) id wins, as in one flat search
            order = np.argsort(cat_d, axis=1, kind="stable")[:, :k]
            best_i[q0:q1] = np.take_along_axis(cat_i, order, axis=1)
            best_d[q0:q1] = np.take_along_axis(cat_d, order, axis=1)
    return np.ascontiguousarray(best_i), np.ascontiguousarray(best_d)
