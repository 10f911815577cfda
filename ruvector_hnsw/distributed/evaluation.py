"""Distributed evaluation: :func:`ruvector_hnsw.eval.evaluate` with the queries split over Ray workers.

Protocol (the single-process one of :mod:`ruvector_hnsw.eval.run`, per shard):

1. The driver builds (and trains) the methods as usual; they are shipped **once**: put in the object
   store, or pickled into ``shared_dir`` (a directory every node can read, e.g. NFS), from which each
   worker loads them once. One actor per worker holds them for every method of the run.
2. The queries are split into contiguous shards whose bounds are multiples of 96 rows (ENCODE_BLOCK)
   (:func:`~ruvector_hnsw.distributed.shard_bounds`), so every query sits at the position of the GEMM
   block it has in the single-process call and gets bit-identical codes and results.
3. Each worker warms up on its shard, makes the quality call (``search_k`` results), the timed calls at
   ``k`` and the single-query latency calls of the seeded latency subset that fall in its shard, and
   computes the **per-query** values of every metric.
4. The driver concatenates the per-query values in query order and reduces them exactly like the
   single-process run (mean over queries with ``R > 0``): the metrics are equal to it, not merely
   close. ``qps`` is the cluster's throughput: ``n_queries`` over the slowest shard's time (best of the
   repeats); latency percentiles pool the per-query times of all shards.

Result rows carry the keys of :data:`~ruvector_hnsw.eval.RESULT_KEYS` plus ``backend`` and ``workers``.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ruvector_hnsw.distributed import _remote
from ruvector_hnsw.distributed.cluster import resolve_workers, shard_bounds
from ruvector_hnsw.errors import ConfigError, InvalidInputError, ShapeMismatchError
from ruvector_hnsw.eval import metrics as M
from ruvector_hnsw.eval.run import RESULT_KEYS
from ruvector_hnsw.eval.run import evaluate as evaluate_local
from ruvector_hnsw.eval.timing import available_threads, measure_qps, warm_up

__all__ = ["ShardResult", "evaluate", "search"]

_LABELLED_KEYS = ("map_at_r", "map_at_100", "p_at_1", "p_at_10", "r_precision", "mrr", "ndcg_at_10",
                  "hit_rate_at_10")
BACKENDS = ("ray", "local")

ShardResult = dict[str, Any]


# ---------------------------------------------------------------------- what one worker does
def _per_query_labelled(ids: np.ndarray, bl: np.ndarray, ql: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Per-query values (NaN where R = 0) of the labelled metrics :func:`eval.evaluate` reports."""
    rel, n_rel = M.relevance(ids, bl, ql)
    out: dict[str, Any] = {
        "map_at_r": M.map_at_r(rel, n_rel, per_query=True),
        "map_at_100": M.map_at_r(rel, n_rel, cap=100, per_query=True),
        "p_at_1": M.precision_at_k(rel, n_rel, 1, per_query=True),
        "p_at_10": M.precision_at_k(rel, n_rel, 10, per_query=True),
        "r_precision": M.r_precision(rel, n_rel, per_query=True),
        "mrr": M.mrr(rel, n_rel, per_query=True),
        "ndcg_at_10": M.ndcg_at_k(rel, n_rel, 10, per_query=True),
        "hit_rate_at_10": M.hit_rate_at_k(rel, n_rel, 10, per_query=True),
    }
    if k != 10:
        out[f"p_at_{k}"] = M.precision_at_k(rel, n_rel, k, per_query=True)
        out[f"ndcg_at_{k}"] = M.ndcg_at_k(rel, n_rel, k, per_query=True)
        out[f"hit_rate_at_{k}"] = M.hit_rate_at_k(rel, n_rel, k, per_query=True)
    out = {key: np.asarray(v, dtype=np.float64) for key, v in out.items()}
    out["_n_rel"] = np.asarray(n_rel, dtype=np.int64)
    return out


def _check_ids(name: str, res: Any, nq: int) -> np.ndarray:
    if not isinstance(res, tuple) or len(res) != 2:
        raise InvalidInputError(f"method {name!r} must return (ids, dists), got {type(res).__name__}")
    ids = np.asarray(res[0])
    if ids.ndim != 2 or ids.shape[0] != nq:
        raise ShapeMismatchError(f"method {name!r} returned ids of shape {ids.shape}, expected ({nq}, k)")
    return ids.astype(np.int64, copy=False)


def run_shard(methods: Mapping[str, Callable[..., Any]], shard: Mapping[str, Any], data: Mapping[str, Any],
              plan: Mapping[str, Any]) -> list[ShardResult]:
    """Evaluate every method on one shard of queries; the per-query values, ids at ``k`` and timings.

    ``shard``: ``queries`` (its rows), ``start``, ``query_labels``, ``neighbors``, ``latency_rows`` (shard-local
    rows of the global latency subset); ``data``: ``base`` (for recall), ``base_labels``, ``metric``;
    ``plan``: ``k``, ``search_k``, ``qps_repeats``, ``warmup_queries``, ``recall_ks``, ``keep_ids``.
    """
    q = np.ascontiguousarray(shard["queries"], dtype=np.float32)
    nq = q.shape[0]
    k, search_k = int(plan["k"]), int(plan["search_k"])
    bl, ql, gt = data.get("base_labels"), shard.get("query_labels"), shard.get("neighbors")
    out: list[ShardResult] = []
    for name, fn in methods.items():
        warm_up(fn, q, search_k, plan["warmup_queries"])
        _, t_long, res = measure_qps(fn, q, search_k)
        ids = _check_ids(name, res, nq)
        if search_k != k:
            warm_up(fn, q, k, plan["warmup_queries"])
        timed = [measure_qps(fn, q, k) for _ in range(int(plan["qps_repeats"]))]
        ids_k = _check_ids(name, timed[0][2], nq)
        lat = np.empty(len(shard["latency_rows"]), dtype=np.float64)
        for j, i in enumerate(shard["latency_rows"]):
            qi = np.ascontiguousarray(q[i : i + 1])
            t0 = time.perf_counter()
            fn(qi, k)
            lat[j] = time.perf_counter() - t0
        r: ShardResult = {"method": name, "seconds_long": t_long, "seconds_k": [t[1] for t in timed],
                          "latency_s": lat}
        if bl is not None and ql is not None:
            r["labelled"] = _per_query_labelled(ids, bl, ql, k)
        recall: dict[int, np.ndarray | None] = {}
        for kk in plan["recall_ks"]:
            src = ids_k if kk <= k else ids
            if gt is not None and gt.shape[1] >= kk and src.shape[1] > 0:
                recall[kk] = np.asarray(M.ann_recall_at_k(src, gt, queries=q, base=data["base"],
                                                          metric=data["metric"], k=kk, per_query=True))
            else:
                recall[kk] = None
        r["recall"] = recall
        if plan.get("keep_ids"):
            r["ids"], r["ids_k"] = ids, ids_k
        out.append(r)
    return out


class EvalWorker:
    """One worker of a distributed evaluation: loads the methods once, evaluates shards."""

    def __init__(self, methods: Any, data: Mapping[str, Any]) -> None:
        if isinstance(methods, (str, os.PathLike)):
            with open(methods, "rb") as fh:
                methods = pickle.load(fh)
        elif isinstance(methods, bytes):
            methods = pickle.loads(methods)
        self.methods = methods
        self.data = data

    def run(self, shard: Mapping[str, Any], plan: Mapping[str, Any]) -> list[ShardResult]:
        return run_shard(self.methods, shard, self.data, plan)

    def search(self, name: str, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        ids, dists = self.methods[name](np.ascontiguousarray(queries, dtype=np.float32), k)
        return np.asarray(ids, dtype=np.int64), np.asarray(dists)


# ---------------------------------------------------------------------- the driver
def _as_methods(methods: Mapping[str, Callable[..., Any]] | Sequence[Any]) -> dict[str, Callable[..., Any]]:
    if isinstance(methods, Mapping):
        out = {str(n): m for n, m in methods.items()}
    else:
        seq = list(methods)
        if not all(hasattr(m, "name") for m in seq):
            raise ConfigError("methods given as a sequence need a 'name' attribute; pass a dict instead")
        out = {str(m.name): m for m in seq}
        if len(out) != len(seq):
            raise ConfigError("method names are not unique")
    if not out:
        raise ConfigError("no methods to evaluate")
    return out


def _ship_methods(methods: dict[str, Any], shared_dir: str | os.PathLike[str] | None) -> tuple[Any, Path | None]:
    """An object-store reference to the methods, or the path of their pickle in ``shared_dir``."""
    from ray import cloudpickle  # closures of the method factories need cloudpickle

    if shared_dir is None:  # as bytes: each worker unpickles its own (writable) copy once
        return _remote.put(cloudpickle.dumps(methods, protocol=pickle.HIGHEST_PROTOCOL)), None

    d = Path(shared_dir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"methods-{uuid.uuid4().hex}.pkl"
    fd, tmp = tempfile.mkstemp(dir=d, suffix=".tmp")
    with os.fdopen(fd, "wb") as fh:
        cloudpickle.dump(methods, fh, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)
    return str(path), path


def _workers_of(backend: str, workers: int | None, methods: dict[str, Any], data: dict[str, Any],
                shared_dir: str | os.PathLike[str] | None) -> tuple[list[Any], Path | None]:
    if backend == "local":
        return [EvalWorker(methods, data)], None
    ref, path = _ship_methods(methods, shared_dir)
    data_ref = _remote.put(data)
    actor = _remote.remote(EvalWorker)
    return [actor.remote(ref, data_ref) for _ in range(resolve_workers(workers))], path


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")


def search(methods: Mapping[str, Callable[..., Any]], name: str, queries: Any, k: int, *, backend: str = "ray",
           workers: int | None = None, shared_dir: str | os.PathLike[str] | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """One method's ``(ids, dists)`` over ``queries``, computed in 64-row-aligned shards on workers.

    Equal to ``methods[name](queries, k)`` (the shards start where the single call's GEMM blocks do).
    """
    _check_backend(backend)
    table = _as_methods(methods)
    if name not in table:
        raise ConfigError(f"unknown method {name!r}; have {sorted(table)}")
    q = np.ascontiguousarray(queries, dtype=np.float32)
    k = M.check_k(k)
    pool, path = _workers_of(backend, workers, {name: table[name]}, {}, shared_dir)
    try:
        bounds = shard_bounds(q.shape[0], len(pool) if backend == "ray" else (workers or 1))
        if backend == "local":
            parts = [pool[0].search(name, q[a:b], k) for a, b in bounds]
        else:
            parts = _remote.get([pool[i % len(pool)].search.remote(name, q[a:b], k)
                                 for i, (a, b) in enumerate(bounds)])
    finally:
        if backend == "ray":
            _remote.kill(pool)
        if path is not None:
            path.unlink(missing_ok=True)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _reduce(values: np.ndarray) -> float:
    """The single-process reduction: the mean over the queries that have a value (R > 0)."""
    ok = ~np.isnan(values)
    return float(np.mean(values[ok])) if ok.any() else float("nan")


def evaluate(
    dataset: Any,
    methods: Mapping[str, Callable[..., Any]] | Sequence[Any],
    k: int = 10,
    *,
    max_results: int | None = None,
    qps_repeats: int = 3,
    latency_queries: int = 200,
    warmup_queries: int = 8,
    compute_ground_truth: bool = False,
    seed: int = 0,
    progress: bool = False,
    backend: str = "ray",
    workers: int | None = None,
    shared_dir: str | os.PathLike[str] | None = None,
) -> list[dict[str, Any]]:
    """:func:`ruvector_hnsw.eval.evaluate` with the queries sharded over workers (see the module docstring).

    Parameters
    ----------
    dataset, methods, k, max_results, qps_repeats, latency_queries, warmup_queries, compute_ground_truth, seed
        As in :func:`ruvector_hnsw.eval.evaluate`. The methods must pickle (with cloudpickle): the
        built-in ones and fitted :class:`~ruvector_hnsw.search.AttentionSearch` models do.
    progress : bool
        Accepted for symmetry; the shards report nothing while they run.
    backend : {"ray", "local"}
        ``"ray"``: one actor per worker on the connected cluster (:func:`~ruvector_hnsw.distributed.connect`;
        Ray's default cluster otherwise). ``"local"``: the same shards one after the other in this
        process (no Ray; the reference the Ray run equals).
    workers : int, optional
        Shards/actors (default: the cluster's CPUs; 1 for ``"local"``).
    shared_dir : path, optional
        Ship the methods as one pickle file in this directory (readable by every node) instead of the
        object store; removed after the run.

    Returns
    -------
    list of dict
        The rows of :func:`ruvector_hnsw.eval.evaluate` (same ids, labelled metrics and recall equal to it),
        plus ``backend`` and ``workers``. ``qps`` is the cluster's throughput (``n_queries`` over the slowest
        shard), latency percentiles pool every shard's single-query times.
    """
    _check_backend(backend)
    table = _as_methods(methods)
    if backend == "local" and workers is None:
        return [row | {"backend": "local", "workers": 1} for row in
                evaluate_local(dataset, table, k, max_results=max_results, qps_repeats=qps_repeats,
                               latency_queries=latency_queries, warmup_queries=warmup_queries,
                               compute_ground_truth=compute_ground_truth, seed=seed, progress=progress)]
    from ruvector_hnsw.eval import run as run_mod

    k = M.check_k(k)
    qps_repeats = M.check_k(qps_repeats, "qps_repeats")
    if max_results is not None:
        max_results = M.check_k(max_results, "max_results")
    base, queries, metric = run_mod.check_dataset(dataset)
    nq, nb = queries.shape[0], base.shape[0]
    bl, ql = run_mod.dataset_labels(dataset)
    labelled = bl is not None and ql is not None
    r_max = 0
    if labelled:
        _, n_rel = M.relevance(np.zeros((nq, 0), dtype=np.int64), bl, ql)
        r_max = int(n_rel.max()) if n_rel.size else 0
    cap = max_results if max_results is not None else nb
    search_k = max(k, 10, min(r_max, cap))
    recall_ks = sorted({10, k})
    gt = run_mod.ground_truth(dataset, max(recall_ks), compute_ground_truth)
    if gt is not None and gt.shape[0] != nq:
        raise ShapeMismatchError(f"neighbors has {gt.shape[0]} rows but there are {nq} queries")
    # the latency subset of the single-process run (measure_latency's draw)
    n_lat = max(1, min(int(latency_queries), nq)) if latency_queries > 0 else 0
    rng = np.random.default_rng(seed)
    lat_rows = (np.sort(rng.choice(nq, size=n_lat, replace=False)) if n_lat < nq else np.arange(nq)) \
        if n_lat else np.zeros(0, dtype=np.int64)

    data = {"base": base if gt is not None else None, "base_labels": bl, "metric": metric}
    plan = {"k": k, "search_k": search_k, "qps_repeats": qps_repeats, "warmup_queries": warmup_queries,
            "recall_ks": recall_ks}
    t_start = time.perf_counter()
    pool, path = _workers_of(backend, workers, table, data, shared_dir)
    try:
        bounds = shard_bounds(nq, len(pool) if backend == "ray" else int(workers or 1))
        shards = [{"queries": queries[a:b], "start": a, "query_labels": None if ql is None else ql[a:b],
                   "neighbors": None if gt is None else gt[a:b],
                   "latency_rows": (lat_rows[(lat_rows >= a) & (lat_rows < b)] - a)} for a, b in bounds]
        if backend == "local":
            results = [pool[0].run(s, plan) for s in shards]
        else:
            results = _remote.get([pool[i % len(pool)].run.remote(s, plan) for i, s in enumerate(shards)])
    finally:
        if backend == "ray":
            _remote.kill(pool)
        if path is not None:
            path.unlink(missing_ok=True)
    wall = time.perf_counter() - t_start

    rows: list[dict[str, Any]] = []
    for m, (name, fn) in enumerate(table.items()):
        per = [res[m] for res in results]
        row: dict[str, Any] = {"method": name}
        if labelled:
            keys = [key for key in per[0]["labelled"] if key != "_n_rel"]
            n_rel_all = np.concatenate([p["labelled"]["_n_rel"] for p in per])
            for key in keys:
                row[key] = _reduce(np.concatenate([p["labelled"][key] for p in per]))
            row["n_excluded_queries"] = int(np.count_nonzero(n_rel_all == 0))
        else:
            row.update(dict.fromkeys(_LABELLED_KEYS))
            row["n_excluded_queries"] = None
        for kk in recall_ks:
            vals = [p["recall"][kk] for p in per]
            row[f"recall_at_{kk}"] = None if any(v is None for v in vals) else float(np.mean(np.concatenate(vals)))
        slowest = [max(p["seconds_k"][r] for p in per) for r in range(qps_repeats)]
        long_s = max(p["seconds_long"] for p in per)
        if n_lat:
            ms = np.concatenate([p["latency_s"] for p in per]) * 1e3
            p50, p95, p99 = np.percentile(ms, [50, 95, 99])
            lat: dict[str, Any] = {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99),
                                   "mean_ms": float(ms.mean()), "latency_queries": int(ms.shape[0])}
        else:
            lat = {"p50_ms": None, "p95_ms": None, "p99_ms": None, "mean_ms": None, "latency_queries": 0}
        threads = getattr(fn, "threads", None)
        row.update({
            "qps": float(nq / min(slowest)) if min(slowest) > 0 else float("inf"),
            **lat,
            "threads": int(threads) if threads is not None else available_threads(),
            "n_queries": int(nq),
            "k": int(k),
            "search_k": int(search_k),
            "r_max": int(r_max) if labelled else None,
            "r_truncated": bool(labelled and search_k < r_max),
            "qps_search_k": float(nq / long_s) if long_s > 0 else float("inf"),
            "params": dict(getattr(fn, "params", {}) or {}),
            "eval_seconds": wall,
            "backend": backend,
            "workers": len(bounds),
        })
        rows.append({key: row.get(key) for key in RESULT_KEYS} | row)
    return rows
