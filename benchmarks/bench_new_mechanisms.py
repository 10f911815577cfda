"""mAP@R of AttentionSearch fitted with the issue-10 mechanisms against raw HNSW.

For each dataset (default ``clusters`` and ``hierarchical``, default size: 20k base vectors,
1000 evaluation and 2000 training queries) one HNSW index is built and shared; every mechanism
is fitted with default settings through ``AttentionSearch.fit`` on the training queries only
(``ruvector_hnsw.eval`` methods), then all methods are evaluated on the same queries. Prints a
table per dataset and the mAP@R difference of each mechanism to hnsw.

Usage::

    python benchmarks/bench_new_mechanisms.py
    python benchmarks/bench_new_mechanisms.py --datasets clusters --mechanisms mixed_curvature --size small
"""

from __future__ import annotations

import argparse
import json
import time

from ruvector_hnsw import datasets
from ruvector_hnsw import eval as ev

NEW = ("mixed_curvature", "topology_gated", "info_bottleneck")


def run(name: str, mechanisms: list[str], size: str | None, seed: int) -> list[dict]:
    ds = datasets.load(name, **({"size": size} if size else {}))
    ds, info = ev.ensure_train_split(ds)
    t0 = time.perf_counter()
    methods = ev.build_methods(["hnsw", *mechanisms], ds, seed=seed)
    fit_s = time.perf_counter() - t0
    rows = ev.evaluate(ds, methods, k=10, latency_queries=0, seed=seed)
    base = next(r for r in rows if r["method"] == "hnsw")["map_at_r"]
    print(f"\n[{ds.name}] base {len(ds.base)}, eval queries {len(ds.queries)}, "
          f"training queries {info['n_train_queries']}, build+fit {fit_s:.0f} s")
    print("| method | mAP@R | vs hnsw | P@1 | QPS |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['map_at_r']:.4f} | {r['map_at_r'] - base:+.4f} | {r['p_at_1']:.4f} | "
              f"{r['qps']:,.0f} |")
    return [{"dataset": ds.name, "method": r["method"], "map_at_r": r["map_at_r"], "p_at_1": r["p_at_1"],
             "qps": r["qps"], "delta_vs_hnsw": r["map_at_r"] - base} for r in rows]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="clusters,hierarchical")
    ap.add_argument("--mechanisms", default=",".join(NEW))
    ap.add_argument("--size", choices=("tiny", "small", "default", "large"), default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args(argv)
    out = []
    for name in args.datasets.split(","):
        out += run(name, args.mechanisms.split(","), args.size, args.seed)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
