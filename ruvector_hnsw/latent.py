"""`LatentIndex`: FAISS kNN in a latent space, with HNSWIndex's conventions.

Distances are returned ascending with the same conventions as :class:`HNSWIndex`: squared L2
for ``l2``, ``1 - dot`` for ``ip``, ``1 - cos`` for ``cosine``; missing results are padded with
id -1 and distance +inf.

A low-level module (FAISS only, nothing of hnswlib or the HNSW index): the ``dual_space``
attention mechanism builds its latent neighbour search on it, and ``ruvector_hnsw.index``
re-exports it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import faiss
import numpy as np

from ruvector_hnsw._validation import as_ids, as_matrix, check_positive_int
from ruvector_hnsw.errors import ConfigError, IdExistsError

__all__ = ["CODE_DTYPES", "KINDS", "METRICS", "LatentIndex", "faiss_threads"]

METRICS = ("l2", "ip", "cosine")
KINDS = ("flat", "hnsw", "ivf")
#: storage of the indexed vectors: float32 as given, FAISS scalar quantizers fp16 / SQ8
CODE_DTYPES = ("float32", "float16", "int8")

_FAISS_LOCK = threading.Lock()


@contextlib.contextmanager
def faiss_threads(num_threads: int) -> Iterator[None]:
    """Run FAISS with ``num_threads`` OpenMP threads (-1: leave FAISS's default), then restore."""
    if num_threads == -1:
        yield
        return
    with _FAISS_LOCK:
        old = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(num_threads)
    try:
        yield
    finally:
        with _FAISS_LOCK:
            faiss.omp_set_num_threads(old)


class LatentIndex:
    """k-nearest-neighbour search in a latent space with FAISS.

    Parameters
    ----------
    dim : int
        Latent dimensionality.
    metric : {"l2", "ip", "cosine"}
        Distance convention as in :class:`HNSWIndex`.
    kind : {"flat", "hnsw", "ivf"}
        Exact flat search, FAISS HNSW (``M`` links), or IVF-flat (trained on the first ``add``
        with ``nlist`` lists, default ``~4 sqrt(n)``; ``nprobe`` lists probed per query).
    num_threads : int
        OpenMP threads for FAISS calls; -1 = FAISS's default.
    M, nlist, nprobe, ef_search : int, optional
        Parameters of the ``hnsw``/``ivf`` kinds.
    code_dtype : {"float32", "float16", "int8"}
        Storage of the vectors: as given, or a FAISS scalar quantizer (``IndexScalarQuantizer``,
        ``IndexHNSWSQ``, ``IndexIVFScalarQuantizer``) - ``float16`` (``QT_fp16``, no training)
        or ``int8`` (``QT_8bit``: per-dimension ranges trained on the first ``add``; later
        vectors outside them are clipped). Distances are computed from the decoded vectors.
    """

    def __init__(
        self,
        dim: int,
        metric: str = "l2",
        kind: str = "flat",
        num_threads: int = -1,
        *,
        M: int = 32,
        nlist: int | None = None,
        nprobe: int = 16,
        ef_search: int = 64,
        code_dtype: str = "float32",
    ) -> None:
        self._dim = check_positive_int(dim, "dim")
        if not isinstance(code_dtype, str) or code_dtype not in CODE_DTYPES:
            raise ConfigError(f"code_dtype must be one of {CODE_DTYPES}, got {code_dtype!r}")
        self._code_dtype = code_dtype
        if metric not in METRICS:
            raise ConfigError(f"metric must be one of {METRICS}, got {metric!r}")
        if kind not in KINDS:
            raise ConfigError(f"kind must be one of {KINDS}, got {kind!r}")
        if num_threads != -1:
            check_positive_int(num_threads, "num_threads")
        self._metric = metric
        self._kind = kind
        self._num_threads = int(num_threads)
        self._M = check_positive_int(M, "M")
        self._nlist = None if nlist is None else check_positive_int(nlist, "nlist")
        self._nprobe = check_positive_int(nprobe, "nprobe")
        self._ef_search = check_positive_int(ef_search, "ef_search")
        self._faiss_metric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
        self._index: Any = None
        self._ids: set[int] = set()
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        """Latent dimensionality."""
        return self._dim

    @property
    def metric(self) -> str:
        """Distance convention."""
        return self._metric

    @property
    def kind(self) -> str:
        """FAISS index family."""
        return self._kind

    @property
    def code_dtype(self) -> str:
        """Storage of the indexed vectors."""
        return self._code_dtype

    def memory_bytes(self) -> int:
        """Bytes of the FAISS index as serialized (its stored vectors or codes, ids, links, lists)."""
        with self._lock:
            if self._index is None:
                return 0
            return int(faiss.serialize_index(self._index).nbytes)

    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return f"LatentIndex(dim={self._dim}, metric={self._metric!r}, kind={self._kind!r}, size={len(self)})"

    def _prepare(self, x: np.ndarray) -> np.ndarray:
        if self._metric == "cosine":
            x = x.copy()
            faiss.normalize_L2(x)
        return x

    def _make_index(self, first_batch: np.ndarray) -> Any:
        qtype = {"float16": faiss.ScalarQuantizer.QT_fp16, "int8": faiss.ScalarQuantizer.QT_8bit}.get(
            self._code_dtype)
        if self._kind == "flat":
            if qtype is None:
                return faiss.IndexIDMap2(faiss.IndexFlat(self._dim, self._faiss_metric))
            sq = faiss.IndexScalarQuantizer(self._dim, qtype, self._faiss_metric)
            sq.train(first_batch)
            return faiss.IndexIDMap2(sq)
        if self._kind == "hnsw":
            graph: Any
            if qtype is None:
                graph = faiss.IndexHNSWFlat(self._dim, self._M, self._faiss_metric)
            else:
                graph = faiss.IndexHNSWSQ(self._dim, qtype, self._M, self._faiss_metric)  # type: ignore[arg-type]
                graph.train(first_batch)
            graph.hnsw.efSearch = self._ef_search
            return faiss.IndexIDMap2(graph)
        n = first_batch.shape[0]
        nlist = self._nlist or int(max(1, min(4 * np.sqrt(n), n // 39)))
        nlist = max(1, min(nlist, n))
        quantizer = faiss.IndexFlat(self._dim, self._faiss_metric)
        ivf: Any
        if qtype is None:
            ivf = faiss.IndexIVFFlat(quantizer, self._dim, nlist, self._faiss_metric)
        else:
            ivf = faiss.IndexIVFScalarQuantizer(quantizer, self._dim, nlist, qtype, self._faiss_metric)
        ivf.train(first_batch)
        ivf.nprobe = min(self._nprobe, nlist)
        return ivf

    def add(self, vectors: Any, ids: Any = None) -> np.ndarray:
        """Add vectors; ids default to the next integers. Returns the ids (int64).

        Raises
        ------
        IdExistsError
            If an id is already present (nothing is added).
        """
        x = self._prepare(as_matrix(vectors, "vectors", self._dim))
        with self._lock:
            if ids is None:
                start = max(self._ids) + 1 if self._ids else 0
                labels = np.arange(start, start + x.shape[0], dtype=np.int64)
            else:
                labels = as_ids(ids, "ids", x.shape[0])
                clash = [v for v in labels.tolist() if v in self._ids]
                if clash:
                    raise IdExistsError(f"ids: id {clash[0]} is already in the latent index")
            with faiss_threads(self._num_threads):
                index = self._index if self._index is not None else self._make_index(x)
                index.add_with_ids(x, labels)
            self._index = index
            self._ids.update(labels.tolist())
        return labels

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """k nearest neighbours: ``(ids (nq,k) int64, distances (nq,k) float32)``, nearest first.

        Fewer than k found -> ids -1 and distances +inf.
        """
        q = self._prepare(as_matrix(queries, "queries", self._dim))
        k = check_positive_int(k, "k")
        nq = q.shape[0]
        if self._index is None:
            return np.full((nq, k), -1, dtype=np.int64), np.full((nq, k), np.inf, dtype=np.float32)
        with faiss_threads(self._num_threads):
            dist, ids = self._index.search(q, k)
        ids = ids.astype(np.int64)
        dist = dist.astype(np.float32)
        if self._faiss_metric == faiss.METRIC_INNER_PRODUCT:
            dist = (1.0 - dist).astype(np.float32)
        dist[ids < 0] = np.inf
        return ids, dist
