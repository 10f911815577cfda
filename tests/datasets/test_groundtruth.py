"""Exact ground truth (FAISS, blockwise) against a plain numpy brute force."""

from __future__ import annotations

import numpy as np
import pytest

from ruvector_hnsw.datasets import exact_knn
from ruvector_hnsw.errors import ConfigError, DimensionMismatchError, NonFiniteError


def _numpy_knn(base: np.ndarray, q: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    b = base.astype(np.float64)
    qq = q.astype(np.float64)
    if metric == "l2":
        d = ((qq[:, None, :] - b[None]) ** 2).sum(-1)
    elif metric == "ip":
        d = 1.0 - qq @ b.T
    else:
        d = 1.0 - (qq / np.linalg.norm(qq, axis=1, keepdims=True)) @ (b / np.linalg.norm(b, axis=1, keepdims=True)).T
    ids = np.argsort(d, axis=1, kind="stable")[:, :k]
    return ids, np.take_along_axis(d, ids, axis=1)


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
@pytest.mark.parametrize(("block_size", "query_block"), [(None, 4096), (7, 4), (64, 25)])
def test_matches_numpy(metric, block_size, query_block):
    rng = np.random.default_rng(3)
    base = rng.standard_normal((300, 12)).astype(np.float32)
    q = rng.standard_normal((25, 12)).astype(np.float32)
    ids, dist = exact_knn(base, q, 10, metric, block_size=block_size, query_block=query_block)
    ref_ids, ref_d = _numpy_knn(base, q, 10, metric)
    assert ids.dtype == np.int64 and dist.dtype == np.float32 and ids.shape == (25, 10)
    np.testing.assert_allclose(dist, ref_d, rtol=1e-4, atol=1e-4)
    # ids agree except where two true distances are within float32 noise
    same = ids == ref_ids
    gaps = np.abs(np.diff(ref_d, axis=1)).min(axis=1)
    assert same[gaps > 1e-4].all()


def test_k_larger_than_base_pads():
    base = np.eye(3, dtype=np.float32)
    ids, dist = exact_knn(base, base[:1], 5, "l2", block_size=2)
    assert ids[0, 0] == 0 and dist[0, 0] == 0
    np.testing.assert_array_equal(ids[0, 3:], [-1, -1])
    assert np.isinf(dist[0, 3:]).all()


def test_memmap_base(tmp_path):
    from ruvector_hnsw.datasets import read_fvecs, write_fvecs

    rng = np.random.default_rng(4)
    base = rng.standard_normal((200, 6)).astype(np.float32)
    write_fvecs(tmp_path / "b.fvecs", base)
    mm = read_fvecs(tmp_path / "b.fvecs")  # a strided memory map
    ids, _ = exact_knn(mm, base[:5], 3, "l2", block_size=50)
    np.testing.assert_array_equal(ids[:, 0], np.arange(5))


def test_bad_input():
    base = np.ones((4, 3), dtype=np.float32)
    with pytest.raises(ConfigError):
        exact_knn(base, base, 0)
    with pytest.raises(ConfigError):
        exact_knn(base, base, 1, "hamming")
    with pytest.raises(DimensionMismatchError):
        exact_knn(base, np.ones((2, 4)), 1)
    bad = base.copy()
    bad[1, 1] = np.nan
    with pytest.raises(NonFiniteError):
        exact_knn(bad, base, 1)
