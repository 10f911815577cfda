"""Ray remote wrappers made on first use (so nothing here imports Ray at import time)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ruvector_hnsw.distributed.cluster import require_ray

_CACHE: dict[tuple[Any, tuple[tuple[str, Any], ...]], Any] = {}


def remote(target: Callable[..., Any] | type, **options: Any) -> Any:
    """``ray.remote(target)`` (with ``options``), made once per target and options.

    ``target`` must be a module-level function or class, so workers import it by name.
    """
    key = (target, tuple(sorted(options.items())))
    wrapped = _CACHE.get(key)
    if wrapped is None:
        ray = require_ray()
        wrapped = ray.remote(**options)(target) if options else ray.remote(target)
        _CACHE[key] = wrapped
    return wrapped


def get(refs: Any) -> Any:
    """``ray.get``."""
    return require_ray().get(refs)


def put(value: Any) -> Any:
    """``ray.put``."""
    return require_ray().put(value)


def kill(actors: list[Any]) -> None:
    """End the given actors (their processes go back to the cluster)."""
    ray = require_ray()
    for actor in actors:
        ray.kill(actor)
