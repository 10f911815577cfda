"""Training-free baselines behind the same ``search`` protocol: alpha query expansion and DBA.

Both use the averaging rule :func:`~ruvector_hnsw.search.expansion.expand_vectors`
(``w_j = max(cos, 0) ** alpha`` over the top-n, per-metric normalisation) and are the one
implementation of these methods in the package (the evaluation harness wraps them).

- :class:`AlphaQESearch`: each query is searched for its top ``n``, replaced by the weighted
  average of itself and those neighbours, and searched again for the final ``k``.
- :class:`DBASearch`: offline, every database vector is replaced by the weighted average of itself
  and its ``n`` nearest live layer-0 graph neighbours; an HNSW index over the augmented vectors
  (same labels and build parameters) is searched directly, or after alpha-QE against the augmented
  vectors. The augmented index is rebuilt when the source index changes.

Returned scores are similarities (higher = better): minus the distance of the final search.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from ruvector_hnsw._validation import as_matrix, check_positive_int
from ruvector_hnsw.errors import ConfigError, InvalidInputError
from ruvector_hnsw.index import HNSWGraph, HNSWIndex
from ruvector_hnsw.search.expansion import expand_vectors

__all__ = ["AlphaQESearch", "DBASearch", "dba_vectors", "graph_topn"]


def _check_n_alpha(n: Any, alpha: Any) -> tuple[int, float]:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"n must be an integer >= 1, got {n!r}")
    try:
        a = float(alpha)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"alpha must be a finite number >= 0, got {alpha!r}") from exc
    if not np.isfinite(a) or a < 0:
        raise ConfigError(f"alpha must be a finite number >= 0, got {alpha!r}")
    return int(n), a


def _expanded_queries(index: HNSWIndex, vectors_of: Any, q: np.ndarray, n: int, alpha: float, ef: int) -> np.ndarray:
    ids, _ = index.search(q, k=n, ef=max(ef, n))
    neigh, mask = vectors_of(ids)
    return expand_vectors(q, neigh, mask, alpha=alpha, metric=index.space)


def _graph_vectors(graph: HNSWGraph) -> Any:
    def lookup(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mask = ids >= 0
        rows = np.zeros(ids.shape, dtype=np.int64)
        if mask.any():
            rows[mask] = graph.positions(ids[mask])
        return graph.vectors[rows], mask

    return lookup


def _array_vectors(vectors: np.ndarray) -> Any:
    def lookup(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mask = ids >= 0
        if mask.any() and int(ids[mask].max()) >= vectors.shape[0]:
            raise InvalidInputError(
                f"index returned label {int(ids[mask].max())} but only {vectors.shape[0]} vectors were given: "
                "with vectors=..., labels must be row indices of that array")
        return vectors[np.where(mask, ids, 0)], mask

    return lookup


def graph_topn(graph: HNSWGraph, n: int) -> np.ndarray:
    """Per row of ``graph``: rows of its ``n`` nearest live layer-0 neighbours (-1 padding)."""
    nb = graph.neighborhoods(graph.labels, k_local=n, k_global=0)
    out = np.full(nb.ids.shape, -1, dtype=np.int64)
    out[nb.mask] = graph.positions(nb.ids[nb.mask])
    return out


class AlphaQESearch:
    """Alpha query expansion over HNSW (``q' = normalize(q + sum_j max(s_j, 0)^alpha x_j)``, re-searched).

    Parameters
    ----------
    index : HNSWIndex
    n : int
        Neighbours averaged into the query.
    alpha : float
        Similarity exponent; larger values trust only the closest neighbours.
    candidates : int, optional
        ``ef`` of both searches (default: the index's ``ef`` at call time).
    vectors : array_like (N, d), optional
        The vectors to average, indexed by label (labels must then be row indices of it).
        Default: the index's stored vectors (normalised for cosine) at call time.
    """

    def __init__(self, index: HNSWIndex, n: int = 10, alpha: float = 3.0, *, candidates: int | None = None,
                 vectors: Any = None) -> None:
        self.index = index
        self.n, self.alpha = _check_n_alpha(n, alpha)
        self.candidates = None if candidates is None else check_positive_int(candidates, "candidates", ConfigError)
        self.vectors = None if vectors is None else as_matrix(vectors, "vectors", index.dim)

    def search(self, queries: Any, k: int = 10, *, candidates: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, scores)`` of the expanded queries' ``k`` nearest (scores = minus distance)."""
        q = as_matrix(queries, "queries", self.index.dim)
        k = check_positive_int(k, "k")
        ef = candidates if candidates is not None else (self.candidates or self.index.ef)
        lookup = _graph_vectors(self.index.graph()) if self.vectors is None else _array_vectors(self.vectors)
        q2 = _expanded_queries(self.index, lookup, q, self.n, self.alpha, ef)
        ids, dist = self.index.search(q2, k=k, ef=max(ef, k))
        return ids, np.where(ids >= 0, -dist, -np.inf).astype(np.float32)


def dba_vectors(graph: HNSWGraph, n: int, alpha: float, *, block: int = 8192) -> np.ndarray:
    """Every row's vector averaged with its ``n`` nearest live layer-0 neighbours (rows of ``graph``)."""
    nbr = graph_topn(graph, n)
    vec = np.asarray(graph.vectors, dtype=np.float32)
    out = np.empty_like(vec)
    for s in range(0, vec.shape[0], max(1, int(block))):
        p = nbr[s : s + block]
        mask = p >= 0
        out[s : s + block] = expand_vectors(vec[s : s + block], vec[np.where(mask, p, 0)], mask, alpha=alpha,
                                            metric=graph.space)
    return out


class DBASearch:
    """Database-side augmentation over the HNSW layer-0 graph (see the module docstring).

    Parameters
    ----------
    index : HNSWIndex
    n, alpha : int, float
        Neighbours averaged per database item and the similarity exponent.
    query_expansion : bool
        Also expand queries (alpha-QE against the augmented index).
    qe_n, qe_alpha : optional
        Query expansion parameters (default: ``n`` and ``alpha``).
    candidates : int, optional
        Search ``ef`` (default: the source index's ``ef`` at call time).
    block : int
        Database rows augmented per block (bounds memory to ``block * n * d`` floats).
    **build
        Overrides of the augmented index's build parameters (``M``, ``ef_construction``, ``seed``,
        ``num_threads``).
    """

    def __init__(self, index: HNSWIndex, n: int = 10, alpha: float = 3.0, *, query_expansion: bool = False,
                 qe_n: int | None = None, qe_alpha: float | None = None, candidates: int | None = None,
                 block: int = 8192, **build: Any) -> None:
        self.index = index
        self.n, self.alpha = _check_n_alpha(n, alpha)
        self.query_expansion = bool(query_expansion)
        self.qe_n, self.qe_alpha = _check_n_alpha(qe_n if qe_n is not None else self.n,
                                                  qe_alpha if qe_alpha is not None else self.alpha)
        self.candidates = None if candidates is None else check_positive_int(candidates, "candidates", ConfigError)
        unknown = set(build) - {"M", "ef_construction", "seed", "num_threads"}
        if unknown:
            raise ConfigError(f"DBASearch: unknown build options {sorted(unknown)}")
        self.build = build
        self.block = check_positive_int(block, "block", ConfigError)
        self.offline_seconds = 0.0
        self._lock = threading.Lock()
        self._built: tuple[HNSWGraph, HNSWIndex] | None = None

    def augmented_index(self) -> HNSWIndex:
        """The index over the augmented vectors (built, or rebuilt after the source changed)."""
        g = self.index.graph()
        with self._lock:
            if self._built is not None and self._built[0] is g:
                return self._built[1]
            t0 = time.perf_counter()
            aug = dba_vectors(g, self.n, self.alpha, block=self.block)
            params: dict[str, Any] = {"M": self.index.M, "ef_construction": self.index.ef_construction,
                                      "seed": self.index.seed, "num_threads": self.index.num_threads}
            params.update(self.build)
            new = HNSWIndex(self.index.dim, space=self.index.space, **params)
            alive = ~g.deleted
            if alive.any():
                new.add(aug[alive], ids=g.labels[alive])
            self._built = (g, new)
            self.offline_seconds = time.perf_counter() - t0
            return new

    def search(self, queries: Any, k: int = 10, *, candidates: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, scores)`` from the augmented index (scores = minus distance there)."""
        q = as_matrix(queries, "queries", self.index.dim)
        k = check_positive_int(k, "k")
        ef = candidates if candidates is not None else (self.candidates or self.index.ef)
        new = self.augmented_index()
        if self.query_expansion:
            q = _expanded_queries(new, _graph_vectors(new.graph()), q, self.qe_n, self.qe_alpha, ef)
        ids, dist = new.search(q, k=k, ef=max(ef, k))
        return ids, np.where(ids >= 0, -dist, -np.inf).astype(np.float32)
