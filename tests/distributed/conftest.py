"""A real local Ray cluster for the session (DESIGN.md section 11), and tiny labelled data shared by the tests."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from ruvector_hnsw import AttentionSearch, HNSWIndex

ray = pytest.importorskip("ray", reason="the distributed tests need Ray: pip install 'ruvector-hnsw[ray]'")

DIM = 16


@pytest.fixture(scope="session", autouse=True)
def cluster():
    """``ray.init(num_cpus=2)`` once per session, shut down at the end."""
    from ruvector_hnsw import distributed

    started = not ray.is_initialized()
    distributed.connect("local", num_cpus=2)
    yield ray
    if started:
        ray.shutdown()


@dataclass
class Labelled:
    base: np.ndarray
    labels: np.ndarray
    train: np.ndarray
    train_labels: np.ndarray
    queries: np.ndarray
    query_labels: np.ndarray
    metric: str = "l2"
    name: str = "toy"

    @property
    def base_labels(self) -> np.ndarray:
        return self.labels


def labelled(n: int = 1200, n_train: int = 300, n_eval: int = 300, classes: int = 10, seed: int = 0) -> Labelled:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((classes, DIM)) * 1.2

    def draw(m: int):
        lab = rng.integers(0, classes, m)
        return (centers[lab] + 0.6 * rng.standard_normal((m, DIM))).astype(np.float32), lab

    base, lab = draw(n)
    tq, tl = draw(n_train)
    eq, el = draw(n_eval)
    return Labelled(base, lab, tq, tl, eq, el)


@pytest.fixture(scope="session")
def data() -> Labelled:
    return labelled()


@pytest.fixture(scope="session")
def index(data: Labelled) -> HNSWIndex:
    idx = HNSWIndex(DIM, M=8, ef_construction=64, seed=1, num_threads=1)
    idx.add(data.base)
    idx.ef = 64
    return idx


def make_searcher(index: HNSWIndex, **kw) -> AttentionSearch:
    opts = {"candidates": 30, "k_local": 8, "k_global": 4, "latent": "flat", "spectral": 8, "num_threads": 1}
    return AttentionSearch(index, "scaled_dot", **{**opts, **kw})


@pytest.fixture(scope="session")
def fitted(data: Labelled, index: HNSWIndex) -> AttentionSearch:
    """A fitted searcher without a label head (it can move to shards)."""
    s = make_searcher(index, label_head=False)
    s.fit(data.train, labels=data.labels, query_labels=data.train_labels, epochs=2, batch_size=64)
    return s
