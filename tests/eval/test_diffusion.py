"""diffusion: the per-query graph and CG solution vs a dense numpy solve; the result list."""

from __future__ import annotations

import numpy as np
import pytest

from ruvector_hnsw.errors import ConfigError
from ruvector_hnsw.eval import diffusion as DF
from ruvector_hnsw.eval import methods as MM
from ruvector_hnsw.eval import metrics as M
from tests.eval.conftest import make_clustered


def _dense_reference(cand, cand_sim, nbr, nbr_sim, gamma, a, seeds):
    """Node set, dense W (max-symmetrised), S = D^-1/2 W D^-1/2 and f = solve(I - a S, y)."""
    nodes = []
    for u in [c for c in cand if c >= 0] + [v for c in cand if c >= 0 for v in nbr[c] if v >= 0]:
        if u not in nodes:
            nodes.append(u)
    n = len(nodes)
    where = {u: i for i, u in enumerate(nodes)}
    W = np.zeros((n, n))
    for i, u in enumerate(nodes):
        for j, v in enumerate(nbr[u]):
            if v >= 0 and v in where and where[v] != i:
                w = max(float(nbr_sim[u, j]), 0.0) ** gamma
                W[i, where[v]] = max(W[i, where[v]], w)
                W[where[v], i] = max(W[where[v], i], w)
    deg = W.sum(axis=1)
    dinv = np.where(deg > 0, 1.0 / np.sqrt(np.where(deg > 0, deg, 1.0)), 0.0)
    S = dinv[:, None] * W * dinv[None, :]
    y = np.zeros(n)
    valid = [s for c, s in zip(cand, cand_sim, strict=True) if c >= 0]
    for i in range(min(seeds, len(valid))):
        y[i] = max(valid[i], 0.0) ** gamma
    return np.array(nodes), np.linalg.solve(np.eye(n) - a * S, y)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cg_solution_matches_a_dense_solve(seed):
    rng = np.random.default_rng(seed)
    N, K = 30, 4
    nbr = rng.integers(0, N, (N, K))
    nbr[rng.random((N, K)) < 0.2] = -1  # padding
    nbr[3] = -1  # an item without links
    sim = rng.uniform(-0.2, 1.0, (N, K)).astype(np.float32)  # some negative similarities (weight 0)
    cand = np.array([5, 3, 17, 9, 22, -1, -1])
    cand_sim = rng.uniform(0.1, 1.0, 7)
    for gamma, a, seeds in ((3.0, 0.9, 7), (1.0, 0.99, 2)):
        nodes, f, steps = DF.diffusion_scores(cand, cand_sim, nbr, sim, gamma=gamma, a=a, seeds=seeds,
                                              iterations=200, tol=1e-12)
        ref_nodes, ref_f = _dense_reference(cand, cand_sim, nbr, sim, gamma, a, seeds)
        np.testing.assert_array_equal(nodes, ref_nodes)
        np.testing.assert_allclose(f, ref_f, rtol=1e-7, atol=1e-10)
        assert 0 < steps <= len(nodes) + 5  # CG: at most about n steps in exact arithmetic
    # a fixed small number of steps stops early (and differs from the solution)
    _, f2, steps2 = DF.diffusion_scores(cand, cand_sim, nbr, sim, iterations=2, tol=0.0)
    assert steps2 == 2 and not np.allclose(f2, _dense_reference(cand, cand_sim, nbr, sim, 5.0, 0.9, 7)[1])


def test_method_lists_diffused_nodes_then_the_hnsw_tail():
    ds = make_clustered(n_classes=5, per_class=40, n_queries=12, dim=8, spread=0.3, metric="cosine")
    ctx = MM.BuildContext(ds, ef=64, seed=0, num_threads=1, M=4, ef_construction=64)
    m = DF.make_diffusion(ctx, candidates=5, k_graph=3, gamma=3.0, a=0.9, iterations=50, tol=1e-10)
    ranker = m.ranker
    N = ds.base.shape[0]
    ids, dists = m(ds.queries, N)
    hnsw_ids, hnsw_d = ctx.index.search(ds.queries, k=N, ef=N)
    for r in range(ds.queries.shape[0]):
        assert sorted(ids[r].tolist()) == list(range(N))  # k = N: everything once
        cand = hnsw_ids[r, :5]
        sim = 1.0 - hnsw_d[r, :5]
        nodes, f, _ = DF.diffusion_scores(cand, sim, ranker.neighbors, ranker.neighbor_sim, gamma=3.0, a=0.9,
                                          iterations=50, tol=1e-10)
        n = nodes.shape[0]
        np.testing.assert_array_equal(ids[r, :n], nodes[np.argsort(-f, kind="stable")])
        rest = [v for v in hnsw_ids[r] if v not in set(nodes.tolist())]
        np.testing.assert_array_equal(ids[r, n:], rest)  # the tail keeps HNSW order
    # distances are the index distances of the returned items
    qn = ds.queries / np.linalg.norm(ds.queries, axis=1, keepdims=True)
    bn = ds.base / np.linalg.norm(ds.base, axis=1, keepdims=True)
    np.testing.assert_allclose(dists, 1.0 - np.take_along_axis(qn @ bn.T, ids, axis=1), atol=1e-5)
    short, _ = m(ds.queries, 3)
    np.testing.assert_array_equal(short, ids[:, :3])
    assert m.params["k_graph"] == 3 and m.params["a"] == 0.9


def _rings(seed: int):
    """Three classes along concentric arcs (l2), queries every 20th item; ``(dataset, base, labels, rng)``."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, 3 * np.pi, 600)
    lab = np.arange(600) % 3
    base = np.stack([np.cos(t) * (2 + lab * 1.2), np.sin(t) * (2 + lab * 1.2), 0.05 * rng.standard_normal(600)], 1)
    base = (base + 0.05 * rng.standard_normal(base.shape)).astype(np.float32)
    ds = make_clustered(with_gt=False)
    ds.base, ds.base_labels, ds.metric = base, lab, "l2"
    ds.queries, ds.query_labels = base[::20] + 0.01, lab[::20]
    return ds, base, lab, rng


def test_diffusion_helps_on_elongated_classes():
    """Classes along curves: the graph walk follows them, plain distance does not."""
    ds, _, _, _ = _rings(0)
    ctx = MM.BuildContext(ds, ef=100, seed=0, num_threads=1, M=8, ef_construction=100)

    def mapr(method):
        return M.labelled_metrics(method(ds.queries, 200)[0], ds.base_labels, ds.query_labels)["map_at_r"]

    assert mapr(DF.make_diffusion(ctx)) > mapr(MM.make_hnsw(ctx.index, ef=100)) + 0.05


def test_bad_options():
    ds = make_clustered(n_queries=3)
    ctx = MM.BuildContext(ds, ef=32, num_threads=1, M=4, ef_construction=32)
    for bad in ({"a": 1.0}, {"candidates": 0}, {"gamma": 0.0}, {"iterations": 0}, {"k_graph": True}):
        with pytest.raises(ConfigError):
            DF.make_diffusion(ctx, **bad)
    ranker = DF.make_diffusion(ctx).ranker
    for bad in ({"gamma": 0.0, "candidates": 10}, {"gamma": 5.0, "candidates": 0}):
        with pytest.raises(ConfigError):
            ranker.with_settings(**bad)
    assert (ranker.gamma, ranker.candidates) == (5.0, 100)  # unchanged


def test_tune_chooses_on_the_training_queries_only():
    ds, base, lab, rng = _rings(1)
    ds.train_queries, ds.train_query_labels = base[5::20] + 0.01, lab[5::20]
    picks = []
    for garbage in (False, True):  # the evaluation queries play no part in the choice
        ds.queries = rng.normal(size=(30, 3)).astype(np.float32) if garbage else base[::20] + 0.01
        ds.query_labels = lab[::20]
        ctx = MM.BuildContext(ds, ef=100, seed=0, num_threads=1, M=8, ef_construction=100)
        m = DF.make_diffusion(ctx, tune=True)
        tuned = m.params["tuned"]
        assert len(tuned) == len(DF.TUNE_GAMMAS) * len(DF.TUNE_CANDIDATES)
        top = max(tuned, key=lambda r: r["train_map_at_100"])
        assert (m.params["gamma"], m.params["candidates"]) == (top["gamma"], top["candidates"])
        picks.append((m.params["gamma"], m.params["candidates"]))
    assert picks[0] == picks[1]
    assert len({r["train_map_at_100"] for r in tuned}) > 1  # the settings do differ on these queries
