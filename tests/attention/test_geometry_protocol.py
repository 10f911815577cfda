"""The shared protocol checks (as in test_base for the part-A mechanisms) for mixed_curvature,
topology_gated and info_bottleneck: typed errors, unbatched and gather forms, dtypes, pickling,
masked slots, params-only backward, warm-up."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from ruvector_hnsw.attention import MECHANISMS, Context
from ruvector_hnsw.errors import (
    DimensionMismatchError,
    EmptyInputError,
    InvalidDTypeError,
    InvalidInputError,
    NonFiniteError,
    ShapeMismatchError,
)
from tests.attention import _reference as ref

NEW = ("mixed_curvature", "topology_gated", "info_bottleneck")
B, N, D, DV = 3, 6, 8, 3


def make(name, dtype=np.float32, seed=0):
    kw = {"dtype": dtype, "seed": seed}
    if name == "info_bottleneck":
        kw.update(value_dim=DV, bottleneck_dim=2)
    elif name == "topology_gated":
        # thresholds that put the rows of these small problems in different modes
        kw.update(top_k=2, cautious_threshold=0.3, freeze_threshold=0.45)
    elif name == "mixed_curvature":
        kw.update(dims=(3, 3, 2))
    m = MECHANISMS[name](D, **kw)
    rng = np.random.default_rng(seed + 100)
    for v in m.params.values():
        v[...] += 0.2 * rng.standard_normal(v.shape)
    return m


def context(name, B_=B, n=N, seed=0, unbatched=False):
    base = ref.make_context(B_, n, seed=seed)
    extra = {}
    if name == "topology_gated":
        extra["query_value"] = np.random.default_rng(seed).standard_normal((B_, DV))
    elif name == "info_bottleneck":
        extra.update(sample_seed=7, step=2)
    if unbatched:
        return Context(dist=base.dist[0], layer=base.layer[0], hops=base.hops[0],
                       extra={k: (v[0] if isinstance(v, np.ndarray) else v) for k, v in extra.items()})
    return Context(dist=base.dist, layer=base.layer, hops=base.hops, extra=extra)


def _data(seed=0):
    rng = np.random.default_rng(seed)
    mask = rng.random((B, N)) > 0.3
    mask[:, 0] = True
    return rng.standard_normal((B, D)), rng.standard_normal((B, N, D)), rng.standard_normal((B, N, DV)), mask


@pytest.fixture(params=NEW)
def name(request):
    return request.param


def test_bad_inputs_raise_typed_errors(name):
    q, K, V, mask = _data()
    att, ctx = make(name), context(name)
    with pytest.raises(DimensionMismatchError):
        att.forward(q[:, :3], K, V, mask, context=ctx)
    with pytest.raises(ShapeMismatchError, match="batch size"):
        att.forward(q, K[:2], V, mask, context=ctx)
    with pytest.raises(ShapeMismatchError, match="mask"):
        att.forward(q, K, V, mask[:, :4], context=ctx)
    bad = q.copy()
    bad[1, 2] = np.nan
    with pytest.raises(NonFiniteError, match="query"):
        att.forward(bad, K, V, mask, context=ctx)
    badk = K.copy()
    badk[0, 0, 1] = np.inf
    with pytest.raises(NonFiniteError):
        att.forward(q, badk, V, mask, context=ctx)
    with pytest.raises(InvalidDTypeError):
        att.forward(q, K.astype(complex), V, mask, context=ctx)
    with pytest.raises(EmptyInputError):
        att.forward(q[:0], K[:0], V[:0], mask[:0], context=None)
    with pytest.raises(InvalidInputError, match="context must be a Context"):
        att.forward(q, K, V, mask, context={"dist": 1})
    out, cache = att.forward(q, K, V, mask, context=ctx)
    with pytest.raises(ShapeMismatchError, match="grad_out"):
        att.backward(cache, np.ones((B, out.shape[1] + 1)))
    with pytest.raises(InvalidInputError, match="another mechanism object"):
        make(name).backward(cache, np.ones_like(out))


def test_gradients_match_finite_differences(name):
    q, K, V, mask = _data(1)
    att, ctx = make(name, np.float64), context(name, seed=1)
    if name == "info_bottleneck":
        ctx = Context(dist=ctx.dist, layer=ctx.layer, hops=ctx.hops, extra={"sample_seed": 3})  # beta*KL: own test
        att = MECHANISMS[name](D, value_dim=DV, dtype=np.float64, beta=0.0)
    ref.check_gradients(att, q, K, V, mask, context=ctx)


def test_unbatched_matches_batched(name):
    q, K, V, mask = _data()
    att, ctx = make(name, np.float64), context(name)
    if name == "info_bottleneck":  # noise depends on the batch shape: compare inference calls
        ctx = Context(dist=ctx.dist, layer=ctx.layer, hops=ctx.hops)
    full, cache = att.forward(q, K, V, mask, context=ctx)
    uctx = context(name, unbatched=True)
    if name == "info_bottleneck":
        uctx = Context(dist=uctx.dist, layer=uctx.layer, hops=uctx.hops)
    one, c1 = att.forward(q[0], K[0], V[0], mask[0], context=uctx)
    np.testing.assert_allclose(one, full[0], rtol=1e-12, atol=1e-14)
    g = att.backward(c1, np.ones_like(one))
    assert g["query"].shape == (D,) and g["keys"].shape == (N, D) and g["values"].shape == (N, DV)
    np.testing.assert_allclose(att.weights(q[0], K[0], mask[0], context=uctx), cache.weights[0], rtol=1e-12,
                               atol=1e-14)


def test_gather_form_equals_dense(name):
    rng = np.random.default_rng(1)
    tk, tv = rng.standard_normal((20, D)), rng.standard_normal((20, DV))
    ids = rng.integers(-1, 20, size=(B, N))
    ids[:, 0] = 3
    ids[-1, 1:] = -1
    att, ctx = make(name, np.float64), context(name)
    q = rng.standard_normal((B, D))
    out_g, cache = att.forward(q, tk, tv, context=ctx, ids=ids)
    G = rng.standard_normal(out_g.shape)
    gg = att.backward(cache, G)
    m = ids >= 0
    out_d, cache = att.forward(q, tk[np.maximum(ids, 0)], tv[np.maximum(ids, 0)], mask=m, context=ctx)
    gd = att.backward(cache, G)
    np.testing.assert_allclose(out_g, out_d, rtol=1e-12, atol=1e-13)
    for key, table in (("keys", tk), ("values", tv)):
        want = np.zeros_like(table)
        np.add.at(want, ids[m], gd[key][m])
        np.testing.assert_allclose(gg[key], want, rtol=1e-10, atol=1e-12)
    for key in gd:
        if key not in ("keys", "values"):
            np.testing.assert_allclose(gg[key], gd[key], rtol=1e-10, atol=1e-12)


def test_dtype_conversion(name):
    q, K, V, mask = _data()
    ctx = context(name)
    out = make(name).forward(q, K, V, mask, context=ctx)[0]
    assert out.dtype == np.float32
    out64 = make(name, np.float64).forward(q.astype(np.float32), K, V, mask, context=ctx)[0]
    assert out64.dtype == np.float64
    np.testing.assert_allclose(out, out64, rtol=1e-4, atol=1e-5)


def test_masked_slots_are_never_read(name):
    q, K, V, mask = _data()
    mask[0, 2] = False
    K2, V2 = K.copy(), V.copy()
    K2[0, 2], V2[0, 2] = np.nan, np.inf
    att, ctx = make(name, np.float64), context(name)
    np.testing.assert_array_equal(att.forward(q, K2, V2, mask, context=ctx)[0],
                                  att.forward(q, K, V, mask, context=ctx)[0])


@pytest.mark.parametrize("gather", [False, True])
def test_params_only_backward_equals_the_full_one(name, gather):
    rng = np.random.default_rng(2)
    att, ctx = make(name, np.float64), context(name)
    q = rng.standard_normal((B, D))
    if gather:
        K, V, ids, mask = rng.standard_normal((9, D)), rng.standard_normal((9, DV)), rng.integers(-1, 9, (B, N)), None
    else:
        _, K, V, mask = _data()
        ids = None
    out, cache = att.forward(q, K, V, mask, context=ctx, ids=ids)
    G = rng.standard_normal(out.shape)
    full, part = att.backward(cache, G), att.backward(cache, G, input_grads=False)
    assert set(part) == set(full) - {"keys", "values"}
    for k in part:
        np.testing.assert_allclose(part[k], full[k], rtol=1e-12, atol=1e-14)


def test_pickle_round_trip_and_warmup(name):
    q, K, V, mask = _data()
    att, ctx = make(name, seed=4), context(name)
    out, cache = att.forward(q, K, V, mask, context=ctx)
    clone = pickle.loads(pickle.dumps(att))
    out2, _ = clone.forward(q, K, V, mask, context=ctx)
    np.testing.assert_array_equal(out2, out)
    g = att.backward(cache, np.ones_like(out))
    params = {k: v.copy() for k, v in att.params.items()}
    att.warmup(value_dim=DV, context=context(name, B_=2, n=3))
    for k, v in att.backward(cache, np.ones_like(out)).items():
        np.testing.assert_array_equal(v, g[k])
    for k, v in params.items():
        np.testing.assert_array_equal(att.params[k], v)
    assert clone.get_config() == att.get_config()
