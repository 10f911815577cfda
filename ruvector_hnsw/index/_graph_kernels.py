"""numba kernels behind :class:`~ruvector_hnsw.index.graph.HNSWGraph`.

All arrays are positional (row ``i`` = the i-th node of the graph snapshot), never labels.
The multi-layer adjacency is one CSR over ``(layer, node)`` rows: row ``l * n + i`` holds the
links of node ``i`` on layer ``l``; ``indptr`` has ``L * n + 1`` entries.

Metric codes: 0 = squared L2, 1 = ``1 - dot`` (hnswlib's ``ip``, and ``cosine`` over
vectors that are already normalised).
"""

from __future__ import annotations

import numba as nb
import numpy as np

METRIC_L2 = 0
METRIC_IP = 1


@nb.njit(cache=True, inline="always")
def _distance(vectors: np.ndarray, i: int, j: int, metric: int) -> float:
    acc = 0.0
    if metric == METRIC_L2:
        for t in range(vectors.shape[1]):
            diff = vectors[i, t] - vectors[j, t]
            acc += diff * diff
        return acc
    for t in range(vectors.shape[1]):
        acc += vectors[i, t] * vectors[j, t]
    return 1.0 - acc


@nb.njit(cache=True)
def edge_distances(vectors: np.ndarray, rows: np.ndarray, indptr: np.ndarray, indices: np.ndarray,
                   metric: int) -> np.ndarray:
    """Distance of every CSR edge ``rows[r] -> indices[e]`` for ``e`` in ``indptr[r]:indptr[r+1]``."""
    out = np.empty(indices.shape[0], dtype=np.float32)
    for r in range(rows.shape[0]):
        src = rows[r]
        for e in range(indptr[r], indptr[r + 1]):
            out[e] = _distance(vectors, src, indices[e], metric)
    return out


@nb.njit(cache=True)
def _insertion_sort_by(keys: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray, count: int) -> None:
    # small arrays (tens of items): insertion sort, stable, ascending by keys
    for i in range(1, count):
        k = keys[i]
        va = a[i]
        vb = b[i]
        vc = c[i]
        j = i - 1
        while j >= 0 and keys[j] > k:
            keys[j + 1] = keys[j]
            a[j + 1] = a[j]
            b[j + 1] = b[j]
            c[j + 1] = c[j]
            j -= 1
        keys[j + 1] = k
        a[j + 1] = va
        b[j + 1] = vb
        c[j + 1] = vc


@nb.njit(cache=True, inline="always")
def _push_upper_links(
    indptr: np.ndarray,
    indices: np.ndarray,
    n: int,
    n_layers: int,
    node: int,
    level: int,
    hops: int,
    cand: np.ndarray,
    cand_layer: np.ndarray,
    cand_hops: np.ndarray,
    m: int,
) -> int:
    """Append the links of ``node`` on layers ``1 .. min(level, n_layers - 1)`` to the candidate
    scratch (with their layer and ``hops``) while it has room; returns the new fill count."""
    cap = cand.shape[0]
    top = min(level, n_layers - 1)
    for layer in range(1, top + 1):
        row = layer * n + node
        for e in range(indptr[row], indptr[row + 1]):
            if m < cap:
                cand[m] = indices[e]
                cand_layer[m] = layer
                cand_hops[m] = hops
                m += 1
    return m


@nb.njit(cache=True)
def neighborhoods(
    nodes: np.ndarray,
    indptr: np.ndarray,
    indices: np.ndarray,
    levels: np.ndarray,
    deleted: np.ndarray,
    vectors: np.ndarray,
    metric: int,
    n: int,
    k_local: int,
    k_global: int,
    include_deleted: bool,
    scratch_cap: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Padded local + global context of each node in ``nodes`` (positions).

    Local items: layer-0 links, nearest first, at most ``k_local``.
    Global items: links on layers >= 1 of the node itself when its level >= 1, otherwise
    the upper-layer links of the hubs (level >= 1) among its layer-0 neighbours; the node
    itself is never included; duplicates are merged keeping the highest layer; nearest
    first, at most ``k_global``. A node with no hub among its layer-0 neighbours takes the
    hubs among its 2-hop neighbours instead (``hops`` = 3).

    Returns positions (-1 pad), distances (+inf pad), layers (-1 pad) and hop counts (0 pad).
    """
    B = nodes.shape[0]
    K = k_local + k_global
    out_pos = np.full((B, K), -1, dtype=np.int64)
    out_dist = np.full((B, K), np.inf, dtype=np.float32)
    out_layer = np.full((B, K), -1, dtype=np.int8)
    out_hops = np.zeros((B, K), dtype=np.int8)
    n_layers = (indptr.shape[0] - 1) // n
    cand = np.empty(scratch_cap, dtype=np.int64)
    cand_layer = np.empty(scratch_cap, dtype=np.int64)
    cand_hops = np.empty(scratch_cap, dtype=np.int64)
    cand_dist = np.empty(scratch_cap, dtype=np.float64)
    for b in range(B):
        v = nodes[b]
        # ---- local: layer-0 links
        m = 0
        for e in range(indptr[v], indptr[v + 1]):
            u = indices[e]
            if (not include_deleted) and deleted[u]:
                continue
            cand[m] = u
            cand_layer[m] = 0
            cand_hops[m] = 1
            cand_dist[m] = _distance(vectors, v, u, metric)
            m += 1
        _insertion_sort_by(cand_dist, cand, cand_layer, cand_hops, m)
        take = min(m, k_local)
        for t in range(take):
            out_pos[b, t] = cand[t]
            out_dist[b, t] = cand_dist[t]
            out_layer[b, t] = 0
            out_hops[b, t] = 1
        if k_global == 0 or n_layers < 2:
            continue
        # ---- global: upper-layer links (own, or via hubs among layer-0 neighbours)
        m = 0
        if levels[v] >= 1:
            m = _push_upper_links(indptr, indices, n, n_layers, v, levels[v], 1, cand, cand_layer, cand_hops, m)
        else:
            for e0 in range(indptr[v], indptr[v + 1]):
                hub = indices[e0]
                if levels[hub] < 1:
                    continue
                m = _push_upper_links(indptr, indices, n, n_layers, hub, levels[hub], 2, cand, cand_layer, cand_hops, m)
            if m == 0:
                # no hub among the layer-0 neighbours: look one hop further out
                for e0 in range(indptr[v], indptr[v + 1]):
                    w = indices[e0]
                    for e1 in range(indptr[w], indptr[w + 1]):
                        hub = indices[e1]
                        if levels[hub] < 1 or hub == v:
                            continue
                        m = _push_upper_links(
                            indptr, indices, n, n_layers, hub, levels[hub], 3, cand, cand_layer, cand_hops, m
                        )
        # merge duplicates (keep highest layer, fewest hops), drop self and deleted
        kept = 0
        for i in range(m):
            u = cand[i]
            if u == v or ((not include_deleted) and deleted[u]):
                continue
            dup = -1
            for j in range(kept):
                if cand[j] == u:
                    dup = j
                    break
            if dup >= 0:
                if cand_layer[i] > cand_layer[dup]:
                    cand_layer[dup] = cand_layer[i]
                if cand_hops[i] < cand_hops[dup]:
                    cand_hops[dup] = cand_hops[i]
                continue
            cand[kept] = u
            cand_layer[kept] = cand_layer[i]
            cand_hops[kept] = cand_hops[i]
            kept += 1
        for i in range(kept):
            cand_dist[i] = _distance(vectors, v, cand[i], metric)
        _insertion_sort_by(cand_dist, cand, cand_layer, cand_hops, kept)
        take = min(kept, k_global)
        for t in range(take):
            out_pos[b, k_local + t] = cand[t]
            out_dist[b, k_local + t] = cand_dist[t]
            out_layer[b, k_local + t] = cand_layer[t]
            out_hops[b, k_local + t] = cand_hops[t]
    return out_pos, out_dist, out_layer, out_hops
