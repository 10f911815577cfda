"""Seeded synthetic retrieval scenarios: ``clusters``, ``hierarchical``, ``manifolds``.

Every scenario is a labelled retrieval task (a base item is relevant to a query iff it has
the same class label) with exact ground-truth neighbours for ANN recall. Base, evaluation
queries and *training* queries are independent draws from the same distribution, so learned
methods can train on ``train_queries`` (or on the labelled base) without seeing the
evaluation queries.

Common structure
----------------
* Randomness: ``np.random.SeedSequence([seed, scenario_id])`` is split into four streams:
  the class structure, the base sample, the evaluation queries, the training queries. Asking
  for more training queries therefore never changes the base or the evaluation queries, and
  the same ``(scenario, size, seed, overrides)`` always gives bit-identical arrays.
* Every class is observed through the same kind of noise: a class-specific anisotropic part
  (a few elongated directions, scaled by a per-class spread), an isotropic part, and a
  *shared nuisance* part -- a fixed low-dimensional subspace of large variance common to all
  classes that carries no class information (like pose/lighting directions in image
  embeddings). Raw distances are dominated by it; a learned metric or graph context can
  discount it, alpha-QE cannot.
* Metric ``"cosine"`` by default: vectors are L2-normalised after sampling (so ``"l2"``
  and ``"cosine"`` rank identically on them). ``metric="l2"`` keeps the raw vectors.
* Sizes (``size=``): ``tiny`` (1.5k base, for tests), ``small`` (5k), ``default`` (20k,
  a few seconds to build an HNSW index), ``large`` (100k). Every size field can be
  overridden (``n_base``, ``n_queries``, ``n_train_queries``, ``dim``, ``n_classes``).

The default difficulty was calibrated with ``benchmarks/calibrate_datasets.py`` so that exact
search reaches a mAP@R well inside (0.3, 0.7) and alpha query expansion stays well below 0.9,
while neighbourhood structure leaves a lot to gain. mAP@R at ``size="default"``, seeds 0/1/2
(alpha-QE: n=10, alpha=3; diffusion: personalised PageRank on the exact 10-NN graph; lin: an
LDA metric fitted on the labelled base + training queries)::

    scenario       exact              alpha_qe           diffusion          lin
    clusters       0.495/0.472/0.469  0.655/0.637/0.630  0.980/0.980/0.975  0.705/0.690/0.672
    hierarchical   0.537/0.530/0.511  0.682/0.672/0.651  0.930/0.923/0.915  0.898/0.874/0.885
    manifolds      0.455/0.478/0.469  0.489/0.502/0.505  0.953/0.956/0.945  0.272/0.297/0.273

Graph context (diffusion) beats alpha-QE by 0.25-0.46 on every scenario; a learned linear
metric helps on ``clusters``/``hierarchical`` (nuisance directions, sibling classes) but not on
``manifolds`` (curved classes), where only neighbourhood structure does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ruvector_hnsw.datasets.base import METRICS, Dataset
from ruvector_hnsw.datasets.groundtruth import normalize_rows
from ruvector_hnsw.errors import ConfigError

__all__ = [
    "SCENARIOS",
    "SIZES",
    "make_clusters",
    "make_hierarchical",
    "make_manifolds",
]

#: size presets shared by the scenarios (per-scenario dims/classes are set in each maker)
SIZES: dict[str, dict[str, int]] = {
    "tiny": {"n_base": 1500, "n_queries": 100, "n_train_queries": 200},
    "small": {"n_base": 5000, "n_queries": 300, "n_train_queries": 500},
    "default": {"n_base": 20000, "n_queries": 1000, "n_train_queries": 2000},
    "large": {"n_base": 100000, "n_queries": 2000, "n_train_queries": 5000},
}

_SCENARIO_IDS = {"clusters": 1, "hierarchical": 2, "manifolds": 3}


@dataclass
class _Sizes:
    n_base: int
    n_queries: int
    n_train_queries: int
    dim: int
    n_classes: int


def _resolve_sizes(
    size: str,
    dims: dict[str, int],
    classes: dict[str, int],
    n_base: int | None,
    n_queries: int | None,
    n_train_queries: int | None,
    dim: int | None,
    n_classes: int | None,
) -> _Sizes:
    if size not in SIZES:
        raise ConfigError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    preset = SIZES[size]
    out = _Sizes(
        n_base=int(preset["n_base"] if n_base is None else n_base),
        n_queries=int(preset["n_queries"] if n_queries is None else n_queries),
        n_train_queries=int(preset["n_train_queries"] if n_train_queries is None else n_train_queries),
        dim=int(dims[size] if dim is None else dim),
        n_classes=int(classes[size] if n_classes is None else n_classes),
    )
    if out.n_base < 1 or out.n_queries < 1 or out.n_train_queries < 0:
        raise ConfigError(f"need n_base >= 1, n_queries >= 1, n_train_queries >= 0; got {out}")
    if out.dim < 2:
        raise ConfigError(f"dim must be >= 2, got {out.dim}")
    if out.n_classes < 2:
        raise ConfigError(f"n_classes must be >= 2, got {out.n_classes}")
    return out


def _streams(seed: int, scenario: str) -> list[np.random.Generator]:
    ss = np.random.SeedSequence([int(seed), _SCENARIO_IDS[scenario]])
    return [np.random.default_rng(s) for s in ss.spawn(4)]


def _orthonormal(rng: np.random.Generator, d: int, p: int) -> np.ndarray:
    """A (d, p) matrix with orthonormal columns, uniformly random (QR of a Gaussian)."""
    q, r = np.linalg.qr(rng.standard_normal((d, p)))
    return q * np.sign(np.diag(r))


def _class_weights(rng: np.random.Generator, n_classes: int, imbalance: float) -> np.ndarray:
    w = np.exp(imbalance * rng.standard_normal(n_classes))
    return w / w.sum()


def _draw_labels(rng: np.random.Generator, n: int, weights: np.ndarray) -> np.ndarray:
    return np.sort(rng.choice(weights.size, size=n, p=weights)).astype(np.int64)


def _add_nuisance(x: np.ndarray, rng: np.random.Generator, nuisance: float, basis: np.ndarray) -> None:
    """Add the shared nuisance ``nuisance * G z`` (``G`` = ``basis`` (d, q), ``z ~ N(0, I_q)``) to ``x`` in place."""
    if basis.shape[1]:
        x += nuisance * (rng.standard_normal((x.shape[0], basis.shape[1])) @ basis.T)


def _common_params(scenario: str, size: str, seed: int, sz: _Sizes) -> dict[str, Any]:
    """The leading entries of every scenario's ``params`` (the per-scenario knobs follow)."""
    return {
        "scenario": scenario,
        "size": size,
        "seed": seed,
        "n_base": sz.n_base,
        "n_queries": sz.n_queries,
        "n_train_queries": sz.n_train_queries,
        "dim": sz.dim,
        "n_classes": sz.n_classes,
    }


def _summary(doc: str | None) -> str:
    """First paragraph of a maker's docstring (the dataset description)."""
    return doc.split("\n\n")[0] if doc else ""


def _finish(
    name: str,
    sampler: Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]],
    rngs: list[np.random.Generator],
    sz: _Sizes,
    metric: str,
    gt_k: int,
    label_noise: float,
    n_classes: int,
    params: dict[str, Any],
    description: str,
) -> Dataset:
    if metric not in METRICS:
        raise ConfigError(f"metric must be one of {METRICS}, got {metric!r}")
    if not 0.0 <= label_noise < 1.0:
        raise ConfigError(f"label_noise must be in [0, 1), got {label_noise}")
    xb, yb, eb = sampler(rngs[1], sz.n_base)
    xq, yq, eq = sampler(rngs[2], sz.n_queries)
    xt, yt, et = sampler(rngs[3], sz.n_train_queries) if sz.n_train_queries else (None, None, {})
    if label_noise > 0:
        # relabel a fraction of the *base* items to a different uniformly random class
        noise_rng = np.random.default_rng(np.random.SeedSequence([params["seed"], 99]))
        flip = noise_rng.random(sz.n_base) < label_noise
        shift = noise_rng.integers(1, n_classes, size=sz.n_base)
        yb = np.where(flip, (yb + shift) % n_classes, yb)
    if params.get("normalize", True):
        xb, xq = normalize_rows(xb), normalize_rows(xq)
        xt = None if xt is None else normalize_rows(xt)
    extras: dict[str, np.ndarray] = {}
    for key, val in eb.items():
        extras["base_" + key] = val
    for key, val in eq.items():
        extras["query_" + key] = val
    for key, val in et.items():
        extras["train_query_" + key] = val
    ds = Dataset(
        name=name,
        base=xb,
        queries=xq,
        metric=metric,
        base_labels=yb,
        query_labels=yq,
        train_queries=xt,
        train_query_labels=yt,
        extras=extras,
        params=params,
        source="synthetic",
        description=description,
    )
    if gt_k > 0:
        ds = ds.with_ground_truth(gt_k)
    return ds


# ---------------------------------------------------------------------------- clusters
def make_clusters(
    size: str = "default",
    *,
    seed: int = 0,
    n_base: int | None = None,
    n_queries: int | None = None,
    n_train_queries: int | None = None,
    dim: int | None = None,
    n_classes: int | None = None,
    noise: float = 2.0,
    nuisance: float = 2.5,
    label_noise: float = 0.0,
    metric: str = "cosine",
    normalize: bool = True,
    gt_k: int = 100,
) -> Dataset:
    """Gaussian-mixture classes with varied spread, elongation, sub-modes and class sizes.

    Generative process (``d`` = ``dim``, ``C`` = ``n_classes``):

    1. Class sizes: weights ``w_c`` proportional to ``exp(0.4 * N(0,1))`` (mildly imbalanced).
    2. Class centres ``mu_c ~ N(0, I_d)``. Each class has 1, 2 or 3 sub-modes (probabilities
       0.5/0.3/0.2) at ``mu_c + 0.6 * N(0, I_d)``.
    3. Per-class spread ``s_c`` log-uniform in [0.6, 1.5] and 4 elongated directions
       (a random orthonormal ``A_c``, lengths uniform in [1.5, 3]).
    4. A point of class ``c``: a random sub-mode, plus ``noise * s_c * A_c (l * z)``, plus
       isotropic ``noise * s_c * 0.35 * N(0, I_d)``, plus the shared nuisance
       ``nuisance * G z'`` where ``G`` is one fixed (d, d/8) orthonormal basis for all classes.
    5. Optionally (``label_noise``) a fraction of base labels is replaced by another class.
    6. Rows are L2-normalised (``normalize=True``); metric ``cosine``.

    Parameters
    ----------
    size : {"tiny", "small", "default", "large"}
        Preset sizes: base 1.5k/5k/20k/100k; dim 32/64/64/64; classes 15/40/100/400.
    seed : int
        Master seed.
    n_base, n_queries, n_train_queries, dim, n_classes : int, optional
        Override the preset.
    noise : float
        Scale of the class-specific (elongated + isotropic) noise; higher is harder.
    nuisance : float
        Standard deviation of the shared nuisance subspace; higher is harder.
    label_noise : float
        Fraction of base items given a wrong label, in [0, 1).
    metric : {"cosine", "l2", "ip"}
        Metric of the returned dataset.
    normalize : bool
        L2-normalise rows (default; makes l2 and cosine rank alike).
    gt_k : int
        Ground-truth neighbours computed per evaluation query (0 to skip).

    Returns
    -------
    Dataset
        Labelled, with ``neighbors``/``distances`` (``gt_k`` > 0) and ``train_queries``.
    """
    sz = _resolve_sizes(
        size,
        {"tiny": 32, "small": 64, "default": 64, "large": 64},
        {"tiny": 15, "small": 40, "default": 100, "large": 400},
        n_base,
        n_queries,
        n_train_queries,
        dim,
        n_classes,
    )
    rngs = _streams(seed, "clusters")
    rs = rngs[0]
    d, c = sz.dim, sz.n_classes
    weights = _class_weights(rs, c, 0.4)
    centres = rs.standard_normal((c, d))
    n_modes = rs.choice([1, 2, 3], size=c, p=[0.5, 0.3, 0.2])
    modes = [centres[i] + 0.6 * rs.standard_normal((int(n_modes[i]), d)) for i in range(c)]
    spread = np.exp(rs.uniform(np.log(0.6), np.log(1.5), size=c))
    p_el = min(4, d)
    elong = [_orthonormal(rs, d, p_el) * rs.uniform(1.5, 3.0, size=p_el) for _ in range(c)]
    q_nu = max(1, d // 8)
    nuis = _orthonormal(rs, d, q_nu)

    def sample(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        y = _draw_labels(rng, n, weights)
        x = np.empty((n, d), dtype=np.float64)
        mode_id = np.empty(n, dtype=np.int64)
        for cls in np.unique(y):
            idx = np.flatnonzero(y == cls)
            m = rng.integers(0, len(modes[cls]), size=idx.size)
            mode_id[idx] = m
            z = rng.standard_normal((idx.size, p_el))
            iso = rng.standard_normal((idx.size, d))
            x[idx] = modes[cls][m] + noise * spread[cls] * (z @ elong[cls].T + 0.35 * iso)
        _add_nuisance(x, rng, nuisance, nuis)
        return x.astype(np.float32), y, {"modes": mode_id}

    params = {
        **_common_params("clusters", size, seed, sz),
        "noise": noise,
        "nuisance": nuisance,
        "label_noise": label_noise,
        "normalize": normalize,
        "gt_k": gt_k,
    }
    return _finish(
        "clusters", sample, rngs, sz, metric, gt_k, label_noise, c, params,
        _summary(make_clusters.__doc__),
    )


# ---------------------------------------------------------------------------- hierarchical
def make_hierarchical(
    size: str = "default",
    *,
    seed: int = 0,
    n_base: int | None = None,
    n_queries: int | None = None,
    n_train_queries: int | None = None,
    dim: int | None = None,
    n_classes: int | None = None,
    n_super: int | None = None,
    noise: float = 1.6,
    sibling_spread: float = 1.0,
    nuisance: float = 2.5,
    metric: str = "cosine",
    normalize: bool = True,
    gt_k: int = 100,
) -> Dataset:
    """A two-level class tree: super-classes whose child classes are close siblings.

    Generative process:

    1. ``S`` super-classes with centres ``M_s ~ N(0, I_d)`` and a *family* covariance: 4
       elongated directions ``A_s`` (orthonormal, lengths uniform in [1.5, 3]) shared by all
       children of ``s``.
    2. ``C`` classes are assigned to super-classes with Dirichlet(2)-distributed shares (so
       families have different numbers of children, every family at least one). Child
       centres ``mu_c = M_s + sibling_spread * N(0, I_d)``; siblings are closer to each
       other than to other families.
    3. Each class adds 2 own elongated directions ``B_c`` (lengths uniform in [1, 2]) and a
       spread ``s_c`` log-uniform in [0.6, 1.4]; class sizes are mildly imbalanced.
    4. A point: ``mu_c + noise * s_c * (A_s z + B_c z' + 0.35 N(0, I_d))`` plus the shared
       nuisance ``nuisance * G z''`` (one (d, d/8) basis for all classes).
    5. Rows L2-normalised; metric ``cosine``. Relevance uses the *fine* class label; the
       super-class of every row is in ``extras["base_super"]``, ``extras["query_super"]``,
       ``extras["train_query_super"]`` and the class -> super map in ``extras["class_super"]``.

    Parameters
    ----------
    size : {"tiny", "small", "default", "large"}
        Preset sizes: base 1.5k/5k/20k/100k; dim 32/64/64/64; classes 15/40/100/400;
        super-classes 4/8/12/30.
    n_super : int, optional
        Number of super-classes (default from the size preset).
    sibling_spread : float
        Distance scale of child centres around their super-class centre (smaller = harder).
    noise, nuisance, seed, n_base, n_queries, n_train_queries, dim, n_classes, metric, normalize, gt_k
        As in :func:`make_clusters`.

    Returns
    -------
    Dataset
    """
    sz = _resolve_sizes(
        size,
        {"tiny": 32, "small": 64, "default": 64, "large": 64},
        {"tiny": 15, "small": 40, "default": 100, "large": 400},
        n_base,
        n_queries,
        n_train_queries,
        dim,
        n_classes,
    )
    s_count = int(n_super if n_super is not None else {"tiny": 4, "small": 8, "default": 12, "large": 30}[size])
    if not 1 <= s_count <= sz.n_classes:
        raise ConfigError(f"n_super must be in [1, n_classes={sz.n_classes}], got {s_count}")
    rngs = _streams(seed, "hierarchical")
    rs = rngs[0]
    d, c = sz.dim, sz.n_classes
    super_centres = rs.standard_normal((s_count, d))
    p_fam = min(4, d)
    fam_dirs = [_orthonormal(rs, d, p_fam) * rs.uniform(1.5, 3.0, size=p_fam) for _ in range(s_count)]
    shares = rs.dirichlet(np.full(s_count, 2.0))
    counts = np.ones(s_count, dtype=np.int64) + rs.multinomial(c - s_count, shares)
    class_super = np.repeat(np.arange(s_count), counts).astype(np.int64)
    centres = super_centres[class_super] + sibling_spread * rs.standard_normal((c, d))
    p_own = min(2, d)
    own_dirs = [_orthonormal(rs, d, p_own) * rs.uniform(1.0, 2.0, size=p_own) for _ in range(c)]
    spread = np.exp(rs.uniform(np.log(0.6), np.log(1.4), size=c))
    weights = _class_weights(rs, c, 0.4)
    q_nu = max(1, d // 8)
    nuis = _orthonormal(rs, d, q_nu)

    def sample(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        y = _draw_labels(rng, n, weights)
        x = np.empty((n, d), dtype=np.float64)
        for cls in np.unique(y):
            idx = np.flatnonzero(y == cls)
            fam = fam_dirs[class_super[cls]]
            z1 = rng.standard_normal((idx.size, p_fam))
            z2 = rng.standard_normal((idx.size, p_own))
            iso = rng.standard_normal((idx.size, d))
            x[idx] = centres[cls] + noise * spread[cls] * (z1 @ fam.T + z2 @ own_dirs[cls].T + 0.35 * iso)
        _add_nuisance(x, rng, nuisance, nuis)
        return x.astype(np.float32), y, {"super": class_super[y]}

    params = {
        **_common_params("hierarchical", size, seed, sz),
        "n_super": s_count,
        "noise": noise,
        "sibling_spread": sibling_spread,
        "nuisance": nuisance,
        "normalize": normalize,
        "gt_k": gt_k,
    }
    ds = _finish(
        "hierarchical", sample, rngs, sz, metric, gt_k, 0.0, c, params,
        _summary(make_hierarchical.__doc__),
    )
    ds.extras["class_super"] = class_super
    return ds


# ---------------------------------------------------------------------------- manifolds
def make_manifolds(
    size: str = "default",
    *,
    seed: int = 0,
    n_base: int | None = None,
    n_queries: int | None = None,
    n_train_queries: int | None = None,
    dim: int | None = None,
    n_classes: int | None = None,
    world_dim: int = 24,
    curvature: float = 0.8,
    noise: float = 0.1,
    nuisance: float = 0.5,
    metric: str = "cosine",
    normalize: bool = True,
    gt_k: int = 100,
) -> Dataset:
    """Curved 1-D and 2-D class manifolds, intertwined in a shared subspace of a high-dim space.

    Generative process:

    1. A shared *world* subspace ``W`` (orthonormal, (d, world_dim)) holds all manifolds, so
       they interleave instead of sitting in separate orthogonal subspaces.
    2. Class ``c`` has intrinsic dimension ``m_c`` in {1, 2} (probabilities 0.6/0.4) and is
       the image of ``[0, 1]^m_c`` under a random smooth map (random Fourier features)::

           gamma_c(t) = o_c + W sum_{f=1..6} a_f cos(2 pi <omega_f, t> + phi_f)

       with offsets ``o_c = W N(0, 0.5^2 I)``, integer frequencies ``omega_f`` in [-2, 2]^m
       (not all zero), amplitudes ``a_f ~ curvature * N(0, I_world) / (1 + |omega_f|)``.
       Points far apart along one manifold are often farther than points of *other*
       manifolds passing nearby, so raw distance ranks poorly while walks along the
       neighbourhood graph stay in the class.
    3. Density varies along each manifold: ``t = u ** kappa_c`` with ``u`` uniform and
       ``kappa_c`` uniform in [1, 2.5]; class sizes are mildly imbalanced.
    4. A point: ``gamma_c(t)`` plus isotropic ``noise * N(0, I_d)`` over all ``d`` dims, plus
       the shared nuisance ``nuisance * G z`` (one (d, d/16) basis orthogonal to ``W``).
    5. Rows L2-normalised; metric ``cosine``. The intrinsic coordinates are kept in
       ``extras["base_t"]`` etc. (first coordinate; NaN-free).

    Parameters
    ----------
    size : {"tiny", "small", "default", "large"}
        Preset sizes: base 1.5k/5k/20k/100k; dim 32/128/128/128; classes 10/30/60/250.
    world_dim : int
        Dimension of the shared subspace the manifolds live in.
    curvature : float
        Amplitude of the Fourier map (larger = longer, more curved manifolds = harder).
    noise : float
        Isotropic noise per coordinate.
    nuisance : float
        Standard deviation of the shared nuisance subspace.
    seed, n_base, n_queries, n_train_queries, dim, n_classes, metric, normalize, gt_k
        As in :func:`make_clusters`.

    Returns
    -------
    Dataset
    """
    sz = _resolve_sizes(
        size,
        {"tiny": 32, "small": 128, "default": 128, "large": 128},
        {"tiny": 10, "small": 30, "default": 60, "large": 250},
        n_base,
        n_queries,
        n_train_queries,
        dim,
        n_classes,
    )
    rngs = _streams(seed, "manifolds")
    rs = rngs[0]
    d, c = sz.dim, sz.n_classes
    wd = int(min(world_dim, d - 1))
    if wd < 2:
        raise ConfigError(f"world_dim must be >= 2 and < dim, got {world_dim} for dim {d}")
    q_nu = max(1, d // 16)
    basis = _orthonormal(rs, d, min(d, wd + q_nu))
    world, nuis = basis[:, :wd], basis[:, wd:]
    n_freq = 6
    intrinsic = rs.choice([1, 2], size=c, p=[0.6, 0.4])
    offsets = 0.5 * rs.standard_normal((c, wd))
    freqs, phases, amps = [], [], []
    for cls in range(c):
        m = int(intrinsic[cls])
        om = rs.integers(-2, 3, size=(n_freq, m))
        zero = ~om.any(axis=1)
        om[zero, 0] = 1
        freqs.append(om.astype(np.float64))
        phases.append(rs.uniform(0, 2 * np.pi, size=n_freq))
        norm = np.linalg.norm(om, axis=1, keepdims=True)
        amps.append(curvature * rs.standard_normal((n_freq, wd)) / (1.0 + norm))
    kappa = rs.uniform(1.0, 2.5, size=c)
    weights = _class_weights(rs, c, 0.4)

    def sample(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        y = _draw_labels(rng, n, weights)
        low = np.empty((n, wd), dtype=np.float64)
        t_first = np.empty(n, dtype=np.float64)
        for cls in np.unique(y):
            idx = np.flatnonzero(y == cls)
            t = rng.random((idx.size, int(intrinsic[cls]))) ** kappa[cls]
            t_first[idx] = t[:, 0]
            feats = np.cos(2 * np.pi * (t @ freqs[cls].T) + phases[cls])
            low[idx] = offsets[cls] + feats @ amps[cls]
        x = low @ world.T + noise * rng.standard_normal((n, d))
        _add_nuisance(x, rng, nuisance, nuis)
        return x.astype(np.float32), y, {"t": t_first.astype(np.float32)}

    params = {
        **_common_params("manifolds", size, seed, sz),
        "world_dim": wd,
        "curvature": curvature,
        "noise": noise,
        "nuisance": nuisance,
        "normalize": normalize,
        "gt_k": gt_k,
    }
    return _finish(
        "manifolds", sample, rngs, sz, metric, gt_k, 0.0, c, params,
        _summary(make_manifolds.__doc__),
    )


#: scenario name -> maker
SCENARIOS: dict[str, Callable[..., Dataset]] = {
    "clusters": make_clusters,
    "hierarchical": make_hierarchical,
    "manifolds": make_manifolds,
}
