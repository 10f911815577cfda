"""What each stage of the open path adds on unseen classes: the gate, the demotion, the diffusion, the smoothing.

The open path serves the queries the label term does not apply to (:mod:`ruvector_hnsw.search.pipeline`).
For each dataset (the four built-in scenarios and ``apt_minilm`` when found), the unseen-class protocol
(:func:`ruvector_hnsw.datasets.class_split`, 30 % of the classes, split seed 0) and each training seed,
the default ``AttentionSearch(index)`` is fitted once (HNSW M=16, ef_construction=200, built on one
thread so the graph is the same every run) and evaluated (mAP@100 of the evaluation queries) with:

- ``default``: as fitted;
- ``no gate``: every query served by the open path (the label term off);
- ``no demotion``: the known-label demotion off (``demote_known = 0``), the gate as fitted;
- ``no smoothing``: the DBA and query-expansion weights set to 0 too;
- ``no diffusion``: the diffusion stage off too (the codes' ranking with ``alpha_open``).

``--hide-seen F`` hides the labels of a share ``F`` of the seen classes' items too
(:func:`~ruvector_hnsw.datasets.class_split`), so that unlabelled items are not exactly the unseen
classes' items.

Switches act on the fitted model's scalars between searches (one fit serves every row). Prints
mean +- std over the seeds and the calibrated settings, then what each row costs: its QPS at k = 10
(all evaluation queries in one batch, 2 threads, best of 3) as a ratio to plain HNSW's (``ef`` = 128)
in the same run, so the price of a stage is the step between two rows.

Usage: ``python benchmarks/bench_open_path.py [--seeds 0,1,2] [--datasets ...] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from _data import shared_dataset

from ruvector_hnsw import eval as ev
from ruvector_hnsw.datasets import apply_protocol, load
from ruvector_hnsw.eval.attention import fit_attention
from ruvector_hnsw.search import diffusion

APT = "apt_minilm"
ROWS = ("default", "no gate", "no demotion", "no smoothing", "no diffusion")


def _map100(ds: Any, model: Any, qps: dict[str, float], row: str) -> float:
    """mAP@100 of ``model`` on ``ds``; its QPS at k = 10 goes to ``qps[row]``."""
    method = ev.SearchMethod("m", lambda q, k: model.search(q, int(k)), 2)
    got = ev.evaluate(ds, {"m": method}, k=10, qps_repeats=3, latency_queries=0)[0]
    qps[row] = float(got["qps"])
    return float(got["map_at_100"])


def _hnsw_qps(ds: Any, index: Any) -> float:
    method = ev.SearchMethod("hnsw", lambda q, k: index.search(q, int(k), ef=128), 2)
    return float(ev.evaluate(ds, {"hnsw": method}, k=10, qps_repeats=3, latency_queries=0)[0]["qps"])


def run(datasets: list[str], seeds: list[int], hide_seen: float = 0.0) -> dict[str, Any]:
    out: dict[str, Any] = {"seeds": seeds, "hide_seen": hide_seen, "results": []}
    for name in datasets:
        if name == APT:
            path = shared_dataset()
            if path is None:
                print(f"{name}: not found, skipped", flush=True)
                continue
            base = load(str(path))
        else:
            base = load(name)
        ds = apply_protocol(base, "unseen", unseen=0.3, seed=0, hide_seen=hide_seen)
        index = ev.build_hnsw_index(ds, M=16, ef_construction=200, seed=100, num_threads=1, ef=128)
        for seed in seeds:
            model, _ = fit_attention(ev.BuildContext(ds, index, ef=128, seed=seed, num_threads=2), "local_global")
            m = model.model
            saved = {k: getattr(m, k) for k in ("gate", "mu", "diffusion_gamma", "diffusion_seeds", "dba_weight",
                                                 "qe_weight", "qe_top", "demote_known")}
            qps: dict[str, float] = {"hnsw": _hnsw_qps(ds, index)}
            row: dict[str, Any] = {"dataset": name, "seed": seed, "settings": dict(saved), "qps": qps}
            row["default"] = _map100(ds, model, qps, "default")
            m.gate = 2.0
            row["no gate"] = _map100(ds, model, qps, "no gate")
            m.gate = saved["gate"]
            m.demote_known = 0.0
            row["no demotion"] = _map100(ds, model, qps, "no demotion")
            m.dba_weight, m.qe_weight = 0.0, 0.0
            row["no smoothing"] = _map100(ds, model, qps, "no smoothing")
            mu = m.mu
            m.mu = 0.0
            row["no diffusion"] = _map100(ds, model, qps, "no diffusion")
            m.mu, m.diffusion_gamma, m.diffusion_seeds = mu, diffusion.GAMMA, diffusion.DIFFUSION_SEEDS
            for k, v in saved.items():
                setattr(m, k, v)
            out["results"].append(row)
            print(f"{name:<13} seed {seed}  " + "  ".join(f"{k} {row[k]:.4f}" for k in ROWS)
                  + f"  | {saved}", flush=True)
    return out


def table(out: dict[str, Any]) -> str:
    lines = [f"{'dataset':<13} " + " ".join(f"{k:>18}" for k in ROWS)]
    for name in dict.fromkeys(r["dataset"] for r in out["results"]):
        rs = [r for r in out["results"] if r["dataset"] == name]
        cells = []
        for k in ROWS:
            vals = [r[k] for r in rs]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{statistics.fmean(vals):.4f} +- {sd:.4f}")
        lines.append(f"{name:<13} " + " ".join(f"{c:>18}" for c in cells))
    lines.append(f"QPS at k=10 / plain HNSW's (mean over seeds)\n{'dataset':<13} {'hnsw':>9} "
                 + " ".join(f"{k:>18}" for k in ROWS))
    for name in dict.fromkeys(r["dataset"] for r in out["results"]):
        rs = [r for r in out["results"] if r["dataset"] == name and "qps" in r]
        if not rs:
            continue
        ref = statistics.fmean(r["qps"]["hnsw"] for r in rs)
        means = [statistics.fmean(r["qps"][k] for r in rs) for k in ROWS]
        cells = [f"{q:7.0f} ({q / ref:.2f})" for q in means]
        lines.append(f"{name:<13} {ref:9.0f} " + " ".join(f"{c:>18}" for c in cells))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--datasets", default=f"clusters,hierarchical,manifolds,digits,{APT}")
    ap.add_argument("--hide-seen", type=float, default=0.0, dest="hide_seen",
                    help="also hide the labels of this share of the seen classes' items")
    ap.add_argument("--json")
    args = ap.parse_args()
    out = run([d.strip() for d in args.datasets.split(",") if d.strip()],
              [int(s) for s in args.seeds.split(",") if s.strip()], args.hide_seen)
    print(table(out))
    if args.json:
        Path(args.json).write_text(json.dumps(ev.to_jsonable(out), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
