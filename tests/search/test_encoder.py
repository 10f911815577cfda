"""The encoder and the training loss: analytic gradients vs central finite differences (float64)."""

from __future__ import annotations

import numpy as np
import pytest

from ruvector_hnsw.attention import Context
from ruvector_hnsw.attention.local_global import LocalGlobalAttention
from ruvector_hnsw.search.encoder import ContextEncoder
from ruvector_hnsw.search.training import contrastive_loss


def _problem(seed: int = 0):
    rng = np.random.default_rng(seed)
    N, d, B, K, P = 30, 6, 3, 6, 7
    table = rng.standard_normal((N, d))
    ids_q = rng.integers(-1, N, (B, K))
    ids_q[:, 0] = rng.integers(0, N, B)
    layer_q = rng.integers(0, 2, (B, K)).astype(np.int8)
    pool = np.stack([rng.choice(N, P, replace=False) for _ in range(B)])
    pool[0, -1] = -1  # an empty slot
    posmask = np.zeros(pool.shape, dtype=bool)
    posmask[:, :2] = True
    uniq = np.unique(pool[pool >= 0])
    ids_v = rng.integers(-1, N, (uniq.shape[0], K))
    ids_v[:, 0] = rng.integers(0, N, uniq.shape[0])
    layer_v = rng.integers(0, 2, (uniq.shape[0], K)).astype(np.int8)
    q = table[:B] * 0.7 + 0.1
    q_in = (ids_q, ids_q >= 0, Context(dist=np.abs(rng.standard_normal((B, K))), layer=layer_q))
    dist_v = np.abs(rng.standard_normal((uniq.shape[0], K)))

    def v_in(rows: np.ndarray):
        at = np.searchsorted(uniq, rows)
        assert np.array_equal(uniq[at], rows)
        return ids_v[at], ids_v[at] >= 0, Context(dist=dist_v[at], layer=layer_v[at])

    return table, q, q_in, pool, posmask, v_in


def _encoder() -> ContextEncoder:
    mech = LocalGlobalAttention(6, dtype=np.float64, seed=1)
    rng = np.random.default_rng(2)
    for v in mech.params.values():  # move off the symmetric initialisation
        v[...] += 0.3 * rng.standard_normal(v.shape)
    enc = ContextEncoder(mech, 6, 4, seed=3, dtype=np.float64)
    enc.own["W_a"][...] += 0.2 * rng.standard_normal(enc.own["W_a"].shape)
    return enc


@pytest.mark.parametrize("fresh_rows", [None, 5])
def test_training_loss_gradients_match_finite_differences(fresh_rows: int | None) -> None:
    """Exact gradient, and with a fresh-row budget (the other rows' stale codes are constants)."""
    enc = _encoder()
    assert enc.mechanism.params, "the test needs a mechanism with parameters"
    prob = _problem()
    table, q, q_in, pool, posmask, v_in = prob
    stale = None
    if fresh_rows is not None:
        stale = np.random.default_rng(9).standard_normal((table.shape[0], enc.latent_dim))
        stale /= np.linalg.norm(stale, axis=1, keepdims=True)
    kw = {"stale": stale, "fresh_rows": fresh_rows}
    loss, grads = contrastive_loss(enc, table, q, q_in, pool, posmask, v_in, 0.5, **kw)
    assert np.isfinite(loss)
    eps = 1e-6
    checked = 0
    for name, param in enc.params.items():
        flat = param.reshape(-1)
        idx = np.random.default_rng(4).choice(flat.size, min(flat.size, 6), replace=False)
        for i in idx:
            old = flat[i]
            flat[i] = old + eps
            up, _ = contrastive_loss(enc, table, q, q_in, pool, posmask, v_in, 0.5, **kw)
            flat[i] = old - eps
            down, _ = contrastive_loss(enc, table, q, q_in, pool, posmask, v_in, 0.5, **kw)
            flat[i] = old
            num = (up - down) / (2 * eps)
            np.testing.assert_allclose(grads[name].reshape(-1)[i], num, rtol=1e-4, atol=1e-7, err_msg=name)
            checked += 1
    assert any(k.startswith("att.") for k in grads) and checked > 10


def test_fresh_row_budget() -> None:
    """A budget covering the pool is the exact loss; a small one encodes only the rows with the largest gradient."""
    enc = _encoder()
    table, q, q_in, pool, posmask, v_in = _problem()
    exact, g_exact = contrastive_loss(enc, table, q, q_in, pool, posmask, v_in, 0.5)
    n_rows = np.unique(pool[pool >= 0]).size
    stale = np.zeros((table.shape[0], enc.latent_dim))
    same, g_same = contrastive_loss(enc, table, q, q_in, pool, posmask, v_in, 0.5, stale=stale, fresh_rows=n_rows)
    assert same == exact
    for k in g_exact:
        np.testing.assert_array_equal(g_same[k], g_exact[k])
    # stale codes equal to the current ones: the same loss value, but only the budget's rows get a gradient
    seen: list[np.ndarray] = []

    def spy(rows: np.ndarray):
        seen.append(rows.copy())
        return v_in(rows)

    uniq = np.unique(pool[pool >= 0])
    ids, mask, ctx = v_in(uniq)
    current = np.zeros((table.shape[0], enc.latent_dim))
    current[uniq] = enc.encode(table[uniq], table, ids, mask, ctx).zhat
    part, g_part = contrastive_loss(enc, table, q, q_in, pool, posmask, spy, 0.5, stale=current, fresh_rows=4)
    np.testing.assert_allclose(part, exact, rtol=1e-12)
    assert seen[-1].size == 4 and np.all(np.diff(seen[-1]) > 0)
    assert any(not np.allclose(g_part[k], g_exact[k]) for k in g_exact)


@pytest.mark.parametrize("mechanism", ["local_global", "multi_head", "moe", "scaled_dot"])
def test_database_codes_do_not_depend_on_the_batch(mechanism: str) -> None:
    """BLAS sums small matrices in another order: encode_rows must hide that (incremental == full)."""
    from ruvector_hnsw import HNSWIndex
    from ruvector_hnsw.search import AttentionSearch

    rng = np.random.default_rng(0)
    idx = HNSWIndex(32, M=8, ef_construction=60, seed=1, num_threads=1)
    idx.add(rng.standard_normal((1500, 32)).astype(np.float32))
    s = AttentionSearch(idx, mechanism, k_local=8, k_global=4)
    db = s.database_state()
    full = db.encode_rows(s.model.encoder, np.arange(db.n))
    for size in (1, 2, 5, 17, 100, 300):
        rows = np.arange(11, 11 + size)
        np.testing.assert_array_equal(db.encode_rows(s.model.encoder, rows), full[rows], err_msg=str(size))
    for seed in range(3):  # scattered rows, in any order, with repeats
        rows = np.random.default_rng(seed).integers(0, db.n, 150)
        np.testing.assert_array_equal(db.encode_rows(s.model.encoder, rows), full[rows], err_msg=f"seed {seed}")


def test_database_codes_do_not_depend_on_the_grouping_of_blocks(monkeypatch) -> None:
    """Several aligned blocks share one encoder call; how many must not change any code."""
    from ruvector_hnsw import HNSWIndex
    from ruvector_hnsw.search import AttentionSearch, state

    rng = np.random.default_rng(1)
    idx = HNSWIndex(24, M=8, ef_construction=60, seed=1, num_threads=1)
    idx.add(rng.standard_normal((2000, 24)).astype(np.float32))
    s = AttentionSearch(idx, "local_global", k_local=8, k_global=4)
    db = s.database_state()
    full = db.encode_rows(s.model.encoder, np.arange(db.n))
    for group in (1, 3, 7):
        monkeypatch.setattr(state, "ENCODE_GROUP", group)
        np.testing.assert_array_equal(db.encode_rows(s.model.encoder, np.arange(db.n)), full, err_msg=str(group))
        rows = np.random.default_rng(group).integers(0, db.n, 400)
        np.testing.assert_array_equal(db.encode_rows(s.model.encoder, rows), full[rows], err_msg=str(group))


def test_aligned_blocks_put_each_row_at_its_residue() -> None:
    from ruvector_hnsw.search.state import aligned_blocks

    rows = np.array([5, 69, 3, 133, 7, 5, 64])
    blocks = aligned_blocks(rows, 64)
    covered = np.concatenate([at for at, _ in blocks])
    assert sorted(covered.tolist()) == list(range(rows.size))
    for at, block in blocks:
        assert block.shape == (64,)
        np.testing.assert_array_equal(block[rows[at] % 64], rows[at])
    assert len(blocks) == 4  # residue 5 holds 5, 69, 133, 5
    full = aligned_blocks(np.arange(130), 64)
    assert [b.tolist() for _, b in full[:2]] == [list(range(64)), list(range(64, 128))]


def test_encoder_writes_nothing_during_encode_and_backward() -> None:
    enc = _encoder()
    table, q, q_in, pool, posmask, v_in = _problem()
    before = {k: v.copy() for k, v in enc.params.items()}
    contrastive_loss(enc, table, q, q_in, pool, posmask, v_in, 0.5)
    for k, v in enc.params.items():
        np.testing.assert_array_equal(v, before[k])


@pytest.mark.parametrize("seed", [0, 1])
def test_untrained_projection_is_the_normalised_map(seed: int) -> None:
    enc = ContextEncoder(LocalGlobalAttention(6, seed=seed), 6, 4, seed=seed)
    table, _, (ids, mask, ctx), _, _, _ = _problem(seed)
    table = table.astype(np.float32)
    u = table[:3]
    out = enc.encode(u, table, ids, mask, ctx)
    z = u @ enc.own["W_u"].T + out.a @ enc.own["W_a"].T
    np.testing.assert_allclose(out.zhat, z / np.linalg.norm(z, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------- stacked blocks
def _stacked(norm: str | None, dropout: float = 0.0, layers: int = 2) -> ContextEncoder:
    rng = np.random.default_rng(7)
    mechs = []
    for i in range(layers):
        m = LocalGlobalAttention(6, dtype=np.float64, seed=1 + i)
        for v in m.params.values():
            v[...] += 0.3 * rng.standard_normal(v.shape)
        mechs.append(m)
    enc = ContextEncoder(mechs, 6, 4, seed=3, dtype=np.float64, norm=norm, dropout=dropout)
    enc.own["W_a"][...] += 0.2 * rng.standard_normal(enc.own["W_a"].shape)
    for nrm in enc.norms:  # move the norms off gain = 1, bias = 0
        for v in (nrm.params.values() if nrm is not None else ()):
            v[...] += 0.3 * rng.standard_normal(v.shape)
    return enc


@pytest.mark.parametrize(("norm", "dropout"), [(None, 0.0), ("layer", 0.0), ("rms", 0.0), ("layer", 0.3)])
def test_stacked_encoder_gradients_match_finite_differences(norm, dropout) -> None:
    enc = _stacked(norm, dropout)
    names = set(enc.params)
    assert {"W_u", "W_a"} <= names and any(k.startswith("att.") for k in names)
    assert any(k.startswith("block2.att.") for k in names)
    if norm is not None:
        assert {"block1.norm.gain", "block2.norm.gain"} <= names
        assert ("block2.norm.bias" in names) == (norm == "layer")
    table, q, q_in, pool, posmask, v_in = _problem()

    def run():  # the same dropout masks at every evaluation
        return contrastive_loss(enc, table, q, q_in, pool, posmask, v_in, 0.5, rng=np.random.default_rng(11))

    loss, grads = run()
    if dropout:
        assert loss != contrastive_loss(enc, table, q, q_in, pool, posmask, v_in, 0.5)[0]  # dropout acted
    eps = 1e-6
    checked = set()
    for name, param in enc.params.items():
        flat = param.reshape(-1)
        idx = np.random.default_rng(4).choice(flat.size, min(flat.size, 4), replace=False)
        for i in idx:
            old = flat[i]
            flat[i] = old + eps
            up, _ = run()
            flat[i] = old - eps
            down, _ = run()
            flat[i] = old
            num = (up - down) / (2 * eps)
            np.testing.assert_allclose(grads[name].reshape(-1)[i], num, rtol=1e-4, atol=1e-7, err_msg=name)
        checked.add(name)
    assert checked == names


def _old_encoder_reference(enc: ContextEncoder, u, table, ids, mask, ctx, grad_zhat):
    """The single-block encoder as it was before blocks existed (same numpy operations)."""
    a, cache = enc.mechanism.forward(u, table, table, mask=mask, context=ctx, ids=ids)
    a = np.ascontiguousarray(a, dtype=enc.dtype)
    uu = np.ascontiguousarray(u, dtype=enc.dtype)
    z = uu @ enc.own["W_u"].T + a @ enc.own["W_a"].T
    norm = np.sqrt((z * z).sum(axis=1, keepdims=True)) + enc.dtype.type(1e-12)
    zhat = (z / norm).astype(enc.dtype, copy=False)
    g = np.asarray(grad_zhat, dtype=enc.dtype)
    gz = (g - zhat * (zhat * g).sum(axis=1, keepdims=True)) / norm
    grads = {"W_u": gz.T @ uu, "W_a": gz.T @ a}
    att = enc.mechanism.backward(cache, np.ascontiguousarray(gz @ enc.own["W_a"], dtype=enc.mechanism.dtype),
                                 input_grads=False)
    for k in enc.mechanism.params:
        grads[f"att.{k}"] = att[k]
    return zhat, grads


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_single_block_is_the_old_encoder_bit_for_bit(dtype) -> None:
    mech = LocalGlobalAttention(6, dtype=dtype, seed=1)
    for v in mech.params.values():
        v[...] += 0.3 * np.random.default_rng(0).standard_normal(v.shape)
    enc = ContextEncoder(mech, 6, 4, seed=3, dtype=dtype, dropout=0.5)  # no rng: inference, identity
    assert set(enc.params) == {"W_u", "W_a", *(f"att.{k}" for k in mech.params)} and enc.layers == 1
    table, q, (ids, mask, ctx), _, _, _ = _problem()
    table = table.astype(dtype)
    gzh = np.random.default_rng(3).standard_normal((q.shape[0], 4))
    ref_z, ref_g = _old_encoder_reference(enc, q, table, ids, mask, ctx, gzh)
    out = enc.encode(q, table, ids, mask, ctx)
    np.testing.assert_array_equal(out.zhat, ref_z)
    grads = enc.zero_grads()
    enc.backward(out, gzh, grads)
    assert set(grads) == set(ref_g)
    for k in ref_g:
        np.testing.assert_array_equal(grads[k], ref_g[k], err_msg=k)


def test_dropout_draws_only_in_training_and_is_seeded() -> None:
    enc = _stacked("rms", dropout=0.4)
    plain = _stacked("rms", dropout=0.0)
    table, q, (ids, mask, ctx), _, _, _ = _problem()
    rng = np.random.default_rng(5)
    before = rng.bit_generator.state
    np.testing.assert_array_equal(enc.encode(q, table, ids, mask, ctx).zhat,
                                  plain.encode(q, table, ids, mask, ctx, rng=rng).zhat)
    assert rng.bit_generator.state == before  # dropout = 0 draws nothing
    a = enc.encode(q, table, ids, mask, ctx, rng=np.random.default_rng(1))
    b = enc.encode(q, table, ids, mask, ctx, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(a.zhat, b.zhat)
    assert not np.allclose(a.zhat, enc.encode(q, table, ids, mask, ctx).zhat)
    keep = a.blocks[0].keep
    assert keep is not None and set(np.unique(keep)) <= {0.0, 1.0 / 0.6}


def test_stacked_encoder_bad_configuration() -> None:
    from ruvector_hnsw.attention.info_bottleneck import InfoBottleneckAttention
    from ruvector_hnsw.errors import ConfigError

    m1, m2 = LocalGlobalAttention(6, seed=1), LocalGlobalAttention(6, seed=2)
    with pytest.raises(ConfigError, match="norm"):
        ContextEncoder([m1, m2], 6, 4, norm="batch")
    with pytest.raises(ConfigError, match="dropout"):
        ContextEncoder([m1, m2], 6, 4, dropout=1.0)
    with pytest.raises(ConfigError, match="own mechanism"):
        ContextEncoder([m1, m1], 6, 4)
    with pytest.raises(ConfigError, match="mechanism"):
        ContextEncoder([], 6, 4)
    with pytest.raises(ConfigError, match="residual"):
        ContextEncoder([InfoBottleneckAttention(6, bottleneck_dim=3, seed=0), m2], 6, 4)
    ContextEncoder([m1, InfoBottleneckAttention(6, bottleneck_dim=3, seed=0)], 6, 4)  # the last may change width


@pytest.mark.parametrize("layers", [2, 3])
def test_stacked_forward_is_the_documented_formula(layers) -> None:
    enc = _stacked("layer", layers=layers)
    table, q, (ids, mask, ctx), _, _, _ = _problem()

    def ln(x, nrm):
        mu = x.mean(axis=1, keepdims=True)
        var = ((x - mu) ** 2).mean(axis=1, keepdims=True)
        return nrm.params["gain"] * (x - mu) / np.sqrt(var + 1e-5) + nrm.params["bias"]

    h = q.copy()
    for i, (mech, nrm) in enumerate(zip(enc.mechanisms, enc.norms, strict=True)):
        a, _ = mech.forward(ln(h, nrm), table, table, mask=mask, context=ctx, ids=ids)
        if i < layers - 1:
            h = h + a
    z = h @ enc.own["W_u"].T + a @ enc.own["W_a"].T
    np.testing.assert_allclose(enc.encode(q, table, ids, mask, ctx).zhat, z / np.linalg.norm(z, axis=1, keepdims=True),
                               rtol=1e-10, atol=1e-12)


def test_no_context_ablation_encodes_the_vector_alone() -> None:
    """context="none": no attention runs, the code is normalize(W_u u), the mechanism gets zero gradients."""
    enc = _encoder()
    ablated = ContextEncoder(enc.mechanism, 6, 4, seed=3, dtype=np.float64, use_context=False)
    ablated.own["W_u"][...] = enc.own["W_u"]
    table, q, q_in, pool, posmask, v_in = _problem()
    out = ablated.encode(q, table, *q_in)
    z = q @ ablated.own["W_u"].T
    np.testing.assert_allclose(out.zhat, z / np.linalg.norm(z, axis=1, keepdims=True), rtol=1e-9)
    assert out.att_cache is None and not out.a.any()
    loss, grads = contrastive_loss(ablated, table, q, q_in, pool, posmask, v_in, 0.5)
    assert all(not g.any() for k, g in grads.items() if k.startswith("att.") or k == "W_a")
    assert grads["W_u"].any() and np.isfinite(loss)
    assert not np.allclose(enc.encode(q, table, *q_in).zhat, out.zhat)  # the graph context does change codes


def test_no_context_option_reaches_the_model_and_is_saved(tmp_path) -> None:
    from ruvector_hnsw import HNSWIndex
    from ruvector_hnsw.errors import ConfigError
    from ruvector_hnsw.search import AttentionSearch

    rng = np.random.default_rng(0)
    idx = HNSWIndex(8, M=8, ef_construction=40, seed=1, num_threads=1)
    idx.add(rng.standard_normal((300, 8)).astype(np.float32))
    s = AttentionSearch(idx, context="none", num_threads=1)
    assert not s.model.encoder.use_context
    s.save(tmp_path / "m")
    assert AttentionSearch.load(tmp_path / "m", idx).model.config.context == "none"
    with pytest.raises(ConfigError, match="context"):
        AttentionSearch(idx, context="hubs")
