"""Single-file, versioned, checksummed artifacts written atomically.

Layout of a file::

    MAGIC (8 bytes) | header length (uint64 little endian) | header (UTF-8 JSON) | payload

The header records the format name and version, the payload length and its SHA-256.
:func:`write_artifact` writes to a temporary file beside the target, fsyncs and renames it
over the target, so a save that fails midway leaves the previous file intact.
:func:`read_artifact` rejects anything truncated, altered or of another format with
:class:`~ruvector_hnsw.errors.IndexCorruptedError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ruvector_hnsw.errors import IndexCorruptedError

__all__ = ["atomic_path", "read_artifact", "write_artifact"]

_LEN = struct.Struct("<Q")
_MAX_HEADER = 1 << 20
_CHUNK = 1 << 22


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``.

    On any exception the temporary file is removed and ``path`` is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def write_artifact(path: str | os.PathLike[str], magic: bytes, header: dict[str, Any],
                   payload_file: Path) -> None:
    """Write ``magic + header + payload_file`` atomically to ``path``."""
    meta = dict(header)
    meta["payload_bytes"] = payload_file.stat().st_size
    meta["payload_sha256"] = _sha256_file(payload_file)
    blob = json.dumps(meta, sort_keys=True).encode()
    with atomic_path(path) as tmp, open(tmp, "wb") as out:
        out.write(magic)
        out.write(_LEN.pack(len(blob)))
        out.write(blob)
        with open(payload_file, "rb") as src:
            for chunk in iter(lambda: src.read(_CHUNK), b""):
                out.write(chunk)


def read_artifact(path: str | os.PathLike[str], magic: bytes, payload_file: Path) -> dict[str, Any]:
    """Validate ``path`` and copy its payload to ``payload_file``; return the header.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    IndexCorruptedError
        Wrong magic, unreadable header, truncated or extended payload, checksum mismatch.
    """
    src_path = Path(path)
    size = src_path.stat().st_size  # FileNotFoundError for a missing file
    with open(src_path, "rb") as fh:
        head = fh.read(len(magic) + _LEN.size)
        if len(head) < len(magic) + _LEN.size or head[: len(magic)] != magic:
            raise IndexCorruptedError(f"{src_path}: not a ruvector-hnsw artifact of this kind (bad magic)")
        (hlen,) = _LEN.unpack(head[len(magic):])
        if hlen > _MAX_HEADER or len(magic) + _LEN.size + hlen > size:
            raise IndexCorruptedError(f"{src_path}: truncated or corrupted header")
        try:
            header = json.loads(fh.read(hlen).decode())
            expected = int(header["payload_bytes"])
            digest = str(header["payload_sha256"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise IndexCorruptedError(f"{src_path}: unreadable header ({exc})") from exc
        actual = size - (len(magic) + _LEN.size + hlen)
        if actual != expected:
            raise IndexCorruptedError(
                f"{src_path}: payload is {actual} bytes, header says {expected} (truncated or extended file)")
        h = hashlib.sha256()
        with open(payload_file, "wb") as out:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                h.update(chunk)
                out.write(chunk)
    if h.hexdigest() != digest:
        raise IndexCorruptedError(f"{src_path}: checksum mismatch, the file is corrupted")
    return dict(header)
