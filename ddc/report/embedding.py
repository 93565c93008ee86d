"""2-D embeddings of feature vectors in numpy: PCA and a small exact t-SNE.

Both are deterministic for a given seed. The t-SNE is the exact O(N^2) algorithm of van der
Maaten and Hinton (2008) with the usual optimiser settings (early exaggeration 12 for the first
third of the iterations, momentum 0.5 then 0.8, per-coordinate gains, PCA initialisation): fine for the few
hundred to two thousand points a report draws, not for large sets.
"""

from __future__ import annotations

import numpy as np


def pca(x, dims: int = 2) -> np.ndarray:
    """Projects ``x`` [N, D] onto its first ``dims`` principal axes: [N, dims].

    Each axis is signed so that its largest loading is positive (a deterministic sign).
    """
    x = np.asarray(x, np.float64)
    xc = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(xc, full_matrices=False)
    v = vt[:dims]
    v *= np.sign(v[np.arange(len(v)), np.abs(v).argmax(axis=1)])[:, None]
    out = xc @ v.T
    if out.shape[1] < dims:  # fewer samples or features than dims
        out = np.pad(out, ((0, 0), (0, dims - out.shape[1])))
    return out


def _sq_dists(x: np.ndarray) -> np.ndarray:
    s = (x * x).sum(axis=1)
    d = s[:, None] + s[None, :] - 2.0 * x @ x.T
    np.fill_diagonal(d, 0.0)
    return np.maximum(d, 0.0)


def _conditional_p(d: np.ndarray, perplexity: float, tol: float = 1e-5, iters: int = 100):
    """Row-wise Gaussian affinities p_{j|i} whose entropy is log(perplexity) (bisection on beta)."""
    n = len(d)
    d = d.copy()
    np.fill_diagonal(d, np.inf)
    d = d - d.min(axis=1, keepdims=True)  # shift per row: same conditionals, no underflow
    target = np.log(perplexity)
    beta = np.ones(n)
    lo, hi = np.zeros(n), np.full(n, np.inf)
    for _ in range(iters):
        p = np.exp(-d * beta[:, None])
        sp = p.sum(axis=1)
        h = np.log(sp) + beta * (np.where(np.isfinite(d), d, 0.0) * p).sum(axis=1) / sp
        diff = h - target
        if np.all(np.abs(diff) < tol):
            break
        up = diff > 0  # entropy too high: narrower kernel, larger beta
        lo = np.where(up, beta, lo)
        hi = np.where(up, hi, beta)
        beta = np.where(up, np.where(np.isinf(hi), beta * 2.0, (beta + hi) / 2.0), (beta + lo) / 2.0)
    return p / sp[:, None]


def tsne(x, *, perplexity: float = 30.0, iterations: int = 500, seed: int = 0) -> np.ndarray:
    """t-SNE of ``x`` [N, D] to [N, 2] (exact gradients).

    Args:
        perplexity: effective number of neighbours (capped at (N - 1) / 3).
        iterations: gradient steps (the first third, at most 250, with early exaggeration).
        seed: only used to break ties in the initialisation.
    """
    x = np.asarray(x, np.float64)
    n = len(x)
    if n < 4:
        return pca(x)
    x = (x - x.mean(axis=0)) / max(float(x.std()), 1e-12)
    perplexity = min(perplexity, (n - 1) / 3.0)
    p = _conditional_p(_sq_dists(x), perplexity)
    p = (p + p.T) / (2.0 * n)
    p = np.maximum(p, 1e-12)
    rng = np.random.default_rng(seed)
    y = pca(x) + 1e-6 * rng.standard_normal((n, 2))
    y = y / max(float(y[:, 0].std()), 1e-12) * 1e-4
    lr = max(n / 12.0 / 4.0, 50.0)
    update, gains = np.zeros_like(y), np.ones_like(y)
    exaggeration, explore = 12.0, min(250, iterations // 3)
    p = p.astype(np.float32)
    for it in range(iterations):
        # Student-t kernel num_ij = 1 / (1 + |y_i - y_j|^2), Q = num / sum(num); in float32
        # and in place: the N x N arrays dominate the time.
        yf = y.astype(np.float32)
        num = _sq_dists(yf)
        num += 1.0
        np.reciprocal(num, out=num)
        np.fill_diagonal(num, 0.0)
        z = float(num.sum(dtype=np.float64))
        w = p * (exaggeration if it < explore else 1.0) - num / z
        w *= num  # (P - Q) * num
        grad = 4.0 * (w.sum(axis=1, dtype=np.float64)[:, None] * y - (w @ yf).astype(np.float64))
        momentum = 0.5 if it < explore else 0.8
        same = np.sign(grad) == np.sign(update)
        gains = np.maximum(np.where(same, gains * 0.8, gains + 0.2), 0.01)
        update = momentum * update - lr * gains * grad
        y = y + update
        y -= y.mean(axis=0)
    return y


def embed(x, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """[N, 2] embedding of ``x`` by ``method`` ("tsne" or "pca")."""
    if method == "pca":
        return pca(x)
    if method == "tsne":
        return tsne(x, seed=seed)
    raise ValueError(f"unknown embedding method {method!r} (expected tsne or pca)")


def knn_agreement(x, y, k: int = 10) -> float:
    """Fraction of each point's ``k`` nearest neighbours in ``x`` that are also among its ``k``
    nearest in ``y``: how well an embedding ``y`` keeps the neighbourhoods of ``x``."""
    dx, dy = _sq_dists(np.asarray(x, np.float64)), _sq_dists(np.asarray(y, np.float64))
    np.fill_diagonal(dx, np.inf)
    np.fill_diagonal(dy, np.inf)
    nx, ny = np.argsort(dx, axis=1)[:, :k], np.argsort(dy, axis=1)[:, :k]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(nx, ny)]))
