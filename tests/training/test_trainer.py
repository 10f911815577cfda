from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from ruvector_hnsw.errors import (
    ConfigError,
    FileFormatError,
    IndexCorruptedError,
    NonFiniteError,
    ShapeMismatchError,
)
from ruvector_hnsw.training import (
    SGD,
    Adam,
    CosineSimilarity,
    Curriculum,
    CurriculumStage,
    Trainer,
    WarmupCosineSchedule,
    info_nce,
    load_checkpoint,
    retrieval_validator,
    save_checkpoint,
)

from ._helpers import fd_grad

D_IN, D_OUT, N_CLASSES = 8, 4, 4


def _clusters(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class signal in 2 dims (small), large nuisance variance in the other 6."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, N_CLASSES, size=n)
    centers = np.array([[1, 0], [-1, 0], [0, 1], [0, -1]], float) * 1.0
    x = rng.normal(size=(n, D_IN)) * 2.0
    x[:, :2] = centers[y] + 0.25 * rng.normal(size=(n, 2))
    return x, y


def ref_map_at_r(q: np.ndarray, ql: np.ndarray, db: np.ndarray, dbl: np.ndarray) -> float:
    """Plain mAP@R with cosine ranking (test reference)."""
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    dn = db / np.linalg.norm(db, axis=1, keepdims=True)
    order = np.argsort(-(qn @ dn.T), axis=1, kind="stable")
    aps = []
    for i in range(q.shape[0]):
        r = int(np.sum(dbl == ql[i]))
        rel = dbl[order[i, :r]] == ql[i]
        prec = np.cumsum(rel) / np.arange(1, r + 1)
        aps.append(np.sum(prec * rel) / r)
    return float(np.mean(aps))


class LinearModel:
    """z = x W; supervised InfoNCE between the rows of a batch (cosine scores)."""

    def __init__(self, seed: int = 0, noise: float = 0.05) -> None:
        rng = np.random.default_rng(seed)
        self.params = {"W": rng.normal(size=(D_IN, D_OUT)) / np.sqrt(D_IN)}
        self.own_rng = np.random.default_rng(seed + 100)  # checkpointed through the extra-state hooks
        self.noise = noise
        self.temperatures: list[float | None] = []
        self.lrs: list[float] = []
        self.loaded = 0

    def loss(self, x: np.ndarray, y: np.ndarray, w: np.ndarray, temperature: float) -> tuple[float, np.ndarray]:
        z = x @ w
        sim = CosineSimilarity()
        s = sim.forward(z, z)
        pos = (y[:, None] == y[None, :]) & ~np.eye(len(y), dtype=bool)
        valid = ~np.eye(len(y), dtype=bool)
        loss, gs = info_nce(s, pos, temperature=temperature, candidate_mask=valid)
        g = sim.backward(gs)
        dz = g["query"] + g["candidates"]
        return loss, x.T @ dz

    def loss_and_grads(self, batch: Any, state: Any) -> tuple[float, dict[str, np.ndarray]]:
        x = batch["x"] + self.noise * state.rng.normal(size=batch["x"].shape)
        x = x + self.noise * self.own_rng.normal(size=x.shape)
        tau = state.temperature if state.temperature is not None else 0.2
        self.temperatures.append(state.temperature)
        self.lrs.append(state.lr)
        loss, gw = self.loss(x, batch["y"], self.params["W"], tau)
        return loss, {"W": gw, "x": np.zeros_like(x)}  # an input grad the optimizer must ignore

    def get_extra_state(self) -> dict[str, Any]:
        return {"own_rng": self.own_rng.bit_generator.state}

    def set_extra_state(self, st: dict[str, Any]) -> None:
        self.own_rng.bit_generator.state = st["own_rng"]

    def on_params_loaded(self) -> None:
        self.loaded += 1


@pytest.fixture(scope="module")
def toy():
    xtr, ytr = _clusters(240, 1)
    xdb, ydb = _clusters(200, 2)
    xq, yq = _clusters(60, 3)
    return {"x": xtr, "y": ytr}, (xdb, ydb, xq, yq)


def _validator(sets):
    xdb, ydb, xq, yq = sets

    def validate(model):
        w = model.params["W"]
        return ref_map_at_r(xq @ w, yq, xdb @ w, ydb)

    return validate


def test_toy_model_gradient_is_correct():
    x, y = _clusters(12, 5)
    m = LinearModel()
    w = m.params["W"].copy()
    _, g = m.loss(x, y, w, 0.3)
    np.testing.assert_allclose(g, fd_grad(lambda v: m.loss(x, y, v, 0.3)[0], w), atol=1e-6)


def test_end_to_end_loss_down_metric_up(toy):
    data, sets = toy
    model = LinearModel()
    tr = Trainer(model, Adam(model.params, lr=0.05), epochs=8, batch_size=48, validate=_validator(sets), seed=0)
    h = tr.fit(data)
    assert len(h.epoch) == 8 and len(h.epoch_time_s) == 8 and all(t >= 0 for t in h.epoch_time_s)
    assert h.train_loss[-1] < 0.85 * h.train_loss[0]
    assert h.initial_metric is not None and h.initial_metric < 0.5
    assert h.best_metric is not None and h.best_metric > h.initial_metric + 0.2
    # restored best params reproduce the best metric
    assert _validator(sets)(model) == pytest.approx(h.best_metric)
    assert h.steps[-1] == 8 * 5 and tr.step == 40


def test_deterministic_given_seed_and_varies_with_seed(toy):
    data, _ = toy
    runs = []
    for seed in (3, 3, 4):
        model = LinearModel()
        Trainer(model, Adam(model.params, lr=0.05), epochs=2, batch_size=64, seed=seed).fit(data)
        runs.append(model.params["W"].copy())
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_early_stopping_and_best_restored(toy):
    data, _ = toy
    script = iter([0.1, 0.5, 0.7, 0.69, 0.7, 0.2, 0.9])  # initial, then epochs 0..5

    def validate(model):
        return next(script)

    snapshots = []
    model = LinearModel()
    tr = Trainer(
        model,
        SGD(model.params, lr=0.01),
        epochs=10,
        batch_size=80,
        validate=validate,
        patience=2,
        min_delta=0.001,
        callbacks=[lambda t, h: snapshots.append(t.model.params["W"].copy())],
    )
    h = tr.fit(data)
    # epoch 1 is best (0.7); epochs 2 (0.69) and 3 (0.7, not > 0.7 + min_delta) are bad -> stop after epoch 3
    assert h.stopped_early and h.epoch == [0, 1, 2, 3]
    assert h.best_epoch == 1 and h.best_metric == pytest.approx(0.7)
    assert not np.array_equal(snapshots[1], snapshots[3])
    np.testing.assert_array_equal(model.params["W"], snapshots[1])
    assert model.loaded >= 1


def test_initial_params_kept_when_training_never_beats_them(toy):
    data, _ = toy
    vals = iter([0.9, 0.5, 0.4])
    model = LinearModel()
    w0 = model.params["W"].copy()
    h = Trainer(model, Adam(model.params, lr=0.05), epochs=2, batch_size=80, validate=lambda m: next(vals)).fit(data)
    assert h.best_epoch == -1 and h.initial_metric == 0.9
    np.testing.assert_array_equal(model.params["W"], w0)


def test_resume_gives_identical_continuation(toy, tmp_path):
    data, sets = toy

    def make(epochs, ckpt):
        model = LinearModel()
        sched = WarmupCosineSchedule(0.05, total_steps=6 * 5, warmup_steps=3)
        cur = Curriculum([CurriculumStage(2, temperature=0.3), CurriculumStage(4, temperature=0.1)])
        tr = Trainer(
            model,
            Adam(model.params, lr=0.05),
            epochs=epochs,
            batch_size=48,
            schedule=sched,
            curriculum=cur,
            validate=_validator(sets),
            checkpoint_dir=ckpt,
            seed=7,
            restore_best=False,
        )
        return model, tr

    full_model, full = make(6, tmp_path / "full")
    h_full = full.fit(data)

    _, part = make(3, tmp_path / "part")
    part.fit(data)
    resumed_model, resumed = make(6, tmp_path / "part")
    h_res = resumed.fit(data, resume=True)

    np.testing.assert_array_equal(resumed_model.params["W"], full_model.params["W"])
    assert h_res.train_loss == h_full.train_loss
    assert h_res.val_metric == h_full.val_metric
    assert h_res.lr == h_full.lr and h_res.resumed_from_epoch == 3
    assert h_res.best_epoch == h_full.best_epoch
    np.testing.assert_array_equal(
        Trainer.load_best(tmp_path / "part")["params"]["W"], Trainer.load_best(tmp_path / "full")["params"]["W"]
    )
    # the curriculum reached the model: temperature 0.3 for epochs 0-1, 0.1 afterwards
    assert full_model.temperatures[0] == 0.3 and full_model.temperatures[-1] == 0.1
    # lr came from the schedule, step by step
    sched = WarmupCosineSchedule(0.05, total_steps=30, warmup_steps=3)
    assert full_model.lrs == pytest.approx([sched(i) for i in range(30)])
    assert not list((tmp_path / "full").glob("*.tmp"))


def test_resume_rejects_other_configuration(toy, tmp_path):
    data, _ = toy
    model = LinearModel()
    Trainer(model, Adam(model.params), epochs=1, batch_size=48, checkpoint_dir=tmp_path).fit(data)
    other = LinearModel()
    with pytest.raises(ConfigError, match="batch_size"):
        Trainer(other, Adam(other.params), epochs=2, batch_size=32, checkpoint_dir=tmp_path).fit(data, resume=True)
    with pytest.raises(ShapeMismatchError, match="rows"):
        Trainer(other, Adam(other.params), epochs=2, batch_size=48, checkpoint_dir=tmp_path).fit(
            {"x": data["x"][:100], "y": data["y"][:100]}, resume=True
        )


def test_resume_true_without_checkpoint_starts_fresh(toy, tmp_path):
    data, _ = toy
    model = LinearModel()
    h = Trainer(model, Adam(model.params), epochs=1, batch_size=120, checkpoint_dir=tmp_path / "new").fit(
        data, resume=True
    )
    assert h.resumed_from_epoch is None and h.epoch == [0]
    assert (tmp_path / "new" / "last.json").exists() and (tmp_path / "new" / "best.npz").exists()


def test_monitor_mapping_and_progress_bar(toy, capsys):
    data, _ = toy
    model = LinearModel()
    vals = iter([{"map_at_r": 0.1, "p_at_1": 0.5}, {"map_at_r": 0.3, "p_at_1": 0.4}])
    h = Trainer(model, Adam(model.params), epochs=1, batch_size=120, validate=lambda m: next(vals), progress=True).fit(
        data
    )
    assert h.val_metrics == [{"map_at_r": 0.3, "p_at_1": 0.4}] and h.best_metric == 0.3


def test_nonfinite_loss_and_bad_config(toy):
    data, _ = toy

    class Bad(LinearModel):
        def loss_and_grads(self, batch, state):
            return float("nan"), {"W": np.zeros_like(self.params["W"])}

    bad = Bad()
    with pytest.raises(NonFiniteError, match="loss"):
        Trainer(bad, Adam(bad.params), epochs=1).fit(data)
    m = LinearModel()
    with pytest.raises(ConfigError, match="patience"):
        Trainer(m, patience=2)
    with pytest.raises(ConfigError, match="optimizer"):
        Trainer(m, Adam({"W": m.params["W"].copy()}))
    with pytest.raises(ConfigError, match="model"):
        Trainer(object())  # type: ignore[arg-type]
    with pytest.raises(ShapeMismatchError, match="rows"):
        Trainer(m, epochs=1).fit({"x": np.zeros((3, 8)), "y": np.zeros(4)})


def test_checkpoint_roundtrip_and_corruption(tmp_path):
    state = {
        "a": np.arange(6, dtype=np.float32).reshape(2, 3),
        "nested": {"b": [1, 2.5, None, "s", np.int64(7)], "inf": float("-inf"), "mech/W_q": np.eye(2)},
        "rng": np.random.default_rng(0).bit_generator.state,
    }
    npz, js = save_checkpoint(tmp_path / "ck", state, kind="test")
    back = load_checkpoint(tmp_path / "ck.json", kind="test")
    np.testing.assert_array_equal(back["a"], state["a"])
    assert back["a"].dtype == np.float32
    assert back["nested"]["b"] == [1, 2.5, None, "s", 7] and back["nested"]["inf"] == float("-inf")
    np.testing.assert_array_equal(back["nested"]["mech/W_q"], np.eye(2))
    g = np.random.default_rng()
    g.bit_generator.state = back["rng"]
    assert g.random() == np.random.default_rng(0).random()
    with pytest.raises(FileFormatError, match="expected"):
        load_checkpoint(tmp_path / "ck", kind="other")
    manifest = json.loads(js.read_text())
    manifest["version"] = 99
    js.write_text(json.dumps(manifest))
    with pytest.raises(FileFormatError, match="version"):
        load_checkpoint(tmp_path / "ck")
    save_checkpoint(tmp_path / "ck", state, kind="test")
    npz.write_bytes(npz.read_bytes()[:-10])
    with pytest.raises(IndexCorruptedError, match="manifest"):
        load_checkpoint(tmp_path / "ck")


def test_retrieval_validator_matches_reference(toy):
    _, (xdb, ydb, xq, yq) = toy

    def search(model, q, k):
        w = model.params["W"]
        zq, zd = q @ w, xdb @ w
        zq = zq / np.linalg.norm(zq, axis=1, keepdims=True)
        zd = zd / np.linalg.norm(zd, axis=1, keepdims=True)
        return np.argsort(-(zq @ zd.T), axis=1, kind="stable")[:, :k]

    model = LinearModel()
    out = retrieval_validator(search, xq, yq, ydb)(model)
    w = model.params["W"]
    assert out["map_at_r"] == pytest.approx(ref_map_at_r(xq @ w, yq, xdb @ w, ydb))
    assert set(out) == {"map_at_r", "map_at_100", "p_at_1"}


def test_validate_every(toy):
    data, _ = toy
    calls = []

    def validate(model):
        calls.append(1)
        return float(len(calls))

    model = LinearModel()
    h = Trainer(model, Adam(model.params), epochs=5, batch_size=120, validate=validate, validate_every=2).fit(data)
    # initial + after epochs 1, 3 and the last one (4)
    assert len(calls) == 4
    assert h.val_metric == [None, 2.0, None, 3.0, 4.0] and h.best_epoch == 4
