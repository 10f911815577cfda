"""``diffusion``: training-free graph diffusion re-ranking over the HNSW layer-0 graph.

After Iscen et al. (CVPR 2017), "Efficient diffusion on region manifolds", on the graph the
index already has. For each query:

1. take its top-``candidates`` HNSW results (``C``, default 100);
2. the node set is those candidates plus their layer-0 neighbours (the ``k_graph`` nearest
   links of each); the affinity graph is the layer-0 graph restricted to that set (the
   ``k_graph`` nearest links of every node), with weights ``W_ij = s_ij ** gamma`` of the edge
   similarities, symmetrised (a link held by either end counts, the larger weight if both) and
   normalised ``S = D^-1/2 W D^-1/2`` (an isolated node gets a zero row);
3. the seed ``y`` holds the query's affinities ``s(q, x_c) ** gamma`` to its first ``seeds``
   candidates (default all ``C``), zero elsewhere;
4. ``f`` solves ``(I - a S) f = y`` by conjugate gradient (``iterations`` steps at most, or
   until ``|r| <= tol |y|``; ``I - a S`` is symmetric positive definite for ``0 <= a < 1``);
5. the result list is the node set ranked by ``f`` (ties: candidates first in HNSW order, then
   neighbours in order of entry), then the rest of the HNSW results for ``k`` beyond it.

Defaults (``k_graph=8``, ``gamma=5``, ``a=0.9``, 20 CG steps) were chosen on the *training*
queries of the four built-in scenarios and ``apt_minilm`` (never on evaluation queries): the
paper's ``gamma=3, a=0.99`` over all ``2M`` layer-0 links (``k_graph=32`` for ``M=16``) is
available through the options but lost 0.05-0.35 mAP@100 there -- on a graph of a few thousand
nodes ``a`` close to 1 lets the degree profile swamp the seed.

``diffusion:tune=1`` chooses ``gamma`` and ``candidates`` from a small grid by mAP@100 on the
dataset's training queries instead (a practitioner's tuning; the method then uses training data).

Similarities: ``s = 1 - d`` (cosine / dot product) for ``cosine`` / ``ip``; for ``l2``,
``s = exp(-d / sigma)`` with ``sigma`` the mean squared-L2 length of the layer-0 links kept.
Negative similarities count as 0. Returned distances are the index distances of the returned
items to the query (the ranking is the list order, not those distances).
"""

from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np

from ruvector_hnsw.errors import ConfigError
from ruvector_hnsw.eval.methods import BuildContext, SearchMethod, _as_f32, _index_threads, register_method
from ruvector_hnsw.ranking import map_at_r, relevance
from ruvector_hnsw.search import diffusion as K
from ruvector_hnsw.threads import run_row_chunks, thread_limits

__all__ = ["TUNE_CANDIDATES", "TUNE_GAMMAS", "DiffusionRanker", "diffusion_scores", "make_diffusion"]


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def diffusion_scores(
    candidates: Any,
    candidate_sim: Any,
    neighbors: Any,
    neighbor_sim: Any,
    *,
    gamma: float = 5.0,
    a: float = 0.9,
    seeds: int | None = None,
    iterations: int = 20,
    tol: float = 1e-6,
) -> tuple[np.ndarray, np.ndarray, int]:
    """The diffusion of one query (steps 2-4 of the module docstring), for inspection and tests.

    Parameters
    ----------
    candidates : (C,) int
        Candidate labels in HNSW order (-1 padding at the end).
    candidate_sim : (C,) float
        Query similarity of each candidate.
    neighbors : (N, K) int, neighbor_sim : (N, K) float
        Layer-0 neighbour table in labels (-1 padding) and the link similarities.

    Returns
    -------
    nodes : (n,) int64
        The node set in order of entry (candidates first).
    f : (n,) float64
        The CG solution, aligned with ``nodes``.
    steps : int
        CG steps taken.
    """
    cand = np.ascontiguousarray(candidates, dtype=np.int64).reshape(-1)
    nbr = np.ascontiguousarray(neighbors, dtype=np.int64)
    sim = np.ascontiguousarray(neighbor_sim, dtype=np.float32)
    nodes = K.gather_nodes(cand, nbr)
    indptr, indices, data = K.build_affinity(nodes, nbr, sim, float(gamma))
    y = np.zeros(nodes.shape[0])
    valid_sim = np.asarray(candidate_sim, dtype=np.float64).reshape(-1)[cand >= 0]
    n_seeds = valid_sim.shape[0] if seeds is None else min(int(seeds), valid_sim.shape[0])
    y[:n_seeds] = np.maximum(valid_sim[:n_seeds], 0.0) ** float(gamma)
    f, steps = K.solve_diffusion(indptr, indices, data, y, float(a), int(iterations), float(tol))
    return nodes, f, int(steps)


class DiffusionRanker:
    """Diffusion re-ranking on an :class:`~ruvector_hnsw.HNSWIndex` whose labels are ``0..N-1``.

    Parameters
    ----------
    index : HNSWIndex
        Labels must be the rows ``0..N-1`` (as in evaluation runs); deleted items take no part.
    candidates : int
        ``C``, HNSW results diffused per query.
    k_graph : int, optional
        Layer-0 links kept per node, nearest first (default 8; None = ``2 * M``, all of them).
    gamma, a, seeds, iterations, tol
        See the module docstring (``seeds`` None = all candidates).
    ef : int, optional
        HNSW search breadth (default the index's ``ef``; at least the number of results asked).
    num_threads : int
        Threads of the per-query kernels (-1: all available).
    """

    def __init__(self, index: Any, *, candidates: int = 100, k_graph: int | None = 8, gamma: float = 5.0,
                 a: float = 0.9, seeds: int | None = None, iterations: int = 20, tol: float = 1e-6,
                 ef: int | None = None, num_threads: int = -1) -> None:
        self.candidates = _check_int("candidates", candidates, 1)
        self.seeds = None if seeds is None else _check_int("seeds", seeds, 1)
        self.iterations = _check_int("iterations", iterations, 1)
        if not 0.0 <= float(a) < 1.0:
            raise ConfigError(f"a must lie in [0, 1), got {a!r}")
        if not float(gamma) > 0.0 or not float(tol) >= 0.0:
            raise ConfigError(f"gamma must be > 0 and tol >= 0, got {gamma!r}, {tol!r}")
        self.gamma, self.a, self.tol = float(gamma), float(a), float(tol)
        self.index = index
        self.ef = int(index.ef) if ef is None else _check_int("ef", ef, 1)
        self.num_threads = int(num_threads)
        t0 = time.perf_counter()
        graph = index.graph()
        self.k_graph = 2 * graph.M if k_graph is None else _check_int("k_graph", k_graph, 1)
        labels = np.asarray(graph.labels, dtype=np.int64)
        n = labels.shape[0]
        if n == 0 or labels.min() < 0 or labels.max() >= n or np.unique(labels).shape[0] != n:
            raise ConfigError("diffusion needs an index whose labels are the rows 0..N-1")
        nb = graph.neighborhoods(labels, k_local=self.k_graph, k_global=0)
        self.space = str(graph.space)
        dist = np.where(nb.mask, nb.dist, np.nan).astype(np.float64)
        if self.space == "l2":
            finite = dist[np.isfinite(dist)]
            self.sigma = float(finite.mean()) if finite.size and finite.mean() > 0 else 1.0
        else:
            self.sigma = 1.0
        nbr = np.full((n, self.k_graph), -1, dtype=np.int64)
        sim = np.zeros((n, self.k_graph), dtype=np.float32)
        nbr[labels] = nb.ids
        sim[labels] = np.where(nb.mask, self._similarity(np.nan_to_num(dist, nan=0.0)), 0.0)
        vectors = np.empty_like(graph.vectors)
        vectors[labels] = graph.vectors
        self.neighbors, self.neighbor_sim, self.vectors = nbr, sim, vectors
        self.setup_seconds = time.perf_counter() - t0

    def _similarity(self, dist: np.ndarray) -> np.ndarray:
        return K.link_similarity(dist, self.space, self.sigma)

    def with_settings(self, *, gamma: float, candidates: int) -> DiffusionRanker:
        """A ranker at another ``gamma`` and ``candidates`` sharing this one's neighbour table (no set-up)."""
        candidates = _check_int("candidates", candidates, 1)
        if not float(gamma) > 0.0:
            raise ConfigError(f"gamma must be > 0, got {gamma!r}")
        other = copy.copy(self)
        other.gamma, other.candidates = float(gamma), candidates
        return other

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` labels per query (``-1`` padded) and their index distances to the query."""
        k = _check_int("k", k, 1)
        q = _as_f32(queries, "queries", int(self.vectors.shape[1]))
        nq = q.shape[0]
        kk = max(k, self.candidates)
        ids, dist = self.index.search(q, k=kk, ef=max(self.ef, kk))
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        dist = np.ascontiguousarray(dist, dtype=np.float32)
        cand = np.ascontiguousarray(ids[:, : self.candidates])
        cand_sim = np.where(cand >= 0, self._similarity(dist[:, : self.candidates].astype(np.float64)), 0.0)
        width = self.candidates * (self.k_graph + 1)
        diff_ids = np.full((nq, width), -1, dtype=np.int64)
        diff_n = np.zeros(nq, dtype=np.int64)
        steps = np.zeros(nq, dtype=np.int64)
        seeds = self.candidates if self.seeds is None else self.seeds
        qv = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12) if self.space == "cosine" else q
        out_ids = np.full((nq, k), -1, dtype=np.int64)
        out_dist = np.full((nq, k), np.inf, dtype=np.float32)
        nbr, nsim = self.neighbors, self.neighbor_sim

        def run(lo: int, hi: int) -> None:
            K.diffuse_rows(lo, hi, cand, cand_sim, nbr, nsim, seeds, self.gamma, self.a, self.iterations, self.tol,
                           diff_ids, diff_n, steps)
            K.merge_rows(lo, hi, diff_ids, diff_n, ids, dist, qv, self.vectors, self.space == "l2", out_ids,
                         out_dist)

        with thread_limits(self.num_threads):
            run_row_chunks(run, nq, float(nq) * width * self.k_graph * 8)
        self.last_steps = steps
        return out_ids, out_dist


#: settings ``diffusion:tune=1`` chooses from on the training queries: affinity exponents and candidates
TUNE_GAMMAS = (5.0, 10.0, 20.0, 30.0)
TUNE_CANDIDATES = (100, 200, 400)


def _training_map100(ctx: BuildContext, ranker: DiffusionRanker) -> float:
    """mAP@100 of ``ranker`` on the dataset's training queries (relevance: the labels training may see)."""
    from ruvector_hnsw.eval.attention import training_data

    tq, tl, base_labels, _ = training_data(ctx.dataset)
    ids, _ = ranker.search(tq, 100)
    return float(map_at_r(*relevance(ids, base_labels, tl), cap=100))


def make_diffusion(ctx: BuildContext, *, candidates: int = 100, k_graph: int | None = 8, gamma: float = 5.0,
                   a: float = 0.9, seeds: int | None = None, iterations: int = 20, tol: float = 1e-6,
                   ef: int | None = None, tune: bool = False) -> SearchMethod:
    """Factory of ``diffusion`` on the run's shared HNSW index (training-free).

    ``tune=True`` (``diffusion:tune=1``): ``gamma`` and ``candidates`` are chosen from
    :data:`TUNE_GAMMAS` x :data:`TUNE_CANDIDATES` by mAP@100 on the dataset's *training* queries
    (what a practitioner can tune diffusion on; their relevance uses the labels training may see),
    instead of the fixed defaults; the method is then trained, not training-free.
    """
    t0 = time.perf_counter()
    ranker = DiffusionRanker(ctx.index, candidates=candidates, k_graph=k_graph, gamma=gamma, a=a, seeds=seeds,
                             iterations=iterations, tol=tol, ef=ctx.ef if ef is None else ef,
                             num_threads=ctx.num_threads)
    tuned: list[dict[str, float]] = []
    if tune:
        best = (-1.0, ranker)
        for g in TUNE_GAMMAS:
            for c in TUNE_CANDIDATES:
                trial = ranker.with_settings(gamma=g, candidates=c)
                value = _training_map100(ctx, trial)
                tuned.append({"gamma": g, "candidates": c, "train_map_at_100": round(value, 5)})
                if value > best[0] + 1e-9:
                    best = (value, trial)
        ranker = best[1]
    params: dict[str, Any] = {"candidates": ranker.candidates, "k_graph": ranker.k_graph, "gamma": ranker.gamma,
                              "a": ranker.a, "seeds": ranker.seeds if ranker.seeds is not None else ranker.candidates,
                              "iterations": ranker.iterations, "tol": ranker.tol, "ef": ranker.ef,
                              "setup_s": round(ranker.setup_seconds, 3)}
    if tune:
        params.update(tuned=tuned, fit_s=round(time.perf_counter() - t0, 3))
    method = SearchMethod(name="diffusion", fn=ranker.search, threads=_index_threads(ctx.index), params=params)
    method.ranker = ranker  # type: ignore[attr-defined]
    return method


register_method("diffusion", make_diffusion, overwrite=True)
