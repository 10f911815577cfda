"""The attention protocol (v2): :class:`Context`, :class:`AttentionMechanism`, :class:`AttentionCache`
and shared input validation.

Every mechanism in :data:`ruvector_hnsw.attention.MECHANISMS` follows one calling convention::

    att = MECHANISMS[name](dim, **config)     # dtype=np.float32 (default) or np.float64, seed=...
    state = att.prepare_table(table)          # per-table state (None for most mechanisms)
    ctx = Context(dist=..., layer=..., table_state=state)
    out, cache = att.forward(query, keys, values, mask=None, context=ctx, ids=None)
    grads = att.backward(cache, grad_out, input_grads=True)
    w = att.weights(query, keys, mask=None, context=ctx, ids=None)
    att.params                                # dict name -> ndarray, updated in place by optimizers

Pure calls, explicit cache
--------------------------
``forward``, ``backward`` and ``weights`` write nothing on the mechanism (``vars(att)`` is the
same before and after), so any number of threads may call them on one mechanism object at once.
``forward`` returns the output and an immutable :class:`AttentionCache` holding exactly what
``backward`` needs (softmax weights, the log-sum-exp for flash, the gathered positions, ...) plus
what a caller may inspect: ``cache.output_shape``, ``cache.weights`` (the forward's attention
weights ``(B, n)`` or ``(B, h, n)``, squeezed for unbatched calls; None where a mechanism has no
such notion), ``cache.aux_losses`` (moe: ``{"load_balance": value}``; ``{}`` otherwise) and
``cache.inspect`` (mechanism-specific arrays: local_global ``local_weights``/``global_weights``/
``gate``/..., moe ``gates``/``router_probs``, dual_space ``latent_ids``/``gate``). Its arrays are
read-only views. A cache can be used for any number of backward calls, in any order, from any
thread; it must come from the same mechanism object (checked), and the params must not be
updated between a forward and the backward of its cache (backward reads them again).

``backward(cache, grad_out)`` returns the gradients of ``sum(grad_out * out)`` (moe adds its
weighted load-balance loss): one entry per param (same shape), ``"query"`` and - only when
``input_grads`` is True - ``"keys"``/``"values"`` shaped like the forward's inputs (the tables
in the gather form). ``input_grads=False`` computes and allocates no key/value/table gradient at
all (training a searcher needs only the param gradients: the table is data).

``prepare_table(table)`` builds whatever a mechanism needs per database table, only when the
caller asks (after training steps or table changes), never as a side effect of a forward; the
caller hands it back through ``Context(table_state=...)``. dual_space needs one (its latent
neighbour index; its first call also PCA-initialises the projection, see
:mod:`ruvector_hnsw.attention.dual_space`), centroid_ot too (its key clusters), sliced_wasserstein
uses one when given (cached key projections); the others return None.

Shapes
------
Batched: ``query (B, d)``, ``keys (B, n, d)``, ``values (B, n, dv)``, ``mask (B, n)`` bool
(``True`` = attend), output ``(B, d_out)``, weights ``(B, n)`` (multi-head: ``(B, h, n)``).
Unbatched: ``query (d,)``, ``keys (n, d)``, ``values (n, dv)``, ``mask (n,)``; the output,
the cache's weights/inspect arrays and the gradients then drop the batch axis too.

Gather form (the hot path of re-ranking)
----------------------------------------
When ``ids`` (``(B, n)`` integer, ``-1`` = padding) is given, ``keys`` and ``values`` are
database *tables* ``(N, d)`` / ``(N, dv)`` and item ``j`` of row ``b`` is
``keys[ids[b, j]]``. A slot with ``ids < 0`` is masked (in addition to ``mask``). The
gradients ``grads["keys"]`` / ``grads["values"]`` are then with respect to the tables
(``(N, d)`` / ``(N, dv)``, scatter-added over every slot that used a row). When the same
array is passed as keys and values, the two gradients are returned separately; add them.
Mechanisms with a fused kernel (``fused_gather = True``) gather inside the kernel and never
build a ``(B, n, d)`` copy; the others get a dense copy from this base class transparently.

Fully masked rows
-----------------
A row whose mask is all ``False`` (or whose ids are all ``-1``) has **all-zero weights** and
its attention read-out is the **zero vector**. A mechanism whose output adds terms that do not
depend on the attended items (a bias, a residual) adds them to that zero read-out and says so
in its docstring; the mechanisms without such terms therefore output exactly zero. The
gradients flowing through a fully masked row into keys/values are zero. Never NaN.

Precision
---------
Inputs are converted to the mechanism's ``dtype`` (``np.float32`` by default, so float64
input is converted to float32; pass ``dtype=np.float64`` to the constructor for the
finite-difference test path, then everything - params, kernels, outputs - is float64).
Integer and bool inputs are converted; complex, object and string arrays raise
:class:`~ruvector_hnsw.errors.InvalidDTypeError`; NaN/inf raise
:class:`~ruvector_hnsw.errors.NonFiniteError`. Mechanisms with ``checks_table_rows = True``
(all of them) check keys/values inside their kernels, only for the items they attend: NaN/inf in a
masked slot or an unreferenced table row is never read and not reported (this saves a full scan
of a 100k-row table per call). Float32 kernels compute each row in float32 and redo a row in
float64 when a score or read-out overflows, so finite float32 inputs of any magnitude give
finite outputs. A rejected call raises a typed error (nothing is returned; the mechanism is
unchanged, as always).

Threads and JIT
---------------
The numba kernels are serial, cached and release the GIL; large calls are split into row chunks
on a small thread pool (``ruvector_hnsw.threads``: ``thread_limits(n)`` for one call). Call
:meth:`AttentionMechanism.warmup` to pay compilation before timing (it leaves nothing behind).

Writing a mechanism
-------------------
Subclass :class:`AttentionMechanism`, set ``name``, and implement ``_forward(batch)`` returning a
:class:`ForwardResult` (the batched output, the private ``data`` its backward needs, and the
weights / aux losses / inspect arrays), ``_weights(batch)`` and, when trainable or
differentiable, ``_backward(grad_out, data, input_grads)`` returning a dict with an entry per
param and ``"query"``, plus ``"keys"``, ``"values"`` only when ``input_grads`` is True, in the
*batched dense* layout (``(B, d)``, ``(B, n, d)``, ``(B, n, dv)``); the base class scatters them
into table gradients in the gather form and drops the batch axis for unbatched calls. A
mechanism that sets ``fused_gather = True`` receives the tables and ``batch.ids`` directly and
must return table gradients itself. None of the hooks may write on ``self``. Override
``required_context()`` to name the :class:`Context` fields it needs, ``output_dim(dv)`` when the
output width is not ``dv``, ``get_config()`` to list its constructor arguments and
``prepare_table(table)`` when it needs per-table state.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np

from ruvector_hnsw.attention._ops import mq_attn_weights
from ruvector_hnsw.errors import (
    ConfigError,
    DimensionMismatchError,
    EmptyInputError,
    InvalidDTypeError,
    InvalidInputError,
    MissingContextError,
    NonFiniteError,
    ShapeMismatchError,
)

__all__ = [
    "AttentionBatch",
    "AttentionCache",
    "AttentionMechanism",
    "Context",
    "ForwardResult",
    "as_float_array",
    "check_ids",
    "check_mask",
    "check_positive_float",
    "check_positive_int",
    "dense_ids",
    "resolve_dtype",
]

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


# ----------------------------------------------------------------------------------------------
# validation helpers (shared by every mechanism)
# ----------------------------------------------------------------------------------------------
def resolve_dtype(dtype: Any) -> np.dtype:
    """Return ``np.float32`` or ``np.float64`` as a dtype; anything else raises ConfigError."""
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise ConfigError(f"dtype must be float32 or float64, got {dtype!r}") from exc
    if dt not in _FLOAT_DTYPES:
        raise ConfigError(f"dtype must be float32 or float64, got {dt}")
    return dt


def check_positive_int(value: Any, name: str, *, minimum: int = 1, maximum: int | None = None) -> int:
    """Validate an integer config value in ``[minimum, maximum]`` and return it as ``int``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    v = int(value)
    if v < minimum or (maximum is not None and v > maximum):
        hi = "" if maximum is None else f" and <= {maximum}"
        raise ConfigError(f"{name} must be >= {minimum}{hi}, got {v}")
    return v


def check_positive_float(value: Any, name: str, *, allow_zero: bool = False) -> float:
    """Validate a finite float config value ``> 0`` (or ``>= 0``) and return it as ``float``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not np.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ConfigError(f"{name} must be a finite number {'>=' if allow_zero else '>'} 0, got {v}")
    return v


def as_float_array(
    x: Any, name: str, dtype: np.dtype, ndims: tuple[int, ...], *, check_finite: bool = True
) -> np.ndarray:
    """Convert ``x`` to a C-contiguous ``dtype`` array with one of ``ndims`` dimensions.

    ``check_finite=False`` skips the NaN/inf scan (the caller then checks what it reads).

    Raises
    ------
    InvalidDTypeError
        Complex, object, string or otherwise non-numeric input.
    ShapeMismatchError
        Wrong number of dimensions.
    NonFiniteError
        NaN or infinity present.
    """
    if x is None:
        raise InvalidInputError(f"{name} is required, got None")
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise InvalidDTypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if arr.ndim not in ndims:
        want = " or ".join(f"{k}-D" for k in ndims)
        raise ShapeMismatchError(f"{name} must be {want}, got shape {arr.shape}")
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.ascontiguousarray(arr, dtype=dtype)
    if check_finite and out.size and not np.isfinite(out).all():
        raise NonFiniteError(f"{name} contains NaN or infinity (after conversion to {np.dtype(dtype).name})")
    return out


def check_mask(mask: Any, shape: tuple[int, ...], name: str = "mask") -> np.ndarray:
    """Return ``mask`` as a C-contiguous bool array of exactly ``shape``.

    Bool arrays are taken as is; integer arrays must hold only 0/1. Anything else raises.
    """
    arr = np.asarray(mask)
    if arr.dtype.kind == "b":
        pass
    elif arr.dtype.kind in "iu":
        if arr.size and not np.isin(arr, (0, 1)).all():
            raise InvalidInputError(f"{name} must be boolean (or 0/1 integers)")
        arr = arr.astype(bool)
    else:
        raise InvalidDTypeError(f"{name} must be a boolean array, got dtype {arr.dtype}")
    if arr.shape != shape:
        raise ShapeMismatchError(f"{name} must have shape {shape}, got {arr.shape}")
    return np.ascontiguousarray(arr)


def check_ids(ids: Any, shape_hint: tuple[int, ...] | None, n_rows: int) -> np.ndarray:
    """Validate gather ids: integer, values in ``[-1, n_rows)``; return C-contiguous int64."""
    arr = np.asarray(ids)
    if arr.dtype.kind not in "iu":
        raise InvalidDTypeError(f"ids must be an integer array, got dtype {arr.dtype}")
    if shape_hint is not None and arr.shape != shape_hint:
        raise ShapeMismatchError(f"ids must have shape {shape_hint}, got {arr.shape}")
    if arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < -1 or hi >= n_rows:
            raise InvalidInputError(
                f"ids must lie in [-1, {n_rows}) (table rows; -1 = padding), got range [{lo}, {hi}]"
            )
    return np.ascontiguousarray(arr, dtype=np.int64)


_DENSE_IDS: dict[tuple[int, int], np.ndarray] = {}
_DENSE_IDS_LOCK = threading.Lock()


def dense_ids(B: int, n: int) -> np.ndarray:
    """Read-only ``(B, n)`` int64 array ``b*n + j`` (cached per shape: kernels see dense arrays as tables)."""
    key = (int(B), int(n))
    with _DENSE_IDS_LOCK:
        arr = _DENSE_IDS.get(key)
        if arr is None:
            if len(_DENSE_IDS) >= 16:
                _DENSE_IDS.pop(next(iter(_DENSE_IDS)))
            arr = np.arange(B * n, dtype=np.int64).reshape(B, n)
            arr.flags.writeable = False
            _DENSE_IDS[key] = arr
        return arr


# ----------------------------------------------------------------------------------------------
# context
# ----------------------------------------------------------------------------------------------
@dataclass
class Context:
    """Per-item side information of a neighbourhood batch (all fields optional).

    Attributes
    ----------
    dist : ndarray (B, n) float32, optional
        Distance of each item to the neighbourhood's centre (index metric).
    layer : ndarray (B, n) int8, optional
        HNSW layer an item was linked on (0 = local, >= 1 = global).
    edge_features : ndarray (B, n, f) float32, optional
        Per-edge feature vectors (distance, layer one-hot, degree, ...).
    hops : ndarray (B, n) int, optional
        Hop count from the centre.
    degree : ndarray (B, n), optional
        Degree of each item in the graph.
    node_ids : ndarray (B, n) int64, optional
        Labels of the items (``-1`` = padding); informational, not the gather ids.
    extra : dict
        Mechanism-specific extras (documented by the mechanism that reads them).
    table_state : object, optional
        What :meth:`AttentionMechanism.prepare_table` returned for the database table
        (dual_space, centroid_ot, sliced_wasserstein); passed through unchanged, checked by the
        mechanism that reads it.

    Unbatched calls may pass ``(n,)`` / ``(n, f)`` fields; they are lifted to a batch of one.
    """

    dist: np.ndarray | None = None
    layer: np.ndarray | None = None
    edge_features: np.ndarray | None = None
    hops: np.ndarray | None = None
    degree: np.ndarray | None = None
    node_ids: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    table_state: Any = None

    # per-item (B, n) fields and how to convert them: "float" -> mechanism dtype, "int" -> int64
    _ITEM_FIELDS: ClassVar[dict[str, str]] = {
        "dist": "float",
        "layer": "int",
        "hops": "int",
        "degree": "float",
        "node_ids": "int",
    }

    def validated(self, B: int, n: int, dtype: np.dtype, unbatched: bool) -> Context:
        """Return a copy with every present field checked against ``(B, n)`` and converted.

        Float fields become ``dtype``, integer fields ``int64`` (``layer`` stays ``int8``).
        """
        updates: dict[str, Any] = {}
        for fname, kind in self._ITEM_FIELDS.items():
            val = getattr(self, fname)
            if val is None:
                continue
            arr = np.asarray(val)
            if unbatched and arr.ndim == 1:
                arr = arr[None, :]
            if arr.shape != (B, n):
                raise ShapeMismatchError(f"context.{fname} must have shape {(B, n)}, got {arr.shape}")
            if kind == "float":
                arr = as_float_array(arr, f"context.{fname}", dtype, (2,))
            else:
                if arr.dtype.kind not in "iu":
                    if arr.dtype.kind == "f" and np.isfinite(arr).all() and (arr == np.round(arr)).all():
                        pass
                    else:
                        raise InvalidDTypeError(
                            f"context.{fname} must be an integer array, got dtype {arr.dtype}"
                        )
                arr = np.ascontiguousarray(arr, dtype=np.int8 if fname == "layer" else np.int64)
            updates[fname] = arr
        if self.edge_features is not None:
            ef = np.asarray(self.edge_features)
            if unbatched and ef.ndim == 2:
                ef = ef[None]
            if ef.ndim != 3 or ef.shape[:2] != (B, n):
                raise ShapeMismatchError(
                    f"context.edge_features must have shape {(B, n)} + (f,), got {ef.shape}"
                )
            updates["edge_features"] = as_float_array(ef, "context.edge_features", dtype, (3,))
        return replace(self, **updates)

    def present(self) -> list[str]:
        """Names of the per-item fields that are set (``extra`` and ``table_state`` excluded)."""
        return [
            f.name for f in fields(self)
            if f.name not in ("extra", "table_state") and getattr(self, f.name) is not None
        ]


# ----------------------------------------------------------------------------------------------
# the validated batch handed to mechanisms
# ----------------------------------------------------------------------------------------------
@dataclass
class AttentionBatch:
    """Validated, batched inputs handed to a mechanism's ``_forward`` / ``_weights``.

    Attributes
    ----------
    query : (B, d)
    keys : (B, n, d), or the ``(N, d)`` table when ``ids`` is set (fused-gather mechanisms only)
    values : (B, n, dv) or ``(N, dv)`` table, or None for ``weights()``
    mask : (B, n) bool, already combined with ``ids >= 0``
    context : validated :class:`Context` or None
    ids : (B, n) int64 or None (only for fused-gather mechanisms; otherwise already gathered)
    """

    query: np.ndarray
    keys: np.ndarray
    values: np.ndarray | None
    mask: np.ndarray
    context: Context | None
    ids: np.ndarray | None
    unbatched: bool

    @property
    def B(self) -> int:
        return int(self.query.shape[0])

    @property
    def n(self) -> int:
        return int(self.mask.shape[1])

    def table_form(self) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Keys/values as row tables plus ids: ``(T (N, d), Vt (N, dv) | None, ids (B, n))``.

        In the gather form these are the caller's tables and ids; in the dense form the
        ``(B*n, d)`` reshape of the keys (no copy) with ``ids[b, j] = b*n + j``. Kernels that read
        rows through ids thus serve both forms with one compiled signature.
        """
        if self.ids is not None:
            return self.keys, self.values, self.ids
        B, n = self.mask.shape
        T = self.keys.reshape(B * n, self.keys.shape[2])
        Vt = None if self.values is None else self.values.reshape(B * n, self.values.shape[2])
        return T, Vt, dense_ids(B, n)

    def table_grad_to_input(self, grad_table: np.ndarray) -> np.ndarray:
        """Map a table gradient from :meth:`table_form` back to the input layout."""
        if self.ids is not None:
            return grad_table
        B, n = self.mask.shape
        return grad_table.reshape(B, n, grad_table.shape[1])

    def require(self, name: str, mechanism: str) -> Any:
        """Return context field ``name`` or raise MissingContextError naming it."""
        if self.context is None or getattr(self.context, name) is None:
            raise MissingContextError(f"{mechanism} needs context.{name}, which was not given")
        return getattr(self.context, name)


def _readonly(arr: np.ndarray, unbatched: bool) -> np.ndarray:
    """A read-only view of ``arr`` (its first row for unbatched calls); ``arr`` itself is untouched."""
    view = np.asarray(arr)
    view = view[0, ...] if unbatched else view[...]  # a 0-d view, not a scalar, for (B,) arrays
    view.flags.writeable = False
    return view


@dataclass(frozen=True)
class ForwardResult:
    """What a mechanism's ``_forward`` hook returns (batched layout, batch axis first).

    Attributes
    ----------
    out : ndarray (B, d_out)
        The output.
    data : object
        Whatever the mechanism's ``_backward`` needs (private to the mechanism).
    weights : ndarray, callable or None
        The forward's attention weights ``(B, n)`` / ``(B, h, n)``, or a callable computing them
        on demand (for mechanisms that do not keep them, e.g. flash), or None.
    aux_losses : mapping str -> float
        Auxiliary losses of this forward (moe's load balance).
    aux_weights : mapping str -> float
        The weight of each auxiliary loss in the objective whose gradient ``_backward`` returns
        (``sum(grad_out * out) + sum_k aux_weights[k] * aux_losses[k]``); one entry per aux loss.
    inspect : mapping str -> ndarray
        Mechanism-specific arrays with the batch axis first.
    """

    out: np.ndarray
    data: Any
    weights: np.ndarray | Callable[[], np.ndarray] | None = None
    aux_losses: Mapping[str, float] = field(default_factory=dict)
    aux_weights: Mapping[str, float] = field(default_factory=dict)
    inspect: Mapping[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class AttentionCache:
    """What :meth:`AttentionMechanism.forward` hands to :meth:`AttentionMechanism.backward`.

    Immutable: a frozen dataclass whose mappings are read-only and whose public arrays are
    read-only views. Build it only through ``forward``.

    Attributes
    ----------
    mechanism : str
        Registry name of the mechanism whose forward made it.
    output_shape : tuple of int
        Shape of the forward's output (``grad_out`` must have it).
    unbatched : bool
        True when the forward was called without a batch axis.
    aux_losses : mapping str -> float
        Auxiliary losses of the forward (moe: ``{"load_balance": value}``, info_bottleneck:
        ``{"kl": value}``; ``{}`` otherwise), unweighted.
    aux_weights : mapping str -> float
        The weight :meth:`AttentionMechanism.backward` gives each auxiliary loss: its gradients
        are those of ``sum(grad_out * out) + sum_k aux_weights[k] * aux_losses[k]``, so a trainer
        adds ``sum_k aux_weights[k] * aux_losses[k]`` to the loss it reports.
    inspect : mapping str -> ndarray
        Mechanism-specific arrays of the forward (local_global: ``local_weights``,
        ``global_weights``, ``gate``, ``local_count``, ``global_count``; moe: ``gates``,
        ``router_probs``; dual_space: ``latent_ids``, ``gate``; ``{}`` otherwise).
    weights : ndarray or None
        See :attr:`weights`.
    """

    mechanism: str
    output_shape: tuple[int, ...]
    unbatched: bool
    aux_losses: Mapping[str, float]
    aux_weights: Mapping[str, float]
    inspect: Mapping[str, np.ndarray]
    #: the weights array, a callable computing it (batched), or None
    _weights: Any = field(repr=False)
    #: the mechanism's private backward state
    _data: Any = field(repr=False)
    #: ``(ids, key_rows, value_rows)`` when the base class gathered table rows (non-fused mechanisms)
    _scatter: tuple[np.ndarray, int, int] | None = field(repr=False)
    #: ``id()`` of the mechanism object whose forward made the cache
    _owner: int = field(repr=False)

    @property
    def weights(self) -> np.ndarray | None:
        """The forward's attention weights, ``(B, n)`` (per-head mechanisms ``(B, h, n)``), read-only.

        Squeezed for unbatched calls; None for a mechanism without such a notion. Mechanisms that
        do not keep the weights for their backward (flash keeps the log-sum-exp; linear keeps
        nothing) recompute them from the cached inputs at each access.
        """
        w = self._weights() if callable(self._weights) else self._weights
        return None if w is None else _readonly(w, self.unbatched)


# ----------------------------------------------------------------------------------------------
# the protocol
# ----------------------------------------------------------------------------------------------
class AttentionMechanism(ABC):
    """Base class of every attention mechanism (see the module docstring for the contract).

    Parameters
    ----------
    dim : int
        Query/key dimensionality ``d``.
    dtype : np.float32 or np.float64
        Compute precision; inputs are converted to it. float64 is the finite-difference test path.
    seed : int or None
        Seed of the parameter initialisation (and random features); same seed -> same mechanism.
    """

    #: registry name
    name: ClassVar[str] = "base"
    #: True when the mechanism gathers table rows by ``ids`` inside its own kernels
    fused_gather: ClassVar[bool] = False
    #: True (fused-gather mechanisms only) when the kernels detect NaN/inf in the key/value rows
    #: they read and the mechanism raises NonFiniteError itself (see :meth:`_raise_nonfinite_rows`);
    #: the base class then skips scanning whole key/value arrays (tables or dense) on every call,
    #: so only *attended* items are checked: NaN/inf in masked slots or unreferenced table rows
    #: is ignored (never read). Queries, masks and context are always checked.
    checks_table_rows: ClassVar[bool] = False

    def __init__(self, dim: int, *, dtype: Any = np.float32, seed: int | None = None) -> None:
        self.dim = check_positive_int(dim, "dim")
        self.dtype = resolve_dtype(dtype)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise ConfigError(f"seed must be an int or None, got {seed!r}")
        self.seed = None if seed is None else int(seed)
        self._params: dict[str, np.ndarray] = {}

    # -- overridable description ---------------------------------------------------------------
    def required_context(self) -> tuple[str, ...]:
        """Names of the :class:`Context` fields this mechanism needs (``()`` = none)."""
        return ()

    def output_dim(self, value_dim: int) -> int:
        """Width of the output for values of width ``value_dim``."""
        return value_dim

    def check_value_dim(self, value_dim: int) -> None:  # noqa: B027 - optional hook
        """Raise DimensionMismatchError when values of width ``value_dim`` are not accepted."""

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this mechanism (params excluded)."""
        return {"dim": self.dim, "dtype": self.dtype.name, "seed": self.seed}

    def prepare_table(self, table: Any) -> Any:
        """Build the per-table state this mechanism needs, to pass as ``Context(table_state=...)``.

        Call it when the database table is set or changed, and after training steps that change
        what the state depends on; forward never builds or refreshes it. The default returns
        None (no state needed); dual_space returns its latent-neighbour structure, centroid_ot
        its key clusters, sliced_wasserstein its cached key projections.
        """
        return None

    def __repr__(self) -> str:
        cfg = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({cfg})"

    # -- params ----------------------------------------------------------------------------------
    @property
    def params(self) -> dict[str, np.ndarray]:
        """Trainable arrays by name (empty dict if none). Optimizers update them in place."""
        return self._params

    def set_params(self, values: dict[str, np.ndarray]) -> None:
        """Copy ``values`` into the params in place (shapes must match; unknown names raise)."""
        for k, v in values.items():
            if k not in self._params:
                raise InvalidInputError(f"{self.name} has no parameter {k!r} (has {sorted(self._params)})")
            arr = as_float_array(v, f"params[{k!r}]", self.dtype, (np.ndim(v),))
            if arr.shape != self._params[k].shape:
                raise ShapeMismatchError(
                    f"params[{k!r}] must have shape {self._params[k].shape}, got {arr.shape}"
                )
        for k, v in values.items():
            self._params[k][...] = v

    def _rng(self, stream: int = 0) -> np.random.Generator:
        """A generator derived from ``seed`` (independent streams by ``stream``)."""
        if self.seed is None:
            return np.random.default_rng()
        return np.random.default_rng([self.seed, stream])

    # -- public calls ---------------------------------------------------------------------------
    def forward(
        self,
        query: Any,
        keys: Any,
        values: Any,
        mask: Any = None,
        context: Context | None = None,
        ids: Any = None,
    ) -> tuple[np.ndarray, AttentionCache]:
        """Attend ``query`` over ``keys``/``values`` (pure: nothing is written on the mechanism).

        Returns
        -------
        out : ndarray
            ``(B, d_out)`` (``(d_out,)`` for unbatched input) in the mechanism's dtype.
        cache : AttentionCache
            What :meth:`backward` needs, plus the weights, aux losses and inspect arrays.
        """
        if values is None:
            raise InvalidInputError(
                f"{self.name}: values are required in forward (pass the keys again to read out the keys)")
        batch, scatter_ids, key_rows, value_rows = self._prepare(query, keys, values, mask, context, ids)
        res = self._forward(batch)
        out = res.out[0] if batch.unbatched else res.out
        cache = AttentionCache(
            mechanism=self.name,
            output_shape=tuple(out.shape),
            unbatched=batch.unbatched,
            aux_losses=MappingProxyType({k: float(v) for k, v in res.aux_losses.items()}),
            aux_weights=MappingProxyType({k: float(res.aux_weights.get(k, 0.0)) for k in res.aux_losses}),
            inspect=MappingProxyType({k: _readonly(v, batch.unbatched) for k, v in res.inspect.items()}),
            _weights=res.weights,
            _data=res.data,
            _scatter=None if scatter_ids is None else (scatter_ids, key_rows, value_rows),
            _owner=id(self),
        )
        return out, cache

    def weights(
        self,
        query: Any,
        keys: Any,
        mask: Any = None,
        context: Context | None = None,
        ids: Any = None,
    ) -> np.ndarray:
        """Attention weights ``(B, n)`` (per-head mechanisms: ``(B, h, n)``); rows sum to 1 over the mask.

        Fully masked rows are all zero. Pure, like :meth:`forward`.
        """
        batch, _, _, _ = self._prepare(query, keys, None, mask, context, ids)
        w = self._weights(batch)
        return w[0] if batch.unbatched else w

    def backward(
        self, cache: AttentionCache, grad_out: Any, *, input_grads: bool = True
    ) -> dict[str, np.ndarray]:
        """Gradients of ``sum(grad_out * out)`` for the forward call that returned ``cache``.

        Pure: the same cache may be used again (e.g. with another ``grad_out``), from any thread.

        Parameters
        ----------
        cache : AttentionCache
            Returned by :meth:`forward` of this mechanism object.
        grad_out : array shaped like that forward's output
        input_grads : bool, default True
            False computes no ``"keys"``/``"values"`` gradient at all (nothing table-sized is
            allocated in the gather form), e.g. when only the params are trained.

        Returns
        -------
        dict
            One entry per param (same shape as the param) plus ``"query"``, and ``"keys"`` and
            ``"values"`` shaped like the forward's inputs (tables in the gather form) when
            ``input_grads`` is True.

        Raises
        ------
        InvalidInputError
            ``cache`` is not an :class:`AttentionCache` of this mechanism object.
        ShapeMismatchError
            ``grad_out`` does not have the forward's output shape.
        """
        if not isinstance(cache, AttentionCache):
            raise InvalidInputError(
                f"{self.name}.backward needs the cache returned by forward, got {type(cache).__name__}")
        if cache.mechanism != self.name or cache._owner != id(self):
            raise InvalidInputError(
                f"{self.name}.backward got a cache made by another mechanism object ({cache.mechanism})")
        want = cache.output_shape
        g = as_float_array(grad_out, "grad_out", self.dtype, (len(want),))
        if g.shape != want:
            raise ShapeMismatchError(f"grad_out must have the forward output shape {want}, got {g.shape}")
        if cache.unbatched:
            g = g[None]
        want_inputs = bool(input_grads)
        grads = self._backward(np.ascontiguousarray(g), cache._data, want_inputs)
        if not want_inputs:
            grads.pop("keys", None)
            grads.pop("values", None)
        elif cache._scatter is not None:
            from ruvector_hnsw.attention._gather_kernels import scatter_add_rows

            scatter_ids, key_rows, value_rows = cache._scatter
            grads["keys"] = scatter_add_rows(np.ascontiguousarray(grads["keys"]), scatter_ids, key_rows)
            grads["values"] = scatter_add_rows(np.ascontiguousarray(grads["values"]), scatter_ids, value_rows)
        if cache.unbatched:
            grads["query"] = grads["query"][0]
            if want_inputs and cache._scatter is None and grads["keys"].ndim == 3:
                grads["keys"] = grads["keys"][0]
                grads["values"] = grads["values"][0]
        return grads

    def warmup(self, value_dim: int | None = None, context: Context | None = None) -> None:
        """Pay JIT compilation now: a tiny forward and backward in the dense and gather forms.

        ``context`` (batch 2, 3 items) replaces the default one (``dist``, ``layer``, ``hops``,
        ``degree``); its ``table_state`` is replaced by one built over the tiny table. Nothing is
        left behind (forward and backward are pure; params are untouched).
        """
        dv = self.dim if value_dim is None else value_dim
        rng = np.random.default_rng(0)
        q = rng.standard_normal((2, self.dim)).astype(self.dtype)
        K = rng.standard_normal((2, 3, self.dim)).astype(self.dtype)
        V = rng.standard_normal((2, 3, dv)).astype(self.dtype)
        ctx = context or Context(
            dist=np.ones((2, 3)), layer=np.array([[0, 1, 0], [1, 0, 0]], dtype=np.int8),
            hops=np.ones((2, 3), dtype=np.int64), degree=np.ones((2, 3)),
        )
        Kt, Vt = K.reshape(6, -1)[:5], V.reshape(6, -1)[:5]
        ctx = replace(ctx, table_state=self._warmup_table_state(Kt))
        ids = np.array([[0, 1, -1], [2, 3, 4]])
        for args in ((K, V, None), (Kt, Vt, ids)):
            out, cache = self.forward(q, args[0], args[1], context=ctx, ids=args[2])
            if self._params or type(self)._backward is not AttentionMechanism._backward:
                self.backward(cache, np.ones_like(out))

    def _warmup_table_state(self, table: np.ndarray) -> Any:
        """The table state :meth:`warmup` uses for its tiny table (must write nothing on ``self``)."""
        return self.prepare_table(table)

    def _input_grad_entries(
        self, batch: AttentionBatch, d_keys: np.ndarray, d_values: np.ndarray, input_grads: bool
    ) -> dict[str, np.ndarray]:
        """``{"keys", "values"}`` from table-form gradients, or ``{}`` when not requested."""
        if not input_grads:
            return {}
        return {"keys": batch.table_grad_to_input(d_keys), "values": batch.table_grad_to_input(d_values)}

    def _raise_nonfinite_rows(self) -> None:
        """Raise the NonFiniteError of a kernel that met NaN/inf in the rows it read."""
        raise NonFiniteError(f"{self.name}: keys/values of attended items contain NaN or infinity")

    def _softmax_weights(
        self, query: np.ndarray, table: np.ndarray, ids: np.ndarray, mask: np.ndarray, scale: float
    ) -> np.ndarray:
        """Softmax weights of ``scale * q . table[ids]`` over ``mask``, checked finite.

        ``query`` is ``(B, d)`` (one query per row; weights ``(B, n)``) or ``(B, H, d)``
        (weights ``(B, H, n)``). NaN/inf in a row read raises via :meth:`_raise_nonfinite_rows`.
        """
        single = query.ndim == 2
        W, ok = mq_attn_weights(query[:, None, :] if single else query, table, ids, mask, scale)
        if not ok:
            self._raise_nonfinite_rows()
        return W[:, 0, :] if single else W

    # -- hooks ----------------------------------------------------------------------------------
    @abstractmethod
    def _forward(self, batch: AttentionBatch) -> ForwardResult:
        """Return the :class:`ForwardResult` (batched) of ``batch``; writes nothing on ``self``."""

    @abstractmethod
    def _weights(self, batch: AttentionBatch) -> np.ndarray:
        """Return the weights ``(B, n)`` or ``(B, h, n)``."""

    def _backward(self, grad_out: np.ndarray, data: Any, input_grads: bool) -> dict[str, np.ndarray]:
        """Return the gradients (see the module docstring) from the forward's ``data``."""
        raise NotImplementedError(f"{self.name} has no backward pass")

    # -- validation -----------------------------------------------------------------------------
    def _prepare(
        self,
        query: Any,
        keys: Any,
        values: Any,
        mask: Any,
        context: Context | None,
        ids: Any,
    ) -> tuple[AttentionBatch, np.ndarray | None, int, int]:
        dt = self.dtype
        q = as_float_array(query, "query", dt, (1, 2))
        unbatched = q.ndim == 1
        if unbatched:
            q = q[None]
        B, d = q.shape
        if d != self.dim:
            raise DimensionMismatchError(
                f"{self.name}: query has dimension {d}, mechanism expects {self.dim}"
            )
        if B == 0:
            raise EmptyInputError("query batch is empty (B = 0)")

        scatter_ids: np.ndarray | None = None
        key_rows = value_rows = 0
        skip_scan = self.fused_gather and self.checks_table_rows
        if ids is None:
            k = as_float_array(keys, "keys", dt, (2,) if unbatched else (3,), check_finite=not skip_scan)
            if unbatched:
                k = k[None]
            if k.shape[0] != B:
                raise ShapeMismatchError(f"keys has batch size {k.shape[0]}, query has {B}")
            n = k.shape[1]
            if k.shape[2] != d:
                raise DimensionMismatchError(f"keys have dimension {k.shape[2]}, query has {d}")
            v = None
            if values is not None:
                v = as_float_array(values, "values", dt, (2,) if unbatched else (3,), check_finite=not skip_scan)
                if unbatched:
                    v = v[None]
                if v.shape[:2] != (B, n):
                    raise ShapeMismatchError(
                        f"values must have shape {(B, n)} + (dv,) to match keys, got {v.shape}"
                    )
            m = np.ones((B, n), dtype=bool)
            if mask is not None:
                m = check_mask(mask, (n,) if unbatched else (B, n))
                if unbatched:
                    m = m[None]
            batch_ids = None
        else:
            k = as_float_array(keys, "keys (table)", dt, (2,), check_finite=not skip_scan)
            if k.shape[1] != d:
                raise DimensionMismatchError(f"key table has dimension {k.shape[1]}, query has {d}")
            key_rows = k.shape[0]
            v = None
            if values is not None:
                v = as_float_array(values, "values (table)", dt, (2,), check_finite=not skip_scan)
                value_rows = v.shape[0]
                if value_rows != key_rows:
                    raise ShapeMismatchError(
                        f"value table has {value_rows} rows, key table has {key_rows}; ids index both"
                    )
            idarr = np.asarray(ids)
            if unbatched and idarr.ndim == 1:
                idarr = idarr[None]
            if idarr.ndim != 2 or idarr.shape[0] != B:
                raise ShapeMismatchError(f"ids must have shape ({B}, n), got {np.asarray(ids).shape}")
            batch_ids = check_ids(idarr, None, key_rows)
            n = batch_ids.shape[1]
            m = batch_ids >= 0
            if mask is not None:
                mm = check_mask(mask, (n,) if unbatched else (B, n))
                m = m & (mm[None] if unbatched else mm)
            m = np.ascontiguousarray(m)
            if not self.fused_gather:
                from ruvector_hnsw.attention._gather_kernels import gather_rows

                scatter_ids = batch_ids
                k = gather_rows(k, batch_ids)
                if v is not None:
                    v = gather_rows(v, batch_ids)
                batch_ids = None
        if n == 0:
            raise EmptyInputError("keys hold no items (n = 0)")
        if v is not None:
            if v.shape[-1] == 0:
                raise EmptyInputError("values have width 0")
            self.check_value_dim(int(v.shape[-1]))

        ctx = None
        if context is not None:
            if not isinstance(context, Context):
                raise InvalidInputError(f"context must be a Context, got {type(context).__name__}")
            ctx = context.validated(B, n, dt, unbatched)
        for fname in self.required_context():
            if ctx is None or getattr(ctx, fname) is None:
                raise MissingContextError(f"{self.name} needs context.{fname}, which was not given")
        batch = AttentionBatch(
            query=q, keys=k, values=v, mask=m, context=ctx, ids=batch_ids, unbatched=unbatched
        )
        return batch, scatter_ids, key_rows, value_rows
