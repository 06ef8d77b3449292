"""Where a fit's data comes from: one matrix, a stream of batches, or this rank's shard.

``MixtureEstimator._source`` turns what a user passed to ``fit`` into one :class:`DataSource`
(a :class:`StreamSource` for a stream of batches), which the estimators hand to the EM loop
(:meth:`DataSource.e_step`, :meth:`DataSource.initializer`, :meth:`DataSource.em_options`) and
to the SVI trainer (:attr:`DataSource.data`, :attr:`DataSource.n_rows`). The estimators never
ask which kind they hold. How the user's data is told apart and checked first lives in
:mod:`ppl_mixtures.estimators._inputs` (its names are re-exported here).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch

from ppl_mixtures import distributed as process_group
from ppl_mixtures.estimators._inputs import (  # noqa: F401 (re-exported)
    WEIGHTS_IN_BATCHES,
    CallableStream,
    ValidatedBatches,
    as_array,
    as_stream,
    check_one_pass,
    check_sample_weight,
    is_batch_source,
)
from ppl_mixtures.inference.em.loop import sum_over_batches

T = TypeVar("T")


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
    column_moments : (Tensor, Tensor) or None
        Per-feature mean and variance (over n, float64, shapes (n_features,)) of a matrix,
        unweighted, when the data check took them (its ``reg_covar`` scale check); None
        otherwise. :meth:`prior_moments` hands them to the default priors, so the fit does
        not take them a second time.
    """

    streamed = False
    column_moments: tuple[torch.Tensor, torch.Tensor] | None = None
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

    def prior_moments(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The per-feature mean and variance (over n - 1) of :attr:`sample` that the default
        priors take (:func:`~ppl_mixtures.models.priors.data_moments`), from
        :attr:`column_moments`; None when they were not taken (the priors take them)."""
        if self.column_moments is None or self.weights is not None or self.sample.shape[0] < 2:
            return None
        n_samples = self.sample.shape[0]
        mean, variance = self.column_moments
        return mean, variance * (n_samples / (n_samples - 1))

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
        # a copy: a view would keep all the data alive as long as the deferred guide_ waits
        return dict(first_row=self.sample[:1].clone(),
                    progress=progress and process_group.rank() == 0,
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
