"""Auxiliary losses of the mechanisms (moe's load balance, info_bottleneck's KL) in the training loss and fit."""

from __future__ import annotations

import numpy as np
import pytest

from ruvector_hnsw.attention import Context
from ruvector_hnsw.attention.info_bottleneck import InfoBottleneckAttention
from ruvector_hnsw.attention.moe import MoEAttention
from ruvector_hnsw.search import AttentionSearch
from ruvector_hnsw.search.encoder import ContextEncoder
from ruvector_hnsw.search.training import contrastive_loss
from tests.search.test_encoder import _problem


def _with_extra(prob, extra):
    table, q, q_in, pool, posmask, v_in = prob
    ids_q, mask_q, ctx_q = q_in
    q_in = (ids_q, mask_q, Context(dist=ctx_q.dist, layer=ctx_q.layer, extra=dict(extra, sample_seed=5)))

    def rows(r):
        ids, mask, ctx = v_in(r)
        return ids, mask, Context(dist=ctx.dist, layer=ctx.layer, extra=dict(extra, sample_seed=6))

    return table, q, q_in, pool, posmask, rows


def _moe() -> ContextEncoder:
    mech = MoEAttention(6, top_k=2, aux_weight=0.7, dtype=np.float64, seed=1)
    return ContextEncoder(mech, 6, 4, seed=3, dtype=np.float64)


def _ib() -> ContextEncoder:
    mech = InfoBottleneckAttention(6, beta=0.4, beta_warmup=10, dtype=np.float64, seed=1)
    return ContextEncoder(mech, 6, 4, seed=3, dtype=np.float64)


@pytest.mark.parametrize(("make", "name"), [(_moe, "load_balance"), (_ib, "kl")])
def test_loss_includes_the_weighted_aux_loss_and_its_gradient(make, name) -> None:
    """The reported loss is InfoNCE + sum(weight * aux) and the gradients are those of that total (FD)."""
    enc = make()
    rng = np.random.default_rng(2)
    for v in enc.params.values():
        v[...] += 0.2 * rng.standard_normal(v.shape)
    table, q, q_in, pool, posmask, v_in = _with_extra(_problem(), {"step": 4})
    terms: dict[str, float] = {}
    loss, grads = contrastive_loss(enc, table, q, q_in, pool, posmask, v_in, 0.5, terms=terms)
    assert set(terms) == {"infonce", name, f"{name}.weight"}
    assert terms[name] > 0 and terms[f"{name}.weight"] > 0
    if name == "kl":  # step 4 of a 10-step linear ramp to 0.4
        assert terms["kl.weight"] == pytest.approx(0.4 * 4 / 10)
    assert loss == pytest.approx(terms["infonce"] + terms[f"{name}.weight"] * terms[name], rel=1e-12)
    eps = 1e-6
    checked = 0
    for pname, param in enc.params.items():
        flat = param.reshape(-1)
        for i in np.random.default_rng(4).choice(flat.size, min(flat.size, 4), replace=False):
            old = flat[i]
            flat[i] = old + eps
            up, _ = contrastive_loss(enc, table, q, q_in, pool, posmask, v_in, 0.5)
            flat[i] = old - eps
            down, _ = contrastive_loss(enc, table, q, q_in, pool, posmask, v_in, 0.5)
            flat[i] = old
            np.testing.assert_allclose(grads[pname].reshape(-1)[i], (up - down) / (2 * eps), rtol=1e-4, atol=1e-7,
                                       err_msg=pname)
            checked += 1
    assert checked > 10


def test_a_mechanism_without_aux_losses_reports_infonce_only() -> None:
    from tests.search.test_encoder import _encoder

    terms: dict[str, float] = {}
    loss, _ = contrastive_loss(_encoder(), *_problem(), 0.5, terms=terms)
    assert terms == {"infonce": loss}


def test_fit_reports_each_aux_loss_in_the_history(small) -> None:
    index, base_lab, q, q_lab = small
    s = AttentionSearch(index, mechanism="info_bottleneck", candidates=30, label_head=False, num_threads=1,
                        beta=0.5, beta_warmup=6)
    h = s.fit(q, base_lab, q_lab, epochs=3, batch_size=100, patience=5)
    assert len(h.train_terms) == len(h.train_loss) == 3
    for loss, terms in zip(h.train_loss, h.train_terms, strict=True):
        assert {"infonce", "kl", "kl.weight"} <= set(terms)
        assert terms["kl"] > 0
        assert loss > terms["infonce"]  # the weighted KL is part of the objective
    # the training step reaches the mechanism: beta is annealed over the 3 steps per epoch
    weights = [t["kl.weight"] for t in h.train_terms]
    assert weights[0] < weights[1] < weights[2] <= 0.5 + 1e-12


def test_fit_of_moe_records_load_balance(small) -> None:
    index, base_lab, q, q_lab = small
    s = AttentionSearch(index, mechanism="moe", candidates=30, label_head=False, num_threads=1, aux_weight=0.05)
    h = s.fit(q, base_lab, q_lab, epochs=1, batch_size=150)
    terms = h.train_terms[0]
    assert terms["load_balance.weight"] == pytest.approx(0.05)
    assert h.train_loss[0] == pytest.approx(terms["infonce"] + 0.05 * terms["load_balance"], rel=1e-9)
