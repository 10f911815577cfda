"""Compact codes: storage dtypes, quantization error vs numpy, memory, ranking, persistence, live updates."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from ruvector_hnsw.errors import ConfigError
from ruvector_hnsw.search import AttentionSearch
from ruvector_hnsw.search.codes import LatentCodes
from ruvector_hnsw.search.quant import CODE_DTYPES, CodeRows, dequantize_int8, quantize_int8
from ruvector_hnsw.search.scoring import ResidualScorer
from ruvector_hnsw.search.training import map_at_r_of_rows
from tests.search.test_attention_search import _assert_state_equal, _index, _labelled

COMPACT = ("float16", "int8")


def _reference_int8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Plain-numpy per-row symmetric int8 with a power-of-two scale, one row at a time."""
    q = np.zeros(x.shape, dtype=np.int8)
    s = np.zeros(x.shape[0], dtype=np.float32)
    for i, row in enumerate(x.astype(np.float64)):
        m = np.abs(row).max()
        if m == 0:
            continue
        e = int(np.ceil(np.log2(m / 127.0)))
        s[i] = 2.0**e
        q[i] = np.clip(np.rint(row / 2.0**e), -127, 127)
    return q, s


def _codes(n: int = 700, p: int = 24, m: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, p)).astype(np.float32)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    phi = rng.standard_normal((n, m)).astype(np.float32)
    phi /= np.linalg.norm(phi, axis=1, keepdims=True)
    return z, phi


# ---------------------------------------------------------------------- quantization
def test_int8_matches_numpy_reference_and_its_error_bounds() -> None:
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((300, 40)) * rng.uniform(0.01, 5.0, (300, 1))).astype(np.float32)
    x[7] = 0.0  # an all-zero row
    q, s = quantize_int8(x)
    q_ref, s_ref = _reference_int8(x)
    np.testing.assert_array_equal(q, q_ref)
    np.testing.assert_array_equal(s, s_ref)
    assert q.dtype == np.int8 and s.dtype == np.float32 and np.abs(q).max() <= 127
    back = dequantize_int8(q, s)
    np.testing.assert_array_equal(back, q.astype(np.float64) * s[:, None])  # exact in float32
    err = np.abs(back - x)
    assert (err <= s[:, None] / 2 + 1e-12).all()
    absmax = np.abs(x).max(axis=1)
    assert (s <= absmax / 127 * 2 + 1e-30).all() and (s >= absmax / 127).all()  # the power of two just above
    # inner products: |<y, x> - <y, back>| <= ||y||_1 s / 2
    y = rng.standard_normal((5, 40)).astype(np.float32)
    dot_err = np.abs(y @ x.T - y @ back.T)
    assert (dot_err <= np.abs(y).sum(axis=1)[:, None] * s[None, :] / 2 + 1e-5).all()
    # idempotent: quantizing the read-back rows returns the same codes and scales
    q2, s2 = quantize_int8(back)
    np.testing.assert_array_equal(q2, q)
    np.testing.assert_array_equal(s2, s)


@pytest.mark.parametrize("dtype", CODE_DTYPES)
def test_code_rows_store_in_their_dtype_and_read_back_float32(dtype: str) -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((50, 12)).astype(np.float32)
    rows = CodeRows(x, dtype)
    assert rows.raw.dtype == np.dtype(dtype)
    assert rows.values().dtype == np.float32
    expected = {"float32": x, "float16": x.astype(np.float16).astype(np.float32),
                "int8": dequantize_int8(*_reference_int8(x))}[dtype]
    np.testing.assert_array_equal(rows.values(), expected)
    np.testing.assert_array_equal(rows[np.array([[3, 4], [0, 49]])], expected[[[3, 4], [0, 49]]])
    per_value = {"float32": 4, "float16": 2, "int8": 1}[dtype]
    assert rows.memory_bytes() == 50 * 12 * per_value + (50 * 4 if dtype == "int8" else 0)
    # growth and row writes store each row on its own: equal to storing the final matrix at once
    rows.resize(60)
    extra = rng.standard_normal((10, 12)).astype(np.float32)
    rows.set_rows(np.arange(50, 60), extra)
    rows.set_rows(np.array([5]), extra[:1])
    full = np.concatenate([x, extra])
    full[5] = extra[0]
    np.testing.assert_array_equal(rows.values(), CodeRows(full, dtype).values())
    again = CodeRows.from_state(rows.state())
    np.testing.assert_array_equal(again.raw, rows.raw)


def test_bad_code_dtype_is_a_config_error_naming_it(index) -> None:
    with pytest.raises(ConfigError, match=r"code_dtype.*'int4'"):
        AttentionSearch(index, code_dtype="int4")
    with pytest.raises(ConfigError, match="code_dtype"):
        CodeRows(np.zeros((2, 2), np.float32), "bfloat16")
    s = AttentionSearch(index)
    with pytest.raises(ConfigError, match=r"code_dtype.*None"):
        s.set_code_dtype(None)  # type: ignore[arg-type]
    assert issubclass(ConfigError, ValueError)


@pytest.fixture(scope="module")
def index():
    return _index(_labelled()[0])


# ---------------------------------------------------------------------- kernels vs numpy
@pytest.mark.parametrize("dtype", COMPACT)
def test_compact_scores_and_flat_search_equal_numpy_on_the_read_back_codes(dtype: str) -> None:
    z, phi = _codes()
    codes = LatentCodes(z, phi, 0.5, kind="flat", dtype=dtype)
    ref = codes.codes  # float32 read-back
    assert codes.store.raw.dtype == np.dtype(dtype)
    rng = np.random.default_rng(3)
    zq = rng.standard_normal((20, codes.width)).astype(np.float32)
    sims = zq.astype(np.float64) @ ref.T.astype(np.float64)
    got = codes.search(zq, 15)
    np.testing.assert_array_equal(got, np.argsort(-sims, axis=1, kind="stable")[:, :15])
    # the residual scorer reads the compact rows as the float32 matrix would be read
    vectors = rng.standard_normal((len(codes), 8)).astype(np.float32)
    qv = rng.standard_normal((20, 8)).astype(np.float32)
    pool = rng.integers(-1, len(codes), (20, 30))
    scorer = ResidualScorer(alpha=3.0, beta=0.7, s0=1.3, space="l2")
    s_c, d_c = scorer.score(qv, vectors, zq, codes.store, pool, None)
    s_f, d_f = scorer.score(qv, vectors, zq, ref, pool, None)
    np.testing.assert_allclose(s_c, s_f, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(d_c, d_f)
    d_ref = ((qv[:, None, :] - vectors[np.maximum(pool, 0)]) ** 2).sum(-1)
    s_ref = -0.7 * d_ref / 1.3 + 3.0 * np.einsum("bd,bpd->bp", zq, ref[np.maximum(pool, 0)])
    np.testing.assert_allclose(np.where(pool >= 0, s_c, 0), np.where(pool >= 0, s_ref, 0), rtol=1e-4, atol=1e-4)
    assert np.isneginf(s_c[pool < 0]).all()


def test_compact_codes_compose_from_the_stored_coordinates() -> None:
    z, phi = _codes()
    codes = LatentCodes(z, phi, 0.5, kind="flat", dtype="int8")
    phi_back = dequantize_int8(*quantize_int8(phi))
    np.testing.assert_array_equal(codes.phi_values(), phi_back)
    composed = np.concatenate([z, np.float32(np.sqrt(0.5)) * phi_back], axis=1)
    np.testing.assert_array_equal(codes.codes, dequantize_int8(*quantize_int8(composed)))
    # no float32 copy of z is kept: z reads back from the codes
    np.testing.assert_array_equal(codes.z_values(), codes.codes[:, : z.shape[1]])
    assert codes.memory_bytes()["z"] == 0


@pytest.mark.parametrize("dtype", COMPACT)
def test_link_graph_search_finds_the_exact_neighbours(dtype: str) -> None:
    z, phi = _codes(n=2500, p=16, m=0)
    graph = LatentCodes(z, phi, 0.0, kind="hnsw", dtype=dtype)
    flat = LatentCodes(z, phi, 0.0, kind="flat", dtype=dtype)
    zq = _codes(n=50, p=16, m=0, seed=9)[0]
    got, exact = graph.search(zq, 10), flat.search(zq, 10)
    recall = np.mean([np.intersect1d(a, b).size / 10 for a, b in zip(got, exact, strict=True)])
    assert recall >= 0.95, recall
    # a row's neighbours in the links are rows of the graph; every row is reachable from layer 0
    lg = graph._graph
    assert lg is not None and len(lg) == 2500 and lg.l0_idx.max() < 2500
    assert np.unique(lg.l0_idx).size > 2400


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_int8_is_at_least_3_5_times_smaller_than_float32(kind: str) -> None:
    z, phi = _codes(n=6000, p=64, m=64)
    mem = {dt: LatentCodes(z, phi, 0.25, kind=kind, dtype=dt).memory_bytes() for dt in CODE_DTYPES}
    for m in mem.values():
        assert m["total"] == m["codes"] + m["phi"] + m["z"] + m["latent_index"]
    assert mem["float32"]["total"] / mem["int8"]["total"] >= 3.5
    assert mem["float32"]["total"] / mem["float16"]["total"] >= 1.9
    assert mem["int8"]["codes"] == 6000 * (128 + 4)
    assert (mem["float32"]["latent_index"] > 0) == (kind == "hnsw")


# ---------------------------------------------------------------------- the searcher
@pytest.fixture(scope="module")
def fitted():
    """One float32 fit (metric path: the codes carry the learned signal) and an int8 fit of the same model."""
    base, base_lab, tq, tq_lab, eq, eq_lab = _labelled()
    out = {}
    for dt in ("float32", "int8"):
        idx = _index(base)
        s = AttentionSearch(idx, "local_global", candidates=40, k_local=8, k_global=4, seed=0, label_head=False,
                            code_dtype=dt)
        s.fit(tq, labels=base_lab, query_labels=tq_lab, epochs=2, batch_size=64, val_fraction=0.2)
        out[dt] = s
    return out, (base, base_lab, eq, eq_lab)


def test_training_uses_float32_and_the_choice_applies_to_the_stored_cache(fitted) -> None:
    models, _ = fitted
    f32, i8 = models["float32"], models["int8"]
    assert i8.code_dtype == "int8" and i8.model.config.code_dtype == "int8"
    for name, value in f32.model.encoder.params.items():  # identical training
        np.testing.assert_array_equal(value, i8.model.encoder.params[name], err_msg=name)
    assert f32.model.rho == i8.model.rho
    db = i8.database_state()
    assert db.codes is not None and db.codes.store.raw.dtype == np.int8 and db.codes.phi.raw.dtype == np.int8
    assert db.codes.store.scale is not None and db.codes.store.scale.dtype == np.float32
    assert f32.database_state().codes.store.raw.dtype == np.float32


def test_int8_ranking_is_close_to_float32(fitted) -> None:
    models, (_base, base_lab, eq, eq_lab) = fitted
    f32 = models["float32"]
    assert f32.alpha > 0  # the codes are in the score
    ref, _ = f32.search(eq, k=100)
    for dt, min_overlap in (("float16", 0.97), ("int8", 0.8)):
        conv = pickle.loads(pickle.dumps(f32))
        conv.set_code_dtype(dt)
        assert conv.database_state().codes.store.raw.dtype == np.dtype(dt)
        got, _ = conv.search(eq, k=100)
        overlap = np.mean([np.intersect1d(a[:10], b[:10]).size / 10 for a, b in zip(ref, got, strict=True)])
        assert overlap >= min_overlap, (dt, overlap)
        rel = [np.flatnonzero(base_lab == c) for c in eq_lab]
        m_ref = map_at_r_of_rows(ref, rel)
        m_got = map_at_r_of_rows(got, rel)
        assert abs(m_got - m_ref) <= 0.01, (dt, m_ref, m_got)
    mem = f32.memory_bytes()
    conv = pickle.loads(pickle.dumps(f32))
    conv.set_code_dtype("int8")
    assert mem["total"] / conv.memory_bytes()["total"] >= 3.5


@pytest.mark.parametrize("dtype", CODE_DTYPES)
@pytest.mark.parametrize("latent", ["flat", "hnsw"])
def test_save_load_round_trip_searches_identically(fitted, tmp_path: Path, dtype: str, latent: str) -> None:
    models, (_base, _, eq, _) = fitted
    s = pickle.loads(pickle.dumps(models["float32"]))
    s.model.config = type(s.model.config)(**{**s.model.config.__dict__, "latent": latent})
    s.refresh()
    s.set_code_dtype(dtype)
    ids, scores = s.search(eq, k=20)
    s.save(tmp_path / "m")
    loaded = AttentionSearch.load(tmp_path / "m", s.index)
    assert loaded.code_dtype == dtype
    a, b = loaded.database_state().codes, s.database_state().codes
    assert a.store.raw.dtype == np.dtype(dtype) and a.resolved_kind == latent
    np.testing.assert_array_equal(a.store.raw, b.store.raw)
    got_ids, got_scores = loaded.search(eq, k=20)
    np.testing.assert_array_equal(got_ids, ids)
    np.testing.assert_array_equal(got_scores, scores)
    assert loaded.memory_bytes() == s.memory_bytes()


@pytest.mark.parametrize("dtype", COMPACT)
def test_incremental_add_keeps_the_compact_dtype_and_equals_a_fresh_sync(dtype: str) -> None:
    base, base_lab, tq, tq_lab, eq, _ = _labelled()
    idx = _index(base[:1000])
    s = AttentionSearch(idx, "local_global", candidates=30, k_local=8, k_global=4, seed=0, latent="flat",
                        code_dtype=dtype)
    s.fit(tq[:150], labels=base_lab, query_labels=tq_lab[:150], epochs=1, batch_size=64)
    before = s.database_state().codes.store.raw.copy()
    idx.add(base[1000:1001])
    db = s.database_state()
    assert db.codes is not None and db.codes.store.raw.dtype == np.dtype(dtype) and db.codes.dtype == dtype
    changed = np.flatnonzero(np.any(db.codes.store.raw[:1000] != before, axis=1))
    assert 0 < changed.size < 60, changed.size
    idx.add(base[1001:1200])
    idx.delete(np.arange(0, 40))
    live = s.search(eq, k=10)
    fresh = AttentionSearch(idx, "local_global", candidates=30, k_local=8, k_global=4, seed=0, latent="flat",
                            code_dtype=dtype)
    fresh.model = s.model
    fresh_db = fresh.database_state()
    live_codes = s.database_state().codes
    fresh_db.codes = None
    fresh_db.refresh_codes(s.model, phi=live_codes.phi_values()[: live_codes.phi_fitted],
                           phi_fitted=live_codes.phi_fitted)
    assert fresh_db.codes is not None and fresh_db.codes.dtype == dtype
    _assert_state_equal(s.database_state(), fresh_db)
    np.testing.assert_array_equal(s.database_state().codes.store.raw, fresh_db.codes.store.raw)
    np.testing.assert_array_equal(s.database_state().codes.phi.raw, fresh_db.codes.phi.raw)
    got = fresh.search(eq, k=10)
    np.testing.assert_array_equal(live[0], got[0])
    np.testing.assert_array_equal(live[1], got[1])


def test_hnsw_latent_updates_keep_the_compact_dtype() -> None:
    z, phi = _codes(n=800, p=16, m=8)
    codes = LatentCodes(z, phi, 0.5, kind="hnsw", dtype="int8")
    extra_z, extra_phi = _codes(n=50, p=16, m=8, seed=5)
    rows = np.arange(800, 850)
    codes.update(rows, extra_z, 850, rows, extra_phi)
    assert codes.store.raw.dtype == np.int8 and len(codes) == 850 and codes.delta_size == 50
    full = LatentCodes(np.concatenate([z, extra_z]), np.concatenate([phi, extra_phi]), 0.5, kind="flat",
                       dtype="int8")
    np.testing.assert_array_equal(codes.store.raw, full.store.raw)
    # the delta rows are found: searching with a new row's own code returns it first
    hits = codes.search(np.ascontiguousarray(full.codes[rows]), 1)[:, 0]
    assert (hits == rows).mean() >= 0.95


def test_half_decoding_of_the_kernels_is_exact_for_every_finite_float16() -> None:
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    values = bits.view(np.float16)
    finite = np.isfinite(values)
    x = values[finite].astype(np.float32).reshape(-1, 1)
    rows = CodeRows(x, "float16")
    codes, scale, lut, half = rows.kernel_args()
    assert half and codes.dtype == np.uint16
    from ruvector_hnsw.search import _quant_kernels as qk

    out = np.empty((1, x.shape[0]), dtype=np.float32)
    qk.pair_sims(np.ones((1, 1), np.float32), codes, scale, lut, half, np.arange(x.shape[0])[None, :], out, 0, 1)
    np.testing.assert_array_equal(out[0], x[:, 0])


@pytest.mark.parametrize("dtype", COMPACT)
def test_compact_search_is_the_same_at_any_thread_count(fitted, dtype: str) -> None:
    models, (_base, _, eq, _) = fitted
    s = pickle.loads(pickle.dumps(models["float32"]))
    s.model.config = type(s.model.config)(**{**s.model.config.__dict__, "latent": "hnsw"})
    s.refresh()
    s.set_code_dtype(dtype)
    out = []
    for threads in (1, 2):
        s.num_threads = threads
        out.append(s.search(np.repeat(eq, 4, axis=0), k=30))  # enough work to fan out over the threads
    np.testing.assert_array_equal(out[0][0], out[1][0])
    np.testing.assert_array_equal(out[0][1], out[1][1])
