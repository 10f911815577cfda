"""Attention gated by the coherence of each row's key window (``topology_gated``).

Scores and metrics
------------------
Scores ``s_j = q.k_j / (sqrt(d) tau)`` (``tau = exp(log_temperature)``, a learned param) over
the attended items, ``w = softmax(s)``. Four coherence metrics of the row's key window, each in
``[0, 1]``:

* **boundary mass** ``M_B`` - attention mass on the window's outer shell: the items with the
  largest ``context.hops`` (when the hops differ), else - with ``context.dist`` only - the items
  farther than the middle of the window's distance range; 0 without either;
* **cut** ``C = 4 m_L (1 - m_L)`` with ``m_L`` the mass on layer-0 links (``context.layer == 0``):
  the attention-weighted cut between the window's local and upper-layer graph links (1 when the
  mass is split evenly, 0 when it stays on one side or without ``context.layer``);
* **disagreement** ``D = 1.5 sum_j Var_t w_j^(t)``, the variance of each item's weight across the
  temperatures ``tau/2, tau, 2 tau`` (scaled to ``[0, 1]``);
* **similarity variance** ``V = Var_j s_j`` (reported raw; ``V / (1 + V)`` enters the risk).

``risk = (a M_B + b C + c D + e V/(1+V)) / (a + b + c + e)`` with ``metric_weights = (a, b, c, e)``.

Policy (three modes, thresholds with hysteresis)
------------------------------------------------
=========  ========================================================================
stable     full attention: ``out = sum_j w_j v_j``
cautious   sparse attention over the ``top_k`` highest-scoring items (ties: the earlier
           item) at the higher temperature ``cautious_temperature * tau``
freeze     ``out = `` the row's **query-side value**, unchanged
=========  ========================================================================

The query-side value of a row is what the row itself carries in value space: by default the
query vector (requires ``dv == d``; the usual ``values = keys`` case, where the query lives in
the same space as the items), or ``context.extra["query_value"]`` ``(B, dv)`` when given. A
frozen row passes it through: its gradient flows to the query (default) and to no key, value or
param (an explicit ``query_value`` is context data and gets no gradient).

A row escalates at once: to freeze when ``risk >= freeze_threshold``, to cautious when
``risk >= cautious_threshold``. It de-escalates only when the risk fell below the threshold of
its current mode minus ``hysteresis`` (from freeze it may fall straight to stable). A row with
no attended item is frozen (metrics 0).

Hysteresis state (explicit, never on the mechanism)
---------------------------------------------------
The previous modes come with the call: ``Context(extra={"topology_state": state})`` with
``state`` a :class:`TopologyState` (``mode (B,)`` int8, rows aligned with the batch); without it
every row starts from stable. The call's modes are ``cache.inspect["mode"]``; the state for the
next call is :func:`next_state` ``(cache)``. Threading it through a sequence of calls gives the
mode sequence of the rule above, row by row. ``cache.inspect`` also holds ``risk``,
``boundary_mass``, ``cut``, ``disagreement`` and ``similarity_variance`` ``(B,)`` (float64: the
raw similarity variance of huge float32 inputs may exceed the float32 range).

Gradients flow through the selected mode (the metrics, the risk and the mode choice are piecewise
constant in the inputs): softmax attention over the selected items at the mode's temperature, or
the identity of the query for frozen rows. :meth:`weights` / ``cache.weights`` are the weights of
each row's read-out ``(B, n)``: ``w`` (stable), the top-k weights (cautious), zeros (frozen).

Shapes and cost
---------------
``query (B, d)``, keys ``(B, n, d)``, values ``(B, n, dv)`` (or tables + ``ids``), output
``(B, dv)``. Cost per row: one pass over the keys (dot products), ``O(n)`` scalar work for the
metrics (four exponentials per item), ``O(top_k n)`` for the cautious selection, one pass over
the selected values. Params: ``log_temperature (1,)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ruvector_hnsw.attention._topology_kernels import tg_backward, tg_forward
from ruvector_hnsw.attention.base import (
    AttentionBatch,
    AttentionCache,
    AttentionMechanism,
    ForwardResult,
    as_float_array,
    check_positive_float,
    check_positive_int,
)
from ruvector_hnsw.errors import ConfigError, DimensionMismatchError, InvalidInputError, ShapeMismatchError
from ruvector_hnsw.threads import join_row_chunks, run_row_chunks

__all__ = ["MODES", "TopologyGatedAttention", "TopologyState", "next_state"]

#: mode names by code (``cache.inspect["mode"]`` holds the codes)
MODES = ("stable", "cautious", "freeze")


@dataclass(frozen=True)
class TopologyState:
    """The hysteresis state of :class:`TopologyGatedAttention`: each row's previous mode.

    Attributes
    ----------
    mode : ndarray (B,) int8
        Mode codes (0 stable, 1 cautious, 2 freeze), rows aligned with the next call's batch.
    """

    mode: np.ndarray

    def __post_init__(self) -> None:
        arr = np.asarray(self.mode)
        if arr.dtype.kind not in "iu" or (arr.size and (arr.min() < 0 or arr.max() > 2)):
            raise InvalidInputError("TopologyState.mode must hold integer mode codes 0, 1 or 2")
        arr = np.array(arr.reshape(-1), dtype=np.int8)
        arr.flags.writeable = False
        object.__setattr__(self, "mode", arr)

    @classmethod
    def initial(cls, batch_size: int) -> TopologyState:
        """Every row stable (what a call without a state assumes)."""
        return cls(np.zeros(int(batch_size), dtype=np.int8))

    def names(self) -> list[str]:
        """The modes by name."""
        return [MODES[int(m)] for m in self.mode]


def next_state(cache: AttentionCache) -> TopologyState:
    """The state to pass to the next call: the modes the call of ``cache`` chose."""
    if not isinstance(cache, AttentionCache) or "mode" not in cache.inspect or cache.mechanism != "topology_gated":
        raise InvalidInputError("next_state needs a cache returned by topology_gated's forward")
    return TopologyState(np.asarray(cache.inspect["mode"]))


def _float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or \
            not np.isfinite(float(value)):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    return float(value)


class TopologyGatedAttention(AttentionMechanism):
    """Scaled-dot attention whose mode (stable / cautious / freeze) follows the key window's coherence.

    Parameters
    ----------
    dim : int
        Query/key dimensionality ``d``.
    temperature : float
        Initial temperature ``tau`` (learned as ``log_temperature``; default 1).
    cautious_temperature : float
        Temperature multiplier of the cautious mode (``>= 1``, default 2).
    top_k : int
        Items the cautious mode attends (default 8).
    cautious_threshold, freeze_threshold : float
        Risk thresholds of the modes (default 0.35 and 0.5: about the 85th and the 99.8th
        percentile of the risk of the HNSW neighbourhood windows of the built-in ``clusters`` and
        ``hierarchical`` datasets; ``cautious <= freeze``; a threshold above 1 disables its mode,
        one at or below 0 forces it).
    hysteresis : float
        Margin below a threshold before a row leaves its mode (``>= 0``, default 0.05).
    metric_weights : 4 floats
        Weights of boundary mass, cut, disagreement and similarity variance in the risk
        (non-negative, not all zero; default ``(1, 1, 1, 1)``).
    dtype, seed
        See :class:`~ruvector_hnsw.attention.base.AttentionMechanism`.
    """

    name = "topology_gated"
    fused_gather = True
    checks_table_rows = True

    def __init__(
        self,
        dim: int,
        *,
        temperature: float = 1.0,
        cautious_temperature: float = 2.0,
        top_k: int = 8,
        cautious_threshold: float = 0.35,
        freeze_threshold: float = 0.5,
        hysteresis: float = 0.05,
        metric_weights: tuple[float, float, float, float] | list[float] = (1.0, 1.0, 1.0, 1.0),
        dtype: Any = np.float32,
        seed: int | None = None,
    ) -> None:
        super().__init__(dim, dtype=dtype, seed=seed)
        self.temperature = check_positive_float(temperature, "temperature")
        self.cautious_temperature = check_positive_float(cautious_temperature, "cautious_temperature")
        if self.cautious_temperature < 1.0:
            raise ConfigError(f"cautious_temperature must be >= 1, got {self.cautious_temperature}")
        self.top_k = check_positive_int(top_k, "top_k")
        self.cautious_threshold = _float(cautious_threshold, "cautious_threshold")
        self.freeze_threshold = _float(freeze_threshold, "freeze_threshold")
        if self.cautious_threshold > self.freeze_threshold:
            raise ConfigError(f"cautious_threshold ({self.cautious_threshold}) must be <= freeze_threshold "
                              f"({self.freeze_threshold})")
        self.hysteresis = check_positive_float(hysteresis, "hysteresis", allow_zero=True)
        if isinstance(metric_weights, (str, bytes)) or len(metric_weights) != 4:
            raise ConfigError(f"metric_weights must be 4 numbers, got {metric_weights!r}")
        mw = tuple(check_positive_float(v, "metric_weights entry", allow_zero=True) for v in metric_weights)
        if sum(mw) <= 0:
            raise ConfigError("metric_weights must not all be zero")
        self.metric_weights: tuple[float, float, float, float] = (mw[0], mw[1], mw[2], mw[3])
        self._params = {"log_temperature": np.array([np.log(self.temperature)], dtype=self.dtype)}

    # -- description ---------------------------------------------------------------------------
    @property
    def scale(self) -> float:
        """Current score factor ``1 / (sqrt(d) * tau)``."""
        return float(1.0 / (np.sqrt(self.dim) * np.exp(float(self._params["log_temperature"][0]))))

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(), "temperature": self.temperature,
            "cautious_temperature": self.cautious_temperature, "top_k": self.top_k,
            "cautious_threshold": self.cautious_threshold, "freeze_threshold": self.freeze_threshold,
            "hysteresis": self.hysteresis, "metric_weights": self.metric_weights,
        }

    # -- the call's state and query-side values ---------------------------------------------------
    def _extra(self, batch: AttentionBatch) -> dict[str, Any]:
        extra = {} if batch.context is None else batch.context.extra
        if not isinstance(extra, dict):
            raise InvalidInputError(f"context.extra must be a dict, got {type(extra).__name__}")
        return extra

    def _previous(self, batch: AttentionBatch) -> np.ndarray:
        st = self._extra(batch).get("topology_state")
        if st is None:
            return np.zeros(batch.B, dtype=np.int8)
        if not isinstance(st, TopologyState):
            raise InvalidInputError(
                f"context.extra['topology_state'] must be a TopologyState, got {type(st).__name__}")
        if st.mode.shape != (batch.B,):
            raise ShapeMismatchError(
                f"context.extra['topology_state'] holds {st.mode.shape[0]} rows, the batch has {batch.B}")
        return np.ascontiguousarray(st.mode)

    def _query_values(self, batch: AttentionBatch, dv: int) -> tuple[np.ndarray, bool]:
        """``(QV (B, dv), is_query)`` - the query-side values and whether they are the query itself."""
        qv = self._extra(batch).get("query_value")
        if qv is None:
            if dv != self.dim:
                raise DimensionMismatchError(
                    f"{self.name}: values have width {dv} != dim {self.dim}, so the query cannot serve as the "
                    "query-side value of frozen rows: pass context.extra['query_value'] (B, dv)")
            return batch.query, True
        arr = as_float_array(qv, "context.extra['query_value']", self.dtype, (1, 2))
        if batch.unbatched and arr.ndim == 1:
            arr = arr[None]
        if arr.shape != (batch.B, dv):
            raise ShapeMismatchError(
                f"context.extra['query_value'] must have shape {(batch.B, dv)}, got {arr.shape}")
        return arr, False

    # -- compute -------------------------------------------------------------------------------
    def _run(self, batch: AttentionBatch, need_readout: bool) -> tuple[Any, ...]:
        T, Vt, ids = batch.table_form()
        dv = (T if Vt is None else Vt).shape[1]
        prev = self._previous(batch)
        if need_readout:
            QV, is_query = self._query_values(batch, dv)
        else:
            QV, is_query = np.zeros((batch.B, dv), dtype=self.dtype), False
        ctx = batch.context
        B, n = batch.mask.shape
        hops = None if ctx is None else ctx.hops
        dist = None if ctx is None else ctx.dist
        layer = None if ctx is None else ctx.layer
        flags = np.array([hops is not None, dist is not None, layer is not None])
        hops_a = np.zeros((B, n), dtype=np.int64) if hops is None else np.ascontiguousarray(hops, dtype=np.int64)
        dist_a = np.zeros((B, n), dtype=self.dtype) if dist is None else np.ascontiguousarray(dist, dtype=self.dtype)
        layer_a = np.zeros((B, n), dtype=np.int8) if layer is None else np.ascontiguousarray(layer, dtype=np.int8)
        Vtab = T if Vt is None else Vt
        q, mask = batch.query, batch.mask
        mw = np.array(self.metric_weights, dtype=np.float64)
        scale = self.scale
        args = (self.cautious_temperature, self.top_k, self.cautious_threshold, self.freeze_threshold,
                self.hysteresis, mw, need_readout)
        work = float(B) * n * (self.dim + dv + 20)
        parts = run_row_chunks(
            lambda lo, hi: tg_forward(q[lo:hi], T, Vtab, ids[lo:hi], mask[lo:hi], hops_a[lo:hi], dist_a[lo:hi],
                                      layer_a[lo:hi], flags, prev[lo:hi], QV[lo:hi], scale, *args),
            B, work,
        )
        R, W, sel, mode, metrics, row_scale, ok = join_row_chunks(parts)
        if not ok:
            self._raise_nonfinite_rows()
        return R, W, sel, mode, metrics, row_scale, is_query

    def _forward(self, batch: AttentionBatch) -> ForwardResult:
        R, W, sel, mode, metrics, row_scale, is_query = self._run(batch, True)
        inspect = {
            "mode": mode, "risk": metrics[:, 0], "boundary_mass": metrics[:, 1], "cut": metrics[:, 2],
            "disagreement": metrics[:, 3], "similarity_variance": metrics[:, 4],
        }
        return ForwardResult(R, (batch, W, sel, mode, row_scale, is_query), weights=W, inspect=inspect)

    def _weights(self, batch: AttentionBatch) -> np.ndarray:
        return self._run(batch, False)[1]

    def _backward(self, grad_out: np.ndarray, data: Any, input_grads: bool) -> dict[str, np.ndarray]:
        batch, W, sel, mode, row_scale, is_query = data
        T, Vt, ids = batch.table_form()
        assert Vt is not None
        dQ, dT, dV, dlt = tg_backward(batch.query, T, Vt, ids, sel, W, grad_out, row_scale, T.shape[0], input_grads)
        if is_query:
            frozen = mode == 2
            dQ[frozen] += grad_out[frozen]
        return {
            "log_temperature": np.array([dlt.sum()], dtype=self.dtype),
            "query": dQ,
            **self._input_grad_entries(batch, dT, dV, input_grads),
        }
