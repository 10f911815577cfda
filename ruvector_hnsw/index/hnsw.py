"""`HNSWIndex`: hnswlib with validated input, safe concurrency, persistence and an exact graph export."""

from __future__ import annotations

import os
import struct
import tempfile
from collections.abc import Callable, KeysView, Set
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np

from ruvector_hnsw._validation import as_ids, as_matrix, check_positive_int
from ruvector_hnsw.errors import (
    ConfigError,
    FilterError,
    IdExistsError,
    IndexCorruptedError,
    InvalidInputError,
    UnknownIdError,
)
from ruvector_hnsw.index.graph import HNSWGraph, graph_from_state
from ruvector_hnsw.index.persist import read_artifact, write_artifact
from ruvector_hnsw.threads import RWLock, resolve_threads

__all__ = ["SPACES", "HNSWIndex"]

SPACES = ("l2", "ip", "cosine")
FORMAT_VERSION = 1
_MAGIC = b"RVHNSW\x00\x01"
_INITIAL_CAPACITY = 1024
# hnswlib saveIndex header: 6 x size_t, int, uint32, 3 x size_t, double, size_t = 96 bytes
_HNSWLIB_HEADER = struct.Struct("<QQQQQQiIQQQdQ")

_PICKLE_VERSION = 1

FilterLike = Callable[[int], bool] | np.ndarray | list[int] | set[int] | frozenset[int] | None


class HNSWIndex:
    """An HNSW index (hnswlib) whose graph can be read exactly.

    Parameters
    ----------
    dim : int
        Vector dimensionality.
    space : {"l2", "ip", "cosine"}
        hnswlib's distance conventions: squared L2, ``1 - dot``, ``1 - cos``
        (``cosine`` vectors are stored normalised).
    M : int
        Links per node on layers >= 1 (``2 * M`` on layer 0).
    ef_construction : int
        Candidate list size while building.
    seed : int
        Seed of hnswlib's level generator. With ``num_threads=1`` the graph is exactly the one
        raw hnswlib builds with ``init_index(max_elements, M, ef_construction, random_seed=seed)``
        and the same insertion order.
    num_threads : int
        Threads for add and search; -1 = all available cores.
    max_elements : int, optional
        Initial capacity; capacity grows automatically (doubling) either way.

    Notes
    -----
    Searches run concurrently; ``add``/``delete``/a change of ``ef`` are serialized against them
    (hnswlib is unsafe there). Every rejected call leaves the index unchanged.
    """

    def __init__(
        self,
        dim: int,
        space: str = "l2",
        M: int = 16,
        ef_construction: int = 200,
        seed: int = 100,
        num_threads: int = -1,
        max_elements: int | None = None,
    ) -> None:
        self._dim = check_positive_int(dim, "dim")
        if space not in SPACES:
            raise ConfigError(f"space must be one of {SPACES}, got {space!r}")
        self._space = space
        self._M = check_positive_int(M, "M")
        if self._M < 2:
            raise ConfigError("M must be >= 2")
        self._ef_construction = check_positive_int(ef_construction, "ef_construction")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")
        self._seed = int(seed)
        self._num_threads = resolve_threads(num_threads)
        capacity = _INITIAL_CAPACITY if max_elements is None else check_positive_int(max_elements, "max_elements")
        self._index = hnswlib.Index(space=space, dim=self._dim)
        self._index.init_index(max_elements=capacity, M=self._M, ef_construction=self._ef_construction,
                               random_seed=self._seed)
        self._ef = 64
        self._index.set_ef(self._ef)
        self._index.set_num_threads(self._num_threads)
        self._live: set[int] = set()
        self._dead: set[int] = set()
        self._lock = RWLock()
        self._graph_cache: HNSWGraph | None = None
        self._graph_base: HNSWGraph | None = None  # the last snapshot: the next one is derived from it

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        """Vector dimensionality."""
        return self._dim

    @property
    def space(self) -> str:
        """Distance space: ``"l2"``, ``"ip"`` or ``"cosine"``."""
        return self._space

    @property
    def M(self) -> int:
        """Links per node on upper layers."""
        return self._M

    @property
    def ef_construction(self) -> int:
        """Build-time candidate list size."""
        return self._ef_construction

    @property
    def seed(self) -> int:
        """Level generator seed used at construction."""
        return self._seed

    @property
    def num_threads(self) -> int:
        """Threads used by add and search."""
        return self._num_threads

    @num_threads.setter
    def num_threads(self, value: int) -> None:
        threads = resolve_threads(value)
        with self._lock.write():
            self._num_threads = threads
            self._index.set_num_threads(threads)

    @property
    def ef(self) -> int:
        """Default search candidate list size (settable; searches use ``max(ef, k)``)."""
        return self._ef

    @ef.setter
    def ef(self, value: int) -> None:
        self._ef = check_positive_int(value, "ef")

    @property
    def capacity(self) -> int:
        """Elements the index holds before it grows (deleted ones count)."""
        return int(self._index.get_max_elements())

    @property
    def ids(self) -> np.ndarray:
        """Sorted int64 array of the live (not deleted) ids."""
        with self._lock.read():
            return np.array(sorted(self._live), dtype=np.int64)

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, label: object) -> bool:
        return isinstance(label, (int, np.integer)) and int(label) in self._live

    def __repr__(self) -> str:
        return (f"HNSWIndex(dim={self._dim}, space={self._space!r}, M={self._M}, "
                f"ef_construction={self._ef_construction}, size={len(self)}, ef={self._ef})")

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict[str, Any]:
        """Picklable state: parameters, ids, ``ef``, ``num_threads`` and hnswlib's own state.

        The lock and the graph cache are dropped (rebuilt by :meth:`__setstate__`); the state is
        taken under the read lock, so it is consistent with concurrent writers.
        """
        with self._lock.read():
            dropped = ("_lock", "_graph_cache", "_graph_base", "_index")
            state = {k: v for k, v in self.__dict__.items() if k not in dropped}
            state["_live"] = set(self._live)
            state["_dead"] = set(self._dead)
            state["_hnswlib_state"] = self._index.__getstate__()
        state["_pickle_version"] = _PICKLE_VERSION
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`__getstate__`: the same graph, vectors, ids, ``ef`` and ``num_threads``.

        hnswlib re-seeds its level generator from ``seed`` on restore, so elements added after
        unpickling may get other levels than the same adds on the original object would.
        """
        state = dict(state)
        version = state.pop("_pickle_version", None)
        if version != _PICKLE_VERSION:
            raise IndexCorruptedError(f"HNSWIndex pickle version {version!r} is not supported ({_PICKLE_VERSION})")
        raw = state.pop("_hnswlib_state")
        index = hnswlib.Index.__new__(hnswlib.Index)
        index.__setstate__(raw)
        self.__dict__.update(state)
        self._index = index
        self._index.set_num_threads(self._num_threads)
        self._lock = RWLock()
        self._graph_cache = None
        self._graph_base = None

    # ------------------------------------------------------------------ mutation
    def add(self, vectors: Any, ids: Any = None) -> np.ndarray:
        """Insert vectors; return their ids.

        Parameters
        ----------
        vectors : array_like, (n, dim) or (dim,)
            Finite real numbers; converted to float32.
        ids : array_like of int, optional
            Non-negative, unique within the call, not already live in the index (a deleted
            id may be added again: hnswlib revives it with the new vector). Default: the
            next ``n`` integers after the largest id ever used.

        Returns
        -------
        numpy.ndarray of int64
            The ids of the inserted vectors.
        """
        x = as_matrix(vectors, "vectors", self._dim)
        with self._lock.write():
            if ids is None:
                used = self._live | self._dead
                start = max(used) + 1 if used else 0
                labels = np.arange(start, start + x.shape[0], dtype=np.int64)
            else:
                labels = as_ids(ids, "ids", x.shape[0])
                present = [int(v) for v in labels if int(v) in self._live]
                if present:
                    raise IdExistsError(f"ids: id {present[0]} is already in the index "
                                        f"({len(present)} of {labels.shape[0]} present)")
            lab_list = labels.tolist()
            revived = [v for v in lab_list if v in self._dead]
            needed = self._index.get_current_count() + x.shape[0] - len(revived)
            cap = self._index.get_max_elements()
            if needed > cap:
                self._index.resize_index(max(needed, 2 * cap))
            self._index.add_items(x, labels.astype(np.uint64), num_threads=self._num_threads)
            self._live.update(lab_list)
            self._dead.difference_update(revived)
            self._graph_cache = None
        return labels

    def delete(self, ids: Any) -> None:
        """Mark ids deleted: they vanish from search results; their links stay in the graph.

        Raises
        ------
        UnknownIdError
            If an id is not live in the index (nothing is deleted then).
        """
        labels = as_ids(ids, "ids", unique=True)
        with self._lock.write():
            missing = [int(v) for v in labels if int(v) not in self._live]
            if missing:
                raise UnknownIdError(f"ids: id {missing[0]} is not in the index"
                                     + (" (already deleted)" if missing[0] in self._dead else ""))
            for v in labels.tolist():
                self._index.mark_deleted(v)
            lab_list = labels.tolist()
            self._live.difference_update(lab_list)
            self._dead.update(lab_list)
            self._graph_cache = None

    # ------------------------------------------------------------------ reads
    def get_vectors(self, ids: Any) -> np.ndarray:
        """Stored vectors of live ids, ``(n, dim)`` float32 (normalised for ``cosine``).

        Raises
        ------
        UnknownIdError
            If an id is unknown or deleted.
        """
        labels = as_ids(ids, "ids", unique=False)
        with self._lock.read():
            self._check_live(labels)
            if labels.shape[0] == 0:
                return np.zeros((0, self._dim), dtype=np.float32)
            out = self._index.get_items(labels.astype(np.uint64), return_type="numpy")
        return np.ascontiguousarray(out, dtype=np.float32)

    def _check_live(self, labels: np.ndarray) -> None:
        for v in labels.tolist():
            if v not in self._live:
                raise UnknownIdError(f"id {v} is not in the index" + (" (deleted)" if v in self._dead else ""))

    def search(
        self,
        queries: Any,
        k: int = 10,
        ef: int | None = None,
        filter: FilterLike = None,
        *,
        num_threads: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """k nearest neighbours of each query.

        Parameters
        ----------
        queries : array_like, (nq, dim) or (dim,)
        k : int
            Neighbours per query (>= 1).
        ef : int, optional
            Candidate list size for this call (default: ``self.ef``); hnswlib uses ``max(ef, k)``.
        filter : callable, array_like of int, or numpy bool array, optional
            Which ids may be returned, one of

            * ``filter(id) -> bool``;
            * the allowed ids: a set, list, tuple, range or integer numpy array (non-negative
              integers; repeats are fine);
            * a boolean **mask** over ids: a 1-d numpy array of dtype ``bool`` with
              ``len(mask) > max(index.ids)``, ``mask[id]`` True where ``id`` is allowed.

            Filtered searches run on one thread (hnswlib calls the Python filter under the GIL).
        num_threads : int, optional
            Threads of this call only (-1 = all cores); default the index's setting.

        Returns
        -------
        ids : (nq, k) int64
            Nearest first; -1 where fewer than k were found.
        distances : (nq, k) float32
            Index convention; +inf where fewer than k were found.

        Raises
        ------
        FilterError
            If ``filter`` is ambiguous or malformed: a boolean mask that is not 1-d or not longer
            than the largest id, booleans that are not a numpy bool array (a list of bools, a
            single bool), a scalar, negative or non-integer ids, or anything else that is neither
            callable nor a collection of ids.
        """
        q = as_matrix(queries, "queries", self._dim)
        k = check_positive_int(k, "k")
        ef_use = self._ef if ef is None else check_positive_int(ef, "ef")
        predicate = self._make_filter(filter)
        nq = q.shape[0]
        out_ids = np.full((nq, k), -1, dtype=np.int64)
        out_dist = np.full((nq, k), np.inf, dtype=np.float32)
        threads = 1 if predicate is not None else (
            self._num_threads if num_threads is None else resolve_threads(num_threads))
        with self._lock.read():
            if self._index.ef == ef_use:
                self._search_into(q, k, threads, predicate, out_ids, out_dist)
                return out_ids, out_dist
        with self._lock.write():  # another ef: set it exclusively (set_ef is index-global)
            self._index.set_ef(ef_use)
            self._search_into(q, k, threads, predicate, out_ids, out_dist)
        return out_ids, out_dist

    def _make_filter(self, filter: FilterLike) -> Callable[[int], bool] | None:
        if filter is None:
            return None
        if callable(filter):
            return filter
        if isinstance(filter, np.ndarray) and filter.dtype == np.bool_:
            return self._mask_filter(filter)
        if isinstance(filter, (bool, np.bool_)):
            raise FilterError(f"filter: a single bool ({filter!r}) is ambiguous; pass a callable, a collection "
                              "of ids or a numpy bool mask over ids")
        if isinstance(filter, (Set, KeysView)):
            filter = list(filter)
        if not isinstance(filter, (np.ndarray, list, tuple, range)):
            raise FilterError(f"filter: expected a callable, a collection of ids or a numpy bool mask, "
                              f"got {type(filter).__name__}")
        try:
            arr = np.asarray(filter)
        except (TypeError, ValueError) as exc:
            raise FilterError(f"filter: cannot be read as ids ({exc})") from exc
        if arr.dtype == np.bool_:
            raise FilterError("filter: a sequence of booleans is ambiguous (mask or the ids 0/1?); pass a numpy "
                              "bool array for a mask, integer ids otherwise")
        if arr.ndim != 1:
            raise FilterError(f"filter: expected a 1-d collection of ids, got shape {arr.shape}")
        try:
            ids = as_ids(arr, "filter", unique=False)
        except InvalidInputError as exc:
            raise FilterError(str(exc)) from exc
        allowed = frozenset(ids.tolist())
        return allowed.__contains__

    def _mask_filter(self, mask: np.ndarray) -> Callable[[int], bool]:
        if mask.ndim != 1:
            raise FilterError(f"filter: a boolean mask must be 1-d over ids, got shape {mask.shape}")
        with self._lock.read():
            top = max(self._live) if self._live else -1
        if mask.shape[0] <= top:
            raise FilterError(f"filter: boolean mask of length {mask.shape[0]} does not cover id {top} "
                              f"(needs length > {top}, the largest id in the index)")
        allowed = frozenset(np.flatnonzero(mask).tolist())
        return allowed.__contains__

    def _search_into(self, q: np.ndarray, k: int, threads: int, predicate: Callable[[int], bool] | None,
                     out_ids: np.ndarray, out_dist: np.ndarray) -> None:
        k_eff = min(k, len(self._live))
        if k_eff == 0:
            return
        try:
            labels, dist = self._index.knn_query(q, k=k_eff, num_threads=threads, filter=predicate)
        except RuntimeError:
            # fewer than k_eff reachable for some query (hnswlib #555): per row, largest k that works
            for row in range(q.shape[0]):
                self._search_row(q[row : row + 1], k_eff, predicate, out_ids[row], out_dist[row])
            return
        out_ids[:, :k_eff] = labels.astype(np.int64)
        out_dist[:, :k_eff] = dist

    def _search_row(self, q: np.ndarray, k: int, predicate: Callable[[int], bool] | None,
                    ids_row: np.ndarray, dist_row: np.ndarray) -> None:
        # With ef >= k the candidate set is fixed, so "k results exist" is monotone in k.
        old_ef = self._index.ef
        self._index.set_ef(max(old_ef, k))
        try:
            lo, hi = 0, k  # largest working k in [lo, hi]
            best: tuple[np.ndarray, np.ndarray] | None = None
            while lo < hi:
                mid = (lo + hi + 1) // 2
                try:
                    best = self._index.knn_query(q, k=mid, num_threads=1, filter=predicate)
                    lo = mid
                except RuntimeError:
                    hi = mid - 1
            if lo > 0:
                if best is None or best[0].shape[1] != lo:
                    best = self._index.knn_query(q, k=lo, num_threads=1, filter=predicate)
                ids_row[:lo] = best[0][0].astype(np.int64)
                dist_row[:lo] = best[1][0]
        finally:
            self._index.set_ef(old_ef)

    # ------------------------------------------------------------------ graph export
    def graph(self) -> HNSWGraph:
        """Exact, immutable snapshot of the current graph (labels, levels, layers, entry point).

        The snapshot is cached until the next ``add``/``delete``. After one, the new snapshot is
        derived from the last one returned (kept in ``_graph_base``): only rows whose record or
        upper-layer links changed, and new rows, are decoded; ``g.changed_rows(previous)`` and
        ``g.neighborhood_changes(previous, ...)`` then say which rows a consumer must refresh.
        Rows are hnswlib's internal ids and never move between snapshots of one index.
        """
        with self._lock.read():
            cached = self._graph_cache
            if cached is not None:
                self._graph_base = cached
                return cached
            state = self._index.__getstate__()[0]
            g = graph_from_state(state, self._space, previous=getattr(self, "_graph_base", None))
            self._graph_cache = g
            self._graph_base = g
            return g

    def raw_state(self) -> dict[str, Any]:
        """hnswlib's own state dict (a copy; for independent checks and debugging)."""
        with self._lock.read():
            return dict(self._index.__getstate__()[0])

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index to one file, atomically (a failed save leaves an old file intact).

        The file holds versioned metadata (parameters, counts, SHA-256 of the payload) and
        hnswlib's own index bytes.
        """
        header = {
            "format": "ruvector-hnsw-index",
            "format_version": FORMAT_VERSION,
            "dim": self._dim,
            "space": self._space,
            "M": self._M,
            "ef_construction": self._ef_construction,
            "seed": self._seed,
            "ef": self._ef,
            "count": len(self._live),
            "deleted": len(self._dead),
        }
        target = Path(path)
        with tempfile.TemporaryDirectory(dir=target.parent if target.parent.exists() else None) as tmp:
            raw = Path(tmp) / "hnswlib.bin"
            with self._lock.read():
                self._index.save_index(str(raw))
            write_artifact(target, _MAGIC, header, raw)

    @classmethod
    def load(cls, path: str | os.PathLike[str], num_threads: int = -1) -> HNSWIndex:
        """Load an index written by :meth:`save`.

        Raises
        ------
        FileNotFoundError
            If the file does not exist.
        IndexCorruptedError
            If the file is truncated, altered, or of another format or version.
        """
        src = Path(path)
        if not src.exists():
            raise FileNotFoundError(f"{src}: no such index file")
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "hnswlib.bin"
            header = read_artifact(src, _MAGIC, raw)
            try:
                if header.get("format") != "ruvector-hnsw-index":
                    raise IndexCorruptedError(f"{src}: not an HNSWIndex file")
                if int(header["format_version"]) > FORMAT_VERSION:
                    raise IndexCorruptedError(
                        f"{src}: format version {header['format_version']} is newer than this library "
                        f"supports ({FORMAT_VERSION})")
                obj = cls(int(header["dim"]), space=str(header["space"]), M=int(header["M"]),
                           ef_construction=int(header["ef_construction"]), seed=int(header["seed"]),
                           num_threads=num_threads)
                ef = int(header["ef"])
            except (KeyError, ValueError, TypeError) as exc:
                raise IndexCorruptedError(f"{src}: invalid metadata ({exc})") from exc
            _check_hnswlib_header(raw, obj._dim, src)
            index = hnswlib.Index(space=obj._space, dim=obj._dim)
            try:
                index.load_index(str(raw))
            except (RuntimeError, MemoryError, ValueError) as exc:
                raise IndexCorruptedError(f"{src}: hnswlib could not read the index ({exc})") from exc
        state = index.__getstate__()[0]
        graph = graph_from_state(state, obj._space)  # validates the link structure
        obj._index = index
        obj._index.set_num_threads(obj._num_threads)
        obj._ef = check_positive_int(ef, "ef")
        obj._index.set_ef(obj._ef)
        dead = set(graph.labels[graph.deleted].tolist())
        obj._live = set(graph.labels.tolist()) - dead
        obj._dead = dead
        if len(obj._live) != int(header.get("count", len(obj._live))):
            raise IndexCorruptedError(f"{src}: element count does not match the metadata")
        obj._graph_cache = graph
        return obj


def _check_hnswlib_header(raw: Path, dim: int, src: Path) -> None:
    """Sanity-check hnswlib's 96-byte header against the payload size before hnswlib reads it."""
    size = raw.stat().st_size
    with open(raw, "rb") as fh:
        head = fh.read(_HNSWLIB_HEADER.size)
    if len(head) < _HNSWLIB_HEADER.size:
        raise IndexCorruptedError(f"{src}: hnswlib payload is truncated")
    (offset0, max_el, count, size_el, label_off, offset_data, max_level, _entry, max_m, max_m0, m, _mult,
     _efc) = _HNSWLIB_HEADER.unpack(head)
    ok = (offset0 == 0 and count <= max_el and max_m0 == 2 * m and max_m == m
          and offset_data == 4 * max_m0 + 4 and label_off == offset_data + 4 * dim and size_el == label_off + 8
          and 0 <= max_level < 64 and _HNSWLIB_HEADER.size + count * size_el <= size)
    if not ok:
        raise IndexCorruptedError(f"{src}: hnswlib header is inconsistent with the metadata")
