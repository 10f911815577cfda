"""The trained model of attention-aware search: configuration, encoder parameters and score scalars.

:class:`SearchModel` is what ``fit`` changes and ``save``/``load`` write and read: the encoder (an
attention mechanism plus the code projections), the residual score's ``alpha``/``beta``, the
diffusion weight ``rho`` and the input scale (``mu``, ``sigma``: standardisation of vectors;
``s0``: the typical local distance). Everything the pipeline derives from the index (contexts,
codes, the latent kNN) lives in :class:`~ruvector_hnsw.search.state.DatabaseState`.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ruvector_hnsw._validation import check_positive_int
from ruvector_hnsw.attention import MECHANISMS
from ruvector_hnsw.attention.norms import NORMS
from ruvector_hnsw.errors import ConfigError
from ruvector_hnsw.search import diffusion
from ruvector_hnsw.search.codes import LATENT_KINDS
from ruvector_hnsw.search.encoder import ContextEncoder
from ruvector_hnsw.search.labels import LabelHead, LabelSpace
from ruvector_hnsw.search.quant import check_code_dtype
from ruvector_hnsw.search.scoring import ResidualScorer

__all__ = ["SCALARS", "ModelConfig", "Scale", "SearchModel"]

#: seed offset between the mechanisms of consecutive encoder blocks
_BLOCK_SEED_STRIDE = 1009


def _nonneg_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


#: what the encoder may attend over (``ModelConfig.context``)
CONTEXTS = ("graph", "none")

@dataclass(frozen=True)
class ModelConfig:
    """What defines a model's shape (validated; saved with it)."""

    mechanism: str
    dim: int
    latent_dim: int
    k_local: int = 16
    k_global: int = 8
    spectral: int = 64
    spectral_time: int = 32
    seed: int = 0
    latent: str = "auto"
    label_head: bool = True
    #: width of the label head's hidden layer (0: softmax regression on the query vector; None: ``fit``
    #: chooses between 0 and ``AUTO_HIDDEN`` on the validation queries)
    label_hidden: int | None = None
    class_pool: int = 100
    mech_config: dict[str, Any] = field(default_factory=dict)
    #: stacked encoder blocks (norm -> attention -> dropout -> residual); 1 = the single-block encoder
    layers: int = 1
    #: each block's input normalisation: "layer", "rms" or None
    norm: str | None = None
    #: dropout rate on each block's attention read-out during training, in [0, 1)
    dropout: float = 0.0
    #: storage of the database code cache and latent index at search time ("float32", "float16", "int8")
    code_dtype: str = "float32"
    #: what the encoder attends over: "graph" (the HNSW context) or "none" (the ablation: no attention,
    #: codes from the vector alone)
    context: str = "graph"
    #: calibrate the demotion of items with a known label for the queries the label term does not
    #: apply to (``SearchModel.demote_known``; False: the ablation, never demoted)
    demote: bool = True

    def __post_init__(self) -> None:
        if self.mechanism not in MECHANISMS:
            raise ConfigError(f"unknown mechanism {self.mechanism!r}; choose one of {sorted(MECHANISMS)} "
                              "(training-free methods: AlphaQESearch, DBASearch)")
        check_positive_int(self.dim, "dim", ConfigError)
        check_positive_int(self.latent_dim, "latent_dim", ConfigError)
        check_positive_int(self.k_local, "k_local", ConfigError)
        _nonneg_int(self.k_global, "k_global")
        _nonneg_int(self.spectral, "spectral")
        check_positive_int(self.spectral_time, "spectral_time", ConfigError)
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise ConfigError(f"seed must be an int, got {self.seed!r}")
        if self.latent not in LATENT_KINDS:
            raise ConfigError(f"latent must be one of {LATENT_KINDS}, got {self.latent!r}")
        if not isinstance(self.label_head, bool):
            raise ConfigError(f"label_head must be a bool, got {self.label_head!r}")
        if self.label_hidden is not None:
            _nonneg_int(self.label_hidden, "label_hidden")
        check_positive_int(self.class_pool, "class_pool", ConfigError)
        check_positive_int(self.layers, "layers", ConfigError)
        if self.norm is not None and self.norm not in NORMS:
            raise ConfigError(f"norm must be one of {NORMS} or None, got {self.norm!r}")
        if (isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float, np.integer, np.floating))
                or not 0.0 <= float(self.dropout) < 1.0):
            raise ConfigError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        check_code_dtype(self.code_dtype)
        if not isinstance(self.demote, bool):
            raise ConfigError(f"demote must be a bool, got {self.demote!r}")
        if self.context not in CONTEXTS:
            raise ConfigError(f"context must be one of {CONTEXTS}, got {self.context!r}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["mech_config"] = _jsonable(self.mech_config)
        return out


@dataclass(frozen=True)
class Scale:
    """Standardisation ``(x - mu) / sigma`` of vectors and the distance scale ``s0``."""

    mu: np.ndarray
    sigma: float
    s0: float

    def standardise(self, x: np.ndarray) -> np.ndarray:
        """Standardise vectors as the index stores them (already unit rows for cosine)."""
        return np.ascontiguousarray((x - self.mu) / np.float32(self.sigma), dtype=np.float32)

    @classmethod
    def of(cls, vectors: np.ndarray, s0: float) -> Scale:
        mu = vectors.mean(axis=0).astype(np.float32) if vectors.shape[0] else np.zeros(vectors.shape[1], np.float32)
        spread = (float(np.sqrt(((vectors - mu) ** 2).sum(axis=1).mean() / vectors.shape[1]))
                  if vectors.shape[0] else 1.0)
        return cls(mu=mu, sigma=max(spread, 1e-6), s0=float(s0))


def _jsonable(cfg: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        if isinstance(v, type):
            v = np.dtype(v).name
        elif isinstance(v, np.dtype):
            v = v.name
        elif isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out


#: the calibrated score scalars of a :class:`SearchModel` (attribute -> type), saved with it by name
SCALARS: dict[str, type] = {
    "alpha": float, "beta": float, "rho": float, "lam": float, "gate": float, "alpha_open": float, "mu": float,
    "diffusion_gamma": float, "diffusion_seeds": int, "dba_weight": float, "qe_weight": float, "qe_top": int,
    "demote_known": float,
}


class SearchModel:
    """Encoder + score scalars + scale of one attention-aware searcher.

    Parameters
    ----------
    config : ModelConfig
    """

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        cls = MECHANISMS[config.mechanism]
        mechs = []
        for block in range(config.layers):
            cfg = dict(config.mech_config)
            cfg.setdefault("seed", config.seed)
            cfg["seed"] = int(cfg["seed"]) + _BLOCK_SEED_STRIDE * block  # block 1 keeps the model's seed
            try:
                mechs.append(cls(config.dim, **cfg))
            except TypeError as exc:
                raise ConfigError(f"{config.mechanism}: bad configuration ({exc})") from exc
        self.encoder = ContextEncoder(mechs[0] if config.layers == 1 else mechs, config.dim, config.latent_dim,
                                      seed=config.seed, norm=config.norm, dropout=config.dropout,
                                      use_context=config.context == "graph")
        self.alpha = 0.0
        self.beta = 1.0
        self.rho = 0.0
        #: weight of the label term ``e(q) * log P(same class | q, v)`` (0: off)
        self.lam = 0.0
        #: the label term applies to a query whose label evidence ``e(q)`` reaches ``gate``
        #: (calibrated on classes held out of a second head); the other queries are scored with ``alpha_open``
        self.gate = 0.0
        #: ``alpha`` of the queries the label term does not apply to (calibrated without the label term)
        self.alpha_open = 0.0
        #: weight of the diffusion stage for the queries the label term does not apply to (0: off)
        self.mu = 0.0
        #: affinity exponent of the diffusion stage (calibrated with ``mu``)
        self.diffusion_gamma = diffusion.GAMMA
        #: seeds of the diffusion stage per query (calibrated with ``mu``)
        self.diffusion_seeds = diffusion.DIFFUSION_SEEDS
        #: score smoothing of the same queries (:mod:`ruvector_hnsw.search.smoothing`): the DBA weight, the
        #: weight of the score-space query expansion and the items it averages (weights 0: off)
        self.dba_weight = 0.0
        self.qe_weight = 0.0
        self.qe_top = 0
        #: for the same queries, the weight (times the query's score spread) by which an item of known
        #: class c falls behind the unlabelled ones, times ``1 - P(c | q)``: a query the label head
        #: places in no known class is unlikely to share an item's known class (0: off)
        self.demote_known = 0.0
        self.labels: LabelSpace | None = None
        self.label_head: LabelHead | None = None
        self.scale: Scale | None = None
        self.fitted = False

    @staticmethod
    def mechanism_options(mechanism: str) -> set[str]:
        """Constructor options the mechanism accepts (for error messages and the CLI)."""
        return set(inspect.signature(MECHANISMS[mechanism]).parameters) - {"dim"}

    def scorer(self, space: str) -> ResidualScorer:
        """The residual scorer (``alpha = 0`` until fitted)."""
        s0 = self.scale.s0 if self.scale is not None else 1.0
        alpha = self.alpha if self.fitted else 0.0
        beta = self.beta if self.fitted else 1.0
        return ResidualScorer(alpha=float(alpha), beta=float(beta), s0=float(s0), space=space)

    # ------------------------------------------------------------------ persistence
    def state(self) -> dict[str, Any]:
        """A checkpoint state tree of the model (config, params, scalars, scale)."""
        return {
            "config": self.config.to_dict(),
            "params": {k: v.copy() for k, v in self.encoder.params.items()},
            **{name: getattr(self, name) for name in SCALARS},
            "labels": None if self.labels is None or self.label_head is None else {
                "values": (self.labels.values if self.labels.values.dtype.kind in "biuf"
                           else [str(v) for v in self.labels.values.tolist()]),
                "row_class": self.labels.row_class,
                "has_unknown": self.labels.has_unknown, "head": self.label_head.state()},
            "fitted": self.fitted,
            "scale": None if self.scale is None else {"mu": self.scale.mu, "sigma": self.scale.sigma,
                                                      "s0": self.scale.s0},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> SearchModel:
        """Rebuild a model from :meth:`state` (raises KeyError/TypeError/ValueError on a malformed tree)."""
        cfg = dict(state["config"])
        cfg["mech_config"] = dict(cfg.get("mech_config") or {})
        model = cls(ModelConfig(**cfg))
        saved = state["params"]
        params = model.encoder.params
        if set(saved) != set(params) or any(np.shape(saved[k]) != params[k].shape for k in params):
            raise ValueError("parameters do not match the mechanism's")
        for k, v in params.items():
            v[...] = saved[k]
        for name, kind in SCALARS.items():
            setattr(model, name, kind(state[name]))
        lab = state["labels"]
        if lab is not None:
            model.labels = LabelSpace(values=np.asarray(lab["values"]), row_class=np.asarray(lab["row_class"],
                                      dtype=np.int64), has_unknown=bool(lab["has_unknown"]))
            head = lab["head"]  # its width as stored (a file may predate ``label_hidden``)
            model.label_head = LabelHead(model.config.dim, model.labels.n_known,
                                         hidden=np.shape(head["W1"])[0] if "W1" in head else 0,
                                         seed=model.config.seed)
            model.label_head.load(lab["head"])
        model.fitted = bool(state["fitted"])
        sc = state["scale"]
        if sc is not None:
            model.scale = Scale(mu=np.asarray(sc["mu"], dtype=np.float32), sigma=float(sc["sigma"]),
                                s0=float(sc["s0"]))
        return model
