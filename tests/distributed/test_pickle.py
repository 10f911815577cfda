"""Fitted searchers, indexes and evaluation methods round-trip through pickle (what Ray and process pools need)."""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest

from ruvector_hnsw.errors import MissingDependencyError
from ruvector_hnsw.eval.methods import make_hnsw

from .conftest import make_searcher


def test_fitted_searcher_with_a_label_head_ranks_identically_after_pickle(index, data) -> None:
    s = make_searcher(index)
    s.fit(data.train, labels=data.labels, query_labels=data.train_labels, epochs=1, batch_size=64)
    clone = pickle.loads(pickle.dumps(s, protocol=pickle.HIGHEST_PROTOCOL))
    assert clone.fitted and clone.alpha == s.alpha and clone.model.lam == s.model.lam
    for _ in range(3):  # repeated calls, not one lucky one
        a, b = s.search(data.queries, 15), clone.search(data.queries, 15)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(clone.database_state().codes.z_values(), s.database_state().codes.z_values())


def test_index_and_eval_methods_pickle(index, data) -> None:
    from ray import cloudpickle

    back = pickle.loads(pickle.dumps(index))
    np.testing.assert_array_equal(back.search(data.queries, 10, ef=32)[0], index.search(data.queries, 10, ef=32)[0])
    method = make_hnsw(index, ef=24)  # a closure over the index: cloudpickle, as Ray ships it
    again = pickle.loads(cloudpickle.dumps(method))
    np.testing.assert_array_equal(again(data.queries, 10)[0], method(data.queries, 10)[0])
    assert again.params == {"ef": 24}


def test_without_ray_a_typed_error_says_how_to_install(monkeypatch) -> None:
    from ruvector_hnsw.distributed.cluster import require_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(MissingDependencyError, match=r"ruvector-hnsw\[ray\]") as info:
        require_ray()
    assert isinstance(info.value, ImportError)
