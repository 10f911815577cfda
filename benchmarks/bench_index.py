"""Index benchmarks: wrapper overhead, graph export cost, neighbourhood batches.

Every figure is a ratio against a reference measured in the same run:

* ``search_qps_ratio``   HNSWIndex.search QPS / raw ``hnswlib.Index.knn_query`` QPS on the very same
                         hnswlib object, same ef, same threads, batch of queries (target >= 0.95).
* ``export_vs_build``    a from-scratch export (``graph_from_state`` + CSR of every layer + edge distances)
                         / build time (<= 5 %). ``benchmarks/bench_live.py`` times ``graph()`` after adds.
* ``neigh_vs_search``    ``neighborhoods`` for 10k labels / searching 10k queries (well under 1).

Run ``python benchmarks/bench_index.py`` (100k x 128, M=16, ef_construction=200) or ``--quick``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import numpy as np

from ruvector_hnsw import HNSWIndex
from ruvector_hnsw.index.graph import graph_from_state


def _best_of(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def run(n: int, dim: int, nq: int, M: int, efc: int, ef: int, threads: int, repeats: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((64, dim)).astype(np.float32) * 3
    x = (centers[rng.integers(0, 64, n)] + rng.standard_normal((n, dim)).astype(np.float32))
    q = (centers[rng.integers(0, 64, nq)] + rng.standard_normal((nq, dim)).astype(np.float32))

    idx = HNSWIndex(dim, M=M, ef_construction=efc, seed=1, num_threads=threads, max_elements=n)
    t0 = time.perf_counter()
    idx.add(x)
    build = time.perf_counter() - t0

    raw = idx._index  # the very same hnswlib object: the ratio isolates the wrapper's overhead
    idx.search(q[:10], k=10, ef=ef)  # sets ef on the shared object
    raw.set_ef(ef)

    def ours() -> None:
        idx.search(q, k=10, ef=ef)

    def theirs() -> None:
        raw.knn_query(q, k=10, num_threads=threads)

    ours_t, theirs_t = [], []
    for _ in range(repeats):  # interleave so both see the same machine noise; keep the best of each
        ours_t.append(_best_of(ours, 1))
        theirs_t.append(_best_of(theirs, 1))
    qps_ours = nq / min(ours_t)
    qps_raw = nq / min(theirs_t)

    def export() -> None:  # from scratch (graph() would derive from the last snapshot)
        g = graph_from_state(raw.__getstate__()[0], idx.space)
        for layer in range(g.num_layers):
            g.edge_distances(layer)

    export()  # JIT warm-up
    export_t = _best_of(export, 3)

    g = idx.graph()
    n_neigh = min(10_000, len(g))
    labels = g.labels[rng.permutation(len(g))[:n_neigh]]
    g.neighborhoods(labels[:10])  # JIT warm-up
    neigh_t = _best_of(lambda: g.neighborhoods(labels), 3)
    q_many = np.resize(q, (n_neigh, dim))
    search_t = _best_of(lambda: idx.search(q_many, k=10, ef=ef), 2)
    return {
        "n": n, "dim": dim, "queries": nq, "M": M, "ef_construction": efc, "ef": ef, "threads": threads,
        "build_s": build,
        "search_qps": qps_ours, "raw_knn_query_qps": qps_raw, "search_qps_ratio": qps_ours / qps_raw,
        "export_s": export_t, "export_vs_build": export_t / build,
        "neighborhood_labels": n_neigh, "neighborhoods_s": neigh_t, "search_same_count_s": search_t,
        "neigh_vs_search": neigh_t / search_t,
    }


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (seconds), for smoke tests")
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--ef", type=int, default=100)
    ap.add_argument("--threads", type=int, default=-1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", type=str, default=None, help="also write the figures to this file")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.dim, args.queries, args.repeats = 5000, 32, 500, 5
    threads = args.threads if args.threads > 0 else HNSWIndex(2).num_threads
    res = run(args.n, args.dim, args.queries, 16, 200, args.ef, threads, args.repeats)
    print(f"index benchmark: n={res['n']} dim={res['dim']} M=16 ef_construction=200 ef={res['ef']} "
          f"threads={res['threads']} batch={res['queries']}")
    print(f"  build                {res['build_s']:9.2f} s")
    print(f"  search QPS           {res['search_qps']:9.0f}   raw knn_query {res['raw_knn_query_qps']:9.0f}"
          f"   ratio {res['search_qps_ratio']:.3f}  (target >= 0.95)")
    print(f"  graph export         {res['export_s'] * 1e3:9.1f} ms  = {100 * res['export_vs_build']:.2f} % of build"
          f"  (target <= 5 %)")
    print(f"  neighbourhoods x{res['neighborhood_labels']:<6} {res['neighborhoods_s'] * 1e3:7.1f} ms  vs search "
          f"of as many queries {res['search_same_count_s'] * 1e3:.1f} ms  ratio {res['neigh_vs_search']:.3f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)
    return res


if __name__ == "__main__":
    main()
