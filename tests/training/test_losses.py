from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ruvector_hnsw.errors import (
    ConfigError,
    InvalidInputError,
    NonFiniteError,
    ShapeMismatchError,
)
from ruvector_hnsw.training.losses import (
    CosineSimilarity,
    DotSimilarity,
    columns_to_mask,
    ids_to_mask,
    info_nce,
    local_contrastive,
    sample_non_neighbors,
    triplet,
)

from ._helpers import fd_grad


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ---------------------------------------------------------------- references (plain numpy, per row)


def ref_info_nce(s, pos, valid, tau, form):
    losses = []
    for i in range(s.shape[0]):
        p = pos[i] & valid[i]
        if not p.any():
            continue
        a = s[i][valid[i]] / tau
        lse = np.log(np.sum(np.exp(a)))
        ap = s[i][p] / tau
        if form == "supcon":
            losses.append(np.mean(lse - ap))
        else:
            losses.append(lse - np.log(np.sum(np.exp(ap))))
    return float(np.mean(losses)) if losses else 0.0


def ref_triplet(v, pos, neg, margin, kind, soft):
    sign = 1.0 if kind == "scores" else -1.0
    rows = []
    for i in range(v.shape[0]):
        ps = np.nonzero(pos[i])[0]
        ns = np.nonzero(neg[i] & ~pos[i])[0]
        if len(ps) == 0 or len(ns) == 0:
            continue
        vals = []
        for p in ps:
            for n in ns:
                z = margin - sign * (v[i, p] - v[i, n])
                vals.append(np.log1p(np.exp(z)) if soft else max(z, 0.0))
        rows.append(np.mean(vals))
    return float(np.mean(rows)) if rows else 0.0


def _problem(b=5, c=7, seed=0):
    rng = _rng(seed)
    s = rng.normal(size=(b, c))
    pos = rng.random((b, c)) < 0.3
    pos[0] = False  # a row without positives must be ignored
    pos[1, :2] = True
    valid = rng.random((b, c)) < 0.85
    valid[1, :2] = True
    return s, pos, valid


# ---------------------------------------------------------------- InfoNCE


@pytest.mark.parametrize("form", ["supcon", "logsumexp"])
@pytest.mark.parametrize("tau", [0.07, 1.0])
def test_info_nce_value_and_fd(form, tau):
    s, pos, valid = _problem()
    loss, g = info_nce(s, pos, temperature=tau, candidate_mask=valid, form=form)
    assert loss == pytest.approx(ref_info_nce(s, pos, valid, tau, form), rel=1e-10)
    fd = fd_grad(lambda x: info_nce(x, pos, temperature=tau, candidate_mask=valid, form=form)[0], s)
    np.testing.assert_allclose(g, fd, atol=1e-6)
    assert np.all(g[0] == 0) and np.all(g[~valid] == 0)


def test_info_nce_single_positive_forms_agree_and_match_cross_entropy():
    s = _rng(1).normal(size=(4, 6))
    pos = np.zeros((4, 6), bool)
    pos[np.arange(4), [0, 3, 5, 2]] = True
    a = info_nce(s, pos, temperature=0.5)
    b = info_nce(s, pos, temperature=0.5, form="logsumexp")
    assert a[0] == pytest.approx(b[0])
    np.testing.assert_allclose(a[1], b[1])
    logits = s / 0.5
    ce = np.mean(np.log(np.exp(logits).sum(1)) - logits[np.arange(4), [0, 3, 5, 2]])
    assert a[0] == pytest.approx(ce)


def test_info_nce_column_lists_equal_mask_and_sum_reduction():
    s, pos, _ = _problem()
    cols = np.full((s.shape[0], s.shape[1]), -1)
    for i in range(s.shape[0]):
        nz = np.nonzero(pos[i])[0]
        cols[i, : len(nz)] = nz
    a = info_nce(s, pos)
    b = info_nce(s, cols)
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1])
    n_active = int(pos.any(1).sum())
    c = info_nce(s, pos, reduction="sum")
    assert c[0] == pytest.approx(a[0] * n_active)


def test_info_nce_no_positive_gives_zero_and_float32_dtype():
    s = _rng(2).normal(size=(3, 4)).astype(np.float32)
    loss, g = info_nce(s, np.zeros((3, 4), bool))
    assert loss == 0.0 and g.dtype == np.float32 and not g.any()
    loss, g = info_nce(s, np.eye(3, 4, dtype=bool))
    assert g.dtype == np.float32 and np.isfinite(loss)


def test_info_nce_extreme_scores_finite():
    s = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 5e3]])
    loss, g = info_nce(s, np.array([[False, True, False], [True, False, False]]), temperature=0.01)
    assert np.isfinite(loss) and np.all(np.isfinite(g))


def test_info_nce_bad_input():
    s = np.zeros((2, 3))
    with pytest.raises(ShapeMismatchError, match="positives"):
        info_nce(s, np.zeros((2, 4), bool))
    with pytest.raises(NonFiniteError, match="scores"):
        info_nce(np.array([[np.nan, 0, 0], [0, 0, 0]]), np.zeros((2, 3), bool))
    with pytest.raises(ConfigError, match="temperature"):
        info_nce(s, np.zeros((2, 3), bool), temperature=0)
    with pytest.raises(ConfigError, match="form"):
        info_nce(s, np.zeros((2, 3), bool), form="bogus")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="positives"):
        info_nce(s, np.zeros((2, 3), np.float32))


# ---------------------------------------------------------------- triplet


@pytest.mark.parametrize("kind", ["scores", "distances"])
@pytest.mark.parametrize("soft", [False, True])
def test_triplet_all_value_and_fd(kind, soft):
    s, pos, valid = _problem(seed=3)
    neg = _rng(4).random(s.shape) < 0.7
    kw = dict(margin=0.3, kind=kind, soft=soft, candidate_mask=valid)
    loss, g = triplet(s, pos, neg, **kw)
    assert loss == pytest.approx(ref_triplet(s, pos & valid, neg & valid, 0.3, kind, soft), rel=1e-10)
    fd = fd_grad(lambda x: triplet(x, pos, neg, **kw)[0], s)
    np.testing.assert_allclose(g, fd, atol=1e-6)


@pytest.mark.parametrize("kind", ["scores", "distances"])
def test_triplet_hardest_value_and_fd(kind):
    s, pos, valid = _problem(seed=5)
    loss, g = triplet(s, pos, margin=0.5, kind=kind, mining="hardest", candidate_mask=valid)
    sign = 1 if kind == "scores" else -1
    rows = []
    for i in range(s.shape[0]):
        p = pos[i] & valid[i]
        n = ~pos[i] & valid[i]
        if p.any() and n.any():
            sim = sign * s[i]
            rows.append(max(0.5 - sim[p].min() + sim[n].max(), 0.0))
    assert loss == pytest.approx(np.mean(rows))
    kw = dict(margin=0.5, kind=kind, mining="hardest", candidate_mask=valid)
    fd = fd_grad(lambda x: triplet(x, pos, **kw)[0], s)
    np.testing.assert_allclose(g, fd, atol=1e-6)


def test_triplet_satisfied_margin_is_zero():
    s = np.array([[0.9, 0.1, 0.0]])
    loss, g = triplet(s, np.array([[True, False, False]]), margin=0.5)
    assert loss == 0.0 and not g.any()


# ---------------------------------------------------------------- similarities


@pytest.mark.parametrize("cls", [DotSimilarity, CosineSimilarity])
@pytest.mark.parametrize("shared", [True, False])
def test_similarity_backward_fd(cls, shared):
    rng = _rng(6)
    q = rng.normal(size=(3, 4))
    c = rng.normal(size=(5, 4)) if shared else rng.normal(size=(3, 5, 4))
    w = rng.normal(size=(3, 5))
    sim = cls()
    s = sim.forward(q, c)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    cn = c / np.linalg.norm(c, axis=-1, keepdims=True)
    if cls is DotSimilarity:
        ref = q @ c.T if shared else np.einsum("bd,bcd->bc", q, c)
    else:
        ref = qn @ cn.T if shared else np.einsum("bd,bcd->bc", qn, cn)
    np.testing.assert_allclose(s, ref, atol=1e-12)
    grads = sim.backward(w)
    np.testing.assert_allclose(grads["query"], fd_grad(lambda x: float(np.sum(cls().forward(x, c) * w)), q), atol=1e-6)
    np.testing.assert_allclose(
        grads["candidates"], fd_grad(lambda x: float(np.sum(cls().forward(q, x) * w)), c), atol=1e-6
    )


def test_similarity_through_info_nce_chain_rule():
    rng = _rng(7)
    q, c = rng.normal(size=(3, 4)), rng.normal(size=(6, 4))
    pos = np.eye(3, 6, dtype=bool)

    def f(x):
        return info_nce(CosineSimilarity().forward(x, c), pos, temperature=0.2)[0]

    sim = CosineSimilarity()
    _, g = info_nce(sim.forward(q, c), pos, temperature=0.2)
    np.testing.assert_allclose(sim.backward(g)["query"], fd_grad(f, q), atol=1e-6)


def test_similarity_errors():
    with pytest.raises(ShapeMismatchError, match="dimension"):
        DotSimilarity().forward(np.zeros((2, 3)), np.zeros((4, 5)))
    with pytest.raises(InvalidInputError, match="before forward"):
        DotSimilarity().backward(np.zeros((2, 3)))


# ---------------------------------------------------------------- masks


def test_columns_and_ids_to_mask():
    m = columns_to_mask(np.array([[0, 2, -1], [-1, -1, -1]]), 4)
    np.testing.assert_array_equal(m, [[True, False, True, False], [False] * 4])
    cand = np.array([[5, 7, -1, 9], [1, 2, 3, 4]])
    pos = np.array([[9, 5, -1], [4, 8, 7]])
    expected = [[True, False, False, True], [False, False, False, True]]
    np.testing.assert_array_equal(ids_to_mask(cand, pos), expected)
    with pytest.raises(InvalidInputError, match="columns"):
        columns_to_mask(np.array([[4]]), 4)


# ---------------------------------------------------------------- graph-local contrastive


def _ring_csr(n: int, k: int = 2):
    indptr = np.arange(0, n * k + 1, k)
    indices = np.array([(i + o) % n for i in range(n) for o in range(1, k + 1)])
    return indptr, indices


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_local_contrastive_fd_and_reference(similarity):
    rng = _rng(8)
    n, d = 9, 3
    z = rng.normal(size=(n, d))
    indptr, indices = _ring_csr(n)
    indices[3] = -1  # padded slot
    nodes = np.array([0, 1, 4, 7])
    neg = sample_non_neighbors(indptr, indices, nodes, 3, _rng(1))
    kw = dict(nodes=nodes, negatives=neg, temperature=0.5, similarity=similarity)
    loss, g = local_contrastive(z, indptr, indices, **kw)
    # reference: per anchor, supcon over neighbours + negatives
    rows = []
    for r, i in enumerate(nodes):
        nb = [j for j in indices[indptr[i] : indptr[i + 1]] if j >= 0 and j != i]
        cols = nb + [j for j in neg[r] if j >= 0]
        if similarity == "cosine":
            zn = z / np.linalg.norm(z, axis=1, keepdims=True)
            sc = zn[cols] @ zn[i]
        else:
            sc = z[cols] @ z[i]
        a = sc / 0.5
        rows.append(np.log(np.exp(a).sum()) - a[: len(nb)].mean())
    assert loss == pytest.approx(np.mean(rows), rel=1e-10)
    fd = fd_grad(lambda x: local_contrastive(x, indptr, indices, **kw)[0], z)
    np.testing.assert_allclose(g, fd, atol=1e-6)


def test_sample_non_neighbors_excludes_self_and_neighbours_and_varies():
    n = 30
    indptr, indices = _ring_csr(n, 4)
    rng = _rng(3)
    nodes = np.arange(n)
    a = sample_non_neighbors(indptr, indices, nodes, 5, rng)
    b = sample_non_neighbors(indptr, indices, nodes, 5, rng)
    assert not np.array_equal(a, b)
    for s in (a, b):
        assert (s >= 0).all()
        for i in range(n):
            assert i not in s[i]
            assert not set(s[i]) & set(indices[indptr[i] : indptr[i + 1]])
            assert len(set(s[i])) == 5
    again = sample_non_neighbors(indptr, indices, nodes, 5, _rng(3))
    np.testing.assert_array_equal(again, a)


def test_sample_non_neighbors_pads_when_impossible():
    indptr, indices = _ring_csr(4, 2)  # node 0 -> 1,2 ; only node 3 eligible
    out = sample_non_neighbors(indptr, indices, np.array([0]), 3, _rng(0))
    assert sorted(out[0].tolist()) == [-1, -1, 3]


def test_local_contrastive_requires_rng_and_checks_csr():
    z = np.zeros((4, 2))
    indptr, indices = _ring_csr(4, 1)
    with pytest.raises(ConfigError, match="rng"):
        local_contrastive(z, indptr, indices)
    with pytest.raises(ShapeMismatchError, match="indptr"):
        local_contrastive(z, indptr[:-1], indices, rng=_rng())
    with pytest.raises(InvalidInputError, match="indices"):
        local_contrastive(z, indptr, indices + 10, rng=_rng())


# ---------------------------------------------------------------- properties


@settings(max_examples=40, deadline=None)
@given(
    s=arrays(np.float64, (3, 5), elements=st.floats(-1e6, 1e6)),
    pos=arrays(np.bool_, (3, 5)),
    shift=st.floats(-100, 100),
    tau=st.floats(1e-3, 10),
    form=st.sampled_from(["supcon", "logsumexp"]),
)
def test_info_nce_properties(s, pos, shift, tau, form):
    loss, g = info_nce(s, pos, temperature=tau, form=form)
    assert np.isfinite(loss) and np.all(np.isfinite(g)) and loss >= -1e-9
    # a per-row shift of the scores leaves the softmax (and the gradient) unchanged
    np.testing.assert_allclose(g.sum(axis=1), 0.0, atol=1e-9 / min(tau, 1.0))
    if np.abs(s).max() < 1e3:
        loss2, _ = info_nce(s + shift, pos, temperature=tau, form=form)
        assert loss2 == pytest.approx(loss, rel=1e-6, abs=1e-6)


@settings(max_examples=40, deadline=None)
@given(
    s=arrays(np.float64, (3, 6), elements=st.floats(-1e3, 1e3)),
    pos=arrays(np.bool_, (3, 6)),
    soft=st.booleans(),
    mining=st.sampled_from(["all", "hardest"]),
)
def test_triplet_properties(s, pos, soft, mining):
    loss, g = triplet(s, pos, margin=0.1, soft=soft, mining=mining)
    assert np.isfinite(loss) and loss >= 0 and np.all(np.isfinite(g))
    np.testing.assert_allclose(g.sum(axis=1), 0.0, atol=1e-12)  # pairs push and pull equally


def test_local_contrastive_sparse_grad_and_float32():
    rng = _rng(9)
    z = rng.normal(size=(12, 4))
    indptr, indices = _ring_csr(12, 3)
    nodes = np.array([2, 5])
    neg = sample_non_neighbors(indptr, indices, nodes, 2, _rng(4))
    loss, dense = local_contrastive(z, indptr, indices, nodes=nodes, negatives=neg)
    loss2, sp = local_contrastive(z, indptr, indices, nodes=nodes, negatives=neg, sparse_grad=True)
    assert loss2 == loss
    expected_rows = np.unique(np.concatenate([nodes, [3, 4, 5, 6, 7, 8], neg.ravel()]))
    np.testing.assert_array_equal(sp.rows, expected_rows)
    np.testing.assert_array_equal(sp.to_dense(), dense)
    assert not dense[np.setdiff1d(np.arange(12), expected_rows)].any()
    l32, g32 = local_contrastive(z.astype(np.float32), indptr, indices, nodes=nodes, negatives=neg)
    assert g32.dtype == np.float32 and l32 == pytest.approx(loss, rel=1e-5)
    z[0] = np.nan if 0 not in expected_rows else z[0]
    z[expected_rows[0]] = np.nan
    with pytest.raises(NonFiniteError, match="embeddings"):
        local_contrastive(z, indptr, indices, nodes=nodes, negatives=neg)


def test_similarity_wrt_subset_and_unchecked_mode():
    rng = _rng(11)
    q, c = rng.normal(size=(2, 3)), rng.normal(size=(2, 4, 3))
    w = rng.normal(size=(2, 4))
    for cls in (DotSimilarity, CosineSimilarity):
        full = cls()
        full.forward(q, c)
        both = full.backward(w)
        only_q = full.backward(w, wrt=("query",))
        assert set(only_q) == {"query"}
        np.testing.assert_array_equal(only_q["query"], both["query"])
        fast = cls(check_finite=False)
        np.testing.assert_array_equal(fast.forward(q, c), full.forward(q, c))
        with pytest.raises(ConfigError, match="wrt"):
            full.backward(w, wrt=("keys",))
    with pytest.raises(NonFiniteError, match="query"):
        DotSimilarity().forward(np.full((1, 3), np.nan), c[0])
