"""``label_classifier``: softmax regression (or a 1-hidden-layer MLP) on the labelled vectors.

The practitioner's first try when every query belongs to a known class: learn
``p(class | x)`` from the labelled vectors training may see (database items with a known
training label + the training queries), then rank the whole database for a query by the
predicted probability of each item's label, ties (items of one class) by the exact index
distance. Seen-class protocol only: a classifier cannot rank classes it never saw, so the
factory refuses (:class:`~ruvector_hnsw.errors.ConfigError`) on the unseen protocol or when an
evaluation query's class is absent from training.

Model and training (numpy; no scikit-learn at run time):

- inputs normalised (cosine metric), then standardised with the training mean / std;
- ``hidden=0``: ``p = softmax(W x + b)``; ``hidden=h``: ``p = softmax(W2 relu(W1 x + b1) + b2)``;
- mean cross-entropy, minimised with mini-batch Adam (cosine-decayed learning rate, seeded
  batch order), L2 on the weights (not the biases) through the optimizer's coupled weight
  decay. ``C`` follows scikit-learn's ``LogisticRegression``: its objective
  ``C * sum_i CE_i + ||W||^2 / 2`` divided by ``n C`` is ours with ``weight_decay = 1 / (n C)``;
- ``C`` is picked from a small grid (default ``0.1, 1, 10, 100``) by accuracy on a seeded
  validation split of the training data (``val_fraction``; ties by validation log-loss), then
  the model is refitted on all the training data with that ``C``.

Ranking (:func:`rank_by_class`) is exact for any ``k`` up to ``N``: per query, classes are
ordered by probability, only the classes needed to fill ``k`` results are gathered, and those
items are ordered by (class rank, distance), distances computed in blocks with BLAS.
"""

from __future__ import annotations

import time
from collections.abc import MutableMapping, Sequence
from typing import Any

import numpy as np

from ruvector_hnsw.errors import ConfigError, InvalidDTypeError, NotFittedError, ShapeMismatchError
from ruvector_hnsw.eval.methods import BuildContext, SearchMethod, _as_f32, _metric_of, _threads, register_method
from ruvector_hnsw.eval.metrics import METRICS_ALIASES
from ruvector_hnsw.threads import thread_limits
from ruvector_hnsw.training.optim import Adam
from ruvector_hnsw.training.schedules import WarmupCosineSchedule

__all__ = [
    "DEFAULT_C_GRID",
    "LabelClassifier",
    "make_label_classifier",
    "rank_by_class",
    "softmax_loss",
]

#: inverse regularisation strengths tried by default (scikit-learn's ``C``)
DEFAULT_C_GRID: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0)

Params = MutableMapping[str, np.ndarray]


def _logits(params: Params, x: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    if "W1" in params:
        h = x @ params["W1"].T + params["b1"]
        a = np.maximum(h, 0.0)
        return a @ params["W"].T + params["b"], (h, a)
    return x @ params["W"].T + params["b"], ()


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def softmax_loss(params: Params, x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
    """Mean cross-entropy of ``softmax(logits(x))`` against class indices ``y`` and its gradients.

    Parameters
    ----------
    params : dict
        ``W`` (C, d) and ``b`` (C,) for softmax regression; with ``W1`` (h, d) and ``b1`` (h,)
        the model is ``W relu(W1 x + b1) + b`` (``W`` then (C, h)).
    x : (n, d) array
    y : (n,) int
        Class index of each row, in ``[0, C)``.

    Returns
    -------
    loss : float
    grads : dict
        ``dloss/dparam`` for every key of ``params``.
    """
    n = x.shape[0]
    logits, hidden = _logits(params, x)
    shifted = logits - logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(shifted).sum(axis=1))
    loss = float(np.mean(lse - shifted[np.arange(n), y]))
    g = np.exp(shifted - lse[:, None])
    g[np.arange(n), y] -= 1.0
    g /= n
    feats = hidden[1] if hidden else x
    grads = {"W": g.T @ feats, "b": g.sum(axis=0)}
    if hidden:
        dh = np.where(hidden[0] > 0.0, g @ params["W"], 0.0)
        grads["W1"] = dh.T @ x
        grads["b1"] = dh.sum(axis=0)
    return loss, {k: v.astype(params[k].dtype, copy=False) for k, v in grads.items()}


class LabelClassifier:
    """Softmax regression / 1-hidden-layer MLP over standardised vectors.

    Parameters
    ----------
    dim : int
        Input dimension.
    hidden : int
        0 for softmax regression, else the hidden width of the MLP.
    metric : {"cosine", "l2", "ip"}
        Cosine inputs are normalised before standardisation.
    seed : int
        Seeds the initialisation, the validation split and the batch order.
    """

    def __init__(self, dim: int, hidden: int = 0, *, metric: str = "cosine", seed: int = 0) -> None:
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or int(dim) < 1:
            raise ConfigError(f"dim must be an integer >= 1, got {dim!r}")
        if isinstance(hidden, bool) or not isinstance(hidden, (int, np.integer)) or int(hidden) < 0:
            raise ConfigError(f"hidden must be an integer >= 0, got {hidden!r}")
        key = METRICS_ALIASES.get(str(metric).lower())
        if key is None:
            raise ConfigError(f"unknown metric {metric!r}; expected 'l2', 'ip' or 'cosine'")
        self.dim, self.hidden, self.metric, self.seed = int(dim), int(hidden), key, int(seed)
        self.classes: np.ndarray | None = None
        self.params: dict[str, np.ndarray] | None = None
        self.mean = np.zeros(self.dim, dtype=np.float32)
        self.scale = np.ones(self.dim, dtype=np.float32)
        self.C: float | None = None
        self.selection: list[dict[str, float]] = []

    # ------------------------------------------------------------------ inputs
    def _normalise(self, x: Any, name: str) -> np.ndarray:
        arr = _as_f32(x, name, self.dim)
        if self.metric == "cosine":
            arr = arr / np.maximum(np.linalg.norm(arr, axis=1, keepdims=True), 1e-12)
        return arr

    def _features(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray((x - self.mean) / self.scale, dtype=np.float32)

    # ------------------------------------------------------------------ training
    def _init(self, n_classes: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        d, h = self.dim, self.hidden
        if h == 0:
            return {"W": np.zeros((n_classes, d), np.float32), "b": np.zeros(n_classes, np.float32)}
        return {
            "W1": (rng.standard_normal((h, d)) * np.sqrt(2.0 / d)).astype(np.float32),
            "b1": np.zeros(h, np.float32),
            "W": (rng.standard_normal((n_classes, h)) * np.sqrt(1.0 / h)).astype(np.float32),
            "b": np.zeros(n_classes, np.float32),
        }

    def _train(self, x: np.ndarray, y: np.ndarray, n_classes: int, C: float, rng: np.random.Generator, *,
               epochs: int, batch_size: int, lr: float) -> dict[str, np.ndarray]:
        params = self._init(n_classes, rng)
        wd = 1.0 / (C * x.shape[0])
        opt = Adam(params, lr=lr, weight_decay=wd, no_decay=[k for k in params if k.startswith("b")])
        steps_per_epoch = -(-x.shape[0] // batch_size)
        schedule = WarmupCosineSchedule(lr, total_steps=epochs * steps_per_epoch, min_lr=lr * 1e-3)
        step = 0
        for _ in range(epochs):
            perm = rng.permutation(x.shape[0])
            for lo in range(0, perm.shape[0], batch_size):
                b = perm[lo : lo + batch_size]
                _, grads = softmax_loss(params, x[b], y[b])
                opt.step(grads, lr=schedule(step))
                step += 1
        return params

    def fit(
        self,
        x: Any,
        labels: Any,
        *,
        C: float | Sequence[float] = DEFAULT_C_GRID,
        val_fraction: float = 0.2,
        epochs: int = 30,
        batch_size: int = 512,
        lr: float = 1e-2,
        standardize: bool = True,
        num_threads: int | None = None,
    ) -> LabelClassifier:
        """Fit on labelled rows (labels < 0 are dropped); pick ``C`` on a validation split.

        Parameters
        ----------
        x : (n, d)
        labels : (n,) int
        C : float or sequence of float
            One value (no selection) or a grid to select from.
        val_fraction : float
            Share of the rows held out for selecting ``C`` (in (0, 1)); ignored for one ``C``.
        epochs, batch_size, lr
            Mini-batch Adam with a cosine-decayed learning rate.
        standardize : bool
            Centre and scale every input dimension with the training statistics.
        num_threads : int, optional
            BLAS threads while training (None/<=0: all available).

        Returns
        -------
        self
        """
        xs = self._normalise(x, "training vectors")
        y_raw = np.asarray(labels).reshape(-1)
        if y_raw.shape[0] != xs.shape[0]:
            raise ShapeMismatchError(f"labels has {y_raw.shape[0]} entries for {xs.shape[0]} rows")
        if y_raw.size and y_raw.dtype.kind not in "iu":
            raise InvalidDTypeError(f"labels must be integers, got dtype {y_raw.dtype}")
        grid = [float(C)] if isinstance(C, (int, float, np.number)) else [float(c) for c in C]
        if not grid or any(not np.isfinite(c) or c <= 0 for c in grid):
            raise ConfigError(f"C must be positive (a value or a non-empty grid), got {C!r}")
        if isinstance(epochs, bool) or int(epochs) < 1 or int(batch_size) < 1 or not lr > 0:
            raise ConfigError(f"epochs, batch_size must be >= 1 and lr > 0, got {epochs!r}, {batch_size!r}, {lr!r}")
        if len(grid) > 1 and not 0.0 < float(val_fraction) < 1.0:
            raise ConfigError(f"val_fraction must lie in (0, 1), got {val_fraction!r}")
        keep = y_raw >= 0
        classes, y = np.unique(y_raw[keep], return_inverse=True)
        if classes.size < 2:
            raise ConfigError(f"need at least 2 known classes to train a classifier, got {classes.size}")
        xs = xs[keep]
        mean = xs.mean(axis=0) if standardize else np.zeros(self.dim, np.float32)
        scale = np.maximum(xs.std(axis=0), 1e-6) if standardize else np.ones(self.dim, np.float32)
        self.mean, self.scale = mean.astype(np.float32), scale.astype(np.float32)
        feats = self._features(xs)
        kw: dict[str, Any] = {"epochs": int(epochs), "batch_size": int(batch_size), "lr": float(lr)}
        selection: list[dict[str, float]] = []
        with thread_limits(_threads(num_threads)):
            best = grid[0]
            if len(grid) > 1:
                perm = np.random.default_rng([self.seed, 2]).permutation(feats.shape[0])
                n_val = max(1, round(float(val_fraction) * feats.shape[0]))
                va, tr = perm[:n_val], perm[n_val:]
                scores = []
                for c in grid:
                    p = self._train(feats[tr], y[tr], classes.size, c, np.random.default_rng(self.seed), **kw)
                    prob = _softmax(_logits(p, feats[va])[0])
                    acc = float(np.mean(prob.argmax(axis=1) == y[va]))
                    nll = float(-np.mean(np.log(np.maximum(prob[np.arange(va.size), y[va]], 1e-12))))
                    selection.append({"C": c, "val_accuracy": acc, "val_log_loss": nll})
                    scores.append((acc, -nll))
                best = grid[max(range(len(grid)), key=lambda i: scores[i])]
            params = self._train(feats, y, classes.size, best, np.random.default_rng(self.seed), **kw)
        self.classes, self.params, self.C, self.selection = classes, params, best, selection
        return self

    # ------------------------------------------------------------------ prediction
    def predict_proba(self, x: Any) -> np.ndarray:
        """Class probabilities ``(n, n_classes)`` float32, columns in the order of :attr:`classes`."""
        if self.params is None:
            raise NotFittedError("LabelClassifier: call fit() first")
        logits, _ = _logits(self.params, self._features(self._normalise(x, "vectors")))
        return _softmax(logits).astype(np.float32)


def _block_distances(q: np.ndarray, base: np.ndarray, base_sq: np.ndarray, metric: str) -> np.ndarray:
    """Exact distances (hnswlib conventions) of query rows to every base row, one BLAS product."""
    dots = q @ base.T
    if metric == "l2":
        return np.maximum((q * q).sum(axis=1)[:, None] + base_sq[None, :] - 2.0 * dots, 0.0)
    return 1.0 - dots


def rank_by_class(
    probs: np.ndarray,
    item_class: np.ndarray,
    queries: np.ndarray,
    base: np.ndarray,
    k: int,
    *,
    metric: str = "cosine",
    block: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """Rank base items by the probability of their class, ties by exact distance.

    Parameters
    ----------
    probs : (nq, C) array
        Class probabilities per query.
    item_class : (N,) int
        Column of ``probs`` holding each item's class; ``-1`` (unknown) ranks after every class.
    queries : (nq, d), base : (N, d)
        Vectors in the metric's space (normalised for ``cosine``).
    k : int
        Results per query, ``1 <= k``; at most ``N`` are returned (the rest is ``-1`` padded).
    metric : {"cosine", "ip", "l2"}
    block : int
        Queries per BLAS distance block.

    Returns
    -------
    ids : (nq, k) int64
    dists : (nq, k) float32
        Distances in hnswlib conventions (``1 - cos``, ``1 - dot``, squared L2); +inf padding.

    Notes
    -----
    Classes with equal probability are ordered by class index (stable sort); per query only the
    items of the top classes whose sizes first reach ``k`` are sorted.
    """
    probs = np.asarray(probs)
    nq, n_classes = probs.shape
    n = base.shape[0]
    kk = min(int(k), n)
    cls = np.where(item_class >= 0, item_class, n_classes).astype(np.int64)
    sizes = np.bincount(cls, minlength=n_classes + 1)
    base32 = np.ascontiguousarray(base, dtype=np.float32)
    base_sq = (base32.astype(np.float64) ** 2).sum(axis=1).astype(np.float32)
    ids = np.full((nq, int(k)), -1, dtype=np.int64)
    dists = np.full((nq, int(k)), np.inf, dtype=np.float32)
    rank = np.empty(n_classes + 1, dtype=np.int64)
    for lo in range(0, nq, int(block)):
        qb = np.ascontiguousarray(queries[lo : lo + int(block)], dtype=np.float32)
        dist = _block_distances(qb, base32, base_sq, metric)
        for r in range(qb.shape[0]):
            order = np.argsort(-probs[lo + r], kind="stable")
            rank[order] = np.arange(n_classes)
            rank[n_classes] = n_classes
            cum = np.cumsum(sizes[np.r_[order, n_classes]])
            last = int(np.searchsorted(cum, kk))  # rank of the last class needed to fill k
            item_rank = rank[cls]
            sel = np.flatnonzero(item_rank <= last)
            top = sel[np.lexsort((dist[r, sel], item_rank[sel]))[:kk]]
            ids[lo + r, :kk] = top
            dists[lo + r, :kk] = dist[r, top]
    return ids, dists


def make_label_classifier(
    ctx: BuildContext,
    *,
    hidden: int = 0,
    C: float | None = None,
    val_fraction: float = 0.2,
    epochs: int = 30,
    batch_size: int = 512,
    lr: float = 1e-2,
    standardize: bool = True,
    n_train: int | None = None,
    seed: int | None = None,
    block: int = 256,
) -> SearchMethod:
    """Factory of ``label_classifier``: fit on the labelled training vectors, rank by class probability.

    Training rows are the database items with a known training label plus the dataset's
    training queries (see :func:`ruvector_hnsw.eval.attention.training_data`); ``C=None``
    selects ``C`` from :data:`DEFAULT_C_GRID` on a validation split.

    Raises
    ------
    ConfigError
        On the unseen-class protocol (the dataset hides base labels from training) or when an
        evaluation query's class has no training example.
    """
    from ruvector_hnsw.eval.attention import training_data

    ds = ctx.dataset
    if getattr(ds, "train_base_labels", None) is not None:
        raise ConfigError("label_classifier predicts the training classes and cannot rank classes it never saw: "
                          "it runs on the seen-class protocol only (this dataset hides labels from training)")
    seed = ctx.seed if seed is None else int(seed)
    tq, tl, base_labels, info = training_data(ds, n_train, seed=seed)
    known = np.unique(np.concatenate([np.asarray(base_labels)[np.asarray(base_labels) >= 0], tl[tl >= 0]]))
    missing = np.setdiff1d(np.unique(np.asarray(ds.query_labels)), known)
    if missing.size:
        raise ConfigError(f"label_classifier: {missing.size} evaluation class(es) have no training example "
                          f"(e.g. {missing[:5].tolist()}); it runs on the seen-class protocol only")
    metric = _metric_of(ds)
    base = np.asarray(ds.base)
    clf = LabelClassifier(int(base.shape[1]), int(hidden), metric=metric, seed=seed)
    t0 = time.perf_counter()
    clf.fit(np.concatenate([base, tq]), np.concatenate([np.asarray(base_labels), tl]),
            C=DEFAULT_C_GRID if C is None else float(C), val_fraction=val_fraction, epochs=epochs,
            batch_size=batch_size, lr=lr, standardize=bool(standardize), num_threads=ctx.num_threads)
    fit_s = time.perf_counter() - t0
    assert clf.classes is not None
    col = np.searchsorted(clf.classes, base_labels)
    col = np.minimum(col, clf.classes.size - 1)
    item_class = np.where((np.asarray(base_labels) >= 0) & (clf.classes[col] == base_labels), col, -1)
    space = clf._normalise(base, "base")
    threads = _threads(ctx.num_threads)

    def search(queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = clf._normalise(queries, "queries")
        with thread_limits(threads):
            return rank_by_class(clf.predict_proba(q), item_class, q, space, int(k), metric=metric, block=block)

    params: dict[str, Any] = {
        **info,
        "hidden": clf.hidden,
        "C": clf.C,
        "C_selection": clf.selection,
        "epochs": int(epochs),
        "lr": lr,
        "standardize": bool(standardize),
        "n_train_rows": int(np.count_nonzero(np.asarray(base_labels) >= 0) + np.count_nonzero(tl >= 0)),
        "fit_s": round(fit_s, 3),
    }
    method = SearchMethod(name="label_classifier", fn=search, threads=threads, params=params)
    method.classifier = clf  # type: ignore[attr-defined]
    return method


register_method("label_classifier", make_label_classifier, overwrite=True)
