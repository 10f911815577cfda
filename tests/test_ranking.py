"""Metrics against hand-computed values and plain-python loop references."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ruvector_hnsw import ranking as M
from ruvector_hnsw.errors import (
    ConfigError,
    EmptyInputError,
    InvalidDTypeError,
    InvalidInputError,
    ShapeMismatchError,
)

# ------------------------------------------------------------------------------------ references


def ref_relevance(ids, base_labels, query_labels):
    nq, m = ids.shape
    rel = np.zeros((nq, m), dtype=bool)
    n_rel = np.zeros(nq, dtype=np.int64)
    for i in range(nq):
        n_rel[i] = sum(1 for lab in base_labels if lab == query_labels[i])
        seen = set()
        for j in range(m):
            v = int(ids[i, j])
            if v >= 0 and v not in seen and base_labels[v] == query_labels[i]:
                rel[i, j] = True
            seen.add(v)
    return rel, n_rel


def ref_all(rel, n_rel, k, cap):
    """Per-query loop implementation of every labelled metric (None for R = 0)."""
    out = {name: [] for name in ("map_r", "map_cap", "p1", "pk", "rprec", "mrr", "ndcg", "hit")}
    for i in range(rel.shape[0]):
        R = int(n_rel[i])
        row = [bool(x) for x in rel[i]]
        if R == 0:
            continue

        def at(j, row=row):
            return row[j] if j < len(row) else False

        def ap(limit):
            s, hits = 0.0, 0
            for j in range(limit):
                if at(j):
                    hits += 1
                    s += hits / (j + 1)
            return s / limit

        out["map_r"].append(ap(R))
        out["map_cap"].append(ap(min(R, cap)))
        out["p1"].append(1.0 if at(0) else 0.0)
        out["pk"].append(sum(at(j) for j in range(k)) / k)
        out["rprec"].append(sum(at(j) for j in range(R)) / R)
        rr = 0.0
        for j in range(len(row)):
            if row[j]:
                rr = 1.0 / (j + 1)
                break
        out["mrr"].append(rr)
        dcg = sum((1.0 / math.log2(j + 2)) for j in range(k) if at(j))
        idcg = sum(1.0 / math.log2(j + 2) for j in range(min(R, k)))
        out["ndcg"].append(dcg / idcg)
        out["hit"].append(1.0 if any(at(j) for j in range(k)) else 0.0)
    return {key: (float(np.mean(v)) if v else float("nan")) for key, v in out.items()}


def ref_dist(q, x, metric):
    q = np.asarray(q, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    if metric == "l2":
        return float(np.sqrt(np.sum((q - x) ** 2)))
    if metric == "ip":
        return float(1.0 - np.dot(q, x))
    return float(1.0 - np.dot(q, x) / (np.linalg.norm(q) * np.linalg.norm(x)))


def ref_ann_recall(ids, gt, queries, base, metric, k, eps=1e-3):
    """ann-benchmarks' get_recall_values, written as loops."""
    recalls = []
    for i in range(len(queries)):
        true_d = sorted(ref_dist(queries[i], base[j], metric) for j in gt[i][:k])
        t = true_d[k - 1] + eps
        actual = 0
        for j in ids[i][:k]:
            if j >= 0 and ref_dist(queries[i], base[j], metric) <= t:
                actual += 1
        recalls.append(actual / k)
    return float(np.mean(recalls))


# ------------------------------------------------------------------------------------ hand cases


def test_relevance_hand_case_padding_and_duplicates():
    base_labels = np.array([0, 0, 1, 1, 1, 2])
    query_labels = np.array([1, 0, 5])
    ids = np.array([[2, -1, 3, 2, 0], [0, 1, 0, -1, -1], [5, 4, 3, 2, 1]])
    rel, n = M.relevance(ids, base_labels, query_labels)
    assert n.tolist() == [3, 2, 0]
    assert rel.tolist() == [
        [True, False, True, False, False],  # -1 never relevant; repeated id 2 earns nothing
        [True, True, False, False, False],
        [False] * 5,
    ]


def test_relevance_string_labels():
    rel, n = M.relevance(np.array([[1, 0]]), np.array(["cat", "dog"]), np.array(["dog"]))
    assert rel.tolist() == [[True, False]] and n.tolist() == [1]


def test_labelled_metrics_hand_values():
    # one query, R = 3, ranking relevant pattern: 1 0 1 0 1
    rel = np.array([[1, 0, 1, 0, 1]], dtype=bool)
    n = np.array([3])
    # AP@R over first 3 ranks: (1/1 + 2/3) / 3
    assert M.map_at_r(rel, n) == pytest.approx((1.0 + 2.0 / 3.0) / 3.0)
    # cap 2: ranks 1..2, normaliser 2 -> (1/1) / 2
    assert M.map_at_r(rel, n, cap=2) == pytest.approx(0.5)
    assert M.precision_at_k(rel, n, 1) == 1.0
    assert M.precision_at_k(rel, n, 4) == pytest.approx(0.5)
    assert M.r_precision(rel, n) == pytest.approx(2.0 / 3.0)
    assert M.mrr(rel, n) == 1.0
    assert M.hit_rate_at_k(rel, n, 1) == 1.0
    ndcg = (1.0 + 1.0 / math.log2(4)) / (1.0 + 1.0 / math.log2(3) + 1.0 / math.log2(4))
    assert M.ndcg_at_k(rel, n, 3) == pytest.approx(ndcg)
    assert M.ml_recall_at_k is M.hit_rate_at_k


def test_mrr_and_hit_rate_when_first_hit_is_late():
    rel = np.array([[0, 0, 1], [0, 0, 0]], dtype=bool)
    n = np.array([2, 4])
    assert M.mrr(rel, n, per_query=True).tolist() == pytest.approx([1 / 3, 0.0])
    assert M.mrr(rel, n, k=2) == 0.0
    assert M.hit_rate_at_k(rel, n, 2) == 0.0
    assert M.hit_rate_at_k(rel, n, 3) == 0.5


def test_short_lists_count_missing_ranks_as_misses():
    rel = np.array([[1, 1]], dtype=bool)  # 2 results, R = 4
    n = np.array([4])
    assert M.map_at_r(rel, n) == pytest.approx((1 + 1) / 4)
    assert M.precision_at_k(rel, n, 10) == pytest.approx(0.2)
    assert M.r_precision(rel, n) == pytest.approx(0.5)


def test_queries_with_no_relevant_items_are_excluded():
    rel = np.array([[1, 0], [0, 0]], dtype=bool)
    n = np.array([1, 0])
    assert M.map_at_r(rel, n) == 1.0  # the R=0 query does not drag the mean to 0.5
    per = M.map_at_r(rel, n, per_query=True)
    assert per[0] == 1.0 and np.isnan(per[1])
    assert math.isnan(M.precision_at_k(rel[1:], n[1:], 1))  # no valid query at all -> NaN
    out = M.labelled_metrics(np.array([[0, 1], [1, 0]]), np.array([0, 1]), np.array([0, 7]), k=2)
    assert out["n_valid_queries"] == 1 and out["n_excluded_queries"] == 1
    assert out["map_at_r"] == 1.0


def test_perfect_ranking_scores_one():
    base_labels = np.array([0, 0, 0, 1, 1])
    ids = np.array([[0, 1, 2, 3, 4], [3, 4, 0, 1, 2]])
    out = M.labelled_metrics(ids, base_labels, np.array([0, 1]), k=2, cap=100)
    for key in ("map_at_r", "map_at_100", "p_at_1", "p_at_2", "r_precision", "mrr", "ndcg_at_2",
                "hit_rate_at_2"):
        assert out[key] == pytest.approx(1.0), key


# ------------------------------------------------------------------------------------ random vs loops


@pytest.mark.parametrize("seed", range(6))
def test_labelled_metrics_match_loop_reference(seed):
    rng = np.random.default_rng(seed)
    n_base, nq, m = 60, 25, int(rng.integers(3, 40))
    n_classes = int(rng.integers(2, 9))
    base_labels = rng.integers(0, n_classes, n_base)
    query_labels = rng.integers(0, n_classes + 2, nq)  # some labels absent from base -> R = 0
    ids = rng.integers(-1, n_base, (nq, m))  # -1 padding and repeats occur
    k = int(rng.integers(1, 15))
    cap = int(rng.integers(1, 20))
    rel, n = M.relevance(ids, base_labels, query_labels)
    rrel, rn = ref_relevance(ids, base_labels, query_labels)
    np.testing.assert_array_equal(rel, rrel)
    np.testing.assert_array_equal(n, rn)
    ref = ref_all(rrel, rn, k, cap)
    got = {
        "map_r": M.map_at_r(rel, n),
        "map_cap": M.map_at_r(rel, n, cap=cap),
        "p1": M.precision_at_k(rel, n, 1),
        "pk": M.precision_at_k(rel, n, k),
        "rprec": M.r_precision(rel, n),
        "mrr": M.mrr(rel, n),
        "ndcg": M.ndcg_at_k(rel, n, k),
        "hit": M.hit_rate_at_k(rel, n, k),
    }
    for key, val in ref.items():
        assert got[key] == pytest.approx(val, abs=1e-12), key


def test_sorted_relevant_first_beats_random_on_map():
    rng = np.random.default_rng(3)
    base_labels = rng.integers(0, 4, 80)
    ql = rng.integers(0, 4, 10)
    good = np.array([np.argsort(base_labels != q, kind="stable") for q in ql])
    bad = np.array([rng.permutation(80) for _ in ql])
    g = M.labelled_metrics(good, base_labels, ql)
    b = M.labelled_metrics(bad, base_labels, ql)
    assert g["map_at_r"] == pytest.approx(1.0)
    assert b["map_at_r"] < 0.6


# ------------------------------------------------------------------------------------ ANN recall


def test_ann_recall_hand_case_with_ties():
    base = np.array([[0.0], [1.0], [-1.0], [2.0], [3.0]], dtype=np.float32)
    q = np.array([[0.0]], dtype=np.float32)
    gt = np.array([[0, 1, 2]])  # true 3-NN distances 0, 1, 1
    # item 3 (distance 2) is not within the tie threshold; items 1 and 2 tie at distance 1
    assert M.ann_recall_at_k(np.array([[0, 2, 1]]), gt, queries=q, base=base, metric="l2", k=3) == 1.0
    # returning the tied member 2 instead of 1 for k=2 counts fully
    gt2 = np.array([[0, 1]])
    assert M.ann_recall_at_k(np.array([[0, 2]]), gt2, queries=q, base=base, metric="l2", k=2) == 1.0
    assert M.ann_recall_at_k(np.array([[0, 3, 4]]), gt, queries=q, base=base, metric="l2", k=3) == (
        pytest.approx(1 / 3)
    )
    # within epsilon of the k-th distance still counts, beyond it does not
    base2 = np.array([[0.0], [1.0], [1.0009], [1.0011]], dtype=np.float64)
    for j, expected in ((2, 1.0), (3, 0.5)):
        got = M.ann_recall_at_k(np.array([[0, j]]), np.array([[0, 1]]), queries=np.zeros((1, 1)),
                                base=base2, metric="l2", k=2)
        assert got == expected
    # padding never counts
    assert M.ann_recall_at_k(np.array([[0, -1, -1]]), gt, queries=q, base=base, metric="l2", k=3) == (
        pytest.approx(1 / 3)
    )


def test_ann_recall_uses_euclidean_not_squared_scale():
    # true 1-NN at distance 10 (squared 100); a result at distance 10.0005 is a tie only on the
    # Euclidean scale of ann-benchmarks (squared: 100.01 > 100.001)
    base = np.array([[10.0], [10.0005]])
    got = M.ann_recall_at_k(np.array([[1]]), np.array([[0]]), queries=np.zeros((1, 1)), base=base,
                            metric="l2", k=1)
    assert got == 1.0


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
@pytest.mark.parametrize("seed", [0, 1])
def test_ann_recall_matches_loop_reference(metric, seed):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((50, 5)).astype(np.float32)
    base[7] = base[3]  # exact duplicate: a tie that must count
    queries = rng.standard_normal((12, 5)).astype(np.float32)
    if metric == "ip":
        base /= 3.0
    from tests.eval.conftest import brute_force

    gt, _ = brute_force(queries, base, 10, metric)
    ids = gt.copy()
    # perturb: swap some results for random items, pad some, duplicate a tie member
    ids[::2, 5:] = rng.integers(-1, 50, (ids[::2].shape[0], 5))
    ids[1, :] = np.where(gt[1] == 3, 7, gt[1])
    k = 7
    got = M.ann_recall_at_k(ids, gt, queries=queries, base=base, metric=metric, k=k)
    assert got == pytest.approx(ref_ann_recall(ids, gt, queries, base, metric, k))
    assert M.ann_recall_at_k(gt, gt, queries=queries, base=base, metric=metric, k=10) == 1.0


def test_metric_distances_match_reference():
    rng = np.random.default_rng(5)
    base = rng.standard_normal((20, 4))
    q = rng.standard_normal((3, 4))
    ids = np.array([[0, 5, -1], [19, 2, 2], [1, 1, 1]])
    for metric in ("l2", "ip", "cosine"):
        d = M.metric_distances(q, base, ids, metric, block=2)
        for i in range(3):
            for j in range(3):
                if ids[i, j] < 0:
                    assert d[i, j] == np.inf
                else:
                    assert d[i, j] == pytest.approx(ref_dist(q[i], base[ids[i, j]], metric))


# ------------------------------------------------------------------------------------ bad input


def test_bad_inputs_raise_typed_errors():
    base_labels = np.array([0, 1])
    with pytest.raises(InvalidInputError, match="ids must lie"):
        M.relevance(np.array([[2]]), base_labels, np.array([0]))
    with pytest.raises(ShapeMismatchError):
        M.relevance(np.array([[0]]), base_labels, np.array([0, 1]))
    with pytest.raises(InvalidDTypeError):
        M.relevance(np.array([[0.5]]), base_labels, np.array([0]))
    with pytest.raises(ConfigError):
        M.precision_at_k(np.ones((1, 2), bool), np.array([2]), 0)
    with pytest.raises(ShapeMismatchError):
        M.map_at_r(np.ones((2, 2), bool), np.array([2]))
    with pytest.raises(InvalidInputError, match="more relevant"):
        M.map_at_r(np.ones((1, 3), bool), np.array([2]))
    with pytest.raises(ConfigError, match="metric"):
        M.metric_distances(np.zeros((1, 2)), np.zeros((2, 2)), np.array([[0]]), "hamming")
    with pytest.raises(InvalidInputError, match="fewer than k"):
        M.ann_recall_at_k(np.array([[0, 1]]), np.array([[0]]), queries=np.zeros((1, 2)),
                          base=np.zeros((2, 2)), metric="l2", k=2)
    with pytest.raises(EmptyInputError):
        M.ann_recall_at_k(np.zeros((0, 2), int), np.zeros((0, 2), int), queries=np.zeros((0, 2)),
                          base=np.zeros((2, 2)), metric="l2", k=2)
    with pytest.raises(ShapeMismatchError, match="dim"):
        M.metric_distances(np.zeros((1, 3)), np.zeros((2, 2)), np.array([[0]]), "l2")
