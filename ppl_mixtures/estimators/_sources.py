"""Where a fit's data comes from: one matrix, a stream of batches, or this rank's shard.

:func:`make_source` turns what a user passed to ``fit`` into one :class:`DataSource`, which the
estimators hand to the EM loop (:meth:`DataSource.e_step`, :meth:`DataSource.initializer`,
:meth:`DataSource.em_options`) and to the SVI trainer (:attr:`DataSource.data`,
:attr:`DataSource.n_rows`). The estimators never ask which kind they hold.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader

from ppl_mixtures import distributed as process_group
from ppl_mixtures.inference.em.loop import sum_over_batches

T = TypeVar("T")


def is_batch_source(X: Any) -> bool:
    """Whether ``X`` is a stream of batches rather than one data matrix.

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


class ValidatedBatches:
    """Iterate a stream as validated tensors (``validate(batch, first)`` -> Tensor).

    The first batch ever seen fixes ``n_features_in_`` and the dtype (``first=True``);
    ``last`` is the most recent one.
    """

    def __init__(self, source: Any, validate: Callable[[Any, bool], torch.Tensor]) -> None:
        self.source = source
        self.validate = validate
        self.seen = False
        self.last: torch.Tensor | None = None

    def __iter__(self) -> Iterator[torch.Tensor]:
        for batch in self.source:
            if isinstance(batch, (tuple, list)) and len(getattr(batch[0], "shape", ())) == 2:
                batch = batch[0]  # (x, y, ...) from a labelled dataset
            x = self.validate(as_array(batch, "a batch of X"), not self.seen)
            self.seen = True
            self.last = x
            yield x


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
    """

    streamed = False
    one_pass = False

    def __init__(self, sample: torch.Tensor, distributed: bool) -> None:
        self.sample = sample
        self.distributed = distributed

    @property
    def data(self) -> Any:
        return self.sample

    def batches(self) -> Iterator[torch.Tensor]:
        """One pass over the data, batch by batch (a matrix is one batch)."""
        yield self.sample

    @property
    def n_rows(self) -> int | None:
        """Rows of a matrix; None for a stream until :meth:`moments` has counted them."""
        return self.sample.shape[0]

    def e_step(self, e_step: Callable[[torch.Tensor, Any], T]) -> Callable[[Any, Any], T]:
        """``e_step`` summed over the batches of a stream, then over the processes."""
        if self.streamed:
            e_step = sum_over_batches(e_step)
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
        """Mean and variance of all the data (every rank's), and this source's rows."""
        rows: list[int] = []

        def counted() -> Iterator[torch.Tensor]:
            for batch in self.batches():
                rows.append(batch.shape[0])
                yield batch

        mean, variance, _ = process_group.data_moments(counted(),
                                                       across_processes=self.distributed)
        self._rows = sum(rows)
        return mean, variance, self._rows

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
                 distributed: bool) -> None:
        self.raw = source
        self.one_pass = isinstance(source, Iterator)
        self._batches = ValidatedBatches(source, validate)
        head = iter(self._batches)
        first = next(head, None)
        if first is None:
            raise ValueError("X is an empty stream of batches; pass at least one batch")
        super().__init__(first, distributed)
        self._stream = itertools.chain([first], head) if self.one_pass else self._batches
        self._rows: int | None = None

    @property
    def data(self) -> Any:
        return self

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(self._stream)

    def batches(self) -> Iterator[torch.Tensor]:
        return iter(self)

    @property
    def n_rows(self) -> int | None:
        return self._rows

    @property
    def last(self) -> torch.Tensor:
        """The batch read most recently."""
        return self._batches.last


def check_one_pass(source: Any, max_iter: int, n_init: int, unit: str) -> None:
    """An iterator is read once: refuse a fit that would read it more than once."""
    if isinstance(source, Iterator) and max_iter * n_init > 1:
        raise ValueError(
            f"an iterator can be traversed once, but max_iter={max_iter} {unit} and "
            f"n_init={n_init} starts were asked for; pass a list or a DataLoader, "
            "or max_iter=1 and n_init=1"
        )
