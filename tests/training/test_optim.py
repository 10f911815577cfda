from __future__ import annotations

import numpy as np
import pytest

from ruvector_hnsw.errors import ConfigError, InvalidInputError, NonFiniteError, ShapeMismatchError
from ruvector_hnsw.training.optim import SGD, Adam, AdamW, clip_grad_norm, global_grad_norm, make_optimizer


def _params():
    return {"w": np.array([[1.0, -2.0], [0.5, 3.0]]), "b": np.array([0.1, -0.1])}


def _grads():
    return {"w": np.array([[0.2, 0.4], [-0.6, 0.8]]), "b": np.array([1.0, -1.0]), "query": np.ones((5, 2))}


def test_sgd_plain_step_in_place_and_ignores_input_grads():
    params = _params()
    w_obj = params["w"]
    before = {k: v.copy() for k, v in params.items()}
    SGD(params, lr=0.1).step(_grads())
    assert params["w"] is w_obj
    for k in ("w", "b"):
        np.testing.assert_allclose(params[k], before[k] - 0.1 * _grads()[k])


def test_sgd_momentum_nesterov_weight_decay_two_steps_by_hand():
    lr, mu, wd = 0.1, 0.9, 0.01
    for nesterov in (False, True):
        params = _params()
        p = params["w"].copy()
        opt = SGD(params, lr=lr, momentum=mu, nesterov=nesterov, weight_decay=wd)
        v = np.zeros_like(p)
        for g in (_grads()["w"], 2 * _grads()["w"]):
            opt.step({"w": g})
            gd = g + wd * p
            v = mu * v + gd
            p = p - lr * (gd + mu * v if nesterov else v)
            np.testing.assert_allclose(params["w"], p, rtol=1e-12)
        np.testing.assert_allclose(params["b"], _params()["b"])  # no grad -> untouched


def test_adam_two_steps_by_hand_and_adamw_decoupled():
    lr, b1, b2, eps = 0.01, 0.9, 0.99, 1e-8
    gs = [_grads()["w"], -3 * _grads()["w"]]
    for cls, wd in ((Adam, 0.0), (Adam, 0.1), (AdamW, 0.1)):
        params = _params()
        opt = cls(params, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
        p = params["w"].copy()
        m = np.zeros_like(p)
        v = np.zeros_like(p)
        for t, g in enumerate(gs, start=1):
            opt.step({"w": g})
            ge = g + wd * p if cls is Adam else g
            m = b1 * m + (1 - b1) * ge
            v = b2 * v + (1 - b2) * ge**2
            upd = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
            p = p - lr * (upd + (wd * p if cls is AdamW else 0.0))
            np.testing.assert_allclose(params["w"], p, rtol=1e-12)


def test_no_decay_exempts_parameter():
    params = _params()
    opt = AdamW(params, lr=0.1, weight_decay=0.5, no_decay=["b"])
    b0 = params["b"].copy()
    opt.step({"b": np.zeros(2), "w": np.zeros((2, 2))})
    np.testing.assert_allclose(params["b"], b0)  # zero grad, no decay -> unchanged
    assert not np.allclose(params["w"], _params()["w"])


@pytest.mark.parametrize(
    "factory",
    [
        lambda p: SGD(p, lr=0.05),
        lambda p: SGD(p, lr=0.02, momentum=0.9),
        lambda p: SGD(p, lr=0.02, momentum=0.9, nesterov=True),
        lambda p: Adam(p, lr=0.05),
        lambda p: AdamW(p, lr=0.05, weight_decay=1e-4),
    ],
)
def test_converges_on_quadratic(factory):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 6))
    h = a @ a.T / 6 + np.eye(6)  # SPD Hessian
    target = rng.normal(size=6)
    params = {"x": np.zeros(6)}
    opt = factory(params)
    for _ in range(1500):
        opt.step({"x": h @ (params["x"] - target)})
    np.testing.assert_allclose(params["x"], target, atol=1e-2)


def test_state_dict_round_trip_continues_identically():
    gseq = [np.random.default_rng(i).normal(size=(2, 2)) for i in range(6)]
    pa = _params()
    a = Adam(pa, lr=0.01)
    for g in gseq[:3]:
        a.step({"w": g})
    st = a.state_dict()
    pb = {k: v.copy() for k, v in pa.items()}
    b = Adam(pb, lr=0.5)  # different lr is overwritten by the state
    b.load_state_dict(st)
    assert b.lr == 0.01 and b.step_count == 3
    for g in gseq[3:]:
        a.step({"w": g})
        b.step({"w": g})
    np.testing.assert_array_equal(pa["w"], pb["w"])
    with pytest.raises(InvalidInputError, match="kind"):
        SGD(_params()).load_state_dict(st)


def test_rejected_step_leaves_state_unchanged():
    params = _params()
    opt = SGD(params, lr=0.1, momentum=0.9)
    opt.step(_grads())
    snap = {k: v.copy() for k, v in params.items()}
    vel = opt.state["w"]["velocity"].copy()
    bad = _grads()
    bad["b"] = np.array([np.nan, 0.0])
    with pytest.raises(NonFiniteError, match="b"):
        opt.step(bad)
    with pytest.raises(ShapeMismatchError, match="w"):
        opt.step({"w": np.zeros(3)})
    for k in snap:
        np.testing.assert_array_equal(params[k], snap[k])
    np.testing.assert_array_equal(opt.state["w"]["velocity"], vel)
    assert opt.step_count == 1


def test_clip_grad_norm_and_optimizer_clipping():
    g = {"a": np.array([3.0, 0.0]), "b": np.array([0.0, 4.0]), "query": np.array([100.0])}
    out, norm = clip_grad_norm(g, 1.0, keys=["a", "b"])
    assert norm == pytest.approx(5.0)
    np.testing.assert_allclose(out["a"], [0.6, 0.0])
    np.testing.assert_allclose(out["b"], [0.0, 0.8])
    np.testing.assert_array_equal(out["query"], [100.0])
    np.testing.assert_array_equal(g["a"], [3.0, 0.0])  # input untouched
    assert global_grad_norm(out, ["a", "b"]) == pytest.approx(1.0)
    same, n2 = clip_grad_norm(g, 10.0, keys=["a", "b"])
    assert n2 == pytest.approx(5.0) and same["a"] is g["a"]
    params = {"a": np.zeros(2), "b": np.zeros(2)}
    opt = SGD(params, lr=1.0, max_grad_norm=1.0)
    opt.step(g)
    np.testing.assert_allclose(params["a"], [-0.6, 0.0])
    assert opt.last_grad_norm == pytest.approx(5.0)


def test_float32_params_stay_float32_and_bad_config():
    params = {"w": np.ones(3, np.float32)}
    Adam(params, lr=0.1).step({"w": np.ones(3)})
    assert params["w"].dtype == np.float32
    with pytest.raises(ConfigError, match="lr"):
        SGD(_params(), lr=-1)
    with pytest.raises(ConfigError, match="momentum"):
        SGD(_params(), momentum=1.0)
    with pytest.raises(ConfigError, match="nesterov"):
        SGD(_params(), nesterov=True)
    with pytest.raises(ConfigError, match="betas"):
        Adam(_params(), betas=(0.9, 1.0))
    with pytest.raises(ConfigError, match="params"):
        SGD({"w": np.ones(3, np.int64)})
    with pytest.raises(ConfigError, match="no_decay"):
        AdamW(_params(), no_decay=["zzz"])
    with pytest.raises(ConfigError, match="unknown"):
        make_optimizer("lion", _params())
    assert isinstance(make_optimizer("adamw", _params(), lr=0.1), AdamW)
