"""Datasets from files: TEXMEX ``.fvecs/.bvecs``, ``.npy``, ``.npz`` and ann-benchmarks ``.hdf5``.

Sibling-file convention (``.fvecs``, ``.bvecs``, ``.npy``)
----------------------------------------------------------
A base file named ``<prefix>_base.<ext>`` (the TEXMEX naming, e.g. ``sift_base.fvecs``) picks up,
when they exist next to it:

==============================  ==========================================================
``<prefix>_query.<ext>``        evaluation queries
``<prefix>_groundtruth.ivecs``  exact neighbour ids of the queries (``.npy`` for ``.npy`` sets)
``<prefix>_learn.<ext>``        training queries (TEXMEX's learning set)
``<prefix>_base_labels.npy``    int labels of the base (``.ivecs`` with one column also accepted)
``<prefix>_query_labels.npy``   int labels of the queries
``<prefix>_learn_labels.npy``   int labels of the training queries
==============================  ==========================================================

Any of them can be given explicitly instead (``queries=``, ``groundtruth=``, ``learn=``,
``base_labels=``, ``query_labels=``). Without a query file, ``n_queries`` rows (default
``min(1000, N // 10)``) are drawn at random (``seed``) out of the base and removed from it.
Without a ground-truth file (or when ``max_base`` truncates the base), the exact ``gt_k``
neighbours are computed with FAISS. Metric: ``metric=`` if given, else the file's own
(``.hdf5`` ``distance`` attribute, ``.npz`` ``metric`` entry), else ``"l2"``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ruvector_hnsw.datasets import formats
from ruvector_hnsw.datasets.base import METRICS, Dataset
from ruvector_hnsw.errors import ConfigError, FileFormatError, InvalidInputError

__all__ = ["FILE_SUFFIXES", "load_file", "save_npz"]

FILE_SUFFIXES = (".fvecs", ".bvecs", ".npy", ".npz", ".hdf5", ".h5")
PathLike = str | os.PathLike[str]


def _read_any(path: Path) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix in (".fvecs", ".bvecs", ".ivecs"):
        return formats.read_vecs(path)
    if suffix == ".npy":
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise
        except (ValueError, OSError, EOFError) as exc:
            raise FileFormatError(f"{path}: not a readable .npy file ({exc})") from exc
    raise FileFormatError(f"{path}: unsupported suffix {suffix!r}")


def _read_labels(path: Path) -> np.ndarray:
    arr = _read_any(path)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise FileFormatError(f"{path}: labels must be a 1-D integer array, got {arr.dtype} {arr.shape}")
    return np.asarray(arr, dtype=np.int64)


def _sibling(base: Path, part: str, exts: tuple[str, ...]) -> Path | None:
    stem = base.stem
    if not stem.endswith("_base"):
        return None
    prefix = stem[: -len("_base")]
    for ext in exts:
        cand = base.with_name(f"{prefix}_{part}{ext}")
        if cand.exists():
            return cand
    return None


def _pairwise_dist(metric: str, q: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Distances between q (nq, d) and x (nq, k, d) rows, in the package convention."""
    if metric == "l2":
        return np.asarray(((x - q[:, None, :]) ** 2).sum(-1), dtype=np.float32)
    if metric == "ip":
        return np.asarray(1.0 - np.einsum("qd,qkd->qk", q, x), dtype=np.float32)
    qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-30)
    xn = x / np.maximum(np.linalg.norm(x, axis=2, keepdims=True), 1e-30)
    return np.asarray(1.0 - np.einsum("qd,qkd->qk", qn, xn), dtype=np.float32)


def load_file(
    path: PathLike,
    *,
    metric: str | None = None,
    queries: PathLike | None = None,
    groundtruth: PathLike | None = None,
    learn: PathLike | None = None,
    base_labels: PathLike | None = None,
    query_labels: PathLike | None = None,
    n_queries: int | None = None,
    n_train_queries: int = 0,
    max_base: int | None = None,
    gt_k: int = 100,
    seed: int = 0,
    progress: bool = False,
    name: str | None = None,
) -> Dataset:
    """Load a dataset from a vector file (and its siblings, see the module docstring).

    Parameters
    ----------
    path : str or PathLike
        ``.fvecs``, ``.bvecs``, ``.npy`` (base vectors), ``.npz`` (named arrays, see
        :data:`ruvector_hnsw.datasets.formats.NPZ_KEYS`) or ``.hdf5``/``.h5`` (ann-benchmarks).
    metric : {"l2", "ip", "cosine"}, optional
        Overrides the file's metric.
    queries, groundtruth, learn, base_labels, query_labels : path, optional
        Explicit companion files (override the sibling convention).
    n_queries : int, optional
        Queries split out of the base when no query file exists.
    n_train_queries : int
        Evaluation queries moved into ``train_queries`` (disjoint; see :meth:`Dataset.split_queries`).
    max_base : int, optional
        Keep only the first ``max_base`` base rows (ground truth is then recomputed).
    gt_k : int
        Neighbours to compute when the ground truth must be computed (0: don't).
    seed : int
        Seed of the query split.
    progress : bool
        Progress bar for the ground truth.
    name : str, optional
        Dataset name (default: the file stem).

    Raises
    ------
    FileNotFoundError
        If ``path`` or an explicitly given companion does not exist.
    FileFormatError
        If a file is truncated/corrupt or the files disagree (dimension, counts).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(2, "No such file or directory", str(p))
    if p.is_dir():
        raise FileFormatError(f"{p}: is a directory, expected a vector file ({', '.join(FILE_SUFFIXES)})")
    suffix = p.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise FileFormatError(f"{p}: unsupported file type {suffix!r} (expected one of {', '.join(FILE_SUFFIXES)})")
    if metric is not None and metric not in METRICS:
        raise ConfigError(f"metric must be one of {METRICS}, got {metric!r}")
    if max_base is not None and max_base < 1:
        raise ConfigError(f"max_base must be >= 1, got {max_base}")

    fields: dict[str, Any] = {}
    file_metric: str | None = None
    if suffix in (".hdf5", ".h5"):
        raw = formats.read_ann_hdf5(p)
        file_metric = raw["metric"]
        fields = {k: raw[k] for k in ("base", "queries", "neighbors", "distances")}
    elif suffix == ".npz":
        fields = formats.read_npz(p)
        file_metric = fields.pop("metric", None)
    else:
        fields["base"] = _read_any(p)
        if fields["base"].ndim != 2:
            raise FileFormatError(f"{p}: base must be a 2-D array, got shape {fields['base'].shape}")
        vec_exts = (p.suffix,) if suffix != ".npy" else (".npy",)
        gt_exts = (".ivecs", ".npy") if suffix != ".npy" else (".npy", ".ivecs")
        lab_exts = (".npy", ".ivecs")
        companions: dict[str, Path | None] = {
            "queries": Path(queries) if queries is not None else _sibling(p, "query", vec_exts),
            "neighbors": Path(groundtruth) if groundtruth is not None else _sibling(p, "groundtruth", gt_exts),
            "train_queries": Path(learn) if learn is not None else _sibling(p, "learn", vec_exts),
            "base_labels": Path(base_labels) if base_labels is not None else _sibling(p, "base_labels", lab_exts),
            "query_labels": (
                Path(query_labels) if query_labels is not None else _sibling(p, "query_labels", lab_exts)
            ),
            "train_query_labels": _sibling(p, "learn_labels", lab_exts),
        }
        for fld, cp in companions.items():
            if cp is None:
                continue
            if not cp.exists():
                raise FileNotFoundError(2, "No such file or directory", str(cp))
            fields[fld] = _read_labels(cp) if fld.endswith("labels") else _read_any(cp)
    chosen_metric = metric or file_metric or "l2"
    if chosen_metric not in METRICS:
        raise FileFormatError(f"{p}: metric {chosen_metric!r} not one of {METRICS}")

    base = fields["base"]
    d = base.shape[1]
    for fld in ("queries", "train_queries"):
        if fields.get(fld) is not None and (fields[fld].ndim != 2 or fields[fld].shape[1] != d):
            raise FileFormatError(f"{p}: {fld} have shape {fields[fld].shape}, base dimension is {d}")
    truncated = False
    if max_base is not None and max_base < base.shape[0]:
        base = base[:max_base]
        truncated = True
        for fld in ("base_labels", "train_base_labels"):
            if fields.get(fld) is not None:
                fields[fld] = fields[fld][:max_base]
    params: dict[str, Any] = {"path": str(p), "max_base": max_base, "seed": seed}

    if fields.get("queries") is None:
        n = base.shape[0]
        nq = min(1000, max(1, n // 10)) if n_queries is None else int(n_queries)
        if not 1 <= nq < n:
            raise ConfigError(f"{p}: cannot split {nq} queries out of {n} base vectors")
        perm = np.random.default_rng(seed).permutation(n)
        q_idx, b_idx = np.sort(perm[:nq]), np.sort(perm[nq:])
        fields["queries"] = np.asarray(base[q_idx])
        base = np.asarray(base[b_idx])
        if fields.get("base_labels") is not None:
            labels = fields["base_labels"]
            fields["query_labels"] = labels[q_idx]
            fields["base_labels"] = labels[b_idx]
        if fields.get("train_base_labels") is not None:  # labels of rows that became queries are moot
            fields["train_base_labels"] = fields["train_base_labels"][b_idx]
        truncated = True  # any ground truth in the file refers to the unsplit base
        params["queries_split_from_base"] = nq
    elif n_queries is not None:
        nq = int(n_queries)
        if nq < 1:
            raise ConfigError(f"n_queries must be >= 1, got {nq}")
        fields["queries"] = fields["queries"][:nq]
        for fld in ("query_labels", "neighbors", "distances"):
            if fields.get(fld) is not None:
                fields[fld] = fields[fld][:nq]

    if truncated:
        fields["neighbors"] = None
        fields["distances"] = None
    try:
        ds = Dataset(
            name=name or p.stem,
            base=base,
            queries=fields["queries"],
            metric=chosen_metric,
            base_labels=fields.get("base_labels"),
            query_labels=fields.get("query_labels"),
            neighbors=fields.get("neighbors"),
            distances=fields.get("distances"),
            train_queries=fields.get("train_queries"),
            train_query_labels=fields.get("train_query_labels"),
            train_base_labels=fields.get("train_base_labels"),
            params=params,
            source=str(p),
        )
    except InvalidInputError as exc:
        raise FileFormatError(f"{p}: inconsistent dataset files: {exc}") from exc
    if ds.neighbors is not None and ds.distances is None:
        nb = ds.neighbors
        safe = np.where(nb >= 0, nb, 0)
        dist = _pairwise_dist(ds.metric, ds.queries.astype(np.float64), ds.base[safe].astype(np.float64))
        ds = ds.replace(distances=np.where(nb >= 0, dist, np.inf).astype(np.float32))
    elif ds.neighbors is None and gt_k > 0:
        ds = ds.with_ground_truth(gt_k, progress=progress)
    if n_train_queries:
        ds = ds.split_queries(n_train_queries, seed=seed)
    return ds


def save_npz(dataset: Dataset, path: PathLike) -> None:
    """Write a dataset to ``.npz`` (readable by :func:`load_file`); extras and params are not kept.

    ``train_base_labels`` (the unseen-class protocol's hidden labels) is kept when set.
    """
    formats.write_npz(
        path,
        base=dataset.base,
        queries=dataset.queries,
        base_labels=dataset.base_labels,
        query_labels=dataset.query_labels,
        neighbors=dataset.neighbors,
        distances=dataset.distances,
        train_queries=dataset.train_queries,
        train_query_labels=dataset.train_query_labels,
        train_base_labels=dataset.train_base_labels,
        metric=np.array(dataset.metric),
    )
