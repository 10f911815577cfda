"""Graph regularizers with analytic gradients.

:func:`laplacian_smoothness` is ``R(Z) = sum_{(i,j) in E} w_ij ||z_i - z_j||^2`` over the
edges of a CSR graph (e.g. ``HNSWGraph.layer(0)``: ``indptr``/``indices`` over node ids
aligned with the rows of ``Z``). It equals ``2 tr(Z^T L Z)`` for the Laplacian ``L`` of
the symmetrised weights when every edge is stored once, and pulls the representations of
graph neighbours together. Same calling convention as the losses: ``(value, grad)``.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from ruvector_hnsw.errors import ConfigError, InvalidInputError, ShapeMismatchError
from ruvector_hnsw.training import _kernels
from ruvector_hnsw.training._validate import as_float, as_id_array, check_csr, check_positive

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


def _evaluate(
    z: np.ndarray, rows: np.ndarray, ip: np.ndarray, ix: np.ndarray, w: np.ndarray, has_w: bool, reduction: str
) -> tuple[float, np.ndarray]:
    grad = np.zeros(z.shape, np.float64)
    value, n_edges = _kernels.laplacian_csr(np.ascontiguousarray(z, dtype=np.float64), rows, ip, ix, w, has_w, grad)
    if reduction == "mean" and n_edges:
        value /= n_edges
        grad /= n_edges
    return float(value), grad.astype(z.dtype, copy=False)


def laplacian_smoothness(
    embeddings: Any,
    indptr: Any,
    indices: Any,
    *,
    weights: Any = None,
    nodes: Any = None,
    reduction: Literal["sum", "mean"] = "sum",
) -> tuple[float, np.ndarray]:
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
        Only edges leaving these nodes count (a mini-batch); gradients still reach both ends.
    reduction : {"sum", "mean"}
        ``"mean"`` divides by the number of counted edges.

    Returns
    -------
    value : float
    grad : numpy.ndarray, shape (N, d)
    """
    z = as_float(embeddings, "embeddings", ndim=2)
    ip, ix = check_csr(indptr, indices, z.shape[0])
    w, has_w = _prepare_weights(weights, ix.shape[0])
    if reduction not in ("sum", "mean"):
        raise ConfigError(f"reduction: expected 'sum' or 'mean', got {reduction!r}")
    rows = np.arange(z.shape[0], dtype=np.int64) if nodes is None else as_id_array(nodes, "nodes", ndim=1)
    if rows.size and (rows.min() < 0 or rows.max() >= z.shape[0]):
        raise InvalidInputError(f"nodes: ids must lie in [0, {z.shape[0]})")
    return _evaluate(z, np.ascontiguousarray(rows), ip, ix, w, has_w, reduction)


class LaplacianRegularizer:
    """:func:`laplacian_smoothness` over a fixed graph, validated once, scaled by ``strength``.

    ``reg(Z, nodes=None) -> (strength * R, strength * dR/dZ)``.
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

    def __call__(self, embeddings: Any, *, nodes: Any = None) -> tuple[float, np.ndarray]:
        """Scaled value and gradient for ``embeddings`` (num_nodes, d)."""
        z = as_float(embeddings, "embeddings", ndim=2)
        if z.shape[0] != self.num_nodes:
            raise ShapeMismatchError(f"embeddings: {z.shape[0]} rows but the graph has {self.num_nodes} nodes")
        rows = np.arange(self.num_nodes, dtype=np.int64) if nodes is None else as_id_array(nodes, "nodes", ndim=1)
        if rows.size and (rows.min() < 0 or rows.max() >= self.num_nodes):
            raise InvalidInputError(f"nodes: ids must lie in [0, {self.num_nodes})")
        value, grad = _evaluate(
            z, np.ascontiguousarray(rows), self.indptr, self.indices, self._w, self._has_w, self.reduction
        )
        if self.strength != 1.0:
            grad = grad * self.strength
        return value * self.strength, grad
