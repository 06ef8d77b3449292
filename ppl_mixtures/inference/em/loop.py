"""The one EM loop shared by every model: restarts, convergence, history, monotonicity.

A model plugs in three pure functions: ``init_params(i) -> params`` (the i-th restart),
``e_step(x, params) -> stats`` and ``m_step(stats) -> params``. ``stats`` must carry
``log_likelihood`` (the summed log-likelihood at the E-step's parameters) and ``n_samples``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ppl_mixtures._progress import progress_bar


class LikelihoodDecreaseWarning(RuntimeWarning):
    """EM's log-likelihood went down by more than rounding: a bug or a degenerate fit."""


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
        Mean log-likelihood per sample at the start of each iteration of the best restart.
    best_init : int
        Index of the best restart.
    restart_log_likelihoods : list of float
        Final mean log-likelihood of every restart.
    decreases : list of int
        Iterations of the best restart where the log-likelihood went down beyond rounding.
    """

    params: Any
    log_likelihood: float
    converged: bool
    n_iter: int
    history: list[float]
    best_init: int = 0
    restart_log_likelihoods: list[float] = field(default_factory=list)
    decreases: list[int] = field(default_factory=list)


def _rounding_slack(value: float, dtype: torch.dtype) -> float:
    return math.sqrt(torch.finfo(dtype).eps) * max(1.0, abs(value))


def _single_run(x: Tensor, params: Any, e_step: Callable, m_step: Callable, max_iter: int,
                tol: float, bar) -> EMResult:
    history: list[float] = []
    decreases: list[int] = []
    converged = False
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        stats = e_step(x, params)
        current = float(stats.log_likelihood) / stats.n_samples
        if not math.isfinite(current):
            raise FloatingPointError(
                f"EM log-likelihood is {current} at iteration {n_iter}; the data may hold "
                "extreme values (standardise it) or reg_covar is too small"
            )
        if history and current < history[-1] - _rounding_slack(current, x.dtype):
            decreases.append(n_iter)
        params = m_step(stats)
        bar.update(1)
        bar.set_postfix(loglik=f"{current:.5g}")
        if history and abs(current - history[-1]) < tol:
            history.append(current)
            converged = True
            break
        history.append(current)
    final = e_step(x, params)
    final_ll = float(final.log_likelihood) / final.n_samples
    return EMResult(params, final_ll, converged, n_iter, history, decreases=decreases)


def run_em(
    x: Tensor,
    *,
    init_params: Callable[[int], Any],
    e_step: Callable[[Tensor, Any], Any],
    m_step: Callable[[Any], Any],
    n_init: int = 1,
    max_iter: int = 100,
    tol: float = 1e-3,
    progress: bool = True,
    desc: str = "EM",
) -> EMResult:
    """Run EM from ``n_init`` starts and keep the one with the highest final log-likelihood.

    Convergence follows scikit-learn: stop when the mean log-likelihood per sample changes by
    less than ``tol`` between two E-steps (the M-step of that iteration is still applied).
    A decrease beyond rounding is recorded in ``decreases`` and raises a
    :class:`LikelihoodDecreaseWarning`, since EM must never lower the likelihood.

    Parameters
    ----------
    x : Tensor, shape (n_samples, n_features)
    init_params, e_step, m_step : callables
        See the module docstring.
    n_init, max_iter : int
    tol : float
    progress : bool
        Show a tqdm bar (only on a terminal).
    desc : str
        Label of the progress bar.

    Returns
    -------
    EMResult
    """
    best: EMResult | None = None
    finals = []
    with progress_bar(total=n_init * max_iter, enabled=progress, desc=desc) as bar:
        for index in range(n_init):
            result = _single_run(x, init_params(index), e_step, m_step, max_iter, tol, bar)
            result.best_init = index
            finals.append(result.log_likelihood)
            if best is None or result.log_likelihood > best.log_likelihood:
                best = result
    assert best is not None
    best.restart_log_likelihoods = finals
    if best.decreases:
        warnings.warn(
            f"EM log-likelihood decreased at iterations {best.decreases[:5]}; this should not "
            "happen: check the data for near-duplicate points or raise reg_covar",
            LikelihoodDecreaseWarning,
            stacklevel=2,
        )
    return best
