"""The small sorting kernel behind neighbourhoods: a stable head equals a stable full sort's head."""

from __future__ import annotations

import numpy as np
import pytest

from ruvector_hnsw.index._graph_kernels import _insertion_sort_by, _stable_head_by


def _arrays(keys: np.ndarray) -> tuple[np.ndarray, ...]:
    n = keys.shape[0]
    return keys.astype(np.float64), np.arange(n, dtype=np.int64), 10 * np.arange(n, dtype=np.int64), \
        -np.arange(n, dtype=np.int64)


@pytest.mark.parametrize("k", [0, 1, 3, 16, 100])
def test_stable_head_matches_a_stable_sort_with_ties(k: int) -> None:
    rng = np.random.default_rng(k)
    for count in (0, 1, 5, 40, 300):
        keys = rng.integers(0, 12, count).astype(np.float64)  # many ties
        keys[::5] = np.inf
        arrs = _arrays(keys)
        _stable_head_by(*arrs, count, k)
        order = np.argsort(keys, kind="stable")[: min(count, k)]
        np.testing.assert_array_equal(arrs[0][: len(order)], keys[order])
        np.testing.assert_array_equal(arrs[1][: len(order)], order)
        np.testing.assert_array_equal(arrs[2][: len(order)], 10 * order)
        np.testing.assert_array_equal(arrs[3][: len(order)], -order)


def test_stable_head_with_nan_reproduces_the_insertion_sort() -> None:
    keys = np.array([3.0, np.nan, 1.0, 2.0, np.nan, 0.5, 1.0])
    head, full = _arrays(keys), _arrays(keys)
    _stable_head_by(*head, keys.shape[0], 3)
    _insertion_sort_by(*full, keys.shape[0])
    np.testing.assert_array_equal(head[1][:3], full[1][:3])
