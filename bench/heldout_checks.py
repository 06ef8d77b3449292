"""Re-check the GMM claims on fresh draws (seeds not used by the tests), with spreads.

1. From its own init with n_init=3, our EM's mean log-likelihood minus scikit-learn's (n_init=3),
   over covariance types and data seeds.
2. SVI (MAP guide) against EM on well separated data: ARI ratio and log-likelihood gap.

    python bench/heldout_checks.py [--seeds 20]
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from ppl_mixtures import GaussianMixture
from ppl_mixtures.datasets import make_gmm
from ppl_mixtures.metrics import adjusted_rand_score


def summary(name: str, values: list[float]) -> None:
    v = np.asarray(values)
    print(f"{name}: mean {v.mean():+.5f} sd {v.std():.5f} min {v.min():+.5f} max {v.max():+.5f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--first-seed", type=int, default=1000)
    args = parser.parse_args()
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    for covariance_type in ("spherical", "diag", "tied", "full"):
        gaps = []
        for seed in seeds:
            X, _ = make_gmm(1500, 5, 4, separation=2.5, random_state=seed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                sk = SkGaussianMixture(5, covariance_type=covariance_type, n_init=3,
                                       random_state=seed).fit(X)
            ours = GaussianMixture(5, covariance_type=covariance_type, n_init=3,
                                   random_state=seed, progress=False).fit(X)
            gaps.append(ours.score(X) - sk.score(X))
        summary(f"EM n_init=3 loglik - sklearn [{covariance_type}]", gaps)
    ratios, gaps = [], []
    for seed in seeds:
        X, y = make_gmm(1500, 4, 3, separation=5.0, random_state=seed)
        em = GaussianMixture(4, random_state=seed, progress=False).fit(X)
        svi = GaussianMixture(4, inference="svi", random_state=seed, progress=False).fit(X)
        ratios.append(adjusted_rand_score(y, svi.predict(X)) / adjusted_rand_score(y, em.predict(X)))
        gaps.append(svi.score(X) - em.score(X))
    summary("SVI ARI / EM ARI", ratios)
    summary("SVI loglik - EM loglik", gaps)


if __name__ == "__main__":
    main()
