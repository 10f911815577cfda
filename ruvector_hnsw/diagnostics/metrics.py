"""Geometry metrics of an HNSW graph, measured on a seeded sample of its neighbourhoods.

Every metric is a pure function of plain arrays (a CSR adjacency over rows, the vectors, padded
windows of rows), so each can be checked on a hand-made graph; :func:`sample_neighbourhoods`
takes those arrays from an :class:`~ruvector_hnsw.index.HNSWGraph` (the layer-0 links, the
levels, and the searcher's own contexts of :class:`~ruvector_hnsw.search.context.RowContexts`).

Metrics (value, and what it reads)
----------------------------------
``ot_ratio`` - :func:`neighbourhood_transport`
    Sliced 2-Wasserstein distance between the layer-0 neighbourhood ``N(v) = {v} + links(v)``
    of a sampled node and the neighbourhoods of its first linked nodes, divided by the same
    distance to the neighbourhoods of uniformly random nodes. Low: linked nodes see similar
    neighbourhoods (the graph is locally coherent in distribution, not only in points).
``boundary_mass`` - :func:`window_boundary`
    Share of the layer-0 links of a context window's members (the node, its local and its hub
    items: the window the searcher attends over) that leave the window. The cut proxy is the
    conductance ``cut(W) / min(vol W, vol V - W)``.
``gromov_delta`` - :func:`hop_distances` + :func:`gromov_delta`
    Gromov's four-point ``delta`` of the hop metric of the (symmetrised) layer-0 graph between
    sampled sources, relative to their diameter: ``2 delta / diam`` in ``[0, 1]``; 0 for a tree
    (tree-like, hyperbolic), larger for grids and cycles.
``level_deviation`` - :func:`level_structure`
    Largest ``|log2(observed / expected)|`` of the layer occupancy against the geometric law of
    hnswlib's level draw (``mult = 1 / ln M``: ``P(level >= l) = M^-l``).
``dirichlet_energy`` - :func:`dirichlet_energy`
    Mean squared length of the layer-0 links of the sampled nodes divided by the mean squared
    distance of random pairs (``2 tr Cov``): 0 for a signal constant on every link, about 1 when
    the links are no shorter than random pairs.
``attention_entropy`` - :func:`attention_entropy`
    Mean entropy of an untrained (seeded) mechanism's weights over each context window, divided
    by ``log`` of the window size: 1 = uniform, 0 = all mass on one item.

Determinism: every random choice comes from ``numpy.random.default_rng(seed)``; no metric
depends on thread count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numba
import numpy as np

from ruvector_hnsw.errors import EmptyInputError, InvalidInputError, ShapeMismatchError

__all__ = [
    "NeighbourhoodSample",
    "attention_entropy",
    "dirichlet_energy",
    "gromov_delta",
    "hop_distances",
    "level_structure",
    "neighbourhood_transport",
    "neighbourhood_windows",
    "sample_neighbourhoods",
    "sliced_w2",
    "symmetrise",
    "window_boundary",
]


# ============================================================================ the sample
@dataclass(frozen=True)
class NeighbourhoodSample:
    """What the metrics read: a seeded sample of rows, their contexts, and the graph around them.

    Attributes
    ----------
    rows : (m,) int64
        Sampled rows (positions of the graph), sorted.
    partners : (m,) int64
        A uniformly random live row per sampled row (the random pairs of the ratios).
    pos, mask : (m, K) int64 / bool
        Context window of each sampled row (``RowContexts.raw``: local items then hub items;
        ``-1`` padding).
    dist, layer, hops : (m, K)
        The context's distances (index metric, unscaled), layers and hops.
    indptr, indices : CSR over rows
        Directed layer-0 links (positions).
    vectors : (n, d) float32
        Stored vectors of the graph.
    levels : (n,) int
        Top layer of every row.
    live : (n,) bool
        Rows not marked deleted.
    M : int
        hnswlib's ``M``.
    seed : int
        The sample's seed (later random choices of the metrics derive from it).
    """

    rows: np.ndarray
    partners: np.ndarray
    pos: np.ndarray
    mask: np.ndarray
    dist: np.ndarray
    layer: np.ndarray
    hops: np.ndarray
    indptr: np.ndarray
    indices: np.ndarray
    vectors: np.ndarray
    levels: np.ndarray
    live: np.ndarray
    M: int
    seed: int

    def __len__(self) -> int:
        return int(self.rows.shape[0])


def sample_neighbourhoods(graph: Any, sample: int = 512, seed: int = 0, *, k_local: int = 16,
                          k_global: int = 8) -> NeighbourhoodSample:
    """Draw ``min(sample, live rows)`` rows of ``graph`` (seeded) with their contexts.

    Parameters
    ----------
    graph : HNSWGraph
        The snapshot to measure.
    sample : int
        Rows to sample (``>= 1``).
    seed : int
        Seed of every random choice.
    k_local, k_global : int
        Context sizes (the searcher's defaults).

    Raises
    ------
    InvalidInputError
        ``sample < 1``.
    EmptyInputError
        The graph has no live row.
    """
    from ruvector_hnsw.search.context import RowContexts

    if isinstance(sample, bool) or not isinstance(sample, (int, np.integer)) or sample < 1:
        raise InvalidInputError(f"sample must be an integer >= 1, got {sample!r}")
    live = ~np.asarray(graph.deleted, dtype=bool)
    live_rows = np.flatnonzero(live)
    if live_rows.size == 0:
        raise EmptyInputError("the graph has no live (non-deleted) node to analyse")
    rng = np.random.default_rng(seed)
    m = min(int(sample), live_rows.size)
    rows = np.sort(rng.choice(live_rows, m, replace=False)).astype(np.int64)
    partners = live_rows[rng.integers(0, live_rows.size, m)].astype(np.int64)
    pos, dist, layer, hops, mask = RowContexts.raw(graph, rows, k_local, k_global)
    indptr, labels = graph.layer(0)
    indices = graph.positions(labels) if labels.size else np.zeros(0, dtype=np.int64)
    return NeighbourhoodSample(
        rows=rows, partners=partners, pos=pos, mask=mask, dist=dist, layer=layer, hops=hops,
        indptr=np.asarray(indptr, dtype=np.int64), indices=np.asarray(indices, dtype=np.int64),
        vectors=graph.vectors, levels=np.asarray(graph.levels, dtype=np.int64), live=live, M=int(graph.M),
        seed=int(seed))


def _check_csr(indptr: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    indptr = np.asarray(indptr, dtype=np.int64)
    indices = np.asarray(indices, dtype=np.int64)
    if indptr.ndim != 1 or indptr.size < 1 or indices.ndim != 1 or indptr[-1] != indices.size:
        raise ShapeMismatchError("indptr/indices are not a CSR adjacency (indptr[-1] must equal len(indices))")
    n = indptr.size - 1
    if indices.size and (indices.min() < 0 or indices.max() >= n):
        raise InvalidInputError(f"CSR indices must lie in [0, {n})")
    return indptr, indices


# ============================================================================ transport
def neighbourhood_windows(indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Padded layer-0 neighbourhoods ``{v} + links(v)`` of ``rows``: ``(len(rows), 1 + max degree)``, -1 padded."""
    indptr, indices = _check_csr(indptr, indices)
    rows = np.asarray(rows, dtype=np.int64)
    deg = indptr[rows + 1] - indptr[rows]
    width = 1 + (int(deg.max()) if deg.size else 0)
    out = np.full((rows.size, width), -1, dtype=np.int64)
    out[:, 0] = rows
    col = np.arange(width - 1)
    take = col[None, :] < deg[:, None]
    src = (indptr[rows][:, None] + col[None, :])[take]
    out[:, 1:][take] = indices[src]
    return out


def _quantiles(coords: np.ndarray, valid: np.ndarray, levels: int) -> np.ndarray:
    """Mid-point quantiles ``F^-1((q + 1/2) / Q)`` of each row's valid values, per projection.

    ``coords (B, K, P)``, ``valid (B, K)`` -> ``(B, Q, P)``.
    """
    filled = np.where(valid[:, :, None], coords, np.inf)
    srt = np.sort(filled, axis=1)
    count = valid.sum(1)
    u = (np.arange(levels) + 0.5) / levels
    at = np.minimum((u[None, :] * count[:, None]).astype(np.int64), np.maximum(count[:, None] - 1, 0))
    return np.take_along_axis(srt, at[:, :, None], axis=1)


def sliced_w2(a: np.ndarray, a_valid: np.ndarray, b: np.ndarray, b_valid: np.ndarray, theta: np.ndarray,
              levels: int | None = None) -> np.ndarray:
    """Sliced 2-Wasserstein distance between padded point sets, row by row.

    ``SW(A, B) = sqrt(mean_p W2(theta_p A, theta_p B)^2)`` with the 1-D ``W2^2`` computed on
    ``Q`` mid-point quantiles (``Q = levels``, default the padded width): exact (sorted matching)
    when both sets hold ``Q`` points, the quantile rule otherwise.

    Parameters
    ----------
    a, b : (B, K, d)
        Point sets (padding anywhere).
    a_valid, b_valid : (B, K) bool
        Which points are present; every row needs at least one.
    theta : (P, d)
        Projection directions (unit rows).
    levels : int, optional
        Quantile levels ``Q``.

    Returns
    -------
    (B,) float64
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a_valid = np.asarray(a_valid, dtype=bool)
    b_valid = np.asarray(b_valid, dtype=bool)
    if a.ndim != 3 or b.ndim != 3 or a.shape[0] != b.shape[0] or a.shape[2] != b.shape[2]:
        raise ShapeMismatchError(f"point sets must be (B, K, d) with one B and d, got {a.shape} and {b.shape}")
    if a_valid.shape != a.shape[:2] or b_valid.shape != b.shape[:2]:
        raise ShapeMismatchError("validity masks must be (B, K) like their point sets")
    if not (a_valid.any(1).all() and b_valid.any(1).all()):
        raise EmptyInputError("every point set needs at least one point")
    q = int(levels if levels is not None else max(a.shape[1], b.shape[1]))
    th = np.asarray(theta, dtype=np.float64)
    qa = _quantiles(a @ th.T, a_valid, q)
    qb = _quantiles(b @ th.T, b_valid, q)
    return np.asarray(np.sqrt(((qa - qb) ** 2).mean(axis=(1, 2))))


def _projections(dim: int, count: int, rng: np.random.Generator) -> np.ndarray:
    g = rng.standard_normal((count, dim))
    return g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)


def neighbourhood_transport(vectors: np.ndarray, indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray,
                            partners: np.ndarray, *, neighbours: int = 4, projections: int = 32,
                            seed: int = 0) -> dict[str, float]:
    """Sliced-Wasserstein distance between linked neighbourhoods, relative to random pairs.

    For each ``v`` in ``rows``: the distance between ``N(v)`` and ``N(u)`` for its first
    ``neighbours`` layer-0 links ``u`` (hnswlib's link order), and between ``N(v)`` and
    ``N(w)`` for ``w = partners[v]``. ``N(x) = {x} + links(x)``.

    Returns
    -------
    dict
        ``ot_ratio`` = mean linked distance / mean random distance (0 when every random distance
        is 0), ``point_ratio`` = the same ratio of the plain L2 distances of the node pairs,
        ``linked_sw``, ``random_sw`` (the two means).
    """
    indptr, indices = _check_csr(indptr, indices)
    x = np.asarray(vectors)
    rows = np.asarray(rows, dtype=np.int64)
    partners = np.asarray(partners, dtype=np.int64)
    if rows.shape != partners.shape:
        raise ShapeMismatchError("rows and partners must have one shape")
    rng = np.random.default_rng([seed, 1])
    theta = _projections(x.shape[1], projections, rng)
    proj = np.asarray(x, dtype=np.float64) @ theta.T  # (n, P); every neighbourhood reads it
    deg = indptr[rows + 1] - indptr[rows]
    col = np.arange(neighbours)
    has = col[None, :] < deg[:, None]
    v_of = np.repeat(rows[:, None], neighbours, 1)[has]
    at = np.minimum(indptr[rows][:, None] + col[None, :], max(indices.size - 1, 0))
    u_of = indices[at][has] if indices.size else np.zeros(0, dtype=np.int64)
    left = np.concatenate([v_of, rows])
    right = np.concatenate([u_of, partners])
    wl = neighbourhood_windows(indptr, indices, left)
    wr = neighbourhood_windows(indptr, indices, right)
    q = max(wl.shape[1], wr.shape[1])
    ql = _quantiles(proj[np.maximum(wl, 0)], wl >= 0, q)
    qr = _quantiles(proj[np.maximum(wr, 0)], wr >= 0, q)
    sw = np.sqrt(((ql - qr) ** 2).mean(axis=(1, 2)))
    pt = np.linalg.norm(np.asarray(x[left], dtype=np.float64) - x[right], axis=1)
    k = v_of.size
    linked, rand = (float(sw[:k].mean()) if k else 0.0), float(sw[k:].mean())
    p_linked, p_rand = (float(pt[:k].mean()) if k else 0.0), float(pt[k:].mean())
    return {"ot_ratio": linked / rand if rand > 0 else 0.0, "point_ratio": p_linked / p_rand if p_rand > 0 else 0.0,
            "linked_sw": linked, "random_sw": rand}


# ============================================================================ topology
def window_boundary(indptr: np.ndarray, indices: np.ndarray, windows: np.ndarray) -> dict[str, float]:
    """Boundary mass and conductance of padded row windows over a directed CSR graph.

    For a window ``W`` (its valid entries, duplicates ignored): ``boundary = |links from W
    leaving W| / |links from W|`` and ``conductance = cut(W) / min(vol W, vol(V) - vol W)``
    with ``vol`` the out-degree sum. Windows without links count as boundary 1.

    Returns
    -------
    dict
        ``boundary_mass`` and ``conductance`` (means over windows), ``internal_density``
        (mean share of the ``|W| (|W| - 1)`` possible links present).
    """
    indptr, indices = _check_csr(indptr, indices)
    win = np.asarray(windows, dtype=np.int64)
    if win.ndim != 2 or win.shape[0] == 0:
        raise ShapeMismatchError(f"windows must be a non-empty (B, K) array, got shape {win.shape}")
    n = indptr.size - 1
    b_of, c_of = np.nonzero(win >= 0)
    members = np.unique(b_of * n + win[b_of, c_of])  # sorted, duplicates dropped
    mb, mv = members // n, members % n
    deg = indptr[mv + 1] - indptr[mv]
    link_b = np.repeat(mb, deg)
    starts = np.repeat(indptr[mv], deg)
    offs = np.arange(deg.sum()) - np.repeat(np.cumsum(deg) - deg, deg)
    targets = indices[starts + offs]
    inside = np.isin(link_b * n + targets, members)
    nb = win.shape[0]
    vol = np.bincount(link_b, minlength=nb).astype(np.float64)
    internal = np.bincount(link_b, weights=inside, minlength=nb)
    size = np.bincount(mb, minlength=nb).astype(np.float64)
    cut = vol - internal
    boundary = np.where(vol > 0, cut / np.maximum(vol, 1), 1.0)
    total = float(indptr[-1])
    denom = np.minimum(vol, total - vol)
    conduct = np.where(denom > 0, cut / np.maximum(denom, 1e-300), 1.0)
    pairs = size * (size - 1)
    density = np.where(pairs > 0, internal / np.maximum(pairs, 1), 0.0)
    return {"boundary_mass": float(boundary.mean()), "conductance": float(np.minimum(conduct, 1.0).mean()),
            "internal_density": float(density.mean())}


# ============================================================================ curvature
def symmetrise(indptr: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR of the undirected graph (``i - j`` when ``i -> j`` or ``j -> i``), no self-loops, sorted rows."""
    indptr, indices = _check_csr(indptr, indices)
    n = indptr.size - 1
    src = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    a = np.concatenate([src, indices])
    b = np.concatenate([indices, src])
    keep = a != b
    key = np.unique(a[keep] * n + b[keep])
    rows, cols = key // n, key % n
    out = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=out[1:])
    return out, cols.astype(np.int64)


@numba.njit(cache=True, nogil=True)
def _bfs_many(indptr: np.ndarray, indices: np.ndarray, sources: np.ndarray, targets: np.ndarray) -> np.ndarray:
    n = indptr.shape[0] - 1
    out = np.full((sources.shape[0], targets.shape[0]), -1, dtype=np.int64)
    dist = np.full(n, -1, dtype=np.int64)
    queue = np.empty(n, dtype=np.int64)
    for s in range(sources.shape[0]):
        dist[:] = -1
        head, tail = 0, 1
        queue[0] = sources[s]
        dist[sources[s]] = 0
        while head < tail:
            v = queue[head]
            head += 1
            for e in range(indptr[v], indptr[v + 1]):
                u = indices[e]
                if dist[u] < 0:
                    dist[u] = dist[v] + 1
                    queue[tail] = u
                    tail += 1
        for t in range(targets.shape[0]):
            out[s, t] = dist[targets[t]]
    return out


def hop_distances(indptr: np.ndarray, indices: np.ndarray, sources: np.ndarray,
                  targets: np.ndarray | None = None) -> np.ndarray:
    """Breadth-first hop distances ``(len(sources), len(targets))`` over a CSR graph; -1 = unreachable.

    Pass an undirected graph (:func:`symmetrise`) for a metric. ``targets`` defaults to ``sources``.
    """
    indptr, indices = _check_csr(indptr, indices)
    n = indptr.size - 1
    src = np.asarray(sources, dtype=np.int64)
    tgt = src if targets is None else np.asarray(targets, dtype=np.int64)
    both = np.concatenate([src, tgt])
    if both.size and (both.min() < 0 or both.max() >= n):
        raise InvalidInputError(f"sources/targets must lie in [0, {n})")
    return np.asarray(_bfs_many(indptr, indices, src, tgt))


def gromov_delta(dist: np.ndarray, *, quadruples: int = 100_000, seed: int = 0) -> dict[str, float]:
    """Gromov's four-point ``delta`` of a finite metric (``(s, s)`` distance matrix).

    For points ``x, y, z, w`` let ``S1 >= S2 >= S3`` be the sums ``d(x,y) + d(z,w)``,
    ``d(x,z) + d(y,w)``, ``d(x,w) + d(y,z)``; ``delta(x,y,z,w) = (S1 - S2) / 2`` and ``delta``
    is its maximum. All quadruples when there are at most ``quadruples`` of them (with
    repetition allowed: ``s^4``), else ``quadruples`` seeded random ones (a lower bound).
    Unreachable pairs (``< 0``) are dropped first (the largest connected block of points is
    kept).

    Returns
    -------
    dict
        ``delta`` (max), ``mean_delta``, ``diameter``, ``relative_delta = 2 delta / diameter``
        (0 when the diameter is 0), ``points``.
    """
    d = np.asarray(dist, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] != d.shape[1] or d.shape[0] == 0:
        raise ShapeMismatchError(f"dist must be a non-empty square matrix, got shape {d.shape}")
    reach = d >= 0
    if not reach.all():  # keep the points that reach the most others (one component for a graph)
        best = np.argmax(reach.sum(1))
        keep = np.flatnonzero(reach[best])
        d = d[np.ix_(keep, keep)]
    s = d.shape[0]
    if s ** 4 <= quadruples:
        g = np.indices((s, s, s, s)).reshape(4, -1)
    else:
        g = np.random.default_rng([seed, 2]).integers(0, s, (4, quadruples))
    x, y, z, w = g
    sums = np.stack([d[x, y] + d[z, w], d[x, z] + d[y, w], d[x, w] + d[y, z]])
    sums.sort(axis=0)
    per = (sums[2] - sums[1]) / 2.0
    delta = float(per.max())
    diam = float(d.max())
    return {"delta": delta, "mean_delta": float(per.mean()), "diameter": diam,
            "relative_delta": 2.0 * delta / diam if diam > 0 else 0.0, "points": float(s)}


def level_structure(levels: np.ndarray, M: int, *, min_expected: float = 5.0) -> dict[str, Any]:
    """Layer occupancy against the geometric law of hnswlib's level draw.

    hnswlib draws ``level = floor(-ln(U) * mult)`` with ``mult = 1 / ln M``, so
    ``P(level >= l) = M^-l`` and ``n M^-l`` nodes are expected on layer ``l``.

    Returns
    -------
    dict
        ``deviation`` = max over layers ``l >= 1`` with ``n M^-l >= min_expected`` of
        ``|log2(observed_l / expected_l)|`` (an observed 0 counts as ``0.5``; 0 when no layer
        qualifies), ``observed`` and ``expected`` per layer ``l >= 1`` (lists), ``hub_share``
        (nodes on layer 1 / n; expected ``1 / M``).
    """
    lv = np.asarray(levels, dtype=np.int64)
    if lv.ndim != 1 or lv.size == 0:
        raise EmptyInputError("levels must be a non-empty 1-D array")
    if isinstance(M, bool) or int(M) < 2:
        raise InvalidInputError(f"M must be an integer >= 2, got {M!r}")
    n, m = lv.size, int(M)
    top = max(int(lv.max()), 1)
    layers = np.arange(1, top + 1)
    observed = np.array([(lv >= layer).sum() for layer in layers], dtype=np.float64)
    expected = n * np.power(float(m), -layers.astype(np.float64))
    ok = expected >= min_expected
    dev = np.abs(np.log2(np.maximum(observed[ok], 0.5) / expected[ok]))
    return {"deviation": float(dev.max()) if dev.size else 0.0, "observed": observed.astype(int).tolist(),
            "expected": [round(float(e), 3) for e in expected], "hub_share": float(observed[0] / n)}


# ============================================================================ diffusion
def dirichlet_energy(vectors: np.ndarray, indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray,
                     partners: np.ndarray) -> dict[str, float]:
    """Normalised Dirichlet energy of the vectors on the layer-0 links of ``rows``.

    ``E = mean_{v in rows, u in links(v)} |x_v - x_u|^2 / mean_v |x_v - x_{partners[v]}|^2``:
    the unnormalised graph Laplacian's quadratic form ``sum_ij w_ij |x_i - x_j|^2`` per link,
    against random pairs (an estimate of ``2 tr Cov``). 0 when no link changes the vector.

    Returns
    -------
    dict
        ``energy`` (the ratio; 0 when random pairs coincide), ``link_sq`` and ``random_sq``.
    """
    indptr, indices = _check_csr(indptr, indices)
    x = np.asarray(vectors, dtype=np.float64)
    rows = np.asarray(rows, dtype=np.int64)
    deg = indptr[rows + 1] - indptr[rows]
    src = np.repeat(rows, deg)
    offs = np.arange(deg.sum()) - np.repeat(np.cumsum(deg) - deg, deg)
    dst = indices[np.repeat(indptr[rows], deg) + offs]
    link = float(((x[src] - x[dst]) ** 2).sum(1).mean()) if src.size else 0.0
    rand = float(((x[rows] - x[np.asarray(partners, dtype=np.int64)]) ** 2).sum(1).mean())
    return {"energy": link / rand if rand > 0 else 0.0, "link_sq": link, "random_sq": rand}


# ============================================================================ attention
def attention_entropy(weights: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Mean normalised entropy ``H(w) / log(n)`` of attention rows over their ``n`` attended items.

    ``weights`` is ``(B, n)`` or per head ``(B, h, n)`` (heads averaged). Rows with fewer than
    two attended items are skipped (their entropy is undefined); 0 when none is left.

    Returns
    -------
    dict
        ``entropy`` (mean normalised entropy), ``max_weight`` (mean largest weight),
        ``rows`` (rows measured).
    """
    w = np.asarray(weights, dtype=np.float64)
    mk = np.asarray(mask, dtype=bool)
    if w.ndim == 2:
        w = w[:, None, :]
    if w.ndim != 3 or w.shape[0] != mk.shape[0] or w.shape[2] != mk.shape[1]:
        raise ShapeMismatchError(f"weights {np.shape(weights)} do not match mask {mk.shape}")
    cnt = mk.sum(1)
    ok = cnt >= 2
    if not ok.any():
        return {"entropy": 0.0, "max_weight": 1.0, "rows": 0.0}
    ww = np.where(mk[:, None, :], w, 0.0)
    ww = ww / np.maximum(ww.sum(-1, keepdims=True), 1e-300)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(ww > 0, ww * np.log(ww), 0.0).sum(-1).mean(1)
    hn = h[ok] / np.log(cnt[ok])
    return {"entropy": float(np.clip(hn, 0.0, 1.0).mean()), "max_weight": float(ww.max(-1).mean(1)[ok].mean()),
            "rows": float(ok.sum())}
