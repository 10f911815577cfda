"""Diffusion coordinates: walk-sketch accuracy, component structure, determinism, Nystrom rule."""

from __future__ import annotations

import numpy as np

from ruvector_hnsw.search import spectral


def _rings(n_per: int = 40, rings: int = 3):
    """Disjoint rings (a curved 'class' each): each node links to its ring neighbours at +-1, +-2."""
    n = n_per * rings
    pos = np.full((n, 4), -1, dtype=np.int64)
    for c in range(rings):
        for i in range(n_per):
            pos[c * n_per + i] = [c * n_per + (i + o) % n_per for o in (-2, -1, 1, 2)]
    return pos, np.ones((n, 4)), np.repeat(np.arange(rings), n_per)


def _dense_reference(pos: np.ndarray, w: np.ndarray, t: int) -> np.ndarray:
    """((I + S) / 2)^t D^-1/2 as a dense matrix, S = D^-1/2 max(W, W^T) D^-1/2, in plain numpy."""
    n = pos.shape[0]
    W = np.zeros((n, n))
    for i in range(n):
        for j, wij in zip(pos[i], w[i], strict=True):
            if j >= 0 and j != i:
                W[i, j] = max(W[i, j], wij)
                W[j, i] = max(W[j, i], wij)
    d = W.sum(1)
    d[d == 0] = 1
    S = W / np.sqrt(d)[:, None] / np.sqrt(d)[None, :]
    return np.linalg.matrix_power((np.eye(n) + S) / 2, t) / np.sqrt(d)[:, None]


def test_sketch_matches_the_dense_walk_operator() -> None:
    rng = np.random.default_rng(1)
    n, k = 120, 5
    x = rng.standard_normal((n, 3))
    d2 = ((x[:, None] - x[None]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    pos = np.argsort(d2, axis=1)[:, :k]
    w = np.exp(-np.take_along_axis(d2, pos, 1))
    t, m = 6, 4000
    phi = spectral.diffusion_coordinates(pos, w, m=m, t=t, seed=0)
    ref = _dense_reference(pos, w, t)
    ref_phi = ref @ np.random.default_rng(0).standard_normal((n, m))  # same Gaussian draw
    ref_phi /= np.linalg.norm(ref_phi, axis=1, keepdims=True)
    np.testing.assert_allclose(phi, ref_phi, atol=1e-4)
    # and the sketch's similarities approach the exact diffusion similarities (JL, m large)
    exact = ref @ ref.T
    exact /= np.sqrt(np.outer(np.diag(exact), np.diag(exact)))
    assert np.abs(phi @ phi.T - exact).max() < 0.1


def test_coordinates_separate_connected_components() -> None:
    pos, w, comp = _rings()
    phi = spectral.diffusion_coordinates(pos, w, m=64, t=2000, seed=0)
    assert phi.shape == (120, 64) and phi.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(phi, axis=1), 1.0, atol=1e-5)
    sim = phi @ phi.T
    same = comp[:, None] == comp[None, :]
    # far-apart members of the same ring are closer than any member of another ring
    assert sim[same].min() > sim[~same].max()


def test_deterministic_by_seed() -> None:
    pos, w, _ = _rings()
    a = spectral.diffusion_coordinates(pos, w, m=8, t=5, seed=3)
    b = spectral.diffusion_coordinates(pos, w, m=8, t=5, seed=3)
    c = spectral.diffusion_coordinates(pos, w, m=8, t=5, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


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
