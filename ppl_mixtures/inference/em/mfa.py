"""Pure E- and M-steps of EM for the mixture of factor analysers.

The algorithm is the exact EM of Ghahramani & Hinton (1996, "The EM algorithm for mixtures of
factor analyzers") for the model of Selosse et al. (2020), section 1: the complete data are the
assignments *and* the factors, and the E-step takes *expectations* of the factors
(``E[z | x_n, g]`` and ``E[z z^T | x_n, g]``), never samples. Each iteration therefore
maximises a lower bound that touches the log-likelihood at the current parameters, so the
observed-data log-likelihood ``l_o(theta; x)`` never decreases (the shared loop checks it).

The M-step updates the loadings and the mean of each component jointly, as one augmented
matrix ``[Lambda_g, eta_g]`` regressed on ``[z; 1]``, then the noise variances; it is the
exact maximiser of the expected complete log-likelihood subject to ``psi_gd >= floor``
(the expected complete log-likelihood is unimodal in each ``psi_gd`` and the regression does
not depend on ``psi``), so the floor against singular components keeps EM monotone.

The E-step takes its densities and factor posteriors from
:func:`ppl_mixtures.models.mfa.component_terms`, the helper the Pyro model scores with,
and returns additive sufficient statistics (moments about the current means, as in
:mod:`ppl_mixtures.inference.em.gmm`), so batches can be summed before one M-step.
No D x D matrix is formed, except in :func:`params_from_responsibilities` (initialisation).

Float32: the statistics are added in float64 and the M-step runs in float64. Where a factor
explains most of a feature's variance (``Lambda_gd^2 / psi_gd`` large), the densities
(``(x - eta)^T psi^-1 (x - eta)`` minus its Woodbury correction) and the noise update
(second moment minus its explained part) are differences of nearly equal numbers, which
float32 loses: such an E-step runs in float64 (:func:`needs_float64`), in blocks of rows.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ppl_mixtures.inference.em.gmm import data_spread, moments, variance_floor
from ppl_mixtures.inference.em.loop import SummedStats
from ppl_mixtures.models.gmm import factorise
from ppl_mixtures.models.mfa import MFAParams, component_terms

#: Pseudo-weight, in units of the dtype's eps, given to every component (as scikit-learn's
#: 10 * eps floor on N_k): a pseudo-point at the current mean with prior factor moments,
#: which keeps the M-step's (r + 1) x (r + 1) systems positive definite for empty components.
_NK_FLOOR_FACTOR = 10.0
#: Rows of one float64 block of a float32 E-step: its (rows, K, r) and (rows, K) tables hold
#: about 2^21 numbers.
_WIDE_BLOCK_ELEMENTS = 1 << 21


@dataclass
class MFAStats(SummedStats):
    """Sufficient statistics of one E-step (sums over samples, so they add across batches).

    Every field but ``shift`` is a sum over samples (``summed_fields``, see
    :class:`~ppl_mixtures.inference.em.loop.SummedStats`). ``shift`` is the E-step's means, a
    function of the parameters alone, so it is the same for every batch and every rank and is
    carried along, not summed.

    With responsibilities ``h_ng``, factor posteriors ``E[z | x_n, g]`` and the shift
    ``s_g`` (the E-step's means):

    Attributes
    ----------
    n_samples, log_likelihood
        The samples summed and ``sum_n log f(x_n; theta)`` at the E-step's parameters.
    resp_sum : Tensor, shape (K,)
        ``N_g = sum_n h_ng``.
    first_moment : Tensor, shape (K, D)
        ``sum_n h_ng (x_n - s_g)``.
    second_moment : Tensor, shape (K, D)
        ``sum_n h_ng (x_n - s_g)^2`` (elementwise; only the diagonal is needed).
    cross_moment : Tensor, shape (K, D, r)
        ``sum_n h_ng (x_n - s_g) E[z | x_n, g]^T``.
    factor_sum : Tensor, shape (K, r)
        ``sum_n h_ng E[z | x_n, g]``.
    factor_second_moment : Tensor, shape (K, r, r)
        ``sum_n h_ng E[z z^T | x_n, g]``.
    shift : Tensor, shape (K, D)
        The means of the E-step's parameters.
    """

    summed_fields = (
        *SummedStats.summed_fields, "resp_sum", "first_moment", "second_moment",
        "cross_moment", "factor_sum", "factor_second_moment",
    )

    resp_sum: Tensor
    first_moment: Tensor
    second_moment: Tensor
    cross_moment: Tensor
    factor_sum: Tensor
    factor_second_moment: Tensor
    shift: Tensor


def responsibilities(x: Tensor, params: MFAParams) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Posterior of the components and of the factors.

    Returns
    -------
    resp : Tensor, shape (n_samples, n_components)
        ``h_ng = p(g | x_n)``.
    sample_log_likelihood : Tensor, shape (n_samples,)
    factor_means : Tensor, shape (n_samples, n_components, n_factors)
        ``E[z | x_n, g]``.
    factor_covariances : Tensor, shape (n_components, n_factors, n_factors)
        ``Cov[z | x_n, g]``.
    """
    log_prob, factor_means, factor_covariances = component_terms(x, params)
    joint = log_prob + params.weights.log()
    norm = torch.logsumexp(joint, dim=-1)
    return torch.exp(joint - norm[:, None]), norm, factor_means, factor_covariances


def needs_float64(params: MFAParams) -> bool:
    """Whether an E-step at ``params`` in their (lower) precision would lose the densities.

    The Mahalanobis distance ``(x - eta)^T psi^-1 (x - eta) - |C^-1 b|^2`` cancels about
    ``max_g,i (Lambda_g^T psi_g^-1 Lambda_g)_ii`` to one, and so does the noise update; above
    ``1 / sqrt(eps)`` of the dtype (2896 in float32) the rounding would exceed ``sqrt(eps)``
    of the result. Always False for float64 parameters.
    """
    dtype = params.loadings.dtype
    if dtype == torch.float64:
        return False
    wide = params.loadings.to(torch.float64)
    ratio = (wide.square() / params.noise_variances.to(torch.float64)[..., None]).sum(-2)
    return bool(ratio.max() * torch.finfo(dtype).eps ** 0.5 > 1.0)


def e_step(x: Tensor, params: MFAParams, weights: Tensor | None = None) -> MFAStats:
    """E-step: expected sufficient statistics of the complete data (assignments and factors).

    Parameters
    ----------
    x : Tensor, shape (n_samples, n_features)
    params : MFAParams
        The current parameters, at which the posteriors are taken; their means are the shift.
    weights : Tensor, shape (n_samples,), optional
        Sample weights, multiplied into the responsibilities once (``n_samples`` becomes
        ``sum_n w_n``): integer weights give the statistics of repeated rows.

    Returns
    -------
    MFAStats
        Sums in float64; ``log_likelihood`` and ``shift`` in the parameters' dtype.
    """
    if not needs_float64(params):
        return _e_step(x, params, weights)
    wide = params.to(torch.float64)
    rows = max(1, _WIDE_BLOCK_ELEMENTS // (params.n_components * (params.n_factors + 1)))
    total = None
    blocks = x.split(rows)
    block_weights = [None] * len(blocks) if weights is None else weights.split(rows)
    for block, block_weight in zip(blocks, block_weights, strict=True):
        stats = _e_step(block.to(torch.float64), wide,
                        None if block_weight is None else block_weight.to(torch.float64))
        total = stats if total is None else total + stats
    return replace(total, log_likelihood=total.log_likelihood.to(params.loadings.dtype),
                   shift=params.means)


def _e_step(x: Tensor, params: MFAParams, weights: Tensor | None = None) -> MFAStats:
    n_samples, n_features = x.shape
    n_components, n_factors = params.n_components, params.n_factors
    wide = torch.float64
    resp, sample_ll, factor_means, factor_covariances = responsibilities(x, params)
    total_weight = float(n_samples)
    if weights is not None:
        resp, sample_ll = resp * weights[:, None], sample_ll * weights
        total_weight = float(weights.sum(dtype=wide))
    first, second = moments(x, resp, params.means, full=False)
    weighted_factors = resp[..., None] * factor_means  # (N, K, r)
    factor_sum = weighted_factors.sum(0, dtype=wide)
    resp_sum = resp.sum(0, dtype=wide)
    # sum_n h (x_n - s_g) E[z]^T as one (D, N) @ (N, K r) product about the centre c, then
    # moved to s_g: subtract (s_g - c) sum_n h E[z]^T
    center = params.means.mean(0)
    cross = ((x - center).T @ weighted_factors.reshape(n_samples, -1)).view(
        n_features, n_components, n_factors
    ).permute(1, 0, 2).to(wide) - (params.means - center).to(wide)[:, :, None] * factor_sum[:, None, :]
    factor_second = (
        resp_sum[:, None, None] * factor_covariances.to(wide)
        + (weighted_factors.permute(1, 2, 0) @ factor_means.permute(1, 0, 2)).to(wide)
    )
    # the likelihood in the data's dtype: the EM loop's rounding slack follows its dtype
    return MFAStats(
        total_weight, sample_ll.sum(dtype=wide).to(x.dtype), resp_sum, first, second,
        cross, factor_sum, factor_second, params.means,
    )


def m_step(stats: MFAStats, reg_covar: float = 1e-6) -> MFAParams:
    """M-step of Ghahramani & Hinton's EM, vectorised over components.

    With ``x'_n = x_n - s_g`` and the augmented factor ``z~ = [z; 1]``::

        pi_g            = N_g / N
        [Lambda_g, c_g] = (sum_n h_ng x'_n E[z~]^T) (sum_n h_ng E[z~ z~^T])^-1
        eta_g           = s_g + c_g
        psi_g           = max(floor, diag(sum_n h_ng x'_n x'_n^T - [Lambda_g, c_g]
                                          sum_n h_ng E[z~] x'_n^T) / N_g)

    Everything runs in float64 (the (r + 1) x (r + 1) systems by Cholesky) and the
    parameters are rounded once to their dtype (that of ``stats.shift``).

    Parameters
    ----------
    stats : MFAStats
    reg_covar : float, default 1e-6
        Floor on every noise variance (the singularity of a component collapsing onto an
        affine subspace), scaled down on data of tiny variance
        (:func:`~ppl_mixtures.inference.em.gmm.variance_floor`); ``0`` falls back to
        ``sqrt(tiny)`` of the dtype (less on data of tiny variance).

    Returns
    -------
    MFAParams
    """
    dtype, wide = stats.shift.dtype, torch.float64
    floor = _noise_floor(reg_covar, data_spread(stats.resp_sum, stats.first_moment,
                                                stats.second_moment, stats.shift), dtype)
    pseudo = _NK_FLOOR_FACTOR * torch.finfo(dtype).eps
    resp_sum = (stats.resp_sum + pseudo).to(wide)
    n_factors = stats.factor_sum.shape[-1]
    eye = torch.eye(n_factors, dtype=wide, device=resp_sum.device)
    factor_sum = stats.factor_sum.to(wide)
    gram = torch.cat(
        [
            torch.cat([stats.factor_second_moment.to(wide) + pseudo * eye,
                       factor_sum[:, :, None]], dim=-1),
            torch.cat([factor_sum[:, None, :], resp_sum[:, None, None]], dim=-1),
        ],
        dim=-2,
    )  # sum_n h E[z~ z~^T], (K, r + 1, r + 1)
    cross = torch.cat(
        [stats.cross_moment, stats.first_moment[:, :, None]], dim=-1
    ).to(wide)  # sum_n h x' E[z~]^T, (K, D, r + 1)
    augmented = torch.cholesky_solve(
        cross.transpose(-1, -2), _gram_factors(gram)
    ).transpose(-1, -2)  # [Lambda_g, c_g], (K, D, r + 1)
    residual = stats.second_moment.to(wide) - (augmented * cross).sum(-1)
    noise_variances = (residual / resp_sum[:, None]).clamp_min(floor)
    return MFAParams(
        weights=(resp_sum / resp_sum.sum()).to(dtype),
        means=(stats.shift.to(wide) + augmented[..., n_factors]).to(dtype),
        loadings=augmented[..., :n_factors].to(dtype).contiguous(),
        noise_variances=noise_variances.to(dtype),
    )


def _noise_floor(reg_covar: float, spread: tuple[float, float], dtype: torch.dtype) -> float:
    """``variance_floor(reg_covar)`` for the data's ``(variance, mean square)``, at least
    ``sqrt(tiny)`` of ``dtype``, a guard lowered for data whose variance is itself near it
    (float32 data scaled by 1e-12)."""
    variance, mean_square = spread
    finfo = torch.finfo(dtype)
    guard = max(finfo.tiny, min(finfo.tiny ** 0.5, finfo.eps * variance))
    return max(variance_floor(reg_covar, variance, mean_square, dtype), guard)


def _gram_factors(gram: Tensor) -> Tensor:
    """Cholesky factors of the factor moments, or a ``ValueError`` naming the components."""
    _, factors, _, failing = factorise(gram)
    if bool(failing.any()):
        components = failing.nonzero().flatten().tolist()[:10]
        raise ValueError(
            f"the factor moments of component(s) {components} are singular or not finite in "
            "the MFA M-step (a component has lost its points, or the data holds extreme "
            "values); increase reg_covar, lower n_components or n_factors, or standardise X"
        )
    return factors


def params_from_responsibilities(
    x: Tensor, resp: Tensor, n_factors: int, reg_covar: float = 1e-6,
    weights: Tensor | None = None,
) -> MFAParams:
    """Initial parameters from (hard or soft) responsibilities: weighted PPCA per component.

    Each component's weighted covariance ``S_g`` (D x D, formed only here) is eigendecomposed;
    ``Lambda_g = U_r (L_r - sigma^2 I)^(1/2)`` from its top r eigenpairs, with ``sigma^2`` the
    mean of the other eigenvalues (the PPCA estimate of Tipping & Bishop 1999), and
    ``psi_g = max(diag(S_g - Lambda_g Lambda_g^T), 0) + reg_covar``.

    Parameters
    ----------
    x : Tensor, shape (n_samples, n_features)
    resp : Tensor, shape (n_samples, n_components)
    n_factors : int
        ``1 <= r < n_features``.
    reg_covar : float, default 1e-6
    weights : Tensor, shape (n_samples,), optional
        Sample weights, multiplied into ``resp``.

    Returns
    -------
    MFAParams
    """
    n_components = resp.shape[1]
    dtype = x.dtype
    if weights is None:
        shift = x.mean(0).expand(n_components, -1)
    else:
        resp = resp * weights[:, None]
        shift = ((weights @ x) / weights.sum()).expand(n_components, -1)
    first, second = moments(x, resp, shift, full=True)
    floor = _noise_floor(reg_covar, data_spread(
        resp.sum(0), first, second.diagonal(dim1=-2, dim2=-1), shift), dtype)
    resp_sum = resp.sum(0) + _NK_FLOOR_FACTOR * torch.finfo(dtype).eps
    offset = first / resp_sum[:, None]
    central = (second / resp_sum[:, None, None]).to(torch.float64) - (
        offset[:, :, None] * offset[:, None, :]
    ).to(torch.float64)
    eigenvalues, eigenvectors = torch.linalg.eigh(0.5 * (central + central.transpose(-1, -2)))
    eigenvalues = eigenvalues.clamp_min(0.0)  # ascending
    sigma2 = eigenvalues[..., :-n_factors].mean(-1, keepdim=True)
    top = (eigenvalues[..., -n_factors:] - sigma2).clamp_min(0.0).sqrt()
    loadings = (eigenvectors[..., -n_factors:] * top[:, None, :]).flip(-1)  # largest first
    residual = central.diagonal(dim1=-2, dim2=-1) - loadings.square().sum(-1)
    noise_variances = residual.clamp_min(0.0) + floor
    return MFAParams(
        weights=resp_sum / resp_sum.sum(),
        means=(shift + offset).to(dtype),
        loadings=loadings.to(dtype).contiguous(),
        noise_variances=noise_variances.to(dtype),
    )


__all__ = ["MFAStats", "e_step", "m_step", "needs_float64", "params_from_responsibilities",
           "responsibilities"]
