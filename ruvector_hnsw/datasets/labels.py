"""Users' own label and relevance files: labels per item or query, relevant-id lists per query.

* :func:`read_labels` -- ``.npy`` (1-D, integers or strings), ``.ivecs`` (one column), or a text
  file of one label per line (integers, or any strings).
* :func:`encode_labels` -- map string labels of several arrays to integers with one shared
  vocabulary, so that equal labels get equal integers across files.
* :func:`read_positives` -- ``.npy`` ``(nq, p)`` of ids padded with -1, or a text file of one
  whitespace- (or comma-) separated id list per line (a blank line: no relevant ids).

Integer labels ``< 0`` mean "unknown" (see :meth:`ruvector_hnsw.search.AttentionSearch.fit`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ruvector_hnsw.datasets import formats
from ruvector_hnsw.errors import FileFormatError, ShapeMismatchError

__all__ = ["check_lengths", "encode_labels", "read_labels", "read_positives"]

PathLike = str | os.PathLike[str]


def _existing(path: PathLike) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(2, "No such file or directory", str(p))
    return p


def _load_npy(p: Path) -> np.ndarray:
    try:
        return np.load(p, allow_pickle=False)
    except (ValueError, EOFError, OSError) as exc:
        raise FileFormatError(f"{p}: not a readable .npy file ({exc})") from exc


def _text_lines(p: Path) -> list[str]:
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise FileFormatError(f"{p}: not a UTF-8 text file ({exc.reason} at byte {exc.start})") from exc
    lines = text.splitlines()
    while lines and not lines[-1].strip():  # trailing blank lines
        lines.pop()
    return lines


def _integral(arr: np.ndarray, p: Path, what: str) -> np.ndarray:
    if arr.dtype.kind in "iu":
        return np.asarray(arr, dtype=np.int64)
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        return np.asarray(arr, dtype=np.int64)
    raise FileFormatError(f"{p}: {what} must be integers, got dtype {arr.dtype}")


def read_labels(path: PathLike) -> np.ndarray:
    """Read one label per item (or query) from ``path``.

    Parameters
    ----------
    path : str or PathLike
        ``.npy`` (1-D or one column; integer, integral float or string dtype), ``.ivecs`` (one
        column), or any other suffix: a UTF-8 text file with one label per line (surrounding
        spaces are stripped; trailing blank lines ignored).

    Returns
    -------
    numpy.ndarray, (n,)
        ``int64`` when every label is an integer, else a string array (see :func:`encode_labels`).

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    FileFormatError
        Unreadable file, a 2-D array with several columns, an empty file or an empty line.
    """
    p = _existing(path)
    suffix = p.suffix.lower()
    if suffix in (".npy", ".ivecs"):
        arr = _load_npy(p) if suffix == ".npy" else formats.read_vecs(p)
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1 or arr.shape[0] == 0:
            raise FileFormatError(f"{p}: labels must be a non-empty 1-D array, got shape {arr.shape}")
        if arr.dtype.kind in "US":
            return np.asarray(arr, dtype=str)
        return _integral(np.asarray(arr), p, "labels")
    if suffix == ".npz":
        raise FileFormatError(f"{p}: give labels as .npy or as a text file of one label per line, not .npz")
    lines = [ln.strip() for ln in _text_lines(p)]
    if not lines:
        raise FileFormatError(f"{p}: no labels (empty file)")
    empty = [i for i, ln in enumerate(lines) if not ln]
    if empty:
        raise FileFormatError(f"{p}: line {empty[0] + 1} is empty (one label per line expected)")
    try:
        return np.array([int(ln) for ln in lines], dtype=np.int64)
    except ValueError:
        return np.array(lines, dtype=str)


def encode_labels(*arrays: np.ndarray) -> tuple[list[np.ndarray], list[str] | None]:
    """Integer labels for several label arrays, string labels mapped through one vocabulary.

    Parameters
    ----------
    *arrays : numpy.ndarray
        Label arrays (e.g. item labels and query labels), integer or string.

    Returns
    -------
    encoded : list of numpy.ndarray
        ``int64`` arrays in the order given. Integer inputs come back unchanged (negative =
        unknown). If any input holds strings, every input is read as strings (``3`` and ``"3"``
        are the same label) and each label is replaced by its position in the sorted vocabulary.
    vocabulary : list of str or None
        ``vocabulary[i]`` is the label mapped to ``i``; None when every input was integer.
    """
    arrs = [np.asarray(a) for a in arrays]
    if all(a.dtype.kind in "iu" for a in arrs):
        return [a.astype(np.int64) for a in arrs], None
    strs = [a.astype(str) for a in arrs]
    vocab = np.unique(np.concatenate([s.ravel() for s in strs])) if strs else np.zeros(0, dtype=str)
    return [np.searchsorted(vocab, s).astype(np.int64) for s in strs], [str(v) for v in vocab.tolist()]


def read_positives(path: PathLike) -> np.ndarray:
    """Read the relevant ids of every query.

    Parameters
    ----------
    path : str or PathLike
        ``.npy`` of shape ``(nq, p)`` (integer ids, ``-1`` padding; a 1-D array is one id per
        query), or any other suffix: a text file with one line per query holding its relevant
        ids separated by spaces, tabs or commas (a blank line: no relevant id).

    Returns
    -------
    numpy.ndarray, (nq, p) int64
        Ids, ``-1`` padded on the right.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    FileFormatError
        Unreadable file, non-integer or negative ids (other than -1 padding in ``.npy``), no query.
    """
    p = _existing(path)
    if p.suffix.lower() == ".npy":
        arr = _load_npy(p)
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim != 2 or arr.shape[0] == 0:
            raise FileFormatError(f"{p}: positives must be a non-empty (n_queries, p) array, got shape {arr.shape}")
        out = _integral(arr, p, "positive ids")
        if (out < -1).any():
            raise FileFormatError(f"{p}: ids must be >= 0 (-1 pads), found {int(out.min())}")
        return out
    lines = _text_lines(p)
    if not lines:
        raise FileFormatError(f"{p}: no queries (empty file)")
    rows: list[list[int]] = []
    for i, line in enumerate(lines):
        tokens = line.replace(",", " ").split()
        try:
            ids = [int(t) for t in tokens]
        except ValueError:
            bad = next(t for t in tokens if not t.lstrip("+-").isdigit())
            raise FileFormatError(f"{p}: line {i + 1}: {bad!r} is not an integer id") from None
        if any(v < 0 for v in ids):
            raise FileFormatError(f"{p}: line {i + 1}: ids must be >= 0, found {min(ids)}")
        rows.append(ids)
    width = max(1, max(len(r) for r in rows))
    out = np.full((len(rows), width), -1, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def check_lengths(n_expected: int, arr: np.ndarray, what: str, against: str) -> None:
    """Raise :class:`ShapeMismatchError` unless ``arr`` has ``n_expected`` rows (``what`` vs ``against``)."""
    if arr.shape[0] != n_expected:
        raise ShapeMismatchError(f"{what} has {arr.shape[0]} rows, {against} has {n_expected}")
