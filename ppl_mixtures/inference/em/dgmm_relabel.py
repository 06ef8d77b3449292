"""Relabelling the deeper layers of a fitted DGMM by likelihood.

The DGMM start (:mod:`ppl_mixtures.inference.dgmm_start`) decides which child of each
component is which from score moments alone; a wrong choice is a local maximum that EM does
not leave, since the layers below a component are shared by every component above them.
:func:`relabel` tries, component by component of each layer ``l - 1``, the other labellings
of the paths below it (:func:`relabel_groups`), each with the parent's score frame moved by
the affine map that best fits the relabelled shared components (:func:`relabelled`), and keeps
the most likely after a few SQUAREM cycles (:func:`~ppl_mixtures.inference.em.dgmm.accelerate`).
Used by ``DeepGaussianMixture(relabel=True)`` between its search and the release of the noise
floor.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ppl_mixtures.inference.em.dgmm import (
    _EMPTY_FRACTION,
    DGMMStats,
    e_step,
    squarem_m_step,
)
from ppl_mixtures.models.dgmm import DGMMParams, path_moments

#: Most labellings :func:`relabel_groups` lists under one component; beyond it only layer l's
#: own labels are permuted (the layers above it keep their labels).
MAX_RELABEL_ORDERS = 1000


def _label_perms(size: int) -> list[tuple[int, ...]]:
    """All orders of ``size`` labels up to 3 labels, else the identity and transpositions."""
    if size <= 3:
        return list(itertools.permutations(range(size)))
    perms = [tuple(range(size))]
    for i, j in itertools.combinations(range(size), 2):
        swap = list(range(size))
        swap[i], swap[j] = j, i
        perms.append(tuple(swap))
    return perms


def _tree_orders(sizes: Sequence[int]) -> list[tuple[int, ...]]:
    """Relabellings of the sub-paths ``(s_l, ..., s_h)`` (row-major, ``Q = prod sizes``) that
    respect the tree: layer l's labels permuted, and below each of them its own relabelling
    of the layers above (identity first)."""
    perms = _label_perms(sizes[0])
    if len(sizes) == 1:
        return perms
    below = _tree_orders(sizes[1:])
    rest = math.prod(sizes[1:])
    orders = []
    for perm in perms:
        for choice in itertools.product(below, repeat=sizes[0]):
            orders.append(tuple(perm[q // rest] * rest + choice[q // rest][q % rest]
                                for q in range(sizes[0] * rest)))
    return orders


def relabel_groups(n_components: Sequence[int]) -> list[tuple[int, int, list[tuple[int, ...]]]]:
    """The alternative labellings :func:`relabel` considers, in groups of rival orders.

    For every layer ``l >= 2`` (1-based) and every component ``c`` of layer ``l - 1``: the
    relabellings of the sub-paths ``(s_l, ..., s_h)`` through ``c`` that respect the tree —
    layer l's labels permuted (all ``G_l!`` orders for ``G_l <= 3``, else the
    transpositions), and under each of them the layers above relabelled the same way, as
    long as there are at most :data:`MAX_RELABEL_ORDERS` (else layer l's alone). Which child
    of a component is which was decided by the start from score moments alone
    (:func:`~ppl_mixtures.inference.dgmm_start.tree_from_responsibilities`); a wrong choice
    is a local maximum EM does not leave, since the layers above are shared by all the
    components of layer ``l - 1``.

    Returns
    -------
    list of (layer, parent, orders)
        ``layer``: 0-based index of the relabelled layer (``l - 1``); ``parent``: the
        component of the layer below it (0-based index ``layer - 1``); ``orders``: tuples of
        length ``Q = prod_{k >= l} G_k``, old sub-path ``q`` (row-major, ``s_l`` slowest)
        becoming sub-path ``order[q]``; the identity excluded.
    """
    sizes = tuple(int(size) for size in n_components)
    groups = []
    for layer in range(1, len(sizes)):
        below = sizes[layer:]
        if math.prod(below) < 2:
            continue
        count = len(_label_perms(below[0]))
        for size in below[1:]:
            count *= len(_label_perms(size)) ** below[0]  # a rough bound suffices here
        if count <= MAX_RELABEL_ORDERS:
            orders = _tree_orders(below)
        else:
            rest = math.prod(below[1:])
            orders = [tuple(perm[q // rest] * rest + q % rest for q in range(below[0] * rest))
                      for perm in _label_perms(below[0])]
        identity = tuple(range(math.prod(below)))
        orders = [order for order in dict.fromkeys(orders) if order != identity]
        groups += [(layer, parent, orders) for parent in range(sizes[layer - 1])]
    return groups


def _sub_params(params: DGMMParams, layer: int) -> DGMMParams:
    """Layers ``layer..h-1`` (0-based): a DGMM whose data are the scores ``z^(layer)``."""
    return DGMMParams(list(params.weights[layer:]), list(params.eta[layer:]),
                      list(params.loadings[layer:]), list(params.noise_variances[layer:]))


def _frame_moments(stats: DGMMStats, layer: int, parent: int) -> tuple[Tensor, Tensor, Tensor]:
    """Mass (Q,), mean (Q, r) and covariance (Q, r, r) of ``z^(layer)`` (1-based block
    ``layer`` of ``y``) over the rows of each sub-path ``(s_layer, ..., s_h)`` (Q of them)
    through component ``parent`` of layer ``layer - 1`` (0-based), from the E-step's sums
    (posterior covariances included), in float64."""
    params = stats.params
    sizes = params.n_components
    widths = (params.n_features, *params.n_factors)
    begin = sum(widths[:layer])
    block = slice(begin, begin + widths[layer])
    wide = torch.float64

    def select(tensor: Tensor) -> Tensor:
        shaped = tensor.to(wide).reshape(*sizes, *tensor.shape[1:]).select(layer - 1, parent)
        if layer > 1:
            shaped = shaped.sum(tuple(range(layer - 1)))
        return shaped.reshape(-1, *tensor.shape[1:])

    mass = select(stats.path_mass)
    first = select(stats.first_moment)[:, block]
    second = select(stats.second_moment)[:, block, block]
    safe = mass.clamp_min(1e-300)[:, None]
    mean = first / safe
    cov = second / safe[..., None] - mean[:, :, None] * mean[:, None, :]
    return mass, mean + stats.shift[block].to(wide), cov


#: scipy L-BFGS-B options of :func:`_frame_map`: converged (the map applied) and rough (ranks).
_TIGHT = {"maxiter": 500, "gtol": 1e-11, "ftol": 1e-15}
_ROUGH = {"maxiter": 100, "gtol": 1e-4, "ftol": 1e-8}


def _frame_map(mass: Tensor, mean: Tensor, cov: Tensor, target_mean: Tensor,
               target_cov: Tensor, tight: bool = True) -> tuple[float, Tensor, Tensor]:
    """Affine ``z' = A z + b`` (A (r, r), b (r,)) taking the clusters ``(mean_q, cov_q)`` onto
    the Gaussians ``(target_mean_q, target_cov_q)`` by maximum expected log-density::

        sum_q w_q E_q[log N(A z + b | target_q)] + log |det A|      (w_q = mass_q / W)

    (the expected log-likelihood of the mapped scores, with the Jacobian): concave in
    ``(A, b)`` on each sign of ``det A``. L-BFGS (scipy, analytic gradient, in float64) from
    the identity and from a reflection; the better is kept. Deterministic: the same sums give
    the same map. ``tight=False``: a rough optimum (at most 100 evaluations), to rank
    candidates. Returns the minimised negative objective, A and b.
    """
    import numpy as np
    from scipy.optimize import minimize

    rank = mean.shape[-1]
    weight = (mass / mass.sum()).cpu().numpy()
    mu, spread = mean.cpu().numpy(), cov.cpu().numpy()
    target = target_mean.cpu().numpy()
    precision = np.linalg.inv(target_cov.cpu().numpy())
    precision = 0.5 * (precision + precision.transpose(0, 2, 1))

    def objective(flat: np.ndarray) -> tuple[float, np.ndarray]:
        a, b = flat[:rank * rank].reshape(rank, rank), flat[rank * rank:]
        sign, logdet = np.linalg.slogdet(a)
        if sign == 0 or not np.isfinite(logdet):
            return np.inf, np.zeros_like(flat)
        moved = mu @ a.T + b - target  # (Q, r)
        pd = np.einsum("qij,qj->qi", precision, moved)  # P_q d_q
        pac = precision @ a @ spread  # P_q A C_q, (Q, r, r)
        value = 0.5 * float(weight @ (np.einsum("qij,qij->q", pac, a[None].repeat(len(mu), 0))
                                      + np.einsum("qi,qi->q", moved, pd))) - logdet
        grad_a = np.einsum("q,qij->ij", weight, pac + pd[:, :, None] * mu[:, None, :]) \
            - np.linalg.inv(a).T
        grad_b = weight @ pd
        return value, np.concatenate([grad_a.ravel(), grad_b])

    best = None
    for sign in (1.0, -1.0):
        start = np.eye(rank)
        start[0, 0] = sign
        shift = weight @ (target - mu @ start.T)
        found = minimize(objective, np.concatenate([start.ravel(), shift]), jac=True,
                         method="L-BFGS-B",
                         options=_TIGHT if tight else _ROUGH)
        if np.isfinite(found.fun) and (best is None or found.fun < best.fun):
            best = found
    if best is None:
        raise ValueError("no affine map between the score clusters was found")
    a = torch.as_tensor(best.x[:rank * rank].reshape(rank, rank), dtype=torch.float64)
    b = torch.as_tensor(best.x[rank * rank:], dtype=torch.float64)
    return float(best.fun), a.to(mean.device), b.to(mean.device)


def _candidate_map(stats: DGMMStats, layer: int, parent: int, order: Sequence[int],
                   tight: bool = True) -> tuple[float, Tensor, Tensor]:
    """The affine map of component ``parent``'s frame of ``z^(layer)`` under which its
    sub-path ``q`` falls best on the shared sub-path ``order[q]`` (:func:`_frame_map`), with
    its objective (lower is better)."""
    params = stats.params
    mass, mean, cov = _frame_moments(stats, layer, parent)
    _, target_means, target_covs = path_moments(_sub_params(params, layer))
    new = torch.as_tensor(list(order))
    keep = mass > _EMPTY_FRACTION * stats.n_samples
    wide = torch.float64
    return _frame_map(mass[keep], mean[keep], cov[keep], target_means.to(wide)[new][keep],
                      target_covs.to(wide)[new][keep], tight)


def _moved_frame(params: DGMMParams, layer: int, parent: int, a: Tensor,
                 b: Tensor) -> DGMMParams:
    """``params`` with component ``parent`` of layer ``layer - 1`` (0-based) reading its
    scores in the frame ``z' = A z + b``."""
    wide = torch.float64
    inverse = torch.linalg.inv(a)
    loadings = params.loadings[layer - 1].clone()
    eta = params.eta[layer - 1].clone()
    moved = loadings[parent].to(wide) @ inverse
    eta[parent] = (eta[parent].to(wide) - moved @ b).to(eta.dtype)
    loadings[parent] = moved.to(loadings.dtype)
    new_eta, new_loadings = list(params.eta), list(params.loadings)
    new_eta[layer - 1], new_loadings[layer - 1] = eta, loadings
    return DGMMParams(list(params.weights), new_eta, new_loadings, list(params.noise_variances))


def relabelled(stats: DGMMStats, layer: int, parent: int, order: Sequence[int]) -> DGMMParams:
    """The fit with the sub-paths through component ``parent`` of layer ``layer - 1``
    relabelled (``layer`` 0-based, >= 1).

    ``order`` either has ``G_layer`` entries (layer ``layer``'s old label ``a`` becomes
    ``order[a]``, the layers above keep theirs) or one per sub-path ``(s_layer, ..., s_h)``
    (row-major; old sub-path ``q`` becomes ``order[q]``, as :func:`relabel_groups` lists
    them). The rows of each sub-path through ``parent`` (their score moments from the E-step
    ``stats``) are to be generated by the shared sub-path it becomes; the parent's frame of
    ``z^(layer)`` is moved by the affine map that fits them best (:func:`_frame_map`):
    ``Lambda' = Lambda A^-1``, ``eta' = eta - Lambda A^-1 b``. Only the parent's intercept and
    loadings change; run EM afterwards.

    Returns
    -------
    DGMMParams
    """
    sizes = stats.params.n_components
    rest = math.prod(sizes[layer + 1:])
    if len(order) == sizes[layer] and rest > 1:
        order = [order[q // rest] * rest + q % rest for q in range(sizes[layer] * rest)]
    _, a, b = _candidate_map(stats, layer, parent, order)
    return _moved_frame(stats.params, layer, parent, a, b)


def trial_cycles_from(stats: DGMMStats, x: Any, reg_covar: float, step_at: Any,
                      n_cycles: int) -> tuple[DGMMParams, DGMMStats, float]:
    """A move's trial: ``n_cycles`` SQUAREM cycles from the parameters of ``stats`` (their
    E-step), then an E-step of the result; returns the parameters, their statistics and
    their mean log-likelihood per sample (the value a move is kept or dropped on)."""
    moved = squarem_m_step(stats, x, reg_covar, e_step_fn=step_at, n_cycles=n_cycles)
    moved_stats = step_at(x, moved)
    return moved, moved_stats, float(moved_stats.log_likelihood) / moved_stats.n_samples


def relabel(x: Any, params: DGMMParams, reg_covar: float = 1e-6, *,
            e_step_fn: Callable[[Any, DGMMParams], DGMMStats] | None = None,
            trial_cycles: int = 2, n_trials: int = 2, min_gain: float = 1e-3,
            groups: Sequence[tuple[int, int, list]] | None = None,
            ) -> tuple[DGMMParams, float, list[str]]:
    """Greedy search over the deeper layers' labellings, kept only where the likelihood rises.

    For each group of :func:`relabel_groups` in turn (layer l, component c of layer l - 1):
    every alternative labelling of the sub-paths under c gets the affine map of c's frame of
    the scores that best puts its rows on the relabelled shared sub-paths
    (:func:`relabelled`), and the ``n_trials`` whose maps fit best (lowest expected
    misfit, :func:`_frame_map`) are tried: ``trial_cycles`` SQUAREM cycles from the moved
    fit. The identity (``trial_cycles`` SQUAREM cycles from the current fit,
    :func:`squarem_m_step`) is always tried, and the most likely result becomes the current
    fit. Since the identity is a candidate of every group and SQUAREM cycles never lower the
    likelihood, the returned value is at least the starting fit's: the move is monotone.

    Parameters
    ----------
    x : Tensor or any data ``e_step_fn`` accepts
    params : DGMMParams
        A settled fit.
    reg_covar : float
    e_step_fn : callable ``(x, params) -> DGMMStats``, optional
        Default :func:`e_step`; pass the loop's own (summed over batches or ranks): every rank
        then takes the same decisions.
    trial_cycles : int, default 2
        SQUAREM cycles of each candidate's trial (>= 1).
    n_trials : int, default 2
        Alternatives tried per group, the best-fitting maps first (ranked by rough maps).
    min_gain : float, default 1e-3
        Mean log-likelihood per sample by which an alternative's trial must beat the
        identity's: labellings equal up to a symmetry (all of a layer's labels swapped under
        every parent) differ by less, and are not worth the churn.
    groups : sequence, optional
        Default ``relabel_groups(params.n_components)``.

    Returns
    -------
    params : DGMMParams
    log_likelihood : float
        Mean per sample of the returned parameters.
    changes : list of str
        The labellings kept (layer, parent component, sub-path order), in order.
    """
    step_at = e_step if e_step_fn is None else e_step_fn
    if groups is None:
        groups = relabel_groups(params.n_components)
    stats = step_at(x, params)
    current = float(stats.log_likelihood) / stats.n_samples
    changes: list[str] = []
    trial_cycles = max(1, int(trial_cycles))

    def trial(start_stats: DGMMStats) -> tuple[DGMMParams, DGMMStats, float]:
        return trial_cycles_from(start_stats, x, reg_covar, step_at, trial_cycles)

    for layer, parent, orders in groups:
        best_params, best_stats, best_value = trial(stats)  # the identity
        screened = []
        for order in orders:
            try:
                misfit, _, _ = _candidate_map(stats, layer, parent, order, tight=False)
            except (ValueError, RuntimeError, torch.linalg.LinAlgError):
                continue
            if math.isfinite(misfit):
                screened.append((misfit, order))
        screened.sort(key=lambda item: item[0])
        best_order = None
        for _, order in screened[:max(1, int(n_trials))]:
            try:
                _, a, b = _candidate_map(stats, layer, parent, order)
                candidate = _moved_frame(stats.params, layer, parent, a, b)
                moved, moved_stats, value = trial(step_at(x, candidate))
            except (ValueError, RuntimeError, torch.linalg.LinAlgError):
                continue
            if math.isfinite(value) and value > best_value + min_gain:
                best_params, best_stats, best_value, best_order = (moved, moved_stats, value,
                                                                   order)
        if best_order is not None:
            changes.append(f"layer {layer + 1} under layer-{layer} component {parent}: "
                           f"sub-paths -> {list(best_order)}")
        params, stats, current = best_params, best_stats, max(current, best_value)
    return params, current, changes


__all__ = ["MAX_RELABEL_ORDERS", "relabel", "relabel_groups", "relabelled"]
