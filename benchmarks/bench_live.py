"""Live-index benchmark: the graph snapshot and the changed neighbourhoods after small adds.

Every figure is a ratio against a reference measured in the same run:

* ``derive_vs_full``   ``graph()`` after adding 1 item (derived from the previous snapshot; includes
                       hnswlib's ``__getstate__``) / a from-scratch ``graph_from_state`` of the same
                       state (also including ``__getstate__``), interleaved, medians.
* ``derive_vs_eager``  the same / a from-scratch export that also builds every layer's CSR and the
                       contiguous vectors (what ``graph()`` built eagerly before snapshots were derived;
                       best of several).
* ``changes_vs_brute`` ``neighborhood_changes`` after 1 add / neighbourhoods of every row on both
                       snapshots (the brute-force answer).

Also printed: candidate vs actually changed rows, and the same figures after 1,000 adds.
Run ``python benchmarks/bench_live.py`` (20k x 64 clustered, M=16, ef_construction=200) or ``--quick``.
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


def _timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def run(n: int, dim: int, M: int, efc: int, repeats: int, big: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((64, dim)).astype(np.float32) * 3
    total = n + repeats + big

    def points(count: int) -> np.ndarray:
        return centers[rng.integers(0, 64, count)] + rng.standard_normal((count, dim)).astype(np.float32)

    x = points(total)
    idx = HNSWIndex(dim, M=M, ef_construction=efc, seed=1, num_threads=-1, max_elements=total)
    idx.add(x[:n])
    k_local, k_global = 2 * M, M
    raw = idx._index  # the very same hnswlib object

    def full() -> object:
        return graph_from_state(raw.__getstate__()[0], idx.space)

    def eager() -> object:
        g = graph_from_state(raw.__getstate__()[0], idx.space)
        for layer in range(g.num_layers):
            g.layer(layer)
        return g.vectors

    # JIT warm-up (and a first snapshot whose vectors later snapshots share)
    g = idx.graph()
    g.vectors  # noqa: B018
    idx.add(x[n : n + 1])
    g2 = idx.graph()
    g2.neighborhood_changes(g, k_local, k_global)
    g2.neighborhoods(g2.labels[:10])
    eager()

    derive_t: list[float] = []
    full_t: list[float] = []
    changes_t: list[float] = []
    cand_n: list[int] = []
    changed_n: list[int] = []
    rows_n: list[int] = []
    prev = idx.graph()
    for i in range(repeats):  # 1 add, then graph() and neighborhood_changes
        idx.add(x[n + 1 + i : n + 2 + i])
        t, g = _timed(idx.graph)
        derive_t.append(t)
        full_t.append(_timed(full)[0])  # the same state from scratch, interleaved (same machine noise)
        t, changed = _timed(lambda g=g, prev=prev: g.neighborhood_changes(prev, k_local, k_global))
        changes_t.append(t)
        cand_n.append(len(g._neighborhood_candidates(prev, k_global)))
        changed_n.append(len(changed))  # type: ignore[arg-type]
        rows_n.append(len(g.changed_rows(prev)))
        last_pair = (g, prev)
        prev = g
    eager_t = _best_of(eager, max(3, repeats // 4))

    def brute() -> None:  # neighbourhoods of every row on both snapshots of the last add
        after, before = last_pair
        after.neighborhoods(after.labels, k_local, k_global)
        before.neighborhoods(before.labels, k_local, k_global)

    brute_t = _best_of(brute, 2)

    # 1,000 adds (or --big) at once
    base = idx.graph()
    idx.add(x[n + 1 + repeats : n + 1 + repeats + big])
    big_derive, g = _timed(idx.graph)
    big_changes, changed = _timed(lambda: g.neighborhood_changes(base, k_local, k_global))
    big_cand = len(g._neighborhood_candidates(base, k_global))
    big_rows = len(g.changed_rows(base))
    med, med_full = float(np.median(derive_t)), float(np.median(full_t))
    med_changes = float(np.median(changes_t))
    return {
        "n": n, "dim": dim, "M": M, "ef_construction": efc, "adds_timed": repeats,
        "full_export_median_s": med_full, "eager_export_s": eager_t,
        "graph_after_1_add_median_s": med, "graph_after_1_add_p90_s": float(np.quantile(derive_t, 0.9)),
        "graph_after_1_add_min_s": min(derive_t), "full_export_min_s": min(full_t),
        "derive_vs_full": med / med_full, "derive_vs_eager": med / eager_t,
        "changes_after_1_add_median_s": med_changes,
        "changes_after_1_add_p90_s": float(np.quantile(changes_t, 0.9)),
        "changes_after_1_add_min_s": min(changes_t),
        "brute_neighborhoods_both_s": brute_t, "changes_vs_brute": med_changes / brute_t,
        "changed_rows_mean": float(np.mean(rows_n)), "candidates_mean": float(np.mean(cand_n)),
        "neighborhood_changes_mean": float(np.mean(changed_n)),
        "big_adds": big, "graph_after_big_s": big_derive, "changes_after_big_s": big_changes,
        "big_changed_rows": big_rows, "big_candidates": big_cand, "big_neighborhood_changes": len(changed),  # type: ignore[arg-type]
        "big_vs_brute": big_changes / brute_t,
    }


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (seconds), for smoke tests")
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=50, help="single adds timed")
    ap.add_argument("--big", type=int, default=1000, help="size of the large batch of adds")
    ap.add_argument("--json", type=str, default=None, help="also write the figures to this file")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.dim, args.repeats, args.big = 3000, 32, 10, 200
    r = run(args.n, args.dim, 16, 200, args.repeats, args.big)
    ms = 1e3
    print(f"live-index benchmark: n={r['n']} dim={r['dim']} M=16 ef_construction=200 (64 clusters), "
          f"k_local={2 * 16} k_global=16")
    print(f"  graph() after 1 add  {r['graph_after_1_add_median_s'] * ms:7.2f} ms median "
          f"(min {r['graph_after_1_add_min_s'] * ms:.2f}, p90 {r['graph_after_1_add_p90_s'] * ms:.2f})  "
          f"vs from-scratch {r['full_export_median_s'] * ms:.2f} ms ratio {r['derive_vs_full']:.2f}; "
          f"vs eager export {r['eager_export_s'] * ms:.2f} ms ratio {r['derive_vs_eager']:.3f}  (target <= 3 ms)")
    print(f"  neighborhood_changes {r['changes_after_1_add_median_s'] * ms:7.2f} ms median "
          f"(min {r['changes_after_1_add_min_s'] * ms:.2f}, p90 {r['changes_after_1_add_p90_s'] * ms:.2f})  "
          f"vs brute force {r['brute_neighborhoods_both_s'] * ms:.1f} ms ratio {r['changes_vs_brute']:.4f}  "
          f"(target <= 3 ms)")
    print(f"    per add: changed rows {r['changed_rows_mean']:.1f}, candidates {r['candidates_mean']:.1f}, "
          f"changed neighbourhoods {r['neighborhood_changes_mean']:.1f}")
    print(f"  {r['big_adds']} adds: graph() {r['graph_after_big_s'] * ms:.2f} ms, neighborhood_changes "
          f"{r['changes_after_big_s'] * ms:.1f} ms (ratio to brute {r['big_vs_brute']:.2f}); changed rows "
          f"{r['big_changed_rows']}, candidates {r['big_candidates']}, changed neighbourhoods "
          f"{r['big_neighborhood_changes']}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(r, fh, indent=2)
    return r


if __name__ == "__main__":
    main()
