"""A picture of an HNSW graph: levels, degrees per layer, and a 2-D layout of its upper layers.

Needs matplotlib (the ``plot`` extra); without it :func:`plot_graph` raises
:class:`~ruvector_hnsw.errors.MissingDependencyError`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ruvector_hnsw.errors import InvalidInputError, MissingDependencyError

__all__ = ["plot_graph", "upper_layout"]


def upper_layout(graph: Any, max_nodes: int = 2000) -> tuple[np.ndarray, np.ndarray, list[tuple[int, np.ndarray]]]:
    """2-D coordinates of the upper-layer nodes (PCA of their vectors) and their links.

    Parameters
    ----------
    graph : HNSWGraph
        A graph snapshot (``HNSWIndex.graph()``).
    max_nodes : int
        At most this many nodes, the highest levels first (ties: graph order).

    Returns
    -------
    rows : (m,) int64
        Graph rows of the nodes shown (level >= 1, or every node when the graph has one layer).
    xy : (m, 2) float64
        Their coordinates on the first two principal axes of their vectors (centred).
    links : list of (layer, (e, 2) int64)
        Per layer >= 1 (layer 0 for a one-layer graph), pairs of indices into ``rows`` of the
        directed links between shown nodes.
    """
    levels = np.asarray(graph.levels)
    floor = 1 if graph.max_level >= 1 else 0
    cand = np.flatnonzero((levels >= floor) & ~np.asarray(graph.deleted, dtype=bool))
    rows = cand[np.argsort(-levels[cand], kind="stable")][: max(1, int(max_nodes))]
    rows = np.sort(rows)
    x = np.asarray(graph.vectors, dtype=np.float64)[rows]
    x = x - x.mean(axis=0)
    xy = np.zeros((rows.shape[0], 2))
    if rows.shape[0] > 1:
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        proj = x @ vt[:2].T
        xy[:, : proj.shape[1]] = proj
    where = np.full(len(graph), -1, dtype=np.int64)
    where[rows] = np.arange(rows.shape[0])
    links = []
    for layer in range(floor, graph.num_layers):
        indptr, nbr = graph.layer(layer)
        counts = np.diff(indptr)[rows]
        src = np.repeat(np.arange(rows.shape[0]), counts)
        offsets = np.arange(src.shape[0]) - np.repeat(np.cumsum(counts) - counts, counts)
        take = np.repeat(indptr[rows], counts) + offsets  # the links of the shown rows, in CSR order
        dst = where[graph.positions(nbr[take])] if take.size else np.zeros(0, dtype=np.int64)
        keep = dst >= 0
        links.append((layer, np.stack([src[keep], dst[keep]], axis=1).astype(np.int64)))
    return rows, xy, links


def plot_graph(graph: Any, path: str | os.PathLike[str], *, title: str | None = None, max_nodes: int = 2000,
               dpi: int = 110) -> Path:
    """Write a PNG of ``graph``: levels histogram, degree distribution per layer, upper-layer layout.

    Parameters
    ----------
    graph : HNSWGraph
        A graph snapshot (``HNSWIndex.graph()``).
    path : path-like
        Output PNG.
    title : str, optional
        Figure title.
    max_nodes : int
        Upper-layer nodes drawn in the layout at most (highest levels first).
    dpi : int

    Returns
    -------
    pathlib.Path

    Raises
    ------
    MissingDependencyError
        matplotlib is not installed.
    InvalidInputError
        The graph is empty.
    """
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
        from matplotlib.collections import LineCollection
    except ImportError as exc:
        raise MissingDependencyError("plotting needs matplotlib: pip install 'ruvector-hnsw[plot]'") from exc
    if len(graph) == 0:
        raise InvalidInputError("nothing to plot: the graph is empty")
    levels = np.asarray(graph.levels)
    cmap = plt.get_cmap("viridis")
    colour = [cmap(i / max(1, graph.max_level)) for i in range(graph.num_layers)]
    fig, (ax_l, ax_d, ax_p) = plt.subplots(1, 3, figsize=(15.5, 4.6))
    try:
        hist = np.bincount(levels, minlength=graph.num_layers)
        ax_l.bar(np.arange(hist.shape[0]), hist, color=colour)
        ax_l.set_yscale("log")
        ax_l.set_xticks(np.arange(hist.shape[0]))
        ax_l.set_xlabel("top level of a node")
        ax_l.set_ylabel("nodes (log)")
        ax_l.set_title("levels")

        for layer in range(graph.num_layers):
            deg = np.asarray(graph.degrees(layer))[levels >= layer]
            if deg.size == 0:
                continue
            counts = np.bincount(deg)
            ax_d.step(np.arange(counts.shape[0]), counts / deg.size, where="mid", color=colour[layer],
                      label=f"layer {layer} ({deg.size} nodes, mean {deg.mean():.1f})")
        ax_d.set_xlabel("out-degree")
        ax_d.set_ylabel("share of the layer's nodes")
        ax_d.set_title("degree distribution per layer")
        ax_d.legend(fontsize=7)

        rows, xy, links = upper_layout(graph, max_nodes)
        for layer, pairs in links:
            if pairs.size:
                segs = np.stack([xy[pairs[:, 0]], xy[pairs[:, 1]]], axis=1)
                ax_p.add_collection(LineCollection(list(segs), colors=[colour[layer]], linewidths=0.4 + 0.4 * layer,
                                                   alpha=0.5, label=f"layer {layer} links ({pairs.shape[0]})"))
        lv = levels[rows]
        ax_p.scatter(xy[:, 0], xy[:, 1], s=8 + 14 * lv, c=[colour[v] for v in lv], edgecolors="black",
                     linewidths=0.3, zorder=3)
        ep = np.flatnonzero(rows == graph.positions([graph.entry_point])[0]) if graph.entry_point >= 0 \
            else np.zeros(0, dtype=np.int64)
        if ep.size:
            ax_p.scatter(xy[ep, 0], xy[ep, 1], marker="*", s=220, c="tab:red", zorder=4, label="entry point")
        ax_p.autoscale()
        shown = "upper layers" if graph.max_level >= 1 else "layer 0 (the graph has one layer)"
        ax_p.set_title(f"{shown}: {rows.shape[0]} nodes, PCA of their vectors")
        ax_p.set_xticks([])
        ax_p.set_yticks([])
        ax_p.legend(fontsize=7, loc="best")
        fig.suptitle(title or f"HNSW graph: {len(graph)} nodes, max level {graph.max_level}, M={graph.M}")
        fig.tight_layout()
        out = Path(path)
        fig.savefig(out, dpi=dpi)
    finally:
        plt.close(fig)
    return out
