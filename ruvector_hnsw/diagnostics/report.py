"""``GeometryReport``: graded geometry metrics of an HNSW graph, a health score, and a mechanism to try.

``GeometryReport.analyze(index_or_graph, sample=512, seed=0)`` measures the metrics of
:mod:`ruvector_hnsw.diagnostics.metrics` on ``sample`` seeded neighbourhoods, grades each
against its documented ranges (:data:`METRICS`), and turns them into

* ``health`` in ``[0, 1]``: the mean of the grade scores (healthy 1, warning 0.5, critical 0);
* ``recommendation``: a family in :data:`FAMILIES` (``standard``, ``sparse``, ``geometric``,
  ``diffusion``, ``transport``), the concrete mechanisms of that family to try
  (``mechanisms``, best bet first) and the ``reasons`` (one line per rule that fired or was
  checked).

Rules (:func:`recommend`, first match wins; values only, so :meth:`GeometryReport.from_values`
reaches every branch)
------------------------------------------------------------------------------------------
1. ``gromov_delta <= 0.35``: the graph metric is tree-like -> **geometric** (hyperbolic,
   mixed_curvature).
2. ``ot_ratio <= 0.60``: linked nodes see much closer neighbourhood *distributions* than random
   pairs -> **transport** (sliced_wasserstein, centroid_ot): comparing items as neighbourhoods
   carries signal.
3. ``dirichlet_energy <= 0.40`` and ``boundary_mass <= 0.88``: the vectors are smooth along the
   links and the windows keep their links inside -> **diffusion** (heat flow on the window's
   graph stays within the structure).
4. ``attention_entropy >= 0.85`` or ``boundary_mass >= 0.90``: untrained attention is nearly
   uniform over the window, or the windows are incoherent -> **sparse** (local_global: separate
   local / hub softmaxes; topology_gated: sparse top-k when a window is incoherent).
5. Otherwise -> **standard** (scaled_dot, multi_head).

The thresholds were set from the metric values of the built-in datasets and a text set (their
spread, not their retrieval results); see ``benchmarks/bench_report.py`` and the README for how
the recommendation fares against training every mechanism.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ruvector_hnsw.diagnostics import metrics as mt
from ruvector_hnsw.errors import InvalidInputError

__all__ = ["FAMILIES", "GRADES", "METRICS", "GeometryReport", "MetricResult", "MetricSpec", "grade", "recommend"]

#: grade -> score entering ``health``
GRADES: dict[str, float] = {"healthy": 1.0, "warning": 0.5, "critical": 0.0}

#: recommendation family -> mechanisms to try (names of ``ruvector_hnsw.attention.MECHANISMS``), best bet first
FAMILIES: dict[str, tuple[str, ...]] = {
    "standard": ("scaled_dot", "multi_head"),
    "sparse": ("local_global", "topology_gated"),
    "geometric": ("hyperbolic", "mixed_curvature"),
    "diffusion": ("diffusion",),
    "transport": ("sliced_wasserstein", "centroid_ot"),
}


@dataclass(frozen=True)
class MetricSpec:
    """A metric's grading ranges.

    ``direction="lower"``: healthy when ``value <= healthy[1]``, warning when ``value <=
    warning[1]``, critical above. ``direction="band"``: healthy inside ``healthy``, warning
    inside ``warning``, critical outside both (the ranges are closed intervals).
    """

    name: str
    title: str
    direction: str
    healthy: tuple[float, float]
    warning: tuple[float, float]
    meaning: str


#: every metric of the report, in display order
METRICS: dict[str, MetricSpec] = {spec.name: spec for spec in (
    MetricSpec("ot_ratio", "OT between neighbourhoods", "lower", (0.0, 0.65), (0.0, 0.80),
               "sliced W2 between linked nodes' layer-0 neighbourhoods / the same for random pairs"),
    MetricSpec("boundary_mass", "topology: window boundary", "lower", (0.0, 0.85), (0.0, 0.93),
               "share of the context window's layer-0 links that leave the window"),
    MetricSpec("gromov_delta", "curvature: Gromov delta", "lower", (0.0, 0.50), (0.0, 0.80),
               "2 delta / diameter of the hop metric (4-point condition); 0 = tree-like"),
    MetricSpec("level_deviation", "hierarchy: level law", "lower", (0.0, 0.50), (0.0, 1.00),
               "max |log2(observed / expected)| layer occupancy vs hnswlib's M^-l law"),
    MetricSpec("dirichlet_energy", "diffusion: Dirichlet energy", "lower", (0.0, 0.45), (0.0, 0.70),
               "mean squared link length / mean squared random-pair distance"),
    MetricSpec("attention_entropy", "attention entropy", "band", (0.30, 0.85), (0.15, 0.95),
               "untrained local_global's weight entropy over the window / log(window size)"),
)}


def grade(name: str, value: float) -> str:
    """Grade of ``value`` for metric ``name``: ``"healthy"``, ``"warning"`` or ``"critical"``.

    Raises
    ------
    InvalidInputError
        Unknown metric name or a non-finite value.
    """
    spec = METRICS.get(name)
    if spec is None:
        raise InvalidInputError(f"unknown metric {name!r}; known: {sorted(METRICS)}")
    v = float(value)
    if not math.isfinite(v):
        raise InvalidInputError(f"metric {name} must be finite, got {value!r}")
    if spec.direction == "lower":
        if v <= spec.healthy[1]:
            return "healthy"
        return "warning" if v <= spec.warning[1] else "critical"
    if spec.healthy[0] <= v <= spec.healthy[1]:
        return "healthy"
    return "warning" if spec.warning[0] <= v <= spec.warning[1] else "critical"


def recommend(values: Mapping[str, float]) -> tuple[str, tuple[str, ...], list[str]]:
    """The rules of the module docstring: ``(family, mechanisms, reasons)``."""
    v = {k: float(values[k]) for k in METRICS}
    reasons: list[str] = []
    if v["gromov_delta"] <= 0.35:
        reasons.append(f"gromov_delta {v['gromov_delta']:.3f} <= 0.35: the graph metric is tree-like "
                       "(hierarchical); curved (hyperbolic / product) space fits it")
        return "geometric", FAMILIES["geometric"], reasons
    reasons.append(f"gromov_delta {v['gromov_delta']:.3f} > 0.35: not tree-like enough for curved attention")
    if v["ot_ratio"] <= 0.60:
        reasons.append(f"ot_ratio {v['ot_ratio']:.3f} <= 0.60: linked nodes have much closer neighbourhood "
                       "distributions than random pairs; compare items as neighbourhoods")
        return "transport", FAMILIES["transport"], reasons
    reasons.append(f"ot_ratio {v['ot_ratio']:.3f} > 0.60: neighbourhood distributions add little over points")
    if v["dirichlet_energy"] <= 0.40 and v["boundary_mass"] <= 0.88:
        reasons.append(f"dirichlet_energy {v['dirichlet_energy']:.3f} <= 0.40 and boundary_mass "
                       f"{v['boundary_mass']:.3f} <= 0.88: vectors are smooth along coherent windows; "
                       "diffuse the weights over the window's graph")
        return "diffusion", FAMILIES["diffusion"], reasons
    reasons.append(f"dirichlet_energy {v['dirichlet_energy']:.3f} / boundary_mass {v['boundary_mass']:.3f}: "
                   "no smooth, coherent windows to diffuse over")
    if v["attention_entropy"] >= 0.85 or v["boundary_mass"] >= 0.90:
        why = (f"attention_entropy {v['attention_entropy']:.3f} >= 0.85 (untrained attention is nearly uniform)"
               if v["attention_entropy"] >= 0.85 else
               f"boundary_mass {v['boundary_mass']:.3f} >= 0.90 (windows are incoherent)")
        reasons.append(why + "; split local and hub items and attend sparsely")
        return "sparse", FAMILIES["sparse"], reasons
    reasons.append(f"attention_entropy {v['attention_entropy']:.3f} < 0.85 and boundary_mass "
                   f"{v['boundary_mass']:.3f} < 0.90: plain attention over the window is enough")
    return "standard", FAMILIES["standard"], reasons


@dataclass(frozen=True)
class MetricResult:
    """One measured metric: value, grade, ranges and what else it measured (``details``)."""

    name: str
    value: float
    grade: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        spec = METRICS[self.name]
        return {"value": self.value, "grade": self.grade, "direction": spec.direction,
                "healthy": list(spec.healthy), "warning": list(spec.warning), "meaning": spec.meaning,
                "details": dict(self.details)}


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


@dataclass(frozen=True)
class GeometryReport:
    """Graded geometry metrics of an HNSW graph, a health score and a recommended mechanism family.

    Attributes
    ----------
    metrics : dict
        Metric name -> :class:`MetricResult` (every name of :data:`METRICS`).
    health : float
        Mean grade score in ``[0, 1]`` (healthy 1, warning 0.5, critical 0).
    recommendation : str
        A family of :data:`FAMILIES`.
    mechanisms : tuple of str
        The family's mechanisms to try, best bet first.
    reasons : list of str
        Why (the rules checked, in order).
    info : dict
        What was measured: graph size, dim, space, M, sample size, seed, context sizes.
    """

    metrics: dict[str, MetricResult]
    health: float
    recommendation: str
    mechanisms: tuple[str, ...]
    reasons: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_values(cls, values: Mapping[str, float], details: Mapping[str, Mapping[str, Any]] | None = None,
                    info: Mapping[str, Any] | None = None) -> GeometryReport:
        """Grade given metric values and apply the rules (no graph needed).

        Parameters
        ----------
        values : mapping
            A finite value for every name of :data:`METRICS` (extra names are an error).
        details : mapping, optional
            Per-metric extra figures, kept as they are.
        info : mapping, optional
            Free-form description of what was measured.

        Raises
        ------
        InvalidInputError
            A missing, unknown or non-finite value.
        """
        missing = sorted(set(METRICS) - set(values))
        extra = sorted(set(values) - set(METRICS))
        if missing or extra:
            raise InvalidInputError(f"values must name exactly the metrics {sorted(METRICS)}; "
                                    f"missing {missing}, unknown {extra}")
        details = details or {}
        results = {}
        for name in METRICS:
            g = grade(name, values[name])
            results[name] = MetricResult(name, float(values[name]), g, _jsonable(dict(details.get(name, {}))))
        health = float(np.mean([GRADES[r.grade] for r in results.values()]))
        family, mechs, reasons = recommend({k: r.value for k, r in results.items()})
        return cls(metrics=results, health=health, recommendation=family, mechanisms=tuple(mechs),
                   reasons=reasons, info=_jsonable(dict(info or {})))

    @classmethod
    def analyze(cls, index_or_graph: Any, sample: int = 512, seed: int = 0, *, k_local: int = 16,
                k_global: int = 8, gromov_sources: int = 64) -> GeometryReport:
        """Measure every metric on ``sample`` seeded neighbourhoods of an index or graph snapshot.

        Parameters
        ----------
        index_or_graph : HNSWIndex or HNSWGraph
            An index (its current :meth:`~HNSWIndex.graph` is measured) or a snapshot.
        sample : int
            Neighbourhoods sampled (``>= 1``; at most the live nodes).
        seed : int
            Seed of the sample, the projections, the quadruples and the untrained mechanism:
            the same seed gives the same report.
        k_local, k_global : int
            Context window sizes (the searcher's defaults).
        gromov_sources : int
            Sampled nodes whose pairwise hop distances enter the Gromov delta.

        Raises
        ------
        InvalidInputError
            Not an index or graph, or ``sample < 1``.
        EmptyInputError
            No live node.
        """
        from ruvector_hnsw.index import HNSWGraph, HNSWIndex

        if isinstance(index_or_graph, HNSWIndex):
            graph = index_or_graph.graph()
        elif isinstance(index_or_graph, HNSWGraph):
            graph = index_or_graph
        else:
            raise InvalidInputError(f"analyze needs an HNSWIndex or HNSWGraph, got {type(index_or_graph).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise InvalidInputError(f"seed must be an integer, got {seed!r}")
        s = mt.sample_neighbourhoods(graph, sample, int(seed), k_local=k_local, k_global=k_global)
        values, details = measure(s, gromov_sources=gromov_sources)
        info = {"nodes": len(graph), "live": int(s.live.sum()), "dim": int(graph.vectors.shape[1]),
                "space": graph.space, "M": int(graph.M), "max_level": int(graph.max_level), "sample": len(s),
                "seed": int(seed), "k_local": int(k_local), "k_global": int(k_global)}
        return cls.from_values(values, details, info)

    # ------------------------------------------------------------------ output
    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (:meth:`from_dict` reads it back)."""
        return {"health": self.health, "recommendation": self.recommendation, "mechanisms": list(self.mechanisms),
                "reasons": list(self.reasons), "metrics": {k: m.to_dict() for k, m in self.metrics.items()},
                "info": dict(self.info)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GeometryReport:
        """Rebuild a report from :meth:`to_dict` (values re-graded; health and rules recomputed)."""
        try:
            metrics = data["metrics"]
            values = {k: float(m["value"]) for k, m in metrics.items()}
            details = {k: m.get("details", {}) for k, m in metrics.items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidInputError(f"not a GeometryReport dict: {exc}") from exc
        return cls.from_values(values, details, data.get("info", {}))

    def format(self) -> str:
        """A readable text table: one line per metric, then health, the recommendation and the reasons."""
        head = self.info
        lines = []
        if head:
            lines.append(f"graph: {head.get('nodes')} nodes ({head.get('live')} live), dim {head.get('dim')}, "
                         f"space {head.get('space')}, M {head.get('M')}, max level {head.get('max_level')}; "
                         f"sample {head.get('sample')} neighbourhoods, seed {head.get('seed')}")
        lines.append(f"{'metric':<18} {'value':>8}  {'grade':<8}  {'healthy':<12} {'warning':<12}  measures")
        lines.append("-" * 92)
        for name, m in self.metrics.items():
            spec = METRICS[name]
            rng = (lambda r: f"<= {r[1]:g}") if spec.direction == "lower" else (lambda r: f"[{r[0]:g}, {r[1]:g}]")
            lines.append(f"{name:<18} {m.value:>8.4f}  {m.grade:<8}  {rng(spec.healthy):<12} "
                         f"{rng(spec.warning):<12}  {spec.title}")
        lines.append("-" * 92)
        lines.append(f"health: {self.health:.3f}")
        lines.append(f"recommendation: {self.recommendation} (try {', '.join(self.mechanisms)})")
        for r in self.reasons:
            lines.append(f"  - {r}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def measure(s: mt.NeighbourhoodSample, *, gromov_sources: int = 64) -> tuple[dict[str, float], dict[str, Any]]:
    """Every metric value (and its details) of one neighbourhood sample."""
    from ruvector_hnsw.attention import MECHANISMS, Context

    seed = s.seed
    values: dict[str, float] = {}
    details: dict[str, Any] = {}
    ot = mt.neighbourhood_transport(s.vectors, s.indptr, s.indices, s.rows, s.partners, seed=seed)
    values["ot_ratio"] = ot.pop("ot_ratio")
    details["ot_ratio"] = ot
    windows = np.concatenate([s.rows[:, None], np.where(s.mask, s.pos, -1)], axis=1)
    tb = mt.window_boundary(s.indptr, s.indices, windows)
    values["boundary_mass"] = tb.pop("boundary_mass")
    details["boundary_mass"] = tb
    sym_ptr, sym_idx = mt.symmetrise(s.indptr, s.indices)
    rng = np.random.default_rng([seed, 3])
    sources = s.rows[np.sort(rng.permutation(len(s))[: max(2, int(gromov_sources))])]
    gd = mt.gromov_delta(mt.hop_distances(sym_ptr, sym_idx, sources), seed=seed)
    values["gromov_delta"] = gd.pop("relative_delta")
    details["gromov_delta"] = gd
    lv = mt.level_structure(s.levels[s.live], max(s.M, 2))
    values["level_deviation"] = lv.pop("deviation")
    details["level_deviation"] = lv
    de = mt.dirichlet_energy(s.vectors, s.indptr, s.indices, s.rows, s.partners)
    values["dirichlet_energy"] = de.pop("energy")
    details["dirichlet_energy"] = de
    # untrained local_global over the windows, on vectors centred and scaled to unit mean variance per
    # coordinate (so q.k / sqrt(d) has the scale attention expects, whatever the data's units)
    x = s.vectors
    mu = x[s.rows].astype(np.float64).mean(0)
    scale = math.sqrt(max(float(((x[s.rows] - mu) ** 2).sum(1).mean()) / x.shape[1], 1e-24))
    att = MECHANISMS["local_global"](x.shape[1], seed=seed)
    need = np.unique(np.concatenate([s.rows, s.pos[s.mask]]))  # a compact table of the rows read
    table = ((x[need] - mu) / scale).astype(np.float32)
    ids = np.where(s.mask, np.searchsorted(need, np.maximum(s.pos, 0)), -1)
    ctx = Context(dist=s.dist, layer=s.layer, hops=s.hops)
    w = att.weights(table[np.searchsorted(need, s.rows)], table, mask=s.mask, context=ctx, ids=ids)
    ae = mt.attention_entropy(w, s.mask)
    values["attention_entropy"] = ae.pop("entropy")
    details["attention_entropy"] = {**ae, "mechanism": "local_global"}
    return values, details
