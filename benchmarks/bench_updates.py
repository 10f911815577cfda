"""Live updates of a fitted AttentionSearch: the cost of the first search after ``index.add``.

Fits ``local_global`` on the clusters scenario (20k x 64 by default), then measures, in one run:

- a warm search of 10 queries (the reference);
- the first search of the same 10 queries after adding 1 item (incremental sync + search), as a
  ratio to the warm search (target <= 3x);
- the first search after adding 1,000 items, as a ratio to computing the codes of those 1,000 rows
  from scratch (target <= 3x);
- that the incrementally updated searcher returns what a searcher synced from scratch returns.

Usage: ``python benchmarks/bench_updates.py [--quick] [--repeats R]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from ruvector_hnsw import HNSWIndex
from ruvector_hnsw.datasets import load
from ruvector_hnsw.search import AttentionSearch


def _fitted(ds, n_base: int, n_train: int, latent: str) -> tuple[HNSWIndex, AttentionSearch]:
    idx = HNSWIndex(ds.base.shape[1], space=ds.metric, M=16, ef_construction=200, seed=100)
    idx.add(ds.base[:n_base], ids=np.arange(n_base))
    s = AttentionSearch(idx, "local_global", candidates=100, expand=1, seed=0, latent=latent)
    s.fit(ds.train_queries[:n_train], labels=ds.base_labels, query_labels=ds.train_query_labels[:n_train],
          epochs=2)
    return idx, s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="5k base vectors instead of 20k")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    ds = load("clusters", size="small" if args.quick else None) if args.quick else load("clusters")
    n = ds.base.shape[0]
    n_base = n - 1000 - args.repeats
    idx, s = _fitted(ds, n_base, 1000 if args.quick else 2000, "auto")
    tmp = tempfile.TemporaryDirectory()
    saved = Path(tmp.name) / "model"
    s.save(saved)  # re-synced from scratch at the end: loaded onto the grown index
    q = ds.queries[:10]
    for _ in range(20):
        s.search(q, k=10)  # warm: JIT, caches
    warm = []
    for _ in range(20):
        t0 = time.perf_counter()
        s.search(q, k=10)
        warm.append(time.perf_counter() - t0)
    warm_s = statistics.median(warm)
    one = []
    for r in range(args.repeats):
        lab = n_base + r
        idx.add(ds.base[lab : lab + 1], ids=[lab])
        t0 = time.perf_counter()
        s.search(q, k=10)
        one.append(time.perf_counter() - t0)
    one_s = statistics.median(one)
    lo = n_base + args.repeats
    rows = np.arange(lo, lo + 1000)
    idx.add(ds.base[rows], ids=rows)
    t0 = time.perf_counter()
    s.search(q, k=10)
    thousand_s = time.perf_counter() - t0
    db = s.database_state()
    pos = db.graph.positions(rows)
    t0 = time.perf_counter()
    db.encode_rows(s.model.encoder, pos)
    encode_s = time.perf_counter() - t0
    print(f"index {n} x {ds.base.shape[1]} ({ds.metric}), local_global fitted, candidates=100, expand=1")
    print(f"warm search of 10 queries:               {warm_s * 1e3:8.2f} ms")
    print(f"first search after adding 1 item:        {one_s * 1e3:8.2f} ms  ratio {one_s / warm_s:5.2f} (target <= 3)")
    print(f"first search after adding 1,000 items:   {thousand_s * 1e3:8.2f} ms")
    print(f"codes of those 1,000 rows from scratch:  {encode_s * 1e3:8.2f} ms  ratio {thousand_s / encode_s:5.2f} "
          "(target <= 3)")
    fresh = AttentionSearch.load(saved, idx)
    fresh_db = fresh.database_state()
    same_codes = bool(np.array_equal(fresh_db.codes.codes, db.codes.codes))
    a, b = s.search(ds.queries, k=10), fresh.search(ds.queries, k=10)
    same_ids = float(np.mean(np.all(a[0] == b[0], axis=1)))
    print(f"codes equal a from-scratch sync: {same_codes}; queries with identical results: {same_ids:.3f} "
          f"(latent index: {db.codes.resolved_kind})")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
