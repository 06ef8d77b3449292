"""EM across processes with ``torch.distributed``: sharded data, all-reduced statistics.

Each process (rank) holds one shard of the data. EM's E-step statistics are sums over samples,
so the statistics of the whole data set are the sum of every rank's statistics: each rank runs
the E-step on its shard, one ``all_reduce`` (sum) adds them up, and every rank runs the same
M-step on the same totals, so every rank holds the same global fit after every iteration.
Initial values are drawn once, on rank 0, and broadcast (or given by the user on every rank).

The process group is the caller's: launch with ``torchrun`` (``python -m
torch.distributed.run``) and call :func:`init_from_env` (or ``init_process_group``) before
``fit``. Gloo serves CPU tensors, NCCL CUDA tensors.

Public helpers
--------------
:func:`init_from_env`
    Initialise the default process group from torchrun's environment variables.
:func:`all_reduce_stats`, :func:`all_reduce_e_step`
    Sum sufficient statistics over ranks (one flat buffer per dtype, one collective each).
:func:`broadcast_result`
    Compute a value (e.g. initial parameters) on rank 0 only and send it to every rank.
:func:`check_shards`
    Check that every rank's shard has the same number of features and dtype.
:func:`data_moments`
    Per-feature mean and variance of all the data: every batch of a stream, every rank.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "all_reduce_e_step",
    "data_moments",
    "all_reduce_stats",
    "broadcast_result",
    "check_shards",
    "init_from_env",
    "is_initialized",
    "rank",
    "require_initialized",
    "world_size",
]

T = TypeVar("T")

#: Environment variables that ``torchrun`` sets for every process.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def is_initialized() -> bool:
    """Whether ``torch.distributed`` is available and its default process group is set up."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank in the default group (0 without a process group)."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """Number of processes in the default group (1 without a process group)."""
    return dist.get_world_size() if is_initialized() else 1


def require_initialized(argument: str = "distributed=True") -> None:
    """Raise a ``ValueError`` naming ``argument`` unless a process group is set up."""
    if not is_initialized():
        raise ValueError(
            f"{argument} needs torch.distributed to be initialised: launch one process per "
            "shard with torchrun (e.g. 'torchrun --nproc-per-node 2 script.py') and call "
            "ppl_mixtures.distributed.init_from_env() (or torch.distributed.init_process_group) "
            "before fit; or set distributed=False to fit in one process"
        )


def init_from_env(backend: str | None = None, timeout_s: float = 1800.0) -> tuple[int, int]:
    """Initialise the default process group from the variables ``torchrun`` sets.

    Reads ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` (and ``LOCAL_RANK``). With
    CUDA available the backend is NCCL and this process's CUDA device is set to
    ``LOCAL_RANK``, so that ``device="auto"`` (``"cuda"``) means this rank's own GPU;
    otherwise gloo. Does nothing but report when a group is already set up.

    Parameters
    ----------
    backend : {None, "gloo", "nccl"}
        None: NCCL when CUDA is available, gloo otherwise.
    timeout_s : float, default 1800
        How long a collective may wait for the other ranks before failing.

    Returns
    -------
    rank, world_size : int
    """
    if is_initialized():
        return rank(), world_size()
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise ValueError(
            f"init_from_env: the environment lacks {missing}; launch the script with torchrun "
            "(e.g. 'torchrun --nproc-per-node 2 script.py'), which sets them, or call "
            "torch.distributed.init_process_group yourself"
        )
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return rank(), world_size()


def _stats_fields(stats: Any) -> tuple[str, ...]:
    names = getattr(type(stats), "summed_fields", None)
    if not dataclasses.is_dataclass(stats) or names is None:
        raise TypeError(
            f"{type(stats).__name__} does not declare its summed_fields: distributed EM "
            "needs statistics that say which fields are sums over samples"
        )
    return names


def all_reduce_stats(stats: T, group: Any = None) -> T:
    """Sum the sufficient statistics of every rank; every rank gets the totals.

    The fields named by ``type(stats).summed_fields`` are summed (tensors and Python numbers,
    such as ``n_samples``); the others (e.g. ``shift``, the E-step's means) are equal on every
    rank and kept. The tensors of each dtype are packed into one flat buffer, so one
    ``all_reduce`` per dtype carries everything: K (1 + D + D^2) + 2 numbers for a full-covariance
    GMM. Python numbers travel in float64 (counts stay exact past 2^24 in float32 fits).

    Parameters
    ----------
    stats : dataclass with ``summed_fields``
        E.g. :class:`~ppl_mixtures.inference.em.gmm.GMMStats`, computed on this rank's shard.
    group : ProcessGroup, optional
        Default: the default group.

    Returns
    -------
    The same type, its summed fields holding the totals over all ranks.
    """
    names = _stats_fields(stats)
    values = {name: getattr(stats, name) for name in names}
    device = next(v.device for v in values.values() if isinstance(v, Tensor))
    by_dtype: dict[torch.dtype, list[str]] = {}
    for name, value in values.items():
        dtype = value.dtype if isinstance(value, Tensor) else torch.float64
        by_dtype.setdefault(dtype, []).append(name)
    totals = {}
    for dtype, group_names in by_dtype.items():
        parts = [torch.as_tensor(values[name], dtype=dtype, device=device).reshape(-1)
                 for name in group_names]
        flat = torch.cat(parts)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        for name, chunk in zip(group_names, flat.split([p.numel() for p in parts]), strict=True):
            value = values[name]
            totals[name] = chunk.view_as(value) if isinstance(value, Tensor) else chunk.item()
    return dataclasses.replace(stats, **totals)


def all_reduce_e_step(e_step: Callable[[Any, Any], T], group: Any = None) -> Callable[[Any, Any], T]:
    """Wrap an E-step so that it returns the statistics summed over every rank's shard.

    Parameters
    ----------
    e_step : callable ``(data, params) -> stats``
        The local E-step (on a tensor, or over batches with
        :func:`~ppl_mixtures.inference.em.loop.sum_over_batches`).
    group : ProcessGroup, optional

    Returns
    -------
    callable ``(data, params) -> stats``
        Every rank must call it at the same point (it is a collective).
    """

    def global_e_step(data: Any, params: Any) -> T:
        return all_reduce_stats(e_step(data, params), group)

    return global_e_step


@dataclasses.dataclass(frozen=True)
class _TensorSpec:
    shape: tuple[int, ...]
    dtype: torch.dtype


def _split_tensors(value: Any) -> tuple[Any, list[Tensor]]:
    """A picklable skeleton of ``value`` (tensors replaced by their specs) and the tensors."""
    if isinstance(value, Tensor):
        return _TensorSpec(tuple(value.shape), value.dtype), [value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        tensors: list[Tensor] = []
        skeleton = {}
        for item in dataclasses.fields(value):
            part = getattr(value, item.name)
            if isinstance(part, Tensor):
                skeleton[item.name] = _TensorSpec(tuple(part.shape), part.dtype)
                tensors.append(part)
            else:
                skeleton[item.name] = part
        return (type(value), skeleton), tensors
    raise TypeError(f"broadcast_result: cannot send a {type(value).__name__}; return a tensor "
                    "or a dataclass of tensors")


def _rebuild(skeleton: Any, tensors: list[Tensor]) -> Any:
    if isinstance(skeleton, _TensorSpec):
        return tensors[0]
    cls, parts = skeleton
    received = iter(tensors)
    return cls(**{name: next(received) if isinstance(part, _TensorSpec) else part
                  for name, part in parts.items()})


def broadcast_result(make: Callable[..., T], device: torch.device | str, src: int = 0,
                     group: Any = None) -> Callable[..., T]:
    """Wrap ``make`` so that only rank ``src`` calls it and every rank gets its result.

    Used for initial values: k-means on rank 0's shard, broadcast, so that every rank starts
    EM from the same point (random draws on each rank would differ). An exception raised by
    ``make`` on rank ``src`` is re-raised on every rank (as a ``RuntimeError`` elsewhere),
    so no rank is left waiting.

    Parameters
    ----------
    make : callable returning a tensor or a dataclass of tensors (e.g. ``GMMParams``)
    device : torch.device or str
        Where the received tensors are put on the other ranks (this rank's data device;
        a CUDA device with NCCL).
    src : int, default 0
    group : ProcessGroup, optional

    Returns
    -------
    callable with ``make``'s signature (a collective: every rank must call it)
    """

    def on_every_rank(*args: Any, **kwargs: Any) -> T:
        header: list[Any] = [None]
        tensors: list[Tensor] = []
        error = None
        if rank() == src:
            try:
                value = make(*args, **kwargs)
                skeleton, tensors = _split_tensors(value)
                header = [("ok", skeleton)]
            except Exception as err:  # forwarded to the other ranks, then re-raised here
                error = err
                header = [("error", f"{type(err).__name__}: {err}")]
        dist.broadcast_object_list(header, src=src, group=group)
        status, payload = header[0]
        if error is not None:
            raise error
        if status == "error":
            raise RuntimeError(f"rank {src} failed to compute the initial values: {payload}")
        if rank() != src:
            specs = _flatten_specs(payload)
            tensors = [torch.empty(spec.shape, dtype=spec.dtype, device=device) for spec in specs]
        for tensor in tensors:
            dist.broadcast(tensor, src=src, group=group)
        return _rebuild(payload, tensors)

    return on_every_rank


def _flatten_specs(skeleton: Any) -> list[_TensorSpec]:
    if isinstance(skeleton, _TensorSpec):
        return [skeleton]
    return [part for part in skeleton[1].values() if isinstance(part, _TensorSpec)]


def check_shards(n_features: int, dtype: torch.dtype, n_samples: int | None = None,
                 n_components: int = 1, group: Any = None) -> int | None:
    """Check that every rank's shard agrees on features and dtype; return the total samples.

    A collective: every rank must call it. Every rank sees the same gathered values, so every
    rank raises the same error.

    Parameters
    ----------
    n_features : int
        This rank's number of features.
    dtype : torch.dtype
        This rank's data dtype (all ranks must fit in the same dtype).
    n_samples : int, optional
        This rank's number of samples (None for a stream: not known in advance).
    n_components : int, default 1
        The total number of samples must be at least this.

    Returns
    -------
    int or None
        Total number of samples over all ranks (None when a rank passed None).
    """
    shards: list[Any] = [None] * world_size()
    dist.all_gather_object(shards, (n_features, str(dtype), n_samples), group=group)
    reference = shards[0]
    for index, (features, shard_dtype, _) in enumerate(shards):
        if features != reference[0]:
            raise ValueError(f"X on rank {index} has {features} features but X on rank 0 has "
                             f"{reference[0]}: every rank's shard must have the same columns")
        if shard_dtype != reference[1]:
            raise ValueError(f"X on rank {index} is fitted in {shard_dtype} but X on rank 0 in "
                             f"{reference[1]}: pass the same dtype= on every rank")
    counts = [count for _, _, count in shards]
    if any(count is None for count in counts):
        return None
    total = sum(counts)
    if total < n_components:
        raise ValueError(f"n_samples={total} over all ranks should be >= "
                         f"n_components={n_components}; pass more samples or lower n_components")
    return total


def data_moments(batches: Any, across_processes: bool = False) -> tuple[Tensor, Tensor, int]:
    """Per-feature mean and variance (ddof 1) of all the data, and its number of rows.

    Parameters
    ----------
    batches : iterable of Tensor, each of shape (rows_i, n_features), or of pairs (x, w)
        One pass is made (a tensor alone: pass ``[x]``). A pair ``(x, w)`` weighs its rows by
        ``w`` (shape (rows_i,)): a row of integer weight ``w`` counts as ``w`` rows, so the
        variance divides by ``sum w - 1``.
    across_processes : bool, default False
        Sum over the ranks of the default process group too (one ``all_reduce``).

    Returns
    -------
    mean, variance : Tensor, shape (n_features,)
        In the batches' dtype; the sums are taken about the first row of this rank (and
        sent in float64 about zero across ranks) for accuracy.
    rows : int
        Rows of all the batches (of all ranks when ``across_processes``).

    NaN entries (missing values) are left out: each feature's moments are those of its
    observed entries.
    """
    rows, count, shift, total, squares = 0, None, None, None, None
    for batch in batches:
        weights = None
        if isinstance(batch, (tuple, list)):
            batch, weights = batch
        if shift is None:
            shift = torch.nan_to_num(batch[0], nan=0.0)  # a missing entry shifts by 0
            total, squares, count = (torch.zeros_like(shift) for _ in range(3))
        observed = ~torch.isnan(batch)
        centred = torch.where(observed, batch - shift, 0.0)
        seen = observed.to(batch.dtype)
        rows += batch.shape[0]
        if weights is None:
            count += seen.sum(0)
            total += centred.sum(0)
            squares += centred.square().sum(0)
        else:
            count += weights @ seen
            total += weights @ centred
            squares += weights @ centred.square()
    if shift is None:
        raise ValueError("the data is empty: pass at least one batch with rows")
    if across_processes:
        packed = torch.stack([total + count * shift,
                              squares + 2 * shift * total + count * shift.square(),
                              count,
                              torch.full_like(shift, rows)]).to(torch.float64)
        dist.all_reduce(packed)
        count, rows = packed[2], int(packed[3, 0])
        mean = packed[0] / count
        variance = (packed[1] - count * mean.square()) / (count - 1).clamp_min(1)
        return mean.to(shift.dtype), variance.to(shift.dtype), rows
    mean = shift + total / count
    variance = (squares - total.square() / count) / (count - 1).clamp_min(1)
    return mean, variance, rows
