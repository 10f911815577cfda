"""The unseen-class protocol: class_split invariants, hidden labels, npz round trip, errors."""

from __future__ import annotations

import numpy as np
import pytest

from ruvector_hnsw.datasets import Dataset, apply_protocol, class_split, load, load_file, save_npz
from ruvector_hnsw.errors import ConfigError, ShapeMismatchError


def _toy(n_classes=10, per=20, nq=60, nt=80, seed=0, with_train=True):
    rng = np.random.default_rng(seed)
    bl = np.repeat(np.arange(n_classes), per)
    ql = rng.integers(0, n_classes, nq)
    tl = rng.integers(0, n_classes, nt)
    d = 6
    base = rng.standard_normal((bl.size, d)).astype(np.float32)
    queries = rng.standard_normal((nq, d)).astype(np.float32)
    return Dataset(
        name="toy", base=base, queries=queries, metric="cosine", base_labels=bl, query_labels=ql,
        neighbors=np.argsort(rng.random((nq, 5)), axis=1),
        train_queries=rng.standard_normal((nt, d)).astype(np.float32) if with_train else None,
        train_query_labels=tl if with_train else None,
        extras={"query_tag": np.arange(nq), "train_query_tag": np.arange(nt) + 1000, "base_tag": np.arange(bl.size)}
        if with_train else {"query_tag": np.arange(nq)},
    )


def test_class_split_invariants():
    ds = _toy()
    out = class_split(ds, 0.3, seed=4)
    rec = out.params["class_split"]
    seen, unseen = set(rec["seen_classes"]), set(rec["unseen_classes"])
    assert len(unseen) == 3 and seen | unseen == set(range(10)) and not seen & unseen
    assert rec["seed"] == 4 and rec["unseen_fraction"] == 0.3 and out.params["protocol"] == "unseen"
    # evaluation queries: exactly the unseen-class ones, in order, with their ground truth and extras
    keep = np.flatnonzero(np.isin(ds.query_labels, list(unseen)))
    np.testing.assert_array_equal(out.queries, ds.queries[keep])
    np.testing.assert_array_equal(out.query_labels, ds.query_labels[keep])
    np.testing.assert_array_equal(out.neighbors, ds.neighbors[keep])
    np.testing.assert_array_equal(out.extras["query_tag"], keep)
    # training queries: exactly the seen-class ones
    tkeep = np.flatnonzero(np.isin(ds.train_query_labels, list(seen)))
    np.testing.assert_array_equal(out.train_queries, ds.train_queries[tkeep])
    assert set(out.train_query_labels.tolist()) <= seen
    np.testing.assert_array_equal(out.extras["train_query_tag"], tkeep + 1000)
    # the database is unchanged; relevance still sees every label; training sees none of the unseen ones
    np.testing.assert_array_equal(out.base, ds.base)
    np.testing.assert_array_equal(out.base_labels, ds.base_labels)
    np.testing.assert_array_equal(out.extras["base_tag"], ds.extras["base_tag"])
    hidden = np.isin(ds.base_labels, list(unseen))
    np.testing.assert_array_equal(out.train_base_labels, np.where(hidden, -1, ds.base_labels))
    assert set(out.train_base_labels[out.train_base_labels >= 0].tolist()) <= seen
    assert out.training_base_labels is out.train_base_labels and ds.training_base_labels is ds.base_labels
    assert rec["n_base_hidden"] == int(hidden.sum()) == out.describe()["n_base_labels_hidden_from_training"]
    assert (out.relevant_counts() > 0).all()
    # the input dataset was not touched
    assert ds.train_base_labels is None and ds.n_queries == 60


def test_class_split_is_seeded():
    ds = _toy()
    a, b, c = class_split(ds, 0.3, seed=1), class_split(ds, 0.3, seed=1), class_split(ds, 0.3, seed=2)
    assert a.params["class_split"]["unseen_classes"] == b.params["class_split"]["unseen_classes"]
    assert a.params["class_split"]["unseen_classes"] != c.params["class_split"]["unseen_classes"]
    assert apply_protocol(ds, "seen") is ds
    np.testing.assert_array_equal(apply_protocol(ds, "unseen", unseen=0.3, seed=1).train_base_labels,
                                  a.train_base_labels)


def test_without_training_queries_the_seen_class_queries_train():
    ds = _toy(with_train=False)
    out = class_split(ds, 0.5, seed=0)
    unseen = set(out.params["class_split"]["unseen_classes"])
    assert set(out.query_labels.tolist()) <= unseen
    assert not set(out.train_query_labels.tolist()) & unseen
    assert out.n_queries + out.n_train_queries == ds.n_queries  # disjoint, nothing lost
    assert out.params["class_split"]["train_source"] == "seen_class_queries"
    np.testing.assert_array_equal(np.sort(np.r_[out.extras["query_tag"], out.extras["train_query_tag"]]),
                                  np.arange(ds.n_queries))


def test_hide_seen_hides_a_seeded_share_of_the_seen_classes_labels():
    ds = _toy(per=50)
    plain = class_split(ds, 0.3, seed=2)
    out = class_split(ds, 0.3, seed=2, hide_seen=0.4)
    unseen = np.isin(ds.base_labels, plain.params["class_split"]["unseen_classes"])
    assert (out.train_base_labels[unseen] == -1).all()
    seen_hidden = (out.train_base_labels < 0) & ~unseen
    assert seen_hidden.sum() == round(0.4 * (~unseen).sum())
    kept = out.train_base_labels >= 0
    np.testing.assert_array_equal(out.train_base_labels[kept], ds.base_labels[kept])  # the rest unchanged
    np.testing.assert_array_equal(out.queries, plain.queries)  # queries and classes as without it
    np.testing.assert_array_equal(out.train_queries, plain.train_queries)
    assert out.params["class_split"]["hide_seen"] == 0.4
    again = apply_protocol(ds, "unseen", unseen=0.3, seed=2, hide_seen=0.4)
    np.testing.assert_array_equal(again.train_base_labels, out.train_base_labels)  # seeded
    assert plain.params["class_split"]["hide_seen"] == 0.0


def test_errors():
    ds = _toy()
    for bad_hide in (-0.1, 1.0):
        with pytest.raises(ConfigError, match="hide_seen"):
            class_split(ds, 0.3, hide_seen=bad_hide)
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ConfigError):
            class_split(ds, bad)
    with pytest.raises(ConfigError):
        class_split(ds.replace(base_labels=None, query_labels=None), 0.3)
    with pytest.raises(ConfigError):
        class_split(ds.replace(train_query_labels=None), 0.3)
    one_class = ds.replace(base_labels=np.zeros(ds.n_base, np.int64), query_labels=np.zeros(ds.n_queries, np.int64),
                           train_query_labels=np.zeros(ds.n_train_queries, np.int64))
    with pytest.raises(ConfigError, match="2 classes"):
        class_split(one_class, 0.3)
    with pytest.raises(ConfigError, match="unknown protocol"):
        apply_protocol(ds, "zero-shot")
    with pytest.raises(ShapeMismatchError):
        ds.replace(train_base_labels=np.zeros(3, np.int64))


def test_hidden_labels_survive_npz_and_a_builtin_split(tmp_path):
    out = class_split(load("clusters", size="tiny"), 0.3, seed=0)
    save_npz(out, tmp_path / "u.npz")
    back = load_file(tmp_path / "u.npz")
    np.testing.assert_array_equal(back.train_base_labels, out.train_base_labels)
    np.testing.assert_array_equal(back.base_labels, out.base_labels)
