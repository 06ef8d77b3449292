"""scikit-learn's ``BayesianGaussianMixture`` over one Pyro model: CAVI and SVI.

Variational Bayes for the Gaussian mixture with conjugate priors (Bishop 2006, section 10.2)
and a Dirichlet-process (truncated stick-breaking, Blei & Jordan 2006) or Dirichlet prior on
the weights. ``inference="cavi"`` runs the exact coordinate-ascent updates
(:mod:`ppl_mixtures.inference.em.cavi_gmm`) under the shared EM loop; ``inference="svi"``
fits the same variational family as a Pyro guide by stochastic gradients of
``TraceEnum_ELBO`` (:mod:`ppl_mixtures.models.bayesian_gmm`).
"""

from __future__ import annotations

from typing import Any

import torch

from ppl_mixtures import metrics
from ppl_mixtures._rng import keeps_global_rng
from ppl_mixtures.estimators import _gmm_fit
from ppl_mixtures.estimators._base import MixtureEstimator
from ppl_mixtures.estimators._bgmm_priors import BGMMPriors
from ppl_mixtures.estimators._sources import DataSource
from ppl_mixtures.estimators._validation import (
    BOOLEAN,
    COMMON_CONSTRAINTS,
    DICT,
    NONE,
    InstanceOf,
    Integer,
    Options,
    Real,
    check_int,
)
from ppl_mixtures.inference.em import cavi_gmm
from ppl_mixtures.inference.em.gmm import variance_floor
from ppl_mixtures.inference.init import INIT_METHODS
from ppl_mixtures.models import bayesian_gmm as bgmm
from ppl_mixtures.models import gmm

INFERENCE_METHODS = ("cavi", "svi")
_COMMON = ("n_init", "tol", "lr", "batch_size", "random_state", "device", "dtype", "progress",
           "checkpoint_path", "distributed")
#: Arrays checked against the data's shape at fit (:meth:`BayesianGaussianMixture._array`).
ARRAY_LIKE = [InstanceOf((object,), "an array-like")]


def _variational_guide(model: Any, q: bgmm.VariationalParams) -> bgmm.VariationalGuide:
    """The guide at ``q`` (a module function: a fitted estimator keeps it until it is read)."""
    return bgmm.VariationalGuide(q)


class BayesianGaussianMixture(BGMMPriors, MixtureEstimator):
    """Variational Bayesian Gaussian mixture (scikit-learn's arguments and attributes).

    Parameters
    ----------
    n_components : int, default 1
        K, an upper bound on the components used (the truncation of the Dirichlet process).
    covariance_type : {"full", "tied", "diag", "spherical"}, default "full"
        The variational family of the precisions (see :mod:`ppl_mixtures.models.bayesian_gmm`):
        one Wishart per component, one shared, or one with a diagonal or isotropic scale.
    tol : float, optional
        CAVI: stop when scikit-learn's lower bound (a total over rows) changes by less
        (default 1e-3). SVI: relative change of the smoothed loss (default 1e-5).
    reg_covar : float, default 1e-6
        Added to the diagonal of the scatter matrices in every update (scikit-learn's
        meaning); 0 gives the exact CAVI updates. Scaled down with data of tiny variance
        (``DataScaleWarning``), as on :class:`~ppl_mixtures.estimators.GaussianMixture`.
    max_iter : int, optional
        CAVI iterations (default 100) or SVI steps (default 2000).
    n_init : int, default 1
        Starts; the one with the best final bound is kept.
    init_params : {"kmeans", "k-means++", "random", "random_from_data"}, default "kmeans"
        How initial responsibilities are drawn; the first update of ``q`` is made from them.
    resp_init : array-like, shape (n_samples, n_components), optional
        Initial responsibilities (rows summing to one) instead of ``init_params``: the same
        start as scikit-learn's ``_initialize(X, resp)``.
    weight_concentration_prior_type : {"dirichlet_process", "dirichlet_distribution"}
        Default ``"dirichlet_process"`` (stick-breaking).
    weight_concentration_prior : float, optional
        ``alpha`` (default ``1 / n_components``).
    mean_precision_prior : float, optional
        ``beta0`` (default 1).
    mean_prior : array-like, shape (n_features,), optional
        ``m0`` (default: the mean of ``X``).
    degrees_of_freedom_prior : float, optional
        ``nu0 > n_features - 1`` (default ``n_features``).
    covariance_prior : float or array-like, optional
        ``W0^-1``: full/tied (D, D), diag (D,), spherical a float (default: the covariance
        of ``X``, ``ddof=1``, of the type's shape).
    priors : dict of str to pyro.distributions.Distribution, optional
        Replace the conjugate prior of some global sites (``inference="svi"`` only; CAVI's
        updates are exact for the conjugate priors alone), as ``priors`` of
        :class:`~ppl_mixtures.estimators.GaussianMixture` replaces its defaults. Keys:
        ``"sticks"`` (Dirichlet process; one stick's prior on (0, 1), e.g. ``dist.Beta(1.0,
        2.0)``) or ``"weights"`` (Dirichlet distribution; event shape (n_components,)),
        ``"precisions"`` (one component's (D, D) precision matrix, e.g. a ``dist.Wishart``),
        ``"means"`` (one component's mean: a scalar distribution broadcast over the features,
        e.g. ``dist.StudentT(3.0, 0.0, 10.0)``, or event shape (D,); it is then independent of
        the precisions). Sites not named keep the conjugate prior of the ``*_prior``
        arguments, which also set the starting ``q``. The guide stays the variational family
        above; a prior whose support misses values it draws is refused. See
        :mod:`ppl_mixtures.models.bayesian_gmm`.
    inference : {"cavi", "svi"}, default "cavi"
        ``"cavi"``: the exact coordinate-ascent updates (scikit-learn's algorithm).
        ``"svi"``: Adam on ``TraceEnum_ELBO`` of :attr:`model_` with the variational guide
        of the same family, started where CAVI starts (one matrix in memory).
    lr : float, optional
        SVI learning rate (default 0.05).
    batch_size : int, optional
        SVI rows per step (None: all); ``q(assignment)`` of a row is the CAVI update at the
        guide's current ``q``, so no parameter is held per row.
    random_state : int, RandomState, Generator or None
    warm_start : bool, default False
        Each :meth:`fit` after the first continues from the last fit's ``q``.
    verbose, verbose_interval : int
        As on :class:`~ppl_mixtures.estimators.GaussianMixture`.
    device, dtype, progress, checkpoint_path
        As on :class:`~ppl_mixtures.estimators.GaussianMixture` (``checkpoint_path``: SVI).
    distributed : bool, default False
        Not implemented for this estimator (True is refused with the paths that are).

    Attributes
    ----------
    weights_ : ndarray, shape (n_components,)
        ``E_q[pi]`` normalised over the K components.
    means_ : ndarray, shape (n_components, n_features)
    covariances_, precisions_, precisions_cholesky_ : ndarray
        ``E_q[precision]^-1``, its inverse and scikit-learn's Cholesky factor.
    weight_concentration_ : ndarray, shape (2, n_components) or (n_components,)
        The Beta parameters of the sticks (row 0: ``1 + N_k``, row 1) or the Dirichlet's.
    mean_precision_ : ndarray, shape (n_components,)
    degrees_of_freedom_ : ndarray, shape (n_components,), or float for tied
    weight_concentration_prior_, mean_precision_prior_, mean_prior_, degrees_of_freedom_prior_,
    covariance_prior_
        The priors used (defaults resolved from the data, weighted by ``sample_weight``).
    lower_bound_ : float
        scikit-learn's value: the bound with its constants dropped (a total over rows) after
        the last iteration (CAVI); for SVI, :attr:`elbo_` moved onto the same scale; with
        swapped ``priors`` (no such scale), :attr:`elbo_` itself.
    lower_bounds_ : list of float
        CAVI: ``lower_bound_`` at every iteration.
    elbo_ : float
        The full evidence lower bound at the fitted ``q`` (every constant kept, total over
        rows), with ``q(assignment)`` the CAVI update at it: ``-E[TraceEnum_ELBO loss]`` of
        :attr:`model_` and :attr:`guide_`. ``-inf`` when ``covariance_prior_`` is singular
        (the default for fewer rows than features): the Wishart prior is then improper. With
        swapped ``priors``, their KL terms without a closed form are Monte Carlo means over
        ``bayesian_gmm.MONTE_CARLO_DRAWS`` draws of ``q`` (a fixed seed: deterministic).
    converged_, n_iter_, history_
        ``history_``: CAVI, ``lower_bound_`` per iteration; SVI, the loss per row per step.
    params_ : VariationalParams
    model_ : BayesianGaussianMixtureModel
    guide_ : VariationalGuide

    Notes
    -----
    :meth:`predict_proba` and :meth:`score_samples` use ``E_q log pi_k + E_q log N(x | k)``,
    as scikit-learn does: the softmax is the CAVI update of ``q(assignment)`` for a new row,
    and the logsumexp a lower bound (Jensen) on the log posterior predictive density.
    """

    _parameter_constraints = {
        **{name: COMMON_CONSTRAINTS[name] for name in _COMMON},
        "n_components": [Integer(1)],
        "covariance_type": [Options(bgmm.COVARIANCE_TYPES)],
        "inference": [Options(INFERENCE_METHODS)],
        "reg_covar": [Real(0.0)],
        "init_params": [Options(INIT_METHODS)],
        "weight_concentration_prior_type": [Options(bgmm.WEIGHT_PRIOR_TYPES)],
        "weight_concentration_prior": [Real(0.0, strict=True), NONE],
        "mean_precision_prior": [Real(0.0, strict=True), NONE],
        "degrees_of_freedom_prior": [Real(), NONE],
        "max_iter": [Integer(1), NONE],
        "mean_prior": ARRAY_LIKE,
        "covariance_prior": ARRAY_LIKE,
        "priors": [DICT, NONE],
        "resp_init": ARRAY_LIKE,
        "warm_start": [BOOLEAN],
        "verbose": [Integer(0), BOOLEAN],
        "verbose_interval": [Integer(1)],
    }
    _inference_methods = INFERENCE_METHODS
    _default_max_iter = {"cavi": 100, "svi": 2000}
    _default_tol = {"cavi": 1e-3, "svi": 1e-5}
    _default_lr = {"svi": 0.05}
    _init_hint = ", or resp_init"

    def __init__(
        self,
        n_components: int = 1,
        *,
        covariance_type: str = "full",
        tol: float | None = None,
        reg_covar: float = 1e-6,
        max_iter: int | None = None,
        n_init: int = 1,
        init_params: str = "kmeans",
        resp_init: Any = None,
        weight_concentration_prior_type: str = "dirichlet_process",
        weight_concentration_prior: float | None = None,
        mean_precision_prior: float | None = None,
        mean_prior: Any = None,
        degrees_of_freedom_prior: float | None = None,
        covariance_prior: Any = None,
        priors: dict | None = None,
        inference: str = "cavi",
        lr: float | None = None,
        batch_size: int | None = None,
        random_state: Any = None,
        warm_start: bool = False,
        verbose: int = 0,
        verbose_interval: int = 10,
        device: str = "auto",
        dtype: Any = None,
        progress: bool = True,
        checkpoint_path: str | None = None,
        distributed: bool = False,
    ) -> None:
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.resp_init = resp_init
        self.weight_concentration_prior_type = weight_concentration_prior_type
        self.weight_concentration_prior = weight_concentration_prior
        self.mean_precision_prior = mean_precision_prior
        self.mean_prior = mean_prior
        self.degrees_of_freedom_prior = degrees_of_freedom_prior
        self.covariance_prior = covariance_prior
        self.priors = priors
        self.inference = inference
        self.lr = lr
        self.batch_size = batch_size
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.device = device
        self.dtype = dtype
        self.progress = progress
        self.checkpoint_path = checkpoint_path
        self.distributed = distributed

    # ----------------------------------------------------------------------------- validation

    def _check_arguments(self) -> None:
        if self.priors and self.inference == "cavi":
            raise ValueError(
                f"priors={sorted(self.priors)} swaps the conjugate priors, and CAVI's updates are "
                "exact for those alone; fit swapped priors with inference='svi', or set the "
                "conjugate ones through weight_concentration_prior, mean_precision_prior, "
                "mean_prior, degrees_of_freedom_prior and covariance_prior")
        bgmm.check_site_names(self.priors or {}, self.weight_concentration_prior_type)

    def _shape_key(self) -> dict[str, Any]:
        return {"n_components": self.n_components, "covariance_type": self.covariance_type,
                "weight_concentration_prior_type": self.weight_concentration_prior_type}

    # ------------------------------------------------------------------------------- fitting

    def _fit(self, source: DataSource, generator: torch.Generator, resume: bool) -> None:
        x = source.data
        sample_weight = getattr(source, "weights", None)
        priors = self._resolve_priors(x, sample_weight)
        self.model_ = bgmm.BayesianGaussianMixtureModel(self.n_components, priors, self.priors)
        spread = float(x.var(0).mean()) if x.shape[0] > 1 else 1.0
        reg = variance_floor(self.reg_covar, spread, float(x.mean(0).square().mean()), x.dtype)

        def draw(rows: torch.Tensor) -> bgmm.VariationalParams:
            resp = self._initial_resp(rows, generator, sample_weight)
            return cavi_gmm.initial_params(rows, resp, priors, reg, sample_weight)

        if self.inference == "cavi":
            e_step, m_step = cavi_gmm.make_steps(priors, reg)  # weights: from the source
            self._fit_em_restarts(source, draw, e_step, m_step, "BGMM CAVI",
                                  _variational_guide,
                                  monotone=reg == 0)
        else:
            warm = self._warm_start_from
            guide, _ = self._fit_svi_restarts(
                source, generator, resume,
                lambda: bgmm.VariationalGuide(warm[0] if warm is not None else draw(x)))
            with torch.no_grad():
                q = guide.variational_params()
            self.params_ = bgmm.VariationalParams(
                **{k: v.detach() for k, v in q.tensors().items()},
                covariance_type=q.covariance_type, weight_prior_type=q.weight_prior_type)
        self._bounds(x, priors, reg, sample_weight)

    def _bounds(self, x: torch.Tensor, priors: bgmm.BayesianGMMPriors, reg: float,
                sample_weight: torch.Tensor | None) -> None:
        """``elbo_``; for SVI also ``lower_bound_`` on scikit-learn's scale (with swapped
        priors, the ELBO itself)."""
        swapped = self.model_.priors
        with torch.no_grad():
            q = self.params_
            resp, _ = cavi_gmm.responsibilities(x, q)
            self.elbo_ = float(bgmm.elbo(x, resp, q, priors, sample_weight, swapped))
            if swapped:
                self.lower_bound_ = self.elbo_
            elif self.inference == "svi":
                # the constant between the two bounds, where q is the update for resp
                stats = cavi_gmm.statistics(x, resp, q.means, priors.covariance_type,
                                            sample_weight)
                updated = cavi_gmm.m_step(stats, priors, 0.0)
                constant = (bgmm.elbo(x, resp, updated, priors, sample_weight)
                            - bgmm.sklearn_lower_bound(stats.entropy, updated))
                self.lower_bound_ = float(self.elbo_ - constant)

    def _lower_bound(self, source: DataSource) -> float | None:
        return None  # set by _fit (CAVI: the loop's, scikit-learn's meaning)

    def _set_fitted(self) -> None:
        q = self.params_
        with torch.no_grad():
            vars(self).update(_gmm_fit.fitted_arrays(bgmm.point_estimate(q)))
        self.weight_concentration_ = q.weight_concentration.detach().cpu().numpy()
        self.mean_precision_ = q.mean_precision.detach().cpu().numpy()
        dof = q.degrees_of_freedom.detach().cpu().numpy()
        self.degrees_of_freedom_ = float(dof) if dof.ndim == 0 else dof

    # ---------------------------------------------------------------------------- prediction

    def _log_joint(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.params_, gmm.GMMParams):  # one draw of posterior_draws
            return gmm.log_joint(x, self.params_)
        return bgmm.expected_log_joint(x, self.params_)

    @keeps_global_rng
    def posterior_draws(self, num_samples: int) -> list[gmm.GMMParams]:
        """Draws of the mixture from the fitted ``q`` (from torch's global generator, forked).

        The diagnostics (:func:`ppl_mixtures.diagnostics.to_inference_data`) seed the
        generator and turn them into ArviZ's posterior group.

        Parameters
        ----------
        num_samples : int

        Returns
        -------
        list of GMMParams
            Each with ``"full"`` covariances (K, D, D), the inverses of the drawn precisions
            (whatever ``covariance_type``: it constrains ``q``, and the model's precisions are
            full), and weights ``pi / sum(pi)`` over the K components.
        """
        self._check_fitted()
        check_int(num_samples, "num_samples", 1)
        with torch.no_grad():
            return bgmm.draw_mixtures(self.params_, num_samples)

    def _n_parameters(self) -> int:
        return metrics.n_parameters(self.n_components, self.n_features_in_, self.covariance_type)

    def _sample_tensors(self, n_samples: int, generator: torch.Generator):
        params = self.params_
        if not isinstance(params, gmm.GMMParams):
            params = bgmm.point_estimate(params)
        return gmm.sample(params, n_samples, generator)

    # ------------------------------------------------------------------------------ save/load

    def _param_tensors(self) -> dict[str, torch.Tensor]:
        return self.params_.tensors()

    def _restore(self, content: dict) -> None:
        self.params_ = bgmm.VariationalParams(
            covariance_type=self.covariance_type,
            weight_prior_type=self.weight_concentration_prior_type, **content["params"])
        priors = self._prior_tensors(self.params_.means)
        self.model_ = bgmm.BayesianGaussianMixtureModel(self.n_components, priors,
                                                        content["priors"])
        self.guide_ = bgmm.VariationalGuide(self.params_)
        self.guide_(self._placeholder_row())


__all__ = ["BayesianGaussianMixture"]
