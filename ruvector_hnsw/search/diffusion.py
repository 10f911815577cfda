"""The diffusion stage: graph diffusion over the layer-0 links around a query's best items.

For a query the label term does not apply to (or every query, without a label stage), after its
pool is scored (:mod:`ruvector_hnsw.search.pipeline`)::

    seeds  = the query's ``seeds`` best pool items, y_s = sim(q, s) ** gamma
    nodes  = seeds + their LINKS nearest layer-0 links
    W_ij   = sim(i, j) ** gamma over the links among the nodes (symmetrised), S = D^-1/2 W D^-1/2
    f      = (I - A S)^-1 y       (conjugate gradient, ITERATIONS steps at most)
    score += mu * spread(q) * clip(1 + ln(f / max f) / LOG_RANGE, 0, 1)

after Iscen et al. (CVPR 2017), seeded by the learned ranking instead of the raw one; ``spread(q)``
is the standard deviation of the query's scores over its pool, so ``mu`` is free of their scale.
The nodes join the pool. ``mu``, the sharpness ``gamma`` and the number of seeds are calibrated together by
:func:`ruvector_hnsw.search.training.calibrate_diffusion` on queries of classes the encoder never
saw (``mu = 0`` included: the stage is then off). Sharp kernels (large ``gamma``) follow a class's
thin manifold link by link, but their ``f`` falls by many orders of magnitude along it; the score
reads ``f`` on a log scale (:func:`log_weight`), so that order survives at any ``gamma``.
Similarities are the index's own (``1 - d`` for cosine and ip, ``exp(-d / sigma)`` for l2,
``sigma`` the mean link length); negative ones count as 0.

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
    "LOG_RANGE",
    "A",
    "build_affinity",
    "diffuse",
    "diffuse_rows",
    "gather_nodes",
    "link_similarity",
    "log_weight",
    "merge_rows",
    "solve_diffusion",
]

#: seeds per query and affinity exponent of an untrained model, layer-0 links per node, the diffusion
#: weight, CG steps
DIFFUSION_SEEDS = 100
LINKS = 8
GAMMA = 5.0
A = 0.9
ITERATIONS = 20
#: natural-log decades of ``f / max f`` the score tells apart (below ``exp(-LOG_RANGE)``: 0)
LOG_RANGE = 10.0


def link_similarity(dist: np.ndarray, space: str, sigma: float) -> np.ndarray:
    """Index distances -> similarities (``1 - d``; ``exp(-d / sigma)`` for l2)."""
    if space == "l2":
        return np.exp(-dist / sigma)
    return 1.0 - dist


def log_weight(f: np.ndarray) -> np.ndarray:
    """``clip(1 + ln(f) / LOG_RANGE, 0, 1)`` of ``f / max f`` values (0 where ``f <= 0``), float32."""
    f = np.asarray(f, dtype=np.float64)
    pos = f > 0.0
    out = np.zeros(f.shape, dtype=np.float64)
    out[pos] = 1.0 + np.log(f[pos]) / LOG_RANGE
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def diffuse(seeds: np.ndarray, seed_sim: np.ndarray, nbr: np.ndarray, nbr_sim: np.ndarray, gamma: float = GAMMA
            ) -> tuple[np.ndarray, np.ndarray]:
    """Node ids ``(B, S * (LINKS + 1))`` (-1 padding) and their ``f / max f`` for seeds ``(B, S)``.

    ``seeds`` are table rows, best first (-1: none); ``seed_sim`` their similarity to the query;
    ``nbr`` / ``nbr_sim`` the links of every row and their similarities (``(N, LINKS)``);
    ``gamma`` the affinity exponent.
    """
    B, S = seeds.shape
    width = max(S * (nbr.shape[1] + 1), 1)
    ids = np.full((B, width), -1, dtype=np.int64)
    f = np.zeros((B, width), dtype=np.float64)
    seeds = np.ascontiguousarray(seeds, dtype=np.int64)
    seed_sim = np.ascontiguousarray(seed_sim, dtype=np.float64)

    def run(lo: int, hi: int) -> None:
        diffusion_values(lo, hi, seeds, seed_sim, nbr, nbr_sim, float(gamma), A, ITERATIONS, 1e-6, ids, f)

    run_row_chunks(run, B, float(B) * width * nbr.shape[1] * 8)
    return ids, f
