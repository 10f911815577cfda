"""Tests of ``dual_space`` (graph + FAISS latent + cross attention) against a numpy reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ruvector_hnsw.attention.dual_space import DualSpaceAttention
from ruvector_hnsw.errors import ConfigError, DimensionMismatchError, NotFittedError
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
    att = DualSpaceAttention(D, database=db, latent_metric=metric, dtype=dtype, seed=seed, **kw)
    att.params["W_f"][...] = rng.standard_normal((D, 3)) * 0.5
    att.params["b_f"][...] = rng.standard_normal(3) * 0.5
    return att, db, q, K, V, mask


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_forward_matches_reference_and_brute_force_neighbours(metric):
    att, db, q, K, V, mask = make(0, metric)
    out = att.forward(q, K, V, mask)
    lids = att.last_latent_ids
    ref_ids = brute_latent_ids(q, db, att.params["P"], 4, metric)
    np.testing.assert_array_equal(np.sort(lids, axis=1), np.sort(ref_ids, axis=1))
    np.testing.assert_allclose(out, ref_forward(att, q, K, V, mask, db, lids), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(att.last_gate.sum(axis=1), 1.0)
    np.testing.assert_array_equal(att.latent_neighbors(q), lids)


def test_float32_path():
    att, db, q, K, V, mask = make(1, dtype=np.float32)
    out = att.forward(q, K, V, mask)
    assert out.dtype == np.float32
    p64 = {k: v.astype(np.float64) for k, v in att.params.items()}
    att64 = DualSpaceAttention(D, database=db, k_latent=4, latent_dim=3, dtype=np.float64, seed=1)
    att64.set_params(p64)
    att64.refresh_index()
    ref = ref_forward(att64, q, K, V, mask, db, att.last_latent_ids)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_pca_init_spans_top_components():
    rng = np.random.default_rng(0)
    scales = np.array([10.0, 5.0, 3.0, 0.1, 0.1, 0.1])
    db = rng.standard_normal((200, D)) * scales
    att = DualSpaceAttention(D, database=db, latent_dim=3, dtype=np.float64, seed=0)
    P = att.params["P"]
    np.testing.assert_allclose(P.T @ P, np.eye(3), atol=1e-10)
    # P spans the top-3 principal subspace (reference: SVD of the centred data)
    _, _, vt = np.linalg.svd(db - db.mean(axis=0), full_matrices=False)
    np.testing.assert_allclose(P @ P.T, vt[:3].T @ vt[:3], atol=1e-8)
    rand = DualSpaceAttention(D, database=db, latent_dim=3, init="random", dtype=np.float64, seed=0)
    assert not np.allclose(rand.params["P"], P)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_backward_matches_finite_differences(metric):
    att, _, q, K, V, mask = make(2, metric)
    rng = np.random.default_rng(3)
    out = att.forward(q, K, V, mask)
    ids0 = att.last_latent_ids.copy()
    G = rng.standard_normal(out.shape)
    grads = att.backward(G)

    def loss():
        return float(np.sum(att.forward(q, K, V, mask) * G))

    items = [*att.params.items(), ("query", q), ("keys", K), ("values", V)]
    assert set(grads) == {k for k, _ in items}
    for name, arr in items:
        num = numeric_grad(loss, arr, 1e-6)
        np.testing.assert_allclose(grads[name], num, atol=1e-6, rtol=1e-5, err_msg=name)
    att.forward(q, K, V, mask)
    np.testing.assert_array_equal(att.last_latent_ids, ids0)  # the FD steps did not change neighbours


def test_refresh_auto_and_manual():
    att, db, q, K, V, mask = make(4, k_latent=5)
    att.params["P"][...] = np.random.default_rng(9).standard_normal(att.params["P"].shape)
    att.forward(q, K, V, mask)
    new_ref = brute_latent_ids(q, db, att.params["P"], 5, "l2")
    np.testing.assert_array_equal(np.sort(att.last_latent_ids, 1), np.sort(new_ref, 1))
    man, db, q, K, V, mask = make(4, k_latent=5, refresh="manual")
    before = man.latent_neighbors(q)
    man.params["P"][...] = np.random.default_rng(9).standard_normal(man.params["P"].shape)
    np.testing.assert_array_equal(man.latent_neighbors(q), before)  # stale until refreshed
    man.refresh_index()
    ref = brute_latent_ids(q, db, man.params["P"], 5, "l2")
    np.testing.assert_array_equal(np.sort(man.latent_neighbors(q), 1), np.sort(ref, 1))


def test_gather_form_matches_dense():
    att, db, q, _, _, _ = make(5)
    rng = np.random.default_rng(1)
    ids = rng.integers(0, NDB, (B, N))
    ids[1, 3] = -1
    out_g, gg, out_d, gd = gather_and_dense(att, q, db, ids, rng=rng)
    np.testing.assert_allclose(out_g, out_d, rtol=1e-12)
    np.testing.assert_allclose(gg["keys"], scatter_rows(gd["keys"], ids, db), rtol=1e-10, atol=1e-13)


def test_fully_masked_row_unbatched_and_small_database():
    att, db, q, K, V, mask = make(6)
    mask[2] = False
    out = att.forward(q, K, V, mask)
    assert np.isfinite(out).all()
    assert np.all(att.weights(q, K, mask)[2] == 0)
    g = att.backward(np.ones_like(out))
    assert np.all(g["keys"][2] == 0) and np.all(g["values"][2] == 0)
    ref = ref_forward(att, q, K, V, mask, db, att.last_latent_ids)
    np.testing.assert_allclose(out[2], ref[2], rtol=1e-10)  # graph read-out 0, latent + cross remain
    np.testing.assert_allclose(att.forward(q[1], K[1], V[1], mask[1]), out[1], rtol=1e-12)
    small = DualSpaceAttention(D, database=db[:3], k_latent=6, latent_dim=2, dtype=np.float64)
    o = small.forward(q, K, V, mask)
    assert np.isfinite(o).all() and np.all(small.last_latent_ids[:, 3:] == -1)
    small.backward(np.ones_like(o))


def test_errors():
    rng = np.random.default_rng(0)
    q, K = rng.standard_normal((B, D)), rng.standard_normal((B, N, D))
    att = DualSpaceAttention(D, seed=0)
    with pytest.raises(NotFittedError, match="database"):
        att.forward(q, K, K)
    with pytest.raises(NotFittedError, match="set_database"):
        att.latent_neighbors(q)
    with pytest.raises(DimensionMismatchError, match="database"):
        att.set_database(rng.standard_normal((10, D + 1)))
    assert att.database is None
    att.set_database(rng.standard_normal((10, D)))
    with pytest.raises(DimensionMismatchError, match="values"):
        att.forward(q, K, rng.standard_normal((B, N, 3)))
    for bad in ({"k_latent": 0}, {"latent_dim": D + 1}, {"init": "svd"}, {"latent_metric": "cos"},
                {"index_kind": "lsh"}, {"refresh": "never"}):
        with pytest.raises(ConfigError):
            DualSpaceAttention(D, **bad)


def test_deterministic_given_seed():
    a, _, q, K, V, mask = make(7)
    b, *_ = make(7)
    np.testing.assert_array_equal(a.forward(q, K, V, mask), b.forward(q, K, V, mask))


@settings(max_examples=20, deadline=None)
@given(log_scale=st.floats(-6, 6), seed=st.integers(0, 10_000))
def test_finite_any_scale(log_scale, seed):
    rng = np.random.default_rng(seed)
    s = 10.0**log_scale
    db = (rng.standard_normal((30, D)) * s).astype(np.float32)
    q = (rng.standard_normal((3, D)) * s).astype(np.float32)
    K = (rng.standard_normal((3, N, D)) * s).astype(np.float32)
    mask = rng.random((3, N)) > 0.3
    att = DualSpaceAttention(D, database=db, k_latent=4, latent_dim=3, seed=seed)
    out = att.forward(q, K, K, mask)
    assert np.isfinite(out).all()
    g = att.backward(np.ones_like(out))
    assert all(np.isfinite(v).all() for v in g.values())


def test_gather_form_adopts_key_table_unless_pinned():
    rng = np.random.default_rng(3)
    db = rng.standard_normal((NDB, D))
    q = rng.standard_normal((B, D))
    ids = rng.integers(0, NDB, (B, N))
    att = DualSpaceAttention(D, k_latent=4, latent_dim=3, dtype=np.float64, seed=0)
    with pytest.raises(NotFittedError, match="gather form"):
        att.forward(q, db[ids], db[ids])
    att.forward(q, db, db, ids=ids)
    assert att.database is not None and att.database.shape == (NDB, D)
    P = att.params["P"]
    np.testing.assert_allclose(P.T @ P, np.eye(3), atol=1e-10)  # PCA at adoption
    np.testing.assert_array_equal(
        np.sort(att.last_latent_ids, 1), np.sort(brute_latent_ids(q, db, P, 4, "l2"), 1)
    )
    # a grown table (after adds) is re-adopted; its new rows can be latent neighbours
    bigger = np.concatenate([db, q + 1e-3])
    att.forward(q, bigger, bigger, ids=ids)
    assert att.database.shape == (NDB + B, D)
    assert np.all(att.last_latent_ids[:, 0] >= NDB)  # each query's near-copy is nearest
    # a pinned database is kept
    pinned = DualSpaceAttention(D, database=db, k_latent=4, latent_dim=3, dtype=np.float64, seed=0)
    pinned.forward(q, bigger, bigger, ids=ids)
    assert pinned.database.shape == (NDB, D)


def test_identical_keys_give_uniform_graph_weights():
    att, _, q, K, _, mask = make(8)
    Ks = np.repeat(K[:, :1], N, axis=1)
    w = att.weights(q, Ks, mask)
    np.testing.assert_allclose(w, mask / mask.sum(axis=1, keepdims=True), rtol=1e-12)


def test_restored_projection_is_not_overwritten_by_pca():
    rng = np.random.default_rng(4)
    db = rng.standard_normal((NDB, D))
    trained = rng.standard_normal((D, 3))
    att = DualSpaceAttention(D, k_latent=4, latent_dim=3, dtype=np.float64, seed=0)
    att.set_params({"P": trained})  # e.g. loaded from a checkpoint
    att.forward(rng.standard_normal((2, D)), db, db, ids=np.array([[0, 1, 2, -1, 3], [4, 5, 6, 7, 8]]))
    np.testing.assert_array_equal(att.params["P"], trained)


def test_config_round_trip():
    a, db, q, K, V, mask = make(11)
    b = DualSpaceAttention(**a.get_config(), database=db)
    b.set_params({k: v for k, v in a.params.items()})
    np.testing.assert_array_equal(a.forward(q, K, V, mask), b.forward(q, K, V, mask))


def test_nonfinite_rows_raise():
    from ruvector_hnsw.errors import NonFiniteError

    att, db, q, _, _, _ = make(12)
    table = db.copy()
    table[-1] = np.inf
    ids = np.tile(np.arange(N), (B, 1))
    with pytest.raises(NonFiniteError, match="dual_space"):
        att.forward(q, table, table, ids=np.where(ids == 0, NDB - 1, ids))
    auto = DualSpaceAttention(D, k_latent=4, latent_dim=3)
    with pytest.raises(NonFiniteError):
        auto.forward(q, table, table, ids=ids)  # adopting a table with inf rows
    assert auto.database is None
