"""Reports: table formatting, JSON round trip, plot file."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from ruvector_hnsw.errors import FileFormatError, InvalidInputError, MissingDependencyError
from ruvector_hnsw.eval import (
    add_relative,
    evaluate,
    format_table,
    plot_quality_vs_qps,
    read_json,
    to_jsonable,
    write_json,
)
from ruvector_hnsw.eval.methods import make_exact
from tests.eval.conftest import make_clustered

ROWS = [
    {"method": "exact", "map_at_r": 0.91234, "recall_at_10": 1.0, "qps": 1234.5, "p50_ms": 0.5, "threads": 2},
    {"method": "alpha_qe_long_name", "map_at_r": 0.95, "recall_at_10": None, "qps": 98765.4, "p50_ms": 0.0123,
     "threads": 2},
]


def test_format_table_aligned_and_readable():
    text = format_table(ROWS, ["method", "map_at_r", "recall_at_10", "qps", "p50_ms", "threads", "p_at_1"])
    lines = text.splitlines()
    assert lines[0].split() == ["method", "mAP@R", "ANN-R@10", "QPS", "p50", "ms", "thr"]  # empty P@1 dropped
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].startswith("exact ") and "0.9123" in lines[2] and "1,234" in lines[2] and "0.500" in lines[2]
    assert "98,765" in lines[3] and lines[3].split()[2] == "-"  # None -> '-'
    # numbers are right-aligned: every value of a column ends at the same position
    end = lines[0].index("QPS") + len("QPS")
    assert lines[2].index("1,234") + 5 == end and lines[3].index("98,765") + 6 == end
    assert len({len(line) for line in lines}) == 1  # last column (thr) right-aligned -> equal widths
    assert format_table([]) == "(no results)"
    assert "P@1" in format_table(ROWS, ["method", "p_at_1"], drop_empty=False)


def test_json_round_trip(tmp_path):
    rows = [
        {"method": "m", "map_at_r": np.float32(0.5), "qps": np.float64(np.nan), "n": np.int64(3),
         "flag": np.bool_(True), "arr": np.arange(3), "params": {"ef": np.int32(7), "t": (1, 2)},
         "inf": float("inf"), "none": None},
    ]
    path = write_json(tmp_path / "sub" / "out.json", {"name": "toy", "n_base": np.int64(10)}, rows,
                      settings={"k": 10})
    doc = read_json(path)
    assert doc == {
        "dataset": {"name": "toy", "n_base": 10},
        "results": [{"method": "m", "map_at_r": 0.5, "qps": None, "n": 3, "flag": True, "arr": [0, 1, 2],
                     "params": {"ef": 7, "t": [1, 2]}, "inf": None, "none": None}],
        "settings": {"k": 10},
    }
    assert "NaN" not in path.read_text()
    assert to_jsonable(doc) == doc  # idempotent on plain JSON


def test_json_from_evaluate_with_dataset_object(tmp_path):
    ds = make_clustered(n_classes=3, per_class=10, n_queries=5)
    rows = evaluate(ds, {"exact": make_exact(ds)}, latency_queries=2)
    doc = read_json(write_json(tmp_path / "r.json", ds, rows))
    assert doc["dataset"]["name"] == "toy" and doc["dataset"]["n_base"] == 30
    assert doc["results"][0]["method"] == "exact" and doc["results"][0]["map_at_r"] == pytest.approx(
        rows[0]["map_at_r"])
    assert json.loads(json.dumps(doc)) == doc


def test_read_json_rejects_other_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(FileFormatError, match="not valid JSON"):
        read_json(bad)
    bad.write_text('{"results": 3}')
    with pytest.raises(FileFormatError, match="evaluation report"):
        read_json(bad)


def test_plot_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    out = plot_quality_vs_qps(ROWS, tmp_path / "plots" / "q.png", title="toy")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    with pytest.raises(InvalidInputError, match="nothing to plot"):
        plot_quality_vs_qps([{"method": "x", "qps": None, "map_at_r": 0.3}], tmp_path / "none.png")


def test_plot_without_matplotlib_raises_missing_dependency(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    with pytest.raises(MissingDependencyError, match="matplotlib"):
        plot_quality_vs_qps(ROWS, tmp_path / "q.png")
    assert not (tmp_path / "q.png").exists()


def test_add_relative_against_reference():
    rows = [{"method": "hnsw", "qps": 100.0, "map_at_r": 0.5, "recall_at_10": 0.9},
            {"method": "qe", "qps": 25.0, "map_at_r": 0.65, "recall_at_10": None}]
    out = add_relative(rows, "hnsw")
    assert out[0]["qps_ratio"] == 1.0 and out[0]["map_at_r_delta"] == 0.0
    assert out[1]["qps_ratio"] == 0.25 and out[1]["map_at_r_delta"] == pytest.approx(0.15)
    assert out[1]["recall_at_10_delta"] is None
    assert "qps_ratio" not in rows[1]  # input untouched
    assert add_relative(rows, "missing") == rows
    text = format_table(out, ["method", "qps_ratio", "map_at_r_delta"])
    assert "0.25x" in text and "+0.1500" in text
