"""Where EM (and SVI) data comes from: one matrix, a stream of batches, or one rank's shard.

:class:`StreamingEMMixin` gives an estimator ``fit`` on a stream of batches (out of core) and
across processes (``distributed=True``); :class:`~ppl_mixtures.estimators.GaussianMixture`,
:class:`~ppl_mixtures.estimators_mfa.MixtureOfFactorAnalyzers` and
:class:`~ppl_mixtures.estimators_dgmm.DeepGaussianMixture` use it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader

from ppl_mixtures import distributed as dist_em
from ppl_mixtures._estimator_base import resolve_device
from ppl_mixtures.inference.em.loop import sum_over_batches


def _is_batch_source(X: Any) -> bool:
    """Whether ``X`` is a stream of batches (for SGD and EM) rather than one data matrix.

    A ``DataLoader``, an iterator (e.g. a generator), or a list/tuple whose items are all 2-D
    (arrays or tensors). Arrays, tensors, data frames and nested lists of numbers are not.
    """
    if isinstance(X, (DataLoader, Iterator)):
        return True
    if not (isinstance(X, (list, tuple)) and len(X) > 0):
        return False
    try:
        return all(len(np.shape(batch)) == 2 for batch in X)
    except ValueError:  # ragged nested lists
        return False


class _ValidatedBatches:
    """Iterate a stream of batches as validated tensors on the estimator's device and dtype.

    The first batch ever seen fixes ``n_features_in_`` and the dtype; before a trainer's first
    step its initial values (``means_init``, ...) are checked against the number of features.
    """

    def __init__(self, estimator: Any, source: Any) -> None:
        self.estimator = estimator
        self.source = source
        self.trainer: Any = None  # an SGD trainer to initialise on the first batch
        self.seen = False
        self.last: torch.Tensor | None = None

    def __iter__(self):
        for batch in self.source:
            if isinstance(batch, (tuple, list)) and len(getattr(batch[0], "shape", ())) == 2:
                batch = batch[0]  # (x, y, ...) from a labelled dataset
            if isinstance(batch, torch.Tensor):
                batch = batch.detach().cpu().numpy()
            x = self.estimator._validate_x(batch, reset=not self.seen)
            self.seen = True
            if self.trainer is not None and not self.trainer.initialized:
                self.trainer.init = self.estimator._sgd_init(x.shape[1])
            self.last = x
            yield x


class _EMBatches:
    """A stream of batches for EM: validated, its first batch at hand for initialisation.

    Iterating gives one pass over the source. A one-shot source (an iterator) is read once:
    its first batch, read ahead for initialisation, is yielded again at the head of that pass.

    Attributes
    ----------
    first : Tensor, shape (batch_size, n_features)
        The first batch, validated (it fixes ``n_features_in_`` and the dtype).
    one_pass : bool
        Whether the source can be traversed only once.
    """

    def __init__(self, estimator: Any, source: Any) -> None:
        self.one_pass = isinstance(source, Iterator)
        self._batches = _ValidatedBatches(estimator, source)
        head = iter(self._batches)
        first = next(head, None)
        if first is None:
            raise ValueError("X is an empty stream of batches; pass at least one batch")
        self.first = first
        self._stream = itertools.chain([first], head) if self.one_pass else self._batches

    def __iter__(self):
        return iter(self._stream)


T = TypeVar("T")


class StreamingEMMixin:
    """EM on a stream of batches (out of core) and across processes (``distributed=True``).

    The machinery of :class:`~ppl_mixtures.estimators.GaussianMixture`'s streaming and
    distributed EM for any estimator whose E-step statistics add up with ``+`` and declare
    ``summed_fields``: :meth:`fit` sends a stream of batches, or this rank's shard, through
    :meth:`_fit_source` to ``_fit_validated(data, resume, lower_bound_from_data=False)``,
    where ``data`` is the validated tensor or an ``_EMBatches`` stream (whose ``first``
    batch is validated).
    The subclass's ``_fit`` takes its sample from :meth:`_em_sample`, wraps its E-step with
    :meth:`_em_e_step` (a sum over the batches, then over the ranks), its initial values with
    :meth:`_em_initializer` (drawn from the first batch, on rank 0, broadcast), and passes
    :meth:`_em_run_options` to ``_fit_em_restarts``. It calls
    :meth:`_check_distributed_argument` from ``_check_arguments`` and may refuse options that
    need all the data at once in :meth:`_check_em_source`.
    """

    #: Inference paths that fit a stream of batches.
    _stream_inference_methods: tuple[str, ...] = ("em",)
    #: Inference paths that run across processes with ``distributed=True``.
    _distributed_inference_methods: tuple[str, ...] = ("em",)
    #: Ends the advice of the too-few-rows error (e.g. the estimator's ``*_init`` arguments).
    _init_hint: str = ""

    def fit(self, X: Any, y: Any = None, *, resume: bool = False):
        """Fit the model to ``X``.

        Parameters
        ----------
        X : array-like, shape (n_samples, n_features), or, for ``inference="em"``, a stream
            of such batches: a ``torch.utils.data.DataLoader`` (batches ``x`` or ``(x, y)``),
            a list or tuple of 2-D arrays, or an iterator (read once: ``max_iter=1`` and
            ``n_init=1`` only). EM makes one pass over the batches per iteration, adding up
            their sufficient statistics (memory bounded by one batch); the initial values are
            drawn by the initialisation method from the *first batch*, so make it large and
            representative (e.g. a shuffled ``DataLoader``). With ``distributed=True``: this
            rank's shard (an array or a stream).
        y : ignored
        resume : bool, default False
            SVI only: continue from ``checkpoint_path`` when it exists.

        Returns
        -------
        self
        """
        stream = _is_batch_source(X)
        if stream or self.distributed:
            return self._fit_source(X, stream, resume)
        return super().fit(X, y, resume=resume)

    def _check_distributed_argument(self) -> None:
        if not isinstance(self.distributed, (bool, np.bool_)):
            raise ValueError(f"distributed={self.distributed!r} must be True or False")
        if not self.distributed:
            return
        if self.inference not in self._distributed_inference_methods:
            names = " and ".join(repr(name) for name in self._distributed_inference_methods)
            only = " only" if len(self._distributed_inference_methods) == 1 else ""
            raise ValueError(
                f"distributed=True is implemented for inference={names}{only}, not "
                f"inference={self.inference!r}; use {names}, or distributed=False"
            )
        dist_em.require_initialized("distributed=True")

    def _check_one_pass(self, source: Any, unit: str) -> None:
        """An iterator is read once: refuse a fit that would read it more than once."""
        if isinstance(source, Iterator) and self._max_iter * self.n_init > 1:
            raise ValueError(
                f"an iterator can be traversed once, but max_iter={self._max_iter} {unit} and "
                f"n_init={self.n_init} starts were asked for; pass a list or a DataLoader, "
                "or max_iter=1 and n_init=1"
            )

    def _check_em_source(self, source: Any, stream: bool) -> None:
        """Refuse options that need all the data at once (a hook; nothing by default)."""

    def _fit_source(self, X: Any, stream: bool, resume: bool):
        """EM on a stream of batches, or on this rank's shard with ``distributed=True``."""
        self._check_arguments()
        if stream and self.inference not in self._stream_inference_methods:
            names = [repr(name) for name in self._stream_inference_methods]
            paths = " or ".join([", ".join(names[:-1]), names[-1]] if names[:-1] else names)
            raise ValueError(
                f"a stream of batches (DataLoader, list of arrays, iterator) can be fitted with "
                f"inference={paths}, not inference={self.inference!r}; pass one array"
            )
        self._check_em_source(X, stream)
        if stream:
            self._resolve_iteration_limits()
            self._check_one_pass(X, "EM iterations (one pass each)")
            self._device = resolve_device(self.device)
            data = _EMBatches(self, X)
            sample = data.first
        else:
            data = sample = self._validate_x(X, reset=True)
        if self.distributed:
            dist_em.check_shards(sample.shape[1], sample.dtype,
                                 None if stream else sample.shape[0], self._n_clusters())
        return self._fit_validated(data, resume=resume, lower_bound_from_data=False)

    @staticmethod
    def _em_sample(data: Any) -> torch.Tensor:
        """The data tensor, or a stream's first batch (validated), shape (n, n_features)."""
        return data.first if isinstance(data, _EMBatches) else data

    def _em_e_step(self, e_step: Callable[[torch.Tensor, Any], T],
                   data: Any) -> Callable[[Any, Any], T]:
        """``e_step`` summed over the batches of a stream, then over the ranks."""
        if isinstance(data, _EMBatches):
            e_step = sum_over_batches(e_step)
        if self.distributed:
            e_step = dist_em.all_reduce_e_step(e_step)
        return e_step

    def _em_initializer(self, draw: Callable[[torch.Tensor], T], data: Any,
                        needs_rows: bool = True) -> Callable[[int], T]:
        """``init_params(i)`` of the EM loop: ``draw`` on the sample, on rank 0, broadcast.

        The sample is :meth:`_em_sample` (a stream's first batch). ``draw`` must return a
        tensor or a dataclass of tensors when ``distributed``. ``needs_rows``: whether
        ``draw`` needs at least one row per cluster (False when every initial value is
        given); :attr:`_init_hint` completes the error's advice.
        """
        sample = self._em_sample(data)
        where = "the first batch" if sample is not data else "X on rank 0"

        def init(_: int) -> T:
            n_clusters = self._n_clusters()
            if needs_rows and sample.shape[0] < n_clusters:
                raise ValueError(
                    f"{where} has {sample.shape[0]} rows, fewer than "
                    f"n_components={self.n_components!r} ({n_clusters} clusters), and the "
                    "initial values are drawn from it; pass larger batches (or more rows on "
                    f"rank 0){self._init_hint}"
                )
            return draw(sample)

        if self.distributed:
            return dist_em.broadcast_result(init, device=sample.device)
        return init

    def _em_run_options(self, data: Any) -> dict[str, Any]:
        """``_fit_em_restarts`` options: guide row, progress on rank 0 only, final pass or not."""
        one_pass = isinstance(data, _EMBatches) and data.one_pass
        return dict(first_row=self._em_sample(data)[:1],
                    progress=self.progress and dist_em.rank() == 0,
                    evaluate_final=not one_pass)
