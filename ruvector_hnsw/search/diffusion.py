"""The diffusion stage: graph diffusion over the layer-0 links around a query's best items.

For a query the label term does not apply to (or every query, without a label stage), after its
pool is scored (:mod:`ruvector_hnsw.search.pipeline`)::

    seeds  = the query's DIFFUSION_SEEDS best pool items, y_s = sim(q, s) ** GAMMA
    nodes  = seeds + their LINKS nearest layer-0 links
    W_ij   = sim(i, j) ** GAMMA over the links among the nodes (symmetrised), S = D^-1/2 W D^-1/2
    f      = (I - A S)^-1 y       (conjugate gradient, ITERATIONS steps at most)
    score += mu * spread(q) * f / max f

after Iscen et al. (CVPR 2017), seeded by the learned ranking instead of the raw one; ``spread(q)``
is the standard deviation of the query's scores over its pool, so ``mu`` is free of their scale.
The nodes join the pool. ``mu`` is calibrated by :func:`ruvector_hnsw.search.training.calibrate`'s
companion ``calibrate_diffusion`` on queries of classes the encoder never saw (0 included: the
stage is then off). Similarities are the index's own (``1 - d`` for cosine and ip, ``exp(-d /
sigma)`` for l2, ``sigma`` the mean link length); negative ones count as 0.

The numba kernels (also behind the ``diffusion`` eval method) are re-exported here.
"""

from __future__ import annotations

import numpy as np

from ruvector_hnsw.search._diffusion_kernels import (
    _gather_nodes as gather_nodes,
)
from ruvector_hnsw.search._diffusion_kernels import (
    build_affinity,
    diffuse_rows,
    diffusion_values,
    merge_rows,
    solve_diffusion,
)
from ruvector_hnsw.threads import run_row_chunks

__all__ = [
    "DIFFUSION_SEEDS",
    "GAMMA",
    "ITERATIONS",
    "LINKS",
    "A",
    "build_affinity",
    "diffuse",
    "diffuse_rows",
    "gather_nodes",
    "link_similarity",
    "merge_rows",
    "solve_diffusion",
]

#: seeds per query, layer-0 links per node, the affinity exponent, the diffusion weight, CG steps
DIFFUSION_SEEDS = 100
LINKS = 8
GAMMA = 5.0
A = 0.9
ITERATIONS = 20


def link_similarity(dist: np.ndarray, space: str, sigma: float) -> np.ndarray:
    """Index distances -> similarities (``1 - d``; ``exp(-d / sigma)`` for l2)."""
    if space == "l2":
        return np.exp(-dist / sigma)
    return 1.0 - dist


def diffuse(seeds: np.ndarray, seed_sim: np.ndarray, nbr: np.ndarray, nbr_sim: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
    """Node ids ``(B, S * (LINKS + 1))`` (-1 padding) and their ``f / max f`` for seeds ``(B, S)``.

    ``seeds`` are table rows, best first (-1: none); ``seed_sim`` their similarity to the query;
    ``nbr`` / ``nbr_sim`` the links of every row and their similarities (``(N, LINKS)``).
    """
    B, S = seeds.shape
    width = max(S * (nbr.shape[1] + 1), 1)
    ids = np.full((B, width), -1, dtype=np.int64)
    f = np.zeros((B, width), dtype=np.float64)
    seeds = np.ascontiguousarray(seeds, dtype=np.int64)
    seed_sim = np.ascontiguousarray(seed_sim, dtype=np.float64)

    def run(lo: int, hi: int) -> None:
        diffusion_values(lo, hi, seeds, seed_sim, nbr, nbr_sim, GAMMA, A, ITERATIONS, 1e-6, ids, f)

    run_row_chunks(run, B, float(B) * width * nbr.shape[1] * 8)
    return ids, f
