from __future__ import annotations

import numpy as np
import pytest

from ruvector_hnsw.errors import InvalidInputError, NonFiniteError, ShapeMismatchError
from ruvector_hnsw.training.regularizers import LaplacianRegularizer, laplacian_smoothness

from ._helpers import fd_grad


def _graph():
    # node 0 -> 1,2 ; 1 -> 0,-1(pad) ; 2 -> 2(self),3 ; 3 -> (none) ; 4 -> 0
    indptr = np.array([0, 2, 4, 6, 6, 7])
    indices = np.array([1, 2, 0, -1, 2, 3, 0])
    return indptr, indices


def _ref(z, indptr, indices, w=None, nodes=None):
    total, count = 0.0, 0
    for i in range(len(indptr) - 1) if nodes is None else nodes:
        for e in range(indptr[i], indptr[i + 1]):
            j = indices[e]
            if j < 0 or j == i:
                continue
            total += (1.0 if w is None else w[e]) * np.sum((z[i] - z[j]) ** 2)
            count += 1
    return total, count


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_laplacian_value_and_fd(weighted, reduction):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(5, 3))
    indptr, indices = _graph()
    w = rng.random(7) if weighted else None
    val, g = laplacian_smoothness(z, indptr, indices, weights=w, reduction=reduction)
    ref, count = _ref(z, indptr, indices, w)
    assert count == 5  # 0->1, 0->2, 1->0, 2->3, 4->0
    assert val == pytest.approx(ref / (count if reduction == "mean" else 1))
    fd = fd_grad(lambda x: laplacian_smoothness(x, indptr, indices, weights=w, reduction=reduction)[0], z)
    np.testing.assert_allclose(g, fd, atol=1e-6)


def test_laplacian_trace_identity_on_symmetric_graph():
    rng = np.random.default_rng(1)
    n = 6
    a = np.triu(rng.random((n, n)) < 0.5, 1)
    a = a | a.T
    indptr = np.concatenate([[0], np.cumsum(a.sum(1))])
    indices = np.nonzero(a)[1]
    z = rng.normal(size=(n, 2))
    lap = np.diag(a.sum(1)) - a.astype(float)
    val, _ = laplacian_smoothness(z, indptr, indices)
    assert val == pytest.approx(2 * np.trace(z.T @ lap @ z))


def test_laplacian_nodes_subset_and_regularizer_class():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(5, 2))
    indptr, indices = _graph()
    nodes = np.array([0, 4])
    val, g = laplacian_smoothness(z, indptr, indices, nodes=nodes)
    assert val == pytest.approx(_ref(z, indptr, indices, nodes=nodes)[0])
    fd = fd_grad(lambda x: laplacian_smoothness(x, indptr, indices, nodes=nodes)[0], z)
    np.testing.assert_allclose(g, fd, atol=1e-6)
    reg = LaplacianRegularizer(indptr, indices, strength=0.5, reduction="sum")
    v2, g2 = reg(z, nodes=nodes)
    assert v2 == pytest.approx(0.5 * val)
    np.testing.assert_allclose(g2, 0.5 * g)
    f32, g32 = laplacian_smoothness(z.astype(np.float32), indptr, indices)
    assert g32.dtype == np.float32 and f32 == pytest.approx(laplacian_smoothness(z, indptr, indices)[0], rel=1e-5)


def test_laplacian_errors():
    indptr, indices = _graph()
    with pytest.raises(ShapeMismatchError, match="weights"):
        laplacian_smoothness(np.zeros((5, 2)), indptr, indices, weights=np.ones(3))
    with pytest.raises(InvalidInputError, match="weights"):
        laplacian_smoothness(np.zeros((5, 2)), indptr, indices, weights=-np.ones(7))
    with pytest.raises(ShapeMismatchError, match="indptr"):
        laplacian_smoothness(np.zeros((4, 2)), indptr, indices)
    with pytest.raises(ShapeMismatchError, match="embeddings"):
        LaplacianRegularizer(indptr, indices)(np.zeros((4, 2)))


def test_sparse_grad_matches_dense_and_only_touched_rows_are_read():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(5, 2))
    indptr, indices = _graph()
    nodes = np.array([4, 1])  # edges 4->0 and 1->0 (1->-1 is padding): touches rows 0, 1, 4
    val, dense = laplacian_smoothness(z, indptr, indices, nodes=nodes)
    val2, sparse = laplacian_smoothness(z, indptr, indices, nodes=nodes, sparse_grad=True)
    assert val2 == val
    np.testing.assert_array_equal(sparse.rows, [0, 1, 4])
    np.testing.assert_array_equal(sparse.to_dense(), dense)
    z_bad = z.copy()
    z_bad[3] = np.nan  # untouched row: not read
    assert laplacian_smoothness(z_bad, indptr, indices, nodes=nodes)[0] == pytest.approx(val)
    z_bad[0] = np.inf
    with pytest.raises(NonFiniteError, match="embeddings"):
        laplacian_smoothness(z_bad, indptr, indices, nodes=nodes)
    with pytest.raises(NonFiniteError, match="embeddings"):
        laplacian_smoothness(z_bad, indptr, indices)
