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


# ---------------------------------------------------------------------- natural gradient
def _softmax_problem(seed: int = 0, n: int = 300, d: int = 6, c: int = 4):
    """Seeded softmax regression with anisotropic inputs and noisy labels (a finite optimum)."""
    rng = np.random.default_rng(seed)
    scales = np.array([1.0, 4.0, 0.25, 1.0, 2.5, 0.5])[:d]
    x = rng.standard_normal((n, d)) * scales + 0.5
    w_true = rng.standard_normal((c, d)) / scales
    s = x @ w_true.T
    p = np.exp(s - s.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    y = np.array([rng.choice(c, p=row) for row in p])
    return x, y, c


def _softmax(x, params):
    s = x @ params["W"].T + params["b"]
    e = np.exp(s - s.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _loss_grads(x, y, c, params):
    p = _softmax(x, params)
    n = x.shape[0]
    loss = -float(np.log(p[np.arange(n), y]).mean())
    r = p.copy()
    r[np.arange(n), y] -= 1.0
    return loss, {"W": r.T @ x / n, "b": r.mean(axis=0)}, p


def _zero_params(d: int, c: int):
    return {"W": np.zeros((c, d)), "b": np.zeros(c)}


def _dense_fisher(x, p):
    """Analytic Fisher of softmax regression over (W row-major, b): mean_i H_i (x) [x_i, 1][x_i, 1]^T."""
    n, d = x.shape
    c = p.shape[1]
    xt = np.hstack([x, np.ones((n, 1))])
    fw = np.zeros((c * (d + 1), c * (d + 1)))
    for i in range(n):
        h = np.diag(p[i]) - np.outer(p[i], p[i])
        fw += np.kron(h, np.outer(xt[i], xt[i]))
    fw /= n
    # reorder from (c, d+1) blocks to [W (c*d) row-major, b (c)]
    idx_w = [ci * (d + 1) + j for ci in range(c) for j in range(d)]
    idx_b = [ci * (d + 1) + d for ci in range(c)]
    order = idx_w + idx_b
    return fw[np.ix_(order, order)]


def _flat(v):
    return np.concatenate([np.asarray(v["W"]).ravel(), np.asarray(v["b"]).ravel()])


def test_softmax_fvp_equals_the_dense_fisher_times_v():
    from ruvector_hnsw.training.optim import softmax_fisher_vector_product

    x, _, c = _softmax_problem(n=40)
    rng = np.random.default_rng(1)
    params = {"W": rng.standard_normal((c, x.shape[1])) * 0.3, "b": rng.standard_normal(c) * 0.3}
    p = _softmax(x, params)
    f = _dense_fisher(x, p)
    for s in range(3):
        v = {"W": np.random.default_rng(10 + s).standard_normal((c, x.shape[1])),
             "b": np.random.default_rng(20 + s).standard_normal(c)}
        np.testing.assert_allclose(_flat(softmax_fisher_vector_product(x, p, v)), f @ _flat(v), rtol=1e-10,
                                   atol=1e-12)
    only_w = softmax_fisher_vector_product(x, p, {"W": v["W"]})
    assert set(only_w) == {"W"}
    nb = c * x.shape[1]
    np.testing.assert_allclose(only_w["W"].ravel(), f[:nb, :nb] @ v["W"].ravel(), rtol=1e-10, atol=1e-12)
    with pytest.raises(ShapeMismatchError, match="W"):
        softmax_fisher_vector_product(x, p, {"W": np.zeros((c, 2))})


def test_natural_gradient_cg_solves_the_damped_fisher_system():
    from ruvector_hnsw.training.optim import NaturalGradient, softmax_fisher_vector_product

    x, y, c = _softmax_problem(n=60)
    d = x.shape[1]
    rng = np.random.default_rng(2)
    start = {"W": rng.standard_normal((c, d)) * 0.2, "b": rng.standard_normal(c) * 0.2}
    _, g, p = _loss_grads(x, y, c, start)
    damping = 1e-2
    a = _dense_fisher(x, p) + damping * np.eye(c * d + c)
    exact = np.linalg.solve(a, _flat(g))
    calls = []

    def fvp(v):
        calls.append(1)
        return softmax_fisher_vector_product(x, p, v)

    iters = {}
    for tol in (1e-10, 1e-3):
        params = {k: v.copy() for k, v in start.items()}
        opt = NaturalGradient(params, lr=1.0, damping=damping, tol=tol, max_iter=200)
        calls.clear()
        opt.step(g, fvp=fvp)
        step = _flat(start) - _flat(params)
        resid = np.linalg.norm(a @ step - _flat(g)) / np.linalg.norm(_flat(g))
        assert resid <= tol * (1 + 1e-6)
        assert opt.last_cg_residual == pytest.approx(resid, rel=1e-4, abs=1e-13)
        assert opt.last_cg_iters == len(calls)  # one FVP per CG iteration
        iters[tol] = opt.last_cg_iters
        if tol == 1e-10:
            np.testing.assert_allclose(step, exact, rtol=1e-7, atol=1e-9)
    assert 1 <= iters[1e-3] < iters[1e-10]  # a looser tolerance stops earlier
    # one CG iteration is the exact line search along g: x = (g.g / g.A g) g
    params = {k: v.copy() for k, v in start.items()}
    NaturalGradient(params, lr=0.5, damping=damping, max_iter=1).step(g, fvp=fvp)
    gf = _flat(g)
    np.testing.assert_allclose(_flat(start) - _flat(params), 0.5 * (gf @ gf) / (gf @ a @ gf) * gf, rtol=1e-10)


def _steps_to(losses, target):
    hit = [i + 1 for i, v in enumerate(losses) if v <= target]
    return hit[0] if hit else None


def test_natural_gradient_reaches_adams_loss_in_at_least_half_the_steps():
    from ruvector_hnsw.training.optim import NaturalGradient, softmax_fisher_vector_product

    x, y, c = _softmax_problem()
    d = x.shape[1]
    budget = 300
    adam_runs = {}
    for lr in (0.01, 0.03, 0.1, 0.3):  # tune Adam's lr on the final loss
        params = _zero_params(d, c)
        opt = Adam(params, lr=lr)
        curve = []
        for _ in range(budget):
            _, g, _ = _loss_grads(x, y, c, params)
            opt.step(g)
            curve.append(_loss_grads(x, y, c, params)[0])
        adam_runs[lr] = curve
    best_lr = min(adam_runs, key=lambda k: adam_runs[k][-1])
    target = adam_runs[best_lr][-1]
    adam_steps = _steps_to(adam_runs[best_lr], target)
    params = _zero_params(d, c)
    opt_ng = NaturalGradient(params, lr=1.0, damping=1e-4, max_iter=50, tol=1e-8)
    curve_ng = []
    for _ in range(budget):
        _, g, p = _loss_grads(x, y, c, params)
        opt_ng.step(g, fvp=lambda v, p=p: softmax_fisher_vector_product(x, p, v))
        curve_ng.append(_loss_grads(x, y, c, params)[0])
    ng_steps = _steps_to(curve_ng, target)
    assert ng_steps is not None, (target, curve_ng[-1])
    assert 2 * ng_steps <= adam_steps, (ng_steps, adam_steps, best_lr, target)


def test_natural_gradient_diagonal_mode_decreases_the_loss():
    from ruvector_hnsw.training.optim import NaturalGradient

    x, y, c = _softmax_problem()
    params = _zero_params(x.shape[1], c)
    opt = NaturalGradient(params, lr=0.02, mode="diagonal", damping=0.05)
    assert not opt.wants_fvp
    first = _loss_grads(x, y, c, params)[0]
    for _ in range(100):
        _, g, _ = _loss_grads(x, y, c, params)
        opt.step(g)
    last = _loss_grads(x, y, c, params)[0]
    assert last < 0.8 * first
    # the diagonal rule by hand for one parameter and two steps
    pw = {"w": np.array([1.0, -2.0])}
    o = NaturalGradient(pw, lr=0.1, mode="diagonal", damping=0.5, beta=0.9, weight_decay=0.1)
    w, f = pw["w"].copy(), np.zeros(2)
    for t, g in enumerate((np.array([0.3, -1.0]), np.array([-0.2, 0.4])), start=1):
        o.step({"w": g})
        ge = g + 0.1 * w
        f = 0.9 * f + 0.1 * ge**2
        w = w - 0.1 * ge / (f / (1 - 0.9**t) + 0.5)
        np.testing.assert_allclose(pw["w"], w, rtol=1e-12)


def test_natural_gradient_bad_arguments_raise_and_leave_state_unchanged():
    from ruvector_hnsw.training.optim import NaturalGradient

    for kw, what in (({"damping": -1.0}, "damping"), ({"max_iter": 0}, "max_iter"), ({"tol": 0.0}, "tol"),
                     ({"beta": 1.0}, "beta"), ({"mode": "full"}, "mode"), ({"lr": 0.0}, "lr"),
                     ({"mode": "diagonal", "damping": 0.0}, "damping"), ({"max_iter": 2.5}, "max_iter")):
        with pytest.raises(ConfigError, match=what):
            NaturalGradient(_params(), **kw)
    params = _params()
    snap = {k: v.copy() for k, v in params.items()}
    opt = NaturalGradient(params)
    assert opt.wants_fvp
    with pytest.raises(InvalidInputError, match="fvp"):
        opt.step(_grads())
    with pytest.raises(ShapeMismatchError, match="w"):
        opt.step(_grads(), fvp=lambda v: {"w": np.zeros(3), "b": v["b"]})
    with pytest.raises(InvalidInputError, match="'b'"):
        opt.step(_grads(), fvp=lambda v: {"w": v["w"]})
    with pytest.raises(NonFiniteError, match="w"):
        opt.step(_grads(), fvp=lambda v: {"w": v["w"] * np.nan, "b": v["b"]})
    with pytest.raises(InvalidInputError, match="positive definite"):
        opt.step(_grads(), fvp=lambda v: {k: -2.0 * a for k, a in v.items()})
    for k in snap:
        np.testing.assert_array_equal(params[k], snap[k])
    assert opt.step_count == 0 and opt.last_cg_iters is None


def test_natural_gradient_state_dict_round_trip_continues_identically():
    from ruvector_hnsw.training.optim import NaturalGradient

    gseq = [np.random.default_rng(i).normal(size=(2, 2)) for i in range(6)]
    for mode in ("diagonal", "exact"):
        pa = _params()
        a = NaturalGradient(pa, lr=0.05, mode=mode, damping=0.3, max_iter=3, beta=0.8)
        fvp = lambda v: {k: 0.5 * x + 0.1 * x[::-1] for k, x in v.items()}  # noqa: E731 (SPD on 2x2 rows)
        kw = {"fvp": fvp} if mode == "exact" else {}
        for g in gseq[:3]:
            a.step({"w": g}, **kw)
        st = a.state_dict()
        pb = {k: v.copy() for k, v in pa.items()}
        b = NaturalGradient(pb, lr=1.0, mode=mode, damping=0.9, max_iter=7, beta=0.5)
        b.load_state_dict(st)
        assert (b.lr, b.damping, b.max_iter, b.beta, b.step_count) == (0.05, 0.3, 3, 0.8, 3)
        for g in gseq[3:]:
            a.step({"w": g}, **kw)
            b.step({"w": g}, **kw)
        np.testing.assert_array_equal(pa["w"], pb["w"])
        other = "exact" if mode == "diagonal" else "diagonal"
        with pytest.raises(InvalidInputError, match="mode"):
            NaturalGradient(_params(), mode=other).load_state_dict(st)
    assert isinstance(make_optimizer("natural", _params(), mode="diagonal"), NaturalGradient)


class _SoftmaxModel:
    def __init__(self, d, c):
        self.params = _zero_params(d, c)
        self.c = c

    def loss_and_grads(self, batch, state):
        loss, g, _ = _loss_grads(batch["x"], batch["y"], self.c, self.params)
        return loss, g

    def fisher_vector_product(self, batch, state):
        from ruvector_hnsw.training.optim import softmax_fisher_vector_product

        p = _softmax(batch["x"], self.params)
        return lambda v: softmax_fisher_vector_product(batch["x"], p, v)


def test_trainer_hands_fisher_vector_products_to_the_exact_mode():
    from ruvector_hnsw.training import NaturalGradient, Trainer

    x, y, c = _softmax_problem()
    model = _SoftmaxModel(x.shape[1], c)
    start = _loss_grads(x, y, c, model.params)[0]
    opt = NaturalGradient(model.params, lr=1.0, damping=1e-3)
    Trainer(model, opt, epochs=3, batch_size=100, seed=0).fit({"x": x, "y": y})
    assert opt.step_count == 9 and opt.last_cg_iters >= 1
    assert _loss_grads(x, y, c, model.params)[0] < 0.8 * start

    class _GradOnly:
        def __init__(self):
            self.params = _zero_params(x.shape[1], c)

        def loss_and_grads(self, batch, state):
            loss, g, _ = _loss_grads(batch["x"], batch["y"], c, self.params)
            return loss, g

    plain = _GradOnly()
    with pytest.raises(ConfigError, match="fisher_vector_product"):
        Trainer(plain, NaturalGradient(plain.params))
    diag = NaturalGradient(plain.params, lr=0.02, mode="diagonal", damping=0.05)
    Trainer(plain, diag, epochs=2, batch_size=100).fit({"x": x, "y": y})
    assert diag.step_count == 6
