"""``inference="nuts"`` for the estimators whose likelihood sums the assignments out.

NUTS runs over the global sites (Hoffman & Gelman 2014), started at an EM-style initial point
so every chain stays near one labelling of the components; the draws are relabelled to the
starting components (:func:`~ppl_mixtures.inference.mcmc.sample_posterior`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ppl_mixtures.inference.mcmc import sample_posterior, split_r_hat


def draw_posterior(estimator: Any, x: torch.Tensor, generator: torch.Generator,
                   start_sites: dict[str, torch.Tensor], per_component: list[str],
                   sites_to_params: Callable[[dict[str, torch.Tensor]], Any],
                   weights: torch.Tensor | None = None) -> list[Any]:
    """NUTS draws of the estimator's model on ``x``, as parameter containers.

    ``weights`` (shape (N,), optional): the rows' sample weights, passed to the model.

    Sets ``posterior_samples_`` (every site, chains concatenated, relabelled),
    ``sampler_stats_`` and ``n_iter_`` (draws per chain).

    Returns
    -------
    list
        One parameter container per draw.
    """
    posterior = sample_posterior(
        estimator.model_, x, start_sites, per_component, num_samples=estimator._max_iter,
        num_warmup=estimator.num_warmup, num_chains=estimator.num_chains,
        chain_method=getattr(estimator, "chain_method", "auto"),
        progress=estimator.progress,
        seed=int(torch.randint(0, 2**31 - 1, (1,), generator=generator)),
        sample_weight=weights,
    )
    samples = posterior.samples
    n_draws = next(iter(samples.values())).shape[0]
    estimator.posterior_samples_ = posterior.numpy()
    estimator.sampler_stats_ = posterior.sampler_stats
    estimator.n_iter_ = estimator._max_iter
    return [sites_to_params({k: v[i] for k, v in samples.items()}) for i in range(n_draws)]


def _median(draws: torch.Tensor) -> torch.Tensor:
    """Median over the first (draw) dim; the mean of the two middle values for an even count."""
    ordered = draws.sort(dim=0).values
    n = ordered.shape[0]
    return 0.5 * (ordered[(n - 1) // 2] + ordered[n // 2])


def median_gaussian_params(weights: torch.Tensor, means: torch.Tensor,
                           covariances: torch.Tensor, diagonal: bool,
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A robust point estimate from relabelled draws of Gaussian components.

    A few draws can sit in another mode that relabelling cannot undo (a component that holds
    no data wanders far away under its prior), and they drag posterior *means* off the bulk
    of the draws; medians stay with it. Weights are the componentwise medians renormalised to
    sum to 1, means the coordinatewise medians; covariances have the median variances and,
    when not diagonal, the mean correlation matrix (a mean of correlation matrices is one),
    so they stay positive definite.

    Parameters
    ----------
    weights : Tensor, shape (S, K)
    means : Tensor, shape (S, K, D)
    covariances : Tensor, shape (S, ...) diagonal entries, or (S, ..., D, D) matrices
    diagonal : bool
        Whether ``covariances`` holds variances only.

    Returns
    -------
    weights, means, covariances : Tensor
        Shapes as the inputs without the draw dim.
    """
    point_weights = _median(weights)
    point_weights = point_weights / point_weights.sum(-1, keepdim=True)
    if diagonal:
        return point_weights, _median(means), _median(covariances)
    variances = covariances.diagonal(dim1=-2, dim2=-1)
    inv_std = variances.rsqrt()
    correlation = (covariances * inv_std[..., :, None] * inv_std[..., None, :]).mean(0)
    std = _median(variances).sqrt()
    return point_weights, _median(means), correlation * std[..., :, None] * std[..., None, :]


def finish(estimator: Any, x: torch.Tensor, draws: dict[str, np.ndarray],
           identified: tuple[str, ...] | None, map_guide: Callable) -> None:
    """``r_hat_`` of ``draws``, ``converged_`` (max split-R-hat of ``identified`` < 1.1,
    all sites when None) and a point-mass ``guide_`` at ``params_``."""
    estimator.r_hat_ = {k: split_r_hat(v) for k, v in draws.items()}
    names = identified if identified is not None else tuple(estimator.r_hat_)
    worst = max(float(np.nanmax(estimator.r_hat_[k])) for k in names)
    estimator.converged_ = bool(worst < 1.1)
    estimator.guide_ = map_guide(estimator.model_, estimator.params_)
    estimator.guide_(x[:1])
