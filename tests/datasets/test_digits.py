"""scikit-learn digits: split by source image, shift augmentation, standardisation."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sklearn")

from ruvector_hnsw.datasets import load
from ruvector_hnsw.datasets.digits import SHIFTS, shift_images
from ruvector_hnsw.errors import ConfigError


def test_shift_images_by_hand():
    img = np.arange(9, dtype=np.float32).reshape(1, 3, 3)
    np.testing.assert_array_equal(shift_images(img, 1, 0)[0], [[0, 0, 0], [0, 1, 2], [3, 4, 5]])
    np.testing.assert_array_equal(shift_images(img, 0, -1)[0], [[1, 2, 0], [4, 5, 0], [7, 8, 0]])
    np.testing.assert_array_equal(shift_images(img, 0, 0), img)


def test_split_shares_no_source_image():
    ds = load("digits", n_queries=100, n_train_queries=50, seed=1, gt_k=5, augment=True)
    sb, sq, st = ds.extras["base_source"], ds.extras["query_source"], ds.extras["train_query_source"]
    assert set(sb).isdisjoint(sq) and set(sb).isdisjoint(st) and set(sq).isdisjoint(st)
    assert len(set(sb)) + len(sq) + len(st) == 1797
    assert ds.n_base == 5 * len(set(sb)) and ds.n_queries == 100 and ds.n_train_queries == 50
    assert ds.metric == "cosine" and ds.neighbors is not None and ds.neighbors.shape == (100, 5)


def test_standardisation_and_augmentation_against_raw():
    from sklearn.datasets import load_digits

    raw = load_digits()
    ds = load("digits", n_queries=100, n_train_queries=0, seed=2, gt_k=0, standardize=False, augment=True)
    src = ds.extras["base_source"]
    shift = ds.extras["base_shift"]
    for row in (0, 7, 123):
        dy, dx = SHIFTS[shift[row]]
        ref = shift_images(raw.images[src[row]][None].astype(np.float32), dy, dx).ravel()
        np.testing.assert_array_equal(ds.base[row], ref)
    assert ds.base_labels is not None
    np.testing.assert_array_equal(ds.base_labels, raw.target[src])
    std = load("digits", n_queries=100, n_train_queries=0, seed=2, gt_k=0, augment=True)
    mu, sd = ds.base.mean(0), ds.base.std(0)
    sd = np.where(sd < 1e-6, 1.0, sd)
    np.testing.assert_allclose(std.base, (ds.base - mu) / sd, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(std.queries, (ds.queries - mu) / sd, rtol=1e-4, atol=1e-4)


def test_no_augmentation_and_errors():
    ds = load("digits", n_queries=200, n_train_queries=0, gt_k=0)  # no augmentation by default
    assert ds.n_base == 1597 and (ds.extras["base_shift"] == 0).all()
    with pytest.raises(ConfigError):
        load("digits", n_queries=1797)


def test_without_sklearn_is_missing_dependency(monkeypatch):
    import sys

    from ruvector_hnsw.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(MissingDependencyError, match="scikit-learn"):
        load("digits")
