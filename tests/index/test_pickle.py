"""HNSWIndex pickles: the same graph, vectors, ids, results and settings, also in a spawned worker."""

from __future__ import annotations

import copy
import multiprocessing
import operator
import pickle

import numpy as np
import pytest

from ruvector_hnsw import HNSWIndex
from ruvector_hnsw.errors import IndexCorruptedError

DIM = 10


def _x(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


@pytest.fixture(params=["l2", "cosine"])
def built(request) -> HNSWIndex:
    idx = HNSWIndex(DIM, space=request.param, M=6, ef_construction=50, seed=3, num_threads=1)
    idx.add(_x(400), ids=np.arange(400) * 3 + 1)  # labels unrelated to internal ids
    idx.delete([1, 31, 301])
    idx.ef = 77
    idx.graph()  # a cached snapshot must not travel
    return idx


def _assert_same_graph(a: HNSWIndex, b: HNSWIndex) -> None:
    ga, gb = a.graph(), b.graph()
    for name in ("labels", "levels", "deleted", "vectors"):
        np.testing.assert_array_equal(getattr(ga, name), getattr(gb, name), err_msg=name)
    assert (ga.entry_point, ga.max_level, ga.space, ga.M) == (gb.entry_point, gb.max_level, gb.space, gb.M)
    for layer in range(ga.max_level + 1):
        for x, y in zip(ga.layer(layer), gb.layer(layer), strict=True):
            np.testing.assert_array_equal(x, y, err_msg=f"layer {layer}")
    sa, sb = a.raw_state(), b.raw_state()
    for key in ("data_level0", "link_lists", "element_levels"):
        np.testing.assert_array_equal(sa[key], sb[key], err_msg=key)
    lookup = {int(e): int(i) for e, i in zip(sa["label_lookup_external"], sa["label_lookup_internal"], strict=True)}
    assert lookup == {int(e): int(i) for e, i in zip(sb["label_lookup_external"], sb["label_lookup_internal"],
                                                     strict=True)}


def _assert_equal_index(a: HNSWIndex, b: HNSWIndex) -> None:
    assert (a.dim, a.space, a.M, a.ef_construction, a.seed, a.ef, a.num_threads, a.capacity, len(a)) == (
        b.dim, b.space, b.M, b.ef_construction, b.seed, b.ef, b.num_threads, b.capacity, len(b))
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.get_vectors(a.ids), b.get_vectors(b.ids))
    _assert_same_graph(a, b)
    q = _x(30, 9)
    for kwargs in ({}, {"ef": 20}, {"filter": np.arange(0, 1300, 2)}):
        ra, rb = a.search(q, k=8, **kwargs), b.search(q, k=8, **kwargs)
        np.testing.assert_array_equal(ra[0], rb[0])
        np.testing.assert_array_equal(ra[1], rb[1])


def test_pickle_round_trip_is_an_equal_index(built: HNSWIndex) -> None:
    back = pickle.loads(pickle.dumps(built, protocol=pickle.HIGHEST_PROTOCOL))
    _assert_equal_index(built, back)
    assert 31 not in back and 34 in back


def test_state_drops_the_lock_and_the_graph_cache(built: HNSWIndex) -> None:
    state = built.__getstate__()
    assert "_lock" not in state and "_graph_cache" not in state and "_index" not in state
    back = pickle.loads(pickle.dumps(built))
    assert back._lock is not built._lock  # a fresh, unlocked lock
    with back._lock.write():  # not held by anyone
        pass


def test_deepcopy_is_independent(built: HNSWIndex) -> None:
    twin = copy.deepcopy(built)
    _assert_equal_index(built, twin)
    before = built.search(_x(5, 1), k=5)
    twin.add(_x(50, 2))
    twin.delete([4, 7])
    twin.ef = 12
    assert len(twin) == len(built) + 48 and built.ef == 77
    after = built.search(_x(5, 1), k=5)
    np.testing.assert_array_equal(before[0], after[0])
    assert 4 in built


def test_unpickled_index_accepts_writes_and_keeps_num_threads() -> None:
    idx = HNSWIndex(DIM, num_threads=2, seed=1)
    idx.add(_x(100))
    back = pickle.loads(pickle.dumps(idx))
    assert back.num_threads == 2
    back.add(_x(30, 5))
    back.delete([0])
    assert len(back) == 129 and len(idx) == 100
    assert back.search(_x(1, 5)[0], k=1)[0][0, 0] == 100  # the added row finds itself


def test_unknown_pickle_version_is_rejected(built: HNSWIndex) -> None:
    state = built.__getstate__()
    state["_pickle_version"] = 99
    fresh = HNSWIndex.__new__(HNSWIndex)
    with pytest.raises(IndexCorruptedError, match="99"):
        fresh.__setstate__(state)


def test_search_in_a_spawned_pool_gives_the_same_results(built: HNSWIndex) -> None:
    q = _x(25, 11)
    expected = built.search(q, k=6)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        got = pool.apply(operator.methodcaller("search", q, k=6), (built,))
        back = pool.apply(copy.copy, (built,))  # and the worker can send the index back
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
    _assert_equal_index(built, back)
