"""scikit-learn style Gaussian mixture over one Pyro model: EM, SVI, NUTS, max-component SGD.

The EM path is the algorithm of Bishop (2006, section 9.2) with scikit-learn's M-step
helpers; the covariance types follow Balshaw (2022). SGD is the max-component SGD of
Gepperth & Pfülb (2021) (:mod:`ppl_mixtures.estimators._sgd`).
"""

from __future__ import annotations

from typing import Any

import torch
from sklearn.utils.metaestimators import available_if

from ppl_mixtures import metrics
from ppl_mixtures._rng import keeps_global_rng
from ppl_mixtures.estimators import _gmm_fit, _gmm_init
from ppl_mixtures.estimators._base import MixtureEstimator
from ppl_mixtures.estimators._gmm_hooks import GMMChecks, GMMModel, GMMPersistence
from ppl_mixtures.estimators._sgd import MaxComponentSGD
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
from ppl_mixtures.inference.em import gmm as em_gmm
from ppl_mixtures.inference.em import missing as em_missing
from ppl_mixtures.inference.init import INIT_METHODS
from ppl_mixtures.inference.mcmc import CHAIN_METHODS
from ppl_mixtures.models import gmm

INFERENCE_METHODS = ("em", "svi", "nuts", "sgd")
GUIDES = ("map", "mean_field")


def _sgd_only(estimator: GaussianMixture) -> bool:
    if estimator.inference != "sgd":
        raise AttributeError(f"partial_fit is available with inference='sgd' only, not "
                             f"inference={estimator.inference!r}")
    return True


class GaussianMixture(GMMChecks, GMMModel, GMMPersistence, MixtureEstimator):
    """Gaussian mixture fitted by EM, SVI, NUTS or max-component SGD over one Pyro model.

    Parameters
    ----------
    n_components : int, default 1
        Number of mixture components K.
    covariance_type : {"full", "tied", "diag", "tied_diag", "spherical"}, default "full"
        The covariance constraint (Balshaw 2022): ``full`` one matrix per component, ``tied`` one
        matrix shared, ``diag`` one diagonal per component, ``tied_diag`` one diagonal shared,
        ``spherical`` one variance per component.
    inference : {"em", "svi", "nuts", "sgd"}, default "em"
        ``"em"``: maximum likelihood by expectation-maximisation (scikit-learn's algorithm),
        in memory or out of core: :meth:`fit` on a stream of batches (a ``DataLoader``, a
        list of arrays) runs one pass over the batches per EM iteration, adding up the
        E-step's sufficient statistics, so memory stays bounded by one batch.
        ``"svi"``: stochastic variational inference with ``TraceEnum_ELBO`` over the Pyro model
        (assignments summed out), with a MAP or mean-field guide (``guide``).
        ``"nuts"``: NUTS over the global sites with the assignments summed out, started at a
        k-means initial point; for small data (it costs a full-data gradient per leapfrog
        step). Draws are relabelled to the starting components (``posterior_samples_``) and
        ``params_`` holds their posterior medians (weights renormalised; covariances from
        the median variances and the mean correlation), which the few draws relabelling
        cannot bring back (an empty component wandering under its prior) do not move.
        ``"sgd"``: max-component SGD with annealing (Gepperth & Pfülb 2021; details in
        :mod:`ppl_mixtures.estimators._sgd`), for streams too (:meth:`partial_fit`);
        ``"diag"``, ``"spherical"`` or ``"full"`` (local principal directions). Its defaults
        assume features of unit scale: scale the data first, as for any SGD.
    n_init : int, default 1
        Restarts; the one with the best final objective is kept.
    max_iter : int, optional
        EM iterations (default 100; 0 returns the initial values), SVI steps (default
        1000), NUTS draws per chain (default 200) or SGD epochs (default 20). EM and SVI
        warn (``sklearn.exceptions.ConvergenceWarning``) when they stop here short of ``tol``.
    tol : float, optional
        EM: stop when the mean log-likelihood per sample changes by less (default 1e-3).
        SVI: relative change of the smoothed loss (default 1e-5), see
        :class:`~ppl_mixtures.inference.svi.SVITrainer`. 0: run ``max_iter``, no warning.
        SGD runs its ``max_iter`` epochs: the annealing schedule is laid out over them.
    reg_covar : float, default 1e-6
        Added to every variance by EM's M-step and at initialisation (so EM's M-step is
        not the exact maximiser and the likelihood may dip slightly). 0: exact EM, which
        raises a ``ValueError`` when a component's covariance turns singular. Below a mean
        per-feature variance of 1e-3 it shrinks with the data (``DataScaleWarning``).
    init_params : {"kmeans", "k-means++", "random", "random_from_data"}, default "kmeans"
        How initial responsibilities are drawn.
    weights_init : array-like, shape (n_components,), optional
    means_init : array-like, shape (n_components, n_features), optional
    precisions_init : array-like, optional
        Initial precisions (inverse covariances), shaped as ``covariances_``.
    priors : dict of str to pyro.distributions.Distribution, optional
        Replace some of the default priors of
        :func:`~ppl_mixtures.models.priors.default_gmm_priors` (used by SVI; EM is maximum
        likelihood and ignores them).
    guide : {"map", "mean_field"}, default "map"
        SVI guide over the global sites: point masses (MAP) or independent Normals.
    lr : float, optional
        Learning rate. SVI (Adam): default 0.05. SGD (epsilon of eq. 10, Gepperth & Pfülb
        2021): default 0.011.
    batch_size : int, optional
        SVI minibatch size; None trains on the full data. SGD: samples per gradient step;
        None takes one sample per step for an array (the paper's B = 1) and each given batch
        whole for a stream of batches.
    random_state : int, RandomState, Generator or None
        Seeds initialisation and SVI.
    warm_start : bool, default False
        Each :meth:`fit` after the first continues from the last fit's parameters (one
        start: ``n_init`` is ignored), as scikit-learn's; EM compares its first E-step with
        the last ``lower_bound_``. Not with ``inference="sgd"`` (see :meth:`partial_fit`).
    verbose : int, default 0
        1: print each start and iteration number; 2: also times and changes of the
        log-likelihood (EM; SVI prints one line per start). Replaces the progress bar.
    verbose_interval : int, default 10
        Iterations between two printed lines.
    device : str, default "auto"
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    dtype : {None, "float32", "float64"} or torch dtype
        None follows the data: float32 arrays are fitted in float32, all else in float64.
    progress : bool, default True
        Progress bars (only shown on a terminal).
    checkpoint_path : str, optional
        SVI checkpoint file; with ``resume=True`` in :meth:`fit` training continues from it.
    num_warmup : int, default 200
        NUTS warm-up steps per chain.
    num_chains : int, default 1
        NUTS chains (see ``chain_method``).
    chain_method : {"auto", "parallel", "sequential"}, default "auto"
        How NUTS runs ``num_chains > 1`` chains: ``"parallel"``, one spawned process per
        chain (a script that fits so needs an ``if __name__ == "__main__":`` guard);
        ``"sequential"``, one after the other; ``"auto"``, in parallel when at least
        ``num_chains`` cores are free besides this process's
        (:func:`ppl_mixtures.inference.mcmc.run_nuts`).
    sgd_options : dict, optional
        SGD settings, any field of :class:`~ppl_mixtures.inference.sgd_gmm.SGDConfig` but
        ``lr`` and ``batch_size`` (see :mod:`ppl_mixtures.estimators._sgd`).
    n_principal_directions : int, optional
        SGD with ``covariance_type="full"``: S local principal directions per component
        (Gepperth & Pfülb 2021, section 3.5); None: S = D.
    distributed : bool, default False
        EM or SVI across the processes of an initialised ``torch.distributed`` group
        (``torchrun``, :func:`ppl_mixtures.distributed.init_from_env`): ``X`` is this rank's
        shard; EM sums each E-step's statistics over ranks, SVI the gradients, so every
        rank ends with the fit to all the data. Initial values are drawn on rank 0 and
        broadcast. See ``docs/scaling.md``.
    missing : {"error", "marginalize"}, default "error"
        What NaN entries of ``X`` mean. ``"error"``: they are refused. ``"marginalize"``: they
        are values missing at random, integrated out exactly. EM's E-step takes each row's
        conditional Gaussians given its observed entries (Ghahramani & Jordan 1994; rows
        grouped by missingness pattern for ``tied`` and ``full``), for every covariance type,
        in memory, on streams and distributed; SVI's and NUTS's Pyro model scores each row's
        observed entries only; SGD's max-component objective is that of the observed
        entries. :meth:`predict`, :meth:`predict_proba`, :meth:`score_samples` and
        :meth:`score` then take incomplete rows (a row with no observed entry has
        log-likelihood 0 and the mixing weights as its probabilities; in a fit it counts
        in ``n_samples`` but adds nothing), and :meth:`impute` fills NaN entries with their
        conditional means. Initial values are drawn from the data with NaN entries replaced
        by the column means. For every ``inference`` (SVI on one array).

    Attributes
    ----------
    weights_ : ndarray, shape (n_components,)
    means_ : ndarray, shape (n_components, n_features)
    covariances_ : ndarray
        spherical (K,), diag (K, D), tied_diag (D,), tied (D, D), full (K, D, D).
    precisions_, precisions_cholesky_ : ndarray
        Inverses of ``covariances_`` and their Cholesky factors, as in scikit-learn.
    converged_ : bool
        SGD: True once the annealing has ended (the loss is eq. 2 of Gepperth & Pfülb 2021 itself).
    n_iter_ : int
    history_ : list of float
        Per EM iteration: mean log-likelihood per sample at its E-step (equal to
        ``lower_bounds_``). Per SVI step: loss per sample.
        Per NUTS draw: mean log-likelihood per sample at that draw. Per SGD epoch (or
        :meth:`partial_fit` call): the smoothed max-component loss per sample (eq. 7).
    sgd_history_ : dict of str to list of float
        SGD only, per epoch: ``"loss"`` (eq. 7), ``"max_component_loss"`` (eq. 2), ``"nll"``
        (eq. 1, the exact negative log-likelihood) and ``"sigma"``, averaged over the
        epoch's steps.
    posterior_samples_ : dict of str to ndarray
        NUTS only: the draws of every global site, chains concatenated, relabelled.
    r_hat_ : dict of str to ndarray
        NUTS only: split-R-hat of every site (after relabelling); ``converged_`` is
        ``max r_hat < 1.1``.
    sampler_stats_ : dict of str to ndarray
        NUTS only: ``"diverging"`` (num_chains, max_iter) bool and ``"acceptance_rate"``
        (num_chains,) (:func:`ppl_mixtures.inference.mcmc.sampler_statistics`).
    lower_bound_ : float
        EM: scikit-learn's meaning, the mean log-likelihood per sample at the last E-step
        (before the last M-step; over all batches of all ranks; ``-inf`` with
        ``max_iter=0``); :meth:`score` gives that of the fitted parameters. Other paths: the
        mean log-likelihood per sample of the fitted parameters (SGD on a stream: over the
        last batch).
    lower_bounds_ : list of float
        EM only: ``lower_bound_`` at every iteration.
    restart_log_likelihoods_ : list of float
        EM only: the final mean log-likelihood of every start (the best is kept).
    params_ : GMMParams
        The fitted tensors, on ``device``.
    model_ : GaussianMixtureModel
        The Pyro model (call it with data, condition it, trace it). After an EM fit (maximum
        likelihood, which never reads the priors) it is built when first read.
    guide_ : AutoDelta or AutoNormal
        The Pyro guide: the trained one for SVI, a MAP guide at the EM estimate otherwise.
        Its values live in the Pyro param store state ``param_store_state_``: use them inside
        ``with pyro.get_param_store().scope(est.param_store_state_):``.
    n_features_in_, fit_seconds_ : int, float
    """

    _parameter_constraints = {
        **COMMON_CONSTRAINTS,
        "n_components": [Integer(1)],
        "covariance_type": [Options(gmm.COVARIANCE_TYPES)],
        "inference": [Options(INFERENCE_METHODS)],
        "reg_covar": [Real(0.0)],
        "init_params": [Options(INIT_METHODS)],
        "priors": [DICT, NONE],
        "guide": [Options(GUIDES)],
        "num_warmup": [Integer(0)],
        "num_chains": [Integer(1)],
        "chain_method": [Options(CHAIN_METHODS)],
        "sgd_options": [DICT, NONE],
        "n_principal_directions": [Integer(1), NONE],
        "max_iter": [Integer(0), NONE],
        "warm_start": [BOOLEAN],
        "verbose": [Integer(0), BOOLEAN],
        "verbose_interval": [Integer(1)],
        "missing": [Options(("error", "marginalize"))],
    }
    _inference_methods = INFERENCE_METHODS
    _stream_inference_methods = ("em", "svi", "sgd")
    _missing_inference_methods = ("em", "svi", "sgd", "nuts")
    _distributed_inference_methods = ("em", "svi")
    _init_hint = ", or weights_init, means_init and precisions_init"
    _default_max_iter = {"em": 100, "svi": 1000, "nuts": 200, "sgd": 20}
    _default_tol = {"em": 1e-3, "svi": 1e-5, "nuts": 0.0, "sgd": 0.0}
    _default_lr = {"svi": 0.05}

    def __init__(
        self,
        n_components: int = 1,
        *,
        covariance_type: str = "full",
        inference: str = "em",
        n_init: int = 1,
        max_iter: int | None = None,
        tol: float | None = None,
        reg_covar: float = 1e-6,
        init_params: str = "kmeans",
        weights_init: Any = None,
        means_init: Any = None,
        precisions_init: Any = None,
        priors: dict | None = None,
        guide: str = "map",
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
        sgd_options: dict | None = None,
        n_principal_directions: int | None = None,
        distributed: bool = False,
        missing: str = "error",
    ) -> None:
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.inference = inference
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.reg_covar = reg_covar
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.priors = priors
        self.guide = guide
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
        self.sgd_options = sgd_options
        self.n_principal_directions = n_principal_directions
        self.distributed = distributed
        self.missing = missing

    # ------------------------------------------------------------------------------- fitting

    def _fit(self, source: DataSource, generator: torch.Generator, resume: bool) -> None:
        self._sgd = None  # a new fit drops the SGD trainer of the last one
        sample = source.sample
        given = {} if self.inference == "sgd" else _gmm_init.check_init_arrays(self,
                                                                              sample.shape[1])
        if self._warm_start_from is not None:
            given = _gmm_fit.warm_given(self._warm_start_from[0])
        moments = source.prior_moments()  # those the data check took, if it did
        if (self.inference == "svi" and not source.whole_data_in_memory) or (
                source.weights is not None):
            # priors from all the data (and its rows), weighted with sample weights
            mean, variance, _ = source.moments()
            moments = (mean, variance)
        if self.inference == "em":  # maximum likelihood: the priors are built when read
            self._defer_model(sample, moments)
        else:
            self.model_ = self._build_model(sample, moments)
        weights = source.sample_weights
        if self.inference == "em":
            self._fit_em_restarts(
                source,
                lambda rows: _gmm_init.initial_params(self, rows, generator, given, weights),
                em_gmm.e_step, _gmm_fit.em_m_step(self, sample), "GMM EM", gmm.map_guide,
                needs_rows=len(given) < 3, monotone=self.reg_covar == 0,
            )
        elif self.inference == "sgd":
            self._sgd = MaxComponentSGD(self)
            self._sgd.fit(source, generator)
        elif self.inference == "svi":
            self._fit_svi(source, generator, given, resume)
        else:
            _gmm_fit.fit_nuts(self, sample, generator, given, weights)

    def _fit_svi(self, source: DataSource, generator: torch.Generator, given: dict,
                 resume: bool) -> None:
        """SVI on a matrix, a stream of batches (one step per batch) or this rank's shard.

        Initial values not given come from the sample (a stream: its first batch);
        distributed, the trainer broadcasts rank 0's. On a stream or distributed,
        ``lower_bound_`` is the log-likelihood per sample of all the data, from one more pass.
        """
        make_guide = gmm.map_guide if self.guide == "map" else gmm.mean_field_guide
        guide, _ = self._fit_svi_restarts(
            source, generator, resume,
            lambda: make_guide(self.model_, _gmm_init.initial_params(
                self, source.sample, generator, given, source.sample_weights)),
        )
        self.params_ = gmm.guide_params(guide, self.covariance_type)
        if not source.whole_data_in_memory:
            e_step = em_missing.gmm_e_step if self._marginalize else em_gmm.e_step
            with torch.no_grad():
                stats = source.e_step(e_step)(source.data, self.params_)
            self.lower_bound_ = float(stats.log_likelihood) / float(stats.n_samples)

    @available_if(_sgd_only)
    @keeps_global_rng
    def partial_fit(self, X: Any, y: Any = None, sample_weight: Any = None):
        """One pass of SGD steps over the batch ``X``, continuing from earlier calls.

        The first call (or the first after :meth:`fit` with another inference) starts from
        the initial point of Gepperth & Pfülb (2021); later ones continue training, the
        annealing clock included. The annealing horizon is ``sgd_options["total_steps"]``,
        by default the paper's ``1000 sqrt(K)`` steps (section 4); calls past it train at
        ``sigma_inf``. ``n_init`` is not used. Only with ``inference="sgd"``. :meth:`save`
        keeps the SGD trainer's state (parameters, annealing clock, history, random state),
        so that ``partial_fit`` after :meth:`load` goes on exactly where it stopped.

        Parameters
        ----------
        X : array-like, shape (n_samples, n_features)
        y : ignored
        sample_weight : array-like of shape (n_samples,), float or None
            The rows' weights, as in :meth:`fit`: a step's loss is the weighted mean over its
            rows (divided by the batch's mean weight, so a minibatch of one row still counts
            its weight).

        Returns
        -------
        self
        """
        if getattr(self, "_sgd", None) is None:
            self._sgd = MaxComponentSGD(self)
        self._sgd.partial_fit(X, sample_weight)
        return self

    def _set_fitted(self) -> None:
        vars(self).update(_gmm_fit.fitted_arrays(self.params_))

    # ---------------------------------------------------------------------------- prediction

    def _log_joint(self, x: torch.Tensor) -> torch.Tensor:
        if self._marginalize:
            return em_missing.gmm_log_joint(x, self.params_)
        return em_gmm.scoring_log_joint(x, self.params_)

    def _missing_e_step(self):
        return em_missing.gmm_e_step

    def _impute(self, x: torch.Tensor) -> torch.Tensor:
        return em_missing.gmm_impute(x, self.params_)

    def _n_parameters(self) -> int:
        k, d, rank = self.n_components, self.n_features_in_, self.n_principal_directions
        if self.inference == "sgd" and self.covariance_type == "full" and rank and rank < d:
            # mean, S orthonormal directions (a Stiefel manifold), S + 1 variances
            per_component = d + rank * d - rank * (rank + 1) // 2 + rank + 1
            return k * per_component + k - 1
        return metrics.n_parameters(k, d, self.covariance_type)

    def _sample_tensors(self, n_samples: int, generator: torch.Generator):
        return gmm.sample(self.params_, n_samples, generator)
