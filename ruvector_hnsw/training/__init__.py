"""ruvector_hnsw.training"""
