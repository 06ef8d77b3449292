"""The one EM loop shared by every model: restarts, convergence, history, monotonicity.

A model plugs in three pure functions: ``init_params(i) -> params`` (the i-th restart),
``e_step(x, params) -> stats`` and ``m_step(stats) -> params``. ``stats`` must carry
``log_likelihood`` (the summed log-likelihood at the E-step's parameters) and ``n_samples``,
and add up with ``+`` (sums over samples): the models' statistics derive from
:class:`SummedStats`.

The loop never looks inside ``x``: it only hands it to ``e_step``. So the same loop runs EM
in memory (``x`` a tensor, ``e_step`` the model's), out of core (``x`` a re-iterable stream of
batches, ``e_step`` wrapped by :func:`sum_over_batches`) and across processes (``e_step``
wrapped by :func:`ppl_mixtures.distributed.all_reduce_e_step`, which sums every rank's
statistics), with one convergence test, one history and one monotonicity check.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor

from ppl_mixtures._progress import progress_bar, progress_enabled


class LikelihoodDecreaseWarning(RuntimeWarning):
    """EM's log-likelihood went down by more than rounding although every M-step was exact."""


@dataclass
class EMResult:
    """Outcome of :func:`run_em` for the best restart.

    Attributes
    ----------
    params : Any
        Parameters after the last M-step of the best restart.
    log_likelihood : float
        Mean log-likelihood per sample at ``params``.
    converged : bool
        Whether the change of the mean log-likelihood fell below ``tol``.
    n_iter : int
        EM iterations (E-step + M-step) of the best restart.
    history : list of float
        Mean log-likelihood per sample at the start of each iteration of the best restart
        (at the E-step, before that iteration's M-step); with sample weights, the weighted
        mean ``sum_n w_n log p(x_n) / sum_n w_n``.
    best_init : int
        Index of the best restart.
    restart_log_likelihoods : list of float
        Final mean log-likelihood of every restart.
    decreases : list of int
        Iterations of the best restart where the log-likelihood went down beyond rounding.
    lower_bound : float
        scikit-learn's ``lower_bound_``: the value of the last E-step, ``history[-1]``
        (``-inf`` when no iteration ran, ``max_iter=0``).
    """

    params: Any
    log_likelihood: float
    converged: bool
    n_iter: int
    history: list[float]
    best_init: int = 0
    restart_log_likelihoods: list[float] = field(default_factory=list)
    decreases: list[int] = field(default_factory=list)

    @property
    def lower_bound(self) -> float:
        return self.history[-1] if self.history else -math.inf


_Stats = TypeVar("_Stats", bound="SummedStats")

#: Per thread: ``(x, store)`` of the :func:`run_em` running in it (None outside a fit).
_FIT = threading.local()


@contextlib.contextmanager
def _fit_scope(x: Any):
    """While :func:`run_em` fits the tensor ``x``, :func:`kept_tables` gives E-steps of ``x``
    a store that lives until the fit ends (per thread: fits in other threads have theirs)."""
    previous = getattr(_FIT, "scope", None)
    _FIT.scope = (x, {}) if isinstance(x, Tensor) else None
    try:
        yield
    finally:
        _FIT.scope = previous


def kept_tables(x: Any) -> dict | None:
    """A store for tables an E-step derives from ``x`` alone, kept for the fit's later
    iterations; None unless ``x`` is the very tensor that the :func:`run_em` running in this
    thread fits (a batch of a stream, a user's own call of an E-step: None, nothing kept).

    The store is emptied when the fit ends, so a fit leaves nothing behind. Whoever keeps a
    table must check that ``x`` has not changed since (its ``_version``) and bound its size.
    """
    scope = getattr(_FIT, "scope", None)
    return scope[1] if scope is not None and scope[0] is x else None


@dataclass
class SummedStats:
    """Base of the models' E-step statistics, which add across batches and ranks.

    The fields named by ``summed_fields`` are sums over samples: ``+`` adds them, so the
    statistics of batches, or of every rank's shard, add up to those of all the data
    (:func:`ppl_mixtures.distributed.all_reduce_e_step` all-reduces the same fields). The
    other fields are functions of the E-step's parameters alone, the same for every batch and
    rank: ``+`` carries them along from the left operand. A subclass appends its sums to
    ``summed_fields`` and declares its fields after these two.

    Attributes
    ----------
    n_samples : float
        Number of samples summed; with sample weights ``w``, their sum ``sum_n w_n`` (so the
        loop's mean log-likelihood is the weighted mean).
    log_likelihood : Tensor, scalar
        ``sum_n log p(x_n | theta)`` (``sum_n w_n log p(x_n | theta)`` with weights) at the
        parameters of the E-step.
    """

    #: Fields that are sums over samples (added across batches, all-reduced across ranks).
    summed_fields: ClassVar[tuple[str, ...]] = ("n_samples", "log_likelihood")

    n_samples: float
    log_likelihood: Tensor

    def __add__(self: _Stats, other: _Stats) -> _Stats:
        return replace(self, **{name: getattr(self, name) + getattr(other, name)
                                for name in self.summed_fields})


def _rounding_slack(value: float, dtype: torch.dtype) -> float:
    return math.sqrt(torch.finfo(dtype).eps) * max(1.0, abs(value))


def sum_over_batches(e_step: Callable[[Tensor, Any], Any]) -> Callable[[Iterable[Tensor], Any], Any]:
    """Turn a one-matrix E-step into an E-step over a stream of batches (one pass).

    The statistics of the batches are added as they come, so memory stays bounded by one
    batch (and the statistics), whatever the number of batches.

    Parameters
    ----------
    e_step : callable ``(x, params) -> stats``
        ``x`` : Tensor, shape (batch_size, n_features); ``stats`` add up with ``+``. Called
        as ``e_step(x, params, weights=w)`` for a weighted batch.

    Returns
    -------
    callable ``(batches, params) -> stats``
        ``batches``: an iterable of tensors of shape (batch_size_i, n_features), or of pairs
        ``(x, w)`` whose ``w`` (shape (batch_size_i,), or None) weighs the rows of ``x``,
        traversed once per call (pass a re-iterable one, such as a list or a ``DataLoader``,
        when the loop runs more than one E-step).
    """

    def e_step_over_batches(batches: Iterable[Any], params: Any) -> Any:
        total = None
        for batch in batches:
            if isinstance(batch, tuple):
                batch, weights = batch
                stats = (e_step(batch, params) if weights is None
                         else e_step(batch, params, weights=weights))
            else:
                stats = e_step(batch, params)
            total = stats if total is None else total + stats
        if total is None:
            raise ValueError("the stream of batches is empty (an iterator already consumed?); "
                             "pass a list of arrays or a DataLoader, which can be read again")
        return total

    return e_step_over_batches


class VerboseReport:
    """Lines on stdout about each restart and every ``interval``-th iteration.

    ``level`` 0 prints nothing, 1 the restart and iteration numbers, 2 also the seconds
    since the last line, the change of the objective and the final value (the layout of
    scikit-learn's ``verbose`` mixtures, so that logs read alike).
    """

    def __init__(self, level: int = 0, interval: int = 10) -> None:
        self.level = int(level)
        self.interval = int(interval)
        self._started = self._last = 0.0

    def start(self, index: int) -> None:
        if self.level > 0:
            print(f"Initialization {index}")
            self._started = self._last = time.perf_counter()

    def iteration(self, n_iter: int, change: float) -> None:
        if self.level <= 0 or n_iter % self.interval:
            return
        if self.level == 1:
            print(f"  Iteration {n_iter}")
            return
        now = time.perf_counter()
        print(f"  Iteration {n_iter}\t time lapse {now - self._last:.5f}s\t "
              f"ll change {change:.5f}")
        self._last = now

    def end(self, bound: float, converged: bool) -> None:
        state = "converged" if converged else "did not converge"
        if self.level == 1:
            print(f"Initialization {state}.")
        elif self.level >= 2:
            print(f"Initialization {state}. time lapse "
                  f"{time.perf_counter() - self._started:.5f}s\t lower bound {bound:.5f}.")


def _single_run(x: Any, params: Any, e_step: Callable, m_step: Callable, max_iter: int,
                tol: float, bar, evaluate_final: bool, start_bound: float | None = None,
                report: VerboseReport | None = None) -> EMResult:
    """EM from ``params``; ``start_bound``: the value the first E-step is compared with."""
    history: list[float] = []
    decreases: list[int] = []
    converged = False
    n_iter = 0
    previous = -math.inf if start_bound is None else start_bound
    if report is not None and report.level <= 0:
        report = None  # nothing to print: no call per iteration
    root_eps = None  # sqrt(eps) of the log-likelihood's dtype, looked up once
    for n_iter in range(1, max_iter + 1):
        stats = e_step(x, params)
        current = float(stats.log_likelihood) / stats.n_samples
        if not math.isfinite(current):
            raise FloatingPointError(
                f"EM log-likelihood is {current} at iteration {n_iter}; the data may hold "
                "extreme values (standardise it) or reg_covar is too small"
            )
        if root_eps is None:
            root_eps = _rounding_slack(1.0, getattr(stats.log_likelihood, "dtype",
                                                    torch.float64))
        if current < previous - root_eps * max(1.0, abs(current)):  # beyond rounding
            decreases.append(n_iter)
        params = m_step(stats)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loglik=f"{current:.5g}")
        history.append(current)
        change, previous = current - previous, current
        if report is not None:
            report.iteration(n_iter, change)
        if abs(change) < tol:
            converged = True
            break
    if report is not None:
        report.end(previous, converged)
    if evaluate_final or not history:
        final = e_step(x, params)
        final_ll = float(final.log_likelihood) / final.n_samples
    else:
        final_ll = history[-1]
    return EMResult(params, final_ll, converged, n_iter, history, decreases=decreases)


def run_em(
    x: Any,
    *,
    init_params: Callable[[int], Any],
    e_step: Callable[[Any, Any], Any],
    m_step: Callable[[Any], Any],
    n_init: int = 1,
    max_iter: int = 100,
    tol: float = 1e-3,
    progress: bool = True,
    desc: str = "EM",
    evaluate_final: bool = True,
    start_bound: float | None = None,
    monotone: bool = True,
    verbose: int = 0,
    verbose_interval: int = 10,
) -> EMResult:
    """Run EM from ``n_init`` starts and keep the one with the highest final log-likelihood.

    Convergence follows scikit-learn: stop when the mean log-likelihood per sample changes by
    less than ``tol`` between two E-steps (the M-step of that iteration is still applied).
    With ``monotone`` (every M-step is the exact maximiser), a decrease beyond rounding raises
    a :class:`LikelihoodDecreaseWarning`; a regularised M-step (e.g. ``reg_covar > 0`` added
    to the covariances) is not the exact maximiser, so small decreases are expected there
    and only recorded in ``decreases``.

    Parameters
    ----------
    x : Tensor, shape (n_samples, n_features), or any data ``e_step`` accepts
        E.g. a re-iterable stream of such batches with ``e_step=sum_over_batches(...)``.
    init_params, e_step, m_step : callables
        See the module docstring.
    n_init, max_iter : int
        ``max_iter=0`` runs no iteration: the best initial parameters come back (scored by
        one E-step), unconverged.
    tol : float
    progress : bool
        Show a tqdm bar (only on a terminal).
    desc : str
        Label of the progress bar.
    evaluate_final : bool, default True
        Run one more E-step after the last M-step for the final log-likelihood (which
        picks the best restart). False for data that can be read only once: the final
        log-likelihood is then the last E-step's (at the parameters before the last M-step,
        scikit-learn's ``lower_bound_``).
    start_bound : float, optional
        Warm start: the last E-step's value of the fit being continued, which the first
        E-step's value is compared with (so one more iteration can already converge).
    monotone : bool, default True
        Whether the M-step maximises the likelihood exactly (see above).
    verbose, verbose_interval : int
        Print progress on stdout (:class:`VerboseReport`).

    Returns
    -------
    EMResult
    """
    best: EMResult | None = None
    finals = []
    report = VerboseReport(verbose, verbose_interval)
    # no bar object at all when none is shown (a disabled tqdm still costs ~0.5 ms a fit)
    shown = progress_enabled(progress)
    with (progress_bar(total=n_init * max_iter, enabled=True, desc=desc) if shown
          else contextlib.nullcontext()) as bar, _fit_scope(x):
        for index in range(n_init):
            report.start(index)
            result = _single_run(x, init_params(index), e_step, m_step, max_iter, tol, bar,
                                 evaluate_final, start_bound, report)
            result.best_init = index
            finals.append(result.log_likelihood)
            if best is None or result.log_likelihood > best.log_likelihood:
                best = result
    assert best is not None
    best.restart_log_likelihoods = finals
    if best.decreases and monotone:
        warnings.warn(
            f"EM log-likelihood decreased beyond rounding at iterations {best.decreases[:5]}, "
            "although every M-step maximises it: a sign of numerical trouble, such as "
            "components collapsing onto a few points; fit in float64, or raise reg_covar",
            LikelihoodDecreaseWarning,
            stacklevel=2,
        )
    return best
