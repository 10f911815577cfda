"""Attention-aware search: HNSW candidates -> graph context -> attention -> re-ranked, expanded results."""

from ruvector_hnsw.search.attention_search import TRAINING_FREE, AttentionSearch

__all__ = ["TRAINING_FREE", "AttentionSearch"]
