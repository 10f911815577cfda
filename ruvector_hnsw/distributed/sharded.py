"""A sharded HNSW index on Ray actors, and attention re-ranking over it.

:class:`ShardedIndex` keeps ``S`` :class:`~ruvector_hnsw.index.HNSWIndex` shards, one per actor; id ``i``
lives on shard ``i % S``. ``add`` sends every shard its rows at once (the shards build in parallel),
``search`` sends the queries to every shard and merges the ``S`` lists exactly: the ``k`` smallest
distances of the union, ties broken by the smaller id. Each shard searches at the same ``ef`` as a
monolithic index would, over ``1/S`` of the items, so recall is at least as high (tested within 0.01).

:class:`ShardedAttentionSearch` puts one fitted model on every shard. Design (the simplest honest one):
every shard runs the whole :class:`~ruvector_hnsw.search.AttentionSearch` pipeline on its own graph --
its own HNSW candidates, query context, row contexts, cached codes and diffusion coordinates (computed
for that shard's graph, not the training graph's) -- and returns its ``k`` best with their scores; the
driver merges by score. Scores are comparable across shards because they come from one model: the
same standardisation, distance scale ``s0`` and weights ``alpha``/``beta``/``rho``. It is not the
monolithic ranking: a query's code attends over its candidates *on each shard*, and row contexts only
see a row's shard neighbours. A label head is refused (its classes are per row of the training graph).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ruvector_hnsw._validation import as_ids, as_matrix, check_positive_int
from ruvector_hnsw.distributed import _remote
from ruvector_hnsw.errors import ConfigError, InvalidInputError
from ruvector_hnsw.index import HNSWIndex
from ruvector_hnsw.search import AttentionSearch

__all__ = ["ShardActor", "ShardedAttentionSearch", "ShardedIndex", "merge_topk", "model_tree"]

BACKENDS = ("ray", "local")


def merge_topk(ids: Sequence[np.ndarray], keys: Sequence[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` of the union of per-shard lists: smallest ``keys`` first, ties by the smaller id.

    ``ids[s]``, ``keys[s]``: (nq, k_s) per shard, ``-1`` ids padding (their keys must be ``+inf``).
    Returns ``(nq, k)`` ids and keys, ``-1`` / ``+inf`` where the union has fewer than ``k`` items.
    """
    all_ids = np.concatenate([np.asarray(i, dtype=np.int64) for i in ids], axis=1)
    all_keys = np.concatenate([np.asarray(d) for d in keys], axis=1)
    all_keys = np.where(all_ids >= 0, all_keys, np.inf)
    # a padding id sorts after every real id of equal (infinite) key
    tie = np.where(all_ids >= 0, all_ids, np.iinfo(np.int64).max)
    order = np.lexsort((tie, all_keys), axis=1)[:, :k]
    out_ids = np.take_along_axis(all_ids, order, axis=1)
    out_keys = np.take_along_axis(all_keys, order, axis=1)
    if out_ids.shape[1] < k:
        pad = k - out_ids.shape[1]
        out_ids = np.concatenate([out_ids, np.full((out_ids.shape[0], pad), -1, np.int64)], axis=1)
        out_keys = np.concatenate([out_keys, np.full((out_keys.shape[0], pad), np.inf, out_keys.dtype)], axis=1)
    return out_ids, out_keys


def model_tree(searcher: AttentionSearch) -> dict[str, Any]:
    """The pickled state of a fitted searcher without its cached codes (to put it on another graph)."""
    if not isinstance(searcher, AttentionSearch):
        raise InvalidInputError(f"searcher must be an AttentionSearch, got {type(searcher).__name__}")
    if not searcher.fitted:
        raise ConfigError("ShardedAttentionSearch needs a fitted AttentionSearch")
    if searcher.model.label_head is not None:
        raise ConfigError("ShardedAttentionSearch: a model with a label head cannot move to shards (its classes "
                          "are per row of the training graph); fit it with label_head=False")
    tree = dict(searcher.__getstate__()["tree"])
    tree["database"] = None  # codes and diffusion coordinates are computed for each shard's own graph
    return tree


def searcher_on(tree: dict[str, Any], index: HNSWIndex, num_threads: int = 1) -> AttentionSearch:
    """An :class:`AttentionSearch` of the model ``tree`` (from :func:`model_tree`) over ``index``."""
    obj = AttentionSearch.__new__(AttentionSearch)
    obj.__setstate__({"tree": tree, "index": index, "num_threads": num_threads})
    return obj


class ShardActor:
    """One shard: an HNSWIndex (and optionally an AttentionSearch over it)."""

    def __init__(self, dim: int, space: str, M: int, ef_construction: int, seed: int, num_threads: int) -> None:
        self.index = HNSWIndex(dim, space=space, M=M, ef_construction=ef_construction, seed=seed,
                               num_threads=num_threads)
        self.searcher: AttentionSearch | None = None

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> int:
        if ids.shape[0]:
            self.index.add(vectors, ids)
        return len(self.index)

    def search(self, queries: np.ndarray, k: int, ef: int | None) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(queries, k=k, ef=ef)

    def get_index(self) -> HNSWIndex:
        return self.index

    def set_model(self, tree: dict[str, Any] | None) -> int:
        """Put a model on this shard (None removes it); encodes the shard's rows now; returns them."""
        if tree is None:
            self.searcher = None
            return 0
        self.searcher = searcher_on(tree, self.index, self.index.num_threads)
        return self.searcher.database_state().n

    def attention_search(self, queries: np.ndarray, k: int, knobs: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
        if self.searcher is None:
            raise ConfigError("this shard has no model (set_model first)")
        return self.searcher.search(queries, k, **knobs)


class ShardedIndex:
    """``shards`` HNSW indexes on Ray actors; id ``i`` on shard ``i % shards`` (see the module docstring).

    Parameters
    ----------
    dim, space, M, ef_construction, seed : as :class:`~ruvector_hnsw.index.HNSWIndex` (every shard alike)
    shards : int
        Number of shards (actors).
    num_threads : int
        Threads of each shard's build and search (1: one core per actor).
    backend : {"ray", "local"}
        ``"local"`` keeps the shards in this process (no Ray; the same shards, searched one by one).

    Use as a context manager, or call :meth:`close`, to end the actors.
    """

    def __init__(self, dim: int, shards: int = 2, *, space: str = "l2", M: int = 16, ef_construction: int = 200,
                 seed: int = 100, num_threads: int = 1, backend: str = "ray") -> None:
        if backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.dim = check_positive_int(dim, "dim")
        self.shards = check_positive_int(shards, "shards")
        self.space = space
        self.backend = backend
        self.ef = 64
        self._next = 0
        self._count = 0
        args = (self.dim, space, M, ef_construction, seed, num_threads)
        HNSWIndex(*args[:1], space=space, M=M, ef_construction=ef_construction, seed=seed)  # validates the options
        if backend == "local":
            self._actors: list[Any] = [ShardActor(*args) for _ in range(self.shards)]
        else:
            cls = _remote.remote(ShardActor)
            self._actors = [cls.remote(*args) for _ in range(self.shards)]

    # ------------------------------------------------------------------ plumbing
    def _call(self, method: str, per_shard: Sequence[tuple[Any, ...]]) -> list[Any]:
        if self.backend == "local":
            return [getattr(a, method)(*args) for a, args in zip(self._actors, per_shard, strict=True)]
        return _remote.get([getattr(a, method).remote(*args) for a, args in zip(self._actors, per_shard, strict=True)])

    def close(self) -> None:
        """End the shard actors (the object is unusable afterwards)."""
        if self.backend == "ray" and self._actors:
            _remote.kill(self._actors)
        self._actors = []

    def __enter__(self) -> ShardedIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return self._count

    def shard_of(self, ids: Any) -> np.ndarray:
        """The shard of each id (``id % shards``)."""
        return np.asarray(ids, dtype=np.int64) % self.shards

    # ------------------------------------------------------------------ index
    def add(self, vectors: Any, ids: Any = None) -> np.ndarray:
        """Insert vectors (each shard gets its rows; the shards build in parallel); return their ids.

        ``ids`` default to the next integers after the largest id added so far.
        """
        x = as_matrix(vectors, "vectors", self.dim)
        labels = np.arange(self._next, self._next + x.shape[0], dtype=np.int64) if ids is None \
            else as_ids(ids, "ids", x.shape[0])
        where = self.shard_of(labels)
        sizes = self._call("add", [(x[where == s], labels[where == s]) for s in range(self.shards)])
        self._count = int(sum(sizes))
        self._next = max(self._next, int(labels.max()) + 1) if labels.size else self._next
        return labels

    def search(self, queries: Any, k: int = 10, ef: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """k nearest neighbours over all shards: each searched at ``ef`` (default :attr:`ef`), merged exactly."""
        q = as_matrix(queries, "queries", self.dim)
        k = check_positive_int(k, "k")
        ef_use = self.ef if ef is None else check_positive_int(ef, "ef")
        parts = self._call("search", [(q, k, ef_use)] * self.shards)
        ids, dist = merge_topk([p[0] for p in parts], [p[1] for p in parts], k)
        return ids, dist.astype(np.float32)

    def shard_indexes(self) -> list[HNSWIndex]:
        """Copies of the shard indexes (pickled back from the actors)."""
        return list(self._call("get_index", [()] * self.shards))


class ShardedAttentionSearch:
    """A fitted :class:`AttentionSearch` model re-ranking on every shard of a :class:`ShardedIndex`.

    Parameters
    ----------
    sharded : ShardedIndex
    searcher : AttentionSearch
        Fitted (without a label head); only its model travels -- each shard computes the codes of its own
        graph (see the module docstring).
    """

    def __init__(self, sharded: ShardedIndex, searcher: AttentionSearch) -> None:
        self.sharded = sharded
        self.tree = model_tree(searcher)
        self.candidates = searcher.candidates
        tree = self.tree if sharded.backend == "local" else _remote.put(self.tree)
        self.rows = sharded._call("set_model", [(tree,)] * sharded.shards)

    def search(self, queries: Any, k: int = 10, **knobs: int) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, scores)``, best first (higher score = better): each shard's top ``k`` merged by score.

        ``knobs``: per-call overrides (``candidates``, ``expand``, ``latent_k``, ``walk_top``) on every shard.
        """
        q = as_matrix(queries, "queries", self.sharded.dim)
        k = check_positive_int(k, "k")
        parts = self.sharded._call("attention_search", [(q, k, dict(knobs))] * self.sharded.shards)
        ids, neg = merge_topk([p[0] for p in parts], [-np.asarray(p[1], dtype=np.float64) for p in parts], k)
        return ids, np.where(ids >= 0, -neg, -np.inf).astype(np.float32)
