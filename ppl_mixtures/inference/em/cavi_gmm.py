"""Pure coordinate-ascent steps of the Bayesian Gaussian mixture (Bishop 2006, section 10.2).

The "E-step" updates ``q(assignment)`` given ``q(weights, means, precisions)`` (the
responsibilities, Bishop 2006 eq. 10.46-10.49, from
:func:`ppl_mixtures.models.bayesian_gmm.expected_log_joint`) and returns their weighted
sufficient statistics; the "M-step" updates ``q(weights, means, precisions)`` from them
(eq. 10.58-10.63; Blei & Jordan 2006 eq. 18-19 for the sticks). Both run under the shared EM
loop (:func:`ppl_mixtures.inference.em.run_em`), which sees the bound of scikit-learn's
``BayesianGaussianMixture``: after the E-step of iteration t, the bound at the
responsibilities of that E-step and the ``q`` of the M-step that follows, with the constants
dropped (:func:`ppl_mixtures.models.bayesian_gmm.sklearn_lower_bound`). That bound is a total
over the rows, not a mean: :class:`CAVIStats` carries ``n_samples = 1`` so that the loop's
``tol`` applies to the total, scikit-learn's rule.

``reg_covar`` is added to the scatter matrices before the update, as scikit-learn does (the
update is then not the exact coordinate-ascent optimum, and the bound may dip by rounding-size
amounts); ``reg_covar = 0`` gives exact CAVI, whose bound never decreases.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ppl_mixtures.models import bayesian_gmm as bgmm
from ppl_mixtures.models.bayesian_gmm import BayesianGMMPriors, VariationalParams

#: Floor on each component's weighted count, as scikit-learn adds (10 * eps).
_NK_FLOOR_FACTOR = 10.0


@dataclass
class CAVIStats:
    """Weighted sufficient statistics of one E-step, and the bound after the next M-step.

    Attributes
    ----------
    n_samples : float
        1: the bound is a total, compared as such with ``tol`` (see the module docstring).
    log_likelihood : Tensor, shape ()
        scikit-learn's lower bound at these responsibilities and the next ``q``.
    total_weight : Tensor, shape ()
        ``sum_n w_n``.
    resp_sum : Tensor, shape (K,)
        ``N_k = sum_n w_n r_nk``.
    first_moment : Tensor, shape (K, D)
        ``sum_n w_n r_nk (x_n - shift_k)``.
    second_moment : Tensor, shape (K, D, D) (full, tied) or (K, D) (diag, spherical)
        ``sum_n w_n r_nk (x_n - shift_k)(x_n - shift_k)^T`` (its diagonal for diagonal types).
    shift : Tensor, shape (K, D)
        The means of the ``q`` of the E-step (moments about them lose no digits).
    entropy : Tensor, shape ()
        ``-sum_n w_n sum_k r_nk log r_nk``.
    """

    n_samples: float
    log_likelihood: Tensor
    total_weight: Tensor
    resp_sum: Tensor
    first_moment: Tensor
    second_moment: Tensor
    shift: Tensor
    entropy: Tensor


def responsibilities(x: Tensor, q: VariationalParams) -> tuple[Tensor, Tensor]:
    """The CAVI update of ``q(assignment)``: ``(r (N, K), log sum_k exp E log p(x_n, k))``."""
    log_joint = bgmm.expected_log_joint(x, q)
    log_norm = torch.logsumexp(log_joint, -1)
    return (log_joint - log_norm[:, None]).exp(), log_norm


def statistics(x: Tensor, resp: Tensor, shift: Tensor, covariance_type: str,
               sample_weight: Tensor | None = None) -> CAVIStats:
    """Weighted sufficient statistics of ``resp`` about ``shift`` (bound not yet set).

    Parameters
    ----------
    x : Tensor, shape (N, D)
    resp : Tensor, shape (N, K)
    shift : Tensor, shape (K, D)
    covariance_type : str
    sample_weight : Tensor, shape (N,), optional
    """
    weighted = resp if sample_weight is None else resp * sample_weight[:, None]
    resp_sum = weighted.sum(0)
    first = weighted.T @ x - resp_sum[:, None] * shift
    if covariance_type in ("full", "tied"):
        second = torch.stack([((x - s).T * w) @ (x - s)
                              for s, w in zip(shift, weighted.T, strict=True)])
    else:
        second = weighted.T @ x.square() - 2.0 * shift * (weighted.T @ x) + (
            resp_sum[:, None] * shift.square())
    return CAVIStats(1.0, x.new_zeros(()), resp_sum.sum(), resp_sum, first, second, shift,
                     bgmm.entropy_sum(resp, sample_weight))


def _moments(stats: CAVIStats, covariance_type: str,
             reg_covar: float) -> tuple[Tensor, Tensor, Tensor]:
    """``N_k`` (floored), the means ``x_k`` and scikit-learn's ``S_k`` (+ ``reg_covar``)."""
    eps = torch.finfo(stats.resp_sum.dtype).eps
    counts = stats.resp_sum + _NK_FLOOR_FACTOR * eps
    offset = stats.first_moment / counts[:, None]
    centre = stats.shift + offset
    if covariance_type in ("full", "tied"):
        scatter = (stats.second_moment / counts[:, None, None]
                   - offset[:, :, None] * offset[:, None, :])
        if covariance_type == "tied":
            scatter = (counts[:, None, None] * scatter).sum(0) / counts.sum()
        eye = torch.eye(scatter.shape[-1], dtype=scatter.dtype, device=scatter.device)
        return counts, centre, scatter + reg_covar * eye
    scatter = stats.second_moment / counts[:, None] - offset.square() + reg_covar
    if covariance_type == "spherical":
        scatter = scatter.mean(-1)
    return counts, centre, scatter


def weight_concentration(counts: Tensor, priors: BayesianGMMPriors) -> Tensor:
    """``q`` of the weights: Beta sticks ``(1 + N_k, alpha + sum_{j>k} N_j)`` as (2, K)
    (Blei & Jordan 2006, eq. 18-19), or Dirichlet ``alpha + N_k`` (Bishop 2006, eq. 10.58)."""
    alpha = priors.weight_concentration
    if priors.weight_prior_type == "dirichlet_process":
        later = counts.flip(0).cumsum(0).flip(0) - counts
        return torch.stack([1.0 + counts, alpha + later])
    return alpha + counts


def m_step(stats: CAVIStats, priors: BayesianGMMPriors, reg_covar: float) -> VariationalParams:
    """The CAVI update of ``q(weights, means, precisions)`` (Bishop 2006, eq. 10.58-10.63).

    Per covariance type (the variational families of :mod:`ppl_mixtures.models.bayesian_gmm`):
    ``W_k^-1 = W0^-1 + N_k S_k + beta0 N_k / beta_k (x_k - m0)(x_k - m0)^T`` and ``nu_k = nu0 +
    N_k``; tied averages both over components (one shared factor); diag keeps the diagonal of
    ``W_k^-1``, spherical its mean diagonal.
    """
    covariance_type = priors.covariance_type
    counts, centre, scatter = _moments(stats, covariance_type, reg_covar)
    beta0, mean0, dof0 = priors.mean_precision, priors.mean, priors.degrees_of_freedom
    beta = beta0 + counts
    means = (beta0 * mean0 + counts[:, None] * centre) / beta[:, None]
    offset = centre - mean0
    shrink = beta0 * counts / beta  # beta0 N_k / beta_k
    if covariance_type == "full":
        scale_inverse = (priors.covariance + counts[:, None, None] * scatter
                         + shrink[:, None, None] * offset[:, :, None] * offset[:, None, :])
        dof = dof0 + counts
        covariances = scale_inverse / dof[:, None, None]
    elif covariance_type == "tied":
        n_components = counts.shape[0]
        dof = dof0 + counts.sum() / n_components
        scale_inverse = (priors.covariance + scatter * counts.sum() / n_components
                         + (shrink[:, None] * offset).T @ offset / n_components)
        covariances = scale_inverse / dof
    elif covariance_type == "diag":
        dof = dof0 + counts
        covariances = (priors.covariance + counts[:, None] * (
            scatter + (beta0 / beta)[:, None] * offset.square())) / dof[:, None]
    else:
        dof = dof0 + counts
        covariances = (priors.covariance + counts * (
            scatter + beta0 / beta * offset.square().mean(-1))) / dof
    return VariationalParams(weight_concentration(counts, priors), beta, means, dof,
                             covariances, covariance_type, priors.weight_prior_type)


def e_step(x: Tensor, q: VariationalParams, priors: BayesianGMMPriors, reg_covar: float,
           sample_weight: Tensor | None = None) -> CAVIStats:
    """Responsibilities at ``q``, their statistics, and scikit-learn's bound after the update.

    Parameters
    ----------
    x : Tensor, shape (N, D)
    q : VariationalParams
    priors : BayesianGMMPriors
    reg_covar : float
    sample_weight : Tensor, shape (N,), optional

    Returns
    -------
    CAVIStats
    """
    resp, _ = responsibilities(x, q)
    stats = statistics(x, resp, q.means, priors.covariance_type, sample_weight)
    following = m_step(stats, priors, reg_covar)
    stats.log_likelihood = bgmm.sklearn_lower_bound(stats.entropy, following)
    return stats


def initial_params(x: Tensor, resp: Tensor, priors: BayesianGMMPriors, reg_covar: float,
                   sample_weight: Tensor | None = None) -> VariationalParams:
    """``q`` of the globals from initial responsibilities: one update (scikit-learn's
    ``_initialize``)."""
    shift = x.new_zeros(resp.shape[1], x.shape[1]) + x.mean(0)
    return m_step(statistics(x, resp, shift, priors.covariance_type, sample_weight),
                  priors, reg_covar)


def make_steps(priors: BayesianGMMPriors, reg_covar: float,
               ) -> tuple[Callable[..., CAVIStats], Callable[[CAVIStats], VariationalParams]]:
    """``(e_step(x, q, weights=None), m_step(stats))`` with the priors and ``reg_covar`` bound,
    as the EM loop takes them (the data source passes the rows' weights as ``weights``)."""
    def bound_e_step(x: Tensor, q: VariationalParams,
                     weights: Tensor | None = None) -> CAVIStats:
        return e_step(x, q, priors, reg_covar, weights)

    def bound_m_step(stats: CAVIStats) -> VariationalParams:
        return m_step(stats, priors, reg_covar)

    return bound_e_step, bound_m_step


__all__ = ["CAVIStats", "e_step", "initial_params", "m_step", "make_steps", "responsibilities",
           "statistics", "weight_concentration"]
