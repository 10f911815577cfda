"""Which combination of fit's training toolkit wins on each dataset (seen-class protocol).

For each dataset (the four built-in scenarios at ``--size`` and ``apt_minilm``, found at
``../shared/datasets/apt_minilm.npz`` from the repository root or a parent of it, with every
``--apt-train-step``-th training query and the first ``--apt-queries`` evaluation queries; the
base is kept) one HNSW index is built (M=16, ef_construction=200, seed 100, ef=128) and
``local_global`` is fitted once per seed and toolkit option (everything else at its default, the
label head off so that the contrastive part is what is compared), then evaluated on the held-apart
evaluation queries with :func:`ruvector_hnsw.eval.evaluate` (mAP@R, mAP@100 over full max-R lists).

Prints one table per dataset (mean +- std over the seeds, the difference to the default) and the
winner of each dataset. ``--json`` writes every figure.

Usage: ``python benchmarks/bench_toolkit.py [--quick] [--seeds 0,1,2] [--datasets ...] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _data import shared_dataset

from ruvector_hnsw import eval as ev
from ruvector_hnsw.datasets import load

BASE = "local_global:label_head=false"
#: option suffix -> label in the tables
VARIANTS: dict[str, str] = {
    "": "default (infonce, hard, adam)",
    ":loss=triplet": "loss=triplet",
    ":loss=local_contrastive": "loss=local_contrastive",
    ":miner=semihard": "miner=semihard",
    ":miner=random": "miner=random",
    ":regularizer=laplacian": "regularizer=laplacian",
    ":curriculum=2/0.2/16+6/0.07/32": "curriculum 2/0.2/16+6/0.07/32",
    ":optimizer=adamw": "optimizer=adamw",
    ":optimizer=sgd": "optimizer=sgd",
    ":optimizer=natural": "optimizer=natural",
}
APT = "apt_minilm"



def _load(name: str, size: str, apt_step: int, apt_queries: int) -> Any:
    if name == APT:
        path = shared_dataset()
        if path is None:
            return None
        ds = load(str(path))
        return ds.take_queries(apt_queries).replace(train_queries=ds.train_queries[::apt_step],
                                                    train_query_labels=ds.train_query_labels[::apt_step])
    return load(name, size=size)


def run(datasets: list[str], seeds: list[int], variants: dict[str, str], *, size: str, threads: int,
        apt_step: int, apt_queries: int, base: str = BASE) -> dict[str, Any]:
    out: dict[str, Any] = {"seeds": seeds, "size": size, "base": base, "results": []}
    for name in datasets:
        ds = _load(name, size, apt_step, apt_queries)
        if ds is None:
            print(f"{name}: not found, skipped", flush=True)
            continue
        index = ev.build_hnsw_index(ds, M=16, ef_construction=200, seed=100, num_threads=threads, ef=128)
        print(f"{ds.name}: {ds.n_base} base, {ds.n_queries} eval / {ds.n_train_queries} train queries", flush=True)
        hnsw = ev.evaluate(ds, {"hnsw": ev.METHODS["hnsw"](ev.BuildContext(ds, index, ef=128, num_threads=threads))},
                           k=10, qps_repeats=1, latency_queries=0)[0]
        out["results"].append({"dataset": ds.name, "variant": "hnsw", "seed": None, "map_at_r": hnsw["map_at_r"],
                               "map_at_100": hnsw["map_at_100"], "fit_s": None})
        print(f"  {'hnsw':<32} mAP@R {hnsw['map_at_r']:.4f}", flush=True)
        for seed in seeds:
            ctx = ev.BuildContext(ds, index, ef=128, seed=seed, num_threads=threads)
            for suffix, label in variants.items():
                name_, opts = ev.parse_method_spec(base + suffix)
                t0 = time.perf_counter()
                method = ev.METHODS[name_](ctx, **opts)
                row = ev.evaluate(ds, {label: method}, k=10, qps_repeats=1, latency_queries=0)[0]
                fit_s = (row["params"] or {}).get("fit_s", time.perf_counter() - t0)
                out["results"].append({"dataset": ds.name, "variant": label, "seed": seed,
                                       "map_at_r": row["map_at_r"], "map_at_100": row["map_at_100"], "fit_s": fit_s})
                print(f"  {label:<32} seed {seed}  mAP@R {row['map_at_r']:.4f}  mAP@100 {row['map_at_100']:.4f}  "
                      f"fit {fit_s:6.1f} s", flush=True)
    return out


def _stat(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def tables(out: dict[str, Any]) -> str:
    """Per dataset: every variant's mAP@R (mean +- std over seeds), its difference to the default, the winner."""
    lines: list[str] = []
    rows = out["results"]
    default = next((r["variant"] for r in rows if r["variant"] != "hnsw"), "")
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        sel = [r for r in rows if r["dataset"] == dataset]
        lines.append(f"\n== {dataset} (mAP@R, mean +- std over seeds {out['seeds']}) ==")
        means: dict[str, float] = {}
        for variant in dict.fromkeys(r["variant"] for r in sel):
            rs = [r for r in sel if r["variant"] == variant]
            m, s = _stat([r["map_at_r"] for r in rs])
            means[variant] = m
            fits = [r["fit_s"] for r in rs if r["fit_s"] is not None]
            fit = f"{statistics.fmean(fits):7.1f} s" if fits else ""
            delta = f"{m - means[default]:+.4f}" if default in means and variant != "hnsw" else ""
            lines.append(f"  {variant:<32} {m:.4f} +- {s:.4f}  {delta:>8}  {fit}")
        trained = {k: v for k, v in means.items() if k != "hnsw"}
        if trained:
            best = max(trained, key=lambda k: trained[k])
            lines.append(f"  winner: {best} ({trained[best]:.4f}, default {trained.get(default, float('nan')):.4f})")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny scenarios, two variants, one seed (smoke run)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--size", default="small", choices=("tiny", "small", "default", "large"))
    ap.add_argument("--datasets", default=f"clusters,hierarchical,manifolds,digits,{APT}")
    ap.add_argument("--apt-train-step", type=int, default=5, dest="apt_step")
    ap.add_argument("--apt-queries", type=int, default=300, dest="apt_queries")
    ap.add_argument("--threads", type=int, default=-1)
    ap.add_argument("--base", default=BASE, help=f"the method every variant extends (default {BASE}); e.g. "
                    "--base local_global --variants ':context=none;:spectral=0;:expand=0;:label_head=false' "
                    "for the ablations")
    ap.add_argument("--variants", help="option suffixes to compare instead of the built-in list, separated by "
                    "';' (e.g. ':lr=0.05;:optimizer=natural'); the default is always included")
    ap.add_argument("--json", help="write every figure to this file")
    args = ap.parse_args()
    variants = VARIANTS
    if args.variants:
        extra = [v.strip() for v in args.variants.split(";") if v.strip()]
        variants = {"": "default" if args.base != BASE else VARIANTS[""], **{v: v.lstrip(":") for v in extra}}
    if args.quick:
        variants = dict(list(VARIANTS.items())[:2])
        out = run(["clusters"], [0], variants, size="tiny", threads=args.threads, apt_step=args.apt_step,
                  apt_queries=args.apt_queries)
    else:
        out = run([d.strip() for d in args.datasets.split(",") if d.strip()],
                  [int(s) for s in args.seeds.split(",") if s.strip()], variants, size=args.size,
                  threads=args.threads, apt_step=args.apt_step, apt_queries=args.apt_queries, base=args.base)
    print(tables(out))
    if args.json:
        Path(args.json).write_text(json.dumps(ev.to_jsonable(out), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
