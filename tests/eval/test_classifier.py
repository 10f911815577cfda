"""label_classifier: loss and gradients, the ranking rule, C semantics, protocol refusal."""

from __future__ import annotations

import numpy as np
import pytest

from ruvector_hnsw.datasets import Dataset, class_split
from ruvector_hnsw.errors import ConfigError, NotFittedError
from ruvector_hnsw.eval import classifier as CL
from ruvector_hnsw.eval import methods as MM
from ruvector_hnsw.eval import metrics as M
from tests.eval.conftest import brute_force
from tests.eval.test_baselines import _labelled


def _ce_ref(params, x, y):
    """Plain loop: mean over rows of -log softmax(logits)_y, float64."""
    total = 0.0
    for i in range(x.shape[0]):
        if "W1" in params:
            h = np.maximum(params["W1"] @ x[i] + params["b1"], 0.0)
            z = params["W"] @ h + params["b"]
        else:
            z = params["W"] @ x[i] + params["b"]
        total += np.log(np.sum(np.exp(z - z.max()))) + z.max() - z[y[i]]
    return total / x.shape[0]


def _params(rng, d, c, hidden):
    if hidden:
        return {"W1": rng.standard_normal((hidden, d)), "b1": rng.standard_normal(hidden) * 0.3,
                "W": rng.standard_normal((c, hidden)), "b": rng.standard_normal(c)}
    return {"W": rng.standard_normal((c, d)), "b": rng.standard_normal(c)}


@pytest.mark.parametrize("hidden", [0, 5])
def test_softmax_loss_and_gradient_vs_reference(hidden):
    rng = np.random.default_rng(hidden)
    x, y = rng.standard_normal((7, 4)), rng.integers(0, 3, 7)
    params = _params(rng, 4, 3, hidden)
    loss, grads = CL.softmax_loss(params, x, y)
    assert loss == pytest.approx(_ce_ref(params, x, y), rel=1e-12)
    h = 1e-6
    for key, p in params.items():
        num = np.zeros_like(p)
        for idx in np.ndindex(p.shape):
            old = p[idx]
            p[idx] = old + h
            up = _ce_ref(params, x, y)
            p[idx] = old - h
            down = _ce_ref(params, x, y)
            p[idx] = old
            num[idx] = (up - down) / (2 * h)
        np.testing.assert_allclose(grads[key], num, rtol=1e-6, atol=1e-8, err_msg=key)


def _rank_ref(probs, item_class, q, base, k, metric):
    """Brute force: sort all items by (-p(class), distance, id); unknown class last."""
    _, d_all = brute_force(q, base, base.shape[0], metric)
    ids_all, _ = brute_force(q, base, base.shape[0], metric)
    dist = np.empty((q.shape[0], base.shape[0]))
    np.put_along_axis(dist, ids_all, d_all, axis=1)
    out = []
    for r in range(q.shape[0]):
        rank = np.empty(probs.shape[1] + 1)
        rank[np.argsort(-probs[r], kind="stable")] = np.arange(probs.shape[1])
        rank[-1] = probs.shape[1]
        keys = [(rank[item_class[i]], dist[r, i]) for i in range(base.shape[0])]
        out.append(sorted(range(base.shape[0]), key=lambda i: keys[i])[:k])
    return np.array(out), dist


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_ranking_rule_matches_a_brute_force_sort(metric):
    rng = np.random.default_rng(3)
    n, c = 40, 4
    base = rng.standard_normal((n, 5)).astype(np.float32)
    q = rng.standard_normal((6, 5)).astype(np.float32)
    if metric == "cosine":
        base /= np.linalg.norm(base, axis=1, keepdims=True)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
    item_class = rng.integers(-1, c, n)  # some unknown (-1) items
    probs = rng.dirichlet(np.ones(c), 6)
    probs[0] = [0.4, 0.1, 0.4, 0.1]  # tied classes: lower index first
    ref, dist = _rank_ref(probs, np.where(item_class < 0, c, item_class), q, base, n, metric)
    for k in (1, 3, 11, n, n + 5):
        ids, d = CL.rank_by_class(probs, item_class, q, base, k, metric=metric, block=4)
        assert ids.shape == (6, k)
        kk = min(k, n)
        np.testing.assert_array_equal(ids[:, :kk], ref[:, :kk])
        np.testing.assert_allclose(d[:, :kk], np.take_along_axis(dist, ref[:, :kk], axis=1), atol=1e-5)
        assert (ids[:, kk:] == -1).all() and np.isinf(d[:, kk:]).all()


def _gauss(seed=0, n_classes=4, per=50, nq=40, nt=40, d=6, spread=0.6):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_classes, d)) * 2.0

    def draw(m):
        lab = rng.integers(0, n_classes, m)
        return (centers[lab] + spread * rng.standard_normal((m, d))).astype(np.float32), lab

    base, bl = draw(n_classes * per)
    q, ql = draw(nq)
    tq, tl = draw(nt)
    return Dataset(name="gauss", base=base, queries=q, metric="l2", base_labels=bl, query_labels=ql,
                   train_queries=tq, train_query_labels=tl)


def test_fit_reaches_the_regularised_optimum_of_its_C():
    """weight_decay = 1/(n C): at the fit, the gradient of mean CE + ||W||^2 / (2 n C) nearly vanishes."""
    ds = _gauss(spread=1.5)
    clf = CL.LabelClassifier(6, metric="l2", seed=0).fit(ds.base, ds.base_labels, C=0.05, epochs=200,
                                                          batch_size=1000, lr=0.05)
    x = clf._features(ds.base).astype(np.float64)
    y = np.searchsorted(clf.classes, ds.base_labels)
    params = {k: v.astype(np.float64) for k, v in clf.params.items()}
    _, g = CL.softmax_loss(params, x, y)
    wd = 1.0 / (0.05 * x.shape[0])
    full = g["W"] + wd * params["W"]
    assert np.abs(full).max() < 2e-3 * np.abs(g["W"] - full).max()  # the L2 term balances the data term
    # a much weaker penalty gives much larger weights: C really is the inverse strength
    weak = CL.LabelClassifier(6, metric="l2", seed=0).fit(ds.base, ds.base_labels, C=100.0, epochs=200,
                                                           batch_size=1000, lr=0.05)
    assert np.linalg.norm(weak.params["W"]) > 2 * np.linalg.norm(clf.params["W"])


def test_method_ranks_by_class_then_distance_and_selects_C():
    ds = _labelled(nt=100)  # classes apart along 3 of 16 directions, noise elsewhere
    ctx = MM.BuildContext(ds, ef=64, seed=0, num_threads=1, M=8, ef_construction=64)
    m = CL.make_label_classifier(ctx, epochs=10, batch_size=64, lr=0.02)
    assert m.params["C"] in CL.DEFAULT_C_GRID and len(m.params["C_selection"]) == 4
    assert m.params["n_train_rows"] == ds.base.shape[0] + ds.train_queries.shape[0]
    ids, dists = m(ds.queries, ds.base.shape[0])
    assert sorted(ids[0].tolist()) == list(range(ds.base.shape[0]))  # k = N: every item once
    probs = m.classifier.predict_proba(ds.queries)
    # along each list: class probabilities never increase; within one class, distances never decrease
    p_item = np.take_along_axis(probs, np.searchsorted(m.classifier.classes, ds.base_labels[ids]), axis=1)
    assert (np.diff(p_item, axis=1) <= 1e-7).all()
    same = ds.base_labels[ids][:, 1:] == ds.base_labels[ids][:, :-1]
    assert (np.diff(dists, axis=1)[same] >= -1e-5).all()
    hnsw = MM.make_hnsw(ctx.index, ef=64)(ds.queries, ds.base.shape[0])[0]
    ours = M.labelled_metrics(ids, ds.base_labels, ds.query_labels)["map_at_r"]
    assert ours > M.labelled_metrics(hnsw, ds.base_labels, ds.query_labels)["map_at_r"] + 0.05
    # seeded: the same fit twice gives the same model
    again = CL.make_label_classifier(MM.BuildContext(ds, ef=64, seed=0, num_threads=1, M=8), epochs=10,
                                     batch_size=64, lr=0.02)
    np.testing.assert_array_equal(again.classifier.params["W"], m.classifier.params["W"])


def test_refuses_the_unseen_protocol_and_unknown_classes():
    ds = _gauss()
    with pytest.raises(ConfigError, match="seen-class protocol"):
        CL.make_label_classifier(MM.BuildContext(class_split(ds, 0.5, seed=0), num_threads=1))
    stranger = ds.replace(query_labels=np.where(np.arange(ds.n_queries) == 0, 9, ds.query_labels))
    with pytest.raises(ConfigError, match="no training example"):  # class 9 has no training row
        CL.make_label_classifier(MM.BuildContext(stranger, num_threads=1))
    clf = CL.LabelClassifier(6)
    with pytest.raises(NotFittedError):
        clf.predict_proba(ds.queries)
    with pytest.raises(ConfigError):
        clf.fit(ds.base, ds.base_labels, C=[])
    with pytest.raises(ConfigError):
        clf.fit(ds.base, np.zeros(ds.n_base, np.int64))  # one class
    assert clf.params is None  # rejected calls left no state
