"""HNSW index over hnswlib with an exact graph export, and a FAISS latent index."""

from ruvector_hnsw.index.graph import HNSWGraph, Neighborhood
from ruvector_hnsw.index.hnsw import SPACES, HNSWIndex
from ruvector_hnsw.latent import KINDS, METRICS, LatentIndex

__all__ = ["KINDS", "METRICS", "SPACES", "HNSWGraph", "HNSWIndex", "LatentIndex", "Neighborhood"]
