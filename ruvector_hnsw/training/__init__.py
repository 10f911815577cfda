"""Contrastive training of the attention rerankers: swappable parts with one calling convention.

- :mod:`~ruvector_hnsw.training.losses`: ``info_nce`` (multi-positive / supervised
  contrastive), ``triplet``, ``local_contrastive``; each returns ``(loss, grad)`` with
  ``grad`` shaped like its differentiable input. ``DotSimilarity`` / ``CosineSimilarity``
  turn embeddings into score matrices and back-propagate.
- :mod:`~ruvector_hnsw.training.miners`: hard / semi-hard / random negatives from HNSW
  candidate lists with false-negative filtering by label.
- :mod:`~ruvector_hnsw.training.optim`: in-place ``SGD`` / ``Adam`` / ``AdamW`` /
  ``NaturalGradient`` (CG over Fisher-vector products, or a diagonal Fisher) over a params
  dict, ``clip_grad_norm``, ``softmax_fisher_vector_product``.
- :mod:`~ruvector_hnsw.training.schedules`: ``WarmupCosineSchedule``, ``StepSchedule``,
  ``ConstantSchedule``, ``Curriculum``.
- :mod:`~ruvector_hnsw.training.objectives`: ``CandidateContrastive``, the composed
  "scores of HNSW candidates -> positives by label -> mined negatives -> loss" step.
- :mod:`~ruvector_hnsw.training.regularizers`: ``laplacian_smoothness`` over CSR graph edges.
- :mod:`~ruvector_hnsw.training.trainer`: ``Trainer`` (epochs, batches, validation, early
  stopping, best/last checkpoints, resume), ``retrieval_validator``.
- :mod:`~ruvector_hnsw.training.checkpoint`: atomic npz + json state trees.
"""

from __future__ import annotations

from ruvector_hnsw.training.checkpoint import load_checkpoint, save_checkpoint
from ruvector_hnsw.training.losses import (
    CosineSimilarity,
    DotSimilarity,
    RowGrad,
    columns_to_mask,
    ids_to_mask,
    info_nce,
    local_contrastive,
    sample_non_neighbors,
    triplet,
)
from ruvector_hnsw.training.miners import (
    HardNegativeMiner,
    MinedNegatives,
    Miner,
    RandomNegativeMiner,
    SemiHardNegativeMiner,
    label_positive_mask,
    lookup_labels,
)
from ruvector_hnsw.training.objectives import CandidateContrastive
from ruvector_hnsw.training.optim import (
    SGD,
    Adam,
    AdamW,
    NaturalGradient,
    Optimizer,
    clip_grad_norm,
    global_grad_norm,
    make_optimizer,
    softmax_fisher_vector_product,
)
from ruvector_hnsw.training.regularizers import LaplacianRegularizer, laplacian_smoothness
from ruvector_hnsw.training.schedules import (
    ConstantSchedule,
    Curriculum,
    CurriculumStage,
    Schedule,
    StepSchedule,
    WarmupCosineSchedule,
)
from ruvector_hnsw.training.trainer import (
    Batch,
    EpochState,
    TrainableModel,
    Trainer,
    TrainingHistory,
    retrieval_validator,
)

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "Batch",
    "CandidateContrastive",
    "ConstantSchedule",
    "CosineSimilarity",
    "Curriculum",
    "CurriculumStage",
    "DotSimilarity",
    "EpochState",
    "HardNegativeMiner",
    "LaplacianRegularizer",
    "MinedNegatives",
    "Miner",
    "NaturalGradient",
    "Optimizer",
    "RandomNegativeMiner",
    "RowGrad",
    "Schedule",
    "SemiHardNegativeMiner",
    "StepSchedule",
    "TrainableModel",
    "Trainer",
    "TrainingHistory",
    "WarmupCosineSchedule",
    "clip_grad_norm",
    "columns_to_mask",
    "global_grad_norm",
    "ids_to_mask",
    "info_nce",
    "label_positive_mask",
    "laplacian_smoothness",
    "load_checkpoint",
    "local_contrastive",
    "lookup_labels",
    "make_optimizer",
    "retrieval_validator",
    "sample_non_neighbors",
    "save_checkpoint",
    "softmax_fisher_vector_product",
    "triplet",
]
