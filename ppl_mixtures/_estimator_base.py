"""The base of the zoo's scikit-learn style estimators: validation, scoring, save/load.

A subclass fits one model family. It implements ``_check_arguments``, ``_fit(x, generator,
resume)`` (setting ``params_``, ``model_``, ``guide_``, ``converged_``, ``n_iter_``,
``history_``), ``_log_joint(x)`` (the (N, C) table ``log p(x_n, cluster c)``, whose softmax is
``predict_proba`` and whose logsumexp is ``score_samples``), ``_n_parameters``,
``_sample_tensors(n, generator)``, ``_set_fitted`` (the NumPy attributes) and the two
save/load hooks ``_param_tensors`` / ``_restore(payload)``.
"""

from __future__ import annotations

import numbers
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyro
import torch
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from ppl_mixtures import metrics
from ppl_mixtures.inference.em import run_em
from ppl_mixtures.inference.init import resolve_generator
from ppl_mixtures.inference.svi import SVITrainer

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_dtype(dtype: Any, data_dtype: np.dtype) -> torch.dtype:
    """``dtype`` argument -> torch dtype; None follows the data (float32 stays float32)."""
    if dtype is None:
        return torch.float32 if data_dtype == np.float32 else torch.float64
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in _DTYPES:
        return _DTYPES[dtype]
    if dtype in (np.float32, np.float64):
        return _DTYPES[np.dtype(dtype).name]
    raise ValueError(f"dtype={dtype!r} is not supported; use None, 'float32' or 'float64'")


def resolve_device(device: Any) -> torch.device:
    """``device`` argument -> torch device; ``"auto"`` picks CUDA when it is available."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device={device!r} is not a device; use 'auto', 'cpu' or 'cuda'") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available; use 'auto' or 'cpu'")
    return resolved


def check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")
    return int(value)


def check_nonnegative(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0:
        raise ValueError(f"{name}={value!r} must be a non-negative number")
    return float(value)


class MixtureEstimator(DensityMixin, BaseEstimator):
    """Common machinery of the mixture estimators (see the module docstring for the hooks)."""

    #: Inference paths a subclass supports, and its per-path defaults of max_iter and tol.
    _inference_methods: tuple[str, ...] = ()
    _default_max_iter: dict[str, int] = {}
    _default_tol: dict[str, float] = {}
    #: Per-path default learning rate, used where a subclass accepts ``lr=None``.
    _default_lr: dict[str, float] = {}

    def _check_shared_arguments(self) -> None:
        """Validate the arguments every EM/SVI estimator has, each error naming its argument."""
        check_int(self.n_init, "n_init", 1)
        if self.max_iter is not None:
            check_int(self.max_iter, "max_iter", 1)
        if self.tol is not None:
            check_nonnegative(self.tol, "tol")
        check_nonnegative(self.reg_covar, "reg_covar")
        if self.inference not in self._inference_methods:
            raise ValueError(
                f"inference={self.inference!r} is not supported for {type(self).__name__}; "
                f"use one of {self._inference_methods}"
            )
        if self.batch_size is not None:
            check_int(self.batch_size, "batch_size", 1)
        if self.lr is not None and not (isinstance(self.lr, numbers.Real) and self.lr > 0):
            raise ValueError(f"lr={self.lr!r} must be a positive number (or None: the "
                             "inference path's default)")
        if self.priors is not None and not isinstance(self.priors, dict):
            raise TypeError("priors must be a dict of site name -> pyro distribution, or None")

    def _resolve_iteration_limits(self) -> None:
        """``_max_iter``, ``_tol``, ``_lr``: the arguments, or the inference path's defaults."""
        self._max_iter = self.max_iter or self._default_max_iter[self.inference]
        self._tol = self.tol if self.tol is not None else self._default_tol[self.inference]
        self._lr = self.lr if self.lr is not None else self._default_lr.get(self.inference)

    def _n_clusters(self) -> int:
        return self.n_components

    def _validate_x(self, X: Any, reset: bool) -> torch.Tensor:
        X = validate_data(
            self, X, reset=reset, dtype=[np.float64, np.float32], ensure_min_samples=1
        )
        if reset:
            self._dtype = resolve_dtype(self.dtype, X.dtype)
            self._device = resolve_device(self.device)
        # np.require copies only read-only arrays (torch cannot share their memory)
        return torch.as_tensor(np.require(X, requirements="W"), dtype=self._dtype).to(self._device)

    def fit(self, X: Any, y: Any = None, *, resume: bool = False):
        """Fit the model to ``X``.

        Parameters
        ----------
        X : array-like, shape (n_samples, n_features)
        y : ignored
        resume : bool, default False
            SVI only: continue from ``checkpoint_path`` when it exists.

        Returns
        -------
        self
        """
        self._check_arguments()
        x = self._validate_x(X, reset=True)
        if x.shape[0] < self._n_clusters():
            raise ValueError(
                f"n_samples={x.shape[0]} should be >= n_components={self._n_clusters()}; "
                "pass more samples or lower n_components"
            )
        return self._fit_validated(x, resume)

    def _fit_validated(self, data: Any, resume: bool, lower_bound_from_data: bool = True):
        """Fit on validated data (``_fit``), timed, in its own Pyro param store scope.

        ``data`` is what ``_fit`` takes: the validated tensor, or, for estimators that fit
        streams, their own batch source. With ``lower_bound_from_data`` (a tensor only),
        ``lower_bound_`` is the mean log-likelihood of ``data`` under the fit; otherwise
        ``_fit`` sets it (e.g. from EM's final pass over a stream or over every rank's shard).
        """
        generator = resolve_generator(self.random_state, self._device)
        start = time.perf_counter()
        with pyro.get_param_store().scope() as state:
            self._fit(data, generator, resume)
        self.param_store_state_ = state
        self.fit_seconds_ = time.perf_counter() - start
        self._set_fitted()
        if lower_bound_from_data:
            with torch.no_grad():
                self.lower_bound_ = float(torch.logsumexp(self._log_joint(data), -1).mean())
        return self

    def _fit_em_restarts(self, x: Any, init_params: Callable[[int], Any],
                         e_step: Callable, m_step: Callable, desc: str,
                         map_guide: Callable, first_row: torch.Tensor | None = None,
                         **run_options: Any) -> None:
        """Run the shared EM loop with ``n_init``, ``max_iter``, ``tol``, ``progress``.

        Sets ``params_``, ``converged_``, ``n_iter_``, ``history_``, ``lower_bound_`` (the
        final log-likelihood per sample), ``restart_log_likelihoods_`` and ``guide_``
        (``map_guide(model_, params_)``, its global parameters created at the EM estimate on
        ``first_row``, by default ``x[:1]``). ``run_options`` override the keyword arguments
        of :func:`~ppl_mixtures.inference.em.run_em` (e.g. ``progress``, ``evaluate_final``).
        """
        options = dict(n_init=self.n_init, max_iter=self._max_iter, tol=self._tol,
                       progress=self.progress, desc=desc)
        options.update(run_options)
        result = run_em(x, init_params=init_params, e_step=e_step, m_step=m_step, **options)
        self.params_ = result.params
        self.converged_ = result.converged
        self.n_iter_ = result.n_iter
        self.history_ = result.history
        self.lower_bound_ = result.log_likelihood
        self.restart_log_likelihoods_ = result.restart_log_likelihoods
        self.guide_ = map_guide(self.model_, self.params_)
        self.guide_(x[:1] if first_row is None else first_row)

    def _fit_svi_restarts(self, x: Any, generator: torch.Generator, resume: bool,
                          make_guide: Callable[[], Any],
                          n_samples: int | None = None) -> tuple[Any, Any]:
        """SVI from ``n_init`` starts; keep the guide with the lowest final loss.

        ``make_guide()`` builds a fresh guide at a new initial point (it may draw from
        ``generator``). Each start checkpoints to ``checkpoint_path`` (suffixed ``.initN`` when
        ``n_init > 1``). Sets ``guide_``, ``converged_``, ``n_iter_``, ``history_`` and leaves
        the winning guide's values in the current Pyro param store. ``x`` is a tensor, or,
        with ``n_samples`` (its rows), a re-iterable stream of batches
        (:meth:`~ppl_mixtures.inference.svi.SVITrainer.fit_batches`). With the estimator's
        ``distributed`` set, the trainer runs data-parallel over the process group.

        Returns
        -------
        guide, SVIResult
        """
        best = None
        for index in range(self.n_init):
            pyro.clear_param_store()
            guide = make_guide()
            checkpoint = self.checkpoint_path
            if checkpoint is not None and self.n_init > 1:
                checkpoint = f"{checkpoint}.init{index}"
            trainer = SVITrainer(
                self.model_, guide, lr=self._lr, batch_size=self.batch_size,
                max_steps=self._max_iter, tol=self._tol, progress=self.progress,
                checkpoint_path=checkpoint,
                seed=int(torch.randint(0, 2**31 - 1, (1,), generator=generator)),
                distributed=bool(getattr(self, "distributed", False)),
            )
            if n_samples is None:
                result = trainer.fit(x, resume=resume)
                loss = trainer.evaluate_loss(x)
            else:
                result = trainer.fit_batches(x, n_samples, resume=resume)
                loss = trainer.evaluate_loss_batches(x, n_samples)
            if best is None or loss < best[0]:
                best = (loss, guide, result, pyro.get_param_store().get_state())
        _, guide, result, state = best
        pyro.get_param_store().set_state(state)
        self.guide_ = guide
        self.converged_ = result.converged
        self.n_iter_ = result.n_steps
        self.history_ = result.history
        return guide, result

    def _fitted_x(self, X: Any) -> torch.Tensor:
        self._check_fitted()
        return self._validate_x(X, reset=False)

    def _check_fitted(self) -> None:
        check_is_fitted(
            self, "params_",
            msg=f"This {type(self).__name__} is not fitted yet; call fit(X) first.",
        )

    def score_samples(self, X: Any) -> np.ndarray:
        """Log-likelihood ``log p(x_n)`` of every sample, shape (n_samples,)."""
        x = self._fitted_x(X)
        with torch.no_grad():
            return torch.logsumexp(self._log_joint(x), -1).cpu().numpy()

    def score(self, X: Any, y: Any = None) -> float:
        """Mean log-likelihood per sample (scikit-learn's meaning)."""
        return float(self.score_samples(X).mean())

    def predict_proba(self, X: Any) -> np.ndarray:
        """Posterior cluster probabilities, shape (n_samples, n_clusters)."""
        x = self._fitted_x(X)
        with torch.no_grad():
            return torch.softmax(self._log_joint(x), -1).cpu().numpy()

    def predict(self, X: Any) -> np.ndarray:
        """Most probable cluster of every sample, shape (n_samples,)."""
        return self.predict_proba(X).argmax(axis=1)

    def bic(self, X: Any) -> float:
        """Bayesian information criterion ``-2 log L + p log N`` (lower is better)."""
        total = float(self.score_samples(X).sum())
        return metrics.bic(total, self._n_parameters(), len(np.asarray(X)))

    def aic(self, X: Any) -> float:
        """Akaike information criterion ``-2 log L + 2 p`` (lower is better)."""
        total = float(self.score_samples(X).sum())
        return metrics.aic(total, self._n_parameters(), len(np.asarray(X)))

    def sample(self, n_samples: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n_samples`` from the fitted model.

        Returns
        -------
        X : ndarray, shape (n_samples, n_features)
        y : ndarray, shape (n_samples,)
            The cluster of each draw.
        """
        self._check_fitted()
        check_int(n_samples, "n_samples", 1)
        generator = resolve_generator(self.random_state, self._device)
        with torch.no_grad():
            x, labels = self._sample_tensors(n_samples, generator)
        return x.cpu().numpy(), labels.cpu().numpy()

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the estimator (arguments and fitted tensors) to ``path`` with ``torch.save``."""
        self._check_fitted()
        fitted = {k: v for k, v in vars(self).items() if k.endswith("_") and not k.startswith("_")}
        for name in ("model_", "guide_", "params_"):
            fitted.pop(name, None)
        fitted.update(self._extra_state())
        payload = {
            "class": type(self).__name__,
            "arguments": self.get_params(),
            "fitted": fitted,
            "params": {k: v.detach().cpu() for k, v in self._param_tensors().items()},
            "dtype": self._dtype,
            "priors": getattr(self.model_, "priors", None),
        }
        tmp = f"{os.fspath(path)}.tmp"
        torch.save(payload, tmp)
        os.replace(tmp, path)

    def _extra_state(self) -> dict[str, Any]:
        """Fitted state beyond the public attributes that :meth:`save` must keep (a hook)."""
        return {}

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str = "auto"):
        """Read an estimator written by :meth:`save` (a pickle: load only files you trust)."""
        payload = torch.load(path, map_location="cpu", weights_only=False)
        if payload.get("class") != cls.__name__:
            raise ValueError(f"{path} holds a {payload.get('class')!r}, not a {cls.__name__}")
        return cls._from_payload(payload, device)

    @classmethod
    def _from_payload(cls, payload: dict, device: str):
        """Rebuild an estimator from the dict :meth:`save` wrote (already read from disk)."""
        est = cls(**{**payload["arguments"], "device": device})
        for name, value in payload["fitted"].items():
            setattr(est, name, value)
        est._dtype = payload["dtype"]
        est._device = resolve_device(device)
        payload["params"] = {k: v.to(est._device) for k, v in payload["params"].items()}
        with pyro.get_param_store().scope() as state:
            est._restore(payload)
        est.param_store_state_ = state
        return est
