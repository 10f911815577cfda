"""ruvector_hnsw.attention"""
