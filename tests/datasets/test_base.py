"""The Dataset container: validation, derived datasets, the train/eval query split."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ruvector_hnsw.datasets import Dataset, make_split
from ruvector_hnsw.errors import (
    ConfigError,
    EmptyInputError,
    InvalidDTypeError,
    NonFiniteError,
    ShapeMismatchError,
)


def _toy(nq: int = 10) -> Dataset:
    rng = np.random.default_rng(0)
    base = rng.standard_normal((40, 4))
    q = rng.standard_normal((nq, 4))
    return Dataset(
        "toy",
        base,
        q,
        "l2",
        base_labels=np.arange(40) % 3,
        query_labels=np.arange(nq) % 3,
        extras={"query_tag": np.arange(nq) * 10, "base_tag": np.arange(40)},
    )


def test_conversion_and_shapes():
    ds = _toy()
    assert ds.base.dtype == np.float32 and ds.base.flags.c_contiguous
    assert ds.queries.dtype == np.float32
    assert ds.base_labels is not None and ds.base_labels.dtype == np.int64
    assert (ds.n_base, ds.n_queries, ds.dim) == (40, 10, 4)
    assert ds.labelled and not ds.has_ground_truth


def test_relevant_counts_match_numpy():
    ds = _toy()
    assert ds.base_labels is not None and ds.query_labels is not None
    ref = np.array([(ds.base_labels == y).sum() for y in ds.query_labels])
    np.testing.assert_array_equal(ds.relevant_counts(), ref)
    odd = ds.replace(query_labels=np.array([7] * 10))  # label absent from the base
    np.testing.assert_array_equal(odd.relevant_counts(), np.zeros(10))


def test_validation_errors():
    base = np.ones((5, 3))
    with pytest.raises(ConfigError):
        Dataset("x", base, base, "hamming")
    with pytest.raises(ShapeMismatchError):
        Dataset("x", base, np.ones((2, 4)))
    with pytest.raises(EmptyInputError):
        Dataset("x", np.ones((0, 3)), base)
    with pytest.raises(InvalidDTypeError):
        Dataset("x", base.astype(complex), base)
    bad = base.copy()
    bad[2, 0] = np.inf
    with pytest.raises(NonFiniteError, match="row 2"):
        Dataset("x", bad, base)
    with pytest.raises(ShapeMismatchError):
        Dataset("x", base, base, base_labels=np.zeros(5, dtype=int))
    with pytest.raises(ShapeMismatchError):
        Dataset("x", base, base, neighbors=np.full((5, 2), 9))
    with pytest.raises(ShapeMismatchError):
        Dataset("x", base, base, neighbors=np.zeros((5, 2), dtype=int), distances=np.zeros((5, 3)))


def test_describe_is_json():
    ds = _toy().with_ground_truth(5)
    info = ds.describe()
    json.dumps(info)
    assert info["n_classes"] == 3 and info["gt_k"] == 5 and info["metric"] == "l2"
    assert ds.info == info
    assert "toy" in repr(ds)


def test_with_ground_truth_numpy():
    ds = _toy().with_ground_truth(3)
    d = ((ds.queries[:, None, :].astype(np.float64) - ds.base[None]) ** 2).sum(-1)
    assert ds.neighbors is not None and ds.distances is not None
    np.testing.assert_array_equal(ds.neighbors, np.argsort(d, axis=1)[:, :3])
    np.testing.assert_allclose(ds.distances, np.sort(d, axis=1)[:, :3], rtol=1e-4)


def test_split_queries_disjoint_and_consistent():
    ds = _toy(20).with_ground_truth(4)
    sp = ds.split_queries(6, seed=1)
    assert sp.n_queries == 14 and sp.n_train_queries == 6
    rows = {tuple(r) for r in ds.queries}
    ev = {tuple(r) for r in sp.queries}
    tr = {tuple(r) for r in sp.train_queries}  # type: ignore[union-attr]
    assert ev.isdisjoint(tr) and ev | tr == rows
    # labels, ground truth and query extras follow their rows
    idx = [int(np.flatnonzero((ds.queries == r).all(1))[0]) for r in sp.queries]
    assert ds.query_labels is not None and sp.query_labels is not None
    np.testing.assert_array_equal(sp.query_labels, ds.query_labels[idx])
    np.testing.assert_array_equal(sp.neighbors, ds.neighbors[idx])  # type: ignore[index]
    np.testing.assert_array_equal(sp.extras["query_tag"], np.asarray(idx) * 10)
    assert sp.extras["train_query_tag"].shape == (6,)
    np.testing.assert_array_equal(sp.extras["base_tag"], np.arange(40))
    # deterministic, and the functional form agrees
    np.testing.assert_array_equal(make_split(ds, 6, seed=1).queries, sp.queries)
    # appending to existing training queries
    sp2 = sp.split_queries(4, seed=2)
    assert sp2.n_train_queries == 10 and sp2.n_queries == 10
    with pytest.raises(ConfigError):
        ds.split_queries(20)


def test_take_queries():
    ds = _toy(8).with_ground_truth(2)
    t = ds.take_queries(3)
    assert t.n_queries == 3 and t.neighbors is not None and t.neighbors.shape == (3, 2)
    np.testing.assert_array_equal(t.extras["query_tag"], [0, 10, 20])
