"""Tests of the GATv2-style ``edge_featured`` mechanism against a plain-numpy reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ruvector_hnsw.attention.base import Context
from ruvector_hnsw.attention.edge_featured import EdgeFeaturedAttention
from ruvector_hnsw.errors import ConfigError, DimensionMismatchError, MissingContextError, ShapeMismatchError
from tests.attention._reference import gather_and_dense, numeric_grad, scatter_rows, with_threads

B, N, D = 3, 6, 5


def ref_features(dist, layer, degree, num_layers):
    B_, n_ = dist.shape
    f = np.zeros((B_, n_, 2 + num_layers))
    f[:, :, 0] = dist
    if degree is not None:
        f[:, :, 1] = np.log1p(degree)
    for b in range(B_):
        for j in range(n_):
            f[b, j, 2 + min(max(int(layer[b, j]), 0), num_layers - 1)] = 1.0
    return f


def ref_forward(p, q, K, V, F, mask, slope=0.2):
    """Row-by-row plain numpy GATv2 attention."""
    B_, n_, _ = K.shape
    outs, ws = [], []
    for b in range(B_):
        s = np.full(n_, -np.inf)
        for j in range(n_):
            if mask[b, j]:
                z = q[b] @ p["W_q"] + K[b, j] @ p["W_k"] + F[b, j] @ p["W_e"] + p["b"]
                s[j] = p["a"] @ np.where(z > 0, z, slope * z)
        if not mask[b].any():
            w = np.zeros(n_)
        else:
            e = np.exp(s - s[mask[b]].max())
            w = e / e.sum()
        agg = w @ V[b]
        outs.append(agg @ p["W_v"] if "W_v" in p else agg)
        ws.append(w)
    return np.array(outs), np.array(ws)


def make_inputs(seed=0, dv=D, B_=B, n_=N):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B_, D))
    K = rng.standard_normal((B_, n_, D))
    V = rng.standard_normal((B_, n_, dv))
    mask = rng.random((B_, n_)) > 0.3
    mask[:, 0] = True
    ctx = Context(
        dist=rng.random((B_, n_)) * 2,
        layer=rng.integers(0, 6, (B_, n_)),
        degree=rng.integers(1, 20, (B_, n_)).astype(float),
    )
    return q, K, V, mask, ctx


def randomize(att, seed=5):
    rng = np.random.default_rng(seed)
    for v in att.params.values():
        v[...] = rng.standard_normal(v.shape) * 0.7


def fd_check(att, q, K, V, mask, ctx, ids=None, eps=1e-6, tol=1e-6):
    rng = np.random.default_rng(11)
    out, cache = att.forward(q, K, V, mask, ctx, ids=ids)
    G = rng.standard_normal(out.shape)
    grads = att.backward(cache, G)

    def loss():
        return float(np.sum(att.forward(q, K, V, mask, ctx, ids=ids)[0] * G))

    items = [*att.params.items(), ("query", q), ("keys", K), ("values", V)]
    assert set(grads) == {name for name, _ in items}
    for name, arr in items:
        num = numeric_grad(loss, arr, eps)
        assert grads[name].shape == arr.shape, name
        np.testing.assert_allclose(grads[name], num, atol=tol, rtol=1e-5, err_msg=name)


@pytest.mark.parametrize("project_values", [True, False])
def test_forward_matches_reference(project_values):
    q, K, V, mask, ctx = make_inputs()
    att = EdgeFeaturedAttention(D, hidden=7, project_values=project_values, dtype=np.float64, seed=0)
    randomize(att)
    out, _ = att.forward(q, K, V, mask, ctx)
    F = ref_features(ctx.dist, ctx.layer, ctx.degree, att.num_layers)
    ref_out, ref_w = ref_forward(att.params, q, K, V, F, mask)
    np.testing.assert_allclose(out, ref_out, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(att.weights(q, K, mask, ctx), ref_w, rtol=1e-10, atol=1e-12)


def test_float32_matches_reference():
    q, K, V, mask, ctx = make_inputs(1)
    att = EdgeFeaturedAttention(D, hidden=4, seed=3)
    randomize(att)
    out, _ = att.forward(q, K, V, mask, ctx)
    assert out.dtype == np.float32
    p64 = {k: v.astype(np.float64) for k, v in att.params.items()}
    F = ref_features(ctx.dist, ctx.layer, ctx.degree, att.num_layers)
    ref_out, _ = ref_forward(p64, q, K, V, F, mask)
    np.testing.assert_allclose(out, ref_out, rtol=1e-4, atol=1e-5)


def test_given_edge_features_and_width_check():
    q, K, V, mask, _ = make_inputs(2)
    rng = np.random.default_rng(0)
    F = rng.standard_normal((B, N, 3))
    att = EdgeFeaturedAttention(D, edge_dim=3, dtype=np.float64, seed=0)
    randomize(att)
    out, _ = att.forward(q, K, V, mask, Context(edge_features=F))
    np.testing.assert_allclose(out, ref_forward(att.params, q, K, V, F, mask)[0], rtol=1e-10, atol=1e-12)
    with pytest.raises(DimensionMismatchError, match="edge_features"):
        att.forward(q, K, V, mask, Context(edge_features=F[:, :, :2]))
    with pytest.raises(MissingContextError, match="edge_features"):
        att.forward(q, K, V, mask, Context(dist=np.ones((B, N))))


def test_missing_context_and_shape_errors():
    q, K, V, mask, ctx = make_inputs()
    att = EdgeFeaturedAttention(D, seed=0)
    with pytest.raises(MissingContextError, match="dist"):
        att.forward(q, K, V, mask, None)
    with pytest.raises(MissingContextError, match="layer"):
        att.forward(q, K, V, mask, Context(dist=ctx.dist))
    with pytest.raises(ShapeMismatchError, match="mask"):
        att.forward(q, K, V, mask[:, :3], ctx)
    with pytest.raises(DimensionMismatchError, match="value_dim"):
        att.forward(q, K, V[:, :, :3], mask, ctx)
    with pytest.raises(ShapeMismatchError, match=r"context\.dist"):
        att.forward(q, K, V, mask, Context(dist=ctx.dist[:, :2], layer=ctx.layer))
    for bad in ({"hidden": 0}, {"negative_slope": 1.5}, {"project_values": "yes"}, {"num_layers": 0}):
        with pytest.raises(ConfigError):
            EdgeFeaturedAttention(D, **bad)


@pytest.mark.parametrize("project_values", [True, False])
def test_backward_matches_finite_differences(project_values):
    q, K, V, mask, ctx = make_inputs(4, dv=4, B_=2, n_=4)
    att = EdgeFeaturedAttention(
        D, hidden=3, project_values=project_values, value_dim=4, out_dim=3, dtype=np.float64, seed=0
    )
    randomize(att)
    fd_check(att, q, K, V, mask, ctx)


def test_gather_form_matches_dense_and_scatters_gradients():
    rng = np.random.default_rng(7)
    table = rng.standard_normal((20, D))
    ids = rng.integers(0, 20, (B, N))
    ids[1, 2] = -1
    ids[0, 3] = ids[0, 1]  # a repeated row accumulates gradient
    q, _, _, _, ctx = make_inputs(7)
    att = EdgeFeaturedAttention(D, hidden=4, dtype=np.float64, seed=2)
    randomize(att)
    out_g, gg, out_d, gd = gather_and_dense(att, q, table, ids, ctx, rng=rng)
    np.testing.assert_allclose(out_g, out_d, rtol=1e-12)
    for name in ("keys", "values"):
        np.testing.assert_allclose(gg[name], scatter_rows(gd[name], ids, table), rtol=1e-10, atol=1e-12)
    for name in att.params:
        np.testing.assert_allclose(gg[name], gd[name], rtol=1e-10, atol=1e-12)
    fd_check(att, q[:2], table[:8], table[:8].copy(), None, Context(dist=ctx.dist[:2], layer=ctx.layer[:2]),
             ids=np.array([[0, 1, 2, -1, 5, 5], [7, 6, -1, 1, 0, 3]]))


def test_unbatched_equals_batched_row():
    q, K, V, mask, ctx = make_inputs()
    att = EdgeFeaturedAttention(D, dtype=np.float64, seed=0)
    out, cache = att.forward(q, K, V, mask, ctx)
    one, cache = att.forward(q[1], K[1], V[1], mask[1], Context(dist=ctx.dist[1], layer=ctx.layer[1],
                                                         degree=ctx.degree[1]))
    assert one.shape == (D,)
    np.testing.assert_allclose(one, out[1], rtol=1e-12)
    g = att.backward(cache, np.ones(D))
    assert g["query"].shape == (D,) and g["keys"].shape == (N, D)


def test_fully_masked_row_is_zero_and_has_zero_gradient():
    q, K, V, mask, ctx = make_inputs()
    mask[1] = False
    att = EdgeFeaturedAttention(D, dtype=np.float64, seed=0)
    randomize(att)
    out, cache = att.forward(q, K, V, mask, ctx)
    assert np.all(out[1] == 0.0)
    assert np.all(att.weights(q, K, mask, ctx)[1] == 0.0)
    g = att.backward(cache, np.ones_like(out))
    assert np.all(g["keys"][1] == 0) and np.all(g["values"][1] == 0) and np.all(g["query"][1] == 0)
    assert all(np.isfinite(v).all() for v in g.values())


def test_identical_keys_and_features_give_uniform_weights():
    rng = np.random.default_rng(3)
    q = rng.standard_normal((2, D))
    K = np.repeat(rng.standard_normal((2, 1, D)), N, axis=1)
    ctx = Context(dist=np.full((2, N), 0.5), layer=np.zeros((2, N), dtype=np.int8))
    mask = np.ones((2, N), bool)
    mask[0, :2] = False
    w = EdgeFeaturedAttention(D, seed=0).weights(q, K, mask, ctx)
    np.testing.assert_allclose(w[0, 2:], 1 / (N - 2), rtol=1e-6)
    np.testing.assert_allclose(w[1], 1 / N, rtol=1e-6)


def test_deterministic_given_seed():
    q, K, V, mask, ctx = make_inputs()
    a = EdgeFeaturedAttention(D, seed=42).forward(q, K, V, mask, ctx)[0]
    b = EdgeFeaturedAttention(D, seed=42).forward(q, K, V, mask, ctx)[0]
    c = EdgeFeaturedAttention(D, seed=43).forward(q, K, V, mask, ctx)[0]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@settings(max_examples=25, deadline=None)
@given(
    log_scale=st.floats(-6, 6),
    seed=st.integers(0, 10_000),
    masked_rows=st.integers(0, 2),
)
def test_finite_outputs_any_scale(log_scale, seed, masked_rows):
    rng = np.random.default_rng(seed)
    s = 10.0**log_scale
    q = (rng.standard_normal((3, D)) * s).astype(np.float32)
    K = (rng.standard_normal((3, N, D)) * s).astype(np.float32)
    V = (rng.standard_normal((3, N, D)) * s).astype(np.float32)
    mask = np.ones((3, N), bool)
    mask[:masked_rows] = False
    ctx = Context(dist=(rng.random((3, N)) * s).astype(np.float32), layer=rng.integers(0, 3, (3, N)))
    att = EdgeFeaturedAttention(D, seed=seed)
    out, cache = att.forward(q, K, V, mask, ctx)
    assert np.isfinite(out).all()
    assert np.all(out[:masked_rows] == 0)
    w = att.weights(q, K, mask, ctx)
    np.testing.assert_allclose(w[masked_rows:].sum(axis=1), 1.0, rtol=1e-5)
    g = att.backward(cache, np.ones_like(out))
    assert all(np.isfinite(v).all() for v in g.values())


def test_nonfinite_rows_referenced_by_ids_raise():
    from ruvector_hnsw.errors import NonFiniteError

    rng = np.random.default_rng(0)
    table = rng.standard_normal((10, D)).astype(np.float32)
    table[9, 2] = np.nan  # never referenced: no full-table scan, no error
    ids = np.array([[0, 1, 2], [3, 4, -1]])
    ctx = Context(dist=np.ones((2, 3)), layer=np.zeros((2, 3), dtype=np.int8))
    att = EdgeFeaturedAttention(D, seed=0)
    q = rng.standard_normal((2, D))
    assert np.isfinite(att.forward(q, table, table, None, ctx, ids=ids)[0]).all()
    ids[1, 2] = 9
    with pytest.raises(NonFiniteError, match="NaN"):
        att.forward(q, table, table, None, ctx, ids=ids)


def test_threaded_row_chunks_equal_single_thread():
    rng = np.random.default_rng(0)
    Bb, n, d = 600, 24, 16
    table = rng.standard_normal((500, d)).astype(np.float32)
    ids = rng.integers(-1, 500, (Bb, n))
    q = rng.standard_normal((Bb, d)).astype(np.float32)
    ctx = Context(dist=rng.random((Bb, n)), layer=rng.integers(0, 3, (Bb, n)))
    att = EdgeFeaturedAttention(d, hidden=32, seed=0)

    def run():
        out, cache = att.forward(q, table, table, None, ctx, ids=ids)
        return out, att.backward(cache, np.ones_like(out))

    many, g_many = with_threads(2, run)
    one, g_one = with_threads(1, run)
    np.testing.assert_array_equal(many, one)
    for k in g_one:  # param grads are summed over chunks: equal up to rounding
        np.testing.assert_allclose(g_many[k], g_one[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_config_round_trip():
    q, K, V, mask, ctx = make_inputs(10)
    a = EdgeFeaturedAttention(D, hidden=3, negative_slope=0.1, seed=4)
    b = EdgeFeaturedAttention(**a.get_config())
    np.testing.assert_array_equal(a.forward(q, K, V, mask, ctx)[0], b.forward(q, K, V, mask, ctx)[0])
