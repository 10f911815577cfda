"""Past one machine: evaluation, encoding, sharded search and data-parallel training on a Ray cluster.

Ray is optional (the ``ray`` extra) and imported only by the calls that need a cluster; without it they
raise :class:`~ruvector_hnsw.errors.MissingDependencyError`. Every distributed result equals the
single-process one (tested against a real local cluster):

- :func:`evaluate` / :func:`search`: queries split into 96-row-aligned (ENCODE_BLOCK) shards on workers that load the
  methods (index, fitted models) once; ids identical, metrics merged exactly from per-query values;
- :func:`encode_rows`: database codes of a fitted searcher in row shards, assembled bit for bit;
- :class:`ShardedIndex`: S hnswlib shards on actors (id ``i`` on shard ``i % S``), fan-out search and
  an exact top-k merge; :class:`ShardedAttentionSearch`: a fitted model re-ranking on every shard;
- :class:`DataParallel`: synchronous data-parallel ``fit`` (workers compute the gradients of disjoint
  slices of every global batch; the driver averages them and steps the optimizer).
"""

from ruvector_hnsw.distributed.cluster import ROW_ALIGN, connect, resolve_workers, shard_bounds, shutdown
from ruvector_hnsw.distributed.data_parallel import DataParallel, fit
from ruvector_hnsw.distributed.encoding import encode_rows
from ruvector_hnsw.distributed.evaluation import evaluate, search
from ruvector_hnsw.distributed.sharded import ShardedAttentionSearch, ShardedIndex, merge_topk

__all__ = ["ROW_ALIGN", "DataParallel", "ShardedAttentionSearch", "ShardedIndex", "connect", "encode_rows", "evaluate",
           "fit", "merge_topk", "resolve_workers", "search", "shard_bounds", "shutdown"]
