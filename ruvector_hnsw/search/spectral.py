"""Diffusion coordinates of the HNSW layer-0 graph: a query-independent, graph-derived code.

The local links of every node (its ``k`` nearest layer-0 neighbours) weighted by similarity give
a symmetric affinity ``W`` and ``S = D^-1/2 W D^-1/2``. A node's diffusion coordinates are a
random sketch of where a ``t``-step lazy random walk from it goes::

    X_0 = R (n x m, Gaussian, seeded);   X_{s+1} = (X_s + S X_s) / 2;   phi = D^-1/2 X_t

so ``<phi_u, phi_v>`` approximates the diffusion affinity of ``u`` and ``v`` (a Johnson-
Lindenstrauss sketch of ``((I + S)/2)^t``, whose spectrum the lazy step keeps non-negative).
Nodes that many short walks connect get similar coordinates even when they are far apart in the
original space (curved classes, chains of sub-modes); disconnected parts stay apart. No
eigen-solve: ``t`` sparse products, linear in the number of links. Queries and nodes added later
get coordinates by the Nystrom rule: the weighted mean of their nearest nodes' coordinates.
"""

from __future__ import annotations

from typing import Any

import numba as nb
import numpy as np

from ruvector_hnsw.threads import run_row_chunks

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


def symmetric_csr(rows: np.ndarray, cols: np.ndarray, w: np.ndarray, n: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR of ``max(W, W^T)`` from directed weighted edges (self-loops dropped, duplicates merged)."""
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


@nb.njit(cache=True, nogil=True)
def _lazy_step(indptr: np.ndarray, indices: np.ndarray, values: np.ndarray, x: np.ndarray, out: np.ndarray,
               lo: int, hi: int) -> None:
    """Rows ``lo:hi`` of ``out = (x + S x) / 2`` for the CSR matrix ``S``."""
    m = x.shape[1]
    for i in range(lo, hi):
        for t in range(m):
            out[i, t] = 0.5 * x[i, t]
        for e in range(indptr[i], indptr[i + 1]):
            j = indices[e]
            w = 0.5 * values[e]
            for t in range(m):
                out[i, t] += w * x[j, t]


def diffusion_coordinates(nb_pos: np.ndarray, nb_weight: np.ndarray, m: int, t: int = 32, seed: int = 0
                          ) -> np.ndarray:
    """Unit-norm diffusion coordinates ``(n, m)`` of a graph given as padded neighbour rows.

    Parameters
    ----------
    nb_pos : (n, k) int64
        Neighbour rows (-1 = padding).
    nb_weight : (n, k) float
        Their affinity weights (>= 0).
    m : int
        Sketch width.
    t : int
        Walk length (lazy steps).
    seed : int
        Seeds the Gaussian sketch.
    """
    n = nb_pos.shape[0]
    rows = np.repeat(np.arange(n), nb_pos.shape[1])
    cols = nb_pos.ravel()
    w = np.asarray(nb_weight, dtype=np.float64).ravel()
    ok = (cols >= 0) & (w > 0)
    indptr, indices, values = symmetric_csr(rows[ok], cols[ok], w[ok], n)
    deg = np.zeros(n)
    np.add.at(deg, np.repeat(np.arange(n), np.diff(indptr)), values)
    deg[deg == 0] = 1.0
    inv_sqrt = 1.0 / np.sqrt(deg)
    values = values * inv_sqrt[np.repeat(np.arange(n), np.diff(indptr))] * inv_sqrt[indices]
    x = np.random.default_rng(seed).standard_normal((n, m))
    y = np.empty_like(x)
    work = float(indices.shape[0] + n) * m
    def step(src: np.ndarray, dst: np.ndarray) -> None:
        def rows(lo: int, hi: int) -> None:
            _lazy_step(indptr, indices, values, src, dst, lo, hi)

        run_row_chunks(rows, n, work)

    for _ in range(t):
        step(x, y)
        x, y = y, x
    phi = x * inv_sqrt[:, None]
    norm = np.linalg.norm(phi, axis=1, keepdims=True)
    return np.ascontiguousarray(phi / np.maximum(norm, 1e-12), dtype=np.float32)


def nystrom(phi: Any, pos: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Unit-norm coordinates of new points: the weighted mean of ``phi[pos]`` (pos -1 = padding).

    ``phi``: an ``(N, m)`` array, or anything whose ``phi[idx]`` gives the float rows of an index
    array (:class:`~ruvector_hnsw.search.quant.CodeRows`).
    """
    w = np.where(pos >= 0, weight, 0.0)
    out = np.einsum("bj,bjm->bm", w, phi[np.maximum(pos, 0)].astype(np.float64))
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    return np.ascontiguousarray(out / np.maximum(norm, 1e-12), dtype=np.float32)
