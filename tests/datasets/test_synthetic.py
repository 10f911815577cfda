"""Synthetic scenarios: determinism, shapes, documented structure, non-degenerate difficulty."""

from __future__ import annotations

import numpy as np
import pytest

from ruvector_hnsw.datasets import load, make_clusters, make_hierarchical, make_manifolds
from ruvector_hnsw.errors import ConfigError

MAKERS = {"clusters": make_clusters, "hierarchical": make_hierarchical, "manifolds": make_manifolds}


def _map_at_r(base: np.ndarray, yb: np.ndarray, q: np.ndarray, yq: np.ndarray) -> float:
    """Plain numpy exact cosine search + mAP@R (Musgrave et al.)."""
    sims = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (base / np.linalg.norm(base, axis=1, keepdims=True)).T
    order = np.argsort(-sims, axis=1, kind="stable")
    aps = []
    for i in range(len(q)):
        r = int((yb == yq[i]).sum())
        rel = yb[order[i, :r]] == yq[i]
        prec = np.cumsum(rel) / np.arange(1, r + 1)
        aps.append((prec * rel).sum() / r)
    return float(np.mean(aps))


@pytest.mark.parametrize("name", list(MAKERS))
def test_shapes_dtypes_and_norms(name):
    ds = MAKERS[name]("tiny", seed=0)
    assert ds.name == name and ds.metric == "cosine" and ds.source == "synthetic"
    assert ds.base.dtype == np.float32 and ds.queries.dtype == np.float32
    assert ds.n_base == 1500 and ds.n_queries == 100 and ds.n_train_queries == 200
    assert ds.train_queries is not None and ds.train_query_labels is not None
    np.testing.assert_allclose(np.linalg.norm(ds.base, axis=1), 1.0, rtol=1e-5)
    assert ds.base_labels is not None and ds.query_labels is not None
    assert ds.base_labels.min() >= 0 and ds.base_labels.max() < ds.params["n_classes"]
    assert ds.neighbors is not None and ds.neighbors.shape == (100, 100)
    for key, val in ds.extras.items():
        if key.startswith("base_"):
            assert len(val) == ds.n_base
        elif key.startswith("query_"):
            assert len(val) == ds.n_queries
        elif key.startswith("train_query_"):
            assert len(val) == ds.n_train_queries


@pytest.mark.parametrize("name", list(MAKERS))
def test_deterministic_by_seed(name):
    a = MAKERS[name]("tiny", seed=5, gt_k=0)
    b = MAKERS[name]("tiny", seed=5, gt_k=0)
    c = MAKERS[name]("tiny", seed=6, gt_k=0)
    np.testing.assert_array_equal(a.base, b.base)
    np.testing.assert_array_equal(a.queries, b.queries)
    np.testing.assert_array_equal(a.train_queries, b.train_queries)  # type: ignore[arg-type]
    assert not np.array_equal(a.base, c.base)


@pytest.mark.parametrize("name", list(MAKERS))
def test_training_queries_do_not_change_the_rest(name):
    a = MAKERS[name]("tiny", seed=1, gt_k=0, n_train_queries=0)
    b = MAKERS[name]("tiny", seed=1, gt_k=0, n_train_queries=50)
    assert a.train_queries is None and b.n_train_queries == 50
    np.testing.assert_array_equal(a.base, b.base)
    np.testing.assert_array_equal(a.queries, b.queries)
    # training queries are fresh draws, not copies of evaluation queries
    assert b.train_queries is not None
    assert not (b.train_queries[:, None, :] == b.queries[None]).all(-1).any()


def test_ground_truth_matches_numpy():
    ds = make_clusters("tiny", seed=2, gt_k=10)
    sims = ds.queries.astype(np.float64) @ ds.base.astype(np.float64).T  # unit rows: cosine
    ref = np.argsort(-sims, axis=1, kind="stable")[:, :10]
    assert ds.neighbors is not None and ds.distances is not None
    agree = (ds.neighbors == ref).mean()
    assert agree > 0.99
    np.testing.assert_allclose(ds.distances, 1 - np.take_along_axis(sims, ref, axis=1), atol=1e-5)


@pytest.mark.parametrize("name", list(MAKERS))
def test_difficulty_is_not_degenerate(name):
    ds = MAKERS[name]("tiny", seed=0, gt_k=0)
    assert ds.base_labels is not None and ds.query_labels is not None
    m = _map_at_r(ds.base, ds.base_labels, ds.queries, ds.query_labels)
    assert 0.25 < m < 0.85, m


def test_hierarchical_extras_consistent():
    ds = make_hierarchical("tiny", seed=0, gt_k=0)
    cs = ds.extras["class_super"]
    assert ds.base_labels is not None and ds.query_labels is not None
    np.testing.assert_array_equal(ds.extras["base_super"], cs[ds.base_labels])
    np.testing.assert_array_equal(ds.extras["query_super"], cs[ds.query_labels])
    assert len(np.unique(cs)) == ds.params["n_super"]
    # siblings (same super-class) are closer on average than other families
    yb = ds.base_labels
    cent = np.stack([ds.base[yb == c].mean(0) for c in range(len(cs))])
    d = ((cent[:, None] - cent[None]) ** 2).sum(-1)
    same = (cs[:, None] == cs[None]) & ~np.eye(len(cs), dtype=bool)
    assert d[same].mean() < d[~same & ~np.eye(len(cs), dtype=bool)].mean()


def test_label_noise_flips_base_labels_only():
    clean = make_clusters("tiny", seed=3, gt_k=0)
    noisy = make_clusters("tiny", seed=3, gt_k=0, label_noise=0.2)
    np.testing.assert_array_equal(clean.base, noisy.base)
    np.testing.assert_array_equal(clean.query_labels, noisy.query_labels)  # type: ignore[arg-type]
    frac = (clean.base_labels != noisy.base_labels).mean()
    assert 0.15 < frac < 0.25


def test_overrides_and_metric_l2():
    ds = make_manifolds("tiny", n_base=300, n_queries=20, n_train_queries=0, dim=16, n_classes=4, gt_k=5,
                        metric="l2", normalize=False)
    assert ds.base.shape == (300, 16) and ds.metric == "l2"
    assert not np.allclose(np.linalg.norm(ds.base, axis=1), 1.0)


def test_bad_config():
    with pytest.raises(ConfigError, match="size"):
        make_clusters("huge")
    with pytest.raises(ConfigError, match="metric"):
        make_clusters("tiny", metric="hamming")
    with pytest.raises(ConfigError):
        make_clusters("tiny", n_classes=1)
    with pytest.raises(ConfigError):
        make_hierarchical("tiny", n_super=100)
    with pytest.raises(ConfigError):
        load("clusters", size="tiny", bogus=1)
