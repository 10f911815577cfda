"""Built-in search methods for evaluation runs, and the method registry.

A *method* is any callable ``search(queries, k) -> (ids, dists)`` with ``ids`` (nq, k) int64
(``-1`` padded) and ``dists`` (nq, k) float32 in hnswlib's conventions (squared L2,
``1 - dot``, ``1 - cos``).  The factories here return :class:`SearchMethod` objects, which are
such callables carrying a name, the thread count they use and their parameters (these land
in the evaluation report).

Built-in methods
----------------
``exact``
    :func:`make_exact`: FAISS flat (brute-force) search in the dataset metric.
``hnsw``
    :func:`make_hnsw`: :class:`ruvector_hnsw.HNSWIndex` search at a given ``ef``.
``alpha_qe``
    :func:`make_alpha_qe`: alpha query expansion over the HNSW top-n, then a second search.
``dba``
    :func:`make_dba`: database-side augmentation over the HNSW layer-0 graph, offline, then
    search of a new index built on the augmented vectors.

Label convention: base row ``i`` of a dataset has label ``i`` in the index (the default of
``HNSWIndex.add``), so returned ids are base row indices, which the metrics rely on.

Weighted averaging ("expansion") used by alpha-QE and DBA
--------------------------------------------------------
For a vector ``v`` and its top-n neighbours ``x_1..x_n`` with cosine similarities
``s_j = cos(v, x_j)`` and weights ``w_j = max(s_j, 0) ** alpha`` (``v`` itself has weight 1):

- ``cosine``: ``v' = normalize(v/|v| + sum_j w_j x_j/|x_j|)`` -- the classic alpha-QE of
  Radenovic et al. (2018) on unit vectors;
- ``ip``: the same unit direction, rescaled to ``|v|`` (inner-product ranking is invariant to
  the query scale, and keeping ``|v|`` keeps distances comparable; for DBA it keeps each
  database item's norm, which MIPS depends on);
- ``l2``: ``v' = (v + sum_j w_j x_j) / (1 + sum_j w_j)`` -- a weighted mean, which stays in the
  data's scale and location (normalising to unit length would move an L2 query off the data).

Registry
--------
:data:`METHODS` maps a name to a factory ``factory(ctx: BuildContext, **options) ->
SearchMethod``.  :func:`build_methods` resolves names such as
``"exact,hnsw,alpha_qe,dba"`` or ``"hnsw:ef=32"`` (options after colons), sharing one HNSW
index among all methods.  Later subsystems add their methods with :func:`register_method`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from ruvector_hnsw.errors import (
    ConfigError,
    DimensionMismatchError,
    EmptyInputError,
    InvalidDTypeError,
    NonFiniteError,
    ShapeMismatchError,
)
from ruvector_hnsw.eval.metrics import METRICS_ALIASES
from ruvector_hnsw.search.expansion import expand_vectors
from ruvector_hnsw.threads import available_threads, thread_limits

__all__ = [
    "DEFAULT_ALPHA_QE",
    "DEFAULT_DBA",
    "METHODS",
    "BuildContext",
    "SearchMethod",
    "build_hnsw_index",
    "build_methods",
    "expand_vectors",
    "make_alpha_qe",
    "make_dba",
    "make_exact",
    "make_hnsw",
    "parse_method_spec",
    "register_method",
]

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
SearchResult = tuple[I64, F32]

#: Defaults of alpha query expansion (chosen on the synthetic scenarios, see the module notes
#: in the evaluation report of issue 3).
DEFAULT_ALPHA_QE: dict[str, Any] = {"n": 10, "alpha": 3.0}
#: Defaults of database-side augmentation.
DEFAULT_DBA: dict[str, Any] = {"n": 10, "alpha": 3.0, "query_expansion": False}


# --------------------------------------------------------------------------------------------
# the method object
# --------------------------------------------------------------------------------------------


@dataclass
class SearchMethod:
    """A named search callable: ``method(queries, k) -> (ids, dists)``.

    Attributes
    ----------
    name : str
        Name used in reports.
    fn : callable
        ``fn(queries (nq, d) float32 C-contiguous, k) -> (ids (nq, k) int64, dists (nq, k) float32)``.
    threads : int
        Threads the method searches with (reported next to QPS).
    params : dict
        Parameters worth reporting (ef, n, alpha, ...).
    """

    name: str
    fn: Callable[[F32, int], SearchResult]
    threads: int = 1
    params: dict[str, Any] = field(default_factory=dict)

    def __call__(self, queries: Any, k: int) -> SearchResult:
        return self.fn(queries, k)


def _metric_of(obj: Any) -> str:
    metric = getattr(obj, "metric", None) or getattr(obj, "space", None)
    key = METRICS_ALIASES.get(str(metric).lower()) if metric is not None else None
    if key is None:
        raise ConfigError(f"unknown metric {metric!r}; expected 'l2', 'ip' or 'cosine'")
    return key


def _as_f32(x: Any, name: str, dim: int | None = None) -> F32:
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiub":
        raise InvalidDTypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ShapeMismatchError(f"{name} must be 2-D (n, dim), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise EmptyInputError(f"{name} is empty")
    if dim is not None and arr.shape[1] != dim:
        raise DimensionMismatchError(f"{name} have dim {arr.shape[1]}, expected {dim}")
    out = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(out)):
        raise NonFiniteError(f"{name} hold NaN or infinity")
    return out


def _threads(num_threads: int | None) -> int:
    if num_threads is None or num_threads <= 0:
        return available_threads()
    return int(num_threads)


def _pad(ids: I64, dists: F32, k: int) -> SearchResult:
    """Pad/trim to exactly k columns (-1 / +inf padding)."""
    if ids.shape[1] == k:
        return ids, dists
    if ids.shape[1] > k:
        return np.ascontiguousarray(ids[:, :k]), np.ascontiguousarray(dists[:, :k])
    extra = k - ids.shape[1]
    ids = np.concatenate([ids, np.full((ids.shape[0], extra), -1, dtype=np.int64)], axis=1)
    dists = np.concatenate([dists, np.full((dists.shape[0], extra), np.inf, dtype=np.float32)], axis=1)
    return ids, dists


# --------------------------------------------------------------------------------------------
# exact
# --------------------------------------------------------------------------------------------


def make_exact(dataset: Any, *, num_threads: int | None = None, name: str = "exact") -> SearchMethod:
    """Brute-force search with a FAISS flat index in the dataset metric.

    Parameters
    ----------
    dataset : object
        Anything with ``base`` (N, d) and ``metric`` ("l2" | "ip" | "cosine").
    num_threads : int, optional
        FAISS OpenMP threads during search (None/<=0: all available CPUs).  The global FAISS
        setting is restored after each call.
    name : str

    Returns
    -------
    SearchMethod
        Distances in hnswlib conventions: squared L2, ``1 - dot``, ``1 - cos``.
    """
    import faiss

    metric = _metric_of(dataset)
    base = _as_f32(dataset.base, "base vectors")
    dim = base.shape[1]
    index: Any
    if metric == "l2":
        index = faiss.IndexFlatL2(dim)
        index.add(base)
    else:
        index = faiss.IndexFlatIP(dim)
        if metric == "cosine":
            base = base.copy()
            faiss.normalize_L2(base)
        index.add(base)
    threads = _threads(num_threads)

    def search(queries: Any, k: int) -> SearchResult:
        q = _as_f32(queries, "queries", dim)
        if metric == "cosine":
            q = q.copy()
            faiss.normalize_L2(q)
        kk = min(int(k), index.ntotal)
        with thread_limits(threads):
            d, i = index.search(q, kk)
        ids = i.astype(np.int64, copy=False)
        dist = d.astype(np.float32, copy=False)
        if metric != "l2":
            dist = (1.0 - dist).astype(np.float32)
        dist = np.where(ids >= 0, dist, np.float32(np.inf)).astype(np.float32)
        return _pad(ids, dist, int(k))

    return SearchMethod(name=name, fn=search, threads=threads, params={"index": "faiss.IndexFlat"})


# --------------------------------------------------------------------------------------------
# hnsw
# --------------------------------------------------------------------------------------------


def build_hnsw_index(
    dataset: Any,
    *,
    M: int = 16,
    ef_construction: int = 200,
    seed: int = 100,
    num_threads: int = -1,
    ef: int | None = None,
) -> Any:
    """Build a :class:`ruvector_hnsw.HNSWIndex` over ``dataset.base`` (labels = row indices)."""
    from ruvector_hnsw.index import HNSWIndex

    base = _as_f32(dataset.base, "base vectors")
    index = HNSWIndex(
        base.shape[1],
        space=_metric_of(dataset),
        M=M,
        ef_construction=ef_construction,
        seed=seed,
        num_threads=num_threads,
    )
    index.add(base)
    if ef is not None:
        index.ef = int(ef)
    return index


def _index_threads(index: Any) -> int:
    nt = getattr(index, "num_threads", None)
    return _threads(int(nt) if isinstance(nt, (int, np.integer)) else None)


def make_hnsw(
    index_or_dataset: Any, ef: int | None = 128, *, name: str = "hnsw", **build: Any
) -> SearchMethod:
    """HNSW search at a fixed ``ef``.

    Parameters
    ----------
    index_or_dataset : HNSWIndex or dataset
        An index (labels must be base row indices) or a dataset, from which an index is
        built with :func:`build_hnsw_index` (``build`` keywords forwarded: M,
        ef_construction, seed, num_threads).
    ef : int, optional
        Search breadth (hnswlib uses ``max(ef, k)``); None keeps the index's ``ef``.

    Returns
    -------
    SearchMethod
    """
    if hasattr(index_or_dataset, "base"):
        index = build_hnsw_index(index_or_dataset, **build)
    elif build:
        raise ConfigError(f"build options {sorted(build)} only apply when a dataset is given")
    else:
        index = index_or_dataset
    ef_used = int(ef) if ef is not None else int(index.ef)

    def search(queries: Any, k: int) -> SearchResult:
        ids, dists = index.search(queries, k=int(k), ef=ef_used)
        return np.asarray(ids, dtype=np.int64), np.asarray(dists, dtype=np.float32)

    return SearchMethod(name=name, fn=search, threads=_index_threads(index), params={"ef": ef_used})


# --------------------------------------------------------------------------------------------
# alpha query expansion and DBA: the search package's one implementation, as methods
# --------------------------------------------------------------------------------------------


def _distances_of(searcher: Any, dim: int) -> Callable[[Any, int], SearchResult]:
    def search(queries: Any, k: int) -> SearchResult:
        q = _as_f32(queries, "queries", dim)
        ids, scores = searcher.search(q, int(k))
        return np.asarray(ids, dtype=np.int64), np.where(ids >= 0, -scores, np.inf).astype(np.float32)

    return search


def make_alpha_qe(
    index: Any,
    n: int = DEFAULT_ALPHA_QE["n"],
    alpha: float = DEFAULT_ALPHA_QE["alpha"],
    *,
    ef: int | None = None,
    vectors: Any | None = None,
    name: str = "alpha_qe",
) -> SearchMethod:
    """Alpha query expansion (alpha-QE) over HNSW: :class:`~ruvector_hnsw.search.AlphaQESearch`.

    Each query searches the index for its top ``n``; the query is replaced by
    ``q' = normalize(q + sum_j max(s_j, 0) ** alpha * x_j)`` with ``s_j = cos(q, x_j)``
    (normalisation per metric: see :func:`expand_vectors`), and ``q'`` is searched again for
    the final ``k`` results.  Returned distances are those of the second search, i.e. to
    ``q'``, not to ``q``.

    Parameters
    ----------
    index : HNSWIndex
        Labels must be base row indices when ``vectors`` is given.
    n : int
        Neighbours averaged into the query.
    alpha : float
        Similarity exponent; larger values trust only the closest neighbours.
    ef : int, optional
        ``ef`` of both searches (None: the index's current ``ef``).
    vectors : array_like (N, d), optional
        Base vectors indexed by label.  Default: the index's stored vectors.
    name : str

    Returns
    -------
    SearchMethod
    """
    from ruvector_hnsw.search import AlphaQESearch

    ef_used = int(ef) if ef is not None else int(index.ef)
    searcher = AlphaQESearch(index, n=n, alpha=alpha, candidates=ef_used, vectors=vectors)
    return SearchMethod(name=name, fn=_distances_of(searcher, int(index.dim)), threads=_index_threads(index),
                        params={"ef": ef_used, "n": searcher.n, "alpha": searcher.alpha})


def make_dba(
    index: Any,
    n: int = DEFAULT_DBA["n"],
    alpha: float = DEFAULT_DBA["alpha"],
    *,
    ef: int | None = None,
    query_expansion: bool = DEFAULT_DBA["query_expansion"],
    qe_n: int | None = None,
    qe_alpha: float | None = None,
    block: int = 8192,
    name: str = "dba",
    **build: Any,
) -> SearchMethod:
    """Database-side augmentation over the HNSW layer-0 graph: :class:`~ruvector_hnsw.search.DBASearch`.

    Offline, every database vector is replaced by the weighted average of itself and its ``n``
    nearest live layer-0 graph neighbours (alpha-QE weights, per-metric normalisation of
    :func:`expand_vectors`); an HNSW index with the same labels and build parameters over the
    augmented vectors is searched directly, or after alpha-QE (``query_expansion=True``).

    Returns
    -------
    SearchMethod
        Distances are in the augmented space; the augmented index is the attribute
        ``augmented_index`` of the returned object.
    """
    from ruvector_hnsw.search import DBASearch

    ef_used = int(ef) if ef is not None else int(index.ef)
    searcher = DBASearch(index, n=n, alpha=alpha, query_expansion=query_expansion, qe_n=qe_n, qe_alpha=qe_alpha,
                         candidates=ef_used, block=block, **build)
    new = searcher.augmented_index()
    info: dict[str, Any] = {"ef": ef_used, "n": searcher.n, "alpha": searcher.alpha,
                            "query_expansion": searcher.query_expansion,
                            "offline_seconds": round(searcher.offline_seconds, 4)}
    if searcher.query_expansion:
        info.update(qe_n=searcher.qe_n, qe_alpha=searcher.qe_alpha)
    method = SearchMethod(name=name, fn=_distances_of(searcher, int(index.dim)), threads=_index_threads(new),
                          params=info)
    method.augmented_index = new  # type: ignore[attr-defined]
    return method


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------


class BuildContext:
    """What a method factory may use: the dataset, a shared HNSW index, and run settings.

    The HNSW index is built lazily on first access of :attr:`index` (once, shared by all
    methods of a :func:`build_methods` call) unless one was given.
    """

    def __init__(
        self,
        dataset: Any,
        index: Any | None = None,
        *,
        ef: int = 128,
        k: int = 10,
        seed: int = 0,
        num_threads: int = -1,
        M: int = 16,
        ef_construction: int = 200,
    ) -> None:
        self.dataset = dataset
        self._index = index
        self.ef = int(ef)
        self.k = int(k)
        self.seed = int(seed)
        self.num_threads = int(num_threads)
        self.M = int(M)
        self.ef_construction = int(ef_construction)
        self.cache: dict[str, Any] = {}  # for factories sharing expensive state (e.g. trained models)

    @property
    def index(self) -> Any:
        if self._index is None:
            self._index = build_hnsw_index(
                self.dataset,
                M=self.M,
                ef_construction=self.ef_construction,
                seed=self.seed,
                num_threads=self.num_threads,
                ef=self.ef,
            )
        return self._index

    @property
    def has_index(self) -> bool:
        return self._index is not None


MethodFactory = Callable[..., SearchMethod]

#: name -> factory(ctx: BuildContext, **options) -> SearchMethod
METHODS: dict[str, MethodFactory] = {}


def register_method(name: str, factory: MethodFactory, *, overwrite: bool = False) -> None:
    """Register a method factory under ``name``.

    Parameters
    ----------
    name : str
        Lower-case identifier (letters, digits, ``_``), used in ``--methods``.
    factory : callable
        ``factory(ctx: BuildContext, **options) -> SearchMethod``.
    overwrite : bool
        Replace an existing registration instead of raising :class:`ConfigError`.
    """
    if not name or not name.replace("_", "").isalnum() or name != name.lower():
        raise ConfigError(f"method name must be lower-case letters, digits or '_', got {name!r}")
    if name in METHODS and not overwrite:
        raise ConfigError(f"method {name!r} is already registered")
    METHODS[name] = factory


def _exact_factory(ctx: BuildContext, **opt: Any) -> SearchMethod:
    return make_exact(ctx.dataset, num_threads=opt.pop("num_threads", ctx.num_threads), **opt)


def _hnsw_factory(ctx: BuildContext, **opt: Any) -> SearchMethod:
    return make_hnsw(ctx.index, ef=opt.pop("ef", ctx.ef), **opt)


def _hnsw_unlabelled_factory(ctx: BuildContext, **opt: Any) -> SearchMethod:
    """HNSW restricted to the items whose label training does not see (``train_base_labels < 0``).

    The honest bar of the unseen-class protocol: it hides the labels of the unseen classes' items, so
    "search only the unlabelled items" is a training-free method that uses exactly that information.
    """
    hidden = ctx.dataset.train_base_labels
    if hidden is None:
        raise ConfigError("hnsw_unlabelled: the dataset hides no labels (use --protocol unseen)")
    mask = np.asarray(hidden) < 0
    if not mask.any():
        raise ConfigError("hnsw_unlabelled: every item's label is known to training")
    index = ctx.index
    ef_used = int(opt.pop("ef", ctx.ef))
    if opt:
        raise ConfigError(f"hnsw_unlabelled: unknown options {sorted(opt)}")

    def search(queries: Any, k: int) -> SearchResult:
        ids, dists = index.search(queries, k=int(k), ef=max(ef_used, int(k)), filter=mask)
        return np.asarray(ids, dtype=np.int64), np.asarray(dists, dtype=np.float32)

    return SearchMethod(name="hnsw_unlabelled", fn=search, threads=1,
                        params={"ef": ef_used, "n_unlabelled": int(mask.sum())})


def _alpha_qe_factory(ctx: BuildContext, **opt: Any) -> SearchMethod:
    opt.setdefault("ef", ctx.ef)
    opt.setdefault("vectors", ctx.dataset.base)  # labels are base rows in a BuildContext index
    return make_alpha_qe(ctx.index, **opt)


def _dba_factory(ctx: BuildContext, **opt: Any) -> SearchMethod:
    opt.setdefault("ef", ctx.ef)
    return make_dba(ctx.index, **opt)


register_method("exact", _exact_factory)
register_method("hnsw", _hnsw_factory)
register_method("hnsw_unlabelled", _hnsw_unlabelled_factory)
register_method("alpha_qe", _alpha_qe_factory)
register_method("dba", _dba_factory)


def _parse_value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def parse_method_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Split ``"name:key=value:key=value"`` into the name and an options dict.

    Values are parsed as bool/None/int/float where possible, else kept as strings.

    Examples
    --------
    >>> parse_method_spec("alpha_qe:n=5:alpha=2.5")
    ('alpha_qe', {'n': 5, 'alpha': 2.5})
    """
    parts = [p.strip() for p in str(spec).strip().split(":")]
    name = parts[0].lower()
    opts: dict[str, Any] = {}
    for p in parts[1:]:
        if "=" not in p:
            raise ConfigError(f"method option {p!r} in {spec!r} must look like key=value")
        key, val = p.split("=", 1)
        key = key.strip()
        if not key.isidentifier():
            raise ConfigError(f"bad option name {key!r} in method spec {spec!r}")
        opts[key] = _parse_value(val.strip())
    return name, opts


def build_methods(
    names: str | Iterable[str],
    dataset: Any,
    index: Any | None = None,
    ef: int = 128,
    k: int = 10,
    seed: int = 0,
    *,
    num_threads: int = -1,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    M: int = 16,
    ef_construction: int = 200,
) -> dict[str, SearchMethod]:
    """Resolve method names to search callables, sharing one HNSW index.

    Parameters
    ----------
    names : str or iterable of str
        ``"exact,hnsw,alpha_qe,dba"`` or a list; each entry may carry options after colons
        (``"hnsw:ef=32"``, ``"alpha_qe:n=5:alpha=2"``).  Entries with options are reported
        under their full spec so several settings of one method can be compared.
    dataset : object
        Dataset (``base``, ``queries``, ``metric``, ...).
    index : HNSWIndex, optional
        Index over ``dataset.base`` (labels = row indices); built with ``M``,
        ``ef_construction``, ``seed`` and ``num_threads`` when a method needs one.
    ef, k, seed, num_threads : int
        Shared settings handed to the factories through :class:`BuildContext`.
    options : mapping, optional
        Extra options per method name, merged under the spec's own options.

    Returns
    -------
    dict
        Report name -> :class:`SearchMethod`, in the order given.

    Raises
    ------
    ConfigError
        Unknown method name (the message lists the known ones), duplicate entry, or bad option.
    """
    if isinstance(names, str):
        specs = [s for s in (p.strip() for p in names.split(",")) if s]
    else:
        specs = [str(s).strip() for s in names if str(s).strip()]
    if not specs:
        raise ConfigError("no methods given")
    parsed = [(spec, *parse_method_spec(spec)) for spec in specs]
    unknown = [name for _, name, _ in parsed if name not in METHODS]
    if unknown:
        raise ConfigError(
            f"unknown method(s) {', '.join(map(repr, unknown))}; known: {', '.join(sorted(METHODS))}"
        )
    ctx = BuildContext(
        dataset, index, ef=ef, k=k, seed=seed, num_threads=num_threads, M=M, ef_construction=ef_construction
    )
    out: dict[str, SearchMethod] = {}
    for spec, name, opts in parsed:
        report_name = name if not opts else spec
        if report_name in out:
            raise ConfigError(f"method {report_name!r} given twice")
        merged = dict((options or {}).get(name, {}))
        merged.update(opts)
        try:
            method = METHODS[name](ctx, **merged)
        except TypeError as exc:
            raise ConfigError(f"bad options for method {name!r}: {exc}") from exc
        method.name = report_name
        out[report_name] = method
    return out
