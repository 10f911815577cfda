"""Connecting to a Ray cluster, and the row shards every distributed job splits its work into.

Ray is imported lazily (:func:`require_ray`), so ``import ruvector_hnsw.distributed`` works without it and
only the calls that need a cluster raise :class:`~ruvector_hnsw.errors.MissingDependencyError`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ruvector_hnsw.errors import ConfigError, MissingDependencyError
from ruvector_hnsw.search.state import ENCODE_BLOCK

__all__ = ["ROW_ALIGN", "connect", "require_ray", "resolve_workers", "shard_bounds", "shutdown"]

#: shard bounds are multiples of this many rows: a query's code depends on its position modulo the GEMM
#: block it is encoded in (:data:`~ruvector_hnsw.search.state.ENCODE_BLOCK`), so shards that start on a
#: multiple of it put every row at the position the single-process call gives it
ROW_ALIGN = ENCODE_BLOCK

_INSTALL = "pip install 'ruvector-hnsw[ray]'"


def require_ray() -> Any:
    """The ``ray`` module, or :class:`MissingDependencyError` saying how to install it."""
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - exercised where ray is missing
        raise MissingDependencyError(f"ruvector_hnsw.distributed needs Ray: {_INSTALL}") from exc
    return ray


def connect(address: str | None = None, num_cpus: int | None = None, **init_options: Any) -> dict[str, Any]:
    """Connect to (or start) a Ray cluster; idempotent.

    Parameters
    ----------
    address : {None, "auto", "local"} or str
        ``None``: Ray's default (``RAY_ADDRESS`` when set, else a new local cluster); ``"local"``: always
        start a local cluster on this machine; ``"auto"``: join the cluster started on this machine with
        ``ray start --head``; anything else is a cluster address (``HOST:6379`` or ``ray://HOST:10001``).
    num_cpus : int, optional
        CPUs of a *local* cluster (ignored when joining an existing one).
    **init_options
        Passed to ``ray.init`` (e.g. ``runtime_env``, ``namespace``).

    Returns
    -------
    dict
        The cluster's resources (``ray.cluster_resources()``), e.g. ``{"CPU": 2.0, ...}``.

    Notes
    -----
    When Ray is already initialised (by an earlier call or by the caller) nothing is started and the
    running cluster is used, whatever ``address`` says.
    """
    ray = require_ray()
    if not ray.is_initialized():
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, **init_options}
        if address is None or address == "local":
            if num_cpus is not None:
                if isinstance(num_cpus, bool) or not isinstance(num_cpus, (int, np.integer)) or num_cpus < 1:
                    raise ConfigError(f"num_cpus must be a positive integer, got {num_cpus!r}")
                options["num_cpus"] = int(num_cpus)
            if address == "local":
                options["address"] = "local"
        elif isinstance(address, str) and address:
            options["address"] = address
        else:
            raise ConfigError(f"address must be None, 'auto', 'local' or a cluster address, got {address!r}")
        ray.init(**options)
    return dict(ray.cluster_resources())


def shutdown() -> None:
    """Disconnect from the cluster (and stop it when :func:`connect` started it locally)."""
    ray = require_ray()
    if ray.is_initialized():
        ray.shutdown()


def resolve_workers(workers: int | None) -> int:
    """``workers``, or the cluster's CPU count when None (connecting first with Ray's default)."""
    if workers is None:
        cpus = connect().get("CPU", 1.0)
        return max(1, int(cpus))
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ConfigError(f"workers must be a positive integer, got {workers!r}")
    return int(workers)


def shard_bounds(n: int, parts: int, align: int = ROW_ALIGN) -> list[tuple[int, int]]:
    """Split ``range(n)`` into at most ``parts`` contiguous, non-empty shards starting on multiples of ``align``.

    The blocks of ``align`` rows are dealt out as evenly as possible (the first shards get one more);
    fewer shards come back when there are fewer blocks than ``parts``.

    Examples
    --------
    >>> shard_bounds(300, 2)
    [(0, 192), (192, 300)]
    """
    if n < 0 or parts < 1 or align < 1:
        raise ConfigError(f"shard_bounds needs n >= 0, parts >= 1, align >= 1 (got {n}, {parts}, {align})")
    blocks = -(-n // align)
    parts = min(parts, blocks)
    if parts == 0:
        return []
    per, extra = divmod(blocks, parts)
    out, start = [], 0
    for p in range(parts):
        stop = min(n, start + (per + (1 if p < extra else 0)) * align)
        out.append((start, stop))
        start = stop
    return out
