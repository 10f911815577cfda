"""Shared fixtures of the search tests: a small labelled l2 index for quick fits."""

from __future__ import annotations

import numpy as np
import pytest

from ruvector_hnsw import HNSWIndex


def small_labelled(seed: int = 0):
    """600 base items and 300 queries in 6 Gaussian classes of 12 dims."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((6, 12)) * 2.0
    lab = rng.integers(0, 6, 900)
    x = (centers[lab] + rng.standard_normal((900, 12))).astype(np.float32)
    return x[:600], lab[:600], x[600:], lab[600:]


@pytest.fixture(scope="module")
def small():
    """``(index, base_labels, queries, query_labels)`` over :func:`small_labelled`."""
    base, base_lab, q, q_lab = small_labelled()
    index = HNSWIndex(12, space="l2", M=8, ef_construction=64, seed=1, num_threads=1)
    index.add(base)
    return index, base_lab, q, q_lab
