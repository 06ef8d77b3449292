"""Densities of rows with missing (NaN) entries, and the conditional means that impute them.

A row ``x_n`` with observed coordinates ``o`` and missing ones ``m`` has the likelihood of
its observed sub-vector, ``p(x_o) = sum_k pi_k N(x_o | mu_k,o, Sigma_k,oo)``: the missing
coordinates are marginalised, which is exact under data missing at random (Ghahramani &
Jordan 1994). These are the deterministic helpers of the generative code: the Pyro models
(:class:`ppl_mixtures.models.gmm.ComponentObservation`,
:class:`ppl_mixtures.models.mfa.FactorAnalyzerObservation` built with ``missing=True``) score
incomplete rows with them, and EM's E-steps on incomplete rows
(:mod:`ppl_mixtures.inference.em.missing`) take their log densities from them, so the
EM / ``TraceEnum_ELBO`` identity holds on incomplete data too. They are differentiable in the
parameters (SVI). How each covariance type is handled is described in
:mod:`ppl_mixtures.inference.em.missing`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from ppl_mixtures.models.gmm import (
    DIAGONAL_TYPES,
    GMMParams,
    component_log_prob,
    covariance_matrices,
    diagonal_variances,
    expansion_center,
)
from ppl_mixtures.models.mfa import MFAParams

#: Entries of one block's (rows, K, D, D) or (rows, K, D) tables (2^20: 8 MB in float64).
_BLOCK_ELEMENTS = 1 << 20
_WIDE = torch.float64


def observed_mask(x: Tensor) -> Tensor:
    """``True`` where ``x`` is observed (not NaN), shape of ``x``."""
    return ~torch.isnan(x)


def has_missing(x: Tensor) -> bool:
    """Whether ``x`` holds any NaN."""
    return bool(torch.isnan(x).any())


def mean_impute(x: Tensor) -> Tensor:
    """``x`` with every NaN replaced by its column's observed mean (0 for an all-NaN column).

    Only for initial values and default priors: the fit itself marginalises.
    """
    if not has_missing(x):
        return x
    observed = observed_mask(x)
    counts = observed.sum(0).clamp_min(1)
    means = torch.where(observed, x, 0.0).sum(0) / counts
    return torch.where(observed, x, means)


def _rows_per_block(n_components: int, width: int) -> int:
    return max(1, _BLOCK_ELEMENTS // max(1, n_components * width))


def _diagonal_log_prob(x: Tensor, observed: Tensor, params: GMMParams) -> Tensor:
    """``log N(x_o | mu_k,o, diag(v_k,o))`` of rows of a diagonal-family mixture, (n, K)."""
    mask = observed.to(params.means.dtype)
    precisions = diagonal_variances(params).reciprocal()  # (K, D)
    center = expansion_center(params.means, precisions)  # as component_log_prob
    xc = torch.where(observed, x - center, 0.0)
    mc = params.means - center
    mahalanobis = (
        (xc * xc) @ precisions.T - 2.0 * xc @ (mc * precisions).T
        + mask @ (mc * mc * precisions).T
    ).clamp_min(0.0)
    log_det = mask @ precisions.log().T  # log |Sigma_k,oo^-1|
    return 0.5 * (log_det - mask.sum(-1, keepdim=True) * math.log(2 * math.pi) - mahalanobis)


def _pattern_blocks(observed: Tensor, n_components: int) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Blocks of rows sorted by missingness pattern.

    Yields ``(rows, patterns, local)``: the rows' indices (n,), the block's distinct observed
    masks (P, D) and each row's index among them (n,).
    """
    n_features = observed.shape[1]
    patterns, inverse = torch.unique(observed, dim=0, return_inverse=True)
    order = torch.argsort(inverse, stable=True)
    size = _rows_per_block(n_components, n_features * n_features)
    for start in range(0, observed.shape[0], size):
        rows = order[start:start + size]
        used, local = torch.unique(inverse[rows], return_inverse=True)
        yield rows, patterns[used], local


def _padded_factors(covariances: Tensor, patterns: Tensor) -> Tensor:
    """Cholesky factors of ``M_p Sigma_k M_p + (I - M_p)``, shape (P, K, D, D).

    ``covariances`` (K, D, D) in float64; ``patterns`` (P, D) observed masks.
    """
    mask = patterns.to(covariances.dtype)
    padded = (covariances[None] * mask[:, None, :, None] * mask[:, None, None, :]
              + torch.diag_embed(1.0 - mask)[:, None])
    return torch.linalg.cholesky(padded)


def _full_block_terms(x: Tensor, observed: Tensor, params: GMMParams, covariances: Tensor,
                      patterns: Tensor, local: Tensor, completions: bool):
    """Log densities (n, K) of a block of rows of a tied or full mixture, in float64, and
    (``completions``) the completed rows minus the means (n, K, D) and the inverses
    ``S_pk^-1`` of the padded covariances (P, K, D, D)."""
    means = params.means.to(_WIDE)
    factors = _padded_factors(covariances, patterns)  # (P, K, D, D)
    rows_factors = factors[local]  # (n, K, D, D), bounded by the block size
    centred = torch.where(observed[:, None, :], x.to(_WIDE)[:, None, :] - means, 0.0)
    whitened = torch.linalg.solve_triangular(rows_factors, centred[..., None],
                                             upper=False)  # L^-1 c, (n, K, D, 1)
    # log |Sigma_oo|, per pattern
    log_det = (2.0 * factors.diagonal(dim1=-2, dim2=-1).log().sum(-1))[local]
    n_observed = observed.sum(-1, keepdim=True).to(_WIDE)
    log_prob = -0.5 * (n_observed * math.log(2 * math.pi) + log_det
                       + whitened.squeeze(-1).square().sum(-1))
    if not completions:
        return log_prob, None, None
    solved = torch.linalg.solve_triangular(rows_factors.transpose(-1, -2), whitened,
                                           upper=True).squeeze(-1)  # u = S^-1 c, (n, K, D)
    regression = torch.einsum("kij,nkj->nki", covariances, solved)
    completed = torch.where(observed[:, None, :], centred, regression)
    return log_prob, completed, torch.cholesky_inverse(factors)


def gmm_component_log_prob(x: Tensor, params: GMMParams) -> Tensor:
    """``log N(x_n,o | mu_k,o, Sigma_k,oo)`` over the observed (non-NaN) entries, (N, K).

    Rows without NaN are scored by :func:`ppl_mixtures.models.gmm.component_log_prob`
    (identical to complete data); an entirely missing row scores 0. Differentiable in the
    parameters.

    Parameters
    ----------
    x : Tensor, shape (n_samples, n_features)
        NaN marks a missing entry.
    params : GMMParams

    Returns
    -------
    Tensor, shape (n_samples, n_components), in the parameters' dtype
    """
    observed = observed_mask(x)
    if bool(observed.all()):
        return component_log_prob(x, params)
    if params.covariance_type in DIAGONAL_TYPES:
        return _diagonal_log_prob(x, observed, params)
    dtype = params.means.dtype
    complete = observed.all(-1)
    parts, indices = [], []
    if bool(complete.any()):
        rows = complete.nonzero().squeeze(-1)
        parts.append(component_log_prob(x[rows], params))
        indices.append(rows)
    incomplete = (~complete).nonzero().squeeze(-1)
    covariances = covariance_matrices(params).to(_WIDE)
    for rows, patterns, local in _pattern_blocks(observed[incomplete], params.n_components):
        rows = incomplete[rows]
        log_prob, _, _ = _full_block_terms(x[rows], observed[rows], params, covariances,
                                           patterns, local, completions=False)
        parts.append(log_prob.to(dtype))
        indices.append(rows)
    order = torch.argsort(torch.cat(indices))
    return torch.cat(parts)[order]


def gmm_log_joint(x: Tensor, params: GMMParams) -> Tensor:
    """``log pi_k + log N(x_n,o | mu_k,o, Sigma_k,oo)``, shape (n_samples, n_components)."""
    return gmm_component_log_prob(x, params) + params.weights.log()


def _mfa_block_terms(x: Tensor, observed: Tensor, params: MFAParams, posterior: bool = True):
    """Woodbury terms over the observed coordinates of a block of rows, in float64.

    Returns
    -------
    log_prob : Tensor, shape (n, K)
        ``log N(x_o | eta_g,o, Lambda_g,o Lambda_g,o^T + psi_g,o)``.
    centred : Tensor, shape (n, K, D)
        ``x - eta_g`` on the observed coordinates, 0 on the missing ones.
    factor_means : Tensor, shape (n, K, r), or None
        ``E[z | x_o, g]``.
    factor_covariances : Tensor, shape (n, K, r, r), or None
        ``Cov[z | x_o, g]`` (it depends on the row's pattern).
    """
    loadings = params.loadings.to(_WIDE)
    noise = params.noise_variances.to(_WIDE)
    n_factors = params.n_factors
    mask = observed.to(_WIDE)
    centred = torch.where(observed[:, None, :], x.to(_WIDE)[:, None, :] - params.means.to(_WIDE),
                          0.0)  # (n, K, D)
    precision_loadings = loadings / noise[..., None]  # (K, D, r)
    # capacitance I + Lambda^T diag(m / psi) Lambda, one per row and component
    outer = (precision_loadings[..., :, None] * loadings[..., None, :])  # (K, D, r, r)
    capacitance = (mask @ outer.permute(1, 0, 2, 3).reshape(mask.shape[1], -1)).view(
        -1, *outer.shape[:1], n_factors, n_factors)
    capacitance = capacitance + torch.eye(n_factors, dtype=_WIDE, device=x.device)
    cholesky = torch.linalg.cholesky(capacitance)  # (n, K, r, r)
    scores = torch.einsum("nkd,kdr->nkr", centred, precision_loadings)  # b
    whitened = torch.linalg.solve_triangular(cholesky, scores[..., None], upper=False)
    distances = (centred.square() / noise).sum(-1) - whitened.squeeze(-1).square().sum(-1)
    log_det = mask @ noise.log().T + 2.0 * cholesky.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    n_observed = mask.sum(-1, keepdim=True)
    log_prob = -0.5 * (n_observed * math.log(2 * math.pi) + log_det + distances.clamp_min(0.0))
    if not posterior:
        return log_prob, centred, None, None
    factor_means = torch.linalg.solve_triangular(cholesky.transpose(-1, -2), whitened,
                                                 upper=True).squeeze(-1)
    return log_prob, centred, factor_means, torch.cholesky_inverse(cholesky)


def mfa_component_log_prob(x: Tensor, params: MFAParams) -> Tensor:
    """``log N(x_n,o | eta_g,o, Sigma_g,oo)`` over the observed (non-NaN) entries, (N, K).

    Complete data is scored by :func:`ppl_mixtures.models.mfa.component_log_prob`; an entirely
    missing row scores 0. Differentiable in the parameters.
    """
    from ppl_mixtures.models.mfa import component_log_prob as complete_log_prob

    observed = observed_mask(x)
    if bool(observed.all()):
        return complete_log_prob(x, params)
    size = _rows_per_block(params.n_components, max(params.n_features,
                                                    params.n_factors ** 2))
    parts = [_mfa_block_terms(x[start:start + size], observed[start:start + size], params,
                              posterior=False)[0]
             for start in range(0, x.shape[0], size)]
    return torch.cat(parts).to(params.means.dtype)


def mfa_component_terms(x: Tensor, params: MFAParams) -> tuple[Tensor, Tensor]:
    """Log densities and factor posterior means over the observed (non-NaN) entries.

    Returns
    -------
    log_prob : Tensor, shape (n_samples, n_components)
    factor_means : Tensor, shape (n_samples, n_components, n_factors)
        ``E[z | x_n,o, g]``; for an entirely missing row, the prior mean 0.
    """
    from ppl_mixtures.models.mfa import component_terms

    if not has_missing(x):
        log_prob, factor_means, _ = component_terms(x, params)
        return log_prob, factor_means
    observed = observed_mask(x)
    size = _rows_per_block(params.n_components, max(params.n_features, params.n_factors ** 2))
    blocks = [_mfa_block_terms(x[start:start + size], observed[start:start + size], params)
              for start in range(0, x.shape[0], size)]
    dtype = params.means.dtype
    return (torch.cat([b[0] for b in blocks]).to(dtype),
            torch.cat([b[2] for b in blocks]).to(dtype))


def mfa_log_joint(x: Tensor, params: MFAParams) -> Tensor:
    """``log pi_g + log N(x_n,o | eta_g,o, Sigma_g,oo)``, shape (n_samples, n_components)."""
    return mfa_component_log_prob(x, params) + params.weights.log()


def gmm_impute(x: Tensor, params: GMMParams) -> Tensor:
    """``E[x_m | x_o]`` under the mixture: responsibility-weighted conditional means.

    Observed entries are returned as they are; an entirely missing row gets the mixture mean.

    Parameters
    ----------
    x : Tensor, shape (n_samples, n_features)
    params : GMMParams

    Returns
    -------
    Tensor, shape (n_samples, n_features), in ``x``'s dtype
    """
    observed = observed_mask(x)
    out = x.clone()
    incomplete = (~observed.all(-1)).nonzero().squeeze(-1)
    if not incomplete.numel():
        return out
    means = params.means.to(_WIDE)
    log_weights = params.weights.to(_WIDE).log()
    if params.covariance_type in DIAGONAL_TYPES:
        wide_params = params.to(_WIDE)
        joint = _diagonal_log_prob(x[incomplete].to(_WIDE), observed[incomplete],
                                   wide_params) + log_weights
        resp = torch.softmax(joint, -1)
        values = resp @ means  # the missing coordinates' conditional mean is mu_k
        out[incomplete] = torch.where(observed[incomplete], x[incomplete], values.to(x.dtype))
        return out
    covariances = covariance_matrices(params).to(_WIDE)
    for rows, patterns, local in _pattern_blocks(observed[incomplete], params.n_components):
        rows = incomplete[rows]
        log_prob, completed, _ = _full_block_terms(x[rows], observed[rows], params, covariances,
                                                   patterns, local, completions=True)
        resp = torch.softmax(log_prob + log_weights, -1)
        values = ((completed + means) * resp[:, :, None]).sum(1)
        out[rows] = torch.where(observed[rows], x[rows], values.to(x.dtype))
    return out


def mfa_impute(x: Tensor, params: MFAParams) -> Tensor:
    """``E[x_m | x_o]`` under the MFA: ``sum_g h_g (eta_g,m + Lambda_g,m E[z | x_o, g])``.

    Observed entries are returned as they are; an entirely missing row gets the mixture mean.
    """
    observed = observed_mask(x)
    out = x.clone()
    incomplete = (~observed.all(-1)).nonzero().squeeze(-1)
    if not incomplete.numel():
        return out
    log_weights = params.weights.to(_WIDE).log()
    size = _rows_per_block(params.n_components, max(params.n_features, params.n_factors ** 2))
    for start in range(0, incomplete.numel(), size):
        rows = incomplete[start:start + size]
        log_prob, _, factor_means, _ = _mfa_block_terms(x[rows], observed[rows], params)
        resp = torch.softmax(log_prob + log_weights, -1)
        conditional = params.means.to(_WIDE) + torch.einsum(
            "kdr,nkr->nkd", params.loadings.to(_WIDE), factor_means)
        values = (conditional * resp[:, :, None]).sum(1)
        out[rows] = torch.where(observed[rows], x[rows], values.to(x.dtype))
    return out


__all__ = [
    "gmm_component_log_prob",
    "gmm_impute",
    "gmm_log_joint",
    "has_missing",
    "mean_impute",
    "mfa_component_log_prob",
    "mfa_component_terms",
    "mfa_impute",
    "mfa_log_joint",
    "observed_mask",
]
