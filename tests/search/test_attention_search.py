"""AttentionSearch: residual start, expansion, training gain, every space, persistence, live updates, safety."""

from __future__ import annotations

import pickle
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
    IndexMismatchError,
    InvalidInputError,
    ShapeMismatchError,
)
from ruvector_hnsw.search import (
    AlphaQESearch,
    AttentionSearch,
    DatabaseState,
    DBASearch,
    check_model_index,
    diffusion,
    items_checksum,
    pipeline,
)
from ruvector_hnsw.search.context import index_distances, query_context
from ruvector_hnsw.search.model import SCALARS
from ruvector_hnsw.search.training import map_at_r_of_rows

DIM = 16
SPACES = ("l2", "ip", "cosine")


def _labelled(n_per: int = 120, classes: int = 12, seed: int = 0):
    """Elongated, overlapping Gaussian classes (offset from the origin, so ip differs from cosine)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((classes, DIM)) * 1.2 + 0.5
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


def _index(base: np.ndarray, space: str = "l2", seed: int = 3) -> HNSWIndex:
    idx = HNSWIndex(DIM, space=space, M=8, ef_construction=100, seed=seed, num_threads=1)
    idx.add(base)
    return idx


@pytest.fixture(scope="module")
def index(data) -> HNSWIndex:
    return _index(data[0])


@pytest.fixture(scope="module", params=SPACES)
def trained(request, data):
    _base, base_lab, tq, tq_lab, _, _ = data
    idx = _index(data[0], request.param)
    s = AttentionSearch(idx, "local_global", candidates=40, expand=1, k_local=8, k_global=4, seed=0,
                        label_head=False)  # the metric path alone (the label head: tests/search/test_labels.py)
    history = s.fit(tq, labels=base_lab, query_labels=tq_lab, epochs=3, batch_size=64, val_fraction=0.2)
    return s, history, idx


def _map_at_r(search, queries, q_lab, base_lab, k) -> float:
    ids, _ = search(queries, k)
    rel_rows = [np.flatnonzero(base_lab == lab) for lab in q_lab]
    return map_at_r_of_rows(ids, rel_rows)


# ---------------------------------------------------------------------- untrained = HNSW
@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize("mechanism", sorted(MECHANISMS))
def test_untrained_ranks_exactly_like_hnsw(data, mechanism: str, space: str) -> None:
    idx = _index(data[0], space)
    queries = data[4]
    s = AttentionSearch(idx, mechanism, candidates=40, expand=1, k_local=8, k_global=4)
    ids, scores = s.search(queries, k=10)
    ref_ids, ref_dist = idx.search(queries, k=10, ef=40)
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


# ---------------------------------------------------------------------- distances in every space
@pytest.mark.parametrize("space", SPACES)
def test_query_and_database_context_distances_agree(data, space: str) -> None:
    idx = _index(data[0], space)
    s = AttentionSearch(idx, "local_global", k_local=8, k_global=4)
    db = s.database_state()
    g = db.graph
    hubs = np.flatnonzero(g.levels >= 1)[:20]
    rows = np.concatenate([hubs, np.arange(40)])
    # a database vector as the query: its own row is its best candidate, so both sides describe the same items
    q = g.vectors[rows]
    cand = np.stack([rows, db.contexts.pos[rows, 0]], axis=1)
    cand_dist = index_distances(q, g.vectors, cand, space)
    ids, mask, ctx = query_context(q, g.vectors, cand, cand_dist, db.contexts, space)
    kl = db.contexts.k_local
    glob_q, glob_db = ids[:, 2:], db.contexts.pos[rows, kl:]
    np.testing.assert_array_equal(glob_q, np.where(db.contexts.mask[rows, kl:], glob_db, -1))
    m = mask[:, 2:]
    assert m.sum() > 20
    q_side = ctx.dist[:, 2:][m]
    db_side = db.contexts.dist[rows, kl:][m]
    np.testing.assert_allclose(q_side, db_side, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(db_side).max())))


# ---------------------------------------------------------------------- training
def test_training_beats_hnsw_on_held_out_queries(trained, data) -> None:
    s, history, idx = trained
    _, base_lab, _, _, eq, eq_lab = data
    k = int(max((base_lab == lab).sum() for lab in eq_lab))
    raw = _map_at_r(lambda q, kk: idx.search(q, kk, ef=max(kk, 40)), eq, eq_lab, base_lab, k)
    ours = _map_at_r(s.search, eq, eq_lab, base_lab, k)
    assert s.fitted and s.alpha > 0
    assert ours > raw + 0.05, (idx.space, raw, ours)
    assert len(history.train_loss) >= 1 and all(np.isfinite(history.train_loss))
    assert history.best_metric is not None and history.best_metric >= history.initial_metric - 1e-9


def test_expansion_reaches_beyond_the_candidates(trained, data) -> None:
    s, _, idx = trained
    eq = data[4][:40]
    k = s.candidates  # k <= candidates: without expansion every result is a candidate
    cand, _ = idx.search(eq, k=s.candidates, ef=s.candidates)

    def outside(ids):
        return np.mean([len(set(ids[i].tolist()) - set(cand[i].tolist())) for i in range(len(eq))])

    assert outside(s.search(eq, k=k, expand=0)[0]) == 0
    assert outside(s.search(eq, k=k, expand=1)[0]) > 2


def test_per_call_knobs_leave_the_defaults_alone(trained, data) -> None:
    s, _, _ = trained
    eq = data[4][:20]
    a = s.search(eq, k=10, candidates=20, expand=0)
    assert s.candidates == 40 and s.expand == 1
    s.candidates, s.expand = 20, 0
    try:
        b = s.search(eq, k=10)
    finally:
        s.candidates, s.expand = 40, 1
    np.testing.assert_array_equal(a[0], b[0])
    with pytest.raises(ConfigError):
        s.search(eq, k=10, expand=-1)


def test_same_seed_same_model_at_any_thread_count(index: HNSWIndex, data) -> None:
    _base, base_lab, tq, tq_lab, eq, _ = data
    outs = []
    for threads in (1, 2, 1):
        s = AttentionSearch(index, "local_global", candidates=30, k_local=8, k_global=4, seed=5, num_threads=threads)
        s.fit(tq[:150], labels=base_lab, query_labels=tq_lab[:150], epochs=1, batch_size=64)
        m = s.model
        scalars = {name: getattr(m, name) for name in SCALARS}
        assert {"alpha", "alpha_open", "lam", "gate", "mu", "diffusion_gamma", "diffusion_seeds", "dba_weight",
                "qe_weight", "qe_top", "rho"} <= set(scalars)
        assert m.label_head is not None
        scalars.update({f"head.{k}": tuple(v.ravel().tolist()) for k, v in m.label_head.params.items()})
        outs.append((s.search(eq[:40], k=10), {k: v.copy() for k, v in s.model.encoder.params.items()}, scalars))
    assert outs[0][2]["lam"] > 0  # the label stage, its gate and the diffusion weight are part of the model
    for (res, params, scalars) in outs[1:]:
        assert scalars == outs[0][2]
        np.testing.assert_array_equal(outs[0][0][0], res[0])
        np.testing.assert_array_equal(outs[0][0][1], res[1])
        for k, v in params.items():
            np.testing.assert_array_equal(outs[0][1][k], v, err_msg=k)


def test_calibration_falls_back_to_hnsw_when_labels_are_random(index: HNSWIndex, data) -> None:
    _base, base_lab, tq, _tq_lab, eq, _ = data
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 40, base_lab.shape[0])
    s = AttentionSearch(index, "local_global", candidates=30, k_local=8, k_global=4)
    s.fit(tq, labels=noise, query_labels=rng.integers(0, 40, tq.shape[0]), epochs=2, batch_size=64,
          val_fraction=0.3)
    assert s.fitted and s.alpha == 0.0 and s.model.lam == 0.0 and s.model.mu == 0.0
    assert s.model.diffusion_gamma == diffusion.GAMMA and s.model.diffusion_seeds == diffusion.DIFFUSION_SEEDS
    assert s.model.dba_weight == 0.0 and s.model.qe_weight == 0.0 and s.model.demote_known == 0.0
    ids, _ = s.search(eq, k=10)
    ref, _ = index.search(eq, k=10, ef=30)
    np.testing.assert_array_equal(ids, ref)


# ---------------------------------------------------------------------- persistence
def test_save_load_ranks_exactly_like_the_saved_model(trained, data, tmp_path: Path) -> None:
    s, _, idx = trained
    eq = np.concatenate([data[4], data[2]])
    ref = s.search(eq, k=15)
    for rep in range(5):
        path = tmp_path / f"model{rep}"
        s.save(path)
        loaded = AttentionSearch.load(path, idx)
        assert loaded.fitted and loaded.mechanism_name == "local_global"
        got = loaded.search(eq, k=15)
        np.testing.assert_array_equal(ref[0], got[0])
        np.testing.assert_allclose(ref[1], got[1], rtol=0, atol=1e-6)
        s = loaded  # a loaded model saves and loads exactly too


def test_loaded_model_ranks_identically_over_20_loads_and_in_another_process(data, tmp_path: Path) -> None:
    """Issue 9 item 5: ids and scores bit for bit, 20 loads in this process and one in a fresh interpreter."""
    import subprocess
    import sys

    _base, base_lab, tq, tq_lab, eq, _ = data
    idx = _index(data[0], "cosine")
    s = AttentionSearch(idx, candidates=40, k_local=8, k_global=4, seed=0, num_threads=1)  # label head on
    s.fit(tq, labels=base_lab, query_labels=tq_lab, epochs=2, batch_size=64, val_fraction=0.2)
    ref_ids, ref_scores = s.search(eq, k=15)
    s.save(tmp_path / "m")
    idx.save(tmp_path / "i.rvh")
    np.save(tmp_path / "q.npy", eq)
    for _ in range(20):
        ids, scores = AttentionSearch.load(tmp_path / "m", idx).search(eq, k=15)
        np.testing.assert_array_equal(ids, ref_ids)
        np.testing.assert_array_equal(scores, ref_scores)
    script = (
        "import sys, numpy as np\n"
        "from ruvector_hnsw import HNSWIndex\n"
        "from ruvector_hnsw.search import AttentionSearch\n"
        "d = sys.argv[1]\n"
        "m = AttentionSearch.load(d + '/m', HNSWIndex.load(d + '/i.rvh'), num_threads=1)\n"
        "ids, scores = m.search(np.load(d + '/q.npy'), k=15)\n"
        "np.savez(d + '/out.npz', ids=ids, scores=scores)\n"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, timeout=300)
    out = np.load(tmp_path / "out.npz")
    np.testing.assert_array_equal(out["ids"], ref_ids)
    np.testing.assert_array_equal(out["scores"], ref_scores)


def test_save_load_errors(trained, data, tmp_path: Path) -> None:
    s, _, idx = trained
    path = tmp_path / "model"
    s.save(path)
    npz = tmp_path / "model.npz"
    raw = bytearray(npz.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    npz.write_bytes(bytes(raw))
    with pytest.raises(FileFormatError):
        AttentionSearch.load(path, idx)
    other = HNSWIndex(DIM + 1)
    other.add(np.zeros((3, DIM + 1)))
    s.save(tmp_path / "again")
    with pytest.raises(ShapeMismatchError):
        AttentionSearch.load(tmp_path / "again", other)
    with pytest.raises(FileNotFoundError):
        AttentionSearch.load(tmp_path / "nothing", idx)


def test_pickle_round_trip(trained, data) -> None:
    s, _, _ = trained
    eq = data[4][:30]
    clone = pickle.loads(pickle.dumps(s))
    a, b = s.search(eq, k=10), clone.search(eq, k=10)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1], atol=1e-6)


def test_load_on_a_grown_index_recomputes_codes(data, tmp_path: Path) -> None:
    base, base_lab, tq, tq_lab, eq, _ = data
    idx = _index(base[:1000])
    s = AttentionSearch(idx, "scaled_dot", candidates=30, k_local=8, k_global=4, latent="flat")
    s.fit(tq[:150], labels=base_lab, query_labels=tq_lab[:150], epochs=1, batch_size=64)
    s.save(tmp_path / "m")
    idx.add(base[1000:1100])
    live = s.search(eq[:30], k=10)  # incremental sync
    loaded = AttentionSearch.load(tmp_path / "m", idx)  # from scratch on the grown graph
    got = loaded.search(eq[:30], k=10)
    np.testing.assert_array_equal(live[0], got[0])
    np.testing.assert_allclose(live[1], got[1], atol=1e-6)


def test_model_checks_it_belongs_to_the_index(data, tmp_path: Path) -> None:
    base = data[0]
    idx = _index(base[:300])
    AttentionSearch(idx, "scaled_dot", candidates=20, k_local=8, k_global=4).save(tmp_path / "m")
    # same ids and vectors, other links (another seed): the same items
    relinked = _index(base[:300], seed=11)
    assert items_checksum(relinked.graph()) == items_checksum(idx.graph())
    check_model_index(tmp_path / "m", relinked)
    assert AttentionSearch.load(tmp_path / "m", relinked, same_items=True).index is relinked
    cases = {
        "other items": _index(base[1:301]),  # same count and dim, other vectors
        "301": _index(base[:301]),  # one more item
        "space='ip'": _index(base[:300], space="ip"),
    }
    other_dim = HNSWIndex(DIM + 1)
    other_dim.add(np.zeros((3, DIM + 1)))
    cases[f"dim={DIM + 1}"] = other_dim
    for fragment, other in cases.items():
        with pytest.raises(IndexMismatchError, match=fragment):
            check_model_index(tmp_path / "m", other)
        with pytest.raises(IndexMismatchError, match=fragment):
            AttentionSearch.load(tmp_path / "m", other, same_items=True)
    # without same_items only dim/space are checked (a model may serve a grown index)
    assert AttentionSearch.load(tmp_path / "m", cases["301"]).index is cases["301"]
    with pytest.raises(ShapeMismatchError):  # the mismatch is a ShapeMismatchError too
        AttentionSearch.load(tmp_path / "m", cases["space='ip'"])
    # deleting an item changes the items
    grown = _index(base[:300])
    grown.delete([5])
    with pytest.raises(IndexMismatchError, match="299"):
        check_model_index(tmp_path / "m", grown)
    # a state without the item record (older release) cannot be checked
    old = {"index": {"dim": DIM, "space": "l2"}, "database": None}
    with pytest.raises(IndexMismatchError, match="cannot be checked"):
        check_model_index(old, idx)


# ---------------------------------------------------------------------- live updates
def _assert_state_equal(a: DatabaseState, b: DatabaseState) -> None:
    for name in ("pos", "dist", "layer", "hops", "mask"):
        np.testing.assert_array_equal(getattr(a.contexts, name), getattr(b.contexts, name), err_msg=name)
    np.testing.assert_array_equal(a.table.view, b.table.view)
    assert a.codes is not None and b.codes is not None
    np.testing.assert_array_equal(a.codes.codes, b.codes.codes)


@pytest.mark.parametrize("space", SPACES)
def test_adds_update_only_changed_rows_and_equal_a_fresh_sync(data, space: str) -> None:
    base, base_lab, tq, tq_lab, eq, _ = data
    idx = _index(base[:1000], space)
    s = AttentionSearch(idx, "local_global", candidates=30, k_local=8, k_global=4, seed=0, latent="flat")
    s.fit(tq[:150], labels=base_lab, query_labels=tq_lab[:150], epochs=1, batch_size=64)
    before = s.database_state().codes.codes.copy()
    idx.add(base[1000:1001])
    db = s.database_state()
    changed = np.flatnonzero(np.any(db.codes.codes[:1000] != before, axis=1))
    assert changed.size < 60, changed.size  # one insert rewires a few dozen rows, not the graph
    idx.add(base[1001:1200])
    idx.delete(np.arange(0, 40))
    live = s.search(eq, k=10)
    assert not np.isin(live[0], np.arange(40)).any()  # deleted items never come back
    fresh = AttentionSearch(idx, "local_global", candidates=30, k_local=8, k_global=4, seed=0, latent="flat")
    fresh.model = s.model
    fresh_db = fresh.database_state()
    # same diffusion coordinates (the model's), so the fresh state must equal the incremental one
    live_codes = s.database_state().codes
    fresh_db.codes = None
    fresh_db.refresh_codes(s.model, phi=live_codes.phi_values()[: live_codes.phi_fitted],
                           phi_fitted=live_codes.phi_fitted)
    _assert_state_equal(s.database_state(), fresh_db)
    got = fresh.search(eq, k=10)
    np.testing.assert_array_equal(live[0], got[0])
    np.testing.assert_allclose(live[1], got[1], atol=1e-6)


def test_concurrent_searches_while_adding(data) -> None:
    """8 readers search while a 9th thread adds: every result is the serial result of one index state."""
    base, base_lab, tq, tq_lab, eq, _ = data
    idx = _index(base[:1200])
    s = AttentionSearch(idx, "local_global", candidates=30, k_local=8, k_global=4, num_threads=1)
    s.fit(tq[:150], labels=base_lab, query_labels=tq_lab[:150], epochs=1, batch_size=64)
    groups = [eq[i * 10 : i * 10 + 10] for i in range(8)]
    states: list[list[bytes]] = [[s.search(g, k=10)[0].tobytes() for g in groups]]
    errors: list[BaseException] = []
    results: dict[int, list[np.ndarray]] = {i: [] for i in range(8)}
    done = threading.Event()

    def reader(i: int) -> None:
        try:
            while not done.is_set() or not results[i]:
                ids, scores = s.search(groups[i], k=10)
                assert (np.diff(scores, axis=1) <= 1e-6).all()
                results[i].append(ids)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def writer() -> None:
        try:
            for lo in range(1200, 1440, 40):
                idx.add(base[lo : lo + 40], ids=np.arange(lo, lo + 40))
                # the writer is the only mutator: its own serial search sees exactly this state
                states.append([s.search(g, k=10)[0].tobytes() for g in groups])
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)
        finally:
            done.set()

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)] + [threading.Thread(target=writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors[0]
    assert len(idx) == 1440 and len(states) == 7
    for i in range(8):
        allowed = {st[i] for st in states}
        assert results[i]
        for got in results[i]:
            assert got.tobytes() in allowed


# ---------------------------------------------------------------------- training-free baselines
def test_alpha_qe_matches_numpy_reference(index: HNSWIndex, data) -> None:
    base, _, _, _, eq, _ = data
    eq = eq[:20]
    ids, scores = AlphaQESearch(index, n=5, alpha=3.0, candidates=30).search(eq, k=10)
    top, _ = index.search(eq, k=5, ef=30)

    def unit(a):
        return a / np.linalg.norm(a, axis=-1, keepdims=True)

    nb = base[top].astype(np.float64)
    w = np.maximum(np.einsum("bd,bjd->bj", unit(eq.astype(np.float64)), unit(nb)), 0) ** 3.0
    q2 = (eq + np.einsum("bj,bjd->bd", w, nb)) / (1.0 + w.sum(axis=1, keepdims=True))  # l2: weighted mean
    ref, _ = index.search(q2.astype(np.float32), k=10, ef=30)
    np.testing.assert_array_equal(ids, ref)
    assert (np.diff(scores, axis=1) <= 1e-6).all()


def test_dba_searches_the_augmented_vectors(index: HNSWIndex, data) -> None:
    base, _, _, _, eq, _ = data
    eq = eq[:15]
    dba = DBASearch(index, n=4, alpha=2.0, candidates=60)
    ids, _ = dba.search(eq, k=10)
    g = index.graph()
    nb = g.neighborhoods(g.labels, k_local=4, k_global=0)
    top = np.where(nb.mask, nb.ids, -1)  # labels = rows here
    unit = base / np.linalg.norm(base, axis=1, keepdims=True)
    w = np.where(top >= 0, np.maximum(np.einsum("nd,njd->nj", unit, unit[np.maximum(top, 0)]), 0) ** 2.0, 0)
    aug = (base + np.einsum("nj,njd->nd", w, base[np.maximum(top, 0)])) / (1 + w.sum(1, keepdims=True))
    d = ((eq[:, None, :] - aug[None, :, :]) ** 2).sum(-1)
    exact = np.argsort(d, axis=1, kind="stable")[:, :10]
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids.tolist(), exact.tolist(), strict=True)]) > 0.95
    np.testing.assert_allclose(dba.augmented_index().get_vectors(np.arange(50)), aug[:50], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------- bad input
def test_bad_input(index: HNSWIndex, data) -> None:
    _base, base_lab, tq, tq_lab, eq, _ = data
    with pytest.raises(ConfigError, match="unknown mechanism"):
        AttentionSearch(index, "nope")
    with pytest.raises(ConfigError, match="AlphaQESearch"):
        AttentionSearch(index, "alpha_qe")
    with pytest.raises(ConfigError):
        AttentionSearch(index, "scaled_dot", candidates=0)
    with pytest.raises(ConfigError):
        AttentionSearch(index, "scaled_dot", expand=-1)
    with pytest.raises(ConfigError):
        AttentionSearch(index, "scaled_dot", latent="ivf")
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
    with pytest.raises(ConfigError):
        AlphaQESearch(index, n=0)
    with pytest.raises(ConfigError):
        DBASearch(index, alpha=-1)


def test_fit_with_explicit_positives(index: HNSWIndex, data) -> None:
    _base, base_lab, tq, tq_lab, _eq, _eq_lab = data
    pos = np.full((100, 50), -1, dtype=np.int64)
    for i, lab in enumerate(tq_lab[:100]):
        rows = np.flatnonzero(base_lab == lab)[:50]
        pos[i, : rows.size] = rows
    s = AttentionSearch(index, "scaled_dot", candidates=30, k_local=8, k_global=4)
    history = s.fit(tq[:100], positives=pos, epochs=1, batch_size=50)
    assert s.fitted and len(history.train_loss) == 1


def test_pipeline_rows_of_unknown_labels_are_padding(index: HNSWIndex) -> None:
    g = index.graph()
    rows = pipeline.rows_of(g, np.array([[0, 5, -1, 10**9]]))
    np.testing.assert_array_equal(rows, [[g.positions([0])[0], g.positions([5])[0], -1, -1]])


# ---------------------------------------------------------------------- stacked encoder blocks
def test_layers_two_fits_saves_and_loads(index: HNSWIndex, data, tmp_path: Path) -> None:
    _base, base_lab, tq, tq_lab, eq, _ = data
    s = AttentionSearch(index, "local_global", candidates=30, k_local=8, k_global=4, seed=0, label_head=False,
                        layers=2, norm="rms", dropout=0.1)
    names = set(s.model.encoder.params)
    assert {"block1.norm.gain", "block2.norm.gain"} <= names and any(k.startswith("block2.att.") for k in names)
    before = {k: v.copy() for k, v in s.model.encoder.params.items()}
    history = s.fit(tq[:120], labels=base_lab, query_labels=tq_lab[:120], epochs=1, batch_size=64,
                    val_fraction=0.2, patience=1)
    assert len(history.epoch) == 1 and np.isfinite(history.train_loss[0])
    after = s.model.encoder.params
    assert not np.array_equal(after["block2.norm.gain"], before["block2.norm.gain"])  # the new blocks train
    s.model.alpha, s.model.fitted = max(s.model.alpha, 0.5), True  # rank by the codes whatever calibration chose
    s.refresh()
    ref = s.search(eq[:40], k=10)
    s.save(tmp_path / "deep")
    loaded = AttentionSearch.load(tmp_path / "deep", index)
    cfg = loaded.model.config
    assert (cfg.layers, cfg.norm, cfg.dropout) == (2, "rms", 0.1)
    got = loaded.search(eq[:40], k=10)
    np.testing.assert_array_equal(ref[0], got[0])
    np.testing.assert_allclose(ref[1], got[1], rtol=0, atol=1e-6)


def test_models_saved_without_layers_load_as_one_block(index: HNSWIndex) -> None:
    from ruvector_hnsw.search.model import ModelConfig, SearchModel

    s = AttentionSearch(index, "local_global", k_local=8, k_global=4, seed=2)
    state = s.model.state()
    for key in ("layers", "norm", "dropout"):
        del state["config"][key]  # what a model saved before the field existed holds
    model = SearchModel.from_state(state)
    assert (model.config.layers, model.config.norm, model.config.dropout) == (1, None, 0.0)
    assert set(model.encoder.params) == set(s.model.encoder.params)
    for k, v in model.encoder.params.items():
        np.testing.assert_array_equal(v, s.model.encoder.params[k])
    # a one-block model's parameters are those of a mechanism built with the model's seed, as before
    ref = MECHANISMS["local_global"](DIM, seed=2)
    for k, v in ref.params.items():
        np.testing.assert_array_equal(model.encoder.params[f"att.{k}"], v)
    for bad in ({"layers": 0}, {"norm": "batch"}, {"dropout": 1.0}, {"dropout": -0.1}):
        with pytest.raises(ConfigError):
            ModelConfig(mechanism="local_global", dim=DIM, latent_dim=8, **bad)
    with pytest.raises(ConfigError, match="layers"):
        AttentionSearch(index, "local_global", layers=0)
