"""Live snapshots: graph() derived from the previous snapshot, changed rows, changed neighbourhoods.

Every derived snapshot is compared with one built from scratch, and every change set with brute
force (all rows of both snapshots), over random sequences of adds, deletes (hubs included) and
re-adds of deleted ids.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from ruvector_hnsw import HNSWGraph, HNSWIndex
from ruvector_hnsw.errors import IndexCorruptedError, InvalidInputError
from ruvector_hnsw.index.graph import graph_from_state

DIM, M = 8, 3
# (k_local, k_global, include_deleted)
KS = [(2 * M, M, False), (4, 0, False), (3, 12, True), (0, 5, False)]


def _clustered(rng: np.random.Generator, n: int) -> np.ndarray:
    # tight clusters far apart: many level-0 nodes without a hub neighbour (the 3-hop rule)
    centers = rng.standard_normal((6, DIM)).astype(np.float32) * 6
    return (centers[rng.integers(0, 6, n)] + 0.3 * rng.standard_normal((n, DIM))).astype(np.float32)


def assert_same_graph(a: HNSWGraph, b: HNSWGraph) -> None:
    """Every public output of two snapshots is equal (values, dtypes, shapes)."""
    def same(x: np.ndarray, y: np.ndarray) -> None:
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)

    assert len(a) == len(b) and a.space == b.space and a.M == b.M
    assert (a.max_level, a.num_layers, a.entry_point) == (b.max_level, b.num_layers, b.entry_point)
    for name in ("labels", "levels", "deleted", "vectors"):
        same(getattr(a, name), getattr(b, name))
    assert a.vectors.flags.c_contiguous and not a.vectors.flags.writeable
    for layer in range(a.num_layers + 1):
        for x, y in zip(a.layer(layer), b.layer(layer), strict=True):
            same(x, y)
        same(a.edge_distances(layer), b.edge_distances(layer))
        same(a.degrees(layer), b.degrees(layer))
        assert a.num_edges(layer) == b.num_edges(layer)
    assert a.num_edges() == b.num_edges() and a.stats() == b.stats() and repr(a) == repr(b)
    if len(a):
        same(a.positions(a.labels), b.positions(a.labels))
        for kl, kg, inc in KS[:3]:
            na = a.neighborhoods(a.labels, kl, kg, include_deleted=inc)
            nb = b.neighborhoods(b.labels, kl, kg, include_deleted=inc)
            for field in ("ids", "dist", "layer", "hops", "mask"):
                same(getattr(na, field), getattr(nb, field))


def brute_changed_rows(g: HNSWGraph, prev: HNSWGraph) -> np.ndarray:
    n_old = len(prev)
    diff = np.zeros(n_old, dtype=bool)
    diff |= g.labels[:n_old] != prev.labels
    diff |= g.levels[:n_old] != prev.levels
    diff |= g.deleted[:n_old] != prev.deleted
    diff |= (g.vectors[:n_old].view(np.uint32) != prev.vectors.view(np.uint32)).any(axis=1)
    for layer in range(max(g.num_layers, prev.num_layers)):
        ip_a, ix_a = g.layer(layer)
        ip_b, ix_b = prev.layer(layer)
        for r in range(n_old):
            if not diff[r]:
                diff[r] = not np.array_equal(ix_a[ip_a[r] : ip_a[r + 1]], ix_b[ip_b[r] : ip_b[r + 1]])
    return np.concatenate([np.flatnonzero(diff), np.arange(n_old, len(g))]).astype(np.int64)


def brute_neighborhood_changes(g: HNSWGraph, prev: HNSWGraph, kl: int, kg: int, inc: bool) -> np.ndarray:
    n_old = len(prev)
    diff = np.zeros(n_old, dtype=bool)
    if n_old:
        na = g.neighborhoods(prev.labels, kl, kg, include_deleted=inc)
        nb = prev.neighborhoods(prev.labels, kl, kg, include_deleted=inc)
        for field in ("ids", "dist", "layer", "hops", "mask"):
            diff |= (getattr(na, field) != getattr(nb, field)).any(axis=1)
    return np.concatenate([np.flatnonzero(diff), np.arange(n_old, len(g))]).astype(np.int64)


def check_changes(g: HNSWGraph, prev: HNSWGraph) -> list[int]:
    """Assert changed_rows / neighborhood_changes equal brute force; returns the change counts."""
    rows = g.changed_rows(prev)
    assert rows.dtype == np.int64
    np.testing.assert_array_equal(rows, brute_changed_rows(g, prev))
    counts = [len(rows)]
    for kl, kg, inc in KS:
        got = g.neighborhood_changes(prev, kl, kg, include_deleted=inc)
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, brute_neighborhood_changes(g, prev, kl, kg, inc))
        counts.append(len(got))
    return counts


def _random_step(rng: np.random.Generator, idx: HNSWIndex, dead: list[int]) -> str:
    g = idx.graph()
    live = idx.ids
    kind = rng.choice(["add1", "add", "delete", "delete_hub", "readd", "mixed"])
    if kind in ("add1", "add", "mixed"):
        idx.add(_clustered(rng, 1 if kind == "add1" else int(rng.integers(2, 25))))
    if kind in ("delete", "mixed") and len(live) > 50:
        gone = rng.choice(live, int(rng.integers(1, 6)), replace=False)
        idx.delete(gone)
        dead.extend(gone.tolist())
    if kind == "delete_hub":
        hubs = g.labels[(g.levels >= 1) & ~g.deleted]
        if hubs.size:
            gone = rng.choice(hubs, min(2, hubs.size), replace=False)
            idx.delete(gone)
            dead.extend(gone.tolist())
    if kind == "readd" and dead:
        back = [dead.pop(int(rng.integers(0, len(dead)))) for _ in range(min(len(dead), 3))]
        idx.add(_clustered(rng, len(back)), back)
    return str(kind)


@pytest.mark.parametrize("space", ["l2", "ip", "cosine"])
def test_random_sequences_derived_snapshot_and_change_sets_are_exact(space: str) -> None:
    rng = np.random.default_rng({"l2": 1, "ip": 2, "cosine": 3}[space])
    # capacity 360: the sequence also crosses hnswlib's resize_index (ids must not move)
    idx = HNSWIndex(DIM, space=space, M=M, ef_construction=30, seed=5, num_threads=1, max_elements=360)
    idx.add(_clustered(rng, 350))
    prev = idx.graph()
    dead: list[int] = []
    kinds, history = set(), [prev]
    totals = np.zeros(1 + len(KS), dtype=np.int64)
    rows_seen = 0
    for _ in range(30):
        kinds.add(_random_step(rng, idx, dead))
        g = idx.graph()
        if g is not prev:  # (a step may change nothing: then graph() is the cached snapshot)
            assert g._delta is not None and g._delta[0]() is prev  # derived, not rebuilt
        assert_same_graph(g, graph_from_state(idx.raw_state(), space))
        np.testing.assert_array_equal(g.labels[: len(prev)], prev.labels)  # rows never move
        totals += check_changes(g, prev)
        rows_seen += len(g)
        history.append(g)
        prev = g
    # against an older snapshot too (the row-by-row comparison, not the derivation's record)
    assert {"delete_hub", "readd", "add1"} <= kinds
    assert g.max_level >= 2 and g.deleted.any() and idx.capacity > 360
    # the change sets are neither empty nor everything (the test would not see a broken rule)
    assert 0 < totals.min() and (totals < 0.25 * rows_seen).all()
    # against an older snapshot too (the row-by-row comparison, not the derivation's record)
    check_changes(history[-1], history[len(history) // 2])


def test_neighborhood_candidates_are_few_after_one_add_and_cover_the_changes() -> None:
    rng = np.random.default_rng(7)
    idx = HNSWIndex(DIM, M=M, ef_construction=30, seed=5, num_threads=1)
    idx.add(_clustered(rng, 1500))
    prev = idx.graph()
    g0 = graph_from_state(idx.raw_state(), "l2")
    three_hop = 0
    for _ in range(5):
        idx.add(_clustered(rng, 1))
        g = idx.graph()
        for kg in (0, M):
            cand = g._neighborhood_candidates(prev, kg)
            exact = g.neighborhood_changes(prev, 2 * M, kg)
            assert np.isin(exact, cand).all() and len(cand) < len(g) // 10
        prev = g
    # the 3-hop rule is exercised: some level-0 rows have no hub among their neighbours
    rec_levels = g0.levels
    for p in range(len(g0)):
        if rec_levels[p] == 0 and not (rec_levels[g0.positions(g0.neighbors(int(g0.labels[p])))] >= 1).any():
            three_hop += 1
    assert three_hop > 0


def test_vectors_are_shared_between_snapshots_and_copied_on_change() -> None:
    rng = np.random.default_rng(3)
    idx = HNSWIndex(DIM, M=M, ef_construction=30, seed=5, num_threads=1)
    idx.add(_clustered(rng, 200))
    g1 = idx.graph()
    v1 = g1.vectors.copy()
    idx.add(_clustered(rng, 10))
    g2 = idx.graph()
    assert np.shares_memory(g1.vectors, g2.vectors)  # the new rows were appended in place
    np.testing.assert_array_equal(g1.vectors, v1)
    np.testing.assert_array_equal(g2.vectors, graph_from_state(idx.raw_state(), "l2").vectors)
    v2 = g2.vectors.copy()
    idx.delete([3])
    idx.add(_clustered(rng, 1) + 50.0, [3])  # re-add: row 3 gets a new vector
    g3 = idx.graph()
    assert not np.shares_memory(g3.vectors, g2.vectors)
    np.testing.assert_array_equal(g2.vectors, v2)
    np.testing.assert_array_equal(g3.vectors, graph_from_state(idx.raw_state(), "l2").vectors)
    assert 3 in g3.changed_rows(g2).tolist()


def test_two_snapshots_derived_from_one_base_do_not_share_appended_rows() -> None:
    rng = np.random.default_rng(4)
    x = _clustered(rng, 300)
    a = HNSWIndex(DIM, M=M, ef_construction=30, seed=5, num_threads=1)
    b = HNSWIndex(DIM, M=M, ef_construction=30, seed=5, num_threads=1)
    a.add(x)
    b.add(x)
    base = a.graph()
    base.vectors  # noqa: B018 - materialise the shared store
    a.add(_clustered(rng, 5))
    b.add(_clustered(rng, 7))
    ga = graph_from_state(a.raw_state(), "l2", previous=base)
    gb = graph_from_state(b.raw_state(), "l2", previous=base)
    va, vb = ga.vectors, gb.vectors  # the second one must not reuse the rows the first appended
    np.testing.assert_array_equal(va, graph_from_state(a.raw_state(), "l2").vectors)
    np.testing.assert_array_equal(vb, graph_from_state(b.raw_state(), "l2").vectors)
    assert np.shares_memory(va, base.vectors) and not np.shares_memory(vb, base.vectors)


def test_snapshot_pickles_and_compares_after_the_round_trip() -> None:
    rng = np.random.default_rng(5)
    idx = HNSWIndex(DIM, space="cosine", M=M, ef_construction=30, seed=5, num_threads=1)
    idx.add(_clustered(rng, 300))
    g1 = idx.graph()
    g1.vectors  # noqa: B018 - caches must not travel
    idx.add(_clustered(rng, 4))
    idx.delete([1, 2])
    g2 = idx.graph()
    c1, c2 = pickle.loads(pickle.dumps(g1)), pickle.loads(pickle.dumps(g2))
    assert_same_graph(c2, g2)
    np.testing.assert_array_equal(c2.changed_rows(c1), g2.changed_rows(g1))
    np.testing.assert_array_equal(c2.neighborhood_changes(c1, 6, 3), g2.neighborhood_changes(g1, 6, 3))
    assert len(pickle.dumps(g2)) < 2 * (g2._raw.rec.nbytes + g2._raw.up.nbytes) + 100_000


def test_unchanged_and_identical_snapshots_report_nothing() -> None:
    rng = np.random.default_rng(6)
    idx = HNSWIndex(DIM, M=M, ef_construction=30, seed=5, num_threads=1)
    idx.add(_clustered(rng, 200))
    g = idx.graph()
    again = graph_from_state(idx.raw_state(), "l2")  # a separate object, same content
    for prev in (g, again):
        assert g.changed_rows(prev).size == 0
        assert g.neighborhood_changes(prev, 6, 3).size == 0
    empty = HNSWIndex(DIM, M=M, seed=5).graph()
    np.testing.assert_array_equal(g.changed_rows(empty), np.arange(len(g)))
    np.testing.assert_array_equal(g.neighborhood_changes(empty, 6, 3), np.arange(len(g)))


def test_previous_snapshot_is_validated() -> None:
    rng = np.random.default_rng(8)
    a = HNSWIndex(DIM, M=M, ef_construction=30, seed=5, num_threads=1)
    a.add(_clustered(rng, 100))
    ga = a.graph()
    a.add(_clustered(rng, 5))
    ga2 = a.graph()
    with pytest.raises(InvalidInputError):
        ga.changed_rows(ga2)  # previous has more rows
    with pytest.raises(InvalidInputError):
        ga2.changed_rows("not a graph")  # type: ignore[arg-type]
    other_dim = HNSWIndex(DIM + 1, M=M, seed=5)
    other_dim.add(np.ones((3, DIM + 1), np.float32))
    with pytest.raises(InvalidInputError):
        ga2.neighborhood_changes(other_dim.graph(), 4, 2)
    other = HNSWIndex(DIM, M=M, ef_construction=30, seed=5, num_threads=1)
    other.add(_clustered(rng, 50), np.arange(1000, 1050))
    with pytest.raises(InvalidInputError, match="labels"):
        ga2.neighborhood_changes(other.graph(), 4, 2)
    for kl, kg in ((0, 0), (-1, 2), (2, True)):
        with pytest.raises(InvalidInputError):
            ga2.neighborhood_changes(ga, kl, kg)


def test_derivation_checks_the_rows_it_decodes() -> None:
    rng = np.random.default_rng(9)
    idx = HNSWIndex(DIM, M=M, ef_construction=30, seed=5, num_threads=1)
    idx.add(_clustered(rng, 100))
    prev = idx.graph()
    idx.add(_clustered(rng, 1))
    state = idx.raw_state()
    data = np.asarray(state["data_level0"]).view(np.uint8).copy()
    size_el = int(state["size_data_per_element"])
    rec = data.reshape(-1, size_el)
    rec[100, 4:8] = np.frombuffer(np.uint32(999).tobytes(), np.uint8)  # the new row links beyond n
    rec[100, 0:2] = np.frombuffer(np.uint16(max(1, rec[100, 0])).tobytes(), np.uint8)
    bad = dict(state, data_level0=data)
    with pytest.raises(IndexCorruptedError):
        graph_from_state(bad, "l2", previous=prev)
    with pytest.raises(IndexCorruptedError):
        graph_from_state(bad, "l2")
