"""Diffusion coordinates: component structure, solver agreement, Nystrom rule."""

from __future__ import annotations

import numpy as np
import pytest

from ruvector_hnsw.search import spectral


def _chains(n_per: int = 60, chains: int = 3, k: int = 4):
    """Disjoint rings (a curved 'class' each): neighbours are ring neighbours within distance k//2."""
    n = n_per * chains
    pos = np.full((n, k), -1, dtype=np.int64)
    for c in range(chains):
        for i in range(n_per):
            nbrs = [(i + o) % n_per for o in (-2, -1, 1, 2)][:k]
            pos[c * n_per + i] = [c * n_per + j for j in nbrs]
    return pos, np.ones((n, k)), np.repeat(np.arange(chains), n_per)


def test_coordinates_separate_connected_components() -> None:
    pos, w, comp = _chains()
    phi = spectral.diffusion_coordinates(pos, w, m=3, t=1, seed=0)
    assert phi.shape == (180, 3) and phi.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(phi, axis=1), 1.0, atol=1e-5)
    sim = phi @ phi.T
    same = comp[:, None] == comp[None, :]
    # far-apart members of the same ring are closer than any member of another ring
    assert sim[same].min() > sim[~same].max()
    # with more coordinates, a long diffusion time damps the within-ring harmonics the same way
    phi = spectral.diffusion_coordinates(pos, w, m=8, t=400, seed=0)
    sim = phi @ phi.T
    assert sim[same].min() > sim[~same].max()


def test_numpy_fallback_agrees_with_scipy(monkeypatch) -> None:
    pytest.importorskip("scipy")
    rng = np.random.default_rng(1)
    n, k = 150, 6
    x = rng.standard_normal((n, 3))
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    pos = np.argsort(d, axis=1)[:, :k]
    w = np.exp(-np.take_along_axis(d, pos, 1))
    a = spectral.diffusion_coordinates(pos, w, m=5, t=30, seed=0)
    import builtins

    real_import = builtins.__import__

    def no_scipy(name, *args, **kwargs):
        if name.startswith("scipy"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_scipy)
    b = spectral.diffusion_coordinates(pos, w, m=5, t=30, seed=0)
    # eigenvectors are defined up to sign/rotation: compare the induced similarities
    np.testing.assert_allclose(a @ a.T, b @ b.T, atol=2e-2)


def test_nystrom_is_the_weighted_mean() -> None:
    rng = np.random.default_rng(2)
    phi = rng.standard_normal((10, 4)).astype(np.float32)
    pos = np.array([[1, 2, -1], [3, 3, 4]])
    w = np.array([[1.0, 3.0, 9.0], [0.5, 0.5, 2.0]])
    out = spectral.nystrom(phi, pos, w)
    ref = np.stack([phi[1] + 3 * phi[2], 1.0 * phi[3] + 2 * phi[4]])
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(out, ref, rtol=1e-5)


def test_affinity_weights() -> None:
    d = np.array([0.0, 0.5, 2.0, np.inf])
    np.testing.assert_allclose(spectral.affinity_weights(d, "cosine", 1.0), [1.0, 0.125, 0.0, 0.0])
    np.testing.assert_allclose(spectral.affinity_weights(d, "l2", 0.5), [1.0, np.exp(-1), np.exp(-4), 0.0])
