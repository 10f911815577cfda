"""The known-label demotion of the open path: against a numpy reference, its calibration and its place in the path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ruvector_hnsw.search import AttentionSearch, pipeline
from tests.search.test_attention_search import DIM, _index, _labelled, _map_at_r

#: classes of ``_labelled`` whose items are unlabelled and whose queries are evaluated (never trained on)
UNSEEN = (0, 1, 2)


def test_penalty_matches_a_numpy_reference() -> None:
    rng = np.random.default_rng(0)
    N, B, P, C = 40, 6, 10, 5
    row_class = rng.integers(0, C + 1, N)  # C: unknown
    proba = rng.dirichlet(np.ones(C), B).astype(np.float32)
    pool = np.stack([rng.choice(N, P, replace=False) for _ in range(B)])
    pool[2, 6:] = -1
    rows = np.array([True, True, True, False, True, True])
    width = rng.uniform(0.5, 2.0, B)
    got = pipeline.Demotion(row_class=row_class, proba=np.concatenate([proba, np.zeros((B, 1), np.float32)], 1),
                            step=np.where(rows, 3.0 * width, 0.0).astype(np.float32)[:, None])
    scores = rng.normal(size=(B, P)).astype(np.float32)
    scores[pool < 0] = -np.inf
    out = got(pool, scores)
    for b in range(B):
        for j in range(P):
            v = pool[b, j]
            if v < 0:
                assert np.isneginf(out[b, j])
                continue
            c = row_class[v]
            lost = 3.0 * width[b] * (1.0 - proba[b, c]) if rows[b] and c < C else 0.0
            assert out[b, j] == pytest.approx(scores[b, j] - lost, abs=1e-5)


def test_of_reads_the_models_labels_and_is_off_at_weight_zero() -> None:
    base, base_lab, tq, tq_lab, eq, _ = _labelled()
    idx = _index(base)
    s = AttentionSearch(idx, k_local=8, k_global=4, candidates=40)
    s.fit(tq, labels=base_lab, query_labels=tq_lab, epochs=1, batch_size=64, val_fraction=0.2)
    m, db = s.model, s.database_state()
    qb = pipeline.candidates(idx, db.graph, m, eq, 40, 40, 1)
    view = pipeline.label_view(m, db, qb)
    assert view is not None and m.labels is not None
    width = np.linspace(0.5, 1.5, eq.shape[0])
    rows = np.arange(eq.shape[0]) % 2 == 0
    d = pipeline.Demotion.of(m, db, view, width, rows, weight=2.0)
    np.testing.assert_array_equal(d.row_class, db.row_class(m.labels))
    np.testing.assert_allclose(d.proba[:, :-1], np.exp(view.logp), rtol=1e-6)
    assert (d.proba[:, -1] == 0).all()
    np.testing.assert_allclose(d.step[:, 0], np.where(rows, 2.0 * width, 0.0), rtol=1e-6)
    pool = qb.hnsw_rows
    assert (d.penalty(pool)[~rows] == 0).all() and (d.penalty(pool)[rows] > 0).any()
    off = pipeline.Demotion.of(m, db, view, width, rows, weight=0.0)
    scores = np.ones(pool.shape, np.float32)
    np.testing.assert_array_equal(off(pool, scores), scores)
    assert pipeline.Demotion.of(m, db, None, width, rows, weight=2.0).row_class is None


def _unseen_split(seed: int = 5, classes: int = 12, n_per: int = 120):
    """Overlapping Gaussian classes; the :data:`UNSEEN` classes' items unlabelled, their queries evaluated.

    Returns ``base, base labels, the labels fit gets, training queries, their labels, evaluation
    queries, their labels``; the training queries are of the other classes only.
    """
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((classes, DIM)) * 0.7

    def draw(m: int) -> tuple[np.ndarray, np.ndarray]:
        lab = rng.integers(0, classes, m)
        return (centers[lab] + rng.standard_normal((m, DIM))).astype(np.float32), lab

    base, base_lab = draw(n_per * classes)
    q, q_lab = draw(600)
    keep = ~np.isin(q_lab[:400], UNSEEN)
    ev = 400 + np.flatnonzero(np.isin(q_lab[400:], UNSEEN))
    fit_lab = np.where(np.isin(base_lab, UNSEEN), -1, base_lab)
    return base, base_lab, fit_lab, q[:400][keep], q_lab[:400][keep], q[ev], q_lab[ev]


@pytest.fixture(scope="module")
def unseen_fits():
    base, base_lab, fit_lab, tq, tq_lab, eq, eq_lab = _unseen_split()
    idx = _index(base)
    fits = {}
    for demote in (True, False):
        s = AttentionSearch(idx, k_local=8, k_global=4, candidates=40, demote=demote)
        s.fit(tq, labels=fit_lab, query_labels=tq_lab, epochs=2, batch_size=64, val_fraction=0.2)
        fits[demote] = s
    return fits, idx, base_lab, eq, eq_lab


def test_fit_calibrates_the_demotion_on_held_out_classes_and_it_serves_unseen_ones(unseen_fits) -> None:
    fits, _idx, base_lab, eq, eq_lab = unseen_fits
    on, off = fits[True], fits[False]
    assert on.model.demote_known > 0.0
    assert off.model.demote_known == 0.0  # the ablation never demotes
    m = on.model
    got = _map_at_r(on.search, eq, eq_lab, base_lab, 60)
    weight = m.demote_known
    m.demote_known = 0.0
    without = _map_at_r(on.search, eq, eq_lab, base_lab, 60)
    m.demote_known = weight
    assert got > without + 0.02  # unseen-class queries find their (unlabelled) class ahead of labelled items


def test_fitted_demotion_is_saved_and_acts_on_open_queries_only(unseen_fits, tmp_path: Path) -> None:
    fits, idx, _base_lab, eq, _ = unseen_fits
    s = fits[True]
    m = s.model
    weight, gate = m.demote_known, m.gate
    db = s.database_state()
    view = pipeline.label_view(m, db, pipeline.candidates(idx, db.graph, m, eq, 40, 40, 1))
    assert view is not None
    try:
        m.gate = float(np.median(view.evidence))  # about half the queries get the label term
        on = view.applies(m.gate)
        assert 0 < on.sum() < on.size
        m.demote_known = 0.0
        plain = s.search(eq, k=20)
        m.demote_known = weight
        demoted = s.search(eq, k=20)
        np.testing.assert_array_equal(demoted[0][on], plain[0][on])  # label-term queries: no demotion
        assert (demoted[0][~on] != plain[0][~on]).any(axis=1).mean() > 0.2
        s.save(tmp_path / "m")
        back = type(s).load(tmp_path / "m", idx)
        assert back.model.demote_known == weight and back.model.config.demote
        again = back.search(eq, k=20)
        np.testing.assert_array_equal(again[0], demoted[0])
        np.testing.assert_array_equal(again[1], demoted[1])
    finally:
        m.demote_known, m.gate = weight, gate


def test_the_demotion_alone_still_reranks_hnsws_candidates(unseen_fits) -> None:
    fits, idx, _base_lab, eq, _ = unseen_fits
    s = fits[True]
    m = s.model
    saved = {name: getattr(m, name) for name in ("alpha", "lam", "mu", "dba_weight", "qe_weight", "demote_known")}
    try:
        m.alpha = m.lam = m.mu = m.dba_weight = m.qe_weight = 0.0
        m.demote_known = 0.0
        ids, _ = s.search(eq, k=20)
        ref, _ = idx.search(eq, k=20, ef=40)
        np.testing.assert_array_equal(ids, ref)  # nothing on: HNSW's ranking
        m.demote_known = 1000.0
        ids, _ = s.search(eq, k=20)
        assert (ids != ref).any(axis=1).mean() > 0.2
        cand, _ = idx.search(eq, k=40, ef=40)
        assert all(set(ids[i].tolist()) <= set(cand[i].tolist()) for i in range(len(eq)))  # re-ranks, adds nothing
    finally:
        for name, value in saved.items():
            setattr(m, name, value)


def test_items_added_after_fit_count_as_unlabelled() -> None:
    base, _base_lab, fit_lab, tq, tq_lab, eq, _ = _unseen_split(seed=7)
    idx = _index(base)
    s = AttentionSearch(idx, k_local=8, k_global=4, candidates=40)
    s.fit(tq, labels=fit_lab, query_labels=tq_lab, epochs=1, batch_size=64, val_fraction=0.2)
    m = s.model
    n0 = len(idx)
    idx.add(eq[:5] + np.float32(0.01))  # near the evaluation queries, so they reach the pools
    db = s.database_state()
    qb = pipeline.candidates(idx, db.graph, m, eq, 40, 40, 1)
    view = pipeline.label_view(m, db, qb)
    assert view is not None
    d = pipeline.Demotion.of(m, db, view, np.ones(eq.shape[0]), np.ones(eq.shape[0], dtype=bool), weight=5.0)
    pool = qb.hnsw_rows
    lost = d.penalty(pool)
    new = pool >= n0
    assert new.any()
    assert (lost[new] == 0).all()  # no label: nothing to demote
    labelled = (pool >= 0) & (pool < n0) & (fit_lab[np.clip(pool, 0, n0 - 1)] >= 0)
    assert (lost[labelled] > 0).any()
