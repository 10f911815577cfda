"""Diffusion coordinates of the HNSW layer-0 graph: a query-independent, graph-derived code.

The local links of every node (its ``k`` nearest layer-0 neighbours) weighted by similarity
give a symmetric affinity ``W``; the top eigenvectors ``U`` (eigenvalues ``lam``) of
``S = D^-1/2 W D^-1/2`` give each node the diffusion-map coordinates
``phi = D^-1/2 U lam^t``: nodes that random walks of length ``t`` connect well get similar
coordinates, even when they are far apart in the original space (curved classes, chains of
sub-modes). Queries and nodes added later get coordinates by the Nystrom rule: the weighted
mean of their nearest nodes' coordinates.

The eigenvectors come from SciPy's LOBPCG block solver when SciPy is installed, otherwise from a
seeded block subspace iteration in numpy (slower to converge, same interface); block solvers
find repeated eigenvalues (disconnected components), which single-vector Lanczos misses.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["affinity_weights", "diffusion_coordinates", "nystrom"]


def affinity_weights(dist: np.ndarray, space: str, scale: float) -> np.ndarray:
    """Similarity weights of distances in the index convention.

    ``cosine``/``ip``: ``max(1 - dist, 0)^3`` (the cube of the cosine similarity);
    ``l2``: ``exp(-dist / scale)`` with ``scale`` the typical local distance.
    """
    d = np.asarray(dist, dtype=np.float64)
    if space == "l2":
        w = np.exp(-d / max(scale, 1e-12))
    else:
        w = np.maximum(1.0 - d, 0.0) ** 3
    return np.where(np.isfinite(d), w, 0.0)


def _symmetric_csr(rows: np.ndarray, cols: np.ndarray, w: np.ndarray, n: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR of ``max(W, W^T)`` from directed weighted edges (duplicates keep the largest weight)."""
    r = np.concatenate([rows, cols])
    c = np.concatenate([cols, rows])
    v = np.concatenate([w, w])
    keep = r != c
    r, c, v = r[keep], c[keep], v[keep]
    order = np.lexsort((-v, c, r))
    r, c, v = r[order], c[order], v[order]
    first = np.ones(r.shape[0], dtype=bool)
    first[1:] = (r[1:] != r[:-1]) | (c[1:] != c[:-1])
    r, c, v = r[first], c[first], v[first]
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.add.at(indptr, r + 1, 1)
    np.cumsum(indptr, out=indptr)
    return indptr, c.astype(np.int64), v


def _matmat(indptr: np.ndarray, indices: np.ndarray, values: np.ndarray, x: np.ndarray) -> np.ndarray:
    rows = np.repeat(np.arange(indptr.shape[0] - 1), np.diff(indptr))
    out = np.zeros_like(x)
    np.add.at(out, rows, values[:, None] * x[indices])
    return out


def _top_eigen(indptr: np.ndarray, indices: np.ndarray, values: np.ndarray, m: int, seed: int
               ) -> tuple[np.ndarray, np.ndarray]:
    n = indptr.shape[0] - 1
    try:
        import scipy.sparse as sp
        from scipy.sparse.linalg import lobpcg
    except ImportError:
        sp = None
    rng = np.random.default_rng(seed)
    if sp is not None and n > 5 * (m + 8):
        # a block solver: unlike single-vector Lanczos it finds repeated eigenvalues (one per
        # disconnected component at 1, and the symmetric harmonics of regular structures)
        mat = sp.csr_matrix((values, indices, indptr), shape=(n, n))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lam, vec = lobpcg(mat, rng.standard_normal((n, m + 8)), largest=True, tol=1e-4, maxiter=300)
        order = np.argsort(-lam)[:m]
        return lam[order], vec[:, order]
    # block subspace iteration on S + I (shifted so the top of the spectrum dominates)
    block = min(n, m + 16)
    x, _ = np.linalg.qr(rng.standard_normal((n, block)))
    for _ in range(300):
        x, _ = np.linalg.qr(_matmat(indptr, indices, values, x) + x)
    h = x.T @ _matmat(indptr, indices, values, x)
    lam, small = np.linalg.eigh((h + h.T) / 2)
    order = np.argsort(-lam)[:m]
    return lam[order], x @ small[:, order]


def diffusion_coordinates(nb_pos: np.ndarray, nb_weight: np.ndarray, m: int, t: int = 8, seed: int = 0
                          ) -> np.ndarray:
    """Unit-norm diffusion-map coordinates ``(n, m)`` of a graph given as padded neighbour rows.

    Parameters
    ----------
    nb_pos : (n, k) int64
        Neighbour rows (-1 = padding).
    nb_weight : (n, k) float
        Their affinity weights (>= 0).
    m : int
        Number of coordinates (eigenvectors); clipped to ``n - 2``.
    t : int
        Diffusion time: eigenvalue power.
    seed : int
        Seeds the eigensolver's start vectors.
    """
    n = nb_pos.shape[0]
    m = max(1, min(m, n - 2))
    rows = np.repeat(np.arange(n), nb_pos.shape[1])
    cols = nb_pos.ravel()
    w = np.asarray(nb_weight, dtype=np.float64).ravel()
    ok = (cols >= 0) & (w > 0)
    indptr, indices, values = _symmetric_csr(rows[ok], cols[ok], w[ok], n)
    deg = np.zeros(n)
    np.add.at(deg, np.repeat(np.arange(n), np.diff(indptr)), values)
    deg[deg == 0] = 1.0
    inv_sqrt = 1.0 / np.sqrt(deg)
    values = values * inv_sqrt[np.repeat(np.arange(n), np.diff(indptr))] * inv_sqrt[indices]
    lam, vec = _top_eigen(indptr, indices, values, m, seed)
    phi = vec * (np.abs(lam) ** t)[None, :] * inv_sqrt[:, None]
    norm = np.linalg.norm(phi, axis=1, keepdims=True)
    return np.ascontiguousarray(phi / np.maximum(norm, 1e-12), dtype=np.float32)


def nystrom(phi: np.ndarray, pos: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Unit-norm coordinates of new points: the weighted mean of ``phi[pos]`` (pos -1 = padding)."""
    w = np.where(pos >= 0, weight, 0.0)
    out = np.einsum("bj,bjm->bm", w, phi[np.maximum(pos, 0)].astype(np.float64))
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    return np.ascontiguousarray(out / np.maximum(norm, 1e-12), dtype=np.float32)
