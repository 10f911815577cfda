"""Local/global attention split by HNSW layer and combined by a learned gate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ruvector_hnsw.attention._ops import grouped_attend, grouped_grads, grouped_pattern
from ruvector_hnsw.attention.base import (
    AttentionBatch,
    AttentionMechanism,
    Context,
    ForwardResult,
    check_positive_float,
    check_positive_int,
)
from ruvector_hnsw.errors import DimensionMismatchError, InvalidInputError

__all__ = ["LocalGlobalAttention", "LocalGlobalPattern"]


@dataclass
class LocalGlobalPattern:
    """The attention pattern of a :class:`LocalGlobalAttention` call.

    Attributes
    ----------
    local_weights : (B, n)
        Softmax weights over the local items (layer 0), zero elsewhere.
    global_weights : (B, n)
        Softmax weights over the global items (layer >= 1), zero elsewhere.
    gate : (B,)
        Effective share of the local read-out in the output (1 when only local items are
        present, 0 when only global ones or none).
    local_count, global_count : (B,) int
        Attended items per group.
    combined : (B, n)
        ``gate * local_weights + (1 - gate) * global_weights`` = :meth:`weights`.
    """

    local_weights: np.ndarray
    global_weights: np.ndarray
    gate: np.ndarray
    local_count: np.ndarray
    global_count: np.ndarray
    combined: np.ndarray


def _sigmoid(z: np.ndarray) -> np.ndarray:
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


class LocalGlobalAttention(AttentionMechanism):
    """Two softmax attentions - over local items (``context.layer == 0``) and over global items
    (``layer >= 1``) - mixed by a learned gate.

    ``o_loc = sum_{j local} softmax(q_loc.k_j * s) v_j`` with ``q_loc = W_local q`` (likewise
    ``o_glob`` with ``W_global``), ``s = 1 / (sqrt(d) * temperature)``;
    ``g = sigmoid(w_gate . [o_loc, o_glob, q] + b_gate)``; ``out = g o_loc + (1 - g) o_glob``.
    When one group is empty the output is the other group's read-out alone (``g`` forced to
    1 or 0); fully masked row: zero output. Each item is scored once, by its own group's query,
    so the cost is ``O(k_local + k_global)`` per row (one scored pass and one read-out pass over
    the gathered rows, like ``scaled_dot``); large batches run in row chunks on the kernel pool,
    with the same result at any thread count. The pattern of a forward is in its cache:
    ``cache.weights`` (the combined weights) and ``cache.inspect`` (``local_weights``,
    ``global_weights``, ``gate``, ``local_count``, ``global_count``, as in
    :class:`LocalGlobalPattern`); :meth:`attention_pattern` computes it for any input.

    Parameters
    ----------
    dim : int
    value_dim : int, optional
        Width of the values (= output width); default ``dim``.
    temperature : float, default 1.0
    dtype, seed
        See :class:`~ruvector_hnsw.attention.base.AttentionMechanism`.

    Attributes
    ----------
    params : ``W_local (d, d)``, ``W_global (d, d)`` (initialised near the identity, so the
        mechanism starts as two scaled-dot attentions), ``w_gate (2*dv + d,)``, ``b_gate (1,)``.
    """

    name = "local_global"
    fused_gather = True
    checks_table_rows = True

    def __init__(
        self,
        dim: int,
        *,
        value_dim: int | None = None,
        temperature: float = 1.0,
        dtype: Any = np.float32,
        seed: int | None = None,
    ) -> None:
        super().__init__(dim, dtype=dtype, seed=seed)
        self.value_dim = check_positive_int(self.dim if value_dim is None else value_dim, "value_dim")
        self.temperature = check_positive_float(temperature, "temperature")
        rng = self._rng()
        d, dv, dt = self.dim, self.value_dim, self.dtype
        eye = np.eye(d)
        self._params = {
            "W_local": np.ascontiguousarray(eye + 0.02 * rng.standard_normal((d, d)) / np.sqrt(d), dtype=dt),
            "W_global": np.ascontiguousarray(eye + 0.02 * rng.standard_normal((d, d)) / np.sqrt(d), dtype=dt),
            "w_gate": np.ascontiguousarray(0.01 * rng.standard_normal(2 * dv + d), dtype=dt),
            "b_gate": np.zeros(1, dtype=dt),
        }

    @property
    def scale(self) -> float:
        """Score factor ``1 / (sqrt(d) * temperature)``."""
        return float(1.0 / (np.sqrt(self.dim) * self.temperature))

    def required_context(self) -> tuple[str, ...]:
        return ("layer",)

    def check_value_dim(self, value_dim: int) -> None:
        if value_dim != self.value_dim:
            raise DimensionMismatchError(
                f"local_global: values have width {value_dim}, mechanism expects value_dim={self.value_dim}"
            )

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "value_dim": self.value_dim, "temperature": self.temperature}

    # ------------------------------------------------------------------------------------------
    def _groups(self, batch: AttentionBatch) -> np.ndarray:
        layer = batch.require("layer", self.name)
        return np.ascontiguousarray(np.where(batch.mask, (layer >= 1).astype(np.int8), np.int8(-1)))

    def _queries(self, q: np.ndarray) -> np.ndarray:
        p = self._params
        Qt = np.stack([q @ p["W_local"].T, q @ p["W_global"].T], axis=1)
        return np.ascontiguousarray(Qt, dtype=self.dtype)

    def _run(self, batch: AttentionBatch) -> tuple[Any, ...]:
        T, V, ids = batch.table_form()
        assert V is not None
        group = self._groups(batch)
        Qt = self._queries(batch.query)
        R, W, count, ok = grouped_attend(Qt, T, V, ids, group, self.scale)
        if not ok:
            self._raise_nonfinite_rows()
        has_l, has_g = count[:, 0] > 0, count[:, 1] > 0
        return group, Qt, R, W, has_l, has_g, count

    def _gate(self, R: np.ndarray, q: np.ndarray, has_l: np.ndarray, has_g: np.ndarray) -> tuple[Any, ...]:
        p = self._params
        dv = self.value_dim
        w = p["w_gate"]
        z = np.ascontiguousarray(R[:, 0]) @ w[:dv] + np.ascontiguousarray(R[:, 1]) @ w[dv : 2 * dv]
        z += q @ w[2 * dv :] + p["b_gate"][0]
        g = _sigmoid(z.astype(np.float64))
        both = has_l & has_g
        geff = np.where(both, g, np.where(has_l, 1.0, 0.0))
        return g, geff, both

    def _pattern(self, group: np.ndarray, W: np.ndarray, geff: np.ndarray, count: np.ndarray) -> LocalGlobalPattern:
        wl, wg, comb = grouped_pattern(group, W, np.ascontiguousarray(geff, dtype=np.float64))
        return LocalGlobalPattern(wl, wg, geff.astype(self.dtype), count[:, 0].copy(), count[:, 1].copy(), comb)

    def _forward(self, batch: AttentionBatch) -> ForwardResult:
        group, Qt, R, W, has_l, has_g, count = self._run(batch)
        g, geff, both = self._gate(R, batch.query, has_l, has_g)
        out = geff[:, None] * R[:, 0] + (1.0 - geff[:, None]) * R[:, 1]
        pat = self._pattern(group, W, geff, count)
        inspect = {
            "local_weights": pat.local_weights,
            "global_weights": pat.global_weights,
            "gate": pat.gate,
            "local_count": pat.local_count,
            "global_count": pat.global_count,
        }
        data = (batch, group, Qt, R, W, g, geff, both)
        return ForwardResult(np.ascontiguousarray(out, dtype=self.dtype), data, weights=pat.combined, inspect=inspect)

    def weights(
        self,
        query: Any,
        keys: Any,
        mask: Any = None,
        context: Context | None = None,
        ids: Any = None,
        values: Any = None,
    ) -> np.ndarray:
        """Combined weights ``gate * local + (1 - gate) * global`` ``(B, n)``; rows sum to 1.

        The gate reads the value read-outs, so the values are needed: pass ``values=``; when
        omitted the keys serve as values (the usual ``keys = values`` case), which requires
        ``value_dim == dim``.
        """
        if values is None:
            if self.value_dim != self.dim:
                raise InvalidInputError(
                    "local_global.weights needs values= (the gate reads the value read-outs and "
                    f"value_dim={self.value_dim} differs from dim={self.dim})"
                )
            values = keys
        return self.attention_pattern(query, keys, values, mask, context, ids).combined

    def _weights(self, batch: AttentionBatch) -> np.ndarray:  # pragma: no cover - weights() overridden
        return self._pattern_of(batch).combined

    def _pattern_of(self, batch: AttentionBatch) -> LocalGlobalPattern:
        group, _, R, W, has_l, has_g, count = self._run(batch)
        _, geff, _ = self._gate(R, batch.query, has_l, has_g)
        return self._pattern(group, W, geff, count)

    def attention_pattern(
        self,
        query: Any,
        keys: Any,
        values: Any,
        mask: Any = None,
        context: Context | None = None,
        ids: Any = None,
    ) -> LocalGlobalPattern:
        """The :class:`LocalGlobalPattern` (per-group weights, gate, counts) of these inputs."""
        batch, _, _, _ = self._prepare(query, keys, values, mask, context, ids)
        pat = self._pattern_of(batch)
        return _squeeze(pat) if batch.unbatched else pat

    def _backward(self, grad_out: np.ndarray, data: Any, input_grads: bool) -> dict[str, np.ndarray]:
        batch, group, Qt, R, W, g, geff, both = data
        T, Vt, ids = batch.table_form()
        assert Vt is not None
        p = self._params
        dv = self.value_dim
        q = batch.query
        w = p["w_gate"]
        o_l, o_g = R[:, 0], R[:, 1]
        dgeff = np.einsum("bk,bk->b", grad_out, o_l - o_g)
        dz = np.where(both, dgeff * g * (1.0 - g), 0.0)
        dR = np.empty_like(R)
        dR[:, 0] = geff[:, None] * grad_out + dz[:, None] * w[None, :dv]
        dR[:, 1] = (1.0 - geff[:, None]) * grad_out + dz[:, None] * w[None, dv : 2 * dv]
        dQt, dT, dV = grouped_grads(
            Qt, T, Vt, ids, group, W, np.ascontiguousarray(dR, dtype=self.dtype), self.scale, T.shape[0],
            input_grads,
        )
        dt = self.dtype
        dq = dz[:, None] * w[None, 2 * dv :] + dQt[:, 0] @ p["W_local"] + dQt[:, 1] @ p["W_global"]
        return {
            "W_local": np.ascontiguousarray(dQt[:, 0].T @ q, dtype=dt),
            "W_global": np.ascontiguousarray(dQt[:, 1].T @ q, dtype=dt),
            "w_gate": np.ascontiguousarray(np.concatenate([dz @ o_l, dz @ o_g, dz @ q]), dtype=dt),
            "b_gate": np.array([dz.sum()], dtype=dt),
            "query": np.ascontiguousarray(dq, dtype=dt),
            **self._input_grad_entries(batch, dT, dV, input_grads),
        }


def _squeeze(p: LocalGlobalPattern) -> LocalGlobalPattern:
    return LocalGlobalPattern(
        p.local_weights[0], p.global_weights[0], p.gate[0], p.local_count[0], p.global_count[0], p.combined[0]
    )
