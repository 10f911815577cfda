"""The encoder stage: attention over a graph context, a linear map and unit normalisation.

For a standardised vector ``u`` with a context of items ``U[ids]`` (its graph neighbourhood for a
database row, its best HNSW candidates plus hub links for a query) the encoder computes::

    a, cache = Att.forward(u, keys=U, values=U, ids=ids, mask, context)   # any attention mechanism
    z = W_u u + W_a a ;   zhat = z / ||z||                                # (p,) code

Everything is pure: :meth:`ContextEncoder.encode` returns an :class:`EncodedBatch` holding the
attention's own cache, and :meth:`ContextEncoder.backward` turns ``dL/dzhat`` into parameter
gradients from it, without re-running any forward (attention protocol v2). The projection is a
BLAS product; BLAS sums small matrices in another order than large ones, so callers that need a
row's code to be independent of its batch (the database codes) encode fixed-size blocks
(:data:`ruvector_hnsw.search.state.ENCODE_BLOCK`).

Stacked blocks
--------------
With ``L`` mechanisms (``layers = L``), an optional ``norm`` (``"layer"`` / ``"rms"``, see
:mod:`ruvector_hnsw.attention.norms`) and a ``dropout`` rate, block ``l = 1..L`` is
``norm -> attention -> dropout -> residual`` over a residual stream ``h`` (``h_0 = u``)::

    a_l = Drop(Att_l(Norm_l(h_{l-1}), keys=U, values=U, ids, mask, context))
    h_l = h_{l-1} + a_l                        (l < L)
    z   = W_u h_{L-1} + W_a a_L                (the last residual, with learned weights)

Every block attends from the query's current stream over the *same* keys and values: the table
rows of the context, un-transformed (the database rows are not re-encoded per block, so a block
costs one attention call and no extra table work; the context's side information - distances,
layers - is the original query's). The residual needs ``Att_l`` to keep the width (``output_dim(d)
== d``) for ``l < L``. With ``L = 1``, no norm and no dropout this is exactly the single-block
encoder above, bit for bit. Dropout (inverted: kept entries scaled by ``1 / (1 - rate)``) acts
only when :meth:`ContextEncoder.encode` gets an ``rng`` (training); without one (inference) it is
the identity and draws nothing.

Parameter names: ``W_u``, ``W_a``; block 1's attention ``att.<name>`` (as for one block), block
``l >= 2``'s ``block<l>.att.<name>``; block ``l``'s norm ``block<l>.norm.gain`` (and
``block<l>.norm.bias`` for LayerNorm).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ruvector_hnsw.attention import AttentionMechanism, Context
from ruvector_hnsw.attention.norms import NORMS, LayerNorm, NormCache, RMSNorm, make_norm
from ruvector_hnsw.errors import ConfigError

__all__ = ["BlockCache", "ContextEncoder", "EncodedBatch", "StackedTableState"]

_EPS = 1e-12


@dataclass(frozen=True)
class BlockCache:
    """One block's forward state (stacked encoders)."""

    norm_cache: NormCache | None   #: the norm's cache (None without a norm)
    att_cache: Any                 #: the mechanism's forward cache
    keep: np.ndarray | None        #: dropout multipliers (0 or ``1/(1-rate)``), None without dropout


@dataclass(frozen=True)
class StackedTableState:
    """Per-block table states of a stacked encoder (what :meth:`ContextEncoder.prepare_table` returns)."""

    states: tuple[Any, ...]


@dataclass(frozen=True)
class EncodedBatch:
    """What :meth:`ContextEncoder.encode` returns and :meth:`ContextEncoder.backward` needs."""

    zhat: np.ndarray      #: (B, p) unit rows
    norm: np.ndarray      #: (B, 1) ``||z||``
    u: np.ndarray         #: (B, d) the encoded vectors
    a: np.ndarray         #: (B, d_out) attention read-out (of the last block)
    att_cache: Any        #: the mechanism's forward cache (of the last block)
    stream: np.ndarray | None = None     #: (B, d) ``h_{L-1}``, what ``W_u`` maps (None: ``u``)
    blocks: tuple[BlockCache, ...] = ()  #: every block's cache (empty for the plain single block)


class ContextEncoder:
    """Attention over a context + linear map + normalisation (the trainable part of the codes).

    Parameters
    ----------
    mechanism : AttentionMechanism or sequence of them
        The attention; its params are trained too (exposed as ``"att.<name>"``). A sequence of
        ``L`` distinct mechanism objects stacks ``L`` blocks (see the module docstring); all but
        the last must keep the width (``output_dim(dim) == dim``).
    dim : int
        Input dimensionality ``d``.
    latent_dim : int
        Code width ``p``.
    init : ndarray, optional
        ``(p, d)`` initial ``W_u``; ``W_a`` starts equal to it, so the untrained code is a
        projection of ``u + a``. Default: seeded random orthonormal rows.
    seed : int
        Seed of the random initialisation.
    dtype : float32 or float64
        float64 is the finite-difference test path.
    norm : {"layer", "rms"} or None
        Normalisation of each block's input (learnable gain, and bias for ``"layer"``).
    dropout : float
        Dropout rate on each block's attention read-out, in ``[0, 1)``; acts only when
        :meth:`encode` is given an ``rng``.
    use_context : bool
        False is the "no context" ablation: no attention is run, every read-out is zero, so the
        code is ``normalize(W_u u)`` (the mechanism's parameters get zero gradients).
    """

    def __init__(self, mechanism: AttentionMechanism | Sequence[AttentionMechanism], dim: int, latent_dim: int, *,
                 init: np.ndarray | None = None, seed: int = 0, dtype: Any = np.float32,
                 norm: str | None = None, dropout: float = 0.0, use_context: bool = True) -> None:
        mechs = [mechanism] if isinstance(mechanism, AttentionMechanism) else list(mechanism)
        if not mechs or not all(isinstance(m, AttentionMechanism) for m in mechs):
            raise ConfigError("mechanism: expected an AttentionMechanism or a non-empty sequence of them")
        if len({id(m) for m in mechs}) != len(mechs):
            raise ConfigError("mechanism: each block needs its own mechanism object")
        self.mechanisms: tuple[AttentionMechanism, ...] = tuple(mechs)
        self.dim = int(dim)
        self.latent_dim = int(latent_dim)
        self.dtype = np.dtype(dtype)
        for i, m in enumerate(mechs[:-1]):
            if m.output_dim(self.dim) != self.dim:
                raise ConfigError(f"block {i + 1}: the residual needs output_dim(dim) == dim, "
                                  f"got {m.output_dim(self.dim)} != {self.dim}")
        if norm is not None and norm not in NORMS:
            raise ConfigError(f"norm must be one of {NORMS} or None, got {norm!r}")
        self.norm_kind = norm
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float, np.integer, np.floating)) \
                or not 0.0 <= float(dropout) < 1.0:
            raise ConfigError(f"dropout must be a number in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        self.use_context = bool(use_context)
        self.norms: tuple[LayerNorm | RMSNorm | None, ...] = tuple(
            make_norm(norm, self.dim, dtype=self.dtype) for _ in mechs)
        d_out = mechs[-1].output_dim(dim)
        if init is None:
            rng = np.random.default_rng(int(seed))
            g = rng.standard_normal((max(self.latent_dim, dim), dim))
            qmat, _ = np.linalg.qr(g.T)  # orthonormal columns
            init = qmat.T[: self.latent_dim]
        w_u = np.ascontiguousarray(init, dtype=self.dtype)
        w_a = np.zeros((self.latent_dim, d_out), dtype=self.dtype)
        w_a[:, : min(d_out, dim)] = w_u[:, : min(d_out, dim)]
        self.own: dict[str, np.ndarray] = {"W_u": w_u, "W_a": w_a}

    @property
    def mechanism(self) -> AttentionMechanism:
        """The first block's mechanism (the only one of a single-block encoder)."""
        return self.mechanisms[0]

    @property
    def layers(self) -> int:
        """Number of stacked blocks."""
        return len(self.mechanisms)

    @staticmethod
    def _att_prefix(block: int) -> str:
        return "att." if block == 0 else f"block{block + 1}.att."

    @property
    def params(self) -> dict[str, np.ndarray]:
        """Every trainable array (``W_u``, ``W_a``, ``att.*``, ``block<l>.*``); views updated in place."""
        out = dict(self.own)
        for i, (mech, nrm) in enumerate(zip(self.mechanisms, self.norms, strict=True)):
            if nrm is not None:
                for k, v in nrm.params.items():
                    out[f"block{i + 1}.norm.{k}"] = v
            prefix = self._att_prefix(i)
            for k, v in mech.params.items():
                out[f"{prefix}{k}"] = v
        return out

    def prepare_table(self, table: np.ndarray) -> Any:
        """The mechanisms' explicit per-table state (e.g. dual_space's latent neighbours), or None.

        Stacked encoders return a :class:`StackedTableState` (one state per block) when any block
        has one; :meth:`encode` hands each block its own.
        """
        if self.layers == 1:
            return self.mechanism.prepare_table(table)
        states = tuple(m.prepare_table(table) for m in self.mechanisms)
        return None if all(st is None for st in states) else StackedTableState(states)

    @staticmethod
    def _block_context(context: Context | None, block: int) -> Context | None:
        if context is not None and isinstance(context.table_state, StackedTableState):
            return replace(context, table_state=context.table_state.states[block])
        return context

    def encode(self, u: np.ndarray, table: np.ndarray, ids: np.ndarray, mask: np.ndarray,
               context: Context | None, *, rng: np.random.Generator | None = None) -> EncodedBatch:
        """Encode rows ``u`` (B, d) attending over ``table[ids]`` (ids -1 = padding); pure.

        ``rng`` (training only) draws the dropout masks; without it, or with ``dropout = 0``,
        dropout is the identity and nothing is drawn.
        """
        uu = np.ascontiguousarray(u, dtype=self.dtype)
        last = self.layers - 1
        stream = uu
        blocks: list[BlockCache] = []
        a = uu
        cache: Any = None
        if not self.use_context:
            a = np.zeros((uu.shape[0], self.mechanisms[-1].output_dim(self.dim)), dtype=self.dtype)
            z = uu @ self.own["W_u"].T
            norm = np.sqrt((z * z).sum(axis=1, keepdims=True)) + self.dtype.type(_EPS)
            return EncodedBatch(zhat=(z / norm).astype(self.dtype, copy=False), norm=norm, u=uu, a=a,
                                att_cache=None, stream=uu, blocks=())
        for i, (mech, nrm) in enumerate(zip(self.mechanisms, self.norms, strict=True)):
            src = u if i == 0 else stream
            ncache: NormCache | None = None
            if nrm is not None:
                src, ncache = nrm.forward(src)
            a, cache = mech.forward(src, table, table, mask=mask, context=self._block_context(context, i), ids=ids)
            a = np.ascontiguousarray(a, dtype=self.dtype)
            keep = None
            if self.dropout > 0.0 and rng is not None:
                keep = ((rng.random(a.shape) >= self.dropout) / (1.0 - self.dropout)).astype(self.dtype)
                a = a * keep
            blocks.append(BlockCache(norm_cache=ncache, att_cache=cache, keep=keep))
            if i < last:
                stream = stream + a
        z = stream @ self.own["W_u"].T + a @ self.own["W_a"].T
        norm = np.sqrt((z * z).sum(axis=1, keepdims=True)) + self.dtype.type(_EPS)
        return EncodedBatch(zhat=(z / norm).astype(self.dtype, copy=False), norm=norm, u=uu, a=a, att_cache=cache,
                            stream=stream, blocks=tuple(blocks))

    def backward(self, enc: EncodedBatch, grad_zhat: np.ndarray, grads: dict[str, np.ndarray]) -> None:
        """Accumulate the parameter gradients of ``enc`` given ``dL/dzhat`` into ``grads`` (pure)."""
        zhat = enc.zhat
        g = np.asarray(grad_zhat, dtype=self.dtype)
        gz = (g - zhat * (zhat * g).sum(axis=1, keepdims=True)) / enc.norm
        stream = enc.u if enc.stream is None else enc.stream
        grads["W_u"] += gz.T @ stream
        grads["W_a"] += gz.T @ enc.a
        if not self.use_context or (self.layers == 1 and self.norms[0] is None and not self.mechanism.params):
            return
        blocks = enc.blocks or (BlockCache(norm_cache=None, att_cache=enc.att_cache, keep=None),)
        g_a = gz @ self.own["W_a"]                                   # dL/d a_{L-1}
        g_h = gz @ self.own["W_u"] if self.layers > 1 else None      # dL/d h_{L-1}, partial
        for i in range(self.layers - 1, -1, -1):
            mech, nrm, blk = self.mechanisms[i], self.norms[i], blocks[i]
            need_query = i > 0 or nrm is not None
            if not mech.params and not need_query:
                continue
            g_pre = g_a if blk.keep is None else g_a * blk.keep
            att_grads = mech.backward(blk.att_cache, np.ascontiguousarray(g_pre, dtype=mech.dtype),
                                      input_grads=False)
            prefix = self._att_prefix(i)
            for k in mech.params:
                grads[f"{prefix}{k}"] += att_grads[k]
            if not need_query:
                continue
            gx = np.asarray(att_grads["query"], dtype=self.dtype)
            if nrm is not None:
                assert blk.norm_cache is not None
                ng = nrm.backward(blk.norm_cache, gx)
                for k in nrm.params:
                    grads[f"block{i + 1}.norm.{k}"] += ng[k]
                gx = ng["x"]
            if i > 0:
                assert g_h is not None
                g_h = g_h + gx      # dL/d h_i, complete
                g_a = g_h           # h_i = h_{i-1} + a_{i-1}

    def aux_terms(self, enc: EncodedBatch) -> dict[str, tuple[float, float]]:
        """The auxiliary losses of ``enc``'s forward: ``name -> (value, weight)``.

        One entry per auxiliary loss of every block's mechanism (moe's ``load_balance``,
        info_bottleneck's ``kl``; names of blocks after the first get a ``block<l>.`` prefix).
        :meth:`backward` already includes ``weight * d value``; a training loss adds
        ``weight * value`` to report the objective it differentiates.
        """
        blocks = enc.blocks or (BlockCache(norm_cache=None, att_cache=enc.att_cache, keep=None),)
        out: dict[str, tuple[float, float]] = {}
        for i, blk in enumerate(blocks):
            cache = blk.att_cache
            prefix = "" if i == 0 else f"block{i + 1}."
            for name, value in getattr(cache, "aux_losses", {}).items():
                out[prefix + name] = (float(value), float(cache.aux_weights.get(name, 0.0)))
        return out

    def zero_grads(self) -> dict[str, np.ndarray]:
        """A zero gradient for every param."""
        return {k: np.zeros_like(v) for k, v in self.params.items()}
