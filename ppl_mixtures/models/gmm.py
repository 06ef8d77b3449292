"""The Gaussian mixture model: parameters, deterministic helpers, Pyro model and guides.

Generative model (Balshaw 2022, eqs. 1-10)::

    weights            ~ Dirichlet(alpha)                     site "weights",       (K,)
    means[k]           ~ Normal(m0, s0)                       site "means",         (K, D)
    variances[...]     ~ InverseGamma(a, b)                   site "variances",     see below
    corr_cholesky[...] ~ LKJCholesky(D, eta)                  site "corr_cholesky", tied/full only
    assignment[n]      ~ Categorical(weights)  (enumerated)   site "assignment",    (N,)
    obs[n]             ~ Normal(means[assignment[n]], Sigma[assignment[n]])   site "obs", (N, D)

The five covariance constraints of Balshaw (2022, section 1) and the shape of ``covariances`` in
:class:`GMMParams` (the same as scikit-learn's ``covariances_``; ``tied_diag`` is ours):

=============  ===============  =====================================================
type           covariances      meaning
=============  ===============  =====================================================
spherical      (K,)             Sigma_k = v_k I
diag           (K, D)           Sigma_k = diag(v_k)
tied_diag      (D,)             Sigma_k = diag(v) for every k
tied           (D, D)           Sigma_k = Sigma for every k
full           (K, D, D)        Sigma_k free (positive definite)
=============  ===============  =====================================================

In the Pyro model the covariance is split into per-feature ``variances`` and, for ``tied``
and ``full``, the Cholesky factor of the correlation matrix, so that ``scale_tril =
diag(sqrt(variances)) @ corr_cholesky``. :func:`params_to_sites` and :func:`sites_to_params`
convert between the two.

The E-step of EM (:mod:`ppl_mixtures.inference.em.gmm`) takes its log densities from
:func:`log_joint`, and the Pyro model's marginal likelihood is held equal to it in the tests.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, fields

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoDelta, AutoNormal, init_to_value
from pyro.ops.indexing import Vindex
from torch import Tensor

from ppl_mixtures.models import _sites
from ppl_mixtures.models._observation import TableObservation
from ppl_mixtures.models._sites import ComponentParams, DataPlateModel
from ppl_mixtures.models.priors import GMM_GLOBAL_SITES, default_gmm_priors

COVARIANCE_TYPES = ("spherical", "diag", "tied_diag", "tied", "full")
#: Covariance types whose components are diagonal (cheap log densities, no Cholesky).
DIAGONAL_TYPES = ("spherical", "diag", "tied_diag")
#: Covariance types that are shared by all components.
TIED_TYPES = ("tied_diag", "tied")


@dataclass
class GMMParams(ComponentParams):
    """Parameters of a Gaussian mixture.

    Attributes
    ----------
    weights : Tensor, shape (n_components,)
        Mixing proportions, positive, summing to one.
    means : Tensor, shape (n_components, n_features)
        Component means.
    covariances : Tensor
        Shape by ``covariance_type``: spherical (K,), diag (K, D), tied_diag (D,),
        tied (D, D), full (K, D, D).
    covariance_type : str
        One of :data:`COVARIANCE_TYPES`.
    """

    weights: Tensor
    means: Tensor
    covariances: Tensor
    covariance_type: str

    def tensors(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "covariance_type"}


# ---------------------------------------------------------------------------------------------
# Deterministic helpers
# ---------------------------------------------------------------------------------------------


def diagonal_variances(params: GMMParams) -> Tensor:
    """Per-component variances of a diagonal-family mixture, shape (K, D)."""
    cov, (n_components, n_features) = params.covariances, params.means.shape
    if params.covariance_type == "spherical":
        return cov[:, None].expand(n_components, n_features)
    if params.covariance_type == "diag":
        return cov
    if params.covariance_type == "tied_diag":
        return cov.expand(n_components, n_features)
    raise ValueError(f"{params.covariance_type!r} is not a diagonal covariance type")


def expansion_center(means: Tensor, precisions: Tensor) -> Tensor:
    """The centre ``c`` (D,) about which a diagonal-family mixture's distances are expanded:
    per feature, the precision-weighted mean of the component means (``sum_k P_ki mu_ki /
    sum_k P_ki``; ``precisions`` (K, D), or (K, 1) for spherical variances), outside autograd.

    The expansion ``P (x - mu)^2 = P xc^2 - 2 P (mu - c) xc + P (mu - c)^2`` (``xc = x - c``)
    rounds in proportion to ``P (mu - c)^2`` for the rows near ``mu``. Weighting by precision
    keeps ``c`` next to the means of the tightest components: in scikit-learn's digits, blank
    pixels take variances at the ``reg_covar`` floor (``P`` ~ 1e6); about the plain mean of
    the means their float32 log densities were off by whole nats. Any centre gives the same
    densities in exact arithmetic; a non-finite one (an infinite precision) falls back to the
    plain mean.
    """
    means, precisions = means.detach(), precisions.detach()
    weighted = (precisions * means).sum(0) / precisions.sum(0)
    return torch.where(torch.isfinite(weighted), weighted, means.mean(0))


def covariance_matrices(params: GMMParams) -> Tensor:
    """Full covariance matrices of every component, shape (K, D, D)."""
    n_components, n_features = params.means.shape
    if params.covariance_type in DIAGONAL_TYPES:
        return torch.diag_embed(diagonal_variances(params))
    if params.covariance_type == "tied":
        return params.covariances.expand(n_components, n_features, n_features)
    return params.covariances


class CovarianceJitterWarning(RuntimeWarning):
    """A covariance matrix needed jitter on its diagonal before it would factorise."""


#: Jitter tries of :func:`factorise`, in powers of ten from ``D * eps * mean(diag)``.
_JITTER_TRIES = 6


def factorise(covariances: Tensor, max_tries: int = _JITTER_TRIES,
              ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Float64 Cholesky factors of ``covariances``, adding the least jitter that lets each one
    factorise.

    The factorisation always runs in float64, whatever the covariances' dtype (D x D work is
    cheap next to the N x K x D passes). A matrix that still fails gets ``10^j * D * eps *
    mean(diag)`` added to its diagonal, ``j = 0, 1, ...``, with ``eps`` of its own dtype: the
    rounding it carries (a float32 matrix stored from a rank-deficient scatter has eigenvalues
    a few rounding errors below zero). Matrices that factorise are returned untouched.

    Parameters
    ----------
    covariances : Tensor, shape (..., D, D)
    max_tries : int
        Jitter sizes tried after the plain factorisation.

    Returns
    -------
    covariances : Tensor, shape (..., D, D)
        In their own dtype, jittered where needed.
    factors : Tensor of float64, shape (..., D, D)
        Lower Cholesky factors of the returned covariances (meaningless where ``failing``).
    jitter : Tensor of float64, shape (...)
        What was added to each diagonal (0 where nothing was).
    failing : Tensor of bool, shape (...)
        Matrices that did not factorise even with the largest jitter.
    """
    wide = covariances.to(torch.float64)
    factors, info = torch.linalg.cholesky_ex(wide)
    failing = info != 0
    jitter = torch.zeros(failing.shape, dtype=torch.float64, device=wide.device)
    if not bool(failing.any()):
        return covariances, factors, jitter, failing
    n_features = covariances.shape[-1]
    eye = torch.eye(n_features, dtype=covariances.dtype, device=covariances.device)
    scale = wide.diagonal(dim1=-2, dim2=-1).abs().mean(-1).clamp_min(
        torch.finfo(torch.float64).tiny)
    unit = n_features * torch.finfo(covariances.dtype).eps * scale
    for attempt in range(max_tries + 1):
        jitter = torch.where(failing, jitter + unit * 10.0**attempt, jitter)
        trial = covariances + jitter.to(covariances.dtype)[..., None, None] * eye
        trial_factors, info = torch.linalg.cholesky_ex(trial.to(torch.float64))
        factors = torch.where(failing[..., None, None], trial_factors, factors)
        covariances = torch.where(failing[..., None, None], trial, covariances)
        failing = failing & (info != 0)
        if not bool(failing.any()):
            break
    return covariances, factors, jitter, failing


def _component_names(mask: Tensor) -> str:
    if mask.dim() == 0:
        return "the tied covariance"
    return f"component(s) {mask.nonzero().flatten().tolist()[:10]}"


def float64_factors(covariances: Tensor) -> Tensor:
    """Float64 Cholesky factors of covariances (D, D) or (K, D, D), whatever their dtype.

    A matrix that is not positive definite as stored gets the least jitter that fixes it
    (:func:`factorise`), with a :class:`CovarianceJitterWarning`; one that still fails raises
    a ``ValueError`` naming its component and what to change.
    """
    _, factors, jitter, failing = factorise(covariances)
    dtype = str(covariances.dtype).replace("torch.", "")
    if bool(failing.any()):
        raise ValueError(
            f"the covariance of {_component_names(failing)} is not positive definite (a "
            "component has collapsed onto fewer distinct points than features, or its values "
            f"are not finite) and jitter of up to {float(jitter.max()):.3g} on its diagonal did "
            "not help; increase reg_covar, reduce n_components, or standardise the data"
        )
    if bool((jitter > 0).any()):
        # float64 is already the widest: then only reg_covar (or fewer components) helps
        remedy = ("Increase reg_covar, or fit with dtype='float64', to avoid this"
                  if covariances.dtype != torch.float64 else
                  "Increase reg_covar, or use fewer components, to avoid this")
        warnings.warn(
            f"the {dtype} covariance of {_component_names(jitter > 0)} is not positive definite "
            f"as stored (rounding, or a component with fewer points than features); "
            f"{float(jitter.max()):.3g} was added to its diagonal to factorise it. {remedy}",
            CovarianceJitterWarning, stacklevel=3,
        )
    return factors


def cholesky_factors(params: GMMParams) -> Tensor:
    """Lower Cholesky factors ``L`` with ``L L^T = Sigma``; (D, D) for tied, else (K, D, D).

    Tied and full covariances are factorised in float64 (:func:`factorise`; a matrix that is
    not positive definite as stored gets the least jitter that fixes it, with a
    :class:`CovarianceJitterWarning`); the factors come back in the parameters' dtype.
    Raises a ``ValueError`` naming the component when a covariance cannot be factorised.
    """
    if params.covariance_type in DIAGONAL_TYPES:
        return torch.diag_embed(diagonal_variances(params).sqrt())
    return float64_factors(params.covariances).to(params.covariances.dtype)


def whitening(params: GMMParams, factors: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Inverse Cholesky factors ``L^-1`` and ``log |Sigma^-1|`` of a tied or full mixture.

    The D x D factorisations run in float64 whatever the data's dtype (they are cheap next to
    the N x K x D work), so float32 fits with many features and near-singular covariances
    stay finite; the results come back in the parameters' dtype.

    Parameters
    ----------
    params : GMMParams
    factors : Tensor, optional
        Cholesky factors of the covariances when they are at hand (the Pyro model's
        ``scale_tril``): used instead of factorising ``Sigma = L L^T`` again, which in float32
        loses a near-singular covariance's small eigenvalues.

    Returns
    -------
    inverse_factors : Tensor, shape (D, D) for tied, (K, D, D) for full
    log_det_precision : Tensor, shape () for tied, (K,) for full
    """
    dtype = params.covariances.dtype
    if factors is None:
        wide = float64_factors(params.covariances)
    else:
        wide = factors.to(torch.float64)
    eye = torch.eye(params.n_features, dtype=torch.float64, device=wide.device)
    inverse_factors = torch.linalg.solve_triangular(wide, eye, upper=False)
    log_det = -2.0 * wide.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return inverse_factors.to(dtype), log_det.to(dtype)


def _row_chunks(n_rows: int, n_components: int, n_features: int) -> list[slice]:
    """Row slices so that one chunk's (rows, K, D) intermediate stays near 256k elements.

    Small chunks keep the elementwise work in cache: measured on 2 CPU cores, 2^18 elements
    per chunk ran the EM passes 3-4x faster than 2^22 in float64.
    """
    size = max(1, (1 << 18) // max(1, n_components * n_features))
    return [slice(start, min(start + size, n_rows)) for start in range(0, n_rows, size)]


@dataclass
class WhiteningPlan:
    """How a tied or full mixture whitens rows: ``y_nk = L_k^-1 (x_n - mu_k)``.

    Shared by :func:`component_log_prob` and the float32 E-step
    (:mod:`ppl_mixtures.inference.em.gmm`), which takes its moments in this frame.

    Attributes
    ----------
    center : Tensor, shape (D,)
        The mean of the component means; rows are centred on it first (shift-invariance:
        less cancellation far from the origin).
    inverse_factors : Tensor, shape (D, D) for tied, (K, D, D) for full
        ``L^-1`` in the parameters' dtype (:func:`whitening`).
    log_det : Tensor, shape () for tied, (K,) for full
        ``log |Sigma^-1|``.
    whitened_means : Tensor, shape (K, D)
        ``L_k^-1 (mu_k - center)``.
    stacked : Tensor, shape (D, D) for tied, (D, K D) for full, or None
        All whitening maps side by side (one product per chunk of rows); None when they are
        too large to stay in cache and are applied one component at a time.
    """

    center: Tensor
    inverse_factors: Tensor
    log_det: Tensor
    whitened_means: Tensor
    stacked: Tensor | None

    def chunk(self, xc: Tensor) -> Tensor:
        """``y`` of centred rows ``xc`` (n, D) under every component, shape (n, K, D)."""
        n_features = xc.shape[-1]
        whitened = (xc @ self.stacked).view(-1, self.stacked.shape[1] // n_features, n_features)
        return whitened - self.whitened_means

    def component(self, xc: Tensor, index: int) -> Tensor:
        """``y`` of centred rows ``xc`` (n, D) under component ``index`` alone, shape (n, D)."""
        return xc @ self.inverse_factors[index].T - self.whitened_means[index]


def whitening_plan(params: GMMParams, factors: Tensor | None = None) -> WhiteningPlan:
    """The :class:`WhiteningPlan` of a tied or full mixture (``factors``: see :func:`whitening`)."""
    n_components, n_features = params.means.shape
    # the rows' y = L^-1 (x - c) - L^-1 (mu - c) do not depend on the centre c, so it is
    # outside autograd: every derivative is exact and the rows' (N, D) gradient is not taken
    center = params.means.detach().mean(0)
    mc = params.means - center
    inverse_factors, log_det = whitening(params, factors)
    if params.covariance_type == "tied":
        return WhiteningPlan(center, inverse_factors, log_det, mc @ inverse_factors.T,
                             inverse_factors.T)
    whitened_means = (inverse_factors @ mc[:, :, None]).squeeze(-1)  # (K, D)
    stacked = None
    if n_components * n_features**2 <= _STACKED_WHITENING_MAX:
        # all K whitening maps side by side: one (n, D) @ (D, K*D) product per chunk
        stacked = inverse_factors.transpose(-1, -2).permute(1, 0, 2).reshape(n_features, -1)
    return WhiteningPlan(center, inverse_factors, log_det, whitened_means, stacked)


def component_log_prob(x: Tensor, params: GMMParams, factors: Tensor | None = None) -> Tensor:
    """Log density of every sample under every component, ``log N(x_n | mu_k, Sigma_k)``.

    Vectorised over samples and components: diagonal types use three matrix products,
    tied and full types whiten with the inverse Cholesky factors in one matrix product per
    chunk of rows (no (N, K, D, D) tensor is ever built).

    Parameters
    ----------
    x : Tensor, shape (n_samples, n_features)
    params : GMMParams
    factors : Tensor, optional
        Tied and full: the Cholesky factors of the covariances when at hand (see
        :func:`whitening`).

    Returns
    -------
    Tensor, shape (n_samples, n_components)
    """
    n_components, n_features = params.means.shape
    log_2pi = n_features * math.log(2 * math.pi)
    if params.covariance_type in DIAGONAL_TYPES:
        return _diagonal_log_prob(x, params, log_2pi)
    plan = whitening_plan(params, factors)
    xc = x - plan.center
    if plan.stacked is None:
        return 0.5 * (plan.log_det - log_2pi - _per_component_distances(xc, plan))
    distances = []  # autograd-friendly: no out= or in-place ops, so SVI can use it too
    for rows in _row_chunks(x.shape[0], n_components, n_features):
        distances.append(_squared_norm(plan.chunk(xc[rows])))
    return 0.5 * (plan.log_det - log_2pi - torch.cat(distances))


def _diagonal_log_prob(x: Tensor, params: GMMParams, log_2pi: float) -> Tensor:
    """:func:`component_log_prob` of a diagonal-family mixture: one (N, F) @ (F, K) product.

    With ``xc = x - c`` (``c`` the precision-weighted mean of the component means,
    :func:`expansion_center`: less cancellation) and the features ``f = [xc^2, xc]``
    (spherical: ``[|xc|^2, xc]``), the log density is
    ``f @ [-P / 2, P (mu - c)]^T + 0.5 (log|P| - D log 2 pi - (mu - c)^T P (mu - c))``, capped
    at its value for a zero distance (the Mahalanobis distance clamped at zero
    against rounding; the cap is outside autograd). The centre is taken out of autograd too:
    the densities do not depend on it, so every derivative (of any order) at fixed ``c`` is
    the exact one, and the (N, D) features need no gradient unless ``x`` does (SVI of the
    GMM: one product's backward instead of about twenty (N, K) operations).
    """
    spherical = params.covariance_type == "spherical"
    means = params.means
    if spherical:  # one precision per component, (K, 1)
        precisions = params.covariances.reciprocal()[:, None]
        log_det = means.shape[-1] * precisions[:, 0].log()
    else:
        precisions = diagonal_variances(params).reciprocal()  # (K, D)
        log_det = precisions.log().sum(-1)  # log |Sigma_k^-1|
    center = expansion_center(means, precisions)
    xc, mc = x - center, means - center
    squares = (xc * xc).sum(-1, keepdim=True) if spherical else xc * xc
    scaled = mc * precisions  # (K, D)
    top = 0.5 * (log_det - log_2pi)  # the log density at a zero distance, (K,)
    bias = top - 0.5 * (mc * scaled).sum(-1)
    coefficients = torch.cat([-0.5 * precisions, scaled], -1)  # (K, D + 1) or (K, 2D)
    joint = torch.addmm(bias, torch.cat([squares, xc], -1), coefficients.T)  # (N, K)
    # min(joint, top): the cap only takes off rounding (a distance that came out below zero),
    # so it is applied outside autograd and every derivative is the smooth density's own (a
    # row on a mean keeps its curvature; no backward pass over the (N, K) cap)
    return joint - (joint - top).clamp_min(0.0).detach()


#: Above this many numbers in the K whitening maps (8 MB in float64), they are applied one
#: component at a time: side by side they no longer stay in cache and every chunk of rows
#: re-reads them. Measured on one core, full covariances: K = 16, D = 784, N = 1e4 took
#: 21.7 s side by side against 9.0 s one at a time (K = 64, D = 784: 61 s against 10.5 s),
#: while K = 64, D = 32 was faster side by side (1.1 s against 2.1 s at N = 1e5).
_STACKED_WHITENING_MAX = 1 << 20


def _squared_norm(y: Tensor) -> Tensor:
    """``|y|^2`` over the last dimension, smooth at zero: the norm's derivatives are not (its
    second derivative at a row on a mean is NaN), those of the sum of squares are."""
    return (y * y).sum(-1)


def _per_component_distances(xc: Tensor, plan: WhiteningPlan) -> Tensor:
    """Squared Mahalanobis distances ``|L_k^-1 (x_n - mu_k)|^2`` one component at a time,
    (N, K).

    Each (D, D) map is applied to chunks of about 2^18 numbers of rows while it is in cache.
    """
    columns = []
    for index in range(plan.whitened_means.shape[0]):
        parts = [_squared_norm(plan.component(xc[rows], index))
                 for rows in _row_chunks(xc.shape[0], 1, xc.shape[1])]
        columns.append(torch.cat(parts))
    return torch.stack(columns, dim=-1)


def log_joint(x: Tensor, params: GMMParams) -> Tensor:
    """``log pi_k + log N(x_n | mu_k, Sigma_k)``, shape (n_samples, n_components).

    Its ``logsumexp`` over components is the marginal log-likelihood of each sample
    (Balshaw 2022, eq. 10) and its softmax the responsibilities (eq. 17).
    """
    return component_log_prob(x, params) + params.weights.log()


def log_likelihood(x: Tensor, params: GMMParams) -> Tensor:
    """Marginal log-likelihood of every sample, shape (n_samples,)."""
    return torch.logsumexp(log_joint(x, params), dim=-1)


def sample(params: GMMParams, n_samples: int, generator: torch.Generator | None = None):
    """Draw from the mixture by ancestral sampling.

    Returns
    -------
    x : Tensor, shape (n_samples, n_features)
    labels : Tensor of long, shape (n_samples,)
    """
    labels = torch.multinomial(params.weights, n_samples, replacement=True, generator=generator)
    noise = torch.randn(
        n_samples, params.n_features, generator=generator,
        dtype=params.means.dtype, device=params.means.device,
    )
    factors = cholesky_factors(params)
    factors = factors if factors.dim() == 2 else factors[labels]
    return params.means[labels] + (factors @ noise[..., None]).squeeze(-1), labels


# ---------------------------------------------------------------------------------------------
# Pyro sites <-> parameters
# ---------------------------------------------------------------------------------------------


def params_to_sites(params: GMMParams) -> dict[str, Tensor]:
    """The values of the model's global sites that correspond to ``params``."""
    sites = {"weights": params.weights, "means": params.means}
    if params.covariance_type in DIAGONAL_TYPES:
        sites["variances"] = params.covariances
        return sites
    variances = params.covariances.diagonal(dim1=-2, dim2=-1)
    inv_std = variances.rsqrt()
    correlation = params.covariances * inv_std[..., :, None] * inv_std[..., None, :]
    sites["variances"] = variances
    if params.n_features > 1:  # factorised in float64: a float32 correlation may be near-singular
        sites["corr_cholesky"] = float64_factors(correlation).to(correlation.dtype)
    return sites


def factors_from_sites(sites: dict[str, Tensor]) -> Tensor:
    """``diag(sqrt(variances)) @ corr_cholesky``: the Cholesky factors of tied or full
    covariances held as sites (D > 1), shape (D, D) or (K, D, D)."""
    return sites["variances"].sqrt()[..., :, None] * sites["corr_cholesky"]


def sites_to_params(sites: dict[str, Tensor], covariance_type: str) -> GMMParams:
    """Inverse of :func:`params_to_sites`.

    ``Sigma = L L^T`` is multiplied out in float64 and rounded once to the sites' dtype.
    """
    variances = sites["variances"]
    if covariance_type in DIAGONAL_TYPES:
        covariances = variances
    else:
        if "corr_cholesky" in sites:
            factors = factors_from_sites(sites).to(torch.float64)
            covariances = (factors @ factors.transpose(-1, -2)).to(variances.dtype)
        else:  # D = 1
            covariances = variances[..., None]
    return GMMParams(sites["weights"], sites["means"], covariances, covariance_type)


class ComponentObservation(TableObservation):
    """``x | assignment ~ N(mu_assignment, Sigma_assignment)`` scored by :func:`component_log_prob`.

    The observation site of :class:`GaussianMixtureModel` (see
    :class:`~ppl_mixtures.models._observation.TableObservation`): the enumerated ELBO costs a
    few matrix products with EM's own helper instead of a (K, N, D) elementwise graph.

    ``factors`` (optional): the model's ``scale_tril`` of tied or full covariances, which the
    densities use directly instead of factorising ``L L^T`` again (that product, stored in
    float32, is not positive definite any more once a covariance is near-singular).

    ``missing`` (default False): NaN entries of the data are missing and integrated out, each
    row scored on its observed coordinates
    (:func:`ppl_mixtures.models.missing.gmm_component_log_prob`, EM's own density).
    """

    def __init__(self, params: GMMParams, assignment: Tensor, event_size: int,
                 validate_args: bool | None = None, factors: Tensor | None = None,
                 missing: bool = False) -> None:
        self.factors = factors
        self.missing = missing
        super().__init__(params, assignment, event_size, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        return type(self)(self.params, self._expand_assignment(batch_shape), self.event_size,
                          factors=self.factors, missing=self.missing)

    def _table(self, x: Tensor) -> Tensor:
        if self.missing:  # lazy: models.missing imports this module
            from ppl_mixtures.models.missing import gmm_component_log_prob

            return gmm_component_log_prob(x, self.params)
        return component_log_prob(x, self.params, self.factors)

    def _draw(self, labels: Tensor) -> Tensor:
        factors = cholesky_factors(self.params) if self.factors is None else self.factors
        factors = factors if factors.dim() == 2 else factors[labels]
        means = self.params.means
        noise = torch.randn(labels.shape + means.shape[-1:], dtype=means.dtype,
                            device=means.device)
        return means[labels] + (factors @ noise[..., None]).squeeze(-1)


# ---------------------------------------------------------------------------------------------
# Pyro model and guides
# ---------------------------------------------------------------------------------------------


class GaussianMixtureModel(DataPlateModel):
    """The Gaussian mixture as a Pyro model with an enumerated ``"assignment"`` site.

    Parameters
    ----------
    n_components : int
    n_features : int
    covariance_type : str
        One of :data:`COVARIANCE_TYPES`.
    priors : dict[str, Distribution]
        One prior per global site (see :mod:`ppl_mixtures.models.priors`); missing keys are
        an error, so build them with :func:`default_gmm_priors` and override what you like.
    missing : bool, default False
        NaN entries of ``x`` are missing at random and integrated out: ``"obs"`` scores each
        row's observed coordinates (masked Normal for the diagonal types, the marginal
        Gaussian of the observed sub-vector for tied and full), so ``-TraceEnum_ELBO`` with
        :func:`map_guide` is EM's log-likelihood of the observed entries plus the log prior.

    Notes
    -----
    Call it as ``model(x)``, ``model(x, subsample=idx)`` or ``model(n_samples=N)`` (see
    :class:`~ppl_mixtures.models._sites.DataPlateModel`). ``max_plate_nesting`` is 1.
    Site names: ``"weights"``, ``"means"``, ``"variances"``, ``"corr_cholesky"`` (tied and
    full), ``"assignment"``, ``"obs"``; plates ``"components"`` and ``"data"``.
    """

    discrete_sites = ("assignment",)
    _params_to_sites = staticmethod(params_to_sites)

    def __init__(self, n_components: int, n_features: int, covariance_type: str,
                 priors: dict[str, dist.Distribution], missing: bool = False) -> None:
        self.missing = missing
        if covariance_type not in COVARIANCE_TYPES:
            raise ValueError(
                f"covariance_type={covariance_type!r} is not one of {COVARIANCE_TYPES}"
            )
        self.n_components = n_components
        self.n_features = n_features
        self.covariance_type = covariance_type
        needed = [s for s in GMM_GLOBAL_SITES if s != "corr_cholesky"]
        if self._has_correlations:
            needed.append("corr_cholesky")
        _sites.check_priors(priors, needed, "default_gmm_priors")
        self.priors = priors

    @property
    def _has_correlations(self) -> bool:
        """Tied and full covariances carry a correlation site, unless D = 1 (nothing to correlate)."""
        return self.covariance_type in ("tied", "full") and self.n_features > 1

    def _variance_event_shape(self) -> tuple[int, ...]:
        return () if self.covariance_type == "spherical" else (self.n_features,)

    def _sample_globals(self) -> dict[str, Tensor]:
        n_features, tied = self.n_features, self.covariance_type in TIED_TYPES
        sites = {"weights": pyro.sample("weights", self.priors["weights"])}
        variance_prior = _sites.site_distribution(
            self.priors["variances"], self._variance_event_shape(), "variances"
        )
        corr_prior = self.priors.get("corr_cholesky")
        with pyro.plate("components", self.n_components):
            sites["means"] = pyro.sample(
                "means", _sites.site_distribution(self.priors["means"], (n_features,), "means")
            )
            if not tied:
                sites["variances"] = pyro.sample("variances", variance_prior)
                if self.covariance_type == "full" and self._has_correlations:
                    sites["corr_cholesky"] = pyro.sample("corr_cholesky", corr_prior)
        if tied:
            sites["variances"] = pyro.sample("variances", variance_prior)
            if self.covariance_type == "tied" and self._has_correlations:
                sites["corr_cholesky"] = pyro.sample("corr_cholesky", corr_prior)
        return sites

    def _observation(self, sites: dict[str, Tensor], assignment: Tensor) -> dist.Distribution:
        if sites["means"].dim() == 2:  # the usual case: one value of every global site
            params = sites_to_params(sites, self.covariance_type)
            factors = factors_from_sites(sites) if self._has_correlations else None
            return ComponentObservation(params, assignment, self.n_features, factors=factors,
                                        missing=self.missing)
        if self.missing:
            raise ValueError("missing=True scores one value of every global site; vectorised "
                             "particles and batched draws are not supported with missing "
                             "entries (use num_particles=1, or impute the data first)")
        # globals with extra batch dims (vectorised particles, parallel Predictive): those dims
        # sit left of the plate dim that "components" and "data" share, so open a data dim
        # left of the components dim of every per-component site before indexing
        sites = dict(sites)
        sites["means"] = sites["means"].unsqueeze(-3)
        if self.covariance_type not in TIED_TYPES:
            spherical = self.covariance_type == "spherical"
            sites["variances"] = sites["variances"].unsqueeze(-2 if spherical else -3)
            if self._has_correlations:
                sites["corr_cholesky"] = sites["corr_cholesky"].unsqueeze(-4)
        loc = Vindex(sites["means"])[..., assignment, :]
        variances = sites["variances"]
        if self.covariance_type in TIED_TYPES:
            component_variances = variances
        else:
            component_variances = Vindex(variances)[..., assignment] if (
                self.covariance_type == "spherical"
            ) else Vindex(variances)[..., assignment, :]
        if self.covariance_type in DIAGONAL_TYPES:
            scale = component_variances.sqrt()
            if self.covariance_type == "spherical":
                scale = scale[..., None]
            return dist.Normal(loc, scale.expand(loc.shape)).to_event(1)
        if not self._has_correlations:  # D = 1: the scale is the standard deviation
            scale_tril = component_variances.sqrt()[..., None]
            return dist.MultivariateNormal(loc, scale_tril=scale_tril)
        corr = sites["corr_cholesky"]
        if self.covariance_type == "full":
            corr = Vindex(corr)[..., assignment, :, :]
        scale_tril = component_variances.sqrt()[..., :, None] * corr
        return dist.MultivariateNormal(loc, scale_tril=scale_tril)

    def _sample_locals(self, sites: dict[str, Tensor]) -> dist.Distribution:
        return self._observation(sites, _sites.sample_labels("assignment", sites["weights"]))


def map_guide(model: GaussianMixtureModel, init_params: GMMParams) -> AutoDelta:
    """Point masses on the global sites (MAP), started at ``init_params``.

    ``-TraceEnum_ELBO`` with this guide equals ``log p(x | theta) + log p(theta)`` at the
    guide's values: the assignment sites are summed out exactly by enumeration.
    """
    return _sites.point_mass_guide(model, params_to_sites(init_params), model.discrete_sites)


def mean_field_guide(
    model: GaussianMixtureModel, init_params: GMMParams, init_scale: float = 0.01
) -> AutoNormal:
    """Independent Normals on the unconstrained global sites, centred at ``init_params``."""
    return AutoNormal(
        _sites.globals_only(model, model.discrete_sites),
        init_loc_fn=init_to_value(values=_sites.detached_copies(params_to_sites(init_params))),
        init_scale=init_scale,
    )


def guide_params(guide: AutoDelta | AutoNormal, covariance_type: str) -> GMMParams:
    """Point estimate of the parameters held by a guide (the median for ``AutoNormal``).

    Tied and full covariances ``L L^T`` that rounding has left not quite positive definite
    (near-singular ones in float32) get the least jitter that fixes them (:func:`factorise`).
    """
    with torch.no_grad():
        params = sites_to_params(guide.median(), covariance_type)
        if covariance_type not in DIAGONAL_TYPES:
            params.covariances = factorise(params.covariances)[0]
        return params


__all__ = [
    "COVARIANCE_TYPES",
    "CovarianceJitterWarning",
    "GMMParams",
    "GaussianMixtureModel",
    "component_log_prob",
    "covariance_matrices",
    "default_gmm_priors",
    "factorise",
    "float64_factors",
    "factors_from_sites",
    "guide_params",
    "log_joint",
    "log_likelihood",
    "map_guide",
    "mean_field_guide",
    "params_to_sites",
    "sample",
    "sites_to_params",
]
