"""Posterior diagnostics of fitted mixtures: ArviZ data, relabelling, assignments, model choice.

- :func:`to_inference_data` turns any fit of a model with a likelihood into an
  :class:`arviz.InferenceData` (posterior draws of the global parameters, the pointwise
  *marginal* log-likelihood, posterior predictive draws), ready for ``az.summary``,
  ``az.loo`` and ``az.waic``: the fit's own draws (NUTS, a mean-field SVI guide), else draws
  of the Laplace approximation at the point estimate (:func:`laplace_approximation`,
  :mod:`ppl_mixtures.inference.laplace`); the point estimate itself on request
  (``posterior="point"``: one draw, no log-likelihood group). :func:`has_posterior_draws`
  and :func:`posterior_draws_hint` say whether a fit has draws of its own and how to get them.
  It is built with ``arviz.from_dict``: ``arviz.from_pyro`` only accepts a
  ``pyro.infer.MCMC`` object (not a guide or a point estimate), and here the pointwise
  log-likelihood comes from the estimator's own (N, K) log joint with the assignments summed
  out.
- :func:`relabel` and :func:`apply_relabelling` undo label switching across draws and chains
  (Hungarian matching of the means, :func:`ppl_mixtures.inference.mcmc.align_components`).
- :func:`sample_assignments` decodes the cluster of every sample with
  ``pyro.infer.infer_discrete`` on the estimator's own Pyro model.
- :func:`select_n_components` refits over candidate numbers of components and scores each
  by BIC, AIC, ICL or PSIS-LOO; :func:`plot_selection` draws the curve.
"""

from __future__ import annotations

import copy
import logging
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer import infer_discrete
from pyro.infer.autoguide import AutoNormal
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from ppl_mixtures import metrics
from ppl_mixtures._rng import seeded_global_rng
from ppl_mixtures.inference.init import resolve_generator
from ppl_mixtures.inference.mcmc import align_components

CRITERIA = ("bic", "aic", "icl", "loo")
#: The ``posterior=`` choices of :func:`to_inference_data`.
POSTERIORS = ("auto", "laplace", "point")

#: Dims of the posterior variables by the number of trailing (non chain/draw) axes.
_COVARIANCE_DIMS = {
    "spherical": ["component"],
    "diag": ["component", "feature"],
    "tied_diag": ["feature"],
    "tied": ["feature", "feature_bis"],
    "full": ["component", "feature", "feature_bis"],
}


# ---------------------------------------------------------------------------------------------
# ArviZ
# ---------------------------------------------------------------------------------------------

#: The FutureWarning that ArviZ 0.2x prints once a day on import (its coming refactor).
_ARVIZ_BANNER = r"\s*ArviZ is undergoing a major refactor"


@contextmanager
def quiet_arviz() -> Iterator[None]:
    """Silence ArviZ's import banner (a ``FutureWarning`` about its refactor) and its log.

    Only that warning is filtered; ArviZ's logger, which reports shape checks such as
    "Shape validation failed" for a single chain (the callers here say why r_hat is
    missing), is raised to ``ERROR`` for the duration. Other warnings (e.g. Pareto k) pass
    through.
    """
    # ArviZ logs through its own ``arviz._log``, a Logger outside logging's registry
    loggers = {id(logger): logger for logger in (
        logging.getLogger("arviz"), getattr(sys.modules.get("arviz"), "_log", None))
        if isinstance(logger, logging.Logger)}
    levels = {key: logger.level for key, logger in loggers.items()}
    for logger in loggers.values():
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_ARVIZ_BANNER, category=FutureWarning)
            yield
    finally:
        for key, logger in loggers.items():
            logger.setLevel(levels[key])


def import_arviz() -> ModuleType:
    """``import arviz``, without its once-a-day ``FutureWarning`` banner."""
    with quiet_arviz():
        import arviz

    return arviz


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _check_fitted(estimator: Any) -> None:
    if not hasattr(estimator, "params_"):
        raise ValueError(
            f"estimator: this {type(estimator).__name__} is not fitted yet; call "
            "estimator.fit(X) before computing diagnostics"
        )


def _family(estimator: Any) -> Any:
    """The registry's family of ``estimator``, or None for an unregistered class."""
    from ppl_mixtures.registry import family_of

    try:
        return family_of(estimator)
    except ValueError:
        return None


def _check_tractable(estimator: Any) -> None:
    family = _family(estimator)
    if family is not None and not family.tractable_likelihood:
        raise ValueError(
            f"estimator: a {type(estimator).__name__} has no tractable likelihood and no "
            "global weights, means and covariances to draw, so there is no InferenceData "
            "(log-likelihood, WAIC, LOO) to build; score it with estimator.score(X), the "
            "ELBO (a lower bound of the mean log-likelihood)"
        )


def has_posterior_draws(estimator: Any) -> bool:
    """Whether a fitted estimator has posterior draws of its global parameters.

    True for NUTS fits (``inference="nuts"``) and for SVI with a mean-field guide
    (``GaussianMixture(inference="svi", guide="mean_field")``); False for point estimates
    (EM, SGD, MAP SVI, every DGMM fit) and for models without a tractable likelihood.
    """
    return (_is_nuts(estimator) or isinstance(getattr(estimator, "guide_", None), AutoNormal)
            or hasattr(estimator, "posterior_draws"))


def posterior_draws_hint(estimator: Any, command_line: bool = False) -> str:
    """How to refit ``estimator``'s family with posterior draws, or that it cannot be.

    Read from the registry: the family's NUTS path and an SVI guide option offering
    ``mean_field``. ``command_line`` phrases it as ``fit`` options, else as arguments.
    """
    family = _family(estimator)
    if family is None:
        return ("fit with inference='nuts' or inference='svi' with guide='mean_field' where "
                "the estimator offers them")
    ways = []
    if "nuts" in family.inference:
        ways.append("--inference nuts" if command_line else "inference='nuts'")
    if any(option.arg == "guide" and "mean_field" in option.choices
           for option in family.options):
        ways.append("--inference svi --guide mean_field" if command_line
                    else "inference='svi' with guide='mean_field'")
    if not ways:
        paths = " and ".join(path.upper() for path in family.inference)
        return (f"no {type(estimator).__name__} fit has them ({paths} give point "
                "estimates)")
    return "fit with " + " or ".join(ways)


def _fitted_x(estimator: Any, X: Any) -> torch.Tensor:
    _check_fitted(estimator)
    try:
        return estimator._fitted_x(X)
    except NotFittedError as err:  # pragma: no cover - params_ set but attributes missing
        raise ValueError(f"estimator: {err}") from err


def _seed(random_state: Any) -> int:
    """An integer seed from ``random_state`` (int, RandomState, Generator or None)."""
    generator = resolve_generator(random_state, torch.device("cpu"))
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator))


def _at(estimator: Any, params: Any) -> Any:
    """A shallow copy of ``estimator`` whose ``params_`` are ``params`` (for its helpers)."""
    twin = copy.copy(estimator)
    twin.params_ = params
    return twin


def _model_module(estimator: Any) -> ModuleType:
    """The model module (``ppl_mixtures.models.*``) that defines the type of ``params_``.

    Each defines ``params_to_sites`` and ``sites_to_params`` between its parameter container
    and the values of its Pyro model's global sites, so the diagnostics need no list of models.
    """
    return sys.modules[type(estimator.params_).__module__]


def _covariance_type(estimator: Any) -> str | None:
    """The covariance constraint of a parameter container that has one (a GMM's), else None.

    Such containers keep scikit-learn's per-type covariance shapes; the others full matrices.
    """
    return getattr(estimator.params_, "covariance_type", None)


def _is_nuts(estimator: Any) -> bool:
    return getattr(estimator, "inference", None) == "nuts"


def _sites_to_params(estimator: Any, sites: dict[str, torch.Tensor]) -> Any:
    module, covariance_type = _model_module(estimator), _covariance_type(estimator)
    n_layers = getattr(estimator.params_, "n_layers", None)
    if n_layers is not None:  # a DGMM: one site of each kind per layer
        return module.sites_to_params(sites, n_layers)
    if covariance_type is None:
        return module.sites_to_params(sites)
    return module.sites_to_params(sites, covariance_type)


def _laplace_model(estimator: Any) -> Any:
    """The estimator's Pyro model in its collapsed form (no continuous local sites)."""
    model = estimator.model_
    if getattr(model, "form", "collapsed") != "collapsed":
        model = copy.copy(model)  # the same priors and sites, the scores integrated out
        model.form = "collapsed"
    return model


def laplace_approximation(estimator: Any, X: Any, **options: Any) -> Any:
    """The Laplace approximation of the posterior at a fitted estimator's ``params_``.

    :func:`ppl_mixtures.inference.laplace.laplace_posterior` on the estimator's own Pyro
    model (``model_``, with its priors; the collapsed form), at the global sites of
    ``params_``. ``options`` go to ``laplace_posterior`` (``max_parameters``,
    ``eigenvalue_floor``).

    Parameters
    ----------
    estimator : GaussianMixture, MixtureOfFactorAnalyzers or DeepGaussianMixture, fitted
    X : array-like, shape (n_samples, n_features)
        The data (usually the training data).

    Returns
    -------
    ppl_mixtures.inference.laplace.LaplacePosterior
    """
    _check_tractable(estimator)
    return _laplace(estimator, _fitted_x(estimator, X), **options)


def _laplace(estimator: Any, x: torch.Tensor, **options: Any) -> Any:
    from ppl_mixtures.inference.laplace import laplace_posterior

    fix = ("refit the MAP of the model with its priors (inference='svi'), or "
           f"{posterior_draws_hint(estimator)}")
    options.setdefault("fix", fix)
    return laplace_posterior(_laplace_model(estimator), x, _global_sites(estimator), **options)


#: Above this Pareto k of the importance ratios, a Laplace approximation is not trusted
#: (Yao et al. 2018; Vehtari et al. 2024).
LAPLACE_PARETO_K = 0.7
_MIN_PARETO_DRAWS = 20
#: Laplace draws whose importance ratios give the Pareto k (one model evaluation each).
_PARETO_DRAWS = 200


def laplace_pareto_k(log_ratios: torch.Tensor) -> float:
    """Pareto k of the log importance ratios of Laplace draws (``arviz.psislw``); NaN for
    fewer than :data:`_MIN_PARETO_DRAWS` draws (too few for a tail)."""
    if log_ratios.numel() < _MIN_PARETO_DRAWS:
        return float("nan")
    az = import_arviz()
    with quiet_arviz(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few draws: ArviZ's own warnings
        _, k = az.psislw(log_ratios.detach().cpu().numpy())
    return float(k)


def _check_laplace_fit(estimator: Any, log_ratios: torch.Tensor) -> float:
    """Warn when the Gaussian is a poor fit of the posterior (large Pareto k)."""
    from ppl_mixtures.inference.laplace import LaplaceWarning

    k = laplace_pareto_k(log_ratios)
    estimator_name = type(estimator).__name__
    if k > LAPLACE_PARETO_K:
        warnings.warn(
            f"the Laplace approximation of this {estimator_name} is a poor fit of its "
            f"posterior: Pareto k of the importance ratios {k:.2f} > {LAPLACE_PARETO_K} "
            "(a curved or weakly identified posterior), so LOO and WAIC from its draws are "
            f"unreliable; {posterior_draws_hint(estimator)}, or use a simpler model",
            LaplaceWarning, stacklevel=3)
    return k


def _posterior_params(estimator: Any, x: torch.Tensor, num_samples: int,
                      posterior: str = "auto", seed: int = 0,
                      attrs: dict[str, Any] | None = None) -> list[list[Any]]:
    """Parameter containers of every draw, as ``[chain][draw]``.

    ``posterior="point"``: the point estimate. ``"laplace"``, or ``"auto"`` for a fit without
    draws (EM, SGD, MAP SVI, DGMM): ``num_samples`` draws of the Laplace approximation at
    ``params_`` (seeded by ``seed``). ``"auto"`` otherwise: NUTS (GMM, MFA), the estimator's
    relabelled chains; SVI with a mean-field guide (GMM), ``num_samples`` draws of the guide
    (from torch's global generator: call it seeded, inside
    :func:`~ppl_mixtures._rng.seeded_global_rng`). ``attrs`` receives what to record about
    the draws (``posterior_kind``, and the Laplace diagnostics).
    """
    attrs = {} if attrs is None else attrs
    if posterior == "point":
        attrs["posterior_kind"] = "point"
        return [[estimator.params_]]
    if posterior == "laplace" or not has_posterior_draws(estimator):
        approximation = _laplace(estimator, x)
        # a stream apart from the posterior predictive draws, which are seeded by seed
        draws, log_ratios = approximation.sample_with_log_ratios(
            num_samples, resolve_generator(seed + 1, x.device), max_ratios=_PARETO_DRAWS)
        attrs.update(posterior_kind="laplace",
                     laplace_pareto_k=_check_laplace_fit(estimator, log_ratios),
                     laplace_regularised_eigenvalues=approximation.n_regularised,
                     laplace_offset_sd=approximation.offset_sd)
        return [[_sites_to_params(estimator, {name: value[index] for name, value in
                                              draws.items()})
                 for index in range(num_samples)]]
    attrs["posterior_kind"] = "nuts" if _is_nuts(estimator) else "guide"
    if _is_nuts(estimator):
        samples = estimator.posterior_samples_
        n_chains = estimator.num_chains
        per_chain = samples["means"].shape[0] // n_chains
        device, dtype = x.device, estimator.params_.means.dtype
        tensors = {k: torch.as_tensor(v, dtype=dtype, device=device)
                   .reshape((n_chains, per_chain) + v.shape[1:]) for k, v in samples.items()}
        return [[_sites_to_params(estimator, {k: v[c, s] for k, v in tensors.items()})
                 for s in range(per_chain)] for c in range(n_chains)]
    if hasattr(estimator, "posterior_draws"):  # a variational posterior of its own (BGMM)
        attrs["posterior_kind"] = "variational"
        return [estimator.posterior_draws(num_samples)]
    if isinstance(getattr(estimator, "guide_", None), AutoNormal):
        with pyro.get_param_store().scope(estimator.param_store_state_), torch.no_grad():
            draws = [_sites_to_params(estimator, estimator.guide_(x))
                     for _ in range(num_samples)]
        return [draws]
    return [[estimator.params_]]


#: Dims of the global sites summarised beside the components (see :func:`_identified_sites`).
_SITE_DIMS = {"noise_variances": ["component", "feature"],
              "loadings": ["component", "feature", "factor"]}


def _identified_sites(params: Any) -> dict[str, torch.Tensor]:
    """Global sites beyond weights, means and covariances that a summary can name.

    A mixture of factor analysers: its noise variances, and its loadings when it has one
    factor (identified up to a sign, which neither a Laplace approximation nor a relabelled
    chain flips; with more factors any rotation of them fits as well, so only the covariances
    ``Lambda Lambda^T + Psi`` are summarised). A DGMM's layer sites are not identified (the
    scores of every layer can be rotated and shifted): its paths are summarised instead.
    """
    if hasattr(params, "n_layers") or not hasattr(params, "loadings"):
        return {}
    sites = {"noise_variances": params.noise_variances}
    if params.loadings.shape[-1] == 1:
        sites["loadings"] = params.loadings
    return sites


def _global_variables(estimator: Any, grid: list[list[Any]]) -> dict[str, np.ndarray]:
    """``weights``, ``means``, ``covariances`` of every draw, each shaped (chain, draw, ...),
    and the identified sites of :func:`_identified_sites`."""
    names = ("weights", "means", "covariances")
    if len(grid) == 1 and len(grid[0]) == 1 and grid[0][0] is estimator.params_:
        # a point estimate: the fitted attributes (for a DGMM, the effective components)
        point = {name: np.asarray(getattr(estimator, f"{name}_"))[None, None] for name in names}
        return {**point, **{name: value.detach().cpu().numpy()[None, None] for name, value in
                            _identified_sites(estimator.params_).items()}}
    module = _model_module(estimator)
    covariance_type = getattr(grid[0][0], "covariance_type", None)  # the draws' own

    def components(params: Any) -> dict[str, torch.Tensor]:
        if hasattr(module, "path_moments"):  # a DGMM: the paths are its components
            log_weights, means, covariances = module.path_moments(params)
            return {"weights": log_weights.exp(), "means": means, "covariances": covariances}
        # the shapes of the estimator's covariances_: per type, or full matrices
        covariances = (params.covariances if covariance_type is not None
                       else module.covariance_matrices(params))
        return {"weights": params.weights, "means": params.means, "covariances": covariances,
                **_identified_sites(params)}

    table = [[components(p) for p in chain] for chain in grid]
    return {name: torch.stack([torch.stack([d[name] for d in chain]) for chain in table])
            .detach().cpu().numpy() for name in table[0][0]}


def _covariance_dims(estimator: Any, covariances: np.ndarray,
                     draw: Any = None) -> list[str]:
    """The dims of ``covariances``: by the covariance type of the draws (``draw``, one of
    them) or of the estimator, else full matrices."""
    covariance_type = getattr(draw, "covariance_type", None) or _covariance_type(estimator)
    if covariance_type is not None:
        return _COVARIANCE_DIMS[covariance_type]
    return ["component", "feature", "feature_bis"][: covariances.ndim - 2]


# ---------------------------------------------------------------------------------------------
# InferenceData
# ---------------------------------------------------------------------------------------------


def to_inference_data(estimator: Any, X: Any, *, num_samples: int = 200,
                      random_state: Any = None, posterior: str = "auto",
                      point_estimate: bool | None = None):
    """Convert a fitted mixture estimator into an :class:`arviz.InferenceData`.

    Built with ``arviz.from_dict`` (``arviz.from_pyro`` only accepts a ``pyro.infer.MCMC``).

    Parameters
    ----------
    estimator : GaussianMixture, MixtureOfFactorAnalyzers or DeepGaussianMixture, fitted
        ``GaussianMixture`` or ``MixtureOfFactorAnalyzers`` with ``inference="nuts"``: the
        relabelled chains (``posterior_samples_``, ``num_chains`` chains).
        ``GaussianMixture(inference="svi", guide="mean_field")``: ``num_samples`` draws of
        the guide. Any other fit (EM, SGD, MAP SVI, and every DGMM fit) is a point estimate:
        ``num_samples`` draws of the Laplace approximation at it (:func:`laplace_approximation`;
        a :class:`~ppl_mixtures.inference.laplace.LaplaceWarning` when the Hessian there is
        not positive definite, a ``ValueError`` above its parameter budget). A GMVAE (no
        tractable likelihood) is refused.
    X : array-like, shape (n_samples, n_features)
        The data to score (usually the training data).
    num_samples : int, default 200
        Draws of a mean-field guide or of the Laplace approximation, at least 2 (ignored
        for NUTS and ``posterior="point"``).
    random_state : int, RandomState, Generator or None
        Seeds the guide or Laplace draws and the posterior predictive draws.
    posterior : {"auto", "laplace", "point"}, default "auto"
        ``"auto"``: the fit's own draws (NUTS, mean-field guide) where it has them, else the
        Laplace approximation at the point estimate. ``"laplace"``: the Laplace
        approximation at ``params_`` for any fit. ``"point"``: the point estimate itself,
        one draw (chain=1, draw=1) of the posterior, the observed data and one posterior
        predictive data set, but no ``log_likelihood`` group (ArviZ's ``loo`` cannot smooth
        one draw, and a WAIC of one draw is only the summed log-likelihood).
    point_estimate : bool, optional
        Deprecated: ``point_estimate=True`` is ``posterior="point"`` (with a
        ``FutureWarning``).

    Returns
    -------
    arviz.InferenceData
        Groups:

        - ``posterior``: ``weights`` (chain, draw, component), ``means`` (chain, draw,
          component, feature), ``covariances`` (chain, draw, ...) with the estimator's
          ``covariances_`` shape (dims ``component``, ``feature``, ``feature_bis``). For
          MFA / DGMM these are the effective components (DGMM: the paths).
          MFA also: ``noise_variances`` (chain, draw, component, feature), and ``loadings``
          (chain, draw, component, feature, factor) with one factor only (with more, any
          rotation of the loadings fits as well: they are not identified).
        - ``log_likelihood`` (not for ``posterior="point"``): ``obs`` (chain, draw,
          observation), the marginal
          ``log p(x_n | theta) = logsumexp_k log p(x_n, k | theta)`` at each draw.
        - ``observed_data``: ``obs`` (observation, feature).
        - attributes of ``posterior``: ``posterior_kind`` (``"nuts"``, ``"guide"``,
          ``"laplace"`` or ``"point"``); for Laplace draws also ``laplace_pareto_k`` (Pareto
          k of the importance ratios; above :data:`LAPLACE_PARETO_K` the approximation, and
          the LOO and WAIC of its draws, are not trusted and a ``LaplaceWarning`` says so),
          ``laplace_regularised_eigenvalues`` and ``laplace_offset_sd`` (see
          :class:`~ppl_mixtures.inference.laplace.LaplacePosterior`).
        - ``posterior_predictive``: ``obs`` (chain, draw, observation, feature), one
          synthetic data set of ``n_samples`` rows drawn from the mixture at each draw.
        - ``sample_stats`` (NUTS only): ``lp`` (chain, draw), ``log p(x, theta)`` with the
          assignments summed out, and ``diverging`` (chain, draw) from the sampler (what
          ``az.plot_trace(..., divergences=...)`` and ``az.summary`` read); the attribute
          ``acceptance_rate`` holds each chain's fraction of moves (Pyro's "acceptance
          rate"). Tree depths are not recorded by Pyro's NUTS.

    Raises
    ------
    ValueError
        If the estimator is not fitted, has no tractable likelihood (GMVAE), or is too
        large for the Laplace approximation; the message says how to get draws.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or (
        num_samples < 2
    ):
        raise ValueError(f"num_samples={num_samples!r} must be an integer >= 2 (WAIC and LOO "
                         "need at least two draws)")
    if point_estimate is not None:
        warnings.warn("point_estimate is deprecated; pass posterior='point' (a point estimate "
                      "without log-likelihood) or leave posterior='auto' (Laplace draws for a "
                      "point estimate)", FutureWarning, stacklevel=2)
        if point_estimate:
            posterior = "point"
    if posterior not in POSTERIORS:
        raise ValueError(f"posterior={posterior!r} is not one of {POSTERIORS}")
    _check_fitted(estimator)
    _check_tractable(estimator)
    draws = posterior != "point"
    az = import_arviz()
    x = _fitted_x(estimator, X)
    seed = _seed(random_state)
    attrs: dict[str, Any] = {}
    with seeded_global_rng(seed, x.device):  # guide draws come from the global generator
        grid = _posterior_params(estimator, x, num_samples, posterior, seed, attrs)
    generator = resolve_generator(seed, x.device)
    n_rows = x.shape[0]
    with torch.no_grad():
        log_lik = [[torch.logsumexp(_at(estimator, p)._log_joint(x), -1) for p in chain]
                   for chain in grid] if draws else None
        predictive = [[_at(estimator, p)._sample_tensors(n_rows, generator)[0] for p in chain]
                      for chain in grid]
    log_lik_array = None if log_lik is None else torch.stack(
        [torch.stack(c) for c in log_lik]).cpu().numpy()
    variables = _global_variables(estimator, grid)
    n_components, n_features = variables["means"].shape[-2:]
    dims = {
        "weights": ["component"],
        "means": ["component", "feature"],
        "covariances": _covariance_dims(estimator, variables["covariances"], grid[0][0]),
        **{name: site_dims for name, site_dims in _SITE_DIMS.items() if name in variables},
    }
    coords = {
        "component": np.arange(n_components),
        "feature": np.arange(n_features),
        "feature_bis": np.arange(n_features),
        "observation": np.arange(n_rows),
    }
    if "feature_bis" not in dims["covariances"]:
        del coords["feature_bis"]
    if "loadings" in variables:
        coords["factor"] = np.arange(variables["loadings"].shape[-1])
    sample_stats = None
    if _is_nuts(estimator) and log_lik_array is not None and posterior == "auto":
        with torch.no_grad():
            log_prior = np.array([[float(estimator.model_.log_prior(p)) for p in chain]
                                  for chain in grid])
        sample_stats = {"lp": log_lik_array.sum(-1) + log_prior,
                        "diverging": estimator.sampler_stats_["diverging"]}
    # "obs" has dims (observation,) in log_likelihood but (observation, feature) in the data
    # groups, and from_dict takes one dims mapping: build the two halves and join them
    with quiet_arviz():
        idata = az.from_dict(
            posterior=variables,
            log_likelihood=None if log_lik_array is None else {"obs": log_lik_array},
            sample_stats=sample_stats, coords=coords, dims={**dims, "obs": ["observation"]},
        )
        data = az.from_dict(
            observed_data={"obs": x.cpu().numpy()},
            posterior_predictive={
                "obs": torch.stack([torch.stack(c) for c in predictive]).cpu().numpy()
            },
            coords=coords, dims={"obs": ["observation", "feature"]},
        )
        idata.extend(data)
    idata.posterior.attrs.update(attrs)
    if sample_stats is not None:
        rates = estimator.sampler_stats_["acceptance_rate"]
        idata.sample_stats.attrs["acceptance_rate"] = [float(r) for r in rates]
    return idata


# ---------------------------------------------------------------------------------------------
# Relabelling
# ---------------------------------------------------------------------------------------------


def relabel(draws_means: Any, reference: Any = None) -> np.ndarray:
    """Permutations that align the components of every draw with a reference.

    A thin wrapper of :func:`ppl_mixtures.inference.mcmc.align_components` (Hungarian
    matching of the means, summed squared distances) that accepts any leading draw dims.

    Parameters
    ----------
    draws_means : array-like, shape (..., n_components, n_features)
        Means of every draw, e.g. (chain, draw, K, D) or (S, K, D).
    reference : array-like, shape (n_components, n_features), optional
        The labelling to match (e.g. ``estimator.means_``). Default: the first draw.

    Returns
    -------
    permutations : ndarray of int, shape (..., n_components)
        ``aligned[..., k, :] = draws_means[..., permutations[..., k], :]``; apply it to
        every per-component array with :func:`apply_relabelling`.
    """
    means = np.asarray(draws_means, dtype=np.float64)
    if means.ndim < 3:
        raise ValueError(f"draws_means has shape {means.shape}; pass an array of shape "
                         "(..., n_components, n_features) with at least one draw dim")
    flat = torch.as_tensor(means.reshape((-1,) + means.shape[-2:]))
    reference = flat[0] if reference is None else torch.as_tensor(
        np.asarray(reference, dtype=np.float64))
    if tuple(reference.shape) != tuple(flat.shape[1:]):
        raise ValueError(f"reference has shape {tuple(reference.shape)}; it must be "
                         f"(n_components, n_features) = {tuple(flat.shape[1:])}")
    _, permutations = align_components({"means": flat}, reference, ["means"])
    return permutations.cpu().numpy().reshape(means.shape[:-1])


def apply_relabelling(values: Any, permutations: Any) -> np.ndarray:
    """Permute the component axis of a per-component array of draws.

    Parameters
    ----------
    values : array-like, shape ``draw_shape + (n_components, ...)``
        E.g. ``weights`` (chain, draw, K) or ``covariances`` (chain, draw, K, D, D).
    permutations : array-like of int, shape ``draw_shape + (n_components,)``
        From :func:`relabel`.

    Returns
    -------
    ndarray, shape of ``values``
        ``out[d][k] = values[d][permutations[d][k]]`` for every draw index ``d``.
    """
    values, permutations = np.asarray(values), np.asarray(permutations)
    lead = permutations.ndim - 1
    if values.shape[: lead + 1] != permutations.shape:
        raise ValueError(f"values of shape {values.shape} do not start with the permutations' "
                         f"shape {permutations.shape} (draw dims, then components)")
    index = permutations.reshape(permutations.shape + (1,) * (values.ndim - lead - 1))
    return np.take_along_axis(values, index, axis=lead)


# ---------------------------------------------------------------------------------------------
# Assignments
# ---------------------------------------------------------------------------------------------


def _global_sites(estimator: Any) -> dict[str, torch.Tensor]:
    """Values of the model's global sites at the estimator's point estimate ``params_``."""
    return _model_module(estimator).params_to_sites(estimator.params_)


def sample_assignments(estimator: Any, X: Any, *, temperature: float = 0,
                       random_state: Any = None) -> np.ndarray:
    """Decode the cluster of every sample with ``pyro.infer.infer_discrete``.

    The estimator's Pyro model (``model_``) is conditioned on its point estimate of the
    global sites (``params_``: the EM/MAP estimate, the mean-field guide's median or the
    NUTS draws' posterior median), and ``infer_discrete`` decodes the enumerated ``"assignment"``
    site given the data.

    Parameters
    ----------
    estimator : GaussianMixture or MixtureOfFactorAnalyzers (collapsed form), fitted
    X : array-like, shape (n_samples, n_features)
    temperature : {0, 1}, default 0
        0: the MAP assignment of every sample (equal to ``estimator.predict(X)``).
        1: one draw from ``p(assignment_n | x_n, theta)`` (frequencies over many calls match
        ``estimator.predict_proba(X)``).
    random_state : int, RandomState, Generator or None
        Seeds the draw at temperature 1.

    Returns
    -------
    ndarray of int, shape (n_samples,)
    """
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.number)) \
            or temperature < 0:
        raise ValueError(f"temperature={temperature!r} must be 0 (MAP assignments) or 1 "
                         "(posterior samples); negative temperatures are not defined")
    if temperature not in (0, 1):
        raise ValueError(f"temperature={temperature!r} is not supported by infer_discrete; "
                         "use 0 (MAP assignments) or 1 (posterior samples)")
    x = _fitted_x(estimator, X)
    model = estimator.model_
    local_sites = tuple(getattr(model, "local_sites", model.discrete_sites))
    if local_sites != ("assignment",):
        raise ValueError(
            f"estimator: {type(estimator).__name__} has local sites {local_sites}; "
            "sample_assignments decodes models whose only local site is 'assignment' "
            "(GaussianMixture, collapsed MixtureOfFactorAnalyzers)"
        )
    conditioned = poutine.condition(model, data=_global_sites(estimator))
    decoder = infer_discrete(conditioned, first_available_dim=-1 - model.max_plate_nesting,
                             temperature=int(temperature))
    # infer_discrete draws (temperature 1) from torch's global generator
    with seeded_global_rng(_seed(random_state), x.device), torch.no_grad():
        trace = poutine.trace(decoder).get_trace(x)
    return trace.nodes["assignment"]["value"].cpu().numpy()


# ---------------------------------------------------------------------------------------------
# Model selection
# ---------------------------------------------------------------------------------------------


def _criterion_value(estimator: Any, X: Any, criterion: str, log_likelihood: float,
                     random_state: Any) -> float:
    n_rows, n_params = len(np.asarray(X)), estimator._n_parameters()
    if criterion == "bic":
        return metrics.bic(log_likelihood, n_params, n_rows)
    if criterion == "aic":
        return metrics.aic(log_likelihood, n_params, n_rows)
    if criterion == "icl":
        return metrics.icl(log_likelihood, n_params, n_rows, estimator.predict_proba(X))
    if not has_posterior_draws(estimator):
        raise ValueError(
            "criterion='loo' needs posterior draws, but this estimator gives a point estimate; "
            f"{posterior_draws_hint(estimator)}, or use criterion='bic'"
        )
    az = import_arviz()
    idata = to_inference_data(estimator, X, random_state=random_state)
    with quiet_arviz():
        return float(az.loo(idata).elpd_loo)


def select_n_components(estimator: Any, X: Any, candidates: Sequence[int],
                        criterion: str = "bic", *,
                        random_state: Any = None) -> list[dict[str, Any]]:
    """Refit ``estimator`` with every candidate number of components and score each fit.

    Parameters
    ----------
    estimator : mixture estimator (fitted or not)
        A template: each candidate fits ``clone(estimator).set_params(n_components=k)``.
    X : array-like, shape (n_samples, n_features)
    candidates : sequence of int
        Numbers of components to try (non-empty).
    criterion : {"bic", "aic", "icl", "loo"}, default "bic"
        BIC, AIC, ICL (lower is better) or the PSIS-LOO ``elpd_loo`` of
        :func:`to_inference_data` (higher is better; needs posterior draws: NUTS or a
        mean-field SVI guide).
    random_state : optional
        Seeds the posterior draws used by ``"loo"``.

    Returns
    -------
    rows : list of dict, one per candidate, in the order given
        Keys ``n_components``, ``criterion`` (the name), ``value`` (the criterion),
        ``log_likelihood`` (summed over ``X``), ``n_parameters``, ``selected`` (True for the
        chosen candidate only) and ``estimator`` (the fitted clone).
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion={criterion!r} is not supported; use one of {CRITERIA}")
    candidates = list(candidates)
    if not candidates:
        raise ValueError("candidates is empty; pass the numbers of components to try, "
                         "e.g. candidates=[1, 2, 3, 4]")
    rows = []
    for n_components in candidates:
        fitted = clone(estimator).set_params(n_components=n_components).fit(X)
        log_likelihood = float(fitted.score_samples(X).sum())
        rows.append({
            "n_components": n_components,
            "criterion": criterion,
            "value": _criterion_value(fitted, X, criterion, log_likelihood, random_state),
            "log_likelihood": log_likelihood,
            "n_parameters": int(fitted._n_parameters()),
            "selected": False,
            "estimator": fitted,
        })
    values = np.array([row["value"] for row in rows])
    best = int(np.argmax(values) if criterion == "loo" else np.argmin(values))
    rows[best]["selected"] = True
    return rows


def plot_selection(rows: Sequence[dict[str, Any]], ax: Any = None):
    """Plot the criterion of :func:`select_n_components` against the number of components.

    Parameters
    ----------
    rows : sequence of dict
        The output of :func:`select_n_components`.
    ax : matplotlib Axes, optional
        Where to draw; a new figure otherwise.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from ppl_mixtures.plotting import _pyplot

    if not rows:
        raise ValueError("rows is empty; pass the output of select_n_components")
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 3.2))
    labels = [str(row["n_components"]) for row in rows]
    values = [row["value"] for row in rows]
    ax.plot(labels, values, marker="o")
    chosen = [i for i, row in enumerate(rows) if row.get("selected")]
    if chosen:
        ax.plot(labels[chosen[0]], values[chosen[0]], marker="*", markersize=14,
                linestyle="none", label="selected")
        ax.legend()
    name = rows[0]["criterion"]
    better = "higher" if name == "loo" else "lower"
    ax.set_xlabel("n_components")
    ax.set_ylabel(f"{'elpd_loo' if name == 'loo' else name.upper()} ({better} is better)")
    return ax.figure


__all__ = [
    "CRITERIA",
    "LAPLACE_PARETO_K",
    "POSTERIORS",
    "apply_relabelling",
    "has_posterior_draws",
    "import_arviz",
    "laplace_approximation",
    "laplace_pareto_k",
    "posterior_draws_hint",
    "quiet_arviz",
    "plot_selection",
    "relabel",
    "sample_assignments",
    "select_n_components",
    "to_inference_data",
]
