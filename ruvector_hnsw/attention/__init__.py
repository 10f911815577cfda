"""Attention mechanisms over HNSW neighbourhoods: batched, numba-fast, with analytic gradients.

``MECHANISMS`` maps a name to a class; every class follows the protocol of
:class:`~ruvector_hnsw.attention.base.AttentionMechanism` (see :mod:`ruvector_hnsw.attention.base`
for shapes, the gather-by-ids form, the fully-masked-row convention and the float64 test path)::

    from ruvector_hnsw.attention import MECHANISMS, Context
    att = MECHANISMS["scaled_dot"](128, temperature=1.0)
    ctx = Context(dist=dist, layer=layer, table_state=att.prepare_table(table))  # None for most
    out, cache = att.forward(query, table, table, context=ctx, ids=ids)     # pure: nothing kept on att
    grads = att.backward(cache, grad_out, input_grads=False)                  # params + "query" only
"""

from __future__ import annotations

import importlib

from ruvector_hnsw.attention.base import AttentionBatch, AttentionCache, AttentionMechanism, Context

# (registry name, module in this package, class name) - one line per mechanism
_SPECS: tuple[tuple[str, str, str], ...] = (
    ("scaled_dot", "scaled_dot", "ScaledDotAttention"),
    ("multi_head", "multi_head", "MultiHeadAttention"),
    ("flash", "flash", "FlashAttention"),
    ("linear", "linear", "LinearAttention"),
    ("rope", "rope", "RoPEAttention"),
    ("local_global", "local_global", "LocalGlobalAttention"),
    ("edge_featured", "edge_featured", "EdgeFeaturedAttention"),
    ("hyperbolic", "hyperbolic", "HyperbolicAttention"),
    ("moe", "moe", "MoEAttention"),
    ("dual_space", "dual_space", "DualSpaceAttention"),
    ("sliced_wasserstein", "sliced_wasserstein", "SlicedWassersteinAttention"),
    ("centroid_ot", "centroid_ot", "CentroidOTAttention"),
    ("diffusion", "diffusion", "DiffusionAttention"),
    ("mixed_curvature", "mixed_curvature", "MixedCurvatureAttention"),
    ("topology_gated", "topology_gated", "TopologyGatedAttention"),
    ("info_bottleneck", "info_bottleneck", "InfoBottleneckAttention"),
)


def _load(module: str, cls: str) -> type[AttentionMechanism]:
    klass: type[AttentionMechanism] = getattr(importlib.import_module(f"{__name__}.{module}"), cls)
    return klass


MECHANISMS: dict[str, type[AttentionMechanism]] = {name: _load(mod, cls) for name, mod, cls in _SPECS}

__all__ = ["MECHANISMS", "AttentionBatch", "AttentionCache", "AttentionMechanism", "Context"]
