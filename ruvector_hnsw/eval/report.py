"""Reports of evaluation runs: a terminal table, a JSON file, a quality-vs-QPS plot.

JSON layout (the contract of ``ruvector-hnsw eval --json``)::

    {"dataset": {"name": ..., "metric": ..., "n_base": ..., ...},
     "results": [{"method": "hnsw", "map_at_r": 0.51, "recall_at_10": 0.98, "qps": 12000.0, ...}, ...],
     ...optional extra top-level keys (e.g. "settings")}

NaN and infinities become ``null``; numpy scalars and arrays become python numbers and lists.
The plot needs matplotlib (optional extra ``plot``); without it :func:`plot_quality_vs_qps`
raises :class:`~ruvector_hnsw.errors.MissingDependencyError`.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ruvector_hnsw.errors import FileFormatError, InvalidInputError, MissingDependencyError

__all__ = [
    "DEFAULT_COLUMNS",
    "add_relative",
    "format_table",
    "plot_quality_vs_qps",
    "plot_training_curve",
    "print_table",
    "read_json",
    "to_jsonable",
    "write_json",
]

#: Columns of the terminal table (missing ones are skipped, all-None ones dropped).
DEFAULT_COLUMNS: tuple[str, ...] = (
    "method",
    "map_at_r",
    "map_at_100",
    "p_at_1",
    "r_precision",
    "mrr",
    "ndcg_at_10",
    "hit_rate_at_10",
    "recall_at_10",
    "qps",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "threads",
)

_HEADERS = {
    "method": "method",
    "map_at_r": "mAP@R",
    "map_at_100": "mAP@100",
    "p_at_1": "P@1",
    "p_at_10": "P@10",
    "r_precision": "R-prec",
    "mrr": "MRR",
    "ndcg_at_10": "nDCG@10",
    "hit_rate_at_10": "Hit@10",
    "recall_at_10": "ANN-R@10",
    "qps": "QPS",
    "p50_ms": "p50 ms",
    "p95_ms": "p95 ms",
    "p99_ms": "p99 ms",
    "mean_ms": "mean ms",
    "threads": "thr",
    "qps_ratio": "QPS/ref",
    "map_at_r_delta": "dmAP@R",
    "recall_at_10_delta": "dR@10",
    "n_queries": "nq",
}


def add_relative(
    results: Sequence[Mapping[str, Any]],
    reference: str = "hnsw",
    keys: Sequence[str] = ("map_at_r", "recall_at_10"),
) -> list[dict[str, Any]]:
    """Copies of the rows with ratios against a reference method of the same run.

    Adds ``qps_ratio`` (``qps / qps_ref``) and ``<key>_delta`` (``value - value_ref``) for each
    quality key; None where either side is missing.  Rows are returned unchanged (copied)
    when no row is named ``reference``.
    """
    ref = next((r for r in results if r.get("method") == reference), None)
    out = [dict(r) for r in results]
    if ref is None:
        return out
    for row in out:
        q, qr = row.get("qps"), ref.get("qps")
        row["qps_ratio"] = float(q) / float(qr) if q is not None and qr not in (None, 0) else None
        for key in keys:
            v, vr = row.get(key), ref.get(key)
            row[f"{key}_delta"] = float(v) - float(vr) if v is not None and vr is not None else None
    return out


def to_jsonable(obj: Any) -> Any:
    """Convert numpy types, tuples and non-finite floats into plain JSON values (NaN/inf -> None)."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [to_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def write_json(
    path: str | os.PathLike[str],
    dataset: Mapping[str, Any] | Any,
    results: Sequence[Mapping[str, Any]],
    **extra: Any,
) -> Path:
    """Write ``{"dataset": ..., "results": [...], **extra}`` atomically (temp file + rename).

    Parameters
    ----------
    path : path-like
    dataset : mapping or dataset object
        A summary dict, or a dataset object (summarised with
        :func:`ruvector_hnsw.eval.run.dataset_info`).
    results : sequence of dict
        Rows of :func:`ruvector_hnsw.eval.evaluate`.
    **extra
        More top-level keys (e.g. ``settings={...}``).

    Returns
    -------
    pathlib.Path
    """
    if not isinstance(dataset, Mapping):
        from ruvector_hnsw.eval.run import dataset_info

        dataset = dataset_info(dataset)
    doc = {"dataset": to_jsonable(dataset), "results": to_jsonable(list(results))}
    doc.update({k: to_jsonable(v) for k, v in extra.items()})
    out = Path(path)
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=2, allow_nan=False)
            fh.write("\n")
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return out


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a report written by :func:`write_json` (validates the two top-level keys)."""
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except json.JSONDecodeError as exc:
        raise FileFormatError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(doc, dict) or "dataset" not in doc or not isinstance(doc.get("results"), list):
        raise FileFormatError(f"{path}: not an evaluation report (needs 'dataset' and a 'results' list)")
    return doc


def _fmt(key: str, val: Any) -> str:
    if val is None:
        return "-"
    if isinstance(val, float) and not math.isfinite(val):
        return "-"
    if key == "qps":
        return f"{val:,.0f}"
    if key == "qps_ratio":
        return f"{val:.2f}x"
    if key.endswith("_delta"):
        return f"{val:+.4f}"
    if key.endswith("_ms"):
        return f"{val:.3f}"
    if isinstance(val, (bool, np.bool_)):
        return "yes" if val else "no"
    if isinstance(val, (int, np.integer)):
        return str(int(val))
    if isinstance(val, (float, np.floating)):
        return f"{val:.4f}"
    return str(val)


def format_table(
    results: Sequence[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    *,
    drop_empty: bool = True,
) -> str:
    """Aligned plain-text table of result rows.

    Text columns are left-aligned, numbers right-aligned; quality to 4 decimals, QPS as an
    integer with thousands separators, latencies in ms to 3 decimals; None -> ``-``.

    Parameters
    ----------
    results : sequence of dict
    columns : sequence of str, optional
        Keys to show (default :data:`DEFAULT_COLUMNS`).  Unknown keys show ``-``.
    drop_empty : bool
        Drop columns that are None in every row (e.g. labelled metrics on ANN data).
    """
    cols = list(columns) if columns is not None else list(DEFAULT_COLUMNS)
    if not results:
        return "(no results)"
    if drop_empty:
        cols = [c for c in cols if c == "method" or any(r.get(c) is not None for r in results)]
    header = [_HEADERS.get(c, c) for c in cols]
    body = [[_fmt(c, r.get(c)) for c in cols] for r in results]
    widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(header)]
    left = [
        c == "method" or all(isinstance(r.get(c), str) or r.get(c) is None for r in results) for c in cols
    ]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(w) if lf else cell.rjust(w) for cell, w, lf in zip(cells, widths, left, strict=True)
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in body)])


def print_table(
    results: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, **kw: Any
) -> None:
    """Print :func:`format_table` to stdout."""
    print(format_table(results, columns, **kw))


_QUALITY_LABELS = {
    "map_at_r": "mAP@R",
    "map_at_100": "mAP@100",
    "recall_at_10": "ANN recall@10",
    "p_at_1": "P@1",
    "r_precision": "R-precision",
    "ndcg_at_10": "nDCG@10",
    "hit_rate_at_10": "hit rate@10",
    "mrr": "MRR",
}


def _qps_label(v: float, _pos: Any = None) -> str:
    if v >= 1e6:
        return f"{v / 1e6:g}M"
    if v >= 1e3:
        return f"{v / 1e3:g}k"
    return f"{v:g}"


def _lead(v: float) -> int:
    """Leading digit of a positive number (2 for 2000, 5 for 0.05)."""
    if v <= 0 or not math.isfinite(v):
        return 0
    return int(round(v / 10 ** math.floor(math.log10(v)), 6))


def plot_quality_vs_qps(
    results: Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str],
    *,
    quality: Sequence[str] = ("map_at_r", "recall_at_10"),
    title: str | None = None,
    dpi: int = 120,
) -> Path:
    """Scatter quality against QPS (log x), one labelled marker per method, saved as PNG.

    One panel per quality key that has a value for at least one method (default mAP@R and
    ANN recall@10).  Uses matplotlib's non-interactive ``Agg`` backend.

    Parameters
    ----------
    results : sequence of dict
        Rows of :func:`ruvector_hnsw.eval.evaluate` (need ``method``, ``qps`` and the
        quality keys).
    path : path-like
        Output file (the format follows the suffix, PNG recommended).
    quality : sequence of str
        Result keys to plot on the y axes.
    title : str, optional
        Figure title (e.g. the dataset name).
    dpi : int

    Returns
    -------
    pathlib.Path

    Raises
    ------
    MissingDependencyError
        matplotlib is not installed (``pip install ruvector-hnsw[plot]``).
    InvalidInputError
        No row has both a positive QPS and one of the quality values.
    """
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError as exc:
        raise MissingDependencyError(
            "plotting needs matplotlib: pip install 'ruvector-hnsw[plot]'"
        ) from exc

    def ok(v: Any) -> bool:
        return v is not None and isinstance(v, (int, float, np.number)) and math.isfinite(float(v))

    panels = [q for q in quality if any(ok(r.get(q)) and ok(r.get("qps")) and r["qps"] > 0 for r in results)]
    if not panels:
        raise InvalidInputError(f"nothing to plot: no result has a positive qps and one of {list(quality)}")
    markers = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p"]
    cmap = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 4.4), squeeze=False)
    try:
        for ax, key in zip(axes[0], panels, strict=True):
            for i, r in enumerate(results):
                q_raw, y_raw = r.get("qps"), r.get(key)
                if not (ok(q_raw) and ok(y_raw)):
                    continue
                q, y = float(q_raw), float(y_raw)  # type: ignore[arg-type]
                if q <= 0:
                    continue
                ax.scatter(
                    [q], [y], marker=markers[i % len(markers)], s=70, color=cmap(i % 10),
                    label=str(r.get("method")), zorder=3, edgecolors="black", linewidths=0.5,
                )
                ax.annotate(  # alternate above/below so labels of close markers do not collide
                    str(r.get("method")), (q, y), textcoords="offset points", xytext=(6, 5 if i % 2 == 0 else -12),
                    fontsize=8,
                )
            xs = [float(r["qps"]) for r in results if ok(r.get("qps")) and ok(r.get(key)) and r["qps"] > 0]
            ys = [float(r[key]) for r in results if ok(r.get("qps")) and ok(r.get(key)) and r["qps"] > 0]
            ax.set_xscale("log")
            # room for the labels right of the markers; plain numbers on the log axis
            ax.set_xlim(min(xs) / 1.4, max(xs) * 1.8)
            ax.xaxis.set_major_formatter(FuncFormatter(_qps_label))
            ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _pos: _qps_label(v) if _lead(v) in (2, 5) else ""))
            ax.tick_params(axis="x", which="minor", labelsize=7)
            lo, hi = min(ys), max(ys)
            pad = max(0.02, 0.1 * (hi - lo))
            ax.set_ylim(max(0.0, lo - pad) if lo >= 0 else lo - pad, min(1.02, hi + pad) if hi <= 1.0 else hi + pad)
            ax.set_xlabel("queries per second (log scale)")
            ax.set_ylabel(_QUALITY_LABELS.get(key, key))
            ax.set_title(f"{_QUALITY_LABELS.get(key, key)} vs QPS")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8, loc="best")
        threads = sorted({int(r["threads"]) for r in results if r.get("threads") is not None})
        sub = f" ({', '.join(str(t) for t in threads)} thread(s))" if threads else ""
        fig.suptitle((title or "quality vs throughput") + sub)
        fig.tight_layout()
        out = Path(path)
        if out.parent and not out.parent.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=dpi)
    finally:
        plt.close(fig)
    return out


def plot_training_curve(
    history: Mapping[str, Any],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    dpi: int = 120,
) -> Path:
    """Validation curve of a training run: validation mAP@R and training loss per epoch.

    Parameters
    ----------
    history : mapping
        ``TrainingHistory.to_dict()`` (keys ``epoch``, ``train_loss``, ``val_metric``,
        ``initial_metric``, ``best_epoch``) or any mapping with those keys.
    path : path-like
        Output PNG.
    title : str, optional
    dpi : int

    Returns
    -------
    pathlib.Path

    Raises
    ------
    MissingDependencyError
        matplotlib is not installed.
    InvalidInputError
        The history has no epochs.
    """
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MissingDependencyError("plotting needs matplotlib: pip install 'ruvector-hnsw[plot]'") from exc
    loss = [float(v) for v in history.get("train_loss", [])]
    if not loss:
        raise InvalidInputError("nothing to plot: the training history has no epochs")
    epochs = [int(e) + 1 for e in history.get("epoch", range(len(loss)))]
    val = history.get("val_metric") or []
    initial = history.get("initial_metric")
    best = history.get("best_epoch")
    fig, (ax_v, ax_l) = plt.subplots(1, 2, figsize=(10.5, 4.0))
    try:
        xs = ([0] if initial is not None else []) + [e for e, v in zip(epochs, val, strict=False) if v is not None]
        ys = ([float(initial)] if initial is not None else []) + [float(v) for v in val if v is not None]
        if ys:
            ax_v.plot(xs, ys, marker="o", color="tab:blue", label="validation mAP@R")
            if initial is not None:
                ax_v.axhline(float(initial), color="gray", ls="--", lw=1, label="before training (epoch 0)")
            if best is not None and best >= 0:
                ax_v.scatter([best + 1], [float(val[best])], s=140, facecolors="none", edgecolors="tab:red",
                             zorder=4, label=f"best (epoch {best + 1}, restored)")
            ax_v.legend(fontsize=8, loc="lower right")
        else:
            ax_v.text(0.5, 0.5, "no validation", ha="center", va="center", transform=ax_v.transAxes)
        ax_v.set_xlabel("epoch")
        ax_v.set_ylabel("mAP@R (held-out training queries)")
        ax_v.set_title("validation mAP@R")
        ax_v.grid(True, alpha=0.3)
        ax_l.plot(epochs, loss, marker="s", color="tab:orange")
        ax_l.set_xlabel("epoch")
        ax_l.set_ylabel("InfoNCE loss (training pools)")
        ax_l.set_title("training loss")
        ax_l.grid(True, alpha=0.3)
        for ax in (ax_v, ax_l):
            ax.xaxis.get_major_locator().set_params(integer=True)
        fig.suptitle(title or "training curve")
        fig.tight_layout()
        out = Path(path)
        if out.parent and not out.parent.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=dpi)
    finally:
        plt.close(fig)
    return out
