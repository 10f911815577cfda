"""The exported graph equals hnswlib's own, checked through two independent routes."""

from __future__ import annotations

import struct

import hnswlib
import numpy as np
import pytest

from ruvector_hnsw import HNSWGraph, HNSWIndex
from ruvector_hnsw.errors import InvalidInputError, UnknownIdError
from tests.index._hnswlib_file import parse_hnswlib_file

N, DIM, M, EFC, SEED = 3000, 16, 8, 60, 7


def _data(space: str, n: int = N, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    labels = rng.permutation(10 * n)[:n].astype(np.int64)  # labels unrelated to internal ids
    return x, labels


def _ours(space: str, x: np.ndarray, labels: np.ndarray) -> HNSWIndex:
    idx = HNSWIndex(DIM, space=space, M=M, ef_construction=EFC, seed=SEED, num_threads=1)
    half = len(x) // 2  # two calls + automatic capacity growth must not change the graph
    idx.add(x[:half], labels[:half])
    idx.add(x[half:], labels[half:])
    return idx


def _raw(space: str, x: np.ndarray, labels: np.ndarray) -> hnswlib.Index:
    raw = hnswlib.Index(space=space, dim=DIM)
    raw.init_index(max_elements=len(x), M=M, ef_construction=EFC, random_seed=SEED)
    raw.add_items(x, labels.astype(np.uint64), num_threads=1)
    return raw


@pytest.fixture(scope="module", params=["l2", "ip", "cosine"])
def pair(request: pytest.FixtureRequest) -> tuple[str, np.ndarray, np.ndarray, HNSWIndex, hnswlib.Index]:
    space = request.param
    x, labels = _data(space)
    return space, x, labels, _ours(space, x, labels), _raw(space, x, labels)


def test_graph_equals_hnswlib_save_file(pair, tmp_path) -> None:
    _space, _x, labels, ours, raw = pair
    path = tmp_path / "raw.bin"
    raw.save_index(str(path))
    ref = parse_hnswlib_file(str(path))
    g = ours.graph()
    assert len(g) == ref.count == len(labels)
    assert g.max_level == ref.max_level >= 2  # the test is only meaningful with upper layers
    assert g.entry_point == ref.labels[ref.entry_internal]
    ref_level = {ref.labels[i]: ref.levels[i] for i in range(ref.count)}
    np.testing.assert_array_equal(g.levels, [ref_level[int(lab)] for lab in g.labels])
    for i in range(ref.count):
        lab = ref.labels[i]
        for layer, ids in ref.links[i].items():
            expected = [ref.labels[j] for j in ids]
            got = g.neighbors(lab, layer).tolist()
            assert got == expected, (lab, layer)
        # layers above the node's level are empty
        assert g.neighbors(lab, ref.levels[i] + 1).size == 0
    # per-layer edge totals agree as well (no extra edges anywhere)
    for layer in range(g.num_layers):
        total = sum(len(links.get(layer, [])) for links in ref.links)
        assert g.num_edges(layer) == total


def test_graph_equals_getstate_plain_parse(pair) -> None:
    _space, _x, _labels, ours, raw = pair
    st = raw.__getstate__()[0]
    data = bytes(np.asarray(st["data_level0"]).view(np.uint8))
    links = bytes(np.asarray(st["link_lists"]).view(np.uint8))
    size_el, label_off = st["size_data_per_element"], st["label_offset"]
    block = st["size_links_per_element"]
    g = ours.graph()
    cursor = 0
    for i in range(st["cur_element_count"]):
        rec = data[i * size_el : (i + 1) * size_el]
        label = struct.unpack_from("<Q", rec, label_off)[0]
        n0 = struct.unpack_from("<H", rec, 0)[0]
        labels0 = [struct.unpack_from("<Q", data, j * size_el + label_off)[0]
                   for j in struct.unpack_from(f"<{n0}I", rec, 4)]
        assert g.neighbors(label, 0).tolist() == labels0
        level = int(st["element_levels"][i])
        for layer in range(1, level + 1):
            start = cursor + (layer - 1) * block
            n_l = struct.unpack_from("<H", links, start)[0]
            ids = struct.unpack_from(f"<{n_l}I", links, start + 4)
            expected = [struct.unpack_from("<Q", data, j * size_el + label_off)[0] for j in ids]
            assert g.neighbors(label, layer).tolist() == expected
        cursor += level * block
    assert cursor == len(links)


def test_layer_csr_matches_neighbors_and_edge_distances_match_vectors(pair) -> None:
    space, x, labels, ours, _raw = pair
    g = ours.graph()
    pos_of = {int(lab): i for i, lab in enumerate(labels)}
    stored = x.copy()
    if space == "cosine":
        stored /= np.linalg.norm(stored, axis=1, keepdims=True)
    for layer in range(g.num_layers):
        indptr, indices = g.layer(layer)
        d = g.edge_distances(layer)
        assert indptr.shape == (len(g) + 1,) and indices.dtype == np.int64 and d.dtype == np.float32
        assert d.shape == indices.shape
        for row in range(0, len(g), 97):
            lab = int(g.labels[row])
            nbrs = indices[indptr[row] : indptr[row + 1]]
            np.testing.assert_array_equal(nbrs, g.neighbors(lab, layer))
            if g.levels[row] < layer:
                assert nbrs.size == 0
            a = stored[pos_of[lab]]
            b = stored[[pos_of[int(v)] for v in nbrs]]
            if space == "l2":
                ref = ((b - a) ** 2).sum(axis=1)
            else:
                ref = 1.0 - b @ a
            np.testing.assert_allclose(d[indptr[row] : indptr[row + 1]], ref, rtol=1e-4, atol=1e-4)


def test_search_distances_use_the_same_convention(pair) -> None:
    _space, x, labels, ours, _raw = pair
    g = ours.graph()
    ids, dist = ours.search(x[:5], k=4)
    lab = int(ids[0, 1])
    # the graph's distance from node 0 to a neighbour equals what search reports for that pair
    q_row = int(g.positions([labels[0]])[0])
    t_row = int(g.positions([lab])[0])
    v = g.vectors
    ref = ((v[q_row] - v[t_row]) ** 2).sum() if g.space == "l2" else 1.0 - v[q_row] @ v[t_row]
    assert dist[0, 1] == pytest.approx(ref, rel=1e-4, abs=1e-4)


def test_deleted_nodes_are_flagged_and_dropped_from_neighborhoods() -> None:
    x, labels = _data("l2", n=800, seed=3)
    idx = HNSWIndex(DIM, M=M, ef_construction=EFC, seed=SEED, num_threads=1)
    idx.add(x, labels)
    gone = labels[:50]
    idx.delete(gone)
    g = idx.graph()
    flagged = set(g.labels[g.deleted].tolist())
    assert flagged == set(gone.tolist())
    nb = g.neighborhoods(labels[50:400])
    assert not np.isin(nb.ids[nb.mask], gone).any()
    nb_all = g.neighborhoods(labels[50:400], include_deleted=True)
    assert np.isin(nb_all.ids[nb_all.mask], gone).any()


def _reference_neighborhood(g: HNSWGraph, label: int, k_local: int, k_global: int):
    """Plain-python version of the documented neighbourhood rule."""
    def dist(a: int, b: int) -> float:
        va, vb = g.vectors[g.positions([a])[0]], g.vectors[g.positions([b])[0]]
        return float(((va - vb) ** 2).sum()) if g.space == "l2" else float(1 - va @ vb)

    level = dict(zip(g.labels.tolist(), g.levels.tolist(), strict=True))
    dead = set(g.labels[g.deleted].tolist())
    local = [u for u in g.neighbors(label, 0).tolist() if u not in dead]
    local = sorted(local, key=lambda u: dist(label, u))[:k_local]
    cands: dict[int, int] = {}

    def take(hub: int) -> None:
        for layer in range(1, level[hub] + 1):
            for u in g.neighbors(hub, layer).tolist():
                if u != label and u not in dead:
                    cands[u] = max(cands.get(u, 0), layer)

    if level[label] >= 1:
        take(label)
    else:
        for u in g.neighbors(label, 0).tolist():
            if level[u] >= 1:
                take(u)
        if not any(level[u] >= 1 for u in g.neighbors(label, 0).tolist()):
            for w in g.neighbors(label, 0).tolist():
                for u in g.neighbors(w, 0).tolist():
                    if level[u] >= 1 and u != label:
                        take(u)
    glob = sorted(cands, key=lambda u: dist(label, u))[:k_global]
    return local, glob, [cands[u] for u in glob]


@pytest.mark.parametrize("space", ["l2", "cosine"])
def test_neighborhoods_follow_the_documented_rule(space: str) -> None:
    x, labels = _data(space, n=1500, seed=5)
    idx = HNSWIndex(DIM, space=space, M=M, ef_construction=EFC, seed=SEED, num_threads=1)
    idx.add(x, labels)
    g = idx.graph()
    sample = np.concatenate([labels[g.levels[g.positions(labels)] >= 1][:10], labels[:40]])
    nb = g.neighborhoods(sample, k_local=10, k_global=6)
    assert nb.ids.shape == (len(sample), 16) and nb.ids.dtype == np.int64
    assert nb.dist.dtype == np.float32 and nb.layer.dtype == np.int8 and nb.mask.dtype == bool
    for b, lab in enumerate(sample.tolist()):
        local, glob, glob_layers = _reference_neighborhood(g, lab, 10, 6)
        got_local = nb.ids[b, :10][nb.mask[b, :10]].tolist()
        got_glob = nb.ids[b, 10:][nb.mask[b, 10:]].tolist()
        assert sorted(got_local) == sorted(local)
        assert sorted(got_glob) == sorted(glob)
        assert (nb.layer[b, :10][nb.mask[b, :10]] == 0).all()
        assert dict(zip(got_glob, nb.layer[b, 10:][nb.mask[b, 10:]].tolist(), strict=True)) == dict(
            zip(glob, glob_layers, strict=True))
        assert (np.diff(nb.dist[b, :10][nb.mask[b, :10]]) >= 0).all()  # nearest first
        assert (nb.ids[b][~nb.mask[b]] == -1).all() and np.isinf(nb.dist[b][~nb.mask[b]]).all()


def test_graph_input_errors() -> None:
    x, labels = _data("l2", n=200)
    idx = HNSWIndex(DIM, M=M, seed=SEED)
    idx.add(x, labels)
    g = idx.graph()
    unknown = int(labels.max()) + 1
    with pytest.raises(UnknownIdError, match=str(unknown)):
        g.neighbors(unknown)
    with pytest.raises(UnknownIdError):
        g.neighborhoods([labels[0], unknown])
    with pytest.raises(InvalidInputError):
        g.layer(-1)
    with pytest.raises(InvalidInputError):
        g.neighborhoods(labels[:3], k_local=0, k_global=0)
    # a layer above the top is empty, not an error
    indptr, indices = g.layer(g.max_level + 3)
    assert indices.size == 0 and indptr.shape == (len(g) + 1,)
    # the snapshot is immutable
    with pytest.raises(ValueError):
        g.labels[0] = 5


def test_graph_snapshot_is_refreshed_after_add() -> None:
    x, labels = _data("l2", n=300)
    idx = HNSWIndex(DIM, M=M, seed=SEED)
    idx.add(x[:200], labels[:200])
    g1 = idx.graph()
    assert idx.graph() is g1
    idx.add(x[200:], labels[200:])
    g2 = idx.graph()
    assert len(g1) == 200 and len(g2) == 300


def test_stats_are_consistent() -> None:
    x, labels = _data("l2", n=1000)
    idx = HNSWIndex(DIM, M=M, seed=SEED)
    idx.add(x, labels)
    s = idx.graph().stats()
    assert sum(s["levels_histogram"]) == 1000
    assert s["layers"][0]["nodes"] == 1000
    assert s["edges"] == sum(layer["edges"] for layer in s["layers"])
    assert s["layers"][0]["max_degree"] <= 2 * M
