"""The diffusion stage: the kernel against a dense solve, and its place in the query path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ruvector_hnsw import HNSWIndex
from ruvector_hnsw.search import AttentionSearch, diffusion, pipeline
from tests.search.test_attention_search import _index, _labelled


def _dense_f(nodes: np.ndarray, nbr: np.ndarray, nbr_sim: np.ndarray, y: np.ndarray, gamma: float) -> np.ndarray:
    """``(I - A S)^-1 y`` with numpy: W over the links among ``nodes`` (max over both ends), S = D^-1/2 W D^-1/2."""
    n = nodes.shape[0]
    where = {int(v): i for i, v in enumerate(nodes)}
    W = np.zeros((n, n))
    for i, u in enumerate(nodes):
        for j in range(nbr.shape[1]):
            v = int(nbr[u, j])
            if v < 0 or v not in where or where[v] == i:
                continue
            w = max(float(nbr_sim[u, j]), 0.0) ** gamma
            a, b = i, where[v]
            W[a, b] = W[b, a] = max(W[a, b], w)
    d = W.sum(axis=1)
    dinv = np.where(d > 0, 1.0 / np.sqrt(np.where(d > 0, d, 1.0)), 0.0)
    S = dinv[:, None] * W * dinv[None, :]
    return np.linalg.solve(np.eye(n) - diffusion.A * S, y)


@pytest.mark.parametrize("gamma", [diffusion.GAMMA, 20.0])
def test_diffusion_values_match_a_dense_solve(gamma: float) -> None:
    rng = np.random.default_rng(0)
    N, K, B, S = 60, 4, 5, 6
    nbr = rng.integers(0, N, (N, K))
    nbr[rng.random((N, K)) < 0.15] = -1
    nbr_sim = rng.uniform(0.3, 1.0, (N, K)).astype(np.float32)
    seeds = np.stack([rng.choice(N, S, replace=False) for _ in range(B)])
    seeds[1, 4:] = -1
    sim = rng.uniform(0.2, 1.0, (B, S))
    ids, f = diffusion.diffuse(seeds, sim, nbr, nbr_sim, gamma)
    for b in range(B):
        nodes = diffusion.gather_nodes(seeds[b], nbr)
        got = ids[b][ids[b] >= 0]
        np.testing.assert_array_equal(got, nodes)  # seeds first, in order, then their links
        y = np.zeros(nodes.size)
        valid = seeds[b][seeds[b] >= 0]
        y[: valid.size] = np.maximum(sim[b][seeds[b] >= 0], 0.0) ** gamma
        ref = _dense_f(nodes, nbr, nbr_sim, y, gamma)
        np.testing.assert_allclose(f[b, : nodes.size], ref / ref.max(), rtol=1e-4, atol=1e-6)
        assert (f[b, nodes.size :] == 0).all()


def test_affinity_is_the_max_symmetrised_links_one_entry_per_column_ascending() -> None:
    rng = np.random.default_rng(3)
    N, K = 90, 6
    nbr = rng.integers(0, N, (N, K))
    nbr[:, 0] = 7  # a hub: more in-links than the short rows' insertion sort takes
    nbr[5, 1] = nbr[5, 2]  # one row holds a link twice
    nbr[rng.random((N, K)) < 0.1] = -1
    nbr_sim = rng.uniform(-0.2, 1.0, (N, K)).astype(np.float32)
    nodes = diffusion.gather_nodes(np.concatenate([[7, 5, 11, -1, 40, 5], rng.permutation(N)[:60]]), nbr)
    assert nodes[:4].tolist() == [7, 5, 11, 40]  # the candidates once each, in order, then their links
    assert np.unique(nodes).size == nodes.size
    gamma = 3.0
    indptr, indices, data = diffusion.build_affinity(nodes, nbr, nbr_sim, gamma)
    n = nodes.size
    where = {int(v): i for i, v in enumerate(nodes)}
    ref = np.zeros((n, n))
    for i, u in enumerate(nodes):
        for j in range(K):
            v = int(nbr[u, j])
            if v >= 0 and v in where and where[v] != i:
                w = max(float(nbr_sim[u, j]), 0.0) ** gamma
                a, b = i, where[v]
                ref[a, b] = ref[b, a] = max(ref[a, b], w)
    got = np.zeros((n, n))
    rows = np.repeat(np.arange(n), np.diff(indptr))
    np.add.at(got, (rows, indices), data)  # a column written twice in a row would add up here
    np.testing.assert_array_equal(got, ref)
    assert max(np.diff(indptr)) > 32
    for i in range(n):
        assert (np.diff(indices[indptr[i]:indptr[i + 1]]) > 0).all()  # one entry per column, ascending


def test_log_weight_keeps_the_order_of_small_values() -> None:
    f = np.array([1.0, 0.5, 1e-3, 1e-4, np.exp(-diffusion.LOG_RANGE) / 2, 0.0])
    w = diffusion.log_weight(f)
    assert w.dtype == np.float32
    np.testing.assert_allclose(w[:4], 1.0 + np.log(f[:4]) / diffusion.LOG_RANGE, rtol=1e-6)
    assert w[0] == 1.0 and (np.diff(w[:4]) < 0).all()  # tiny values stay apart (a linear weight: 1e-3 ~ 1e-4)
    assert w[4] == 0.0 and w[5] == 0.0


def test_values_at_looks_up_each_querys_own_values() -> None:
    rng = np.random.default_rng(1)
    B, W, P, n = 7, 12, 9, 30
    ids = np.stack([rng.permutation(n)[:W] for _ in range(B)])
    ids[2, 5:] = -1
    vals = rng.random((B, W)).astype(np.float32)
    rows = rng.integers(-1, n, (B, P))
    got = pipeline.values_at(ids, vals, rows, n)
    for b in range(B):
        ref = {int(i): float(v) for i, v in zip(ids[b], vals[b], strict=True) if i >= 0}
        np.testing.assert_array_equal(got[b], [ref.get(int(r), 0.0) if r >= 0 else 0.0 for r in rows[b]])


def fitted_labelled() -> tuple[AttentionSearch, HNSWIndex, np.ndarray]:
    """A small model fitted with labels (label head on), its index and evaluation queries."""
    base, base_lab, tq, tq_lab, eq, _ = _labelled()
    idx = _index(base)
    s = AttentionSearch(idx, k_local=8, k_global=4, candidates=40)
    s.fit(tq, labels=base_lab, query_labels=tq_lab, epochs=1, batch_size=64, val_fraction=0.2)
    return s, idx, eq


def test_the_stage_reranks_only_queries_without_the_label_term(tmp_path: Path) -> None:
    s, idx, eq = fitted_labelled()
    m = s.model
    assert m.lam > 0
    mu = m.mu
    m.mu = 0.0
    plain = s.search(eq, k=20)
    m.mu = 10.0
    db = s.database_state()
    qb = pipeline.candidates(idx, db.graph, m, eq, 40, 40, 1)
    view = pipeline.label_view(m, db, qb)
    assert view is not None
    m.gate = float(np.median(view.evidence))  # about half the queries get the label term
    on = view.applies(m.gate)
    assert 0 < on.sum() < on.size
    got = s.search(eq, k=20)
    m.mu = 0.0
    ref = s.search(eq, k=20)
    cand, _ = idx.search(eq, k=40, ef=40)
    np.testing.assert_array_equal(got[0][on], ref[0][on])  # label-term queries: no diffusion
    assert (got[0][~on] != ref[0][~on]).any(axis=1).mean() > 0.3
    m.mu, m.diffusion_gamma = 10.0, 20.0
    sharp = s.search(eq, k=20)
    assert (sharp[0][~on] != got[0][~on]).any(axis=1).mean() > 0.1  # gamma acts on the stage
    np.testing.assert_array_equal(sharp[0][on], ref[0][on])
    grown = [len(set(sharp[0][i].tolist()) - set(cand[i].tolist())) for i in np.flatnonzero(~on)]
    assert np.mean(grown) > 0  # the diffusion's nodes join the pool ...
    kept = s.search(eq, k=20, expand=0)[0]
    assert all(set(kept[i].tolist()) <= set(cand[i].tolist()) for i in np.flatnonzero(~on))  # ... not at expand=0
    got = sharp
    s.save(tmp_path / "m")
    back = AttentionSearch.load(tmp_path / "m", idx)
    assert back.model.mu == 10.0 and back.model.diffusion_gamma == 20.0
    again = back.search(eq, k=20)
    np.testing.assert_array_equal(again[0], got[0])
    np.testing.assert_array_equal(again[1], got[1])
    m.mu = mu
    assert plain[0].shape == got[0].shape
