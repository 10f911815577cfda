"""mlp_adapter: analytic backward vs finite differences, identity start, training, hidden labels."""

from __future__ import annotations

import numpy as np
import pytest

from ruvector_hnsw.errors import ConfigError, NotFittedError
from ruvector_hnsw.eval import contrastive as CT
from ruvector_hnsw.eval import methods as MM
from ruvector_hnsw.eval import metrics as M
from ruvector_hnsw.eval import mlp_adapter as A
from tests.eval.test_baselines import _labelled


def _params(rng, d=5, h=4):
    return {"W1": rng.standard_normal((h, d)), "b1": rng.standard_normal(h) * 0.5,
            "W2": rng.standard_normal((d, h)) * 0.7, "b2": rng.standard_normal(d) * 0.3}


def _fd(f, arr, h=1e-6):
    num = np.zeros_like(arr)
    for idx in np.ndindex(arr.shape):
        old = arr[idx]
        arr[idx] = old + h
        up = f()
        arr[idx] = old - h
        down = f()
        arr[idx] = old
        num[idx] = (up - down) / (2 * h)
    return num


def test_forward_is_the_residual_mlp():
    rng = np.random.default_rng(0)
    p, x = _params(rng), rng.standard_normal((3, 5))
    z, _ = A.adapter_forward(p, x)
    ref = np.stack([xi + p["W2"] @ np.maximum(p["W1"] @ xi + p["b1"], 0) + p["b2"] for xi in x])
    np.testing.assert_allclose(z, ref, rtol=1e-12)


def test_backward_matches_finite_differences():
    rng = np.random.default_rng(1)
    p, x = _params(rng), rng.standard_normal((6, 5))
    u = rng.standard_normal((6, 5))  # L = sum(u * z)

    def loss():
        return float(np.sum(u * A.adapter_forward(p, x)[0]))

    _, cache = A.adapter_forward(p, x)
    grads = A.adapter_backward(p, cache, u)
    for key in p:
        np.testing.assert_allclose(grads[key], _fd(loss, p[key]), rtol=1e-6, atol=1e-8, err_msg=key)
    np.testing.assert_allclose(grads["x"], _fd(loss, x), rtol=1e-6, atol=1e-8)


def test_pooled_infonce_gradient_matches_finite_differences():
    rng = np.random.default_rng(2)
    p = _params(rng)
    q, items = rng.standard_normal((3, 5)), rng.standard_normal((7, 5))
    inv = rng.integers(0, 7, (3, 6))
    inv[0, :2] = 3  # the same item in two slots: its gradient is the sum of both
    valid = rng.random((3, 6)) > 0.2
    pos = valid & (rng.random((3, 6)) > 0.5)
    pos[0, 0] = valid[0, 0] = True

    def loss():
        return A.adapter_loss(p, q, items, inv, valid, pos, 0.3)[0]

    _, grads = A.adapter_loss(p, q, items, inv, valid, pos, 0.3)
    for key in p:
        np.testing.assert_allclose(grads[key], _fd(loss, p[key]), rtol=1e-5, atol=1e-8, err_msg=key)


def test_untrained_adapter_is_the_identity():
    ds = _labelled(nq=10)
    ad = A.MLPAdapter(16, hidden=8)
    with pytest.raises(NotFittedError):
        ad.transform(ds.queries)
    ad.init_params()
    qn = ds.queries / np.linalg.norm(ds.queries, axis=1, keepdims=True)
    np.testing.assert_allclose(ad.transform(ds.queries), qn, atol=1e-6)
    with pytest.raises(ConfigError):
        A.MLPAdapter(16, hidden=0)


def test_training_beats_hnsw_and_qe_option():
    ds = _labelled()
    ctx = MM.BuildContext(ds, ef=200, seed=0, num_threads=1, M=8, ef_construction=100)
    m = A.make_mlp_adapter(ctx, hidden=32, epochs=6, lr=5e-3, val_fraction=0)
    loss = m.params["train_loss"]
    assert len(loss) == 6 and loss[-1] < loss[0] - 0.05 and m.params["qe"] is False
    hnsw = MM.make_hnsw(ctx.index, ef=200)

    def mapr(method):
        return M.labelled_metrics(method(ds.queries, ds.base.shape[0])[0], ds.base_labels,
                                  ds.query_labels)["map_at_r"]

    assert mapr(m) > mapr(hnsw) + 0.05
    mq = A.make_mlp_adapter(ctx, hidden=32, epochs=6, lr=5e-3, val_fraction=0, qe=1, n=5)
    assert mq.adapter is m.adapter  # search options share one fit
    assert mq.params["qe"] is True and mq.params["n"] == 5
    ids, _ = mq(ds.queries, 10)
    assert ids.shape == (ds.queries.shape[0], 10) and (ids >= 0).all()


def test_early_stopping_restores_the_best_epoch():
    ds = _labelled(nt=60)
    q = ds.train_queries / np.linalg.norm(ds.train_queries, axis=1, keepdims=True)
    x = ds.base / np.linalg.norm(ds.base, axis=1, keepdims=True)
    cand = np.argsort(-(q @ x.T), axis=1)[:, :20]
    ad = A.MLPAdapter(16, hidden=8)
    ad.init_params()
    scores = iter([0.5, 0.7, 0.6, 0.65, 0.9])  # best after epoch 1, then 2 epochs without a better one
    snapshots = []

    def validate(params):
        snapshots.append({k: v.copy() for k, v in params.items()})
        return next(scores)

    hist = CT.fit_contrastive(A.adapter_loss, ad.params, q, x, ds.train_query_labels, ds.base_labels, cand,
                              np.random.default_rng(0), epochs=10, batch_size=16, lr=1e-2, temperature=0.1,
                              extra_positives=4, random_negatives=8, validate=validate, patience=2)
    assert hist["val_metric"] == [0.5, 0.7, 0.6, 0.65] and hist["best_epoch"] == 1
    assert len(hist["train_loss"]) == 3  # stopped after epoch 3
    for key, val in snapshots[1].items():
        np.testing.assert_array_equal(ad.params[key], val)
    assert not np.array_equal(snapshots[3]["W2"], snapshots[1]["W2"])


def test_adapter_validation_records_the_kept_model():
    ds = _labelled()
    ctx = MM.BuildContext(ds, ef=100, seed=0, num_threads=1, M=8, ef_construction=100)
    m = A.make_mlp_adapter(ctx, hidden=32, epochs=4, lr=5e-3, val_fraction=0.25, patience=2)
    val = m.params["val_map_at_100"]
    assert m.params["best_epoch"] == int(np.argmax(val)) and len(val) == len(m.params["train_loss"]) + 1
    assert m.params["n_val_queries"] == 50 and m.params["n_train_queries"] == 200
    q = m.adapter._prep(ds.train_queries, "q")
    held = np.sort(np.random.default_rng([0, 3]).permutation(200)[:50])
    again = CT.held_out_map(m.adapter.transform, q[held], ds.train_query_labels[held], ds.base, ds.base_labels)
    assert again == pytest.approx(max(val), abs=1e-5)  # params keep 5 decimals


def test_unknown_labels_take_no_part_in_pools():
    base_labels = np.array([0, 0, 0, -1, -1, 1, 1, -1, 2, 2])
    cand = np.array([[0, 3, 5, 7], [3, 4, 7, -1], [8, 9, 3, 1]])
    ql = np.array([0, -1, 2])
    pool, valid, pos = CT.projection_pools(cand, ql, base_labels, np.random.default_rng(0), extra_positives=4,
                                           random_negatives=30)
    assert (base_labels[pool[valid]] >= 0).all()  # an unknown item is never a negative nor a positive
    assert not np.isin(pool[valid], [3, 4, 7]).any()
    assert not pos[1].any()  # an unknown-label query has no positive (the loss skips it)
    np.testing.assert_array_equal(pos, valid & (base_labels[np.maximum(pool, 0)] == ql[:, None]))
    assert pos[0].any() and pos[2].any()
    assert set(pool[valid].tolist()) >= {0, 5, 8, 9, 1}  # labelled candidates stay


def test_hidden_labels_change_what_the_adapter_learns():
    """Training on train_base_labels: with every label of class 0 hidden, no class-0 item is a positive."""
    ds = _labelled(nt=60)
    hidden = np.where(ds.base_labels == 0, -1, ds.base_labels)
    seen = ds.train_query_labels != 0
    ds.train_queries, ds.train_query_labels = ds.train_queries[seen], ds.train_query_labels[seen]
    ds.train_base_labels = hidden  # type: ignore[attr-defined]
    ctx = MM.BuildContext(ds, ef=100, seed=0, num_threads=1, M=8, ef_construction=100)
    m = A.make_mlp_adapter(ctx, hidden=8, epochs=1, val_fraction=0)
    assert m.params["protocol"] == "unseen" and m.params["n_train_queries"] == int(seen.sum())
    ds.train_base_labels = None  # type: ignore[attr-defined]
    m2 = A.make_mlp_adapter(MM.BuildContext(ds, ef=100, seed=0, num_threads=1, M=8, ef_construction=100),
                            hidden=8, epochs=1, val_fraction=0)
    assert m2.params["protocol"] == "seen"
    assert not np.array_equal(m.adapter.params["W2"], m2.adapter.params["W2"])


def test_class_validation_split_hides_the_held_out_classes():
    ql = np.repeat(np.arange(10), 6)
    bl = np.r_[np.repeat(np.arange(10), 5), [-1, -1]]
    ad = A.MLPAdapter(4, seed=5)
    val, train, bl_train = ad._validation_split(ql, bl, 0.3, "classes")
    held = np.unique(ql[val])
    assert held.size == 3 and not np.isin(ql[train], held).any() and val.size + train.size == ql.size
    np.testing.assert_array_equal(bl_train, np.where(np.isin(bl, held), -1, bl))
    val_q, train_q, same = ad._validation_split(ql, bl, 0.25, "queries")
    assert val_q.size == 15 and same is bl and np.intersect1d(val_q, train_q).size == 0
    with pytest.raises(ConfigError):
        ad._validation_split(np.zeros(5, np.int64), bl, 0.3, "classes")


def test_unseen_protocol_validates_on_held_out_classes():
    ds = _labelled(nt=120)
    ds.train_base_labels = np.where(ds.base_labels == 0, -1, ds.base_labels)  # type: ignore[attr-defined]
    keep = ds.train_query_labels != 0
    ds.train_queries, ds.train_query_labels = ds.train_queries[keep], ds.train_query_labels[keep]
    ctx = MM.BuildContext(ds, ef=100, seed=0, num_threads=1, M=8, ef_construction=100)
    m = A.make_mlp_adapter(ctx, hidden=8, epochs=2, val_fraction=0.3)
    assert m.params["val_split"] == "classes" and m.params["protocol"] == "unseen"
    with pytest.raises(ConfigError):
        A.make_mlp_adapter(ctx, hidden=8, epochs=1, val_split="random")
