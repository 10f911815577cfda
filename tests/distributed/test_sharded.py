"""ShardedIndex: shards on Ray actors, exact top-k merge, recall of one monolithic index; attention over it."""

from __future__ import annotations

import numpy as np
import pytest

from ruvector_hnsw import HNSWIndex, distributed
from ruvector_hnsw.distributed.sharded import searcher_on
from ruvector_hnsw.errors import ConfigError
from ruvector_hnsw.ranking import map_at_r, relevance

from .conftest import DIM, make_searcher


def _recall(ids: np.ndarray, gt: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / gt.shape[1] for a, b in zip(ids, gt, strict=True)]))


@pytest.fixture(scope="module")
def sharded(data):
    with distributed.ShardedIndex(DIM, shards=2, M=8, ef_construction=64, seed=1) as sh:
        sh.add(data.base)
        yield sh


def test_merge_topk_is_the_exact_top_k_of_the_union() -> None:
    rng = np.random.default_rng(0)
    ids = [rng.permutation(50)[:6].reshape(1, 6) + 100 * s for s in range(3)]
    keys = [np.sort(rng.random((1, 6)), axis=1) for _ in range(3)]
    keys[1][0, 2] = keys[0][0, 1]  # a tie across shards: the smaller id first
    got_ids, got_keys = distributed.merge_topk(ids, keys, 8)
    flat_ids, flat_keys = np.concatenate(ids, axis=1)[0], np.concatenate(keys, axis=1)[0]
    order = sorted(range(flat_ids.size), key=lambda j: (flat_keys[j], flat_ids[j]))[:8]
    np.testing.assert_array_equal(got_ids[0], flat_ids[order])
    np.testing.assert_array_equal(got_keys[0], flat_keys[order])
    # padding (-1, +inf) goes last and fills short unions
    pad_ids, pad_keys = distributed.merge_topk([np.array([[3, -1]])], [np.array([[0.5, np.inf]])], 3)
    np.testing.assert_array_equal(pad_ids, [[3, -1, -1]])
    assert np.isinf(pad_keys[0, 1:]).all()


def test_sharded_recall_matches_one_index_at_the_same_ef(data, sharded) -> None:
    assert len(sharded) == data.base.shape[0]
    d = ((data.queries[:, None, :].astype(np.float64) - data.base[None].astype(np.float64)) ** 2).sum(-1)
    gt = np.argsort(d, axis=1, kind="stable")[:, :10]
    mono = HNSWIndex(DIM, M=8, ef_construction=64, seed=1, num_threads=1)
    mono.add(data.base)
    for ef in (16, 32, 64):
        r_mono = _recall(mono.search(data.queries, 10, ef=ef)[0], gt)
        ids, dist = sharded.search(data.queries, 10, ef=ef)
        r_shard = _recall(ids, gt)
        # each shard searches half the items at the same ef: never worse, and equal once both saturate
        assert r_shard >= r_mono - 0.01, (ef, r_shard, r_mono)
        if ef >= 32:
            assert abs(r_shard - r_mono) <= 0.01, (ef, r_shard, r_mono)
        assert np.all(np.diff(dist, axis=1) >= 0)
    # every item lives on shard id % 2, and the fan-out reaches both shards
    parts = sharded.shard_indexes()
    assert [sorted(p.ids.tolist()) for p in parts] == [list(range(s, len(data.base), 2)) for s in (0, 1)]
    ids, _ = sharded.search(data.queries, 10, ef=32)
    assert set(np.unique(ids % 2)) == {0, 1}


def test_fan_out_equals_merging_the_shards_searched_here(data, sharded) -> None:
    parts = sharded.shard_indexes()  # the actors' indexes, pickled back
    local = [p.search(data.queries, 10, ef=24) for p in parts]
    want = distributed.merge_topk([r[0] for r in local], [r[1] for r in local], 10)
    got = sharded.search(data.queries, 10, ef=24)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_attention_over_the_shards(data, sharded, fitted) -> None:
    sa = distributed.ShardedAttentionSearch(sharded, fitted)
    assert sum(sa.rows) == len(data.base)
    ids, scores = sa.search(data.queries, 20)
    # the reference: the same model on each shard index here, merged by score
    per = [searcher_on(sa.tree, p).search(data.queries, 20) for p in sharded.shard_indexes()]
    want, neg = distributed.merge_topk([p[0] for p in per], [-p[1].astype(np.float64) for p in per], 20)
    np.testing.assert_array_equal(ids, want)
    np.testing.assert_array_equal(scores, (-neg).astype(np.float32))
    assert np.all(np.diff(scores, axis=1) <= 0)

    def m(found: np.ndarray) -> float:
        rel, n = relevance(found, data.labels, data.query_labels)
        return float(map_at_r(rel, n))

    # the re-ranking acts on the shards: it changes the ranking and is not worse than sharded HNSW
    hnsw_ids = sharded.search(data.queries, 20, ef=30)[0]
    assert not np.array_equal(ids, hnsw_ids)
    assert m(ids) >= m(hnsw_ids) - 0.01


def test_a_label_head_model_is_refused(data, index, sharded) -> None:
    s = make_searcher(index)
    s.fit(data.train[:120], labels=data.labels, query_labels=data.train_labels[:120], epochs=1, batch_size=64)
    if s.model.label_head is None:
        pytest.skip("the label head was not trained on this data")
    with pytest.raises(ConfigError, match="label head"):
        distributed.ShardedAttentionSearch(sharded, s)
