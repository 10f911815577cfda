from __future__ import annotations

import numpy as np
import pytest

from ruvector_hnsw.errors import InvalidInputError
from ruvector_hnsw.training import (
    CandidateContrastive,
    HardNegativeMiner,
    RandomNegativeMiner,
    info_nce,
    triplet,
)

from ._helpers import fd_grad

LABELS = np.array([0, 0, 1, 1, 2, 2, 0, 1, 2, 3])


def _batch():
    cand = np.array([[0, 2, 1, 4, 6, 3, -1, 9], [7, 3, 9, 5, 2, 8, 0, 1]])
    ql = np.array([0, 1])
    s = np.random.default_rng(0).normal(size=cand.shape)
    return cand, ql, s


def test_full_softmax_matches_manual_masks_and_fd():
    cand, ql, s = _batch()
    obj = CandidateContrastive(temperature=0.5)
    loss, g = obj(s, cand, labels=LABELS, query_labels=ql, exclude_ids=np.array([0, -1]))
    valid = (cand >= 0) & ~(cand == np.array([[0], [-1]]))
    pos = (LABELS[np.maximum(cand, 0)] == ql[:, None]) & valid
    ref_loss, ref_g = info_nce(s, pos, temperature=0.5, candidate_mask=valid)
    assert loss == pytest.approx(ref_loss)
    np.testing.assert_allclose(g, ref_g)
    assert not obj.last_positives[0, 0] and not obj.last_negatives[0, 0]  # the query itself is gone
    fd = fd_grad(lambda x: obj(x, cand, labels=LABELS, query_labels=ql, exclude_ids=np.array([0, -1]))[0], s)
    np.testing.assert_allclose(g, fd, atol=1e-6)


def test_mined_negatives_restrict_the_denominator():
    cand, ql, s = _batch()
    obj = CandidateContrastive(miner=HardNegativeMiner(2), temperature=0.2)
    _, g = obj(s, cand, labels=LABELS, query_labels=ql, num_negatives=1)
    assert obj.last_negatives.sum(axis=1).tolist() == [1, 1]
    used = obj.last_positives | obj.last_negatives
    assert np.all(g[~used] == 0)


def test_positive_ids_and_triplet_variant():
    cand, _, s = _batch()
    pos_ids = np.array([[2, 9, -1], [5, -1, -1]])
    obj = CandidateContrastive("triplet", margin=0.3)
    loss, g = obj(s, cand, positive_ids=pos_ids)
    mask = np.zeros(cand.shape, bool)
    mask[0, [1, 7]] = True
    mask[1, 3] = True
    ref = triplet(s, mask, (cand >= 0) & ~mask, margin=0.3)
    assert loss == pytest.approx(ref[0])
    np.testing.assert_allclose(g, ref[1])


def test_random_miner_state_round_trip_and_errors():
    cand, ql, s = _batch()
    a = CandidateContrastive(miner=RandomNegativeMiner(2, seed=5))
    st = a.state_dict()
    first = a(s, cand, labels=LABELS, query_labels=ql)
    b = CandidateContrastive(miner=RandomNegativeMiner(2, seed=0))
    b.load_state_dict(st)
    assert b(s, cand, labels=LABELS, query_labels=ql)[0] == first[0]
    with pytest.raises(InvalidInputError, match="exactly one"):
        a(s, cand)
    with pytest.raises(InvalidInputError, match="query_labels"):
        a(s, cand, labels=LABELS)
