"""Heat-equation attention on the similarity graph of the context items (``diffusion``).

The softmax weights of the query are spread along the graph of its items by the heat equation,
so mass flows from an item to the items similar to it before the values are read out::

    a        = softmax_j(q.k_j / (sqrt(d) tau))           over the attended items (n)
    S        = the top ``max_nodes`` items by score       (the diffused support, m = |S|)
    W        = symmetrised kNN graph of the keys in S     (A_ij = 1 if j is among the k_graph
                                                           nearest of i, or i of j; squared L2)
    u(0)     = a_S ;  du/dt = -Lambda u ;  u = u(t)
    w_j      = u_j (j in S),  a_j (j not in S)
    out      = sum_j w_j v_j                               (one output per time for multiscale)

Laplacians (``laplacian=``) and the mass operator ``Lambda``:

* ``"unnormalised"``: ``L = D - W``; ``Lambda = L`` (symmetric, zero column sums: mass conserved);
* ``"symmetric"``: ``L = I - D^-1/2 W D^-1/2``; ``Lambda = L``; this flow does not conserve
  mass, so ``u(t)`` is rescaled to the mass of ``a_S`` (the weights sum to 1);
* ``"random_walk"`` (default): ``L = I - D^-1 W`` acts on functions; mass (a distribution)
  evolves by its transpose ``Lambda = L^T = I - W D^-1`` (a continuous-time random walk):
  mass conserved, weights stay non-negative.

Time stepping: explicit Euler, ``u <- u - h Lambda u``, with ``num_steps`` steps of ``h = t /
num_steps``; a step is split into ``ceil(h r)`` equal sub-steps when ``h r > 1`` (``r = 1`` for
the normalised Laplacians, the largest degree for the unnormalised one), so every sub-step maps
non-negative weights to non-negative weights and the scheme is stable for any ``t``. The count
of sub-steps is piecewise constant in ``t``: the output is smooth in ``t`` except where it
changes (a jump of the size of the Euler error; the ``time`` gradient ignores it). At ``t = 0``
nothing moves: the output is the undiffused attention (``scaled_dot`` with the same temperature,
to rounding). Isolated nodes and rows with one item do not diffuse.

Graph choice
    The kNN graph of the context items in key space: inside a context the keys are what is
    known of each item (the HNSW links among them are not part of the protocol's context).
    Restricting the graph to the ``max_nodes`` best-scored items keeps the cost linear in ``n``
    (``O(m^2 d)`` for the graph, independent of ``n``); the items outside carry little softmax
    mass and keep their undiffused weights. ``max_nodes=None`` diffuses over all items.

Cost per row: ``O(n d)`` scores + ``O(n dv)`` read-out + ``O(m^2 d)`` graph + ``O(steps m k)``
Euler (``m k``-sparse operator). :meth:`DiffusionAttention.multiscale` builds the graph once and
integrates every time. Fully masked row: zero weights, zero output.

Params: ``time`` ``(1,)`` (initialised to ``t``; the diffusion time used is ``max(time, 0)``,
whose gradient is 0 while ``time <= 0``). Gradients flow into ``time``, the query and the keys
(through the softmax scores) and the values; the top-m choice and the graph are piecewise
constant.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ruvector_hnsw.attention._diffusion_kernels import (
    RANDOM_WALK,
    SYMMETRIC,
    UNNORMALISED,
    diff_backward,
    diff_forward,
)
from ruvector_hnsw.attention.base import (
    AttentionBatch,
    AttentionMechanism,
    Context,
    ForwardResult,
    check_positive_float,
    check_positive_int,
)
from ruvector_hnsw.errors import ConfigError, InvalidInputError
from ruvector_hnsw.threads import join_row_chunks, run_row_chunks

__all__ = ["LAPLACIANS", "DiffusionAttention"]

#: Laplacian names understood by :class:`DiffusionAttention`
LAPLACIANS = {"unnormalised": UNNORMALISED, "symmetric": SYMMETRIC, "random_walk": RANDOM_WALK}


class DiffusionAttention(AttentionMechanism):
    """Softmax attention diffused by the heat equation on the items' kNN graph (see module docstring).

    Parameters
    ----------
    dim : int
        Query/key dimension ``d``.
    laplacian : {"random_walk", "symmetric", "unnormalised"}
    t : float, default 1.0
        Initial diffusion time (the ``time`` param), ``>= 0``.
    num_steps : int, default 10
        Explicit Euler steps.
    k_graph : int, default 4
        Neighbours per item in the kNN graph (before symmetrisation).
    max_nodes : int or None, default 32
        Size of the diffused support (the best-scored items); None = all items.
    temperature : float, default 1.0
    dtype, seed
        See :class:`~ruvector_hnsw.attention.base.AttentionMechanism`.
    """

    name = "diffusion"
    fused_gather = True
    checks_table_rows = True

    def __init__(
        self,
        dim: int,
        *,
        laplacian: str = "random_walk",
        t: float = 1.0,
        num_steps: int = 10,
        k_graph: int = 4,
        max_nodes: int | None = 32,
        temperature: float = 1.0,
        dtype: Any = np.float32,
        seed: int | None = None,
    ) -> None:
        super().__init__(dim, dtype=dtype, seed=seed)
        if laplacian not in LAPLACIANS:
            raise ConfigError(f"laplacian must be one of {sorted(LAPLACIANS)}, got {laplacian!r}")
        self.laplacian = laplacian
        self.t = check_positive_float(t, "t", allow_zero=True)
        self.num_steps = check_positive_int(num_steps, "num_steps")
        self.k_graph = check_positive_int(k_graph, "k_graph")
        self.max_nodes = None if max_nodes is None else check_positive_int(max_nodes, "max_nodes")
        self.temperature = check_positive_float(temperature, "temperature")
        self._params = {"time": np.full(1, self.t, dtype=self.dtype)}

    @property
    def scale(self) -> float:
        """Score factor ``1 / (sqrt(d) * temperature)``."""
        return float(1.0 / (np.sqrt(self.dim) * self.temperature))

    @property
    def time(self) -> float:
        """The diffusion time in use, ``max(params["time"], 0)``."""
        return max(float(self._params["time"][0]), 0.0)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "laplacian": self.laplacian,
            "t": self.t,
            "num_steps": self.num_steps,
            "k_graph": self.k_graph,
            "max_nodes": self.max_nodes,
            "temperature": self.temperature,
        }

    # ------------------------------------------------------------------------------------------
    def _run(self, batch: AttentionBatch, times: np.ndarray, readout: bool) -> tuple[Any, ...]:
        T, Vt, ids = batch.table_form()
        V = Vt if (readout and Vt is not None) else T
        Q, mask = batch.query, batch.mask
        B, n = mask.shape
        m = n if self.max_nodes is None else min(self.max_nodes, n)
        scale, steps, k, lap = self.scale, self.num_steps, self.k_graph, LAPLACIANS[self.laplacian]
        work = float(B) * (n * (self.dim + V.shape[1]) + m * m * self.dim)

        def run(lo: int, hi: int) -> tuple[Any, ...]:
            return diff_forward(Q[lo:hi], T, V, ids[lo:hi], mask[lo:hi], scale, times, steps, k, m, lap, readout)

        res = join_row_chunks(run_row_chunks(run, B, work))
        if not res[-1]:
            self._raise_nonfinite_rows()
        return (T, V, ids, *res[:-1])

    def _forward(self, batch: AttentionBatch) -> ForwardResult:
        t = self.time
        T, V, ids, R, W, A, sel, knn, nsub = self._run(batch, np.array([t]), True)
        w = W[:, 0]
        data = (batch, T, V, ids, t, A, W, sel, knn, nsub)
        return ForwardResult(np.ascontiguousarray(R[:, 0]), data, weights=w)

    def _weights(self, batch: AttentionBatch) -> np.ndarray:
        W = self._run(batch, np.array([self.time]), False)[4]
        return np.ascontiguousarray(W[:, 0])

    def multiscale(
        self,
        query: Any,
        keys: Any,
        values: Any,
        scales: Any,
        mask: Any = None,
        context: Context | None = None,
        ids: Any = None,
    ) -> list[np.ndarray]:
        """One output per diffusion time in ``scales`` (each as :meth:`forward` with ``t`` = that time).

        The graph is built once; every time is integrated from 0 with ``num_steps`` steps. Pure.

        Returns
        -------
        list of ndarray
            ``len(scales)`` outputs shaped like :meth:`forward`'s (``(B, dv)`` or ``(dv,)``).

        Raises
        ------
        InvalidInputError
            ``scales`` empty, not 1-D, or holding a negative or non-finite time.
        """
        sc = np.asarray(scales, dtype=np.float64)
        if sc.ndim != 1 or sc.size == 0 or not np.isfinite(sc).all() or (sc < 0).any():
            raise InvalidInputError(f"scales must be a non-empty 1-D array of finite times >= 0, got {scales!r}")
        if values is None:
            raise InvalidInputError(f"{self.name}: values are required in multiscale")
        batch, _, _, _ = self._prepare(query, keys, values, mask, context, ids)
        R = self._run(batch, np.ascontiguousarray(sc), True)[3]
        return [R[0, i] if batch.unbatched else np.ascontiguousarray(R[:, i]) for i in range(sc.size)]

    def _backward(self, grad_out: np.ndarray, data: Any, input_grads: bool) -> dict[str, np.ndarray]:
        batch, T, V, ids, t, A, W, sel, knn, nsub = data
        Q, mask = batch.query, batch.mask
        B, n = mask.shape
        scale, steps, lap = self.scale, self.num_steps, LAPLACIANS[self.laplacian]

        def run(lo: int, hi: int) -> tuple[Any, ...]:
            return diff_backward(Q[lo:hi], T, V, ids[lo:hi], mask[lo:hi], scale, t, steps, lap, A[lo:hi], W[lo:hi],
                                 sel[lo:hi], knn[lo:hi], nsub[lo:hi], grad_out[lo:hi], input_grads,
                                 T.shape[0])

        if input_grads:
            dQ, dtime, dT, dV = run(0, B)
        else:
            parts = run_row_chunks(run, B, float(B) * n * (self.dim + V.shape[1]))
            dQ = np.concatenate([p[0] for p in parts])
            dtime = np.concatenate([p[1] for p in parts])
            dT = dV = np.zeros((0, self.dim), dtype=self.dtype)
        active = float(self._params["time"][0]) > 0.0
        grads = {
            "time": np.array([dtime.sum() if active else 0.0], dtype=self.dtype),
            "query": dQ,
        }
        grads.update(self._input_grad_entries(batch, dT, dV, input_grads))
        return grads
