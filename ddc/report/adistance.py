"""The proxy A-distance between two sets of features (Ben-David et al. 2007; Ganin et al. 2016).

A linear classifier learns to tell domain S (label 0) from domain T (label 1) on half of the
features and is tested on the other half; with its test error ``eps``::

    d_A = 2 (1 - 2 eps)

``d_A`` is near 0 when the domains cannot be told apart and 2 when they separate perfectly (it
is slightly negative when the classifier does worse than chance). The two domains are first
subsampled to the same size, so chance is 1/2, with one seeded permutation (a sample present in
both sets lands in the same half). The classifier is L2-regularised logistic
regression fitted by Newton's method in numpy, on features standardised with the statistics of
the training half; the L2 strength is chosen from a small grid on a held-out third of the
training half (never on the test half), ties going to the strongest.
"""

from __future__ import annotations

import numpy as np

L2_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def fit_logistic(x, y, l2: float, iterations: int = 50) -> np.ndarray:
    """Weights [D + 1] (bias last) minimising mean log-loss + l2/2 * |w|^2 (bias unpenalised).

    Args:
        x: float [N, D]; y: {0, 1} [N].
    """
    x = np.hstack([np.asarray(x, np.float64), np.ones((len(x), 1))])
    y = np.asarray(y, np.float64)
    n, d = x.shape
    reg = np.full(d, l2)
    reg[-1] = 0.0
    w = np.zeros(d)

    def objective(w):
        z = x @ w
        return np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * np.sum(reg * w * w)

    f = objective(w)
    for _ in range(iterations):
        p = _sigmoid(x @ w)
        grad = x.T @ (p - y) / n + reg * w
        hess = (x * (p * (1 - p))[:, None]).T @ x / n + np.diag(reg + 1e-10)
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-6:  # backtracking: Newton steps can overshoot on near-separable data
            f_new = objective(w - t * step)
            if f_new <= f - 1e-4 * t * grad @ step:
                break
            t *= 0.5
        w, f_old, f = w - t * step, f, f_new
        if abs(f_old - f) < 1e-10:
            break
    return w


def _error(w, x, y) -> float:
    z = np.asarray(x, np.float64) @ w[:-1] + w[-1]
    return float(np.mean((z > 0).astype(int) != y))


def proxy_a_distance(f_s, f_t, *, seed: int = 0, max_per_domain: int | None = 2000) -> dict:
    """Proxy A-distance between features ``f_s`` [N_s, D] and ``f_t`` [N_t, D].

    Returns:
        dict with ``a_distance`` (2 (1 - 2 eps)), ``error`` (eps, on the held-out half),
        ``l2`` (the chosen regularisation), ``n_train`` and ``n_test`` (both domains together).
    """
    f_s, f_t = np.asarray(f_s, np.float64), np.asarray(f_t, np.float64)
    if f_s.ndim != 2 or f_t.ndim != 2 or f_s.shape[1] != f_t.shape[1]:
        raise ValueError(f"expected two [N, D] feature arrays of the same D, got {f_s.shape} "
                         f"and {f_t.shape}")
    n = int(min(len(f_s), len(f_t), max_per_domain or np.inf))
    if n < 6:
        raise ValueError(f"need at least 6 samples per domain, got {len(f_s)} and {len(f_t)}")
    # The same permutation for both domains (when their sizes agree): a sample present in both
    # sets lands in the same half, so memorising it cannot push the error above chance.
    s = f_s[np.random.default_rng(seed).permutation(len(f_s))[:n]]
    t = f_t[np.random.default_rng(seed).permutation(len(f_t))[:n]]
    rng = np.random.default_rng([seed, 1])
    half = n // 2
    x_tr = np.concatenate([s[:half], t[:half]])
    y_tr = np.r_[np.zeros(half, int), np.ones(half, int)]
    x_te = np.concatenate([s[half:], t[half:]])
    y_te = np.r_[np.zeros(n - half, int), np.ones(n - half, int)]
    mean, std = x_tr.mean(axis=0), x_tr.std(axis=0) + 1e-8
    x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    # Choose l2 on a held-out third of the training half.
    order = rng.permutation(len(x_tr))
    cut = len(order) // 3
    inner_val, inner_tr = order[:cut], order[cut:]
    scores = [_error(fit_logistic(x_tr[inner_tr], y_tr[inner_tr], l2), x_tr[inner_val],
                     y_tr[inner_val]) for l2 in L2_GRID]
    # Ties go to the strongest regularisation: a weak one memorises points, which on nearly
    # identical domains makes the held-out error worse than chance.
    l2 = max(l2 for l2, e in zip(L2_GRID, scores) if e <= min(scores))
    w = fit_logistic(x_tr, y_tr, l2)
    eps = _error(w, x_te, y_te)
    return {"a_distance": 2.0 * (1.0 - 2.0 * eps), "error": eps, "l2": l2,
            "n_train": int(len(x_tr)), "n_test": int(len(x_te))}
