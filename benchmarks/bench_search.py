"""Cost of attention-aware search per query, as a ratio to plain HNSW in the same run.

For each dimensionality and candidate count C: a fitted ``AttentionSearch`` (``local_global``,
``expand=1`` and ``expand=0``) answers a batch of queries (k = 10); plain ``HNSWIndex.search``
answers the same batch at ``ef = C`` with the same threads. The target (issue 5) is
``reranked QPS >= 0.5 x HNSW QPS`` for C = 100 and 200 on 100k x 128 and 100k x 384.

Run ``python benchmarks/bench_search.py`` (full: builds two 100k indexes, several minutes) or
``--quick`` (seconds).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import numpy as np

from ruvector_hnsw import HNSWIndex
from ruvector_hnsw.search import AttentionSearch


def _labelled(n: int, nq: int, dim: int, classes: int, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((classes, dim)).astype(np.float32) * 0.6
    lab = rng.integers(0, classes, n + 2 * nq)
    x = centers[lab] + rng.standard_normal((lab.size, dim)).astype(np.float32) / np.sqrt(dim) * 4
    x = x.astype(np.float32)
    return x[:n], lab[:n], x[n : n + nq], lab[n : n + nq], x[n + nq :]


def _best_qps(fn: Callable[[], object], nq: int, repeats: int) -> float:
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return nq / best


def run(n: int, dim: int, nq: int, cands: list[int], repeats: int, epochs: int) -> list[dict[str, float]]:
    base, lab, train_q, train_lab, q = _labelled(n, nq, dim, classes=max(10, n // 500), seed=dim)
    idx = HNSWIndex(dim, space="cosine", M=16, ef_construction=200, seed=0, max_elements=n)
    t0 = time.perf_counter()
    idx.add(base)
    build = time.perf_counter() - t0
    rows = []
    s = AttentionSearch(idx, "local_global", candidates=max(cands), expand=1, seed=0)
    t0 = time.perf_counter()
    s.fit(train_q, labels=lab, query_labels=train_lab, epochs=epochs, val_fraction=0.1)
    fit_s = time.perf_counter() - t0
    if s.model.alpha == 0.0:
        # calibration may switch the learned term off on easy data; time the full path regardless
        s.model.alpha = 1.0
    for C in cands:
        s.search(q[:50], 10, candidates=C)  # JIT and cache warm-up, excluded from timing
        idx.search(q[:50], 10, ef=C)
        row: dict[str, float] = {"n": n, "dim": dim, "C": C, "threads": idx.num_threads, "build_s": build,
                                 "fit_s": fit_s, "alpha": s.alpha}
        hnsw_qps, rer_qps, rer0_qps = [], [], []
        for _ in range(repeats):  # interleave: all three see the same machine noise
            hnsw_qps.append(_best_qps(lambda C=C: idx.search(q, 10, ef=C), nq, 1))
            rer_qps.append(_best_qps(lambda s=s, C=C: s.search(q, 10, candidates=C, expand=1), nq, 1))
            rer0_qps.append(_best_qps(lambda s=s, C=C: s.search(q, 10, candidates=C, expand=0), nq, 1))
        row.update({"hnsw_qps": max(hnsw_qps), "rerank_expand1_qps": max(rer_qps),
                    "rerank_expand0_qps": max(rer0_qps)})
        row["ratio_expand1"] = row["rerank_expand1_qps"] / row["hnsw_qps"]
        row["ratio_expand0"] = row["rerank_expand0_qps"] / row["hnsw_qps"]
        rows.append(row)
        print(f"  n={n} d={dim} C={C}: HNSW(ef=C) {row['hnsw_qps']:8.0f} QPS | reranked expand=1 "
              f"{row['rerank_expand1_qps']:8.0f} QPS ratio {row['ratio_expand1']:.2f} | expand=0 "
              f"{row['rerank_expand0_qps']:8.0f} QPS ratio {row['ratio_expand0']:.2f}  (target >= 0.5)",
              flush=True)
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (seconds), for smoke tests")
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dims", type=int, nargs="+", default=[128, 384])
    ap.add_argument("--candidates", type=int, nargs="+", default=[100, 200])
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--json", type=str, default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.dims, args.candidates, args.queries, args.repeats = 3000, [32], [50], 200, 2
    print(f"search cost benchmark: local_global, k=10, batch={args.queries}")
    rows = []
    for dim in args.dims:
        rows += run(args.n, dim, args.queries, args.candidates, args.repeats, args.epochs)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return rows


if __name__ == "__main__":
    main()
