"""Loading datasets from files: TEXMEX sibling convention, .npy, .npz, .hdf5, and load()."""

from __future__ import annotations

import numpy as np
import pytest

from ruvector_hnsw.datasets import (
    available,
    load,
    make_clusters,
    register,
    save_npz,
    write_ann_hdf5,
    write_bvecs,
    write_fvecs,
    write_ivecs,
)
from ruvector_hnsw.errors import ConfigError, FileFormatError


def _numpy_l2_knn(base: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    d = ((q[:, None, :].astype(np.float64) - base[None]) ** 2).sum(-1)
    return np.argsort(d, axis=1, kind="stable")[:, :k]


@pytest.fixture
def texmex(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.standard_normal((120, 8)).astype(np.float32)
    q = rng.standard_normal((9, 8)).astype(np.float32)
    learn = rng.standard_normal((15, 8)).astype(np.float32)
    gt = _numpy_l2_knn(base, q, 6)
    write_fvecs(tmp_path / "toy_base.fvecs", base)
    write_fvecs(tmp_path / "toy_query.fvecs", q)
    write_fvecs(tmp_path / "toy_learn.fvecs", learn)
    write_ivecs(tmp_path / "toy_groundtruth.ivecs", gt)
    return tmp_path, base, q, learn, gt


def test_texmex_siblings(texmex):
    d, base, q, learn, gt = texmex
    ds = load(d / "toy_base.fvecs")
    assert ds.name == "toy_base" and ds.metric == "l2"
    np.testing.assert_array_equal(ds.base, base)
    np.testing.assert_array_equal(ds.queries, q)
    np.testing.assert_array_equal(ds.train_queries, learn)  # type: ignore[arg-type]
    np.testing.assert_array_equal(ds.neighbors, gt)
    # distances filled in from the vectors, in the package convention (squared L2)
    ref = ((q[:, None, :].astype(np.float64) - base[gt]) ** 2).sum(-1)
    np.testing.assert_allclose(ds.distances, ref, rtol=1e-5)  # type: ignore[arg-type]
    assert not ds.labelled


def test_texmex_without_gt_computes_it(texmex):
    d, base, q, _, _ = texmex
    (d / "toy_groundtruth.ivecs").unlink()
    ds = load(str(d / "toy_base.fvecs"), gt_k=4)
    np.testing.assert_array_equal(ds.neighbors, _numpy_l2_knn(base, q, 4))


def test_max_base_recomputes_gt(texmex):
    d, base, q, _, _ = texmex
    ds = load(d / "toy_base.fvecs", max_base=50, gt_k=3)
    assert ds.n_base == 50
    np.testing.assert_array_equal(ds.neighbors, _numpy_l2_knn(base[:50], q, 3))


def test_split_queries_from_base_when_no_query_file(tmp_path):
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, size=(200, 16))
    write_bvecs(tmp_path / "b.bvecs", base)
    ds = load(tmp_path / "b.bvecs", n_queries=20, gt_k=5, seed=3)
    assert ds.n_base == 180 and ds.n_queries == 20 and ds.base.dtype == np.float32
    rows = {tuple(r) for r in base.astype(np.float32)}
    assert {tuple(r) for r in ds.base} | {tuple(r) for r in ds.queries} == rows
    assert {tuple(r) for r in ds.base}.isdisjoint({tuple(r) for r in ds.queries})
    np.testing.assert_array_equal(ds.neighbors, _numpy_l2_knn(ds.base, ds.queries, 5))
    again = load(tmp_path / "b.bvecs", n_queries=20, gt_k=5, seed=3)
    np.testing.assert_array_equal(again.queries, ds.queries)


def test_npy_with_labels(tmp_path):
    rng = np.random.default_rng(2)
    base = rng.standard_normal((60, 5)).astype(np.float32)
    np.save(tmp_path / "v_base.npy", base)
    np.save(tmp_path / "v_query.npy", base[:4] + 0.01)
    np.save(tmp_path / "v_base_labels.npy", np.arange(60) % 4)
    np.save(tmp_path / "v_query_labels.npy", np.arange(4))
    ds = load(tmp_path / "v_base.npy", metric="cosine", gt_k=3, n_train_queries=1)
    assert ds.labelled and ds.metric == "cosine" and ds.n_queries == 3 and ds.n_train_queries == 1


def test_npz_round_trip(tmp_path):
    src = make_clusters("tiny", seed=0, gt_k=10)
    save_npz(src, tmp_path / "c.npz")
    ds = load(tmp_path / "c.npz")
    assert ds.metric == "cosine"
    for f in ("base", "queries", "base_labels", "query_labels", "neighbors", "distances", "train_queries"):
        np.testing.assert_array_equal(getattr(ds, f), getattr(src, f))


def test_hdf5_dataset(tmp_path):
    pytest.importorskip("h5py")
    rng = np.random.default_rng(3)
    base = rng.standard_normal((80, 6)).astype(np.float32)
    q = rng.standard_normal((7, 6)).astype(np.float32)
    gt = _numpy_l2_knn(base, q, 5)
    dist = ((q[:, None, :] - base[gt]) ** 2).sum(-1)
    write_ann_hdf5(tmp_path / "x.hdf5", base, q, gt, dist, metric="l2")
    ds = load(tmp_path / "x.hdf5")
    np.testing.assert_array_equal(ds.neighbors, gt)
    np.testing.assert_allclose(ds.distances, dist, rtol=1e-5)  # type: ignore[arg-type]
    assert load(tmp_path / "x.hdf5", metric="ip", max_base=40).metric == "ip"


def test_file_errors(tmp_path, texmex):
    d, *_ = texmex
    raw = (d / "toy_query.fvecs").read_bytes()
    (d / "toy_query.fvecs").write_bytes(raw[:-3])
    with pytest.raises(FileFormatError, match=r"toy_query\.fvecs.*truncated"):
        load(d / "toy_base.fvecs")
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.fvecs")
    with pytest.raises(FileNotFoundError):
        load("some/dir/thing")
    with pytest.raises(ConfigError, match=r"unknown dataset 'nonsense'.*clusters"):
        load("nonsense")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(FileFormatError, match="unsupported"):
        load(tmp_path / "x.txt")
    # dimension disagreement between base and query files
    write_fvecs(tmp_path / "m_base.fvecs", np.ones((10, 4)))
    write_fvecs(tmp_path / "m_query.fvecs", np.ones((2, 5)))
    with pytest.raises(FileFormatError, match="dimension"):
        load(tmp_path / "m_base.fvecs")
    # ground truth pointing outside the base
    write_fvecs(tmp_path / "g_base.fvecs", np.ones((10, 4)))
    write_fvecs(tmp_path / "g_query.fvecs", np.ones((2, 4)))
    write_ivecs(tmp_path / "g_groundtruth.ivecs", np.full((2, 3), 99))
    with pytest.raises(FileFormatError, match="g_base"):
        load(tmp_path / "g_base.fvecs")


def test_registry():
    assert {"clusters", "hierarchical", "manifolds", "digits"} <= set(available())
    register("unit_test_toy", lambda size="tiny", seed=0: make_clusters(size, seed=seed, gt_k=0), overwrite=True)
    ds = load("unit_test_toy:tiny", seed=1)
    assert ds.n_base == 1500
    with pytest.raises(ConfigError):
        register("unit_test_toy", lambda: ds)
    with pytest.raises(ConfigError):
        load("clusters:tiny", size="small")
