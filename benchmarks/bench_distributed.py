"""Single process vs a local Ray cluster: wall time of evaluation and database encoding, as ratios.

On one machine Ray can only lose or tie: the workers share its cores with nothing else gained, and every
run pays actor start-up, shipping the index/model through the object store and unpickling them. The
ratios below measure that overhead; equality of the results is checked in the same run.

    PYTHONPATH=. python benchmarks/bench_distributed.py [--n-base 12000] [--workers 2] [--threads 2]

Prints a table (and writes it to ``docs/results/bench_distributed.txt`` with ``--out``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from _data import shared_dataset


def _dataset(n_base: int, n_queries: int, n_train: int):
    from ruvector_hnsw.datasets import load

    env = os.environ.get("RUVECTOR_APT")
    path = Path(env) if env else shared_dataset()
    if path is None or not path.exists():
        raise SystemExit("apt_minilm.npz not found: set RUVECTOR_APT or put shared/datasets/ beside the checkout")
    ds = load(str(path))
    rng = np.random.default_rng(0)
    keep = np.sort(rng.choice(ds.n_base, size=min(n_base, ds.n_base), replace=False))
    from dataclasses import dataclass

    @dataclass
    class Sub:
        base: np.ndarray
        queries: np.ndarray
        base_labels: np.ndarray
        query_labels: np.ndarray
        train: np.ndarray
        train_labels: np.ndarray
        metric: str = "cosine"
        name: str = "apt_minilm-subset"
        neighbors: None = None

    return Sub(np.ascontiguousarray(ds.base[keep], dtype=np.float32),
               np.ascontiguousarray(ds.queries[:n_queries], dtype=np.float32),
               np.asarray(ds.base_labels)[keep], np.asarray(ds.query_labels)[:n_queries],
               np.ascontiguousarray(ds.train_queries[:n_train], dtype=np.float32),
               np.asarray(ds.train_query_labels)[:n_train])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-base", type=int, default=12000)
    p.add_argument("--n-queries", type=int, default=1000)
    p.add_argument("--n-train", type=int, default=1000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="threads of the single-process reference")
    p.add_argument("--out", help="also write the report here")
    args = p.parse_args(argv)

    from ruvector_hnsw import AttentionSearch, HNSWIndex, distributed
    from ruvector_hnsw import eval as ev
    from ruvector_hnsw.eval.methods import SearchMethod

    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    ds = _dataset(args.n_base, args.n_queries, args.n_train)
    say(f"# bench_distributed: {ds.name}, {ds.base.shape[0]} base x {ds.base.shape[1]} dims, "
        f"{ds.queries.shape[0]} queries; {os.cpu_count()} CPUs; single process at {args.threads} threads vs "
        f"a local Ray cluster of {args.workers} workers (1 thread each)")
    t0 = time.perf_counter()
    index = HNSWIndex(ds.base.shape[1], space="cosine", M=16, ef_construction=100, seed=0, num_threads=args.threads)
    index.add(ds.base)
    s = AttentionSearch(index, "local_global", candidates=100, num_threads=args.threads)
    s.fit(ds.train, labels=ds.base_labels, query_labels=ds.train_labels, epochs=2)
    say(f"index + fit: {time.perf_counter() - t0:.1f} s (not part of the comparison)")

    t0 = time.perf_counter()
    resources = distributed.connect("local", num_cpus=args.workers)
    say(f"ray.init: {time.perf_counter() - t0:.1f} s (once per session; {resources.get('CPU', 0):g} CPUs)")
    say()
    say(f"{'job':<34} {'single s':>9} {'ray s':>9} {'ray/single':>10}  equal")

    # ---- evaluation: HNSW and the attention re-ranker
    methods = {"hnsw:ef=100": ev.make_hnsw(index, ef=100),
               "local_global": SearchMethod("local_global", lambda q, k: s.search(q, k), threads=args.threads)}
    for name, fn in methods.items():
        one = {name: fn}
        t0 = time.perf_counter()
        ref = ev.evaluate(ds, one, k=10, latency_queries=0, qps_repeats=1, max_results=1000)
        t_single = time.perf_counter() - t0
        t0 = time.perf_counter()
        got = distributed.evaluate(ds, one, k=10, latency_queries=0, qps_repeats=1, max_results=1000,
                                   workers=args.workers)
        t_ray = time.perf_counter() - t0
        same = all(ref[0][k] == got[0][k] for k in ("map_at_r", "p_at_1", "ndcg_at_10"))
        say(f"{'eval ' + name:<34} {t_single:>9.2f} {t_ray:>9.2f} {t_ray / t_single:>10.2f}  {same}")
        say(f"{'  search throughput (QPS)':<34} {ref[0]['qps']:>9.0f} {got[0]['qps']:>9.0f} "
            f"{ref[0]['qps'] / got[0]['qps']:>10.2f}  (cluster QPS: queries / slowest shard)")

    # ---- encoding every database row
    db = s.database_state()
    rows = np.arange(db.n)
    t0 = time.perf_counter()
    from ruvector_hnsw.threads import thread_limits

    with thread_limits(args.threads):
        local = db.encode_rows(s.model.encoder, rows)
    t_single = time.perf_counter() - t0
    t0 = time.perf_counter()
    got_codes = distributed.encode_rows(s, workers=args.workers)
    t_ray = time.perf_counter() - t0
    say(f"{'encode ' + str(db.n) + ' rows':<34} {t_single:>9.2f} {t_ray:>9.2f} {t_ray / t_single:>10.2f}  "
        f"{bool(np.array_equal(local, got_codes))}")
    say()
    say("ray s includes actor start-up, shipping the index and model (object store) and unpickling them on "
        "every worker; on one machine that is pure overhead.")
    distributed.shutdown()
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
