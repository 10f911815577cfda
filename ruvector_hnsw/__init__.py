"""ruvector-hnsw: attention-aware nearest-neighbour search over an exact HNSW graph.

Data flows one way: ``index`` (HNSW graph, FAISS latent index) -> graph context ->
``attention`` -> re-ranked results; ``training`` fits the attention, ``eval`` measures it.
"""

from __future__ import annotations

from ruvector_hnsw.errors import RuvectorError
from ruvector_hnsw.index import HNSWGraph, HNSWIndex, LatentIndex, Neighborhood

__version__ = "0.1.0"

__all__ = [
    "HNSWGraph",
    "HNSWIndex",
    "LatentIndex",
    "Neighborhood",
    "RuvectorError",
    "__version__",
]
