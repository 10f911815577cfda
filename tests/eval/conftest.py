"""Shared fixtures of the eval tests: a tiny dataset type of our own (duck-typed like the real one)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest


@dataclass
class ToyDataset:
    base: np.ndarray
    queries: np.ndarray
    metric: str = "l2"
    base_labels: np.ndarray | None = None
    query_labels: np.ndarray | None = None
    neighbors: np.ndarray | None = None
    name: str = "toy"


def brute_force(queries: np.ndarray, base: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Plain numpy exact search, hnswlib distance conventions."""
    q = queries.astype(np.float64)
    b = base.astype(np.float64)
    if metric == "l2":
        d = ((q[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    elif metric == "ip":
        d = 1.0 - q @ b.T
    else:
        qn = q / np.linalg.norm(q, axis=1, keepdims=True)
        bn = b / np.linalg.norm(b, axis=1, keepdims=True)
        d = 1.0 - qn @ bn.T
    ids = np.argsort(d, axis=1, kind="stable")[:, :k]
    return ids.astype(np.int64), np.take_along_axis(d, ids, axis=1).astype(np.float32)


def make_clustered(
    n_classes: int = 6,
    per_class: int = 40,
    n_queries: int = 30,
    dim: int = 8,
    spread: float = 0.15,
    seed: int = 0,
    metric: str = "l2",
    with_gt: bool = True,
    center_scale: float = 1.0,
) -> ToyDataset:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_classes, dim)) * center_scale
    base_labels = np.repeat(np.arange(n_classes), per_class)
    base = centers[base_labels] + spread * rng.standard_normal((base_labels.size, dim))
    query_labels = rng.integers(0, n_classes, n_queries)
    queries = centers[query_labels] + spread * rng.standard_normal((n_queries, dim))
    ds = ToyDataset(
        base=base.astype(np.float32),
        queries=queries.astype(np.float32),
        metric=metric,
        base_labels=base_labels,
        query_labels=query_labels,
    )
    if with_gt:
        ds.neighbors, _ = brute_force(ds.queries, ds.base, 20, metric)
    return ds


@pytest.fixture
def clustered() -> ToyDataset:
    return make_clustered()


@pytest.fixture
def toy_factory() -> Any:
    return make_clustered
