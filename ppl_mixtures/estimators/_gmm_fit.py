"""Parts of :class:`~ppl_mixtures.estimators.GaussianMixture`'s fits: EM's M-step guard, the
warm start's initial values, NUTS, and the fitted NumPy attributes.

With ``reg_covar=0`` the M-step is the exact maximiser of the expected complete
log-likelihood, which does not exist when a component's weighted scatter matrix is singular
(points collapsed onto one value, fewer distinct points than features, an empty component):
:func:`em_m_step` refuses such a fit with a ``ValueError`` (as scikit-learn does) instead of
letting the M-step's jitter carry on with a meaningless "converged" fit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ppl_mixtures.estimators import _gmm_init, _nuts
from ppl_mixtures.inference.em import gmm as em_gmm
from ppl_mixtures.inference.em import missing as em_missing
from ppl_mixtures.models import gmm

#: Floor on each component's total responsibility, as the M-step adds (10 * eps).
_NK_FLOOR_FACTOR = 10.0


def em_m_step(est: Any, sample: torch.Tensor) -> Callable[[em_gmm.GMMStats], gmm.GMMParams]:
    """The M-step of ``est``'s EM; with ``reg_covar=0``, one that refuses singular scatter.

    ``sample`` (the data, or a stream's first batch) sets the scale below which a variance
    counts as zero: ``n_features * eps`` times its mean per-feature variance.
    """
    covariance_type, reg_covar = est.covariance_type, est.reg_covar
    if reg_covar > 0:
        return _FloorOnce(covariance_type, reg_covar)
    spread = float(sample.var(0, unbiased=False).mean()) if sample.shape[0] > 1 else 0.0
    scale = spread if spread > 0 else 1.0

    def exact_m_step(stats: em_gmm.GMMStats) -> gmm.GMMParams:
        singular = singular_components(stats, covariance_type, scale)
        if singular:
            which = ("the shared (tied) covariance is" if covariance_type in gmm.TIED_TYPES
                     else f"components {singular[:10]} have a covariance that is")
            raise ValueError(
                f"Fitting the mixture failed: {which} singular (their points collapse onto "
                "one value, or are fewer than the features, or none are left) and "
                "reg_covar=0 adds nothing to it. Pass reg_covar > 0 (the default is 1e-6), "
                "fewer n_components, or scaled or de-duplicated data"
            )
        return em_gmm.m_step(stats, covariance_type, 0.0)

    return exact_m_step


class _FloorOnce:
    """The M-step with ``reg_covar > 0``, its variance floor taken once per fit.

    The floor (:func:`~ppl_mixtures.inference.em.gmm.stats_floor`) depends on the variance
    of all the data, which the statistics of every E-step give the same up to rounding: far
    above :data:`~ppl_mixtures.inference.em.gmm.SMALL_DATA_VARIANCE` (where the floor is
    ``reg_covar`` itself) it is kept after the first M-step; near or below that threshold
    (where it follows the variance) it is taken from each E-step's statistics, as before.
    Saves some fifteen small tensor operations per iteration.
    """

    def __init__(self, covariance_type: str, reg_covar: float) -> None:
        self.covariance_type, self.reg_covar = covariance_type, reg_covar
        self.floor: float | None = None

    def __call__(self, stats: em_gmm.GMMStats) -> gmm.GMMParams:
        floor = self.floor
        if floor is None:
            second = stats.second_moment
            diagonal = (second if self.covariance_type in gmm.DIAGONAL_TYPES
                        else second.diagonal(dim1=-2, dim2=-1))
            variance, mean_square = em_gmm.data_spread(stats.resp_sum, stats.first_moment,
                                                       diagonal, stats.shift)
            floor = em_gmm.variance_floor(self.reg_covar, variance, mean_square,
                                          stats.shift.dtype)
            if variance > 2.0 * em_gmm.SMALL_DATA_VARIANCE:  # NaN is not: taken again
                self.floor = floor
        return em_gmm.m_step(stats, self.covariance_type, self.reg_covar, floor=floor)


def singular_components(stats: em_gmm.GMMStats, covariance_type: str,
                        scale: float) -> list[int]:
    """Components whose scatter (the M-step's covariance with ``reg_covar=0``) is singular.

    Singular: a variance, or the least eigenvalue of a covariance matrix, at most
    ``n_features * eps * scale`` (rounding, relative to the data's spread). A tied type
    reports component 0 for the shared matrix.

    Parameters
    ----------
    stats : GMMStats
    covariance_type : str
    scale : float
        The data's mean per-feature variance.

    Returns
    -------
    list of int
    """
    wide = torch.float64  # as the M-step: float64 sums, the parameters' rounding
    eps = torch.finfo(stats.shift.dtype).eps
    resp_sum = stats.resp_sum.to(wide) + _NK_FLOOR_FACTOR * eps
    offset = stats.first_moment.to(wide) / resp_sum[:, None]  # new mean - shift, (K, D)
    second_moment = stats.second_moment.to(wide)
    threshold = offset.shape[1] * eps * scale
    if covariance_type in gmm.DIAGONAL_TYPES:
        scatter = second_moment / resp_sum[:, None] - offset.square()  # (K, D)
        if covariance_type == "spherical":
            scatter = scatter.mean(-1, keepdim=True)
        elif covariance_type == "tied_diag":
            scatter = ((resp_sum[:, None] * scatter).sum(0) / resp_sum.sum())[None]
        bad = (scatter <= threshold).any(-1)
    elif covariance_type == "tied":  # pooled over the components: (D, D)
        scatter = ((second_moment - (offset.T * resp_sum) @ offset)
                   / resp_sum.sum())[None]
    else:
        scatter = (second_moment / resp_sum[:, None, None]
                   - offset[:, :, None] * offset[:, None, :])
    if covariance_type not in gmm.DIAGONAL_TYPES:
        eye = torch.eye(scatter.shape[-1], dtype=wide, device=scatter.device)
        shifted = 0.5 * (scatter + scatter.transpose(-1, -2)) - threshold * eye
        bad = torch.linalg.cholesky_ex(shifted).info != 0
    return [int(k) for k in torch.nonzero(bad).flatten()]


def warm_given(params: gmm.GMMParams) -> dict[str, torch.Tensor]:
    """The last fit's parameters as the initial values of SVI or NUTS (``precisions_init``
    holds covariances there, as :func:`~._gmm_init.check_init_arrays` returns them)."""
    return {"weights_init": params.weights, "means_init": params.means,
            "precisions_init": params.covariances}


def fit_nuts(est: Any, x: torch.Tensor, generator: torch.Generator, given: dict,
             weights: torch.Tensor | None = None) -> None:
    """NUTS from the ``init_params`` estimate; ``params_`` holds the relabelled draws'
    posterior medians (:func:`~._nuts.median_gaussian_params`).

    ``weights`` (shape (N,), optional): sample weights of the rows (the likelihood is
    ``sum_n w_n log p(x_n)``; ``history_`` holds its weighted mean per draw).
    """
    start = _gmm_init.initial_params(est, x, generator, given, weights)
    per_component = ["weights", "means"]
    if est.covariance_type not in gmm.TIED_TYPES:
        sites = gmm.params_to_sites(start)
        per_component += [s for s in ("variances", "corr_cholesky") if s in sites]
    draws = _nuts.draw_posterior(
        est, x, generator, gmm.params_to_sites(start), per_component,
        lambda sites: gmm.sites_to_params(sites, est.covariance_type), weights,
    )
    est.params_ = gmm.GMMParams(*_nuts.median_gaussian_params(
        torch.stack([d.weights for d in draws]), torch.stack([d.means for d in draws]),
        torch.stack([d.covariances for d in draws]),
        est.covariance_type in gmm.DIAGONAL_TYPES,
    ), est.covariance_type)
    with torch.no_grad():
        log_joint = em_missing.gmm_log_joint if est._marginalize else gmm.log_joint
        est.history_ = [_weighted_mean(torch.logsumexp(log_joint(x, d), -1), weights)
                        for d in draws]
    _nuts.finish(est, x, est.posterior_samples_, None, gmm.map_guide)


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor | None) -> float:
    """``values.mean()``, or ``sum_n w_n v_n / sum_n w_n`` (shape (N,) both)."""
    if weights is None:
        return float(values.mean())
    return float(weights @ values / weights.sum())


def fitted_arrays(params: gmm.GMMParams) -> dict[str, np.ndarray]:
    """``weights_``, ``means_``, ``covariances_``, ``precisions_`` and
    ``precisions_cholesky_`` as NumPy arrays (scikit-learn's names and conventions)."""
    covariances = params.covariances.detach().cpu().numpy()
    if params.covariance_type in gmm.DIAGONAL_TYPES:
        precisions = 1.0 / covariances
        precisions_cholesky = np.sqrt(precisions)
    else:  # factorised in float64 (a float32 fit's covariances round-trip), returned as fitted
        # the M-step's factors L (no new factorisation); L^-1 by one triangular solve and
        # Sigma^-1 = L^-T L^-1 by LAPACK's potri: a fifth of the work of inv + solve
        with torch.no_grad():
            factors = em_gmm.factors_of(params.covariances)
            eye = torch.eye(factors.shape[-1], dtype=factors.dtype, device=factors.device)
            inverse = torch.linalg.solve_triangular(factors, eye, upper=False)
            precisions = torch.cholesky_inverse(factors).cpu().numpy()
        precisions = precisions.astype(covariances.dtype, copy=False)
        # scikit-learn's convention: P with P P^T = Sigma^-1, upper triangular.
        precisions_cholesky = inverse.mT.cpu().numpy().astype(covariances.dtype)
    return {"weights_": params.weights.detach().cpu().numpy(),
            "means_": params.means.detach().cpu().numpy(), "covariances_": covariances,
            "precisions_": precisions, "precisions_cholesky_": precisions_cholesky}
