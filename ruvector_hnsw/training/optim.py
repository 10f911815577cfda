"""Optimizers that update a dict of numpy parameters **in place**.

The attention mechanisms expose ``params: dict[str, numpy.ndarray]`` and their
``backward()`` returns a dict with one gradient per parameter *plus* input gradients
(``"query"``, ``"keys"``, ``"values"``). An optimizer is built over the params dict and
``step(grads)`` updates exactly the arrays in that dict (``p[...] = ...``, the array
objects are never replaced, so a mechanism holding references sees the new values):

- keys of ``grads`` that are not parameters are ignored (input gradients);
- parameters without a gradient in ``grads`` are left untouched (their state too);
- every gradient is validated (shape, finite) **before** anything changes: a rejected
  step leaves parameters and optimizer state unchanged.

Optimizer state (momentum / moment buffers) is kept in float64 whatever the parameter
dtype; ``state_dict()`` / ``load_state_dict()`` round-trip it for checkpoints (nested
dicts of JSON scalars and numpy arrays, see :mod:`ruvector_hnsw.training.checkpoint`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any, ClassVar

import numpy as np

from ruvector_hnsw.errors import ConfigError, InvalidInputError, NonFiniteError, ShapeMismatchError
from ruvector_hnsw.training._validate import check_positive

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "NaturalGradient",
    "Optimizer",
    "clip_grad_norm",
    "global_grad_norm",
    "make_optimizer",
    "softmax_fisher_vector_product",
]

#: a Fisher-vector product: ``fvp(v) -> F v``, both dicts of arrays shaped like the parameters
FisherVectorProduct = Callable[[Mapping[str, np.ndarray]], Mapping[str, Any]]


def global_grad_norm(grads: Mapping[str, Any], keys: Iterable[str] | None = None) -> float:
    """Euclidean norm of all gradient arrays (restricted to ``keys`` when given) taken together."""
    names = list(grads) if keys is None else [k for k in keys if k in grads]
    total = 0.0
    for k in names:
        g = np.asarray(grads[k], dtype=np.float64)
        total += float(np.dot(g.ravel(), g.ravel()))
    return math.sqrt(total)


def clip_grad_norm(
    grads: Mapping[str, Any], max_norm: float, *, keys: Iterable[str] | None = None
) -> tuple[dict[str, np.ndarray], float]:
    """Scale gradients so that their global norm is at most ``max_norm``.

    Parameters
    ----------
    grads : Mapping[str, array_like]
        Gradients by name. Not modified.
    max_norm : float
        Norm bound, > 0.
    keys : iterable of str, optional
        Which entries count and get scaled (e.g. ``optimizer.params`` keys, so that input
        gradients like ``"query"`` neither count nor change). Default: all entries.

    Returns
    -------
    clipped : dict[str, numpy.ndarray]
        Same keys as ``grads``; the selected entries multiplied by
        ``min(1, max_norm / norm)``, the others passed through unchanged.
    norm : float
        The global norm *before* clipping.
    """
    bound = check_positive(max_norm, "max_norm")
    selected = set(grads) if keys is None else {k for k in keys if k in grads}
    norm = global_grad_norm(grads, selected)
    if not math.isfinite(norm):
        raise NonFiniteError("grads: the gradient norm is not finite")
    scale = min(1.0, bound / norm) if norm > 0 else 1.0
    out: dict[str, np.ndarray] = {}
    for k, g in grads.items():
        arr = np.asarray(g)
        out[k] = arr * scale if (k in selected and scale < 1.0) else arr
    return out, norm


class Optimizer:
    """Base class: parameter bookkeeping, validation, clipping, weight-decay masks, state dict.

    Parameters
    ----------
    params : MutableMapping[str, numpy.ndarray]
        The model's parameter dict (kept by reference; arrays updated in place). Arrays
        must be writeable float32/float64 numpy arrays.
    lr : float
        Learning rate (> 0). A settable attribute; schedules set it every step.
    weight_decay : float
        Decay coefficient (>= 0); its form depends on the optimizer.
    no_decay : iterable of str
        Parameter names exempt from weight decay (biases, gates, norms).
    max_grad_norm : float, optional
        If given, gradients (of the parameters only) are clipped to this global norm
        before each step; the last pre-clip norm is in ``last_grad_norm``.
    """

    kind: ClassVar[str] = "base"
    _slots: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        params: MutableMapping[str, np.ndarray],
        lr: float,
        *,
        weight_decay: float = 0.0,
        no_decay: Iterable[str] = (),
        max_grad_norm: float | None = None,
    ) -> None:
        if not isinstance(params, MutableMapping):
            raise ConfigError(f"params: expected a dict of numpy arrays, got {type(params).__name__}")
        for name, p in params.items():
            if not isinstance(p, np.ndarray) or p.dtype not in (np.float32, np.float64):
                raise ConfigError(f"params[{name!r}]: expected a float32/float64 numpy array")
            if not p.flags.writeable:
                raise ConfigError(f"params[{name!r}]: array is read-only, cannot update in place")
        self.params = params
        self.lr = check_positive(lr, "lr")
        self.weight_decay = check_positive(weight_decay, "weight_decay", allow_zero=True)
        self.no_decay = frozenset(no_decay)
        unknown = self.no_decay - set(params)
        if unknown:
            raise ConfigError(f"no_decay: unknown parameter names {sorted(unknown)}")
        self.max_grad_norm = None if max_grad_norm is None else check_positive(max_grad_norm, "max_grad_norm")
        self.step_count = 0
        self.last_grad_norm: float | None = None
        self.state: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------ public

    def hyperparameters(self) -> dict[str, Any]:
        """JSON-serialisable hyper-parameters (for the state dict and logs)."""
        return {
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "no_decay": sorted(self.no_decay),
            "max_grad_norm": self.max_grad_norm,
        }

    def step(self, grads: Mapping[str, Any], *, lr: float | None = None) -> None:
        """Apply one update in place from ``grads`` (see the module docstring for the rules).

        Parameters
        ----------
        grads : Mapping[str, array_like]
            Gradients by name; non-parameter keys are ignored.
        lr : float, optional
            Use (and keep) this learning rate from now on.
        """
        if lr is not None:
            self.lr = check_positive(lr, "lr")
        checked = self._checked_grads(grads)
        self.step_count += 1
        for name, g in checked.items():
            p = self.params[name]
            st = self.state.get(name)
            if st is None or any(np.shape(st[s]) != p.shape for s in self._slots):
                st = {s: np.zeros(p.shape, np.float64) for s in self._slots}
                st["t"] = 0
                self.state[name] = st
            st["t"] += 1
            decay = 0.0 if name in self.no_decay else self.weight_decay
            p[...] = self._update(p.astype(np.float64), g, st, decay)

    def _checked_grads(self, grads: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The parameters' gradients as float64, validated (shape, finite) and clipped; nothing changes."""
        checked: dict[str, np.ndarray] = {}
        for name, p in self.params.items():
            if name not in grads:
                continue
            g = np.asarray(grads[name])
            if g.dtype.kind not in "fiu":
                raise InvalidInputError(f"grads[{name!r}]: expected a real numeric array, got dtype {g.dtype}")
            if g.shape != p.shape:
                raise ShapeMismatchError(f"grads[{name!r}]: shape {g.shape} != parameter shape {p.shape}")
            g64 = g.astype(np.float64)
            if not np.all(np.isfinite(g64)):
                raise NonFiniteError(f"grads[{name!r}]: contains NaN or infinity")
            checked[name] = g64
        if self.max_grad_norm is not None:
            checked, self.last_grad_norm = clip_grad_norm(checked, self.max_grad_norm)
        return checked

    def state_dict(self) -> dict[str, Any]:
        """Nested dict: ``kind``, ``hyper`` (JSON scalars), ``step_count`` and per-parameter slots."""
        return {
            "kind": self.kind,
            "hyper": self.hyperparameters(),
            "step_count": self.step_count,
            "state": {
                name: {k: (v.copy() if isinstance(v, np.ndarray) else int(v)) for k, v in st.items()}
                for name, st in self.state.items()
            },
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore hyper-parameters and buffers saved by :meth:`state_dict` (validated first)."""
        if state.get("kind") != self.kind:
            raise InvalidInputError(f"state: optimizer kind {state.get('kind')!r} != {self.kind!r}")
        new_state: dict[str, dict[str, Any]] = {}
        for name, st in dict(state.get("state", {})).items():
            if name not in self.params:
                raise InvalidInputError(f"state: unknown parameter {name!r}")
            entry: dict[str, Any] = {"t": int(st["t"])}
            for s in self._slots:
                arr = np.array(st[s], dtype=np.float64)
                if arr.shape != self.params[name].shape:
                    raise ShapeMismatchError(f"state[{name!r}][{s!r}]: shape {arr.shape} != {self.params[name].shape}")
                entry[s] = arr
            new_state[name] = entry
        hyper = dict(state.get("hyper", {}))
        self._load_hyper(hyper)
        self.step_count = int(state.get("step_count", 0))
        self.state = new_state

    # ------------------------------------------------------------------ hooks

    def _load_hyper(self, hyper: Mapping[str, Any]) -> None:
        self.lr = check_positive(hyper.get("lr", self.lr), "lr")
        self.weight_decay = check_positive(
            hyper.get("weight_decay", self.weight_decay), "weight_decay", allow_zero=True
        )
        self.no_decay = frozenset(hyper.get("no_decay", self.no_decay))
        mg = hyper.get("max_grad_norm", self.max_grad_norm)
        self.max_grad_norm = None if mg is None else check_positive(mg, "max_grad_norm")

    def _update(self, p: np.ndarray, g: np.ndarray, st: dict[str, Any], decay: float) -> np.ndarray:
        raise NotImplementedError


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, Nesterov momentum and (coupled) L2 weight decay.

    With ``g' = g + weight_decay * p``: ``v = momentum * v + g'``; the step direction is
    ``g' + momentum * v`` (Nesterov) or ``v`` (classic), and ``p -= lr * direction``
    (the convention of ``torch.optim.SGD`` with ``dampening = 0``). ``momentum = 0`` is plain SGD.
    """

    kind = "sgd"
    _slots = ("velocity",)

    def __init__(
        self,
        params: MutableMapping[str, np.ndarray],
        lr: float = 0.01,
        *,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        no_decay: Iterable[str] = (),
        max_grad_norm: float | None = None,
    ) -> None:
        super().__init__(params, lr, weight_decay=weight_decay, no_decay=no_decay, max_grad_norm=max_grad_norm)
        self.momentum = self._check_momentum(momentum)
        if nesterov and self.momentum == 0:
            raise ConfigError("nesterov: needs momentum > 0")
        self.nesterov = bool(nesterov)

    @staticmethod
    def _check_momentum(m: float) -> float:
        m = float(m)
        if not 0.0 <= m < 1.0:
            raise ConfigError(f"momentum: must lie in [0, 1), got {m!r}")
        return m

    def hyperparameters(self) -> dict[str, Any]:
        """Hyper-parameters including ``momentum`` and ``nesterov``."""
        return {**super().hyperparameters(), "momentum": self.momentum, "nesterov": self.nesterov}

    def _load_hyper(self, hyper: Mapping[str, Any]) -> None:
        super()._load_hyper(hyper)
        self.momentum = self._check_momentum(hyper.get("momentum", self.momentum))
        self.nesterov = bool(hyper.get("nesterov", self.nesterov))

    def _update(self, p: np.ndarray, g: np.ndarray, st: dict[str, Any], decay: float) -> np.ndarray:
        if decay:
            g = g + decay * p
        if self.momentum:
            v = st["velocity"]
            v *= self.momentum
            v += g
            direction = g + self.momentum * v if self.nesterov else v
        else:
            direction = g
        return p - self.lr * direction


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction; ``weight_decay`` is coupled L2 (added to the gradient).

    ``m = b1 m + (1-b1) g``; ``v = b2 v + (1-b2) g^2``;
    ``p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)`` with ``t`` counted per parameter.
    """

    kind = "adam"
    _slots = ("m", "v")

    def __init__(
        self,
        params: MutableMapping[str, np.ndarray],
        lr: float = 1e-3,
        *,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        no_decay: Iterable[str] = (),
        max_grad_norm: float | None = None,
    ) -> None:
        super().__init__(params, lr, weight_decay=weight_decay, no_decay=no_decay, max_grad_norm=max_grad_norm)
        self.betas = self._check_betas(betas)
        self.eps = check_positive(eps, "eps")

    @staticmethod
    def _check_betas(betas: Any) -> tuple[float, float]:
        try:
            b1, b2 = (float(b) for b in betas)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"betas: expected two floats, got {betas!r}") from exc
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ConfigError(f"betas: each must lie in [0, 1), got {betas!r}")
        return (b1, b2)

    def hyperparameters(self) -> dict[str, Any]:
        """Hyper-parameters including ``betas`` and ``eps``."""
        return {**super().hyperparameters(), "betas": list(self.betas), "eps": self.eps}

    def _load_hyper(self, hyper: Mapping[str, Any]) -> None:
        super()._load_hyper(hyper)
        self.betas = self._check_betas(hyper.get("betas", self.betas))
        self.eps = check_positive(hyper.get("eps", self.eps), "eps")

    def _adam_direction(self, g: np.ndarray, st: dict[str, Any]) -> np.ndarray:
        b1, b2 = self.betas
        m, v, t = st["m"], st["v"], st["t"]
        m *= b1
        m += (1.0 - b1) * g
        v *= b2
        v += (1.0 - b2) * g * g
        m_hat = m / (1.0 - b1**t)
        v_hat = v / (1.0 - b2**t)
        return np.asarray(m_hat / (np.sqrt(v_hat) + self.eps))

    def _update(self, p: np.ndarray, g: np.ndarray, st: dict[str, Any], decay: float) -> np.ndarray:
        if decay:
            g = g + decay * p
        return p - self.lr * self._adam_direction(g, st)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): ``p -= lr * (adam_direction + wd * p)``.

    The decay uses the parameter value *before* the step and does not enter the moments.
    Default ``weight_decay = 0.01``.
    """

    kind = "adamw"

    def __init__(
        self,
        params: MutableMapping[str, np.ndarray],
        lr: float = 1e-3,
        *,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        no_decay: Iterable[str] = (),
        max_grad_norm: float | None = None,
    ) -> None:
        super().__init__(
            params, lr, betas=betas, eps=eps, weight_decay=weight_decay, no_decay=no_decay, max_grad_norm=max_grad_norm
        )

    def _update(self, p: np.ndarray, g: np.ndarray, st: dict[str, Any], decay: float) -> np.ndarray:
        return p - self.lr * (self._adam_direction(g, st) + decay * p)


def softmax_fisher_vector_product(
    x: Any, p: Any, v: Mapping[str, Any], *, weight: str = "W", bias: str = "b"
) -> dict[str, np.ndarray]:
    """Fisher-vector product of softmax regression ``p = softmax(x W^T + b)``, averaged over rows.

    With logits ``s_i = W x_i + b`` the Jacobian of ``s_i`` applied to a direction
    ``(V, c)`` is ``V x_i + c``, and the Fisher of the softmax output is
    ``F = (1/n) sum_i J_i^T (diag(p_i) - p_i p_i^T) J_i``. This computes ``F v`` exactly in
    ``O(n C d)`` without forming ``F`` (for the canonical softmax link it is also the
    Hessian of the mean cross-entropy, which is why natural gradient is Newton's method here).

    Parameters
    ----------
    x : array_like, shape (n, d)
        Inputs.
    p : array_like, shape (n, C)
        Softmax probabilities at the current parameters (rows sum to one).
    v : Mapping[str, array_like]
        The direction: ``v[weight]`` shaped ``(C, d)`` and optionally ``v[bias]`` shaped ``(C,)``.
    weight, bias : str
        Names of the weight and bias entries.

    Returns
    -------
    dict[str, numpy.ndarray]
        ``F v`` with the same keys as ``v`` (float64).
    """
    xa = np.asarray(x, dtype=np.float64)
    pa = np.asarray(p, dtype=np.float64)
    if xa.ndim != 2 or pa.ndim != 2 or xa.shape[0] != pa.shape[0]:
        raise ShapeMismatchError(f"x, p: expected (n, d) and (n, C) with the same n, got {xa.shape} and {pa.shape}")
    if weight not in v:
        raise InvalidInputError(f"v: needs the weight direction {weight!r}")
    vw = np.asarray(v[weight], dtype=np.float64)
    if vw.shape != (pa.shape[1], xa.shape[1]):
        raise ShapeMismatchError(f"v[{weight!r}]: expected shape {(pa.shape[1], xa.shape[1])}, got {vw.shape}")
    ds = xa @ vw.T  # J v, (n, C)
    if bias in v:
        vb = np.asarray(v[bias], dtype=np.float64)
        if vb.shape != (pa.shape[1],):
            raise ShapeMismatchError(f"v[{bias!r}]: expected shape {(pa.shape[1],)}, got {vb.shape}")
        ds = ds + vb
    h = pa * ds - pa * (pa * ds).sum(axis=1, keepdims=True)  # (diag(p) - p p^T) J v
    n = max(xa.shape[0], 1)
    out = {weight: h.T @ xa / n}
    if bias in v:
        out[bias] = h.sum(axis=0) / n
    return out


class NaturalGradient(Optimizer):
    """Natural gradient descent: precondition the gradient by the (damped) Fisher information.

    The step is ``p -= lr * (F + damping I)^{-1} g`` with ``g`` the gradient (plus coupled L2
    ``weight_decay * p``, as for :class:`Adam`) and ``F`` the Fisher of the model's output
    distribution. Two modes:

    ``mode="exact"``
        ``F`` is never formed. The caller supplies a Fisher-vector product ``fvp(v) -> F v``
        (dicts of arrays shaped like the parameters that have a gradient) to :meth:`step`;
        for a softmax output ``p`` over logits ``s = f(theta)`` it is
        ``F v = mean_i J_i^T (diag(p_i) - p_i p_i^T) J_i v`` (see
        :func:`softmax_fisher_vector_product`). ``(F + damping I) x = g`` is solved by
        conjugate gradients from ``x = 0``, stopping when ``||r|| <= tol * ||g||`` or after
        ``max_iter`` iterations (iterations and the final relative residual are kept in
        ``last_cg_iters`` / ``last_cg_residual``). Cost per step: up to ``max_iter`` FVPs (each
        about one forward + backward of the model) plus ``O(max_iter * P)`` vector work over
        the ``P`` parameters; the CG couples all parameters, so the solve is joint.
        :class:`~ruvector_hnsw.training.Trainer` passes ``fvp`` automatically (``wants_fvp``)
        when the model has ``fisher_vector_product(batch, state) -> fvp``.
    ``mode="diagonal"``
        Usable with any model that only gives gradients: a per-parameter running estimate of
        the Fisher diagonal from the gradients themselves, ``f = beta f + (1 - beta) g^2``
        (bias-corrected by ``1 - beta^t``), and ``p -= lr * g / (f + damping)``. Cost ``O(P)``
        per step. The squared *batch* gradient underestimates the per-sample empirical
        Fisher near an optimum (where ``g -> 0``), so the step there behaves like plain
        gradient descent with rate ``lr / damping``: pick ``damping`` accordingly (or clip with
        ``max_grad_norm``).

    Parameters
    ----------
    params : MutableMapping[str, numpy.ndarray]
        The model's parameter dict (arrays updated in place).
    lr : float
        Step size (> 0); 1 is the full natural-gradient (for softmax regression: Newton) step.
    mode : {"exact", "diagonal"}
    damping : float
        Tikhonov damping ``lambda`` (>= 0; exact mode needs > 0 unless ``F`` is known to be
        non-singular, diagonal mode needs > 0).
    max_iter : int
        Maximum CG iterations per step (>= 1).
    tol : float
        Relative residual tolerance of CG (> 0).
    beta : float
        EMA factor of the diagonal estimate, in [0, 1).
    weight_decay, no_decay, max_grad_norm
        As for :class:`Optimizer` (decay coupled to the gradient, before preconditioning).
    """

    kind = "natural"
    _slots = ("fisher",)
    MODES: ClassVar[tuple[str, ...]] = ("exact", "diagonal")

    def __init__(
        self,
        params: MutableMapping[str, np.ndarray],
        lr: float = 1.0,
        *,
        mode: str = "exact",
        damping: float = 1e-3,
        max_iter: int = 50,
        tol: float = 1e-6,
        beta: float = 0.95,
        weight_decay: float = 0.0,
        no_decay: Iterable[str] = (),
        max_grad_norm: float | None = None,
    ) -> None:
        super().__init__(params, lr, weight_decay=weight_decay, no_decay=no_decay, max_grad_norm=max_grad_norm)
        self.mode = self._check_mode(mode)
        self.damping = self._check_damping(damping, self.mode)
        self.max_iter = self._check_max_iter(max_iter)
        self.tol = check_positive(tol, "tol")
        self.beta = self._check_beta(beta)
        self.last_cg_iters: int | None = None
        self.last_cg_residual: float | None = None

    # ------------------------------------------------------------------ validation
    @classmethod
    def _check_mode(cls, mode: Any) -> str:
        if mode not in cls.MODES:
            raise ConfigError(f"mode: expected one of {cls.MODES}, got {mode!r}")
        return str(mode)

    @staticmethod
    def _check_damping(damping: Any, mode: str) -> float:
        value = check_positive(damping, "damping", allow_zero=(mode == "exact"))
        return value

    @staticmethod
    def _check_max_iter(max_iter: Any) -> int:
        if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
            raise ConfigError(f"max_iter: expected an int >= 1, got {max_iter!r}")
        return int(max_iter)

    @staticmethod
    def _check_beta(beta: Any) -> float:
        try:
            b = float(beta)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"beta: expected a number in [0, 1), got {beta!r}") from exc
        if not 0.0 <= b < 1.0:
            raise ConfigError(f"beta: must lie in [0, 1), got {beta!r}")
        return b

    @property
    def wants_fvp(self) -> bool:
        """True in exact mode: :meth:`step` needs a Fisher-vector product (the trainer supplies it)."""
        return self.mode == "exact"

    def hyperparameters(self) -> dict[str, Any]:
        """Hyper-parameters including ``mode``, ``damping``, ``max_iter``, ``tol`` and ``beta``."""
        return {
            **super().hyperparameters(),
            "mode": self.mode,
            "damping": self.damping,
            "max_iter": self.max_iter,
            "tol": self.tol,
            "beta": self.beta,
        }

    def _load_hyper(self, hyper: Mapping[str, Any]) -> None:
        mode = self._check_mode(hyper.get("mode", self.mode))
        if mode != self.mode:
            raise InvalidInputError(f"state: saved mode {mode!r} != this optimizer's {self.mode!r}")
        damping = self._check_damping(hyper.get("damping", self.damping), mode)
        max_iter = self._check_max_iter(hyper.get("max_iter", self.max_iter))
        tol = check_positive(hyper.get("tol", self.tol), "tol")
        beta = self._check_beta(hyper.get("beta", self.beta))
        super()._load_hyper(hyper)
        self.damping, self.max_iter, self.tol, self.beta = damping, max_iter, tol, beta

    # ------------------------------------------------------------------ step
    def step(
        self, grads: Mapping[str, Any], *, lr: float | None = None, fvp: FisherVectorProduct | None = None
    ) -> None:
        """One natural-gradient update in place.

        Parameters
        ----------
        grads : Mapping[str, array_like]
            Gradients by name; non-parameter keys are ignored.
        lr : float, optional
            Use (and keep) this learning rate from now on.
        fvp : callable, optional
            Exact mode (required there, ignored in diagonal mode): ``fvp(v) -> F v`` over the
            parameters present in ``grads``.

        Raises
        ------
        InvalidInputError
            Exact mode without ``fvp``, or an ``fvp`` result that misses a parameter, has the
            wrong shape, is not finite, or makes ``F + damping I`` not positive definite.
            Parameters and state are unchanged then.
        """
        if self.mode == "diagonal":
            super().step(grads, lr=lr)
            return
        if fvp is None or not callable(fvp):
            raise InvalidInputError("fvp: NaturalGradient(mode='exact').step needs a Fisher-vector product callable")
        new_lr = self.lr if lr is None else check_positive(lr, "lr")
        checked = self._checked_grads(grads)
        names = list(checked)
        for name in names:
            if self.weight_decay and name not in self.no_decay:
                checked[name] = checked[name] + self.weight_decay * self.params[name].astype(np.float64)
        x, iters, resid = self._cg(fvp, checked, names)
        self.lr = new_lr
        self.step_count += 1
        self.last_cg_iters, self.last_cg_residual = iters, resid
        for name in names:
            p = self.params[name]
            p[...] = p.astype(np.float64) - self.lr * x[name]

    def _apply(self, fvp: FisherVectorProduct, v: Mapping[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
        out = fvp({k: v[k].copy() for k in names})
        if not isinstance(out, Mapping):
            raise InvalidInputError(f"fvp: expected a dict of arrays, got {type(out).__name__}")
        res: dict[str, np.ndarray] = {}
        for k in names:
            if k not in out:
                raise InvalidInputError(f"fvp: result has no entry for parameter {k!r}")
            a = np.asarray(out[k], dtype=np.float64)
            if a.shape != v[k].shape:
                raise ShapeMismatchError(f"fvp[{k!r}]: shape {a.shape} != parameter shape {v[k].shape}")
            if not np.all(np.isfinite(a)):
                raise NonFiniteError(f"fvp[{k!r}]: contains NaN or infinity")
            res[k] = a + self.damping * v[k] if self.damping else a
        return res

    def _cg(
        self, fvp: FisherVectorProduct, g: Mapping[str, np.ndarray], names: list[str]
    ) -> tuple[dict[str, np.ndarray], int, float]:
        """Conjugate gradients for ``(F + damping I) x = g`` from ``x = 0``."""

        def dot(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> float:
            return float(sum(np.vdot(a[k], b[k]) for k in names))

        x = {k: np.zeros_like(g[k]) for k in names}
        r = {k: g[k].copy() for k in names}
        d = {k: g[k].copy() for k in names}
        rr = dot(r, r)
        g_norm = math.sqrt(rr)
        if g_norm == 0.0:
            return x, 0, 0.0
        iters = 0
        while iters < self.max_iter and math.sqrt(rr) > self.tol * g_norm:
            ad = self._apply(fvp, d, names)
            dad = dot(d, ad)
            if not dad > 0.0:
                raise InvalidInputError(
                    f"fvp: F + damping I is not positive definite along a CG direction (d^T A d = {dad:.3g}); "
                    "check the Fisher-vector product or raise damping"
                )
            alpha = rr / dad
            for k in names:
                x[k] += alpha * d[k]
                r[k] -= alpha * ad[k]
            rr_new = dot(r, r)
            for k in names:
                d[k] = r[k] + (rr_new / rr) * d[k]
            rr = rr_new
            iters += 1
        return x, iters, math.sqrt(rr) / g_norm

    def _update(self, p: np.ndarray, g: np.ndarray, st: dict[str, Any], decay: float) -> np.ndarray:
        """Diagonal mode: EMA of ``g^2`` (bias-corrected) as the Fisher diagonal."""
        if decay:
            g = g + decay * p
        f = st["fisher"]
        f *= self.beta
        f += (1.0 - self.beta) * g * g
        f_hat = f / (1.0 - self.beta ** st["t"])
        return np.asarray(p - self.lr * g / (f_hat + self.damping))


_OPTIMIZERS: dict[str, type[Optimizer]] = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "natural": NaturalGradient}


def make_optimizer(name: str, params: MutableMapping[str, np.ndarray], **config: Any) -> Optimizer:
    """Build an optimizer by name (``"sgd"``, ``"adam"``, ``"adamw"``, ``"natural"``) with keyword config."""
    cls = _OPTIMIZERS.get(str(name).lower())
    if cls is None:
        raise ConfigError(f"optimizer: unknown name {name!r}; expected one of {sorted(_OPTIMIZERS)}")
    try:
        return cls(params, **config)
    except TypeError as exc:
        raise ConfigError(f"optimizer {name!r}: {exc}") from exc
