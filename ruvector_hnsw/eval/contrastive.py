"""Supervised InfoNCE training of a vector map, shared by ``linear_proj`` and ``mlp_adapter``.

Both baselines learn a map ``x -> z`` whose cosine similarities rank items of the query's
label first, with the same loss, the same training pools and the same search afterwards:

- :func:`projection_pools`: each training query's pool is its HNSW top-``candidates`` in the
  original space (near items, relevant or not), ``extra_positives`` random items of its label
  and ``random_negatives`` random labelled items; relevant = same label. Items whose training
  label is negative ("unknown", e.g. the hidden unseen-class items of
  :func:`ruvector_hnsw.datasets.class_split`) are dropped from the pool: never a positive,
  never a label-based negative.
- :func:`cosine_info_nce`: multi-positive InfoNCE of ``cos(z_q, z_c)`` over the pool, with the
  gradients in both embeddings.
- :func:`fit_contrastive`: seeded epochs of Adam over shuffled batches of training queries,
  for any model given as a loss-and-gradient function of its parameters, optionally with
  early stopping on a validation score (:func:`held_out_map`: mAP of held-out *training*
  queries).
- :func:`embedding_index`: an HNSW index over the mapped, unit-norm database, searched
  directly or with alpha query expansion in the mapped space.
"""

from __future__ import annotations

import time
from collections.abc import Callable, MutableMapping
from typing import Any

import numpy as np

from ruvector_hnsw.errors import ConfigError, InvalidDTypeError, ShapeMismatchError
from ruvector_hnsw.eval.methods import BuildContext, SearchMethod, make_alpha_qe, make_hnsw
from ruvector_hnsw.threads import thread_limits
from ruvector_hnsw.training.losses import CosineSimilarity, info_nce
from ruvector_hnsw.training.optim import Adam

__all__ = [
    "LossFn",
    "check_training_arrays",
    "cosine_info_nce",
    "embedding_index",
    "fit_contrastive",
    "held_out_map",
    "projection_pools",
    "training_candidates",
]

#: ``loss_fn(params, queries (B, d), items (U, d), inv (B, P), valid, positives, temperature)
#: -> (loss, grads)``: the pool vector of slot ``(b, c)`` is ``items[inv[b, c]]``.
LossFn = Callable[
    [MutableMapping[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, float],
    tuple[float, dict[str, np.ndarray]],
]


def cosine_info_nce(
    zq: np.ndarray,
    zc: np.ndarray,
    valid: np.ndarray,
    positives: np.ndarray,
    *,
    temperature: float,
) -> tuple[float, np.ndarray, np.ndarray]:
    """Supervised InfoNCE of ``cos(zq_b, zc_bc)`` and its gradients in ``zq`` and ``zc``.

    Parameters
    ----------
    zq : (B, p) array
        Query embeddings (any norm).
    zc : (B, P, p) array
        Pool embeddings (any values where ``valid`` is False).
    valid, positives : (B, P) bool
        Existing pool slots; relevant ones among them.
    temperature : float

    Returns
    -------
    loss : float
        Mean over rows with at least one valid positive.
    dzq : (B, p), dzc : (B, P, p)
        Gradients (zero on invalid slots and on rows without positives).
    """
    sim_fn = CosineSimilarity(check_finite=False)
    sim = sim_fn.forward(zq, zc)
    sim = np.where(valid, sim, 0.0)
    loss, g = info_nce(sim, positives, temperature=temperature, candidate_mask=valid)
    grads = sim_fn.backward(g.astype(zq.dtype, copy=False))
    return float(loss), grads["query"], grads["candidates"]


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
    """Pools of item ids for a batch: candidates + random same-label items + random labelled items.

    Negative labels mean "unknown": such items are not valid pool slots (neither positive nor
    negative), random negatives are drawn among labelled items only, and a query with a
    negative label gets no extra positives (and so no valid positive: the loss ignores it).

    Returns
    -------
    pool : (B, P) int64, -1 padded (duplicates removed)
    valid : (B, P) bool
        Slots holding an item with a known (>= 0) label.
    positives : (B, P) bool (valid and same label as the query)
    """
    B = candidates.shape[0]
    n = base_labels.shape[0]
    query_labels = np.asarray(query_labels)
    known_ids = np.flatnonzero(base_labels >= 0)
    order = np.argsort(base_labels, kind="stable")
    sorted_lab = base_labels[order]
    extra = np.full((B, extra_positives), -1, dtype=np.int64)
    if extra_positives:
        lo = np.searchsorted(sorted_lab, query_labels, "left")
        hi = np.searchsorted(sorted_lab, query_labels, "right")
        cnt = np.where(query_labels >= 0, hi - lo, 0)
        draw = (rng.random((B, extra_positives)) * np.maximum(cnt, 1)[:, None]).astype(np.int64)
        extra = np.where(cnt[:, None] > 0, order[np.minimum(lo[:, None] + draw, n - 1)], -1)
    if known_ids.size:
        rand = known_ids[rng.integers(0, known_ids.size, (B, random_negatives))].astype(np.int64)
    else:
        rand = np.full((B, random_negatives), -1, dtype=np.int64)
    pool = _dedup_rows(np.concatenate([candidates.astype(np.int64), extra, rand], axis=1))
    lab = base_labels[np.maximum(pool, 0)]
    valid = (pool >= 0) & (lab >= 0)
    pool = np.where(valid, pool, -1)
    positives = valid & (lab == query_labels[:, None])
    return pool, valid, positives


def check_training_arrays(
    q: np.ndarray, ql: Any, x: np.ndarray, bl: Any, candidates: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels and candidates as int64 arrays, checked against the query and base rows."""
    ql = np.asarray(ql).reshape(-1)
    bl = np.asarray(bl).reshape(-1)
    cand = np.asarray(candidates)
    if ql.shape[0] != q.shape[0] or cand.ndim != 2 or cand.shape[0] != q.shape[0]:
        raise ShapeMismatchError(f"train_labels {ql.shape} and candidates {cand.shape} must have {q.shape[0]} rows")
    if bl.shape[0] != x.shape[0]:
        raise ShapeMismatchError(f"base_labels has {bl.shape[0]} entries for {x.shape[0]} base rows")
    for name, arr in (("train_labels", ql), ("base_labels", bl), ("candidates", cand)):
        if arr.size and arr.dtype.kind not in "iu":
            raise InvalidDTypeError(f"{name} must be integers, got dtype {arr.dtype}")
    if not np.any(bl >= 0):
        raise ConfigError("no base item has a known (>= 0) training label")
    return ql.astype(np.int64), bl.astype(np.int64), cand.astype(np.int64)


def fit_contrastive(
    loss_fn: LossFn,
    params: MutableMapping[str, np.ndarray],
    q: np.ndarray,
    x: np.ndarray,
    ql: np.ndarray,
    bl: np.ndarray,
    cand: np.ndarray,
    rng: np.random.Generator,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    temperature: float,
    extra_positives: int,
    random_negatives: int,
    weight_decay: float = 0.0,
    no_decay: tuple[str, ...] = (),
    validate: Callable[[MutableMapping[str, np.ndarray]], float] | None = None,
    patience: int = 3,
) -> dict[str, Any]:
    """Train ``params`` in place with Adam on the pooled InfoNCE loss of ``loss_fn``.

    Each epoch shuffles the training queries (with ``rng``), and for every batch draws the
    pools (:func:`projection_pools`), passes the unique pool items and the slot-to-item map to
    ``loss_fn`` and takes one Adam step (gradient norm clipped at 10).

    With ``validate`` (a score of the current parameters, higher = better, e.g. mAP on held-out
    training queries) the parameters are scored before training and after every epoch,
    training stops after ``patience`` epochs without a better score, and the best parameters
    (possibly the initial ones) are restored in place at the end.

    Returns
    -------
    dict
        ``{"train_loss": [...], "epoch_time_s": [...]}`` per epoch; with ``validate`` also
        ``"val_metric"`` (index 0 = before training) and ``"best_epoch"`` (0 = initial).
    """
    if isinstance(epochs, bool) or int(epochs) < 1 or int(batch_size) < 1:
        raise ConfigError(f"epochs and batch_size must be >= 1, got {epochs!r}, {batch_size!r}")
    if isinstance(patience, bool) or int(patience) < 1:
        raise ConfigError(f"patience must be >= 1, got {patience!r}")
    opt = Adam(params, lr=lr, weight_decay=weight_decay, no_decay=no_decay, max_grad_norm=10.0)
    history: dict[str, Any] = {"train_loss": [], "epoch_time_s": []}
    best: tuple[float, int, dict[str, np.ndarray]] | None = None
    if validate is not None:
        score = float(validate(params))
        history["val_metric"] = [score]
        best = (score, 0, {k: v.copy() for k, v in params.items()})
    with thread_limits(1):  # small matmuls: more BLAS threads only fight on shared cores
        for epoch in range(1, int(epochs) + 1):
            t0 = time.perf_counter()
            perm = rng.permutation(q.shape[0])
            losses, weights = [], []
            for lo in range(0, perm.shape[0], int(batch_size)):
                b = perm[lo : lo + int(batch_size)]
                pool, valid, pos = projection_pools(cand[b], ql[b], bl, rng, extra_positives=extra_positives,
                                                    random_negatives=random_negatives)
                uniq, inv = np.unique(np.maximum(pool, 0), return_inverse=True)
                loss, grads = loss_fn(params, q[b], x[uniq], inv.reshape(pool.shape), valid, pos, temperature)
                opt.step(grads)
                losses.append(loss)
                weights.append(b.shape[0])
            history["train_loss"].append(float(np.average(losses, weights=weights)))
            history["epoch_time_s"].append(time.perf_counter() - t0)
            if validate is not None and best is not None:
                score = float(validate(params))
                history["val_metric"].append(score)
                if score > best[0]:
                    best = (score, epoch, {k: v.copy() for k, v in params.items()})
                elif epoch - best[1] >= int(patience):
                    break
    if best is not None:
        for k, v in best[2].items():
            params[k][...] = v
        history["best_epoch"] = best[1]
    return history


def held_out_map(
    transform: Callable[[np.ndarray], np.ndarray],
    val_queries: np.ndarray,
    val_labels: np.ndarray,
    base: np.ndarray,
    base_labels: np.ndarray,
    *,
    cap: int = 100,
    block: int = 512,
) -> float:
    """mAP@``cap`` of exact cosine search in a mapped space, for validation on training queries.

    Only database items with a known (>= 0) training label are ranked, and relevance uses those
    labels, so unknown items are neither relevant nor irrelevant.
    """
    from ruvector_hnsw.ranking import map_at_r, relevance

    known = np.flatnonzero(base_labels >= 0)
    zb = transform(base[known])
    zq = transform(val_queries)
    kk = min(int(cap), known.shape[0])
    top = np.empty((zq.shape[0], kk), dtype=np.int64)
    for lo in range(0, zq.shape[0], block):
        sims = zq[lo : lo + block] @ zb.T
        part = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        order = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1, kind="stable")
        top[lo : lo + block] = np.take_along_axis(part, order, axis=1)
    rel, n_rel = relevance(top, base_labels[known], val_labels)
    return float(map_at_r(rel, n_rel, cap=cap))


def training_candidates(ctx: BuildContext, train_queries: np.ndarray, candidates: int) -> np.ndarray:
    """HNSW top-``candidates`` of the training queries on the run's index (base rows, -1 pad)."""
    cand, _ = ctx.index.search(train_queries, k=int(candidates), ef=max(ctx.ef, int(candidates)))
    return np.asarray(cand, dtype=np.int64)


def embedding_index(
    ctx: BuildContext,
    z: np.ndarray,
    *,
    seed: int,
    ef: int | None,
    qe: bool,
    n: int,
    alpha: float,
) -> tuple[Any, SearchMethod, float]:
    """A cosine HNSW index over the mapped database ``z`` (labels = base rows), and its search.

    Built with the run's M / ef_construction / threads; searched at ``ef`` (default the run's)
    directly, or with alpha-QE (``n``, ``alpha``) in the mapped space when ``qe``.

    Returns
    -------
    index : HNSWIndex
    inner : SearchMethod
        Takes *mapped* queries.
    build_s : float
        Seconds spent building the index.
    """
    from ruvector_hnsw.index import HNSWIndex

    t0 = time.perf_counter()
    index = HNSWIndex(int(z.shape[1]), space="cosine", M=ctx.M, ef_construction=ctx.ef_construction, seed=seed,
                      num_threads=ctx.num_threads)
    index.add(z)
    ef_used = int(ef) if ef is not None else ctx.ef
    index.ef = ef_used
    inner = make_alpha_qe(index, n=n, alpha=alpha, ef=ef_used, vectors=z) if qe else make_hnsw(index, ef=ef_used)
    return index, inner, time.perf_counter() - t0
