"""mAP@R of the attention mechanisms of issue 10 (transport, diffusion, curvature, topology, bottleneck) vs raw HNSW.

For each dataset (``clusters`` and ``hierarchical`` by default) one HNSW index is built and
shared; every mechanism is fitted with its default settings through ``AttentionSearch.fit`` on
the dataset's 2000 training queries (disjoint from the evaluation queries) and evaluated with
``ruvector_hnsw.eval.evaluate`` next to ``hnsw`` at the same ``ef``. Prints mAP@R, P@1, QPS and
the fit time per method and the mAP@R difference to hnsw.

The attention methods are built with :func:`ruvector_hnsw.eval.make_attention` by mechanism
name (not through the method registry, where another method could carry the same name).
``--no-label-head`` fits without the search's label stage (``label_head=False``), which otherwise
dominates the ranking of these labelled datasets, so the codes - and the mechanisms - alone count.

Usage::

    python benchmarks/bench_new_mechanisms.py                       # both datasets, 6 mechanisms
    python benchmarks/bench_new_mechanisms.py --datasets clusters --mechanisms diffusion
    python benchmarks/bench_new_mechanisms.py --quick               # small datasets, 1 epoch
"""

from __future__ import annotations

import argparse
import sys
import time

from ruvector_hnsw.datasets import load
from ruvector_hnsw.eval import BuildContext, evaluate, make_attention, make_hnsw

MECHANISMS = ("sliced_wasserstein", "centroid_ot", "diffusion", "mixed_curvature", "topology_gated", "info_bottleneck")


def run_dataset(name: str, mechanisms: list[str], *, quick: bool, ef: int, threads: int, seed: int,
                label_head: bool = True) -> list[str]:
    """Evaluate hnsw and every mechanism on one dataset; print a table; return failures."""
    ds = load(name, size="small") if quick else load(name)
    if ds.train_queries is None:
        ds = ds.split_queries(min(2000, ds.queries.shape[0] // 2), seed=seed)
    ctx = BuildContext(ds, ef=ef, seed=seed, num_threads=threads)
    t0 = time.perf_counter()
    methods = {"hnsw": make_hnsw(ctx.index, ef=ef)}
    build_s = time.perf_counter() - t0
    fit_s: dict[str, float] = {}
    failures: list[str] = []
    fit_opts: dict[str, object] = {"epochs": 1} if quick else {}
    if not label_head:
        fit_opts["label_head"] = False
    for mech in mechanisms:
        t0 = time.perf_counter()
        try:
            methods[mech] = make_attention(ctx, mech, **fit_opts)
        except Exception as exc:  # reported; the run fails at the end
            failures.append(f"{name}/{mech}: {type(exc).__name__}: {exc}")
            print(f"  {name}/{mech}: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        fit_s[mech] = time.perf_counter() - t0
    rows = evaluate(ds, methods, k=10, latency_queries=0, seed=seed)
    by = {r["method"]: r for r in rows}
    ref = by["hnsw"]["map_at_r"]
    print(f"\n[{name}] base {ds.base.shape[0]} x {ds.base.shape[1]} ({ds.metric}), "
          f"{ds.train_queries.shape[0]} training / {ds.queries.shape[0]} evaluation queries, ef={ef}, "
          f"index built in {build_s:.1f} s")
    print("| method | mAP@R | vs hnsw | P@1 | QPS | fit s |")
    print("|---|---|---|---|---|---|")
    for m in methods:
        r = by[m]
        fit = f"{fit_s[m]:.0f}" if m in fit_s else "-"
        print(f"| {m} | {r['map_at_r']:.4f} | {r['map_at_r'] - ref:+.4f} | {r['p_at_1']:.4f} | "
              f"{r['qps']:,.0f} | {fit} |")
    return failures


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="*", default=["clusters", "hierarchical"])
    ap.add_argument("--mechanisms", nargs="*", default=list(MECHANISMS))
    ap.add_argument("--ef", type=int, default=128)
    ap.add_argument("--threads", type=int, default=-1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="small datasets, one epoch (smoke run)")
    ap.add_argument("--no-label-head", action="store_true", help="fit without the search's label stage")
    args = ap.parse_args(argv)
    failures: list[str] = []
    for name in args.datasets:
        failures += run_dataset(name, args.mechanisms, quick=args.quick, ef=args.ef, threads=args.threads,
                                seed=args.seed, label_head=not args.no_label_head)
    if failures:
        sys.exit("bench_new_mechanisms: failures:\n  " + "\n  ".join(failures))


if __name__ == "__main__":
    main()
