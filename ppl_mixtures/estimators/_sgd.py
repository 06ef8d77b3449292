"""The max-component SGD path of :class:`~ppl_mixtures.estimators.GaussianMixture`.

:class:`MaxComponentSGD` holds everything ``inference="sgd"`` needs beyond the estimator's
common machinery: the trainer's settings from the estimator's arguments, the restarts, the
stream and :meth:`~ppl_mixtures.estimators.GaussianMixture.partial_fit` paths, and the
trainer's state that :meth:`save` keeps (Gepperth & Pfülb 2021,
:class:`~ppl_mixtures.inference.sgd_gmm.SGDGMMTrainer`).

The method: plain gradient steps on the smoothed max-component bound of the negative
log-likelihood (eq. 7), annealed from ``sigma0`` to ``sigma_inf`` (eq. 9), from tiny random
means on a 1-D/2-D grid (``init_params`` is not used). Covariance types ``"diag"``,
``"spherical"``, or ``"full"`` through S local principal directions per component (section
3.5; each with its own variance, and one variance for the rest of the space: K((S + 1) D + 2)
values instead of K(D^2 + D + 1); ``n_principal_directions=None`` trains all D directions;
``covariance_type="diag"`` is the paper's own model). The defaults are in data units and
assume features of unit scale (the paper's images in [0, 1]).

``sgd_options`` sets any field of :class:`~ppl_mixtures.inference.sgd_gmm.SGDConfig` but
``lr`` and ``batch_size`` (the estimator's own arguments): ``sigma_min`` (smallest standard
deviation, 0.15), ``sigma0``/``sigma_inf``/``t0``/``t_inf`` (the annealing of eq. 9),
``total_steps`` (the annealing horizon; :meth:`partial_fit` defaults to the paper's
1000 sqrt(K) steps), ``lambda_pi``/``lambda_mu``/``lambda_sigma`` (adaptation strengths),
``grid_shape``, ``mu_init``, ``shuffle``, and ``lr_final`` (ours: a learning rate decaying
after annealing, which removes the jitter of constant-rate B = 1 steps).

With ``missing="marginalize"`` every objective is the masked one: a row's log-joints are
those of its observed coordinates (the trainer's ``missing``), so NaN entries add nothing
to any gradient; complete data train exactly as with ``missing="error"``.
"""

from __future__ import annotations

import time
from typing import Any

import pyro
import torch

from ppl_mixtures.estimators._gmm_init import check_init_arrays
from ppl_mixtures.estimators._sources import DataSource, check_sample_weight
from ppl_mixtures.estimators._validation import check_int
from ppl_mixtures.inference.init import resolve_generator
from ppl_mixtures.inference.sgd_gmm import SGDConfig, SGDGMMTrainer
from ppl_mixtures.models import gmm

#: Covariance types max-component SGD fits ("full" through local principal directions).
SGD_COVARIANCE_TYPES = ("diag", "spherical", "full")
#: Default learning rate (epsilon of eq. 10, Gepperth & Pfülb 2021).
DEFAULT_LR = 0.011
#: SGD settings given by the estimator's own arguments, not by ``sgd_options``.
_OWN_ARGUMENTS = ("lr", "batch_size")


class MaxComponentSGD:
    """``inference="sgd"`` for one :class:`GaussianMixture` (``estimator``).

    Attributes
    ----------
    trainer : SGDGMMTrainer or None
        The trainer of the last fit or :meth:`partial_fit` call; :meth:`partial_fit` goes on
        from it.
    """

    def __init__(self, estimator: Any, state: dict[str, Any] | None = None) -> None:
        self.estimator = estimator
        self.trainer: SGDGMMTrainer | None = None
        self._saved_state = state  # a loaded trainer state, rebuilt on the next partial_fit

    # ------------------------------------------------------------------------- settings

    def check_arguments(self) -> None:
        est = self.estimator
        if est.covariance_type not in SGD_COVARIANCE_TYPES:
            raise ValueError(
                f"covariance_type={est.covariance_type!r} is not supported with "
                f"inference='sgd'; use one of {SGD_COVARIANCE_TYPES} ('full' through local "
                "principal directions, see n_principal_directions)"
            )
        if est.n_principal_directions is not None:
            check_int(est.n_principal_directions, "n_principal_directions", 1)
        options = est.sgd_options
        if options is None:
            return
        known = tuple(n for n in SGDConfig.field_names() if n not in _OWN_ARGUMENTS)
        for name in options:
            if name in _OWN_ARGUMENTS:
                raise ValueError(f"sgd_options[{name!r}]: pass {name}= to GaussianMixture "
                                 "itself, not in sgd_options")
            if name not in known:
                raise ValueError(f"sgd_options has an unknown key {name!r}; use some of {known}")
        self.config(stream=False).validate(est.n_components, prefix="sgd_options: ")

    def config(self, stream: bool) -> SGDConfig:
        """The trainer's settings: ``sgd_options`` with ``lr`` and ``batch_size``."""
        est = self.estimator
        options = dict(est.sgd_options or {})
        if options.get("grid_shape") is not None:
            options["grid_shape"] = tuple(options["grid_shape"])
        lr = est.lr if est.lr is not None else DEFAULT_LR
        batch_size = est.batch_size if est.batch_size is not None else (None if stream else 1)
        return SGDConfig(lr=lr, batch_size=batch_size, **options)

    def initial_values(self, n_features: int) -> dict[str, torch.Tensor]:
        """``weights_init``, ``means_init``, ``precisions_init`` as the trainer's ``init``."""
        est = self.estimator
        if est.precisions_init is not None and est.covariance_type == "full":
            raise ValueError("precisions_init is not used by inference='sgd' with "
                             "covariance_type='full'; leave it None")
        given = check_init_arrays(est, n_features)
        names = {"weights_init": "weights", "means_init": "means",
                 "precisions_init": "variances"}
        return {names[k]: v for k, v in given.items()}

    def new_trainer(self, generator: torch.Generator, stream: bool,
                    n_features: int) -> SGDGMMTrainer:
        est = self.estimator
        covariance = "principal" if est.covariance_type == "full" else est.covariance_type
        trainer = SGDGMMTrainer(
            est.n_components, self.config(stream), covariance_type=covariance,
            n_principal_directions=est.n_principal_directions, progress=est.progress,
            seed=int(torch.randint(0, 2**31 - 1, (1,), generator=generator)),
            missing=est._marginalize,
        )
        trainer.init = self.initial_values(n_features)
        return trainer

    # -------------------------------------------------------------------------- fitting

    def fit(self, source: DataSource, generator: torch.Generator) -> None:
        """SGD from ``n_init`` starts on a matrix or a stream; keep the lowest loss."""
        est = self.estimator
        best = None
        for _ in range(est.n_init):
            trainer = self.new_trainer(generator, source.streamed, source.sample.shape[1])
            if source.streamed:
                if trainer.total_steps is None:
                    trainer.set_horizon(source.raw, est._max_iter)  # from its length
                if source.weighted_stream:
                    trainer.fit(source.svi_batches(), est._max_iter, weighted_batches=True)
                else:
                    trainer.fit(source.data, est._max_iter)
                final = trainer.history["max_component_loss"][-1]
            else:
                trainer.fit(source.data, est._max_iter, weights=source.weights)
                losses = trainer.objectives(source.data)["max_component_loss"]
                final = _weighted_mean(losses, source.weights)
            if best is None or final < best[0]:
                best = (final, trainer)
        if source.streamed:
            last, last_weights = source.last, source.last_weights
        else:
            last, last_weights = source.data, source.weights
        self.finish(best[1], last, last_weights)

    def finish(self, trainer: SGDGMMTrainer, last: torch.Tensor,
               weights: torch.Tensor | None = None) -> None:
        """Fitted attributes from ``trainer``; ``lower_bound_`` on ``last`` (a batch, its
        rows weighted by ``weights`` when given)."""
        est = self.estimator
        self.trainer = trainer
        est.params_ = trainer.to_gmm_params()
        est.sgd_history_ = {name: list(values) for name, values in trainer.history.items()}
        est.history_ = list(trainer.history["loss"])
        est.n_iter_ = len(est.history_)
        est.converged_ = trainer.annealing_done
        est.guide_ = gmm.map_guide(est.model_, est.params_)
        est.guide_(last[:1])
        with torch.no_grad():
            est.lower_bound_ = _weighted_mean(torch.logsumexp(est._log_joint(last), -1),
                                              weights)

    def partial_fit(self, X: Any, sample_weight: Any = None) -> None:
        """One pass over the batch ``X``, continuing from the last call (or a loaded file).

        ``sample_weight``: the rows' weights (shape (n_samples,), a float or None), checked
        as :meth:`fit` checks them.
        """
        est = self.estimator
        trainer = self.trainer
        if trainer is None and self._saved_state is not None:
            est._prepare()
            trainer = self.new_trainer(torch.Generator(), True, est.n_features_in_)
            trainer.load_state_dict(self._saved_state, device=est._device)
            self._saved_state = None
        if trainer is None:
            est._prepare()
            est.model_, est.fit_seconds_ = None, 0.0
        if isinstance(X, torch.Tensor):
            X = X.detach().cpu().numpy()
        x = est._validate_x(X, reset=trainer is None)
        weights = check_sample_weight(sample_weight, x.shape[0], x)
        start = time.perf_counter()
        if trainer is None:
            generator = resolve_generator(est.random_state, x.device)
            trainer = self.new_trainer(generator, True, x.shape[1])
        trainer.partial_fit(x, weights)
        seconds = time.perf_counter() - start + est.fit_seconds_
        if getattr(est, "model_", None) is None or est.model_.n_features != x.shape[1]:
            est.model_ = est._build_model(x)
        with pyro.get_param_store().scope() as state:
            self.finish(trainer, x, weights)
        est.param_store_state_ = state
        est.fit_seconds_ = seconds
        est._set_fitted()

    def state(self) -> dict[str, Any]:
        """What :meth:`save` keeps so that :meth:`partial_fit` goes on after :meth:`load`."""
        if self.trainer is not None:
            return self.trainer.state_dict()
        return self._saved_state or {}


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor | None) -> float:
    """``values.mean()``, or ``sum_n w_n v_n / sum_n w_n`` (shape (N,) both)."""
    if weights is None:
        return float(values.mean())
    return float(weights @ values / weights.sum())
