"""Data-parallel fit on Ray workers: one worker is local fit bit for bit; two match the global batch to 1e-5."""

from __future__ import annotations

import numpy as np

from ruvector_hnsw import distributed

from .conftest import make_searcher

FIT = {"epochs": 2, "batch_size": 100, "random_negatives": 16, "latent_negatives": 8, "extra_positives": 8}


def _fit(index, data, runner=None, **kw):
    s = make_searcher(index, label_head=False, dropout=kw.pop("dropout", 0.0))
    opts = {**FIT, **kw}
    h = s.fit(data.train, labels=data.labels, query_labels=data.train_labels, **opts) if runner is None else \
        distributed.fit(s, data.train, data.labels, data.train_labels, **runner, **opts)
    return s, h


def _same_params(a, b) -> bool:
    pa, pb = a.model.encoder.params, b.model.encoder.params
    return pa.keys() == pb.keys() and all(np.array_equal(pa[k], pb[k]) for k in pa)


def test_one_worker_is_local_fit_bit_for_bit(index, data) -> None:
    # the default options: fresh_rows (importance-chosen rows) and dropout both draw on the path
    a, ha = _fit(index, data, dropout=0.1)
    b, hb = _fit(index, data, {"workers": 1}, dropout=0.1)
    assert ha.train_loss == hb.train_loss
    assert _same_params(a, b) and a.alpha == b.alpha
    q = data.queries[:64]
    np.testing.assert_array_equal(a.search(q, 10)[1], b.search(q, 10)[1])


def test_two_workers_follow_the_global_batch(index, data) -> None:
    a, ha = _fit(index, data, fresh_rows=None)
    with distributed.DataParallel(2) as runner:
        s = make_searcher(index, label_head=False)
        hc = s.fit(data.train, labels=data.labels, query_labels=data.train_labels, fresh_rows=None,
                   step_runner=runner, **FIT)
        # batches of 100 split 64 + 36: unequal slices, so the weighting matters
        assert any(len(active) == 2 and active[0] != active[1] for _, active in runner.log)
    np.testing.assert_allclose(hc.train_loss, ha.train_loss, atol=1e-5, rtol=0)
    assert not _same_params(a, s)  # computed elsewhere (other GEMM blocks), not copied
    pa, pc = a.model.encoder.params, s.model.encoder.params
    assert max(float(np.max(np.abs(pa[k] - pc[k]))) for k in pa) < 1e-4


def test_local_backend_matches_the_ray_workers(index, data) -> None:
    _, h_ray = _fit(index, data, {"workers": 2}, fresh_rows=None, epochs=1)
    _, h_loc = _fit(index, data, {"workers": 2, "backend": "local"}, fresh_rows=None, epochs=1)
    assert h_ray.train_loss == h_loc.train_loss


def test_unweighted_averaging_would_be_caught(index, data, monkeypatch) -> None:
    """The 1e-5 check above can fail: averaging the slices without their weights is off by more."""
    _, ha = _fit(index, data, fresh_rows=None, epochs=1)
    monkeypatch.setattr("ruvector_hnsw.distributed.data_parallel.slice_weights",
                        lambda active: np.full(len(active), 1.0 / len(active)))
    _, hb = _fit(index, data, {"workers": 2, "backend": "local"}, fresh_rows=None, epochs=1)
    assert abs(hb.train_loss[0] - ha.train_loss[0]) > 1e-5
