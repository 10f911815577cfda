"""Evaluation protocols on a labelled dataset: the unseen-class split.

Seen-class protocol (the default, nothing to do): training and evaluation queries share the
classes, and training may read every database label.

Unseen-class protocol (:func:`class_split`): the *classes* are split with a seeded RNG into
seen and unseen ones. Training may only use seen classes -- training queries of unseen classes
are dropped and the labels of unseen-class database items are hidden (``-1`` in
``Dataset.train_base_labels``) -- while evaluation queries come from unseen classes only. The
database keeps every item and relevance still uses the full ``base_labels``, so a method is
judged on classes it never saw a label of, among distractors of the seen ones.

On that split, "unlabelled" means "of an unseen class": a method that prefers unlabelled items
for a query it takes for novel reads the split itself. ``hide_seen`` hides the labels of a seeded
share of the seen classes' items too, so that unlabelled items are a mix, as in a database where
labelling lags behind.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ruvector_hnsw.datasets.base import Dataset
from ruvector_hnsw.errors import ConfigError

__all__ = ["PROTOCOLS", "apply_protocol", "class_split"]

#: names accepted by :func:`apply_protocol` (and ``ruvector-hnsw eval --protocol``)
PROTOCOLS: tuple[str, ...] = ("seen", "unseen")


def _take_rows(extras: dict[str, np.ndarray], prefix: str, keep: np.ndarray) -> dict[str, np.ndarray]:
    return {k: (v[keep] if k.startswith(prefix) else v) for k, v in extras.items()}


def class_split(dataset: Dataset, unseen: float = 0.3, *, seed: int = 0, hide_seen: float = 0.0) -> Dataset:
    """The unseen-class protocol: split classes, not items (see the module docstring).

    Parameters
    ----------
    dataset : Dataset
        A labelled dataset (``base_labels``/``query_labels``). Its training queries must be
        labelled; without training queries, its seen-class evaluation queries become the
        training queries (they are then no evaluation queries, so the two stay disjoint).
    unseen : float
        Fraction of the classes (those of ``base_labels``) held out, in (0, 1); at least one
        class is seen and one unseen.
    seed : int
        Seed of the class permutation (``numpy.random.default_rng``).
    hide_seen : float
        Share of the seen classes' database items whose labels are hidden too, in [0, 1)
        (drawn with ``default_rng([seed, 1])``; 0: none).

    Returns
    -------
    Dataset
        Same ``base``, ``base_labels`` and base extras; ``queries`` (with their labels, ground
        truth and ``query_*`` extras) restricted to unseen classes; ``train_queries`` (with
        labels and ``train_query_*`` extras) restricted to seen classes; ``train_base_labels``
        equal to the training labels with every unseen-class item set to ``-1``;
        ``params["class_split"]`` records ``unseen_fraction``, ``seed``, ``seen_classes``,
        ``unseen_classes`` and the row counts.

    Raises
    ------
    ConfigError
        Unlabelled dataset, training queries without labels, ``unseen`` outside (0, 1),
        ``hide_seen`` outside [0, 1), fewer
        than two classes, or no evaluation / training query left after the split.
    """
    if dataset.base_labels is None or dataset.query_labels is None:
        raise ConfigError(f"class_split: dataset {dataset.name!r} has no labels")
    if dataset.train_queries is not None and dataset.train_query_labels is None:
        raise ConfigError("class_split: the training queries have no labels")
    frac = float(unseen)
    if not 0.0 < frac < 1.0:
        raise ConfigError(f"class_split: unseen must lie in (0, 1), got {unseen!r}")
    hide = float(hide_seen)
    if not 0.0 <= hide < 1.0:
        raise ConfigError(f"class_split: hide_seen must lie in [0, 1), got {hide_seen!r}")
    classes = np.unique(dataset.base_labels)
    if classes.size < 2:
        raise ConfigError(f"class_split: need at least 2 classes, the dataset has {classes.size}")
    n_unseen = int(np.clip(round(frac * classes.size), 1, classes.size - 1))
    perm = np.random.default_rng(seed).permutation(classes.size)
    unseen_cls = np.sort(classes[perm[:n_unseen]])
    seen_cls = np.sort(classes[perm[n_unseen:]])

    q_unseen = np.isin(dataset.query_labels, unseen_cls)
    ev = np.flatnonzero(q_unseen)
    if ev.size == 0:
        raise ConfigError(f"class_split: no evaluation query belongs to the unseen classes {unseen_cls.tolist()}")
    extras = _take_rows(dataset.extras, "query_", ev)
    if dataset.train_queries is not None:
        assert dataset.train_query_labels is not None
        tr = np.flatnonzero(np.isin(dataset.train_query_labels, seen_cls))
        train_q, train_l = dataset.train_queries[tr], dataset.train_query_labels[tr]
        extras = _take_rows(extras, "train_query_", tr)
        train_source = "dataset"
    else:
        tr = np.flatnonzero(np.isin(dataset.query_labels, seen_cls))
        train_q, train_l = dataset.queries[tr], dataset.query_labels[tr]
        for key, val in dataset.extras.items():
            if key.startswith("query_"):
                extras["train_" + key] = val[tr]
        train_source = "seen_class_queries"
    if tr.size == 0:
        raise ConfigError(f"class_split: no training query belongs to the seen classes {seen_cls.tolist()}")
    hidden = np.array(dataset.training_base_labels, dtype=np.int64, copy=True)
    hidden[np.isin(dataset.base_labels, unseen_cls)] = -1
    if hide:
        seen_rows = np.flatnonzero(hidden >= 0)
        n_hide = round(hide * seen_rows.size)
        hidden[np.random.default_rng([int(seed), 1]).choice(seen_rows, n_hide, replace=False)] = -1
    record: dict[str, Any] = {
        "unseen_fraction": frac,
        "seed": int(seed),
        "hide_seen": hide,
        "seen_classes": seen_cls.tolist(),
        "unseen_classes": unseen_cls.tolist(),
        "n_eval_queries": int(ev.size),
        "n_train_queries": int(tr.size),
        "train_source": train_source,
        "n_base_hidden": int(np.count_nonzero(hidden < 0)),
    }
    return dataset.replace(
        queries=dataset.queries[ev],
        query_labels=dataset.query_labels[ev],
        neighbors=None if dataset.neighbors is None else dataset.neighbors[ev],
        distances=None if dataset.distances is None else dataset.distances[ev],
        train_queries=train_q,
        train_query_labels=train_l,
        train_base_labels=hidden,
        extras=extras,
        params={**dataset.params, "protocol": "unseen", "class_split": record},
    )


def apply_protocol(dataset: Dataset, protocol: str = "seen", *, unseen: float = 0.3, seed: int = 0,
                   hide_seen: float = 0.0) -> Dataset:
    """``"seen"``: the dataset itself; ``"unseen"``: :func:`class_split` (``unseen``, ``seed``, ``hide_seen``).

    Raises
    ------
    ConfigError
        Unknown protocol name.
    """
    key = str(protocol).lower()
    if key == "seen":
        return dataset
    if key == "unseen":
        return class_split(dataset, unseen, seed=seed, hide_seen=hide_seen)
    raise ConfigError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
