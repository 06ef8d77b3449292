"""Moves of a settled DGMM fit that EM does not make: the components' frames of the scores.

Why EM stalls there
-------------------
Each component ``c`` of layer ``l - 1`` reads the shared scores ``z^(l)`` in its own frame
(``eta_c + Lambda_c z``). Any affine change ``z' = A z + b`` of that frame (``Lambda_c A^-1``,
``eta_c - Lambda_c A^-1 b``) leaves the fit of ``z^(l-1)`` given ``z^(l)`` as it was, but moves
the component's rows among the shared Gaussians of the layers above. Where the noise of the
layer is tiny (on the section 3.1 setting of Selosse et al. (2020), standardised, most
first-layer noise variances are below 1e-6, and the fit releases its floor to 1e-8), the
posterior of ``z^(l)`` given a row and a path is almost a point, ``Lambda_c^+ (x - eta_c)``,
so EM's M-step gives ``Lambda_c`` back: every component's frame is frozen where the start put
it, and the layers above fit the union of clouds read in frames that do not agree. Measured
on a fit with every first-layer loading space right (principal angles < 0.2 degrees): no
single affine map takes the fitted first-layer loadings to the truth's (relative residual
0.46), and 60 more SQUAREM cycles gained 0.06 nats per point where the truth lies 2.26 above.

The move
--------
:func:`reframe` takes, component by component of each layer ``l - 1`` (``l >= 2``), the affine
map of the component's frame that best puts its rows' score moments on the shared sub-paths
they already belong to (the identity labelling of
:func:`~ppl_mixtures.inference.em.dgmm_relabel._candidate_map`: the expected log-density of
the mapped scores under the layers above, with the Jacobian), runs a few SQUAREM cycles from
the moved fit and keeps it where the likelihood rises by more than ``min_gain``. It is a
parameter-expanded M-step (Liu, Rubin & Wu 1998) for the frames, checked by the likelihood, so
monotone. Used by ``DeepGaussianMixture(reframe=True)`` after the release of the noise floor.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ppl_mixtures.inference.em.dgmm import DGMMStats, _extrapolation, e_step
from ppl_mixtures.inference.em.dgmm_relabel import (
    _candidate_map,
    _moved_frame,
    trial_cycles_from,
)
from ppl_mixtures.models.dgmm import DGMMParams


def frame_groups(n_components: tuple[int, ...] | list[int]) -> list[tuple[int, int]]:
    """``(layer, parent)`` for every frame :func:`reframe` moves: each component ``parent``
    of layer ``layer - 1`` (0-based ``layer >= 1``), the first layer's components first."""
    sizes = [int(size) for size in n_components]
    return [(layer, parent) for layer in range(1, len(sizes))
            for parent in range(sizes[layer - 1])]


def reframe(x: Any, params: DGMMParams, reg_covar: float = 1e-6, *,
            e_step_fn: Callable[[Any, DGMMParams], DGMMStats] | None = None,
            rounds: int = 16, trial_cycles: int = 2, min_gain: float = 1e-3,
            round_tol: float = 0.01, extrapolate: bool = True, jointly: bool = True,
            ) -> tuple[DGMMParams, float, float, int]:
    """Affine moves of the components' score frames, kept where the likelihood rises.

    For up to ``rounds`` rounds, for each layer ``l >= 1`` (0-based) in turn (``jointly``; else
    for each ``(layer, parent)`` of :func:`frame_groups`): every parent's map of
    :func:`~ppl_mixtures.inference.em.dgmm_relabel._candidate_map` with the identity
    labelling (``z' = A z + b``, the parent's loadings ``Lambda A^-1`` and intercept
    ``eta - Lambda A^-1 b``), all from one E-step, then ``trial_cycles`` SQUAREM cycles
    (:func:`~ppl_mixtures.inference.em.dgmm.squarem_m_step`) at the floor ``reg_covar``; the
    result replaces the current fit if its mean log-likelihood exceeds the current one by
    more than ``min_gain``. Stops after a round that gained less than ``round_tol`` nats per
    point. With ``extrapolate``, every second round is followed by a SQUAREM-type jump along
    the rounds' own path (from the fits ``theta0, theta1, theta2`` before and after two
    rounds, :func:`~ppl_mixtures.inference.em.dgmm._extrapolation`), ``trial_cycles`` cycles
    from it, kept on the same test (the moves drift the frames a little further at every
    round, and the jump takes several rounds at once). Every decision is taken on E-step
    sums, so a stream or the shards of a distributed fit (``e_step_fn`` summing over them)
    take the same ones as the in-memory fit.

    Parameters
    ----------
    x : Tensor, shape (n_samples, n_features), or any data ``e_step_fn`` accepts
    params : DGMMParams
        A settled fit.
    reg_covar : float
        Noise floor of the trial cycles.
    e_step_fn : callable ``(x, params) -> DGMMStats``, optional
        Default :func:`~ppl_mixtures.inference.em.dgmm.e_step`.
    rounds : int, default 16
        Passes over all the frames (>= 0).
    trial_cycles : int, default 2
        SQUAREM cycles after each move (>= 1).
    min_gain : float, default 1e-3
        Mean log-likelihood per sample a move must add to be kept.
    round_tol : float, default 0.01
        A round that adds less ends the search.
    extrapolate : bool, default True
        The jump after every second round.
    jointly : bool, default True
        Move all the frames of one layer at once (the maps from one E-step), one trial per
        layer; False: one trial per component (measured on two draws of the section 3.1
        setting: per second of search, the joint moves climbed faster, +1.7 / +1.3 nats per
        point in 15 s against +1.5 / +1.0 in 18-22 s).

    Returns
    -------
    params : DGMMParams
    start_log_likelihood : float
        Mean per sample of the given fit.
    log_likelihood : float
        Mean per sample of the returned parameters (never below ``start_log_likelihood``).
    n_moves : int
        Moves kept.
    """
    step_at = e_step if e_step_fn is None else e_step_fn
    trial_cycles = max(1, int(trial_cycles))
    stats = step_at(x, params)
    current = start = float(stats.log_likelihood) / stats.n_samples
    moves = 0
    path = [params]
    groups = frame_groups(params.n_components)
    if jointly:  # one move per layer: all its parents' frames from the same E-step
        units = [[group for group in groups if group[0] == layer]
                 for layer in dict.fromkeys(group[0] for group in groups)]
    else:
        units = [[group] for group in groups]
    for _ in range(max(0, int(rounds))):
        round_start = current
        for unit in units:
            try:
                moved = stats.params
                for layer, parent in unit:
                    order = tuple(range(math.prod(params.n_components[layer:])))
                    _, a, b = _candidate_map(stats, layer, parent, order)
                    moved = _moved_frame(moved, layer, parent, a, b)
                moved, moved_stats, value = trial_cycles_from(step_at(x, moved), x, reg_covar,
                                                              step_at, trial_cycles)
            except (ValueError, RuntimeError, torch.linalg.LinAlgError):
                continue
            if math.isfinite(value) and value > current + min_gain:
                params, stats, current = moved, moved_stats, value
                moves += 1
        path.append(params)
        if extrapolate and len(path) == 3:
            step_length, jump_to = _extrapolation(*path)
            if step_length is not None:
                try:
                    jumped, jumped_stats, value = trial_cycles_from(
                        step_at(x, jump_to(min(-1.0, step_length))), x, reg_covar, step_at,
                        trial_cycles)
                except (ValueError, RuntimeError, torch.linalg.LinAlgError):
                    value = -math.inf
                if math.isfinite(value) and value > current + min_gain:
                    params, stats, current = jumped, jumped_stats, value
                    moves += 1
            path = [params]
        if current - round_start < round_tol:
            break
    return params, start, current, moves


__all__ = ["frame_groups", "reframe"]
