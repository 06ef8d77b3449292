"""scikit-learn style estimators over the zoo's Pyro models.

Each estimator validates its input once, here, builds the Pyro model of
:mod:`ppl_mixtures.models`, and fits it with the inference path named by ``inference``.
Fitted attributes are NumPy arrays, as in scikit-learn; ``params_`` keeps the tensors on
their device.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyro
import torch
from pyro.infer import TraceEnum_ELBO

from ppl_mixtures import metrics
from ppl_mixtures._estimator_base import (
    MixtureEstimator,
    check_int,
)
from ppl_mixtures.inference.em import gmm as em_gmm
from ppl_mixtures.inference.init import INIT_METHODS, initial_responsibilities
from ppl_mixtures.inference.mcmc import align_components, run_nuts, split_r_hat
from ppl_mixtures.models import gmm
from ppl_mixtures.models.priors import default_gmm_priors

INFERENCE_METHODS = ("em", "svi", "nuts")
GUIDES = ("map", "mean_field")
_DEFAULT_MAX_ITER = {"em": 100, "svi": 1000, "nuts": 200}
_DEFAULT_TOL = {"em": 1e-3, "svi": 1e-5, "nuts": 0.0}


class GaussianMixture(MixtureEstimator):
    """Gaussian mixture fitted by EM or by SVI over one Pyro model.

    Parameters
    ----------
    n_components : int, default 1
        Number of mixture components K.
    covariance_type : {"full", "tied", "diag", "tied_diag", "spherical"}, default "full"
        The covariance constraint (seed 001): ``full`` one matrix per component, ``tied`` one
        matrix shared, ``diag`` one diagonal per component, ``tied_diag`` one diagonal shared,
        ``spherical`` one variance per component.
    inference : {"em", "svi", "nuts"}, default "em"
        ``"em"``: maximum likelihood by expectation-maximisation (scikit-learn's algorithm).
        ``"svi"``: stochastic variational inference with ``TraceEnum_ELBO`` over the Pyro model
        (assignments summed out), with a MAP or mean-field guide (``guide``).
        ``"nuts"``: NUTS over the global sites with the assignments summed out, started at a
        k-means initial point; for small data (it costs a full-data gradient per leapfrog
        step). Draws are relabelled to the starting components (``posterior_samples_``) and
        ``params_`` holds the posterior means of weights, means and covariances.
    n_init : int, default 1
        Restarts; the one with the best final objective is kept.
    max_iter : int, optional
        EM iterations (default 100), SVI steps (default 1000) or NUTS draws per chain
        (default 200).
    tol : float, optional
        EM: stop when the mean log-likelihood per sample changes by less (default 1e-3).
        SVI: relative change of the smoothed loss (default 1e-5), see
        :class:`~ppl_mixtures.inference.svi.SVITrainer`.
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
    lr : float, default 0.05
        SVI learning rate (Adam).
    batch_size : int, optional
        SVI minibatch size; None trains on the full data.
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

    Attributes
    ----------
    weights_ : ndarray, shape (n_components,)
    means_ : ndarray, shape (n_components, n_features)
    covariances_ : ndarray
        spherical (K,), diag (K, D), tied_diag (D,), tied (D, D), full (K, D, D).
    precisions_, precisions_cholesky_ : ndarray
        Inverses of ``covariances_`` and their Cholesky factors, as in scikit-learn.
    converged_ : bool
    n_iter_ : int
    history_ : list of float
        Per EM iteration: mean log-likelihood per sample. Per SVI step: loss per sample.
        Per NUTS draw: mean log-likelihood per sample at that draw.
    posterior_samples_ : dict of str to ndarray
        NUTS only: the draws of every global site, chains concatenated, relabelled.
    r_hat_ : dict of str to ndarray
        NUTS only: split-R-hat of every site (after relabelling); ``converged_`` is
        ``max r_hat < 1.1``.
    lower_bound_ : float
        Mean log-likelihood per sample of the fitted parameters.
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
    _default_max_iter = _DEFAULT_MAX_ITER
    _default_tol = _DEFAULT_TOL

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
        lr: float = 0.05,
        batch_size: int | None = None,
        random_state: Any = None,
        device: str = "auto",
        dtype: Any = None,
        progress: bool = True,
        checkpoint_path: str | None = None,
        num_warmup: int = 200,
        num_chains: int = 1,
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

    def _fit(self, x: torch.Tensor, generator: torch.Generator, resume: bool) -> None:
        given = self._check_init_arrays(x.shape[1])
        self._resolve_iteration_limits()
        priors = default_gmm_priors(x, self.n_components, self.covariance_type)
        priors.update(self.priors or {})
        self.model_ = gmm.GaussianMixtureModel(
            self.n_components, x.shape[1], self.covariance_type, priors
        )
        if self.inference == "em":
            self._fit_em(x, generator, given)
        elif self.inference == "svi":
            self._fit_svi(x, generator, given, resume)
        else:
            self._fit_nuts(x, generator, given)

    def _fit_em(self, x: torch.Tensor, generator: torch.Generator, given: dict) -> None:
        self._fit_em_restarts(
            x, lambda _: self._initial_params(x, generator, given), em_gmm.e_step,
            lambda stats: em_gmm.m_step(stats, self.covariance_type, self.reg_covar),
            "GMM EM", gmm.map_guide,
        )

    def _fit_svi(self, x: torch.Tensor, generator: torch.Generator, given: dict,
                 resume: bool) -> None:
        make_guide = gmm.map_guide if self.guide == "map" else gmm.mean_field_guide
        guide, _ = self._fit_svi_restarts(
            x, generator, resume,
            lambda: make_guide(self.model_, self._initial_params(x, generator, given)),
        )
        self.params_ = gmm.guide_params(guide, self.covariance_type)

    def _fit_nuts(self, x: torch.Tensor, generator: torch.Generator, given: dict) -> None:
        check_int(self.num_warmup, "num_warmup", 0)
        check_int(self.num_chains, "num_chains", 1)
        start = self._initial_params(x, generator, given)
        mcmc = run_nuts(
            self.model_, x, gmm.params_to_sites(start), num_samples=self._max_iter,
            num_warmup=self.num_warmup, num_chains=self.num_chains, progress=self.progress,
            seed=int(torch.randint(0, 2**31 - 1, (1,), generator=generator)),
        )
        per_component = ["weights", "means"]
        if self.covariance_type not in gmm.TIED_TYPES:
            sites = gmm.params_to_sites(start)
            per_component += [s for s in ("variances", "corr_cholesky") if s in sites]
        samples, _ = align_components(mcmc.get_samples(), start.means, per_component)
        draws = [gmm.sites_to_params({k: v[i] for k, v in samples.items()}, self.covariance_type)
                 for i in range(samples["means"].shape[0])]
        self.params_ = gmm.GMMParams(
            torch.stack([d.weights for d in draws]).mean(0),
            torch.stack([d.means for d in draws]).mean(0),
            torch.stack([d.covariances for d in draws]).mean(0),
            self.covariance_type,
        )
        self.posterior_samples_ = {k: v.detach().cpu().numpy() for k, v in samples.items()}
        self.r_hat_ = {k: split_r_hat(v) for k, v in self.posterior_samples_.items()}
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
        return metrics.n_parameters(self.n_components, self.n_features_in_, self.covariance_type)

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
        self.guide_ = gmm.map_guide(self.model_, self.params_)
        self.guide_(n_samples=1)


# The other families' estimators live beside their models' code; this module is the facade.
from ppl_mixtures.estimators_dgmm import DeepGaussianMixture  # noqa: E402
from ppl_mixtures.estimators_gmvae import GMVAE  # noqa: E402
from ppl_mixtures.estimators_mfa import MixtureOfFactorAnalyzers  # noqa: E402

__all__ = ["GMVAE", "DeepGaussianMixture", "GaussianMixture", "MixtureOfFactorAnalyzers"]
