"""The label stage: learned label propagation over the graph, gated by the evidence it finds.

When ``fit`` is given item labels, the model also learns which class a query belongs to, from two
signals - the query vector itself and the labels its HNSW neighbours carry::

    a_j    = softmax_j(-exp(tau) * dist_j / s0)          over the query's best candidates j
    h      = sum_j a_j * onehot(class(j))                label propagation (labelled j only)
    e      = sum_j a_j [class(j) known]                  the evidence: attention mass on labelled items
    logits = W f(u) + b + g * h                          (u: the standardised query)
    p      = softmax(logits)                             over the known classes

with ``f(u) = u`` (a softmax regression) or ``relu(W1 u + b1)`` (one hidden layer; ``fit`` trains both
widths and keeps the hidden layer only when it predicts the validation queries' classes significantly
better, :func:`ruvector_hnsw.search.training.fit_label_head`).

The score of item ``v`` adds ``lam * e * log P(same class | q, v)``: ``log p(class(v) | q)`` for a
labelled item, ``log sum_c p(c | q) r_v(c)`` for an item whose label is unknown (``labels < 0``,
or added after ``fit``), with ``r_v`` the head's own prediction for ``v`` over its layer-0 links
(its :data:`UNKNOWN_TOP` most probable classes). Unknown labels are never a class of their own: an
unlabelled item is ranked by what it looks like, not by lacking a label. The label term applies to
a query only when ``e`` reaches the model's gate (calibrated on classes held out of a second head,
:func:`ruvector_hnsw.search.training.calibrate_gate`): a query whose neighbourhood carries few
labels (a class the labels never covered) is ranked by the metric codes and the open path's stages
(:func:`ruvector_hnsw.search.pipeline.expand_and_score`; among them the demotion of labelled items
whose class ``p`` finds unlikely, :class:`ruvector_hnsw.search.pipeline.Demotion`). ``lam`` is
calibrated on held-out training queries (0 included: the head is then off). The head is trained
with cross-entropy on the training queries (their candidates as context) and on the labelled
database rows (their layer-0 links as context), analytic gradients, Adam; its inputs are
standardised.

Because relevant items of the predicted class can lie far beyond HNSW's top-C, the members of each
query's most probable class that are nearest to it join the pool (:func:`class_candidates`; exact
distances, computed per class with BLAS).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ruvector_hnsw.threads import thread_limits
from ruvector_hnsw.training.optim import Adam

__all__ = ["UNKNOWN_TOP", "LabelHead", "LabelSpace", "class_candidates", "same_class_log_proba"]

_EPS = 1e-12
#: classes kept per unknown-label row of its predicted distribution ``r_v``
UNKNOWN_TOP = 4
#: floor of ``P(same class)`` before the log (keeps the label term finite)
_FLOOR = 1e-30


@dataclass
class LabelSpace:
    """Classes of the graph's rows: ``row_class[v]`` in ``[0, n_known)``, or :attr:`unknown` (``n_known``).

    Attributes
    ----------
    values : ndarray
        The label value of each known class (``values[c]``), in sorted order.
    row_class : (N,) int64
    has_unknown : bool
        True when some rows' labels are unknown (marked ``n_known``; not a class of the head).
    """

    values: np.ndarray
    row_class: np.ndarray
    has_unknown: bool

    @property
    def n_known(self) -> int:
        return int(self.values.shape[0])

    @property
    def unknown(self) -> int:
        """Marker of the unknown-label rows in ``row_class`` (``n_known``: no class of the head)."""
        return self.n_known

    @classmethod
    def of(cls, row_labels: np.ndarray, known: np.ndarray) -> LabelSpace:
        """Classes from per-row labels (``known`` False where the label is unknown)."""
        values = np.unique(row_labels[known]) if known.any() else np.zeros(0, dtype=row_labels.dtype)
        row_class = np.full(row_labels.shape[0], values.shape[0], dtype=np.int64)
        if known.any():
            row_class[known] = np.searchsorted(values, row_labels[known])
        return cls(values=values, row_class=row_class, has_unknown=bool((~known).any()))

    def classes_of(self, labels: np.ndarray) -> np.ndarray:
        """Class ids of label values (values outside the known classes -> :attr:`unknown`)."""
        pos = np.searchsorted(self.values, labels)
        pos = np.minimum(pos, max(self.n_known - 1, 0))
        ok = (self.values.shape[0] > 0) & (self.values[pos] == labels) if self.n_known else np.zeros(
            labels.shape, dtype=bool)
        return np.where(ok, pos, self.unknown).astype(np.int64)

    def grown(self, n: int) -> LabelSpace:
        """Rows added after fit have unknown labels."""
        if n <= self.row_class.shape[0]:
            return self
        extra = np.full(n - self.row_class.shape[0], self.n_known, dtype=np.int64)
        return LabelSpace(values=self.values, row_class=np.concatenate([self.row_class, extra]), has_unknown=True)

    def members(self) -> tuple[np.ndarray, np.ndarray]:
        """CSR ``(indptr, rows)`` of each class's rows (ascending); the last bucket holds the unknown rows."""
        order = np.argsort(self.row_class, kind="stable")
        counts = np.bincount(self.row_class, minlength=self.n_known + 1)
        indptr = np.zeros(self.n_known + 2, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        return indptr, order.astype(np.int64)


class LabelHead:
    """``logits = W f(u) + b + g * h(candidates)`` over ``n_classes`` known classes (see the module docstring).

    ``f(u) = u`` (``hidden = 0``: softmax regression on the query) or ``relu(W1 u + b1)`` (one hidden
    layer of width ``hidden``). Candidates of class ``>= n_classes`` (unknown labels) take attention but
    carry no label.

    Parameters
    ----------
    dim, n_classes : int
    hidden : int
        Width of the hidden layer (0: none).
    seed : int
    dtype : float32 or float64
    """

    def __init__(self, dim: int, n_classes: int, *, hidden: int = 0, seed: int = 0, dtype: Any = np.float32
                 ) -> None:
        self.dim = int(dim)
        self.n_classes = int(n_classes)
        self.hidden = int(hidden)
        self.dtype = np.dtype(dtype)
        rng = np.random.default_rng([int(seed), 7])
        width = self.hidden or self.dim
        self.params: dict[str, np.ndarray] = {
            "W": (0.01 * rng.standard_normal((self.n_classes, width))).astype(self.dtype),
            "b": np.zeros(self.n_classes, dtype=self.dtype),
            "g": np.ones(1, dtype=self.dtype),
            "tau": np.zeros(1, dtype=self.dtype),
        }
        if self.hidden:
            self.params["W1"] = (np.sqrt(2.0 / self.dim) * rng.standard_normal((self.hidden, self.dim))
                                 ).astype(self.dtype)
            self.params["b1"] = np.zeros(self.hidden, dtype=self.dtype)

    def _features(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``(f(u), pre-activation or None)`` in the head's dtype."""
        uu = np.asarray(u, dtype=self.dtype)
        if not self.hidden:
            return uu, None
        pre = uu @ self.params["W1"].T + self.params["b1"]
        return np.maximum(pre, 0.0), pre

    # ------------------------------------------------------------------ forward / backward
    def _propagation(self, cand_class: np.ndarray, cand_dist: np.ndarray, mask: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(h, a, slot, labelled)``: softmax weights over candidates and the weighted label histogram.

        ``h[b, c] = sum_j a[b, j] [class(b, j) = c]`` is one ``bincount`` over the flat slots
        ``slot = b * n_classes + class`` (no (B, k, n_classes) one-hot array); candidates whose
        class is unknown (``>= n_classes``) share the softmax but add to no class.
        """
        t = float(np.exp(self.params["tau"][0]))
        s = np.where(mask, -t * cand_dist, -np.inf)
        m = s.max(axis=1, keepdims=True)
        m = np.where(np.isfinite(m), m, 0.0)
        e = np.where(mask, np.exp(s - m), 0.0)
        z = e.sum(axis=1, keepdims=True)
        a = e / np.maximum(z, _EPS)
        B, C = cand_class.shape[0], self.n_classes
        labelled = mask & (cand_class >= 0) & (cand_class < C)
        slot = np.arange(B, dtype=np.int64)[:, None] * C + np.where(labelled, cand_class, 0).astype(np.int64)
        h = np.bincount(slot.ravel(), weights=np.where(labelled, a, 0.0).ravel(), minlength=B * C).reshape(B, C)
        return h, a, slot, labelled

    def evidence(self, cand_class: np.ndarray, cand_dist: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """``e`` (B,): the attention mass of the candidates whose label is known, in [0, 1]."""
        _, a, _, labelled = self._propagation(cand_class, cand_dist, mask)
        return np.where(labelled, a, 0.0).sum(axis=1)

    def logits(self, u: np.ndarray, cand_class: np.ndarray, cand_dist: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """``(B, n_classes)`` logits; ``cand_dist`` already divided by ``s0``."""
        h, _, _, _ = self._propagation(cand_class, cand_dist, mask)
        p = self.params
        f = self._features(u)[0] if self.hidden else u
        return (f.astype(np.float64) @ p["W"].T.astype(np.float64) + p["b"] + p["g"][0] * h)

    def log_proba(self, u: np.ndarray, cand_class: np.ndarray, cand_dist: np.ndarray, mask: np.ndarray
                  ) -> np.ndarray:
        """Log class probabilities ``(B, n_classes)``."""
        z = self.logits(u, cand_class, cand_dist, mask)
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    def loss_and_grads(self, u: np.ndarray, cand_class: np.ndarray, cand_dist: np.ndarray, mask: np.ndarray,
                       target: np.ndarray, weight_decay: float = 0.0) -> tuple[float, dict[str, np.ndarray]]:
        """Mean cross-entropy of ``target`` classes (+ ``weight_decay/2 * (|W|^2 + |W1|^2)``) and its gradients."""
        p = self.params
        h, a, slot, labelled = self._propagation(cand_class, cand_dist, mask)
        dt = self.dtype
        uu = np.asarray(u, dtype=dt)
        # the products in the head's dtype (float32 in training: half the time of float64); the
        # softmax and everything after it in float64
        f, pre = self._features(uu)
        z = (f @ p["W"].T).astype(np.float64) + p["b"] + p["g"][0] * h
        z = z - z.max(axis=1, keepdims=True)
        ez = np.exp(z)
        prob = ez / ez.sum(axis=1, keepdims=True)
        B = u.shape[0]
        rows = np.arange(B)
        loss = float(-np.log(np.maximum(prob[rows, target], 1e-300)).mean())
        dz = prob.copy()
        dz[rows, target] -= 1.0
        dz /= B
        W = p["W"].astype(np.float64)
        loss += 0.5 * weight_decay * float((W * W).sum())
        grads = {
            "W": ((dz.astype(dt).T @ f).astype(np.float64) + weight_decay * W).astype(dt),
            "b": dz.sum(axis=0).astype(self.dtype),
            "g": np.array([(dz * h).sum()], dtype=self.dtype),
        }
        if pre is not None:
            W1 = p["W1"].astype(np.float64)
            loss += 0.5 * weight_decay * float((W1 * W1).sum())
            dpre = np.where(pre > 0.0, dz.astype(dt) @ p["W"], 0.0).astype(dt)
            grads["W1"] = ((dpre.T @ uu).astype(np.float64) + weight_decay * W1).astype(dt)
            grads["b1"] = dpre.sum(axis=0).astype(dt)
        # through h: dh = g * dz; h = sum_j a_j onehot_j; a = softmax(-t d); t = exp(tau)
        dh = p["g"][0] * dz
        da = np.where(labelled, dh.ravel()[slot], 0.0)
        ds = a * (da - (a * da).sum(axis=1, keepdims=True))
        t = float(np.exp(p["tau"][0]))
        grads["tau"] = np.array([float((ds * np.where(mask, -t * cand_dist, 0.0)).sum())], dtype=self.dtype)
        return loss, grads

    # ------------------------------------------------------------------ training
    def train(self, u: np.ndarray, cand_class: np.ndarray, cand_dist: np.ndarray, mask: np.ndarray,
              target: np.ndarray, *, epochs: int = 30, batch_size: int = 1024, lr: float = 0.01,
              weight_decay: float = 1e-4, seed: int = 0) -> list[float]:
        """Mini-batch Adam on the cross-entropy; returns the per-epoch mean losses (seeded, deterministic).

        Runs on one BLAS thread: its products are small (a batch of ``batch_size`` rows), where
        more threads only add synchronisation (and, on a busy machine, spinning).
        """
        opt = Adam(self.params, lr=lr)
        rng = np.random.default_rng([int(seed), 11])
        losses: list[float] = []
        with thread_limits(1):
            self._epochs(opt, rng, u, cand_class, cand_dist, mask, target, epochs, batch_size, weight_decay, losses)
        return losses

    def _epochs(self, opt: Adam, rng: np.random.Generator, u: np.ndarray, cand_class: np.ndarray,
                cand_dist: np.ndarray, mask: np.ndarray, target: np.ndarray, epochs: int, batch_size: int,
                weight_decay: float, losses: list[float]) -> None:
        n = u.shape[0]
        for _ in range(epochs):
            order = rng.permutation(n)
            total = 0.0
            for lo in range(0, n, batch_size):
                idx = np.sort(order[lo : lo + batch_size])
                loss, grads = self.loss_and_grads(u[idx], cand_class[idx], cand_dist[idx], mask[idx], target[idx],
                                                  weight_decay)
                opt.step(grads)
                total += loss * idx.shape[0]
            losses.append(total / n)

    def state(self) -> dict[str, Any]:
        return {k: v.copy() for k, v in self.params.items()}

    def load(self, params: dict[str, Any]) -> None:
        for k, v in self.params.items():
            arr = np.asarray(params[k])
            if arr.shape != v.shape:
                raise ValueError(f"label head parameter {k} has shape {arr.shape}, expected {v.shape}")
            v[...] = arr


def top_classes(logp: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``t`` most probable classes of each row of ``logp`` and their probabilities (float32), best first."""
    t = min(int(t), logp.shape[1])
    part = np.argpartition(-logp, t - 1, axis=1)[:, :t] if t < logp.shape[1] else np.broadcast_to(
        np.arange(logp.shape[1]), logp.shape).copy()
    lp = np.take_along_axis(logp, part, axis=1)
    order = np.argsort(-lp, axis=1, kind="stable")
    cls = np.take_along_axis(part, order, axis=1).astype(np.int64)
    return cls, np.exp(np.take_along_axis(lp, order, axis=1)).astype(np.float32)


def same_class_log_proba(pool: np.ndarray, logp: np.ndarray, row_class: np.ndarray, unknown_class: np.ndarray,
                         unknown_proba: np.ndarray) -> np.ndarray:
    """``log P(same class | q, v)`` of every pool item (0 on padding).

    A labelled row ``v`` (``row_class[v] < n_known``): ``log p(class(v) | q)``. An unknown-label row:
    ``log sum_t p(c_t | q) r_v(c_t)`` over its predicted classes ``unknown_class[v]`` (``-1``
    padding) with probabilities ``unknown_proba[v]``.
    """
    n_known = logp.shape[1]
    safe = np.maximum(pool, 0)
    cls = row_class[safe]
    known = cls < n_known
    lab = np.take_along_axis(logp, np.minimum(cls, n_known - 1), axis=1)
    uc = unknown_class[safe]  # (B, P, T)
    up = np.where(uc >= 0, unknown_proba[safe], 0.0)
    pq = np.exp(logp)
    qp = np.take_along_axis(pq[:, None, :], np.maximum(uc, 0).reshape(pool.shape[0], -1)[:, None, :],
                            axis=2).reshape(uc.shape)
    unk = np.log(np.maximum((qp * up).sum(axis=2), _FLOOR))
    out = np.where(known, lab, unk)
    return np.where(pool >= 0, out, 0.0).astype(np.float32)


def class_candidates(queries_stored: np.ndarray, vectors: np.ndarray, top_class: np.ndarray, indptr: np.ndarray,
                     members: np.ndarray, m: int, space: str, allowed: np.ndarray | None = None) -> np.ndarray:
    """Per query, the ``m`` members of its ``top_class`` nearest to it (index distance; -1 padding).

    Queries are grouped by class, and each group's distances are one BLAS product.
    ``allowed`` (N,) bool drops rows (deleted items).
    """
    B = queries_stored.shape[0]
    out = np.full((B, m), -1, dtype=np.int64)
    for c in np.unique(top_class):
        qi = np.flatnonzero(top_class == c)
        rows = members[indptr[c] : indptr[c + 1]]
        if allowed is not None:
            rows = rows[allowed[rows]]
        if rows.size == 0:
            continue
        x = vectors[rows]
        q = queries_stored[qi]
        if space == "l2":
            d = (q * q).sum(1)[:, None] - 2.0 * (q @ x.T) + (x * x).sum(1)[None, :]
        else:
            d = 1.0 - q @ x.T
        take = min(m, rows.size)
        part = np.argpartition(d, take - 1, axis=1)[:, :take] if take < rows.size else np.broadcast_to(
            np.arange(rows.size), (qi.size, rows.size))
        dd = np.take_along_axis(d, part, axis=1)
        order = np.argsort(dd, axis=1, kind="stable")
        out[qi, :take] = rows[np.take_along_axis(part, order, axis=1)]
    return out
