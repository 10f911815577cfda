"""linear_proj: gradient, pools, training, gain over HNSW, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from ruvector_hnsw.errors import ConfigError, NotFittedError, ShapeMismatchError
from ruvector_hnsw.eval import baselines as B
from ruvector_hnsw.eval import methods as MM
from ruvector_hnsw.eval import metrics as M
from tests.eval.conftest import ToyDataset


def _loss_ref(W, q, pool, valid, pos, tau):
    """Plain-numpy supervised InfoNCE of cos(Wq, Wx), float64, loops over rows."""
    total, rows = 0.0, 0
    for b in range(q.shape[0]):
        zq = W @ q[b]
        zq = zq / np.linalg.norm(zq)
        logits = []
        for c in range(pool.shape[1]):
            zc = W @ pool[b, c]
            logits.append(float(zq @ (zc / np.linalg.norm(zc))) / tau)
        logits = np.array(logits)
        v = valid[b]
        p = pos[b] & v
        if not p.any():
            continue
        lse = np.log(np.exp(logits[v] - logits[v].max()).sum()) + logits[v].max()
        total += lse - logits[p].mean()
        rows += 1
    return total / rows


def _problem(seed=0, B_=3, P=5, d=6, p=4):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((p, d))
    q = rng.standard_normal((B_, d))
    pool = rng.standard_normal((B_, P, d))
    valid = rng.random((B_, P)) > 0.2
    valid[:, 0] = True
    pos = (rng.random((B_, P)) > 0.5) & valid
    pos[0, 0] = True
    pos[1] = False  # a row without positives is ignored
    return W, q, pool, valid, pos


def test_loss_matches_numpy_reference():
    W, q, pool, valid, pos = _problem()
    loss, _ = B.linear_proj_loss(W, q, pool, valid, pos, temperature=0.3)
    assert loss == pytest.approx(_loss_ref(W, q, pool, valid, pos, 0.3), rel=1e-10)


def test_gradient_matches_finite_differences():
    W, q, pool, valid, pos = _problem(seed=1)
    _, g = B.linear_proj_loss(W, q, pool, valid, pos, temperature=0.5)
    num = np.zeros_like(W)
    h = 1e-6
    for i in range(W.shape[0]):
        for j in range(W.shape[1]):
            Wp, Wm = W.copy(), W.copy()
            Wp[i, j] += h
            Wm[i, j] -= h
            num[i, j] = (_loss_ref(Wp, q, pool, valid, pos, 0.5) - _loss_ref(Wm, q, pool, valid, pos, 0.5)) / (2 * h)
    np.testing.assert_allclose(g, num, rtol=1e-5, atol=1e-7)


def test_pools_hold_candidates_positives_and_randoms():
    base_labels = np.repeat(np.arange(4), 10)
    cand = np.array([[0, 1, 2, -1], [30, 31, 31, 5]])
    ql = np.array([0, 3])
    pool, valid, pos = B.projection_pools(cand, ql, base_labels, np.random.default_rng(0),
                                          extra_positives=6, random_negatives=5)
    for b in range(2):
        ids = pool[b][valid[b]]
        assert len(set(ids.tolist())) == ids.size  # no duplicates
        assert set(cand[b][cand[b] >= 0].tolist()) <= set(ids.tolist())
        np.testing.assert_array_equal(pos[b][valid[b]], base_labels[ids] == ql[b])
    # the extra positives reach same-label items that were not candidates
    assert (pos[0] & ~np.isin(pool[0], cand[0])).any()


def _labelled(seed=0, n_classes=8, per=60, nq=80, nt=200, d=16):
    """Classes that differ along few directions, buried in isotropic noise elsewhere."""
    rng = np.random.default_rng(seed)
    centers = np.zeros((n_classes, d))
    centers[:, :3] = rng.standard_normal((n_classes, 3)) * 1.5
    offset = rng.standard_normal(d) * 2.0

    def draw(m):
        lab = rng.integers(0, n_classes, m)
        x = offset + centers[lab] + rng.standard_normal((m, d)) * np.r_[np.full(3, 0.3), np.full(d - 3, 1.0)]
        return x.astype(np.float32), lab

    base, bl = draw(n_classes * per)
    q, ql = draw(nq)
    tq, tl = draw(nt)
    ds = ToyDataset(base=base, queries=q, metric="cosine", base_labels=bl, query_labels=ql)
    ds.train_queries, ds.train_query_labels = tq, tl  # type: ignore[attr-defined]
    return ds


def _map(method, ds):
    ids, _ = method(ds.queries, ds.base.shape[0])
    return M.labelled_metrics(ids, ds.base_labels, ds.query_labels)["map_at_r"]


def test_training_lowers_loss_and_beats_hnsw():
    ds = _labelled()
    ctx = MM.BuildContext(ds, ef=200, seed=0, num_threads=1, M=8, ef_construction=100)
    method = B.make_linear_proj(ctx, epochs=8, lr=1e-2)
    loss = method.params["train_loss"]
    assert len(loss) == 8 and loss[-1] < loss[0] - 0.05
    assert method.params["n_train_queries"] == 200 and method.params["train_source"] == "dataset"
    hnsw = MM.make_hnsw(ctx.index, ef=200)
    assert _map(method, ds) > _map(hnsw, ds) + 0.05


def test_untrained_full_rank_projection_keeps_cosine_ranking():
    ds = _labelled(nq=20)
    proj = B.LinearProjection(16, metric="cosine")
    with pytest.raises(NotFittedError):
        proj.transform(ds.queries)
    proj.init_pca(ds.base)  # p = d: an orthogonal map
    zq, zb = proj.transform(ds.queries), proj.transform(ds.base)
    qn = ds.queries / np.linalg.norm(ds.queries, axis=1, keepdims=True)
    bn = ds.base / np.linalg.norm(ds.base, axis=1, keepdims=True)
    np.testing.assert_allclose(zq @ zb.T, qn @ bn.T, atol=1e-5)


def test_seeded_determinism():
    ds = _labelled(nt=120)

    def run(seed):
        ctx = MM.BuildContext(ds, ef=100, seed=seed, num_threads=1, M=8, ef_construction=100)
        m = B.make_linear_proj(ctx, epochs=2)
        return m.projection.W.copy(), m(ds.queries, 10)[0]

    (w1, i1), (w2, i2), (w3, _) = run(0), run(0), run(1)
    np.testing.assert_array_equal(w1, w2)
    np.testing.assert_array_equal(i1, i2)
    assert not np.array_equal(w1, w3)


def test_bad_input():
    ds = _labelled(nt=50)
    proj = B.LinearProjection(16)
    with pytest.raises(ShapeMismatchError):
        proj.fit(ds.train_queries, ds.train_query_labels[:10], ds.base, ds.base_labels,
                 np.zeros((50, 5), dtype=np.int64))
    with pytest.raises(ConfigError):
        B.LinearProjection(16, metric="hamming")
    assert proj.W is None  # rejected call left no state
    no_train = ToyDataset(base=ds.base, queries=ds.queries, metric="cosine", base_labels=ds.base_labels,
                          query_labels=ds.query_labels)
    with pytest.raises(ConfigError, match="training queries"):
        B.make_linear_proj(MM.BuildContext(no_train, num_threads=1))
