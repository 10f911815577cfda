"""Relevance lookups of the training loop: RelevantRows (dense and sorted-key forms) vs a plain reference."""

from __future__ import annotations

import numpy as np
import pytest

from ruvector_hnsw.search.training import RelevantRows, ap_at_r_of_rows, rows_in_lists


def _reference(rows: np.ndarray, lists: list[np.ndarray], idx: np.ndarray) -> np.ndarray:
    return np.array([[r >= 0 and r in set(lists[i].tolist()) for r in row] for row, i in zip(rows, idx, strict=True)],
                    dtype=bool).reshape(rows.shape)


@pytest.mark.parametrize("dense", [True, False])
def test_relevant_rows_match_the_reference(monkeypatch, dense: bool) -> None:
    rng = np.random.default_rng(0)
    n = 300
    lists = [rng.choice(n, rng.integers(0, 40), replace=False) for _ in range(25)]
    if not dense:
        monkeypatch.setattr(RelevantRows, "DENSE_LIMIT", 10)
    rel = RelevantRows(lists, n)
    assert (rel._dense is not None) == dense
    idx = rng.integers(0, 25, 60)
    rows = rng.integers(-1, n + 5, (60, 30))  # padding and rows past the table are never relevant
    want = _reference(rows, lists, idx)
    np.testing.assert_array_equal(rel(rows, idx), want)
    np.testing.assert_array_equal(rows_in_lists(rows, lists, idx), want)
    ranked = rng.integers(0, n, (25, 50))
    np.testing.assert_array_equal(ap_at_r_of_rows(ranked, lists, relevant=rel), ap_at_r_of_rows(ranked, lists))
