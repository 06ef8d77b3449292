"""The mixture of factor analysers (MFA): parameters, deterministic helpers, Pyro model, guides.

Generative model (Selosse et al. 2020, section 1, with its names: G = K components, J = D features,
R = r factors, eta = means, Lambda = loadings, psi = noise variances, pi = weights)::

    weights            ~ Dirichlet(alpha)                      site "weights",         (K,)
    means[g]           ~ Normal(m0, s0)                        site "means",           (K, D)
    loadings[g]        ~ Normal(0, l0)                         site "loadings",        (K, D, r)
    noise_variances[g] ~ InverseGamma(a, b)                    site "noise_variances", (K, D)
    assignment[n]      ~ Categorical(weights)  (enumerated)    site "assignment",      (N,)
    z[n]               ~ N(0, I_r)             (latent form)   site "z",               (N, r)
    obs[n] = means[g] + loadings[g] z[n] + u[n],   u[n] ~ N(0, diag(noise_variances[g]))
                                                               site "obs",             (N, D)

Integrating ``z`` out gives the Gaussian mixture of Selosse et al. (2020), section 1,
``f(x) = sum_g pi_g N(x; eta_g, Sigma_g)`` with ``Sigma_g = Lambda_g Lambda_g^T + psi_g``.
The Pyro model comes in two forms of the same generative code:

``"collapsed"``
    ``z`` integrated out: ``obs`` is scored by :func:`component_log_prob`, the very helper
    EM's E-step uses (:mod:`ppl_mixtures.inference.em.mfa`), so that ``-TraceEnum_ELBO``
    with :func:`map_guide` equals the EM log-likelihood plus the log prior.
``"latent"``
    ``z`` is a sampled site of the data plate and ``obs | z, g ~ N(eta_g + Lambda_g z, psi_g)``;
    its guide (:class:`LatentFactorGuide`) holds one Gaussian ``q(z_n)`` per data point, and
    its ELBO is a lower bound of the collapsed log joint.

Densities use the low-rank structure of ``Sigma_g`` (Woodbury identity and matrix
determinant lemma with one r x r Cholesky factor per component); no D x D matrix is formed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoDelta
from pyro.ops.indexing import Vindex
from torch import Tensor

from ppl_mixtures.models import _sites
from ppl_mixtures.models._observation import TableObservation
from ppl_mixtures.models._sites import ComponentParams, DataPlateModel, LocalGaussianGuide
from ppl_mixtures.models.gmm import expansion_center
from ppl_mixtures.models.priors import data_moments, default_gmm_priors

#: The two forms of :class:`MixtureOfFactorAnalyzersModel`.
FORMS = ("collapsed", "latent")
#: Names of the global sites of the MFA, in the order the model samples them.
MFA_GLOBAL_SITES = ("weights", "means", "loadings", "noise_variances")


@dataclass
class MFAParams(ComponentParams):
    """Parameters of a mixture of factor analysers.

    Attributes
    ----------
    weights : Tensor, shape (K,)
        Mixing proportions ``pi``, positive, summing to one (K = ``n_components``).
    means : Tensor, shape (K, D)
        Component means ``eta_g`` (D = ``n_features``).
    loadings : Tensor, shape (K, D, r)
        Loading matrices ``Lambda_g`` (r = ``n_factors``).
    noise_variances : Tensor, shape (K, D)
        Diagonals of ``psi_g``, positive.
    """

    weights: Tensor
    means: Tensor
    loadings: Tensor
    noise_variances: Tensor

    @property
    def n_factors(self) -> int:
        return self.loadings.shape[-1]

    def tensors(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# ---------------------------------------------------------------------------------------------
# Deterministic helpers
# ---------------------------------------------------------------------------------------------


@dataclass
class _Capacitance:
    """Per-component r x r quantities of the Woodbury form of ``Sigma_g^-1``.

    Attributes
    ----------
    precision_loadings : Tensor, shape (K, D, r)
        ``psi_g^-1 Lambda_g``.
    cholesky : Tensor, shape (K, r, r)
        Lower Cholesky factor ``C_g`` of the capacitance ``M_g = I_r + Lambda_g^T psi_g^-1
        Lambda_g`` (its eigenvalues are >= 1, so it always factorises).
    log_det : Tensor, shape (K,)
        ``log |Sigma_g| = sum_d log psi_gd + log |M_g|`` (matrix determinant lemma).
    """

    precision_loadings: Tensor
    cholesky: Tensor
    log_det: Tensor


def _capacitance(params: MFAParams) -> _Capacitance:
    """The r x r factorisations, in float64 whatever the parameters' dtype (they are cheap)."""
    dtype = params.loadings.dtype
    noise = params.noise_variances.to(torch.float64)
    loadings = params.loadings.to(torch.float64)
    precision_loadings = loadings / noise[..., None]
    eye = torch.eye(params.n_factors, dtype=torch.float64, device=loadings.device)
    cholesky = torch.linalg.cholesky(eye + loadings.transpose(-1, -2) @ precision_loadings)
    log_det = noise.log().sum(-1) + 2.0 * cholesky.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return _Capacitance(precision_loadings.to(dtype), cholesky.to(dtype), log_det.to(dtype))


def component_terms(
    x: Tensor, params: MFAParams, posterior: bool = True
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Log densities of every sample under every component, and the factors' posteriors.

    With ``b_ng = Lambda_g^T psi_g^-1 (x_n - eta_g)`` and ``M_g = C_g C_g^T`` (see
    :class:`_Capacitance`), the Woodbury identity gives the Mahalanobis distance under
    ``Sigma_g = Lambda_g Lambda_g^T + psi_g`` (Selosse et al. 2020, section 1) as
    ``(x - eta)^T psi^-1 (x - eta) - |C_g^-1 b_ng|^2``, and the posterior of the factors is
    ``z | x_n, g ~ N(M_g^-1 b_ng, M_g^-1)``. Everything is vectorised over samples and
    components: one (N, D) @ (D, K r) product and K batched r x r triangular solves.
    Distances are taken about the precision-weighted mean of the component means
    (:func:`~ppl_mixtures.models.gmm.expansion_center`), so float32 data far from the origin,
    or with noise variances at the floor, keeps its digits.

    Parameters
    ----------
    x : Tensor, shape (n_samples, n_features)
    params : MFAParams
    posterior : bool, default True
        Also return the posterior moments of the factors.

    Returns
    -------
    log_prob : Tensor, shape (n_samples, n_components)
        ``log N(x_n | eta_g, Sigma_g)``.
    posterior_means : Tensor, shape (n_samples, n_components, n_factors), or None
        ``E[z | x_n, g]``.
    posterior_covariances : Tensor, shape (n_components, n_factors, n_factors), or None
        ``Cov[z | x_n, g] = M_g^-1`` (the same for every sample).
    """
    n_components, n_features = params.means.shape
    n_factors = params.n_factors
    precisions = params.noise_variances.reciprocal()  # (K, D)
    # the precision-weighted centre (gmm.expansion_center): noise variances at the floor
    # (constant pixels) cancel whole nats away in float32 about the plain mean of the means
    center = expansion_center(params.means, precisions)
    xc, mc = x - center, params.means - center
    diagonal_distances = (
        (xc * xc) @ precisions.T - 2.0 * xc @ (mc * precisions).T + (mc * mc * precisions).sum(-1)
    )  # (N, K): (x - eta)^T psi^-1 (x - eta)
    cap = _capacitance(params)
    stacked = cap.precision_loadings.permute(1, 0, 2).reshape(n_features, n_components * n_factors)
    offsets = (mc[:, None, :] @ cap.precision_loadings).squeeze(-2)  # (K, r)
    scores = (xc @ stacked).view(-1, n_components, n_factors) - offsets  # b, (N, K, r)
    whitened = torch.linalg.solve_triangular(
        cap.cholesky, scores.permute(1, 2, 0), upper=False
    )  # C^-1 b, (K, r, N)
    mahalanobis = (diagonal_distances - whitened.square().sum(-2).T).clamp_min(0.0)
    log_prob = -0.5 * (n_features * math.log(2 * math.pi) + cap.log_det + mahalanobis)
    if not posterior:
        return log_prob, None, None
    posterior_means = torch.linalg.solve_triangular(
        cap.cholesky.transpose(-1, -2), whitened, upper=True
    ).permute(2, 0, 1)  # M^-1 b, (N, K, r)
    return log_prob, posterior_means, torch.cholesky_inverse(cap.cholesky)


def component_log_prob(x: Tensor, params: MFAParams) -> Tensor:
    """``log N(x_n | eta_g, Lambda_g Lambda_g^T + psi_g)``, shape (n_samples, n_components).

    The low-rank evaluation of :func:`component_terms`; differentiable (SVI uses it).

    Parameters
    ----------
    x : Tensor, shape (n_samples, n_features)
    params : MFAParams
    """
    return component_terms(x, params, posterior=False)[0]


def log_joint(x: Tensor, params: MFAParams) -> Tensor:
    """``log pi_g + log f_g(x_n)``, shape (n_samples, n_components).

    Its ``logsumexp`` over components is each sample's term of the observed-data
    log-likelihood ``l_o(theta; x)`` (Selosse et al. 2020, section 1), its softmax the
    responsibilities.
    """
    return component_log_prob(x, params) + params.weights.log()


def log_likelihood(x: Tensor, params: MFAParams) -> Tensor:
    """Marginal log-likelihood ``log f(x_n; theta)`` of every sample, shape (n_samples,)."""
    return torch.logsumexp(log_joint(x, params), dim=-1)


def covariance_matrices(params: MFAParams) -> Tensor:
    """Dense ``Sigma_g = Lambda_g Lambda_g^T + psi_g``, shape (K, D, D) (for tests and plots)."""
    loadings = params.loadings
    return loadings @ loadings.transpose(-1, -2) + torch.diag_embed(params.noise_variances)


def posterior_factors(x: Tensor, params: MFAParams) -> tuple[Tensor, Tensor]:
    """Posterior of the factors given a sample and its component.

    Returns
    -------
    means : Tensor, shape (n_samples, n_components, n_factors)
        ``E[z | x_n, g] = M_g^-1 Lambda_g^T psi_g^-1 (x_n - eta_g)``.
    covariances : Tensor, shape (n_components, n_factors, n_factors)
        ``Cov[z | x_n, g] = M_g^-1 = (I_r + Lambda_g^T psi_g^-1 Lambda_g)^-1``.
    """
    _, means, covariances = component_terms(x, params)
    return means, covariances


def sample(
    params: MFAParams, n_samples: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Draw from the mixture by the generative process of Selosse et al. (2020), section 1.

    Returns
    -------
    x : Tensor, shape (n_samples, n_features)
    labels : Tensor of long, shape (n_samples,)
    """
    like = params.means
    labels = torch.multinomial(params.weights, n_samples, replacement=True, generator=generator)
    factors = torch.randn(
        n_samples, params.n_factors, generator=generator, dtype=like.dtype, device=like.device
    )
    noise = torch.randn(
        n_samples, params.n_features, generator=generator, dtype=like.dtype, device=like.device
    )
    return _generate(params, labels, factors, noise), labels


def _generate(params: MFAParams, labels: Tensor, factors: Tensor, noise: Tensor) -> Tensor:
    """``x = eta_g + Lambda_g z + psi_g^(1/2) e``: labels (...,), factors (..., r), noise (..., D)."""
    loadings = params.loadings[labels]
    return (
        params.means[labels]
        + (loadings @ factors[..., None]).squeeze(-1)
        + params.noise_variances[labels].sqrt() * noise
    )


# ---------------------------------------------------------------------------------------------
# Priors and Pyro sites <-> parameters
# ---------------------------------------------------------------------------------------------


def default_mfa_priors(
    x: Tensor,
    n_components: int,
    n_factors: int,
    *,
    weight_concentration: float = 1.0,
    mean_scale_factor: float = 3.0,
    loading_scale_factor: float = 1.0,
    variance_concentration: float = 1.0,
    variance_rate_factor: float = 0.01,
    moments: tuple[Tensor, Tensor] | None = None,
) -> dict[str, dist.Distribution]:
    """Weakly informative, data-scaled priors for :class:`MixtureOfFactorAnalyzersModel`.

    Parameters
    ----------
    x : Tensor, shape (n_samples, n_features)
        The data; only its per-feature mean and variance are used, and its dtype and device.
    n_components, n_factors : int
    weight_concentration : float
        Symmetric Dirichlet concentration on the weights (1 = flat on the simplex).
    mean_scale_factor : float
        Each mean is ``Normal(data mean, mean_scale_factor * data std)`` per feature.
    loading_scale_factor : float
        Each loading ``Lambda_g[d, j]`` is ``Normal(0, loading_scale_factor * data std_d)``.
    variance_concentration, variance_rate_factor : float
        Each noise variance is ``InverseGamma(variance_concentration, variance_rate_factor *
        data variance)``, whose mode is away from zero (no collapse onto a subspace).
    moments : (Tensor, Tensor), optional
        Per-feature mean and variance of the data to use instead of ``x``'s (e.g. weighted
        by sample weights, or of all the batches of a stream).

    Returns
    -------
    dict[str, pyro.distributions.Distribution]
        One prior per name of :data:`MFA_GLOBAL_SITES`, for one component's value (the model
        expands it over the components plate); on ``x``'s device and dtype.
    """
    # weights, means and noise variances: the priors of a GMM with diagonal covariances
    diagonal = default_gmm_priors(
        x, n_components, "diag", weight_concentration=weight_concentration,
        mean_scale_factor=mean_scale_factor, variance_concentration=variance_concentration,
        variance_rate_factor=variance_rate_factor, moments=moments,
    )
    data_std = data_moments(x, moments)[1].sqrt()
    loading_scale = (loading_scale_factor * data_std)[:, None].expand(x.shape[-1], n_factors)
    return {
        "weights": diagonal["weights"],
        "means": diagonal["means"],
        "loadings": dist.Normal(torch.zeros_like(loading_scale), loading_scale).to_event(2),
        "noise_variances": diagonal["variances"],
    }


def params_to_sites(params: MFAParams) -> dict[str, Tensor]:
    """The values of the model's global sites that correspond to ``params``."""
    return params.tensors()


def sites_to_params(sites: dict[str, Tensor]) -> MFAParams:
    """Inverse of :func:`params_to_sites`."""
    return MFAParams(**{name: sites[name] for name in MFA_GLOBAL_SITES})


class FactorAnalyzerObservation(TableObservation):
    """``x | assignment ~ N(eta_g, Lambda_g Lambda_g^T + psi_g)`` scored by :func:`component_log_prob`.

    The observation site of the collapsed :class:`MixtureOfFactorAnalyzersModel` (see
    :class:`~ppl_mixtures.models._observation.TableObservation`). With ``missing=True``, NaN
    entries are integrated out: each row is scored on its observed coordinates
    (:func:`ppl_mixtures.models.missing.mfa_component_log_prob`, EM's own density).
    """

    def __init__(self, params: MFAParams, assignment: Tensor, event_size: int,
                 validate_args: bool | None = None, missing: bool = False) -> None:
        self.missing = missing
        super().__init__(params, assignment, event_size, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        return type(self)(self.params, self._expand_assignment(batch_shape), self.event_size,
                          missing=self.missing)

    def _table(self, x: Tensor) -> Tensor:
        if self.missing:  # lazy: models.missing imports this module
            from ppl_mixtures.models.missing import mfa_component_log_prob

            return mfa_component_log_prob(x, self.params)
        return component_log_prob(x, self.params)

    def _draw(self, labels: Tensor) -> Tensor:
        like = self.params.means
        factors = torch.randn(labels.shape + (self.params.n_factors,), dtype=like.dtype,
                              device=like.device)
        noise = torch.randn(labels.shape + like.shape[-1:], dtype=like.dtype, device=like.device)
        return _generate(self.params, labels, factors, noise)


# ---------------------------------------------------------------------------------------------
# Pyro model and guides
# ---------------------------------------------------------------------------------------------


class MixtureOfFactorAnalyzersModel(DataPlateModel):
    """The MFA as a Pyro model with an enumerated ``"assignment"`` site, in two forms.

    Parameters
    ----------
    n_components, n_features, n_factors : int
        K, D and r (``1 <= r < D`` is the estimator's rule; the model only needs r >= 1).
    priors : dict[str, Distribution]
        One prior per name of :data:`MFA_GLOBAL_SITES`; start from :func:`default_mfa_priors`.
        A scalar distribution is broadcast over a site's per-component shape.
    form : {"collapsed", "latent"}, default "collapsed"
        ``"collapsed"`` integrates the factors out; ``"latent"`` samples them at site ``"z"``.
    missing : bool, default False
        Collapsed form only: NaN entries of ``x`` are missing at random and integrated out
        (each row scored on its observed coordinates), as EM's E-step does.

    Notes
    -----
    ``model(x, sample_weight=w)`` weighs row ``n`` by ``w_n`` in both forms. In the latent
    form every term of the row's ELBO is weighted: its scores ``"z"`` by a per-row
    ``poutine.scale`` (the guide :class:`LatentFactorGuide` scales ``q(z_n)`` alike), and
    its enumerated likelihood ``log sum_g pi_g N(x_n | eta_g + Lambda_g z_n, Psi_g)`` by the
    factor site ``"sample_weight"`` of ``(w_n - 1)`` times it (the enumerated ELBO takes no
    per-row scale on enumerated sites), so integer weights give the repeated rows' ELBO.

    Call it as ``model(x)``, ``model(x, subsample=idx)`` or ``model(n_samples=N)`` (see
    :class:`~ppl_mixtures.models._sites.DataPlateModel`). ``max_plate_nesting`` is 1. Sites:
    ``"weights"``, ``"means"``, ``"loadings"``, ``"noise_variances"``, ``"assignment"``, ``"z"``
    (latent form) and ``"obs"``; plates ``"components"`` and ``"data"``.
    """

    discrete_sites = ("assignment",)
    weighs_latent_rows = True
    _params_to_sites = staticmethod(params_to_sites)

    def __init__(
        self,
        n_components: int,
        n_features: int,
        n_factors: int,
        priors: dict[str, dist.Distribution],
        form: str = "collapsed",
        missing: bool = False,
    ) -> None:
        if form not in FORMS:
            raise ValueError(f"form={form!r} is not one of {FORMS}")
        if missing and form != "collapsed":
            raise ValueError("missing=True integrates NaN entries out of the collapsed form; "
                             "build the model with form='collapsed'")
        self.missing = missing
        _sites.check_priors(priors, MFA_GLOBAL_SITES, "default_mfa_priors")
        self.n_components = n_components
        self.n_features = n_features
        self.n_factors = n_factors
        self.priors = priors
        self.form = form
        #: During a weighted call of the latent form: the rows' weights (n,) and scores (n, r).
        self._row_weights: Tensor | None = None
        self._row_scores: Tensor | None = None

    def __call__(self, x: Tensor | None = None, subsample: Tensor | None = None,
                 n_samples: int | None = None, sample_weight: Tensor | None = None) -> Tensor:
        """Run the model (see :class:`~ppl_mixtures.models._sites.DataPlateModel`)."""
        if self.form == "latent" and sample_weight is not None and x is not None:
            self._row_weights = (sample_weight if subsample is None
                                 else sample_weight[subsample])
        try:
            return super().__call__(x, subsample=subsample, n_samples=n_samples,
                                    sample_weight=sample_weight)
        finally:
            self._row_weights = self._row_scores = None

    @property
    def local_sites(self) -> tuple[str, ...]:
        """Sites of the data plate that a guide over the global sites must not see."""
        return ("assignment", "z") if self.form == "latent" else ("assignment",)

    def _sample_globals(self) -> dict[str, Tensor]:
        shapes = {
            "means": (self.n_features,),
            "loadings": (self.n_features, self.n_factors),
            "noise_variances": (self.n_features,),
        }
        sites = {"weights": pyro.sample("weights", self.priors["weights"])}
        with pyro.plate("components", self.n_components):
            for name, shape in shapes.items():
                sites[name] = pyro.sample(
                    name, _sites.site_distribution(self.priors[name], shape, name)
                )
        return sites

    def _collapsed_observation(self, sites: dict[str, Tensor], assignment: Tensor):
        if sites["means"].dim() == 2:  # the usual case: one value of every global site
            return FactorAnalyzerObservation(sites_to_params(sites), assignment, self.n_features,
                                             missing=self.missing)
        if self.missing:
            raise ValueError("missing=True scores one value of every global site; vectorised "
                             "particles and batched draws are not supported with missing "
                             "entries (use num_particles=1, or impute the data first)")
        # globals with extra batch dims (vectorised particles, parallel Predictive): those dims
        # sit left of the components dim, which the data plate shares, so open a data dim
        return dist.LowRankMultivariateNormal(
            Vindex(sites["means"].unsqueeze(-3))[..., assignment, :],
            Vindex(sites["loadings"].unsqueeze(-4))[..., assignment, :, :],
            Vindex(sites["noise_variances"].unsqueeze(-3))[..., assignment, :],
        )

    def _latent_observation(self, sites: dict[str, Tensor], assignment: Tensor):
        like = sites["means"]
        weights = self._row_weights
        with _sites.weighted_rows(weights):
            factors = pyro.sample(
                "z", dist.Normal(like.new_zeros(self.n_factors),
                                 like.new_ones(self.n_factors)).to_event(1),
            )  # (n, r)
        self._row_scores = factors
        loadings = Vindex(sites["loadings"])[..., assignment, :, :]  # (..., n, D, r)
        loc = Vindex(sites["means"])[..., assignment, :] + (loadings @ factors[..., None]).squeeze(-1)
        scale = Vindex(sites["noise_variances"])[..., assignment, :].sqrt()
        return dist.Normal(loc, scale).to_event(1)

    def _sample_locals(self, sites: dict[str, Tensor]) -> dist.Distribution:
        assignment = _sites.sample_labels("assignment", sites["weights"])
        if self.form == "collapsed":
            return self._collapsed_observation(sites, assignment)
        return self._latent_observation(sites, assignment)

    def _weigh_rows(self, sites: dict[str, Tensor], observation: dist.Distribution,
                    observed: Tensor, weights: Tensor) -> None:
        """Collapsed form: the base's factor. Latent form: the factor ``(w_n - 1) log sum_g
        pi_g N(x_n | eta_g + Lambda_g z_n, Psi_g)`` at the row's drawn scores ``z_n`` (its
        scores are scaled by ``w_n`` where they are drawn)."""
        if self.form == "collapsed":
            super()._weigh_rows(sites, observation, observed, weights)
            return
        scores = self._row_scores
        if sites["weights"].dim() != 1 or scores is None or scores.dim() != 2:
            raise ValueError("sample_weight needs one value of every global site (no "
                             "vectorised particles or batched draws)")
        loc = sites["means"] + torch.einsum("gdr,nr->ngd", sites["loadings"], scores)
        log_prob = dist.Normal(loc, sites["noise_variances"].sqrt()).log_prob(
            observed[:, None, :]).sum(-1)  # (n, K)
        log_marginal = torch.logsumexp(log_prob + sites["weights"].log(), dim=-1)
        pyro.factor(self.weight_site, (weights - 1.0) * log_marginal)


def map_guide(model: MixtureOfFactorAnalyzersModel, init_params: MFAParams) -> AutoDelta:
    """Point masses on the global sites (MAP), started at ``init_params``.

    For the collapsed form, ``-TraceEnum_ELBO`` with this guide equals
    ``log p(x | theta) + log p(theta)`` at the guide's values: the assignments are summed
    out exactly by enumeration and the factors are integrated out analytically. The guide
    starts from copies of ``init_params``, which training leaves untouched.
    """
    return _sites.point_mass_guide(model, params_to_sites(init_params), model.local_sites)


class LatentFactorGuide(LocalGaussianGuide):
    """Guide of the latent form: MAP globals and one full-covariance Gaussian ``q(z_n)`` per row.

    ``q(theta, z) = delta(theta) prod_n N(z_n | m_n, S_n S_n^T)`` with ``m_n`` (N, r) and lower
    triangular ``S_n`` (N, r, r) held as Pyro params ``"LatentFactorGuide.z_loc"`` and
    ``"LatentFactorGuide.z_scale_tril"``, indexed by the rows of a subsample. ``q(z_n)`` does
    not depend on the assignment, which the model enumerates; the ELBO is therefore a lower
    bound of the collapsed ``log p(x | theta) + log p(theta)`` that is tight when each row's
    component is certain and ``q(z_n) = p(z_n | x_n, g_n)`` (local parameters are the simplest
    guide that can reach that; an amortised encoder would trade exactness for speed).

    Parameters
    ----------
    model : MixtureOfFactorAnalyzersModel
        A model of form ``"latent"``.
    init_params : MFAParams
        Initial values of the global sites.
    x : Tensor, shape (n_samples, n_features), optional
        When given, ``q(z_n)`` starts at the exact posterior ``p(z_n | x_n, g)`` of the most
        probable component under ``init_params``; otherwise at the prior ``N(0, I_r)``.
    """

    loc_param = "LatentFactorGuide.z_loc"
    scale_tril_param = "LatentFactorGuide.z_scale_tril"
    like_site = "means"

    def __init__(
        self,
        model: MixtureOfFactorAnalyzersModel,
        init_params: MFAParams,
        x: Tensor | None = None,
    ) -> None:
        super().__init__(model, map_guide, init_params, model.n_factors)
        if x is not None:
            with torch.no_grad():
                log_prob, means, covariances = component_terms(x, init_params)
                self._init_locals = _sites.posterior_at_best(
                    log_prob + init_params.weights.log(), means, covariances
                )

    _row_weights: Tensor | None = None

    def __call__(self, x: Tensor | None = None, subsample: Tensor | None = None,
                 n_samples: int | None = None,
                 sample_weight: Tensor | None = None) -> dict[str, Tensor]:
        """Run the guide; with ``sample_weight`` (N,), ``q(z_n)`` is scaled by ``w_n`` as the
        model scales ``p(z_n)``."""
        if sample_weight is not None and x is not None:
            self._row_weights = (sample_weight if subsample is None
                                 else sample_weight[subsample])
        try:
            return super().__call__(x, subsample=subsample, n_samples=n_samples)
        finally:
            self._row_weights = None

    def _sample_scores(self, sites: dict[str, Tensor], scores: dist.Distribution) -> None:
        weights = self._row_weights
        with _sites.weighted_rows(weights):
            sites["z"] = pyro.sample("z", scores)


def guide_params(guide: AutoDelta | LatentFactorGuide) -> MFAParams:
    """The global parameters held by a guide (its point masses)."""
    with torch.no_grad():
        return sites_to_params(guide.median())


__all__ = [
    "FORMS",
    "MFA_GLOBAL_SITES",
    "FactorAnalyzerObservation",
    "LatentFactorGuide",
    "MFAParams",
    "MixtureOfFactorAnalyzersModel",
    "component_log_prob",
    "component_terms",
    "covariance_matrices",
    "default_mfa_priors",
    "guide_params",
    "log_joint",
    "log_likelihood",
    "map_guide",
    "params_to_sites",
    "posterior_factors",
    "sample",
    "sites_to_params",
]
