"""Name -> dataset factory registry and the one entry point :func:`load`."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ruvector_hnsw.datasets.base import Dataset
from ruvector_hnsw.datasets.digits import load_digits_dataset
from ruvector_hnsw.datasets.files import FILE_SUFFIXES, load_file
from ruvector_hnsw.datasets.synthetic import make_clusters, make_hierarchical, make_manifolds
from ruvector_hnsw.errors import ConfigError

__all__ = ["available", "load", "register"]

_REGISTRY: dict[str, Callable[..., Dataset]] = {
    "clusters": make_clusters,
    "hierarchical": make_hierarchical,
    "manifolds": make_manifolds,
    "digits": load_digits_dataset,
}


def register(name: str, factory: Callable[..., Dataset], *, overwrite: bool = False) -> None:
    """Make ``load(name, **kw)`` call ``factory(**kw)``.

    Raises
    ------
    ConfigError
        If ``name`` is taken (and ``overwrite`` is false), contains ``:`` or a path separator.
    """
    if not name or ":" in name or "/" in name or os.sep in name:
        raise ConfigError(f"invalid dataset name {name!r}")
    if name in _REGISTRY and not overwrite:
        raise ConfigError(f"dataset name {name!r} is already registered")
    _REGISTRY[name] = factory


def available() -> list[str]:
    """Registered dataset names, sorted."""
    return sorted(_REGISTRY)


def _call(name: str, factory: Callable[..., Dataset], kw: dict[str, Any]) -> Dataset:
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # pragma: no cover - builtins without signature
        return factory(**kw)
    params = sig.parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kw) - set(params))
        if unknown:
            accepted = ", ".join(p for p in params if p != "self")
            raise ConfigError(f"dataset {name!r} does not accept {unknown}; accepted: {accepted}")
    return factory(**kw)


def load(name_or_path: str | os.PathLike[str], **kw: Any) -> Dataset:
    """Load a built-in scenario by name or a dataset file by path.

    Parameters
    ----------
    name_or_path : str or PathLike
        ``"clusters"``, ``"hierarchical"``, ``"manifolds"``, ``"digits"`` (or any name added
        with :func:`register`), optionally with a size suffix (``"clusters:tiny"`` equals
        ``load("clusters", size="tiny")``); or a path to ``.fvecs``/``.bvecs``/``.npy``/
        ``.npz``/``.hdf5`` (see :func:`ruvector_hnsw.datasets.files.load_file`).
    **kw
        Passed to the factory: for the scenarios ``size`` ("tiny" | "small" | "default" |
        "large"), ``seed``, ``n_queries``, ``n_train_queries``, ``gt_k``, ``metric`` and the
        scenario's own knobs; for files ``metric``, ``n_queries``, ``n_train_queries``,
        ``max_base``, ``gt_k``, ``seed``, companion paths.

    Returns
    -------
    Dataset

    Raises
    ------
    ConfigError
        Unknown name (the message lists the known ones) or a keyword the factory does not take.
    FileNotFoundError
        A path (something with a separator or a known suffix) that does not exist.
    FileFormatError
        A corrupt, truncated or inconsistent file.
    """
    if isinstance(name_or_path, str) and not os.path.exists(name_or_path):
        name, _, size = name_or_path.partition(":")
        if name in _REGISTRY:
            if size:
                if "size" in kw:
                    raise ConfigError(f"size given twice: {name_or_path!r} and size={kw['size']!r}")
                kw = {**kw, "size": size}
            return _call(name, _REGISTRY[name], kw)
    p = Path(name_or_path)
    looks_like_path = p.suffix.lower() in FILE_SUFFIXES or os.sep in str(name_or_path) or "/" in str(name_or_path)
    if not p.exists():
        if looks_like_path:
            raise FileNotFoundError(2, "No such file or directory", str(p))
        raise ConfigError(
            f"unknown dataset {str(name_or_path)!r}: not one of {', '.join(available())} "
            f"and not an existing file ({', '.join(FILE_SUFFIXES)})"
        )
    return _call(str(p), load_file, {**kw, "path": p})
