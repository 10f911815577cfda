"""The encoder stage: attention over a graph context, a linear map and unit normalisation.

For a standardised vector ``u`` with a context of items ``U[ids]`` (its graph neighbourhood for a
database row, its best HNSW candidates plus hub links for a query) the encoder computes::

    a, cache = Att.forward(u, keys=U, values=U, ids=ids, mask, context)   # any attention mechanism
    z = W_u u + W_a a ;   zhat = z / ||z||                                # (p,) code

Everything is pure: :meth:`ContextEncoder.encode` returns an :class:`EncodedBatch` holding the
attention's own cache, and :meth:`ContextEncoder.backward` turns ``dL/dzhat`` into parameter
gradients from it, without re-running any forward (attention protocol v2). The projection is a
BLAS product; BLAS sums small matrices in another order than large ones, so callers that need a
row's code to be independent of its batch (the database codes) encode fixed-size blocks
(:data:`ruvector_hnsw.search.state.ENCODE_BLOCK`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ruvector_hnsw.attention import AttentionMechanism, Context

__all__ = ["ContextEncoder", "EncodedBatch"]

_EPS = 1e-12


@dataclass(frozen=True)
class EncodedBatch:
    """What :meth:`ContextEncoder.encode` returns and :meth:`ContextEncoder.backward` needs."""

    zhat: np.ndarray      #: (B, p) unit rows
    norm: np.ndarray      #: (B, 1) ``||z||``
    u: np.ndarray         #: (B, d) the encoded vectors
    a: np.ndarray         #: (B, d_out) attention read-out
    att_cache: Any        #: the mechanism's forward cache


class ContextEncoder:
    """Attention over a context + linear map + normalisation (the trainable part of the codes).

    Parameters
    ----------
    mechanism : AttentionMechanism
        The attention; its params are trained too (exposed as ``"att.<name>"``).
    dim : int
        Input dimensionality ``d``.
    latent_dim : int
        Code width ``p``.
    init : ndarray, optional
        ``(p, d)`` initial ``W_u``; ``W_a`` starts equal to it, so the untrained code is a
        projection of ``u + a``. Default: seeded random orthonormal rows.
    seed : int
        Seed of the random initialisation.
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
            rng = np.random.default_rng(int(seed))
            g = rng.standard_normal((max(self.latent_dim, dim), dim))
            qmat, _ = np.linalg.qr(g.T)  # orthonormal columns
            init = qmat.T[: self.latent_dim]
        w_u = np.ascontiguousarray(init, dtype=self.dtype)
        w_a = np.zeros((self.latent_dim, d_out), dtype=self.dtype)
        w_a[:, : min(d_out, dim)] = w_u[:, : min(d_out, dim)]
        self.own: dict[str, np.ndarray] = {"W_u": w_u, "W_a": w_a}

    @property
    def params(self) -> dict[str, np.ndarray]:
        """Every trainable array (``W_u``, ``W_a`` and ``att.*``); views updated in place."""
        out = dict(self.own)
        for k, v in self.mechanism.params.items():
            out[f"att.{k}"] = v
        return out

    def prepare_table(self, table: np.ndarray) -> Any:
        """The mechanism's explicit per-table state (e.g. dual_space's latent neighbours), or None."""
        return self.mechanism.prepare_table(table)

    def encode(self, u: np.ndarray, table: np.ndarray, ids: np.ndarray, mask: np.ndarray,
               context: Context | None) -> EncodedBatch:
        """Encode rows ``u`` (B, d) attending over ``table[ids]`` (ids -1 = padding); pure."""
        a, cache = self.mechanism.forward(u, table, table, mask=mask, context=context, ids=ids)
        a = np.ascontiguousarray(a, dtype=self.dtype)
        uu = np.ascontiguousarray(u, dtype=self.dtype)
        z = uu @ self.own["W_u"].T + a @ self.own["W_a"].T
        norm = np.sqrt((z * z).sum(axis=1, keepdims=True)) + self.dtype.type(_EPS)
        return EncodedBatch(zhat=(z / norm).astype(self.dtype, copy=False), norm=norm, u=uu, a=a, att_cache=cache)

    def backward(self, enc: EncodedBatch, grad_zhat: np.ndarray, grads: dict[str, np.ndarray]) -> None:
        """Accumulate the parameter gradients of ``enc`` given ``dL/dzhat`` into ``grads`` (pure)."""
        zhat = enc.zhat
        g = np.asarray(grad_zhat, dtype=self.dtype)
        gz = (g - zhat * (zhat * g).sum(axis=1, keepdims=True)) / enc.norm
        grads["W_u"] += gz.T @ enc.u
        grads["W_a"] += gz.T @ enc.a
        if not self.mechanism.params:
            return
        grad_a = np.ascontiguousarray(gz @ self.own["W_a"], dtype=self.mechanism.dtype)
        att_grads = self.mechanism.backward(enc.att_cache, grad_a, input_grads=False)
        for k in self.mechanism.params:
            grads[f"att.{k}"] += att_grads[k]

    def zero_grads(self) -> dict[str, np.ndarray]:
        """A zero gradient for every param."""
        return {k: np.zeros_like(v) for k, v in self.params.items()}
