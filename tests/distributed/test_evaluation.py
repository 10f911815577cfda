"""Distributed evaluation on a local Ray cluster equals the single-process run: same ids, same metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ruvector_hnsw import distributed
from ruvector_hnsw import eval as ev
from ruvector_hnsw.cli import main
from ruvector_hnsw.errors import ConfigError
from ruvector_hnsw.eval.methods import SearchMethod
from ruvector_hnsw.search.state import ENCODE_BLOCK

from .conftest import Labelled

QUALITY = ("map_at_r", "map_at_100", "p_at_1", "p_at_10", "r_precision", "mrr", "ndcg_at_10", "hit_rate_at_10",
           "recall_at_10", "n_excluded_queries", "search_k", "r_max", "n_queries")


@pytest.fixture(scope="module")
def methods(data: Labelled, index, fitted) -> dict[str, SearchMethod]:
    ds = _dataset(data)
    out = ev.build_methods("exact,hnsw:ef=24", ds, index=index, ef=64, num_threads=1)
    out["attention"] = SearchMethod("attention", lambda q, k: fitted.search(q, k), threads=1)
    return out


def _dataset(data: Labelled):
    from tests.eval.conftest import ToyDataset, brute_force

    ds = ToyDataset(base=data.base, queries=data.queries, base_labels=data.labels, query_labels=data.query_labels)
    ds.neighbors, _ = brute_force(ds.queries, ds.base, 10, "l2")
    return ds


def _assert_same(ref: list[dict], got: list[dict]) -> None:
    assert [r["method"] for r in ref] == [g["method"] for g in got]
    for r, g in zip(ref, got, strict=True):
        for key in QUALITY:
            if isinstance(r[key], float):
                assert g[key] == pytest.approx(r[key], abs=1e-12, rel=0), (r["method"], key)
            else:
                assert g[key] == r[key], (r["method"], key)
        assert r["p_at_1"] is not None and r["recall_at_10"] is not None


def test_ray_evaluation_equals_the_single_process_run(data, methods) -> None:
    ds = _dataset(data)
    ref = ev.evaluate(ds, methods, k=10, latency_queries=40, qps_repeats=1)
    got = distributed.evaluate(ds, methods, k=10, latency_queries=40, qps_repeats=1, workers=2)
    _assert_same(ref, got)
    assert all(g["backend"] == "ray" and g["workers"] == 2 and g["latency_queries"] == 40 for g in got)
    assert all(g["qps"] > 0 and g["p50_ms"] > 0 for g in got)
    # the methods differ, so equal metrics are not an accident of the data
    assert len({round(g["map_at_r"], 9) for g in got}) >= 2


def test_shared_dir_and_the_local_backend_give_the_same_rows(data, methods, tmp_path) -> None:
    ds = _dataset(data)
    picked = {k: methods[k] for k in ("hnsw:ef=24", "attention")}
    ref = ev.evaluate(ds, picked, k=5, latency_queries=0, qps_repeats=1)
    shared = distributed.evaluate(ds, picked, k=5, latency_queries=0, qps_repeats=1, workers=2, shared_dir=tmp_path)
    local = distributed.evaluate(ds, picked, k=5, latency_queries=0, qps_repeats=1, backend="local", workers=3)
    _assert_same(ref, shared)
    _assert_same(ref, local)
    assert ref[0]["p_at_5"] == shared[0]["p_at_5"] == local[0]["p_at_5"]
    assert list(tmp_path.iterdir()) == []  # the shipped pickle is removed


def test_sharded_search_returns_the_same_ids(data, methods) -> None:
    # the attention method encodes its queries in GEMM blocks: the 64-aligned shards keep its results exact
    want = methods["attention"](data.queries, 10)
    got = distributed.search(methods, "attention", data.queries, 10, workers=2)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_shard_bounds_start_on_multiples_of_the_encode_block() -> None:
    assert ENCODE_BLOCK == 96
    assert distributed.shard_bounds(300, 2) == [(0, 192), (192, 300)]
    assert distributed.shard_bounds(100, 4) == [(0, 96), (96, 100)]
    assert distributed.shard_bounds(0, 3) == []
    for n, parts in ((1, 1), (65, 2), (640, 3), (1000, 7)):
        b = distributed.shard_bounds(n, parts)
        assert b[0][0] == 0 and b[-1][1] == n and all(a % ENCODE_BLOCK == 0 for a, _ in b)
        assert all(b[i][1] == b[i + 1][0] for i in range(len(b) - 1))


def test_bad_backend_is_a_config_error(data, methods) -> None:
    with pytest.raises(ConfigError, match="backend"):
        distributed.evaluate(_dataset(data), methods, backend="spark")


def test_cli_eval_with_ray_equals_the_plain_run(tmp_path, capsys) -> None:
    common = ["eval", "--dataset", "clusters", "--size", "tiny", "--methods", "exact,hnsw:ef=16",
              "--latency-queries", "0", "--threads", "1", "--no-progress"]
    assert main([*common, "--json", str(tmp_path / "a.json")]) == 0
    assert main([*common, "--ray", "local", "--ray-workers", "2", "--json", str(tmp_path / "b.json")]) == 0
    assert "evaluated on Ray (local): 2 query shards" in capsys.readouterr().out
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "ab")
    for ra, rb in zip(a["results"], b["results"], strict=True):
        assert ra["method"] == rb["method"]
        for key in ("map_at_r", "p_at_1", "recall_at_10", "ndcg_at_10"):
            assert rb[key] == pytest.approx(ra[key], abs=1e-12, rel=0)
    assert b["settings"]["ray"]["workers"] == 2
