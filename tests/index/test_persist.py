"""Save/load: one artifact, versioned, checksummed, atomic; corruption is a typed error."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from ruvector_hnsw import HNSWIndex
from ruvector_hnsw.errors import IndexCorruptedError
from ruvector_hnsw.index import hnsw as hnsw_module

DIM = 8


@pytest.fixture
def built() -> tuple[HNSWIndex, np.ndarray]:
    x = np.random.default_rng(0).standard_normal((600, DIM)).astype(np.float32)
    index = HNSWIndex(DIM, space="cosine", M=6, ef_construction=50, seed=9)
    index.add(x, ids=np.arange(600) * 3)
    index.delete([0, 3])
    index.ef = 77
    return index, x


def test_roundtrip_preserves_everything(built, tmp_path: Path) -> None:
    index, x = built
    path = tmp_path / "a.rvh"
    index.save(path)
    loaded = HNSWIndex.load(path)
    assert (loaded.dim, loaded.space, loaded.M, loaded.ef_construction, loaded.seed, loaded.ef) == (
        DIM, "cosine", 6, 50, 9, 77)
    assert len(loaded) == len(index) == 598
    np.testing.assert_array_equal(loaded.ids, index.ids)
    q = x[10:30]
    a = index.search(q, k=5)
    b = loaded.search(q, k=5)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    g1, g2 = index.graph(), loaded.graph()
    np.testing.assert_array_equal(g1.labels, g2.labels)
    np.testing.assert_array_equal(g1.deleted, g2.deleted)
    for layer in range(g1.num_layers):
        for part1, part2 in zip(g1.layer(layer), g2.layer(layer), strict=True):
            np.testing.assert_array_equal(part1, part2)
    # the loaded index keeps working
    loaded.add(x[:2], ids=[10_000, 10_001])
    assert len(loaded) == 600


def test_header_is_versioned_json(built, tmp_path: Path) -> None:
    index, _ = built
    path = tmp_path / "a.rvh"
    index.save(path)
    raw = path.read_bytes()
    (hlen,) = struct.unpack_from("<Q", raw, 8)
    header = json.loads(raw[16 : 16 + hlen])
    assert header["format"] == "ruvector-hnsw-index" and header["format_version"] == 1
    assert len(header["payload_sha256"]) == 64


@pytest.mark.parametrize("cut", [0, 5, 12, 40, 200, -1000, -1])
def test_truncated_file_is_rejected(built, tmp_path: Path, cut: int) -> None:
    index, _ = built
    path = tmp_path / "a.rvh"
    index.save(path)
    raw = path.read_bytes()
    path.write_bytes(raw[:cut])
    with pytest.raises(IndexCorruptedError):
        HNSWIndex.load(path)


@pytest.mark.parametrize("where", [3, 30, 0.3, 0.6, 0.95])
def test_flipped_byte_is_rejected(built, tmp_path: Path, where: float) -> None:
    index, _ = built
    path = tmp_path / "a.rvh"
    index.save(path)
    raw = bytearray(path.read_bytes())
    pos = where if isinstance(where, int) else int(where * len(raw))
    raw[pos] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(IndexCorruptedError):
        HNSWIndex.load(path)


def test_other_files_and_missing_file(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(IndexCorruptedError, match="magic"):
        HNSWIndex.load(junk)
    with pytest.raises(FileNotFoundError):
        HNSWIndex.load(tmp_path / "nope.rvh")


def test_newer_format_version_is_refused(built, tmp_path: Path, monkeypatch) -> None:
    index, _ = built
    monkeypatch.setattr(hnsw_module, "FORMAT_VERSION", 99)
    path = tmp_path / "new.rvh"
    index.save(path)
    monkeypatch.setattr(hnsw_module, "FORMAT_VERSION", 1)
    with pytest.raises(IndexCorruptedError, match="newer"):
        HNSWIndex.load(path)


def test_failed_save_leaves_previous_file_intact(built, tmp_path: Path, monkeypatch) -> None:
    index, x = built
    path = tmp_path / "a.rvh"
    index.save(path)
    before = path.read_bytes()
    index.add(x[:3], ids=[5000, 5001, 5002])

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(hnsw_module, "write_artifact", boom)
    with pytest.raises(OSError, match="disk full"):
        index.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.rvh"]  # no temp files left behind
    monkeypatch.undo()
    # and a failure while writing the artifact itself leaves the old one too
    from ruvector_hnsw.index import persist

    real_open = open

    class Exploding:
        def __init__(self, fh):
            self.fh = fh
            self.n = 0

        def write(self, b):
            self.n += 1
            if self.n > 3:
                raise OSError("device error")
            return self.fh.write(b)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.fh.close()

    def fake_open(p, mode="r", *a, **k):
        fh = real_open(p, mode, *a, **k)
        return Exploding(fh) if "w" in mode and str(p).endswith(".tmp") else fh

    monkeypatch.setattr(persist, "open", fake_open, raising=False)
    with pytest.raises(OSError, match="device error"):
        index.save(path)
    assert path.read_bytes() == before
    assert len(HNSWIndex.load(path)) == 598
