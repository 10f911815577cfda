"""Geometry diagnostics of an HNSW graph and a report that picks an attention mechanism.

- :mod:`.metrics`: pure metric functions over plain arrays (CSR links, vectors, windows) and the
  seeded neighbourhood sample taken from an :class:`~ruvector_hnsw.index.HNSWGraph`;
- :mod:`.report`: :class:`GeometryReport` (``GeometryReport.analyze(index_or_graph)``): graded
  metrics, a health score in ``[0, 1]`` and a recommended mechanism family with its reasons.
"""

from ruvector_hnsw.diagnostics.report import FAMILIES, METRICS, GeometryReport, MetricResult, grade, recommend

__all__ = ["FAMILIES", "METRICS", "GeometryReport", "MetricResult", "grade", "recommend"]
