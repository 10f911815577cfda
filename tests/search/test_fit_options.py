"""fit's training toolkit: loss, miner, curriculum, regularizer, optimizer each change training as documented."""

from __future__ import annotations

import numpy as np
import pytest

from ruvector_hnsw.errors import ConfigError
from ruvector_hnsw.search import AttentionSearch
from ruvector_hnsw.search.objectives import (
    LinkLaplacianTerm,
    LocalContrastiveTerm,
    induced_links,
    make_fit_optimizer,
    make_miner,
)
from ruvector_hnsw.search.training import contrastive_loss
from ruvector_hnsw.training import (
    SGD,
    AdamW,
    Curriculum,
    CurriculumStage,
    HardNegativeMiner,
    NaturalGradient,
    RandomNegativeMiner,
    SemiHardNegativeMiner,
)
from tests.search.test_encoder import _encoder, _problem


def _fd_check(enc, call) -> None:
    loss, grads = call()
    assert np.isfinite(loss)
    eps, checked = 1e-6, 0
    for name, param in enc.params.items():
        flat = param.reshape(-1)
        for i in np.random.default_rng(4).choice(flat.size, min(flat.size, 4), replace=False):
            old = flat[i]
            flat[i] = old + eps
            up = call()[0]
            flat[i] = old - eps
            down = call()[0]
            flat[i] = old
            np.testing.assert_allclose(grads[name].reshape(-1)[i], (up - down) / (2 * eps), rtol=1e-4, atol=1e-7,
                                       err_msg=name)
            checked += 1
    assert checked > 10


def _triplet_reference(sim, posmask, valid, margin) -> float:
    rows = []
    for b in range(sim.shape[0]):
        p = sim[b][posmask[b] & valid[b]]
        n = sim[b][~posmask[b] & valid[b]]
        if p.size and n.size:
            rows.append(np.maximum(0.0, margin - p[:, None] + n[None, :]).mean())
    return float(np.mean(rows))


def test_triplet_loss_is_the_margin_loss_of_the_pool_similarities() -> None:
    enc = _encoder()
    table, q, q_in, pool, posmask, v_in = _problem()
    terms: dict[str, float] = {}
    loss, _ = contrastive_loss(enc, table, q, q_in, pool, posmask, v_in, 0.5, objective="triplet", margin=0.3,
                               terms=terms)
    # the reference from the codes themselves
    valid = pool >= 0
    zq = enc.encode(q, table, *q_in).zhat
    rows = np.unique(pool[valid])
    zv = enc.encode(table[rows], table, *v_in(rows)).zhat
    sim = np.zeros(pool.shape)
    sim[valid] = np.einsum("bp,bcp->bc", zq, np.zeros((*pool.shape, zq.shape[1])))[valid]
    for b in range(pool.shape[0]):
        for c in range(pool.shape[1]):
            if valid[b, c]:
                sim[b, c] = zq[b] @ zv[np.searchsorted(rows, pool[b, c])]
    assert loss == pytest.approx(_triplet_reference(sim, posmask, valid, 0.3), rel=1e-10)
    assert terms == {"triplet": loss}
    assert loss != pytest.approx(contrastive_loss(enc, table, q, q_in, pool, posmask, v_in, 0.5)[0])
    _fd_check(enc, lambda: contrastive_loss(enc, table, q, q_in, pool, posmask, v_in, 0.5, objective="triplet",
                                            margin=0.3))


@pytest.mark.parametrize("term", [LocalContrastiveTerm(weight=0.7, negatives=4, temperature=0.3),
                                  LinkLaplacianTerm(weight=0.4)])
def test_code_terms_add_to_the_loss_with_exact_gradients(term) -> None:
    enc = _encoder()
    table, q, q_in, pool, posmask, v_in = _problem()
    base, _ = contrastive_loss(enc, table, q, q_in, pool, posmask, v_in, 0.5)
    terms: dict[str, float] = {}

    def call(**kw):
        return contrastive_loss(enc, table, q, q_in, pool, posmask, v_in, 0.5, code_terms=[term],
                                rng=np.random.default_rng(7), **kw)

    loss, _ = call(terms=terms)
    assert terms[term.name] > 0 and loss == pytest.approx(base + terms[term.name], rel=1e-12)
    _fd_check(enc, call)


def test_induced_links_keep_only_links_among_the_rows() -> None:
    rows = np.array([2, 5, 7, 9])
    nb = np.array([[5, 7, -1], [2, 11, 5], [9, 3, 2], [9, 9, 0]])
    linked = np.array([[True, False, True], [True, True, True], [True, True, True], [True, True, True]])
    indptr, indices = induced_links(rows, nb, linked)
    got = [sorted(rows[indices[indptr[i]:indptr[i + 1]]].tolist()) for i in range(4)]
    assert got == [[5], [2], [2, 9], []]  # unlinked, outside, padding and self links dropped


def _fit(small, **kw):
    index, base_lab, q, q_lab = small
    s = AttentionSearch(index, candidates=30, label_head=False, num_threads=1, seed=0)
    opts = {"epochs": 2, "batch_size": 100, "patience": 5, **kw}
    h = s.fit(q, base_lab, q_lab, **opts)
    return s, h


def _graph_local_loss(s: AttentionSearch) -> float:
    """The graph-local InfoNCE (layer-0 neighbours = positives) of every database row's code."""
    db = s.database_state()
    z = db.codes.z_values().astype(np.float64)
    linked = db.contexts.mask & (db.contexts.layer == 0)
    value, _ = LocalContrastiveTerm()(z, np.arange(z.shape[0]), db.contexts.pos, linked, np.random.default_rng(0))
    return value


def _link_contrast(s: AttentionSearch) -> float:
    """Mean code cosine over the layer-0 links of the database rows minus that of random row pairs."""
    db = s.database_state()
    z = db.codes.z_values()
    pos, mask, layer = db.contexts.pos, db.contexts.mask, db.contexts.layer
    r, c = np.nonzero(mask & (layer == 0))
    linked = float(np.einsum("ij,ij->i", z[r], z[pos[r, c]]).mean())
    a, b = np.random.default_rng(0).integers(0, z.shape[0], (2, 20000))
    return linked - float(np.einsum("ij,ij->i", z[a], z[b]).mean())


@pytest.fixture(scope="module")
def baseline(small):
    return _fit(small)


def test_local_contrastive_and_laplacian_pull_linked_codes_together(small) -> None:
    """Each term moves the codes the way its definition says, beyond what the pool loss alone does."""
    # no validation split: the last parameters are kept (validation may prefer the initial ones)
    s0, h0 = _fit(small, val_fraction=0.0, epochs=3)
    s1, h1 = _fit(small, val_fraction=0.0, epochs=3, loss="local_contrastive", local_weight=5.0)
    s2, h2 = _fit(small, val_fraction=0.0, epochs=3, regularizer="laplacian", reg_weight=5.0)
    assert "local_contrastive" in h1.train_terms[0] and "laplacian" in h2.train_terms[0]
    assert "local_contrastive" not in h0.train_terms[0] and "laplacian" not in h0.train_terms[0]
    # local_contrastive lowers the graph-local InfoNCE of the whole database's codes ...
    l0, l1 = _graph_local_loss(s0), _graph_local_loss(s1)
    assert l1 < l0 - 0.05, (l0, l1)
    # ... the Laplacian brings linked codes closer than random pairs
    c0, c2 = _link_contrast(s0), _link_contrast(s2)
    assert c2 > c0 + 0.01, (c0, c2)


def test_triplet_fit_reports_the_triplet_loss(small, baseline) -> None:
    s, h = _fit(small, loss="triplet", margin=0.3)
    assert set(h.train_terms[0]) == {"triplet"}
    assert not np.allclose(s.model.encoder.params["W_u"], baseline[0].model.encoder.params["W_u"])


class _SpyMiner(HardNegativeMiner):
    def __init__(self) -> None:
        super().__init__(8)
        self.calls: list[tuple[np.ndarray, np.ndarray, int, np.ndarray]] = []

    def __call__(self, candidate_ids, **kw):
        out = super().__call__(candidate_ids, **kw)
        self.calls.append((np.asarray(candidate_ids), np.asarray(kw["positive_mask"]), kw["num_negatives"], out.ids))
        return out


def test_hard_miner_returns_the_highest_scoring_irrelevant_rows(small) -> None:
    _, base_lab, *_ = small
    spy = _SpyMiner()
    s, _ = _fit(small, miner=spy, latent_negatives=6)
    assert len(spy.calls) == 2  # once per epoch
    row_label = base_lab[s.database_state().graph.labels]
    for cand, positive, m, mined in spy.calls:
        assert m == 6 and cand.shape[1] == 24 and mined.shape[1] == 6
        for b in range(cand.shape[0]):
            labs = set(row_label[cand[b][positive[b]]].tolist())
            assert len(labs) <= 1  # the relevant rows of a query share its label
            got = mined[b][mined[b] >= 0]
            assert not (set(row_label[got].tolist()) & labs)  # never a relevant row
            irrelevant = cand[b][(cand[b] >= 0) & ~positive[b]]
            np.testing.assert_array_equal(got, irrelevant[: got.size])  # the best-scoring ones, in order


def test_named_miners_and_optimizers() -> None:
    assert type(make_miner("hard", 5, margin=0.2, seed=0)) is HardNegativeMiner
    semi = make_miner("semihard", 5, margin=0.3, seed=0)
    assert isinstance(semi, SemiHardNegativeMiner) and semi.margin == 0.3
    assert isinstance(make_miner("random", 5, margin=0.2, seed=0), RandomNegativeMiner)
    params = {"w": np.zeros(3)}
    sgd = make_fit_optimizer("sgd", params, lr=0.1, weight_decay=0.0)
    assert isinstance(sgd, SGD) and sgd.momentum == 0.9
    assert isinstance(make_fit_optimizer("adamw", params, lr=0.1, weight_decay=0.0), AdamW)
    ng = make_fit_optimizer("natural", params, lr=0.1, weight_decay=0.0)
    assert isinstance(ng, NaturalGradient) and ng.mode == "diagonal"


@pytest.mark.parametrize("miner", ["semihard", "random"])
def test_other_miners_train_other_models(small, baseline, miner) -> None:
    s, h = _fit(small, miner=miner)
    assert np.isfinite(h.train_loss).all()
    assert not np.allclose(s.model.encoder.params["W_u"], baseline[0].model.encoder.params["W_u"])


def test_curriculum_sets_temperature_and_mined_negatives_per_stage(small, baseline) -> None:
    spy = _SpyMiner()
    cur = Curriculum([CurriculumStage(1, temperature=1.0, num_negatives=4),
                      CurriculumStage(1, temperature=0.1, num_negatives=12)])
    _, h = _fit(small, miner=spy, curriculum=cur)
    assert [c[2] for c in spy.calls] == [4, 12]
    assert [c[3].shape[1] for c in spy.calls] == [4, 12]
    assert h.stage == [0, 1]
    # stage 0 trains at temperature 1.0: a flatter softmax, a larger InfoNCE than at 0.1
    assert h.train_terms[0]["infonce"] > baseline[1].train_terms[0]["infonce"] + 0.1


@pytest.mark.parametrize("optimizer", ["sgd", "adamw", "natural"])
def test_optimizers_train_distinct_models(small, baseline, optimizer) -> None:
    s, h = _fit(small, optimizer=optimizer)
    assert np.isfinite(h.train_loss).all()
    w = s.model.encoder.params["W_u"]
    assert np.isfinite(w).all()
    assert not np.allclose(w, baseline[0].model.encoder.params["W_u"])


@pytest.mark.parametrize("bad", [{"loss": "hinge"}, {"miner": "hardest"}, {"optimizer": "lbfgs"},
                                 {"regularizer": "l2"}, {"curriculum": [1, 2]}, {"margin": -1.0},
                                 {"reg_weight": float("nan")}, {"local_weight": "1"}])
def test_bad_toolkit_options_raise_and_change_nothing(small, bad) -> None:
    index, base_lab, q, q_lab = small
    s = AttentionSearch(index, candidates=30, label_head=False, num_threads=1)
    with pytest.raises(ConfigError, match=next(iter(bad))):
        s.fit(q, base_lab, q_lab, epochs=1, **bad)
    assert not s.fitted
