"""The :class:`Dataset` container shared by every loader and generator.

A dataset is a database (``base``), evaluation queries (``queries``) and a metric, plus
any of: class labels for labelled retrieval (relevant = same label), exact ground-truth
neighbours for ANN recall, and *training* queries that are disjoint from the evaluation
queries (for methods that learn, see :meth:`Dataset.split_queries`).

Distance conventions follow :class:`ruvector_hnsw.HNSWIndex` (hnswlib): ``"l2"`` is the
squared Euclidean distance, ``"ip"`` is ``1 - dot``, ``"cosine"`` is ``1 - cos``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ruvector_hnsw.errors import (
    ConfigError,
    EmptyInputError,
    InvalidDTypeError,
    NonFiniteError,
    ShapeMismatchError,
)

__all__ = ["METRICS", "Dataset", "Metric", "make_split"]

Metric = Literal["l2", "ip", "cosine"]
METRICS: tuple[str, ...] = ("l2", "ip", "cosine")


def _as_matrix(name: str, a: Any, dim: int | None = None) -> np.ndarray:
    """Return ``a`` as a C-contiguous float32 (n, d) array, or raise a typed error."""
    arr = np.asarray(a)
    if arr.dtype.kind not in "fiub":
        raise InvalidDTypeError(f"{name}: dtype {arr.dtype} cannot be used as vectors (need a real number type)")
    if arr.ndim != 2:
        raise ShapeMismatchError(f"{name}: expected a 2-D (n, d) array, got shape {arr.shape}")
    if arr.shape[1] == 0:
        raise EmptyInputError(f"{name}: vectors have dimension 0")
    if dim is not None and arr.shape[1] != dim:
        raise ShapeMismatchError(f"{name}: dimension {arr.shape[1]} differs from base dimension {dim}")
    out = np.ascontiguousarray(arr, dtype=np.float32)
    if out.size and not np.isfinite(out).all():
        bad = int(np.flatnonzero(~np.isfinite(out).all(axis=1))[0])
        raise NonFiniteError(f"{name}: row {bad} holds NaN or infinity")
    return out


def _as_labels(name: str, a: Any, n: int) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype.kind not in "iub":
        raise InvalidDTypeError(f"{name}: labels must be integers, got dtype {arr.dtype}")
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ShapeMismatchError(f"{name}: expected shape ({n},), got {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.int64)


@dataclass(eq=False)
class Dataset:
    """Vectors, queries, metric and (optionally) labels, ground truth and training queries.

    Parameters
    ----------
    name : str
        Short name (``"clusters"``, ``"sift_base"``, ...).
    base : array_like, shape (N, d)
        Database vectors; stored as C-contiguous float32.
    queries : array_like, shape (nq, d)
        Evaluation queries; stored as C-contiguous float32.
    metric : {"l2", "ip", "cosine"}
        The metric relevance and ground truth are defined in.
    base_labels, query_labels : array_like of int, optional
        Class labels (labelled retrieval: a base item is relevant to a query iff the labels
        are equal). Both or neither.
    neighbors : array_like of int, shape (nq, k), optional
        Exact nearest base ids of each query, nearest first (ANN ground truth).
    distances : array_like of float, shape (nq, k), optional
        Distances aligned with ``neighbors`` in the convention of the module docstring.
    train_queries : array_like, shape (nt, d), optional
        Queries for *training* only; never overlapping the evaluation queries.
    train_query_labels : array_like of int, shape (nt,), optional
        Labels of ``train_queries``.
    extras : dict of str to ndarray
        Scenario-specific arrays (``base_super_labels`` for ``hierarchical``, ...).
    params : dict
        JSON-able generation or loading parameters (reported by :meth:`describe`).
    source : str
        Where the data came from (``"synthetic"``, a file path, ``"sklearn.load_digits"``).
    description : str
        One paragraph describing the data.
    train_base_labels : array_like of int, shape (N,), optional
        The base labels *training* may see, when they differ from ``base_labels`` (which
        relevance is judged with): ``-1`` marks an item whose label is hidden from training
        ("unknown": never a positive, never a label-based negative). Set by
        :func:`~ruvector_hnsw.datasets.class_split`; None means training sees ``base_labels``.

    Raises
    ------
    InvalidInputError
        (or a subclass) if shapes, dtypes or the metric are inconsistent, or vectors hold
        NaN/inf.
    """

    name: str
    base: np.ndarray
    queries: np.ndarray
    metric: str = "l2"
    base_labels: np.ndarray | None = None
    query_labels: np.ndarray | None = None
    neighbors: np.ndarray | None = None
    distances: np.ndarray | None = None
    train_queries: np.ndarray | None = None
    train_query_labels: np.ndarray | None = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    description: str = ""
    train_base_labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ConfigError(f"metric must be one of {METRICS}, got {self.metric!r}")
        self.base = _as_matrix("base", self.base)
        if self.base.shape[0] == 0:
            raise EmptyInputError("base: the database holds no vectors")
        d = self.base.shape[1]
        self.queries = _as_matrix("queries", self.queries, d)
        if (self.base_labels is None) != (self.query_labels is None):
            raise ShapeMismatchError("base_labels and query_labels must be given together")
        if self.base_labels is not None and self.query_labels is not None:
            self.base_labels = _as_labels("base_labels", self.base_labels, self.base.shape[0])
            self.query_labels = _as_labels("query_labels", self.query_labels, self.queries.shape[0])
        if self.neighbors is not None:
            nb = np.asarray(self.neighbors)
            if nb.dtype.kind not in "iu" or nb.ndim != 2 or nb.shape[0] != self.queries.shape[0]:
                raise ShapeMismatchError(
                    f"neighbors: expected an integer ({self.queries.shape[0]}, k) array, "
                    f"got {nb.dtype} {nb.shape}"
                )
            nb = np.ascontiguousarray(nb, dtype=np.int64)
            if nb.size and (nb.min() < -1 or nb.max() >= self.base.shape[0]):
                raise ShapeMismatchError(
                    f"neighbors: ids must lie in [0, {self.base.shape[0]}) (or -1 for padding), "
                    f"got range [{nb.min()}, {nb.max()}]"
                )
            self.neighbors = nb
        if self.distances is not None:
            if self.neighbors is None:
                raise ShapeMismatchError("distances given without neighbors")
            dist = np.ascontiguousarray(self.distances, dtype=np.float32)
            if dist.shape != self.neighbors.shape:
                raise ShapeMismatchError(
                    f"distances: shape {dist.shape} differs from neighbors {self.neighbors.shape}"
                )
            self.distances = dist
        if self.train_queries is not None:
            self.train_queries = _as_matrix("train_queries", self.train_queries, d)
            if self.train_query_labels is not None:
                self.train_query_labels = _as_labels(
                    "train_query_labels", self.train_query_labels, self.train_queries.shape[0]
                )
        elif self.train_query_labels is not None:
            raise ShapeMismatchError("train_query_labels given without train_queries")
        if self.train_base_labels is not None:
            if self.base_labels is None:
                raise ShapeMismatchError("train_base_labels given without base_labels")
            self.train_base_labels = _as_labels("train_base_labels", self.train_base_labels, self.base.shape[0])

    @property
    def training_base_labels(self) -> np.ndarray | None:
        """The base labels training may use: ``train_base_labels`` if set, else ``base_labels``."""
        return self.base_labels if self.train_base_labels is None else self.train_base_labels

    # ------------------------------------------------------------------ shape facts
    @property
    def dim(self) -> int:
        """Vector dimensionality ``d``."""
        return int(self.base.shape[1])

    @property
    def n_base(self) -> int:
        """Number of database vectors ``N``."""
        return int(self.base.shape[0])

    @property
    def n_queries(self) -> int:
        """Number of evaluation queries."""
        return int(self.queries.shape[0])

    @property
    def n_train_queries(self) -> int:
        """Number of training queries (0 if none)."""
        return 0 if self.train_queries is None else int(self.train_queries.shape[0])

    @property
    def labelled(self) -> bool:
        """True when base and query labels are present."""
        return self.base_labels is not None and self.query_labels is not None

    @property
    def has_ground_truth(self) -> bool:
        """True when ``neighbors`` is present."""
        return self.neighbors is not None

    def relevant_counts(self) -> np.ndarray:
        """Number of relevant base items ``R`` of each query (same label), shape (nq,).

        Raises
        ------
        ConfigError
            If the dataset has no labels.
        """
        if self.base_labels is None or self.query_labels is None:
            raise ConfigError(f"dataset {self.name!r} has no labels")
        uniq, counts = np.unique(self.base_labels, return_counts=True)
        pos = np.searchsorted(uniq, self.query_labels)
        pos = np.clip(pos, 0, len(uniq) - 1)
        hit = uniq[pos] == self.query_labels
        return np.where(hit, counts[pos], 0).astype(np.int64)

    # ------------------------------------------------------------------ reporting
    def describe(self) -> dict[str, Any]:
        """A JSON-able summary: name, source, metric, sizes, label and ground-truth facts, params."""
        out: dict[str, Any] = {
            "name": self.name,
            "source": self.source,
            "metric": self.metric,
            "n_base": self.n_base,
            "n_queries": self.n_queries,
            "n_train_queries": self.n_train_queries,
            "dim": self.dim,
            "labelled": self.labelled,
            "n_classes": None,
            "mean_relevant": None,
            "max_relevant": None,
            "gt_k": None if self.neighbors is None else int(self.neighbors.shape[1]),
            "params": _jsonable(self.params),
        }
        if self.labelled:
            assert self.base_labels is not None
            r = self.relevant_counts()
            out["n_classes"] = int(np.unique(self.base_labels).size)
            out["mean_relevant"] = float(r.mean()) if r.size else 0.0
            out["max_relevant"] = int(r.max()) if r.size else 0
        if self.train_base_labels is not None:
            out["n_base_labels_hidden_from_training"] = int(np.count_nonzero(self.train_base_labels < 0))
        if self.description:
            out["description"] = self.description.strip().splitlines()[0]
        return out

    @property
    def info(self) -> dict[str, Any]:
        """Same as :meth:`describe`."""
        return self.describe()

    def __repr__(self) -> str:
        extra = []
        if self.labelled:
            extra.append("labelled")
        if self.neighbors is not None:
            extra.append(f"gt_k={self.neighbors.shape[1]}")
        if self.train_queries is not None:
            extra.append(f"train={self.n_train_queries}")
        tail = (", " + ", ".join(extra)) if extra else ""
        return (
            f"Dataset({self.name!r}, base={self.n_base}x{self.dim}, queries={self.n_queries}, "
            f"metric={self.metric!r}{tail})"
        )

    # ------------------------------------------------------------------ derived datasets
    def replace(self, **changes: Any) -> Dataset:
        """Return a copy with the given fields replaced (validated again)."""
        return dataclasses.replace(self, **changes)

    def with_ground_truth(
        self, k: int = 100, *, num_threads: int | None = None, progress: bool = False
    ) -> Dataset:
        """Return a copy whose ``neighbors``/``distances`` are the exact ``k`` nearest base items.

        Computed with FAISS in the dataset's metric (see :func:`~ruvector_hnsw.datasets.exact_knn`);
        ``k`` is clipped to ``n_base``.
        """
        from ruvector_hnsw.datasets.groundtruth import exact_knn

        kk = min(int(k), self.n_base)
        ids, dist = exact_knn(
            self.base, self.queries, kk, self.metric, num_threads=num_threads, progress=progress
        )
        return self.replace(neighbors=ids, distances=dist)

    def take_queries(self, n: int) -> Dataset:
        """Return a copy keeping only the first ``n`` evaluation queries (and their labels/ground truth)."""
        if n <= 0:
            raise ConfigError(f"n must be positive, got {n}")
        sl = slice(0, int(n))
        return self.replace(
            queries=self.queries[sl],
            query_labels=None if self.query_labels is None else self.query_labels[sl],
            neighbors=None if self.neighbors is None else self.neighbors[sl],
            distances=None if self.distances is None else self.distances[sl],
            extras={k: (v[sl] if k.startswith("query_") else v) for k, v in self.extras.items()},
        )

    def split_queries(self, n_train: int, *, seed: int = 0) -> Dataset:
        """Move a random subset of the evaluation queries into the training queries.

        The returned dataset's ``queries`` and ``train_queries`` are disjoint (no query row is in
        both); ground truth, labels and ``query_*`` extras follow their rows. If training queries
        already exist the moved ones are appended after them.

        Parameters
        ----------
        n_train : int
            How many queries to move; at least one evaluation query must remain.
        seed : int
            Seed of the random permutation.

        Raises
        ------
        ConfigError
            If ``n_train`` is not in ``[0, n_queries)``, or the dataset has training queries
            without labels while it has query labels (or vice versa).
        """
        n_train = int(n_train)
        if not 0 <= n_train < self.n_queries:
            raise ConfigError(
                f"n_train must be in [0, {self.n_queries}) for {self.n_queries} queries, got {n_train}"
            )
        if n_train == 0:
            return self.replace()
        perm = np.random.default_rng(seed).permutation(self.n_queries)
        tr, ev = np.sort(perm[:n_train]), np.sort(perm[n_train:])
        new_tq = self.queries[tr]
        new_tl = None if self.query_labels is None else self.query_labels[tr]
        if self.train_queries is not None:
            if (self.train_query_labels is None) != (new_tl is None):
                raise ConfigError("existing training queries and new ones disagree on having labels")
            new_tq = np.concatenate([self.train_queries, new_tq])
            if new_tl is not None and self.train_query_labels is not None:
                new_tl = np.concatenate([self.train_query_labels, new_tl])
        return self.replace(
            queries=self.queries[ev],
            query_labels=None if self.query_labels is None else self.query_labels[ev],
            neighbors=None if self.neighbors is None else self.neighbors[ev],
            distances=None if self.distances is None else self.distances[ev],
            train_queries=new_tq,
            train_query_labels=new_tl,
            extras=self._split_extras(tr, ev),
            params={**self.params, "split_queries": {"n_train": n_train, "seed": seed}},
        )

    def _split_extras(self, tr: np.ndarray, ev: np.ndarray) -> dict[str, np.ndarray]:
        out = dict(self.extras)
        for key, val in self.extras.items():
            if not key.startswith("query_"):
                continue
            tkey = "train_" + key
            moved = val[tr]
            if tkey in self.extras:
                moved = np.concatenate([self.extras[tkey], moved])
            out[key] = val[ev]
            out[tkey] = moved
        return out


def make_split(dataset: Dataset, n_train: int, *, seed: int = 0) -> Dataset:
    """Functional form of :meth:`Dataset.split_queries`."""
    return dataset.split_queries(n_train, seed=seed)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj
