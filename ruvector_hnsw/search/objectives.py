"""The choices of :meth:`AttentionSearch.fit`'s training toolkit: pool loss, graph terms, miners, optimizers.

Every training query has a pool of table rows and a positive mask (see
:mod:`ruvector_hnsw.search.training`); the model scores the pool by the latent similarity
``sim[b, c] = <zhat_q[b], zhat_v[pool[b, c]]>`` of unit codes. This module turns the names of
``fit``'s options into the functions and objects that act on those similarities and codes:

``loss``
    - ``"infonce"``: multi-positive InfoNCE over the pool at ``temperature`` (the default).
    - ``"triplet"``: the margin triplet loss over every (positive, negative) pair of a pool
      (``margin`` on the cosine similarity, hinge), averaged per query.
    - ``"local_contrastive"``: InfoNCE plus the graph-local contrastive term on the codes of the
      encoded pool rows (:class:`LocalContrastiveTerm`): each row's layer-0 HNSW neighbours among
      the encoded rows are its positives, ``local_negatives`` random encoded non-neighbours its
      negatives, weighted by ``local_weight``.
``regularizer``
    ``None``, ``"laplacian"`` (:class:`LinkLaplacianTerm`: the mean squared code distance over
    the layer-0 links among the encoded rows, times ``reg_weight``) or any object with the
    :class:`CodeTerm` call form.
``miner``
    The hard negatives re-mined every epoch from the current codes: ``"hard"``
    (:class:`~ruvector_hnsw.training.HardNegativeMiner`, the highest-scoring non-relevant rows of
    the latent top-``4m``), ``"semihard"`` (:class:`~ruvector_hnsw.training.SemiHardNegativeMiner`,
    below the query's weakest relevant row by less than ``margin``), ``"random"`` (uniform among
    the non-relevant rows of the latent top-``4m``), or a :class:`~ruvector_hnsw.training.Miner`.
``optimizer``
    ``"adam"``, ``"adamw"``, ``"sgd"`` (momentum 0.9) or ``"natural"``
    (:class:`~ruvector_hnsw.training.NaturalGradient` in its diagonal mode: the search loss has
    no closed-form Fisher-vector product, so the exact mode is not offered here).

Graph terms are pure functions of ``(codes, rows)`` of the rows a step encoded; their neighbour
lists come from the database contexts (the local columns are the layer-0 links).
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ruvector_hnsw.errors import ConfigError
from ruvector_hnsw.training.losses import info_nce, local_contrastive, triplet
from ruvector_hnsw.training.miners import HardNegativeMiner, Miner, RandomNegativeMiner, SemiHardNegativeMiner
from ruvector_hnsw.training.optim import Optimizer, make_optimizer
from ruvector_hnsw.training.regularizers import laplacian_smoothness
from ruvector_hnsw.training.schedules import Curriculum

__all__ = [
    "LOSSES",
    "MINERS",
    "OPTIMIZERS",
    "REGULARIZERS",
    "CodeTerm",
    "LinkLaplacianTerm",
    "LocalContrastiveTerm",
    "check_toolkit",
    "induced_links",
    "make_fit_optimizer",
    "make_miner",
    "make_regularizer",
    "pool_objective",
]

LOSSES = ("infonce", "triplet", "local_contrastive")
MINERS = ("hard", "semihard", "random")
REGULARIZERS = ("laplacian",)
OPTIMIZERS = ("adam", "adamw", "sgd", "natural")


def _non_negative(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not np.isfinite(value) or value < 0:
        raise ConfigError(f"{name}: expected a finite number >= 0, got {value!r}")
    return float(value)


def check_toolkit(*, loss: Any, miner: Any, curriculum: Any, regularizer: Any, optimizer: Any, margin: Any,
                  local_weight: Any, reg_weight: Any) -> None:
    """Validate ``fit``'s toolkit options (raises :class:`~ruvector_hnsw.errors.ConfigError`, changes nothing)."""
    if loss not in LOSSES:
        raise ConfigError(f"loss: expected one of {LOSSES}, got {loss!r}")
    if not isinstance(miner, Miner) and miner not in MINERS:
        raise ConfigError(f"miner: expected one of {MINERS} or a Miner, got {miner!r}")
    if curriculum is not None and not isinstance(curriculum, Curriculum):
        raise ConfigError(f"curriculum: expected None or a Curriculum, got {type(curriculum).__name__}")
    if not isinstance(optimizer, str) or optimizer not in OPTIMIZERS:
        raise ConfigError(f"optimizer: expected one of {OPTIMIZERS}, got {optimizer!r}")
    _non_negative(margin, "margin")
    _non_negative(local_weight, "local_weight")
    make_regularizer(regularizer, _non_negative(reg_weight, "reg_weight"))


def pool_objective(loss: str, sim: np.ndarray, posmask: np.ndarray, valid: np.ndarray, *, temperature: float,
                   margin: float) -> tuple[float, np.ndarray]:
    """The pool loss ``loss`` of similarities ``sim`` (B, P) and its gradient ``dL/dsim``.

    ``local_contrastive`` scores the pool with InfoNCE (its graph part is a :class:`CodeTerm`).
    """
    if loss == "triplet":
        value, grad = triplet(sim, posmask, margin=margin, kind="scores", mining="all", candidate_mask=valid)
    elif loss in ("infonce", "local_contrastive"):
        value, grad = info_nce(sim, posmask, temperature=temperature, candidate_mask=valid)
    else:
        raise ConfigError(f"loss: expected one of {LOSSES}, got {loss!r}")
    return float(value), np.asarray(grad)


def induced_links(rows: np.ndarray, neighbours: np.ndarray, linked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR of the links among ``rows`` (sorted table rows), in local indices ``0 .. len(rows)-1``.

    ``neighbours`` (len(rows), K) are the table rows each row links to (-1 = none) and ``linked``
    (len(rows), K) marks the entries that are links (e.g. layer-0 context columns); links to rows
    outside ``rows`` and self links are dropped.
    """
    rows = np.asarray(rows, dtype=np.int64)
    n = rows.shape[0]
    nb = np.asarray(neighbours, dtype=np.int64)
    if n == 0:
        return np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int64)
    at = np.minimum(np.searchsorted(rows, nb), n - 1)
    keep = np.asarray(linked, dtype=bool) & (nb >= 0) & (rows[at] == nb) & (at != np.arange(n)[:, None])
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(keep.sum(axis=1), out=indptr[1:])
    return indptr, at[keep].astype(np.int64)


class CodeTerm(Protocol):
    """A training term on the codes of the rows a step encoded.

    ``term(codes, rows, neighbours, linked, rng) -> (value, d value / d codes)`` with ``codes``
    (n, p) the unit codes of the sorted table ``rows``, ``neighbours``/``linked`` their context
    rows and link mask (see :func:`induced_links`) and ``rng`` the trainer's generator.
    """

    @property
    def name(self) -> str: ...

    def __call__(self, codes: np.ndarray, rows: np.ndarray, neighbours: np.ndarray, linked: np.ndarray,
                 rng: np.random.Generator | None) -> tuple[float, np.ndarray]: ...


@dataclass(frozen=True)
class LocalContrastiveTerm:
    """``weight *`` graph-local InfoNCE on the encoded rows' codes (neighbours = positives).

    Anchors are the encoded rows with at least one encoded neighbour; negatives are
    ``negatives`` encoded non-neighbours drawn with the trainer's generator; similarity is the
    dot product of the unit codes, at ``temperature``.
    """

    weight: float = 1.0
    negatives: int = 16
    temperature: float = 0.1
    name: str = "local_contrastive"

    def __call__(self, codes: np.ndarray, rows: np.ndarray, neighbours: np.ndarray, linked: np.ndarray,
                 rng: np.random.Generator | None) -> tuple[float, np.ndarray]:
        indptr, indices = induced_links(rows, neighbours, linked)
        anchors = np.flatnonzero(np.diff(indptr) > 0)
        grad = np.zeros_like(codes)
        if anchors.size == 0 or codes.shape[0] < 3:
            return 0.0, grad
        gen = rng if rng is not None else np.random.default_rng(0)
        value, g = local_contrastive(codes, indptr, indices, nodes=anchors, num_negatives=self.negatives, rng=gen,
                                     temperature=self.temperature, similarity="dot")
        return self.weight * float(value), self.weight * np.asarray(g, dtype=codes.dtype)


@dataclass(frozen=True)
class LinkLaplacianTerm:
    """``weight *`` mean over the links among the encoded rows of ``||z_i - z_j||^2`` (smooth codes)."""

    weight: float = 0.1
    name: str = "laplacian"

    def __call__(self, codes: np.ndarray, rows: np.ndarray, neighbours: np.ndarray, linked: np.ndarray,
                 rng: np.random.Generator | None) -> tuple[float, np.ndarray]:
        indptr, indices = induced_links(rows, neighbours, linked)
        if indices.size == 0:
            return 0.0, np.zeros_like(codes)
        value, g = laplacian_smoothness(codes, indptr, indices, reduction="mean")
        return self.weight * float(value), self.weight * np.asarray(g, dtype=codes.dtype)


def make_regularizer(spec: Any, weight: float) -> CodeTerm | None:
    """``None``, ``"laplacian"`` (:class:`LinkLaplacianTerm` with ``weight``) or a :class:`CodeTerm`."""
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec == "laplacian":
            return LinkLaplacianTerm(weight=float(weight))
        raise ConfigError(f"regularizer: expected None, one of {REGULARIZERS} or a CodeTerm, got {spec!r}")
    if callable(spec) and isinstance(getattr(spec, "name", None), str):
        return spec
    raise ConfigError(f"regularizer: expected None, one of {REGULARIZERS} or a CodeTerm "
                      f"(callable with a `name`), got {type(spec).__name__}")


def make_miner(spec: Any, num_negatives: int, *, margin: float, seed: int) -> Miner:
    """A miner from ``fit``'s ``miner`` option (a name or a :class:`~ruvector_hnsw.training.Miner`)."""
    if isinstance(spec, Miner):
        return spec
    if spec == "hard":
        return HardNegativeMiner(num_negatives)
    if spec == "semihard":
        return SemiHardNegativeMiner(num_negatives, margin=margin, fallback="hard", seed=seed)
    if spec == "random":
        return RandomNegativeMiner(num_negatives, pool="candidates", seed=seed)
    raise ConfigError(f"miner: expected one of {MINERS} or a Miner, got {spec!r}")


def make_fit_optimizer(name: Any, params: MutableMapping[str, np.ndarray], *, lr: float,
                       weight_decay: float) -> Optimizer:
    """The optimizer of ``fit`` (gradient-norm clipping at 10 where the optimizer has it)."""
    if not isinstance(name, str) or name not in OPTIMIZERS:
        raise ConfigError(f"optimizer: expected one of {OPTIMIZERS}, got {name!r}")
    config: Mapping[str, Any]
    if name in ("adam", "adamw"):
        config = {"lr": lr, "weight_decay": weight_decay, "max_grad_norm": 10.0}
    elif name == "sgd":
        config = {"lr": lr, "momentum": 0.9, "weight_decay": weight_decay, "max_grad_norm": 10.0}
    else:
        config = {"lr": lr, "mode": "diagonal", "weight_decay": weight_decay}
    return make_optimizer(name, params, **config)
