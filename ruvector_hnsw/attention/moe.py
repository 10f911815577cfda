"""Mixture of attention experts with a learned top-k router (``moe``).

Experts (all read out in value space, width ``dv``):

* ``"local"``        - scaled-dot attention restricted to layer-0 items (``context.layer == 0``);
* ``"global"``       - scaled-dot attention restricted to items linked on layers ``>= 1``;
* ``"hierarchical"`` - Poincare-ball attention (``hyperbolic`` with ``input_map="expmap"``,
  ``output="tangent"``, ``input_scale=1/sqrt(dim)`` - so standardised vectors of norm about
  ``sqrt(dim)`` land inside the ball): hyperbolic-distance weights, tangent-space mean of the
  values mapped back to value units (the weighted mean itself for values inside the ball);
  the scale is learned;
* ``"structural"``   - GATv2 edge-featured attention (``edge_featured`` with
  ``project_values=False``; features from dist/layer/degree).

Routing::

    p     = softmax(q W_r + b_r)                      (over all E experts)
    S     = top-k of p among the experts *available* for the row
    g_e   = p_e / sum_{e' in S} p_e'  (e in S), 0 otherwise
    out   = sum_{e in S} g_e y_e(q, keys, values)

An expert is available for a row when its (sub-)mask has at least one item (so ``local`` is
skipped for a row without layer-0 items); a fully masked row has no expert, zero weights and a
zero output. Each expert only runs on the rows that selected it.

Load balance (Switch-Transformer style, normalised to 1 for perfect balance)::

    load_balance = E * sum_e f_e P_e,  f_e = share of the (row, slot) assignments that went to e,
                                       P_e = mean_b p_{b,e}

A forward's load-balance loss is ``cache.aux_losses["load_balance"]``, its gates ``g`` and router
probabilities ``p`` are ``cache.inspect["gates"]`` / ``cache.inspect["router_probs"]`` ``(B, E)``
and ``cache.weights`` is the gate-weighted sum of the selected experts' weights ``(B, n)``
(the same as :meth:`weights`). :meth:`backward` returns the gradients of
``sum(grad_out * out) + aux_weight * load_balance`` (``f`` and the top-k choice are constants).
Expert params appear in :attr:`params` as ``"<expert>.<name>"`` (the experts' own arrays).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from ruvector_hnsw.attention._partb_common import masked_softmax, softmax_backward
from ruvector_hnsw.attention.base import (
    AttentionBatch,
    AttentionMechanism,
    Context,
    ForwardResult,
    check_positive_float,
    check_positive_int,
)
from ruvector_hnsw.errors import ConfigError

__all__ = ["EXPERTS", "MoEAttention"]

#: expert kinds understood by :class:`MoEAttention`
EXPERTS = ("local", "global", "hierarchical", "structural")

_CTX_FIELDS = ("dist", "layer", "edge_features", "hops", "degree", "node_ids")


def _ctx_rows(ctx: Context | None, rows: np.ndarray) -> Context | None:
    if ctx is None:
        return None
    upd = {f: getattr(ctx, f)[rows] for f in _CTX_FIELDS if getattr(ctx, f) is not None}
    return replace(ctx, **upd)


class MoEAttention(AttentionMechanism):
    """Learned top-k routing over local / global / hierarchical / structural attention experts.

    Parameters
    ----------
    dim : int
        Query/key dimensionality ``d``.
    experts : sequence of str
        Expert kinds from :data:`EXPERTS` (default all four, in that order; no repeats).
    top_k : int
        Experts per row (default 2, at most ``len(experts)``).
    aux_weight : float
        Weight of the load-balance loss in :meth:`backward` (default 0.01; 0 disables it).
    expert_config : dict, optional
        Extra constructor kwargs per expert kind, e.g.
        ``{"hierarchical": {"curvature": -0.5}, "structural": {"hidden": 16}}``.
    dtype, seed
        See :class:`~ruvector_hnsw.attention.base.AttentionMechanism`.

    Params: ``router_W (d, E)``, ``router_b (E,)`` and every expert's params (prefixed).
    """

    name = "moe"
    fused_gather = True
    #: every expert's kernel flags NaN/inf in the table rows it reads (rows no selected expert
    #: reads cannot change the output and are not scanned)
    checks_table_rows = True

    def __init__(
        self,
        dim: int,
        *,
        experts: tuple[str, ...] | list[str] = EXPERTS,
        top_k: int = 2,
        aux_weight: float = 0.01,
        expert_config: dict[str, dict[str, Any]] | None = None,
        dtype: Any = np.float32,
        seed: int | None = None,
    ) -> None:
        super().__init__(dim, dtype=dtype, seed=seed)
        if isinstance(experts, str):
            raise ConfigError(f"experts must be a sequence of names from {EXPERTS}, got {experts!r}")
        names = tuple(experts)
        if not names or any(e not in EXPERTS for e in names) or len(set(names)) != len(names):
            raise ConfigError(f"experts must be distinct names from {EXPERTS}, got {names!r}")
        self.experts = names
        self.top_k = check_positive_int(top_k, "top_k", maximum=len(names))
        self.aux_weight = check_positive_float(aux_weight, "aux_weight", allow_zero=True)
        cfg = dict(expert_config or {})
        unknown = set(cfg) - set(names)
        if unknown:
            raise ConfigError(f"expert_config names experts not in use: {sorted(unknown)}")
        self.expert_config = cfg
        self._experts: dict[str, AttentionMechanism] = {}
        for i, e in enumerate(names):
            eseed = None if self.seed is None else self.seed * 1009 + i + 1
            self._experts[e] = self._make_expert(e, eseed, cfg.get(e, {}))
        E = len(names)
        rng = self._rng()
        self._params = {
            "router_W": (rng.standard_normal((self.dim, E)) / np.sqrt(self.dim)).astype(self.dtype),
            "router_b": np.zeros(E, dtype=self.dtype),
        }
        for e, mech in self._experts.items():
            for k, v in mech.params.items():
                self._params[f"{e}.{k}"] = v

    def _make_expert(self, kind: str, seed: int | None, extra: dict[str, Any]) -> AttentionMechanism:
        kw: dict[str, Any] = {"dtype": self.dtype, "seed": seed}
        if kind in ("local", "global"):
            from ruvector_hnsw.attention.scaled_dot import ScaledDotAttention

            return ScaledDotAttention(self.dim, **kw, **extra)
        if kind == "hierarchical":
            from ruvector_hnsw.attention.hyperbolic import HyperbolicAttention

            kw.update(input_map="expmap", output="tangent", input_scale=1.0 / np.sqrt(self.dim))
            kw.update(extra)
            return HyperbolicAttention(self.dim, **kw)
        from ruvector_hnsw.attention.edge_featured import EdgeFeaturedAttention

        kw.update(project_values=False)
        kw.update(extra)
        return EdgeFeaturedAttention(self.dim, **kw)

    @property
    def expert_mechanisms(self) -> dict[str, AttentionMechanism]:
        """The expert instances by kind."""
        return dict(self._experts)

    # -- description ---------------------------------------------------------------------------
    def required_context(self) -> tuple[str, ...]:
        need: list[str] = []
        if "local" in self.experts or "global" in self.experts:
            need.append("layer")
        if "structural" in self.experts:
            for f in self._experts["structural"].required_context():
                if f not in need:
                    need.append(f)
        return tuple(need)

    def output_dim(self, value_dim: int) -> int:
        return value_dim

    def get_config(self) -> dict[str, Any]:
        cfg = super().get_config()
        cfg.update(experts=self.experts, top_k=self.top_k, aux_weight=self.aux_weight,
                   expert_config=self.expert_config)
        return cfg

    # -- routing -------------------------------------------------------------------------------
    def _expert_masks(self, batch: AttentionBatch) -> list[np.ndarray]:
        masks = []
        for e in self.experts:
            if e == "local":
                masks.append(batch.mask & (batch.require("layer", self.name) == 0))
            elif e == "global":
                masks.append(batch.mask & (batch.require("layer", self.name) >= 1))
            else:
                masks.append(batch.mask)
        return masks

    def _route(self, batch: AttentionBatch, masks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return router probs ``p (B, E)``, selection ``sel (B, E)`` bool and gates ``g (B, E)``."""
        q = batch.query
        B, E = q.shape[0], len(self.experts)
        logits = q @ self._params["router_W"] + self._params["router_b"]
        p = masked_softmax(logits, np.ones((B, E), dtype=bool))
        avail = np.stack([m.any(axis=1) for m in masks], axis=1)
        ranked = np.where(avail, p, -1.0)
        order = np.argsort(-ranked, axis=1, kind="stable")[:, : self.top_k]
        sel = np.zeros((B, E), dtype=bool)
        np.put_along_axis(sel, order, True, axis=1)
        sel &= avail
        ps = np.where(sel, p, 0.0)
        tot = ps.sum(axis=1, keepdims=True)
        g = ps / np.where(tot > 0, tot, 1.0)
        return p, sel, g

    @staticmethod
    def _sub_batch(batch: AttentionBatch, rows: np.ndarray, mask: np.ndarray) -> AttentionBatch:
        """The rows ``rows`` of ``batch`` with the expert's mask (tables stay tables)."""
        if rows.size == batch.B:
            return replace(batch, mask=mask, unbatched=False)
        gather = batch.ids is not None
        return AttentionBatch(
            query=batch.query[rows],
            keys=batch.keys if gather else batch.keys[rows],
            values=None if batch.values is None else (batch.values if gather else batch.values[rows]),
            mask=np.ascontiguousarray(mask[rows]),
            context=_ctx_rows(batch.context, rows),
            ids=None if batch.ids is None else batch.ids[rows],
            unbatched=False,
        )

    def _weights(self, batch: AttentionBatch) -> np.ndarray:
        masks = self._expert_masks(batch)
        _, sel, g = self._route(batch, masks)
        w = np.zeros((batch.B, batch.n), dtype=self.dtype)
        for i, e in enumerate(self.experts):
            rows = np.flatnonzero(sel[:, i])
            if rows.size == 0:
                continue
            we = self._experts[e]._weights(self._sub_batch(batch, rows, masks[i]))
            w[rows] += g[rows, i : i + 1] * we
        return w

    # -- compute -------------------------------------------------------------------------------
    def _forward(self, batch: AttentionBatch) -> ForwardResult:
        masks = self._expert_masks(batch)
        p, sel, g = self._route(batch, masks)
        B, E = p.shape
        assert batch.values is not None
        dv = batch.values.shape[-1]
        out = np.zeros((B, dv), dtype=self.dtype)
        w = np.zeros((B, batch.n), dtype=self.dtype)
        ys: list[tuple[np.ndarray, np.ndarray, Any] | None] = []
        for i, e in enumerate(self.experts):
            rows = np.flatnonzero(sel[:, i])
            if rows.size == 0:
                ys.append(None)
                continue
            res = self._experts[e]._forward(self._sub_batch(batch, rows, masks[i]))
            ys.append((rows, res.out, res.data))
            out[rows] += g[rows, i : i + 1] * res.out
            assert isinstance(res.weights, np.ndarray)  # the expert kinds keep their weights
            w[rows] += g[rows, i : i + 1] * res.weights
        total = int(sel.sum())
        f = sel.sum(axis=0) / total if total else np.zeros(E)
        P = p.mean(axis=0)
        load_balance = float(E * np.sum(f * P))
        return ForwardResult(
            out, (batch, p, sel, g, f, ys), weights=w, aux_losses={"load_balance": load_balance},
            aux_weights={"load_balance": self.aux_weight},
            inspect={"gates": g, "router_probs": p},
        )

    def _backward(self, grad_out: np.ndarray, data: Any, input_grads: bool) -> dict[str, np.ndarray]:
        batch, p, sel, g, f, ys = data
        B, E = p.shape
        q = batch.query
        dq = np.zeros_like(q, dtype=np.float64)
        if input_grads:
            assert batch.values is not None
            dK = np.zeros(batch.keys.shape)  # table (gather form) or (B, n, d)
            dV = np.zeros(batch.values.shape)
        grads: dict[str, np.ndarray] = {}
        dg = np.zeros((B, E))
        for i, e in enumerate(self.experts):
            mech = self._experts[e]
            for k in mech.params:
                grads[f"{e}.{k}"] = np.zeros_like(mech.params[k])
            if ys[i] is None:
                continue
            rows, y, ecache = ys[i]
            dg[rows, i] = np.sum(grad_out[rows] * y, axis=1)
            ge = mech._backward(
                np.ascontiguousarray(g[rows, i : i + 1] * grad_out[rows], dtype=self.dtype), ecache, input_grads
            )
            for k in mech.params:
                grads[f"{e}.{k}"] = ge[k]
            dq[rows] += ge["query"]
            if not input_grads:
                continue
            if batch.ids is not None:
                dK += ge["keys"]
                dV += ge["values"]
            else:
                dK[rows] += ge["keys"]
                dV[rows] += ge["values"]
        # gates g = p_sel / S  ->  router probs p
        S = np.sum(np.where(sel, p, 0.0), axis=1, keepdims=True)
        gdg = np.sum(g * dg, axis=1, keepdims=True)
        dp = np.where(sel, (dg - gdg) / np.where(S > 0, S, 1.0), 0.0)
        if self.aux_weight:
            dp = dp + self.aux_weight * E * f[None, :] / B
        dlog = softmax_backward(p, dp).astype(q.dtype)  # same dtype as q: BLAS matmuls
        grads["router_W"] = q.T @ dlog
        grads["router_b"] = dlog.sum(axis=0)
        dq += dlog @ self._params["router_W"].T
        grads["query"] = dq
        if input_grads:
            grads.update(keys=dK, values=dV)
        dt = self.dtype
        return {k: np.ascontiguousarray(v, dtype=dt) for k, v in grads.items()}
