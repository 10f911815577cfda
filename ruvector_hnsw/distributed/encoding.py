"""Database codes of a fitted :class:`~ruvector_hnsw.search.AttentionSearch`, computed on Ray workers.

Every worker receives the model's parameters and the index once (through the object store), builds the
table and row contexts of the index's graph, and encodes one contiguous shard of the rows; the driver
concatenates the shards. A row's code does not depend on which rows are encoded with it
(:meth:`DatabaseState.encode_rows` puts row ``r`` at position ``r % 64`` of a fixed-size block), so the
assembled codes equal the single-process ones exactly, for any number of workers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ruvector_hnsw._validation import as_ids
from ruvector_hnsw.distributed import _remote
from ruvector_hnsw.distributed.cluster import resolve_workers, shard_bounds
from ruvector_hnsw.errors import InvalidInputError, NotFittedError
from ruvector_hnsw.index import HNSWIndex
from ruvector_hnsw.search import AttentionSearch, DatabaseState, SearchModel
from ruvector_hnsw.threads import thread_limits

__all__ = ["encode_rows", "encoder_payload"]


def encoder_payload(searcher: AttentionSearch) -> dict[str, Any]:
    """What a worker needs to encode rows: the model's state (no cached codes), the index, the threads."""
    if not isinstance(searcher, AttentionSearch):
        raise InvalidInputError(f"searcher must be an AttentionSearch, got {type(searcher).__name__}")
    if not searcher.fitted:
        raise NotFittedError("encode_rows needs a fitted AttentionSearch (fit or load it first)")
    return {"model": searcher.model.state(), "index": searcher.index, "num_threads": 1}


def _state_of(payload: dict[str, Any]) -> tuple[SearchModel, DatabaseState]:
    model = SearchModel.from_state(payload["model"])
    index: HNSWIndex = payload["index"]
    db = DatabaseState.build(model, index.graph(), index.space)
    db.table_state = model.encoder.prepare_table(db.table.view)  # as DatabaseState.refresh_codes does
    return model, db


def encode_shard(payload: dict[str, Any], rows: np.ndarray) -> np.ndarray:
    """Codes of ``rows`` (table rows of the index's graph) from a payload of :func:`encoder_payload`."""
    with thread_limits(int(payload["num_threads"])):
        model, db = _state_of(payload)
        return db.encode_rows(model.encoder, np.asarray(rows, dtype=np.int64))


def encode_rows(searcher: AttentionSearch, rows: Any = None, *, workers: int | None = None,
                backend: str = "ray") -> np.ndarray:
    """Database codes of ``rows`` computed in row shards on ``workers`` Ray workers.

    Parameters
    ----------
    searcher : AttentionSearch
        A fitted searcher; its model and index are shipped to every worker once.
    rows : array_like of int, optional
        Table rows of the index's current graph (``0 .. len(graph) - 1``; default: all of them).
    workers : int, optional
        Shards (one task each); default the cluster's CPU count.
    backend : {"ray", "local"}
        ``"local"`` runs the same shards one after the other in this process (no Ray needed).

    Returns
    -------
    numpy.ndarray, (len(rows), latent_dim) float32
        Equal, bit for bit, to ``searcher.database_state().encode_rows(searcher.model.encoder, rows)``
        (and for all rows to the cached ``database_state().codes.z``).
    """
    payload = encoder_payload(searcher)
    n = len(searcher.index.graph())
    if rows is None:
        sel = np.arange(n, dtype=np.int64)
    else:
        sel = as_ids(rows, "rows", unique=False)
        if sel.size and int(sel.max()) >= n:
            raise InvalidInputError(f"rows must be table rows below {n}, got {int(sel.max())}")
    if backend not in ("ray", "local"):
        raise InvalidInputError(f"backend must be 'ray' or 'local', got {backend!r}")
    parts = resolve_workers(workers) if backend == "ray" else (workers or 1)
    bounds = shard_bounds(sel.shape[0], parts)
    if not bounds:
        return np.zeros((0, searcher.latent_dim), dtype=np.float32)
    if backend == "local":
        pieces = [encode_shard(payload, sel[a:b]) for a, b in bounds]
    else:
        ref = _remote.put(payload)
        task = _remote.remote(encode_shard)
        pieces = _remote.get([task.remote(ref, sel[a:b]) for a, b in bounds])
    return np.ascontiguousarray(np.concatenate(pieces, axis=0), dtype=np.float32)
