"""HNSWIndex behaviour: add/search/delete/filter, validation, padding, concurrency."""

from __future__ import annotations

import threading

import hnswlib
import numpy as np
import pytest

from ruvector_hnsw import HNSWIndex
from ruvector_hnsw.errors import (
    ConfigError,
    DimensionMismatchError,
    DuplicateIdError,
    EmptyInputError,
    FilterError,
    IdExistsError,
    InvalidDTypeError,
    InvalidInputError,
    NonFiniteError,
    RuvectorError,
    ShapeMismatchError,
    UnknownIdError,
)

DIM = 12


def _x(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


@pytest.fixture
def idx() -> HNSWIndex:
    index = HNSWIndex(DIM, M=8, ef_construction=100, seed=1)
    index.add(_x(500))
    return index


def _snapshot(index: HNSWIndex) -> tuple:
    g = index.graph()
    return len(index), index.ids.tolist(), g.labels.tolist(), index.search(_x(3, 9), 5)[0].tolist()


def test_add_default_ids_and_exact_top1(idx: HNSWIndex) -> None:
    assert len(idx) == 500 and idx.dim == DIM and idx.space == "l2"
    new = idx.add(_x(10, 1))
    np.testing.assert_array_equal(new, np.arange(500, 510))
    x = _x(500)
    ids, dist = idx.search(x[:50], k=1)
    assert ids.shape == (50, 1) and ids.dtype == np.int64 and dist.dtype == np.float32
    np.testing.assert_array_equal(ids[:, 0], np.arange(50))
    np.testing.assert_allclose(dist[:, 0], 0.0, atol=1e-5)


def test_search_matches_raw_hnswlib() -> None:
    x = _x(2000, 4)
    q = _x(100, 5)
    ours = HNSWIndex(DIM, M=8, ef_construction=80, seed=3, num_threads=1)
    ours.add(x)
    raw = hnswlib.Index(space="l2", dim=DIM)
    raw.init_index(max_elements=2000, M=8, ef_construction=80, random_seed=3)
    raw.add_items(x, np.arange(2000), num_threads=1)
    raw.set_ef(50)
    ids, dist = ours.search(q, k=10, ef=50)
    rids, rdist = raw.knn_query(q, k=10)
    np.testing.assert_array_equal(ids, rids.astype(np.int64))
    np.testing.assert_allclose(dist, rdist)


@pytest.mark.parametrize("space", ["ip", "cosine"])
def test_distance_conventions(space: str) -> None:
    x = _x(300, 2)
    index = HNSWIndex(DIM, space=space, seed=2)
    index.add(x)
    ids, dist = index.search(x[:5], k=3, ef=300)
    base = x / np.linalg.norm(x, axis=1, keepdims=True) if space == "cosine" else x
    q = base[:5]
    ref = 1.0 - np.einsum("qd,qkd->qk", q, base[ids])
    np.testing.assert_allclose(dist, ref, atol=1e-5)
    if space == "cosine":
        np.testing.assert_allclose(np.linalg.norm(index.get_vectors([0, 1]), axis=1), 1.0, atol=1e-5)


def test_padding_when_fewer_than_k(idx: HNSWIndex) -> None:
    small = HNSWIndex(DIM, seed=0)
    small.add(_x(3))
    ids, dist = small.search(_x(2, 1), k=5)
    assert ids.shape == (2, 5)
    assert (ids[:, 3:] == -1).all() and np.isinf(dist[:, 3:]).all()
    assert (ids[:, :3] >= 0).all() and np.isfinite(dist[:, :3]).all()
    # a filter that admits only 2 items: padded, never hnswlib's contiguous-array error
    ids, dist = idx.search(_x(4, 2), k=10, filter=[3, 7])
    assert sorted(ids[0, :2].tolist()) == [3, 7] and (ids[:, 2:] == -1).all() and np.isinf(dist[:, 2:]).all()
    # an empty index returns only padding
    empty = HNSWIndex(DIM)
    ids, dist = empty.search(_x(1), k=2)
    assert (ids == -1).all() and np.isinf(dist).all()


def test_filter_callable_and_collection(idx: HNSWIndex) -> None:
    q = _x(20, 3)
    ids, _ = idx.search(q, k=5, filter=lambda label: label % 2 == 0)
    assert ((ids % 2) == 0).all()
    ids2, _ = idx.search(q, k=5, filter=np.arange(0, 500, 2))
    np.testing.assert_array_equal(ids, ids2)
    ids3, _ = idx.search(q, k=5, filter={1, 3, 5, 7, 9, 11})
    assert set(ids3.ravel().tolist()) <= {1, 3, 5, 7, 9, 11}


def test_delete_hides_from_search_and_get(idx: HNSWIndex) -> None:
    x = _x(500)
    idx.delete([0, 1])
    assert len(idx) == 498 and 0 not in idx and 2 in idx
    ids, _ = idx.search(x[:2], k=5)
    assert not np.isin(ids, [0, 1]).any()
    with pytest.raises(UnknownIdError, match="deleted"):
        idx.get_vectors([0])
    with pytest.raises(UnknownIdError):
        idx.delete([1])
    # a deleted id may be added again (hnswlib revives it with the new vector)
    idx.add(x[:1] + 1.0, ids=[0])
    np.testing.assert_allclose(idx.get_vectors([0])[0], x[0] + 1.0)
    assert len(idx) == 499


def test_get_vectors_roundtrip(idx: HNSWIndex) -> None:
    x = _x(500)
    np.testing.assert_array_equal(idx.get_vectors([5, 2, 5]), x[[5, 2, 5]])


def test_float64_and_int_inputs_are_converted() -> None:
    index = HNSWIndex(DIM)
    index.add(np.ones((2, DIM), dtype=np.float64), ids=np.array([1.0, 2.0]))
    index.add(np.arange(DIM, dtype=np.int32), ids=[9])
    assert len(index) == 3
    ids, _ = index.search(np.arange(DIM, dtype=np.int64), k=1)
    assert ids[0, 0] == 9
    # non-contiguous input is fine too
    x = _x(40)[:, ::1][::2]
    index.add(np.asfortranarray(x))
    assert len(index) == 23


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (lambda i: i.add(np.full((2, DIM), np.nan)), NonFiniteError, "NaN"),
        (lambda i: i.add(np.full((2, DIM), np.inf)), NonFiniteError, "row 0"),
        (lambda i: i.add(np.ones((2, DIM + 1))), DimensionMismatchError, "dimension"),
        (lambda i: i.add(np.ones((2, DIM), dtype=complex)), InvalidDTypeError, "complex"),
        (lambda i: i.add(np.array([[object()] * DIM])), InvalidDTypeError, "object"),
        (lambda i: i.add(np.ones((0, DIM))), EmptyInputError, "no rows"),
        (lambda i: i.add(np.ones((2, 2, DIM))), ShapeMismatchError, "2-d"),
        (lambda i: i.add(np.ones((2, DIM)), ids=[7, 7]), DuplicateIdError, "7"),
        (lambda i: i.add(np.ones((2, DIM)), ids=[3, 600]), IdExistsError, "3"),
        (lambda i: i.add(np.ones((2, DIM)), ids=[600]), ShapeMismatchError, "1 ids for 2"),
        (lambda i: i.add(np.ones((1, DIM)), ids=[-4]), InvalidInputError, ">= 0"),
        (lambda i: i.add(np.ones((1, DIM)), ids=[1.5]), InvalidDTypeError, "integers"),
        (lambda i: i.search(np.ones(DIM), k=0), InvalidInputError, "k"),
        (lambda i: i.search(np.ones(DIM), k=1, ef=0), InvalidInputError, "ef"),
        (lambda i: i.search(np.ones(DIM + 2)), DimensionMismatchError, "dimension"),
        (lambda i: i.search(np.full(DIM, np.nan)), NonFiniteError, "NaN"),
        (lambda i: i.delete([10_000]), UnknownIdError, "10000"),
        (lambda i: i.delete([1, 10_000]), UnknownIdError, "10000"),
        (lambda i: i.get_vectors([10_000]), UnknownIdError, "10000"),
    ],
)
def test_bad_input_raises_typed_error_and_changes_nothing(idx: HNSWIndex, call, error, words) -> None:
    before = _snapshot(idx)
    with pytest.raises(error, match=words) as info:
        call(idx)
    assert isinstance(info.value, RuvectorError)
    assert isinstance(info.value, (ValueError, KeyError))
    assert _snapshot(idx) == before


@pytest.mark.parametrize(
    "kwargs",
    [{"space": "hamming"}, {"M": 1}, {"M": 0}, {"ef_construction": 0}, {"seed": -1}, {"num_threads": 0},
     {"max_elements": 0}],
)
def test_bad_config(kwargs) -> None:
    with pytest.raises((ConfigError, InvalidInputError)):
        HNSWIndex(DIM, **kwargs)
    with pytest.raises(InvalidInputError):
        HNSWIndex(0)


def test_ef_setting(idx: HNSWIndex) -> None:
    idx.ef = 200
    assert idx.ef == 200
    with pytest.raises(InvalidInputError):
        idx.ef = 0
    assert idx.ef == 200
    a, _ = idx.search(_x(5, 8), k=5)
    b, _ = idx.search(_x(5, 8), k=5, ef=200)
    np.testing.assert_array_equal(a, b)


def test_capacity_grows_automatically() -> None:
    index = HNSWIndex(DIM, max_elements=10)
    index.add(_x(25))
    index.add(_x(40, 1))
    assert len(index) == 65 and index.capacity >= 65


def test_concurrent_search_with_a_writer_loses_nothing() -> None:
    base = _x(2000, 11)
    index = HNSWIndex(DIM, M=8, ef_construction=60, seed=4, num_threads=2)
    index.add(base[:1000])
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader(seed: int) -> None:
        q = _x(16, seed)
        try:
            while not stop.is_set():
                ids, dist = index.search(q, k=5, ef=32 + seed % 3)  # varying ef exercises the lock too
                assert ids.shape == (16, 5) and np.isfinite(dist).all()
        except BaseException as exc:
            errors.append(exc)

    def writer() -> None:
        try:
            for start in range(1000, 2000, 50):
                index.add(base[start : start + 50])
        except BaseException as exc:
            errors.append(exc)

    readers = [threading.Thread(target=reader, args=(s,)) for s in range(8)]
    w = threading.Thread(target=writer)
    for t in readers:
        t.start()
    w.start()
    w.join(timeout=120)
    stop.set()
    for t in readers:
        t.join(timeout=60)
    assert not errors, errors[0]
    assert len(index) == 2000
    ids, _dist = index.search(base, k=1, ef=100)
    assert (ids[:, 0] == np.arange(2000)).mean() > 0.99  # every item is there and findable
    np.testing.assert_array_equal(np.sort(index.graph().labels), np.arange(2000))


# -- filters: boolean masks and ambiguous input ----------------------------------------------------
def test_filter_bool_mask_over_ids(idx: HNSWIndex) -> None:
    q = _x(20, 3)
    mask = np.arange(500) % 3 == 0
    ids, dist = idx.search(q, k=5, filter=mask)
    assert (ids >= 0).all() and ((ids % 3) == 0).all()
    ref_ids, ref_dist = idx.search(q, k=5, filter=np.flatnonzero(mask))
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(dist, ref_dist)
    # longer than needed is fine; ids beyond the index simply do not exist
    longer = np.concatenate([mask, np.ones(100, dtype=bool)])
    np.testing.assert_array_equal(idx.search(q, k=5, filter=longer)[0], ids)
    # an all-False mask admits nothing: padding only
    none_ids, none_dist = idx.search(q, k=3, filter=np.zeros(500, dtype=bool))
    assert (none_ids == -1).all() and np.isinf(none_dist).all()


def test_filter_mask_length_is_checked_against_the_largest_live_id(idx: HNSWIndex) -> None:
    q = _x(2, 4)
    ok = np.ones(500, dtype=bool)  # ids 0..499: length 500 covers id 499
    assert (idx.search(q, k=3, filter=ok)[0] >= 0).all()
    before = _snapshot(idx)
    with pytest.raises(FilterError, match="499"):
        idx.search(q, k=3, filter=np.ones(499, dtype=bool))
    assert _snapshot(idx) == before
    idx.delete([499])  # deleted ids are never returned, so the mask need not cover them
    assert (idx.search(q, k=3, filter=np.ones(499, dtype=bool))[0] >= 0).all()


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (np.ones((10, 50), dtype=bool), "1-d"),
        ([True, False, True], "ambiguous"),
        ((True,) * 600, "ambiguous"),
        (True, "ambiguous"),
        (np.True_, "ambiguous"),
        (7, "int"),
        (np.int64(7), "int64"),
        ("123", "str"),
        ({"a": 1}, "dict"),
        ([1, -2], ">= 0"),
        (np.array([1.5, 2.0]), "integers"),
        (np.array([[1, 2], [3, 4]]), "1-d"),
        (np.array(["a", "b"]), "string"),
    ],
)
def test_ambiguous_or_bad_filters_raise_filter_error(idx: HNSWIndex, bad, words) -> None:
    before = _snapshot(idx)
    with pytest.raises(FilterError, match=words) as info:
        idx.search(_x(2, 5), k=3, filter=bad)
    assert isinstance(info.value, InvalidInputError) and isinstance(info.value, ValueError)
    assert _snapshot(idx) == before


def test_filter_collections_of_every_kind_agree(idx: HNSWIndex) -> None:
    q = _x(6, 6)
    allowed = [5, 17, 42, 99, 250, 333, 480]
    ref, _ = idx.search(q, k=4, filter=np.array(allowed))
    for form in (allowed, tuple(allowed), set(allowed), frozenset(allowed), dict.fromkeys(allowed).keys(),
                 np.array(allowed, dtype=np.uint32), np.array(allowed, dtype=np.float64), allowed + allowed):
        np.testing.assert_array_equal(idx.search(q, k=4, filter=form)[0], ref)
    assert set(ref.ravel().tolist()) <= set(allowed)
    np.testing.assert_array_equal(idx.search(q, k=4, filter=range(0, 500, 7))[0],
                                  idx.search(q, k=4, filter=np.arange(0, 500, 7))[0])
