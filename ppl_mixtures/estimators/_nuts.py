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
                   sites_to_params: Callable[[dict[str, torch.Tensor]], Any]) -> list[Any]:
    """NUTS draws of the estimator's model on ``x``, as parameter containers.

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
        progress=estimator.progress,
        seed=int(torch.randint(0, 2**31 - 1, (1,), generator=generator)),
    )
    samples = posterior.samples
    n_draws = next(iter(samples.values())).shape[0]
    estimator.posterior_samples_ = posterior.numpy()
    estimator.sampler_stats_ = posterior.sampler_stats
    estimator.n_iter_ = estimator._max_iter
    return [sites_to_params({k: v[i] for k, v in samples.items()}) for i in range(n_draws)]


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
