"""``linear_proj``: the trivial learned baseline (a linear projection + alpha-QE).

The calibration baseline of issue 5: a plain linear map ``W`` (``p x d``, ``p = min(d, 64)``)
trained with the supervised multi-positive InfoNCE loss on cosine similarities
``cos(W q, W x)``, then an HNSW index over the projected (unit-norm) database, searched with
alpha query expansion in the projected space.  Whatever the attention rerankers gain must
clearly beat what this model gets from the same labels.

Training pool of each training query (as in the attention trainer, so positives are not only
far items -- else the model would learn "far = relevant"):

- its HNSW top-``candidates`` in the original space (near items, relevant or not),
- ``extra_positives`` random items of its label (relevant items HNSW may have missed),
- ``random_negatives`` uniformly random items (mostly irrelevant, mostly far).

Relevant = same label.  Duplicates in a pool are dropped.  ``W`` starts at the top-``p``
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

from ruvector_hnsw.errors import ConfigError, NotFittedError, ShapeMismatchError
from ruvector_hnsw.eval.methods import (
    DEFAULT_ALPHA_QE,
    BuildContext,
    SearchMethod,
    _as_f32,
    _index_threads,
    _metric_of,
    make_alpha_qe,
    register_method,
)
from ruvector_hnsw.eval.metrics import METRICS_ALIASES
from ruvector_hnsw.threads import thread_limits
from ruvector_hnsw.training.losses import CosineSimilarity, info_nce
from ruvector_hnsw.training.optim import Adam

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
    sim_fn = CosineSimilarity(check_finite=False)
    sim = sim_fn.forward(zq, zc)
    sim = np.where(valid, sim, 0.0)
    loss, g = info_nce(sim, positives, temperature=temperature, candidate_mask=valid)
    grads = sim_fn.backward(g.astype(zq.dtype, copy=False))
    gc = grads["candidates"]
    dW = grads["query"].T @ queries + gc.reshape(-1, gc.shape[-1]).T @ pool.reshape(-1, pool.shape[-1])
    return float(loss), dW.astype(W.dtype, copy=False)


def _dedup_rows(ids: np.ndarray) -> np.ndarray:
    """Sort each row and replace repeated ids (and negatives) by -1."""
    s = np.sort(ids, axis=1)
    dup = np.zeros(s.shape, dtype=bool)
    dup[:, 1:] = s[:, 1:] == s[:, :-1]
    return np.where(dup | (s < 0), -1, s)


def projection_pools(
    candidates: np.ndarray,
    query_labels: np.ndarray,
    base_labels: np.ndarray,
    rng: np.random.Generator,
    *,
    extra_positives: int,
    random_negatives: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pools of item ids for a batch: candidates + random same-label items + random items.

    Returns
    -------
    pool : (B, P) int64, -1 padded (duplicates removed)
    valid : (B, P) bool
    positives : (B, P) bool (same label as the query)
    """
    B = candidates.shape[0]
    n = base_labels.shape[0]
    order = np.argsort(base_labels, kind="stable")
    sorted_lab = base_labels[order]
    extra = np.full((B, extra_positives), -1, dtype=np.int64)
    if extra_positives:
        lo = np.searchsorted(sorted_lab, query_labels, "left")
        hi = np.searchsorted(sorted_lab, query_labels, "right")
        cnt = hi - lo
        draw = (rng.random((B, extra_positives)) * np.maximum(cnt, 1)[:, None]).astype(np.int64)
        extra = np.where(cnt[:, None] > 0, order[np.minimum(lo[:, None] + draw, n - 1)], -1)
    rand = rng.integers(0, n, (B, random_negatives)).astype(np.int64)
    pool = _dedup_rows(np.concatenate([candidates.astype(np.int64), extra, rand], axis=1))
    valid = pool >= 0
    positives = valid & (base_labels[np.maximum(pool, 0)] == query_labels[:, None])
    return pool, valid, positives


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
        ql = np.asarray(train_labels).reshape(-1)
        bl = np.asarray(base_labels).reshape(-1)
        cand = np.asarray(candidates, dtype=np.int64)
        if ql.shape[0] != q.shape[0] or cand.ndim != 2 or cand.shape[0] != q.shape[0]:
            raise ShapeMismatchError(
                f"train_labels {ql.shape} and candidates {cand.shape} must have {q.shape[0]} rows")
        if bl.shape[0] != x.shape[0]:
            raise ShapeMismatchError(f"base_labels has {bl.shape[0]} entries for {x.shape[0]} base rows")
        if isinstance(epochs, bool) or int(epochs) < 1 or int(batch_size) < 1:
            raise ConfigError(f"epochs and batch_size must be >= 1, got {epochs!r}, {batch_size!r}")
        if self.W is None:
            self.init_pca(base)
        assert self.W is not None
        params = {"W": self.W}
        opt = Adam(params, lr=lr, weight_decay=weight_decay, max_grad_norm=10.0)
        rng = np.random.default_rng(self.seed)
        self.history = {"train_loss": [], "epoch_time_s": []}
        with thread_limits(1):  # small matmuls: more BLAS threads only fight on shared cores
            self._train(q, x, ql, bl, cand, params, opt, rng, int(epochs), int(batch_size), temperature,
                        extra_positives, random_negatives)
        self.W = params["W"]
        return self.history

    def _train(self, q: np.ndarray, x: np.ndarray, ql: np.ndarray, bl: np.ndarray, cand: np.ndarray,
               params: dict[str, np.ndarray], opt: Adam, rng: np.random.Generator, epochs: int, batch_size: int,
               temperature: float, extra_positives: int, random_negatives: int) -> None:
        for _ in range(epochs):
            t0 = time.perf_counter()
            perm = rng.permutation(q.shape[0])
            losses, weights = [], []
            for lo in range(0, perm.shape[0], int(batch_size)):
                b = perm[lo : lo + int(batch_size)]
                pool, valid, pos = projection_pools(cand[b], ql[b], bl, rng, extra_positives=extra_positives,
                                                    random_negatives=random_negatives)
                pv = x[np.maximum(pool, 0)]
                loss, dW = linear_proj_loss(params["W"], q[b], pv, valid, pos, temperature=temperature)
                opt.step({"W": dW})
                losses.append(loss)
                weights.append(b.shape[0])
            self.history["train_loss"].append(float(np.average(losses, weights=weights)))
            self.history["epoch_time_s"].append(time.perf_counter() - t0)


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
    from ruvector_hnsw.index import HNSWIndex

    seed = ctx.seed if seed is None else int(seed)
    tq, tl, base_labels, info = training_data(ctx.dataset, n_train, seed=seed)
    ds = ctx.dataset
    metric = _metric_of(ds)
    t0 = time.perf_counter()
    cand, _ = ctx.index.search(tq, k=int(candidates), ef=max(ctx.ef, int(candidates)))
    proj = LinearProjection(int(np.asarray(ds.base).shape[1]), out_dim, metric=metric, seed=seed)
    history = proj.fit(tq, tl, ds.base, base_labels, np.asarray(cand, dtype=np.int64), epochs=epochs,
                       batch_size=batch_size, lr=lr, temperature=temperature, extra_positives=extra_positives,
                       random_negatives=random_negatives)
    fit_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    z = proj.transform(ds.base)
    index = HNSWIndex(proj.out_dim, space="cosine", M=ctx.M, ef_construction=ctx.ef_construction, seed=seed,
                      num_threads=ctx.num_threads)
    index.add(z)
    ef_used = int(ef) if ef is not None else ctx.ef
    index.ef = ef_used
    inner = make_alpha_qe(index, n=n, alpha=alpha, ef=ef_used, vectors=z)
    index_s = time.perf_counter() - t1

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
