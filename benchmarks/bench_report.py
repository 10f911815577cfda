"""Validate ``GeometryReport``'s recommendation against training every attention mechanism.

For each dataset (the built-in clusters, hierarchical, manifolds, digits, and a seeded subsample
of the real text set ``../shared/datasets/apt_minilm.npz``): build one HNSW index, run
``GeometryReport.analyze`` on it, then fit every mechanism of ``ruvector_hnsw.attention.MECHANISMS``
through ``AttentionSearch.fit`` (via the eval methods, as ``ruvector-hnsw eval`` does) on the
dataset's training queries and measure mAP@R on its held-apart evaluation queries, next to raw
HNSW. Printed per dataset: the report, each mechanism's mAP@R, and how far the recommended
mechanism (the family's first) and the best of the recommended family fall from the best
mechanism, and how far ``local_global`` ("always local_global") falls.

Reduced settings (to keep the whole run near 30 min on 2 shared cores, one seed): the synthetic
sets at ``size="small"`` (5k base, 500 training / 300 evaluation queries; digits as it comes),
apt_minilm subsampled to 6000 base / 1000 training / 500 evaluation queries (seeded), HNSW
``M=16, ef_construction=100``, ``epochs=3`` (early stopping as usual), ``label_head=False`` (the
label head lifts every mechanism to the same mAP@R and hides their differences),
``fresh_rows=1024``, one thread. ``--quick``: tiny sets, three mechanisms, one epoch (a smoke run).

Usage::

    NUMBA_NUM_THREADS=1 nice -n 10 python benchmarks/bench_report.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _data import shared_dataset

from ruvector_hnsw import eval as ev
from ruvector_hnsw.attention import MECHANISMS
from ruvector_hnsw.datasets import Dataset, load
from ruvector_hnsw.diagnostics import GeometryReport

#: mechanism -> eval method name (``diffusion`` the mechanism is ``diffusion_attention``)
METHOD_OF = {mech: name for name, mech in ev.ATTENTION_METHODS.items()}


def apt_subsample(path: Path, n_base: int, n_train: int, n_eval: int, seed: int = 0) -> Dataset:
    """A seeded random subsample of apt_minilm at ``path`` (base, training and evaluation queries)."""
    z = np.load(path)
    rng = np.random.default_rng(seed)

    def pick(n_total: int, n: int) -> np.ndarray:
        return np.sort(rng.choice(n_total, min(n, n_total), replace=False))

    b = pick(z["base"].shape[0], n_base)
    t = pick(z["train_queries"].shape[0], n_train)
    q = pick(z["queries"].shape[0], n_eval)
    return Dataset(
        name="apt_minilm", metric="cosine",
        base=z["base"][b].astype(np.float32), base_labels=z["base_labels"][b],
        queries=z["queries"][q].astype(np.float32), query_labels=z["query_labels"][q],
        train_queries=z["train_queries"][t].astype(np.float32), train_query_labels=z["train_query_labels"][t],
        params={"subsample_seed": seed, "n_base": int(b.size), "n_train": int(t.size), "n_eval": int(q.size)},
        source=str(path),
    )


def datasets(quick: bool) -> list[Dataset]:
    if quick:
        return [load("clusters", size="tiny", seed=0), load("hierarchical", size="tiny", seed=0)]
    out = [load(name, size="small", seed=0) for name in ("clusters", "hierarchical", "manifolds")]
    digits = load("digits", seed=0)
    if digits.train_queries is None:
        digits, _ = ev.ensure_train_split(digits, seed=0)
    out.append(digits)
    apt = shared_dataset()
    if apt is not None:
        out.append(apt_subsample(apt, 6000, 1000, 500, seed=0))
    else:
        print("note: shared/datasets/apt_minilm.npz not found beside the checkout; the text set is skipped",
              flush=True)
    return out


def run_dataset(ds: Dataset, mechanisms: list[str], fit_opts: dict[str, Any], log: Any) -> dict[str, Any]:
    t0 = time.perf_counter()
    index = ev.build_hnsw_index(ds, M=16, ef_construction=100, seed=0, num_threads=1, ef=128)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = GeometryReport.analyze(index, sample=512, seed=0)
    report_s = time.perf_counter() - t0
    log(f"== {ds.name}: {ds.n_base} base x {ds.dim} ({ds.metric}), {ds.n_train_queries} training / "
        f"{ds.n_queries} evaluation queries; index {build_s:.1f} s, report {report_s:.2f} s")
    log(report.format())
    rec: dict[str, Any] = {"dataset": ds.name, "n_base": ds.n_base, "dim": ds.dim, "n_train": ds.n_train_queries,
                           "n_eval": ds.n_queries, "report": report.to_dict(), "report_s": round(report_s, 3),
                           "map_at_r": {}, "fit_s": {}, "errors": {}}
    rows = ev.evaluate(ds, ev.build_methods(["hnsw"], ds, index=index, seed=0, num_threads=1), k=10,
                       latency_queries=0, qps_repeats=1, seed=0)
    rec["hnsw"] = round(float(rows[0]["map_at_r"]), 4)
    log(f"  {'hnsw':<20} mAP@R {rec['hnsw']:.4f}")
    opts = ":".join(f"{k}={v}" for k, v in fit_opts.items())
    # the recommended family is always trained (the quick run trains only a few mechanisms)
    for mech in mechanisms + [m for m in report.mechanisms if m not in mechanisms]:
        spec = f"{METHOD_OF[mech]}:{opts}"
        t0 = time.perf_counter()
        try:
            methods = ev.build_methods([spec], ds, index=index, seed=0, num_threads=1)
            fit_s = time.perf_counter() - t0
            rows = ev.evaluate(ds, methods, k=10, latency_queries=0, qps_repeats=1, seed=0)
        except Exception as exc:  # one failing mechanism must not end the run
            rec["errors"][mech] = f"{type(exc).__name__}: {exc}"
            log(f"  {mech:<20} FAILED {rec['errors'][mech]}")
            continue
        value = round(float(rows[0]["map_at_r"]), 4)
        rec["map_at_r"][mech] = value
        rec["fit_s"][mech] = round(fit_s, 2)
        log(f"  {mech:<20} mAP@R {value:.4f}  ({value - rec['hnsw']:+.4f} vs hnsw; fit {fit_s:.1f} s)")
    summarise(rec)
    s = rec["summary"]
    if s:
        log(f"  best {s['best']} {s['best_map']:.4f}; recommended {report.recommendation} -> {s['recommended']} "
            f"{s['recommended_map']:.4f} (gap {s['recommended_gap']:.4f}; best of family {s['family_best']} gap "
            f"{s['family_gap']:.4f}); always local_global gap {s['local_global_gap']:.4f}")
    return rec


def summarise(rec: dict[str, Any]) -> None:
    maps = rec["map_at_r"]
    if not maps:
        rec["summary"] = {}
        return
    best = max(maps, key=lambda m: maps[m])
    fam = [m for m in rec["report"]["mechanisms"] if m in maps]
    first = rec["report"]["mechanisms"][0]
    fam_best = max(fam, key=lambda m: maps[m]) if fam else None
    nan = float("nan")
    rec["summary"] = {
        "best": best, "best_map": maps[best],
        "recommended": first, "recommended_map": maps.get(first, nan),
        "recommended_gap": round(maps[best] - maps.get(first, nan), 4),
        "family_best": fam_best, "family_gap": round(maps[best] - maps[fam_best], 4) if fam_best else nan,
        "local_global_gap": round(maps[best] - maps.get("local_global", nan), 4),
        "beat_hnsw": sorted(m for m, v in maps.items() if v > rec["hnsw"]),
    }


def table(records: list[dict[str, Any]], mechanisms: list[str]) -> list[str]:
    names = [r["dataset"][:18] for r in records]
    lines = [f"{'mAP@R':<20}" + "".join(f"{n:>20}" for n in names), "-" * (20 + 20 * len(names))]
    lines.append(f"{'hnsw (raw)':<20}" + "".join(f"{r['hnsw']:>20.4f}" for r in records))
    for m in mechanisms:
        cells = []
        for r in records:
            v = r["map_at_r"].get(m)
            best = r.get("summary", {}).get("best") == m
            cells.append(f"{'n/a' if v is None else f'{v:.4f}' + ('*' if best else ' '):>20}")
        lines.append(f"{m:<20}" + "".join(cells))
    lines.append("-" * (20 + 20 * len(names)))
    for label, key in (("recommended family", None), ("recommended mech", "recommended"),
                       ("gap: recommended", "recommended_gap"), ("gap: best of family", "family_gap"),
                       ("gap: local_global", "local_global_gap")):
        if key is None:
            cells = [f"{r['report']['recommendation']:>20}" for r in records]
        else:
            cells = []
            for r in records:
                v = r.get("summary", {}).get(key)
                cells.append(f"{v:>20}" if isinstance(v, str) else f"{'n/a' if v is None else f'{v:.4f}':>20}")
        lines.append(f"{label:<20}" + "".join(cells))
    return lines


def always(records: list[dict[str, Any]], mechanisms: list[str]) -> list[dict[str, Any]]:
    """Each fixed choice ("always X") over the sets: mean gap to the best, sets within 0.02."""
    out = []
    for m in mechanisms:
        gaps = [r["summary"]["best_map"] - r["map_at_r"][m] for r in records if r.get("summary") and m in r["map_at_r"]]
        if len(gaps) == len(records) and gaps:
            out.append({"mechanism": m, "mean_gap": round(float(np.mean(gaps)), 4),
                        "max_gap": round(float(np.max(gaps)), 4), "within_0_02": int(sum(g <= 0.02 for g in gaps))})
    return sorted(out, key=lambda row: (row["mean_gap"], row["mechanism"]))


def conclude(out: dict[str, Any], log: Any) -> None:
    """The validation table and the verdict (from the records alone: also used by ``--summary-only``)."""
    records, mechanisms = out["records"], out["mechanisms"]
    log("")
    log("validation (mAP@R on held-apart evaluation queries; * = best mechanism; gaps = best - that one)")
    trained = mechanisms + sorted({m for r in records for m in r["map_at_r"]} - set(mechanisms))
    for line in table(records, trained):
        log(line)
    gaps = [r["summary"]["recommended_gap"] for r in records if r.get("summary")]
    lg = [r["summary"]["local_global_gap"] for r in records if r.get("summary")]
    within = sum(g <= 0.02 for g in gaps)
    out["recommended_within_0_02"] = within
    out["local_global_within_0_02"] = sum(g <= 0.02 for g in lg)
    out["mean_recommended_gap"] = float(np.mean(gaps)) if gaps else float("nan")
    out["mean_local_global_gap"] = float(np.mean(lg)) if lg else float("nan")
    out["always"] = always(records, trained)
    log("")
    log("always the same mechanism (post hoc, on these sets): mean / max gap to the best, sets within 0.02")
    for row in out["always"]:
        log(f"  {row['mechanism']:<20} mean {row['mean_gap']:.4f}  max {row['max_gap']:.4f}  "
            f"{row['within_0_02']}/{len(records)}")
    log(f"recommended mechanism within 0.02 of the best on {within} of {len(gaps)} sets (mean gap "
        f"{out['mean_recommended_gap']:.4f}); always local_global: {out['local_global_within_0_02']} of {len(lg)} "
        f"(mean gap {out['mean_local_global_gap']:.4f})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sets, three mechanisms, one epoch")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--summary-only", dest="summary_only", metavar="JSON",
                    help="print the validation table of a finished run's JSON (no training)")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    if args.summary_only:
        done = json.loads(Path(args.summary_only).read_text())
        conclude(done, lambda text: print(text, flush=True))
        return 0

    def log(text: str) -> None:
        print(text, flush=True)

    if args.quick:
        mechanisms = ["scaled_dot", "local_global", "sliced_wasserstein"]
        fit_opts: dict[str, Any] = {"epochs": 1, "label_head": False, "fresh_rows": 512}
    else:
        mechanisms = list(MECHANISMS)
        fit_opts = {"epochs": 3, "label_head": False, "fresh_rows": 1024}
    log(f"bench_report: {len(mechanisms)} mechanisms, fit options {fit_opts}, NUMBA_NUM_THREADS="
        f"{os.environ.get('NUMBA_NUM_THREADS', '(unset)')}")
    records = []
    out: dict[str, Any] = {"quick": bool(args.quick), "fit_options": fit_opts, "mechanisms": mechanisms,
                           "records": records}
    for ds in datasets(args.quick):
        records.append(run_dataset(ds, mechanisms, fit_opts, log))
        if args.json:  # after every dataset: a cut-short run keeps what it measured
            Path(args.json).write_text(json.dumps(out, indent=2, default=float))
    out["wall_s"] = round(time.perf_counter() - t_start, 1)
    conclude(out, log)
    log(f"wall {out['wall_s']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
