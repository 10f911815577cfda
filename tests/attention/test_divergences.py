"""The divergence helpers against closed forms (general-covariance Gaussian KL, Bernoulli, entropies)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ruvector_hnsw.attention.divergences import (
    js_divergence,
    kl_categorical,
    kl_gaussian_unit,
    kl_gaussian_unit_grad,
)
from ruvector_hnsw.errors import InvalidInputError, NonFiniteError, ShapeMismatchError
from tests.attention._reference import numeric_grad


def _kl_gauss_general(m1, S1, m2, S2):
    """KL(N(m1, S1) || N(m2, S2)) for full covariances (the textbook closed form)."""
    k = m1.shape[0]
    S2i = np.linalg.inv(S2)
    dm = m2 - m1
    return 0.5 * (np.trace(S2i @ S1) + dm @ S2i @ dm - k + np.log(np.linalg.det(S2) / np.linalg.det(S1)))


def test_gaussian_kl_matches_the_general_closed_form():
    rng = np.random.default_rng(0)
    mu = rng.standard_normal((5, 4))
    lv = rng.standard_normal((5, 4))
    got = kl_gaussian_unit(mu, lv)
    assert got.shape == (5,)
    for b in range(5):
        want = _kl_gauss_general(mu[b], np.diag(np.exp(lv[b])), np.zeros(4), np.eye(4))
        np.testing.assert_allclose(got[b], want, rtol=1e-12)
    assert kl_gaussian_unit(np.zeros(3), np.zeros(3)) == 0.0
    np.testing.assert_allclose(kl_gaussian_unit(mu.T, lv.T, axis=0), got, rtol=1e-14)


def test_gaussian_kl_gradient_matches_finite_differences():
    rng = np.random.default_rng(1)
    mu, lv = rng.standard_normal(6), rng.standard_normal(6)
    gm, gl = kl_gaussian_unit_grad(mu, lv)
    np.testing.assert_allclose(gm, numeric_grad(lambda: float(kl_gaussian_unit(mu, lv)), mu), atol=1e-8)
    np.testing.assert_allclose(gl, numeric_grad(lambda: float(kl_gaussian_unit(mu, lv)), lv), atol=1e-8)


@settings(max_examples=30, deadline=None)
@given(p=st.floats(0.0, 1.0), q=st.floats(1e-6, 1 - 1e-6))
def test_categorical_kl_of_two_outcomes_is_the_bernoulli_closed_form(p, q):
    want = (p * np.log(p / q) if p > 0 else 0.0) + ((1 - p) * np.log((1 - p) / (1 - q)) if p < 1 else 0.0)
    np.testing.assert_allclose(kl_categorical([p, 1 - p], [q, 1 - q]), want, rtol=1e-10, atol=1e-14)


def test_categorical_kl_conventions():
    assert kl_categorical([0.5, 0.5, 0.0], [0.25, 0.25, 0.5]) == pytest.approx(np.log(2))
    assert kl_categorical([0.5, 0.5], [1.0, 0.0]) == np.inf
    np.testing.assert_array_equal(kl_categorical(np.eye(3), np.eye(3)), np.zeros(3))


def _entropy(p):
    p = np.asarray(p, dtype=np.float64)
    nz = p[p > 0]
    return -(nz * np.log(nz)).sum()


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), k=st.integers(2, 7))
def test_js_is_the_entropy_form_symmetric_and_bounded(seed, k):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(k))
    q = rng.dirichlet(np.ones(k))
    p[0] = 0.0
    p /= p.sum()
    js = float(js_divergence(p, q))
    np.testing.assert_allclose(js, _entropy((p + q) / 2) - (_entropy(p) + _entropy(q)) / 2, rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(js, float(js_divergence(q, p)), rtol=1e-12)
    assert -1e-15 <= js <= np.log(2) + 1e-15


def test_js_extremes():
    assert js_divergence([1.0, 0.0], [0.0, 1.0]) == pytest.approx(np.log(2), rel=1e-14)
    assert js_divergence([0.3, 0.7], [0.3, 0.7]) == 0.0


def test_bad_inputs_are_typed_errors():
    with pytest.raises(ShapeMismatchError):
        kl_gaussian_unit(np.zeros(3), np.zeros(4))
    with pytest.raises(NonFiniteError):
        kl_categorical([np.nan, 1.0], [0.5, 0.5])
    with pytest.raises(InvalidInputError, match="non-negative"):
        js_divergence([-0.1, 1.1], [0.5, 0.5])
    with pytest.raises(InvalidInputError, match="real numeric"):
        kl_categorical(["a"], ["b"])
