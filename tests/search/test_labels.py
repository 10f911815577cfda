"""The label stage: label-propagation head gradients, class-first candidates, seen and unseen classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ruvector_hnsw import HNSWIndex
from ruvector_hnsw.search import AttentionSearch
from ruvector_hnsw.search.labels import LabelHead, LabelSpace, class_candidates
from ruvector_hnsw.search.training import map_at_r_of_rows
from tests.search.test_attention_search import DIM, _index, _labelled


def test_head_gradients_match_finite_differences() -> None:
    rng = np.random.default_rng(0)
    B, d, L, K = 7, 5, 4, 6
    head = LabelHead(d, L, seed=1, dtype=np.float64)
    for v in head.params.values():
        v[...] += 0.3 * rng.standard_normal(v.shape)
    u = rng.standard_normal((B, d))
    cls = rng.integers(0, L, (B, K))
    dist = np.abs(rng.standard_normal((B, K)))
    mask = rng.random((B, K)) > 0.2
    mask[:, 0] = True
    target = rng.integers(0, L, B)
    loss, grads = head.loss_and_grads(u, cls, dist, mask, target, weight_decay=0.1)
    eps = 1e-6
    for name, p in head.params.items():
        flat = p.reshape(-1)
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + eps
            up, _ = head.loss_and_grads(u, cls, dist, mask, target, weight_decay=0.1)
            flat[i] = old - eps
            down, _ = head.loss_and_grads(u, cls, dist, mask, target, weight_decay=0.1)
            flat[i] = old
            np.testing.assert_allclose(grads[name].reshape(-1)[i], (up - down) / (2 * eps), rtol=1e-5, atol=1e-8,
                                       err_msg=name)
    # log_proba is the normalised logits
    lp = head.log_proba(u, cls, dist, mask)
    np.testing.assert_allclose(np.exp(lp).sum(axis=1), 1.0, atol=1e-12)
    assert np.isclose(loss - 0.05 * (head.params["W"] ** 2).sum(), -lp[np.arange(B), target].mean())


@pytest.mark.parametrize("space", ["l2", "cosine"])
def test_class_candidates_are_the_nearest_members(space: str) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 8)).astype(np.float32)
    if space == "cosine":
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = rng.integers(0, 5, 300)
    ls = LabelSpace.of(labels, labels != 4)  # class 4 unknown
    indptr, members = ls.members()
    q = x[:20] + 0.01
    top = rng.integers(0, ls.n_classes, 20)
    allowed = np.ones(300, dtype=bool)
    allowed[::7] = False
    got = class_candidates(q, x, top, indptr, members, 12, space, allowed)
    for b in range(20):
        rows = np.flatnonzero((ls.row_class == top[b]) & allowed)
        d = ((x[rows] - q[b]) ** 2).sum(1) if space == "l2" else 1 - x[rows] @ q[b]
        ref = rows[np.argsort(d, kind="stable")[:12]]
        assert set(got[b][got[b] >= 0].tolist()) == set(ref.tolist())
    assert ls.has_unknown and ls.n_classes == 5 and (ls.row_class[labels == 4] == ls.unknown).all()


def _map(search, q, qlab, rel_lab, k):
    ids, _ = search(q, k)
    return map_at_r_of_rows(ids, [np.flatnonzero(rel_lab == lab) for lab in qlab])


def test_default_model_learns_the_labels_and_saves_exactly(tmp_path: Path) -> None:
    base, base_lab, tq, tq_lab, eq, eq_lab = _labelled()
    idx = _index(base)
    s = AttentionSearch(idx, k_local=8, k_global=4, candidates=40)
    s.fit(tq, labels=base_lab, query_labels=tq_lab, epochs=2, batch_size=64, val_fraction=0.2)
    k = int(max((base_lab == lab).sum() for lab in eq_lab))
    raw = _map(lambda q, kk: idx.search(q, kk, ef=max(kk, 40)), eq, eq_lab, base_lab, k)
    ours = _map(s.search, eq, eq_lab, base_lab, k)
    assert s.model.lam > 0 and ours > raw + 0.2, (raw, ours, s.model.lam, s.alpha)
    ref = s.search(eq, k=20)
    for rep in range(3):
        s.save(tmp_path / f"m{rep}")
        s = AttentionSearch.load(tmp_path / f"m{rep}", idx)
        got = s.search(eq, k=20)
        np.testing.assert_array_equal(ref[0], got[0])
        np.testing.assert_allclose(ref[1], got[1], atol=1e-6)


def test_unseen_classes_get_the_unlabelled_items_first() -> None:
    """Labels of 4 of 12 classes hidden: queries of those classes must not be sent to a seen class."""
    base, base_lab, tq, tq_lab, eq, eq_lab = _labelled()
    hidden = np.isin(base_lab, [0, 1, 2, 3])
    train_lab = np.where(hidden, -1, base_lab)
    seen_q = ~np.isin(tq_lab, [0, 1, 2, 3])
    idx = _index(base)
    s = AttentionSearch(idx, k_local=8, k_global=4, candidates=40)
    s.fit(tq[seen_q], labels=train_lab, query_labels=tq_lab[seen_q], epochs=2, batch_size=64, val_fraction=0.2)
    unseen = np.isin(eq_lab, [0, 1, 2, 3])
    q, ql = eq[unseen], eq_lab[unseen]
    k = int(max((base_lab == lab).sum() for lab in ql))
    raw = _map(lambda qq, kk: idx.search(qq, kk, ef=max(kk, 40)), q, ql, base_lab, k)
    ours = _map(s.search, q, ql, base_lab, k)
    assert ours > raw, (raw, ours, s.model.lam)
    ids, _ = s.search(q, k=10)
    assert hidden[ids[ids >= 0]].mean() > 0.8  # the unlabelled items come first
    assert DIM == base.shape[1] and isinstance(idx, HNSWIndex)
