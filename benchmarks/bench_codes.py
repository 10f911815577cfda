"""Compact codes: memory of the code cache + latent index and mAP@R per ``code_dtype``, one fit per dataset.

For each dataset (the four built-in scenarios and apt_minilm, found at
``../shared/datasets/apt_minilm.npz`` beside the checkout) one ``local_global`` model is fitted
with float32 codes (reduced epochs); the *same* fitted model is then copied (pickle) and its cache
converted with :meth:`AttentionSearch.set_code_dtype` to ``float16`` and ``int8`` - no refit, the
calibrated weights are kept - and every copy searches the evaluation queries. Each dataset is
fitted twice by default: with the label head (the default model; when its calibration sets the
code weight ``alpha`` to 0 the codes do not enter the score) and without it (the codes carry the
whole learned signal, the case compact codes can hurt). Printed per dtype:
the bytes of the code cache (codes + diffusion coordinates + the float32 encoder codes kept apart
by ``float32``) and of the latent index (hnswlib's element storage for float32, the link arrays for
the compact dtypes; 0 for an exact ``flat`` latent search), their sum and its ratio to float32,
mAP@R and its difference to float32, the top-10 overlap with float32 and the search wall time.

Usage: ``python benchmarks/bench_codes.py [--size default] [--epochs 4] [--n-train 2000]
[--datasets clusters,hierarchical,manifolds,digits,apt_minilm] [--threads 1] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _data import shared_dataset

from ruvector_hnsw import HNSWIndex
from ruvector_hnsw.datasets import load
from ruvector_hnsw.ranking import map_at_r
from ruvector_hnsw.search import AttentionSearch

DTYPES = ("float32", "float16", "int8")
DATASETS = ("clusters", "hierarchical", "manifolds", "digits", "apt_minilm")



def _map_at_r(ids: np.ndarray, base_labels: np.ndarray, query_labels: np.ndarray) -> float:
    rel = (ids >= 0) & (base_labels[np.maximum(ids, 0)] == query_labels[:, None])
    counts = {c: int((base_labels == c).sum()) for c in np.unique(query_labels).tolist()}
    n_rel = np.array([counts[c] for c in query_labels.tolist()])
    return float(map_at_r(rel, n_rel))


def _dataset(name: str, size: str) -> Any:
    if name == "apt_minilm":
        path = shared_dataset()
        if path is None:
            raise FileNotFoundError("apt_minilm.npz not found (expected ../shared/datasets/ beside the checkout)")
        return load(str(path))
    if name == "digits":
        return load("digits")
    return load(name, size=size)


def run_dataset(name: str, args: argparse.Namespace, label_head: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    ds = _dataset(name, args.size)
    metric = getattr(ds, "metric", "l2")
    index = HNSWIndex(ds.base.shape[1], space=metric, M=16, ef_construction=200, seed=0, num_threads=args.threads)
    index.add(ds.base)
    tq, tl = ds.train_queries, ds.train_query_labels
    if args.n_train and tq.shape[0] > args.n_train:
        keep = np.sort(np.random.default_rng(0).choice(tq.shape[0], args.n_train, replace=False))
        tq, tl = tq[keep], tl[keep]
    s = AttentionSearch(index, "local_global", candidates=args.candidates, seed=0, num_threads=args.threads,
                        label_head=label_head, latent=args.latent)
    t_fit = time.perf_counter()
    s.fit(tq, labels=ds.base_labels, query_labels=tl, epochs=args.epochs)
    fit_s = time.perf_counter() - t_fit
    labels = np.asarray(ds.base_labels)
    qlab = np.asarray(ds.query_labels)
    k = int(max((labels == c).sum() for c in np.unique(qlab).tolist()))
    k = min(k, args.max_k)
    out: dict[str, Any] = {"dataset": name, "label_head": label_head, "n_base": int(ds.base.shape[0]),
                           "dim": int(ds.base.shape[1]),
                           "metric": metric, "n_train": int(tq.shape[0]), "n_queries": int(ds.queries.shape[0]),
                           "k": k, "fit_s": round(fit_s, 1), "alpha": s.model.alpha, "rho": s.model.rho,
                           "lam": s.model.lam, "latent": s.database_state().codes.resolved_kind, "dtypes": {}}
    blob = pickle.dumps(s)
    ref_ids: np.ndarray | None = None
    for dt in DTYPES:
        copy: AttentionSearch = pickle.loads(blob)
        copy.set_code_dtype(dt)
        copy.search(ds.queries[:8], k)  # JIT warm-up
        t1 = time.perf_counter()
        ids, _ = copy.search(ds.queries, k)
        search_s = time.perf_counter() - t1
        mem = copy.memory_bytes()
        if ref_ids is None:
            ref_ids = ids
        overlap = float(np.mean([np.intersect1d(a[:10], b[:10]).size / 10 for a, b in zip(ref_ids, ids, strict=True)]))
        out["dtypes"][dt] = {"memory": mem, "map_at_r": _map_at_r(ids, labels, qlab), "top10_overlap": overlap,
                             "search_s": round(search_s, 2)}
    base = out["dtypes"]["float32"]
    for rec in out["dtypes"].values():
        rec["memory_ratio"] = base["memory"]["total"] / rec["memory"]["total"]
        rec["map_diff"] = rec["map_at_r"] - base["map_at_r"]
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    return out


def _print(r: dict[str, Any]) -> None:
    print(f"\n{r['dataset']} (label_head={r['label_head']}): {r['n_base']} x {r['dim']} {r['metric']}, "
          f"{r['n_train']} training queries, "
          f"{r['n_queries']} eval queries, k={r['k']}; latent={r['latent']}; fit {r['fit_s']} s "
          f"(alpha={r['alpha']:.4g} rho={r['rho']:.4g} lam={r['lam']:.4g}); {r['wall_s']} s in all")
    print(f"  {'dtype':8} {'codes':>10} {'phi':>10} {'z':>10} {'latent':>10} {'total':>11} {'ratio':>6} "
          f"{'mAP@R':>7} {'diff':>8} {'top10':>6} {'search s':>8}")
    for dt, rec in r["dtypes"].items():
        m = rec["memory"]
        print(f"  {dt:8} {m['codes']:>10,} {m['phi']:>10,} {m['z']:>10,} {m['latent_index']:>10,} {m['total']:>11,} "
              f"{rec['memory_ratio']:>6.2f} {rec['map_at_r']:>7.4f} {rec['map_diff']:>+8.4f} "
              f"{rec['top10_overlap']:>6.3f} {rec['search_s']:>8.2f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="default", help="size of the synthetic scenarios")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--n-train", type=int, default=2000, help="cap on training queries (seeded subset)")
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--max-k", type=int, default=1200, help="cap on the result list (k = max R otherwise)")
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--label-head", default="both", choices=("both", "on", "off"),
                    help="fit with the label head (the default model), without it (the codes carry the whole "
                         "learned signal), or both")
    ap.add_argument("--latent", default="auto", choices=("auto", "flat", "hnsw"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    print(f"bench_codes: size={args.size} epochs={args.epochs} n_train<={args.n_train} candidates={args.candidates} "
          f"threads={args.threads}", flush=True)
    results = []
    heads = {"both": (True, False), "on": (True,), "off": (False,)}[args.label_head]
    for name in args.datasets.split(","):
        for head in heads:
            try:
                r = run_dataset(name, args, head)
            except FileNotFoundError as exc:
                print(f"\n{name}: skipped ({exc})", file=sys.stderr)
                break
            results.append(r)
            _print(r)
            sys.stdout.flush()
    print("\nsummary: int8 vs float32 (memory ratio of code cache + latent index, mAP@R difference)")
    for r in results:
        i8, f16 = r["dtypes"]["int8"], r["dtypes"]["float16"]
        head = "on " if r["label_head"] else "off"
        print(f"  {r['dataset']:13} label_head={head}  int8 {i8['memory_ratio']:.2f}x  dmAP@R {i8['map_diff']:+.4f}   "
              f"float16 {f16['memory_ratio']:.2f}x  dmAP@R {f16['map_diff']:+.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
