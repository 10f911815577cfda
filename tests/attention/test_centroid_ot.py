"""centroid_ot: numpy reference, k-means state, the marginals of the plan, the balanced limit, log-domain
stability, FD gradients through the Sinkhorn iterations, typed errors, properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ruvector_hnsw.attention import Context
from ruvector_hnsw.attention.centroid_ot import CentroidOTAttention, CentroidTableState, kmeans
from ruvector_hnsw.errors import (
    ConfigError,
    DimensionMismatchError,
    EmptyInputError,
    InvalidInputError,
    MissingContextError,
    NonFiniteError,
    ShapeMismatchError,
)
from tests.attention import _reference as ref
from tests.attention import _transport_reference as tref

SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _setup(seed=0, N=24, d=5, dv=3, B=4, n=7, **kw):
    rng = np.random.default_rng(seed)
    kw.setdefault("num_centroids", 4)
    att = CentroidOTAttention(d, dtype=np.float64, seed=seed, **kw)
    att.set_params({"log_demand_scale": [0.4], "log_rho": [0.3]})
    T, Vt = rng.standard_normal((N, d)), rng.standard_normal((N, dv))
    ids = rng.integers(-1, N, (B, n))
    ids[0, :2] = [0, 1]
    ids[-1] = -1  # a fully padded row
    q = rng.standard_normal((B, d)) * 2
    return att, att.prepare_table(T), q, T, Vt, ids


def _ref(att, st, q, T, Vt, ids):
    m = ids >= 0
    K, V = T[np.maximum(ids, 0)], Vt[np.maximum(ids, 0)]
    p = att.params
    return tref.centroid_ot(q, K, V, m, st.centroids, st.labels[np.maximum(ids, 0)], st.cost, att.epsilon,
                            float(np.exp(p["log_rho"][0])), float(p["log_demand_scale"][0]), att.iterations,
                            att.temperature)


@pytest.mark.parametrize("kw", [{}, {"iterations": 1}, {"epsilon": 0.5, "iterations": 25}, {"temperature": 0.5}])
def test_matches_reference_gather_and_dense(kw):
    att, st, q, T, Vt, ids = _setup(**kw)
    ctx = Context(table_state=st)
    out, cache = att.forward(q, T, Vt, context=ctx, ids=ids)
    want, W, _ = _ref(att, st, q, T, Vt, ids)
    np.testing.assert_allclose(out, want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cache.weights, W, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(att.weights(q, T, context=ctx, ids=ids), W, rtol=1e-10, atol=1e-12)
    m = ids >= 0
    dense, dc = att.forward(q, T[np.maximum(ids, 0)], Vt[np.maximum(ids, 0)], mask=m, context=ctx)
    np.testing.assert_array_equal(dense, out)  # dense keys are labelled against the same centroids
    np.testing.assert_array_equal(dc.weights, cache.weights)
    assert np.all(out[-1] == 0) and np.all(cache.weights[-1] == 0)


def test_state_is_a_seeded_kmeans_with_nearest_centroid_labels():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((3, 4)) * 10
    T = np.repeat(centres, 20, axis=0) + 0.01 * rng.standard_normal((60, 4))
    att = CentroidOTAttention(4, num_centroids=3, dtype=np.float64, seed=1)
    st = att.prepare_table(T)
    assert isinstance(st, CentroidTableState) and st.rows == 60
    assert not (st.centroids.flags.writeable or st.labels.flags.writeable or st.cost.flags.writeable)
    np.testing.assert_array_equal(st.labels, np.argmin(((T[:, None] - st.centroids[None]) ** 2).sum(-1), axis=1))
    # three well-separated groups are recovered exactly
    assert len(set(st.labels.tolist())) == 3
    assert all(len(set(st.labels[i * 20:(i + 1) * 20].tolist())) == 1 for i in range(3))
    np.testing.assert_allclose(np.sort(st.centroids[:, 0]), np.sort(centres[:, 0]), atol=0.05)
    off = st.cost[~np.eye(3, dtype=bool)]
    np.testing.assert_allclose(off.mean(), 1.0)
    np.testing.assert_array_equal(np.diag(st.cost), 0)
    again = att.prepare_table(T)
    np.testing.assert_array_equal(again.centroids, st.centroids)
    # the fitting sample and the seed matter; small tables use their rows as centroids
    sub = CentroidOTAttention(4, num_centroids=3, kmeans_sample=10, dtype=np.float64, seed=1).prepare_table(T)
    assert sub.centroids.shape == (3, 4)
    tiny = CentroidOTAttention(4, num_centroids=16, dtype=np.float64, seed=1).prepare_table(T[:5])
    np.testing.assert_array_equal(tiny.centroids, T[:5])
    a = kmeans(rng.standard_normal((50, 3)), 4, 5, np.random.default_rng(3))
    b = kmeans(rng.standard_normal((50, 3)), 4, 5, np.random.default_rng(3))
    assert a.shape == b.shape == (4, 3)


def test_plan_rows_are_exact_and_absent_clusters_deliver_nothing():
    att, st, q, T, Vt, ids = _setup(seed=2, num_centroids=6, N=40, n=5)
    _, cache = att.forward(q, T, Vt, context=Context(table_state=st), ids=ids)
    _, _, beta = _ref(att, st, q, T, Vt, ids)
    rows = (ids >= 0).any(1)
    np.testing.assert_allclose(cache.weights.sum(1)[rows], 1.0, rtol=1e-12)
    for b in np.flatnonzero(rows):
        present = np.unique(st.labels[ids[b][ids[b] >= 0]])
        absent = np.setdiff1d(np.arange(6), present)
        assert np.all(beta[b, absent] == 0) and np.all(beta[b, present] > 0)
        np.testing.assert_allclose(beta[b].sum(), 1.0, rtol=1e-12)


def test_rho_trades_the_query_demand_against_the_context_make_up():
    att, st, q, T, Vt, ids = _setup(seed=3, num_centroids=5, N=40, n=9, iterations=200, epsilon=0.2)
    ctx = Context(table_state=st)
    m = ids >= 0
    att.set_params({"log_rho": [12.0]})  # rho -> inf: balanced plan, beta = mu (each cluster by its count)
    _, c_bal = att.forward(q, T, Vt, context=ctx, ids=ids)
    for b in np.flatnonzero(m.any(1)):
        lab = st.labels[ids[b][m[b]]]
        w = c_bal.weights[b][m[b]]
        for c in np.unique(lab):
            np.testing.assert_allclose(w[lab == c].sum(), np.mean(lab == c), rtol=1e-3)
    att.set_params({"log_rho": [-20.0]})  # rho -> 0: the demand goes where it is cheapest, whatever mu
    _, c_free = att.forward(q, T, Vt, context=ctx, ids=ids)
    z = np.exp(float(att.params["log_demand_scale"][0])) / np.sqrt(5) * q @ st.centroids.T
    nu = np.exp(z - z.max(1, keepdims=True))
    nu /= nu.sum(1, keepdims=True)
    Kc = -st.cost / att.epsilon
    for b in np.flatnonzero(m.any(1)):
        present = np.unique(st.labels[ids[b][m[b]]])
        move = np.exp(Kc[:, present] - Kc[:, present].max(1, keepdims=True))
        move /= move.sum(1, keepdims=True)  # each demand row spread by the Gibbs kernel over present columns
        want = nu[b] @ move
        got = np.array([c_free.weights[b][m[b]][st.labels[ids[b][m[b]]] == c].sum() for c in present])
        np.testing.assert_allclose(got, want, rtol=1e-4)


def test_log_domain_is_stable_for_tiny_epsilon():
    """eps = 1e-4: exp(-cost/eps) underflows, the log-domain fallback keeps everything finite and exact."""
    att, st, q, T, Vt, ids = _setup(seed=4, epsilon=1e-4, iterations=6)
    out, cache = att.forward(q, T, Vt, context=Context(table_state=st), ids=ids)
    want, _, _ = _ref(att, st, q, T, Vt, ids)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, want, rtol=1e-9, atol=1e-11)
    g = att.backward(cache, np.ones_like(out))
    assert all(np.isfinite(v).all() for v in g.values())


@pytest.mark.parametrize("kw", [{}, {"epsilon": 0.02, "iterations": 4}, {"num_centroids": 2, "iterations": 3},
                                {"epsilon": 1e-3, "iterations": 3}])
def test_gradients_fd_through_the_sinkhorn_iterations(kw):
    att, st, q, T, Vt, ids = _setup(seed=5, B=3, n=6, N=15, d=4, dv=2, **kw)
    ctx = Context(table_state=st)
    ref.check_gradients(att, q, T, Vt, context=ctx, ids=ids)
    m = ids >= 0
    ref.check_gradients(att, q, T[np.maximum(ids, 0)], Vt[np.maximum(ids, 0)], mask=m, context=ctx)


def test_fully_masked_rows_and_masked_items_get_nothing():
    att, st, q, T, Vt, ids = _setup(seed=6)
    K, V = T[np.maximum(ids, 0)], Vt[np.maximum(ids, 0)]
    mask = (ids >= 0) & (np.random.default_rng(0).random(ids.shape) > 0.2)
    mask[1] = False
    out, cache = att.forward(q, K, V, mask=mask, context=Context(table_state=st))
    assert np.all(out[1] == 0) and np.isfinite(out).all()
    g = att.backward(cache, np.ones_like(out))
    assert np.all(g["keys"][~mask] == 0) and np.all(g["values"][~mask] == 0)
    assert all(np.isfinite(v).all() for v in g.values())


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), scale=st.sampled_from([1e-20, 1e-3, 1.0, 1e3, 1e15, 1e30]),
       eps=st.sampled_from([1e-5, 0.1, 10.0]), n=st.integers(1, 10))
def test_finite_and_normalised_for_any_scale(seed, scale, eps, n):
    rng = np.random.default_rng(seed)
    att = CentroidOTAttention(4, num_centroids=3, epsilon=eps, iterations=5, seed=seed % 5)
    T = (rng.standard_normal((30, 4)) * scale).astype(np.float32)
    ctx = Context(table_state=att.prepare_table(T))
    ids = rng.integers(-1, 30, (3, n))
    q = (rng.standard_normal((3, 4)) * scale).astype(np.float32)
    Vt = rng.standard_normal((30, 2)).astype(np.float32)
    out, cache = att.forward(q, T, Vt, context=ctx, ids=ids)
    assert np.isfinite(out).all()
    w = cache.weights
    rows = (ids >= 0).any(1)
    np.testing.assert_allclose(w.sum(1)[rows], 1.0, rtol=1e-5)
    assert (w >= 0).all() and np.all(w[~rows] == 0)


def test_errors():
    att, _, q, T, Vt, ids = _setup()
    with pytest.raises(MissingContextError, match="prepare_table"):
        att.forward(q, T, Vt, ids=ids)
    with pytest.raises(MissingContextError, match="prepare_table"):
        att.forward(q, T[np.maximum(ids, 0)], Vt[np.maximum(ids, 0)])
    with pytest.raises(ShapeMismatchError, match="prepare_table"):
        att.forward(q, T, Vt, context=Context(table_state=att.prepare_table(T[:20])), ids=np.minimum(ids, 19))
    with pytest.raises(InvalidInputError, match="prepare_table"):
        att.forward(q, T, Vt, context=Context(table_state="state"), ids=ids)
    f32 = CentroidOTAttention(5, num_centroids=4, seed=0).prepare_table(T)
    with pytest.raises(InvalidInputError, match="configuration"):
        att.forward(q, T, Vt, context=Context(table_state=f32), ids=ids)
    with pytest.raises(DimensionMismatchError):
        att.prepare_table(T[:, :3])
    with pytest.raises(EmptyInputError):
        att.prepare_table(T[:0])
    bad = T.copy()
    bad[2, 2] = np.nan
    with pytest.raises(NonFiniteError):
        att.prepare_table(bad)
    for kw in ({"num_centroids": 0}, {"epsilon": 0.0}, {"rho": -1.0}, {"iterations": 0}, {"kmeans_sample": 0}):
        with pytest.raises(ConfigError):
            CentroidOTAttention(4, **kw)
