"""Where the benchmark scripts find the real embedding sets: ``shared/datasets/`` beside the checkout.

Not a benchmark itself (``ruvector-hnsw bench`` runs ``bench_*.py`` only); the scripts import it from
their own directory.
"""

from __future__ import annotations

from pathlib import Path


def shared_dataset(name: str = "apt_minilm.npz") -> Path | None:
    """``<parent>/shared/datasets/<name>`` for the nearest parent of the checkout that has it, or None."""
    root = Path(__file__).resolve().parents[1]
    for parent in root.parents:
        path = parent / "shared" / "datasets" / name
        if path.exists():
            return path
    return None
