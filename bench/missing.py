"""Missing values: marginalising EM against dropping incomplete rows and mean imputation.

Data: a K-component Gaussian mixture with correlated full covariances (eigenvalues log-uniform
in [0.05, 2], random rotations) and known labels (``datasets.make_correlated_gmm``); a fraction
of the training entries is removed completely at random (``datasets.mask_missing``). Three fits of ``GaussianMixture(covariance_type="full")``:

* ``marginalize``: ``missing="marginalize"`` on the incomplete data (Ghahramani & Jordan 1994);
* ``drop``: the complete rows only;
* ``mean``: every NaN replaced by its column's observed mean.

Reported per method, over seeds: the mean log-likelihood of a held-out *complete* sample
(``score``), and the ARI of the held-out labels (``predict``). For ``marginalize`` and
``mean`` also the ARI of the incomplete training rows (``drop`` cannot label them), and the
RMSE of the imputed entries (``impute`` against the removed values; ``mean``: the column means).

    python bench/missing.py [--seeds 5] [--fraction 0.15] [--n 600] [--d 6] [--k 4]
                            [--separation 2.0]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from ppl_mixtures import GaussianMixture
from ppl_mixtures.datasets import make_correlated_gmm, mask_missing
from ppl_mixtures.metrics import adjusted_rand_score


def fit(x: np.ndarray, k: int, seed: int, missing: str = "error") -> GaussianMixture:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return GaussianMixture(k, covariance_type="full", n_init=3, missing=missing,
                               random_state=seed, progress=False, max_iter=300).fit(x)


def compare(seed: int, n: int, d: int, k: int, fraction: float,
            separation: float = 2.0) -> dict[str, float]:
    """One draw: the figures of the three methods (see the module docstring)."""
    rng = np.random.default_rng(seed)
    x, labels = make_correlated_gmm(2 * n, k, d, separation=separation, random_state=rng)
    train, test = x[:n], x[n:]
    train_labels, test_labels = labels[:n], labels[n:]
    holes = mask_missing(train, fraction, random_state=rng)
    missing_mask = np.isnan(holes)
    complete = ~missing_mask.any(1)
    column_means = np.nanmean(holes, 0)
    imputed = np.where(missing_mask, column_means, holes)
    fits = {
        "marginalize": fit(holes, k, seed, "marginalize"),
        "drop": fit(holes[complete], k, seed),
        "mean": fit(imputed, k, seed),
    }
    out: dict[str, float] = {"complete_rows": float(complete.mean())}
    for name, est in fits.items():
        out[f"{name}_loglik"] = est.score(test)
        out[f"{name}_ari"] = adjusted_rand_score(test_labels, est.predict(test))
    out["marginalize_train_ari"] = adjusted_rand_score(train_labels, fits["marginalize"].predict(holes))
    out["mean_train_ari"] = adjusted_rand_score(train_labels, fits["mean"].predict(imputed))
    filled = fits["marginalize"].impute(holes)
    out["marginalize_impute_rmse"] = float(np.sqrt(np.mean((filled - train)[missing_mask] ** 2)))
    out["mean_impute_rmse"] = float(np.sqrt(np.mean((imputed - train)[missing_mask] ** 2)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=100)
    parser.add_argument("--fraction", type=float, default=0.15)
    parser.add_argument("--n", type=int, default=600)
    parser.add_argument("--d", type=int, default=6)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--separation", type=float, default=2.0,
                        help="scale of the standard normal draw of the means")
    args = parser.parse_args()
    rows = []
    start = time.perf_counter()
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        row = compare(seed, args.n, args.d, args.k, args.fraction, args.separation)
        rows.append(row)
        print(f"seed {seed}: " + ", ".join(f"{key} {value:.3f}" for key, value in row.items()),
              flush=True)
    print(f"\n{args.seeds} seeds, n={args.n} d={args.d} k={args.k} fraction={args.fraction} "
          f"separation={args.separation} "
          f"({time.perf_counter() - start:.0f} s)")
    for key in rows[0]:
        values = np.array([row[key] for row in rows])
        print(f"{key:26s} mean {values.mean():+.4f}  min {values.min():+.4f}  "
              f"max {values.max():+.4f}")
    for other in ("drop", "mean"):
        for metric in ("loglik", "ari"):
            wins = sum(row[f"marginalize_{metric}"] > row[f"{other}_{metric}"] for row in rows)
            ties = sum(row[f"marginalize_{metric}"] == row[f"{other}_{metric}"] for row in rows)
            print(f"marginalize {metric} > {other}: {wins}/{len(rows)} seeds ({ties} ties)")


if __name__ == "__main__":
    main()
