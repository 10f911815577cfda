"""numba kernels behind :class:`~ruvector_hnsw.index.graph.HNSWGraph`.

All arrays are positional (row ``i`` = the i-th node of the graph snapshot, hnswlib's internal
id), never labels. The graph is read in hnswlib's own layout (``shared/DESIGN.md`` section 2),
through zero-copy word views of the two buffers of ``Index.__getstate__()``:

* ``rec`` ``(n, words)`` uint32: one level-0 record per node. Word 0 holds the neighbour count
  (low 16 bits) and the deleted mark (bit 16); words ``1 .. max_M0`` the layer-0 links; the
  vector starts at word ``voff`` (read through ``recf``, the float32 view of the same memory).
* ``up`` ``(blocks, 1 + max_M)`` uint32: one block per (node, layer >= 1); word 0 holds the
  count, then the links. Node ``i`` owns blocks ``first_block[i] .. first_block[i] + levels[i] - 1``
  (layer ``l`` at ``first_block[i] + l - 1``).

Metric codes: 0 = squared L2, 1 = ``1 - dot`` (hnswlib's ``ip``, and ``cosine`` over
vectors that are already normalised).
"""

from __future__ import annotations

import numba as nb
import numpy as np

METRIC_L2 = 0
METRIC_IP = 1
COUNT_MASK = 0xFFFF  # neighbour count: low 16 bits of a record's / block's first word


@nb.njit(cache=True, inline="always")
def _distance(recf: np.ndarray, voff: int, dim: int, i: int, j: int, metric: int) -> float:
    acc = 0.0
    if metric == METRIC_L2:
        for t in range(voff, voff + dim):
            diff = recf[i, t] - recf[j, t]
            acc += diff * diff
        return acc
    for t in range(voff, voff + dim):
        acc += recf[i, t] * recf[j, t]
    return 1.0 - acc


@nb.njit(cache=True)
def edge_distances(vectors: np.ndarray, rows: np.ndarray, indptr: np.ndarray, indices: np.ndarray,
                   metric: int) -> np.ndarray:
    """Distance of every CSR edge ``rows[r] -> indices[e]`` for ``e`` in ``indptr[r]:indptr[r+1]``."""
    out = np.empty(indices.shape[0], dtype=np.float32)
    dim = vectors.shape[1]
    for r in range(rows.shape[0]):
        src = rows[r]
        for e in range(indptr[r], indptr[r + 1]):
            out[e] = _distance(vectors, 0, dim, src, indices[e], metric)
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


@nb.njit(cache=True)
def _stable_head_by(keys: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray, count: int, k: int) -> None:
    """Leave in ``[0, min(count, k))`` exactly what a stable ascending sort of the first ``count``
    items would put there (the rest is left in any order). O(count * k) instead of O(count^2);
    with a NaN key it falls back to :func:`_insertion_sort_by`, whose order it then reproduces."""
    for i in range(count):
        if keys[i] != keys[i]:
            _insertion_sort_by(keys, a, b, c, count)
            return
    top = 0
    for i in range(count):
        key = keys[i]
        if top == k:
            if k == 0 or not key < keys[k - 1]:
                continue  # a stable sort would place it at k or later
            top -= 1  # the last one drops out
        va = a[i]
        vb = b[i]
        vc = c[i]
        j = top - 1
        while j >= 0 and keys[j] > key:
            keys[j + 1] = keys[j]
            a[j + 1] = a[j]
            b[j + 1] = b[j]
            c[j + 1] = c[j]
            j -= 1
        keys[j + 1] = key
        a[j + 1] = va
        b[j + 1] = vb
        c[j + 1] = vc
        top += 1


@nb.njit(cache=True, inline="always")
def _push_upper_links(
    up: np.ndarray,
    first_block: np.ndarray,
    node: int,
    level: int,
    hops: int,
    cand: np.ndarray,
    cand_layer: np.ndarray,
    cand_hops: np.ndarray,
    m: int,
) -> int:
    """Append the links of ``node`` on layers ``1 .. level`` to the candidate scratch (with their
    layer and ``hops``) while it has room; returns the new fill count."""
    cap = cand.shape[0]
    for layer in range(1, level + 1):
        blk = first_block[node] + layer - 1
        for e in range(up[blk, 0] & COUNT_MASK):
            if m < cap:
                cand[m] = up[blk, 1 + e]
                cand_layer[m] = layer
                cand_hops[m] = hops
                m += 1
    return m


@nb.njit(cache=True)
def neighborhoods(
    nodes: np.ndarray,
    rec: np.ndarray,
    recf: np.ndarray,
    voff: int,
    dim: int,
    up: np.ndarray,
    first_block: np.ndarray,
    levels: np.ndarray,
    deleted: np.ndarray,
    metric: int,
    max_level: int,
    k_local: int,
    k_global: int,
    include_deleted: bool,
    scratch_cap: int,
    seen: np.ndarray,
    slot: np.ndarray,
    hub_seen: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Padded local + global context of each node in ``nodes`` (positions).

    Local items: layer-0 links, nearest first, at most ``k_local``.
    Global items: links on layers >= 1 of the node itself when its level >= 1, otherwise
    the upper-layer links of the hubs (level >= 1) among its layer-0 neighbours; the node
    itself is never included; duplicates are merged keeping the highest layer; nearest
    first, at most ``k_global``. A node none of whose layer-0 neighbours is a hub with an
    upper-layer link takes the hubs among its 2-hop neighbours instead (``hops`` = 3).

    What a row reads (the dependency rule of ``HNSWGraph.neighborhood_changes`` rests on it):
    its own record (layer-0 links, vector), level and upper links; the deleted mark, vector
    and level of each layer-0 neighbour; the upper links of the hubs among them; the deleted
    mark and vector of every upper-layer item it collects; on the 3-hop path also the layer-0
    links of its neighbours, the levels of their neighbours and the upper links of those hubs.

    ``seen``, ``slot`` and ``hub_seen`` are per-node work arrays (``n`` int64; ``seen`` and
    ``hub_seen`` zero on entry, e.g. ``np.zeros``, whose pages the OS provides lazily): row ``b``
    marks them with ``b + 1``, so merging duplicates costs O(1) per item.

    Returns positions (-1 pad), distances (+inf pad), layers (-1 pad) and hop counts (0 pad).
    """
    B = nodes.shape[0]
    K = k_local + k_global
    out_pos = np.full((B, K), -1, dtype=np.int64)
    out_dist = np.full((B, K), np.inf, dtype=np.float32)
    out_layer = np.full((B, K), -1, dtype=np.int8)
    out_hops = np.zeros((B, K), dtype=np.int8)
    cand = np.empty(scratch_cap, dtype=np.int64)
    cand_layer = np.empty(scratch_cap, dtype=np.int64)
    cand_hops = np.empty(scratch_cap, dtype=np.int64)
    cand_dist = np.empty(scratch_cap, dtype=np.float64)
    for b in range(B):
        v = nodes[b]
        stamp = b + 1  # seen[u] == stamp: u kept in this row (at slot[u]); hub_seen: links pushed
        deg = rec[v, 0] & COUNT_MASK
        # ---- local: layer-0 links
        m = 0
        for e in range(deg):
            u = rec[v, 1 + e]
            if (not include_deleted) and deleted[u]:
                continue
            cand[m] = u
            cand_layer[m] = 0
            cand_hops[m] = 1
            cand_dist[m] = _distance(recf, voff, dim, v, u, metric)
            m += 1
        _stable_head_by(cand_dist, cand, cand_layer, cand_hops, m, k_local)
        take = min(m, k_local)
        for t in range(take):
            out_pos[b, t] = cand[t]
            out_dist[b, t] = cand_dist[t]
            out_layer[b, t] = 0
            out_hops[b, t] = 1
        if k_global == 0 or max_level < 1:
            continue
        # ---- global: upper-layer links (own, or via hubs among layer-0 neighbours)
        m = 0
        if levels[v] >= 1:
            m = _push_upper_links(up, first_block, v, levels[v], 1, cand, cand_layer, cand_hops, m)
        else:
            for e0 in range(deg):
                hub = rec[v, 1 + e0]
                if levels[hub] < 1:
                    continue
                m = _push_upper_links(up, first_block, hub, levels[hub], 2, cand, cand_layer, cand_hops, m)
            if m == 0:
                # no hub among the layer-0 neighbours: look one hop further out
                # (a hub reached through several neighbours is pushed once: the merge below would
                # fold its repeats into the first ones anyway)
                for e0 in range(deg):
                    w = rec[v, 1 + e0]
                    for e1 in range(rec[w, 0] & COUNT_MASK):
                        hub = rec[w, 1 + e1]
                        if levels[hub] < 1 or hub == v or hub_seen[hub] == stamp:
                            continue
                        hub_seen[hub] = stamp
                        m = _push_upper_links(up, first_block, hub, levels[hub], 3, cand, cand_layer, cand_hops, m)
        # merge duplicates into their first occurrence (keep highest layer, fewest hops), drop
        # self and deleted
        kept = 0
        for i in range(m):
            u = cand[i]
            if u == v or ((not include_deleted) and deleted[u]):
                continue
            if seen[u] == stamp:
                dup = slot[u]
                if cand_layer[i] > cand_layer[dup]:
                    cand_layer[dup] = cand_layer[i]
                if cand_hops[i] < cand_hops[dup]:
                    cand_hops[dup] = cand_hops[i]
                continue
            seen[u] = stamp
            slot[u] = kept
            cand[kept] = u
            cand_layer[kept] = cand_layer[i]
            cand_hops[kept] = cand_hops[i]
            kept += 1
        for i in range(kept):
            cand_dist[i] = _distance(recf, voff, dim, v, cand[i], metric)
        _stable_head_by(cand_dist, cand, cand_layer, cand_hops, kept, k_global)
        take = min(kept, k_global)
        for t in range(take):
            out_pos[b, k_local + t] = cand[t]
            out_dist[b, k_local + t] = cand_dist[t]
            out_layer[b, k_local + t] = cand_layer[t]
            out_hops[b, k_local + t] = cand_hops[t]
    return out_pos, out_dist, out_layer, out_hops
