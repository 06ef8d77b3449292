"""scikit-learn style estimator for the mixture of factor analysers (Selosse et al. 2020, section 1).

:class:`MixtureOfFactorAnalyzers` builds the collapsed Pyro model of
:mod:`ppl_mixtures.models.mfa` and fits it by EM (Ghahramani & Hinton's algorithm,
:mod:`ppl_mixtures.inference.em.mfa`) or by SVI with a MAP guide; both paths score data with
the same low-rank helper, so ``score``, ``predict_proba`` and ``bic`` mean the same after
either.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.base import TransformerMixin

from ppl_mixtures._rng import keeps_global_rng
from ppl_mixtures.estimators import _nuts
from ppl_mixtures.estimators._base import MixtureEstimator
from ppl_mixtures.estimators._sources import DataSource
from ppl_mixtures.estimators._validation import (
    BOOLEAN,
    COMMON_CONSTRAINTS,
    DICT,
    NONE,
    Integer,
    Options,
    Real,
)
from ppl_mixtures.inference.em import mfa as em_mfa
from ppl_mixtures.inference.em import missing as em_missing
from ppl_mixtures.inference.init import INIT_METHODS, initial_responsibilities
from ppl_mixtures.inference.mcmc import CHAIN_METHODS
from ppl_mixtures.models import mfa

INFERENCE_METHODS = ("em", "svi", "nuts")
#: Sites (and the derived covariances) whose split-R-hat decides ``converged_`` after NUTS: the
#: loadings are left out, since the prior and the likelihood are invariant to rotating them.
_IDENTIFIED = ("weights", "means", "noise_variances", "covariances")


def n_parameters(n_components: int, n_features: int, n_factors: int) -> int:
    """Free parameters of a mixture of factor analysers.

    ``K - 1`` weights + ``K D`` means + ``K (D r - r (r - 1) / 2)`` loadings (each
    ``Lambda_g`` is determined up to an r x r rotation, which removes ``r (r - 1) / 2``) +
    ``K D`` noise variances.

    Parameters
    ----------
    n_components, n_features, n_factors : int
        K, D and r.

    Returns
    -------
    int
    """
    k, d, r = n_components, n_features, n_factors
    return (k - 1) + k * d + k * (d * r - r * (r - 1) // 2) + k * d


class MixtureOfFactorAnalyzers(TransformerMixin, MixtureEstimator):
    """Mixture of factor analysers fitted by EM, SVI or NUTS over one Pyro model.

    Each component is a factor analyser ``x = eta_g + Lambda_g z + u`` with
    ``z ~ N(0, I_r)`` and ``u ~ N(0, diag(psi_g))``, i.e. a Gaussian with the low-rank plus
    diagonal covariance ``Lambda_g Lambda_g^T + diag(psi_g)``: ``K (D r + 2 D)`` parameters
    instead of the full GMM's ``K D (D + 3) / 2``. It is also a scikit-learn transformer:
    :meth:`transform` (and ``fit_transform``) give factor scores.

    Parameters
    ----------
    n_components : int, default 1
        Number of components K.
    n_factors : int, default 1
        Latent dimension r, ``1 <= r < n_features``.
    inference : {"em", "svi", "nuts"}, default "em"
        ``"em"``: maximum likelihood by Ghahramani & Hinton's EM (monotone), in memory or
        out of core: :meth:`fit` on a stream of batches (a ``DataLoader``, a list of arrays)
        runs one pass over the batches per EM iteration, adding up the E-step's sufficient
        statistics, so memory stays bounded by one batch; the initial values are drawn
        from the first batch.
        ``"svi"``: MAP by stochastic variational inference with ``TraceEnum_ELBO`` over the
        collapsed Pyro model (assignments enumerated, factors integrated out).
        ``"nuts"``: NUTS over the collapsed model's globals (assignments summed out, factors
        integrated out), started at the ``init_params`` estimate; ``max_iter`` draws per
        chain. The loadings are identified only up to a rotation per component, so they
        cannot be averaged: ``params_`` is the draw of highest posterior density, and
        ``converged_`` reads the R-hat of the weights, means, noise variances and
        covariances ``Lambda Lambda^T + psi``, not of the loadings.
    n_init : int, default 1
        Restarts; the one with the best final objective is kept.
    max_iter : int, optional
        EM iterations (default 200; 0 returns the initial values), SVI steps (default 1000)
        or NUTS draws per chain (default 200). EM and SVI warn
        (``sklearn.exceptions.ConvergenceWarning``) when they stop here short of ``tol``.
    tol : float, optional
        EM: stop when the mean log-likelihood per sample changes by less (default 1e-3).
        SVI: relative change of the smoothed loss (default 1e-5). 0: run ``max_iter``.
    init_params : {"kmeans", "k-means++", "random", "random_from_data"}, default "kmeans"
        Initial responsibilities; the parameters then come from a weighted PPCA per component.
    reg_covar : float, default 1e-6
        Floor on every noise variance (EM) and added at initialisation.
        Scaled down with the data when its mean per-feature variance is below 1e-3 (a
        ``DataScaleWarning`` says so).
    priors : dict of str to pyro.distributions.Distribution, optional
        Replace some of :func:`~ppl_mixtures.models.mfa.default_mfa_priors` (used by SVI; EM
        is maximum likelihood and ignores them).
    lr : float, optional
        Adam learning rate of SVI; None: 0.05.
        SVI learning rate (Adam).
    batch_size : int, optional
        SVI minibatch size; None trains on the full data.
    random_state : int, RandomState, Generator or None
    warm_start, verbose, verbose_interval
        As for :class:`~ppl_mixtures.estimators.GaussianMixture`: continue from the last
        fit's parameters (one start), and print progress.
    device : str, default "auto"
    dtype : {None, "float32", "float64"} or torch dtype
        None follows the data.
    progress : bool, default True
    checkpoint_path : str, optional
        SVI checkpoint file; with ``resume=True`` in :meth:`fit` training continues from it.
    num_warmup : int, default 200
        NUTS warm-up (adaptation) steps per chain.
    num_chains : int, default 1
        NUTS chains (see ``chain_method``).
    chain_method : {"auto", "parallel", "sequential"}, default "auto"
        How NUTS runs ``num_chains > 1`` chains: ``"parallel"``, one spawned process per
        chain (a script that fits so needs an ``if __name__ == "__main__":`` guard);
        ``"sequential"``, one after the other; ``"auto"``, in parallel when at least
        ``num_chains`` cores are free besides this process's
        (:func:`ppl_mixtures.inference.mcmc.run_nuts`).
    distributed : bool, default False
        EM across processes (``inference="em"`` only): ``torch.distributed`` must be
        initialised by the caller (launch with ``torchrun`` and call
        :func:`ppl_mixtures.distributed.init_from_env`). The ``X`` given to :meth:`fit` on
        each rank is that rank's shard (an array or a stream of batches); each E-step's
        statistics are summed over ranks (``all_reduce``) and every rank runs the same
        M-step, so every rank ends with the fit to all the data, ``history_``,
        ``lower_bound_`` and convergence included. The initial values are drawn by
        ``init_params`` on rank 0's shard (its first batch for a stream) and broadcast.
        See ``docs/scaling.md``.
    missing : {"error", "marginalize"}, default "error"
        What NaN entries of ``X`` mean. ``"error"``: they are refused. ``"marginalize"``: they
        are values missing at random, integrated out exactly: EM's E-step takes the
        expectations over the factors and the missing entries given each row's observed ones
        (Ghahramani & Jordan 1994), in memory, on streams and distributed; SVI's and NUTS's
        Pyro model scores the observed entries only. :meth:`predict`, :meth:`predict_proba`,
        :meth:`score_samples` and :meth:`score` then take incomplete rows (a row with no
        observed entry has log-likelihood 0 and the mixing weights as its probabilities),
        and :meth:`impute` fills NaN entries with their conditional means. For every
        ``inference``.

    Attributes
    ----------
    weights_ : ndarray, shape (n_components,)
    means_ : ndarray, shape (n_components, n_features)
    loadings_ : ndarray, shape (n_components, n_features, n_factors)
    noise_variances_ : ndarray, shape (n_components, n_features)
    covariances_ : ndarray, shape (n_components, n_features, n_features)
        Dense ``Lambda_g Lambda_g^T + diag(psi_g)``.
    converged_, n_iter_, history_, lower_bound_, lower_bounds_, n_features_in_, fit_seconds_
        As for :class:`~ppl_mixtures.estimators.GaussianMixture` (EM's ``lower_bound_``:
        the last E-step's mean log-likelihood per sample, over all batches of all ranks).
    params_ : MFAParams
    model_ : MixtureOfFactorAnalyzersModel
        The collapsed Pyro model.
    guide_ : AutoDelta
        MAP guide (trained by SVI, or at the EM or NUTS estimate); its values live in
        ``param_store_state_``.
    posterior_samples_ : dict of str to ndarray
        NUTS only: draws of every global site, chains concatenated, relabelled.
    r_hat_ : dict of str to ndarray
        NUTS only: split-R-hat of every site and of the derived ``"covariances"``.
    sampler_stats_ : dict of str to ndarray
        NUTS only: ``"diverging"`` (num_chains, max_iter) and ``"acceptance_rate"``.
    """

    _parameter_constraints = {
        **COMMON_CONSTRAINTS,
        "n_components": [Integer(1)],
        "n_factors": [Integer(1)],
        "inference": [Options(INFERENCE_METHODS)],
        "init_params": [Options(INIT_METHODS)],
        "reg_covar": [Real(0.0)],
        "priors": [DICT, NONE],
        "num_warmup": [Integer(0)],
        "num_chains": [Integer(1)],
        "chain_method": [Options(CHAIN_METHODS)],
        "max_iter": [Integer(0), NONE],
        "warm_start": [BOOLEAN],
        "verbose": [Integer(0), BOOLEAN],
        "verbose_interval": [Integer(1)],
        "missing": [Options(("error", "marginalize"))],
    }
    _inference_methods = INFERENCE_METHODS
    _stream_inference_methods = ("em",)
    _distributed_inference_methods = ("em",)
    _missing_inference_methods = ("em", "svi", "nuts")
    _default_max_iter = {"em": 200, "svi": 1000, "nuts": 200}
    _default_tol = {"em": 1e-3, "svi": 1e-5, "nuts": 0.0}
    _default_lr = {"svi": 0.05}

    def __init__(
        self,
        n_components: int = 1,
        n_factors: int = 1,
        *,
        inference: str = "em",
        n_init: int = 1,
        max_iter: int | None = None,
        tol: float | None = None,
        init_params: str = "kmeans",
        reg_covar: float = 1e-6,
        priors: dict | None = None,
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
        num_warmup: int = 200,
        num_chains: int = 1,
        chain_method: str = "auto",
        distributed: bool = False,
        missing: str = "error",
    ) -> None:
        self.n_components = n_components
        self.n_factors = n_factors
        self.inference = inference
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.init_params = init_params
        self.reg_covar = reg_covar
        self.priors = priors
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
        self.num_warmup = num_warmup
        self.num_chains = num_chains
        self.chain_method = chain_method
        self.distributed = distributed
        self.missing = missing

    # ----------------------------------------------------------------------------- validation

    def _check_n_factors(self, n_features: int) -> None:
        if self.n_factors >= n_features:
            raise ValueError(
                f"n_factors={self.n_factors} must be < n_features={n_features}: a factor "
                "analyser needs fewer factors than features; lower n_factors (or use "
                "GaussianMixture with covariance_type='full')"
            )

    def _shape_key(self) -> dict[str, Any]:
        return {"n_components": self.n_components, "n_factors": self.n_factors}

    # ------------------------------------------------------------------------------- fitting

    def _initial_params(self, x: torch.Tensor, generator: torch.Generator,
                        weights: torch.Tensor | None = None) -> mfa.MFAParams:
        """The initial values (the last fit's when warm); ``weights``: the rows' weights."""
        if self._warm_start_from is not None:  # warm_start: the last fit's parameters
            return self._warm_start_from[0]
        x = em_missing.mean_impute(x)  # missing="marginalize": NaN -> column means, to start
        resp = initial_responsibilities(x, self.n_components, self.init_params, generator,
                                        weights)
        return em_mfa.params_from_responsibilities(x, resp, self.n_factors, self.reg_covar,
                                                   weights)

    def _build_model(self, priors: dict) -> mfa.MixtureOfFactorAnalyzersModel:
        return mfa.MixtureOfFactorAnalyzersModel(
            self.n_components, self.n_features_in_, self.n_factors, priors,
            missing=self._marginalize,
        )

    def _fit(self, source: DataSource, generator: torch.Generator, resume: bool) -> None:
        x = source.sample  # a stream (EM only): its first batch
        weights = source.sample_weights  # the weights of the rows of x (None: unweighted)
        self._check_n_factors(x.shape[1])
        # weighted: the moments of the weighted rows; else those the data check took, if it did
        moments = source.moments()[:2] if source.weights is not None else source.prior_moments()
        priors = mfa.default_mfa_priors(x, self.n_components, self.n_factors, moments=moments)
        priors.update(self.priors or {})
        self.model_ = self._build_model(priors)

        def start(rows: torch.Tensor) -> mfa.MFAParams:  # weights passed only when given
            if weights is None:
                return self._initial_params(rows, generator)
            return self._initial_params(rows, generator, weights)

        if self.inference == "em":
            self._fit_em_restarts(
                source, start, em_mfa.e_step,
                lambda stats: em_mfa.m_step(stats, self.reg_covar), "MFA EM", mfa.map_guide,
            )
        elif self.inference == "svi":
            guide, _ = self._fit_svi_restarts(
                source, generator, resume,
                lambda: mfa.map_guide(self.model_, start(x)),
            )
            self.params_ = mfa.guide_params(guide)
        else:
            self._fit_nuts(x, generator, weights)

    def _fit_nuts(self, x: torch.Tensor, generator: torch.Generator,
                  weights: torch.Tensor | None = None) -> None:
        """NUTS; the estimate is the draw of highest posterior density.

        With ``weights`` the likelihood is ``sum_n w_n log p(x_n)`` and ``history_`` its
        weighted mean per draw.
        """
        initial = (self._initial_params(x, generator) if weights is None
                   else self._initial_params(x, generator, weights))
        draws = _nuts.draw_posterior(
            self, x, generator, mfa.params_to_sites(initial),
            list(mfa.MFA_GLOBAL_SITES), mfa.sites_to_params, weights,
        )
        total = float(x.shape[0]) if weights is None else float(weights.sum())
        with torch.no_grad():
            log_joint = em_missing.mfa_log_joint if self._marginalize else mfa.log_joint
            log_lik = torch.stack([_weighted_sum(torch.logsumexp(log_joint(x, d), -1), weights)
                                   for d in draws])
            log_density = log_lik + torch.stack([self.model_.log_prior(d) for d in draws])
            covariances = torch.stack([mfa.covariance_matrices(d) for d in draws])
        self.params_ = draws[int(log_density.argmax())]
        self.history_ = (log_lik / total).tolist()
        draws_and_derived = {**self.posterior_samples_, "covariances": covariances.cpu().numpy()}
        _nuts.finish(self, x, draws_and_derived, _IDENTIFIED, mfa.map_guide)

    def _set_fitted(self) -> None:
        params = self.params_

        def to_numpy(t: torch.Tensor) -> np.ndarray:
            return t.detach().cpu().numpy()

        self.weights_ = to_numpy(params.weights)
        self.means_ = to_numpy(params.means)
        self.loadings_ = to_numpy(params.loadings)
        self.noise_variances_ = to_numpy(params.noise_variances)
        self.covariances_ = to_numpy(mfa.covariance_matrices(params))

    # ---------------------------------------------------------------------------- prediction

    def _log_joint(self, x: torch.Tensor) -> torch.Tensor:
        if self._marginalize:
            return em_missing.mfa_log_joint(x, self.params_)
        return mfa.log_joint(x, self.params_)

    def _missing_e_step(self):
        return em_missing.mfa_e_step

    def _impute(self, x: torch.Tensor) -> torch.Tensor:
        return em_missing.mfa_impute(x, self.params_)

    def _n_parameters(self) -> int:
        return n_parameters(self.n_components, self.n_features_in_, self.n_factors)

    def _sample_tensors(self, n_samples: int, generator: torch.Generator):
        return mfa.sample(self.params_, n_samples, generator)

    @keeps_global_rng
    def transform(self, X: Any) -> np.ndarray:
        """Factor scores: ``E[z | x_n, g_n]`` under each sample's most probable component.

        The factor spaces of different components are unrelated (each ``Lambda_g`` is
        defined up to its own rotation), so a responsibility-weighted average of scores would
        mix incomparable coordinates; the scores of the MAP component are returned instead.
        Use :func:`ppl_mixtures.models.mfa.posterior_factors` for every component's.

        Parameters
        ----------
        X : array-like, shape (n_samples, n_features)

        Returns
        -------
        ndarray, shape (n_samples, n_factors)
        """
        x = self._fitted_x(X)
        with torch.no_grad():
            if self._marginalize:  # scores from the observed entries of incomplete rows
                log_prob, factor_means = em_missing.mfa_component_terms(x, self.params_)
            else:
                log_prob, factor_means, _ = mfa.component_terms(x, self.params_)
            best = (log_prob + self.params_.weights.log()).argmax(-1)
            rows = torch.arange(x.shape[0], device=x.device)
            return factor_means[rows, best].cpu().numpy()

    # ------------------------------------------------------------------------------ save/load

    def _param_tensors(self) -> dict[str, torch.Tensor]:
        return self.params_.tensors()

    def _restore(self, content: dict) -> None:
        self.params_ = mfa.MFAParams(**content["params"])
        self.model_ = self._build_model(content["priors"])
        self.guide_ = mfa.map_guide(self.model_, self.params_)
        self.guide_(self._placeholder_row())


__all__ = ["MixtureOfFactorAnalyzers", "n_parameters"]


def _weighted_sum(values: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """``values.sum()``, or ``sum_n w_n v_n`` with weights (shape (N,) both)."""
    return values.sum() if weights is None else weights @ values
