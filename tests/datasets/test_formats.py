"""TEXMEX / HDF5 / npz readers and writers: round trips and rejection of bad files."""

from __future__ import annotations

import numpy as np
import pytest

from ruvector_hnsw.datasets import formats
from ruvector_hnsw.errors import FileFormatError, InvalidDTypeError, InvalidInputError


def _plain_fvecs(x: np.ndarray) -> bytes:
    """Reference encoder written independently of the package: per row, int32 d then the values."""
    out = b""
    for row in x:
        out += np.int32(len(row)).tobytes() + row.astype("<f4").tobytes()
    return out


@pytest.mark.parametrize("mmap", [True, False])
def test_fvecs_round_trip(tmp_path, mmap):
    x = np.random.default_rng(0).standard_normal((37, 9)).astype(np.float32)
    p = tmp_path / "a.fvecs"
    formats.write_fvecs(p, x)
    assert p.read_bytes() == _plain_fvecs(x)
    back = formats.read_fvecs(p, mmap=mmap)
    assert back.dtype == np.float32 and back.shape == x.shape
    np.testing.assert_array_equal(back, x)


def test_ivecs_bvecs_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    xi = rng.integers(-(2**31), 2**31 - 1, size=(11, 5), dtype=np.int64)
    formats.write_ivecs(tmp_path / "a.ivecs", xi)
    back = formats.read_ivecs(tmp_path / "a.ivecs")
    assert back.dtype == np.int32
    np.testing.assert_array_equal(back, xi)
    xb = rng.integers(0, 256, size=(13, 7))
    formats.write_bvecs(tmp_path / "a.bvecs", xb)
    back_b = formats.read_bvecs(tmp_path / "a.bvecs", mmap=False)
    assert back_b.dtype == np.uint8
    np.testing.assert_array_equal(back_b, xb)
    # record layout: 4-byte header + d bytes
    assert (tmp_path / "a.bvecs").stat().st_size == 13 * (4 + 7)


def test_read_vecs_slicing(tmp_path):
    x = np.arange(60, dtype=np.float32).reshape(10, 6)
    formats.write_vecs(tmp_path / "s.fvecs", x)
    np.testing.assert_array_equal(formats.read_fvecs(tmp_path / "s.fvecs", start=3, count=4), x[3:7])
    np.testing.assert_array_equal(
        formats.read_fvecs(tmp_path / "s.fvecs", start=8, count=10, mmap=False), x[8:]
    )


@pytest.mark.parametrize("cut", [1, 3, 5, 41])
def test_truncated_file_rejected(tmp_path, cut):
    x = np.ones((4, 10), dtype=np.float32)
    p = tmp_path / "t.fvecs"
    formats.write_fvecs(p, x)
    data = p.read_bytes()
    p.write_bytes(data[:-cut])
    with pytest.raises(FileFormatError, match=r"t\.fvecs.*truncated"):
        formats.read_fvecs(p)


def test_empty_and_tiny_files_rejected(tmp_path):
    p = tmp_path / "e.fvecs"
    p.write_bytes(b"")
    with pytest.raises(FileFormatError, match="empty"):
        formats.read_fvecs(p)
    p.write_bytes(b"\x01\x00")
    with pytest.raises(FileFormatError, match="truncated"):
        formats.read_fvecs(p)


def test_bad_header_rejected(tmp_path):
    p = tmp_path / "h.fvecs"
    p.write_bytes(np.int32(-3).tobytes() + b"\x00" * 12)
    with pytest.raises(FileFormatError, match="invalid dimension header -3"):
        formats.read_fvecs(p)


def test_inconsistent_record_header_rejected(tmp_path):
    x = np.ones((5, 4), dtype=np.float32)
    p = tmp_path / "c.fvecs"
    formats.write_fvecs(p, x)
    raw = bytearray(p.read_bytes())
    raw[3 * 20 : 3 * 20 + 4] = np.int32(7).tobytes()  # record 3's header
    p.write_bytes(bytes(raw))
    with pytest.raises(FileFormatError, match="record 3 has dimension header 7"):
        formats.read_fvecs(p)


def test_missing_file_is_oserror(tmp_path):
    with pytest.raises(FileNotFoundError):
        formats.read_fvecs(tmp_path / "nope.fvecs")


def test_writer_validation(tmp_path):
    with pytest.raises(InvalidInputError):
        formats.write_fvecs(tmp_path / "x.fvecs", np.ones(5))
    with pytest.raises(InvalidInputError, match="range"):
        formats.write_bvecs(tmp_path / "x.bvecs", np.array([[0, 256]]))
    with pytest.raises(InvalidDTypeError):
        formats.write_ivecs(tmp_path / "x.ivecs", np.array([[0.5, 1.0]]))
    with pytest.raises(InvalidDTypeError):
        formats.write_fvecs(tmp_path / "x.fvecs", np.array([[1 + 2j]]))
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_hdf5_round_trip(tmp_path):
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(2)
    base = rng.standard_normal((50, 8)).astype(np.float32)
    q = rng.standard_normal((6, 8)).astype(np.float32)
    d2 = ((q[:, None, :] - base[None]) ** 2).sum(-1)
    nb = np.argsort(d2, axis=1)[:, :5]
    dist = np.take_along_axis(d2, nb, axis=1).astype(np.float32)
    p = tmp_path / "ann.hdf5"
    formats.write_ann_hdf5(p, base, q, nb, dist, metric="l2")
    with h5py.File(p, "r") as fh:  # ann-benchmarks stores plain (non-squared) euclidean
        assert fh.attrs["distance"] == "euclidean"
        np.testing.assert_allclose(fh["distances"][()], np.sqrt(dist), rtol=1e-6)
    out = formats.read_ann_hdf5(p)
    assert out["metric"] == "l2"
    np.testing.assert_array_equal(out["base"], base)
    np.testing.assert_array_equal(out["queries"], q)
    np.testing.assert_array_equal(out["neighbors"], nb)
    np.testing.assert_allclose(out["distances"], dist, rtol=1e-5)


def test_hdf5_written_by_h5py_directly(tmp_path):
    h5py = pytest.importorskip("h5py")
    p = tmp_path / "glove.hdf5"
    base = np.eye(4, dtype=np.float32)
    with h5py.File(p, "w") as fh:
        fh.attrs["distance"] = "angular"
        fh["train"] = base
        fh["test"] = base[:2]
    out = formats.read_ann_hdf5(p)
    assert out["metric"] == "cosine" and out["neighbors"] is None


def test_hdf5_bad_files(tmp_path):
    h5py = pytest.importorskip("h5py")
    p = tmp_path / "junk.hdf5"
    p.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(FileFormatError, match=r"junk\.hdf5.*not a readable HDF5"):
        formats.read_ann_hdf5(p)
    p2 = tmp_path / "nokeys.hdf5"
    with h5py.File(p2, "w") as fh:
        fh["train"] = np.zeros((3, 2), dtype=np.float32)
    with pytest.raises(FileFormatError, match="test"):
        formats.read_ann_hdf5(p2)
    p3 = tmp_path / "jac.hdf5"
    with h5py.File(p3, "w") as fh:
        fh.attrs["distance"] = "jaccard"
        fh["train"] = np.zeros((3, 2), dtype=np.float32)
        fh["test"] = np.zeros((1, 2), dtype=np.float32)
    with pytest.raises(FileFormatError, match="jaccard"):
        formats.read_ann_hdf5(p3)


def test_npz_round_trip_and_bad(tmp_path):
    base = np.arange(12, dtype=np.float32).reshape(4, 3)
    formats.write_npz(tmp_path / "d.npz", base=base, queries=base[:1], metric=np.array("ip"), skip=None)
    out = formats.read_npz(tmp_path / "d.npz")
    np.testing.assert_array_equal(out["base"], base)
    assert out["metric"] == "ip"
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(FileFormatError, match=r"bad\.npz"):
        formats.read_npz(tmp_path / "bad.npz")
    np.savez(tmp_path / "nobase.npz", other=base)
    with pytest.raises(FileFormatError, match="lacks a 'base'"):
        formats.read_npz(tmp_path / "nobase.npz")


def test_hdf5_without_h5py_is_missing_dependency(tmp_path, monkeypatch):
    import sys

    from ruvector_hnsw.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "h5py", None)  # makes `import h5py` raise ImportError
    with pytest.raises(MissingDependencyError, match="h5py"):
        formats.read_ann_hdf5(tmp_path / "x.hdf5")
    with pytest.raises(ImportError):  # also an ImportError for callers catching that
        formats.write_ann_hdf5(tmp_path / "x.hdf5", np.ones((2, 2)), np.ones((1, 2)))
