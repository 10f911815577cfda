from __future__ import annotations

import numpy as np
import pytest

from ruvector_hnsw.errors import ConfigError, InvalidInputError, ShapeMismatchError, UnknownIdError
from ruvector_hnsw.training.miners import (
    HardNegativeMiner,
    RandomNegativeMiner,
    SemiHardNegativeMiner,
    label_positive_mask,
    lookup_labels,
)

LABELS = np.array([0, 0, 1, 1, 2, 2, 0, 1, 2, 3])  # label of db id 0..9


def _cands():
    cand = np.array(
        [
            [0, 2, 1, 4, 6, 3, -1, -1],  # query label 0: ids 0,1,6 are false negatives
            [7, 3, 9, 5, 2, 8, 0, 1],  # query label 1
            [-1, -1, -1, -1, -1, -1, -1, -1],  # nothing found
        ]
    )
    ql = np.array([0, 1, 2])
    return cand, ql


def test_lookup_labels_array_and_mapping():
    ids = np.array([[3, -1], [9, 0]])
    vals, present = lookup_labels(LABELS, ids)
    np.testing.assert_array_equal(vals[present], [1, 3, 0])
    mapping = {100 + i: int(v) for i, v in enumerate(LABELS)}
    vals2, _ = lookup_labels(mapping, np.array([[103, -1], [109, 100]]))
    np.testing.assert_array_equal(vals2[present], [1, 3, 0])
    with pytest.raises(UnknownIdError, match="10"):
        lookup_labels(LABELS, np.array([10]))
    with pytest.raises(UnknownIdError, match="5"):
        lookup_labels(mapping, np.array([5]))


def test_label_positive_mask():
    cand, ql = _cands()
    m = label_positive_mask(cand, LABELS, ql)
    ref = np.array([[c >= 0 and LABELS[c] == q for c in row] for row, q in zip(cand, ql, strict=True)])
    np.testing.assert_array_equal(m, ref)


def _check_negatives(out, cand, ql, n):
    assert out.ids.shape == (cand.shape[0], n) and out.columns.shape == (cand.shape[0], n)
    for b in range(cand.shape[0]):
        real = out.ids[b][out.ids[b] >= 0]
        assert len(set(real.tolist())) == len(real)
        for i, c in zip(out.ids[b], out.columns[b], strict=True):
            if i < 0:
                assert c == -1
                continue
            assert LABELS[i] != ql[b], "false negative returned"
            if c >= 0:
                assert cand[b, c] == i


def test_hard_miner_takes_first_non_matching_in_order_and_by_score():
    cand, ql = _cands()
    out = HardNegativeMiner(3)(cand, labels=LABELS, query_labels=ql)
    _check_negatives(out, cand, ql, 3)
    np.testing.assert_array_equal(out.ids[0], [2, 4, 3])
    np.testing.assert_array_equal(out.ids[1], [9, 5, 8])  # id 2 has label 1
    np.testing.assert_array_equal(out.ids[2], [-1, -1, -1])
    scores = np.tile(np.linspace(0, 1, 8), (3, 1))  # reversed ranking: last columns are hardest
    out = HardNegativeMiner(2)(cand, labels=LABELS, query_labels=ql, scores=scores)
    np.testing.assert_array_equal(out.ids[0], [3, 4])  # id 6 (col 4) is a false negative
    np.testing.assert_array_equal(out.ids[1], [1, 0])
    cm = out.column_mask()
    assert cm.shape == cand.shape and cm[0, 5] and cm[0, 3] and cm.sum() == 4


def test_hard_miner_exclude_skip_and_padding_when_short():
    cand, ql = _cands()
    out = HardNegativeMiner(10)(cand, labels=LABELS, query_labels=ql, exclude_ids=np.array([-1, 9, -1]))
    _check_negatives(out, cand, ql, 10)
    assert 9 not in out.ids[1]
    assert (out.ids[0] >= 0).sum() == 3  # only ids 2,4,3 are eligible
    skip = HardNegativeMiner(2, skip_top=1)(cand, labels=LABELS, query_labels=ql)
    np.testing.assert_array_equal(skip.ids[0], [4, 3])
    over = HardNegativeMiner(2)(cand, labels=LABELS, query_labels=ql, num_negatives=1)
    assert over.ids.shape == (3, 1)


def test_semi_hard_window_and_fallbacks():
    cand = np.array([[0, 2, 3, 4, 5, 1]])  # query label 0: positives ids 0 (s=.9) and 1 (s=.5)
    s = np.array([[0.9, 0.8, 0.45, 0.35, 0.1, 0.5]])
    ql = np.array([0])
    m = SemiHardNegativeMiner(3, margin=0.2, fallback="none")
    out = m(cand, labels=LABELS, query_labels=ql, scores=s)
    # reference = hardest positive 0.5; window (0.3, 0.5): ids 3 (.45), 4 (.35)
    np.testing.assert_array_equal(out.ids[0], [3, 4, -1])
    hard = SemiHardNegativeMiner(3, margin=0.2, fallback="hard")(cand, labels=LABELS, query_labels=ql, scores=s)
    np.testing.assert_array_equal(hard.ids[0], [3, 4, 2])
    ref = SemiHardNegativeMiner(3, margin=0.2, fallback="none")(
        cand, labels=LABELS, query_labels=ql, scores=s, positive_scores=np.array([0.95])
    )
    np.testing.assert_array_equal(ref.ids[0], [2, -1, -1])
    with pytest.raises(InvalidInputError, match="scores"):
        m(cand, labels=LABELS, query_labels=ql)


def test_random_miner_seeded_variation_and_reproducible():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=200)
    cand = rng.integers(0, 200, size=(6, 40))
    cand[:, -5:] = -1
    ql = rng.integers(0, 5, size=6)
    a = RandomNegativeMiner(8, seed=1)
    first, second = a(cand, labels=labels, query_labels=ql), a(cand, labels=labels, query_labels=ql)
    assert not np.array_equal(first.ids, second.ids)
    b = RandomNegativeMiner(8, seed=1)
    np.testing.assert_array_equal(b(cand, labels=labels, query_labels=ql).ids, first.ids)
    for out in (first, second):
        assert (out.ids >= 0).all()
        assert (labels[out.ids] != ql[:, None]).all()
        assert (np.take_along_axis(cand, out.columns, 1) == out.ids).all()
    # state round trip continues the same sequence
    st = a.state_dict()
    nxt = a(cand, labels=labels, query_labels=ql)
    c = RandomNegativeMiner(8, seed=99)
    c.load_state_dict(st)
    np.testing.assert_array_equal(c(cand, labels=labels, query_labels=ql).ids, nxt.ids)


def test_random_miner_database_pool():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3, 3])
    cand = np.array([[0, 1, -1], [3, -1, -1]])
    ql = np.array([0, 1])
    m = RandomNegativeMiner(4, pool="database", seed=3)
    out = m(cand, labels=labels, query_labels=ql, exclude_ids=np.array([-1, 5]))
    assert (out.columns == -1).all()
    for b in range(2):
        row = out.ids[b]
        assert len(set(row.tolist())) == 4 and (row >= 0).all()
        assert (labels[row] != ql[b]).all()
    assert 5 not in out.ids[1]
    again = m(cand, labels=labels, query_labels=ql)
    assert not np.array_equal(again.ids, out.ids)


def test_miner_errors():
    cand, ql = _cands()
    with pytest.raises(ConfigError, match="num_negatives"):
        HardNegativeMiner(-1)
    with pytest.raises(ShapeMismatchError, match="query_labels"):
        HardNegativeMiner(2)(cand, labels=LABELS, query_labels=ql[:2])
    with pytest.raises(ShapeMismatchError, match="scores"):
        HardNegativeMiner(2)(cand, labels=LABELS, query_labels=ql, scores=np.zeros((3, 2)))
    with pytest.raises(InvalidInputError, match="candidate_ids"):
        HardNegativeMiner(2)(cand - 5, labels=LABELS, query_labels=ql)
    with pytest.raises(ConfigError, match="pool"):
        RandomNegativeMiner(2, pool="everything")  # type: ignore[arg-type]
