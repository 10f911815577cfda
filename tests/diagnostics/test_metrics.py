"""The geometry metrics against plain-numpy references on tiny hand-made graphs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ruvector_hnsw.diagnostics import metrics as mt
from ruvector_hnsw.errors import EmptyInputError, InvalidInputError, ShapeMismatchError


def csr(n: int, edges: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Directed CSR (rows in the order the edges are given)."""
    rows: list[list[int]] = [[] for _ in range(n)]
    for a, b in edges:
        rows[a].append(b)
    indptr = np.zeros(n + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(r) for r in rows])
    return indptr, np.array([b for r in rows for b in r], dtype=np.int64)


def undirected(n: int, edges: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    return csr(n, edges + [(b, a) for a, b in edges])


def cycle(n: int) -> list[tuple[int, int]]:
    return [(i, (i + 1) % n) for i in range(n)]


def bfs_ref(n: int, edges: list[tuple[int, int]]) -> np.ndarray:
    """All-pairs hop distances by Floyd-Warshall (the reference)."""
    d = np.full((n, n), np.inf)
    np.fill_diagonal(d, 0)
    for a, b in edges:
        d[a, b] = d[b, a] = 1
    for k in range(n):
        d = np.minimum(d, d[:, k : k + 1] + d[k : k + 1, :])
    return d


def delta_ref(d: np.ndarray) -> float:
    best = 0.0
    for x, y, z, w in itertools.product(range(d.shape[0]), repeat=4):
        s = sorted([d[x, y] + d[z, w], d[x, z] + d[y, w], d[x, w] + d[y, z]])
        best = max(best, (s[2] - s[1]) / 2)
    return best


# ------------------------------------------------------------------ windows and transport
def test_neighbourhood_windows_are_the_node_then_its_links():
    indptr, indices = csr(4, [(0, 1), (0, 2), (1, 0), (3, 2), (3, 1), (3, 0)])
    w = mt.neighbourhood_windows(indptr, indices, np.array([0, 2, 3]))
    np.testing.assert_array_equal(w, [[0, 1, 2, -1], [2, -1, -1, -1], [3, 2, 1, 0]])


def sw_ref(a: np.ndarray, b: np.ndarray, theta: np.ndarray) -> float:
    """Equal-size sets: sort-and-match per projection."""
    pa, pb = np.sort(a @ theta.T, axis=0), np.sort(b @ theta.T, axis=0)
    return float(np.sqrt(((pa - pb) ** 2).mean()))


def test_sliced_w2_matches_sorted_matching_and_ignores_order_and_padding():
    rng = np.random.default_rng(0)
    theta = rng.standard_normal((7, 3))
    theta /= np.linalg.norm(theta, axis=1, keepdims=True)
    a, b = rng.standard_normal((2, 5, 3)), rng.standard_normal((2, 5, 3)) + 1.0
    valid = np.ones((2, 5), dtype=bool)
    got = mt.sliced_w2(a, valid, b, valid, theta)
    np.testing.assert_allclose(got, [sw_ref(a[i], b[i], theta) for i in range(2)], rtol=1e-12)
    # order of the points and where the padding sits do not matter
    perm = rng.permutation(5)
    pad_a = np.concatenate([np.full((2, 2, 3), 99.0), a[:, perm]], axis=1)
    pad_v = np.concatenate([np.zeros((2, 2), dtype=bool), valid], axis=1)
    np.testing.assert_allclose(mt.sliced_w2(pad_a, pad_v, b, valid, theta, levels=5), got, rtol=1e-12)
    # a one-point set against k points: W2^2 = mean_i (a - b_i)^2 per projection, exactly
    one = np.zeros((1, 5, 3))
    one[0, 0] = [0.5, -1.0, 2.0]
    one_v = np.zeros((1, 5), dtype=bool)
    one_v[0, 0] = True
    ref = np.sqrt(np.mean((one[0, 0] @ theta.T - b[0] @ theta.T) ** 2))
    np.testing.assert_allclose(mt.sliced_w2(one, one_v, b[:1], valid[:1], theta), [ref], rtol=1e-12)
    # identical sets: 0
    np.testing.assert_allclose(mt.sliced_w2(a, valid, a[:, perm], valid, theta), 0.0, atol=1e-12)


def test_sliced_w2_rejects_bad_input():
    theta = np.eye(2)
    with pytest.raises(ShapeMismatchError):
        mt.sliced_w2(np.zeros((1, 2, 2)), np.ones((1, 2), bool), np.zeros((2, 2, 2)), np.ones((2, 2), bool), theta)
    with pytest.raises(EmptyInputError):
        mt.sliced_w2(np.zeros((1, 2, 2)), np.zeros((1, 2), bool), np.zeros((1, 2, 2)), np.ones((1, 2), bool), theta)


def test_neighbourhood_transport_matches_a_loop_reference():
    # two 4-cliques far apart; partners sit in the other clique
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(0, 0.1, (4, 3)), rng.normal(5, 0.1, (4, 3))])
    edges = [(i, j) for c in (range(4), range(4, 8)) for i in c for j in c if i != j]
    indptr, indices = csr(8, edges)
    rows, partners = np.array([0, 5]), np.array([6, 1])
    got = mt.neighbourhood_transport(x, indptr, indices, rows, partners, neighbours=2, projections=5, seed=3)
    g = np.random.default_rng([3, 1]).standard_normal((5, 3))
    theta = g / np.linalg.norm(g, axis=1, keepdims=True)

    def nb(v):
        return x[[v, *indices[indptr[v]:indptr[v + 1]]]]

    linked = [sw_ref(nb(v), nb(u), theta) for v in rows for u in indices[indptr[v]:indptr[v] + 2]]
    rand = [sw_ref(nb(v), nb(w), theta) for v, w in zip(rows, partners, strict=True)]
    np.testing.assert_allclose(got["ot_ratio"], np.mean(linked) / np.mean(rand), rtol=1e-10)
    pl = [np.linalg.norm(x[v] - x[u]) for v in rows for u in indices[indptr[v]:indptr[v] + 2]]
    pr = [np.linalg.norm(x[v] - x[w]) for v, w in zip(rows, partners, strict=True)]
    np.testing.assert_allclose(got["point_ratio"], np.mean(pl) / np.mean(pr), rtol=1e-10)
    assert got["ot_ratio"] < 0.1  # linked neighbourhoods coincide, random ones are far


# ------------------------------------------------------------------ topology
def test_window_boundary_on_a_directed_cycle():
    indptr, indices = csr(6, cycle(6))
    got = mt.window_boundary(indptr, indices, np.array([[0, 1, 2, -1], [3, 3, -1, -1]]))
    # window {0,1,2}: 0->1, 1->2 stay, 2->3 leaves; window {3}: its one link leaves
    np.testing.assert_allclose(got["boundary_mass"], (1 / 3 + 1) / 2)
    np.testing.assert_allclose(got["conductance"], (1 / 3 + 1 / 1) / 2)
    np.testing.assert_allclose(got["internal_density"], (2 / 6 + 0) / 2)


def test_window_boundary_matches_a_loop_reference_on_a_random_graph():
    rng = np.random.default_rng(2)
    n = 30
    edges = [(i, int(j)) for i in range(n) for j in rng.choice(n, 4, replace=False) if j != i]
    indptr, indices = csr(n, edges)
    windows = np.where(rng.random((6, 8)) < 0.2, -1, rng.integers(0, n, (6, 8)))
    ref = []
    for w in windows:
        members = set(int(v) for v in w if v >= 0)
        out = [int(t) for v in members for t in indices[indptr[v]:indptr[v + 1]]]
        ref.append(sum(t not in members for t in out) / len(out))
    np.testing.assert_allclose(mt.window_boundary(indptr, indices, windows)["boundary_mass"], np.mean(ref))


# ------------------------------------------------------------------ curvature and levels
def test_hop_distances_match_floyd_warshall():
    rng = np.random.default_rng(3)
    n = 12
    edges = [(int(a), int(b)) for a, b in rng.integers(0, n, (18, 2)) if a != b]
    indptr, indices = mt.symmetrise(*csr(n, edges))
    ref = bfs_ref(n, edges)
    got = mt.hop_distances(indptr, indices, np.arange(n)).astype(float)
    got[got < 0] = np.inf
    np.testing.assert_array_equal(got, ref)


def test_symmetrise_unions_both_directions_without_loops():
    indptr, indices = mt.symmetrise(*csr(3, [(0, 1), (1, 1), (2, 0), (0, 2)]))
    np.testing.assert_array_equal(indptr, [0, 2, 3, 4])
    np.testing.assert_array_equal(indices, [1, 2, 0, 0])


@pytest.mark.parametrize("name, edges, n", [
    ("path", [(i, i + 1) for i in range(6)], 7),
    ("star", [(0, i) for i in range(1, 6)], 6),
    ("binary tree", [(i, c) for i in range(7) for c in (2 * i + 1, 2 * i + 2)], 15),
])
def test_gromov_delta_of_a_tree_is_zero(name, edges, n):
    d = mt.hop_distances(*undirected(n, edges), np.arange(n))
    got = mt.gromov_delta(d)
    assert got["delta"] == 0.0 and got["relative_delta"] == 0.0, name


@pytest.mark.parametrize("n", [4, 6, 8])
def test_gromov_delta_of_a_cycle_is_positive_and_matches_brute_force(n):
    d = mt.hop_distances(*undirected(n, cycle(n)), np.arange(n))
    got = mt.gromov_delta(d)
    assert got["delta"] > 0
    assert got["delta"] == delta_ref(d.astype(float))
    assert got["relative_delta"] == 2 * got["delta"] / (n // 2)


def test_gromov_delta_sampled_is_a_seeded_lower_bound():
    d = mt.hop_distances(*undirected(10, cycle(10)), np.arange(10))
    full = mt.gromov_delta(d)["delta"]
    a = mt.gromov_delta(d, quadruples=500, seed=4)
    assert a == mt.gromov_delta(d, quadruples=500, seed=4)
    assert a["delta"] <= full


def test_gromov_delta_keeps_one_component():
    indptr, indices = undirected(7, [(0, 1), (1, 2), (2, 3), (4, 5), (5, 6), (6, 4)])
    d = mt.hop_distances(indptr, indices, np.arange(7))
    assert mt.gromov_delta(d)["points"] == 4 and mt.gromov_delta(d)["delta"] == 0.0  # the path


def test_level_structure_against_the_geometric_law():
    m, n = 4, 4096
    counts = [n // m ** layer for layer in range(7)]  # exactly n M^-l on layer l
    levels = np.zeros(n, dtype=np.int64)
    for layer in range(1, 7):
        levels[: counts[layer]] = layer
    got = mt.level_structure(levels, m)
    assert got["deviation"] < 1e-12
    assert got["observed"][:3] == counts[1:4]
    levels[counts[1] : 2 * counts[1]] = 1  # twice the expected layer-1 occupancy
    np.testing.assert_allclose(mt.level_structure(levels, m)["deviation"], 1.0)
    with pytest.raises(InvalidInputError):
        mt.level_structure(levels, 1)


# ------------------------------------------------------------------ diffusion and attention
def test_dirichlet_energy_reference_and_constant_signal():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((8, 3))
    indptr, indices = csr(8, [*cycle(8), (0, 4)])
    rows, partners = np.array([0, 3]), np.array([5, 6])
    links = [(0, 1), (0, 4), (3, 4)]
    link = np.mean([((x[a] - x[b]) ** 2).sum() for a, b in links])
    rand = np.mean([((x[a] - x[b]) ** 2).sum() for a, b in zip(rows, partners, strict=True)])
    np.testing.assert_allclose(mt.dirichlet_energy(x, indptr, indices, rows, partners)["energy"], link / rand)
    const = np.ones((8, 3))
    const[5:] = 2.0  # random pairs differ, links inside {0..4} do not
    assert mt.dirichlet_energy(const, indptr, indices, rows, partners)["energy"] == 0.0


def test_attention_entropy_uniform_one_hot_and_heads():
    mask = np.array([[True, True, True, True], [True, True, False, False], [True, False, False, False]])
    uniform = mask / mask.sum(1, keepdims=True)
    np.testing.assert_allclose(mt.attention_entropy(uniform, mask)["entropy"], 1.0)
    assert mt.attention_entropy(uniform, mask)["rows"] == 2  # the one-item row is skipped
    one_hot = np.zeros((3, 4))
    one_hot[:, 0] = 1
    assert mt.attention_entropy(one_hot, mask)["entropy"] == 0.0
    w = np.array([[0.7, 0.1, 0.1, 0.1], [0.5, 0.5, 0, 0], [1, 0, 0, 0]])
    h0 = -(0.7 * np.log(0.7) + 3 * 0.1 * np.log(0.1)) / np.log(4)
    np.testing.assert_allclose(mt.attention_entropy(w, mask)["entropy"], (h0 + 1.0) / 2)
    heads = np.stack([w, uniform], axis=1)  # (B, h, n): heads averaged
    np.testing.assert_allclose(mt.attention_entropy(heads, mask)["entropy"], ((h0 + 1) / 2 + 1) / 2)
    with pytest.raises(ShapeMismatchError):
        mt.attention_entropy(w[:, :3], mask)


def test_csr_is_validated():
    with pytest.raises(ShapeMismatchError):
        mt.window_boundary(np.array([0, 3]), np.array([0]), np.zeros((1, 1), dtype=np.int64))
    with pytest.raises(InvalidInputError):
        mt.hop_distances(np.array([0, 1]), np.array([5]), np.array([0]))
