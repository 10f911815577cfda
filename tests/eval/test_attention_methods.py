"""Trained attention rerankers as evaluation methods: registration, gain, training split, cache."""

from __future__ import annotations

import numpy as np
import pytest

from ruvector_hnsw import eval as ev
from ruvector_hnsw.attention import MECHANISMS
from ruvector_hnsw.datasets import load
from ruvector_hnsw.errors import ConfigError
from ruvector_hnsw.search import AttentionSearch


@pytest.fixture(scope="module")
def tiny():
    return load("clusters:tiny", seed=0, gt_k=0)


@pytest.fixture(scope="module")
def tiny_index(tiny):
    return ev.build_hnsw_index(tiny, M=16, ef_construction=200, seed=0, num_threads=1, ef=128)


@pytest.fixture
def fit_spy(monkeypatch):
    """Record the queries every AttentionSearch.fit receives."""
    calls: list[np.ndarray] = []
    original = AttentionSearch.fit

    def spy(self, train_queries, *a, **kw):
        calls.append(np.array(train_queries, copy=True))
        return original(self, train_queries, *a, **kw)

    monkeypatch.setattr(AttentionSearch, "fit", spy)
    return calls


def _map_at_r(method, ds) -> float:
    ids, _ = method(ds.queries, ds.n_base)
    return float(ev.labelled_metrics(ids, ds.base_labels, ds.query_labels)["map_at_r"])


def test_every_mechanism_and_the_baselines_are_registered():
    for name in ev.ATTENTION_METHODS:
        assert name in ev.METHODS
    assert set(ev.ATTENTION_METHODS.values()) == set(MECHANISMS)
    assert {"linear_proj", "mlp_adapter", "label_classifier", "diffusion", "model", "hnsw", "alpha_qe",
            "dba"} <= set(ev.METHODS)
    assert ev.TRAINED_METHODS == frozenset(ev.ATTENTION_METHODS) | {"linear_proj", "mlp_adapter", "label_classifier"}


def test_trained_local_global_beats_hnsw_and_trains_on_the_train_split_only(tiny, tiny_index, fit_spy):
    methods = ev.build_methods("hnsw,local_global:epochs=3", tiny, index=tiny_index, seed=0, num_threads=1)
    lg = methods["local_global:epochs=3"]
    assert _map_at_r(lg, tiny) > _map_at_r(methods["hnsw"], tiny) + 0.05
    # the fit saw exactly the dataset's training queries, none of the evaluation queries
    assert len(fit_spy) == 1
    np.testing.assert_array_equal(fit_spy[0], tiny.train_queries)
    seen = {row.tobytes() for row in fit_spy[0]}
    assert not any(row.tobytes() in seen for row in tiny.queries)
    p = lg.params
    assert p["mechanism"] == "local_global" and p["n_train_queries"] == tiny.n_train_queries
    assert p["train_source"] == "dataset" and p["fit_s"] > 0
    assert len(p["epoch_time_s"]) == p["epochs_run"] == 3 and len(p["val_map_at_r"]) == 3


@pytest.mark.parametrize("mechanism", ["rope", "dual_space"])


def test_other_mechanisms_run(tiny, tiny_index, mechanism):
    m = ev.build_methods(f"{mechanism}:epochs=1:expand=0", tiny, index=tiny_index, num_threads=1)
    ids, scores = next(iter(m.values()))(tiny.queries[:7], 12)
    assert ids.shape == (7, 12) and ids.dtype == np.int64 and (ids >= 0).all()
    assert np.all(np.diff(scores, axis=1) <= 0)  # best first


def test_options_reach_fit_and_constructor_and_search_options_share_one_fit(tiny, tiny_index, fit_spy):
    opts = "epochs=2:candidates=50:n_train=80:batch_size=40"
    methods = ev.build_methods(f"local_global:{opts}:expand=0,local_global:{opts}:expand=2", tiny,
                               index=tiny_index, num_threads=1)
    assert len(fit_spy) == 1  # expand acts at search time: one fitted model, two views
    assert fit_spy[0].shape[0] == 80
    a, b = methods.values()
    assert (a.params["expand"], b.params["expand"]) == (0, 2)
    assert a.params["fit_s"] == b.params["fit_s"]
    p = a.params
    assert p["candidates"] == 50 and p["n_train_queries"] == 80 and p["epochs_run"] == 2
    assert p["fit_options"] == {"epochs": 2, "batch_size": 40}
    with pytest.raises(ConfigError):
        ev.build_methods("local_global:epochs=1:no_such_option=3", tiny, index=tiny_index)


def test_dataset_without_training_queries(tiny):
    no_train = tiny.replace(train_queries=None, train_query_labels=None)
    with pytest.raises(ConfigError, match="training queries"):
        ev.build_methods("local_global:epochs=1", no_train, num_threads=1)
    split, info = ev.ensure_train_split(no_train, 40, seed=3)
    assert info == {"train_source": "split_queries", "n_train_queries": 40, "split_seed": 3,
                    "n_eval_queries": no_train.n_queries - 40}
    assert split.n_queries == no_train.n_queries - 40 and split.n_train_queries == 40
    eval_rows = {r.tobytes() for r in split.queries}
    assert not any(r.tobytes() in eval_rows for r in split.train_queries)
    same, info2 = ev.ensure_train_split(tiny)
    assert same is tiny and info2["train_source"] == "dataset"
    tq, _, _, tinfo = ev.training_data(split)
    assert tinfo["train_source"] == "split_queries" and tq.shape[0] == 40


def test_saved_model_method_round_trip(tiny, tiny_index, tmp_path):
    ctx = ev.BuildContext(tiny, tiny_index, num_threads=1)
    method = ev.make_attention(ctx, "local_global", epochs=1, expand=2)
    model, info = ev.fit_attention(ctx, "local_global", epochs=1)  # the cached fit: no second training
    assert info["fit_s"] == method.params["fit_s"]
    model.expand = 2
    model.save(tmp_path / "m")
    loaded = ev.build_methods(f"model:path={tmp_path / 'm'}", tiny, index=tiny_index, num_threads=1)
    restored = next(iter(loaded.values()))
    assert restored.params["mechanism"] == "local_global" and restored.params["fitted"]
    assert restored.params["expand"] == 2
    ids_a, _ = method(tiny.queries, 20)
    ids_b, _ = restored(tiny.queries, 20)
    np.testing.assert_array_equal(ids_a, ids_b)


def test_encoder_stack_options_reach_the_model(tiny, tiny_index):
    methods = ev.build_methods("local_global:epochs=1:n_train=60:layers=2:norm=rms:dropout=0.1", tiny,
                               index=tiny_index, num_threads=1)
    p = next(iter(methods.values())).params
    assert (p["layers"], p["norm"]) == (2, "rms")
    ctx = ev.BuildContext(tiny, tiny_index, num_threads=1)
    model, _ = ev.fit_attention(ctx, "local_global", epochs=1, n_train=60, layers=2, norm="layer")
    cfg = model.model.config
    assert (cfg.layers, cfg.norm, cfg.dropout) == (2, "layer", 0.0)
    assert "block2.norm.bias" in model.model.encoder.params


def test_training_toolkit_options_reach_fit(tiny, tiny_index, monkeypatch):
    seen: dict = {}
    original = AttentionSearch.fit

    def spy(self, train_queries, *a, **kw):
        seen.update(kw)
        return original(self, train_queries, *a, **kw)

    monkeypatch.setattr(AttentionSearch, "fit", spy)
    methods = ev.build_methods("local_global:epochs=1:n_train=60:loss=triplet:margin=0.3:miner=random"
                               ":curriculum=1/0.2/4:regularizer=laplacian:reg_weight=0.5:optimizer=sgd", tiny,
                               index=tiny_index, num_threads=1)
    want = {"loss": "triplet", "margin": 0.3, "miner": "random", "curriculum": "1/0.2/4",
            "regularizer": "laplacian", "reg_weight": 0.5, "optimizer": "sgd"}
    assert {k: seen[k] for k in want} == want
    assert next(iter(methods.values())).params["fit_options"] == {"epochs": 1, **want}


def test_code_dtype_option_reaches_the_model(tiny, tiny_index):
    methods = ev.build_methods("local_global:epochs=1:n_train=60:code_dtype=int8", tiny, index=tiny_index,
                               num_threads=1)
    p = next(iter(methods.values())).params
    assert p["code_dtype"] == "int8" and p["code_memory_bytes"] > 0
    ctx = ev.BuildContext(tiny, tiny_index, num_threads=1)
    f32, _ = ev.fit_attention(ctx, "local_global", epochs=1, n_train=60)
    i8, _ = ev.fit_attention(ctx, "local_global", epochs=1, n_train=60, code_dtype="int8")
    assert i8 is not f32  # another model, not the cached float32 one
    assert i8.database_state().codes.store.raw.dtype == np.int8
    assert f32.database_state().codes.store.raw.dtype == np.float32
    assert f32.memory_bytes()["total"] / i8.memory_bytes()["total"] >= 3.5


def test_ablation_options_reach_the_model(tiny, tiny_index):
    methods = ev.build_methods("local_global:epochs=1:n_train=60:context=none:spectral=0:label_head=false", tiny,
                               index=tiny_index, num_threads=1)
    p = next(iter(methods.values())).params
    assert (p["context"], p["spectral"], p["label_head"]) == ("none", 0, False)
    methods = ev.build_methods("local_global:epochs=1:n_train=60:demote=0", tiny, index=tiny_index, num_threads=1)
    p = next(iter(methods.values())).params
    assert p["demote"] is False and p["demote_known"] == 0.0
    with pytest.raises(ConfigError, match="demote must be a bool"):  # not silently read as True
        ev.build_methods("local_global:epochs=1:n_train=60:demote=maybe", tiny, index=tiny_index, num_threads=1)
