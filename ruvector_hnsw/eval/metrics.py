"""Retrieval quality metrics, re-exported from :mod:`ruvector_hnsw.ranking`.

The implementation lives in the low-level :mod:`ruvector_hnsw.ranking` (numpy only) so that
``training`` and ``search`` can use mAP@R without importing ``eval``; this module keeps the
``ruvector_hnsw.eval.metrics`` names for the evaluation code and its users. See
:mod:`ruvector_hnsw.ranking` for the definitions (ANN recall@k vs. labelled retrieval metrics).
"""

from __future__ import annotations

from ruvector_hnsw.ranking import (
    ANN_RECALL_EPSILON,
    METRICS_ALIASES,
    ann_recall_at_k,
    check_k,
    hit_rate_at_k,
    labelled_metrics,
    map_at_r,
    metric_distances,
    ml_recall_at_k,
    mrr,
    ndcg_at_k,
    precision_at_k,
    r_precision,
    relevance,
)

__all__ = [
    "ANN_RECALL_EPSILON",
    "METRICS_ALIASES",
    "ann_recall_at_k",
    "check_k",
    "hit_rate_at_k",
    "labelled_metrics",
    "map_at_r",
    "metric_distances",
    "ml_recall_at_k",
    "mrr",
    "ndcg_at_k",
    "precision_at_k",
    "r_precision",
    "relevance",
]
