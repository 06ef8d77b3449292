"""The Bayesian Gaussian mixture: priors, variational parameters, CAVI quantities, Pyro model, guide.

Generative model (Bishop 2006, eqs. 10.37-10.40; Blei & Jordan 2006 for the stick-breaking
weights)::

    sticks[k]      ~ Beta(1, alpha)                          site "sticks",      (K,)  [DP]
    weights        ~ Dirichlet(alpha, ..., alpha)            site "weights",     (K,)  [Dirichlet]
    precisions[k]  ~ Wishart(nu0, W0)                        site "precisions",  (K, D, D)
    means[k]       ~ Normal(m0, (beta0 precisions[k])^-1)    site "means",       (K, D)
    assignment[n]  ~ Categorical(pi)                         site "assignment",  (N,)
    obs[n]         ~ Normal(means[a_n], precisions[a_n]^-1)  site "obs",         (N, D)

With the Dirichlet-process prior, ``pi_k = v_k prod_{j<k} (1 - v_j)`` over the first K sticks
of an infinite stick-breaking process. The variational family puts no mass on components past
K (the truncation of Blei & Jordan 2006 is a truncation of ``q``, not of the model), so the
model's ``p(assignment = k | v) = pi_k`` is kept unnormalised over the K components: the
factor site ``"truncation"`` adds ``log sum_k pi_k`` per row to the normalised
``Categorical``. That is the joint scikit-learn's ``BayesianGaussianMixture`` bounds.

The four covariance types are one model with four variational families (a finding, not a
choice: scikit-learn's updates are exactly the coordinate-ascent optimum of each):

=========  ==================================================  ============================
type       q(precisions[k])                                    ``covariances`` shape
=========  ==================================================  ============================
full       Wishart(nu_k, W_k)                                  (K, D, D)
tied       Wishart(nu, W), one factor shared by all k           (D, D)
diag       Wishart(nu_k, W_k), W_k diagonal                     (K, D)
spherical  Wishart(nu_k, w_k I)                                 (K,)
=========  ==================================================  ============================

and ``q(means[k] | precisions[k]) = Normal(m_k, (beta_k precisions[k])^-1)``. The prior's
scale ``W0`` is the inverse of ``covariance_prior`` (diag: a diagonal, spherical: a multiple
of the identity). ``covariances`` is scikit-learn's ``covariances_``: ``(nu W)^-1``, the
inverse of the expected precision.

Swapped priors (``inference="svi"`` only). The conjugate priors above are the defaults; a
user may replace the prior of any global site with a Pyro distribution
(:func:`check_site_priors`, the contract of :mod:`ppl_mixtures.models.priors`): ``"sticks"``
(one stick, in (0, 1)), ``"weights"`` (the whole simplex, event shape (K,)), ``"precisions"``
(one component's (D, D) positive definite matrix) and ``"means"`` (one component's mean, a
scalar distribution broadcast over the D features or event shape (D,); a swapped ``"means"``
no longer depends on ``precisions``). The guide is unchanged: its family (Beta, Dirichlet,
Wishart, conditional Normal) covers each site's support, and a prior whose support does not
hold every value the guide can draw is refused. :func:`elbo` then takes the swapped sites'
KL terms in closed form where torch knows them (and Wishart against Wishart), by Monte Carlo
over ``q`` otherwise.

Sample weights: ``model(x, sample_weight=w)`` and ``guide(x, sample_weight=w)`` scale every
site of row n by ``w_n`` (``poutine.scale``, rows of weight 0 masked), so the ELBO is ``sum_n
w_n ELBO_n``: integer weights are repeated rows, exactly (the pattern of the GMVAE's model;
the GMM's factor site weighs ``log p(x_n | theta)``, which is this guide's row term only when
``q(assignment)`` is the exact posterior, so it is not used here).

The CAVI steps (:mod:`ppl_mixtures.inference.em.cavi_gmm`) take their expected log densities
from :func:`expected_log_joint`, which reuses :func:`ppl_mixtures.models.gmm.component_log_prob`.
:func:`elbo` is the full evidence lower bound, equal in expectation to ``-TraceEnum_ELBO`` of
:class:`BayesianGaussianMixtureModel` with :class:`VariationalGuide` at the same parameters.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, fields
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.ops.indexing import Vindex
from torch import Tensor

from ppl_mixtures._rng import seeded_global_rng
from ppl_mixtures.models import gmm
from ppl_mixtures.models._sites import ComponentParams, DataPlateModel, weighted_rows
from ppl_mixtures.models.priors import prior_like

COVARIANCE_TYPES = ("spherical", "diag", "tied", "full")
WEIGHT_PRIOR_TYPES = ("dirichlet_process", "dirichlet_distribution")


#: The fields of the containers below that name a family rather than hold a tensor.
_TYPE_FIELDS = ("covariance_type", "weight_prior_type")


def _tensor_fields(container: Any) -> dict[str, Tensor]:
    """The tensor fields of a dataclass container, by name (its type fields left out)."""
    return {f.name: getattr(container, f.name) for f in fields(container)
            if f.name not in _TYPE_FIELDS}


@dataclass
class BayesianGMMPriors:
    """Hyperparameters of the conjugate priors (scikit-learn's ``*_prior_`` attributes).

    Attributes
    ----------
    weight_concentration : Tensor, shape ()
        ``alpha``: the Beta(1, alpha) sticks, or the Dirichlet(alpha, ..., alpha) weights.
    mean_precision : Tensor, shape ()
        ``beta0``.
    mean : Tensor, shape (n_features,)
        ``m0``.
    degrees_of_freedom : Tensor, shape ()
        ``nu0 > D - 1``.
    covariance : Tensor
        ``W0^-1``: full/tied (D, D), diag (D,), spherical ().
    covariance_type : str
    weight_prior_type : str
    """

    weight_concentration: Tensor
    mean_precision: Tensor
    mean: Tensor
    degrees_of_freedom: Tensor
    covariance: Tensor
    covariance_type: str
    weight_prior_type: str

    def tensors(self) -> dict[str, Tensor]:
        return _tensor_fields(self)

    def scale_inverse(self) -> Tensor:
        """``W0^-1`` as a (D, D) matrix."""
        return _as_matrix(self.covariance, self.covariance_type, self.mean.shape[0])


@dataclass
class VariationalParams(ComponentParams):
    """Parameters of ``q`` (scikit-learn's fitted attributes of the same names).

    Attributes
    ----------
    weight_concentration : Tensor
        Dirichlet process: shape (2, K), the Beta parameters ``(a_k, b_k)`` of the sticks;
        Dirichlet distribution: shape (K,).
    mean_precision : Tensor, shape (K,)
        ``beta_k``.
    means : Tensor, shape (K, D)
        ``m_k``.
    degrees_of_freedom : Tensor, shape (K,), or () for tied
        ``nu_k``.
    covariances : Tensor
        ``(nu_k W_k)^-1``: spherical (K,), diag (K, D), tied (D, D), full (K, D, D).
    covariance_type, weight_prior_type : str
    """

    weight_concentration: Tensor
    mean_precision: Tensor
    means: Tensor
    degrees_of_freedom: Tensor
    covariances: Tensor
    covariance_type: str
    weight_prior_type: str

    def tensors(self) -> dict[str, Tensor]:
        return _tensor_fields(self)


# ---------------------------------------------------------------------------------------------
# Swapped priors: checks
# ---------------------------------------------------------------------------------------------

#: The global sites whose prior a user may swap, per weight prior type.
SWAPPABLE_SITES = {"dirichlet_process": ("sticks", "precisions", "means"),
                   "dirichlet_distribution": ("weights", "precisions", "means")}

#: The guide's family on each global site, and the values it draws (for the messages).
_GUIDE_FAMILIES = {"sticks": "Beta, values in (0, 1)",
                   "weights": "Dirichlet, values on the simplex",
                   "precisions": "Wishart, symmetric positive definite (D, D) matrices",
                   "means": "Normal, any real vector"}


def _site_shapes(name: str, n_components: int, n_features: int) -> dict[str, Any]:
    """What a prior of site ``name`` may look like: event shapes, batch shapes, an example."""
    per_component = ((), (n_components,))
    if name == "sticks":
        return {"event": [()], "batch": per_component, "example": "dist.Beta(1.0, 2.0)"}
    if name == "weights":
        return {"event": [(n_components,)], "batch": ((),),
                "example": f"dist.Dirichlet(torch.full(({n_components},), 0.5))"}
    if name == "precisions":
        return {"event": [(n_features, n_features)], "batch": per_component,
                "example": f"dist.Wishart(df, covariance_matrix=torch.eye({n_features}))"}
    return {"event": [(n_features,), ()], "batch": per_component,
            "example": "dist.StudentT(3.0, 0.0, 10.0)"}


def _support_probes(name: str, n_components: int, n_features: int, like: Tensor) -> Tensor:
    """Values the guide can draw at site ``name`` (one component's, or the whole simplex),
    stacked on a leading axis: a prior must hold all of them in its support."""
    options = {"dtype": like.dtype, "device": like.device}
    if name == "sticks":
        return torch.tensor([1e-6, 0.5, 1.0 - 1e-6], **options)
    if name == "weights":
        uniform = torch.full((n_components,), 1.0 / n_components, **options)
        corner = torch.full((n_components,), 1e-6, **options)
        corner[0] = 1.0 - 1e-6 * (n_components - 1)
        return torch.stack([uniform, corner])
    if name == "precisions":
        eye = torch.eye(n_features, **options)
        correlated = 0.1 * eye + 0.9 * torch.ones(n_features, n_features, **options)
        return torch.stack([1e-3 * eye, 1e3 * eye, correlated])
    ones = torch.ones(n_features, **options)
    return torch.stack([0.0 * ones, 1e6 * ones, -1e6 * ones])


def check_site_names(names: Any, weight_prior_type: str) -> None:
    """Raise a ``ValueError`` for a key of a swapped-priors dict that is no swappable site."""
    allowed = SWAPPABLE_SITES[weight_prior_type]
    for name in names:
        if name not in allowed:
            other = [t for t, sites in SWAPPABLE_SITES.items()
                     if name in sites and t != weight_prior_type]
            hint = (f"; {name!r} is a site of weight_concentration_prior_type={other[0]!r}"
                    if other else "")
            raise ValueError(f"priors has a key {name!r}, which is not a global site of this "
                             f"model: use keys among {list(allowed)}{hint}")


def check_site_priors(site_priors: Mapping[str, Any] | None, n_components: int,
                      n_features: int, weight_prior_type: str,
                      like: Tensor) -> dict[str, dist.Distribution]:
    """Check a user's swapped priors and shape them for the model's sites.

    Parameters
    ----------
    site_priors : dict of str to pyro.distributions.Distribution, or None
        Keys among :data:`SWAPPABLE_SITES` of ``weight_prior_type``. ``"sticks"``: one
        stick's prior (event shape (), batch shape () or (K,)); ``"weights"``: event shape
        (K,); ``"precisions"``: event shape (D, D), batch shape () or (K,); ``"means"``: event
        shape (D,), or a scalar distribution (batch shape () or (D,)) broadcast over the
        features.
    n_components, n_features : int
    weight_prior_type : str
    like : Tensor
        The priors are moved to its dtype and device.

    Returns
    -------
    dict of str to Distribution
        The priors as the sites take them (``"means"`` with event shape (D,)).

    Raises
    ------
    ValueError
        Naming the site, the shape found, the shape expected and an example; or the support
        that does not hold the values the guide draws.
    """
    site_priors = dict(site_priors or {})
    check_site_names(site_priors, weight_prior_type)
    checked: dict[str, dist.Distribution] = {}
    for name, prior in site_priors.items():
        if not isinstance(prior, torch.distributions.Distribution):
            raise ValueError(f"priors[{name!r}] is a {type(prior).__name__}; pass a "
                             "pyro.distributions object, e.g. "
                             f"{_site_shapes(name, n_components, n_features)['example']}")
        prior = prior_like(prior, like)
        shapes = _site_shapes(name, n_components, n_features)
        event, batch = tuple(prior.event_shape), tuple(prior.batch_shape)
        if name == "means" and event == () and batch in ((), (n_features,)):
            prior = prior.expand((n_features,)).to_event(1)
        elif event not in shapes["event"] or batch not in shapes["batch"]:
            expected = (f"event_shape {shapes['event'][0]} with batch_shape among "
                        f"{list(shapes['batch'])}")
            if name == "means":
                expected += f", or a scalar distribution (batch_shape () or ({n_features},))"
            raise ValueError(
                f"priors[{name!r}] has batch_shape {batch} and event_shape {event}; expected "
                f"{expected} (K = {n_components} components, D = {n_features} features), "
                f"e.g. {shapes['example']}")
        _check_support(name, prior, n_components, n_features, like)
        checked[name] = prior
    return checked


def _check_support(name: str, prior: dist.Distribution, n_components: int, n_features: int,
                   like: Tensor) -> None:
    """Refuse a prior whose support misses values the guide draws (see
    :func:`_support_probes`), which would make the ELBO ``-inf``."""
    probes = _support_probes(name, n_components, n_features, like)
    probes = probes.reshape(probes.shape[:1] + (1,) * len(prior.batch_shape)
                            + probes.shape[1:])
    try:
        inside = prior.support.check(probes)
    except NotImplementedError:  # a support torch cannot test: the loss will tell
        return
    if not bool(torch.as_tensor(inside).all()):
        raise ValueError(
            f"priors[{name!r}] has support {prior.support}, which does not hold every value "
            f"the variational guide draws at that site ({_GUIDE_FAMILIES[name]}); the guide "
            f"of inference='svi' is fixed, so pass a prior on that set, e.g. "
            f"{_site_shapes(name, n_components, n_features)['example']}")


# ---------------------------------------------------------------------------------------------
# Deterministic helpers: expectations under q, KL terms, bounds
# ---------------------------------------------------------------------------------------------


def _as_matrix(covariance: Tensor, covariance_type: str, n_features: int) -> Tensor:
    """One covariance-like tensor of ``covariance_type`` (without the K axis) as (D, D)."""
    if covariance_type == "spherical":
        eye = torch.eye(n_features, dtype=covariance.dtype, device=covariance.device)
        return covariance * eye
    if covariance_type == "diag":
        return torch.diag_embed(covariance)
    return covariance


def component_dof(q: VariationalParams) -> Tensor:
    """``nu_k`` for every component, shape (K,) (tied: the shared value repeated)."""
    return q.degrees_of_freedom.expand(q.n_components)


def covariance_matrices(q: VariationalParams) -> Tensor:
    """``(nu_k W_k)^-1`` of every component as matrices, shape (K, D, D)."""
    return gmm.covariance_matrices(point_estimate(q))


def point_estimate(q: VariationalParams) -> gmm.GMMParams:
    """The mixture ``(E[pi] normalised, m, E[precision]^-1)``: scikit-learn's ``weights_``,
    ``means_`` and ``covariances_`` (what :meth:`sample` draws from)."""
    return gmm.GMMParams(expected_weights(q), q.means, q.covariances, q.covariance_type)


def log_det_covariances(q: VariationalParams) -> Tensor:
    """``log |(nu_k W_k)^-1|``, shape (K,)."""
    cov, n_features = q.covariances, q.n_features
    if q.covariance_type == "spherical":
        return n_features * cov.log()
    if q.covariance_type == "diag":
        return cov.log().sum(-1)
    log_det = 2.0 * gmm.float64_factors(cov).diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return log_det.to(cov.dtype).expand(q.n_components)


def _half_dof_offsets(dof: Tensor, n_features: int) -> Tensor:
    """``(nu - d) / 2`` for d = 0..D-1, shape (..., D)."""
    offsets = torch.arange(n_features, dtype=dof.dtype, device=dof.device)
    return 0.5 * (dof[..., None] - offsets)


def expected_log_det_precision(q: VariationalParams) -> Tensor:
    """``E_q log |precisions[k]| = sum_d psi((nu - d) / 2) + D log 2 + log |W_k|`` (Bishop 2006,
    eq. 10.65), shape (K,)."""
    dof, n_features = component_dof(q), q.n_features
    log_det_scale = -log_det_covariances(q) - n_features * dof.log()
    return (torch.digamma(_half_dof_offsets(dof, n_features)).sum(-1)
            + n_features * math.log(2.0) + log_det_scale)


def expected_weights(q: VariationalParams) -> Tensor:
    """``E_q[pi]`` normalised over the K components (scikit-learn's ``weights_``), shape (K,)."""
    if q.weight_prior_type == "dirichlet_process":
        a, b = q.weight_concentration
        stick = a / (a + b)
        rest = torch.cat([stick.new_ones(1), torch.cumprod(b / (a + b), 0)[:-1]])
        weights = stick * rest
    else:
        weights = q.weight_concentration
    return weights / weights.sum()


def expected_log_weights(q: VariationalParams) -> Tensor:
    """``E_q log pi_k`` (Bishop 2006, eq. 10.66; Blei & Jordan 2006, eq. 23), shape (K,)."""
    if q.weight_prior_type == "dirichlet_process":
        a, b = q.weight_concentration
        digamma_total = torch.digamma(a + b)
        log_stick = torch.digamma(a) - digamma_total
        log_rest = torch.digamma(b) - digamma_total
        return log_stick + torch.cat([log_stick.new_zeros(1), torch.cumsum(log_rest, 0)[:-1]])
    concentration = q.weight_concentration
    return torch.digamma(concentration) - torch.digamma(concentration.sum())


def expected_component_log_prob(x: Tensor, q: VariationalParams) -> Tensor:
    """``E_q log N(x_n | means[k], precisions[k]^-1)`` (Bishop 2006, eq. 10.64), shape (N, K).

    The Gaussian log density at ``(m_k, E[precision]^-1)`` from
    :func:`ppl_mixtures.models.gmm.component_log_prob`, plus ``(E log |precision| - log
    |E precision|) / 2 - D / (2 beta_k)``.
    """
    n_features = q.n_features
    at_mean = gmm.component_log_prob(x, point_estimate(q))
    log_det_mean_precision = -log_det_covariances(q)
    correction = 0.5 * (expected_log_det_precision(q) - log_det_mean_precision
                        - n_features / q.mean_precision)
    return at_mean + correction


def expected_log_joint(x: Tensor, q: VariationalParams) -> Tensor:
    """``E_q log pi_k + E_q log N(x_n | k)``, shape (N, K): its softmax is the CAVI update of
    ``q(assignment)`` (Bishop 2006, eq. 10.46-10.49)."""
    return expected_component_log_prob(x, q) + expected_log_weights(q)


def scale_tril(q: VariationalParams) -> Tensor:
    """Cholesky factors of the Wishart scales ``W_k``, shape (K, D, D) (tied repeated)."""
    dof = component_dof(q)
    scale_inverse = covariance_matrices(q) * dof[:, None, None]
    inverse = torch.cholesky_inverse(gmm.float64_factors(scale_inverse)).to(dof.dtype)
    return torch.linalg.cholesky(inverse)


def draw_globals(q: VariationalParams, num_samples: int) -> dict[str, Tensor]:
    """``num_samples`` draws of the global sites from ``q`` (torch's global generator).

    Returns
    -------
    dict of str to Tensor
        ``"sticks"`` or ``"weights"`` (S, K), ``"precisions"`` (S, K, D, D), ``"means"``
        (S, K, D).
    """
    shape = (num_samples,)
    sites: dict[str, Tensor] = {}
    if q.weight_prior_type == "dirichlet_process":
        a, b = q.weight_concentration
        sites["sticks"] = dist.Beta(a, b).sample(shape)
    else:
        sites["weights"] = dist.Dirichlet(q.weight_concentration).sample(shape)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Singular sample", UserWarning)
        precisions = torch.distributions.Wishart(component_dof(q), scale_tril=_scale_factors(q),
                                                 validate_args=False).sample(shape)
    factors = torch.linalg.cholesky(q.mean_precision[:, None, None] * precisions)
    noise = torch.randn(precisions.shape[:-1], dtype=q.means.dtype, device=q.means.device)
    sites["precisions"] = precisions
    sites["means"] = q.means + torch.linalg.solve_triangular(
        factors.transpose(-1, -2), noise[..., None], upper=True)[..., 0]
    return sites


def draw_mixtures(q: VariationalParams, num_samples: int) -> list[gmm.GMMParams]:
    """``num_samples`` mixtures drawn from ``q`` (torch's global generator).

    Each is a :class:`~ppl_mixtures.models.gmm.GMMParams` with full covariances, the inverses
    of the drawn precisions, and the drawn weights normalised over the K components.
    """
    sites = draw_globals(q, num_samples)
    weights = (_log_stick_weights(sites["sticks"]).exp() if "sticks" in sites
               else sites["weights"])
    weights = weights / weights.sum(-1, keepdim=True)
    means, precisions = sites["means"], sites["precisions"]
    covariances = torch.cholesky_inverse(torch.linalg.cholesky(precisions))
    return [gmm.GMMParams(weights[s], means[s], covariances[s], "full")
            for s in range(num_samples)]


def _scale_factors(q: VariationalParams) -> Tensor:
    """Cholesky factors of the Wishart scales of every covariance type, (K, D, D)."""
    if q.covariance_type in ("full", "tied"):
        return scale_tril(q)
    return torch.diag_embed((1.0 / (component_dof(q)[:, None] * _diagonal(q))).sqrt())


def _multi_digamma(half_dof: Tensor, n_features: int) -> Tensor:
    return torch.digamma(half_dof[..., None] - 0.5 * torch.arange(
        n_features, dtype=half_dof.dtype, device=half_dof.device)).sum(-1)


def kl_wishart(dof_q: Tensor, scale_inverse_q: Tensor, dof_p: Tensor,
               scale_inverse_p: Tensor) -> Tensor:
    """``KL(Wishart(nu_q, W_q) || Wishart(nu_p, W_p))`` from the inverse scales, shape (...).

    ``+inf`` where ``W_p^-1`` is singular (an improper prior, e.g. the default
    ``covariance_prior`` of data with fewer rows than features).
    """
    n_features = scale_inverse_q.shape[-1]
    factors_q = torch.linalg.cholesky(scale_inverse_q)
    factors_p, info = torch.linalg.cholesky_ex(scale_inverse_p)
    if bool((info != 0).any()):
        return torch.full(torch.broadcast_shapes(dof_q.shape, dof_p.shape,
                                                 scale_inverse_q.shape[:-2]),
                          math.inf, dtype=scale_inverse_q.dtype, device=scale_inverse_q.device)
    log_det_q = 2.0 * factors_q.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # log |W_q^-1|
    log_det_p = 2.0 * factors_p.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    trace = (torch.cholesky_inverse(factors_q) * scale_inverse_p).sum((-1, -2))
    return (0.5 * (dof_q - dof_p) * _multi_digamma(0.5 * dof_q, n_features)
            - torch.mvlgamma(0.5 * dof_q, n_features) + torch.mvlgamma(0.5 * dof_p, n_features)
            + 0.5 * dof_p * (log_det_q - log_det_p) + 0.5 * dof_q * (trace - n_features))


#: Draws of ``q`` for the KL terms of swapped priors that have no closed form.
MONTE_CARLO_DRAWS = 4096


def expected_log_prior(q: VariationalParams, name: str, prior: dist.Distribution) -> Tensor:
    """``E_q log p(site)`` of one global site under a swapped prior, a scalar.

    A Monte Carlo mean over :data:`MONTE_CARLO_DRAWS` draws of :func:`draw_globals`, taken
    from torch's generator seeded with 0 inside a fork (the caller's streams are left alone):
    a deterministic function of ``q``. Its standard error is well under one nat on the
    designed cases of the tests (the spread of ``log p`` over draws divided by 64).
    """
    with seeded_global_rng(0, q.means.device):
        value = draw_globals(q, MONTE_CARLO_DRAWS)[name]
    log_prob = prior.log_prob(value)
    return log_prob.reshape(MONTE_CARLO_DRAWS, -1).sum(-1).mean()


def _weight_factor(q: VariationalParams) -> dist.Distribution:
    """``q(sticks)`` (batch (K,)) or ``q(weights)``."""
    if q.weight_prior_type == "dirichlet_process":
        a, b = q.weight_concentration
        return dist.Beta(a, b)
    return dist.Dirichlet(q.weight_concentration)


def kl_weights(q: VariationalParams, priors: BayesianGMMPriors,
               site_priors: Mapping[str, dist.Distribution] | None = None) -> Tensor:
    """``KL(q(sticks) || p(sticks))`` or ``KL(q(weights) || p(weights))``, a scalar.

    A swapped prior (``site_priors["sticks"]`` or ``["weights"]``) is taken in closed form
    where torch registers the pair (Beta, Dirichlet), by :func:`expected_log_prior` otherwise.
    """
    name = "sticks" if q.weight_prior_type == "dirichlet_process" else "weights"
    factor = _weight_factor(q)
    prior = (site_priors or {}).get(name)
    if prior is None:
        alpha = priors.weight_concentration
        if name == "sticks":
            a, b = q.weight_concentration
            prior = dist.Beta(torch.ones_like(a), alpha.expand_as(b))
        else:
            prior = dist.Dirichlet(alpha.expand_as(q.weight_concentration))
    try:
        return torch.distributions.kl_divergence(factor, prior).sum()
    except NotImplementedError:
        return -factor.entropy().sum() - expected_log_prior(q, name, prior)


def kl_means_precisions(q: VariationalParams, priors: BayesianGMMPriors,
                        site_priors: Mapping[str, dist.Distribution] | None = None) -> Tensor:
    """``sum_k KL(q(means[k], precisions[k]) || p(means[k], precisions[k]))``, a scalar.

    The Wishart term, plus ``E_q(precision)`` of the KL between the two conditional Normals:
    ``(D beta0 / beta_k - D + D log(beta_k / beta0) + beta0 (m_k - m0)^T E[precision] (m_k -
    m0)) / 2``.

    Swapped priors (``site_priors``): ``"precisions"``, a Wishart in closed form
    (:func:`kl_wishart`), any other by ``-H(q(precisions)) - E_q log p``; ``"means"`` (then
    independent of the precisions), ``E_q log q(means | precisions) - E_q log p(means)`` with
    the first term in closed form, ``(D log(beta_k / 2 pi e) + E_q log |precisions[k]|) / 2``,
    and the second by :func:`expected_log_prior`.
    """
    site_priors = site_priors or {}
    n_features = q.n_features
    dof = component_dof(q)
    covariances = covariance_matrices(q)
    precision_prior = site_priors.get("precisions")
    if precision_prior is None:
        wishart = kl_wishart(dof, covariances * dof[:, None, None],
                             priors.degrees_of_freedom, priors.scale_inverse()).sum()
    elif isinstance(precision_prior, torch.distributions.Wishart):
        # on a copy: the lazy property would be cached on the prior, and a prior holding
        # two of its parametrisations can no longer be saved (ppl_mixtures.io)
        scale_inverse = copy.copy(precision_prior).precision_matrix
        wishart = kl_wishart(dof, covariances * dof[:, None, None], precision_prior.df,
                             scale_inverse).sum()
    else:
        factor = torch.distributions.Wishart(dof, scale_tril=_scale_factors(q),
                                             validate_args=False)
        wishart = (-factor.entropy().sum()
                   - expected_log_prior(q, "precisions", precision_prior))
    beta = q.mean_precision
    mean_prior = site_priors.get("means")
    if mean_prior is not None:
        log_q = 0.5 * (n_features * (beta / (2.0 * math.pi * math.e)).log()
                       + expected_log_det_precision(q))
        return wishart + log_q.sum() - expected_log_prior(q, "means", mean_prior)
    beta0 = priors.mean_precision
    offset = q.means - priors.mean
    mahalanobis = (offset[:, None, :] @ torch.linalg.solve(covariances, offset[:, :, None]))
    normal = 0.5 * (n_features * (beta0 / beta - 1.0 + (beta / beta0).log())
                    + beta0 * mahalanobis.reshape(-1))
    return wishart + normal.sum()


def _row_weights(x: Tensor, sample_weight: Tensor | None) -> Tensor:
    return x.new_ones(x.shape[0]) if sample_weight is None else sample_weight


def elbo(x: Tensor, responsibilities: Tensor, q: VariationalParams, priors: BayesianGMMPriors,
         sample_weight: Tensor | None = None,
         site_priors: Mapping[str, dist.Distribution] | None = None) -> Tensor:
    """The full evidence lower bound (every constant kept), a scalar.

    ``sum_n w_n sum_k r_nk (E log pi_k + E log N(x_n | k) - log r_nk) - KL(q(weights)) -
    KL(q(means, precisions))``; with ``w = 1`` (no ``sample_weight``) it equals
    ``-TraceEnum_ELBO`` of the Pyro model with :class:`VariationalGuide` in expectation.

    Parameters
    ----------
    x : Tensor, shape (N, D)
    responsibilities : Tensor, shape (N, K)
        ``q(assignment[n] = k)``; rows sum to one.
    q : VariationalParams
    priors : BayesianGMMPriors
    sample_weight : Tensor, shape (N,), optional
    site_priors : dict of str to Distribution, optional
        Swapped priors (:func:`check_site_priors`); their KL terms as
        :func:`kl_weights` and :func:`kl_means_precisions` take them (some by Monte Carlo).

    Returns
    -------
    Tensor, shape ()
    """
    weights = _row_weights(x, sample_weight)
    expected = expected_log_joint(x, q)
    log_resp = responsibilities.clamp_min(torch.finfo(x.dtype).tiny).log()
    data = (weights[:, None] * responsibilities * (expected - log_resp)).sum()
    return (data - kl_weights(q, priors, site_priors)
            - kl_means_precisions(q, priors, site_priors))


def entropy_sum(responsibilities: Tensor, sample_weight: Tensor | None = None) -> Tensor:
    """``-sum_n w_n sum_k r_nk log r_nk``, a scalar."""
    weights = _row_weights(responsibilities, sample_weight)
    log_resp = responsibilities.clamp_min(torch.finfo(responsibilities.dtype).tiny).log()
    return -(weights[:, None] * responsibilities * log_resp).sum()


def sklearn_lower_bound(entropy: Tensor, q: VariationalParams) -> Tensor:
    """scikit-learn's ``lower_bound_``: the bound with its constants dropped, a scalar.

    Valid where ``q(weights, means, precisions)`` is the CAVI update for the responsibilities
    whose entropy is ``entropy`` (:func:`entropy_sum`): there the full :func:`elbo` is this
    value plus a constant of the priors and the data size. The terms are the log normalisers
    of the ``q`` factors (Bishop 2006, eq. 10.71-10.77 after the update).
    """
    n_features = q.n_features
    dof = q.degrees_of_freedom
    log_det_scale = -(log_det_covariances(q) + n_features * component_dof(q).log())
    if q.covariance_type == "tied":
        log_det_scale = log_det_scale[:1].squeeze(0)
    log_wishart_norm = -(0.5 * dof * log_det_scale + 0.5 * dof * n_features * math.log(2.0)
                         + torch.lgamma(_half_dof_offsets(dof, n_features)).sum(-1))
    log_wishart = log_wishart_norm.sum() * (q.n_components if q.covariance_type == "tied" else 1)
    if q.weight_prior_type == "dirichlet_process":
        a, b = q.weight_concentration
        log_norm_weight = -(torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)).sum()
    else:
        concentration = q.weight_concentration
        log_norm_weight = torch.lgamma(concentration.sum()) - torch.lgamma(concentration).sum()
    return (entropy - log_wishart - log_norm_weight
            - 0.5 * n_features * q.mean_precision.log().sum())


# ---------------------------------------------------------------------------------------------
# Pyro model and guide
# ---------------------------------------------------------------------------------------------


def _log_stick_weights(sticks: Tensor) -> Tensor:
    """``log pi_k = log v_k + sum_{j<k} log(1 - v_j)`` over the last axis."""
    log_rest = torch.log1p(-sticks)
    shifted = torch.cat([torch.zeros_like(log_rest[..., :1]), log_rest[..., :-1]], -1)
    return sticks.log() + shifted.cumsum(-1)


class BayesianGaussianMixtureModel(DataPlateModel):
    """The Bayesian Gaussian mixture as a Pyro model (see the module docstring).

    Parameters
    ----------
    n_components : int
        K (the truncation of the Dirichlet process).
    priors : BayesianGMMPriors
        The conjugate priors' hyperparameters.
    site_priors : dict of str to pyro.distributions.Distribution, optional
        Priors that replace the conjugate ones on some global sites (``"sticks"`` or
        ``"weights"``, ``"precisions"``, ``"means"``), checked and shaped by
        :func:`check_site_priors`; held as :attr:`priors` (what a saved estimator keeps).

    Notes
    -----
    Site names: ``"sticks"`` (Dirichlet process) or ``"weights"`` (Dirichlet distribution),
    ``"precisions"``, ``"means"``, ``"assignment"`` (enumerated), ``"truncation"`` (Dirichlet
    process: the factor ``log sum_k pi_k`` per row), ``"obs"``; plates ``"components"`` and
    ``"data"``. ``max_plate_nesting`` is 1. ``model(x, sample_weight=w)`` scales every site
    of row n by ``w_n`` (see the module docstring); pass the same ``w`` to the guide.
    """

    discrete_sites = ("assignment",)

    def __init__(self, n_components: int, priors: BayesianGMMPriors,
                 site_priors: Mapping[str, dist.Distribution] | None = None) -> None:
        self.n_components = n_components
        self.n_features = priors.mean.shape[0]
        self.hyperparameters = priors
        #: The swapped priors, by site (empty: the conjugate model).
        self.priors = check_site_priors(site_priors, n_components, self.n_features,
                                        priors.weight_prior_type, priors.mean)

    def _prior(self, name: str, conjugate: Any) -> dist.Distribution:
        """The swapped prior of site ``name``, or ``conjugate()``."""
        return self.priors[name] if name in self.priors else conjugate()

    def _sample_globals(self) -> dict[str, Tensor]:
        priors, n_components = self.hyperparameters, self.n_components
        alpha = priors.weight_concentration
        sites: dict[str, Tensor] = {}
        if priors.weight_prior_type == "dirichlet_distribution":
            sites["weights"] = pyro.sample("weights", self._prior(
                "weights", lambda: dist.Dirichlet(alpha.expand(n_components))))
        with pyro.plate("components", n_components):
            if priors.weight_prior_type == "dirichlet_process":
                sites["sticks"] = pyro.sample("sticks", self._prior(
                    "sticks", lambda: dist.Beta(torch.ones_like(alpha), alpha)))
            sites["precisions"] = pyro.sample("precisions", self._prior(
                "precisions", lambda: dist.Wishart(priors.degrees_of_freedom,
                                                   precision_matrix=priors.scale_inverse())))
            sites["means"] = pyro.sample("means", self._prior(
                "means", lambda: dist.MultivariateNormal(
                    priors.mean, precision_matrix=priors.mean_precision * sites["precisions"])))
        return sites

    def __call__(self, x: Tensor | None = None, subsample: Tensor | None = None,
                 n_samples: int | None = None, sample_weight: Tensor | None = None) -> Tensor:
        """Run the model (see :class:`~ppl_mixtures.models._sites.DataPlateModel`); with
        ``sample_weight`` (N,), every site of row n is scaled by ``w_n``."""
        if sample_weight is None:
            return super().__call__(x, subsample, n_samples)
        self._check_data(x)
        self._check_weights(x, sample_weight)
        sites = self._sample_globals()
        with pyro.plate("data", x.shape[0], subsample=subsample) as rows, _row_scale(
                sample_weight, rows):
            observation = self._sample_locals(sites)
            return pyro.sample("obs", observation, obs=x[rows])

    def _sample_locals(self, sites: dict[str, Tensor]) -> dist.Distribution:
        if "sticks" in sites:
            log_weights = _log_stick_weights(sites["sticks"])
            log_mass = torch.logsumexp(log_weights, -1)
            pyro.factor("truncation", log_mass)
            probs = (log_weights - log_mass[..., None]).exp()
        else:
            probs = sites["weights"]
        assignment = pyro.sample("assignment", dist.Categorical(probs),
                                 infer={"enumerate": "parallel"})
        loc = Vindex(sites["means"])[..., assignment, :]
        precision = Vindex(sites["precisions"])[..., assignment, :, :]
        return dist.MultivariateNormal(loc, precision_matrix=precision)


def _row_scale(sample_weight: Tensor | None, rows: Tensor) -> AbstractContextManager:
    """Scale the sites of ``rows`` by their weights (weight-0 rows masked), as the GMVAE does."""
    return weighted_rows(None if sample_weight is None else sample_weight[rows])


class VariationalGuide:
    """The mean-field guide of CAVI as a Pyro guide (the family of :class:`VariationalParams`).

    Pyro params (positive where they must be): ``"stick_a"``, ``"stick_b"`` (Dirichlet process)
    or ``"weight_concentration"``; ``"mean_loc"`` (K, D), ``"mean_precision"`` (K,);
    ``"degrees_of_freedom"`` (> D - 1); the Wishart scale ``"scale_tril"`` (full (K, D, D),
    tied (D, D)), ``"scale_diagonal"`` (diag, (K, D)) or ``"scale"`` (spherical, (K,)).

    ``q(assignment[n])``: fixed ``responsibilities`` (N, K) when given (enumerated in the guide),
    otherwise the CAVI update at the guide's current ``q`` of the globals,
    ``softmax(E_q log pi_k + E_q log N(x_n | k))``, so that no parameter is held per row.

    Parameters
    ----------
    init : VariationalParams
        Initial values of the params.
    responsibilities : Tensor, shape (N, K), optional
    """

    def __init__(self, init: VariationalParams,
                 responsibilities: Tensor | None = None) -> None:
        self.init = init
        self.responsibilities = responsibilities
        self.covariance_type = init.covariance_type
        self.weight_prior_type = init.weight_prior_type

    def _initial_scale(self) -> dict[str, Tensor]:
        q = self.init
        dof = component_dof(q)
        if self.covariance_type == "spherical":
            return {"scale": 1.0 / (dof * q.covariances)}
        if self.covariance_type == "diag":
            return {"scale_diagonal": 1.0 / (dof[:, None] * q.covariances)}
        factors = scale_tril(q)
        return {"scale_tril": factors[0] if self.covariance_type == "tied" else factors}

    def variational_params(self) -> VariationalParams:
        """The guide's current params as :class:`VariationalParams` (differentiable)."""
        q = self.init
        n_features = q.n_features
        positive = constraints.positive
        if self.weight_prior_type == "dirichlet_process":
            a0, b0 = q.weight_concentration.detach()
            concentration = torch.stack([
                pyro.param("stick_a", a0.clone(), constraint=positive),
                pyro.param("stick_b", b0.clone(), constraint=positive)])
        else:
            concentration = pyro.param("weight_concentration",
                                       q.weight_concentration.detach().clone(), constraint=positive)
        means = pyro.param("mean_loc", q.means.detach().clone())
        beta = pyro.param("mean_precision", q.mean_precision.detach().clone(), constraint=positive)
        dof = pyro.param("degrees_of_freedom", q.degrees_of_freedom.detach().clone(),
                         constraint=constraints.greater_than(n_features - 1.0))
        name, value = next(iter(self._initial_scale().items()))
        constraint = constraints.lower_cholesky if name == "scale_tril" else positive
        scale = pyro.param(name, value.detach().clone(), constraint=constraint)
        if name == "scale_tril":
            covariances = torch.cholesky_inverse(scale) / dof[..., None, None]
        else:
            covariances = 1.0 / (dof[..., None] * scale if name == "scale_diagonal" else dof * scale)
        return VariationalParams(concentration, beta, means, dof, covariances,
                                 self.covariance_type, self.weight_prior_type)

    def __call__(self, x: Tensor | None = None, subsample: Tensor | None = None,
                 n_samples: int | None = None,
                 sample_weight: Tensor | None = None) -> dict[str, Tensor]:
        q = self.variational_params()
        n_components = q.n_components
        sites: dict[str, Tensor] = {}
        if self.weight_prior_type == "dirichlet_distribution":
            sites["weights"] = pyro.sample("weights", dist.Dirichlet(q.weight_concentration))
        dof = component_dof(q)
        with pyro.plate("components", n_components):
            if self.weight_prior_type == "dirichlet_process":
                a, b = q.weight_concentration
                sites["sticks"] = pyro.sample("sticks", dist.Beta(a, b))
            factors = _scale_factors(q)
            with warnings.catch_warnings():  # a draw with nu near D - 1 is near-singular: that
                warnings.filterwarnings("ignore", "Singular sample", UserWarning)  # is q itself
                warnings.filterwarnings("ignore", "Low df values", UserWarning)
                sites["precisions"] = pyro.sample("precisions",
                                                  dist.Wishart(dof, scale_tril=factors))
            sites["means"] = pyro.sample("means", dist.MultivariateNormal(
                q.means, precision_matrix=q.mean_precision[:, None, None] * sites["precisions"]))
        if x is None:
            return sites
        size = x.shape[0]
        with pyro.plate("data", size, subsample=subsample) as rows, _row_scale(
                sample_weight, rows):
            if self.responsibilities is not None:
                probs = self.responsibilities[rows]
            else:
                probs = torch.softmax(expected_log_joint(x[rows], q), -1)
            sites["assignment"] = pyro.sample("assignment", dist.Categorical(probs),
                                              infer={"enumerate": "parallel"})
        return sites


def _diagonal(q: VariationalParams) -> Tensor:
    """``diag((nu W)^-1)`` of a diagonal family, shape (K, D)."""
    if q.covariance_type == "spherical":
        return q.covariances[:, None].expand(q.n_components, q.n_features)
    return q.covariances


__all__ = [
    "COVARIANCE_TYPES",
    "WEIGHT_PRIOR_TYPES",
    "BayesianGMMPriors",
    "BayesianGaussianMixtureModel",
    "MONTE_CARLO_DRAWS",
    "SWAPPABLE_SITES",
    "VariationalGuide",
    "VariationalParams",
    "check_site_names",
    "check_site_priors",
    "draw_globals",
    "elbo",
    "entropy_sum",
    "expected_log_prior",
    "expected_component_log_prob",
    "expected_log_joint",
    "expected_log_weights",
    "expected_weights",
    "kl_means_precisions",
    "kl_weights",
    "draw_mixtures",
    "point_estimate",
    "sklearn_lower_bound",
]
