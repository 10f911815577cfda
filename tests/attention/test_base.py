"""The shared protocol: validation and typed errors, Context, unbatched/gather forms, dtype path."""

from __future__ import annotations

import numpy as np
import pytest

from ruvector_hnsw.attention import MECHANISMS, AttentionMechanism, Context
from ruvector_hnsw.attention.base import ForwardResult, as_float_array, check_ids, check_mask
from ruvector_hnsw.errors import (
    ConfigError,
    DimensionMismatchError,
    EmptyInputError,
    InvalidDTypeError,
    InvalidInputError,
    NonFiniteError,
    ShapeMismatchError,
)
from ruvector_hnsw.threads import set_num_threads
from tests.attention import _reference as ref

B, N, D, DV = 3, 5, 4, 3


def _data(seed=0):
    rng = np.random.default_rng(seed)
    mask = rng.random((B, N)) > 0.3
    mask[:, 0] = True
    return rng.standard_normal((B, D)), rng.standard_normal((B, N, D)), rng.standard_normal((B, N, DV)), mask


def test_registry_has_all_names():
    for name in ("scaled_dot", "multi_head", "local_global", "rope", "dual_space", "edge_featured",
                 "hyperbolic", "linear", "flash", "moe", "mixed_curvature", "topology_gated", "info_bottleneck"):
        assert issubclass(MECHANISMS[name], AttentionMechanism), name
        assert MECHANISMS[name].name == name


# -- helpers ------------------------------------------------------------------------------------
def test_as_float_array_errors_and_conversion():
    f32 = np.dtype(np.float32)
    assert as_float_array(np.arange(3), "x", f32, (1,)).dtype == np.float32
    assert as_float_array([True, False], "x", f32, (1,)).dtype == np.float32
    with pytest.raises(InvalidDTypeError, match="x"):
        as_float_array(np.ones(3, dtype=complex), "x", f32, (1,))
    with pytest.raises(InvalidDTypeError):
        as_float_array(np.array(["a"]), "x", f32, (1,))
    with pytest.raises(NonFiniteError, match="x contains NaN"):
        as_float_array([1.0, np.nan], "x", f32, (1,))
    with pytest.raises(NonFiniteError):
        as_float_array([1.0, np.inf], "x", f32, (1,))
    with pytest.raises(NonFiniteError):
        as_float_array([1e300], "x", f32, (1,))  # overflows float32
    with pytest.raises(ShapeMismatchError, match="1-D"):
        as_float_array(np.ones((2, 2)), "x", f32, (1,))


def test_check_mask_and_ids():
    assert check_mask(np.array([1, 0]), (2,)).dtype == bool
    with pytest.raises(InvalidInputError):
        check_mask(np.array([2, 0]), (2,))
    with pytest.raises(InvalidDTypeError):
        check_mask(np.array([0.5, 1.0]), (2,))
    with pytest.raises(ShapeMismatchError, match="mask must have shape"):
        check_mask(np.ones(3, bool), (2,))
    with pytest.raises(InvalidInputError, match=r"\[-1, 5\)"):
        check_ids(np.array([[0, 5]]), None, 5)
    with pytest.raises(InvalidInputError):
        check_ids(np.array([[-2, 0]]), None, 5)
    with pytest.raises(InvalidDTypeError):
        check_ids(np.array([[0.0, 1.0]]), None, 5)


def test_context_validation():
    ctx = Context(dist=np.zeros((B, N), np.float64), layer=np.zeros((B, N), np.int64), hops=np.ones((B, N)))
    v = ctx.validated(B, N, np.dtype(np.float32), False)
    assert v.dist.dtype == np.float32 and v.layer.dtype == np.int8 and v.hops.dtype == np.int64
    assert sorted(ctx.present()) == ["dist", "hops", "layer"]
    u = Context(dist=np.zeros(N), edge_features=np.zeros((N, 2))).validated(1, N, np.dtype(np.float64), True)
    assert u.dist.shape == (1, N) and u.edge_features.shape == (1, N, 2)
    with pytest.raises(ShapeMismatchError, match=r"context.dist"):
        Context(dist=np.zeros((B, N + 1))).validated(B, N, np.dtype(np.float32), False)
    with pytest.raises(ShapeMismatchError, match="edge_features"):
        Context(edge_features=np.zeros((B, N))).validated(B, N, np.dtype(np.float32), False)
    with pytest.raises(InvalidDTypeError, match=r"context.layer"):
        Context(layer=np.full((B, N), 0.5)).validated(B, N, np.dtype(np.float32), False)
    with pytest.raises(NonFiniteError, match=r"context.dist"):
        Context(dist=np.full((B, N), np.nan)).validated(B, N, np.dtype(np.float32), False)


@pytest.mark.parametrize("bad", [{"dtype": np.int32}, {"dtype": "float16"}, {"seed": 1.5}, {"seed": True}])
def test_bad_common_config(bad):
    with pytest.raises(ConfigError):
        MECHANISMS["scaled_dot"](4, **bad)


@pytest.mark.parametrize("dim", [0, -3, 2.5, None])
def test_bad_dim(dim):
    with pytest.raises(ConfigError, match="dim"):
        MECHANISMS["scaled_dot"](dim)


def test_set_num_threads_validates():
    with pytest.raises(ConfigError):
        set_num_threads(0)


# -- every part-A mechanism ---------------------------------------------------------------------
@pytest.fixture(params=ref.PART_A)
def name(request):
    return request.param


def test_bad_inputs_raise_typed_errors(name):
    q, K, V, mask = _data()
    att = ref.make_mechanism(name, D, DV)
    ctx = ref.make_context(B, N)
    with pytest.raises(DimensionMismatchError, match="dimension"):
        att.forward(q[:, :3], K, V, mask, context=ctx)
    with pytest.raises(DimensionMismatchError):
        att.forward(q, K[:, :, :3], V, mask, context=ctx)
    with pytest.raises(ShapeMismatchError, match="batch size"):
        att.forward(q, K[:2], V, mask, context=ctx)
    with pytest.raises(ShapeMismatchError, match="values"):
        att.forward(q, K, V[:, :4], mask, context=ctx)
    with pytest.raises(ShapeMismatchError, match="mask"):
        att.forward(q, K, V, mask[:, :4], context=ctx)
    with pytest.raises(ShapeMismatchError, match="keys must be 3-D"):
        att.forward(q, K[0], V, mask, context=ctx)
    bad = q.copy()
    bad[1, 2] = np.nan
    with pytest.raises(NonFiniteError, match="query"):
        att.forward(bad, K, V, mask, context=ctx)
    badk = K.copy()
    badk[0, 0, 1] = np.inf  # an attended item (mask[:, 0] is True)
    with pytest.raises(NonFiniteError, match="keys"):
        att.forward(q, badk, V, mask, context=ctx)
    badv = V.copy()
    badv[1, 0, 2] = np.nan
    with pytest.raises(NonFiniteError, match="values"):
        att.forward(q, K, badv, mask, context=ctx)
    with pytest.raises(InvalidDTypeError, match="keys"):
        att.forward(q, K.astype(complex), V, mask, context=ctx)
    with pytest.raises(EmptyInputError):
        att.forward(q, K[:, :0], V[:, :0], mask[:, :0], context=None)
    with pytest.raises(EmptyInputError):
        att.forward(q[:0], K[:0], V[:0], mask[:0], context=ctx)
    with pytest.raises(InvalidInputError, match="context must be a Context"):
        att.forward(q, K, V, mask, context={"dist": 1})


def test_backward_needs_a_cache_of_this_mechanism(name):
    q, K, V, mask = _data()
    att = ref.make_mechanism(name, D, DV)
    ctx = ref.make_context(B, N)
    with pytest.raises(InvalidInputError, match="cache returned by forward"):
        att.backward(np.zeros((B, D)), np.zeros((B, D)))  # the v1 call form is rejected
    out, cache = att.forward(q, K, V, mask, context=ctx)
    G = np.random.default_rng(0).standard_normal(out.shape)
    g1 = att.backward(cache, G)
    with pytest.raises(ShapeMismatchError, match="grad_out"):
        att.backward(cache, G[:, :-1])
    with pytest.raises(NonFiniteError):
        att.forward(q * np.nan, K, V, mask, context=ctx)  # a rejected call changes no cache
    _, other_cache = att.forward(q[:2] * 0.5, K[:2], V[:2], mask[:2], context=ref.make_context(2, N))
    g2 = att.backward(cache, G)  # a later forward does not replace the cache either
    for k in g1:
        np.testing.assert_array_equal(g1[k], g2[k])
    assert set(g1) == set(att.params) | {"query", "keys", "values"}
    twin = ref.make_mechanism(name, D, DV)
    with pytest.raises(InvalidInputError, match="another mechanism object"):
        twin.backward(cache, G)
    assert other_cache.output_shape == (2, out.shape[1])
    for k, v in att.params.items():
        assert g1[k].shape == v.shape and g1[k].dtype == v.dtype


def test_dtype_conversion(name):
    q, K, V, mask = _data()
    ctx = ref.make_context(B, N)
    out = ref.make_mechanism(name, D, DV).forward(q, K, V, mask, context=ctx)[0]  # float64 in
    assert out.dtype == np.float32
    att64 = ref.make_mechanism(name, D, DV, dtype=np.float64)
    out64, _ = att64.forward(q.astype(np.float32), K, V, mask, context=ctx)
    assert out64.dtype == np.float64
    assert all(p.dtype == np.float64 for p in att64.params.values())
    np.testing.assert_allclose(out, out64, rtol=1e-4, atol=1e-5)
    # integer / bool inputs are converted
    assert np.isfinite(ref.make_mechanism(name, D, DV).forward(
        q.astype(int), K.astype(int), V.astype(int), mask.astype(int), context=ctx)[0]).all()


def test_unbatched_matches_batched(name):
    q, K, V, mask = _data()
    att = ref.make_mechanism(name, D, DV, dtype=np.float64)
    ctx = ref.make_context(B, N)
    full, cache = att.forward(q, K, V, mask, context=ctx)
    w_full = att.weights(q, K, mask, context=ctx, **({"values": V} if name == "local_global" else {}))
    uctx = Context(dist=ctx.dist[1], layer=ctx.layer[1], hops=ctx.hops[1])
    one, cache = att.forward(q[1], K[1], V[1], mask[1], context=uctx)
    np.testing.assert_allclose(one, full[1], rtol=1e-12, atol=1e-14)
    g = att.backward(cache, np.ones_like(one))
    assert g["query"].shape == (D,) and g["keys"].shape == (N, D) and g["values"].shape == (N, DV)
    w = att.weights(q[1], K[1], mask[1], context=uctx, **({"values": V[1]} if name == "local_global" else {}))
    np.testing.assert_allclose(w, w_full[1], rtol=1e-12, atol=1e-14)


def test_gather_form_equals_dense(name):
    rng = np.random.default_rng(1)
    tk = rng.standard_normal((20, D))
    tv = rng.standard_normal((20, DV))
    ids = rng.integers(-1, 20, size=(B, N))
    ids[:, 0] = 3
    ids[-1, 1:] = -1
    ctx = ref.make_context(B, N)
    att = ref.make_mechanism(name, D, DV, dtype=np.float64)
    out_g, cache = att.forward(q := rng.standard_normal((B, D)), tk, tv, context=ctx, ids=ids)
    G = rng.standard_normal(out_g.shape)
    gg = att.backward(cache, G)
    m = ids >= 0
    Kd, Vd = tk[np.maximum(ids, 0)], tv[np.maximum(ids, 0)]
    out_d, cache = att.forward(q, Kd, Vd, mask=m, context=ctx)
    gd = att.backward(cache, G)
    np.testing.assert_allclose(out_g, out_d, rtol=1e-12, atol=1e-13)
    for key, table in (("keys", tk), ("values", tv)):
        want = np.zeros_like(table)
        np.add.at(want, ids[m], gd[key][m])
        np.testing.assert_allclose(gg[key], want, rtol=1e-10, atol=1e-12)
    for key in gd:
        if key not in ("keys", "values"):
            np.testing.assert_allclose(gg[key], gd[key], rtol=1e-10, atol=1e-12)


def test_gather_errors(name):
    rng = np.random.default_rng(0)
    tk, tv = rng.standard_normal((20, D)), rng.standard_normal((20, DV))
    q = rng.standard_normal((B, D))
    ids = rng.integers(0, 20, size=(B, N))
    att = ref.make_mechanism(name, D, DV)
    ctx = ref.make_context(B, N)
    with pytest.raises(InvalidInputError, match="ids must lie"):
        att.forward(q, tk, tv, context=ctx, ids=ids + 20)
    with pytest.raises(ShapeMismatchError, match="rows"):
        att.forward(q, tk, tv[:10], context=ctx, ids=ids)
    with pytest.raises(ShapeMismatchError, match="ids must have shape"):
        att.forward(q, tk, tv, context=ctx, ids=ids[:2])
    with pytest.raises(InvalidDTypeError, match="ids"):
        att.forward(q, tk, tv, context=ctx, ids=ids.astype(float))
    bad = tk.copy()
    bad[ids[1, 2]] = np.nan
    with pytest.raises(NonFiniteError):
        att.forward(q, bad, tv, context=ctx, ids=ids)


def test_masked_slots_are_never_read(name):
    q, K, V, mask = _data()
    mask[0, 2] = False
    K2, V2 = K.copy(), V.copy()
    K2[0, 2] = np.nan
    V2[0, 2] = np.inf
    att = ref.make_mechanism(name, D, DV, dtype=np.float64)
    ctx = ref.make_context(B, N)
    if att.checks_table_rows:  # fused kernels check only attended items
        np.testing.assert_array_equal(
            att.forward(q, K2, V2, mask, context=ctx)[0], att.forward(q, K, V, mask, context=ctx)[0]
        )
    else:
        with pytest.raises(NonFiniteError):
            att.forward(q, K2, V2, mask, context=ctx)


def test_set_params():
    att = MECHANISMS["multi_head"](4, heads=2)
    with pytest.raises(InvalidInputError, match="no parameter"):
        att.set_params({"W_x": np.zeros((4, 4))})
    with pytest.raises(ShapeMismatchError):
        att.set_params({"W_q": np.zeros((3, 4))})
    before = att.params["W_q"]
    att.set_params({"W_q": np.ones((4, 4))})
    assert att.params["W_q"] is before and np.all(before == 1)


class _Plain(AttentionMechanism):
    """A non-fused mechanism (numpy softmax) to check the generic gather/scatter of the base class."""

    name = "plain"

    def _forward(self, batch):
        s = np.einsum("bd,bnd->bn", batch.query, batch.keys)
        w = np.zeros_like(s)
        for b in range(batch.B):
            w[b] = ref.softmax_masked(s[b], batch.mask[b])
        return ForwardResult(np.einsum("bn,bnd->bd", w, batch.values), (batch, w), weights=w)

    def _weights(self, batch):
        return self._forward(batch).weights

    def _backward(self, g, data, input_grads):
        batch, w = data
        dw = np.einsum("bd,bnd->bn", g, batch.values)
        ds = w * (dw - (w * dw).sum(1, keepdims=True))
        return {
            "query": np.einsum("bn,bnd->bd", ds, batch.keys),
            "keys": np.einsum("bn,bd->bnd", ds, batch.query),
            "values": np.einsum("bn,bd->bnd", w, g),
        }


def test_generic_gather_for_non_fused_mechanisms():
    rng = np.random.default_rng(0)
    tk, tv = rng.standard_normal((6, 3)), rng.standard_normal((6, 2))
    ids = np.array([[0, 1, 1, -1], [5, -1, 2, 0]])
    ref.check_gradients(_Plain(3, dtype=np.float64), rng.standard_normal((2, 3)), tk, tv, ids=ids)
    bad = tk.copy()
    bad[4] = np.nan  # unreferenced, but non-fused mechanisms scan the whole table
    with pytest.raises(NonFiniteError, match="keys"):
        _Plain(3).forward(rng.standard_normal((2, 3)), bad, tv, ids=ids)


def test_warmup_leaves_caches_and_params_alone(name):
    q, K, V, mask = _data()
    att = ref.make_mechanism(name, D, DV)
    ctx = ref.make_context(B, N)
    out, cache = att.forward(q, K, V, mask, context=ctx)
    G = np.ones_like(out)
    g1 = att.backward(cache, G)
    params = {k: v.copy() for k, v in att.params.items()}
    att.warmup(value_dim=DV)
    g2 = att.backward(cache, G)
    for k in g1:
        np.testing.assert_array_equal(g1[k], g2[k])
    for k, v in params.items():
        np.testing.assert_array_equal(att.params[k], v)


def test_pickle_round_trip(name):
    import pickle

    q, K, V, mask = _data()
    ctx = ref.make_context(B, N)
    att = ref.make_mechanism(name, D, DV, seed=4)
    out, cache = att.forward(q, K, V, mask, context=ctx)
    clone = pickle.loads(pickle.dumps(att))
    out2, cache2 = clone.forward(q, K, V, mask, context=ctx)
    np.testing.assert_array_equal(out2, out)
    G = np.ones_like(out)
    g, g2 = att.backward(cache, G), clone.backward(cache2, G)
    for k in g:
        np.testing.assert_array_equal(g2[k], g[k])
    with pytest.raises(InvalidInputError):
        clone.backward(cache, G)  # a cache belongs to the object whose forward made it
    assert clone.get_config() == att.get_config()


@pytest.mark.parametrize("gather", [False, True])
def test_backward_without_input_grads(name, gather):
    rng = np.random.default_rng(2)
    ctx = ref.make_context(B, N)
    att = ref.make_mechanism(name, D, DV, dtype=np.float64)
    q = rng.standard_normal((B, D))
    if gather:
        K, V, ids, mask = rng.standard_normal((9, D)), rng.standard_normal((9, DV)), rng.integers(-1, 9, (B, N)), None
    else:
        _, K, V, mask = _data()
        ids = None
    out, cache = att.forward(q, K, V, mask, context=ctx, ids=ids)
    G = rng.standard_normal(out.shape)
    full = att.backward(cache, G)
    part = att.backward(cache, G, input_grads=False)
    assert set(part) == set(full) - {"keys", "values"}
    for k in part:
        np.testing.assert_allclose(part[k], full[k], rtol=1e-12, atol=1e-14)
    again = att.backward(cache, G)  # nothing sticks: the same cache serves both calls
    assert set(again) == set(full)


def test_forward_without_values_is_a_typed_error_for_every_mechanism() -> None:
    from ruvector_hnsw.attention import MECHANISMS
    from ruvector_hnsw.errors import InvalidInputError

    rng = np.random.default_rng(0)
    q = rng.random((3, 8)).astype(np.float32)
    keys = rng.random((3, 5, 8)).astype(np.float32)
    for cls in MECHANISMS.values():
        mech = cls(8, seed=0)
        with pytest.raises(InvalidInputError, match="values are required"):
            mech.forward(q, keys, None)
