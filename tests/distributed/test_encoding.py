"""Database codes computed in row shards on Ray workers equal the local encoding exactly."""

from __future__ import annotations

import numpy as np
import pytest

from ruvector_hnsw import distributed
from ruvector_hnsw.errors import NotFittedError

from .conftest import make_searcher


def test_distributed_codes_equal_the_cached_codes(fitted) -> None:
    db = fitted.database_state()
    want = db.codes.z_values()
    got = distributed.encode_rows(fitted, workers=2)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(distributed.encode_rows(fitted, backend="local", workers=5), want)


def test_a_subset_of_rows_in_any_order(fitted) -> None:
    rows = np.array([7, 1199, 3, 64, 7, 640, 0])
    want = fitted.database_state().encode_rows(fitted.model.encoder, rows)
    np.testing.assert_array_equal(distributed.encode_rows(fitted, rows, workers=2), want)
    np.testing.assert_array_equal(want, fitted.database_state().codes.z_values()[rows])


def test_unfitted_searcher_is_refused(index) -> None:
    with pytest.raises(NotFittedError):
        distributed.encode_rows(make_searcher(index), workers=2)
