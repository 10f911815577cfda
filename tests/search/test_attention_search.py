"""AttentionSearch: residual start, reach beyond the candidates, training gain, persistence, safety."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from ruvector_hnsw import HNSWIndex
from ruvector_hnsw.attention import MECHANISMS
from ruvector_hnsw.errors import (
    ConfigError,
    DimensionMismatchError,
    FileFormatError,
    InvalidInputError,
    NotFittedError,
    ShapeMismatchError,
)
from ruvector_hnsw.search import AttentionSearch
from ruvector_hnsw.search._training import map_at_r_of_rows

DIM = 16


def _labelled(n_per: int = 120, classes: int = 12, seed: int = 0):
    """Elongated, overlapping Gaussian classes: raw distance is a mediocre relevance signal."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((classes, DIM)) * 1.2
    axes = rng.standard_normal((classes, DIM))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)

    def draw(m: int):
        lab = rng.integers(0, classes, m)
        t = rng.standard_normal((m, 1)) * 3.0
        x = centers[lab] + t * axes[lab] + 0.5 * rng.standard_normal((m, DIM))
        return x.astype(np.float32), lab

    base, base_lab = draw(n_per * classes)
    queries, q_lab = draw(400)
    return base, base_lab, queries[:300], q_lab[:300], queries[300:], q_lab[300:]


@pytest.fixture(scope="module")
def data():
    return _labelled()


@pytest.fixture(scope="module")
def index(data) -> HNSWIndex:
    base = data[0]
    idx = HNSWIndex(DIM, M=8, ef_construction=100, seed=3, num_threads=2)
    idx.add(base)
    return idx


def _map_at_r(idx_search, queries, q_lab, base_lab, k) -> float:
    ids, _ = idx_search(queries, k)
    rel_rows = [np.flatnonzero(base_lab == lab) for lab in q_lab]
    return map_at_r_of_rows(ids, rel_rows)


@pytest.mark.parametrize("mechanism", sorted(MECHANISMS))
def test_untrained_ranks_exactly_like_hnsw(index: HNSWIndex, data, mechanism: str) -> None:
    queries = data[4]
    s = AttentionSearch(index, mechanism, candidates=40, expand=1, k_local=8, k_global=4)
    ids, scores = s.search(queries, k=10)
    ref_ids, ref_dist = index.search(queries, k=10, ef=40)
    np.testing.assert_array_equal(ids, ref_ids)
    assert ids.dtype == np.int64 and scores.dtype == np.float32
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # higher = better, best first
    assert np.corrcoef(scores.ravel(), -ref_dist.ravel())[0, 1] > 0.999


def test_k_larger_than_candidates_returns_hnsw_tail(index: HNSWIndex, data) -> None:
    queries = data[4][:20]
    s = AttentionSearch(index, "scaled_dot", candidates=10)
    ids, scores = s.search(queries, k=60)
    ref, _ = index.search(queries, k=60, ef=60)
    assert ids.shape == (20, 60)
    np.testing.assert_array_equal(ids, ref)
    assert np.isfinite(scores).all() and (np.diff(scores, axis=1) <= 1e-6).all()


@pytest.fixture(scope="module")
def trained(index: HNSWIndex, data) -> tuple[AttentionSearch, object]:
    _base, base_lab, tq, tq_lab, _, _ = data
    s = AttentionSearch(index, "local_global", candidates=40, expand=1, k_local=8, k_global=4, seed=0)
    history = s.fit(tq, labels=base_lab, query_labels=tq_lab, epochs=3, batch_size=64, val_fraction=0.2)
    return s, history


def test_training_beats_hnsw_on_held_out_queries(trained, index: HNSWIndex, data) -> None:
    s, history = trained
    _, base_lab, _, _, eq, eq_lab = data
    k = int(max((base_lab == lab).sum() for lab in eq_lab))
    raw = _map_at_r(lambda q, kk: index.search(q, kk, ef=max(kk, 40)), eq, eq_lab, base_lab, k)
    ours = _map_at_r(s.search, eq, eq_lab, base_lab, k)
    assert s.fitted
    assert ours > raw + 0.05, (raw, ours)
    assert len(history.train_loss) >= 1 and all(np.isfinite(history.train_loss))
    assert history.best_metric is not None and history.best_metric >= history.initial_metric - 1e-9


def test_expansion_reaches_beyond_the_candidates(trained, index: HNSWIndex, data) -> None:
    s, _ = trained
    eq = data[4][:30]
    ids, _ = s.search(eq, k=100)
    cand, _ = index.search(eq, k=s.candidates, ef=s.candidates)
    outside = [len(set(ids[i].tolist()) - set(cand[i].tolist())) for i in range(len(eq))]
    assert np.mean(outside) > 10  # results come from the latent/graph expansion, not only the top-C


def test_same_seed_same_model(index: HNSWIndex, data) -> None:
    _base, base_lab, tq, tq_lab, eq, _ = data
    outs = []
    for _ in range(2):
        s = AttentionSearch(index, "scaled_dot", candidates=30, k_local=8, k_global=4, seed=5)
        s.fit(tq[:120], labels=base_lab, query_labels=tq_lab[:120], epochs=1, batch_size=64)
        outs.append(s.search(eq[:10], k=10))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[0][1], outs[1][1])


def test_save_load_roundtrip_and_corruption(trained, index: HNSWIndex, data, tmp_path: Path) -> None:
    s, _ = trained
    eq = data[4][:25]
    path = tmp_path / "model"
    s.save(path)
    loaded = AttentionSearch.load(path, index)
    assert loaded.fitted and loaded.mechanism_name == "local_global"
    a, b = s.search(eq, k=15), loaded.search(eq, k=15)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1], rtol=1e-5, atol=1e-5)
    npz = tmp_path / "model.npz"
    raw = bytearray(npz.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    npz.write_bytes(bytes(raw))
    with pytest.raises(FileFormatError):
        AttentionSearch.load(path, index)
    other = HNSWIndex(DIM + 1)
    other.add(np.zeros((3, DIM + 1)))
    s.save(tmp_path / "again")
    with pytest.raises(ShapeMismatchError):
        AttentionSearch.load(tmp_path / "again", other)
    with pytest.raises(FileNotFoundError):
        AttentionSearch.load(tmp_path / "nothing", index)


def test_added_items_get_codes_incrementally(data) -> None:
    base, base_lab, tq, tq_lab, _eq, _ = data
    idx = HNSWIndex(DIM, M=8, ef_construction=80, seed=1)
    idx.add(base[:1000])
    s = AttentionSearch(idx, "scaled_dot", candidates=30, k_local=8, k_global=4, seed=0)
    s.fit(tq[:150], labels=base_lab, query_labels=tq_lab[:150], epochs=1, batch_size=64)
    idx.add(base[1000:1200])
    # new items are reachable and ranked as well as old ones (class precision of their own queries)
    ids_new, _ = s.search(base[1000:1100], k=10)
    ids_old, _ = s.search(base[:100], k=10)
    p_new = (base_lab[ids_new] == base_lab[1000:1100, None]).mean()
    p_old = (base_lab[ids_old] == base_lab[:100, None]).mean()
    assert p_new > p_old - 0.1, (p_new, p_old)
    assert (ids_new >= 1000).mean() > 0.05
    # the incrementally computed codes equal a full recomputation
    incremental = s._codes.copy()
    s._refresh_codes()
    np.testing.assert_allclose(incremental[1000:1200], s._codes[1000:1200], atol=1e-5)


def test_training_free_alpha_qe_matches_numpy_reference(index: HNSWIndex, data) -> None:
    base, _, _, _, eq, _ = data
    eq = eq[:20]
    s = AttentionSearch(index, "alpha_qe", candidates=30, n=5, alpha=3.0)
    ids, _ = s.search(eq, k=10)
    top, _ = index.search(eq, k=5, ef=30)

    def unit(a):
        return a / np.linalg.norm(a, axis=-1, keepdims=True)

    qn = unit(eq.astype(np.float64))
    nb = base[top].astype(np.float64)
    w = np.maximum(np.einsum("bd,bjd->bj", qn, unit(nb)), 0) ** 3.0
    q2 = (eq + np.einsum("bj,bjd->bd", w, nb)) / (1.0 + w.sum(axis=1, keepdims=True))  # l2: weighted mean
    ref, _ = index.search(q2.astype(np.float32), k=10, ef=30)
    np.testing.assert_array_equal(ids, ref)


def test_concurrent_search_matches_serial(trained, data) -> None:
    s, _ = trained
    eq = data[4]
    expected = [s.search(eq[i : i + 10], k=10)[0] for i in range(0, 80, 10)]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(3):
                results[i] = s.search(eq[i * 10 : i * 10 + 10], k=10)[0]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors[0]
    for i in range(8):
        np.testing.assert_array_equal(results[i], expected[i])


def test_bad_input(index: HNSWIndex, data) -> None:
    _base, base_lab, tq, tq_lab, eq, _ = data
    with pytest.raises(ConfigError, match="unknown mechanism"):
        AttentionSearch(index, "nope")
    with pytest.raises(ConfigError):
        AttentionSearch(index, "scaled_dot", candidates=0)
    with pytest.raises(ConfigError):
        AttentionSearch(index, "scaled_dot", expand=-1)
    with pytest.raises(InvalidInputError):
        AttentionSearch("not an index", "scaled_dot")  # type: ignore[arg-type]
    s = AttentionSearch(index, "scaled_dot", candidates=20)
    with pytest.raises(DimensionMismatchError):
        s.search(np.ones((2, DIM + 1)), k=3)
    with pytest.raises(InvalidInputError):
        s.search(eq[:2], k=0)
    with pytest.raises(InvalidInputError, match="labels"):
        s.fit(tq[:50])
    with pytest.raises(ShapeMismatchError):
        s.fit(tq[:50], labels=base_lab, query_labels=tq_lab[:40])
    with pytest.raises(ShapeMismatchError):
        s.fit(tq[:50], labels=base_lab[:10], query_labels=tq_lab[:50])
    assert not s.fitted
    with pytest.raises(ConfigError, match="training-free"):
        AttentionSearch(index, "dba").fit(tq[:50], labels=base_lab, query_labels=tq_lab[:50])
    with pytest.raises(NotFittedError):
        s._latent_index()


def test_fit_with_explicit_positives(index: HNSWIndex, data) -> None:
    _base, base_lab, tq, tq_lab, _eq, _eq_lab = data
    pos = np.full((100, 50), -1, dtype=np.int64)
    for i, lab in enumerate(tq_lab[:100]):
        rows = np.flatnonzero(base_lab == lab)[:50]
        pos[i, : rows.size] = rows
    s = AttentionSearch(index, "scaled_dot", candidates=30, k_local=8, k_global=4)
    history = s.fit(tq[:100], positives=pos, epochs=1, batch_size=50)
    assert s.fitted and len(history.train_loss) == 1


def test_training_free_dba_rescores_with_augmented_vectors(index: HNSWIndex, data) -> None:
    base, _, _, _, eq, _ = data
    eq = eq[:15]
    s = AttentionSearch(index, "dba", candidates=30, k_local=8, n=4, alpha=2.0)
    ids, scores = s.search(eq, k=10)
    g = index.graph()
    # reference: each database vector averaged with its 4 nearest layer-0 neighbours (l2 weighted mean)
    labels = np.arange(len(base))
    nb = g.neighborhoods(labels, k_local=8, k_global=0)  # rows = labels; items are labels (-1 pad)
    top = nb.ids[:, :4]
    unit = base / np.linalg.norm(base, axis=1, keepdims=True)
    w = np.where(top >= 0, np.maximum(np.einsum("nd,njd->nj", unit, unit[np.maximum(top, 0)]), 0) ** 2.0, 0)
    aug = (base + np.einsum("nj,njd->nd", w, base[np.maximum(top, 0)])) / (1 + w.sum(1, keepdims=True))
    cand, _ = index.search(eq, k=30, ef=30)
    d = ((eq[:, None, :] - aug[cand]) ** 2).sum(-1)
    ref = np.take_along_axis(cand, np.argsort(d, axis=1, kind="stable"), axis=1)[:, :10]
    np.testing.assert_array_equal(ids, ref)
    assert (np.diff(scores, axis=1) <= 1e-6).all()
