"""LatentIndex: FAISS kNN with HNSWIndex's distance conventions."""

from __future__ import annotations

import numpy as np
import pytest

from ruvector_hnsw import LatentIndex
from ruvector_hnsw.errors import ConfigError, DimensionMismatchError, IdExistsError, InvalidInputError


def _brute(x: np.ndarray, q: np.ndarray, metric: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    if metric == "l2":
        d = ((q[:, None, :] - x[None]) ** 2).sum(-1)
    elif metric == "ip":
        d = 1.0 - q @ x.T
    else:
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
        qn = q / np.linalg.norm(q, axis=1, keepdims=True)
        d = 1.0 - qn @ xn.T
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(d, order, 1)


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_flat_equals_brute_force(metric: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 10)).astype(np.float32)
    q = rng.standard_normal((20, 10)).astype(np.float32)
    lat = LatentIndex(10, metric=metric)
    ids = lat.add(x, ids=np.arange(400) + 1000)
    assert ids[0] == 1000 and len(lat) == 400
    got_ids, got_d = lat.search(q, 5)
    ref_ids, ref_d = _brute(x, q, metric, 5)
    np.testing.assert_array_equal(got_ids, ref_ids + 1000)
    np.testing.assert_allclose(got_d, ref_d, rtol=1e-4, atol=1e-4)
    assert got_ids.dtype == np.int64 and got_d.dtype == np.float32


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_kinds_find_most_neighbours(kind: str) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3000, 16)).astype(np.float32)
    q = x[:50] + 0.01 * rng.standard_normal((50, 16)).astype(np.float32)
    lat = LatentIndex(16, metric="l2", kind=kind)
    lat.add(x)
    ids, _ = lat.search(q, 1)
    assert (ids[:, 0] == np.arange(50)).mean() >= 0.9


def test_padding_and_errors() -> None:
    lat = LatentIndex(4)
    ids, d = lat.search(np.ones(4), 3)
    assert (ids == -1).all() and np.isinf(d).all()
    lat.add(np.eye(4))
    ids, d = lat.search(np.ones((1, 4)), 6)
    assert (ids[0, 4:] == -1).all() and np.isinf(d[0, 4:]).all() and np.isfinite(d[0, :4]).all()
    with pytest.raises(IdExistsError):
        lat.add(np.eye(4)[:1], ids=[2])
    assert len(lat) == 4
    with pytest.raises(DimensionMismatchError):
        lat.search(np.ones(5), 1)
    with pytest.raises(InvalidInputError):
        lat.search(np.ones(4), 0)
    with pytest.raises(ConfigError):
        LatentIndex(4, metric="hamming")
    with pytest.raises(ConfigError):
        LatentIndex(4, kind="pq")


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_scalar_quantized_storage_is_smaller_and_finds_the_neighbours(kind: str) -> None:
    import faiss

    rng = np.random.default_rng(4)
    x = rng.standard_normal((3000, 64)).astype(np.float32)
    q = rng.standard_normal((40, 64)).astype(np.float32)
    exact = LatentIndex(64, "l2", "flat")
    exact.add(x)
    truth, _ = exact.search(q, 10)
    mem = {}
    for dt in ("float32", "float16", "int8"):
        li = LatentIndex(64, "l2", kind, code_dtype=dt, nprobe=64)
        li.add(x)
        inner = faiss.downcast_index(li._index.index if kind != "ivf" else li._index)
        if dt != "float32":
            sq = inner.storage if kind == "hnsw" else inner
            sq = faiss.downcast_index(sq)
            want = faiss.ScalarQuantizer.QT_fp16 if dt == "float16" else faiss.ScalarQuantizer.QT_8bit
            assert sq.sq.qtype == want and sq.sq.code_size == (128 if dt == "float16" else 64)
        ids, _ = li.search(q, 10)
        recall = np.mean([np.intersect1d(a, b).size / 10 for a, b in zip(ids, truth, strict=True)])
        assert recall >= 0.9, (kind, dt, recall)
        mem[dt] = li.memory_bytes()
    assert mem["float32"] > mem["float16"] > mem["int8"] > 0
    # ids (8 bytes per vector) and, for ivf, the coarse centroids are the same for every storage;
    # so are the links of a graph
    assert mem["float32"] / mem["int8"] >= {"flat": 3.5, "ivf": 3.0, "hnsw": 1.5}[kind]
    with pytest.raises(ConfigError, match="code_dtype"):
        LatentIndex(8, code_dtype="int4")
