"""Retrieval evaluation: metrics, runs, built-in baseline methods, reports.

Quick use::

    from ruvector_hnsw import datasets, eval as ev
    ds = datasets.load("clusters")
    methods = ev.build_methods("exact,hnsw,alpha_qe,dba", ds, ef=128, seed=0)
    rows = ev.evaluate(ds, methods, k=10)
    ev.print_table(rows)
    ev.write_json("out.json", ds, rows)
    ev.plot_quality_vs_qps(rows, "out.png", title=ds.name)

Trained methods (one per attention mechanism, e.g. ``local_global:epochs=4:expand=2``, and
the baselines ``linear_proj``, ``mlp_adapter``, ``label_classifier``) fit on
``dataset.train_queries`` (and the base labels training may see, ``train_base_labels`` under
the unseen-class protocol of :func:`ruvector_hnsw.datasets.class_split`) only; ``diffusion``
re-ranks without training. For a dataset without training queries, split some off the
evaluation queries first and evaluate the split dataset::

    ds, info = ev.ensure_train_split(ds, 1000)
    methods = ev.build_methods("hnsw,alpha_qe,local_global,linear_proj", ds)

Two different "recall"s are reported, under distinct names:

- ``recall_at_10`` -- **ANN recall@10** (ann-benchmarks): fraction of the 10 true nearest
  neighbours returned (ties within 1e-3 count).  Judges the *index*.
- ``hit_rate_at_10`` -- metric-learning "Recall@10": 1 if any of the top 10 shares the
  query's label.  Judges the *embedding/ranking*.
"""

from __future__ import annotations

from ruvector_hnsw.eval.attention import (
    ATTENTION_METHODS,
    TRAINED_METHODS,
    ensure_train_split,
    fit_attention,
    make_attention,
    make_saved_model,
    training_data,
)
from ruvector_hnsw.eval.baselines import LinearProjection, linear_proj_loss, make_linear_proj
from ruvector_hnsw.eval.classifier import LabelClassifier, make_label_classifier, rank_by_class
from ruvector_hnsw.eval.diffusion import DiffusionRanker, diffusion_scores, make_diffusion
from ruvector_hnsw.eval.graph_plot import plot_graph, upper_layout
from ruvector_hnsw.eval.methods import (
    METHODS,
    BuildContext,
    SearchMethod,
    build_hnsw_index,
    build_methods,
    expand_vectors,
    make_alpha_qe,
    make_dba,
    make_exact,
    make_hnsw,
    parse_method_spec,
    register_method,
)
from ruvector_hnsw.eval.metrics import (
    ann_recall_at_k,
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
from ruvector_hnsw.eval.mlp_adapter import MLPAdapter, make_mlp_adapter
from ruvector_hnsw.eval.report import (
    add_relative,
    format_table,
    plot_quality_vs_qps,
    plot_training_curve,
    print_table,
    read_json,
    to_jsonable,
    write_json,
)
from ruvector_hnsw.eval.run import RESULT_KEYS, dataset_info, evaluate
from ruvector_hnsw.eval.timing import available_threads, measure_latency, measure_qps

__all__ = [
    "ATTENTION_METHODS",
    "METHODS",
    "RESULT_KEYS",
    "TRAINED_METHODS",
    "BuildContext",
    "DiffusionRanker",
    "LabelClassifier",
    "LinearProjection",
    "MLPAdapter",
    "SearchMethod",
    "add_relative",
    "ann_recall_at_k",
    "available_threads",
    "build_hnsw_index",
    "build_methods",
    "dataset_info",
    "diffusion_scores",
    "ensure_train_split",
    "evaluate",
    "expand_vectors",
    "fit_attention",
    "format_table",
    "hit_rate_at_k",
    "labelled_metrics",
    "linear_proj_loss",
    "make_alpha_qe",
    "make_attention",
    "make_dba",
    "make_diffusion",
    "make_exact",
    "make_hnsw",
    "make_label_classifier",
    "make_linear_proj",
    "make_mlp_adapter",
    "make_saved_model",
    "map_at_r",
    "measure_latency",
    "measure_qps",
    "metric_distances",
    "ml_recall_at_k",
    "mrr",
    "ndcg_at_k",
    "parse_method_spec",
    "plot_graph",
    "plot_quality_vs_qps",
    "plot_training_curve",
    "precision_at_k",
    "print_table",
    "r_precision",
    "rank_by_class",
    "read_json",
    "register_method",
    "relevance",
    "to_jsonable",
    "training_data",
    "upper_layout",
    "write_json",
]
