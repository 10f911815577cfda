"""What a default ``fit`` costs on real text embeddings, phase by phase, and what it buys.

apt_minilm (found at ``../shared/datasets/apt_minilm.npz`` from the repository root or a parent
of it): 28,403 base items, 5,000 training queries, 1,000 evaluation queries, d=384, cosine HNSW
(M=16, ef_construction=200). The searcher is what a user gets by default,
``AttentionSearch(index, candidates=200)`` + ``fit(train_queries, labels=..., query_labels=...)``.
Prints the fit's wall time, its split (``history.time_split``), CPU seconds, and mAP@100 / mAP@R
of the evaluation queries (held apart from training) for the fitted model and raw HNSW.
``--reference`` also fits with ``fresh_rows=None`` (every pool row encoded each step: the exact
gradient, the pre-budget behaviour) in the same run and prints the time ratio.

Usage: ``python benchmarks/bench_fit.py [--seeds 0] [--fresh-rows 2048,1024] [--epochs E] [--reference]
[--threads -1] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _data import shared_dataset

from ruvector_hnsw import HNSWIndex
from ruvector_hnsw.datasets import load
from ruvector_hnsw.eval import parse_method_spec
from ruvector_hnsw.ranking import map_at_r
from ruvector_hnsw.search import AttentionSearch


def _maps(ids: np.ndarray, base_labels: np.ndarray, query_labels: np.ndarray) -> dict[str, float]:
    rel = (ids >= 0) & (base_labels[np.maximum(ids, 0)] == query_labels[:, None])
    n_rel = np.array([(base_labels == c).sum() for c in query_labels])
    return {"map_at_100": float(map_at_r(rel[:, :100], n_rel, cap=100)), "map_at_r": float(map_at_r(rel, n_rel))}


def _one(index: HNSWIndex, ds: Any, seed: int, threads: int, fresh_rows: int | None, k: int,
         fit_kw: dict[str, Any]) -> dict[str, Any]:
    s = AttentionSearch(index, candidates=200, seed=seed, num_threads=threads)
    t0, c0 = time.perf_counter(), time.process_time()
    h = s.fit(ds.train_queries, labels=ds.base_labels, query_labels=ds.train_query_labels, fresh_rows=fresh_rows,
              **fit_kw)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    ids, _ = s.search(ds.queries, k)
    return {"seed": seed, "fresh_rows": fresh_rows, "fit_s": round(wall, 2), "fit_cpu_s": round(cpu, 2),
            "epochs_run": len(h.epoch), "time_split": h.time_split, "alpha": s.model.alpha, "lam": s.model.lam,
            "rho": s.model.rho,
            "label_hidden": None if s.model.label_head is None else s.model.label_head.hidden,
            "val_map_at_r": h.val_metric, "initial_val": h.initial_metric,
            "best_epoch": h.best_epoch, "fit_options": fit_kw, **_maps(ids, ds.base_labels, ds.query_labels)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--threads", type=int, default=-1)
    ap.add_argument("--reference", action="store_true", help="also fit with fresh_rows=None (slow)")
    ap.add_argument("--fresh-rows", default="1024", dest="fresh_rows",
                    help="comma-separated fresh_rows values to fit with (default 1024)")
    ap.add_argument("--epochs", type=int, default=None, help="fit epochs (default: fit's default)")
    ap.add_argument("--option", action="append", default=[], help="another fit option KEY=VALUE (repeatable)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    fit_kw: dict[str, Any] = {} if args.epochs is None else {"epochs": args.epochs}
    for item in args.option:
        key, _, value = item.partition("=")
        fit_kw[key.strip()] = parse_method_spec(f"x:{key.strip()}={value.strip()}")[1][key.strip()]
    path = shared_dataset()
    if path is None:
        print("apt_minilm.npz not found (expected ../shared/datasets/ beside the checkout)", file=sys.stderr)
        return 2
    ds = load(str(path))
    index = HNSWIndex(ds.base.shape[1], space="cosine", M=16, ef_construction=200, seed=100, num_threads=args.threads)
    t0 = time.perf_counter()
    index.add(ds.base)
    print(f"index: {ds.base.shape[0]} x {ds.base.shape[1]} built in {time.perf_counter() - t0:.1f} s", flush=True)
    k = int(max((ds.base_labels == c).sum() for c in np.unique(ds.query_labels)))
    hnsw_ids, _ = index.search(ds.queries, k, ef=k)
    out: dict[str, Any] = {"hnsw": _maps(hnsw_ids, ds.base_labels, ds.query_labels), "runs": []}
    print(f"hnsw: mAP@100 {out['hnsw']['map_at_100']:.4f}  mAP@R {out['hnsw']['map_at_r']:.4f}", flush=True)
    variants: list[int | None] = [int(v) for v in args.fresh_rows.split(",")] + ([None] if args.reference else [])
    for seed in [int(x) for x in args.seeds.split(",")]:
        for fresh in variants:
            r = _one(index, ds, seed, args.threads, fresh, k, fit_kw)
            out["runs"].append(r)
            split = ", ".join(f"{key} {val:.1f}" for key, val in r["time_split"].items())
            print(f"seed {seed} fresh_rows={fresh}: fit {r['fit_s']:.1f} s wall ({r['fit_cpu_s']:.1f} s CPU, "
                  f"{r['epochs_run']} epochs)  mAP@100 {r['map_at_100']:.4f}  mAP@R {r['map_at_r']:.4f}  "
                  f"alpha={r['alpha']} lam={r['lam']} rho={r['rho']} label head width {r['label_hidden']}\n"
                  f"  split: {split}\n  val mAP@R "
                  f"{r['initial_val']} -> {r['val_map_at_r']} (best epoch {r['best_epoch']})", flush=True)
    if args.reference:
        by = {(r["seed"], r["fresh_rows"]): r for r in out["runs"]}
        for seed in sorted({r["seed"] for r in out["runs"]}):
            first = variants[0]
            ratio = by[(seed, None)]["fit_s"] / by[(seed, first)]["fit_s"]
            print(f"seed {seed}: fresh_rows=None / fresh_rows={first} fit time = {ratio:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
