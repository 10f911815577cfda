"""Contrastive training of an AttentionSearch encoder (the body of ``AttentionSearch.fit``).

Every training query gets a pool of items: its HNSW top-C candidates, a few random relevant
items (so the model learns to reach relevant items HNSW missed), as many uniformly random items
(so "far from the query" does not predict "relevant"), and hard negatives from the current
latent codes (re-mined every epoch). The latent similarity of the pool is trained with the
multi-positive InfoNCE loss; gradients flow through the unit-norm codes, the linear maps and
the attention mechanism on both sides (query and database node).

After every epoch the database codes are refreshed and the weight ``alpha`` of the latent term
in the residual score is calibrated on held-out training queries (a grid that includes 0, the
index's own ranking); that validation mAP@R drives early stopping and the best checkpoint.
The loop itself is :class:`ruvector_hnsw.training.Trainer` (seeded, resumable).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from ruvector_hnsw.attention import Context
from ruvector_hnsw.index import HNSWGraph
from ruvector_hnsw.search import _kernels
from ruvector_hnsw.training.losses import info_nce
from ruvector_hnsw.training.optim import Adam
from ruvector_hnsw.training.schedules import WarmupCosineSchedule
from ruvector_hnsw.training.trainer import Batch, EpochState, Trainer, TrainingHistory

if TYPE_CHECKING:
    from ruvector_hnsw.search.attention_search import AttentionSearch

__all__ = ["ALPHA_GRID", "RHO_GRID", "SearchTrainingModel", "fit_attention_search", "map_at_r_of_rows"]

#: candidate weights of the latent term; 0 keeps the index's ranking
ALPHA_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 512.0, 2048.0)
#: candidate weights of the diffusion coordinates relative to the learned codes; 0 = codes only
RHO_GRID = (0.0, 0.25, 1.0, 4.0, 16.0)
_VAL_CAP = 1000
_SCALARS = ("alpha", "beta")


def map_at_r_of_rows(result_rows: np.ndarray, pos_lists: list[np.ndarray], cap: int | None = None) -> float:
    """mAP@R of ranked table rows against each query's relevant rows (R capped at ``cap``)."""
    from ruvector_hnsw.eval.metrics import map_at_r

    rel = np.zeros(result_rows.shape, dtype=bool)
    for i, rows in enumerate(pos_lists):
        rel[i] = np.isin(result_rows[i], rows) & (result_rows[i] >= 0)
    n_rel = np.array([len(r) for r in pos_lists])
    return float(map_at_r(rel, n_rel, cap=cap))


def _validate(s: AttentionSearch, g: HNSWGraph, q: np.ndarray, pos_lists: list[np.ndarray]) -> float:
    k = max(1, int(min(max(len(r) for r in pos_lists), _VAL_CAP, len(g))))
    ids, _ = s._search(q, k, g)
    rows = np.full(ids.shape, -1, dtype=np.int64)
    ok = ids >= 0
    rows[ok] = g.positions(ids[ok])
    return map_at_r_of_rows(rows, pos_lists, cap=_VAL_CAP)


def calibrate_alpha(s: AttentionSearch, g: HNSWGraph, q: np.ndarray, pos_lists: list[np.ndarray]) -> float:
    """Set ``alpha`` (``beta = 1``) to the grid value with the best mAP@R on ``q``; return it.

    ``alpha = 0`` is on the grid, so the calibrated model is never below the index on ``q``.
    """
    enc = s._encoder
    assert enc is not None
    enc.own["beta"][0] = 1.0
    best = (-np.inf, 0.0)
    for a in ALPHA_GRID:
        enc.own["alpha"][0] = a
        val = _validate(s, g, q, pos_lists)
        if val > best[0] + 1e-9:
            best = (val, a)
    enc.own["alpha"][0] = best[1]
    return float(best[0])


def _sample_positives(rng: np.random.Generator, pos_lists: list[np.ndarray], idx: np.ndarray, m: int) -> np.ndarray:
    out = np.full((idx.shape[0], m), -1, dtype=np.int64)
    for r, i in enumerate(idx.tolist()):
        rows = pos_lists[i]
        if rows.size and m:
            out[r] = rows[rng.integers(0, rows.size, m)]
    return out


def _positive_mask(pool: np.ndarray, pos_lists: list[np.ndarray], idx: np.ndarray) -> np.ndarray:
    mask = np.zeros(pool.shape, dtype=bool)
    for r, i in enumerate(idx.tolist()):
        mask[r] = np.isin(pool[r], pos_lists[i]) & (pool[r] >= 0)
    return mask


class SearchTrainingModel:
    """Adapter of an :class:`AttentionSearch` to the :class:`~ruvector_hnsw.training.Trainer` protocol.

    ``batch["query"]`` holds indices into the training queries.
    """

    def __init__(self, s: AttentionSearch, g: HNSWGraph, q: np.ndarray, pos_lists: list[np.ndarray], *,
                 temperature: float, extra_positives: int, random_negatives: int, latent_negatives: int) -> None:
        assert s._encoder is not None
        self.s, self.g, self.enc = s, g, s._encoder
        self.pos_lists = pos_lists
        self.temperature = temperature
        self.extra_positives = extra_positives
        self.random_negatives = random_negatives
        self.latent_negatives = latent_negatives
        self.qs = s._standardise(q)
        self.hn_pos, self.hn_dist = s._hnsw(q, s.candidates, g)
        self.mined = np.full((q.shape[0], 0), -1, dtype=np.int64)
        #: the arrays the optimizer updates, shared with the encoder (alpha/beta are calibrated)
        self.params: dict[str, np.ndarray] = {k: v for k, v in self.enc.params.items() if k not in _SCALARS}

    # -- trainer hooks ------------------------------------------------------------------------
    def on_epoch_start(self, state: EpochState) -> None:
        if self.latent_negatives:
            zq = self.s._encode_queries(self.qs, self.hn_pos, self.hn_dist)
            self.mined, _ = self.s._latent_index().search(zq, self.latent_negatives)

    def on_epoch_end(self, state: EpochState) -> None:
        self.s._refresh_codes(exact=True)

    def on_params_loaded(self) -> None:
        self.s._refresh_codes(exact=True)

    # -- one step -----------------------------------------------------------------------------
    def loss_and_grads(self, batch: Batch, state: EpochState) -> tuple[float, dict[str, np.ndarray]]:
        s, g, enc = self.s, self.g, self.enc
        b = np.asarray(batch["query"], dtype=np.int64)
        rng = state.rng
        parts = [self.hn_pos[b], _sample_positives(rng, self.pos_lists, b, self.extra_positives),
                 rng.integers(0, len(g), (b.shape[0], self.random_negatives)).astype(np.int64)]
        if self.mined.shape[1]:
            parts.append(self.mined[b])
        merged = np.concatenate(parts, axis=1)
        pool, _ = _kernels.unique_rows(merged, np.zeros(merged.shape, np.float32), g.deleted)
        valid = pool >= 0
        posmask = _positive_mask(pool, self.pos_lists, b)
        grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        if not posmask.any():
            return 0.0, grads
        ids_q, mask_q, ctx_q = s._query_context(self.qs[b], self.hn_pos[b], self.hn_dist[b])
        enc_q = enc.encode(self.qs[b], s._table, ids_q, mask_q, ctx_q)
        uniq, inv = np.unique(pool[valid], return_inverse=True)
        ctx_v = Context(dist=s._nb_dist[uniq], layer=s._nb_layer[uniq], hops=s._nb_hops[uniq])
        enc_v = enc.encode(s._table[uniq], s._table, s._nb_pos[uniq], s._nb_mask[uniq], ctx_v)
        zv = np.zeros((*pool.shape, enc.latent_dim), dtype=enc_v.zhat.dtype)
        zv[valid] = enc_v.zhat[inv]
        sim = np.where(valid, np.einsum("bp,bcp->bc", enc_q.zhat, zv), 0.0)
        temperature = state.temperature if state.temperature is not None else self.temperature
        loss, g_sim = info_nce(sim, posmask, temperature=temperature, candidate_mask=valid)
        g_sim = g_sim.astype(np.float32)
        gzq = np.einsum("bc,bcp->bp", g_sim, zv)
        gzv = g_sim[:, :, None] * enc_q.zhat[:, None, :]
        gzv_rows = np.zeros((uniq.shape[0], enc.latent_dim), dtype=np.float32)
        np.add.at(gzv_rows, inv, gzv[valid])
        all_grads = enc.zero_grads()
        enc.backward(enc_v, gzv_rows, all_grads)
        enc.backward(enc_q, gzq.astype(np.float32), all_grads)
        for k in grads:
            grads[k] = all_grads[k]
        return float(loss), grads


def fit_attention_search(
    s: AttentionSearch,
    g: HNSWGraph,
    q: np.ndarray,
    pos_lists: list[np.ndarray],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    temperature: float,
    extra_positives: int,
    random_negatives: int,
    latent_negatives: int,
    val_fraction: float,
    patience: int,
    weight_decay: float,
    progress: bool,
    checkpoint_dir: str | os.PathLike[str] | None,
    resume: bool | str | os.PathLike[str],
) -> TrainingHistory:
    """Train ``s``'s encoder in place (best validation epoch restored); return the history."""
    rng = np.random.default_rng(s.seed)
    nq = q.shape[0]
    perm = rng.permutation(nq)
    n_val = round(val_fraction * nq) if nq >= 20 else 0
    val_idx, tr_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    s._fitted = True  # codes and the latent index are needed for mining and validation
    s._refresh_codes(exact=True)
    model = SearchTrainingModel(
        s, g, q[tr_idx], [pos_lists[i] for i in tr_idx.tolist()], temperature=temperature,
        extra_positives=extra_positives, random_negatives=random_negatives, latent_negatives=latent_negatives,
    )
    q_val = q[val_idx]
    val_pos = [pos_lists[i] for i in val_idx.tolist()]

    def validate(_: Any) -> dict[str, float]:
        value = calibrate_alpha(s, g, q_val, val_pos)
        return {"map_at_r": value, "alpha": s._encoder.alpha if s._encoder is not None else 0.0}

    steps = max(1, int(np.ceil(tr_idx.shape[0] / batch_size)))
    trainer = Trainer(
        model,
        Adam(model.params, lr=lr, weight_decay=weight_decay, max_grad_norm=10.0),
        epochs=epochs,
        batch_size=batch_size,
        schedule=WarmupCosineSchedule(lr, total_steps=epochs * steps, warmup_steps=min(steps, 50)),
        validate=validate if n_val else None,
        patience=patience if n_val else None,
        checkpoint_dir=checkpoint_dir,
        seed=s.seed,
        progress=progress,
    )
    history = trainer.fit({"query": np.arange(tr_idx.shape[0])}, resume=resume)
    if n_val and s.spectral:
        # weight of the diffusion coordinates: joint grid with alpha on exact latent search
        s._refresh_codes(exact=True)
        best = (-np.inf, 0.0)
        for rho in RHO_GRID:
            s._set_rho(rho, exact=True)
            value = calibrate_alpha(s, g, q_val, val_pos)
            if value > best[0] + 1e-9:
                best = (value, rho)
        s._rho = best[1]
    s._refresh_codes()  # the serving latent index
    if n_val:  # alpha for the restored (best) parameters, with the serving index
        calibrate_alpha(s, g, q_val, val_pos)
    return history
