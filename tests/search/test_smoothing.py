"""Score smoothing (DBA + score-space query expansion) against numpy references, and its place in the query path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ruvector_hnsw.search import AttentionSearch, smoothing
from ruvector_hnsw.search.quant import CodeRows
from ruvector_hnsw.search.scoring import ResidualScorer
from tests.search.test_diffusion_stage import fitted_labelled


def _dist(a: np.ndarray, b: np.ndarray, space: str) -> np.ndarray:
    if space == "l2":
        return ((a - b) ** 2).sum(-1)
    return 1.0 - (a * b).sum(-1)


def _setup(space: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    N, d, w, B, P = 50, 6, 4, 5, 12
    x = rng.normal(size=(N, d)).astype(np.float32)
    if space != "l2":
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    z = rng.normal(size=(N, w)).astype(np.float32)
    q = rng.normal(size=(B, d)).astype(np.float32)
    if space != "l2":
        q /= np.linalg.norm(q, axis=1, keepdims=True)
    pool = np.stack([rng.choice(N, P, replace=False) for _ in range(B)])
    pool[1, 8:] = -1
    return x, z, q, pool, rng.normal(size=(N, d)).astype(np.float32)


@pytest.mark.parametrize("space", ["cosine", "l2"])
def test_smooth_scores_match_a_numpy_reference(space: str) -> None:
    x, z, q, pool, aug = _setup(space)
    s0, alpha, beta = 0.7, 1.5, 1.0
    scorer = ResidualScorer(alpha=alpha, beta=beta, s0=s0, space=space)
    codes = CodeRows(z)
    zq = np.random.default_rng(1).normal(size=(q.shape[0], z.shape[1])).astype(np.float32)
    scores, dist = scorer.score(q, x, zq, codes, pool, None)
    dba, qe, top = 2.0, 3.0, 3
    got = smoothing.smooth_scores(scorer, q, x, aug, codes, pool, dist, scores, dba, qe, top)
    for b in range(q.shape[0]):
        ok = pool[b] >= 0
        rows = pool[b][ok]
        moved = scores[b][ok] + dba * beta * (_dist(q[b], x[rows], space) - _dist(q[b], aug[rows], space)) / s0
        best = rows[np.argsort(-moved, kind="stable")[:top]]
        # the mean of the top items' own residual scores of each item (augmented vectors: DBA is on)
        item = np.array([[beta * -_dist(aug[t], aug[v], space) / s0 + alpha * z[t] @ z[v] for v in rows] for t in best])
        ref = moved + qe * item.mean(axis=0)
        diff = got[b][ok] - ref
        # cosine: exact; l2: the expanded query differs from the mean by a constant per query
        np.testing.assert_allclose(diff - (diff.mean() if space == "l2" else 0.0), 0.0, atol=2e-4)
        assert np.isneginf(got[b][~ok]).all()


def test_smoothing_off_changes_nothing_and_padding_stays_out() -> None:
    x, z, q, pool, _ = _setup("cosine", 2)
    scorer = ResidualScorer(alpha=0.0, beta=1.0, s0=0.5, space="cosine")
    codes = CodeRows(z)
    scores, dist = scorer.score(q, x, None, codes, pool, None)
    np.testing.assert_array_equal(smoothing.smooth_scores(scorer, q, x, None, codes, pool, dist, scores, 0.0, 0.0, 0),
                                  scores)
    xbar, zbar = smoothing.expanded_query(pool, scores, x, None, 20)  # more than the valid items of row 1
    assert zbar is None
    np.testing.assert_allclose(xbar[1], x[pool[1][:8]].mean(axis=0), rtol=1e-5, atol=1e-6)


def test_fitted_smoothing_is_saved_and_acts_on_open_queries_only(tmp_path: Path) -> None:
    s, idx, eq = fitted_labelled()
    m = s.model
    m.gate = 2.0  # every query is served without the label term
    m.dba_weight, m.qe_weight, m.qe_top = 0.0, 0.0, 0
    plain = s.search(eq, k=20)
    m.dba_weight, m.qe_weight, m.qe_top = 4.0, 4.0, 5
    smooth = s.search(eq, k=20)
    assert (smooth[0] != plain[0]).any(axis=1).mean() > 0.2
    s.save(tmp_path / "m")
    back = AttentionSearch.load(tmp_path / "m", idx)
    assert (back.model.dba_weight, back.model.qe_weight, back.model.qe_top) == (4.0, 4.0, 5)
    again = back.search(eq, k=20)
    np.testing.assert_array_equal(again[0], smooth[0])
    np.testing.assert_array_equal(again[1], smooth[1])
    m.gate = 0.0  # the label term applies to every query: no smoothing
    labelled = s.search(eq, k=20)
    m.dba_weight, m.qe_weight = 0.0, 0.0
    np.testing.assert_array_equal(s.search(eq, k=20)[0], labelled[0])


@pytest.mark.parametrize("space", ["cosine", "l2"])
def test_augmented_vectors_follow_the_index_incrementally(space: str) -> None:
    from ruvector_hnsw import HNSWIndex
    from ruvector_hnsw.search.training_free import dba_vectors

    rng = np.random.default_rng(3)
    idx = HNSWIndex(12, space=space, M=8, ef_construction=60, seed=1)
    idx.add(rng.normal(size=(1500, 12)).astype(np.float32))
    s = AttentionSearch(idx, k_local=16, k_global=4)
    first = s.database_state().augmented_vectors().copy()
    live = ~s.database_state().graph.deleted
    ref = dba_vectors(s.database_state().graph, smoothing.DBA_LINKS, smoothing.DBA_ALPHA)
    np.testing.assert_allclose(first[live], ref[live], rtol=1e-6, atol=1e-6)  # the DBA rule of the baseline
    idx.delete(np.arange(0, 1500, 7))
    idx.add(rng.normal(size=(40, 12)).astype(np.float32), ids=np.arange(0, 280, 7))  # revived: new vectors
    idx.add(rng.normal(size=(100, 12)).astype(np.float32))
    db = s.database_state()
    grown = db.augmented_vectors().copy()
    db._augmented = None  # from scratch
    fresh = db.augmented_vectors()
    assert grown.shape == fresh.shape == (1600, 12)
    np.testing.assert_array_equal(grown, fresh)
    assert not np.array_equal(grown[:1500], first)  # the changes reached old rows too
