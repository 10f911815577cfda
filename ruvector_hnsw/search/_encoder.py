"""The trainable part of attention-aware search: a graph-context encoder and a residual scorer.

For a vector ``u`` (standardised) with a context of items ``U[ids]`` (its graph neighbourhood for
a database node, its HNSW candidates for a query) the encoder computes::

    a = Att(u, keys=U, values=U, ids=ids, mask, context)   # any mechanism of attention.MECHANISMS
    z = W_u u + W_a a ;   zhat = z / ||z||                 # (p,) latent representation

and the score of database item ``v`` for query ``q`` is the residual form::

    s(q, v) = beta * base(q, v) + alpha * <zhat_q, zhat_v>,   base = -dist(q, v) / s0

with ``alpha = 0`` and ``beta = 1`` at initialisation, so an untrained model ranks exactly like
the index. Every step has an analytic backward (the attention's own, then the linear maps, the
normalisation and the score); the class is checked against finite differences in float64.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ruvector_hnsw.attention import Context
from ruvector_hnsw.attention.base import AttentionCache, AttentionMechanism

__all__ = ["ContextEncoder", "EncodedBatch"]

_EPS = 1e-12


@dataclass
class EncodedBatch:
    """What :meth:`ContextEncoder.encode` returns and its backward needs."""

    zhat: np.ndarray      # (B, p) unit rows
    norm: np.ndarray      # (B, 1) ||z||
    u: np.ndarray         # (B, d)
    a: np.ndarray         # (B, d_out) attention read-out
    cache: AttentionCache  # the attention forward's cache, for backward


class ContextEncoder:
    """Attention over a context + linear map + normalisation, with the residual score's scalars.

    Parameters
    ----------
    mechanism : AttentionMechanism
        The attention; its params are trained too (exposed as ``"att.<name>"``).
    dim : int
        Input dimensionality ``d``.
    latent_dim : int
        Output dimensionality ``p``.
    init : ndarray, optional
        ``(p, d)`` initial ``W_u`` (e.g. PCA directions); ``W_a`` starts equal to it, so the
        untrained latent code is a projection of ``u + a``.
    seed : int
        Seed of the random initialisation when ``init`` is not given.
    dtype : float32 or float64
        float64 is the finite-difference test path.
    """

    def __init__(self, mechanism: AttentionMechanism, dim: int, latent_dim: int, *,
                 init: np.ndarray | None = None, seed: int = 0, dtype: Any = np.float32) -> None:
        self.mechanism = mechanism
        self.dim = int(dim)
        self.latent_dim = int(latent_dim)
        self.dtype = np.dtype(dtype)
        d_out = mechanism.output_dim(dim)
        if init is None:
            rng = np.random.default_rng(seed)
            g = rng.standard_normal((max(self.latent_dim, dim), dim))
            qmat, _ = np.linalg.qr(g.T)  # orthonormal columns
            init = qmat.T[: self.latent_dim]
        w_u = np.ascontiguousarray(init, dtype=self.dtype)
        w_a = np.zeros((self.latent_dim, d_out), dtype=self.dtype)
        w_a[:, : min(d_out, dim)] = w_u[:, : min(d_out, dim)]
        self.own: dict[str, np.ndarray] = {
            "W_u": w_u,
            "W_a": w_a,
            "alpha": np.zeros(1, dtype=self.dtype),
            "beta": np.ones(1, dtype=self.dtype),
        }
        #: the mechanism's per-table state (``prepare_table``) and the table shape it was built for
        self.table_state: Any = None
        self._state_shape: tuple[int, ...] | None = None

    # ------------------------------------------------------------------ params
    @property
    def params(self) -> dict[str, np.ndarray]:
        """Every trainable array (the encoder's own and ``att.*``); views updated in place."""
        out = dict(self.own)
        for k, v in self.mechanism.params.items():
            out[f"att.{k}"] = v
        return out

    @property
    def alpha(self) -> float:
        """Weight of the learned term in the score (0 for an untrained model)."""
        return float(self.own["alpha"][0])

    # ------------------------------------------------------------------ encoding
    def prepare_table(self, table: np.ndarray) -> None:
        """(Re)build the mechanism's per-table state for ``table`` (dual_space: its latent index).

        Called when the codes are refreshed; :meth:`encode` calls it too when the table's shape
        changed since (e.g. after adds).
        """
        self.table_state = self.mechanism.prepare_table(table)
        self._state_shape = tuple(np.shape(table))

    def encode(self, u: np.ndarray, table: np.ndarray, ids: np.ndarray, mask: np.ndarray,
               context: Context | None) -> EncodedBatch:
        """Encode rows ``u`` (B, d) attending over ``table[ids]`` (ids -1 = padding)."""
        if self._state_shape != tuple(np.shape(table)):
            self.prepare_table(table)
        context = replace(context or Context(), table_state=self.table_state)
        out, cache = self.mechanism.forward(u, table, table, mask=mask, context=context, ids=ids)
        a = np.asarray(out, dtype=self.dtype)
        z = u @ self.own["W_u"].T + a @ self.own["W_a"].T
        norm = np.sqrt((z * z).sum(axis=1, keepdims=True)) + _EPS
        return EncodedBatch(zhat=(z / norm).astype(self.dtype, copy=False), norm=norm, u=u, a=a, cache=cache)

    def backward(self, enc: EncodedBatch, grad_zhat: np.ndarray, grads: dict[str, np.ndarray]) -> None:
        """Accumulate parameter gradients of ``enc`` given ``dL/dzhat`` into ``grads``.

        Uses the attention cache kept in ``enc``: any number of encodes may happen in between.
        """
        zhat = enc.zhat
        gz = (grad_zhat - zhat * (zhat * grad_zhat).sum(axis=1, keepdims=True)) / enc.norm
        grads["W_u"] += gz.T @ enc.u
        grads["W_a"] += gz.T @ enc.a
        grad_a = gz @ self.own["W_a"]
        if not self.mechanism.params:
            return
        att_grads = self.mechanism.backward(
            enc.cache, grad_a.astype(self.mechanism.dtype, copy=False), input_grads=False
        )
        for k in self.mechanism.params:
            grads[f"att.{k}"] += att_grads[k]

    def zero_grads(self) -> dict[str, np.ndarray]:
        """A zero gradient for every param."""
        return {k: np.zeros_like(v) for k, v in self.params.items()}

    # ------------------------------------------------------------------ scores
    def scores(self, base: np.ndarray, zq: np.ndarray, zv: np.ndarray) -> np.ndarray:
        """``beta * base + alpha * <zq_b, zv_bc>`` for ``base`` (B, C), ``zq`` (B, p), ``zv`` (B, C, p)."""
        sim = np.einsum("bp,bcp->bc", zq, zv)
        return self.own["beta"][0] * base + self.own["alpha"][0] * sim

    def scores_backward(self, base: np.ndarray, zq: np.ndarray, zv: np.ndarray, grad_s: np.ndarray,
                        grads: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Accumulate ``alpha``/``beta`` grads; return ``(dL/dzq (B,p), dL/dzv (B,C,p))``."""
        sim = np.einsum("bp,bcp->bc", zq, zv)
        grads["alpha"] += (grad_s * sim).sum()
        grads["beta"] += (grad_s * base).sum()
        alpha = self.own["alpha"][0]
        gzq = alpha * np.einsum("bc,bcp->bp", grad_s, zv)
        gzv = alpha * grad_s[:, :, None] * zq[:, None, :]
        return gzq, gzv
