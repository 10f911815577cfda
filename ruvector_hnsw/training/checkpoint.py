"""Atomic, versioned, validated checkpoints: a ``.npz`` of arrays plus a ``.json`` manifest.

A checkpoint stores a *state tree*: nested dicts (str keys) / lists of JSON scalars
(``None``, bool, int, float incl. ``inf``/``nan``, str) and numpy arrays of bool,
integer or float dtype. Arrays go to ``<stem>.npz`` (no pickles) as ``a0, a1, ...``; the tree itself, with each array
replaced by ``{"__ndarray__": key}``, goes to ``<stem>.json`` together with the format
name, version, ``kind`` and the SHA-256 of the npz and each array's shape and dtype.

Writing is atomic per file (temporary file in the same directory, fsync, ``os.replace``);
the npz is replaced first and the json last, so the json always names the npz it was
written with — a crash in between is detected on load as a checksum mismatch
(:class:`~ruvector_hnsw.errors.IndexCorruptedError`) instead of silently mixing two
checkpoints.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ruvector_hnsw.errors import FileFormatError, IndexCorruptedError, InvalidInputError

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "checkpoint_paths", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = "ruvector_hnsw.training.checkpoint"
CHECKPOINT_VERSION = 1
_ARRAY_TAG = "__ndarray__"
_FLOAT_TAG = "__float__"


def checkpoint_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(npz_path, json_path)`` for a checkpoint stem; a ``.npz``/``.json`` suffix is stripped."""
    p = Path(path)
    if p.suffix in (".npz", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".npz"), p.with_name(p.name + ".json")


def _flatten(obj: Any, path: str, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biuf":
            raise InvalidInputError(f"checkpoint: array at {path or '/'} has unsupported dtype {obj.dtype}")
        key = f"a{len(arrays)}"  # npz member names stay simple whatever the tree keys are
        arrays[key] = np.ascontiguousarray(obj)
        return {_ARRAY_TAG: key}
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str) or k in (_ARRAY_TAG, _FLOAT_TAG):
                raise InvalidInputError(f"checkpoint: key {k!r} at {path or '/'} must be a str (not a reserved tag)")
            out[k] = _flatten(v, f"{path}/{k}" if path else k, arrays)
        return out
    if isinstance(obj, (list, tuple)):
        return [_flatten(v, f"{path}/{i}" if path else str(i), arrays) for i, v in enumerate(obj)]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise InvalidInputError(f"checkpoint: value at {path or '/'} of type {type(obj).__name__} is not serialisable")


def _unflatten(obj: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {_ARRAY_TAG}:
            key = obj[_ARRAY_TAG]
            if key not in arrays:
                raise IndexCorruptedError(f"checkpoint: array {key!r} missing from the npz")
            return arrays[key]
        return {k: _unflatten(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unflatten(v, arrays) for v in obj]
    return obj


def _atomic_write(target: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # persist the rename (POSIX); harmless elsewhere
        dfd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _json_safe(obj: Any) -> Any:
    """Replace non-finite floats by tagged strings so the json stays standard."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return {_FLOAT_TAG: repr(obj)}
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def _json_restore(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {_FLOAT_TAG}:
            return float(obj[_FLOAT_TAG])
        return {k: _json_restore(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_restore(v) for v in obj]
    return obj


def save_checkpoint(path: str | os.PathLike[str], state: Mapping[str, Any], *, kind: str) -> tuple[Path, Path]:
    """Write ``state`` atomically as ``<stem>.npz`` + ``<stem>.json``.

    Parameters
    ----------
    path : str or PathLike
        Checkpoint stem (``.npz``/``.json`` suffix optional). The directory must exist.
    state : Mapping[str, Any]
        State tree (see module docstring).
    kind : str
        What the checkpoint holds (e.g. ``"trainer_last"``, ``"trainer_best"``); checked on load.

    Returns
    -------
    (npz_path, json_path)
    """
    npz_path, json_path = checkpoint_paths(path)
    if not npz_path.parent.is_dir():
        raise FileFormatError(f"checkpoint: directory {npz_path.parent} does not exist")
    arrays: dict[str, np.ndarray] = {}
    tree = _flatten(dict(state), "", arrays)
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **arrays)
    blob = buf.getvalue()
    manifest = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "kind": kind,
        "npz_file": npz_path.name,
        "npz_sha256": hashlib.sha256(blob).hexdigest(),
        "npz_bytes": len(blob),
        "arrays": {k: {"shape": list(a.shape), "dtype": a.dtype.str} for k, a in arrays.items()},
        "state": _json_safe(tree),
    }
    text = json.dumps(manifest, indent=1, sort_keys=True, allow_nan=False).encode()
    _atomic_write(npz_path, blob)
    _atomic_write(json_path, text)
    return npz_path, json_path


def load_checkpoint(path: str | os.PathLike[str], *, kind: str | None = None) -> dict[str, Any]:
    """Read and validate a checkpoint written by :func:`save_checkpoint`; returns the state tree.

    Raises
    ------
    FileNotFoundError
        Either file is missing.
    FileFormatError
        The json is not a checkpoint manifest, has an unknown format/version, or another ``kind``.
    IndexCorruptedError
        The npz does not match the manifest (checksum, size, array names, shapes, dtypes).
    """
    npz_path, json_path = checkpoint_paths(path)
    raw = json_path.read_bytes()
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FileFormatError(f"checkpoint: {json_path} is not valid json ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != CHECKPOINT_FORMAT:
        raise FileFormatError(f"checkpoint: {json_path} is not a {CHECKPOINT_FORMAT} manifest")
    version = manifest.get("version")
    if not isinstance(version, int) or version > CHECKPOINT_VERSION or version < 1:
        raise FileFormatError(f"checkpoint: unsupported version {version!r} (this code reads <= {CHECKPOINT_VERSION})")
    if kind is not None and manifest.get("kind") != kind:
        raise FileFormatError(f"checkpoint: holds {manifest.get('kind')!r}, expected {kind!r}")
    blob = npz_path.read_bytes()
    if len(blob) != manifest.get("npz_bytes") or hashlib.sha256(blob).hexdigest() != manifest.get("npz_sha256"):
        raise IndexCorruptedError(f"checkpoint: {npz_path} does not match its manifest (truncated or replaced)")
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:
        raise IndexCorruptedError(f"checkpoint: cannot read {npz_path} ({exc})") from exc
    spec = manifest.get("arrays", {})
    if set(spec) != set(arrays):
        raise IndexCorruptedError("checkpoint: array names differ from the manifest")
    for k, a in arrays.items():
        if list(a.shape) != spec[k]["shape"] or a.dtype.str != spec[k]["dtype"]:
            raise IndexCorruptedError(
                f"checkpoint: array {k!r} has shape/dtype {a.shape}/{a.dtype.str}, manifest says {spec[k]}"
            )
    state = _unflatten(_json_restore(manifest.get("state", {})), arrays)
    if not isinstance(state, dict):
        raise FileFormatError("checkpoint: state is not a mapping")
    return state
