"""Attention benchmarks: ratios against plain-numpy references measured in the same run.

Prints
  1. fused gather + scaled_dot vs numpy ``table[ids]`` + einsum softmax (B=256, n=1000, d=128, 100k rows)
  2. flash batched vs the same numpy softmax on dense (B, n, d) arrays
  3. flash ``attend_all`` tracemalloc peak vs a dense ``Q K^T`` reference (Q = N = 8192, d = 64)
  4. forward and params-only backward (``input_grads=False``) throughput (rows/s) of every mechanism
     in MECHANISMS at n = 100 / 1K / 10K, d = 128 (gather form: ids into a shared table), then each
     mechanism's time relative to scaled_dot's at n = 1K: calls of the two alternate, best of 5 each
     (on a shared machine the load drifts between the table's separate measurements)
  5. the targets of issue 10, PASS/FAIL each: forward time ratios to scaled_dot at n = 1K in this
     run (sliced_wasserstein P = 16 <= 3x, diffusion num_steps = 10 <= 10x, mixed_curvature
     <= 1.5x, centroid_ot M = 16 <= 2x) and forward rows/s at n = 1K (local_global >= 8,000,
     hyperbolic >= 3,000; the best forward time of the table's and the ratio's calls). The
     load average (1 min) is printed at the start, before the table and at the end: absolute
     rows/s on a shared machine are only comparable at a similar load; ratios are what count.

JIT compilation is paid in a warm-up call before any timing. ``--quick`` shrinks every size so the
script finishes in seconds (a smoke run; its figures are not the reported ones). A mechanism that
raises fails the run: the table marks it ``FAILED`` and the script exits non-zero naming it.

Usage::

    python benchmarks/bench_attention.py            # full sizes
    python benchmarks/bench_attention.py --quick
    python benchmarks/bench_attention.py --skip-kernels --mechanisms scaled_dot local_global hyperbolic
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from ruvector_hnsw.attention import MECHANISMS, Context
from ruvector_hnsw.attention.flash import FlashAttention
from ruvector_hnsw.attention.scaled_dot import ScaledDotAttention
from ruvector_hnsw.threads import get_num_threads, set_num_threads

#: forward time ratio to scaled_dot at n = 1K, d = 128, gather form, same run (issue 10), with the
#: config value the target is stated for (the mechanisms' defaults)
RATIO_TARGETS: dict[str, tuple[float, str]] = {
    "sliced_wasserstein": (3.0, "num_projections"),
    "diffusion": (10.0, "num_steps"),
    "mixed_curvature": (1.5, ""),
    "centroid_ot": (2.0, "num_centroids"),
}
#: forward rows/s at n = 1K, d = 128, gather form (issue 10: on 2 kernel threads)
RATE_TARGETS: dict[str, float] = {"local_global": 8000.0, "hyperbolic": 3000.0}


def load_average() -> str:
    """The 1/5/15-minute load averages as text (``n/a`` where the OS has none)."""
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover - not Unix
        return "n/a"


def best_time(f: Callable[[], Any], repeats: int, budget: float = 10.0) -> float:
    """Minimum wall time of ``f`` over ``repeats`` runs (stops early once ``budget`` s are spent)."""
    times: list[float] = []
    start = time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget:
            break
    return min(times)


def numpy_softmax_attention(q: np.ndarray, K: np.ndarray, V: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The plain-numpy reference: einsum scores, masked softmax, einsum read-out."""
    s = np.einsum("bd,bnd->bn", q, K) / np.sqrt(q.shape[1])
    s = np.where(mask, s, -np.inf)
    s -= s.max(axis=1, keepdims=True)
    e = np.exp(s)
    e /= e.sum(axis=1, keepdims=True)
    return np.einsum("bn,bnd->bd", e, V)


def bench_gather(B: int, n: int, d: int, rows: int, repeats: int) -> float:
    rng = np.random.default_rng(0)
    table = rng.standard_normal((rows, d), dtype=np.float32)
    q = rng.standard_normal((B, d), dtype=np.float32)
    ids = rng.integers(0, rows, size=(B, n))
    ids[:, -max(1, n // 20) :] = -1  # some padding
    att = ScaledDotAttention(d)
    att.forward(q[:2], table, table, ids=ids[:2])  # JIT warm-up

    def ref() -> np.ndarray:
        K = table[ids]
        return numpy_softmax_attention(q, K, K, ids >= 0)

    err = float(np.abs(ref() - att.forward(q, table, table, ids=ids)[0]).max())
    t_ref = best_time(ref, repeats)
    t_att = best_time(lambda: att.forward(q, table, table, ids=ids), repeats)
    print(f"[gather+scaled_dot] B={B} n={n} d={d} table={rows}: numpy {t_ref * 1e3:.1f} ms, "
          f"fused {t_att * 1e3:.1f} ms, ratio {t_ref / t_att:.2f}x (max abs diff {err:.1e})")
    return t_ref / t_att


def bench_flash_batched(B: int, n: int, d: int, repeats: int) -> float:
    rng = np.random.default_rng(1)
    K = rng.standard_normal((B, n, d), dtype=np.float32)
    q = rng.standard_normal((B, d), dtype=np.float32)
    mask = rng.random((B, n)) > 0.05
    mask[:, 0] = True
    att = FlashAttention(d)
    att.forward(q[:2], K[:2], K[:2], mask[:2])
    err = float(np.abs(numpy_softmax_attention(q, K, K, mask) - att.forward(q, K, K, mask)[0]).max())
    t_ref = best_time(lambda: numpy_softmax_attention(q, K, K, mask), repeats)
    t_att = best_time(lambda: att.forward(q, K, K, mask), repeats)
    print(f"[flash batched] B={B} n={n} d={d}: numpy {t_ref * 1e3:.1f} ms, flash {t_att * 1e3:.1f} ms, "
          f"ratio {t_ref / t_att:.2f}x (max abs diff {err:.1e})")
    return t_ref / t_att


def bench_flash_memory(M: int, d: int) -> float:
    rng = np.random.default_rng(2)
    Q = rng.standard_normal((M, d), dtype=np.float32)
    K = rng.standard_normal((M, d), dtype=np.float32)
    V = rng.standard_normal((M, d), dtype=np.float32)
    att = FlashAttention(d)
    att.attend_all(Q[:4], K[:8], V[:8])
    scale = att.scale

    def dense() -> np.ndarray:
        S = Q @ K.T
        S *= scale
        S -= S.max(axis=1, keepdims=True)
        np.exp(S, out=S)
        S /= S.sum(axis=1, keepdims=True)
        return S @ V

    def peak(f: Callable[[], np.ndarray]) -> tuple[int, float, np.ndarray]:
        gc.collect()
        tracemalloc.start()
        t0 = time.perf_counter()
        out = f()
        dt = time.perf_counter() - t0
        p = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return p, dt, out

    p_dense, t_dense, o_dense = peak(dense)
    p_flash, t_flash, o_flash = peak(lambda: att.attend_all(Q, K, V))
    err = float(np.abs(o_dense - o_flash).max())
    print(f"[flash attend_all memory] Q=N={M} d={d}: dense peak {p_dense / 2**20:.1f} MiB ({t_dense:.2f} s), "
          f"flash peak {p_flash / 2**20:.2f} MiB ({t_flash:.2f} s), ratio {p_flash / p_dense:.3%} "
          f"(max abs diff {err:.1e})")
    return p_flash / p_dense


def _timed(f: Callable[[], Any], repeats: int, budget: float) -> float:
    """Wall time of ``f``: one run, then the best of ``repeats`` more when the first fits ``budget``."""
    t0 = time.perf_counter()
    f()
    first = time.perf_counter() - t0
    return first if first > budget else min(first, best_time(f, repeats, budget))


def _bench_one(att: Any, table: np.ndarray, q: np.ndarray, ids: np.ndarray, ctx: Context,
               repeats: int, budget: float) -> tuple[float, float]:
    """``(forward rows/s, backward rows/s)`` of one mechanism (params-only backward)."""
    B = q.shape[0]
    out, cache = att.forward(q[:2], table, table, context=_rows(ctx, 2), ids=ids[:2])  # warm-up / JIT
    att.backward(cache, np.ones_like(out), input_grads=False)
    t_fwd = _timed(lambda: att.forward(q, table, table, context=ctx, ids=ids), repeats, budget)
    out, cache = att.forward(q, table, table, context=ctx, ids=ids)
    g = np.ones_like(out)
    t_bwd = _timed(lambda: att.backward(cache, g, input_grads=False), repeats, budget)
    return B / t_fwd, B / t_bwd


def bench_table(ns: list[int], batch_for: dict[int, int], d: int, rows: int, repeats: int,
                budget: float, names: list[str] | None = None) -> list[str]:
    """Print the per-mechanism throughput table, the ratios to scaled_dot and the issue-10 target
    checks; return ``"name n=..: error"`` for each failure."""
    rng = np.random.default_rng(3)
    table = rng.standard_normal((rows, d), dtype=np.float32)
    names = list(MECHANISMS) if names is None else names
    results: dict[str, dict[int, str]] = {nm: {} for nm in names}
    ratio_n = max((n for n in ns if n <= 1000), default=ns[0])
    ratios: dict[str, tuple[float, float]] = {}
    best_fwd: dict[str, float] = {}  # best forward rows/s at ratio_n (table and ratio calls)
    configs: dict[str, dict[str, Any]] = {}
    reference = ScaledDotAttention(d)
    failures: list[str] = []
    for n in ns:
        B = batch_for[n]
        q = rng.standard_normal((B, d), dtype=np.float32)
        ids = rng.integers(0, rows, size=(B, n))
        dist = rng.random((B, n), dtype=np.float32)
        layer = (rng.random((B, n)) < 0.15).astype(np.int8)
        items = Context(dist=dist, layer=layer, hops=rng.integers(1, 3, (B, n)),
                        degree=rng.integers(1, 32, (B, n)).astype(np.float32))
        for name in names:
            try:
                att = MECHANISMS[name](d, seed=0)
                ctx = Context(dist=items.dist, layer=items.layer, hops=items.hops, degree=items.degree,
                              table_state=att.prepare_table(table))
                fwd, bwd = _bench_one(att, table, q, ids, ctx, repeats, budget)
                results[name][n] = f"{fwd:,.0f} / {bwd:,.0f}"
                if n == ratio_n:
                    rf, rb, t_att = _ratio_to(reference, att, table, q, ids, ctx)
                    ratios[name] = (rf, rb)
                    best_fwd[name] = max(fwd, B / t_att)
                    configs[name] = att.get_config()
            except Exception as exc:  # reported, and the run fails at the end
                results[name][n] = f"FAILED ({type(exc).__name__})"
                failures.append(f"{name} n={n}: {type(exc).__name__}: {exc}")
                print(f"  {name} n={n}: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
    head = "| mechanism | " + " | ".join(f"n={n} (B={batch_for[n]})" for n in ns) + " |"
    print(f"\n[forward / params-only backward throughput, rows/s, gather form, d={d}, table={rows} rows, "
          f"threads={get_num_threads()}]")
    print(head)
    print("|" + "---|" * (len(ns) + 1))
    for name in names:
        print(f"| {name} | " + " | ".join(results[name][n] for n in ns) + " |")
    print(f"\n[time ratio to scaled_dot at n={ratio_n} (B={batch_for[ratio_n]}), alternating calls, best of 5: "
          "forward / params-only backward; > 1 = slower]")
    for name, (rf, rb) in ratios.items():
        print(f"  {name}: {rf:.2f}x / {rb:.2f}x")
    print_targets(ratios, best_fwd, configs, ratio_n, d)
    return failures


def print_targets(ratios: dict[str, tuple[float, float]], best_fwd: dict[str, float],
                  configs: dict[str, dict[str, Any]], n: int, d: int) -> None:
    """PASS/FAIL of the issue-10 targets that this run measured (forward figures)."""
    if (n, d) != (1000, 128):
        print(f"\n[targets (issue 10): stated for n=1000, d=128; not checked at n={n}, d={d}]")
        return
    print(f"\n[targets (issue 10), forward, n={n}, d={d}, gather form, threads={get_num_threads()}, "
          f"load average {load_average()}]")
    for name, (limit, key) in RATIO_TARGETS.items():
        if name not in ratios:
            continue
        cfg = f" ({key}={configs[name][key]})" if key else ""
        rf = ratios[name][0]
        print(f"  {name}{cfg} / scaled_dot: {rf:.2f}x, target <= {limit:g}x: {'PASS' if rf <= limit else 'FAIL'}")
    for name, limit in RATE_TARGETS.items():
        if name not in best_fwd:
            continue
        r = best_fwd[name]
        print(f"  {name}: {r:,.0f} rows/s, target >= {limit:,.0f}: {'PASS' if r >= limit else 'FAIL'} "
              f"({ratios[name][0]:.2f}x scaled_dot's time)")


def _ratio_to(reference: Any, att: Any, table: np.ndarray, q: np.ndarray, ids: np.ndarray, ctx: Context,
              rounds: int = 5) -> tuple[float, float, float]:
    """``(forward, params-only backward)`` time of ``att`` over ``reference``'s on the same inputs,
    and ``att``'s best forward time (s).

    The two are called alternately, ``rounds`` times each, and the best times compared, so a load
    change on the machine hits both alike.
    """
    ref_ctx = Context(dist=ctx.dist, layer=ctx.layer, hops=ctx.hops, degree=ctx.degree)
    best = {"rf": np.inf, "af": np.inf, "rb": np.inf, "ab": np.inf}
    for _ in range(rounds):
        for key, mech, c in (("r", reference, ref_ctx), ("a", att, ctx)):
            t0 = time.perf_counter()
            out, cache = mech.forward(q, table, table, context=c, ids=ids)
            best[key + "f"] = min(best[key + "f"], time.perf_counter() - t0)
            g = np.ones_like(out)
            t0 = time.perf_counter()
            mech.backward(cache, g, input_grads=False)
            best[key + "b"] = min(best[key + "b"], time.perf_counter() - t0)
    return best["af"] / best["rf"], best["ab"] / best["rb"], best["af"]


def _rows(ctx: Context, k: int) -> Context:
    return Context(dist=ctx.dist[:k], layer=ctx.layer[:k], hops=ctx.hops[:k], degree=ctx.degree[:k],
                   table_state=ctx.table_state)


def _finish(failures: list[str]) -> None:
    """Exit non-zero naming every failed mechanism (nothing to do when all ran)."""
    if failures:
        sys.exit("attention benchmark: mechanism errors:\n  " + "\n  ".join(failures))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, a few seconds (smoke run)")
    ap.add_argument("--threads", type=int, default=None, help="threads of the attention kernels")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--skip-table", action="store_true", help="skip the per-mechanism throughput table")
    ap.add_argument("--skip-kernels", action="store_true",
                    help="skip the gather / flash comparisons (sections 1-3)")
    ap.add_argument("--mechanisms", nargs="*", default=None, choices=list(MECHANISMS),
                    help="table rows (default: every mechanism in MECHANISMS)")
    ap.add_argument("--sizes", nargs="*", type=int, default=[100, 1000, 10_000], choices=[100, 1000, 10_000],
                    help="table columns n (full run; default all three)")
    ap.add_argument("--blas-threads", type=int, default=1,
                    help="BLAS threads (threadpoolctl; default 1: OpenBLAS busy-waiting on a shared 2-core "
                         "machine slowed small GEMMs ~15x in our runs); 0 = leave as is")
    args = ap.parse_args(argv)
    if args.threads is not None:
        set_num_threads(args.threads)
    if args.blas_threads > 0:
        threadpool_limits(args.blas_threads, user_api="blas")  # the whole run: this script owns its process
    print(f"attention kernel threads: {get_num_threads()}, BLAS threads: {args.blas_threads or 'default'}, "
          f"load average (1/5/15 min) {load_average()}")
    if args.quick:
        reps = args.repeats or 2
        if not args.skip_kernels:
            bench_gather(B=32, n=200, d=64, rows=5000, repeats=reps)
            bench_flash_batched(B=32, n=200, d=64, repeats=reps)
            bench_flash_memory(M=1024, d=32)
        if not args.skip_table:
            _finish(bench_table([100], {100: 32}, d=32, rows=2000, repeats=1, budget=1.0, names=args.mechanisms))
        return
    reps = args.repeats or 5
    if not args.skip_kernels:
        bench_gather(B=256, n=1000, d=128, rows=100_000, repeats=reps)
        bench_flash_batched(B=256, n=1000, d=128, repeats=reps)
        bench_flash_memory(M=8192, d=64)
    if not args.skip_table:
        print(f"\nload average before the table: {load_average()}")
        failures = bench_table(sorted(args.sizes), {100: 1024, 1000: 256, 10_000: 32}, d=128, rows=100_000,
                               repeats=3, budget=20.0, names=args.mechanisms)
        print(f"\nload average at the end: {load_average()}")
        _finish(failures)


if __name__ == "__main__":
    main()
