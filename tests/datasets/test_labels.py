"""Users' label and positive-id files."""

from __future__ import annotations

import numpy as np
import pytest

from ruvector_hnsw.datasets import encode_labels, read_labels, read_positives, write_ivecs
from ruvector_hnsw.errors import FileFormatError


def test_read_labels_npy_ivecs_and_text(tmp_path):
    np.save(tmp_path / "a.npy", np.array([3, 1, -1, 3], dtype=np.int32))
    got = read_labels(tmp_path / "a.npy")
    assert got.dtype == np.int64 and got.tolist() == [3, 1, -1, 3]
    np.save(tmp_path / "col.npy", np.array([[2.0], [5.0]]))  # one column of integral floats
    assert read_labels(tmp_path / "col.npy").tolist() == [2, 5]
    write_ivecs(tmp_path / "l.ivecs", np.array([[7], [8]]))
    assert read_labels(tmp_path / "l.ivecs").tolist() == [7, 8]
    (tmp_path / "ints.txt").write_text("4\n 2 \n-1\n\n\n")
    got = read_labels(tmp_path / "ints.txt")
    assert got.dtype == np.int64 and got.tolist() == [4, 2, -1]
    (tmp_path / "s.txt").write_text("cat\ndog\ncat\n3\n")
    got = read_labels(tmp_path / "s.txt")
    assert got.dtype.kind == "U" and got.tolist() == ["cat", "dog", "cat", "3"]
    np.save(tmp_path / "s.npy", np.array(["x", "y"]))
    assert read_labels(tmp_path / "s.npy").tolist() == ["x", "y"]


def test_read_labels_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_labels(tmp_path / "none.txt")
    (tmp_path / "gap.txt").write_text("1\n\n2\n")
    with pytest.raises(FileFormatError, match="line 2 is empty"):
        read_labels(tmp_path / "gap.txt")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(FileFormatError, match="empty"):
        read_labels(tmp_path / "empty.txt")
    np.save(tmp_path / "wide.npy", np.zeros((3, 2), dtype=np.int64))
    with pytest.raises(FileFormatError, match="1-D"):
        read_labels(tmp_path / "wide.npy")
    np.save(tmp_path / "frac.npy", np.array([0.5, 1.0]))
    with pytest.raises(FileFormatError, match="integers"):
        read_labels(tmp_path / "frac.npy")
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(FileFormatError, match=r"bad\.npy"):
        read_labels(tmp_path / "bad.npy")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(FileFormatError, match="UTF-8"):
        read_labels(tmp_path / "bin.txt")


def test_encode_labels_one_vocabulary():
    items = np.array(["dog", "cat", "dog", "3"])
    queries = np.array([3, 7])  # integers meet strings: read as "3", "7"
    (a, b), vocab = encode_labels(items, queries)
    assert vocab == ["3", "7", "cat", "dog"]
    assert [vocab[i] for i in a] == ["dog", "cat", "dog", "3"]
    assert [vocab[i] for i in b] == ["3", "7"]
    assert a[0] == a[2] and b[0] == a[3] and a.dtype == np.int64
    (c, d), vocab = encode_labels(np.array([5, -1]), np.array([5]))
    assert vocab is None and c.tolist() == [5, -1] and d.tolist() == [5]


def test_read_positives_text_and_npy(tmp_path):
    (tmp_path / "p.txt").write_text("1 2 3\n\n7,8\t9 10\n")
    got = read_positives(tmp_path / "p.txt")
    assert got.dtype == np.int64
    assert got.tolist() == [[1, 2, 3, -1], [-1, -1, -1, -1], [7, 8, 9, 10]]
    np.save(tmp_path / "p.npy", np.array([[4, -1], [5, 6]], dtype=np.int32))
    assert read_positives(tmp_path / "p.npy").tolist() == [[4, -1], [5, 6]]
    np.save(tmp_path / "p1.npy", np.array([4, 5]))
    assert read_positives(tmp_path / "p1.npy").tolist() == [[4], [5]]


def test_read_positives_errors(tmp_path):
    (tmp_path / "bad.txt").write_text("1 2\n3 x\n")
    with pytest.raises(FileFormatError, match="line 2: 'x'"):
        read_positives(tmp_path / "bad.txt")
    (tmp_path / "neg.txt").write_text("1 -1\n")
    with pytest.raises(FileFormatError, match="line 1"):
        read_positives(tmp_path / "neg.txt")
    np.save(tmp_path / "neg.npy", np.array([[1, -2]]))
    with pytest.raises(FileFormatError, match="-2"):
        read_positives(tmp_path / "neg.npy")
    (tmp_path / "e.txt").write_text("")
    with pytest.raises(FileFormatError, match="empty"):
        read_positives(tmp_path / "e.txt")
    with pytest.raises(FileNotFoundError):
        read_positives(tmp_path / "none.npy")
