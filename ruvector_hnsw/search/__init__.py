"""Attention-aware search: HNSW candidates -> graph context -> attention codes -> residual score -> expansion.

- :class:`AttentionSearch` wires the stages (:mod:`.pipeline`) over a trained :class:`SearchModel`
  and the row-aligned :class:`DatabaseState` (contexts, cached codes, latent kNN).
- :class:`AlphaQESearch`, :class:`DBASearch`: the training-free baselines, same ``search`` protocol.
"""

from ruvector_hnsw.search.attention_search import AttentionSearch, check_model_index, items_checksum
from ruvector_hnsw.search.model import ModelConfig, SearchModel
from ruvector_hnsw.search.pipeline import Knobs
from ruvector_hnsw.search.state import DatabaseState
from ruvector_hnsw.search.training_free import AlphaQESearch, DBASearch

__all__ = ["AlphaQESearch", "AttentionSearch", "DBASearch", "DatabaseState", "Knobs", "ModelConfig", "SearchModel",
           "check_model_index", "items_checksum"]
