"""Where a fit's data comes from: one matrix, a stream of batches, or this rank's shard.

:func:`make_source` turns what a user passed to ``fit`` into one :class:`DataSource`, which the
estimators hand to the EM loop (:meth:`DataSource.e_step`, :meth:`DataSource.initializer`,
:meth:`DataSource.em_options`) and to the SVI trainer (:attr:`DataSource.data`,
:attr:`DataSource.n_rows`). The estimators never ask which kind they hold.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence, Set
from typing import Any, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader

from ppl_mixtures import distributed as process_group
from ppl_mixtures.inference.em.loop import sum_over_batches

T = TypeVar("T")


def is_batch_source(X: Any) -> bool:
    """Whether ``X`` is a stream of batches rather than one data matrix.

    A ``DataLoader``, an iterator (e.g. a generator), any other iterable object that is not
    array-like (e.g. :class:`ppl_mixtures.datasets.files.NpyBatches`), a callable that returns
    a new iterable of batches at each call (:class:`CallableStream`), or a list/tuple whose
    items are all 2-D (arrays or tensors) or all tuples ``(x, w)`` / ``(x, y)`` with a 2-D
    ``x``. Arrays, tensors, data frames and nested lists of numbers are not.
    """
    if isinstance(X, (DataLoader, Iterator, CallableStream)):
        return True
    if _is_stream_function(X) or _is_iterable_object(X):
        return True
    if not (isinstance(X, (list, tuple)) and len(X) > 0):
        return False
    if all(_is_pair(batch) for batch in X):  # (x, w) or (x, y) batches
        return True
    try:
        return all(len(np.shape(batch)) == 2 for batch in X)
    except ValueError:  # ragged nested lists
        return False


def _is_stream_function(X: Any) -> bool:
    """A callable that is not itself data (an array, a tensor, a frame) nor a class."""
    return (callable(X) and not isinstance(X, type) and not hasattr(X, "shape")
            and not hasattr(X, "__array__") and not hasattr(X, "__iter__"))


#: Iterables that are data (or not batches), never a stream object: sequences (lists,
#: tuples, strings, ``array.array``, deques), mappings and sets.
_NOT_STREAMS = (Sequence, Mapping, Set, memoryview, type)


def _is_iterable_object(X: Any) -> bool:
    """An iterable that is not array-like (no ``shape``, no ``__array__``) nor a sequence."""
    return (hasattr(X, "__iter__") and not isinstance(X, _NOT_STREAMS)
            and not hasattr(X, "shape") and not hasattr(X, "__array__"))


class CallableStream:
    """A stream read again at every pass: each pass iterates what ``factory()`` returns.

    ``fit(lambda: read_batches(path))`` gives a fresh generator per pass, which a generator
    itself (read once) cannot. A call that returns something not iterable is refused.
    """

    def __init__(self, factory: Callable[[], Any]) -> None:
        self.factory = factory

    def __iter__(self) -> Iterator[Any]:
        batches = self.factory()
        try:
            return iter(batches)
        except TypeError:
            raise TypeError(
                f"X is a callable, read as a stream of batches, but X() returned a "
                f"{type(batches).__name__}; it must return a new iterable of 2-D batches at "
                "each call (e.g. lambda: (X[i:i + 1024] for i in range(0, len(X), 1024)))"
            ) from None


def as_stream(X: Any) -> Any:
    """``X`` as an iterable of batches: a callable becomes a :class:`CallableStream`."""
    if _is_stream_function(X):
        return CallableStream(X)
    return X


def _is_pair(batch: Any) -> bool:
    """A tuple batch ``(x, w, ...)`` whose first item is 2-D (not a row of numbers)."""
    if not (isinstance(batch, tuple) and len(batch) >= 2):
        return False
    try:
        return len(np.shape(batch[0])) == 2
    except ValueError:
        return False


def as_array(X: Any, name: str = "X") -> Any:
    """What scikit-learn's validation can read, from anything a user may pass as data.

    A torch tensor becomes a NumPy array: detached (``requires_grad`` or not), on the CPU,
    half precision (float16, bfloat16, which NumPy cannot hold) widened to float32. An empty
    list, tuple or 1-D array is refused with an error naming ``name`` (scikit-learn would
    call it a 1-D array to reshape). Anything else is returned as it is.
    """
    if isinstance(X, torch.Tensor):
        X = X.detach().resolve_conj().resolve_neg()
        if X.is_floating_point() and X.dtype not in (torch.float32, torch.float64):
            X = X.to(torch.float32)
        return X.cpu().numpy()
    empty = (isinstance(X, (list, tuple)) and len(X) == 0) or (
        isinstance(X, np.ndarray) and X.ndim < 2 and X.size == 0)
    if empty:
        raise ValueError(
            f"{name} is empty ({type(X).__name__} of length 0); pass a 2-D array of shape "
            "(n_samples, n_features) with at least one row"
        )
    return X


#: The value of ``sample_weight`` that reads each batch of a stream as ``(x, w)``.
WEIGHTS_IN_BATCHES = "batches"


def check_sample_weight(sample_weight: Any, n_samples: int, like: torch.Tensor,
                        name: str = "sample_weight",
                        all_zero: bool = False) -> torch.Tensor | None:
    """``sample_weight`` as a tensor of shape (n_samples,) in ``like``'s dtype and device.

    None stays None. A scalar is broadcast to every row; otherwise a 1-D array-like of
    length ``n_samples``, finite, non-negative and not all zero. Integer weights mean
    repeated rows: the fit on ``w`` equals the fit on every row ``x_n`` repeated ``w_n``
    times (the objective is ``sum_n w_n log p(x_n)``).

    Parameters
    ----------
    sample_weight : None, float or array-like of shape (n_samples,)
    n_samples : int
    like : Tensor
        The data, whose dtype and device the weights take.
    name : str
        How the errors call the weights (e.g. "the weights of a batch").
    all_zero : bool, default False
        Accept weights that are all zero (one batch of a stream may be).

    Returns
    -------
    Tensor, shape (n_samples,), or None
    """
    if sample_weight is None:
        return None
    if isinstance(sample_weight, str):
        raise ValueError(f"{name}={sample_weight!r} is only for a stream of batches; with one "
                         "array pass an array of shape (n_samples,) or None")
    if isinstance(sample_weight, torch.Tensor):
        sample_weight = sample_weight.detach().cpu()
        if sample_weight.is_floating_point() and sample_weight.dtype not in (
                torch.float32, torch.float64):
            sample_weight = sample_weight.to(torch.float32)
        sample_weight = sample_weight.numpy()
    try:
        weights = np.asarray(sample_weight, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must hold numbers, got {type(sample_weight).__name__}; pass "
                         f"an array of shape ({n_samples},) of non-negative numbers") from None
    if weights.ndim == 0:
        weights = np.full(n_samples, float(weights))
    if weights.ndim != 1:
        raise ValueError(f"{name} has shape {weights.shape}; it must be one-dimensional, shape "
                         f"({n_samples},): one weight per row of X (flatten a column with "
                         ".ravel())")
    if weights.shape[0] != n_samples:
        raise ValueError(f"{name} has {weights.shape[0]} entries but X has {n_samples} rows; "
                         "pass one weight per row")
    if not np.all(np.isfinite(weights)):
        raise ValueError(f"{name} contains NaN or inf; pass finite weights (0 drops a row)")
    if np.any(weights < 0):
        raise ValueError(f"{name} contains negative values (the smallest is "
                         f"{weights.min():.3g}); weights must be >= 0 (0 drops a row)")
    if n_samples and not all_zero and not np.any(weights > 0):
        raise ValueError(f"{name} is zero for every row: nothing to fit; give at least one "
                         "row a positive weight")
    return torch.as_tensor(weights, dtype=like.dtype).to(like.device)


class ValidatedBatches:
    """Iterate a stream as validated tensors (``validate(batch, first)`` -> Tensor).

    The first batch ever seen fixes ``n_features_in_`` and the dtype (``first=True``);
    ``last`` is the most recent one. With ``weighted``, each batch must be a pair ``(x, w)``
    (a ``DataLoader`` over ``TensorDataset(x, w)`` gives them) and iterating yields ``(x, w)``
    with ``w`` checked by :func:`check_sample_weight`; otherwise the items after ``x`` of a
    tuple batch (``(x, y)`` of a labelled dataset) are ignored.
    """

    def __init__(self, source: Any, validate: Callable[[Any, bool], torch.Tensor],
                 weighted: bool = False) -> None:
        self.source = source
        self.validate = validate
        self.weighted = weighted
        self.seen = False
        self.last: torch.Tensor | None = None
        self.last_weights: torch.Tensor | None = None

    def __iter__(self) -> Iterator[Any]:
        empty = True
        for batch in self.source:
            empty = False
            weights = None
            if self.weighted:
                if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
                    raise ValueError(
                        "sample_weight='batches' reads every batch as a pair (x, w); got a "
                        f"{type(batch).__name__}: batch with "
                        "DataLoader(TensorDataset(x, w)), or pass sample_weight=None"
                    )
                batch, weights = batch
            elif isinstance(batch, (tuple, list)) and len(getattr(batch[0], "shape", ())) == 2:
                batch = batch[0]  # (x, y, ...) from a labelled dataset
            x = self.validate(as_array(batch, "a batch of X"), not self.seen)
            self.seen = True
            self.last = x
            if not self.weighted:
                yield x
                continue
            self.last_weights = check_sample_weight(
                weights, x.shape[0], x, "sample_weight (the w of a batch (x, w))", all_zero=True)
            yield x, self.last_weights
        if empty and self.seen:  # read again with nothing left: fitting would never end
            raise ValueError(
                "X, a stream of batches, gave batches at its first pass but none at a later "
                "one: it can be read only once. Pass a list of batches, a DataLoader, or a "
                "callable that returns a new iterator at each call (e.g. lambda: "
                "make_batches()), not an iterator or a callable returning the same one"
            )


class DataSource:
    """The data of one fit, in memory or streamed, on one process or this rank's shard.

    Attributes
    ----------
    sample : Tensor, shape (n, n_features)
        The data matrix, or a stream's first batch: what initial values and default priors
        are computed from.
    data : Tensor or DataSource
        What the E-step and the SVI trainer take: the matrix itself, or this source (an
        iterable of batches).
    streamed : bool
    one_pass : bool
        Whether the source can be read only once (an iterator).
    distributed : bool
        Whether the E-step's statistics and the data moments are summed over processes.
    weights : Tensor, shape (n,), or None
        The sample weights of a matrix (checked by :func:`check_sample_weight`); None without
        weights and for streams, whose weights come with their batches
        (:meth:`weighted_batches`, ``weighted_stream``).
    """

    streamed = False
    one_pass = False
    #: Whether the batches of a stream carry their weights (``sample_weight="batches"``).
    weighted_stream = False

    def __init__(self, sample: torch.Tensor, distributed: bool,
                 weights: torch.Tensor | None = None) -> None:
        self.sample = sample
        self.distributed = distributed
        self.weights = weights

    @property
    def data(self) -> Any:
        return self.sample

    @property
    def weighted(self) -> bool:
        """Whether the fit has sample weights (a matrix's or a stream's batches')."""
        return self.weights is not None or self.weighted_stream

    @property
    def sample_weights(self) -> torch.Tensor | None:
        """The weights of the rows of :attr:`sample` (None when unweighted)."""
        return self.weights

    def batches(self) -> Iterator[torch.Tensor]:
        """One pass over the data, batch by batch (a matrix is one batch)."""
        yield self.sample

    def weighted_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """One pass over the data as ``(x, w)`` pairs; ``w`` is None when unweighted."""
        yield self.sample, self.weights

    @property
    def n_rows(self) -> int | None:
        """Rows of a matrix; None for a stream until :meth:`moments` has counted them."""
        return self.sample.shape[0]

    def e_step(self, e_step: Callable[..., T]) -> Callable[[Any, Any], T]:
        """``e_step`` summed over the batches of a stream, then over the processes.

        With sample weights, ``e_step(x, params, weights=w)`` is called with the weights of
        ``x`` (the model's E-steps take them; unweighted, the call is ``e_step(x, params)``).
        The returned callable takes ``(data, params)``, ``data`` being :attr:`data`.
        """
        if self.streamed:
            summed = sum_over_batches(e_step)
            if self.weighted_stream:
                def e_step(_: Any, params: Any) -> T:
                    return summed(self.weighted_batches(), params)
            else:
                e_step = summed
        elif self.weights is not None:
            weighted, weights = e_step, self.weights

            def e_step(x: torch.Tensor, params: Any) -> T:
                return weighted(x, params, weights=weights)
        if self.distributed:
            e_step = process_group.all_reduce_e_step(e_step)
        return e_step

    def initializer(self, draw: Callable[[torch.Tensor], T], n_components: Any,
                    n_clusters: int, needs_rows: bool = True,
                    hint: str = "") -> Callable[[int], T]:
        """``init_params(i)`` of the EM loop: ``draw(sample)``, on rank 0, broadcast.

        ``needs_rows``: whether ``draw`` needs at least one row per cluster; ``hint`` ends the
        error's advice (e.g. the estimator's ``*_init`` arguments).
        """
        sample = self.sample
        where = "the first batch" if self.streamed else "X on rank 0"

        def init(_: int) -> T:
            if needs_rows and sample.shape[0] < n_clusters:
                raise ValueError(
                    f"{where} has {sample.shape[0]} rows, fewer than "
                    f"n_components={n_components!r} ({n_clusters} clusters), and the "
                    "initial values are drawn from it; "
                    f"pass larger batches (or more rows on rank 0){hint}"
                )
            return draw(sample)

        if self.distributed:
            return process_group.broadcast_result(init, device=sample.device)
        return init

    def em_options(self, progress: bool) -> dict[str, Any]:
        """Options of the EM loop: guide row, progress on rank 0 only, a final pass or not."""
        return dict(first_row=self.sample[:1], progress=progress and process_group.rank() == 0,
                    evaluate_final=not self.one_pass)

    def moments(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Mean and variance of all the data (every rank's), and this source's rows.

        With sample weights, the weighted mean and variance (a row of weight ``w`` counts
        as ``w`` rows).
        """
        rows: list[int] = []
        weight = 0.0

        def counted() -> Iterator[Any]:
            nonlocal weight
            for batch, weights in self.weighted_batches():
                rows.append(batch.shape[0])
                weight += batch.shape[0] if weights is None else float(weights.sum())
                yield batch if weights is None else (batch, weights)

        mean, variance, _ = process_group.data_moments(counted(),
                                                       across_processes=self.distributed)
        self._rows = sum(rows)
        self._total_weight = weight
        return mean, variance, self._rows

    @property
    def total_weight(self) -> float | None:
        """This source's sum of weights (rows count 1 each); None until counted."""
        if not self.streamed:
            return float(self.sample.shape[0] if self.weights is None else self.weights.sum())
        return getattr(self, "_total_weight", None)

    def svi_batches(self) -> Any:
        """What the SVI trainer reads of a stream: this source, or its ``(x, w)`` pairs."""
        if not self.weighted_stream:
            return self
        return _WeightedPairs(self)

    @property
    def whole_data_in_memory(self) -> bool:
        """Whether :attr:`data` is all the data: one matrix on one process."""
        return not (self.streamed or self.distributed)


class StreamSource(DataSource):
    """A stream of batches for EM and SVI: validated, its first batch read ahead.

    Iterating gives one pass over the source. A one-shot source (an iterator) is read once:
    its first batch, read ahead, is yielded again at the head of that pass.
    """

    streamed = True

    def __init__(self, source: Any, validate: Callable[[Any, bool], torch.Tensor],
                 distributed: bool, weighted: bool = False) -> None:
        source = as_stream(source)
        self.raw = source
        self.one_pass = isinstance(source, Iterator)
        self.weighted_stream = weighted
        self._batches = ValidatedBatches(source, validate, weighted)
        head = iter(self._batches)
        first = next(head, None)
        if first is None:
            raise ValueError("X is an empty stream of batches; pass at least one batch")
        super().__init__(first[0] if weighted else first, distributed)
        self._first_weights = first[1] if weighted else None
        self._stream = itertools.chain([first], head) if self.one_pass else self._batches
        self._rows: int | None = None

    @property
    def data(self) -> Any:
        return self

    @property
    def sample_weights(self) -> torch.Tensor | None:
        return self._first_weights

    def __iter__(self) -> Iterator[torch.Tensor]:
        """The batches ``x`` (their weights dropped: :meth:`weighted_batches` keeps them)."""
        if not self.weighted_stream:
            return iter(self._stream)
        return (x for x, _ in self._stream)

    def batches(self) -> Iterator[torch.Tensor]:
        return iter(self)

    def weighted_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        if not self.weighted_stream:
            return ((x, None) for x in self._stream)
        return iter(self._stream)

    @property
    def n_rows(self) -> int | None:
        return self._rows

    @property
    def last(self) -> torch.Tensor:
        """The batch read most recently."""
        return self._batches.last

    @property
    def last_weights(self) -> torch.Tensor | None:
        """The weights of :attr:`last` (None for an unweighted stream)."""
        return self._batches.last_weights


class _WeightedPairs:
    """A re-iterable view of a weighted stream as ``(x, w)`` pairs."""

    def __init__(self, source: DataSource) -> None:
        self.source = source

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        return iter(self.source.weighted_batches())


def check_one_pass(source: Any, max_iter: int, n_init: int, unit: str) -> None:
    """An iterator is read once: refuse a fit that would read it more than once."""
    if isinstance(source, Iterator) and max_iter * n_init > 1:
        raise ValueError(
            f"an iterator can be traversed once, but max_iter={max_iter} {unit} and "
            f"n_init={n_init} starts were asked for; pass a list or a DataLoader, "
            "or max_iter=1 and n_init=1"
        )
