"""Protocol v2 over every mechanism in MECHANISMS: pure calls, the immutable cache, thread safety and
``input_grads=False`` costing no table-sized memory."""

from __future__ import annotations

import dataclasses
import gc
import threading
import tracemalloc
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from ruvector_hnsw.attention import MECHANISMS, AttentionMechanism, Context
from ruvector_hnsw.attention.base import AttentionCache
from ruvector_hnsw.errors import InvalidInputError, MissingContextError

NAMES = tuple(MECHANISMS)


def _problem(B: int, n: int, d: int, rows: int, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, rows, (B, n))
    ids[:, -1] = -1  # some padding
    layer = (rng.random((B, n)) < 0.3).astype(np.int8)
    layer[:, 0] = 0
    layer[:, 1] = 1
    return {
        "table": rng.standard_normal((rows, d), dtype=np.float32),
        "q": rng.standard_normal((B, d), dtype=np.float32),
        "ids": ids,
        "items": {"dist": rng.random((B, n), dtype=np.float32), "layer": layer,
                  "hops": rng.integers(1, 3, (B, n)), "degree": rng.integers(1, 32, (B, n)).astype(np.float32)},
        "G": rng.standard_normal((B, d)).astype(np.float32),
    }


def _setup(name: str, p: dict[str, Any], dtype: Any = np.float32) -> tuple[AttentionMechanism, Context]:
    mech = MECHANISMS[name](p["table"].shape[1], dtype=dtype, seed=0)
    return mech, Context(**p["items"], table_state=mech.prepare_table(p["table"]))


def _snapshot(obj: Any) -> Any:
    """A deep, comparable image of a mechanism's state; unknown kinds of state fail loudly."""
    if isinstance(obj, np.ndarray):
        return ("ndarray", obj.dtype.str, obj.shape, obj.tobytes(), obj.flags.writeable)
    if isinstance(obj, AttentionMechanism):
        return ("mechanism", type(obj).__name__, _snapshot(vars(obj)))
    if isinstance(obj, Mapping):
        return ("map", tuple((k, _snapshot(v)) for k, v in obj.items()))
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__, tuple(_snapshot(v) for v in obj))
    if obj is None or isinstance(obj, (bool, int, float, str, np.dtype, np.generic)):
        return obj
    raise TypeError(f"unexpected state of type {type(obj).__name__}: extend _snapshot")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("gather", [True, False])
def test_calls_write_nothing_on_the_mechanism(name: str, gather: bool) -> None:
    p = _problem(6, 5, 8, 40)
    mech, ctx = _setup(name, p)
    before = _snapshot(vars(mech))
    mech.warmup()
    T = p["table"]
    if gather:
        args: tuple[Any, ...] = (p["q"], T, T)
        kw: dict[str, Any] = {"context": ctx, "ids": p["ids"]}
    else:
        K = T[np.maximum(p["ids"], 0)]
        args, kw = (p["q"], K, K), {"mask": p["ids"] >= 0, "context": ctx}
    out, cache = mech.forward(*args, **kw)
    mech.backward(cache, np.ones_like(out))
    mech.backward(cache, np.ones_like(out), input_grads=False)
    mech.weights(args[0], args[1], **kw)
    _ = cache.weights
    mech.warmup()
    assert _snapshot(vars(mech)) == before


@pytest.mark.parametrize("name", NAMES)
def test_cache_is_immutable_and_describes_the_forward(name: str) -> None:
    p = _problem(6, 5, 8, 40)
    mech, ctx = _setup(name, p, np.float64)
    T = p["table"]
    out, cache = mech.forward(p["q"], T, T, context=ctx, ids=p["ids"])
    assert isinstance(cache, AttentionCache) and cache.mechanism == name
    assert cache.output_shape == out.shape
    with pytest.raises(dataclasses.FrozenInstanceError):
        cache.output_shape = (1,)  # type: ignore[misc]
    with pytest.raises(TypeError):
        cache.aux_losses["x"] = 1.0  # type: ignore[index]
    with pytest.raises(TypeError):
        cache.inspect["x"] = np.zeros(1)  # type: ignore[index]
    expected_aux = {"moe": {"load_balance"}, "info_bottleneck": {"kl"}}
    assert set(cache.aux_losses) == expected_aux.get(name, set())
    assert all(isinstance(v, float) for v in cache.aux_losses.values())
    expected_inspect = {"local_global": {"local_weights", "global_weights", "gate", "local_count", "global_count"},
                        "moe": {"gates", "router_probs"}, "dual_space": {"latent_ids", "gate"},
                        "mixed_curvature": {"head_weights"},
                        "topology_gated": {"mode", "risk", "boundary_mass", "cut", "disagreement",
                                           "similarity_variance"},
                        "info_bottleneck": {"mu", "logvar", "kl", "beta"}}
    assert set(cache.inspect) == expected_inspect.get(name, set())
    for arr in cache.inspect.values():
        assert not arr.flags.writeable and arr.shape[0] == out.shape[0]
    w = cache.weights
    assert w is not None and not w.flags.writeable
    kw = {"values": T} if name == "local_global" else {}
    np.testing.assert_allclose(w, mech.weights(p["q"], T, context=ctx, ids=p["ids"], **kw), rtol=1e-10, atol=1e-14)
    # unbatched calls squeeze the cache's arrays too
    one, c1 = mech.forward(p["q"][0], T, T, context=_row(ctx, 0), ids=p["ids"][0])
    assert c1.output_shape == one.shape == out.shape[1:]
    assert c1.weights is not None and c1.weights.shape == w.shape[1:]
    for key, arr in c1.inspect.items():
        assert arr.shape == cache.inspect[key].shape[1:]


def _row(ctx: Context, b: int) -> Context:
    return dataclasses.replace(ctx, **{k: getattr(ctx, k)[b] for k in ctx.present()})


@pytest.mark.parametrize("name", NAMES)
def test_concurrent_calls_on_one_object_equal_serial_calls(name: str) -> None:
    # large enough that the kernels split rows over the shared thread pool
    p1, p2 = _problem(300, 48, 32, 2000, seed=1), _problem(200, 48, 32, 2000, seed=2)
    p2["table"] = p1["table"]
    mech, ctx1 = _setup(name, p1)
    ctx2 = dataclasses.replace(Context(**p2["items"]), table_state=ctx1.table_state)
    jobs = [(p1, ctx1), (p2, ctx2)]
    T = p1["table"]

    def run(job: tuple[dict[str, Any], Context]) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
        p, ctx = job
        out, cache = mech.forward(p["q"], T, T, context=ctx, ids=p["ids"])
        g_out = p["G"][:, : out.shape[1]]
        return out, mech.backward(cache, g_out), mech.backward(cache, g_out, input_grads=False)

    serial = [run(j) for j in jobs]
    before = _snapshot(vars(mech))
    barrier = threading.Barrier(2)
    results: list[list[Any]] = [[], []]
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            barrier.wait()
            for _ in range(4):
                results[i].append(run(jobs[i]))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i in range(2):
        for out, full, part in results[i]:
            np.testing.assert_array_equal(out, serial[i][0])
            for k in serial[i][1]:
                np.testing.assert_array_equal(full[k], serial[i][1][k], err_msg=k)
            assert set(part) == set(full) - {"keys", "values"}
            for k in part:
                np.testing.assert_array_equal(part[k], serial[i][2][k], err_msg=k)
    assert _snapshot(vars(mech)) == before


@pytest.mark.parametrize("name", NAMES)
def test_backward_without_input_grads_allocates_nothing_table_sized(name: str) -> None:
    """Gather form over a 200k x 64 float32 table (51 MB): a params-only backward stays < 5 MiB."""
    p = _problem(256, 32, 64, 200_000, seed=3)
    mech, ctx = _setup(name, p)
    T = p["table"]
    out, cache = mech.forward(p["q"], T, T, context=ctx, ids=p["ids"])
    g = p["G"][:, : out.shape[1]]
    mech.backward(cache, g, input_grads=False)  # compile and warm everything outside the measurement
    gc.collect()
    tracemalloc.start()
    try:
        grads = mech.backward(cache, g, input_grads=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "keys" not in grads and "values" not in grads and "query" in grads
    assert peak < 5 * 2**20, f"{name}: backward(input_grads=False) peaked at {peak / 2**20:.1f} MiB"


def test_input_gradients_are_table_sized() -> None:
    """The counterpart of the test above: with input gradients a backward does allocate the tables."""
    p = _problem(256, 32, 64, 200_000, seed=3)
    mech, ctx = _setup("scaled_dot", p)
    T = p["table"]
    _, cache = mech.forward(p["q"], T, T, context=ctx, ids=p["ids"])
    mech.backward(cache, p["G"])
    tracemalloc.start()
    try:
        grads = mech.backward(cache, p["G"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert grads["keys"].shape == T.shape
    assert peak >= 2 * T.nbytes


def test_dual_space_gather_form_without_table_state_names_prepare_table() -> None:
    p = _problem(4, 5, 8, 40)
    mech = MECHANISMS["dual_space"](8, seed=0)
    T = p["table"]
    with pytest.raises(MissingContextError, match="prepare_table"):
        mech.forward(p["q"], T, T, context=Context(**p["items"]), ids=p["ids"])
    stateful = {"dual_space", "sliced_wasserstein", "centroid_ot"}  # mechanisms with a per-table state
    assert all(MECHANISMS[n](8).prepare_table(T) is None for n in NAMES if n not in stateful)
    assert all(MECHANISMS[n](8).prepare_table(T) is not None for n in stateful)


def test_backward_rejects_foreign_caches() -> None:
    p = _problem(4, 5, 8, 40)
    a, ctx = _setup("scaled_dot", p)
    b, _ = _setup("flash", p)
    T = p["table"]
    out, cache = a.forward(p["q"], T, T, context=ctx, ids=p["ids"])
    with pytest.raises(InvalidInputError, match="another mechanism"):
        b.backward(cache, np.ones_like(out))
    with pytest.raises(InvalidInputError, match="cache returned by forward"):
        a.backward((out, cache), np.ones_like(out))
