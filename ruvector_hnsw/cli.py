"""``ruvector-hnsw``: build, query and inspect HNSW indexes; evaluate retrieval; run the demo.

Every subcommand is a small function over the library; :func:`main` turns user errors
(missing or corrupt files, wrong dimensions, bad options: any
:class:`~ruvector_hnsw.errors.RuvectorError` or :class:`OSError`) into one ``error: ...`` line
on stderr and exit status 2, never a traceback (``--verbose`` shows it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ruvector_hnsw.errors import ConfigError, DimensionMismatchError, FileFormatError, RuvectorError

__all__ = ["build_parser", "main"]

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USER = 2

#: the panels of ``eval --plot``: quality against QPS
PLOT_QUALITY = ("map_at_100", "map_at_r", "recall_at_10")
_SPACES = ("l2", "ip", "cosine")
#: ``code_dtype`` choices (= ruvector_hnsw.search.quant.CODE_DTYPES; kept here so the parser loads no numba)
_CODE_DTYPES = ("float32", "float16", "int8")
_DEFAULT_METHODS = "exact,hnsw,alpha_qe,dba"
#: the demo: the baselines, then "train then rerank" (a few epochs of local_global) and linear_proj
_DEMO_METHODS = "exact,hnsw,alpha_qe,dba,local_global:epochs=2,linear_proj:epochs=5"

_EPILOG = """\
examples:
  ruvector-hnsw demo                                   # the built-in scenario end to end (< 2 min)
  ruvector-hnsw eval --dataset clusters --methods exact,hnsw,alpha_qe,dba --json out.json --plot out.png
  ruvector-hnsw eval --dataset clusters --methods hnsw,alpha_qe,dba,local_global,rope,dual_space,linear_proj
  ruvector-hnsw train --dataset clusters --mechanism local_global --epochs 4 --out models/lg
  ruvector-hnsw eval --dataset data/sift_base.fvecs --methods exact,hnsw:ef=32,hnsw:ef=128
  ruvector-hnsw build data/sift_base.fvecs -o sift.rvh --space l2 --M 16 --ef-construction 200
  ruvector-hnsw query sift.rvh data/sift_query.fvecs -k 10 --ef 64 -o result.npz
  ruvector-hnsw info sift.rvh
  ruvector-hnsw analyze sift.rvh --json report.json        # graph geometry -> a mechanism to try
  ruvector-hnsw bench --quick

vector files: .fvecs/.bvecs (TEXMEX), .npy, .npz (arrays 'base', 'queries', ...), .hdf5
(ann-benchmarks 'train'/'test'), or a built-in dataset name (clusters, hierarchical,
manifolds, digits; 'clusters:tiny' picks a size).
"""


# ============================================================================ helpers
class _Console:
    """Where human-readable output goes (stdout), plus the progress-bar switch."""

    def __init__(self, progress: bool, out: TextIO | None = None) -> None:
        self.progress = progress
        self.out = out if out is not None else sys.stdout

    def print(self, *args: Any) -> None:
        print(*args, file=self.out, flush=True)


def _progress_enabled(args: argparse.Namespace) -> bool:
    if args.progress == "always":
        return True
    if args.progress == "never":
        return False
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def _tqdm(total: int, desc: str, enabled: bool, unit: str = "vec") -> Any:
    """A tqdm bar on stderr (with rates), or None when disabled or tqdm is not installed."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, leave=False, dynamic_ncols=True)


def _is_dataset_name(spec: str) -> bool:
    from ruvector_hnsw.datasets import available

    return not os.path.exists(spec) and spec.partition(":")[0] in available()


def _read_vectors(spec: str, role: str) -> tuple[np.ndarray, str | None]:
    """Read an (n, d) float32 matrix and the metric the source declares (None if it does not).

    ``role`` is "base" or "queries": which array of a dataset or ``.npz``/``.hdf5`` file.
    """
    from ruvector_hnsw.datasets import formats, load

    if _is_dataset_name(spec):
        ds = load(spec, gt_k=0)
        return (ds.base if role == "base" else ds.queries), ds.metric
    metric: str | None = None
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(2, "No such file or directory", str(path))
    suffix = path.suffix.lower()
    arr: Any
    if suffix in (".fvecs", ".bvecs", ".ivecs"):
        arr = formats.read_vecs(path)
    elif suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, EOFError) as exc:
            raise FileFormatError(f"{path}: not a readable .npy file ({exc})") from exc
    elif suffix == ".npz":
        fields = formats.read_npz(path)
        if role == "queries" and fields.get("queries") is None:
            raise FileFormatError(f"{path}: .npz has no 'queries' array")
        arr = fields[role]
        metric = fields.get("metric")
    elif suffix in (".hdf5", ".h5"):
        raw = formats.read_ann_hdf5(path)
        arr, metric = raw[role], raw["metric"]
    else:
        raise FileFormatError(
            f"{path}: unsupported vector file type {suffix or '(none)'!r} (use .fvecs, .bvecs, .npy, .npz, .hdf5)"
        )
    arr = np.asarray(arr)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise FileFormatError(f"{path}: expected a non-empty 2-D (n, d) array, got shape {arr.shape}")
    if arr.dtype.kind not in "fiub":
        raise FileFormatError(f"{path}: vectors have non-numeric dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32), metric


def _build_index(
    vectors: np.ndarray,
    *,
    space: str,
    M: int,
    ef_construction: int,
    seed: int,
    num_threads: int,
    ef: int | None,
    progress: bool,
) -> Any:
    from ruvector_hnsw.index import HNSWIndex

    index = HNSWIndex(
        vectors.shape[1],
        space=space,
        M=M,
        ef_construction=ef_construction,
        seed=seed,
        num_threads=num_threads,
        max_elements=max(1, vectors.shape[0]),
    )
    n = vectors.shape[0]
    # one add call without a bar, ~20 in-order chunks with one (single-threaded: the same graph)
    chunk = max(2000, min(50_000, n // 20)) if progress else max(n, 1)
    bar = _tqdm(n, "build", progress and n > chunk)
    try:
        for start in range(0, vectors.shape[0], chunk):
            stop = min(vectors.shape[0], start + chunk)
            index.add(vectors[start:stop], ids=np.arange(start, stop, dtype=np.int64))
            if bar is not None:
                bar.update(stop - start)
    finally:
        if bar is not None:
            bar.close()
    if ef is not None:
        index.ef = ef
    return index


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def _graph_report(stats: dict[str, Any]) -> list[str]:
    """Human-readable lines for ``HNSWGraph.stats()``."""
    lines = [
        f"graph: {stats['nodes']} nodes ({stats['deleted']} deleted), {stats['edges']} directed links, "
        f"space={stats['space']}, dim={stats['dim']}, M={stats['M']}, max_level={stats['max_level']}, "
        f"entry point={stats['entry_point']}",
        "  level  nodes(at exactly)  nodes(on layer)   links   mean deg  max deg",
    ]
    hist = list(stats.get("levels_histogram", []))
    layers = {row["layer"]: row for row in stats.get("layers", [])}
    for lvl in range(max(len(hist), len(layers))):
        row = layers.get(lvl, {"nodes": 0, "edges": 0, "mean_degree": 0.0, "max_degree": 0})
        exact = hist[lvl] if lvl < len(hist) else 0
        lines.append(
            f"  {lvl:>5}  {exact:>17}  {row['nodes']:>15}  {row['edges']:>6}  {row['mean_degree']:>9.2f}"
            f"  {row['max_degree']:>7}"
        )
    lines.append(f"  graph memory (vectors + CSR links + labels/levels): {_fmt_bytes(stats['memory_bytes'])}")
    return lines


def _export_graph(graph: Any, path: Path) -> None:
    """Write the graph snapshot to ``.npz``: labels, levels, entry point, per-layer CSR + distances."""
    arrays: dict[str, Any] = {
        "labels": graph.labels,
        "levels": graph.levels,
        "entry_point": np.array(graph.entry_point, dtype=np.int64),
        "max_level": np.array(graph.max_level, dtype=np.int64),
    }
    for layer in range(graph.num_layers):
        indptr, indices = graph.layer(layer)
        arrays[f"layer{layer}_indptr"] = indptr
        arrays[f"layer{layer}_indices"] = indices
        arrays[f"layer{layer}_distances"] = graph.edge_distances(layer)
    from ruvector_hnsw.datasets.formats import write_npz

    write_npz(path, **arrays)


def _dataset_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kw: dict[str, Any] = {"seed": args.seed}
    if _is_dataset_name(args.dataset):
        if args.size is not None and ":" not in args.dataset:
            kw["size"] = args.size
    else:
        if args.size is not None:
            raise ConfigError("--size applies to built-in datasets only, not to files")
        kw["progress"] = _progress_enabled(args)
    if args.n_queries is not None:
        kw["n_queries"] = args.n_queries
    if args.metric is not None:
        kw["metric"] = args.metric
    return kw


def _method_names(spec: str) -> str:
    """Expand ``all`` to every registered method that needs no options (``model`` needs a path)."""
    from ruvector_hnsw import eval as ev

    if spec.strip().lower() == "all":
        return ",".join(name for name in ev.METHODS if name != "model")
    return spec


def _with_code_dtype(spec: str, code_dtype: str | None) -> str:
    """``--code-dtype``: add ``code_dtype=...`` to every attention method of ``spec`` that does not set it."""
    from ruvector_hnsw import eval as ev

    if code_dtype is None:
        return spec
    out = []
    for part in spec.split(","):
        if not part.strip():
            continue
        name, opts = ev.parse_method_spec(part)
        if name in ev.ATTENTION_METHODS and "code_dtype" not in opts:
            part = f"{part.strip()}:code_dtype={code_dtype}"
        out.append(part)
    return ",".join(out)


def _model_specs(args: argparse.Namespace) -> list[str]:
    """``model:path=...`` specs of ``--model`` (paths with ',' or ':' cannot be specs)."""
    specs = []
    for path in getattr(args, "model", None) or []:
        if "," in path or ":" in path:
            raise ConfigError(f"--model {path!r}: the path must not contain ',' or ':'")
        specs.append(f"model:path={path}")
    return specs


def _run_eval(
    ds: Any,
    methods_spec: str,
    args: argparse.Namespace,
    con: _Console,
    index: Any | None = None,
) -> tuple[Any, list[dict[str, Any]], dict[str, Any]]:
    """Build the methods and evaluate them; returns the (possibly split) dataset, rows, settings.

    Trained methods need training queries: a dataset without them gets ``--train-queries``
    evaluation queries moved into its training set first (the evaluation runs on the rest).
    """
    from ruvector_hnsw import eval as ev

    settings: dict[str, Any] = {
        "k": args.k,
        "ef": args.ef,
        "seed": args.seed,
        "M": args.M,
        "ef_construction": args.ef_construction,
        "threads": args.threads,
        "methods": methods_spec,
        "protocol": getattr(args, "protocol", "seen"),
    }
    if settings["protocol"] != "seen":
        settings["unseen_fraction"] = args.unseen_fraction
        settings["hide_seen"] = getattr(args, "hide_seen", 0.0)
    names = ",".join([n for n in [_with_code_dtype(_method_names(methods_spec), getattr(args, "code_dtype", None))]
                      if n.strip()] + _model_specs(args))
    parsed = [ev.parse_method_spec(spec)[0] for spec in names.split(",") if spec.strip()]
    unknown = [name for name in parsed if name not in ev.METHODS]
    if not parsed or unknown:  # fail before the (slow) index build
        raise ConfigError(
            f"unknown method(s) {', '.join(map(repr, unknown))}; known: {', '.join(sorted(ev.METHODS))}"
            if unknown else "no methods given"
        )
    if getattr(ds, "train_base_labels", None) is not None and "label_classifier" in parsed:
        raise ConfigError("label_classifier runs on the seen-class protocol only (it cannot rank classes it "
                          "never saw); drop it from --methods or use --protocol seen")
    # a saved model gets the split too: with the same --seed/--train-queries as 'train' it is the
    # same split, so its training queries stay out of the evaluation
    if any(name in ev.TRAINED_METHODS or name == "model" for name in parsed):
        ds, split = ev.ensure_train_split(ds, getattr(args, "train_queries", None), seed=args.seed)
        settings["training_queries"] = split
        if split["train_source"] == "split_queries":
            con.print(f"trained methods: moved {split['n_train_queries']} of the evaluation queries into a disjoint "
                      f"training set (seed {args.seed}); evaluating on the other {split['n_eval_queries']}")
        else:
            con.print(f"trained methods fit on the dataset's {split['n_train_queries']} training queries "
                      "(disjoint from the evaluation queries)")
    needs_index = any(name != "exact" for name in parsed)
    if index is None and getattr(args, "index", None):
        from ruvector_hnsw.index import HNSWIndex

        index = HNSWIndex.load(args.index, num_threads=args.threads)
        if index.dim != ds.dim or len(index) != ds.n_base:
            raise DimensionMismatchError(
                f"--index {args.index}: {len(index)} vectors x {index.dim} dims, the dataset has "
                f"{ds.n_base} x {ds.dim}")
        index.ef = args.ef
        settings["index"] = str(args.index)
    if index is None and needs_index:
        t0 = time.perf_counter()
        index = _build_index(
            ds.base,
            space=ds.metric,
            M=args.M,
            ef_construction=args.ef_construction,
            seed=args.seed,
            num_threads=args.threads,
            ef=args.ef,
            progress=con.progress,
        )
        settings["index_build_s"] = round(time.perf_counter() - t0, 3)
        con.print(f"built HNSW index over {ds.n_base} vectors in {settings['index_build_s']:.2f} s "
                  f"(M={args.M}, ef_construction={args.ef_construction}, seed={args.seed})")
    t0 = time.perf_counter()
    methods = ev.build_methods(
        names,
        ds,
        index=index,
        ef=args.ef,
        k=args.k,
        seed=args.seed,
        num_threads=args.threads,
        M=args.M,
        ef_construction=args.ef_construction,
    )
    settings["methods_build_s"] = round(time.perf_counter() - t0, 3)
    eval_options: dict[str, Any] = {"k": args.k, "max_results": args.max_results,
                                    "latency_queries": args.latency_queries, "seed": args.seed,
                                    "progress": con.progress}
    address = getattr(args, "ray", None)
    if address:
        from ruvector_hnsw import distributed

        resources = distributed.connect(address)
        rows = distributed.evaluate(ds, methods, backend="ray", workers=getattr(args, "ray_workers", None),
                                    shared_dir=getattr(args, "shared_dir", None), **eval_options)
        settings["ray"] = {"address": address, "cluster_cpus": resources.get("CPU"),
                           "workers": rows[0]["workers"] if rows else None}
        con.print(f"evaluated on Ray ({address}): {settings['ray']['workers']} query shards on a cluster of "
                  f"{resources.get('CPU', 0):g} CPUs")
    else:
        rows = ev.evaluate(ds, methods, **eval_options)
    settings["threads_available"] = ev.available_threads()
    return ds, rows, settings


def _write_outputs(
    ds: Any,
    rows: list[dict[str, Any]],
    settings: dict[str, Any],
    json_path: str | None,
    plot_path: str | None,
    con: _Console,
) -> None:
    from ruvector_hnsw import eval as ev

    if json_path:
        ev.write_json(json_path, ds, rows, settings=settings)
        con.print(f"wrote {json_path}")
    if plot_path:
        ev.plot_quality_vs_qps(rows, plot_path, quality=PLOT_QUALITY,
                               title=f"{ds.name}: k={settings['k']}, ef={settings['ef']}")
        con.print(f"wrote {plot_path}")


def _training_summary(rows: list[dict[str, Any]], con: _Console) -> None:
    """One line per trained method: fit time, time per epoch, training queries."""
    for r in rows:
        p = r.get("params") or {}
        if "fit_s" not in p:
            continue
        times = p.get("epoch_time_s") or []
        per = f", {sum(times) / len(times):.2f} s per epoch x {len(times)}" if times else ""
        src = "split off the evaluation set" if p.get("train_source") == "split_queries" else "disjoint from eval"
        con.print(f"  {r['method']}: fit {p['fit_s']:.1f} s{per} on {p.get('n_train_queries')} training "
                  f"queries ({src})")


def _dataset_line(ds: Any) -> str:
    info = ds.describe() if hasattr(ds, "describe") else {}
    parts = [f"dataset {ds.name}: {ds.n_base} base x {ds.dim} dims, {ds.n_queries} queries, metric {ds.metric}"]
    if info.get("labelled"):
        parts.append(f"{info['n_classes']} classes (mean R {info['mean_relevant']:.0f})")
    if info.get("gt_k"):
        parts.append(f"ground truth k={info['gt_k']}")
    return ", ".join(parts)


# ============================================================================ commands
def cmd_build(args: argparse.Namespace, con: _Console) -> int:
    vectors, declared = _read_vectors(args.vectors, "base")
    if args.max_rows is not None:
        vectors = vectors[: args.max_rows]
    space = args.space or declared or "l2"
    t0 = time.perf_counter()
    index = _build_index(
        vectors,
        space=space,
        M=args.M,
        ef_construction=args.ef_construction,
        seed=args.seed,
        num_threads=args.threads,
        ef=args.ef,
        progress=con.progress,
    )
    build_s = time.perf_counter() - t0
    out = Path(args.output)
    index.save(out)
    con.print(
        f"built index: {len(index)} vectors x {index.dim} dims, space={space}, M={args.M}, "
        f"ef_construction={args.ef_construction}, seed={args.seed} in {build_s:.2f} s -> {out} "
        f"({_fmt_bytes(out.stat().st_size)})"
    )
    return EXIT_OK


def _in_chunks(search: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], queries: np.ndarray,
               desc: str, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """``search(queries)``; with a progress bar, in ~50 chunks (for searches whose queries are independent)."""
    n = queries.shape[0]
    chunk = max(256, -(-n // 50))
    bar = _tqdm(n, desc, progress and n > chunk, unit="query")
    if bar is None:
        return search(queries)
    parts = []
    try:
        for start in range(0, n, chunk):
            parts.append(search(queries[start:start + chunk]))
            bar.update(min(chunk, n - start))
    finally:
        bar.close()
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _query_model(args: argparse.Namespace, index: Any, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """Re-rank with a saved model that must belong to ``index`` (dim, space, items): ids, scores, settings.

    One batch call, no progress chunks: the scores are then bit-identical to
    ``AttentionSearch.load(...).search(queries)`` (batched BLAS rounds differently per batch size).
    """
    from ruvector_hnsw.search import AttentionSearch

    if args.ef is not None:
        raise ConfigError("--ef sets plain HNSW search; with --model the HNSW breadth is --candidates")
    model = AttentionSearch.load(args.model, index, num_threads=args.threads, same_items=True)
    knobs = {"candidates": args.candidates, "expand": args.expand}
    ids, scores = model.search(queries, k=args.k, **knobs)
    return ids, scores, (f"model {args.model}, {model.mechanism_name}, candidates={args.candidates or model.candidates}"
                         f", expand={model.expand if args.expand is None else args.expand}")


def _check_output(out: Path, name: str) -> None:
    if out.suffix.lower() not in (".npz", ".npy"):
        raise ConfigError(f"--output must end in .npz (ids + {name}) or .npy (ids; {name} beside), got {out}")


def _write_results(out: Path, ids: np.ndarray, values: np.ndarray, name: str) -> list[Path]:
    """``OUT.npz`` (ids + ``name``) or ``OUT.npy`` (ids; ``OUT_<name>.npy`` beside)."""
    _check_output(out, name)
    if out.suffix.lower() == ".npz":
        from ruvector_hnsw.datasets.formats import write_npz

        write_npz(out, ids=ids, **{name: values})
        return [out]
    beside = out.with_name(f"{out.stem}_{name}.npy")
    np.save(out, ids)
    np.save(beside, values)
    return [out, beside]


def cmd_query(args: argparse.Namespace, con: _Console) -> int:
    from ruvector_hnsw.index import HNSWIndex

    if args.model is None and (args.candidates is not None or args.expand is not None):
        raise ConfigError("--candidates and --expand apply to --model only")
    name = "scores" if args.model is not None else "distances"
    if args.output:
        _check_output(Path(args.output), name)  # before the search
    index = HNSWIndex.load(args.index, num_threads=args.threads)
    queries, _ = _read_vectors(args.queries, "queries")
    if queries.shape[1] != index.dim:
        raise DimensionMismatchError(
            f"{args.queries}: queries have dimension {queries.shape[1]}, the index {args.index} has {index.dim}"
        )
    t0 = time.perf_counter()
    if args.model is not None:
        ids, values, how = _query_model(args, index, queries)
    else:
        ids, values = _in_chunks(lambda q: index.search(q, k=args.k, ef=args.ef), queries, "search", con.progress)
        how = f"ef={args.ef or index.ef}"
    elapsed = time.perf_counter() - t0
    if args.output:
        written = _write_results(Path(args.output), ids, values, name)
        print(f"searched {len(queries)} queries (k={args.k}, {how}) in {elapsed * 1e3:.1f} ms; "
              f"wrote {', '.join(map(str, written))}", file=sys.stderr)
        return EXIT_OK
    if args.format == "json":
        con.print(json.dumps({"ids": ids.tolist(), name: [[float(v) for v in row] for row in values]}))
    else:
        for i in range(ids.shape[0]):
            con.print(
                f"{i}\t" + " ".join(str(int(v)) for v in ids[i]) + "\t" + " ".join(f"{float(v):.6g}" for v in values[i])
            )
    return EXIT_OK


def _plot_graph(index: Any, path: Path, out: Path, con: _Console, quiet: bool) -> None:
    """``info --plot``: levels, degrees per layer, upper-layer layout (needs matplotlib)."""
    from ruvector_hnsw.eval.graph_plot import plot_graph

    plot_graph(index.graph(), out, title=f"{path.name}: {len(index)} vectors x {index.dim} dims, space={index.space},"
               f" M={index.M}")
    if not quiet:  # --json keeps stdout pure JSON
        con.print(f"wrote {out}")
    else:
        print(f"wrote {out}", file=sys.stderr)


def cmd_info(args: argparse.Namespace, con: _Console) -> int:
    from ruvector_hnsw.index import HNSWIndex

    path = Path(args.index)
    index = HNSWIndex.load(path, num_threads=args.threads)
    stats = index.graph().stats()
    file_bytes = path.stat().st_size
    summary = {
        "file": str(path),
        "file_bytes": file_bytes,
        "count": len(index),
        "dim": index.dim,
        "space": index.space,
        "M": index.M,
        "ef_construction": index.ef_construction,
        "ef": index.ef,
        "seed": index.seed,
        "graph": stats,
    }
    if args.plot:
        _plot_graph(index, path, Path(args.plot), con, quiet=args.json)
    if args.json:
        con.print(json.dumps(summary, indent=2))
        return EXIT_OK
    con.print(
        f"index {path}: {len(index)} vectors x {index.dim} dims, space={index.space}, M={index.M}, "
        f"ef_construction={index.ef_construction}, ef={index.ef}, seed={index.seed}, "
        f"file {_fmt_bytes(file_bytes)}"
    )
    for line in _graph_report(stats):
        con.print(line)
    return EXIT_OK


def cmd_analyze(args: argparse.Namespace, con: _Console) -> int:
    from ruvector_hnsw.diagnostics import GeometryReport
    from ruvector_hnsw.index import HNSWIndex

    if args.sample < 1:  # checked before the (slow) load; one error line, exit 2
        raise ConfigError(f"--sample must be >= 1, got {args.sample}")
    if args.json:
        _check_json_output(Path(args.json))
    index = HNSWIndex.load(args.index, num_threads=args.threads)
    t0 = time.perf_counter()
    report = GeometryReport.analyze(index, sample=args.sample, seed=args.seed)
    elapsed = time.perf_counter() - t0
    con.print(f"index {args.index}: {len(index)} vectors x {index.dim} dims, space={index.space}, M={index.M}")
    con.print(report.format())
    con.print(f"(analysed in {elapsed:.2f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        con.print(f"wrote {args.json}")
    return EXIT_OK


def _check_json_output(out: Path) -> None:
    if out.suffix.lower() != ".json":
        raise ConfigError(f"--json {out}: the report file must end in .json")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(2, "No such directory", str(parent))


def _apply_protocol(ds: Any, args: argparse.Namespace, con: _Console) -> Any:
    """``--protocol unseen``: the class split of :func:`ruvector_hnsw.datasets.class_split` (``--seed``)."""
    from ruvector_hnsw.datasets import apply_protocol

    protocol = getattr(args, "protocol", "seen")
    if protocol == "seen":
        return ds
    out = apply_protocol(ds, protocol, unseen=args.unseen_fraction, seed=args.seed,
                         hide_seen=getattr(args, "hide_seen", 0.0))
    rec = out.params["class_split"]
    con.print(f"unseen-class protocol: {len(rec['unseen_classes'])} of "
              f"{len(rec['unseen_classes']) + len(rec['seen_classes'])} classes held out (seed {rec['seed']}); "
              f"{rec['n_eval_queries']} evaluation queries of unseen classes, {rec['n_train_queries']} training "
              f"queries of seen classes, {rec['n_base_hidden']} base labels hidden from training"
              + (f" ({rec['hide_seen']:.0%} of the seen classes' too)" if rec["hide_seen"] else ""))
    return out


def cmd_eval(args: argparse.Namespace, con: _Console) -> int:
    from ruvector_hnsw import eval as ev
    from ruvector_hnsw.datasets import load

    t0 = time.perf_counter()
    ds = load(args.dataset, **_dataset_kwargs(args))
    con.print(_dataset_line(ds) + f"  [{time.perf_counter() - t0:.1f} s]")
    ds = _apply_protocol(ds, args, con)
    ds, rows, settings = _run_eval(ds, args.methods, args, con)
    threads = ev.available_threads() if args.threads < 1 else args.threads
    con.print(
        f"k={args.k}, ef={args.ef}, seed={args.seed}, threads={threads}"
        " (QPS: batch of all queries at k; latency: single queries; JIT warm-up excluded)"
    )
    con.print(ev.format_table(rows))
    _training_summary(rows, con)
    _write_outputs(ds, rows, settings, args.json, args.plot, con)
    return EXIT_OK


def _print_epoch(con: _Console, history: Any, i: int, epochs: int) -> None:
    """One line per epoch of a :class:`TrainingHistory`."""
    val = history.val_metric[i] if i < len(history.val_metric) else None
    extra = history.val_metrics[i] if i < len(history.val_metrics) else {}
    alpha = f" (alpha {extra['alpha']:g})" if isinstance(extra, dict) and "alpha" in extra else ""
    val_txt = f"val mAP@R {val:.4f}{alpha}" if val is not None else "no validation"
    con.print(f"  epoch {history.epoch[i] + 1}/{epochs}: loss {history.train_loss[i]:.4f}, {val_txt}, "
              f"{history.epoch_time_s[i]:.1f} s"
              + (f" (+ validation {history.val_time_s[i]:.1f} s)" if i < len(history.val_time_s) else ""))


@dataclass
class _TrainData:
    """What ``train`` fits on, from a dataset or from the user's files."""

    queries: np.ndarray
    labels: np.ndarray | None
    query_labels: np.ndarray | None
    positives: np.ndarray | None
    index: Any
    index_path: Path | None  # the index file (built here, or --index)
    record: dict[str, Any]  # "dataset" + "training_queries" of MODEL.history.json
    title: str
    next_step: str  # the command line that uses the model


_FILE_OPTIONS = ("vectors", "labels", "queries", "query_labels", "positives")


def _train_from_dataset(args: argparse.Namespace, con: _Console, out: Path) -> _TrainData:
    from ruvector_hnsw import eval as ev
    from ruvector_hnsw.datasets import load

    t0 = time.perf_counter()
    ds = load(args.dataset, **_dataset_kwargs(args))
    con.print(_dataset_line(ds) + f"  [{time.perf_counter() - t0:.1f} s]")
    ds, split = ev.ensure_train_split(ds, args.train_queries, seed=args.seed)
    tq, tl, base_labels, info = ev.training_data(ds, args.n_train, seed=args.seed)
    source = ("of the dataset's training queries" if split["train_source"] == "dataset"
              else f"training queries split off the evaluation set (seed {args.seed})")
    con.print(f"training on {info['n_train_queries']} {source}; the evaluation queries are not used")
    index, index_path = _train_index(args, con, out, ds.base, ds.metric, f"the dataset has {ds.n_base} x {ds.dim}")
    size = f" --size {args.size}" if args.size else ""
    if args.train_queries:
        size += f" --train-queries {args.train_queries}"
    return _TrainData(
        tq, base_labels, tl, None, index, index_path,
        {"dataset": ev.dataset_info(ds), "training_queries": {**split, **info}},
        f"{args.mechanism} on {ds.name}: {info['n_train_queries']} training queries",
        f"ruvector-hnsw eval --dataset {args.dataset}{size} --seed {args.seed} --methods hnsw,alpha_qe "
        f"--model {out} --index {index_path}")


def _train_index(args: argparse.Namespace, con: _Console, out: Path, vectors: np.ndarray | None,
                 space: str | None, what: str) -> tuple[Any, Path]:
    """``--index`` (checked against ``vectors`` when given), else an index built over ``vectors`` -> MODEL.rvh."""
    if args.index:
        from ruvector_hnsw.index import HNSWIndex

        index = HNSWIndex.load(args.index, num_threads=args.threads)
        if vectors is not None and (index.dim != vectors.shape[1] or len(index) != vectors.shape[0]):
            raise DimensionMismatchError(f"--index {args.index}: {len(index)} vectors x {index.dim} dims, {what}")
        con.print(f"loaded index {args.index} ({len(index)} vectors x {index.dim} dims, space={index.space})")
        return index, Path(args.index)
    assert vectors is not None
    t0 = time.perf_counter()
    index = _build_index(vectors, space=space or "l2", M=args.M, ef_construction=args.ef_construction,
                         seed=args.seed, num_threads=args.threads, ef=None, progress=con.progress)
    index_path = out.with_name(out.name + ".rvh")
    index.save(index_path)
    con.print(f"built HNSW index over {len(index)} vectors (space={index.space}) in "
              f"{time.perf_counter() - t0:.2f} s -> {index_path}")
    return index, index_path


def _train_from_files(args: argparse.Namespace, con: _Console, out: Path) -> _TrainData:
    """``--vectors``/``--index``, ``--queries`` and ``--labels`` + ``--query-labels`` or ``--positives``."""
    from ruvector_hnsw.datasets import encode_labels, read_labels, read_positives
    from ruvector_hnsw.errors import ShapeMismatchError, UnknownIdError

    if args.queries is None:
        raise ConfigError("training on files needs --queries FILE (the training queries)")
    if args.positives is not None and (args.labels or args.query_labels):
        raise ConfigError("give either --positives, or --labels with --query-labels, not both")
    if args.positives is None and not (args.labels and args.query_labels):
        raise ConfigError("training on files needs --labels and --query-labels (one label per vector and per "
                          "query), or --positives (the relevant ids of each query)")
    if args.vectors is None and not args.index:
        raise ConfigError("training on files needs --vectors FILE (an index is built over them) or --index FILE")
    if args.size is not None or args.train_queries is not None:
        raise ConfigError("--size and --train-queries apply to --dataset only")
    vectors, declared = _read_vectors(args.vectors, "base") if args.vectors else (None, None)
    queries, _ = _read_vectors(args.queries, "queries")
    what = f"--vectors {args.vectors} has {vectors.shape[0]} x {vectors.shape[1]}" if vectors is not None else ""
    index, index_path = _train_index(args, con, out, vectors, args.metric or declared, what)
    if queries.shape[1] != index.dim:
        raise DimensionMismatchError(
            f"--queries {args.queries}: queries have dimension {queries.shape[1]}, the index has {index.dim}")
    nq, ids = queries.shape[0], index.graph().labels
    labels = query_labels = positives = None
    vocab: list[str] | None = None
    if args.positives is not None:
        positives = read_positives(args.positives)
        if positives.shape[0] != nq:
            raise ShapeMismatchError(f"--positives {args.positives} has {positives.shape[0]} lines (queries), "
                                     f"--queries {args.queries} has {nq} queries")
        unknown = np.setdiff1d(positives[positives >= 0], ids)
        if unknown.size:
            raise UnknownIdError(f"--positives {args.positives}: id {int(unknown[0])} is not in the index "
                                 f"({len(index)} items)")
    else:
        raw, qraw = read_labels(args.labels), read_labels(args.query_labels)
        n_items = vectors.shape[0] if vectors is not None else int(ids.max(initial=-1)) + 1
        if raw.shape[0] != n_items:
            where = (f"--vectors {args.vectors} has {n_items} vectors" if vectors is not None
                     else f"the index has ids 0..{n_items - 1}")
            raise ShapeMismatchError(f"--labels {args.labels} has {raw.shape[0]} labels, {where}")
        if qraw.shape[0] != nq:
            raise ShapeMismatchError(f"--query-labels {args.query_labels} has {qraw.shape[0]} labels, "
                                     f"--queries {args.queries} has {nq} queries")
        (labels, query_labels), vocab = encode_labels(raw, qraw)
    keep = np.arange(nq)
    if args.n_train is not None and args.n_train < nq:
        keep = np.sort(np.random.default_rng(args.seed).choice(nq, args.n_train, replace=False))
    kind = "positives" if positives is not None else "labels"
    con.print(f"training on {keep.size} of {nq} queries of {args.queries} ({kind}"
              + (f"; {len(vocab)} string labels mapped to 0..{len(vocab) - 1}" if vocab else "") + ")")
    files = {name: getattr(args, name) for name in (*_FILE_OPTIONS, "index") if getattr(args, name)}
    record = {"dataset": {"name": "files", "files": files, "n_base": len(index), "dim": index.dim,
                          "metric": index.space},
              "training_queries": {"train_source": "files", "n_train_queries": int(keep.size),
                                   "n_queries_in_file": nq, "relevance": kind, "label_vocabulary": vocab}}
    return _TrainData(
        queries[keep], labels, None if query_labels is None else query_labels[keep],
        None if positives is None else positives[keep], index, index_path, record,
        f"{args.mechanism} on {Path(args.queries).name}: {keep.size} training queries",
        f"ruvector-hnsw query {index_path} QUERIES --model {out} -k 10")


def _train_data(args: argparse.Namespace, con: _Console, out: Path) -> _TrainData:
    from_files = [f"--{name.replace('_', '-')}" for name in _FILE_OPTIONS if getattr(args, name) is not None]
    if args.dataset and from_files:
        raise ConfigError(f"--dataset or your own files ({', '.join(from_files)}), not both")
    if args.dataset:
        return _train_from_dataset(args, con, out)
    if not from_files:
        raise ConfigError("train needs --dataset NAME_OR_FILE, or your own files: --vectors (or --index), "
                          "--queries, and --labels + --query-labels or --positives")
    return _train_from_files(args, con, out)


def _toolkit_options(args: argparse.Namespace) -> dict[str, Any]:
    """The training-toolkit flags of ``train`` as :meth:`AttentionSearch.fit` keywords."""
    return {"loss": args.loss, "margin": args.margin, "local_weight": args.local_weight, "miner": args.miner,
            "curriculum": args.curriculum, "regularizer": args.regularizer, "reg_weight": args.reg_weight,
            "optimizer": args.optimizer}


def cmd_train(args: argparse.Namespace, con: _Console) -> int:
    from ruvector_hnsw import eval as ev
    from ruvector_hnsw.search import AttentionSearch

    t_all = time.perf_counter()
    out = Path(args.out)
    if out.suffix in (".npz", ".json"):
        out = out.with_suffix("")
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    data = _train_data(args, con, out)
    model = AttentionSearch(data.index, args.mechanism, candidates=args.candidates, expand=args.expand,
                            seed=args.seed, num_threads=args.threads, code_dtype=args.code_dtype)
    con.print(f"fitting {args.mechanism} (candidates={args.candidates}, expand={args.expand}, "
              f"epochs={args.epochs}, batch={args.batch_size}, lr={args.lr}, threads={model.num_threads})")
    t0 = time.perf_counter()
    history = model.fit(data.queries, labels=data.labels, query_labels=data.query_labels, positives=data.positives,
                        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, progress=con.progress,
                        **_toolkit_options(args))
    fit_s = time.perf_counter() - t0
    if history.initial_metric is not None:
        con.print(f"  before training: val mAP@R {history.initial_metric:.4f} (the HNSW ranking)")
    for i in range(len(history.epoch)):
        _print_epoch(con, history, i, args.epochs)
    per_epoch = float(np.mean(history.epoch_time_s)) if history.epoch_time_s else float("nan")
    best = history.best_epoch
    con.print(f"fit in {fit_s:.1f} s: {per_epoch:.2f} s per epoch (training steps) over {len(history.epoch)} "
              f"epoch(s); best epoch {best + 1 if best is not None and best >= 0 else 'none (initial)'}"
              + (f", val mAP@R {history.best_metric:.4f}" if history.best_metric is not None else "")
              + (" (stopped early)" if history.stopped_early else ""))
    model.save(out)
    con.print(f"wrote model {out}.npz + {out}.json")
    doc = {
        "dataset": data.record["dataset"],
        "mechanism": args.mechanism,
        "model": str(out),
        "index": str(data.index_path),
        "settings": {"candidates": args.candidates, "expand": args.expand, "epochs": args.epochs,
                     "code_dtype": args.code_dtype, "code_memory_bytes": model.memory_bytes()["total"],
                     "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed, "threads": model.num_threads,
                     "M": args.M, "ef_construction": args.ef_construction, **_toolkit_options(args)},
        "training_queries": data.record["training_queries"],
        "fit_s": fit_s,
        "time_per_epoch_s": per_epoch,
        "history": history.to_dict(),
        "epochs": [
            {"epoch": int(e) + 1, "train_loss": history.train_loss[i],
             "val_map_at_r": history.val_metric[i] if i < len(history.val_metric) else None,
             "epoch_time_s": history.epoch_time_s[i],
             "val_time_s": history.val_time_s[i] if i < len(history.val_time_s) else None}
            for i, e in enumerate(history.epoch)
        ],
    }
    hist_path = out.with_name(out.name + ".history.json")
    from ruvector_hnsw.eval.report import to_jsonable

    hist_path.write_text(json.dumps(to_jsonable(doc), indent=2) + "\n", encoding="utf-8")
    con.print(f"wrote {hist_path}")
    if not args.no_plot:
        curve = out.with_name(out.name + ".curve.png")
        try:
            ev.plot_training_curve(history.to_dict(), curve, title=data.title)
            con.print(f"wrote {curve}")
        except RuvectorError as exc:
            con.print(f"no plot: {exc}")
    con.print(f"use it: {data.next_step}")
    con.print(f"done in {time.perf_counter() - t_all:.1f} s")
    return EXIT_OK


#: the directory holding the installed ``ruvector_hnsw`` package (its parent is a checkout's root)
_PACKAGE_DIR = Path(__file__).resolve().parent
_NEEDS_CHECKOUT = (
    "bench needs a source checkout of ruvector-hnsw: the benchmark scripts (benchmarks/bench_*.py) are not "
    "installed with the package; run it from a clone of the repository or an unpacked source distribution "
    "(the sdist, ruvector_hnsw-VERSION.tar.gz, carries benchmarks/), or pass --dir PATH/TO/benchmarks"
)


def _checkout_benchmarks(root: Path) -> Path | None:
    """``root/benchmarks`` if ``root`` is a ruvector-hnsw source tree (pyproject.toml + bench scripts)."""
    bdir = root / "benchmarks"
    try:
        pyproject = (root / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return None
    if 'name = "ruvector-hnsw"' not in pyproject or not any(bdir.glob("bench_*.py")):
        return None
    return bdir


def _find_benchmarks(directory: str | None) -> Path:
    """The benchmarks directory: ``--dir``, else the source tree this package runs from or the cwd.

    Raises
    ------
    FileNotFoundError
        If ``--dir`` names no directory.
    ConfigError
        If no ``--dir`` is given and neither the package's parent nor the working directory is a
        source checkout (an installed wheel ships no benchmark scripts).
    """
    if directory:
        d = Path(directory)
        if not d.is_dir():
            raise FileNotFoundError(2, "No such benchmarks directory", str(d))
        return d
    for root in (_PACKAGE_DIR.parent, Path.cwd()):
        found = _checkout_benchmarks(root)
        if found is not None:
            return found
    raise ConfigError(_NEEDS_CHECKOUT)


def cmd_bench(args: argparse.Namespace, con: _Console) -> int:
    bdir = _find_benchmarks(args.dir)
    scripts = sorted(bdir.glob("bench_*.py"))
    if args.only:
        wanted = {w.strip() for w in args.only.split(",") if w.strip()}
        scripts = [s for s in scripts if s.stem in wanted or s.stem.removeprefix("bench_") in wanted]
        missing = wanted - {s.stem for s in scripts} - {s.stem.removeprefix("bench_") for s in scripts}
        if missing:
            raise ConfigError(f"no benchmark script named {sorted(missing)} in {bdir}")
    if not scripts:
        raise ConfigError(f"no bench_*.py scripts in {bdir}")
    with tempfile.TemporaryDirectory(prefix="ruvector-bench-") as tmp:
        out_dir = Path(args.out_dir) if args.out_dir else Path(tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        return _run_bench_scripts(scripts, out_dir, args.quick, con)


def _run_bench_scripts(scripts: list[Path], out_dir: Path, quick: bool, con: _Console) -> int:
    summary: list[tuple[str, int, float, dict[str, Any] | None]] = []
    for script in scripts:
        cmd = [sys.executable, str(script)]
        text = script.read_text(encoding="utf-8", errors="replace")
        if quick and "--quick" in text:
            cmd.append("--quick")
        json_path: Path | None = None
        if "--json" in text:
            json_path = out_dir / f"{script.stem}.json"
            cmd += ["--json", str(json_path)]
        con.print(f"== {script.name} {' '.join(cmd[2:])}".rstrip())
        t0 = time.perf_counter()
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:  # stream: full benchmarks run for minutes
                con.print(line.rstrip("\n"))
            returncode = proc.wait()
        elapsed = time.perf_counter() - t0
        figures = None
        if json_path is not None and json_path.exists():
            try:
                figures = json.loads(json_path.read_text())
            except ValueError:
                figures = None
        summary.append((script.name, returncode, elapsed, figures))
    con.print("")
    con.print("benchmark summary (ratios are measured against a reference in the same run):")
    failed = 0
    for name, rc, elapsed, figures in summary:
        status = "ok" if rc == 0 else f"FAILED (exit {rc})"
        failed += rc != 0
        ratios = ""
        if isinstance(figures, dict):
            ratios = "  " + ", ".join(
                f"{k}={v:.3g}" for k, v in figures.items()
                if isinstance(v, (int, float)) and ("ratio" in k or "_vs_" in k)
            )
        con.print(f"  {name:<28} {status:<16} {elapsed:7.1f} s{ratios}")
    if failed:
        print(f"error: {failed} benchmark script(s) failed", file=sys.stderr)
        return EXIT_INTERNAL
    return EXIT_OK


def cmd_demo(args: argparse.Namespace, con: _Console) -> int:
    from ruvector_hnsw import eval as ev
    from ruvector_hnsw.datasets import load

    t_all = time.perf_counter()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    con.print(f"ruvector-hnsw demo -> {out_dir}/")

    t0 = time.perf_counter()
    ds = load(args.dataset, **_dataset_kwargs(args))
    con.print(f"[1/5] {_dataset_line(ds)}  [{time.perf_counter() - t0:.1f} s]")

    t0 = time.perf_counter()
    index = _build_index(
        ds.base,
        space=ds.metric,
        M=args.M,
        ef_construction=args.ef_construction,
        seed=args.seed,
        num_threads=args.threads,
        ef=args.ef,
        progress=con.progress,
    )
    build_s = time.perf_counter() - t0
    index_path = out_dir / "index.rvh"
    index.save(index_path)
    con.print(
        f"[2/5] built HNSW index (M={args.M}, ef_construction={args.ef_construction}, seed={args.seed}) "
        f"in {build_s:.2f} s, saved to {index_path}"
    )

    t0 = time.perf_counter()
    graph = index.graph()
    export_s = time.perf_counter() - t0
    graph_path = out_dir / "graph.npz"
    _export_graph(graph, graph_path)
    con.print(f"[3/5] exported the exact graph in {export_s * 1e3:.0f} ms -> {graph_path}")
    for line in _graph_report(graph.stats()):
        con.print("      " + line)

    methods = _method_names(args.methods)
    con.print(f"[4/5] evaluating {methods} (k={args.k}, ef={args.ef}; trained methods: train, then rerank)")
    ds, rows, settings = _run_eval(ds, methods, args, con, index=index)
    settings.update({"index_build_s": round(build_s, 3), "graph_export_s": round(export_s, 4)})
    con.print(ev.format_table(rows))
    _training_summary(rows, con)

    json_path = out_dir / "results.json"
    plot_path = out_dir / "results.png"
    con.print("[5/5] writing results")
    try:
        _write_outputs(ds, rows, settings, str(json_path), str(plot_path), con)
    except RuvectorError as exc:  # e.g. matplotlib missing: the JSON is written, say why no plot
        con.print(f"      no plot: {exc}")
    con.print(f"done in {time.perf_counter() - t_all:.1f} s")
    return EXIT_OK


# ============================================================================ parser
def _positive_int(text: str) -> int:
    try:
        val = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if val < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return val


def _add_index_params(p: argparse.ArgumentParser, seed_default: int) -> None:
    g = p.add_argument_group("HNSW parameters")
    g.add_argument("--M", type=_positive_int, default=16, help="links per node (2M on layer 0; default 16)")
    g.add_argument(
        "--ef-construction", type=_positive_int, default=200, dest="ef_construction",
        help="candidate list size while building (default 200)",
    )
    g.add_argument("--seed", type=int, default=seed_default, help=f"random seed (default {seed_default})")


def _add_eval_params(p: argparse.ArgumentParser, dataset_default: str | None, methods_default: str) -> None:
    g = p.add_argument_group("dataset")
    if dataset_default is None:
        g.add_argument(
            "--dataset", required=True,
            help="clusters | hierarchical | manifolds | digits (optionally NAME:SIZE) or a file "
            "(.fvecs/.bvecs/.npy with TEXMEX siblings, .npz, .hdf5)",
        )
    else:
        g.add_argument("--dataset", default=dataset_default, help=f"built-in name or file (default {dataset_default})")
    g.add_argument("--size", choices=("tiny", "small", "default", "large"), help="size of a built-in dataset")
    g.add_argument("--n-queries", type=_positive_int, dest="n_queries", help="number of evaluation queries")
    g.add_argument("--metric", choices=_SPACES, help="override the dataset metric")
    e = p.add_argument_group("evaluation")
    e.add_argument(
        "--methods", default=methods_default,
        help=f"comma-separated method names, options after colons (e.g. hnsw:ef=32, local_global:epochs=4:expand=2), "
        f"or 'all' (every registered method; trains every attention mechanism, slow) (default {methods_default})",
    )
    e.add_argument("--k", "-k", type=_positive_int, default=10, help="cut-off for recall and timing (default 10)")
    e.add_argument("--code-dtype", choices=_CODE_DTYPES, dest="code_dtype",
                   help="code_dtype of every attention method that does not set one in its spec "
                   "(e.g. local_global:code_dtype=int8)")
    e.add_argument("--ef", type=_positive_int, default=128, help="HNSW search breadth (default 128)")
    e.add_argument(
        "--max-results", type=_positive_int, dest="max_results",
        help="cap the result lists asked for labelled metrics (default: max R)",
    )
    e.add_argument(
        "--latency-queries", type=int, default=200, dest="latency_queries",
        help="single-query calls for latency percentiles (default 200; 0 skips)",
    )
    _add_train_split(p)
    _add_index_params(p, 0)


def _add_train_split(p: Any) -> None:
    p.add_argument(
        "--train-queries", type=_positive_int, dest="train_queries",
        help="trained methods on a dataset without training queries: move this many evaluation queries "
        "into a disjoint training set first (default: half, at most 2000)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ruvector-hnsw`` (exposed for documentation and tests)."""
    def common_options(top: bool) -> argparse.ArgumentParser:
        # the subcommands repeat the global options (so they work after the command too) with
        # SUPPRESS defaults, which keeps a value given before the command
        c = argparse.ArgumentParser(add_help=False)
        c.add_argument(
            "-v", "--verbose", action="store_true", default=False if top else argparse.SUPPRESS,
            help="show tracebacks of errors",
        )
        c.add_argument(
            "--threads", type=int, default=-1 if top else argparse.SUPPRESS,
            help="threads for index build/search and FAISS (default -1: all cores)",
        )
        c.add_argument(
            "--progress", choices=("auto", "always", "never"), default="auto" if top else argparse.SUPPRESS,
            help="progress bars with rates on stderr for build, fit, eval and search (default auto: when stderr "
            "is a terminal and tqdm is installed)",
        )
        c.add_argument(
            "--no-progress", dest="progress", action="store_const", const="never", default=argparse.SUPPRESS,
            help="no progress bars (same as --progress never)",
        )
        return c

    common = common_options(top=False)

    parser = argparse.ArgumentParser(
        prog="ruvector-hnsw",
        description="Attention-aware nearest-neighbour search over an exact HNSW graph: build and query "
        "indexes, inspect their graph, and measure retrieval quality and speed.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common_options(top=True)],
    )
    from ruvector_hnsw import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, help_: str, epilog: str, fn: Callable[[argparse.Namespace, _Console], int]) -> Any:
        p = sub.add_parser(
            name, help=help_, description=help_, epilog=epilog, parents=[common],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(func=fn)
        return p

    p = add(
        "build", "build an HNSW index from a vector file and save it",
        "example:\n  ruvector-hnsw build data/sift_base.fvecs -o sift.rvh --space l2 --M 16\n"
        "  ruvector-hnsw build clusters:small -o clusters.rvh      # a built-in dataset's base",
        cmd_build,
    )
    p.add_argument("vectors", help="base vectors: .fvecs/.bvecs/.npy/.npz/.hdf5 or a built-in dataset name")
    p.add_argument("-o", "--output", required=True, help="index file to write")
    p.add_argument("--space", choices=_SPACES, help="distance (default l2; a built-in dataset's own metric)")
    p.add_argument("--ef", type=_positive_int, help="default search ef stored with the index")
    p.add_argument("--max-rows", type=_positive_int, dest="max_rows", help="index only the first N vectors")
    _add_index_params(p, 100)

    p = add(
        "query", "search a saved index; write ids/distances to .npz/.npy or print them",
        "examples:\n  ruvector-hnsw query sift.rvh data/sift_query.fvecs -k 10 -o result.npz\n"
        "  ruvector-hnsw query sift.rvh q.npy -k 5            # prints: query<TAB>ids<TAB>distances\n"
        "  ruvector-hnsw query models/lg.rvh q.npy --model models/lg -k 10 -o reranked.npz   # ids + scores\n\n"
        "with --model the scores are the model's (higher = better), else distances (lower = better).",
        cmd_query,
    )
    p.add_argument("index", help="index file written by 'build'")
    p.add_argument("queries", help="query vectors (same formats as build; .npz uses 'queries', .hdf5 'test')")
    p.add_argument("-k", "--k", type=_positive_int, default=10, help="neighbours per query (default 10)")
    p.add_argument("--ef", type=_positive_int, help="search breadth (default: the index's ef)")
    p.add_argument("-o", "--output", help="OUT.npz (ids + distances, or + scores with --model) or OUT.npy (ids; "
                   "OUT_distances.npy / OUT_scores.npy beside)")
    p.add_argument("--format", choices=("tsv", "json"), default="tsv", help="stdout format without -o")
    m = p.add_argument_group("re-ranking with a trained model")
    m.add_argument("--model", help="MODEL saved by 'train' (MODEL.npz + MODEL.json): re-rank with it; it must "
                   "belong to INDEX (same dimension, space and items), else an error")
    m.add_argument("--candidates", type=_positive_int, help="HNSW candidates re-scored (default: the model's)")
    m.add_argument("--expand", type=int, help="expansion rounds (default: the model's)")

    p = add(
        "info", "print index parameters and graph statistics (levels, degrees, memory)",
        "examples:\n  ruvector-hnsw info sift.rvh --json\n  ruvector-hnsw info sift.rvh --plot graph.png", cmd_info,
    )
    p.add_argument("index", help="index file written by 'build'")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--plot", metavar="PNG", help="also draw the graph: levels histogram, degree distribution per "
                   "layer, 2-D layout (PCA) of the upper layers with their links (needs matplotlib)")

    p = add(
        "analyze", "measure the geometry of a saved index's graph and recommend an attention mechanism",
        "examples:\n  ruvector-hnsw analyze sift.rvh\n  ruvector-hnsw analyze sift.rvh --sample 1024 --seed 1 --json "
        "report.json\n\nMetrics (each graded healthy / warning / critical): sliced-Wasserstein distance between "
        "linked\nneighbourhoods vs random pairs, boundary mass of the context windows, Gromov delta of the hop "
        "metric,\nlevel occupancy vs hnswlib's law, Dirichlet energy of the vectors on the links, entropy of an "
        "untrained\nmechanism; then a health score in [0, 1] and a family (standard, sparse, geometric, diffusion,\n"
        "transport) with the mechanisms to try and the reasons. See ruvector_hnsw.diagnostics.",
        cmd_analyze,
    )
    p.add_argument("index", help="index file written by 'build'")
    p.add_argument("--sample", type=int, default=512, help="neighbourhoods sampled (default 512)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample and the projections (default 0)")
    p.add_argument("--json", metavar="OUT.json", help="also write the report as JSON")

    p = add(
        "eval", "evaluate search methods on a dataset: table, JSON, plot",
        "examples:\n"
        "  ruvector-hnsw eval --dataset clusters --methods exact,hnsw,alpha_qe,dba --json o.json --plot o.png\n"
        "  ruvector-hnsw eval --dataset digits --methods hnsw,alpha_qe,local_global:epochs=4:expand=2,linear_proj\n"
        "  ruvector-hnsw eval --dataset clusters --methods hnsw --model models/lg --index models/lg.rvh\n"
        "  ruvector-hnsw eval --dataset glove-25-angular.hdf5 --methods hnsw:ef=16,hnsw:ef=64,hnsw:ef=256\n"
        "  ruvector-hnsw eval --dataset clusters --protocol unseen --methods hnsw,diffusion,linear_proj,mlp_adapter\n\n"
        "JSON: {\"dataset\": {...}, \"results\": [{\"method\", \"map_at_r\", \"p_at_1\", \"recall_at_10\", \"qps\", "
        "\"p50_ms\", \"p95_ms\", ...}], \"settings\": {...}}\nrecall_at_10 is ANN recall (ann-benchmarks); "
        "hit_rate_at_10 is metric-learning Recall@10.\n\n"
        "Trained methods (every attention mechanism by name, linear_proj, mlp_adapter, label_classifier) fit on\n"
        "the dataset's training queries; a dataset without them gets --train-queries evaluation queries moved\n"
        "into a disjoint training set. --protocol unseen evaluates on classes whose labels training never sees\n"
        "(label_classifier refuses it).",
        cmd_eval,
    )
    _add_eval_params(p, None, _DEFAULT_METHODS)
    p.add_argument(
        "--protocol", choices=("seen", "unseen"), default="seen",
        help="seen (default): evaluation and training share the classes; unseen: classes are split with --seed, "
        "training sees only seen classes (unseen-class base labels hidden), evaluation queries are of unseen "
        "classes only",
    )
    p.add_argument(
        "--unseen-fraction", type=float, default=0.3, dest="unseen_fraction",
        help="share of the classes held out by --protocol unseen (default 0.3)",
    )
    p.add_argument(
        "--hide-seen", type=float, default=0.0, dest="hide_seen",
        help="--protocol unseen: also hide the labels of this share of the seen classes' base items (default 0), "
        "so that unlabelled items are not exactly the unseen classes' items",
    )
    p.add_argument("--json", help="write results to this JSON file")
    p.add_argument("--plot", help="write a quality-vs-QPS plot (PNG) to this file")
    p.add_argument("--index", help="search this saved index (built on the dataset's base) instead of building one")
    p.add_argument(
        "--model", action="append", metavar="MODEL",
        help="also evaluate a model saved by 'train' (repeatable; adds the method model:path=MODEL)",
    )
    r = p.add_argument_group("Ray (the ray extra)")
    r.add_argument(
        "--ray", metavar="ADDRESS",
        help="evaluate on a Ray cluster: the queries split into shards over workers that load the methods once; "
        "the metrics equal the single-process run. ADDRESS: local (start one on this machine), auto (the "
        "cluster of 'ray start --head' here) or HOST:PORT / ray://HOST:10001",
    )
    r.add_argument("--ray-workers", type=_positive_int, dest="ray_workers",
                   help="query shards / worker actors (default: the cluster's CPUs)")
    r.add_argument("--shared-dir", dest="shared_dir",
                   help="ship the methods as a pickle in this directory every node can read (default: object store)")

    p = add(
        "train", "fit an attention reranker on training queries (a dataset's, or your own files); save the model",
        "examples:\n"
        "  ruvector-hnsw train --dataset clusters --mechanism local_global --epochs 4 --out models/lg\n"
        "  ruvector-hnsw train --dataset digits --mechanism rope --index digits.rvh --out models/rope\n"
        "  ruvector-hnsw train --vectors base.fvecs --labels base_labels.txt --queries learn.npy \\\n"
        "      --query-labels learn_labels.txt --out models/mine      # builds models/mine.rvh\n"
        "  ruvector-hnsw train --index sift.rvh --queries learn.fvecs --positives relevant.txt --out models/sift\n\n"
        "Training data: either --dataset (a built-in name or a labelled dataset file), or your own files:\n"
        "  --vectors (the items; item i has id i) and/or --index (train against this saved index instead of\n"
        "  building one; with --vectors too, they must be its items), --queries (training queries), and\n"
        "  either --labels + --query-labels (relevant = same label) or --positives (relevant ids per query).\n"
        "Labels: .npy, or a text file with one label per line (strings allowed: mapped to integers with one\n"
        "vocabulary over both files; integer labels < 0 mean unknown). Positives: .npy (n_queries, p) of ids\n"
        "with -1 padding, or a text file with one whitespace-separated id list per line.\n\n"
        "writes MODEL.npz + MODEL.json (AttentionSearch.save), MODEL.rvh (the index, when built here),\n"
        "MODEL.history.json (per-epoch loss, validation mAP@R, times) and MODEL.curve.png.\n"
        "With --dataset, evaluation queries are never used: training uses the dataset's training queries (or,\n"
        "if it has none, queries split off the evaluation set with the same --seed that 'eval' uses).",
        cmd_train,
    )
    g = p.add_argument_group("dataset")
    g.add_argument("--dataset", help="clusters | hierarchical | manifolds | digits or a labelled file")
    g.add_argument("--size", choices=("tiny", "small", "default", "large"), help="size of a built-in dataset")
    g.add_argument("--n-queries", type=_positive_int, dest="n_queries", help="number of evaluation queries")
    g.add_argument("--metric", choices=_SPACES, help="override the dataset metric (files: the index space, "
                   "default the file's own or l2)")
    _add_train_split(g)
    g.add_argument("--n-train", type=_positive_int, dest="n_train",
                   help="use a seeded random subset of at most N training queries")
    f = p.add_argument_group("your own files (instead of --dataset)")
    f.add_argument("--vectors", help="item vectors (.fvecs/.bvecs/.npy/.npz/.hdf5); an index is built over them "
                   "unless --index is given")
    f.add_argument("--labels", help="one label per item (.npy or text, one per line)")
    f.add_argument("--queries", help="training queries (same formats as --vectors; .npz 'queries', .hdf5 'test')")
    f.add_argument("--query-labels", dest="query_labels", help="one label per training query (.npy or text)")
    f.add_argument("--positives", help="instead of labels: relevant ids per query (.npy (nq, p), -1 padded, or "
                   "text: one id list per line)")
    t = p.add_argument_group("model")
    from ruvector_hnsw.attention import MECHANISMS

    t.add_argument("--mechanism", default="local_global", choices=sorted(MECHANISMS),
                   help="attention mechanism (default local_global)")
    t.add_argument("--epochs", type=_positive_int, default=8, help="training epochs (default 8; early stopping)")
    t.add_argument("--candidates", type=_positive_int, default=100, help="HNSW candidates re-scored (default 100)")
    t.add_argument("--expand", type=int, default=1, help="expansion rounds at search time (default 1)")
    t.add_argument("--batch-size", type=_positive_int, default=128, dest="batch_size", help="default 128")
    t.add_argument("--lr", type=float, default=1e-2, help="learning rate (default 0.01)")
    k = p.add_argument_group("training toolkit (see AttentionSearch.fit)")
    k.add_argument("--loss", default="infonce", choices=("infonce", "triplet", "local_contrastive"),
                   help="pool loss (default infonce)")
    k.add_argument("--margin", type=float, default=0.2, help="triplet / semi-hard margin (default 0.2)")
    k.add_argument("--local-weight", type=float, default=1.0, dest="local_weight",
                   help="weight of the graph-local term of --loss local_contrastive (default 1)")
    k.add_argument("--miner", default="hard", choices=("hard", "semihard", "random"),
                   help="hard-negative miner of each epoch (default hard)")
    k.add_argument("--curriculum", help="stages 'epochs/temperature/negatives' joined by '+', e.g. 2/0.2/8+4/0.07/32")
    k.add_argument("--regularizer", choices=("laplacian",), help="term on the codes (laplacian: smooth over links)")
    k.add_argument("--reg-weight", type=float, default=0.1, dest="reg_weight", help="regularizer weight (default 0.1)")
    k.add_argument("--optimizer", default="adam", choices=("adam", "adamw", "sgd", "natural"),
                   help="default adam; natural = diagonal-Fisher natural gradient")
    t.add_argument("--code-dtype", default="float32", choices=_CODE_DTYPES, dest="code_dtype",
                   help="storage of the code cache and latent index at search time (training is float32 either "
                   "way; int8: ~4x+ smaller; default float32)")
    t.add_argument("--index", help="train against this saved index (over the dataset's base or --vectors); "
                   "default: build one and save it as MODEL.rvh")
    t.add_argument("--out", "-o", required=True, help="model path stem (MODEL -> MODEL.npz, MODEL.json, ...)")
    t.add_argument("--no-plot", action="store_true", dest="no_plot", help="skip the validation-curve PNG")
    _add_index_params(p, 0)

    p = add(
        "bench", "run the benchmark scripts (benchmarks/bench_*.py) and summarise their ratios",
        "examples:\n  ruvector-hnsw bench --quick\n  ruvector-hnsw bench --only index --out-dir bench_out",
        cmd_bench,
    )
    p.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    p.add_argument("--only", help="comma-separated script names (e.g. index or bench_index)")
    p.add_argument("--dir", help="benchmarks directory (default: benchmarks/ of the source checkout; "
                                 "an installed wheel has none)")
    p.add_argument("--out-dir", dest="out_dir", help="keep each script's JSON figures here (default: a temp dir)")

    p = add(
        "demo", "the built-in scenario end to end: index, graph export, every method, table + JSON + PNG",
        "example:\n  ruvector-hnsw demo --out-dir demo_out", cmd_demo,
    )
    _add_eval_params(p, "clusters", _DEMO_METHODS)
    p.add_argument("--out-dir", dest="out_dir", default="demo_out", help="output directory (default ./demo_out)")
    return parser


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None and exc.strerror:
        name = exc.filename if exc.filename is not None else ""
        return f"{name}: {exc.strerror}" if name else exc.strerror
    if isinstance(exc, KeyError) and not isinstance(exc, RuvectorError):
        return f"missing key {exc}"
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.splitlines())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (0 ok, 2 user error, 1 internal error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:  # --help, --version, usage errors (argparse printed the message)
        return int(exc.code) if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_USER)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return EXIT_USER
    con = _Console(_progress_enabled(args))
    try:
        return int(args.func(args, con) or EXIT_OK)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except (RuvectorError, OSError, MemoryError) as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"error: {_error_text(exc)}", file=sys.stderr)
        return EXIT_USER
    except Exception as exc:
        if args.verbose:
            traceback.print_exc()
            hint = ""
        else:
            hint = " (run with --verbose for the traceback)"
        print(f"error: {type(exc).__name__}: {_error_text(exc)}{hint}", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
