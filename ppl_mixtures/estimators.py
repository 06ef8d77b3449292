"""scikit-learn style estimators over the zoo's Pyro models.

Each estimator validates its input once, here, builds the Pyro model of
:mod:`ppl_mixtures.models`, and fits it with the inference path named by ``inference``.
Fitted attributes are NumPy arrays, as in scikit-learn; ``params_`` keeps the tensors on
their device.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyro
import torch
from pyro.infer import TraceEnum_ELBO
from sklearn.utils.metaestimators import available_if

from ppl_mixtures import distributed as dist_em
from ppl_mixtures import metrics
from ppl_mixtures._em_sources import (
    StreamingEMMixin,
    _EMBatches,
    _is_batch_source,
    _ValidatedBatches,
)
from ppl_mixtures._estimator_base import (
    MixtureEstimator,
    check_int,
    resolve_device,
)
from ppl_mixtures.inference.em import gmm as em_gmm
from ppl_mixtures.inference.init import INIT_METHODS, initial_responsibilities, resolve_generator
from ppl_mixtures.inference.mcmc import sample_posterior, split_r_hat
from ppl_mixtures.inference.sgd_gmm import SGDConfig, SGDGMMTrainer
from ppl_mixtures.models import gmm
from ppl_mixtures.models.priors import default_gmm_priors

INFERENCE_METHODS = ("em", "svi", "nuts", "sgd")
GUIDES = ("map", "mean_field")
_DEFAULT_MAX_ITER = {"em": 100, "svi": 1000, "nuts": 200, "sgd": 20}
_DEFAULT_TOL = {"em": 1e-3, "svi": 1e-5, "nuts": 0.0, "sgd": 0.0}
_DEFAULT_LR = {"svi": 0.05, "sgd": 0.011}
#: Covariance types max-component SGD fits ("full" through local principal directions).
SGD_COVARIANCE_TYPES = ("diag", "spherical", "full")
#: SGD settings given by the estimator's own arguments, not by ``sgd_options``.
_SGD_OWN_ARGUMENTS = ("lr", "batch_size")


def _sgd_only(estimator: GaussianMixture) -> bool:
    if estimator.inference != "sgd":
        raise AttributeError(f"partial_fit is available with inference='sgd' only, not "
                             f"inference={estimator.inference!r}")
    return True


class GaussianMixture(StreamingEMMixin, MixtureEstimator):
    """Gaussian mixture fitted by EM, SVI, NUTS or max-component SGD over one Pyro model.

    Parameters
    ----------
    n_components : int, default 1
        Number of mixture components K.
    covariance_type : {"full", "tied", "diag", "tied_diag", "spherical"}, default "full"
        The covariance constraint (seed 001): ``full`` one matrix per component, ``tied`` one
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
        ``params_`` holds the posterior means of weights, means and covariances.
        ``"sgd"``: max-component SGD with annealing (seed 004,
        :class:`~ppl_mixtures.inference.sgd_gmm.SGDGMMTrainer`): plain gradient steps on the
        smoothed max-component bound of the negative log-likelihood, from tiny random means
        (``init_params`` is not used), for streams too (:meth:`partial_fit`, or :meth:`fit`
        on a ``DataLoader`` or a list of batches). Covariance types ``"diag"``,
        ``"spherical"``, or ``"full"`` through local principal directions
        (``n_principal_directions``; left None, all D directions are trained: pass
        ``covariance_type="diag"`` for the seed's own model). Its defaults are in data units and assume features of
        unit scale (the seed's images in [0, 1]): scale the data first, as for any SGD.
    n_init : int, default 1
        Restarts; the one with the best final objective is kept.
    max_iter : int, optional
        EM iterations (default 100), SVI steps (default 1000), NUTS draws per chain
        (default 200) or SGD epochs (default 20).
    tol : float, optional
        EM: stop when the mean log-likelihood per sample changes by less (default 1e-3).
        SVI: relative change of the smoothed loss (default 1e-5), see
        :class:`~ppl_mixtures.inference.svi.SVITrainer`. SGD runs its ``max_iter`` epochs:
        the annealing schedule is laid out over them, so it does not stop early.
    reg_covar : float, default 1e-6
        Added to every variance by EM's M-step and at initialisation.
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
        Learning rate. SVI (Adam): default 0.05. SGD (epsilon of eq. 10, seed 004): default
        0.011.
    batch_size : int, optional
        SVI minibatch size; None trains on the full data. SGD: samples per gradient step;
        None takes one sample per step for an array (the seed's B = 1) and each given batch
        whole for a stream of batches.
    random_state : int, RandomState, Generator or None
        Seeds initialisation and SVI.
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
        NUTS chains (run one after the other).
    sgd_options : dict, optional
        SGD settings, any field of :class:`~ppl_mixtures.inference.sgd_gmm.SGDConfig` but
        ``lr`` and ``batch_size``: ``sigma_min`` (smallest standard deviation, 0.15),
        ``sigma0``/``sigma_inf``/``t0``/``t_inf`` (the annealing of eq. 9), ``total_steps``
        (the annealing horizon; :meth:`partial_fit` defaults to the seed's 1000 sqrt(K)
        steps), ``lambda_pi``/``lambda_mu``/``lambda_sigma`` (adaptation strengths),
        ``grid_shape``, ``mu_init``, ``shuffle``, and ``lr_final`` (ours: a learning rate
        decaying after annealing, which removes the jitter of constant-rate B = 1 steps).
    n_principal_directions : int, optional
        SGD with ``covariance_type="full"``: S local principal directions per component
        (section 3.5 of seed 004), each with its own variance, and one variance for the
        rest of the space; K((S + 1) D + 2) values instead of K(D^2 + D + 1). None: S = D.
    distributed : bool, default False
        EM or SVI across processes (``inference="em"`` or ``"svi"``): ``torch.distributed``
        must be initialised by the caller (launch with ``torchrun`` and call
        :func:`ppl_mixtures.distributed.init_from_env`). The ``X`` given to :meth:`fit` on
        each rank is that rank's shard (an array or a stream of batches). EM: each E-step's
        statistics are summed over ranks (``all_reduce``) and every rank runs the same
        M-step. SVI: data parallel, the gradients summed over ranks with the likelihood of
        each shard and minibatch scaled so that every step is the single-process step on
        all the data (:class:`~ppl_mixtures.inference.svi.SVITrainer`), the priors set from
        all ranks' data. Either way every rank ends with the fit to all the data,
        ``history_``, ``lower_bound_`` and convergence included. Initial values not given
        (``weights_init``, ``means_init``, ``precisions_init``) are drawn by ``init_params``
        on rank 0's shard and broadcast. See ``docs/scaling.md``.

    Attributes
    ----------
    weights_ : ndarray, shape (n_components,)
    means_ : ndarray, shape (n_components, n_features)
    covariances_ : ndarray
        spherical (K,), diag (K, D), tied_diag (D,), tied (D, D), full (K, D, D).
    precisions_, precisions_cholesky_ : ndarray
        Inverses of ``covariances_`` and their Cholesky factors, as in scikit-learn.
    converged_ : bool
        SGD: True once the annealing has ended (the loss is eq. 2 of seed 004 itself).
    n_iter_ : int
    history_ : list of float
        Per EM iteration: mean log-likelihood per sample. Per SVI step: loss per sample.
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
        Mean log-likelihood per sample of the fitted parameters (SGD on a stream: over the
        last batch; EM on a stream or distributed: over all batches of all ranks; EM on an
        iterator, which is read once: at the parameters of its one E-step).
    params_ : GMMParams
        The fitted tensors, on ``device``.
    model_ : GaussianMixtureModel
        The Pyro model (call it with data, condition it, trace it).
    guide_ : AutoDelta or AutoNormal
        The Pyro guide: the trained one for SVI, a MAP guide at the EM estimate otherwise.
        Its values live in the Pyro param store state ``param_store_state_``: use them inside
        ``with pyro.get_param_store().scope(est.param_store_state_):``.
    n_features_in_ : int
    fit_seconds_ : float
    """

    _inference_methods = INFERENCE_METHODS
    _stream_inference_methods = ("em", "svi", "sgd")
    _distributed_inference_methods = ("em", "svi")
    _init_hint = ", or weights_init, means_init and precisions_init"
    _default_max_iter = _DEFAULT_MAX_ITER
    _default_tol = _DEFAULT_TOL
    _default_lr = _DEFAULT_LR

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
        device: str = "auto",
        dtype: Any = None,
        progress: bool = True,
        checkpoint_path: str | None = None,
        num_warmup: int = 200,
        num_chains: int = 1,
        sgd_options: dict | None = None,
        n_principal_directions: int | None = None,
        distributed: bool = False,
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
        self.device = device
        self.dtype = dtype
        self.progress = progress
        self.checkpoint_path = checkpoint_path
        self.num_warmup = num_warmup
        self.num_chains = num_chains
        self.sgd_options = sgd_options
        self.n_principal_directions = n_principal_directions
        self.distributed = distributed

    # ----------------------------------------------------------------------------- validation

    def _check_arguments(self) -> None:
        check_int(self.n_components, "n_components", 1)
        self._check_shared_arguments()
        if self.covariance_type not in gmm.COVARIANCE_TYPES:
            raise ValueError(
                f"covariance_type={self.covariance_type!r} is not supported; use one of "
                f"{gmm.COVARIANCE_TYPES}"
            )
        if self.init_params not in INIT_METHODS:
            raise ValueError(f"init_params={self.init_params!r} is not one of {INIT_METHODS}")
        if self.guide not in GUIDES:
            raise ValueError(f"guide={self.guide!r} is not one of {GUIDES}")
        if self.n_principal_directions is not None and (
            self.inference != "sgd" or self.covariance_type != "full"
        ):
            raise ValueError(
                f"n_principal_directions={self.n_principal_directions!r} needs "
                "inference='sgd' and covariance_type='full'; set it to None otherwise"
            )
        if self.inference == "sgd":
            self._check_sgd_arguments()
        self._check_distributed_argument()

    def _check_sgd_arguments(self) -> None:
        if self.covariance_type not in SGD_COVARIANCE_TYPES:
            raise ValueError(
                f"covariance_type={self.covariance_type!r} is not supported with "
                f"inference='sgd'; use one of {SGD_COVARIANCE_TYPES} ('full' through local "
                "principal directions, see n_principal_directions)"
            )
        if self.n_principal_directions is not None:
            check_int(self.n_principal_directions, "n_principal_directions", 1)
        options = self.sgd_options
        if options is None:
            return
        if not isinstance(options, dict):
            raise ValueError(f"sgd_options={options!r} must be a dict or None")
        known = tuple(n for n in SGDConfig.field_names() if n not in _SGD_OWN_ARGUMENTS)
        for name in options:
            if name in _SGD_OWN_ARGUMENTS:
                raise ValueError(f"sgd_options[{name!r}]: pass {name}= to GaussianMixture "
                                 "itself, not in sgd_options")
            if name not in known:
                raise ValueError(f"sgd_options has an unknown key {name!r}; use some of {known}")
        self._sgd_config(stream=False).validate(self.n_components, prefix="sgd_options: ")

    def _check_init_arrays(self, n_features: int) -> dict[str, torch.Tensor]:
        """Validate ``weights_init``, ``means_init`` and ``precisions_init`` against K and D."""
        k, d = self.n_components, n_features
        shapes = {
            "spherical": (k,), "diag": (k, d), "tied_diag": (d,), "tied": (d, d),
            "full": (k, d, d),
        }
        expected = {
            "weights_init": (k,), "means_init": (k, d),
            "precisions_init": shapes[self.covariance_type],
        }
        out = {}
        for name, shape in expected.items():
            value = getattr(self, name)
            if value is None:
                continue
            array = np.asarray(value, dtype=np.float64)
            if array.shape != shape:
                raise ValueError(
                    f"{name} has shape {array.shape}; expected {shape} for n_components={k}, "
                    f"n_features={d}, covariance_type={self.covariance_type!r}"
                )
            if not np.all(np.isfinite(array)):
                raise ValueError(f"{name} contains NaN or inf")
            out[name] = torch.as_tensor(array, dtype=self._dtype, device=self._device)
        weights = out.get("weights_init")
        if weights is not None and (
            bool((weights < 0).any()) or abs(float(weights.sum()) - 1.0) > 1e-6
        ):
            raise ValueError("weights_init must be non-negative and sum to 1")
        precisions = out.get("precisions_init")
        if precisions is not None:
            out["precisions_init"] = self._precisions_to_covariances(precisions)
        return out

    def _precisions_to_covariances(self, precisions: torch.Tensor) -> torch.Tensor:
        if self.covariance_type in gmm.DIAGONAL_TYPES:
            if bool((precisions <= 0).any()):
                raise ValueError("precisions_init must be positive")
            return precisions.reciprocal()
        if not torch.allclose(precisions, precisions.transpose(-1, -2), atol=1e-8, rtol=1e-6):
            raise ValueError("precisions_init must be symmetric")
        factors, info = torch.linalg.cholesky_ex(precisions)
        if bool((info != 0).any()):
            raise ValueError("precisions_init must be positive definite")
        return torch.cholesky_inverse(factors)

    # ------------------------------------------------------------------------------- fitting

    def _initial_params(self, x: torch.Tensor, generator: torch.Generator,
                        given: dict[str, torch.Tensor]) -> gmm.GMMParams:
        if len(given) == 3:  # every initial value given: nothing to draw
            return gmm.GMMParams(given["weights_init"], given["means_init"],
                                 given["precisions_init"], self.covariance_type)
        resp = initial_responsibilities(x, self.n_components, self.init_params, generator)
        params = em_gmm.params_from_responsibilities(x, resp, self.covariance_type, self.reg_covar)
        return gmm.GMMParams(
            given.get("weights_init", params.weights),
            given.get("means_init", params.means),
            given.get("precisions_init", params.covariances),
            self.covariance_type,
        )

    def _fit(self, x: torch.Tensor | _EMBatches, generator: torch.Generator,
             resume: bool) -> None:
        sample = self._em_sample(x)  # streams: EM and SVI only
        given = self._check_init_arrays(sample.shape[1])
        self._resolve_iteration_limits()
        shared = self.inference == "svi" and (self.distributed or isinstance(x, _EMBatches))
        moments = self._data_moments(x) if shared else None
        self.model_ = self._build_model(sample, moments)
        if self.inference == "em":
            self._fit_em(x, sample, generator, given)
        elif self.inference == "sgd":
            self._fit_sgd(x, generator)
        elif self.inference == "svi":
            self._fit_svi(x, generator, given, resume, None if moments is None else moments[2])
        else:
            self._fit_nuts(x, generator, given)

    def _fit_em(self, data: torch.Tensor | _EMBatches, sample: torch.Tensor,
                generator: torch.Generator, given: dict) -> None:
        """EM on a tensor or a stream (``sample``: the tensor, or the stream's first batch).

        The one EM loop runs on both; only the E-step differs: a sum over the batches for a
        stream, then, with ``distributed``, a sum over the ranks. Initial values not given
        are drawn from ``sample`` (on rank 0 alone when distributed, then broadcast).
        """
        init = self._em_initializer(
            lambda rows: self._initial_params(rows, generator, given), data,
            needs_rows=len(given) < 3,
        )
        self._fit_em_restarts(
            data, init, self._em_e_step(em_gmm.e_step, data),
            lambda stats: em_gmm.m_step(stats, self.covariance_type, self.reg_covar),
            "GMM EM", gmm.map_guide, **self._em_run_options(data),
        )

    # ------------------------------------------------------------------- max-component SGD

    def _sgd_config(self, stream: bool) -> SGDConfig:
        """The trainer's settings: ``sgd_options`` with ``lr`` and ``batch_size``."""
        options = dict(self.sgd_options or {})
        if options.get("grid_shape") is not None:
            options["grid_shape"] = tuple(options["grid_shape"])
        lr = self.lr if self.lr is not None else _DEFAULT_LR["sgd"]
        batch_size = self.batch_size if self.batch_size is not None else (None if stream else 1)
        return SGDConfig(lr=lr, batch_size=batch_size, **options)

    def _sgd_init(self, n_features: int) -> dict[str, torch.Tensor]:
        """``weights_init``, ``means_init``, ``precisions_init`` as the trainer's ``init``."""
        if self.precisions_init is not None and self.covariance_type == "full":
            raise ValueError("precisions_init is not used by inference='sgd' with "
                             "covariance_type='full'; leave it None")
        given = self._check_init_arrays(n_features)
        names = {"weights_init": "weights", "means_init": "means",
                 "precisions_init": "variances"}
        return {names[k]: v for k, v in given.items()}

    def _new_sgd_trainer(self, generator: torch.Generator, stream: bool) -> SGDGMMTrainer:
        covariance = "principal" if self.covariance_type == "full" else self.covariance_type
        return SGDGMMTrainer(
            self.n_components, self._sgd_config(stream), covariance_type=covariance,
            n_principal_directions=self.n_principal_directions, progress=self.progress,
            seed=int(torch.randint(0, 2**31 - 1, (1,), generator=generator)),
        )

    def _fit_sgd(self, x: torch.Tensor, generator: torch.Generator) -> None:
        """SGD on a data matrix from ``n_init`` starts; keep the lowest max-component loss."""
        init = self._sgd_init(x.shape[1])
        best = None
        for _ in range(self.n_init):
            trainer = self._new_sgd_trainer(generator, stream=False)
            trainer.init = init
            trainer.fit(x, self._max_iter)
            final = float(trainer.objectives(x)["max_component_loss"].mean())
            if best is None or final < best[0]:
                best = (final, trainer)
        self._finish_sgd(best[1], x[:1])

    def _finish_sgd(self, trainer: SGDGMMTrainer, first_row: torch.Tensor) -> None:
        self._sgd_trainer = trainer
        self.params_ = trainer.to_gmm_params()
        self.sgd_history_ = {name: list(values) for name, values in trainer.history.items()}
        self.history_ = list(trainer.history["loss"])
        self.n_iter_ = len(self.history_)
        self.converged_ = trainer.annealing_done
        self.guide_ = gmm.map_guide(self.model_, self.params_)
        self.guide_(first_row)

    def _build_model(self, x: torch.Tensor,
                     moments: tuple[torch.Tensor, torch.Tensor, int] | None = None,
                     ) -> gmm.GaussianMixtureModel:
        """The Pyro model with the default priors for ``x``, updated by ``priors``.

        ``moments``: mean and variance of all the data (:meth:`_data_moments`) when ``x`` is
        one batch or one shard.
        """
        priors = default_gmm_priors(x, self.n_components, self.covariance_type,
                                    moments=None if moments is None else moments[:2])
        priors.update(self.priors or {})
        return gmm.GaussianMixtureModel(self.n_components, x.shape[1], self.covariance_type,
                                        priors)

    def _end_sgd_call(self, trainer: SGDGMMTrainer, x: torch.Tensor, seconds: float) -> None:
        """Fitted attributes after a stream ``fit`` or a ``partial_fit`` (``x``: last batch)."""
        if getattr(self, "model_", None) is None or self.model_.n_features != x.shape[1]:
            self.model_ = self._build_model(x)
        with pyro.get_param_store().scope() as state:
            self._finish_sgd(trainer, x[:1])
        self.param_store_state_ = state
        self.fit_seconds_ = seconds
        self._set_fitted()
        with torch.no_grad():
            self.lower_bound_ = float(torch.logsumexp(self._log_joint(x), -1).mean())

    def fit(self, X: Any, y: Any = None, *, resume: bool = False):
        """Fit the model to ``X``.

        Parameters
        ----------
        X : array-like, shape (n_samples, n_features), or, for ``inference="sgd"``,
            ``"em"`` and ``"svi"``, a stream of such batches: a ``torch.utils.data.DataLoader``
            (batches ``x`` or ``(x, y)``), a list or tuple of 2-D arrays, or an iterator
            (read once: one epoch, or one EM iteration, only; not for SVI).
            SGD cuts each batch into ``batch_size`` steps (None: one step per batch).
            EM makes one pass over the batches per iteration, adding up their sufficient
            statistics (memory bounded by one batch). SVI takes one step per batch (the
            likelihood scaled by n_samples / batch rows, ``max_iter`` steps, cycling
            through the stream), after one pass that sets the priors from all the data.
            Initial values not given are drawn by ``init_params`` from the first batch, so
            make it large and representative (a shuffled ``DataLoader``) or pass
            ``weights_init``, ``means_init`` and ``precisions_init``. With
            ``distributed=True``: this rank's shard.
        y : ignored
        resume : bool, default False
            SVI only: continue from ``checkpoint_path`` when it exists.

        Returns
        -------
        self
        """
        self._sgd_trainer = None
        self.__dict__.pop("sgd_state_", None)  # a loaded SGD state belongs to the old fit
        stream = _is_batch_source(X)
        if self.inference == "sgd" and stream:
            return self._fit_sgd_stream(X)
        return super().fit(X, y, resume=resume)  # StreamingEMMixin: streams and shards

    def _check_em_source(self, source: Any, stream: bool) -> None:
        if stream and self.inference == "svi" and isinstance(source, Iterator):
            raise ValueError(
                "inference='svi' on a stream needs a source it can read more than once (a "
                "list of arrays or a DataLoader): an iterator is read once, which leaves "
                "no pass to set the priors and score the fit; wrap the data in a "
                "DataLoader, or use inference='em' or 'sgd'"
            )

    def _fit_sgd_stream(self, source: Any):
        self._check_arguments()
        self._resolve_iteration_limits()
        self._check_one_pass(source, "epochs")
        self._device = resolve_device(self.device)
        generator = resolve_generator(self.random_state, self._device)
        self.model_ = None
        start = time.perf_counter()
        batches = _ValidatedBatches(self, source)
        best = None
        for _ in range(self.n_init):
            trainer = self._new_sgd_trainer(generator, stream=True)
            if trainer.total_steps is None:
                trainer.set_horizon(source, self._max_iter)
            batches.trainer = trainer
            trainer.fit(batches, self._max_iter)
            final = trainer.history["max_component_loss"][-1]
            if best is None or final < best[0]:
                best = (final, trainer)
        self._end_sgd_call(best[1], batches.last, time.perf_counter() - start)
        return self

    @available_if(_sgd_only)
    def partial_fit(self, X: Any, y: Any = None):
        """One pass of SGD steps over the batch ``X``, continuing from earlier calls.

        The first call (or the first after :meth:`fit` with another inference) starts from
        the seed's initial point; later ones continue training, the annealing clock
        included. The annealing horizon is ``sgd_options["total_steps"]``, by default the
        seed's ``1000 sqrt(K)`` steps (section 4); calls past it train at ``sigma_inf``.
        ``n_init`` is not used. Only with ``inference="sgd"``. :meth:`save` keeps the SGD
        trainer's state (parameters, annealing clock, history, random state), so that
        ``partial_fit`` after :meth:`load` goes on exactly where it stopped.

        Parameters
        ----------
        X : array-like, shape (n_samples, n_features)
        y : ignored

        Returns
        -------
        self
        """
        trainer = getattr(self, "_sgd_trainer", None)
        if trainer is None and getattr(self, "sgd_state_", None) is not None:
            trainer = self._restored_sgd_trainer()  # a loaded estimator goes on
        if trainer is None:
            self._check_arguments()
            self._resolve_iteration_limits()
            self.model_, self.fit_seconds_ = None, 0.0
        if isinstance(X, torch.Tensor):
            X = X.detach().cpu().numpy()
        x = self._validate_x(X, reset=trainer is None)
        start = time.perf_counter()
        if trainer is None:
            trainer = self._new_sgd_trainer(resolve_generator(self.random_state, x.device),
                                            stream=True)
            trainer.init = self._sgd_init(x.shape[1])
        trainer.partial_fit(x)
        seconds = time.perf_counter() - start
        self._end_sgd_call(trainer, x, seconds + self.fit_seconds_)
        return self

    def _restored_sgd_trainer(self) -> SGDGMMTrainer:
        """The SGD trainer that :meth:`save` stored in ``sgd_state_``, rebuilt."""
        self._check_arguments()
        self._resolve_iteration_limits()
        trainer = self._new_sgd_trainer(resolve_generator(self.random_state, self._device),
                                        stream=True)
        trainer.load_state_dict(self.sgd_state_, device=self._device)
        del self.sgd_state_
        return trainer

    def _extra_state(self) -> dict[str, Any]:
        trainer = getattr(self, "_sgd_trainer", None)
        return {} if trainer is None else {"sgd_state_": trainer.state_dict()}

    def _fit_svi(self, x: torch.Tensor | _EMBatches, generator: torch.Generator, given: dict,
                 resume: bool, rows: int | None = None) -> None:
        """SVI on a tensor, a stream of batches (one step per batch) or this rank's shard.

        Initial values not given come from ``x`` (a stream: its first batch); distributed,
        the trainer broadcasts rank 0's. ``rows``: this rank's rows, counted by
        :meth:`_data_moments` (needed for a stream). On a stream or distributed,
        ``lower_bound_`` is the log-likelihood per sample of all the data, from one more pass.
        """
        stream = isinstance(x, _EMBatches)
        sample = self._em_sample(x)
        make_guide = gmm.map_guide if self.guide == "map" else gmm.mean_field_guide
        guide, _ = self._fit_svi_restarts(
            x, generator, resume,
            lambda: make_guide(self.model_, self._initial_params(sample, generator, given)),
            n_samples=rows if stream else None,
        )
        self.params_ = gmm.guide_params(guide, self.covariance_type)
        if stream or self.distributed:
            with torch.no_grad():
                stats = self._em_e_step(em_gmm.e_step, x)(x, self.params_)
            self.lower_bound_ = float(stats.log_likelihood) / float(stats.n_samples)

    def _data_moments(self, data: torch.Tensor | _EMBatches,
                      ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Mean and variance of all the data, and this rank's rows.

        A stream: one pass over its batches; distributed: the moments of every rank's data.
        """
        rows: list[int] = []

        def counted() -> Iterator[torch.Tensor]:
            for batch in data if isinstance(data, _EMBatches) else [data]:
                rows.append(batch.shape[0])
                yield batch

        mean, variance, _ = dist_em.data_moments(counted(), across_processes=self.distributed)
        return mean, variance, sum(rows)

    def _fit_nuts(self, x: torch.Tensor, generator: torch.Generator, given: dict) -> None:
        check_int(self.num_warmup, "num_warmup", 0)
        check_int(self.num_chains, "num_chains", 1)
        start = self._initial_params(x, generator, given)
        per_component = ["weights", "means"]
        if self.covariance_type not in gmm.TIED_TYPES:
            sites = gmm.params_to_sites(start)
            per_component += [s for s in ("variances", "corr_cholesky") if s in sites]
        posterior = sample_posterior(
            self.model_, x, gmm.params_to_sites(start), per_component,
            num_samples=self._max_iter, num_warmup=self.num_warmup,
            num_chains=self.num_chains, progress=self.progress,
            seed=int(torch.randint(0, 2**31 - 1, (1,), generator=generator)),
        )
        samples = posterior.samples
        draws = [gmm.sites_to_params({k: v[i] for k, v in samples.items()}, self.covariance_type)
                 for i in range(samples["means"].shape[0])]
        self.params_ = gmm.GMMParams(
            torch.stack([d.weights for d in draws]).mean(0),
            torch.stack([d.means for d in draws]).mean(0),
            torch.stack([d.covariances for d in draws]).mean(0),
            self.covariance_type,
        )
        self.posterior_samples_ = posterior.numpy()
        self.r_hat_ = {k: split_r_hat(v) for k, v in self.posterior_samples_.items()}
        self.sampler_stats_ = posterior.sampler_stats
        self.converged_ = bool(max(float(np.nanmax(r)) for r in self.r_hat_.values()) < 1.1)
        self.n_iter_ = self._max_iter
        with torch.no_grad():
            self.history_ = [float(gmm.log_likelihood(x, d).mean()) for d in draws]
        self.guide_ = gmm.map_guide(self.model_, self.params_)
        self.guide_(x[:1])

    def _set_fitted(self) -> None:
        params = self.params_

        def to_numpy(t: torch.Tensor) -> np.ndarray:
            return t.detach().cpu().numpy()

        self.weights_ = to_numpy(params.weights)
        self.means_ = to_numpy(params.means)
        self.covariances_ = to_numpy(params.covariances)
        if self.covariance_type in gmm.DIAGONAL_TYPES:
            self.precisions_ = 1.0 / self.covariances_
            self.precisions_cholesky_ = np.sqrt(self.precisions_)
        else:
            self.precisions_ = np.linalg.inv(self.covariances_)
            # scikit-learn's convention: P with P P^T = Sigma^-1, upper triangular.
            factors = np.linalg.cholesky(self.covariances_)
            eye = np.eye(factors.shape[-1])
            self.precisions_cholesky_ = np.swapaxes(np.linalg.solve(factors, eye), -1, -2)

    # ---------------------------------------------------------------------------- prediction

    def _log_joint(self, x: torch.Tensor) -> torch.Tensor:
        return gmm.log_joint(x, self.params_)

    def _n_parameters(self) -> int:
        k, d, rank = self.n_components, self.n_features_in_, self.n_principal_directions
        if self.inference == "sgd" and self.covariance_type == "full" and rank and rank < d:
            # mean, S orthonormal directions (a Stiefel manifold), S + 1 variances
            per_component = d + rank * d - rank * (rank + 1) // 2 + rank + 1
            return k * per_component + k - 1
        return metrics.n_parameters(k, d, self.covariance_type)

    def _sample_tensors(self, n_samples: int, generator: torch.Generator):
        return gmm.sample(self.params_, n_samples, generator)

    def elbo_loss(self, X: Any) -> float:
        """``TraceEnum_ELBO`` loss of the fitted model and guide on ``X`` (sum over samples)."""
        x = self._fitted_x(X)
        with pyro.get_param_store().scope(self.param_store_state_):
            loss = TraceEnum_ELBO(max_plate_nesting=1).loss(self.model_, self.guide_, x)
        return float(loss)

    # ------------------------------------------------------------------------------ save/load

    def _param_tensors(self) -> dict[str, torch.Tensor]:
        return self.params_.tensors()

    def _restore(self, payload: dict) -> None:
        self.params_ = gmm.GMMParams(covariance_type=self.covariance_type, **payload["params"])
        self.model_ = gmm.GaussianMixtureModel(
            self.n_components, self.n_features_in_, self.covariance_type, payload["priors"]
        )
        saved_state = payload["fitted"].get("param_store_state_")
        if self.inference == "svi" and self.guide == "mean_field" and saved_state is not None:
            # keep the posterior spread: restore the guide's own parameters, not a point mass
            pyro.get_param_store().set_state(saved_state)
            self.guide_ = gmm.mean_field_guide(self.model_, self.params_)
        else:
            self.guide_ = gmm.map_guide(self.model_, self.params_)
        self.guide_(n_samples=1)


# The other families' estimators live beside their models' code; this module is the facade.
from ppl_mixtures.estimators_dgmm import DeepGaussianMixture  # noqa: E402
from ppl_mixtures.estimators_gmvae import GMVAE  # noqa: E402
from ppl_mixtures.estimators_mfa import MixtureOfFactorAnalyzers  # noqa: E402


def load_estimator(path: Any, device: str = "auto") -> Any:
    """Read any estimator written by ``save``, whatever its class (a pickle: trusted files only).

    Parameters
    ----------
    path : str or path-like
    device : str, default "auto"

    Returns
    -------
    GaussianMixture, MixtureOfFactorAnalyzers, DeepGaussianMixture or GMVAE
    """
    classes = {cls.__name__: cls for cls in (GaussianMixture, MixtureOfFactorAnalyzers,
                                             DeepGaussianMixture, GMVAE)}
    payload = torch.load(path, map_location="cpu", weights_only=False)
    name = payload.get("class") if isinstance(payload, dict) else None
    if name not in classes:
        raise ValueError(f"{path} is not a file written by an estimator's save() "
                         f"(class {name!r}; expected one of {sorted(classes)})")
    return classes[name]._from_payload(payload, device)


__all__ = ["GMVAE", "DeepGaussianMixture", "GaussianMixture", "MixtureOfFactorAnalyzers",
           "load_estimator"]
