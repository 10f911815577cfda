"""Calibrate the difficulty of the synthetic scenarios.

For each scenario this prints, on the evaluation queries, mAP@R (Musgrave et al. 2020) of:

* ``exact``      -- exact search in the dataset metric (FAISS flat);
* ``alpha_qe``   -- alpha query expansion: ``q' = normalize(q + sum_{j<=n} max(s_j,0)^alpha x_j)`` over
  the exact top-n (cosine similarities ``s_j``), then exact re-search;
* ``dba+aqe``    -- database-side augmentation over each item's exact top-n (same weights), then alpha-QE;
* ``diffusion``  -- a training-free graph method: personalised PageRank on the base's symmetric exact
  k-NN graph (edge weights ``max(s,0)^alpha``), seeded by the query's alpha-weighted top-n (needs
  scipy); shows how much neighbourhood *structure* (beyond one expansion step) can recover;
* ``lin+aqe``    -- a *learned* linear metric (LDA whitening fitted on the labelled base + training
  queries), then alpha-QE in the projected space: a rough lower bound of what a trained
  reranker can reach, showing the headroom learned methods have over the training-free ones.

Self-contained on purpose (numpy + FAISS only), so it measures the data rather than the package's
eval code. Usage::

    python benchmarks/calibrate_datasets.py                      # all scenarios, default size, seed 0
    python benchmarks/calibrate_datasets.py --scenario clusters --size small --seeds 0 1 2
    python benchmarks/calibrate_datasets.py --scenario clusters --set noise=1.2 --set nuisance=2
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import faiss
import numpy as np

from ruvector_hnsw.datasets import load


def _norm(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)).astype(np.float32)


def search(base: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosine search (inputs normalised here); returns (ids, similarities)."""
    index = faiss.IndexFlatIP(base.shape[1])
    index.add(_norm(base))
    sims, ids = index.search(_norm(queries), k)
    return ids, sims


def map_at_r(ids: np.ndarray, base_labels: np.ndarray, query_labels: np.ndarray) -> float:
    """Mean AP@R; ``ids`` must hold at least max R columns."""
    r_counts = np.array([(base_labels == y).sum() for y in query_labels])
    rel = base_labels[ids] == query_labels[:, None]
    ranks = np.arange(1, ids.shape[1] + 1)
    prec = np.cumsum(rel, axis=1) / ranks
    mask = ranks[None, :] <= r_counts[:, None]
    ap = (prec * rel * mask).sum(axis=1) / np.maximum(r_counts, 1)
    return float(ap.mean())


def alpha_expand(x: np.ndarray, base: np.ndarray, ids: np.ndarray, sims: np.ndarray, alpha: float) -> np.ndarray:
    w = np.maximum(sims, 0.0) ** alpha
    return _norm(_norm(x) + np.einsum("qn,qnd->qd", w, _norm(base)[ids]))


def diffusion_rank(
    xb: np.ndarray, xq: np.ndarray, k_graph: int, n: int, alpha: float, r_max: int, iters: int = 20
) -> np.ndarray:
    """Personalised PageRank (damping 0.85) on the symmetric k-NN graph of ``xb``; top ``r_max`` ids."""
    import scipy.sparse as sp

    nb = xb.shape[0]
    gid, gsim = search(xb, xb, k_graph + 1)
    rows = np.repeat(np.arange(nb), k_graph)
    w = sp.csr_matrix(
        (np.maximum(gsim[:, 1:], 0).ravel() ** alpha, (rows, gid[:, 1:].ravel())), shape=(nb, nb)
    )
    w = w.maximum(w.T)
    deg = np.asarray(w.sum(axis=1)).ravel()
    dinv = sp.diags(1.0 / np.sqrt(np.maximum(deg, 1e-12)))
    s = (dinv @ w @ dinv).tocsr().astype(np.float32)
    qid, qsim = search(xb, xq, n)
    y0 = np.zeros((nb, xq.shape[0]), dtype=np.float32)
    y0[qid.T, np.arange(xq.shape[0])[None, :]] = np.maximum(qsim.T, 0) ** alpha
    f = y0.copy()
    for _ in range(iters):
        f = 0.85 * (s @ f) + y0
    return np.argsort(-f, axis=0)[:r_max].T


def lda_projection(x: np.ndarray, y: np.ndarray, reg: float = 1e-3) -> np.ndarray:
    """Whitening of the within-class scatter followed by the between-class directions."""
    d = x.shape[1]
    mu = x.mean(axis=0)
    sw = np.zeros((d, d))
    sb = np.zeros((d, d))
    for c in np.unique(y):
        xc = x[y == c]
        mc = xc.mean(axis=0)
        sw += (xc - mc).T @ (xc - mc)
        sb += len(xc) * np.outer(mc - mu, mc - mu)
    sw /= len(x)
    sb /= len(x)
    evals, evecs = np.linalg.eigh(sw + reg * np.trace(sw) / d * np.eye(d))
    wh = evecs / np.sqrt(evals)
    _evals_b, evecs_b = np.linalg.eigh(wh.T @ sb @ wh)
    return (wh @ evecs_b[:, ::-1]).astype(np.float32)


def calibrate(
    name: str, size: str, seed: int, overrides: dict[str, Any], n: int, alpha: float, diffusion: bool = True
) -> dict[str, Any]:
    t0 = time.perf_counter()
    ds = load(name, size=size, seed=seed, gt_k=0, **overrides)
    t_gen = time.perf_counter() - t0
    assert ds.base_labels is not None and ds.query_labels is not None
    xb, xq, yb, yq = ds.base, ds.queries, ds.base_labels, ds.query_labels
    r_max = int(ds.relevant_counts().max())
    out: dict[str, Any] = {"scenario": name, "size": size, "seed": seed, **ds.describe()["params"]}
    out["gen_s"] = round(t_gen, 2)
    out["mean_R"] = float(ds.relevant_counts().mean())

    ids, sims = search(xb, xq, r_max)
    out["exact"] = map_at_r(ids, yb, yq)
    out["p_at_1"] = float((yb[ids[:, 0]] == yq).mean())
    q2 = alpha_expand(xq, xb, ids[:, :n], sims[:, :n], alpha)
    out["alpha_qe"] = map_at_r(search(xb, q2, r_max)[0], yb, yq)
    # DBA over each base item's exact top-n (itself included, as in the literature)
    bid, bsim = search(xb, xb, n)
    xb_dba = alpha_expand(xb, xb, bid, bsim, alpha)
    ids_d, sims_d = search(xb_dba, xq, r_max)
    q3 = alpha_expand(xq, xb_dba, ids_d[:, :n], sims_d[:, :n], alpha)
    out["dba+aqe"] = map_at_r(search(xb_dba, q3, r_max)[0], yb, yq)
    out["diffusion"] = float("nan")
    try:
        if diffusion:
            out["diffusion"] = map_at_r(diffusion_rank(xb, xq, 10, n, alpha, r_max), yb, yq)
    except ImportError:
        pass
    # learned linear metric on labelled base + training queries
    xt = xb if ds.train_queries is None else np.concatenate([xb, ds.train_queries])
    yt = yb if ds.train_query_labels is None else np.concatenate([yb, ds.train_query_labels])
    proj = lda_projection(xt, yt)
    pb, pq = xb @ proj, xq @ proj
    ids_l, sims_l = search(pb, pq, r_max)
    out["lin"] = map_at_r(ids_l, yb, yq)
    q4 = alpha_expand(pq, pb, ids_l[:, :n], sims_l[:, :n], alpha)
    out["lin+aqe"] = map_at_r(search(pb, q4, r_max)[0], yb, yq)
    out["total_s"] = round(time.perf_counter() - t0, 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", nargs="*", default=["clusters", "hierarchical", "manifolds"])
    ap.add_argument("--size", default="default")
    ap.add_argument("--seeds", type=int, nargs="*", default=[0])
    ap.add_argument("--n", type=int, default=10, help="alpha-QE / DBA top-n (default 10)")
    ap.add_argument("--alpha", type=float, default=3.0, help="alpha-QE exponent (default 3)")
    ap.add_argument("--set", action="append", default=[], help="generator override key=value")
    ap.add_argument("--no-diffusion", action="store_true", help="skip the (memory-hungry) diffusion column")
    ap.add_argument("--json", help="write the rows to this JSON file")
    args = ap.parse_args()
    overrides: dict[str, Any] = {}
    for kv in args.set:
        key, val = kv.split("=", 1)
        overrides[key] = json.loads(val)
    rows = []
    cols = ["exact", "alpha_qe", "dba+aqe", "diffusion", "lin", "lin+aqe"]
    print(f"{'scenario':<13}{'size':<8}{'seed':>5} {'R':>6} {'P@1':>6} " + " ".join(f"{c:>9}" for c in cols))
    for name in args.scenario:
        for seed in args.seeds:
            row = calibrate(name, args.size, seed, overrides, args.n, args.alpha, not args.no_diffusion)
            rows.append(row)
            print(
                f"{name:<13}{args.size:<8}{seed:>5} {row['mean_R']:>6.0f} {row['p_at_1']:>6.3f} "
                + " ".join(f"{row[c]:>9.3f}" for c in cols)
                + f"   ({row['total_s']}s)",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
