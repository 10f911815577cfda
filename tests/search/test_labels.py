"""The label stage: label-propagation head gradients, the evidence gate, same-class scores, seen and unseen classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ruvector_hnsw import HNSWIndex
from ruvector_hnsw.errors import ConfigError
from ruvector_hnsw.search import AttentionSearch, pipeline, training
from ruvector_hnsw.search.labels import LabelHead, LabelSpace, class_candidates, same_class_log_proba, top_classes
from ruvector_hnsw.search.training import LABEL_WEIGHT_DECAY, choose_head_width, map_at_r_of_rows
from tests.search.test_attention_search import DIM, _index, _labelled


@pytest.mark.parametrize("hidden", [0, 3])
def test_head_gradients_match_finite_differences(hidden: int) -> None:
    rng = np.random.default_rng(0)
    B, d, L, K = 7, 5, 4, 6
    head = LabelHead(d, L, hidden=hidden, seed=1, dtype=np.float64)
    assert ("W1" in head.params) == bool(hidden) and head.params["W"].shape == (L, hidden or d)
    for v in head.params.values():
        v[...] += 0.3 * rng.standard_normal(v.shape)
    u = rng.standard_normal((B, d))
    cls = rng.integers(0, L + 1, (B, K))  # class L: an unknown label (attention, no class)
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
    penalty = 0.05 * sum((head.params[k] ** 2).sum() for k in ("W", "W1") if k in head.params)
    assert np.isclose(loss - penalty, -lp[np.arange(B), target].mean())


def test_evidence_is_the_attention_mass_of_labelled_candidates() -> None:
    rng = np.random.default_rng(3)
    B, d, L, K = 6, 4, 3, 5
    head = LabelHead(d, L, seed=0, dtype=np.float64)
    head.params["tau"][0] = 0.4
    cls = rng.integers(0, L + 1, (B, K))
    cls[0] = L  # no labelled candidate at all
    dist = np.abs(rng.standard_normal((B, K)))
    mask = rng.random((B, K)) > 0.2
    mask[:, 0] = True
    t = np.exp(0.4)
    for b in range(B):
        w = np.where(mask[b], np.exp(-t * dist[b]), 0.0)
        w /= w.sum()
        assert np.isclose(head.evidence(cls, dist, mask)[b], w[(cls[b] < L) & mask[b]].sum())
    e = head.evidence(cls, dist, mask)
    assert e[0] == 0.0 and ((e >= 0) & (e <= 1 + 1e-12)).all()
    # with no labelled candidate the propagation adds nothing: the logits are W u + b
    u = rng.standard_normal((B, d))
    z = head.logits(u, cls, dist, mask)
    np.testing.assert_allclose(z[0], u[0] @ head.params["W"].T + head.params["b"])


def test_same_class_log_proba_matches_a_loop() -> None:
    rng = np.random.default_rng(5)
    B, P, L, N, T = 4, 7, 5, 30, 3
    logp = np.log(rng.dirichlet(np.ones(L), B))
    row_class = rng.integers(0, L + 1, N)  # L = unknown
    uc = np.full((N, T), -1, dtype=np.int64)
    up = np.zeros((N, T), dtype=np.float32)
    for v in np.flatnonzero(row_class == L):
        uc[v], up[v] = top_classes(np.log(rng.dirichlet(np.ones(L)))[None], T)
        uc[v, 2] = -1  # padding inside a prediction is ignored
    pool = rng.integers(-1, N, (B, P))
    got = same_class_log_proba(pool, logp, row_class, uc, up)
    for b in range(B):
        for j in range(P):
            v = pool[b, j]
            if v < 0:
                ref = 0.0
            elif row_class[v] < L:
                ref = logp[b, row_class[v]]
            else:
                ref = np.log(sum(np.exp(logp[b, c]) * up[v, t] for t, c in enumerate(uc[v]) if c >= 0))
            assert np.isclose(got[b, j], ref, rtol=1e-5, atol=1e-6), (b, j)


def test_top_classes_are_the_most_probable() -> None:
    rng = np.random.default_rng(2)
    logp = np.log(rng.dirichlet(np.ones(9), 11))
    cls, p = top_classes(logp, 4)
    ref = np.argsort(-logp, axis=1, kind="stable")[:, :4]
    np.testing.assert_array_equal(cls, ref)
    np.testing.assert_allclose(p, np.exp(np.take_along_axis(logp, ref, axis=1)), rtol=1e-6)


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
    top = rng.integers(0, ls.n_known + 1, 20)  # the last bucket: the unknown rows
    allowed = np.ones(300, dtype=bool)
    allowed[::7] = False
    got = class_candidates(q, x, top, indptr, members, 12, space, allowed)
    for b in range(20):
        rows = np.flatnonzero((ls.row_class == top[b]) & allowed)
        d = ((x[rows] - q[b]) ** 2).sum(1) if space == "l2" else 1 - x[rows] @ q[b]
        ref = rows[np.argsort(d, kind="stable")[:12]]
        assert set(got[b][got[b] >= 0].tolist()) == set(ref.tolist())
    assert ls.has_unknown and ls.n_known == 4 and (ls.row_class[labels == 4] == ls.unknown).all()


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


def test_a_hidden_layer_head_learns_the_labels_saves_exactly_and_takes_its_own_weight_decay(
        tmp_path: Path, monkeypatch) -> None:
    base, base_lab, tq, tq_lab, eq, eq_lab = _labelled()
    idx = _index(base)
    decays: list[float] = []
    train = LabelHead.train

    def spy(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        decays.append(kwargs["weight_decay"])
        return train(self, *args, **kwargs)

    monkeypatch.setattr(LabelHead, "train", spy)
    s = AttentionSearch(idx, k_local=8, k_global=4, candidates=40, label_hidden=16)
    s.fit(tq, labels=base_lab, query_labels=tq_lab, epochs=1, batch_size=64, val_fraction=0.2)
    head = s.model.label_head
    assert head is not None and head.params["W1"].shape == (16, DIM) and head.params["W"].shape[1] == 16
    assert decays and set(decays) == {LABEL_WEIGHT_DECAY[1]}  # the hidden layer's default, every head fit trains
    k = int(max((base_lab == lab).sum() for lab in eq_lab))
    raw = _map(lambda q, kk: idx.search(q, kk, ef=max(kk, 40)), eq, eq_lab, base_lab, k)
    assert s.model.lam > 0 and _map(s.search, eq, eq_lab, base_lab, k) > raw + 0.2
    ref = s.search(eq, k=20)
    s.save(tmp_path / "m")
    loaded = AttentionSearch.load(tmp_path / "m", idx)
    assert loaded.model.label_head is not None and loaded.model.label_head.hidden == 16
    got = loaded.search(eq, k=20)
    np.testing.assert_array_equal(ref[0], got[0])
    np.testing.assert_array_equal(ref[1], got[1])
    decays.clear()
    s = AttentionSearch(idx, k_local=8, k_global=4, candidates=40)
    s.fit(tq, labels=base_lab, query_labels=tq_lab, epochs=1, batch_size=64, val_fraction=0.2,
          label_weight_decay=0.02)
    assert decays and set(decays) == {0.02}


@pytest.mark.parametrize("bad", [-1e-3, float("nan"), "0.1", True])
def test_a_bad_label_weight_decay_is_refused_before_training(bad: object) -> None:
    base, base_lab, tq, tq_lab, _, _ = _labelled()
    s = AttentionSearch(_index(base), k_local=8, k_global=4, candidates=40)
    with pytest.raises(ConfigError, match="label_weight_decay"):
        s.fit(tq, labels=base_lab, query_labels=tq_lab, epochs=1, label_weight_decay=bad)  # type: ignore[arg-type]
    assert not s.fitted


def test_a_negative_label_hidden_is_refused() -> None:
    base = _labelled()[0]
    with pytest.raises(ConfigError, match="label_hidden"):
        AttentionSearch(_index(base), label_hidden=-1)


def _hidden_fit(hide: np.ndarray, seen_q: np.ndarray | None = None):
    base, base_lab, tq, tq_lab, eq, eq_lab = _labelled()
    train_lab = np.where(hide, -1, base_lab)
    keep = np.ones(len(tq), dtype=bool) if seen_q is None else seen_q
    idx = _index(base)
    s = AttentionSearch(idx, k_local=8, k_global=4, candidates=40)
    s.fit(tq[keep], labels=train_lab, query_labels=tq_lab[keep], epochs=2, batch_size=64, val_fraction=0.2)
    return s, idx, base_lab, eq, eq_lab


def test_a_query_among_unlabelled_items_is_ranked_by_the_codes() -> None:
    """Labels of 4 of 12 classes hidden: their queries see no label evidence and fall back to the codes.

    Unknown labels are no class, so nothing sends these queries to "the unlabelled items": where the
    query's neighbourhood carries no label, the label term is 0 and the ranking is the metric one.
    """
    base_lab = _labelled()[1]
    hidden_cls = [0, 1, 2, 3]
    s, idx, base_lab, eq, eq_lab = _hidden_fit(np.isin(base_lab, hidden_cls),
                                              ~np.isin(_labelled()[3], hidden_cls))
    assert s.model.lam > 0
    unseen = np.isin(eq_lab, hidden_cls)
    q, ql = eq[unseen], eq_lab[unseen]
    db = s.database_state()
    qb = pipeline.candidates(idx, db.graph, s.model, q, 40, 40, 1)
    view = pipeline.label_view(s.model, db, qb)
    assert view is not None
    lone = view.evidence == 0.0
    assert lone.mean() > 0.5  # most such queries have no labelled neighbour at all
    with_label = s.search(q[lone], k=20)
    lam, alpha = s.model.lam, s.model.alpha
    s.model.lam, s.model.alpha = 0.0, s.model.alpha_open  # the model without its label stage
    try:
        without = s.search(q[lone], k=20)
    finally:
        s.model.lam, s.model.alpha = lam, alpha
    np.testing.assert_array_equal(with_label[0], without[0])
    np.testing.assert_allclose(with_label[1], without[1], rtol=1e-6, atol=1e-6)
    k = int(max((base_lab == lab).sum() for lab in ql))
    raw = _map(lambda qq, kk: idx.search(qq, kk, ef=max(kk, 40)), q, ql, base_lab, k)
    assert _map(s.search, q, ql, base_lab, k) >= raw - 1e-9  # never below the index there


def test_unlabelled_items_are_ranked_by_their_predicted_class() -> None:
    """A third of all labels hidden at random: unlabelled members of the query's class are still found.

    With "unknown" as a class of its own they were pushed below every labelled item of the
    predicted class; scored by ``P(same class)`` they take their share of the top results.
    """
    base_lab = _labelled()[1]
    hide = np.random.default_rng(9).random(base_lab.shape[0]) < 1 / 3
    s, idx, base_lab, eq, eq_lab = _hidden_fit(hide)
    assert s.model.lam > 0
    k = int(max((base_lab == lab).sum() for lab in eq_lab))
    ids, _ = s.search(eq, k=k)
    rel = base_lab[np.maximum(ids, 0)] == eq_lab[:, None]
    got = ids[rel]
    share = hide[got].mean()  # hidden share among the relevant items returned in the top R
    assert 0.2 < share < 0.5, share
    raw = _map(lambda qq, kk: idx.search(qq, kk, ef=max(kk, 40)), eq, eq_lab, base_lab, k)
    assert _map(s.search, eq, eq_lab, base_lab, k) > raw + 0.05
    assert DIM == idx.dim and isinstance(idx, HNSWIndex)


def test_the_gate_sends_queries_with_little_label_evidence_to_the_label_free_ranking(tmp_path: Path) -> None:
    """Below the gate a query is ranked with ``alpha_open`` and no label term; the gate is saved."""
    base, base_lab, tq, tq_lab, eq, _ = _labelled()
    idx = _index(base)
    s = AttentionSearch(idx, k_local=8, k_global=4, candidates=40)
    s.fit(tq, labels=base_lab, query_labels=tq_lab, epochs=2, batch_size=64, val_fraction=0.2)
    assert s.model.lam > 0 and 0.0 <= s.model.gate < 1.0
    m = s.model
    lam, alpha, gate = m.lam, m.alpha, m.gate
    m.lam, m.alpha = 0.0, m.alpha_open
    free = s.search(eq, k=20)
    m.lam, m.alpha, m.gate = lam, alpha, 2.0  # no query has that much label evidence
    closed = s.search(eq, k=20)
    np.testing.assert_array_equal(closed[0], free[0])
    np.testing.assert_allclose(closed[1], free[1], rtol=1e-5, atol=1e-5)
    m.gate = 0.0  # every query with label evidence gets the label term
    on = s.search(eq, k=20)
    assert (on[0] != free[0]).any(axis=1).mean() > 0.5
    m.gate = 0.6
    ref = s.search(eq, k=20)
    s.save(tmp_path / "m")
    back = AttentionSearch.load(tmp_path / "m", idx)
    assert back.model.gate == 0.6 and back.model.alpha_open == m.alpha_open
    got = back.search(eq, k=20)
    np.testing.assert_array_equal(ref[0], got[0])
    np.testing.assert_array_equal(ref[1], got[1])
    m.gate = gate


def test_choose_gate_serves_held_out_classes_first_then_known_ones() -> None:
    from ruvector_hnsw.search.training import choose_gate

    grid = (0.0, 0.5, 0.9, 2.0)
    # held-out classes lose with the label term; the known ones gain: the lowest gate within 0.005
    # of the best held-out AP that serves the known classes best
    assert choose_gate(grid, [(0.50, 0.90), (0.598, 0.88), (0.60, 0.85), (0.60, 0.70)], 0.005) == 0.5
    assert choose_gate(grid, [(0.50, 0.90), (0.58, 0.88), (0.60, 0.85), (0.60, 0.70)], 0.005) == 0.9
    # the label term helps both: always on; ties go to the lowest gate
    assert choose_gate(grid, [(0.7, 0.9), (0.7, 0.9), (0.6, 0.8), (0.5, 0.7)], 0.005) == 0.0
    # it helps neither: never
    assert choose_gate(grid, [(0.4, 0.6), (0.45, 0.65), (0.5, 0.68), (0.6, 0.7)], 0.005) == 2.0


def test_held_out_classes_are_seeded_and_need_five_classes() -> None:
    from ruvector_hnsw.search.training import held_out_classes

    rows = np.repeat(np.arange(10), 5)
    known = np.ones(rows.size, dtype=bool)
    queries = np.arange(10).repeat(3)
    a = held_out_classes((rows, known, queries), 0)
    assert a is not None and a.size == 2 and set(a.tolist()) <= set(range(10))
    np.testing.assert_array_equal(a, held_out_classes((rows, known, queries), 0))
    assert any(not np.array_equal(a, held_out_classes((rows, known, queries), s)) for s in range(1, 6))
    # classes without a labelled item or without a query do not count
    known[rows >= 4] = False
    assert held_out_classes((rows, known, queries), 0) is None  # 4 classes left


def test_fit_keeps_held_out_classes_out_of_the_encoder(monkeypatch) -> None:
    """The encoder trains on neither the queries nor the items of the held-out classes; their queries calibrate."""
    from ruvector_hnsw.search import training

    seen: dict[str, object] = {}
    real = training.SearchTrainingModel.__init__

    def spy(self, model, db, ts, **kw):  # type: ignore[no-untyped-def]
        seen["pos"], seen["unknown"] = ts.pos_lists, kw["unknown"]
        real(self, model, db, ts, **kw)

    monkeypatch.setattr(training.SearchTrainingModel, "__init__", spy)
    base, base_lab, tq, tq_lab, _, _ = _labelled()
    idx = _index(base)
    s = AttentionSearch(idx, k_local=8, k_global=4, candidates=40)
    s.fit(tq, labels=base_lab, query_labels=tq_lab, epochs=1, batch_size=64, val_fraction=0.2)
    held = training.held_out_classes((base_lab, np.ones(base_lab.size, dtype=bool), tq_lab), 0)
    assert held is not None and held.size == 2
    rows = s.database_state().graph.labels  # ids are rows here
    held_rows = np.isin(base_lab[rows], held)
    unknown = seen["unknown"]
    assert isinstance(unknown, np.ndarray)
    np.testing.assert_array_equal(unknown, held_rows)  # every other label is known
    pos = seen["pos"]
    assert isinstance(pos, list) and len(pos) > 0
    for p in pos:  # no training query of a held-out class: none has a held-out row as a positive
        assert not held_rows[p].any()
    assert s.model.label_head is not None and s.model.label_head.n_classes == 12  # the head learns them all


def test_fit_judges_the_encoders_epochs_on_held_out_classes(monkeypatch) -> None:
    """Early stopping and the best epoch read the held-out classes' queries: how the codes transfer."""
    from ruvector_hnsw.search import training

    validating = {"on": False}
    judged: list[list[np.ndarray]] = []
    real_calibrate, real_trainer = training.calibrate, training.Trainer

    def calibrate(model, db, qb, pos_lists, *a, **kw):  # type: ignore[no-untyped-def]
        if validating["on"]:
            judged.append(pos_lists)
        return real_calibrate(model, db, qb, pos_lists, *a, **kw)

    def trainer(*a, validate=None, **kw):  # type: ignore[no-untyped-def]
        def spy(state):  # type: ignore[no-untyped-def]
            validating["on"] = True
            try:
                return validate(state)
            finally:
                validating["on"] = False

        return real_trainer(*a, validate=None if validate is None else spy, **kw)

    monkeypatch.setattr(training, "calibrate", calibrate)
    monkeypatch.setattr(training, "Trainer", trainer)
    base, base_lab, tq, tq_lab, _, _ = _labelled()
    s = AttentionSearch(_index(base), k_local=8, k_global=4, candidates=40)
    s.fit(tq, labels=base_lab, query_labels=tq_lab, epochs=2, batch_size=64, val_fraction=0.2)
    held = training.held_out_classes((base_lab, np.ones(base_lab.size, dtype=bool), tq_lab), 0)
    assert held is not None
    rows = s.database_state().graph.labels  # ids are rows here
    held_rows = np.isin(base_lab[rows], held)
    assert len(judged) == 3  # before training and after each epoch
    for lists in judged:
        assert len(lists) == int(np.isin(tq_lab, held).sum())  # every held-out class's training query
        assert all(held_rows[p].all() for p in lists)


def test_choose_head_width_needs_a_significant_gain_in_log_loss() -> None:
    rng = np.random.default_rng(0)
    linear = rng.uniform(0.2, 1.0, 400)
    assert choose_head_width(linear, linear - 0.05 + 0.01 * rng.standard_normal(400))  # clearly better
    assert not choose_head_width(linear, linear + 0.05)  # worse
    assert not choose_head_width(linear, linear - 0.01 + 0.5 * rng.standard_normal(400))  # inside the noise
    assert not choose_head_width(linear[:1], linear[:1] - 1.0)  # one query decides nothing


@pytest.mark.parametrize("wide_wins", [True, False])
def test_fit_keeps_the_head_width_the_validation_queries_choose(monkeypatch, wide_wins: bool) -> None:
    widths: list[int] = []
    train = training.train_label_head

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        widths.append(args[7] if len(args) > 7 else kwargs.get("hidden", 0))
        return train(*args, **kwargs)

    monkeypatch.setattr(training, "train_label_head", spy)
    monkeypatch.setattr(training, "choose_head_width", lambda linear, wide: wide_wins)
    base, base_lab, tq, tq_lab, _, _ = _labelled()
    s = AttentionSearch(_index(base), k_local=8, k_global=4, candidates=40)
    s.fit(tq, labels=base_lab, query_labels=tq_lab, epochs=1, batch_size=64, val_fraction=0.2)
    head = s.model.label_head
    assert head is not None and head.hidden == (training.AUTO_HIDDEN if wide_wins else 0)
    assert widths[:2] == [0, training.AUTO_HIDDEN]  # both trained, then the choice
    assert len(widths) == 3 and widths[2] == head.hidden  # the gate's second head takes the chosen width
