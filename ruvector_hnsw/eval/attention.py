"""Trained attention rerankers as evaluation methods (one per attention mechanism).

Every name of :data:`ruvector_hnsw.attention.MECHANISMS` (``local_global``, ``rope``,
``dual_space``, ...) is registered as a method: its factory builds an
:class:`~ruvector_hnsw.search.AttentionSearch` on the run's shared HNSW index, fits it on the
dataset's *training* queries (``dataset.train_queries`` / ``train_query_labels``), and searches
with :meth:`AttentionSearch.search`.  Options come from the method spec, e.g.
``local_global:epochs=4:candidates=200:expand=2``:

- constructor options: ``candidates``, ``expand``, ``k_local``, ``k_global``, ``seed``,
  ``latent_dim``, ``num_threads``, the encoder stack ``layers``, ``norm``, ``dropout`` (e.g.
  ``local_global:layers=2:norm=rms``), the storage of the code cache and latent index
  ``code_dtype`` (``float32`` | ``float16`` | ``int8``, e.g. ``local_global:code_dtype=int8``;
  training is float32 either way), the ablations ``context=none`` and ``demote=0`` (no
  known-label demotion on the open path) and any mechanism option (``heads``, ``temperature`` of the
  mechanism is spelled ``mech_temperature`` to keep it apart from the loss temperature);
- :meth:`~AttentionSearch.fit` options: ``epochs``, ``batch_size``, ``lr``, ``temperature``,
  ``extra_positives``, ``random_negatives``, ``latent_negatives``, ``val_fraction``,
  ``patience``, ``weight_decay``;
- ``n_train``: use a seeded random subset of at most this many training queries.

Evaluation queries are never used for training: a dataset without training queries is
rejected (:class:`~ruvector_hnsw.errors.ConfigError`); split some off first with
:func:`ensure_train_split` (``Dataset.split_queries``), which the CLI does by itself.

Fitted models are cached in :attr:`BuildContext.cache` under the options that change training,
so ``local_global:expand=0`` and ``local_global:expand=2`` in one run share one fitted model
(``expand`` only acts at search time).  The method's ``params`` record the fit time, the time
of every epoch, the validation curve and the number of training queries.

The ``model`` method loads a saved model instead of training: ``model:path=MODEL`` (the stem
written by :meth:`AttentionSearch.save` or ``ruvector-hnsw train``), with optional
``candidates``/``expand`` overrides.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import numpy as np

from ruvector_hnsw.attention import MECHANISMS
from ruvector_hnsw.errors import ConfigError
from ruvector_hnsw.eval.methods import BuildContext, SearchMethod, _index_threads, register_method

__all__ = [
    "ATTENTION_METHODS",
    "FIT_OPTIONS",
    "SEARCH_OPTIONS",
    "TRAINED_METHODS",
    "ensure_train_split",
    "fit_attention",
    "make_attention",
    "make_saved_model",
    "training_data",
]

#: options of :meth:`AttentionSearch.fit` accepted in a method spec
FIT_OPTIONS: tuple[str, ...] = (
    "epochs",
    "batch_size",
    "lr",
    "temperature",
    "extra_positives",
    "random_negatives",
    "latent_negatives",
    "val_fraction",
    "patience",
    "weight_decay",
    "fresh_rows",
    "loss",
    "margin",
    "local_weight",
    "miner",
    "curriculum",
    "regularizer",
    "reg_weight",
    "optimizer",
    "label_weight_decay",
)
#: options that only act at search time (a fitted model is shared across their values)
SEARCH_OPTIONS: tuple[str, ...] = ("expand",)
_CTOR_OPTIONS: tuple[str, ...] = ("candidates", "k_local", "k_global", "seed", "latent_dim", "layers", "norm",
                                   "dropout", "code_dtype", "context", "demote", "label_hidden")
#: method names the training-free methods hold; a mechanism of the same name is registered as ``NAME_attention``
_TRAINING_FREE_NAMES = frozenset({"exact", "hnsw", "alpha_qe", "dba", "diffusion"})
#: eval method name -> attention mechanism (``diffusion_attention`` is the ``diffusion`` mechanism; ``diffusion``
#: is the training-free diffusion re-ranking baseline)
ATTENTION_METHODS: dict[str, str] = {
    (f"{m}_attention" if m in _TRAINING_FREE_NAMES else m): m for m in MECHANISMS
}
#: registered methods that train on the dataset's training queries
TRAINED_METHODS: frozenset[str] = frozenset(ATTENTION_METHODS) | {"linear_proj", "mlp_adapter", "label_classifier"}


def ensure_train_split(dataset: Any, n_train: int | None = None, *, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """Return a dataset that has training queries disjoint from its evaluation queries.

    Parameters
    ----------
    dataset : Dataset
        A labelled dataset.
    n_train : int, optional
        Queries to move from the evaluation queries into the training queries when the dataset
        has none (default: half of them, at most 2000).
    seed : int
        Seed of the split.

    Returns
    -------
    dataset : Dataset
        ``dataset`` itself when it already has training queries, else
        ``dataset.split_queries(n_train, seed=seed)``: evaluate on *this* object so the
        moved queries are out of the evaluation set.
    info : dict
        ``{"train_source": "dataset" | "split_queries", "n_train_queries": ..., ...}``.
    """
    if getattr(dataset, "train_queries", None) is not None:
        return dataset, {"train_source": "dataset", "n_train_queries": int(dataset.train_queries.shape[0])}
    nq = int(np.asarray(dataset.queries).shape[0])
    n = min(2000, nq // 2) if n_train is None else int(n_train)
    if not 0 < n < nq:
        raise ConfigError(f"cannot split {n} training queries off {nq} evaluation queries")
    split = dataset.split_queries(n, seed=seed)
    return split, {"train_source": "split_queries", "n_train_queries": n, "split_seed": int(seed),
                   "n_eval_queries": nq - n}


def training_data(dataset: Any, n_train: int | None = None, *, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Training queries, their labels and the base labels training may see.

    Only ``dataset.train_queries`` are used, never the evaluation queries. The base labels are
    ``dataset.train_base_labels`` when the dataset has them (the unseen-class protocol of
    :func:`ruvector_hnsw.datasets.class_split`: ``-1`` = hidden from training), else
    ``dataset.base_labels``; relevance in evaluation always uses ``base_labels``.

    Parameters
    ----------
    dataset : Dataset
    n_train : int, optional
        Keep a seeded random subset of at most this many training queries.
    seed : int

    Returns
    -------
    train_queries (nt, d) float32, train_labels (nt,), base_labels (N,), info dict
        ``info`` holds ``n_train_queries``, ``train_source``, ``protocol`` ("seen" |
        "unseen") and, for the unseen protocol, ``class_split`` (seed, fraction, class lists).

    Raises
    ------
    ConfigError
        No labels, or no training queries (see :func:`ensure_train_split`).
    """
    base_labels = getattr(dataset, "base_labels", None)
    tq = getattr(dataset, "train_queries", None)
    tl = getattr(dataset, "train_query_labels", None)
    if base_labels is None or getattr(dataset, "query_labels", None) is None:
        raise ConfigError("trained methods need a labelled dataset (base_labels and query_labels)")
    if tq is None or tl is None:
        raise ConfigError(
            f"dataset {getattr(dataset, 'name', '')!r} has no labelled training queries; split some off the "
            "evaluation queries first (ruvector_hnsw.eval.ensure_train_split / Dataset.split_queries) and "
            "evaluate on the split dataset - evaluation queries are never used for training"
        )
    tq = np.ascontiguousarray(tq, dtype=np.float32)
    tl = np.asarray(tl)
    info: dict[str, Any] = {"n_train_queries": int(tq.shape[0])}
    if n_train is not None:
        n = int(n_train)
        if n < 1:
            raise ConfigError(f"n_train must be >= 1, got {n_train!r}")
        if n < tq.shape[0]:
            keep = np.sort(np.random.default_rng(seed).choice(tq.shape[0], n, replace=False))
            tq, tl = tq[keep], tl[keep]
            info["n_train_queries"] = n
    params = getattr(dataset, "params", None) or {}
    split = params.get("split_queries")
    info["train_source"] = "split_queries" if split else "dataset"
    if split:
        info["split_queries"] = dict(split)
    hidden = getattr(dataset, "train_base_labels", None)
    info["protocol"] = "seen" if hidden is None else "unseen"
    if hidden is not None:
        base_labels = hidden
        if "class_split" in params:
            info["class_split"] = dict(params["class_split"])
    return tq, tl, np.asarray(base_labels), info


def _history_summary(history: Any) -> dict[str, Any]:
    return {
        "epochs_run": len(history.epoch),
        "epoch_time_s": [round(float(t), 3) for t in history.epoch_time_s],
        "train_loss": [round(float(v), 5) for v in history.train_loss],
        "val_map_at_r": [None if v is None else round(float(v), 5) for v in history.val_metric],
        "initial_val_map_at_r": history.initial_metric,
        "best_epoch": history.best_epoch,
        "best_val_map_at_r": history.best_metric,
    }


def fit_attention(
    ctx: BuildContext,
    mechanism: str,
    *,
    n_train: int | None = None,
    progress: bool = False,
    **options: Any,
) -> tuple[Any, dict[str, Any]]:
    """Build and fit an :class:`AttentionSearch` on ``ctx.index`` (cached in ``ctx.cache``).

    Parameters
    ----------
    ctx : BuildContext
        Its dataset's training queries are the training set; its index the searched graph.
    mechanism : str
        A name of :data:`ruvector_hnsw.attention.MECHANISMS`.
    n_train : int, optional
        Subsample the training queries (seeded).
    progress : bool
        Training progress bar.
    **options
        Constructor, mechanism and fit options (see the module docstring).

    Returns
    -------
    model : AttentionSearch
        The fitted model (shared through the cache: pass search knobs per call, do not change it).
    info : dict
        JSON-able record of the fit (times, curve, training set).
    """
    from ruvector_hnsw.search import AttentionSearch

    if mechanism not in MECHANISMS:
        raise ConfigError(f"unknown attention mechanism {mechanism!r}; choose one of {sorted(MECHANISMS)}")
    opts = dict(options)
    opts.pop("expand", None)
    seed = int(opts.pop("seed", ctx.seed))
    key = f"attention:{mechanism}:n_train={n_train}:seed={seed}:" + ":".join(
        f"{k}={opts[k]!r}" for k in sorted(opts))
    cached = ctx.cache.get(key)
    if cached is not None:
        return cached
    fit_kw = {k: opts.pop(k) for k in FIT_OPTIONS if k in opts}
    ctor = {k: opts.pop(k) for k in _CTOR_OPTIONS if k in opts}
    if "context" in ctor and ctor["context"] is None:  # the spec ``context=none`` parses to None
        ctor["context"] = "none"
    if ctor.get("demote") in (0, 1) and not isinstance(ctor["demote"], bool):  # ``demote=0``: parsed as an int
        ctor["demote"] = bool(ctor["demote"])  # anything else reaches ModelConfig's check as given
    if "mech_temperature" in opts:
        opts["temperature"] = opts.pop("mech_temperature")
    num_threads = int(opts.pop("num_threads", ctx.num_threads))
    tq, tl, base_labels, info = training_data(ctx.dataset, n_train, seed=seed)
    index = ctx.index
    model = AttentionSearch(index, mechanism, seed=seed, num_threads=num_threads, **ctor, **opts)
    t0 = time.perf_counter()
    history = model.fit(tq, labels=base_labels, query_labels=tl, progress=progress, **fit_kw)
    info["fit_s"] = round(time.perf_counter() - t0, 3)
    info.update(_history_summary(history))
    info["fit_options"] = dict(fit_kw)
    ctx.cache[key] = (model, info)
    return model, info


def _attention_search_fn(model: Any, **knobs: int) -> Any:
    def search(queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        return model.search(queries, int(k), **knobs)

    return search


def make_attention(ctx: BuildContext, mechanism: str, name: str | None = None, **options: Any) -> SearchMethod:
    """Factory of the trained attention methods: fit (or reuse) a model, return its search.

    Returned scores are similarities (higher = better), as :meth:`AttentionSearch.search`
    gives them; the evaluation only uses the ids. Search-time options (``expand``) are passed
    per call, so one fitted model serves every spec that differs only in them.
    """
    expand = options.get("expand")
    model, info = fit_attention(ctx, mechanism, **options)
    knobs = {} if expand is None else {"expand": int(expand)}
    params: dict[str, Any] = {
        "mechanism": mechanism,
        "candidates": model.candidates,
        "expand": knobs.get("expand", model.expand),
        "k_local": model.k_local,
        "k_global": model.k_global,
        "layers": model.model.config.layers,
        "norm": model.model.config.norm,
        "context": model.model.config.context,
        "demote": model.model.config.demote,
        "demote_known": model.model.demote_known,
        "spectral": model.model.config.spectral,
        "label_head": model.model.config.label_head,
        "code_dtype": model.code_dtype,
        "code_memory_bytes": model.memory_bytes()["total"],
        "alpha": float(model.alpha),
        "alpha_open": float(model.model.alpha_open),
        "label_weight": float(model.model.lam),
        "label_gate": float(model.model.gate),
        "diffusion_weight": float(model.model.mu),
        "diffusion_gamma": float(model.model.diffusion_gamma),
        "diffusion_seeds": int(model.model.diffusion_seeds),
        "dba_weight": float(model.model.dba_weight),
        "qe_weight": float(model.model.qe_weight),
        "qe_top": int(model.model.qe_top),
        **info,
    }
    return SearchMethod(name=name or mechanism, fn=_attention_search_fn(model, **knobs),
                        threads=_index_threads(ctx.index), params=params)


def make_saved_model(ctx: BuildContext, path: str, **options: Any) -> SearchMethod:
    """Factory of ``model:path=MODEL``: a saved :class:`AttentionSearch` on the run's index."""
    from ruvector_hnsw.search import AttentionSearch

    unknown = set(options) - {"candidates", "expand", "num_threads"}
    if unknown:
        raise ConfigError(f"model: unknown options {sorted(unknown)} (candidates, expand, num_threads)")
    model = AttentionSearch.load(str(path), ctx.index, num_threads=int(options.get("num_threads", -1)))
    knobs = {key: int(val) for key, val in options.items() if key in ("candidates", "expand")}
    params = {"path": str(path), "mechanism": model.mechanism_name,
              "candidates": knobs.get("candidates", model.candidates), "expand": knobs.get("expand", model.expand),
              "fitted": model.fitted}
    return SearchMethod(name="model", fn=_attention_search_fn(model, **knobs), threads=_index_threads(ctx.index),
                        params=params)


for _method, _mech in ATTENTION_METHODS.items():
    register_method(_method, partial(make_attention, mechanism=_mech, name=_method), overwrite=True)
register_method("model", make_saved_model, overwrite=True)
