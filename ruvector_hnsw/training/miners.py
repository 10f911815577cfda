"""Negative miners over HNSW candidate lists, with false-negative filtering by label.

Calling convention (every miner)
--------------------------------
``miner(candidate_ids, labels=..., query_labels=..., scores=None, exclude_ids=None,
num_negatives=None) -> MinedNegatives``

- ``candidate_ids`` (B, C) int: ids returned by an index search, best first; ``-1`` pads.
- ``labels``: label of every database item, an array indexed by id or a mapping id -> label
  (see :func:`lookup_labels`). ``query_labels`` (B,): the label of each query.
- ``scores`` (B, C), optional: current model scores of the candidates (higher = closer);
  without them the candidate order is taken as the ranking.
- ``exclude_ids`` (B,), optional: one id per query never to return (the query itself when
  training queries are database items); ``-1`` = none.
- A candidate whose label equals the query label is a *positive* (a false negative if
  mined), never returned as a negative; padded ids are never returned.
- Instead of labels, ``positive_mask`` (B, C) bool may mark the positives directly (e.g.
  from explicit positive id lists via :func:`~ruvector_hnsw.training.losses.ids_to_mask`);
  the random miner's ``pool="database"`` needs labels.

The result holds the negative ids (B, n) (``-1`` padded), their column in
``candidate_ids`` (or ``-1`` for ids drawn from outside the candidate list), and a
``(B, C)`` column mask ready to use as the negatives of :func:`~ruvector_hnsw.training.losses.triplet`
or, together with the positives, as the ``candidate_mask`` of
:func:`~ruvector_hnsw.training.losses.info_nce`.

Randomness: a miner that samples owns a ``numpy.random.Generator`` created from its
``seed`` (or handed in); successive calls draw different negatives, the sequence is
reproducible from the seed, and ``state_dict()``/``load_state_dict()`` checkpoint it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ruvector_hnsw.errors import ConfigError, InvalidInputError, ShapeMismatchError, UnknownIdError
from ruvector_hnsw.training._validate import as_bool_matrix, as_float, as_id_array

__all__ = [
    "HardNegativeMiner",
    "MinedNegatives",
    "Miner",
    "RandomNegativeMiner",
    "SemiHardNegativeMiner",
    "label_positive_mask",
    "lookup_labels",
]


@dataclass(frozen=True)
class MinedNegatives:
    """Negatives chosen per query.

    Attributes
    ----------
    ids : numpy.ndarray of int64, shape (B, n)
        Negative item ids, ``-1`` padded (fewer eligible candidates than requested).
    columns : numpy.ndarray of int64, shape (B, n)
        Column of each negative in ``candidate_ids``; ``-1`` for padding or for ids drawn
        from the whole database (random miner with ``pool="database"``).
    n_candidates : int
        ``C``, the width of the candidate list the columns refer to.
    """

    ids: np.ndarray
    columns: np.ndarray
    n_candidates: int

    @property
    def mask(self) -> np.ndarray:
        """(B, n) bool: which entries of ``ids`` are real negatives."""
        return self.ids >= 0

    def column_mask(self) -> np.ndarray:
        """(B, C) bool: True at the candidate columns chosen as negatives."""
        out = np.zeros((self.ids.shape[0], self.n_candidates), dtype=bool)
        rows, js = np.nonzero(self.columns >= 0)
        out[rows, self.columns[rows, js]] = True
        return out


def lookup_labels(labels: Any, ids: Any) -> tuple[np.ndarray, np.ndarray]:
    """Labels of ``ids`` and a mask of which ids are real (not ``-1`` padding).

    Parameters
    ----------
    labels : array_like or Mapping
        ``labels[id]`` is the label of database item ``id``: a 1-D array indexed by id, or a
        mapping ``{id: label}`` (integer-like labels).
    ids : array_like of int
        Any shape; ``-1`` entries are padding (their returned label is meaningless).

    Returns
    -------
    values : numpy.ndarray
        Labels, same shape as ``ids``.
    present : numpy.ndarray of bool
        ``ids >= 0``.

    Raises
    ------
    UnknownIdError
        An id (other than ``-1``) has no label.
    """
    idx = as_id_array(ids, "ids")
    present = idx >= 0
    if isinstance(labels, Mapping):
        keys = np.fromiter((int(k) for k in labels.keys()), dtype=np.int64, count=len(labels))
        vals = np.asarray(list(labels.values()))
        order = np.argsort(keys)
        keys, vals = keys[order], vals[order]
        flat = idx[present]
        if keys.size == 0:
            if flat.size:
                raise UnknownIdError(f"labels: no label for id {int(flat[0])} (empty mapping)")
            return np.zeros(idx.shape, dtype=np.int64), present
        pos = np.minimum(np.searchsorted(keys, flat), keys.shape[0] - 1)
        ok = keys[pos] == flat
        if not np.all(ok):
            raise UnknownIdError(f"labels: no label for id {int(flat[~ok][0])}")
        out = np.empty(idx.shape, dtype=vals.dtype)
        out[~present] = vals[0]
        out[present] = vals[pos]
        return out, present
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ShapeMismatchError(f"labels: expected a 1-D array indexed by id, got shape {arr.shape}")
    if idx.size and present.any() and idx.max() >= arr.shape[0]:
        raise UnknownIdError(f"labels: no label for id {int(idx.max())} (labels has {arr.shape[0]} entries)")
    safe = np.where(present, idx, 0)
    if arr.shape[0] == 0:
        return np.zeros(idx.shape, dtype=arr.dtype), present
    return arr[safe], present


def label_positive_mask(candidate_ids: Any, labels: Any, query_labels: Any) -> np.ndarray:
    """(B, C) bool: candidate ``c`` of query ``b`` is real and shares the query's label."""
    cand = as_id_array(candidate_ids, "candidate_ids", ndim=2)
    ql = np.asarray(query_labels)
    if ql.shape != (cand.shape[0],):
        raise ShapeMismatchError(f"query_labels: expected shape ({cand.shape[0]},), got {ql.shape}")
    lab, present = lookup_labels(labels, cand)
    return present & (lab == ql[:, None])


def _positives(cand: np.ndarray, labels: Any, query_labels: Any, positive_mask: Any) -> np.ndarray:
    """(B, C) bool positives: from ``positive_mask`` if given, else by label."""
    if positive_mask is not None:
        return as_bool_matrix(positive_mask, "positive_mask", cand.shape) & (cand >= 0)
    if labels is None or query_labels is None:
        raise InvalidInputError("labels/query_labels: give both (or positive_mask) to filter false negatives")
    return label_positive_mask(cand, labels, query_labels)


def _eligible(cand: np.ndarray, positives: np.ndarray, exclude_ids: Any) -> np.ndarray:
    """(B, C) bool: candidates that may serve as negatives."""
    ok = (cand >= 0) & ~positives
    if exclude_ids is not None:
        ex = as_id_array(exclude_ids, "exclude_ids", ndim=1)
        if ex.shape[0] != cand.shape[0]:
            raise ShapeMismatchError(f"exclude_ids: expected {cand.shape[0]} entries, got {ex.shape[0]}")
        ok &= ~((cand == ex[:, None]) & (ex[:, None] >= 0))
    return ok


def _take_top(cand: np.ndarray, order_key: np.ndarray, eligible: np.ndarray, n: int) -> MinedNegatives:
    """Per row, the ``n`` eligible columns with the largest ``order_key`` (earlier column wins ties)."""
    key = np.where(eligible, order_key, -np.inf)
    order = np.argsort(-key, axis=1, kind="stable")[:, :n]
    chosen_ok = np.take_along_axis(eligible, order, axis=1)
    cols = np.where(chosen_ok, order, -1)
    ids = np.where(chosen_ok, np.take_along_axis(cand, order, axis=1), -1)
    if ids.shape[1] < n:  # fewer candidates than requested: pad
        pad = np.full((ids.shape[0], n - ids.shape[1]), -1, np.int64)
        ids, cols = np.concatenate([ids, pad], 1), np.concatenate([cols, pad], 1)
    return MinedNegatives(ids=ids.astype(np.int64), columns=cols.astype(np.int64), n_candidates=cand.shape[1])


class Miner:
    """Base class: holds ``num_negatives`` and an optional seeded generator (see module docs)."""

    def __init__(
        self, num_negatives: int = 16, *, seed: int | None = 0, rng: np.random.Generator | None = None
    ) -> None:
        self.num_negatives = self._check_n(num_negatives)
        self.rng = rng if rng is not None else np.random.default_rng(seed)

    @staticmethod
    def _check_n(n: Any) -> int:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ConfigError(f"num_negatives: expected an int >= 0, got {n!r}")
        return int(n)

    def _prepare(
        self, candidate_ids: Any, scores: Any, num_negatives: int | None
    ) -> tuple[np.ndarray, np.ndarray | None, int]:
        cand = as_id_array(candidate_ids, "candidate_ids", ndim=2)
        s = None
        if scores is not None:
            s = as_float(scores, "scores", ndim=2)
            if s.shape != cand.shape:
                raise ShapeMismatchError(f"scores: expected shape {cand.shape}, got {s.shape}")
        n = self.num_negatives if num_negatives is None else self._check_n(num_negatives)
        return cand, s, n

    def __call__(
        self,
        candidate_ids: Any,
        *,
        labels: Any = None,
        query_labels: Any = None,
        positive_mask: Any = None,
        scores: Any = None,
        exclude_ids: Any = None,
        num_negatives: int | None = None,
    ) -> MinedNegatives:
        """Mine negatives; see the module docstring for the arguments."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state: ``num_negatives`` and the generator state."""
        return {"num_negatives": self.num_negatives, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (the generator continues identically)."""
        if "rng" not in state:
            raise InvalidInputError("state: missing 'rng'")
        self.num_negatives = self._check_n(state.get("num_negatives", self.num_negatives))
        self.rng.bit_generator.state = dict(state["rng"])


class HardNegativeMiner(Miner):
    """The ``n`` highest-scoring candidates whose label differs from the query's.

    Ranking by ``scores`` when given, else by candidate order (HNSW returns nearest
    first). Deterministic. ``num_negatives`` may be overridden per call (curriculum).
    ``skip_top`` ignores the first few eligible candidates (near-duplicates / label noise).
    """

    def __init__(self, num_negatives: int = 16, *, skip_top: int = 0) -> None:
        super().__init__(num_negatives, seed=None)
        if int(skip_top) < 0:
            raise ConfigError(f"skip_top: must be >= 0, got {skip_top}")
        self.skip_top = int(skip_top)

    def __call__(
        self,
        candidate_ids: Any,
        *,
        labels: Any = None,
        query_labels: Any = None,
        positive_mask: Any = None,
        scores: Any = None,
        exclude_ids: Any = None,
        num_negatives: int | None = None,
    ) -> MinedNegatives:
        """Mine hard negatives (see class docstring)."""
        cand, s, n = self._prepare(candidate_ids, scores, num_negatives)
        ok = _eligible(cand, _positives(cand, labels, query_labels, positive_mask), exclude_ids)
        key = s.astype(np.float64) if s is not None else -np.arange(cand.shape[1], dtype=np.float64)[None, :]
        key = np.broadcast_to(key, cand.shape)
        if self.skip_top:
            key_ok = np.where(ok, key, -np.inf)
            order = np.argsort(-key_ok, axis=1, kind="stable")
            rank = np.empty_like(order)
            np.put_along_axis(rank, order, np.arange(cand.shape[1])[None, :].repeat(cand.shape[0], 0), axis=1)
            ok = ok & (rank >= self.skip_top)
        return _take_top(cand, key, ok, n)


class SemiHardNegativeMiner(Miner):
    """Semi-hard negatives (FaceNet): less similar than the positive, but within ``margin`` of it.

    Eligible negatives ``c`` satisfy ``ref_b - margin < S_bc < ref_b`` where ``ref_b`` is
    ``positive_scores[b]`` if given, else the score of the query's hardest (lowest-scoring)
    label-positive candidate. Among them the ``n`` hardest (highest score) are returned.
    Rows without a reference (no positive among the candidates) or with too few semi-hard
    candidates are topped up according to ``fallback``: ``"hard"`` (hardest remaining
    eligible negatives), ``"random"`` (uniformly from the remaining eligible negatives, using
    the miner's generator) or ``"none"`` (leave ``-1`` padding).
    """

    def __init__(
        self,
        num_negatives: int = 16,
        *,
        margin: float = 0.2,
        fallback: Literal["hard", "random", "none"] = "hard",
        seed: int | None = 0,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__(num_negatives, seed=seed, rng=rng)
        if not np.isfinite(margin) or margin < 0:
            raise ConfigError(f"margin: must be finite and >= 0, got {margin!r}")
        if fallback not in ("hard", "random", "none"):
            raise ConfigError(f"fallback: expected 'hard', 'random' or 'none', got {fallback!r}")
        self.margin = float(margin)
        self.fallback = fallback

    def __call__(
        self,
        candidate_ids: Any,
        *,
        labels: Any = None,
        query_labels: Any = None,
        positive_mask: Any = None,
        scores: Any = None,
        exclude_ids: Any = None,
        num_negatives: int | None = None,
        positive_scores: Any = None,
    ) -> MinedNegatives:
        """Mine semi-hard negatives; ``scores`` is required (see class docstring)."""
        cand, s, n = self._prepare(candidate_ids, scores, num_negatives)
        if s is None:
            raise InvalidInputError("scores: the semi-hard miner needs the candidates' scores")
        s64 = s.astype(np.float64)
        pos = _positives(cand, labels, query_labels, positive_mask)
        ok = _eligible(cand, pos, exclude_ids)
        if positive_scores is not None:
            ref = as_float(positive_scores, "positive_scores", ndim=1).astype(np.float64)
            if ref.shape[0] != cand.shape[0]:
                raise ShapeMismatchError(f"positive_scores: expected {cand.shape[0]} entries, got {ref.shape[0]}")
        else:
            ref = np.min(np.where(pos, s64, np.inf), axis=1)
            ref = np.where(np.isfinite(ref), ref, np.nan)
        with np.errstate(invalid="ignore"):
            semi = ok & (s64 < ref[:, None]) & (s64 > ref[:, None] - self.margin)
        out = _take_top(cand, s64, semi, n)
        if self.fallback == "none":
            return out
        missing = (out.ids < 0).sum(axis=1)
        if not missing.any():
            return out
        rest = ok & ~out.column_mask()
        if self.fallback == "hard":
            extra = _take_top(cand, s64, rest, n)
        else:
            extra = _take_top(cand, self.rng.random(cand.shape), rest, n)
        ids, cols = out.ids.copy(), out.columns.copy()
        for b in np.nonzero(missing)[0]:
            have = int((ids[b] >= 0).sum())
            add = min(n - have, int((extra.ids[b] >= 0).sum()))
            ids[b, have : have + add] = extra.ids[b, :add]
            cols[b, have : have + add] = extra.columns[b, :add]
        return MinedNegatives(ids=ids, columns=cols, n_candidates=cand.shape[1])


class RandomNegativeMiner(Miner):
    """Uniformly random negatives, with the false-negative filter.

    ``pool="candidates"``: drawn without replacement among the eligible candidates of each
    row. ``pool="database"``: drawn among all ids ``0 .. len(labels)-1`` (array labels) or
    the keys of a label mapping, rejecting same-label ids and ``exclude_ids``; their
    ``columns`` are ``-1`` (score them separately). Successive calls advance the miner's
    generator, so they return different negatives; the sequence is reproducible from
    ``seed``.
    """

    def __init__(
        self,
        num_negatives: int = 16,
        *,
        pool: Literal["candidates", "database"] = "candidates",
        seed: int | None = 0,
        rng: np.random.Generator | None = None,
        max_rounds: int = 16,
    ) -> None:
        super().__init__(num_negatives, seed=seed, rng=rng)
        if pool not in ("candidates", "database"):
            raise ConfigError(f"pool: expected 'candidates' or 'database', got {pool!r}")
        self.pool = pool
        self.max_rounds = int(max_rounds)

    def __call__(
        self,
        candidate_ids: Any,
        *,
        labels: Any = None,
        query_labels: Any = None,
        positive_mask: Any = None,
        scores: Any = None,
        exclude_ids: Any = None,
        num_negatives: int | None = None,
    ) -> MinedNegatives:
        """Mine random negatives (see class docstring)."""
        cand, _, n = self._prepare(candidate_ids, scores, num_negatives)
        if self.pool == "candidates":
            ok = _eligible(cand, _positives(cand, labels, query_labels, positive_mask), exclude_ids)
            return _take_top(cand, self.rng.random(cand.shape), ok, n)
        if labels is None or query_labels is None:
            raise InvalidInputError('labels/query_labels: pool="database" needs labels to filter false negatives')
        return self._from_database(cand, labels, query_labels, exclude_ids, n)

    def _from_database(
        self, cand: np.ndarray, labels: Any, query_labels: Any, exclude_ids: Any, n: int
    ) -> MinedNegatives:
        b = cand.shape[0]
        ql = np.asarray(query_labels)
        if ql.shape != (b,):
            raise ShapeMismatchError(f"query_labels: expected shape ({b},), got {ql.shape}")
        ex = np.full(b, -1, np.int64) if exclude_ids is None else as_id_array(exclude_ids, "exclude_ids", ndim=1)
        if ex.shape[0] != b:
            raise ShapeMismatchError(f"exclude_ids: expected {b} entries, got {ex.shape[0]}")
        if isinstance(labels, Mapping):
            universe = np.sort(np.fromiter((int(k) for k in labels.keys()), np.int64, count=len(labels)))
        else:
            universe = np.arange(np.asarray(labels).shape[0], dtype=np.int64)
        ids = np.full((b, n), -1, np.int64)
        if universe.size == 0 or n == 0:
            return MinedNegatives(ids=ids, columns=ids.copy(), n_candidates=cand.shape[1])
        filled = np.zeros(b, np.int64)
        for _ in range(max(1, self.max_rounds)):
            todo = np.nonzero(filled < n)[0]
            if todo.size == 0:
                break
            draws = universe[self.rng.integers(0, universe.size, size=(todo.size, 2 * n + 4))]
            lab, _ = lookup_labels(labels, draws)
            good = (lab != ql[todo, None]) & (draws != ex[todo, None])
            for r, row in enumerate(todo):
                have = set(ids[row, : filled[row]].tolist())
                for cid in draws[r][good[r]].tolist():
                    if filled[row] >= n:
                        break
                    if cid in have:
                        continue
                    have.add(cid)
                    ids[row, filled[row]] = cid
                    filled[row] += 1
        return MinedNegatives(ids=ids, columns=np.full((b, n), -1, np.int64), n_candidates=cand.shape[1])
