"""Plain-numpy references (float64, row loops) of sliced_wasserstein, centroid_ot and diffusion.

Written independently of the kernels: sorts with ``np.argsort(kind="stable")``, quantile
functions evaluated at interval midpoints, Sinkhorn with explicit log-sum-exp matrices, diffusion
with dense Laplacian matrices.
"""

from __future__ import annotations

import numpy as np

from tests.attention._reference import softmax_masked


def _stable_top(scores: np.ndarray, cand: np.ndarray, k: int, largest: bool) -> np.ndarray:
    """The ``k`` best of ``cand`` (positions) by ``scores`` (ties: the earlier position first)."""
    order = np.argsort(-scores[cand] if largest else scores[cand], kind="stable")
    return cand[order[:k]]


def w2_squared(x: np.ndarray, y: np.ndarray) -> float:
    """Squared 2-Wasserstein distance of two 1-D empirical measures (uniform weights)."""
    xs, ys = np.sort(x), np.sort(y)
    a, b = len(xs), len(ys)
    br = np.unique(np.concatenate([np.arange(1, a + 1) / a, np.arange(1, b + 1) / b, [0.0]]))
    mids = (br[:-1] + br[1:]) / 2
    lens = np.diff(br)
    qx = xs[np.minimum((mids * a).astype(int), a - 1)]
    qy = ys[np.minimum((mids * b).astype(int), b - 1)]
    return float(np.sum(lens * (qx - qy) ** 2))


def sliced_wasserstein(q, K, V, mask, theta, omega, tokens, top_m, temperature=1.0):
    """Reference sliced-Wasserstein attention: ``(out (B, dv), weights (B, n))``."""
    B, n, d = K.shape
    P = theta.shape[0]
    c = np.sqrt(d) / (2 * temperature) * np.exp(omega) / P
    out = np.zeros((B, V.shape[2]))
    W = np.zeros((B, n))
    for b in range(B):
        att = np.flatnonzero(mask[b])
        if att.size == 0:
            continue
        s = K[b] @ q[b]
        sel = _stable_top(s, att, top_m, largest=True)
        Y = K[b] @ theta.T  # (n, P)
        x = theta @ q[b]
        dq = ((Y - x) ** 2).sum(1)
        qset = np.vstack([x, Y[_stable_top(dq, att, tokens - 1, largest=False)]])
        sc = np.zeros(sel.size)
        for r, j in enumerate(sel):
            others = att[att != j]
            dj = ((Y - Y[j]) ** 2).sum(1)
            iset = np.vstack([Y[j], Y[_stable_top(dj, others, tokens - 1, largest=False)]])
            sc[r] = -sum(c[p] * w2_squared(qset[:, p], iset[:, p]) for p in range(P))
        w = np.exp(sc - sc.max())
        w /= w.sum()
        W[b, sel] = w
        out[b] = w @ V[b, sel]
    return out, W


def centroid_ot(q, K, V, mask, centroids, labels, cost, epsilon, rho, zeta, iterations, temperature=1.0):
    """Reference centroid-OT attention: ``(out, weights, beta (B, M))``; ``labels (B, n)`` per item."""
    B, n, d = K.shape
    M = centroids.shape[0]
    lam = rho / (rho + epsilon)
    Kc = -cost / epsilon
    out = np.zeros((B, V.shape[2]))
    W = np.zeros((B, n))
    betas = np.zeros((B, M))

    def lse(x, axis):
        mx = x.max(axis=axis, keepdims=True)
        return np.squeeze(mx, axis) + np.log(np.exp(x - mx).sum(axis=axis))

    for b in range(B):
        att = np.flatnonzero(mask[b])
        if att.size == 0:
            continue
        s = K[b] @ q[b] / (np.sqrt(d) * temperature)
        lab = labels[b]
        pres = np.unique(lab[att])
        omega = np.zeros(n)
        Ob = np.zeros((M, V.shape[2]))
        for c in pres:
            members = att[lab[att] == c]
            omega[members] = softmax_masked(s[members], np.ones(members.size, bool))
            Ob[c] = omega[members] @ V[b, members]
        mu = np.array([np.sum(lab[att] == c) for c in pres]) / att.size
        z = np.exp(zeta) / np.sqrt(d) * centroids @ q[b]
        loga = z - lse(z, 0)
        Kp = Kc[:, pres]  # (M, p)
        G = np.zeros(pres.size)
        for _ in range(iterations):
            F = loga - lse(G[None, :] + Kp, 1)
            G = lam * (np.log(mu) - lse(F[:, None] + Kp, 0))
        F = loga - lse(G[None, :] + Kp, 1)
        plan = np.exp(F[:, None] + G[None, :] + Kp)
        beta = plan.sum(0)
        betas[b, pres] = beta
        out[b] = beta @ Ob[pres]
        W[b, att] = betas[b, lab[att]] * omega[att]
    return out, W, betas


def _mass_operator(A: np.ndarray, laplacian: str) -> np.ndarray:
    Dg = A.sum(1)
    if laplacian == "unnormalised":
        return np.diag(Dg) - A
    inv = np.where(Dg > 0, 1.0 / np.where(Dg > 0, Dg, 1.0), 0.0)
    iso = Dg == 0
    if laplacian == "symmetric":
        L = np.eye(len(Dg)) - np.sqrt(inv)[:, None] * A * np.sqrt(inv)[None, :]
    else:  # random walk: mass evolves by (I - D^-1 A)^T = I - A D^-1
        L = np.eye(len(Dg)) - A * inv[None, :]
    L[iso, :] = 0.0
    L[:, iso] = 0.0
    return L


def diffusion_graph(Ks: np.ndarray, k: int) -> np.ndarray:
    """Symmetrised kNN adjacency (0/1) of the rows of ``Ks`` (squared L2, ties to the earlier row)."""
    m = Ks.shape[0]
    A = np.zeros((m, m))
    D2 = ((Ks[:, None, :] - Ks[None, :, :]) ** 2).sum(-1)
    for i in range(m):
        others = np.array([j for j in range(m) if j != i], dtype=int)
        for j in _stable_top(D2[i], others, k, largest=False):
            A[i, j] = A[j, i] = 1.0
    return A


def diffusion(q, K, V, mask, t, laplacian, num_steps, k_graph, max_nodes, temperature=1.0, exact=False):
    """Reference heat-diffused attention (dense matrices): ``(out, weights)``.

    ``exact=True`` uses the matrix exponential ``exp(-t Lambda)`` instead of the Euler steps.
    """
    B, n, d = K.shape
    out = np.zeros((B, V.shape[2]))
    W = np.zeros((B, n))
    for b in range(B):
        att = np.flatnonzero(mask[b])
        if att.size == 0:
            continue
        s = K[b] @ q[b] / (np.sqrt(d) * temperature)
        a = softmax_masked(s, mask[b])
        m = att.size if max_nodes is None else min(max_nodes, n)
        sel = _stable_top(s, att, m, largest=True)
        A = diffusion_graph(K[b, sel], min(k_graph, sel.size - 1))
        Lam = _mass_operator(A, laplacian)
        u = a[sel].copy()
        if t > 0 and A.sum() > 0:
            if exact:
                u = expm_apply(Lam, A, laplacian, t, u)
            else:
                h = t / num_steps
                rate = A.sum(1).max() if laplacian == "unnormalised" else 1.0
                sub = max(1, int(np.ceil(h * rate - 1e-12)))
                step = np.eye(len(u)) - (t / (num_steps * sub)) * Lam
                u = np.linalg.matrix_power(step, num_steps * sub) @ u
            if laplacian == "symmetric":
                u = u * a[sel].sum() / u.sum()
        w = a.copy()
        w[sel] = u
        W[b] = w
        out[b] = w @ V[b]
    return out, W


def expm_apply(Lam: np.ndarray, A: np.ndarray, laplacian: str, t: float, u: np.ndarray) -> np.ndarray:
    """``exp(-t Lam) u`` through a symmetric eigendecomposition (the random walk operator is
    similar to the symmetric one: ``I - A D^-1 = D^1/2 (I - D^-1/2 A D^-1/2) D^-1/2``)."""
    if laplacian == "random_walk":
        Dg = A.sum(1)
        if (Dg == 0).any():
            raise ValueError("reference expm needs a graph without isolated nodes")
        s = np.sqrt(Dg)
        Ls = np.eye(len(Dg)) - A / s[:, None] / s[None, :]
        ev, U = np.linalg.eigh(Ls)
        return s * (U @ (np.exp(-t * ev) * (U.T @ (u / s))))
    ev, U = np.linalg.eigh(Lam)
    return U @ (np.exp(-t * ev) * (U.T @ u))
