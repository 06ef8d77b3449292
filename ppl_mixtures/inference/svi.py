"""One stochastic variational inference (SVI) trainer for every model of the zoo.

A model is a callable ``model(x, subsample=None, **kwargs)`` with an attribute
``max_plate_nesting``; it opens ``pyro.plate("data", x.shape[0], subsample=subsample)``, so that
when a LongTensor of row indices is passed as ``subsample`` Pyro scales the likelihood by
``N / batch_size``. Discrete sites carry ``infer={"enumerate": "parallel"}`` and are summed out by
the default loss, :class:`DenseTraceEnum_ELBO` (Pyro's :class:`~pyro.infer.TraceEnum_ELBO` with a
cheaper sum for mixtures). The guide has the model's signature.

:class:`SVITrainer` owns what is common to every model: the optimiser, minibatches drawn from its
own random generator, early stopping, a progress bar, atomic checkpoints and exact resumption.
It moves nothing between devices: the data and the parameters decide (CPU or CUDA, any dtype).

Example
-------
>>> trainer = SVITrainer(model, guide, lr=0.05, batch_size=256, max_steps=2000)  # doctest: +SKIP
>>> result = trainer.fit(x)  # doctest: +SKIP
>>> result.history[-1], result.converged  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import time
import types
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import pyro
import pyro.distributions.constraints as pyro_constraints
import pyro.optim
import torch
import torch.distributed as torch_dist
from pyro import poutine
from pyro.infer import SVI
from pyro.infer.elbo import ELBO
from pyro.infer.util import zero_grads
from pyro.optim import PyroOptim
from pyro.poutine.messenger import Messenger
from torch import Tensor

from ppl_mixtures import distributed as process_group
from ppl_mixtures import io
from ppl_mixtures._progress import progress_bar
from ppl_mixtures._rng import fork_rng, seed_global
from ppl_mixtures.inference._joint_optim import JOINT_OPTIMIZERS, _JointOptim
from ppl_mixtures.inference.elbo import DenseTraceEnum_ELBO

#: Optimisers selectable by name; any other :class:`pyro.optim.PyroOptim` may be passed as is.
OPTIMIZERS: dict[str, Callable[[dict], PyroOptim]] = {
    "adam": pyro.optim.Adam,
    "clipped_adam": pyro.optim.ClippedAdam,
}
#: Settings that must match between a checkpoint and the trainer resuming from it.
_RESUME_SETTINGS = ("optimizer", "lr", "batch_size", "num_particles", "ema_decay")
#: Guards the relative change of the smoothed loss against division by zero.
_EPS = 1e-12


@dataclass
class SVIResult:
    """What one call to :meth:`SVITrainer.fit` returns.

    Attributes
    ----------
    history : list of float, length n_steps
        The loss of every step since the start of training (resumed steps included): the
        negative ELBO estimate returned by ``SVI.step``, which Pyro scales to the full data set
        when minibatching, divided by the number of samples N. It is a per-sample negative ELBO
        and, for a minibatch, an unbiased estimate of the full-data value at that step's
        parameters.
    n_steps : int
        Number of SVI steps taken since the start of training.
    converged : bool
        True when early stopping fired (see :class:`SVITrainer`), False when ``max_steps`` ran out.
    seconds : float
        Wall-clock seconds spent in this call to ``fit``.
    """

    history: list[float]
    n_steps: int
    converged: bool
    seconds: float


@dataclass
class _Progress:
    """Counters of a run; all of them go into the checkpoint."""

    step: int = 0
    history: list[float] = field(default_factory=list)
    loss_ema: float | None = None
    stalled_checks: int = 0
    converged: bool = False
    #: Batches of the current pass over a stream already used (resumption skips them).
    stream_position: int = 0


class ScaleSites(Messenger):
    """Multiply the log densities of sample sites inside / outside the data plate.

    Two uses in :class:`SVITrainer`:

    - data parallelism: each of R processes scores its own shard, so the sum of their ELBOs
      counts the global sites (priors, and the guide's terms for them) R times and the data
      once. With ``global_factor = 1 / R`` the sum over processes is the single-process ELBO
      of all the data, and summing the processes' gradients gives its gradient;
    - streams of batches: a batch of B rows out of N is scored with ``local_factor = N / B``,
      an unbiased estimate of the likelihood of all N rows (what ``pyro.plate``'s
      ``subsample`` does when the whole data set is at hand).

    Parameters
    ----------
    global_factor, local_factor : float, default 1.0
        Factors of the sites outside / inside the data plate.
    data_plate : str, default "data"
        Name of the plate whose sites are local to a data point.
    """

    def __init__(self, global_factor: float = 1.0, local_factor: float = 1.0,
                 data_plate: str = "data") -> None:
        super().__init__()
        self.global_factor = global_factor
        self.local_factor = local_factor
        self.data_plate = data_plate

    def _process_message(self, msg: dict[str, Any]) -> None:
        if msg["type"] != "sample":
            return
        local = any(frame.name == self.data_plate for frame in msg["cond_indep_stack"])
        msg["scale"] = (self.local_factor if local else self.global_factor) * msg["scale"]


class _EpochSampler:
    """Random permutations of ``range(num_samples)``, one per epoch, cut into batches.

    Every row is seen once per epoch; the last batch of an epoch is smaller when ``batch_size``
    does not divide ``num_samples``. Randomness comes from the sampler's own CPU generator, so
    that drawing batches leaves the global random state alone.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int) -> None:
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.permutation: Tensor | None = None
        self.cursor = 0

    def next_batch(self, device: torch.device) -> Tensor:
        """Row indices of the next batch, LongTensor of shape (<= batch_size,) on ``device``."""
        if self.permutation is None or self.cursor >= self.num_samples:
            self.permutation = torch.randperm(self.num_samples, generator=self.generator)
            self.cursor = 0
        batch = self.permutation[self.cursor : self.cursor + self.batch_size]
        self.cursor += batch.shape[0]
        return batch.to(device)

    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": self.generator.get_state(),
            "permutation": self.permutation,
            "cursor": self.cursor,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"].cpu())
        permutation = state["permutation"]
        self.permutation = None if permutation is None else permutation.cpu()
        self.cursor = state["cursor"]


def _rng_state() -> dict[str, Any]:
    """Pyro's RNG states (torch CPU, python, numpy), plus every CUDA device's when present."""
    state = pyro.util.get_rng_state()
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def param_store_values() -> dict[str, Any]:
    """The Pyro param store as plain data: unconstrained values and constraint names.

    Returns
    -------
    dict
        ``{"values": {name: Tensor}, "constraints": {name: spec}}``, where each constraint is
        named as in ``pyro.distributions.constraints`` (independent ones as
        ``{"independent": name, "ndims": n}``), so :mod:`ppl_mixtures.io` can write it.
    """
    store = pyro.get_param_store()
    state = store.get_state()
    return {
        "values": {name: value.detach() for name, value in state["params"].items()},
        "constraints": {name: _constraint_name(name, constraint)
                        for name, constraint in state["constraints"].items()},
    }


def load_param_store_values(saved: dict[str, Any]) -> None:
    """Put :func:`param_store_values` back into the param store, bit for bit.

    Parameters that exist keep their tensor (an optimiser or module holding it sees the
    values); missing ones are created with their saved constraint.
    """
    store = pyro.get_param_store()
    for name, value in saved["values"].items():
        if name not in store:
            constraint = _constraint(saved["constraints"][name])
            initial = torch.distributions.transform_to(constraint)(value)
            pyro.param(name, initial, constraint=constraint)
        target = store.get_param(name).unconstrained()
        with torch.no_grad():
            target.copy_(value.to(device=target.device, dtype=target.dtype))


def _name(function: Any) -> str:
    """A model's or guide's name for checkpoints: its class, or a function's qualified name."""
    if hasattr(function, "__qualname__") and not isinstance(function, torch.nn.Module):
        return function.__qualname__
    return type(function).__name__


def _settings(model: Any) -> dict[str, Any]:
    """A model object's plain settings (numbers, strings, tuples of them), e.g. K, D, type.

    Empty for a plain function.
    """
    if isinstance(model, types.FunctionType) or not hasattr(model, "__dict__"):
        return {}
    plain = (bool, int, float, str)
    settings = {}
    for key, value in sorted(vars(model).items()):
        if key.startswith("_"):
            continue
        if isinstance(value, plain):
            settings[key] = value
        elif isinstance(value, tuple) and all(isinstance(v, plain) for v in value):
            settings[key] = list(value)
    return settings


def _check_parameter_shapes(saved: dict[str, Tensor]) -> None:
    """Refuse checkpoint values whose names or shapes differ from the param store's."""
    store = pyro.get_param_store()
    differ = [f"{name}: checkpoint {tuple(value.shape)}, this run "
              f"{tuple(store.get_param(name).unconstrained().shape)}"
              for name, value in saved.items()
              if name in store  # others belong to the model, created at its first call
              and tuple(store.get_param(name).unconstrained().shape) != tuple(value.shape)]
    if differ:
        raise ValueError("the checkpoint's parameters do not fit this model (" +
                         "; ".join(differ[:3]) + "); it was written for another number of "
                         "components, features or another model: pass another checkpoint_path "
                         "or resume=False")


def _constraint_name(parameter: str, constraint: Any) -> Any:
    """A constraint as data: its name in ``pyro.distributions.constraints``, or, for an
    independent constraint, ``{"independent": base, "ndims": n}``."""
    if isinstance(constraint, torch.distributions.constraints.independent):
        return {"independent": _constraint_name(parameter, constraint.base_constraint),
                "ndims": constraint.reinterpreted_batch_ndims}
    for name, candidate in vars(pyro_constraints).items():
        if candidate is constraint:
            return name
    raise TypeError(f"parameter {parameter!r} has a constraint ({constraint!r}) that is not one "
                    "of pyro.distributions.constraints' named constraints, so its checkpoint "
                    "cannot be written safely")


def _constraint(spec: Any) -> Any:
    """Inverse of :func:`_constraint_name` (only named constraints are looked up)."""
    if isinstance(spec, dict):
        return torch.distributions.constraints.independent(_constraint(spec["independent"]),
                                                           int(spec["ndims"]))
    constraint = getattr(pyro_constraints, str(spec), None)
    if not isinstance(constraint, torch.distributions.constraints.Constraint):
        raise ValueError(f"unknown parameter constraint {spec!r} in a checkpoint")
    return constraint


def _to_device(tree: Any, device: torch.device) -> Any:
    """Every tensor of a nested dict/list/tuple moved to ``device``."""
    if isinstance(tree, Tensor):
        return tree.to(device)
    if isinstance(tree, dict):
        return {k: _to_device(v, device) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_to_device(v, device) for v in tree)
    return tree


def _set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`_rng_state`; byte tensors may come back on the data's device."""
    pyro.util.set_rng_state({**state, "torch": state["torch"].cpu()})
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


class SVITrainer:
    """Fit a guide to a model by SVI, for any model of the zoo.

    Parameters
    ----------
    model, guide : callable
        ``model(x, subsample=None, **model_kwargs)`` with an attribute ``max_plate_nesting``, and
        a guide of the same signature (an autoguide over the model with its discrete sites
        hidden, or a hand-written one).
    optimizer : {"adam", "clipped_adam"} or pyro.optim.PyroOptim, default "adam"
        A name builds the Pyro optimiser with learning rate ``lr`` afresh at each ``fit``; an
        instance is used as given (``lr`` is then ignored) and its per-parameter state is reset
        at each ``fit``, then restored from the checkpoint on resume.
    lr : float, default 0.01
        Learning rate of a named optimiser.
    loss : pyro.infer.elbo.ELBO, optional
        Defaults to ``DenseTraceEnum_ELBO(max_plate_nesting=model.max_plate_nesting,
        num_particles=num_particles, strict_enumeration_warning=False)``, Pyro's
        :class:`~pyro.infer.TraceEnum_ELBO` with a cheaper sum over the enumerated sites of a
        mixture (the same loss and gradients to rounding).
    num_particles : int, default 1
        Particles of the default loss (ignored when ``loss`` is given).
    batch_size : int, optional
        Rows per step. None, or a value >= N, trains on the full batch. Otherwise each step
        passes ``subsample=`` the next slice of an epoch-wise random permutation of the rows
        (drawn from the trainer's own generator) and the full ``x``; the model indexes it.
    max_steps : int, default 1000
        Total number of steps of the run, counted from its start (a resumed run continues up
        to it).
    tol : float, default 1e-5
        Early-stopping threshold on the relative change of the smoothed loss; ``tol <= 0``
        disables early stopping.
    patience : int, default 20
        Consecutive steps below ``tol`` needed to stop.
    ema_decay : float, default 0.9
        Decay ``d`` of the exponential moving average of the loss.
    progress : bool, default True
        Show a tqdm bar with the loss; it is never shown when stderr is not a terminal.
    checkpoint_path : str or os.PathLike, optional
        Where to write checkpoints; None writes none.
    checkpoint_every : int, default 100
        Steps between checkpoints; one is also written at the end of ``fit``.
    seed : int, optional
        When given, a fresh ``fit`` runs inside :func:`ppl_mixtures._rng.fork_rng` and seeds
        the forked generators there (torch's, python's and numpy's, which sampling
        guides use), so the caller's global random streams are left as they were; the batch
        generator is seeded with it too. When None, the run draws from the caller's global
        RNGs (``pyro.set_rng_seed`` before ``fit`` makes it reproducible) and advances them.
        Distributed: ``seed + rank`` on each process.
    distributed : bool, default False
        Data parallelism over the processes of an initialised ``torch.distributed`` group
        (``torchrun``; gloo on CPU, NCCL on CUDA): the ``x`` given to :meth:`fit` on each
        process is its shard. See Notes.

    Notes
    -----
    **Early stopping.** With the per-sample losses ``l_t`` of :attr:`SVIResult.history`, the
    moving average is ``m_1 = l_1`` and ``m_t = d m_{t-1} + (1 - d) l_t``. From step 2 on, every
    step is a check: it *stalls* when ``|m_{t-1} - m_t| / (|m_t| + 1e-12) < tol``, and any other
    step resets the count of consecutive stalls. The run stops, with ``converged=True``, when that
    count reaches ``patience``.

    **Checkpoints.** A checkpoint is written in the safe format of :mod:`ppl_mixtures.io`
    (safetensors + JSON, kind ``"svi-checkpoint"``), atomically, so the file on disk is
    always a complete checkpoint and reading it runs no code. It holds the step, the history,
    the early-stopping counters and ``converged``, the whole Pyro param store (unconstrained
    values and constraint names), the optimiser state, the batch generator's state and current
    permutation, the RNG states and the trainer's settings.

    **Resumption.** ``fit(x, resume=True)`` restores all of that and continues from the stored
    step up to ``max_steps``: training 2n steps at once gives the same parameters and history,
    bit for bit, as n steps, a stop, and a resumed run to 2n, full batch or minibatch. A
    checkpoint that has converged is returned as is. With no checkpoint on disk, ``fit`` starts
    afresh.

    **Distributed.** Each process draws its minibatches from its own shard (N_r rows, so the
    data plate scales its likelihood by N_r / B), the global sites' terms are scaled by
    ``1 / world_size`` (:class:`ScaleSites`), and the gradients are summed over the
    processes (``all_reduce``) before every optimiser step, so that every process takes the
    step of the single-process ELBO of all the data: exactly so on full batches, an unbiased
    estimate with minibatches. Parameters are broadcast from rank 0 before the first step,
    losses are summed over processes (``history`` and early stopping are global and the same
    on every process), and each process writes its own checkpoint,
    ``checkpoint_path`` with ``.rank<r>`` before its suffix for ranks r > 0. The guide's
    parameters must be global (the same shapes on every process), not one per data point.

    **Device and dtype.** Nothing is moved: the model and guide create their parameters from
    the data, batch indices are put on ``x.device``, and a checkpoint is loaded onto
    ``x.device``.
    """

    def __init__(
        self,
        model: Callable[..., Any],
        guide: Callable[..., Any],
        *,
        optimizer: str | PyroOptim = "adam",
        lr: float = 0.01,
        loss: ELBO | None = None,
        num_particles: int = 1,
        batch_size: int | None = None,
        max_steps: int = 1000,
        tol: float = 1e-5,
        patience: int = 20,
        ema_decay: float = 0.9,
        progress: bool = True,
        checkpoint_path: str | os.PathLike[str] | None = None,
        checkpoint_every: int = 100,
        seed: int | None = None,
        distributed: bool = False,
    ) -> None:
        if isinstance(optimizer, str) and optimizer not in OPTIMIZERS:
            raise ValueError(
                f"optimizer={optimizer!r} is not known; use one of {sorted(OPTIMIZERS)} "
                "or pass a pyro.optim.PyroOptim instance."
            )
        self.model = model
        self.guide = guide
        self.optimizer = optimizer
        self.lr = lr
        self.num_particles = num_particles
        self.loss = loss if loss is not None else self._default_loss(model, num_particles)
        #: Sum of the sample weights of a weighted fit (the loss is divided by it), or None.
        self._weight_total: float | None = None
        self.batch_size = batch_size
        self.max_steps = max_steps
        self.tol = tol
        self.patience = patience
        self.ema_decay = ema_decay
        self.progress = progress
        self.checkpoint_path = None if checkpoint_path is None else os.fspath(checkpoint_path)
        self.checkpoint_every = checkpoint_every
        self.seed = seed
        self.distributed = distributed

    @staticmethod
    def _default_loss(model: Callable[..., Any], num_particles: int) -> ELBO:
        return DenseTraceEnum_ELBO(
            max_plate_nesting=getattr(model, "max_plate_nesting", float("inf")),
            num_particles=num_particles,
            strict_enumeration_warning=False,
        )

    @property
    def config(self) -> dict[str, Any]:
        """The trainer's settings, as stored in checkpoints."""
        optimizer = self.optimizer
        return {
            "optimizer": optimizer if isinstance(optimizer, str) else type(optimizer).__name__,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "num_particles": self.num_particles,
            "ema_decay": self.ema_decay,
            "max_steps": self.max_steps,
            "tol": self.tol,
            "patience": self.patience,
            "checkpoint_every": self.checkpoint_every,
            "seed": self.seed,
        }

    def fit(self, x: Tensor, resume: bool = False, sample_weight: Tensor | None = None,
            **model_kwargs: Any) -> SVIResult:
        """Run SVI steps until early stopping or ``max_steps``.

        Without ``resume`` (or without a checkpoint on disk) the run starts at step 0, with a
        fresh history and optimiser state, from the parameters the param store holds: the
        guide's initial values after ``pyro.clear_param_store()``, the last fit's otherwise.

        Parameters
        ----------
        x : Tensor, shape (n_samples, ...)
            The full data set; minibatches are chosen by row index and passed as ``subsample``.
        resume : bool, default False
            Continue from ``checkpoint_path`` when that file exists (see Notes of the class).
        sample_weight : Tensor, shape (n_samples,), optional
            Row weights, passed to the model (``model(x, sample_weight=w)``): the objective
            is ``sum_n w_n`` times row n's ELBO, and the losses of ``history`` are divided by
            ``sum_n w_n`` instead of ``n_samples``.
        **model_kwargs
            Passed to the model and the guide at every step.

        Returns
        -------
        SVIResult

        Raises
        ------
        FloatingPointError
            When a step's loss is NaN or infinite; the last checkpoint on disk stays valid.
        """
        self._weight_total = None
        if sample_weight is not None:
            model_kwargs = {**model_kwargs, "sample_weight": sample_weight}
            self._weight_total = float(sample_weight.sum())

        def steps() -> Iterator[tuple[Tensor, Tensor | None]]:
            while True:
                yield x, None if self._sampler is None else self._sampler.next_batch(x.device)

        return self._train(x, x.shape[0], steps, resume, model_kwargs, stream=False)

    def fit_batches(self, batches: Iterable[Any], n_samples: int, resume: bool = False,
                    total_weight: float | None = None, **model_kwargs: Any) -> SVIResult:
        """SVI over a stream of batches (data that does not fit in memory): one step per batch.

        A batch of B rows is scored with its likelihood scaled by ``n_samples / B``
        (:class:`ScaleSites`), an unbiased estimate of the ELBO of all ``n_samples`` rows, so
        the steps, ``history`` and early stopping mean what they mean in :meth:`fit`. Memory
        is bounded by one batch. ``batch_size`` and the trainer's batch generator are not
        used: the order is the source's.

        Parameters
        ----------
        batches : iterable of Tensor, each of shape (B, ...)
            A list of tensors or a ``torch.utils.data.DataLoader`` (a batch may also be an
            ``(x, y)`` pair: ``x`` is used), traversed again and again until ``max_steps``; or
            an iterator, read once.
        n_samples : int
            Rows in the whole stream (this process's shard when distributed), e.g.
            ``len(loader.dataset)``.
        resume : bool, default False
            Continue from the checkpoint: parameters, optimiser, step count, history and
            random states are restored, and the batches of the interrupted pass that were
            already used are skipped (read and dropped), so the run equals an uninterrupted
            one when the stream yields the same batches in the same order.
        total_weight : float, optional
            Weighted stream: every batch is a pair ``(x, w)`` of rows and their weights
            (passed to the model as ``sample_weight``), ``total_weight`` is the sum of all the
            weights; a batch's terms are scaled by ``total_weight / sum(w)`` and the losses
            divided by ``total_weight``.
        **model_kwargs
            Passed to the model and the guide at every step.

        Returns
        -------
        SVIResult
        """
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
            raise ValueError(f"n_samples={n_samples!r} must be the number of rows in the "
                             "stream, an integer >= 1 (e.g. len(loader.dataset))")
        one_pass = isinstance(batches, Iterator)
        head = iter(batches)
        first = next(head, None)
        if first is None:
            raise ValueError("batches is empty; pass at least one batch")
        self._weight_total = total_weight
        weighted = total_weight is not None

        def steps() -> Iterator[tuple[Any, ...]]:
            skip = self._state.stream_position  # a resumed run goes on where the pass stopped
            source = itertools.chain([first], head)
            while True:
                for batch in source:
                    if skip:
                        skip -= 1
                        continue
                    self._state.stream_position += 1
                    if weighted:
                        batch, weights = batch
                        if not float(weights.sum()) > 0:  # nothing to learn from this batch
                            continue
                        self._scale.local_factor = total_weight / float(weights.sum())
                        yield batch, None, {"sample_weight": weights}
                        continue
                    batch = _batch_tensor(batch)
                    self._scale.local_factor = n_samples / batch.shape[0]
                    yield batch, None
                if one_pass:
                    return
                self._state.stream_position = 0
                source = iter(batches)

        probe = first[0] if weighted else _batch_tensor(first)
        return self._train(probe, n_samples, steps, resume, model_kwargs, stream=True)

    def _train(self, probe: Tensor, num_samples: int,
               steps: Callable[[], Iterator[tuple[Tensor, Tensor | None]]], resume: bool,
               model_kwargs: dict[str, Any], stream: bool) -> SVIResult:
        """The loop of :meth:`fit` and :meth:`fit_batches`: ``steps()`` yields (data, subsample).

        With a ``seed`` the loop runs on forked global RNGs, which it seeds: the caller's
        streams are restored afterwards.
        """
        if self.seed is None:
            return self._steps(probe, num_samples, steps, resume, model_kwargs, stream)
        self._device = probe.device
        with fork_rng(cuda=probe.device.type == "cuda"):
            return self._steps(probe, num_samples, steps, resume, model_kwargs, stream)

    def _steps(self, probe: Tensor, num_samples: int,
               steps: Callable[[], Iterator[tuple[Tensor, Tensor | None]]], resume: bool,
               model_kwargs: dict[str, Any], stream: bool) -> SVIResult:
        self._optim = self._fresh_optimizer()
        model, guide, total_samples = self.model, self.guide, num_samples
        self._scale = ScaleSites()
        if self.distributed:
            self._scale.global_factor = 1.0 / _check_process_group()
            total_samples = int(_sum_over_processes(float(num_samples), probe.device))
        if self._weight_total is not None:  # weighted: losses per unit of weight
            total_samples = (_sum_over_processes(self._weight_total, probe.device)
                             if self.distributed else self._weight_total)
        if self.distributed or stream:
            model, guide = self._scale(model), self._scale(guide)
        svi = SVI(model, guide, self._optim, loss=self.loss)
        path = self._checkpoint_file()
        self._identity = self._run_identity(probe, num_samples)
        if resume and path is not None and os.path.exists(path):
            checkpoint, _ = io.read(path, "svi-checkpoint")
            self._check_identity(path, checkpoint.get("identity", {}))
            self._restore(checkpoint, probe, model_kwargs, stream)
        else:
            self._start(num_samples, stream)
            if self.distributed:
                self._broadcast_parameters(probe, model_kwargs)
        state = self._state
        saved_step = state.step
        started = time.perf_counter()
        with progress_bar(self.max_steps, self.progress, "SVI") as bar:
            bar.update(state.step)
            batches = steps()
            # the next batch is drawn only once a step is due, so that a checkpoint at the end
            # holds the sampler's state before any unused draw
            while state.step < self.max_steps and not state.converged:
                batch = next(batches, None)
                if batch is None:  # a one-pass stream ran out
                    break
                data, subsample = batch[:2]
                kwargs = {**model_kwargs, **batch[2]} if len(batch) > 2 else model_kwargs
                if self.distributed:
                    loss = self._distributed_step(model, guide, data, subsample, kwargs)
                else:
                    loss = svi.step(data, subsample=subsample, **kwargs)
                loss /= total_samples
                self._record(loss)
                if not bar.disable:  # no formatting for a hidden bar
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.5g}", refresh=False)
                if path is not None and state.step % self.checkpoint_every == 0:
                    self._save_checkpoint()
                    saved_step = state.step
        if path is not None and saved_step != state.step:
            self._save_checkpoint()
        return SVIResult(
            history=list(state.history),
            n_steps=state.step,
            converged=state.converged,
            seconds=time.perf_counter() - started,
        )

    def evaluate_loss(self, x: Tensor, sample_weight: Tensor | None = None,
                      **model_kwargs: Any) -> float:
        """Full-data loss per sample, without gradients: the loss of ``history`` on all of ``x``.

        Parameters
        ----------
        x : Tensor, shape (n_samples, ...)
            All the data (distributed: this process's shard).

        Returns
        -------
        float
            ``loss(model, guide, x, subsample=None) / n_samples``; for a point-mass guide with
            enumerated discrete sites, minus the log joint density of the data and the
            global sites, per sample. With ``sample_weight`` (shape (n_samples,)), the
            weighted loss divided by ``sum_n w_n``.
        """
        if sample_weight is None:
            return self.evaluate_loss_batches([x], x.shape[0], **model_kwargs)
        return self.evaluate_loss_batches([(x, sample_weight)], x.shape[0],
                                          float(sample_weight.sum()), **model_kwargs)

    def evaluate_loss_batches(self, batches: Iterable[Any], n_samples: int,
                              total_weight: float | None = None, **model_kwargs: Any) -> float:
        """:meth:`evaluate_loss` over a stream of batches (one more pass over it).

        A batch of B rows is scored with the global sites' terms weighted by
        ``B / n_samples``, so that they count once in the sum over batches (and over
        processes when distributed) while every row's terms count once; for a point-mass
        guide the result equals :meth:`evaluate_loss` on the concatenated data.

        Parameters
        ----------
        batches : iterable of Tensor (or ``(x, y)`` pairs), read once
        n_samples : int
            Rows in the stream (this process's shard when distributed).
        total_weight : float, optional
            Weighted: every batch is ``(x, w)`` and ``total_weight`` the sum of all the
            weights (this process's); the result is divided by the sum of the weights.

        Returns
        -------
        float
        """
        world_size = _check_process_group() if self.distributed else 1
        total = 0.0
        size = n_samples if total_weight is None else total_weight
        with torch.no_grad():
            for batch in batches:
                kwargs = model_kwargs
                if total_weight is None:
                    batch = _batch_tensor(batch)
                    share = batch.shape[0]
                else:
                    batch, weights = batch
                    kwargs = {**model_kwargs, "sample_weight": weights}
                    share = float(weights.sum())
                scale = ScaleSites(share / (size * world_size))
                total += self.loss.loss(scale(self.model), scale(self.guide), batch,
                                        subsample=None, **kwargs)
        if self.distributed:
            return (_sum_over_processes(total, batch.device)
                    / _sum_over_processes(size, batch.device))
        return total / size

    # -- internals -------------------------------------------------------------------------

    def _fresh_optimizer(self) -> PyroOptim:
        if isinstance(self.optimizer, str):
            if self.optimizer in JOINT_OPTIMIZERS:
                return _JointOptim(JOINT_OPTIMIZERS[self.optimizer], {"lr": self.lr})
            return OPTIMIZERS[self.optimizer]({"lr": self.lr})
        self.optimizer.optim_objs.clear()
        self.optimizer.grad_clip.clear()
        return self.optimizer

    def _checkpoint_file(self) -> str | None:
        """This process's checkpoint: ``checkpoint_path``, with ``.rank<r>`` for ranks r > 0."""
        path = self.checkpoint_path
        if path is None or not self.distributed or torch_dist.get_rank() == 0:
            return path
        stem, suffix = os.path.splitext(path)
        return f"{stem}.rank{torch_dist.get_rank()}{suffix}"

    def _distributed_step(self, model: Callable[..., Any], guide: Callable[..., Any], x: Tensor,
                          subsample: Tensor | None, model_kwargs: dict[str, Any]) -> float:
        """One step of :class:`pyro.infer.SVI` with the gradients summed over processes."""
        with poutine.trace(param_only=True) as capture:
            loss = self.loss.loss_and_grads(model, guide, x, subsample=subsample, **model_kwargs)
        params = [capture.trace.nodes[name]["value"].unconstrained()
                  for name in sorted(capture.trace.nodes)]
        for param in params:  # the same names, in the same order, on every process
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            torch_dist.all_reduce(param.grad)
        self._optim(set(params))
        zero_grads(set(params))
        return _sum_over_processes(loss, x.device)

    def _broadcast_parameters(self, x: Tensor, model_kwargs: dict[str, Any]) -> None:
        """Create the guide's parameters, check they agree across processes, copy rank 0's."""
        warmup = None
        if self._sampler is not None:
            warmup = torch.arange(self._sampler.batch_size, device=x.device)
        with torch.no_grad():
            self.guide(x, subsample=warmup, **model_kwargs)
        params = dict(pyro.get_param_store().named_parameters())
        shapes = [(name, tuple(params[name].shape)) for name in sorted(params)]
        reference = [shapes]
        torch_dist.broadcast_object_list(reference, src=0)
        if reference[0] != shapes:
            raise ValueError(
                "distributed=True needs the same parameters on every process, but this "
                f"process (rank {torch_dist.get_rank()}) has {shapes} and rank 0 has "
                f"{reference[0]}; use a guide whose parameters are global (not one per data "
                "point), or train in one process"
            )
        with torch.no_grad():
            for name, _ in shapes:
                torch_dist.broadcast(params[name].data, src=0)

    def _start(self, num_samples: int, stream: bool = False) -> None:
        rank = torch_dist.get_rank() if self.distributed else 0
        if self.seed is not None:
            seed_global(self.seed + rank, self._device)
            sampler_seed = self.seed + rank
        else:
            sampler_seed = int(torch.randint(2**62, ()).item())
        full_batch = stream or self.batch_size is None or self.batch_size >= num_samples
        self._sampler = (
            None if full_batch else _EpochSampler(num_samples, self.batch_size, sampler_seed)
        )
        self._state = _Progress()

    def _restore(self, checkpoint: dict[str, Any], x: Tensor, model_kwargs: dict[str, Any],
                 stream: bool = False) -> None:
        stored = checkpoint["config"]
        changed = [k for k in _RESUME_SETTINGS if stored.get(k) != self.config[k]]
        if changed:
            warnings.warn(
                f"resuming with settings that differ from the checkpoint's: {changed}; "
                "the run will not match an uninterrupted one.",
                stacklevel=3,
            )
        self._start(x.shape[0], stream)
        # An autoguide builds its parameters on its first call, which may draw random numbers
        # (e.g. init_to_median); call it now, then overwrite parameters and RNG states.
        warmup = None
        if self._sampler is not None:
            warmup = torch.arange(self._sampler.batch_size, device=x.device)
        with torch.no_grad():
            self.guide(x, subsample=warmup, **model_kwargs)
        _check_parameter_shapes(checkpoint["param_store"]["values"])
        load_param_store_values(checkpoint["param_store"])
        # consumed lazily at each param's first step
        self._optim.set_state(_to_device(checkpoint["optimizer"], x.device))
        if self._sampler is not None and checkpoint["sampler"] is not None:
            self._sampler.load_state_dict(checkpoint["sampler"])
        _set_rng_state(checkpoint["rng"])
        self._state = _Progress(**checkpoint["progress"])

    def _record(self, loss: float) -> None:
        state = self._state
        state.step += 1
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"SVI loss is {loss} at step {state.step}. Lower the learning rate "
                f"(lr={self.lr}) or start from a better initialisation (e.g. k-means means, "
                "sensible scales); check the data for extreme values."
            )
        state.history.append(loss)
        previous = state.loss_ema
        state.loss_ema = (
            loss if previous is None else self.ema_decay * previous + (1 - self.ema_decay) * loss
        )
        if previous is None or self.tol <= 0:
            return
        relative_change = abs(previous - state.loss_ema) / (abs(state.loss_ema) + _EPS)
        state.stalled_checks = state.stalled_checks + 1 if relative_change < self.tol else 0
        state.converged = state.stalled_checks >= self.patience

    def _save_checkpoint(self) -> None:
        """Write this process's checkpoint atomically (see the class Notes)."""
        state = self._state
        checkpoint = {
            "step": state.step,
            "progress": asdict(state),
            "param_store": param_store_values(),
            "optimizer": self._optim.get_state(),
            "sampler": None if self._sampler is None else self._sampler.state_dict(),
            "rng": _rng_state(),
            "config": self.config,
            "identity": self._identity,
        }
        io.write(self._checkpoint_file(), "svi-checkpoint", checkpoint)

    def _run_identity(self, probe: Tensor, num_samples: int) -> dict[str, Any]:
        """What a checkpoint belongs to: model, guide, data shape, dtype, rows, a fingerprint.

        The fingerprint hashes the first rows of the data (of the first batch of a stream).
        """
        rows = probe[:64].detach().to("cpu").contiguous()
        digest = hashlib.sha256(rows.reshape(-1).view(torch.uint8).numpy().tobytes())
        return {
            "model": _name(self.model), "model_settings": _settings(self.model),
            "guide": _name(self.guide),
            "row_shape": list(probe.shape[1:]), "dtype": str(probe.dtype).removeprefix("torch."),
            "n_samples": int(num_samples), "data_fingerprint": digest.hexdigest()[:16],
        }

    def _check_identity(self, path: str, stored: dict[str, Any]) -> None:
        """Refuse a checkpoint of another model, guide or data, naming what differs."""
        differ = [f"{key}: checkpoint {stored[key]!r}, this run {value!r}"
                  for key, value in self._identity.items()
                  if key in stored and stored[key] != value]
        if differ:
            raise ValueError(
                f"checkpoint {path} belongs to another run ({'; '.join(differ)}); pass another "
                "checkpoint_path, delete the file, or resume=False to start afresh"
            )


def _check_process_group() -> int:
    """The world size of the default process group; a clear error when there is none."""
    process_group.require_initialized("distributed=True")
    return process_group.world_size()


def _sum_over_processes(value: float, device: torch.device) -> float:
    """``value`` summed over the processes of the default group (float64)."""
    total = torch.tensor([float(value)], dtype=torch.float64, device=device)
    torch_dist.all_reduce(total)
    return float(total)


def _batch_tensor(batch: Any) -> Tensor:
    """The data of one batch of a stream: the tensor itself, or ``x`` of an ``(x, y)`` pair."""
    if isinstance(batch, (tuple, list)):
        batch = batch[0]
    if not isinstance(batch, Tensor):
        raise TypeError(f"every batch must be a Tensor (or an (x, y) pair), got {type(batch)}")
    return batch
