"""Linear attention: Performer FAVOR+ positive orthogonal random features."""

from __future__ import annotations

from typing import Any

import numpy as np

from ruvector_hnsw.attention._kernels import favor_backward, favor_forward
from ruvector_hnsw.attention.base import (
    AttentionBatch,
    AttentionMechanism,
    ForwardResult,
    check_positive_float,
    check_positive_int,
)
from ruvector_hnsw.errors import ConfigError

__all__ = ["LinearAttention", "orthogonal_gaussian_features"]


def orthogonal_gaussian_features(num_features: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """``(num_features, dim)`` rows, orthogonal within blocks of ``dim``, norms chi-distributed.

    Each block is the Q factor of a Gaussian matrix (so rows are exactly orthogonal) with its rows
    rescaled to the norms of independent Gaussian vectors: marginally every row is ``N(0, I)``,
    which keeps the FAVOR+ estimator unbiased while lowering its variance.
    """
    blocks = []
    left = num_features
    while left > 0:
        G = rng.standard_normal((dim, dim))
        q, r = np.linalg.qr(G)
        q = q * np.sign(np.diag(r))[None, :]  # Haar-distributed
        norms = np.linalg.norm(rng.standard_normal((dim, dim)), axis=1)
        blocks.append((q.T * norms[:, None])[: min(left, dim)])
        left -= dim
    return np.concatenate(blocks, axis=0)


class LinearAttention(AttentionMechanism):
    """Performer FAVOR+ attention: ``exp(q.k)`` estimated by positive random features.

    With ``x = q / (d^(1/4) sqrt(T))``, ``y = k / (d^(1/4) sqrt(T))`` and features
    ``phi(x)_i = exp(w_i.x - |x|^2/2) / sqrt(m)``, ``E[phi(x).phi(y)] = exp(x.y)`` =
    ``exp(q.k / (sqrt(d) T))``, the scaled_dot kernel. The estimate
    ``sum_j phi(q).phi(k_j) v_j / sum_j phi(q).phi(k_j)`` approaches ``scaled_dot`` as
    ``num_features`` grows. It is evaluated in the log domain (a softmax over feature x item
    pairs), so it is finite for inputs of any scale. Fully masked row: zero output.

    The random features are drawn once from ``seed`` (orthogonal blocks by default) and are not
    trained (``params`` is empty); ``backward`` gives the input gradients. Cost per row is
    ``O(m n d)``: linear in ``n`` - the gain over softmax attention comes when many queries
    share one key set.

    Parameters
    ----------
    dim : int
    num_features : int, default 64
        Number ``m`` of random features.
    temperature : float, default 1.0
    orthogonal : bool, default True
        Orthogonal random features (FAVOR+); False draws i.i.d. Gaussian rows.
    dtype, seed
        See :class:`~ruvector_hnsw.attention.base.AttentionMechanism`.
    """

    name = "linear"
    fused_gather = True
    checks_table_rows = True

    def __init__(
        self,
        dim: int,
        *,
        num_features: int = 64,
        temperature: float = 1.0,
        orthogonal: bool = True,
        dtype: Any = np.float32,
        seed: int | None = None,
    ) -> None:
        super().__init__(dim, dtype=dtype, seed=seed)
        self.num_features = check_positive_int(num_features, "num_features")
        self.temperature = check_positive_float(temperature, "temperature")
        if not isinstance(orthogonal, (bool, np.bool_)):
            raise ConfigError(f"orthogonal must be a bool, got {orthogonal!r}")
        self.orthogonal = bool(orthogonal)
        rng = self._rng()
        if self.orthogonal:
            feats = orthogonal_gaussian_features(self.num_features, self.dim, rng)
        else:
            feats = rng.standard_normal((self.num_features, self.dim))
        self.features = np.ascontiguousarray(feats, dtype=self.dtype)

    @property
    def input_scale(self) -> float:
        """``c = 1 / (d^(1/4) sqrt(temperature))`` applied to queries and keys."""
        return float(1.0 / (self.dim**0.25 * np.sqrt(self.temperature)))

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "num_features": self.num_features,
            "temperature": self.temperature,
            "orthogonal": self.orthogonal,
        }

    def _run(self, batch: AttentionBatch, values: np.ndarray | None, need_weights: bool) -> tuple[Any, ...]:
        T, Vt, ids = batch.table_form()
        c = self.input_scale
        X = np.ascontiguousarray(batch.query * c, dtype=self.dtype)
        V = Vt if values is None else values
        out, Wt, ok = favor_forward(X, T, V, ids, batch.mask, self.features, c, need_weights)
        if not ok:
            self._raise_nonfinite_rows()
        return out, Wt, X

    def _forward(self, batch: AttentionBatch) -> ForwardResult:
        out, _, X = self._run(batch, None, False)
        # the weights are not needed by backward: computed only when cache.weights is read
        return ForwardResult(out, (batch, X), weights=lambda: self._weights(batch))

    def _weights(self, batch: AttentionBatch) -> np.ndarray:
        T, _, _ = batch.table_form()
        dummy = np.zeros((T.shape[0], 1), dtype=self.dtype)
        _, Wt, _ = self._run(batch, dummy, True)
        return Wt

    def _backward(self, grad_out: np.ndarray, data: Any, input_grads: bool) -> dict[str, np.ndarray]:
        batch, X = data
        T, Vt, ids = batch.table_form()
        c = self.input_scale
        dX, dK, dV = favor_backward(
            X, T, Vt, ids, batch.mask, self.features, c, grad_out, T.shape[0], input_grads
        )
        return {
            "query": np.ascontiguousarray(dX * c, dtype=self.dtype),
            **self._input_grad_entries(batch, dK, dV, input_grads),
        }
