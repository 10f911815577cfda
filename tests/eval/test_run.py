"""evaluate(): protocol, keys, agreement with the metric functions, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ruvector_hnsw.errors import ConfigError, DimensionMismatchError, InvalidInputError, ShapeMismatchError
from ruvector_hnsw.eval import RESULT_KEYS, dataset_info, evaluate
from ruvector_hnsw.eval import metrics as M
from ruvector_hnsw.eval.methods import make_exact
from tests.eval.conftest import ToyDataset, brute_force, make_clustered


class Recorder:
    """Wraps a search function and records every (n_queries, k) it is called with."""

    def __init__(self, fn, threads=None):
        self.fn = fn
        self.calls: list[tuple[int, int]] = []
        threads = threads if threads is not None else getattr(fn, "threads", None)
        if threads is not None:
            self.threads = threads
        if hasattr(fn, "params"):
            self.params = fn.params

    def __call__(self, queries, k):
        self.calls.append((queries.shape[0], k))
        return self.fn(queries, k)


def random_method(n_base, seed=0):
    rng = np.random.default_rng(seed)

    def search(queries, k):
        ids = np.stack([rng.permutation(n_base)[:k] for _ in range(queries.shape[0])]).astype(np.int64)
        return ids, np.zeros(ids.shape, np.float32)

    return search


def test_evaluate_exact_vs_bad_method_on_labelled_set():
    ds = make_clustered(n_classes=5, per_class=30, n_queries=20, spread=0.05, seed=1)
    exact = Recorder(make_exact(ds, num_threads=1))
    bad = Recorder(random_method(len(ds.base)), threads=3)
    rows = evaluate(ds, {"exact": exact, "bad": bad}, k=10, latency_queries=7, warmup_queries=2)
    assert [r["method"] for r in rows] == ["exact", "bad"]
    for r in rows:
        assert set(RESULT_KEYS) <= set(r)
        assert r["n_queries"] == 20 and r["k"] == 10 and r["search_k"] == 30 and r["r_max"] == 30
        assert r["r_truncated"] is False and r["latency_queries"] == 7
        for key in ("qps", "p50_ms", "p95_ms", "p99_ms"):
            assert math.isfinite(r[key]) and r[key] > 0
        assert r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
    e, b = rows
    # well-separated classes: exact retrieval is perfect
    for key in ("map_at_r", "map_at_100", "p_at_1", "r_precision", "mrr", "ndcg_at_10", "hit_rate_at_10",
                "recall_at_10"):
        assert e[key] == pytest.approx(1.0), key
    assert b["map_at_r"] < 0.45 and b["recall_at_10"] < 0.3
    assert e["threads"] == 1 and b["threads"] == 3
    assert e["params"] == {"index": "faiss.IndexFlat"}
    # protocol: warm-up (2 queries) and quality call at search_k, warm-up + 3 QPS calls at k,
    # then 7 single-query latency calls at k
    assert bad.calls[:6] == [(2, 30), (20, 30), (2, 10), (20, 10), (20, 10), (20, 10)]
    assert bad.calls[6:] == [(1, 10)] * 7


def test_evaluate_metrics_agree_with_metric_functions():
    ds = make_clustered(n_classes=4, per_class=25, n_queries=15, spread=0.8, seed=2, metric="cosine")
    fixed_rng = np.random.default_rng(9)
    noisy_ids = {}

    def noisy(queries, k):
        ids, d = brute_force(queries, ds.base, k, "cosine")
        key = (queries.shape[0], k)
        if key not in noisy_ids:
            swap = fixed_rng.random(ids.shape) < 0.3
            noisy_ids[key] = np.where(swap, fixed_rng.integers(0, len(ds.base), ids.shape), ids)
        return noisy_ids[key], d

    row = evaluate(ds, {"noisy": noisy}, k=10, latency_queries=3)[0]
    ids = noisy_ids[(15, 25)]
    rel, n = M.relevance(ids, ds.base_labels, ds.query_labels)
    assert row["map_at_r"] == pytest.approx(M.map_at_r(rel, n))
    assert row["map_at_100"] == pytest.approx(M.map_at_r(rel, n, cap=100))
    assert row["p_at_1"] == pytest.approx(M.precision_at_k(rel, n, 1))
    assert row["ndcg_at_10"] == pytest.approx(M.ndcg_at_k(rel, n, 10))
    # ANN recall from the timed call at k=10
    assert row["recall_at_10"] == pytest.approx(
        M.ann_recall_at_k(noisy_ids[(15, 10)], ds.neighbors, queries=ds.queries, base=ds.base,
                          metric="cosine", k=10)
    )
    assert 0 < row["map_at_r"] < 1


def test_evaluate_ann_only_dataset_and_missing_ground_truth():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((80, 4)).astype(np.float32)
    queries = rng.standard_normal((9, 4)).astype(np.float32)
    gt, _ = brute_force(queries, base, 10, "l2")
    ds = ToyDataset(base=base, queries=queries, neighbors=gt)
    exact = Recorder(make_exact(ds))
    row = evaluate(ds, {"exact": exact}, k=5, latency_queries=0)[0]
    for key in ("map_at_r", "map_at_100", "p_at_1", "r_precision", "mrr", "ndcg_at_10", "hit_rate_at_10"):
        assert row[key] is None
    assert row["recall_at_10"] == 1.0 and row["recall_at_5"] == 1.0
    assert row["search_k"] == 10 and row["r_max"] is None
    assert row["p50_ms"] is None and row["latency_queries"] == 0
    # no ground truth: recall is None unless asked to compute it
    ds2 = ToyDataset(base=base, queries=queries)
    assert evaluate(ds2, {"exact": exact}, latency_queries=0)[0]["recall_at_10"] is None
    assert evaluate(ds2, {"exact": exact}, latency_queries=0, compute_ground_truth=True)[0][
        "recall_at_10"] == 1.0


def test_evaluate_caps_result_length_and_flags_truncation():
    ds = make_clustered(n_classes=2, per_class=60, n_queries=6, spread=0.05)
    rec = Recorder(make_exact(ds))
    row = evaluate(ds, {"exact": rec}, k=10, max_results=20, latency_queries=0)[0]
    assert row["search_k"] == 20 and row["r_truncated"] is True and row["r_max"] == 60
    assert row["map_at_r"] == pytest.approx(20 / 60)  # ranks beyond the list count as misses
    assert row["map_at_100"] == pytest.approx(20 / 60)
    assert row["p_at_1"] == 1.0


def test_evaluate_excludes_queries_with_no_relevant_items():
    ds = make_clustered(n_classes=3, per_class=10, n_queries=8, spread=0.05, with_gt=False)
    ds.query_labels = ds.query_labels.copy()
    ds.query_labels[:3] = 99
    row = evaluate(ds, {"exact": make_exact(ds)}, latency_queries=0)[0]
    assert row["n_excluded_queries"] == 3 and row["map_at_r"] == pytest.approx(1.0)


def test_evaluate_bad_input():
    ds = make_clustered(with_gt=False)
    ok = {"exact": make_exact(ds)}
    with pytest.raises(ConfigError):
        evaluate(ds, {})
    with pytest.raises(ConfigError):
        evaluate(ds, ok, k=0)
    with pytest.raises(InvalidInputError, match="metric"):
        evaluate(ToyDataset(base=ds.base, queries=ds.queries, metric="hamming"), ok)
    with pytest.raises(DimensionMismatchError):
        evaluate(ToyDataset(base=ds.base, queries=ds.queries[:, :3]), ok)
    with pytest.raises(ShapeMismatchError, match="labels"):
        evaluate(ToyDataset(base=ds.base, queries=ds.queries, base_labels=ds.base_labels[:5],
                            query_labels=ds.query_labels), ok)
    with pytest.raises(ShapeMismatchError, match="bad"):
        evaluate(ds, {"bad": lambda q, k: (np.zeros((1, k), np.int64), np.zeros((1, k)))}, latency_queries=0)
    with pytest.raises(InvalidInputError, match="must return"):
        evaluate(ds, {"bad": lambda q, k: np.zeros((len(q), k), np.int64)}, latency_queries=0)
    with pytest.raises(InvalidInputError, match="no attribute"):
        evaluate(object(), ok)


def test_dataset_info_summary():
    ds = make_clustered(n_classes=3, per_class=10, n_queries=4)
    info = dataset_info(ds)
    assert info == {"name": "toy", "metric": "l2", "n_base": 30, "n_queries": 4, "dim": 8, "labelled": True,
                    "n_classes": 3, "ground_truth_k": 20}


def test_evaluate_accepts_a_sequence_of_named_methods():
    ds = make_clustered(n_classes=2, per_class=10, n_queries=3, with_gt=False)
    m = make_exact(ds, name="flat")
    rows = evaluate(ds, [m], latency_queries=0, qps_repeats=1)
    assert rows[0]["method"] == "flat"
    with pytest.raises(ConfigError, match="name"):
        evaluate(ds, [lambda q, k: None])
    with pytest.raises(ConfigError, match="unique"):
        evaluate(ds, [m, m])


def test_ann_recall_is_judged_at_the_timed_operating_point():
    # a method whose quality degrades for small k (like HNSW with ef = max(ef, k)):
    # exact for long lists, wrong for k <= 10
    ds = make_clustered(n_classes=3, per_class=20, n_queries=5, spread=0.05)
    exact = make_exact(ds)

    def k_dependent(queries, k):
        ids, d = exact(queries, k)
        if k <= 10:
            ids = ids[:, ::-1].copy()  # keeps membership of the top k but not for recall@5
            ids[:, 0] = (ids[:, 0] + 30) % 60
        return ids, d

    row = evaluate(ds, {"m": k_dependent}, k=10, latency_queries=0, qps_repeats=1)[0]
    assert row["search_k"] == 20
    assert row["recall_at_10"] == pytest.approx(0.9)  # from the k=10 call
    assert row["p_at_1"] == 1.0  # labelled metrics from the long (exact) list


def test_recall_at_k_with_short_ground_truth():
    ds = make_clustered(n_classes=2, per_class=10, n_queries=4)
    ds.neighbors = ds.neighbors[:, :5]
    row = evaluate(ds, {"exact": make_exact(ds)}, k=5, latency_queries=0, qps_repeats=1)[0]
    assert row["recall_at_5"] == 1.0 and row["recall_at_10"] is None
