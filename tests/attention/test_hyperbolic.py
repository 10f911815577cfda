"""Tests of the Poincare-ball ``hyperbolic`` mechanism against a plain-numpy Mobius reference."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ruvector_hnsw.attention import _hyperbolic_kernels as hk
from ruvector_hnsw.attention.hyperbolic import HyperbolicAttention
from ruvector_hnsw.errors import ConfigError, ShapeMismatchError
from tests.attention._reference import gather_and_dense, numeric_grad, scatter_rows, with_threads

B, N, D, DV = 3, 5, 4, 3
MODES = list(itertools.product(["project", "expmap"], ["ball", "tangent"], [-1.0, -2.5]))


# ---- plain-numpy reference (row by row, Mobius addition form of the distance) ----------------
def r_mobius_add(x, y, k):
    xy, x2, y2 = x @ y, x @ x, y @ y
    return ((1 + 2 * k * xy + k * y2) * x + (1 - k * x2) * y) / (1 + 2 * k * xy + k * k * x2 * y2)


def r_dist(x, y, k):
    return 2 / math.sqrt(k) * math.atanh(math.sqrt(k) * np.linalg.norm(r_mobius_add(-x, y, k)))


def r_exp0(u, k):
    n = np.linalg.norm(u)
    return u if n == 0 else math.tanh(math.sqrt(k) * n) * u / (math.sqrt(k) * n)


def r_log0(y, k):
    n = np.linalg.norm(y)
    return y if n == 0 else math.atanh(math.sqrt(k) * n) * y / (math.sqrt(k) * n)


def r_proj(x, k, eps):
    r = (1 - eps) / math.sqrt(k)
    n = np.linalg.norm(x)
    return x * (r / n) if n > r else x


def ref_forward(q, K, V, mask, c, eps, tau, input_map="project", output="ball", scale=1.0):
    k = -c
    q, K, V = q * scale, K * scale, V * scale
    def to_ball(x):
        return r_proj(r_exp0(x, k) if input_map == "expmap" else x, k, eps)

    outs, ws = [], []
    for b in range(q.shape[0]):
        qb = to_ball(q[b])
        s = np.array(
            [-r_dist(qb, to_ball(K[b, j]), k) / tau if mask[b, j] else -np.inf for j in range(K.shape[1])]
        )
        w = np.zeros(K.shape[1])
        if mask[b].any():
            e = np.exp(s - s[mask[b]].max())
            w = e / e.sum()
        u = sum(w[j] * r_log0(to_ball(V[b, j]), k) for j in range(K.shape[1]))
        outs.append(u / scale if output == "tangent" else r_proj(r_exp0(u, k), k, eps))
        ws.append(w)
    return np.array(outs), np.array(ws)


def make_inputs(seed=0, scale=0.3):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, D)) * scale
    K = rng.standard_normal((B, N, D)) * scale
    V = rng.standard_normal((B, N, DV)) * scale
    mask = rng.random((B, N)) > 0.3
    mask[:, 0] = True
    return q, K, V, mask


def fd_check(att, q, K, V, mask, ids=None, eps=1e-6, tol=1e-5):
    rng = np.random.default_rng(11)
    out, cache = att.forward(q, K, V, mask, ids=ids)
    G = rng.standard_normal(out.shape)
    grads = att.backward(cache, G)

    def loss():
        return float(np.sum(att.forward(q, K, V, mask, ids=ids)[0] * G))

    items = [*att.params.items(), ("query", q), ("keys", K), ("values", V)]
    assert set(grads) == {name for name, _ in items}
    for name, arr in items:
        num = numeric_grad(loss, arr, eps)
        assert grads[name].shape == arr.shape, name
        np.testing.assert_allclose(grads[name], num, atol=tol, rtol=1e-4, err_msg=name)


def test_mobius_helpers_agree_with_reference():
    rng = np.random.default_rng(0)
    for k in (1.0, 0.3, 4.0):
        x = hk.project(rng.standard_normal((6, D)), k, 1e-3)
        y = hk.project(rng.standard_normal((6, D)) * 0.2, k, 1e-3)
        np.testing.assert_allclose(
            hk.poincare_distance(x, y, k), [r_dist(a, b, k) for a, b in zip(x, y, strict=True)], rtol=1e-8
        )
        ref_add = [r_mobius_add(a, b, k) for a, b in zip(x, y, strict=True)]
        np.testing.assert_allclose(hk.mobius_add(x, y, k), ref_add)
        u = rng.standard_normal((6, D))
        np.testing.assert_allclose(hk.logmap0(hk.expmap0(u * 0.3, k), k), u * 0.3, rtol=1e-8)
        np.testing.assert_allclose(hk.mobius_add(-x, x, k), 0.0, atol=1e-12)


@pytest.mark.parametrize(("input_map", "output", "c"), MODES)
def test_forward_matches_reference(input_map, output, c):
    q, K, V, mask = make_inputs(1, scale=0.3 if input_map == "project" else 1.0)
    K[0, 0] *= 20  # outside the ball
    att = HyperbolicAttention(D, curvature=c, temperature=0.7, input_map=input_map, output=output,
                              dtype=np.float64)
    out, _ = att.forward(q, K, V, mask)
    ref_out, ref_w = ref_forward(q, K, V, mask, c, att.eps, 0.7, input_map, output)
    np.testing.assert_allclose(out, ref_out, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(att.weights(q, K, mask), ref_w, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("input_map", "output"), [("project", "ball"), ("expmap", "ball"), ("expmap", "tangent")])
def test_input_scale_matches_reference_and_fd(input_map, output):
    q, K, V, mask = make_inputs(8, scale=3.0)  # norms ~ 6: far outside the unit ball
    att = HyperbolicAttention(D, input_scale=0.15, temperature=0.5, input_map=input_map, output=output,
                              dtype=np.float64)
    out, _ = att.forward(q, K, V, mask)
    ref_out, _ = ref_forward(q, K, V, mask, -1.0, att.eps, 0.5, input_map, output, scale=0.15)
    np.testing.assert_allclose(out, ref_out, rtol=1e-9, atol=1e-12)
    fd_check(att, q, K, V, mask)


def test_float32_matches_reference():
    q, K, V, mask = make_inputs(2)
    att = HyperbolicAttention(D, curvature=-1.5)
    out, _ = att.forward(q, K, V, mask)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref_forward(q, K, V, mask, -1.5, att.eps, 1.0)[0], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("input_map", "output", "c"), MODES)
def test_backward_matches_finite_differences(input_map, output, c):
    q, K, V, mask = make_inputs(3, scale=0.25 if input_map == "project" else 0.8)
    if input_map == "project":
        K[0, 1] *= 10  # projected key (outside the ball)
        V[1, 0] *= 10  # projected value
    att = HyperbolicAttention(D, curvature=c, temperature=0.6, input_map=input_map, output=output,
                              dtype=np.float64)
    fd_check(att, q, K, V, mask)


def test_gather_form_matches_dense():
    rng = np.random.default_rng(5)
    table = rng.standard_normal((12, D)) * 0.3
    ids = np.array([[0, 3, 3, -1, 7], [11, 2, 5, 6, 1], [-1, -1, -1, -1, -1]])
    q = rng.standard_normal((3, D)) * 0.3
    att = HyperbolicAttention(D, dtype=np.float64)
    out_g, gg, out_d, gd = gather_and_dense(att, q, table, ids, rng=rng)
    np.testing.assert_allclose(out_g, out_d, rtol=1e-12)
    assert np.all(out_g[2] == 0)
    for name in ("keys", "values"):
        np.testing.assert_allclose(gg[name], scatter_rows(gd[name], ids, table), rtol=1e-10, atol=1e-13)
    fd_check(att, q[:2], table[:8], table[:8].copy(), None, ids=np.array([[0, 1, 1, -1, 5], [7, 6, 2, 3, 4]]))


@pytest.mark.parametrize("c", [-0.5, -1.0, -3.0])
def test_outputs_strictly_inside_for_boundary_inputs(c):
    rng = np.random.default_rng(0)
    r = 1 / math.sqrt(-c)
    x = rng.standard_normal((4, N, D))
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    K = x * r  # exactly on the boundary
    V = x * r * np.array([1.0, 1.0, 5.0, 1e6, 1.0])[None, :, None]  # on and far outside
    q = K[:, 0] * 1.0
    for dtype in (np.float32, np.float64):
        att = HyperbolicAttention(D, curvature=c, temperature=0.05, dtype=dtype)
        out, cache = att.forward(q, K, V)
        assert np.isfinite(out).all()
        assert np.all(np.linalg.norm(out.astype(np.float64), axis=1) < r)
        g = att.backward(cache, np.ones_like(out))
        assert all(np.isfinite(v).all() for v in g.values())


def test_unbatched_fully_masked_and_uniform():
    q, K, V, mask = make_inputs(4)
    att = HyperbolicAttention(D, dtype=np.float64)
    out, cache = att.forward(q, K, V, mask)
    np.testing.assert_allclose(att.forward(q[2], K[2], V[2], mask[2])[0], out[2], rtol=1e-12)
    mask[1] = False
    out, cache = att.forward(q, K, V, mask)
    assert np.all(out[1] == 0) and np.all(att.weights(q, K, mask)[1] == 0)
    g = att.backward(cache, np.ones_like(out))
    assert np.all(g["keys"][1] == 0) and np.all(g["values"][1] == 0)
    Ksame = np.repeat(K[:, :1], N, axis=1)
    np.testing.assert_allclose(att.weights(q, Ksame), 1 / N, rtol=1e-12)


def test_config_and_shape_errors():
    for bad in ({"curvature": 0.0}, {"curvature": 1.0}, {"curvature": "x"}, {"eps": 0.0}, {"eps": 0.7}, {"eps": 1e-8},
                {"temperature": -1.0}, {"input_scale": 0.0}, {"input_map": "foo"}, {"output": "klein"}):
        with pytest.raises(ConfigError):
            HyperbolicAttention(D, **bad)
    q, K, V, mask = make_inputs()
    att = HyperbolicAttention(D)
    with pytest.raises(ShapeMismatchError):
        att.forward(q, K, V[:, :2], mask)


def test_temperature_is_learned_and_deterministic():
    q, K, V, mask = make_inputs()
    a, b = HyperbolicAttention(D, seed=1), HyperbolicAttention(D, seed=1)
    np.testing.assert_array_equal(a.forward(q, K, V, mask)[0], b.forward(q, K, V, mask)[0])
    w_hot = a.weights(q, K, mask)
    a.params["log_temperature"][...] = math.log(0.01)
    w_cold = a.weights(q, K, mask)
    assert w_cold.max(axis=1).mean() > w_hot.max(axis=1).mean()


@settings(max_examples=25, deadline=None)
@given(log_scale=st.floats(-6, 6), seed=st.integers(0, 10_000), c=st.sampled_from([-0.1, -1.0, -7.0]),
       input_map=st.sampled_from(["project", "expmap"]))
def test_finite_inside_any_scale(log_scale, seed, c, input_map):
    rng = np.random.default_rng(seed)
    s = 10.0**log_scale
    q = (rng.standard_normal((3, D)) * s).astype(np.float32)
    K = (rng.standard_normal((3, N, D)) * s).astype(np.float32)
    V = (rng.standard_normal((3, N, DV)) * s).astype(np.float32)
    mask = rng.random((3, N)) > 0.4
    att = HyperbolicAttention(D, curvature=c, input_map=input_map)
    out, cache = att.forward(q, K, V, mask)
    assert np.isfinite(out).all()
    assert np.all(np.linalg.norm(out.astype(np.float64), axis=1) < 1 / math.sqrt(-c))
    assert np.all(out[~mask.any(axis=1)] == 0)
    g = att.backward(cache, np.ones_like(out))
    assert all(np.isfinite(v).all() for v in g.values())


def test_nonfinite_rows_referenced_by_ids_raise():
    from ruvector_hnsw.errors import NonFiniteError

    rng = np.random.default_rng(0)
    table = rng.standard_normal((10, D)).astype(np.float32) * 0.2
    table[9, 1] = np.inf
    ids = np.array([[0, 1, 2], [3, 4, -1]])
    att = HyperbolicAttention(D)
    q = rng.standard_normal((2, D)) * 0.2
    assert np.isfinite(att.forward(q, table, table, ids=ids)[0]).all()
    ids[0, 0] = 9
    with pytest.raises(NonFiniteError, match="NaN"):
        att.forward(q, table, table, ids=ids)


def test_threaded_row_chunks_equal_single_thread():
    rng = np.random.default_rng(0)
    Bb, n, d = 800, 32, 32
    table = rng.standard_normal((500, d)).astype(np.float32) * 0.1
    ids = rng.integers(-1, 500, (Bb, n))
    q = rng.standard_normal((Bb, d)).astype(np.float32) * 0.1
    att = HyperbolicAttention(d)
    many = with_threads(2, lambda: att.forward(q, table, table, ids=ids)[0])
    one = with_threads(1, lambda: att.forward(q, table, table, ids=ids)[0])
    np.testing.assert_array_equal(many, one)


def test_expmap_tangent_output_is_weighted_mean_of_values():
    q, K, V, mask = make_inputs(9, scale=1.0)
    att = HyperbolicAttention(D, input_map="expmap", output="tangent", input_scale=0.1, dtype=np.float64)
    out, _ = att.forward(q, K, V, mask)
    w = att.weights(q, K, mask)
    np.testing.assert_allclose(out, np.einsum("bn,bnv->bv", w, V), rtol=1e-10, atol=1e-12)


def test_config_round_trip():
    q, K, V, mask = make_inputs(10)
    a = HyperbolicAttention(D, curvature=-2.0, temperature=0.4, input_scale=0.3, input_map="expmap", seed=1)
    b = HyperbolicAttention(**a.get_config())
    np.testing.assert_array_equal(a.forward(q, K, V, mask)[0], b.forward(q, K, V, mask)[0])


@pytest.mark.parametrize(("input_map", "output", "c"), MODES)
def test_backward_kernel_equals_numpy_twin(input_map, output, c):
    q, K, V, mask = make_inputs(12, scale=0.4)
    K[0, 1] *= 10
    V[2, 0] *= 10
    mask[1] = False
    att = HyperbolicAttention(D, curvature=c, input_scale=1.3, input_map=input_map, output=output,
                              dtype=np.float64)
    out, cache = att.forward(q, K, V, mask)
    G = np.random.default_rng(0).standard_normal(out.shape)
    got = att.backward(cache, G)
    twin = att._backward_numpy(G, cache._data)
    for k in got:
        np.testing.assert_allclose(got[k], twin[k], rtol=1e-9, atol=1e-12, err_msg=k)


@pytest.mark.parametrize(("input_map", "output", "c"), MODES)
def test_fast_forward_kernel_equals_exact_kernel(input_map, output, c):
    """The norm-factor kernel (shared or separate value table) against the coordinate-by-coordinate
    one, on rows that take every branch: keys equal to the query (the cancellation fallback),
    tiny rows (series branches), rows beyond the ball (projection), a float64 row whose squared
    norm overflows (the row is redone by the exact kernel), a fully masked row."""
    rng = np.random.default_rng(3)
    d, rows = 6, 40
    table = rng.standard_normal((rows, d)) * 0.4
    table[1] *= 1e-9
    table[2] *= 30.0
    table[3, 0] = 1e200
    q = rng.standard_normal((5, d)) * 0.4
    table[4:9] = q  # each query is also a key
    ids = rng.integers(0, rows, (5, 12))
    ids[:, 0] = np.arange(4, 9)
    ids[1, 1:4] = [1, 2, -1]
    ids[2, 1] = 3
    ids[4] = -1
    kap = -c
    args = (kap, 1e-5, 1 / 0.7, 1.3, input_map == "expmap", output == "tangent")
    want_out, want_w, want_ok = hk.hyperbolic_forward_exact(q, table, table, ids, *args)
    for vt, shared in ((table, True), (table.copy(), False)):
        out, w, ok = hk.hyperbolic_forward_kernel(q, table, vt, ids, *args, shared)
        assert ok and want_ok
        np.testing.assert_allclose(w, want_w, rtol=1e-11, atol=1e-14)
        np.testing.assert_allclose(out, want_out, rtol=1e-11, atol=1e-14)
    assert np.all(want_out[4] == 0)
    vals = table.copy()
    vals[5] *= 2.0  # a separate value table: the value factors are the values' own
    want_out, want_w, _ = hk.hyperbolic_forward_exact(q, table, vals, ids, *args)
    out, w, _ = hk.hyperbolic_forward_kernel(q, table, vals, ids, *args, False)
    np.testing.assert_allclose(out, want_out, rtol=1e-11, atol=1e-14)


def test_backward_same_at_any_thread_count():
    """Param gradients sum per-row terms over every row at once (float64, where a chunk-wise
    sum would show in the last bits)."""
    rng = np.random.default_rng(1)
    Bb, n, d = 803, 32, 32
    table = rng.standard_normal((500, d)) * 0.1
    ids = rng.integers(-1, 500, (Bb, n))
    q = rng.standard_normal((Bb, d)) * 0.1
    att = HyperbolicAttention(d, input_scale=1.5, dtype=np.float64)

    def run():
        out, cache = att.forward(q, table, table, ids=ids)
        return att.backward(cache, np.ones_like(out), input_grads=False)

    one = with_threads(1, run)
    for threads in (2, 3):  # 3 chunks: a sum of chunk sums differs here in the last bits
        many = with_threads(threads, run)
        for k in one:
            np.testing.assert_array_equal(one[k], many[k], err_msg=f"{k}, {threads} threads")
