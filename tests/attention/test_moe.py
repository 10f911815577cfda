"""Tests of the mixture-of-experts ``moe`` mechanism (routing, aux loss, gradients)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ruvector_hnsw.attention.base import Context
from ruvector_hnsw.attention.moe import EXPERTS, MoEAttention
from ruvector_hnsw.errors import ConfigError, MissingContextError
from tests.attention._reference import gather_and_dense, numeric_grad, scatter_rows
from tests.attention.test_edge_featured import ref_features
from tests.attention.test_edge_featured import ref_forward as ref_edge
from tests.attention.test_hyperbolic import ref_forward as ref_hyp

B, N, D = 6, 5, 4


def ref_sdp(q, K, V, mask):
    s = np.einsum("bd,bnd->bn", q, K) / np.sqrt(q.shape[1])
    s = np.where(mask, s, -np.inf)
    out = np.zeros((q.shape[0], V.shape[2]))
    for b in range(q.shape[0]):
        if mask[b].any():
            e = np.exp(s[b] - s[b].max())
            out[b] = (e / e.sum()) @ V[b]
    return out


def ref_moe(att, q, K, V, mask, ctx):
    """Plain numpy MoE: every expert on every row, then the top-k gate among available experts."""
    p = att.params
    layer = ctx.layer
    exp_masks = {"local": mask & (layer == 0), "global": mask & (layer >= 1), "hierarchical": mask,
                 "structural": mask}
    ys = {}
    for e in att.experts:
        m = exp_masks[e]
        if e in ("local", "global"):
            ys[e] = ref_sdp(q, K, V, m)
        elif e == "hierarchical":
            tau = float(np.exp(p["hierarchical.log_temperature"][0]))
            sc = float(np.exp(p["hierarchical.log_scale"][0]))
            ys[e] = ref_hyp(q, K, V, m, -1.0, 1e-5, tau, "expmap", "tangent", scale=sc)[0]
        else:
            sp = {k.split(".", 1)[1]: v for k, v in p.items() if k.startswith("structural.")}
            F = ref_features(ctx.dist, ctx.layer, ctx.degree, 4)
            ys[e] = ref_edge(sp, q, K, V, F, m)[0]
    logits = q @ p["router_W"] + p["router_b"]
    pr = np.exp(logits - logits.max(axis=1, keepdims=True))
    pr /= pr.sum(axis=1, keepdims=True)
    out = np.zeros((q.shape[0], V.shape[2]))
    gates = np.zeros_like(pr)
    for b in range(q.shape[0]):
        avail = [i for i, e in enumerate(att.experts) if exp_masks[e][b].any()]
        chosen = sorted(avail, key=lambda i: -pr[b, i])[: att.top_k]
        tot = sum(pr[b, i] for i in chosen)
        for i in chosen:
            gates[b, i] = pr[b, i] / tot
            out[b] += gates[b, i] * ys[att.experts[i]][b]
    return out, gates, pr


def make_inputs(seed=0, B_=B):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B_, D))
    K = rng.standard_normal((B_, N, D))
    V = rng.standard_normal((B_, N, D))
    mask = rng.random((B_, N)) > 0.2
    layer = rng.integers(0, 3, (B_, N))
    layer[0] = 0  # row 0: only local items -> "global" unavailable
    layer[1] = 2  # row 1: no local items -> "local" unavailable
    mask[:2] = True
    ctx = Context(dist=rng.random((B_, N)), layer=layer)
    return q, K, V, mask, ctx


def randomize(att, seed=3, scale=0.6):
    rng = np.random.default_rng(seed)
    for v in att.params.values():
        v[...] = rng.standard_normal(v.shape) * scale
    if "hierarchical.log_scale" in att.params:
        # keep the hyperbolic expert's points off the boundary, where the Mobius-form reference
        # (artanh of a norm close to 1) loses digits
        att.params["hierarchical.log_scale"][...] = np.log(0.4)


@pytest.mark.parametrize("top_k", [1, 2, 4])
def test_forward_matches_reference(top_k):
    q, K, V, mask, ctx = make_inputs()
    att = MoEAttention(D, top_k=top_k, dtype=np.float64, seed=0)
    randomize(att)
    out, cache = att.forward(q, K, V, mask, ctx)
    ref_out, ref_g, ref_p = ref_moe(att, q, K, V, mask, ctx)
    np.testing.assert_allclose(out, ref_out, rtol=1e-9, atol=1e-12)
    gates = cache.inspect["gates"]
    np.testing.assert_allclose(gates, ref_g, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(cache.inspect["router_probs"], ref_p, rtol=1e-12)
    assert gates[0, EXPERTS.index("global")] == 0
    assert gates[1, EXPERTS.index("local")] == 0
    np.testing.assert_allclose(gates.sum(axis=1), 1.0)
    assert np.all((gates > 0).sum(axis=1) <= top_k)


def test_weights_are_gate_mixture_and_sum_to_one():
    q, K, V, mask, ctx = make_inputs(1)
    att = MoEAttention(D, dtype=np.float64, seed=0)
    randomize(att)
    _, cache = att.forward(q, K, V, mask, ctx)
    w = att.weights(q, K, mask, ctx)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-12)
    assert np.all(w[~mask] == 0)
    np.testing.assert_allclose(cache.weights, w, rtol=1e-12, atol=1e-15)  # the forward's own mixture
    # experts linear in v (all but hyperbolic): with values v_j = e_j (j < D) and v_4 = 0 the
    # read-out equals the first D mixture weights
    att2 = MoEAttention(D, experts=("local", "global", "structural"), dtype=np.float64, seed=0)
    randomize(att2)
    V1 = np.zeros((B, N, D))
    V1[:, :D, :] = np.eye(D)
    out, cache = att2.forward(q, K, V1, mask, ctx)
    np.testing.assert_allclose(out, att2.weights(q, K, mask, ctx)[:, :D], rtol=1e-10, atol=1e-13)


def test_aux_loss_balanced_is_one_and_grows_with_imbalance():
    q, K, V, mask, ctx = make_inputs(2)
    ctx.layer[:, 0] = 0  # every row can use every expert
    ctx.layer[:, 1] = 1
    mask[:, :2] = True
    att = MoEAttention(D, dtype=np.float64, seed=0)
    att.params["router_W"][...] = 0
    att.params["router_b"][...] = 0
    _, balanced = att.forward(q, K, V, mask, ctx)
    assert dict(balanced.aux_losses) == {"load_balance": pytest.approx(1.0)}
    att.params["router_b"][...] = [5.0, 0.0, 0.0, 0.0]
    _, cache = att.forward(q, K, V, mask, ctx)
    p = cache.inspect["router_probs"]
    sel = cache.inspect["gates"] > 0
    f = sel.sum(axis=0) / sel.sum()
    lb = cache.aux_losses["load_balance"]
    assert lb == pytest.approx(4 * np.sum(f * p.mean(axis=0)))
    assert np.all(sel[:, 0])  # the favoured expert is always taken ...
    assert lb > 1.9  # ... so the loss is far above the balanced 1
    assert balanced.aux_losses["load_balance"] == pytest.approx(1.0)  # each cache keeps its own


@pytest.mark.parametrize(("top_k", "aux_weight"), [(2, 0.0), (2, 0.5), (1, 0.2)])
def test_backward_matches_finite_differences(top_k, aux_weight):
    q, K, V, mask, ctx = make_inputs(4)
    att = MoEAttention(D, top_k=top_k, aux_weight=aux_weight, dtype=np.float64, seed=1,
                       expert_config={"structural": {"hidden": 3}})
    randomize(att, scale=0.5)
    rng = np.random.default_rng(9)
    out, cache = att.forward(q, K, V, mask, ctx)
    G = rng.standard_normal(out.shape)
    grads = att.backward(cache, G)

    def loss():
        o, c = att.forward(q, K, V, mask, ctx)
        return float(np.sum(o * G)) + aux_weight * c.aux_losses["load_balance"]

    items = [*att.params.items(), ("query", q), ("keys", K), ("values", V)]
    assert set(grads) == {k for k, _ in items}
    for name, arr in items:
        num = numeric_grad(loss, arr, 1e-6)
        np.testing.assert_allclose(grads[name], num, atol=1e-6, rtol=1e-5, err_msg=name)


def test_gather_form_matches_dense():
    rng = np.random.default_rng(5)
    table = rng.standard_normal((15, D))
    ids = rng.integers(0, 15, (B, N))
    ids[2, 1] = -1
    q, _, _, _, ctx = make_inputs(5)
    att = MoEAttention(D, dtype=np.float64, seed=2)
    randomize(att)
    out_g, gg, out_d, gd = gather_and_dense(att, q, table, ids, ctx, rng=rng)
    np.testing.assert_allclose(out_g, out_d, rtol=1e-10, atol=1e-13)
    for name in ("keys", "values"):
        np.testing.assert_allclose(gg[name], scatter_rows(gd[name], ids, table), rtol=1e-9, atol=1e-12)
    for name in att.params:
        np.testing.assert_allclose(gg[name], gd[name], rtol=1e-9, atol=1e-12)


def test_fully_masked_row_unbatched_and_determinism():
    q, K, V, mask, ctx = make_inputs(6)
    mask[3] = False
    att = MoEAttention(D, dtype=np.float64, seed=7)
    out, cache = att.forward(q, K, V, mask, ctx)
    assert np.all(out[3] == 0) and np.all(cache.inspect["gates"][3] == 0)
    assert np.all(att.weights(q, K, mask, ctx)[3] == 0)
    g = att.backward(cache, np.ones_like(out))
    assert all(np.isfinite(v).all() for v in g.values())
    assert np.all(g["keys"][3] == 0)
    one, cache = att.forward(q[4], K[4], V[4], mask[4], Context(dist=ctx.dist[4], layer=ctx.layer[4]))
    np.testing.assert_allclose(one, out[4], rtol=1e-12)
    other = MoEAttention(D, dtype=np.float64, seed=7)
    np.testing.assert_array_equal(other.forward(q, K, V, mask, ctx)[0], out)


def test_errors():
    q, K, V, mask, ctx = make_inputs()
    att = MoEAttention(D, seed=0)
    with pytest.raises(MissingContextError, match="layer"):
        att.forward(q, K, V, mask)
    with pytest.raises(MissingContextError, match="dist"):
        att.forward(q, K, V, mask, Context(layer=ctx.layer))
    # hierarchical alone needs no context
    MoEAttention(D, experts=["hierarchical"], top_k=1).forward(q, K, V, mask)
    for bad in ({"experts": ("local", "bogus")}, {"experts": ("local", "local")}, {"experts": ()},
                {"experts": "local"}, {"top_k": 5}, {"top_k": 0}, {"aux_weight": -1.0},
                {"expert_config": {"structural": {"hidden": 2}}, "experts": ("local",), "top_k": 1}):
        with pytest.raises(ConfigError):
            MoEAttention(D, **bad)


@settings(max_examples=20, deadline=None)
@given(log_scale=st.floats(-6, 6), seed=st.integers(0, 10_000), top_k=st.integers(1, 4))
def test_finite_any_scale(log_scale, seed, top_k):
    rng = np.random.default_rng(seed)
    s = 10.0**log_scale
    q = (rng.standard_normal((4, D)) * s).astype(np.float32)
    K = (rng.standard_normal((4, N, D)) * s).astype(np.float32)
    V = (rng.standard_normal((4, N, D)) * s).astype(np.float32)
    mask = rng.random((4, N)) > 0.3
    ctx = Context(dist=(rng.random((4, N)) * s).astype(np.float32), layer=rng.integers(0, 3, (4, N)))
    att = MoEAttention(D, top_k=top_k, seed=seed)
    out, cache = att.forward(q, K, V, mask, ctx)
    assert np.isfinite(out).all() and np.isfinite(cache.aux_losses["load_balance"])
    assert np.all(out[~mask.any(axis=1)] == 0)
    g = att.backward(cache, np.ones_like(out))
    assert all(np.isfinite(v).all() for v in g.values())


def test_identical_keys_give_uniform_weights():
    rng = np.random.default_rng(2)
    q = rng.standard_normal((3, D))
    K = np.repeat(rng.standard_normal((3, 1, D)), N, axis=1)
    ctx = Context(dist=np.full((3, N), 0.3), layer=np.zeros((3, N), dtype=np.int8))  # one layer: no global
    att = MoEAttention(D, seed=0)
    w = att.weights(q, K, None, ctx)
    np.testing.assert_allclose(w, 1 / N, rtol=1e-6)


def test_config_round_trip():
    q, K, V, mask, ctx = make_inputs(10)
    a = MoEAttention(D, top_k=3, aux_weight=0.1, expert_config={"structural": {"hidden": 3}}, seed=4)
    b = MoEAttention(**a.get_config())
    np.testing.assert_array_equal(a.forward(q, K, V, mask, ctx)[0], b.forward(q, K, V, mask, ctx)[0])


def test_nonfinite_referenced_rows_raise():
    from ruvector_hnsw.errors import NonFiniteError

    rng = np.random.default_rng(0)
    table = rng.standard_normal((12, D))
    table[11] = np.nan  # never referenced
    ids = rng.integers(0, 11, (B, N))
    q, _, _, _, ctx = make_inputs(0)
    att = MoEAttention(D, top_k=4, seed=0)
    assert np.isfinite(att.forward(q, table, table, None, ctx, ids=ids)[0]).all()
    ids[2, 0] = 11
    with pytest.raises(NonFiniteError):
        att.forward(q, table, table, None, ctx, ids=ids)
