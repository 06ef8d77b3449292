"""What a user may pass to ``fit`` as data, read and checked before it becomes a
:class:`~ppl_mixtures.estimators._sources.DataSource`.

:func:`is_batch_source` tells a stream of batches from one data matrix; :func:`as_array`
turns tensors and other array-likes into what scikit-learn's validation reads;
:func:`check_sample_weight` checks the weights of a matrix's rows; :class:`ValidatedBatches`
iterates a stream as validated tensors (with their weights for ``sample_weight="batches"``);
:func:`check_one_pass` refuses a fit that would read an iterator more than once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence, Set
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader


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


def check_one_pass(source: Any, max_iter: int, n_init: int, unit: str) -> None:
    """An iterator is read once: refuse a fit that would read it more than once."""
    if isinstance(source, Iterator) and max_iter * n_init > 1:
        raise ValueError(
            f"an iterator can be traversed once, but max_iter={max_iter} {unit} and "
            f"n_init={n_init} starts were asked for; pass a list or a DataLoader, "
            "or max_iter=1 and n_init=1"
        )
