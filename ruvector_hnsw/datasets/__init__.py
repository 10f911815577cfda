"""ruvector_hnsw.datasets"""
