"""Composed objective: the contrastive loss of re-scored HNSW candidates.

:class:`CandidateContrastive` wires the parts together for the usual reranker step: given
the model's scores of each query's candidate list, it marks positives (same label, or
listed positive ids), drops padding and the query itself, optionally mines a subset of
negatives, and returns ``(loss, dloss/dscores)`` of InfoNCE or the triplet loss.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from ruvector_hnsw.errors import ConfigError, InvalidInputError, ShapeMismatchError
from ruvector_hnsw.training._validate import as_bool_matrix, as_float, as_id_array, check_positive
from ruvector_hnsw.training.losses import ids_to_mask, info_nce, triplet
from ruvector_hnsw.training.miners import Miner, label_positive_mask

__all__ = ["CandidateContrastive"]


class CandidateContrastive:
    """Contrastive loss over scored candidate lists.

    Parameters
    ----------
    loss : {"info_nce", "triplet"}
        ``info_nce``: :func:`~ruvector_hnsw.training.losses.info_nce` over positives and
        negatives; ``triplet``: :func:`~ruvector_hnsw.training.losses.triplet` on scores.
    temperature : float
        InfoNCE temperature (overridable per call, e.g. from the curriculum).
    margin : float
        Triplet margin.
    miner : Miner, optional
        Chooses the negatives among the candidates (its ``num_negatives`` overridable per
        call). Default: every valid non-positive candidate is a negative. Negatives from
        outside the candidate list (random miner, ``pool="database"``) cannot be scored
        here and are ignored.
    form : {"supcon", "logsumexp"}
        InfoNCE multi-positive form.
    triplet_mining : {"all", "hardest"}
        Triplet pairing.

    Notes
    -----
    After a call, ``last_positives`` and ``last_negatives`` hold the (B, C) masks used.
    Rows without any positive among the candidates contribute nothing (append their
    positives as extra scored columns to train on them).
    """

    def __init__(
        self,
        loss: Literal["info_nce", "triplet"] = "info_nce",
        *,
        temperature: float = 0.1,
        margin: float = 0.2,
        miner: Miner | None = None,
        form: Literal["supcon", "logsumexp"] = "supcon",
        triplet_mining: Literal["all", "hardest"] = "all",
    ) -> None:
        if loss not in ("info_nce", "triplet"):
            raise ConfigError(f"loss: expected 'info_nce' or 'triplet', got {loss!r}")
        self.loss = loss
        self.temperature = check_positive(temperature, "temperature")
        self.margin = check_positive(margin, "margin", allow_zero=True)
        if miner is not None and not isinstance(miner, Miner):
            raise ConfigError("miner: expected a Miner instance")
        self.miner = miner
        if form not in ("supcon", "logsumexp"):
            raise ConfigError(f"form: expected 'supcon' or 'logsumexp', got {form!r}")
        self.form = form
        if triplet_mining not in ("all", "hardest"):
            raise ConfigError(f"triplet_mining: expected 'all' or 'hardest', got {triplet_mining!r}")
        self.triplet_mining = triplet_mining
        self.last_positives: np.ndarray | None = None
        self.last_negatives: np.ndarray | None = None

    def __call__(
        self,
        scores: Any,
        candidate_ids: Any,
        *,
        labels: Any = None,
        query_labels: Any = None,
        positive_ids: Any = None,
        positive_mask: Any = None,
        exclude_ids: Any = None,
        temperature: float | None = None,
        num_negatives: int | None = None,
    ) -> tuple[float, np.ndarray]:
        """Loss and ``dloss/dscores`` (B, C).

        Parameters
        ----------
        scores : array_like, shape (B, C)
            Model scores of the candidates (higher = closer).
        candidate_ids : array_like of int, shape (B, C)
            Candidate ids, ``-1`` padded (padding is excluded from every term).
        labels, query_labels : optional
            Database labels (array indexed by id, or mapping) and query labels: positives
            are candidates sharing the query's label.
        positive_ids : array_like of int, shape (B, p), optional
            Explicit positive ids (``-1`` padded), instead of labels.
        positive_mask : array_like of bool, shape (B, C), optional
            Explicit positive columns, instead of labels or ids.
        exclude_ids : array_like of int, shape (B,), optional
            The query's own id when it is a database item (``-1`` = none): removed from
            the candidate columns entirely.
        temperature, num_negatives : optional
            Per-call overrides (curriculum).
        """
        s = as_float(scores, "scores", ndim=2)
        cand = as_id_array(candidate_ids, "candidate_ids", ndim=2)
        if cand.shape != s.shape:
            raise ShapeMismatchError(f"candidate_ids: shape {cand.shape} != scores shape {s.shape}")
        given = sum(x is not None for x in (positive_mask, positive_ids, labels))
        if given != 1:
            raise InvalidInputError(
                "positives: give exactly one of labels (+query_labels), positive_ids, positive_mask"
            )
        if positive_mask is not None:
            pos = as_bool_matrix(positive_mask, "positive_mask", s.shape)
        elif positive_ids is not None:
            pos = ids_to_mask(cand, positive_ids)
        else:
            if query_labels is None:
                raise InvalidInputError("query_labels: required with labels")
            pos = label_positive_mask(cand, labels, query_labels)
        valid = cand >= 0
        if exclude_ids is not None:
            ex = as_id_array(exclude_ids, "exclude_ids", ndim=1)
            if ex.shape[0] != s.shape[0]:
                raise ShapeMismatchError(f"exclude_ids: expected {s.shape[0]} entries, got {ex.shape[0]}")
            valid &= ~((cand == ex[:, None]) & (ex[:, None] >= 0))
        pos &= valid
        if self.miner is not None:
            mined = self.miner(
                np.where(valid, cand, -1),
                positive_mask=pos,
                scores=s,
                num_negatives=num_negatives,
            )
            neg = mined.column_mask() & valid & ~pos
        else:
            neg = valid & ~pos
        self.last_positives, self.last_negatives = pos, neg
        if self.loss == "info_nce":
            tau = self.temperature if temperature is None else check_positive(temperature, "temperature")
            return info_nce(s, pos, temperature=tau, candidate_mask=pos | neg, form=self.form)
        return triplet(s, pos, neg, margin=self.margin, kind="scores", mining=self.triplet_mining)

    def state_dict(self) -> dict[str, Any]:
        """The miner's state (generator), for checkpoints."""
        return {"miner": self.miner.state_dict() if self.miner is not None else {}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        if self.miner is not None and state.get("miner"):
            self.miner.load_state_dict(state["miner"])
