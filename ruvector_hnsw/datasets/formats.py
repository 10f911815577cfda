"""Array file formats: TEXMEX ``.fvecs/.ivecs/.bvecs``, ann-benchmarks HDF5 and ``.npz``.

TEXMEX vector files (http://corpus-texmex.irisa.fr/) store each vector as a little-endian
int32 dimension ``d`` followed by ``d`` components (float32 for ``.fvecs``, int32 for
``.ivecs``, uint8 for ``.bvecs``). The readers map the file (no copy), check that the size is
a whole number of records and that every record header holds the same ``d``; anything else is a
:class:`~ruvector_hnsw.errors.FileFormatError` whose message names the file and the problem.

ann-benchmarks HDF5 files hold datasets ``train`` (base), ``test`` (queries), ``neighbors``,
``distances`` and a root attribute ``distance`` (``"euclidean"``, ``"angular"``, ``"dot"``).
Reading or writing them needs the optional ``h5py`` (``pip install 'ruvector-hnsw[hdf5]'``).
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ruvector_hnsw._validation import METRIC_ALIASES
from ruvector_hnsw.errors import FileFormatError, InvalidDTypeError, InvalidInputError, MissingDependencyError

__all__ = [
    "ANN_DISTANCES",
    "read_ann_hdf5",
    "read_bvecs",
    "read_fvecs",
    "read_ivecs",
    "read_npz",
    "read_vecs",
    "write_ann_hdf5",
    "write_bvecs",
    "write_fvecs",
    "write_ivecs",
    "write_npz",
    "write_vecs",
]

PathLike = str | os.PathLike[str]

#: ann-benchmarks ``distance`` attribute -> our metric name (the package-wide alias table)
ANN_DISTANCES: dict[str, str] = METRIC_ALIASES
_METRIC_TO_ANN = {"l2": "euclidean", "cosine": "angular", "ip": "dot"}

_VEC_KINDS: dict[str, np.dtype[Any]] = {
    ".fvecs": np.dtype("<f4"),
    ".ivecs": np.dtype("<i4"),
    ".bvecs": np.dtype("u1"),
}
_MAX_DIM = 1 << 24


# ---------------------------------------------------------------------------- TEXMEX
def _read_vecs(
    path: PathLike, dtype: np.dtype[Any], *, mmap: bool, start: int, count: int | None, check_all: bool
) -> np.ndarray:
    p = Path(path)
    size = p.stat().st_size  # FileNotFoundError (an OSError) names the file
    if size == 0:
        raise FileFormatError(f"{p}: empty file")
    if size < 4:
        raise FileFormatError(f"{p}: truncated ({size} bytes, shorter than one 4-byte dimension header)")
    with open(p, "rb") as fh:
        d = int(np.frombuffer(fh.read(4), dtype="<i4")[0])
    if d <= 0 or d > _MAX_DIM:
        raise FileFormatError(f"{p}: invalid dimension header {d} (corrupt file or not a {p.suffix} file)")
    rec = 4 + d * dtype.itemsize
    if size % rec:
        raise FileFormatError(
            f"{p}: truncated or corrupt: size {size} bytes is not a multiple of the record size "
            f"{rec} (4 + {d} x {dtype.itemsize}); {size // rec} whole records and {size % rec} extra bytes"
        )
    n = size // rec
    if start < 0 or start > n:
        raise InvalidInputError(f"{p}: start={start} outside [0, {n}]")
    stop = n if count is None else min(n, start + max(int(count), 0))
    raw: np.ndarray
    if mmap:
        raw = np.memmap(p, dtype=np.uint8, mode="r", shape=(n, rec))
    else:
        with open(p, "rb") as fh:
            fh.seek(start * rec)
            raw = np.fromfile(fh, dtype=np.uint8, count=(stop - start) * rec).reshape(-1, rec)
        stop, start = stop - start, 0
    raw = raw[start:stop]
    heads = raw[:, :4].view("<i4")[:, 0]
    if heads.size:
        check = heads if check_all else heads[[0, -1]]
        bad = np.flatnonzero(check != d)
        if bad.size:
            row = int(bad[0]) if check_all else (0 if bad[0] == 0 else heads.size - 1)
            raise FileFormatError(
                f"{p}: corrupt: record {start + row} has dimension header {int(check[bad[0]])}, expected {d}"
            )
    vecs = raw[:, 4:].view(dtype)
    if not mmap:
        vecs = np.ascontiguousarray(vecs)
    return vecs


def read_fvecs(
    path: PathLike, *, mmap: bool = True, start: int = 0, count: int | None = None, check_all: bool = True
) -> np.ndarray:
    """Read a ``.fvecs`` file as an (n, d) float32 array.

    Parameters
    ----------
    path : str or PathLike
        The file.
    mmap : bool
        Map the file read-only and return a strided view (no copy); else read into memory
        (C-contiguous).
    start, count : int
        Read records ``start .. start + count`` only (``count=None``: to the end).
    check_all : bool
        Check every record's dimension header (one strided pass); else only the first and last.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    FileFormatError
        If the file is empty, truncated (size not a whole number of records), or a record
        header disagrees with the first one.
    """
    return _read_vecs(path, _VEC_KINDS[".fvecs"], mmap=mmap, start=start, count=count, check_all=check_all)


def read_ivecs(
    path: PathLike, *, mmap: bool = True, start: int = 0, count: int | None = None, check_all: bool = True
) -> np.ndarray:
    """Read a ``.ivecs`` file as an (n, d) int32 array (see :func:`read_fvecs` for parameters)."""
    return _read_vecs(path, _VEC_KINDS[".ivecs"], mmap=mmap, start=start, count=count, check_all=check_all)


def read_bvecs(
    path: PathLike, *, mmap: bool = True, start: int = 0, count: int | None = None, check_all: bool = True
) -> np.ndarray:
    """Read a ``.bvecs`` file as an (n, d) uint8 array (see :func:`read_fvecs` for parameters)."""
    return _read_vecs(path, _VEC_KINDS[".bvecs"], mmap=mmap, start=start, count=count, check_all=check_all)


def read_vecs(path: PathLike, **kw: Any) -> np.ndarray:
    """Read a ``.fvecs``, ``.ivecs`` or ``.bvecs`` file, chosen by its suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in _VEC_KINDS:
        raise FileFormatError(f"{path}: unknown vector file suffix {suffix!r} (expected .fvecs/.ivecs/.bvecs)")
    return _read_vecs(
        path,
        _VEC_KINDS[suffix],
        mmap=kw.get("mmap", True),
        start=kw.get("start", 0),
        count=kw.get("count"),
        check_all=kw.get("check_all", True),
    )


def _atomic_write_bytes(path: Path, writer: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            writer(fh)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _write_vecs(path: PathLike, x: Any, dtype: np.dtype[Any]) -> None:
    arr = np.asarray(x)
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise InvalidInputError(f"{path}: expected a 2-D (n, d) array with d >= 1, got shape {arr.shape}")
    if arr.dtype.kind not in "fiub":
        raise InvalidDTypeError(f"{path}: cannot write dtype {arr.dtype}")
    if dtype.kind in "iu":
        if arr.dtype.kind == "f" and arr.size and not np.array_equal(arr, np.round(arr)):
            raise InvalidDTypeError(f"{path}: {Path(path).suffix} holds integers, got non-integer values")
        info = np.iinfo(dtype)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise InvalidInputError(
                f"{path}: values outside the {dtype} range [{info.min}, {info.max}] of {Path(path).suffix}"
            )
    n, d = arr.shape
    rec = 4 + d * dtype.itemsize
    buf = np.empty((n, rec), dtype=np.uint8)
    buf[:, :4] = np.frombuffer(np.array([d], dtype="<i4").tobytes(), dtype=np.uint8)
    buf[:, 4:] = np.ascontiguousarray(arr, dtype=dtype).view(np.uint8).reshape(n, d * dtype.itemsize)
    _atomic_write_bytes(Path(path), lambda fh: fh.write(buf.tobytes()))


def write_fvecs(path: PathLike, x: Any) -> None:
    """Write an (n, d) array as ``.fvecs`` (float32), atomically (temp file + rename)."""
    _write_vecs(path, x, _VEC_KINDS[".fvecs"])


def write_ivecs(path: PathLike, x: Any) -> None:
    """Write an (n, d) integer array as ``.ivecs`` (int32; values must fit), atomically."""
    _write_vecs(path, x, _VEC_KINDS[".ivecs"])


def write_bvecs(path: PathLike, x: Any) -> None:
    """Write an (n, d) array of integers in [0, 255] as ``.bvecs`` (uint8), atomically."""
    _write_vecs(path, x, _VEC_KINDS[".bvecs"])


def write_vecs(path: PathLike, x: Any) -> None:
    """Write ``.fvecs``/``.ivecs``/``.bvecs`` chosen by the suffix of ``path``."""
    suffix = Path(path).suffix.lower()
    if suffix not in _VEC_KINDS:
        raise InvalidInputError(f"{path}: unknown vector file suffix {suffix!r} (expected .fvecs/.ivecs/.bvecs)")
    _write_vecs(path, x, _VEC_KINDS[suffix])


# ---------------------------------------------------------------------------- HDF5
def _h5py() -> Any:
    try:
        import h5py
    except ImportError as exc:
        raise MissingDependencyError(
            "ann-benchmarks HDF5 files need h5py: pip install 'ruvector-hnsw[hdf5]'"
        ) from exc
    return h5py


def read_ann_hdf5(path: PathLike) -> dict[str, Any]:
    """Read an ann-benchmarks HDF5 file.

    Returns
    -------
    dict
        ``base`` (train, float32), ``queries`` (test, float32), ``neighbors`` (int64 or None),
        ``distances`` (float32 or None, converted to this package's convention: squared L2 for
        ``euclidean``; ``1 - cos`` for ``angular``; ``1 - dot`` for ``dot``), ``metric`` and the raw
        ``distance`` attribute.

    Raises
    ------
    MissingDependencyError
        If h5py is not installed.
    FileFormatError
        If the file is not HDF5, lacks ``train``/``test``, or has an unsupported ``distance``.
    """
    h5py = _h5py()
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(2, "No such file or directory", str(p))
    try:
        fh = h5py.File(p, "r")
    except OSError as exc:
        raise FileFormatError(f"{p}: not a readable HDF5 file ({exc})") from exc
    with fh:
        missing = [k for k in ("train", "test") if k not in fh]
        if missing:
            raise FileFormatError(f"{p}: ann-benchmarks HDF5 lacks dataset(s) {missing} (has {sorted(fh.keys())})")
        raw_distance = fh.attrs.get("distance", "euclidean")
        if isinstance(raw_distance, bytes):
            raw_distance = raw_distance.decode()
        distance = str(raw_distance).lower()
        if distance not in ANN_DISTANCES:
            raise FileFormatError(
                f"{p}: unsupported distance attribute {distance!r} (supported: {sorted(ANN_DISTANCES)})"
            )
        metric = ANN_DISTANCES[distance]
        try:
            base = np.asarray(fh["train"][()], dtype=np.float32)
            queries = np.asarray(fh["test"][()], dtype=np.float32)
            neighbors = np.asarray(fh["neighbors"][()], dtype=np.int64) if "neighbors" in fh else None
            distances = np.asarray(fh["distances"][()], dtype=np.float32) if "distances" in fh else None
        except (OSError, ValueError, TypeError) as exc:
            raise FileFormatError(f"{p}: cannot read datasets ({exc})") from exc
    if base.ndim != 2 or queries.ndim != 2 or base.shape[1] != queries.shape[1]:
        raise FileFormatError(f"{p}: train {base.shape} and test {queries.shape} are not (n, d) with equal d")
    if neighbors is not None and (neighbors.ndim != 2 or neighbors.shape[0] != queries.shape[0]):
        raise FileFormatError(f"{p}: neighbors shape {neighbors.shape} does not match test {queries.shape}")
    if distances is not None:
        if neighbors is None or distances.shape != neighbors.shape:
            raise FileFormatError(f"{p}: distances shape does not match neighbors")
        if metric == "l2":  # ann-benchmarks stores plain Euclidean distances; ours are squared
            distances = np.square(distances, dtype=np.float32)
        # "angular" is scipy's cosine distance 1 - cos, the same as ours; "dot" is kept as stored
    return {
        "base": base,
        "queries": queries,
        "neighbors": neighbors,
        "distances": distances,
        "metric": metric,
        "distance": distance,
    }


def write_ann_hdf5(
    path: PathLike,
    base: Any,
    queries: Any,
    neighbors: Any | None = None,
    distances: Any | None = None,
    *,
    metric: str = "l2",
) -> None:
    """Write an ann-benchmarks HDF5 file (``train``, ``test``, ``neighbors``, ``distances``).

    ``distances`` are taken in this package's convention and converted to ann-benchmarks'
    (the square root for ``l2``). The ``distance`` attribute is ``euclidean``/``angular``/``dot``.
    """
    h5py = _h5py()
    if metric not in _METRIC_TO_ANN:
        raise InvalidInputError(f"metric must be one of {sorted(_METRIC_TO_ANN)}, got {metric!r}")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    with h5py.File(tmp, "w") as fh:
        fh.attrs["distance"] = _METRIC_TO_ANN[metric]
        fh.attrs["point_type"] = "float"
        fh.create_dataset("train", data=np.asarray(base, dtype=np.float32))
        fh.create_dataset("test", data=np.asarray(queries, dtype=np.float32))
        if neighbors is not None:
            fh.create_dataset("neighbors", data=np.asarray(neighbors, dtype=np.int32))
        if distances is not None:
            dist = np.asarray(distances, dtype=np.float32)
            if metric == "l2":
                dist = np.sqrt(np.maximum(dist, 0.0))
            fh.create_dataset("distances", data=dist)
    os.replace(tmp, p)


# ---------------------------------------------------------------------------- npz
#: accepted key aliases in ``.npz`` files -> Dataset field
NPZ_KEYS: dict[str, tuple[str, ...]] = {
    "base": ("base", "train", "xb"),
    "queries": ("queries", "query", "test", "xq"),
    "base_labels": ("base_labels", "labels_base", "yb"),
    "query_labels": ("query_labels", "labels_query", "yq"),
    "neighbors": ("neighbors", "groundtruth", "gt"),
    "distances": ("distances",),
    "train_queries": ("train_queries", "learn"),
    "train_query_labels": ("train_query_labels",),
    "train_base_labels": ("train_base_labels",),
    "metric": ("metric",),
}


def read_npz(path: PathLike) -> dict[str, Any]:
    """Read a ``.npz`` dataset file into a dict of Dataset fields (see ``NPZ_KEYS`` for aliases).

    ``base`` is required; ``metric`` may be a 0-d string array. Pickled objects are refused.

    Raises
    ------
    FileFormatError
        If the file is not a valid ``.npz``, holds pickled objects, or lacks ``base``.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(2, "No such file or directory", str(p))
    try:
        with np.load(p, allow_pickle=False) as z:
            files = set(z.files)
            out: dict[str, Any] = {}
            for fld, aliases in NPZ_KEYS.items():
                for a in aliases:
                    if a in files:
                        out[fld] = z[a]
                        break
    except (zipfile.BadZipFile, ValueError, EOFError, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise FileFormatError(f"{p}: not a readable .npz file ({exc})") from exc
    if "base" not in out:
        raise FileFormatError(f"{p}: .npz lacks a 'base' array (keys: {sorted(files)})")
    if "metric" in out:
        out["metric"] = str(np.asarray(out["metric"]).item())
    return out


def write_npz(path: PathLike, **arrays: Any) -> None:
    """Write named arrays (e.g. ``base=..., queries=..., metric="cosine"``) to a ``.npz`` atomically."""
    p = Path(path)
    clean = {k: np.asarray(v) for k, v in arrays.items() if v is not None}
    _atomic_write_bytes(p, lambda fh: np.savez(fh, **clean))  # type: ignore[arg-type]
