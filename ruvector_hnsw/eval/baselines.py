"""``linear_proj``: the trivial learned baseline (a linear projection + alpha-QE).

The calibration baseline of issue 5: a plain linear map ``W`` (``p x d``, ``p = min(d, 64)``)
trained with the supervised multi-positive InfoNCE loss on cosine similarities
``cos(W q, W x)``, then an HNSW index over the projected (unit-norm) database, searched with
alpha query expansion in the projected space.  Whatever the attention rerankers gain must
clearly beat what this model gets from the same labels.

Training pools, loss and loop are those of :mod:`ruvector_hnsw.eval.contrastive` (shared with
``mlp_adapter``): each training query's HNSW top-``candidates``, ``extra_positives`` random
items of its label and ``random_negatives`` random labelled items; relevant = same label;
items with a negative ("unknown") training label take no part. ``W`` starts at the top-``p``
principal axes of the (normalised, for cosine) base vectors -- for ``p = d`` an orthogonal
matrix, so the untrained projection ranks exactly like cosine search -- and is trained with
Adam for a fixed number of epochs.

Inputs are normalised first when the metric is cosine; for ``l2``/``ip`` data the raw vectors
are projected (the projected space is always compared by cosine).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ruvector_hnsw.errors import ConfigError, NotFittedError
from ruvector_hnsw.eval.contrastive import (
    check_training_arrays,
    cosine_info_nce,
    embedding_index,
    fit_contrastive,
    projection_pools,
    training_candidates,
)
from ruvector_hnsw.eval.methods import (
    DEFAULT_ALPHA_QE,
    BuildContext,
    SearchMethod,
    _as_f32,
    _index_threads,
    _metric_of,
    register_method,
)
from ruvector_hnsw.eval.metrics import METRICS_ALIASES

__all__ = ["LinearProjection", "linear_proj_loss", "make_linear_proj", "projection_pools"]


def linear_proj_loss(
    W: np.ndarray,
    queries: np.ndarray,
    pool: np.ndarray,
    valid: np.ndarray,
    positives: np.ndarray,
    *,
    temperature: float,
) -> tuple[float, np.ndarray]:
    """Supervised InfoNCE of ``cos(W q, W x)`` over each query's pool, and its gradient in ``W``.

    Parameters
    ----------
    W : (p, d) float array
    queries : (B, d)
        (Normalised) query vectors.
    pool : (B, P, d)
        Pool item vectors (any values where ``valid`` is False).
    valid : (B, P) bool
        Existing pool slots.
    positives : (B, P) bool
        Relevant pool items.
    temperature : float

    Returns
    -------
    loss : float
        Mean over rows with at least one valid positive.
    grad : (p, d) array, dtype of ``W``
        ``dloss/dW``.
    """
    zq = queries @ W.T
    zc = pool @ W.T
    loss, gq, gc = cosine_info_nce(zq, zc, valid, positives, temperature=temperature)
    dW = gq.T @ queries + gc.reshape(-1, gc.shape[-1]).T @ pool.reshape(-1, pool.shape[-1])
    return loss, dW.astype(W.dtype, copy=False)


def _linear_loss_fn(params: Any, q: np.ndarray, items: np.ndarray, inv: np.ndarray, valid: np.ndarray,
                    pos: np.ndarray, temperature: float) -> tuple[float, dict[str, np.ndarray]]:
    loss, dW = linear_proj_loss(params["W"], q, items[inv], valid, pos, temperature=temperature)
    return loss, {"W": dW}


class LinearProjection:
    """A linear map ``x -> W x / |W x|`` trained with supervised InfoNCE.

    Parameters
    ----------
    dim : int
        Input dimension ``d``.
    out_dim : int, optional
        ``p`` (default ``min(d, 64)``).
    metric : {"cosine", "l2", "ip"}
        Input metric: cosine inputs are normalised before the projection.
    seed : int
        Seeds the pool sampling and the batch order.
    """

    def __init__(self, dim: int, out_dim: int | None = None, *, metric: str = "cosine", seed: int = 0) -> None:
        if isinstance(dim, bool) or int(dim) < 1:
            raise ConfigError(f"dim must be >= 1, got {dim!r}")
        self.dim = int(dim)
        self.out_dim = min(self.dim, 64) if out_dim is None else int(out_dim)
        if not 1 <= self.out_dim:
            raise ConfigError(f"out_dim must be >= 1, got {out_dim!r}")
        key = METRICS_ALIASES.get(str(metric).lower())
        if key is None:
            raise ConfigError(f"unknown metric {metric!r}; expected 'l2', 'ip' or 'cosine'")
        self.metric = key
        self.seed = int(seed)
        self.W: np.ndarray | None = None
        self.history: dict[str, list[float]] = {"train_loss": [], "epoch_time_s": []}

    def _prep(self, x: Any, name: str) -> np.ndarray:
        arr = _as_f32(x, name, self.dim)
        if self.metric == "cosine":
            arr = arr / np.maximum(np.linalg.norm(arr, axis=1, keepdims=True), 1e-12)
        return np.ascontiguousarray(arr, dtype=np.float32)

    def init_pca(self, base: Any) -> None:
        """Set ``W`` to the top-``p`` principal axes (uncentred second moment) of ``base``."""
        x = self._prep(base, "base").astype(np.float64)
        cov = x.T @ x / max(1, x.shape[0])
        vals, vecs = np.linalg.eigh(cov)
        top = np.argsort(-vals, kind="stable")[: self.out_dim]
        W = vecs[:, top].T
        if W.shape[0] < self.out_dim:  # more outputs than inputs: pad with seeded random rows
            extra = np.random.default_rng(self.seed).standard_normal((self.out_dim - W.shape[0], self.dim))
            W = np.concatenate([W, extra / np.sqrt(self.dim)])
        self.W = np.ascontiguousarray(W, dtype=np.float32)

    def transform(self, x: Any) -> np.ndarray:
        """Projected, unit-norm vectors ``(n, p)`` float32."""
        if self.W is None:
            raise NotFittedError("LinearProjection: call init_pca() or fit() first")
        z = self._prep(x, "vectors") @ self.W.T
        z /= np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
        return np.ascontiguousarray(z, dtype=np.float32)

    def fit(
        self,
        train_queries: Any,
        train_labels: Any,
        base: Any,
        base_labels: Any,
        candidates: Any,
        *,
        epochs: int = 10,
        batch_size: int = 128,
        lr: float = 5e-3,
        temperature: float = 0.1,
        extra_positives: int = 16,
        random_negatives: int = 48,
        weight_decay: float = 0.0,
    ) -> dict[str, list[float]]:
        """Train ``W`` (initialised by :meth:`init_pca` on ``base`` if unset).

        Parameters
        ----------
        train_queries : (nt, d)
        train_labels : (nt,)
        base : (N, d)
        base_labels : (N,)
            Label of base row ``i`` (pool ids are base rows).
        candidates : (nt, C) int
            Each training query's HNSW candidates in the original space (base rows, -1 pad).
        epochs, batch_size, lr, temperature, extra_positives, random_negatives, weight_decay
            Adam on the InfoNCE loss; pool composition as in the module docstring.

        Returns
        -------
        dict
            ``{"train_loss": [...], "epoch_time_s": [...]}`` per epoch.
        """
        q = self._prep(train_queries, "train_queries")
        x = self._prep(base, "base")
        ql, bl, cand = check_training_arrays(q, train_labels, x, base_labels, candidates)
        if isinstance(epochs, bool) or int(epochs) < 1 or int(batch_size) < 1:
            raise ConfigError(f"epochs and batch_size must be >= 1, got {epochs!r}, {batch_size!r}")
        if self.W is None:
            self.init_pca(base)
        assert self.W is not None
        params = {"W": self.W}
        self.history = fit_contrastive(
            _linear_loss_fn, params, q, x, ql, bl, cand, np.random.default_rng(self.seed), epochs=int(epochs),
            batch_size=int(batch_size), lr=lr, temperature=temperature, extra_positives=extra_positives,
            random_negatives=random_negatives, weight_decay=weight_decay)
        self.W = params["W"]
        return self.history


def make_linear_proj(
    ctx: BuildContext,
    *,
    out_dim: int | None = None,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 5e-3,
    temperature: float = 0.1,
    candidates: int = 100,
    extra_positives: int = 16,
    random_negatives: int = 48,
    n: int = DEFAULT_ALPHA_QE["n"],
    alpha: float = DEFAULT_ALPHA_QE["alpha"],
    n_train: int | None = None,
    seed: int | None = None,
    ef: int | None = None,
) -> SearchMethod:
    """Factory of ``linear_proj``: fit ``W`` on the training queries, index ``W x``, alpha-QE there.

    Training uses only the dataset's training queries (see
    :func:`ruvector_hnsw.eval.attention.training_data`); their HNSW candidates come from the
    run's shared index at ``ef = max(ctx.ef, candidates)``.  The projected index is built with
    the run's M / ef_construction / seed and searched at ``ef`` (default the run's).
    """
    from ruvector_hnsw.eval.attention import training_data

    seed = ctx.seed if seed is None else int(seed)
    tq, tl, base_labels, info = training_data(ctx.dataset, n_train, seed=seed)
    ds = ctx.dataset
    metric = _metric_of(ds)
    t0 = time.perf_counter()
    cand = training_candidates(ctx, tq, int(candidates))
    proj = LinearProjection(int(np.asarray(ds.base).shape[1]), out_dim, metric=metric, seed=seed)
    history = proj.fit(tq, tl, ds.base, base_labels, cand, epochs=epochs, batch_size=batch_size, lr=lr,
                       temperature=temperature, extra_positives=extra_positives, random_negatives=random_negatives)
    fit_s = time.perf_counter() - t0
    z = proj.transform(ds.base)
    index, inner, index_s = embedding_index(ctx, z, seed=seed, ef=ef, qe=True, n=n, alpha=alpha)
    ef_used = int(index.ef)

    def search(queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        return inner(proj.transform(queries), int(k))

    params: dict[str, Any] = {
        **info,
        "out_dim": proj.out_dim,
        "epochs": int(epochs),
        "lr": lr,
        "temperature": temperature,
        "candidates": int(candidates),
        "ef": ef_used,
        "n": int(n),
        "alpha": float(alpha),
        "fit_s": round(fit_s, 3),
        "index_build_s": round(index_s, 3),
        "epoch_time_s": [round(t, 3) for t in history["epoch_time_s"]],
        "train_loss": [round(v, 5) for v in history["train_loss"]],
    }
    method = SearchMethod(name="linear_proj", fn=search, threads=_index_threads(index), params=params)
    method.projection = proj  # type: ignore[attr-defined]
    return method


register_method("linear_proj", make_linear_proj, overwrite=True)
