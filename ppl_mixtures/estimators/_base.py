"""The one base of the zoo's scikit-learn style estimators.

A family's estimator declares its constructor arguments' constraints
(``_parameter_constraints``, checked at the start of :meth:`MixtureEstimator.fit`), the
inference paths it offers and their defaults, and implements these hooks:

``_check_arguments()``
    Checks that involve several arguments (single arguments are declared).
``_fit(source, generator, resume)``
    Fit on a :class:`~ppl_mixtures.estimators._sources.DataSource`, setting ``params_``,
    ``model_``, ``guide_``, ``converged_``, ``n_iter_``, ``history_``.
``_log_joint(x)``
    The (N, C) table ``log p(x_n, cluster c)``: its softmax is :meth:`predict_proba`, its
    logsumexp :meth:`score_samples`.
``_n_parameters()``, ``_sample_tensors(n, generator)``, ``_set_fitted()``
    Free parameters (for BIC/AIC), draws, and the NumPy fitted attributes.
``_param_tensors()``, ``_restore(state)``
    What :meth:`save` stores beside the arguments and fitted attributes, and how
    :meth:`load` rebuilds ``params_``, ``model_`` and ``guide_`` from it.
``_shape_key()``
    The arguments that fix the shapes of ``params_`` (``warm_start`` checks them).

scikit-learn's mixture conventions hold where they apply: :meth:`fit_predict`,
``warm_start`` (continue from the last fit's parameters), ``verbose``/``verbose_interval``,
``max_iter=0`` (EM: the initial values), ``lower_bound_``/``lower_bounds_`` (EM: the value
of the last E-step, and of every E-step), and a ``ConvergenceWarning`` when EM or SVI stops
at ``max_iter`` (:mod:`ppl_mixtures.estimators._continuation`).

Everything public runs inside :func:`~ppl_mixtures._rng.fork_rng`: fits draw from
their own generators and leave the user's global random streams as they found them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import pyro
import torch
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from ppl_mixtures import distributed as process_group
from ppl_mixtures._rng import keeps_global_rng
from ppl_mixtures.estimators import _continuation, _restarts
from ppl_mixtures.estimators._deferred_guide import DeferredGuideMixin
from ppl_mixtures.estimators._persistence import PersistenceMixin
from ppl_mixtures.estimators._queries import QueriesMixin
from ppl_mixtures.estimators._sources import (
    WEIGHTS_IN_BATCHES,
    DataSource,
    StreamSource,
    check_one_pass,
    check_sample_weight,
    is_batch_source,
)
from ppl_mixtures.estimators._validation import (
    Constraint,
    resolve_device,
    resolve_dtype,
    validate_parameters,
)
from ppl_mixtures.inference.init import resolve_generator


def weighted_mean(values: torch.Tensor, weights: torch.Tensor | None) -> float:
    """``values.mean()``, or ``sum_n w_n v_n / sum_n w_n`` with weights (shape (N,) both)."""
    if weights is None:
        return float(values.mean())
    return float((weights * values).sum() / weights.sum())


#: The dtypes a fit takes as they are (others are converted by ``validate_data``).
_FLOAT_DTYPES = (np.dtype(np.float64), np.dtype(np.float32))


def _short(value: Any) -> str:
    """A short repr of a user's value for an error message."""
    text = repr(value)
    return text if len(text) <= 40 else f"<{type(value).__name__}>"


#: Fitted attributes that :meth:`MixtureEstimator.save` rebuilds instead of storing.


class MixtureEstimator(DeferredGuideMixin, PersistenceMixin, QueriesMixin, DensityMixin,
                       BaseEstimator):
    """Common machinery of the mixture estimators (see the module docstring for the hooks)."""

    #: Argument name -> constraints, one of which the value must satisfy.
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {}
    #: Inference paths: all, those that fit a stream of batches, those that run distributed.
    _inference_methods: ClassVar[tuple[str, ...]] = ()
    _stream_inference_methods: ClassVar[tuple[str, ...]] = ()
    _distributed_inference_methods: ClassVar[tuple[str, ...]] = ()
    #: Inference paths that integrate missing (NaN) entries out (``missing="marginalize"``).
    _missing_inference_methods: ClassVar[tuple[str, ...]] = ()
    #: Per-path defaults of ``max_iter``, ``tol`` and ``lr`` (used where the argument is None).
    _default_max_iter: ClassVar[dict[str, int]] = {}
    _default_tol: ClassVar[dict[str, float]] = {}
    _default_lr: ClassVar[dict[str, float]] = {}
    #: Ends the advice of the too-few-rows error (e.g. the estimator's ``*_init`` arguments).
    _init_hint: ClassVar[str] = ""

    # ------------------------------------------------------------------------- validation

    def _check_arguments(self) -> None:
        """Checks that involve several arguments (a hook; nothing by default)."""

    def _prepare(self) -> None:
        """Validate every argument and resolve ``_max_iter``, ``_tol`` and ``_lr``."""
        validate_parameters(self)
        inference = getattr(self, "inference", None)
        if inference is not None and inference not in self._inference_methods:
            raise ValueError(f"inference={inference!r} is not supported for "
                             f"{type(self).__name__}; use one of {self._inference_methods}")
        if getattr(self, "distributed", False):
            if inference not in self._distributed_inference_methods:
                names = " and ".join(repr(n) for n in self._distributed_inference_methods)
                only = " only" if len(self._distributed_inference_methods) == 1 else ""
                raise ValueError(
                    f"distributed=True is implemented for inference={names}{only}, not "
                    f"inference={inference!r}; use {names}, or distributed=False"
                )
            process_group.require_initialized("distributed=True")
        if self._marginalize and inference not in self._missing_inference_methods:
            names = " or ".join(repr(n) for n in self._missing_inference_methods)
            raise ValueError(
                f"missing='marginalize' is implemented for inference={names}, not "
                f"inference={inference!r}; use {names}, or missing='error' on complete "
                "(or imputed) data"
            )
        self._check_arguments()
        max_iter = getattr(self, "max_iter", None)
        if max_iter == 0 and inference != "em":
            raise ValueError(f"max_iter=0 (return the initial values) is for inference='em', "
                             f"not inference={inference!r}; pass max_iter >= 1")
        self._max_iter = max_iter if max_iter is not None else self._default_max_iter.get(
            inference)
        tol = getattr(self, "tol", None)
        self._tol = tol if tol is not None else self._default_tol.get(inference)
        lr = getattr(self, "lr", None)
        self._lr = lr if lr is not None else self._default_lr.get(inference)

    def _n_clusters(self) -> int:
        return self.n_components

    def _shape_key(self) -> dict[str, Any]:
        """The arguments that fix the shapes of ``params_`` (a hook)."""
        return {"n_components": self.n_components}

    @property
    def _marginalize(self) -> bool:
        """Whether NaN entries are missing values to integrate out (``missing="marginalize"``)."""
        return getattr(self, "missing", "error") == "marginalize"

    def _validate_x(self, X: Any, reset: bool, allow_nan: bool | None = None,
                    moments: list | None = None) -> torch.Tensor:
        """``X`` as a 2-D tensor in the fit's dtype, on its device.

        Takes what scikit-learn's ``validate_data`` takes (lists, arrays of any order and
        strides, data frames, memory maps, read-only arrays) and torch tensors of any dtype
        and device, with or without ``requires_grad``
        (:func:`~ppl_mixtures.estimators._sources.as_array`). ``reset``: fixes
        ``n_features_in_``, the dtype and the device, and warns when ``X`` is so small in scale
        that ``reg_covar`` is scaled down with it
        (:func:`~ppl_mixtures.inference.em.gmm.variance_floor`). ``allow_nan``: whether NaN
        entries (missing values) pass; by default only with ``missing="marginalize"``.
        ``moments``: a list to which the per-feature mean and variance (over N, float64
        tensors) that the scale check took of finite data are appended, for the priors to
        reuse (:attr:`~ppl_mixtures.estimators._sources.DataSource.column_moments`).
        """
        from ppl_mixtures.estimators._sources import as_array
        from ppl_mixtures.inference.em.gmm import warn_small_scale
        from ppl_mixtures.models.priors import column_moments

        allow_nan = self._marginalize if allow_nan is None else allow_nan
        X = as_array(X)
        checked = self._checked_array(X, reset)
        if checked is not None:
            X = checked
        else:
            X = self._validate_data(X, reset, allow_nan)
        if reset:
            self._dtype = resolve_dtype(self.dtype, X.dtype)
            self._device = resolve_device(self.device)
        # torch shares the memory of a writable array with non-negative strides; it cannot
        # take a read-only one or a reversed view (X[::-1]): those are copied
        if not X.flags.writeable or any(stride < 0 for stride in X.strides):
            X = np.array(X, order="C")
        x = torch.as_tensor(X, dtype=self._dtype).to(self._device)
        reg_covar = getattr(self, "reg_covar", None)  # SGD does not use it
        if (reset and reg_covar and X.shape[0] > 1
                and getattr(self, "inference", None) != "sgd"):
            if allow_nan and checked is None:  # NaN entries are left out
                mean = np.nanmean(X, 0, dtype=np.float64)
                variance = np.nanvar(X, 0, dtype=np.float64)
            else:  # finite (checked above): one blocked float64 pass, 2-3x np.var's speed
                taken = column_moments(x)
                if moments is not None:
                    moments.append(taken)
                mean, variance = (t.cpu().numpy() for t in taken)
            warn_small_scale(reg_covar, float(np.mean(variance)), float(np.square(mean).mean()),
                             self._dtype)
        return x

    def _checked_array(self, X: Any, reset: bool) -> np.ndarray | None:
        """``X`` itself when it is what ``validate_data`` would hand back unchanged, else None.

        The common case of a fit on small data, checked in a few microseconds instead of
        scikit-learn's ~0.7 ms: a plain 2-D float64 or float32 NumPy array with at least one
        row and one column, every entry finite (its sum is: one NaN or inf would make it
        NaN or inf), and, when not ``reset``, the fitted number of features and no fitted
        feature names. ``n_features_in_`` is set and ``feature_names_in_`` dropped as
        ``validate_data`` does. Anything else (lists, frames, other dtypes, NaN, a mismatch)
        is left to ``validate_data`` and its errors.
        """
        if not (type(X) is np.ndarray and X.ndim == 2 and X.dtype in _FLOAT_DTYPES
                and X.shape[0] > 0 and X.shape[1] > 0 and np.isfinite(X.sum())):
            return None
        if reset:
            self.n_features_in_ = X.shape[1]
            self.__dict__.pop("feature_names_in_", None)
        elif (getattr(self, "n_features_in_", None) != X.shape[1]
              or hasattr(self, "feature_names_in_")):
            return None
        return X

    def _validate_data(self, X: Any, reset: bool, allow_nan: bool) -> np.ndarray:
        """scikit-learn's ``validate_data`` of ``X``, its NaN error naming ``missing``."""
        try:
            return validate_data(
                self, X, reset=reset, dtype=[np.float64, np.float32],
                ensure_min_samples=1, ensure_all_finite="allow-nan" if allow_nan else True,
            )
        except ValueError as error:
            if "NaN" not in str(error) or "missing" not in self.get_params(deep=False):
                raise
            raise ValueError(
                f"X contains NaN and {type(self).__name__} was built with "
                f"missing={self.missing!r}; pass missing='marginalize' to integrate NaN "
                "entries out as missing values, or remove or impute them first"
            ) from None

    def _source(self, X: Any, sample_weight: Any = None) -> DataSource:
        """The data of a fit as one :class:`DataSource` (a matrix, a stream, a shard).

        ``sample_weight`` is checked here once (:func:`._sources.check_sample_weight`) and
        becomes ``source.weights``; for a stream, ``"batches"`` reads each batch as ``(x, w)``.
        """
        distributed = bool(getattr(self, "distributed", False))
        if is_batch_source(X):
            if sample_weight is not None and not (isinstance(sample_weight, str)
                                                  and sample_weight == WEIGHTS_IN_BATCHES):
                raise ValueError(
                    f"sample_weight={_short(sample_weight)} with a stream of batches: pass "
                    "sample_weight='batches' and batches (x, w) (e.g. a DataLoader over "
                    "TensorDataset(x, w)), or sample_weight=None"
                )
            if self.inference not in self._stream_inference_methods:
                names = [repr(name) for name in self._stream_inference_methods] or ["none"]
                paths = " or ".join([", ".join(names[:-1]), names[-1]] if names[:-1] else names)
                raise ValueError(
                    "a stream of batches (DataLoader, list of arrays, iterator) can be fitted "
                    f"with inference={paths}, not inference={self.inference!r}; pass one array"
                )
            self._check_stream(X)
            check_one_pass(X, self._max_iter, getattr(self, "n_init", 1),
                           "EM iterations (one pass each)")
            self._device = resolve_device(self.device)
            source: DataSource = StreamSource(X, self._validate_x, distributed,
                                              weighted=sample_weight is not None)
        else:
            taken: list = []
            x = self._validate_x(X, reset=True, moments=taken)
            source = DataSource(x, distributed, check_sample_weight(sample_weight, x.shape[0], x))
            source.column_moments = taken[0] if taken else None
            if not distributed and source.sample.shape[0] < self._n_clusters():
                raise ValueError(
                    f"n_samples={source.sample.shape[0]} should be >= "
                    f"n_components={self._n_clusters()}; pass more samples or lower "
                    "n_components"
                )
        if distributed:
            sample = source.sample
            process_group.check_shards(sample.shape[1], sample.dtype,
                                       None if source.streamed else sample.shape[0],
                                       self._n_clusters())
        return source

    def _check_stream(self, X: Any) -> None:
        """Refuse options that need all the data at once (a hook; nothing by default)."""

    # ---------------------------------------------------------------------------- fitting

    @keeps_global_rng
    def fit(self, X: Any, y: Any = None, sample_weight: Any = None, *, resume: bool = False):
        """Fit the model to ``X``.

        Parameters
        ----------
        X : array-like, shape (n_samples, n_features), or a stream of such batches
            A ``torch.utils.data.DataLoader`` (batches ``x`` or ``(x, y)``), a list or tuple
            of 2-D arrays, or an iterator (read once), for the inference paths that fit
            streams (see the class docstring). With ``distributed=True``: this rank's shard.
        y : ignored
        sample_weight : array-like of shape (n_samples,), float, "batches" or None
            Non-negative weight of every row: the objective is ``sum_n w_n log p(x_n)``, so an
            integer weight ``w`` is the row repeated ``w`` times and a zero weight drops it
            (every inference path and the k-means start honour it). A float is every row's
            weight. For a stream, ``"batches"`` reads each batch as ``(x, w)`` (a
            ``DataLoader`` over ``TensorDataset(x, w)``). With ``distributed=True``: the
            weights of this rank's shard. ``lower_bound_``, ``history_`` and EM's
            convergence test are weighted means (divided by ``sum_n w_n``).
        resume : bool, default False
            SVI only: continue from ``checkpoint_path`` when it exists.

        Returns
        -------
        self
        """
        self._prepare()
        return self._fit_source(self._source(X, sample_weight), resume)

    @keeps_global_rng
    def fit_predict(self, X: Any, y: Any = None, sample_weight: Any = None) -> np.ndarray:
        """Fit the model to ``X`` and return the most probable cluster of every sample.

        The labels are those of an E-step at the fitted parameters, so they equal
        ``fit(X, sample_weight=sample_weight).predict(X)`` whatever ``max_iter``, ``tol`` and
        ``random_state`` (rows of weight 0 get a label too).

        Parameters
        ----------
        X : array-like, shape (n_samples, n_features)
        y : ignored
        sample_weight : array-like of shape (n_samples,), float or None
            As in :meth:`fit`.

        Returns
        -------
        ndarray of int, shape (n_samples,)
        """
        if is_batch_source(X):
            raise ValueError("fit_predict takes one array; for a stream of batches call "
                             "fit(stream), then predict(batch) on each batch")
        return self.fit(X, y, sample_weight=sample_weight).predict(X)

    def _fit_source(self, source: DataSource, resume: bool):
        """Fit on ``source`` (``_fit``), timed, in its own Pyro param store scope.

        ``lower_bound_`` comes from :meth:`_lower_bound`; ``_warm_start_from`` holds what a
        warm start continues from during the fit.
        """
        n_features = source.sample.shape[1]
        self._warm_start_from = _continuation.warm_start_state(self, n_features)
        self.__dict__.pop("lower_bounds_", None)  # EM sets it again
        generator = resolve_generator(self.random_state, self._device)
        start = time.perf_counter()
        self.__dict__.pop("param_store_state_", None)  # a deferred guide_ is built in the fit's
        with pyro.get_param_store().scope() as state:
            self._fit(source, generator, resume)
        self.param_store_state_ = state
        self.fit_seconds_ = time.perf_counter() - start
        self._warm_start_from = None
        self._set_fitted()
        bound = self._lower_bound(source)
        if bound is not None:
            self.lower_bound_ = bound
        self._warm_key = _continuation.fit_key(self, n_features)
        _continuation.warn_if_unconverged(self)
        return self

    def _lower_bound(self, source: DataSource) -> float | None:
        """``lower_bound_`` after a fit: the mean log-likelihood of one in-memory matrix.

        None leaves the value ``_fit`` set: EM's (the last E-step's, scikit-learn's meaning)
        and that of a pass over a stream or every rank's shard. A hook: an estimator whose
        likelihood is intractable returns its bound.
        """
        if getattr(self, "inference", None) == "em" or not source.whole_data_in_memory:
            return None
        with torch.no_grad():
            return weighted_mean(torch.logsumexp(self._log_joint(source.data), -1),
                                 source.weights)

    def _fit_em_restarts(self, source: DataSource, draw: Callable[[torch.Tensor], Any],
                         e_step: Callable, m_step: Callable, desc: str,
                         map_guide: Callable, needs_rows: bool = True,
                         init_params: Callable[[int], Any] | None = None,
                         monotone: bool = True) -> None:
        """EM from ``n_init`` starts, or a warm start (:func:`._restarts.fit_em`).

        With ``missing="marginalize"`` the E-step is the estimator's :meth:`_missing_e_step`
        (which integrates NaN entries out) and initial values are drawn from the rows with
        their NaN entries replaced by the column means.
        """
        if self._marginalize:
            from ppl_mixtures.inference.em.missing import mean_impute

            e_step, plain_draw = self._missing_e_step(), draw

            def draw(rows: torch.Tensor) -> Any:
                return plain_draw(mean_impute(rows))
        _restarts.fit_em(self, source, draw, e_step, m_step, desc, map_guide, needs_rows,
                         init_params, monotone)

    def _fit_svi_restarts(self, source: DataSource, generator: torch.Generator, resume: bool,
                          make_guide: Callable[[], Any]) -> tuple[Any, Any]:
        """SVI from ``n_init`` starts, or a warm start (:func:`._restarts.fit_svi`)."""
        return _restarts.fit_svi(self, source, generator, resume, make_guide)

    # --------------------------------------------------------------------------- prediction

    def _fitted_x(self, X: Any) -> torch.Tensor:
        self._check_fitted()
        return self._validate_x(X, reset=False)

    def _check_fitted(self) -> None:
        check_is_fitted(
            self, "params_",
            msg=f"This {type(self).__name__} is not fitted yet; call fit(X) first.",
        )

    def _fitted_log_joint(self, X: Any) -> torch.Tensor:
        """``_log_joint`` of ``X`` checked against the fit, without gradients, (N, K)."""
        x = self._fitted_x(X)
        with torch.no_grad():
            return self._log_joint(x)

    @keeps_global_rng
    def score_samples(self, X: Any) -> np.ndarray:
        """Log-likelihood ``log p(x_n)`` of every sample, shape (n_samples,)."""
        return torch.logsumexp(self._fitted_log_joint(X), -1).cpu().numpy()

    def score(self, X: Any, y: Any = None) -> float:
        """Mean log-likelihood per sample (scikit-learn's meaning)."""
        return float(self.score_samples(X).mean())

    @keeps_global_rng
    def predict_proba(self, X: Any) -> np.ndarray:
        """Posterior cluster probabilities, shape (n_samples, n_clusters)."""
        return torch.softmax(self._fitted_log_joint(X), -1).cpu().numpy()

    @keeps_global_rng
    def predict(self, X: Any) -> np.ndarray:
        """Most probable cluster of every sample, shape (n_samples,): the largest log joint
        (scikit-learn's rule; a model with its own :meth:`predict_proba` takes its largest)."""
        if type(self).predict_proba is not MixtureEstimator.predict_proba:
            return self.predict_proba(X).argmax(axis=1)
        return self._fitted_log_joint(X).argmax(-1).cpu().numpy()
