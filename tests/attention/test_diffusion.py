"""diffusion: t = 0 is the undiffused attention, mass conservation (random walk), dense-matrix
reference, convergence to the heat kernel, multiscale, FD gradients (incl. the time), properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ruvector_hnsw.attention.diffusion import LAPLACIANS, DiffusionAttention
from ruvector_hnsw.attention.scaled_dot import ScaledDotAttention
from ruvector_hnsw.errors import ConfigError, InvalidInputError
from tests.attention import _reference as ref
from tests.attention import _transport_reference as tref

SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
TYPES = sorted(LAPLACIANS)


def _data(seed=0, B=4, n=9, d=5, dv=3):
    rng = np.random.default_rng(seed)
    mask = rng.random((B, n)) > 0.2
    mask[0] = True
    mask[1, 1:] = False  # one item: nothing to diffuse
    return rng.standard_normal((B, d)), rng.standard_normal((B, n, d)), rng.standard_normal((B, n, dv)), mask


@pytest.mark.parametrize("lap", TYPES)
def test_t_zero_is_the_undiffused_attention(lap):
    q, K, V, mask = _data()
    att = DiffusionAttention(5, laplacian=lap, t=0.0, temperature=0.8, dtype=np.float64, seed=0)
    sd = ScaledDotAttention(5, temperature=0.8, dtype=np.float64)
    out, cache = att.forward(q, K, V, mask)
    want, wc = sd.forward(q, K, V, mask)
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(cache.weights, wc.weights, rtol=1e-12, atol=1e-15)
    moved = DiffusionAttention(5, laplacian=lap, t=1.0, temperature=0.8, dtype=np.float64, seed=0)
    assert np.abs(moved.forward(q, K, V, mask)[0] - want).max() > 1e-3  # t > 0 does diffuse


@pytest.mark.parametrize("lap", TYPES)
@pytest.mark.parametrize("kw", [{"t": 0.7, "max_nodes": 5, "k_graph": 2}, {"t": 3.0, "max_nodes": None, "num_steps": 4},
                                {"t": 25.0, "num_steps": 2, "k_graph": 3}])
def test_matches_dense_matrix_reference(lap, kw):
    q, K, V, mask = _data(seed=1)
    att = DiffusionAttention(5, laplacian=lap, dtype=np.float64, seed=0, **kw)
    out, cache = att.forward(q, K, V, mask)
    want, W = tref.diffusion(q, K, V, mask, att.time, lap, att.num_steps, att.k_graph, att.max_nodes)
    np.testing.assert_allclose(out, want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cache.weights, W, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(att.weights(q, K, mask), W, rtol=1e-10, atol=1e-12)
    assert (cache.weights >= -1e-15).all()  # the sub-steps keep the weights non-negative at any t


@pytest.mark.parametrize("lap", TYPES)
def test_euler_converges_to_the_heat_kernel(lap):
    q, K, V, mask = _data(seed=2)
    mask[1] = True
    exact, _ = tref.diffusion(q, K, V, mask, 1.3, lap, 1, 3, None, exact=True)
    errs = []
    for steps in (10, 100, 1000):
        att = DiffusionAttention(5, laplacian=lap, t=1.3, num_steps=steps, k_graph=3, max_nodes=None,
                                 dtype=np.float64, seed=0)
        errs.append(np.abs(att.forward(q, K, V, mask)[0] - exact).max())
    assert errs[2] < 1e-3 and errs[1] < errs[0] / 5 and errs[2] < errs[1] / 5  # first order in h


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), t=st.sampled_from([0.1, 1.0, 7.0, 100.0]), n=st.integers(2, 12),
       steps=st.integers(1, 12))
def test_random_walk_and_unnormalised_conserve_mass(seed, t, n, steps):
    rng = np.random.default_rng(seed)
    q, K = rng.standard_normal((3, 4)), rng.standard_normal((3, n, 4))
    mask = rng.random((3, n)) > 0.3
    for lap in ("random_walk", "unnormalised"):
        att = DiffusionAttention(4, laplacian=lap, t=t, num_steps=steps, k_graph=2, max_nodes=6, dtype=np.float64)
        w = att.weights(q, K, mask)
        base = ScaledDotAttention(4, dtype=np.float64).weights(q, K, mask)
        rows = mask.any(1)
        np.testing.assert_allclose(w.sum(1)[rows], 1.0, rtol=1e-12)
        assert (w >= -1e-15).all() and np.all(w[~mask] == 0)
        # the mass of the diffused support is what the softmax gave it; the rest did not move
        moved = np.abs(w - base) > 1e-15
        assert (moved.sum(1) <= 6).all()


def test_symmetric_type_is_rescaled_and_the_flow_itself_does_not_conserve_mass():
    q, K, _, mask = _data(seed=3)
    att = DiffusionAttention(5, laplacian="symmetric", t=2.0, max_nodes=None, dtype=np.float64)
    w = att.weights(q, K, mask)
    np.testing.assert_allclose(w.sum(1)[mask.any(1)], 1.0, rtol=1e-12)
    # without the rescaling the mass would change: check it on the reference operator
    b = 0
    a = ScaledDotAttention(5, dtype=np.float64).weights(q, K, mask)[b]
    A = tref.diffusion_graph(K[b], 4)
    Lam = tref._mass_operator(A, "symmetric")
    raw = tref.expm_apply(Lam, A, "symmetric", 2.0, a)
    assert abs(raw.sum() - 1.0) > 1e-3


def test_long_random_walk_reaches_the_degree_distribution():
    q, K, _, mask = _data(seed=4)
    mask[:] = True
    att = DiffusionAttention(5, t=400.0, num_steps=400, k_graph=3, max_nodes=None, dtype=np.float64)
    w = att.weights(q, K, mask)
    for b in range(w.shape[0]):
        A = tref.diffusion_graph(K[b], 3)
        deg = A.sum(1)
        np.testing.assert_allclose(w[b], deg / deg.sum(), atol=1e-6)  # connected graphs here


def test_multiscale_gives_one_output_per_scale():
    q, K, V, mask = _data(seed=5)
    att = DiffusionAttention(5, laplacian="unnormalised", t=0.5, dtype=np.float64)
    scales = [0.0, 0.5, 2.0, 9.0]
    outs = att.multiscale(q, K, V, scales, mask)
    assert len(outs) == 4 and all(o.shape == (4, 3) for o in outs)
    for s, o in zip(scales, outs, strict=True):
        one = DiffusionAttention(5, laplacian="unnormalised", t=s, dtype=np.float64)
        np.testing.assert_allclose(o, one.forward(q, K, V, mask)[0], rtol=1e-12, atol=1e-14)
    u = att.multiscale(q[0], K[0], V[0], [0.5, 1.0], mask[0])
    np.testing.assert_allclose(u[0], outs[1][0], rtol=1e-12)
    table = K.reshape(-1, 5)
    ids = np.arange(36).reshape(4, 9)
    g = att.multiscale(q, table, V.reshape(-1, 3), [0.5], ids=np.where(mask, ids, -1))
    np.testing.assert_allclose(g[0], outs[1], rtol=1e-12, atol=1e-14)
    for bad in ([], [[1.0]], [-1.0], [np.nan]):
        with pytest.raises(InvalidInputError, match="scales"):
            att.multiscale(q, K, V, bad, mask)


@pytest.mark.parametrize("lap", TYPES)
def test_gradients_fd_including_the_time(lap):
    q, K, V, mask = _data(seed=6, B=3, n=7, d=4, dv=2)
    for kw in ({"t": 0.8, "max_nodes": 4, "k_graph": 2, "num_steps": 3}, {"t": 5.3, "max_nodes": None, "num_steps": 2}):
        att = DiffusionAttention(4, laplacian=lap, dtype=np.float64, seed=0, **kw)
        ref.check_gradients(att, q, K, V, mask)
    rng = np.random.default_rng(0)
    T, Vt, ids = rng.standard_normal((10, 4)), rng.standard_normal((10, 2)), rng.integers(-1, 10, (3, 6))
    ref.check_gradients(DiffusionAttention(4, laplacian=lap, t=1.5, dtype=np.float64), q, T, Vt, ids=ids)


def test_negative_time_param_means_no_diffusion_and_no_time_gradient():
    q, K, V, mask = _data(seed=7)
    att = DiffusionAttention(5, t=1.0, dtype=np.float64)
    att.set_params({"time": [-0.5]})
    assert att.time == 0.0
    out, cache = att.forward(q, K, V, mask)
    np.testing.assert_allclose(out, ScaledDotAttention(5, dtype=np.float64).forward(q, K, V, mask)[0], atol=1e-14)
    assert att.backward(cache, np.ones_like(out))["time"][0] == 0.0


def test_fully_masked_rows_are_zero_and_finite():
    q, K, V, mask = _data()
    mask[2] = False
    att = DiffusionAttention(5, dtype=np.float64)
    out, cache = att.forward(q, K, V, mask)
    assert np.all(out[2] == 0) and np.all(cache.weights[2] == 0)
    g = att.backward(cache, np.ones_like(out))
    assert np.all(g["keys"][~mask] == 0) and np.all(g["values"][~mask] == 0)
    assert all(np.isfinite(v).all() for v in g.values())


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), scale=st.sampled_from([1e-20, 1e-3, 1.0, 1e3, 1e15, 1e30]),
       n=st.integers(1, 10), lap=st.sampled_from(TYPES))
def test_finite_for_any_scale(seed, scale, n, lap):
    rng = np.random.default_rng(seed)
    q = (rng.standard_normal((2, 4)) * scale).astype(np.float32)
    K = (rng.standard_normal((2, n, 4)) * scale).astype(np.float32)
    V = rng.standard_normal((2, n, 3)).astype(np.float32)
    mask = rng.random((2, n)) > 0.3
    out, cache = DiffusionAttention(4, laplacian=lap, t=2.0, max_nodes=5).forward(q, K, V, mask)
    assert np.isfinite(out).all() and np.isfinite(cache.weights).all()
    rows = mask.any(1)
    np.testing.assert_allclose(cache.weights.sum(1)[rows], 1.0, rtol=1e-5)


def test_config_errors():
    for kw in ({"laplacian": "normalized"}, {"t": -1.0}, {"num_steps": 0}, {"k_graph": 0}, {"max_nodes": 0},
               {"temperature": 0.0}):
        with pytest.raises(ConfigError):
            DiffusionAttention(4, **kw)
    cfg = DiffusionAttention(4, laplacian="symmetric", t=0.3).get_config()
    assert cfg["laplacian"] == "symmetric" and cfg["t"] == 0.3 and cfg["num_steps"] == 10
