"""Tests of ``dual_space`` (graph + FAISS latent + cross attention) against a numpy reference, and of
its explicit table state (``prepare_table`` -> ``Context(table_state=...)``)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ruvector_hnsw.attention import Context
from ruvector_hnsw.attention.dual_space import DualSpaceAttention, LatentTableState
from ruvector_hnsw.errors import (
    ConfigError,
    DimensionMismatchError,
    EmptyInputError,
    InvalidInputError,
    MissingContextError,
    NonFiniteError,
    ShapeMismatchError,
)
from tests.attention._reference import gather_and_dense, numeric_grad, scatter_rows

B, N, D, NDB = 4, 5, 6, 40


def softmax_rows(s, mask):
    out = np.zeros_like(s)
    for b in range(s.shape[0]):
        if mask[b].any():
            e = np.where(mask[b], np.exp(s[b] - s[b][mask[b]].max()), 0.0)
            out[b] = e / e.sum()
    return out


def brute_latent_ids(q, db, P, k, metric):
    zq, Z = q @ P, db @ P
    if metric == "l2":
        d = ((zq[:, None, :] - Z[None]) ** 2).sum(-1)
    else:
        d = -(zq @ Z.T)
    return np.argsort(d, axis=1, kind="stable")[:, :k]


def ref_forward(att, q, K, V, mask, db, lids):
    p = att.params
    P, dl = p["P"], att.latent_dim
    X = db[lids]
    Z = X @ P

    def lat(a):
        s = np.einsum("bl,bml->bm", a, Z)
        if att.latent_metric == "l2":
            s = s - 0.5 * (Z * Z).sum(-1)
        return s / np.sqrt(dl)

    og = np.einsum("bn,bnd->bd", softmax_rows(np.einsum("bd,bnd->bn", q, K) / np.sqrt(D), mask), V)
    allm = np.ones(lids.shape, bool)
    ol = np.einsum("bm,bmd->bd", softmax_rows(lat(q @ P), allm), X)
    oc = np.einsum("bm,bmd->bd", softmax_rows(lat(og @ P), allm), X)
    g = softmax_rows(q @ p["W_f"] + p["b_f"], np.ones((q.shape[0], 3), bool))
    return g[:, :1] * og + g[:, 1:2] * ol + g[:, 2:] * oc


def make(seed=0, metric="l2", dtype=np.float64, **kw):
    rng = np.random.default_rng(seed)
    db = rng.standard_normal((NDB, D))
    q = rng.standard_normal((B, D))
    K = rng.standard_normal((B, N, D))
    V = rng.standard_normal((B, N, D))
    mask = rng.random((B, N)) > 0.3
    mask[:, 0] = True
    kw.setdefault("k_latent", 4)
    kw.setdefault("latent_dim", 3)
    att = DualSpaceAttention(D, latent_metric=metric, dtype=dtype, seed=seed, **kw)
    ctx = Context(table_state=att.prepare_table(db))
    att.params["W_f"][...] = rng.standard_normal((D, 3)) * 0.5
    att.params["b_f"][...] = rng.standard_normal(3) * 0.5
    return att, db, q, K, V, mask, ctx


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_forward_matches_reference_and_brute_force_neighbours(metric):
    att, db, q, K, V, mask, ctx = make(0, metric)
    out, cache = att.forward(q, K, V, mask, context=ctx)
    lids = cache.inspect["latent_ids"]
    ref_ids = brute_latent_ids(q, db, att.params["P"], 4, metric)
    np.testing.assert_array_equal(np.sort(lids, axis=1), np.sort(ref_ids, axis=1))
    np.testing.assert_allclose(out, ref_forward(att, q, K, V, mask, db, lids), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(cache.inspect["gate"].sum(axis=1), 1.0)
    np.testing.assert_array_equal(att.latent_neighbors(q, ctx.table_state), lids)
    np.testing.assert_allclose(cache.weights, att.weights(q, K, mask), rtol=1e-12)  # the graph weights


def test_float32_path():
    att, db, q, K, V, mask, ctx = make(1, dtype=np.float32)
    out, cache = att.forward(q, K, V, mask, context=ctx)
    assert out.dtype == np.float32
    p64 = {k: v.astype(np.float64) for k, v in att.params.items()}
    att64 = DualSpaceAttention(D, k_latent=4, latent_dim=3, dtype=np.float64, seed=1)
    att64.set_params(p64)
    ref = ref_forward(att64, q, K, V, mask, db, cache.inspect["latent_ids"])
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_pca_init_spans_top_components_once():
    rng = np.random.default_rng(0)
    scales = np.array([10.0, 5.0, 3.0, 0.1, 0.1, 0.1])
    db = rng.standard_normal((200, D)) * scales
    att = DualSpaceAttention(D, latent_dim=3, dtype=np.float64, seed=0)
    att.prepare_table(db)
    P = att.params["P"]
    np.testing.assert_allclose(P.T @ P, np.eye(3), atol=1e-10)
    # P spans the top-3 principal subspace (reference: SVD of the centred data)
    _, _, vt = np.linalg.svd(db - db.mean(axis=0), full_matrices=False)
    np.testing.assert_allclose(P @ P.T, vt[:3].T @ vt[:3], atol=1e-8)
    before = P.copy()
    att.prepare_table(rng.standard_normal((50, D)))  # a later table does not re-initialise P
    np.testing.assert_array_equal(att.params["P"], before)
    rand = DualSpaceAttention(D, latent_dim=3, init="random", dtype=np.float64, seed=0)
    P0 = rand.params["P"].copy()
    rand.prepare_table(db)
    np.testing.assert_array_equal(rand.params["P"], P0)
    assert not np.allclose(P0, P)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_backward_matches_finite_differences(metric):
    att, _, q, K, V, mask, ctx = make(2, metric)
    rng = np.random.default_rng(3)
    out, cache = att.forward(q, K, V, mask, context=ctx)
    ids0 = cache.inspect["latent_ids"].copy()
    G = rng.standard_normal(out.shape)
    grads = att.backward(cache, G)

    def loss():
        return float(np.sum(att.forward(q, K, V, mask, context=ctx)[0] * G))

    items = [*att.params.items(), ("query", q), ("keys", K), ("values", V)]
    assert set(grads) == {k for k, _ in items}
    for name, arr in items:
        num = numeric_grad(loss, arr, 1e-6)
        np.testing.assert_allclose(grads[name], num, atol=1e-6, rtol=1e-5, err_msg=name)
    _, again = att.forward(q, K, V, mask, context=ctx)
    np.testing.assert_array_equal(again.inspect["latent_ids"], ids0)  # the FD steps did not change neighbours


def test_state_is_refreshed_only_by_prepare_table():
    att, db, q, K, V, mask, ctx = make(4, k_latent=5)
    old_P = att.params["P"].copy()
    state = ctx.table_state
    _, before = att.forward(q, K, V, mask, context=ctx)
    att.params["P"][...] = np.random.default_rng(9).standard_normal(att.params["P"].shape)  # a training step
    np.testing.assert_array_equal(state.projection, old_P)  # the state keeps its own copy of P
    _, stale = att.forward(q, K, V, mask, context=ctx)
    np.testing.assert_array_equal(stale.inspect["latent_ids"], before.inspect["latent_ids"])  # no rebuild
    np.testing.assert_array_equal(att.latent_neighbors(q, state), before.inspect["latent_ids"])
    fresh = att.prepare_table(db)
    assert fresh is not state
    _, new = att.forward(q, K, V, mask, context=Context(table_state=fresh))
    ref = brute_latent_ids(q, db, att.params["P"], 5, "l2")
    np.testing.assert_array_equal(np.sort(new.inspect["latent_ids"], 1), np.sort(ref, 1))
    assert not np.array_equal(np.sort(ref, 1), np.sort(before.inspect["latent_ids"], 1))


def test_gather_form_matches_dense():
    att, db, q, _, _, _, ctx = make(5)
    rng = np.random.default_rng(1)
    ids = rng.integers(0, NDB, (B, N))
    ids[1, 3] = -1
    out_g, gg, out_d, gd = gather_and_dense(att, q, db, ids, ctx, rng=rng)
    np.testing.assert_allclose(out_g, out_d, rtol=1e-12)
    np.testing.assert_allclose(gg["keys"], scatter_rows(gd["keys"], ids, db), rtol=1e-10, atol=1e-13)


def test_fully_masked_row_unbatched_and_small_database():
    att, db, q, K, V, mask, ctx = make(6)
    mask[2] = False
    out, cache = att.forward(q, K, V, mask, context=ctx)
    assert np.isfinite(out).all()
    assert np.all(att.weights(q, K, mask)[2] == 0)
    g = att.backward(cache, np.ones_like(out))
    assert np.all(g["keys"][2] == 0) and np.all(g["values"][2] == 0)
    ref = ref_forward(att, q, K, V, mask, db, cache.inspect["latent_ids"])
    np.testing.assert_allclose(out[2], ref[2], rtol=1e-10)  # graph read-out 0, latent + cross remain
    one, one_cache = att.forward(q[1], K[1], V[1], mask[1], context=ctx)
    np.testing.assert_allclose(one, out[1], rtol=1e-12)
    assert one_cache.inspect["latent_ids"].shape == (4,) and one_cache.inspect["gate"].shape == (3,)
    small = DualSpaceAttention(D, k_latent=6, latent_dim=2, dtype=np.float64)
    o, c = small.forward(q, K, V, mask, context=Context(table_state=small.prepare_table(db[:3])))
    assert np.isfinite(o).all() and np.all(c.inspect["latent_ids"][:, 3:] == -1)
    small.backward(c, np.ones_like(o))


def test_errors():
    rng = np.random.default_rng(0)
    q, K = rng.standard_normal((B, D)), rng.standard_normal((B, N, D))
    table = rng.standard_normal((10, D))
    ids = rng.integers(0, 10, (B, N))
    att = DualSpaceAttention(D, seed=0)
    P0 = att.params["P"].copy()
    for args, kw in (((q, K, K), {}), ((q, table, table), {"ids": ids}),
                     ((q, table, table), {"ids": ids, "context": Context(dist=np.ones((B, N)))})):
        with pytest.raises(MissingContextError, match="prepare_table"):
            att.forward(*args, **kw)
    with pytest.raises(InvalidInputError, match="prepare_table"):
        att.forward(q, K, K, context=Context(table_state="not a state"))
    with pytest.raises(InvalidInputError, match="prepare_table"):
        att.latent_neighbors(q, None)
    with pytest.raises(DimensionMismatchError, match="table"):
        att.prepare_table(rng.standard_normal((10, D + 1)))
    with pytest.raises(EmptyInputError):
        att.prepare_table(np.zeros((0, D)))
    bad = table.copy()
    bad[3, 1] = np.inf
    with pytest.raises(NonFiniteError):
        att.prepare_table(bad)
    np.testing.assert_array_equal(att.params["P"], P0)  # rejected tables leave P (PCA) alone
    ctx = Context(table_state=att.prepare_table(table))
    with pytest.raises(DimensionMismatchError, match="values"):
        att.forward(q, K, rng.standard_normal((B, N, 3)), context=ctx)
    bigger = np.concatenate([table, table])
    with pytest.raises(ShapeMismatchError, match="prepare_table"):
        att.forward(q, bigger, bigger, ids=ids, context=ctx)  # the table changed: state is stale
    other = DualSpaceAttention(D, latent_dim=2, seed=0)
    with pytest.raises(InvalidInputError, match="different configuration"):
        other.forward(q, K, K, context=ctx)
    as64 = DualSpaceAttention(D, dtype=np.float64, seed=0)
    with pytest.raises(InvalidInputError, match="different configuration"):
        as64.forward(q, K, K, context=ctx)
    for bad_cfg in ({"k_latent": 0}, {"latent_dim": D + 1}, {"init": "svd"}, {"latent_metric": "cos"},
                    {"index_kind": "lsh"}, {"num_threads": 0}):
        with pytest.raises(ConfigError):
            DualSpaceAttention(D, **bad_cfg)


def test_deterministic_given_seed():
    a, _, q, K, V, mask, ca = make(7)
    b, *_, cb = make(7)
    np.testing.assert_array_equal(a.forward(q, K, V, mask, context=ca)[0], b.forward(q, K, V, mask, context=cb)[0])


@settings(max_examples=20, deadline=None)
@given(log_scale=st.floats(-6, 6), seed=st.integers(0, 10_000))
def test_finite_any_scale(log_scale, seed):
    rng = np.random.default_rng(seed)
    s = 10.0**log_scale
    db = (rng.standard_normal((30, D)) * s).astype(np.float32)
    q = (rng.standard_normal((3, D)) * s).astype(np.float32)
    K = (rng.standard_normal((3, N, D)) * s).astype(np.float32)
    mask = rng.random((3, N)) > 0.3
    att = DualSpaceAttention(D, k_latent=4, latent_dim=3, seed=seed)
    out, cache = att.forward(q, K, K, mask, context=Context(table_state=att.prepare_table(db)))
    assert np.isfinite(out).all()
    g = att.backward(cache, np.ones_like(out))
    assert all(np.isfinite(v).all() for v in g.values())


def test_gather_form_uses_the_prepared_table_state():
    rng = np.random.default_rng(3)
    db = rng.standard_normal((NDB, D))
    q = rng.standard_normal((B, D))
    ids = rng.integers(0, NDB, (B, N))
    att = DualSpaceAttention(D, k_latent=4, latent_dim=3, dtype=np.float64, seed=0)
    state = att.prepare_table(db)
    assert isinstance(state, LatentTableState) and state.shape == (NDB, D)
    P = att.params["P"]
    np.testing.assert_allclose(P.T @ P, np.eye(3), atol=1e-10)  # PCA at the first preparation
    _, cache = att.forward(q, db, db, ids=ids, context=Context(table_state=state))
    np.testing.assert_array_equal(
        np.sort(cache.inspect["latent_ids"], 1), np.sort(brute_latent_ids(q, db, P, 4, "l2"), 1)
    )
    # a grown table (after adds) needs a new state; its new rows can then be latent neighbours
    bigger = np.concatenate([db, q + 1e-3])
    with pytest.raises(ShapeMismatchError, match="prepare_table"):
        att.forward(q, bigger, bigger, ids=ids, context=Context(table_state=state))
    grown = att.prepare_table(bigger)
    _, cache = att.forward(q, bigger, bigger, ids=ids, context=Context(table_state=grown))
    assert np.all(cache.inspect["latent_ids"][:, 0] >= NDB)  # each query's near-copy is nearest


def test_table_state_pickles_and_other_index_kinds():
    att, db, q, K, V, mask, ctx = make(10)
    out, cache = att.forward(q, K, V, mask, context=ctx)
    clone = pickle.loads(pickle.dumps(ctx.table_state))
    assert isinstance(clone, LatentTableState) and clone.shape == ctx.table_state.shape
    out2, cache2 = att.forward(q, K, V, mask, context=Context(table_state=clone))
    np.testing.assert_array_equal(out2, out)
    np.testing.assert_array_equal(cache2.inspect["latent_ids"], cache.inspect["latent_ids"])
    for kind in ("hnsw", "ivf"):
        alt, *_ = make(10, index_kind=kind)
        st = alt.prepare_table(db)
        o, c = alt.forward(q, K, V, mask, context=Context(table_state=st))
        assert np.isfinite(o).all() and c.inspect["latent_ids"].shape == (B, 4)
        again = pickle.loads(pickle.dumps(st))
        assert again.index_kind == kind and again.shape == st.shape


def test_identical_keys_give_uniform_graph_weights():
    att, _, q, K, _, mask, _ = make(8)
    Ks = np.repeat(K[:, :1], N, axis=1)
    w = att.weights(q, Ks, mask)  # the graph weights need no table state
    np.testing.assert_allclose(w, mask / mask.sum(axis=1, keepdims=True), rtol=1e-12)


def test_restored_projection_is_not_overwritten_by_pca():
    rng = np.random.default_rng(4)
    db = rng.standard_normal((NDB, D))
    trained = rng.standard_normal((D, 3))
    att = DualSpaceAttention(D, k_latent=4, latent_dim=3, dtype=np.float64, seed=0)
    att.set_params({"P": trained})  # e.g. loaded from a checkpoint
    state = att.prepare_table(db)
    np.testing.assert_array_equal(att.params["P"], trained)
    np.testing.assert_array_equal(state.projection, trained)


def test_config_round_trip():
    a, db, q, K, V, mask, ctx = make(11)
    b = DualSpaceAttention(**a.get_config())
    b.set_params({k: v for k, v in a.params.items()})
    cb = Context(table_state=b.prepare_table(db))
    np.testing.assert_array_equal(a.forward(q, K, V, mask, context=ctx)[0], b.forward(q, K, V, mask, context=cb)[0])


def test_nonfinite_rows_raise():
    att, db, q, _, _, _, ctx = make(12)
    table = db.copy()
    table[-1] = np.inf
    ids = np.tile(np.arange(N), (B, 1))
    with pytest.raises(NonFiniteError, match="dual_space"):
        att.forward(q, table, table, ids=np.where(ids == 0, NDB - 1, ids), context=ctx)
    fresh = DualSpaceAttention(D, k_latent=4, latent_dim=3)
    with pytest.raises(NonFiniteError):
        fresh.prepare_table(table)  # a table with inf rows cannot be indexed
