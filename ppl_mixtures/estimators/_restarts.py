"""The estimators' shared EM and SVI fits: ``n_init`` starts, or one warm start.

:func:`fit_em` runs :func:`~ppl_mixtures.inference.em.run_em` and :func:`fit_svi` one
:class:`~ppl_mixtures.inference.svi.SVITrainer` per start, for any
:class:`~ppl_mixtures.estimators._base.MixtureEstimator` (they read its arguments and set
its fitted attributes). With ``warm_start=True`` after a fit, both run one start from the
last fit's parameters (``est._warm_start_from``, see
:func:`~ppl_mixtures.estimators._continuation.warm_start_state`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pyro
import torch

from ppl_mixtures import distributed as process_group
from ppl_mixtures.estimators._sources import DataSource
from ppl_mixtures.inference.em import run_em
from ppl_mixtures.inference.svi import SVITrainer


def verbosity(est: Any) -> int:
    """``verbose`` on rank 0 (0 on the other ranks and for estimators without it)."""
    return int(getattr(est, "verbose", 0)) if process_group.rank() == 0 else 0


def fit_em(est: Any, source: DataSource, draw: Callable[[torch.Tensor], Any],
           e_step: Callable, m_step: Callable, desc: str, map_guide: Callable,
           needs_rows: bool = True, init_params: Callable[[int], Any] | None = None,
           monotone: bool = True) -> None:
    """Run the shared EM loop with ``n_init``, ``max_iter``, ``tol``, ``progress``, ``verbose``.

    ``draw(sample)`` gives initial parameters (on rank 0, broadcast), unless
    ``init_params(i)`` is given; a warm start continues from the last fit's parameters
    instead (one start, its first E-step compared with the last fit's ``lower_bound_``).
    ``monotone``: whether ``m_step`` is the exact maximiser (see
    :func:`~ppl_mixtures.inference.em.run_em`). Sets ``params_``, ``converged_``,
    ``n_iter_``, ``history_``, ``lower_bound_`` and ``lower_bounds_`` (the last E-step's
    value and every E-step's, per sample: scikit-learn's meaning),
    ``restart_log_likelihoods_`` (the final log-likelihood of every start) and ``guide_``
    (``map_guide(model_, params_)``, its global parameters created at the EM estimate when it
    is first read).
    """
    n_init, start_bound = est.n_init, None
    if est._warm_start_from is not None:
        warm_params, start_bound = est._warm_start_from
        n_init = 1

        def init_params(_: int) -> Any:
            return warm_params
    elif init_params is None:
        init_params = source.initializer(draw, est.n_components, est._n_clusters(),
                                         needs_rows, est._init_hint)
    verbose = verbosity(est)
    options = source.em_options(est.progress and not verbose)
    first_row = options.pop("first_row")
    result = run_em(source.data, init_params=init_params, e_step=source.e_step(e_step),
                    m_step=m_step, n_init=n_init, max_iter=est._max_iter, tol=est._tol,
                    desc=desc, start_bound=start_bound, monotone=monotone, verbose=verbose,
                    verbose_interval=getattr(est, "verbose_interval", 10), **options)
    est.params_ = result.params
    est.converged_ = result.converged
    est.n_iter_ = result.n_iter
    est.history_ = result.history
    est.lower_bound_ = result.lower_bound
    est.lower_bounds_ = list(result.history)
    est.restart_log_likelihoods_ = result.restart_log_likelihoods
    # built on first use (elbo_loss, posterior_params, diagnostics ...): tracing the model and
    # transforming every site costs more than a small fit's EM (see MixtureEstimator.guide_)
    est._defer_guide(map_guide, first_row)


def fit_svi(est: Any, source: DataSource, generator: torch.Generator, resume: bool,
            make_guide: Callable[[], Any]) -> tuple[Any, Any]:
    """SVI from ``n_init`` starts (one when warm); keep the guide with the lowest final loss.

    ``make_guide()`` builds a fresh guide at a new initial point (it may draw from
    ``generator``; warm, the estimator builds it at the last fit's parameters). Each start
    checkpoints to ``checkpoint_path`` (suffixed ``.initN`` when ``n_init > 1``). A stream is
    fitted one step per batch (its rows counted by :meth:`DataSource.moments` beforehand).
    Sample weights (``source.weights``, or a stream's ``(x, w)`` batches) go to the model
    as ``sample_weight``; the losses are then per unit of weight.
    With ``verbose``, one line at the start and one at the end of each start. Sets
    ``guide_``, ``converged_``, ``n_iter_``, ``history_`` and leaves the winning guide's
    values in the current Pyro param store.

    Returns
    -------
    guide, SVIResult
    """
    best = None
    verbose = verbosity(est)
    for index in range(1 if est._warm_start_from is not None else est.n_init):
        if verbose:
            print(f"Initialization {index}")
        pyro.clear_param_store()  # the fit's own scope: the user's store is untouched
        guide = make_guide()
        checkpoint = est.checkpoint_path
        if checkpoint is not None and est.n_init > 1:
            checkpoint = f"{os.fspath(checkpoint)}.init{index}"
        trainer = SVITrainer(
            est.model_, guide, lr=est._lr, batch_size=est.batch_size,
            max_steps=est._max_iter, tol=est._tol, progress=est.progress and not verbose,
            checkpoint_path=checkpoint,
            seed=int(torch.randint(0, 2**31 - 1, (1,), generator=generator)),
            distributed=source.distributed,
        )
        if source.streamed:
            total_weight = source.total_weight if source.weighted_stream else None
            batches = source.svi_batches()
            result = trainer.fit_batches(batches, source.n_rows, resume=resume,
                                         total_weight=total_weight)
            loss = trainer.evaluate_loss_batches(batches, source.n_rows, total_weight)
        else:
            result = trainer.fit(source.data, resume=resume, sample_weight=source.weights)
            loss = trainer.evaluate_loss(source.data, sample_weight=source.weights)
        if verbose:
            state = "converged" if result.converged else "did not converge"
            print(f"Initialization {state}. {result.n_steps} steps, final loss {loss:.5f}.")
        if best is None or loss < best[0]:
            best = (loss, guide, result, pyro.get_param_store().get_state())
    _, guide, result, state = best
    pyro.get_param_store().set_state(state)
    est.guide_ = guide
    est.converged_ = result.converged
    est.n_iter_ = result.n_steps
    est.history_ = result.history
    return guide, result
