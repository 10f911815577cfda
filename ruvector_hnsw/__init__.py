"""ruvector-hnsw: attention-aware nearest-neighbour search over an exact HNSW graph.

Data flows one way: ``index`` (HNSW graph, FAISS latent index) -> graph context ->
``attention`` -> re-ranked results; ``training`` fits the attention, ``eval`` measures it.

The public names are imported lazily, so ``import ruvector_hnsw.attention`` does not
pay for hnswlib/FAISS start-up.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ruvector_hnsw.errors import RuvectorError

if TYPE_CHECKING:
    from ruvector_hnsw.index import HNSWGraph, HNSWIndex, LatentIndex, Neighborhood
    from ruvector_hnsw.search import AlphaQESearch, AttentionSearch, DBASearch

__version__ = "0.1.0"

_LAZY = {
    "AlphaQESearch": "ruvector_hnsw.search",
    "AttentionSearch": "ruvector_hnsw.search",
    "DBASearch": "ruvector_hnsw.search",
    "HNSWGraph": "ruvector_hnsw.index",
    "HNSWIndex": "ruvector_hnsw.index",
    "LatentIndex": "ruvector_hnsw.latent",
    "Neighborhood": "ruvector_hnsw.index",
}

__all__ = ["AlphaQESearch", "AttentionSearch", "DBASearch", "HNSWGraph", "HNSWIndex", "LatentIndex", "Neighborhood",
           "RuvectorError", "__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ruvector_hnsw' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
