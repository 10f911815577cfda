"""Datasets for retrieval evaluation.

* :func:`load` -- one entry point: ``load("clusters", size="small", seed=0)``,
  ``load("digits")``, ``load("data/sift_base.fvecs")``, ``load("glove-25-angular.hdf5")``.
* :class:`Dataset` -- ``base``, ``queries``, ``metric``, ``base_labels``/``query_labels``,
  ``neighbors``/``distances`` (exact ground truth), ``train_queries`` (disjoint from the
  evaluation queries), ``describe()``.
* Synthetic scenarios (:mod:`~ruvector_hnsw.datasets.synthetic`): ``clusters``,
  ``hierarchical``, ``manifolds``; real small data: ``digits`` (scikit-learn).
* File formats (:mod:`~ruvector_hnsw.datasets.formats`): TEXMEX ``.fvecs/.ivecs/.bvecs``
  readers (memory-mapped, size-validated) and writers, ann-benchmarks HDF5, ``.npz``.
* Ground truth (:func:`exact_knn`): FAISS flat search, blockwise, in the dataset's metric.
* Users' label files (:mod:`~ruvector_hnsw.datasets.labels`): :func:`read_labels` (``.npy`` or
  one label per line, strings allowed), :func:`encode_labels`, :func:`read_positives`.
* Protocols (:mod:`~ruvector_hnsw.datasets.protocols`): :func:`class_split` makes the
  unseen-class protocol (evaluation on classes whose labels training never sees).
"""

from ruvector_hnsw.datasets.base import METRICS, Dataset, make_split
from ruvector_hnsw.datasets.digits import load_digits_dataset
from ruvector_hnsw.datasets.files import load_file, save_npz
from ruvector_hnsw.datasets.formats import (
    read_ann_hdf5,
    read_bvecs,
    read_fvecs,
    read_ivecs,
    read_npz,
    read_vecs,
    write_ann_hdf5,
    write_bvecs,
    write_fvecs,
    write_ivecs,
    write_npz,
    write_vecs,
)
from ruvector_hnsw.datasets.groundtruth import exact_knn, normalize_rows
from ruvector_hnsw.datasets.labels import encode_labels, read_labels, read_positives
from ruvector_hnsw.datasets.protocols import PROTOCOLS, apply_protocol, class_split
from ruvector_hnsw.datasets.registry import available, load, register
from ruvector_hnsw.datasets.synthetic import SCENARIOS, SIZES, make_clusters, make_hierarchical, make_manifolds

__all__ = [
    "METRICS",
    "PROTOCOLS",
    "SCENARIOS",
    "SIZES",
    "Dataset",
    "apply_protocol",
    "available",
    "class_split",
    "encode_labels",
    "exact_knn",
    "load",
    "load_digits_dataset",
    "load_file",
    "make_clusters",
    "make_hierarchical",
    "make_manifolds",
    "make_split",
    "normalize_rows",
    "read_ann_hdf5",
    "read_bvecs",
    "read_fvecs",
    "read_ivecs",
    "read_labels",
    "read_npz",
    "read_positives",
    "read_vecs",
    "register",
    "save_npz",
    "write_ann_hdf5",
    "write_bvecs",
    "write_fvecs",
    "write_ivecs",
    "write_npz",
    "write_vecs",
]
