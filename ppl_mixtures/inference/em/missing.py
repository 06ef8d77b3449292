"""Missing entries (NaN) integrated out exactly: the E-steps of EM on incomplete rows.

A row ``x_n`` with observed coordinates ``o`` and missing ones ``m`` has the likelihood of
its observed sub-vector, ``p(x_o) = sum_k pi_k N(x_o | mu_k,o, Sigma_k,oo)``: the missing
coordinates are marginalised, which is exact under data missing at random. EM treats them as
latent (Ghahramani & Jordan 1994, EM for real-valued missing features): the E-step takes,
per component, the conditional Gaussian of the missing coordinates,

    E[x_m | x_o, k]   = mu_k,m + Sigma_k,mo Sigma_k,oo^-1 (x_o - mu_k,o)
    Cov[x_m | x_o, k] = Sigma_k,mm - Sigma_k,mo Sigma_k,oo^-1 Sigma_k,om

and the expected sufficient statistics are the complete-data ones of the *completed* row
``x^_nk`` (observed coordinates kept, missing ones replaced by their conditional mean), with
the conditional covariance added to the second moments. They are the
:class:`~ppl_mixtures.inference.em.gmm.GMMStats` (and
:class:`~ppl_mixtures.inference.em.mfa.MFAStats`) that the unchanged M-steps consume, so
streams, ranks and restarts work as for complete data.

How the covariance types are handled:

* diagonal types (``spherical``, ``diag``, ``tied_diag``): coordinates are independent given
  the component, so the missing ones are simply left out of the sums (a masked Normal); their
  conditional mean is ``mu_k`` and their conditional variance ``Sigma_k,dd``.
* ``tied`` and ``full``: rows are grouped by *missingness pattern*; every pattern ``p``
  (observed mask ``M_p``) gets, per component, the Cholesky factor of the padded covariance
  ``S_pk = M_p Sigma_k M_p + (I - M_p)``, which is ``Sigma_k,oo`` with ones on the missing
  diagonal (its factor keeps that block structure, so ``log |S_pk| = log |Sigma_k,oo|``). With
  ``c = M_p (x - mu_k)`` and ``u = S_pk^-1 c``, the Mahalanobis distance is ``c^T u`` and
  ``Sigma_k u`` is the completed row minus ``mu_k`` (``x_o - mu_o`` on ``o``, the regression
  on ``m``); the conditional covariance is ``Sigma_k - Sigma_k (S_pk^-1 - (I - M_p))
  Sigma_k``. Rows are processed in blocks sorted by pattern, so the (rows, K, D, D) tables
  of one block are bounded and no (N, K, D, D) tensor exists.
* mixture of factor analysers: ``Sigma_g,oo = Lambda_g,o Lambda_g,o^T + psi_g,o`` keeps its
  low-rank form, so the Woodbury evaluation of :func:`ppl_mixtures.models.mfa.component_terms`
  holds with the precisions of the missing coordinates set to zero; the capacitance
  ``I + Lambda_g^T diag(m_n / psi_g) Lambda_g`` then depends on the row (an r x r matrix
  each). The factors' posterior is that of the observed coordinates, and given ``z`` the
  missing coordinates are ``eta_g,m + Lambda_g,m z`` plus independent noise, which gives
  their expected cross and second moments.

Rows without any missing entry go through the complete-data E-step
(:func:`ppl_mixtures.inference.em.gmm.e_step`) unchanged, and a block without NaN is handed
to it whole: the complete-data path costs what it did. Rows that are entirely missing carry
no information: their log-likelihood is 0 (the density of an empty vector), they add
nothing to the statistics (only to ``n_samples``, so that the mean log-likelihood is that of
:meth:`score`), their responsibilities are the mixing weights and their imputation is the
mixture mean.

Every function takes optional per-row ``weights`` (``sample_weight``): the statistics and the
log-likelihood are sums of ``w_n`` times each row's terms, and ``n_samples`` is ``sum_n w_n``.

The densities of the observed coordinates and the imputation are the generative code's
(:mod:`ppl_mixtures.models.missing`, re-exported here): the Pyro models score incomplete rows
with the same functions (:class:`ppl_mixtures.models.gmm.ComponentObservation` and
:class:`ppl_mixtures.models.mfa.FactorAnalyzerObservation` built with ``missing=True``), so the
EM / ``TraceEnum_ELBO`` identity holds on incomplete data too.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from ppl_mixtures.models.gmm import (
    DIAGONAL_TYPES,
    GMMParams,
    covariance_matrices,
    diagonal_variances,
)
from ppl_mixtures.models.mfa import MFAParams
from ppl_mixtures.models.missing import (  # the densities live with the generative code
    _WIDE,
    _diagonal_log_prob,
    _full_block_terms,
    _mfa_block_terms,
    _pattern_blocks,
    _rows_per_block,
    gmm_component_log_prob,
    gmm_impute,
    gmm_log_joint,
    has_missing,
    mean_impute,
    mfa_component_log_prob,
    mfa_component_terms,
    mfa_impute,
    mfa_log_joint,
    observed_mask,
)

# ---------------------------------------------------------------------------------------------
# Gaussian mixture: E-step
# ---------------------------------------------------------------------------------------------


def _split_rows(x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Observed mask, and the indices of complete, incomplete and entirely missing rows."""
    observed = observed_mask(x)
    counts = observed.sum(-1)
    complete = (counts == x.shape[1]).nonzero().squeeze(-1)
    incomplete = ((counts > 0) & (counts < x.shape[1])).nonzero().squeeze(-1)
    empty = (counts == 0).nonzero().squeeze(-1)
    return observed, complete, incomplete, empty


def _weighted(resp: Tensor, sample_ll: Tensor, weights: Tensor | None):
    if weights is None:
        return resp, sample_ll
    return resp * weights[:, None], sample_ll * weights


def _complete_gmm_stats(x: Tensor, params: GMMParams, weights: Tensor | None):
    from ppl_mixtures.inference.em import gmm as em_gmm

    if weights is None:
        return em_gmm.e_step(x, params)
    resp, sample_ll = em_gmm.responsibilities(x, params)
    resp, sample_ll = _weighted(resp, sample_ll, weights)
    stats = em_gmm.stats_from_responsibilities(x, resp, sample_ll, params)
    return replace(stats, n_samples=float(weights.sum(dtype=_WIDE)))


def gmm_e_step(x: Tensor, params: GMMParams, weights: Tensor | None = None):
    """E-step of the Gaussian mixture on rows with missing (NaN) entries.

    Complete rows go through :func:`ppl_mixtures.inference.em.gmm.e_step`; incomplete rows
    contribute the expected statistics of Ghahramani & Jordan (1994), see the module
    docstring; entirely missing rows add only to ``n_samples``.

    Parameters
    ----------
    x : Tensor, shape (n_samples, n_features)
    params : GMMParams
    weights : Tensor, shape (n_samples,), optional
        Per-row weights (``sample_weight``).

    Returns
    -------
    GMMStats
        The statistics the unchanged M-step consumes.
    """
    from ppl_mixtures.inference.em import gmm as em_gmm

    if weights is None and not has_missing(x):
        return em_gmm.e_step(x, params)
    observed, complete, incomplete, empty = _split_rows(x)
    total = None
    if complete.numel():
        total = _complete_gmm_stats(x[complete], params,
                                    None if weights is None else weights[complete])
    if incomplete.numel():
        stats = _incomplete_gmm_stats(x[incomplete], observed[incomplete], params,
                                      None if weights is None else weights[incomplete])
        total = stats if total is None else total + stats
    if total is None:  # nothing observed at all
        total = _empty_gmm_stats(x, params)
    if empty.numel():
        extra = float(empty.numel()) if weights is None else float(weights[empty].sum(dtype=_WIDE))
        total = replace(total, n_samples=total.n_samples + extra)
    return total


def _empty_gmm_stats(x: Tensor, params: GMMParams):
    from ppl_mixtures.inference.em.gmm import GMMStats, pooled

    k, d = params.means.shape
    full = params.covariance_type not in DIAGONAL_TYPES
    second = x.new_zeros((k, d, d) if full else (k, d), dtype=_WIDE)
    return GMMStats(0.0, x.new_zeros(()), x.new_zeros(k, dtype=_WIDE),
                    x.new_zeros(k, d, dtype=_WIDE), pooled(second, params.covariance_type),
                    params.means)


def _incomplete_gmm_stats(x: Tensor, observed: Tensor, params: GMMParams,
                          weights: Tensor | None):
    """Expected sufficient statistics of rows that each miss some, not all, entries."""
    from ppl_mixtures.inference.em.gmm import GMMStats, pooled

    log_weights = params.weights.to(_WIDE).log()
    n_components, n_features = params.means.shape
    first = x.new_zeros(n_components, n_features, dtype=_WIDE)
    log_likelihood = x.new_zeros((), dtype=_WIDE)
    resp_sum = x.new_zeros(n_components, dtype=_WIDE)
    if params.covariance_type in DIAGONAL_TYPES:
        variances = diagonal_variances(params).to(_WIDE)
        second = x.new_zeros(n_components, n_features, dtype=_WIDE)
        wide_params = params.to(_WIDE)
        size = _rows_per_block(n_components, n_features)
        for start in range(0, x.shape[0], size):
            rows = slice(start, start + size)
            block_observed = observed[rows]
            joint = _diagonal_log_prob(x[rows].to(_WIDE), block_observed, wide_params) + log_weights
            resp, norm = _posterior(joint, None if weights is None else weights[rows])
            log_likelihood += norm
            resp_sum += resp.sum(0)
            # completed rows minus the means: x - mu on o, 0 on m
            centred = torch.where(block_observed[:, None, :],
                                  x[rows].to(_WIDE)[:, None, :] - wide_params.means, 0.0)
            weighted = centred * resp[:, :, None]
            first += weighted.sum(0)
            second += (weighted * centred).sum(0)
            # conditional variance of each missing coordinate: Sigma_k,dd
            second += (resp.T @ (~block_observed).to(_WIDE)) * variances
        return GMMStats(float(_count(x, weights)), log_likelihood.to(x.dtype), resp_sum,
                        first, pooled(second, params.covariance_type), params.means)
    covariances = covariance_matrices(params).to(_WIDE)
    second = x.new_zeros(n_components, n_features, n_features, dtype=_WIDE)
    for rows, patterns, local in _pattern_blocks(observed, n_components):
        block_observed = observed[rows]
        log_prob, completed, inverse = _full_block_terms(
            x[rows], block_observed, params, covariances, patterns, local, completions=True)
        resp, norm = _posterior(log_prob + log_weights,
                                None if weights is None else weights[rows])
        log_likelihood += norm
        resp_sum += resp.sum(0)
        weighted = completed * resp[:, :, None]
        first += weighted.sum(0)
        second += torch.einsum("nki,nkj->kij", weighted, completed)
        # + sum_n r_nk Cov[x_m | x_o, k], one (K, D, D) term per pattern
        pattern_resp = resp.new_zeros(patterns.shape[0], n_components).index_add_(0, local, resp)
        second += _conditional_covariance_sum(covariances, inverse, patterns, pattern_resp)
    return GMMStats(float(_count(x, weights)), log_likelihood.to(x.dtype), resp_sum, first,
                    pooled(second, params.covariance_type), params.means)


def _count(x: Tensor, weights: Tensor | None) -> float:
    return float(x.shape[0]) if weights is None else float(weights.sum(dtype=_WIDE))


def _posterior(joint: Tensor, weights: Tensor | None) -> tuple[Tensor, Tensor]:
    """Responsibilities (times the weights) and the summed (weighted) log-likelihood."""
    norm = torch.logsumexp(joint, dim=-1)
    resp = torch.exp(joint - norm[:, None])
    if weights is not None:
        weights = weights.to(_WIDE)
        return resp * weights[:, None], (norm * weights).sum()
    return resp, norm.sum()


def _conditional_covariance_sum(covariances: Tensor, inverse: Tensor, patterns: Tensor,
                                pattern_resp: Tensor) -> Tensor:
    """``sum_p R_pk (Sigma_k - Sigma_k (S_pk^-1 - (I - M_p)) Sigma_k)``, shape (K, D, D).

    ``inverse``: the ``S_pk^-1`` (P, K, D, D). The inner matrices are added over patterns
    first, so the products with ``Sigma_k`` are taken once per component, not per pattern.
    """
    inverse = inverse - torch.diag_embed(1.0 - patterns.to(inverse.dtype))[:, None]
    inner = torch.einsum("pk,pkij->kij", pattern_resp, inverse)  # (K, D, D)
    return pattern_resp.sum(0)[:, None, None] * covariances - covariances @ inner @ covariances


# ---------------------------------------------------------------------------------------------
# Mixture of factor analysers
# ---------------------------------------------------------------------------------------------


def mfa_e_step(x: Tensor, params: MFAParams, weights: Tensor | None = None):
    """E-step of Ghahramani & Hinton's MFA EM on rows with missing (NaN) entries.

    Complete rows (without weights) go through :func:`ppl_mixtures.inference.em.mfa.e_step`;
    the others contribute the expectations over the factors *and* the missing coordinates
    (see the module docstring). Entirely missing rows add only to ``n_samples``.

    Parameters
    ----------
    x : Tensor, shape (n_samples, n_features)
    params : MFAParams
    weights : Tensor, shape (n_samples,), optional

    Returns
    -------
    MFAStats
    """
    from ppl_mixtures.inference.em import mfa as em_mfa

    if weights is None and not has_missing(x):
        return em_mfa.e_step(x, params)
    observed, complete, incomplete, empty = _split_rows(x)
    total = None
    if complete.numel() and weights is None:
        total = em_mfa.e_step(x[complete], params)
        rest = incomplete
    else:
        rest = torch.cat([complete, incomplete])
    if rest.numel():
        stats = _incomplete_mfa_stats(x[rest], observed[rest], params,
                                      None if weights is None else weights[rest])
        total = stats if total is None else total + stats
    if total is None:
        total = _incomplete_mfa_stats(x[:0], observed[:0], params, None)
    if empty.numel():
        extra = float(empty.numel()) if weights is None else float(weights[empty].sum(dtype=_WIDE))
        total = replace(total, n_samples=total.n_samples + extra)
    return total


def _incomplete_mfa_stats(x: Tensor, observed: Tensor, params: MFAParams,
                          weights: Tensor | None):
    from ppl_mixtures.inference.em.mfa import MFAStats

    n_components, n_features = params.means.shape
    n_factors = params.n_factors
    loadings = params.loadings.to(_WIDE)
    noise = params.noise_variances.to(_WIDE)
    log_weights = params.weights.to(_WIDE).log()

    def zeros(*shape: int) -> Tensor:
        return x.new_zeros(shape, dtype=_WIDE)

    log_likelihood, resp_sum = zeros(), zeros(n_components)
    first, second = zeros(n_components, n_features), zeros(n_components, n_features)
    cross = zeros(n_components, n_features, n_factors)
    factor_sum = zeros(n_components, n_factors)
    factor_second = zeros(n_components, n_factors, n_factors)
    missing_second = zeros(n_components, n_features, n_factors, n_factors)
    missing_factors = zeros(n_components, n_features, n_factors)
    missing_resp = zeros(n_components, n_features)
    size = _rows_per_block(n_components, max(n_features, n_factors ** 2))
    for start in range(0, x.shape[0], size):
        rows = slice(start, start + size)
        block_observed = observed[rows]
        log_prob, centred, factor_means, factor_covariances = _mfa_block_terms(
            x[rows], block_observed, params)
        resp, norm = _posterior(log_prob + log_weights,
                                None if weights is None else weights[rows])
        log_likelihood += norm
        resp_sum += resp.sum(0)
        weighted = centred * resp[:, :, None]
        first += weighted.sum(0)
        second += (weighted * centred).sum(0)
        cross += torch.einsum("nkd,nkr->kdr", weighted, factor_means)
        weighted_factors = factor_means * resp[:, :, None]
        factor_moment = (factor_covariances * resp[:, :, None, None]
                         + weighted_factors[..., :, None] * factor_means[..., None, :])
        factor_sum += weighted_factors.sum(0)
        factor_second += factor_moment.sum(0)
        # sums over the rows where coordinate d is missing, for E[x_d z^T] = Lambda_d E[zz^T]
        absent = (~block_observed).to(_WIDE)  # (n, D)
        n_rows = absent.shape[0]
        missing_second += (absent.T @ factor_moment.reshape(n_rows, -1)).view(
            n_features, n_components, n_factors, n_factors).transpose(0, 1)
        missing_factors += (absent.T @ weighted_factors.reshape(n_rows, -1)).view(
            n_features, n_components, n_factors).transpose(0, 1)
        missing_resp += (absent.T @ resp).T
    # missing coordinates, given z: x_d - eta_d = Lambda_d z + noise (Ghahramani & Jordan 1994)
    first += (loadings * missing_factors).sum(-1)
    cross += (loadings[..., None, :] @ missing_second).squeeze(-2)
    second += (missing_resp * noise
               + (loadings[..., None, :] @ missing_second @ loadings[..., :, None])[..., 0, 0])
    return MFAStats(_count(x, weights), log_likelihood.to(x.dtype), resp_sum, first, second,
                    cross, factor_sum, factor_second, params.means)


__all__ = [
    "gmm_component_log_prob",
    "gmm_e_step",
    "gmm_impute",
    "gmm_log_joint",
    "has_missing",
    "mean_impute",
    "mfa_component_log_prob",
    "mfa_component_terms",
    "mfa_e_step",
    "mfa_impute",
    "mfa_log_joint",
    "observed_mask",
]
