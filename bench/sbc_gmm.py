"""Simulation-based calibration (Talts et al., 2018) of NUTS on the Gaussian mixture.

Each replication draws parameters from fixed (data-independent) priors, data from the model,
and fits ``GaussianMixture(inference="nuts")`` with the *same* priors; the rank of the true
value of a statistic among the posterior draws is then uniform on ``0..L`` when inference is
right. The statistics are the sorted component means (a function of the parameters that no
relabelling changes, so label switching cannot bias it) and the largest weight. Draws are
thinned (``--thin``) to reduce autocorrelation.

    python bench/sbc_gmm.py [--replications 100] [--n-samples 30] [--draws 200] [--thin 2]

Prints a chi-square test of uniformity per statistic (ranks in ``--bins`` bins) and writes the
rank histograms to ``--out`` (PNG).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
import pyro.distributions as dist
import torch
from scipy.stats import chisquare

from ppl_mixtures import GaussianMixture

K = 2


def priors() -> dict:
    return {
        "weights": dist.Dirichlet(torch.full((K,), 2.0, dtype=torch.float64)),
        "means": dist.Normal(torch.tensor(0.0, dtype=torch.float64), 3.0),
        "variances": dist.InverseGamma(torch.tensor(3.0, dtype=torch.float64), 2.0),
    }


def simulate(n_samples: int, generator: torch.Generator) -> tuple[np.ndarray, dict]:
    """Parameters from :func:`priors` and ``n_samples`` 1-D points from the mixture."""
    prior = priors()
    with torch.random.fork_rng():
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        weights = prior["weights"].sample()
        means = prior["means"].sample((K,))
        variances = prior["variances"].sample((K,))
        labels = torch.multinomial(weights, n_samples, replacement=True)
        x = means[labels] + variances[labels].sqrt() * torch.randn(n_samples, dtype=torch.float64)
    truth = {"means": np.sort(means.numpy()), "max_weight": float(weights.max())}
    return x[:, None].numpy(), truth


def ranks(x: np.ndarray, truth: dict, args: argparse.Namespace, seed: int) -> dict[str, list]:
    est = GaussianMixture(K, covariance_type="diag", inference="nuts", priors=priors(),
                          max_iter=args.draws, num_warmup=args.warmup, random_state=seed,
                          progress=False).fit(x)
    draws = est.posterior_samples_
    means = np.sort(draws["means"][:: args.thin, :, 0], axis=-1)  # (L, K)
    max_weight = draws["weights"][:: args.thin].max(-1)
    return {
        "mean_low": [int((means[:, 0] < truth["means"][0]).sum())],
        "mean_high": [int((means[:, 1] < truth["means"][1]).sum())],
        "max_weight": [int((max_weight < truth["max_weight"]).sum())],
        "n_draws": [means.shape[0]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replications", type=int, default=100)
    parser.add_argument("--n-samples", type=int, default=30)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--thin", type=int, default=2)
    parser.add_argument("--bins", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="sbc_gmm.png")
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(args.seed)
    collected: dict[str, list] = {}
    start = time.perf_counter()
    for replication in range(args.replications):
        x, truth = simulate(args.n_samples, generator)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for key, values in ranks(x, truth, args, args.seed + replication).items():
                collected.setdefault(key, []).extend(values)
    n_draws = collected.pop("n_draws")[0]
    report = {"replications": args.replications, "draws_after_thinning": n_draws,
              "seconds": time.perf_counter() - start}
    edges = np.linspace(0, n_draws + 1, args.bins + 1)
    for key, values in collected.items():
        counts, _ = np.histogram(values, bins=edges)
        report[key] = {"counts": counts.tolist(), "chi2_p": float(chisquare(counts).pvalue)}
    print(json.dumps(report, indent=1))
    from ppl_mixtures.plotting import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(collected), figsize=(4 * len(collected), 3))
    for ax, (key, values) in zip(axes, collected.items(), strict=True):
        ax.hist(values, bins=edges)
        ax.axhline(args.replications / args.bins, color="k", ls="--")
        ax.set_title(f"{key} (p = {report[key]['chi2_p']:.2f})")
        ax.set_xlabel("rank of the true value")
    fig.savefig(args.out, dpi=100, bbox_inches="tight")


if __name__ == "__main__":
    main()
