"""ruvector_hnsw.eval"""
