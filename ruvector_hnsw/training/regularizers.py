"""Graph regularizers with analytic gradients.

:func:`laplacian_smoothness` is ``R(Z) = sum_{(i,j) in E} w_ij ||z_i - z_j||^2`` over the
edges of a CSR graph (e.g. ``HNSWGraph.layer(0)``: ``indptr``/``indices`` over node
positions aligned with the rows of ``Z``). It equals ``2 tr(Z^T L Z)`` for the Laplacian
``L`` of the symmetrised weights when every edge is stored once, and pulls the
representations of graph neighbours together. Same calling convention as the losses:
``(value, grad)``.

Note that ``HNSWGraph.layer(0)`` returns neighbour *labels*; when labels are not
``0..N-1`` in row order, map them to row positions first (``graph.positions``).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from ruvector_hnsw.errors import ConfigError, InvalidInputError, ShapeMismatchError
from ruvector_hnsw.training import _kernels
from ruvector_hnsw.training._validate import (
    as_float,
    as_float_table,
    as_id_array,
    check_csr,
    check_finite_rows,
    check_positive,
)
from ruvector_hnsw.training.losses import RowGrad

__all__ = ["LaplacianRegularizer", "laplacian_smoothness"]


def _prepare_weights(weights: Any, n_edges: int) -> tuple[np.ndarray, bool]:
    if weights is None:
        return np.zeros(1, np.float64), False
    w = as_float(weights, "weights", ndim=1).astype(np.float64)
    if w.shape[0] != n_edges:
        raise ShapeMismatchError(f"weights: expected one weight per stored edge ({n_edges}), got {w.shape[0]}")
    if w.size and w.min() < 0:
        raise InvalidInputError("weights: edge weights must be >= 0")
    return np.ascontiguousarray(w), True


def _check_nodes(nodes: Any, n: int) -> np.ndarray | None:
    if nodes is None:
        return None
    rows = as_id_array(nodes, "nodes", ndim=1)
    if rows.size and (rows.min() < 0 or rows.max() >= n):
        raise InvalidInputError(f"nodes: ids must lie in [0, {n})")
    return rows


def _evaluate(
    z: np.ndarray,
    rows: np.ndarray | None,
    ip: np.ndarray,
    ix: np.ndarray,
    w: np.ndarray,
    has_w: bool,
    reduction: str,
    sparse: bool,
) -> tuple[float, np.ndarray | RowGrad]:
    n = z.shape[0]
    if rows is None:  # every node: the whole table is touched
        check_finite_rows(z, "embeddings")
        src = np.repeat(np.arange(n, dtype=np.int64), np.diff(ip))
        dst, w_e = ix, w
        touched = np.arange(n, dtype=np.int64)
        z_sub = np.ascontiguousarray(z)
    else:  # mini-batch: only the edges leaving `rows`, on the rows they touch
        deg = ip[rows + 1] - ip[rows]
        total = int(deg.sum())
        first = np.cumsum(deg) - deg
        flat = np.arange(total, dtype=np.int64) - np.repeat(first, deg) + np.repeat(ip[rows], deg)
        src_g, dst_g = np.repeat(rows, deg), ix[flat]
        touched = np.unique(np.concatenate([rows, dst_g[dst_g >= 0]]))
        src = np.searchsorted(touched, src_g)
        dst = np.where(dst_g >= 0, np.searchsorted(touched, np.maximum(dst_g, 0)), -1)
        w_e = np.ascontiguousarray(w[flat]) if has_w else w
        z_sub = np.ascontiguousarray(z[touched])
        check_finite_rows(z_sub, "embeddings")
    grad = np.zeros(z_sub.shape, np.float64)
    value, n_edges = _kernels.laplacian_edges(z_sub, src, np.ascontiguousarray(dst), w_e, has_w, grad)
    if reduction == "mean" and n_edges:
        value /= n_edges
        grad /= n_edges
    g = RowGrad(rows=touched, values=grad.astype(z.dtype, copy=False), num_rows=n)
    return float(value), (g if sparse else g.to_dense())


def laplacian_smoothness(
    embeddings: Any,
    indptr: Any,
    indices: Any,
    *,
    weights: Any = None,
    nodes: Any = None,
    reduction: Literal["sum", "mean"] = "sum",
    sparse_grad: bool = False,
) -> tuple[float, np.ndarray | RowGrad]:
    """Laplacian smoothness ``R = sum_{(i,j) in E} w_ij ||z_i - z_j||^2`` and ``dR/dZ``.

    Every *stored* directed edge counts once (HNSW links are directed; a symmetric graph
    stored both ways counts each undirected edge twice). Self loops and ``-1`` padding in
    ``indices`` contribute nothing.

    Parameters
    ----------
    embeddings : array_like, shape (N, d)
        ``Z``, one row per graph node.
    indptr, indices : array_like of int
        CSR adjacency over the N nodes.
    weights : array_like, shape (len(indices),), optional
        Non-negative edge weights ``w_ij`` aligned with ``indices``; default 1.
    nodes : array_like of int, optional
        Only edges leaving these nodes count (a mini-batch; a node listed twice counts
        twice); gradients still reach both ends. Only the touched rows of ``Z`` are read.
    reduction : {"sum", "mean"}
        ``"mean"`` divides by the number of counted edges.
    sparse_grad : bool
        Return a :class:`~ruvector_hnsw.training.losses.RowGrad` over the touched rows
        instead of a dense (N, d) array.

    Returns
    -------
    value : float
    grad : numpy.ndarray, shape (N, d), or RowGrad
        In the dtype of ``embeddings``.
    """
    z = as_float_table(embeddings, "embeddings")
    ip, ix = check_csr(indptr, indices, z.shape[0])
    w, has_w = _prepare_weights(weights, ix.shape[0])
    if reduction not in ("sum", "mean"):
        raise ConfigError(f"reduction: expected 'sum' or 'mean', got {reduction!r}")
    rows = _check_nodes(nodes, z.shape[0])
    return _evaluate(z, rows, ip, ix, w, has_w, reduction, bool(sparse_grad))


class LaplacianRegularizer:
    """:func:`laplacian_smoothness` over a fixed graph, validated once, scaled by ``strength``.

    ``reg(Z, nodes=None, sparse_grad=False) -> (strength * R, strength * dR/dZ)``.
    """

    def __init__(
        self,
        indptr: Any,
        indices: Any,
        *,
        num_nodes: int | None = None,
        weights: Any = None,
        strength: float = 1.0,
        reduction: Literal["sum", "mean"] = "mean",
    ) -> None:
        n = int(np.asarray(indptr).shape[0] - 1) if num_nodes is None else int(num_nodes)
        self.indptr, self.indices = check_csr(indptr, indices, n)
        self.num_nodes = n
        self._w, self._has_w = _prepare_weights(weights, self.indices.shape[0])
        self.strength = check_positive(strength, "strength", allow_zero=True)
        if reduction not in ("sum", "mean"):
            raise ConfigError(f"reduction: expected 'sum' or 'mean', got {reduction!r}")
        self.reduction = reduction

    def __call__(
        self, embeddings: Any, *, nodes: Any = None, sparse_grad: bool = False
    ) -> tuple[float, np.ndarray | RowGrad]:
        """Scaled value and gradient for ``embeddings`` (num_nodes, d)."""
        z = as_float_table(embeddings, "embeddings")
        if z.shape[0] != self.num_nodes:
            raise ShapeMismatchError(f"embeddings: {z.shape[0]} rows but the graph has {self.num_nodes} nodes")
        rows = _check_nodes(nodes, self.num_nodes)
        value, grad = _evaluate(
            z, rows, self.indptr, self.indices, self._w, self._has_w, self.reduction, bool(sparse_grad)
        )
        if self.strength != 1.0:
            if isinstance(grad, RowGrad):
                grad = RowGrad(rows=grad.rows, values=grad.values * self.strength, num_rows=grad.num_rows)
            else:
                grad = grad * self.strength
        return value * self.strength, grad
