"""A start for the deep Gaussian mixture from the data's own Gaussian mixture.

Why
---
EM for the DGMM from a layer-wise start (cluster, fit a factor analyser, pass the scores up)
lands in poor local maxima: the first layer's components estimate their scores in unrelated
frames, the deeper layers see rotated copies of one mixture, and paths empty (Selosse et al.
2020, section 3). An unconstrained Gaussian mixture with ``P = prod_l G_l`` full-covariance
components, started by k-means++, finds the paths themselves much more easily. This module
maps such a mixture onto the tree of paths and turns it into DGMM parameters.

The tree from the paths
-----------------------
Marginally the DGMM is a mixture over paths (Viroli & McLachlan 2019, eqs. 3-6). Paths that
share a first-layer component g share its affine map and noise: their means and covariances are

    mu_s = eta_g + Lambda_g m_s,      Sigma_s = Lambda_g C_s Lambda_g^T + Psi_g,

so every difference ``mu_s - mu_s'`` and ``Sigma_s - Sigma_s'`` within the group lies in the
r_1-dimensional column space of ``Lambda_g``. :func:`group_components` partitions the
mixture's ``K`` components into ``G`` groups of ``K / G`` by minimising, summed over the
groups, the energy of these differences (whitened by the group's mean covariance) outside
their best r-dimensional subspace (groups grown greedily from the most compatible pairs,
then improved by swaps). The data's mixture need not give every first-layer component the same
number of components (two paths may share one, a wide path may take two: group sizes 4 to 8
where the tree has 6 on draws of the section 3.1 setting), so single components then move
between groups, and one or two swap each way, while the cost falls, each group keeping
``K / G`` within a slack of a third; a group left with more or fewer components merges its
closest pair or splits its widest one (:func:`_balance_clusters`) back to ``K / G``. Each
group then gets a factor analyser (weighted PPCA of rank r_1 on
the rows of its components), every row its posterior mean score, and each group's scores are
whitened and rotated onto group 0's frame by matching its components' score means *and
covariances* (:func:`_match`; the components inside a group are the deeper paths, the same in
every group up to that rotation, eq. 2). The matched components become the next layer's
``K / G`` clusters, in the aligned scores, and the same step repeats up to the last layer
(:func:`tree_from_responsibilities`).

Where the data's mixture merged or split paths, the first layer still comes out right (EM
settles it), but the deeper clusters inherit the errors; :func:`regrow` keeps the first layer
and grows the deeper ones again from its scores, where each deeper path has the rows of every
first-layer component. :func:`best_start` chains the steps with short runs of accelerated EM
(:func:`~ppl_mixtures.inference.em.dgmm.accelerate`) and keeps the most likely result: it is
the start of ``DeepGaussianMixture(start="gmm")``.

The responsibilities of the mixture are used throughout (soft), so the start is the M-step
of a first E-step that the data's mixture supplied.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ppl_mixtures.inference.em import gmm as em_gmm
from ppl_mixtures.inference.em.dgmm import (
    _MASS_FLOOR_FACTOR,
    _factor_analyser,
    _posterior_mean,
    _procrustes_match,
)
from ppl_mixtures.inference.em.gmm import variance_floor
from ppl_mixtures.inference.em.loop import run_em
from ppl_mixtures.inference.init import initial_responsibilities
from ppl_mixtures.models.dgmm import DGMMParams

__all__ = ["best_start", "fit_path_mixture", "gmm_start", "group_components", "regrow",
           "tree_from_responsibilities"]


def fit_path_mixture(x: Tensor, n_components: int, generator: torch.Generator,
                     reg_covar: float = 1e-6, max_iter: int = 100,
                     tol: float = 1e-4) -> tuple[Tensor, float]:
    """Full-covariance Gaussian mixture by EM from a k-means++ start.

    Returns
    -------
    resp : Tensor, shape (n_samples, n_components)
    log_likelihood : float
        Mean per sample at the returned responsibilities' parameters.
    """
    resp = initial_responsibilities(x, n_components, "k-means++", generator)
    start = em_gmm.params_from_responsibilities(x, resp, "full", reg_covar)
    result = run_em(x, init_params=lambda _: start, e_step=em_gmm.e_step,
                    m_step=lambda stats: em_gmm.m_step(stats, "full", reg_covar),
                    n_init=1, max_iter=max_iter, tol=tol, progress=False, monotone=False)
    resp, norm = em_gmm.responsibilities(x, result.params)
    return resp, float(norm.mean())


def _moments(inputs: Tensor, resp: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mass (K,), mean (K, p) and covariance (K, p, p) of each column of ``resp``."""
    mass = resp.sum(0).clamp_min(1e-12)
    means = (resp.T @ inputs) / mass[:, None]
    centred = inputs[None] - means[:, None]
    cov = (resp.T[:, :, None] * centred).transpose(-1, -2) @ centred / mass[:, None, None]
    return mass, means, cov


def _group_cost(means: Tensor, covs: Tensor, rank: int) -> float:
    """Energy of a group's whitened mean and covariance differences outside r dimensions."""
    width = means.shape[-1]
    if rank >= width or means.shape[0] < 2:
        return 0.0
    mean_cov = covs.mean(0)
    values, vectors = torch.linalg.eigh(0.5 * (mean_cov + mean_cov.T))
    whitening = vectors @ torch.diag(values.clamp_min(1e-12 * float(values.max())).rsqrt()) \
        @ vectors.T
    centre = means.mean(0)
    columns = [whitening @ (means - centre).T]
    columns += [whitening @ (cov - mean_cov) @ whitening for cov in covs]
    stacked = torch.cat(columns, -1)
    singular = torch.linalg.svdvals(stacked)
    return float(singular[rank:].square().sum())


def group_components(means: Tensor, covs: Tensor, n_groups: int, rank: int,
                     generator: torch.Generator, n_starts: int = 10,
                     slack: int = 0) -> list[list[int]]:
    """Balanced partition of K components into ``n_groups`` sharing an r-dimensional map.

    Parameters
    ----------
    means : Tensor, shape (K, p)
    covs : Tensor, shape (K, p, p)
    n_groups : int
        Divides K.
    rank : int
        Dimension r of the shared column space.
    generator : torch.Generator
    n_starts : int
        Greedy partitions (the first group grown from the ``i``-th most compatible pair,
        each later group from the most compatible pair left), each improved by swaps; the
        lowest cost is kept.
    slack : int
        Then single components move between groups, and one or two swap each way, while the
        total cost falls (:func:`_move_components`), each group keeping between ``max(2, K / n_groups - slack)`` and ``K / n_groups + slack``
        components: the data's mixture need not give every first-layer component the same
        number of clusters (two paths may share one, one path may take two). 0: balanced.

    Returns
    -------
    list of list of int
        ``n_groups`` lists of component indices (``K / n_groups`` each with ``slack=0``).
    """
    k_total = means.shape[0]
    size = k_total // n_groups
    if n_groups == 1:
        return [list(range(k_total))]
    if size == 1:
        return [[k] for k in range(k_total)]
    wide_means, wide_covs = means.to(torch.float64), covs.to(torch.float64)
    cache: dict[tuple[int, ...], float] = {}

    def cost(group: Sequence[int]) -> float:
        key = tuple(sorted(group))
        if key not in cache:
            index = torch.as_tensor(key)
            cache[key] = _group_cost(wide_means[index], wide_covs[index], rank)
        return cache[key]

    pairs = sorted(itertools.combinations(range(k_total), 2), key=cost)

    def grow(seed: tuple[int, int], remaining: set[int]) -> list[int]:
        group = list(seed)
        while len(group) < size:
            group.append(min(sorted(remaining - set(group)), key=lambda c: cost([*group, c])))
        return group

    best: tuple[float, list[list[int]]] | None = None
    for start in range(n_starts):
        remaining, groups = set(range(k_total)), []
        for g in range(n_groups - 1):
            free = [pair for pair in pairs if pair[0] in remaining and pair[1] in remaining]
            seed = free[start % len(free)] if g == 0 else free[0]
            groups.append(grow(seed, remaining))
            remaining -= set(groups[-1])
        groups.append(sorted(remaining))
        costs = [cost(group) for group in groups]
        improved = True
        while improved:
            improved = False
            for a, b in itertools.combinations(range(n_groups), 2):
                for i, j in itertools.product(range(size), range(size)):
                    new_a = groups[a][:i] + [groups[b][j]] + groups[a][i + 1:]
                    new_b = groups[b][:j] + [groups[a][i]] + groups[b][j + 1:]
                    ca, cb = cost(new_a), cost(new_b)
                    if ca + cb < costs[a] + costs[b] - 1e-9:
                        groups[a], groups[b], costs[a], costs[b] = new_a, new_b, ca, cb
                        improved = True
        if slack > 0:
            groups = _move_components(groups, cost, max(2, size - slack), size + slack)
            costs = [cost(group) for group in groups]
        total = sum(costs)
        if best is None or total < best[0]:
            best = (total, [sorted(group) for group in groups])
    return best[1]


def _move_components(groups: list[list[int]], cost, smallest: int,
                     largest: int) -> list[list[int]]:
    """Move single components between groups, or swap one or two each way, while the summed
    cost falls (best step first), every group keeping between ``smallest`` and ``largest``
    components."""
    groups = [sorted(group) for group in groups]
    costs = [cost(group) for group in groups]
    while True:
        best = None
        for a, b in itertools.permutations(range(len(groups)), 2):
            steps = []
            if len(groups[a]) > smallest and len(groups[b]) < largest:
                steps += [([d for d in groups[a] if d != c], sorted([*groups[b], c]))
                          for c in groups[a]]
            if a < b:  # swaps of one or two components each way
                for n_swap in (1, 2):
                    for out_a in itertools.combinations(groups[a], n_swap):
                        for out_b in itertools.combinations(groups[b], n_swap):
                            steps.append((
                                sorted([d for d in groups[a] if d not in out_a] + list(out_b)),
                                sorted([d for d in groups[b] if d not in out_b] + list(out_a))))
            for new_a, new_b in steps:
                gain = costs[a] + costs[b] - cost(new_a) - cost(new_b)
                if gain > 1e-9 and (best is None or gain > best[0]):
                    best = (gain, a, b, new_a, new_b)
        if best is None:
            return groups
        _, a, b, groups[a], groups[b] = best
        costs[a], costs[b] = cost(groups[a]), cost(groups[b])


def _balance_clusters(inputs: Tensor, clusters: Tensor, groups: list[list[int]],
                      reg_covar: float) -> tuple[Tensor, list[list[int]]]:
    """Columns of ``clusters`` remade so that every group holds ``K / len(groups)`` of them.

    A group with too many merges its two clusters whose union loses the least Gaussian
    likelihood (``n_ij log|S_ij| - n_i log|S_i| - n_j log|S_j|``); one with too few splits
    the cluster of largest ``n lambda_max`` at its mean, along its leading eigenvector.
    """
    k = clusters.shape[1] // len(groups)
    eye = torch.eye(inputs.shape[1], dtype=inputs.dtype, device=inputs.device)

    def spread(column: Tensor) -> tuple[float, Tensor, Tensor]:
        mass, means, covs = _moments(inputs, column[:, None])
        return float(mass[0]), means[0], covs[0] + reg_covar * eye

    def log_det(column: Tensor) -> float:
        mass, _, cov = spread(column)
        return mass * float(torch.linalg.slogdet(cov)[1])

    def reach(column: Tensor) -> float:
        mass, _, cov = spread(column)
        return mass * float(torch.linalg.eigvalsh(cov)[-1])

    columns = []
    for group in groups:
        own = [clusters[:, c] for c in group]
        while len(own) > k:
            pairs = itertools.combinations(range(len(own)), 2)
            i, j = min(pairs, key=lambda p: log_det(own[p[0]] + own[p[1]])
                       - log_det(own[p[0]]) - log_det(own[p[1]]))
            own = [col for m, col in enumerate(own) if m not in (i, j)] + [own[i] + own[j]]
        while len(own) < k:
            i = max(range(len(own)), key=lambda m: reach(own[m]))
            _, centre, cov = spread(own[i])
            axis = torch.linalg.eigh(cov)[1][:, -1]
            side = ((inputs - centre) @ axis > 0).to(inputs.dtype)
            own = [col for m, col in enumerate(own) if m != i] + [own[i] * side,
                                                                   own[i] * (1 - side)]
        columns += own
    new_groups = [list(range(g * k, (g + 1) * k)) for g in range(len(groups))]
    return torch.stack(columns, -1), new_groups


def _skew(values: Tensor, rank: int) -> Tensor:
    upper = torch.zeros(rank, rank, dtype=values.dtype, device=values.device)
    index = torch.triu_indices(rank, rank, 1, device=values.device)
    upper = upper.index_put((index[0], index[1]), values)
    return upper - upper.T


def _moment_misfit(rotation: Tensor, reference: tuple[Tensor, Tensor, Tensor],
                   moments: tuple[Tensor, Tensor, Tensor], order: Sequence[int]) -> Tensor:
    """``sum_j w_j (|c_j Q - c'_j|^2 + |Q^T C_j Q - C'_j|_F^2)`` for clusters matched by order."""
    ref_w, ref_c, ref_cov = reference
    _, centres, covs = moments
    index = torch.as_tensor(list(order), device=centres.device)
    moved_c = centres[index] @ rotation
    moved_cov = rotation.T @ covs[index] @ rotation
    weight = 0.5 * (ref_w + moments[0][index])
    return (weight * ((moved_c - ref_c).square().sum(-1)
                      + (moved_cov - ref_cov).square().sum((-1, -2)))).sum()


def _refine_rotation(start: Tensor, reference: tuple[Tensor, Tensor, Tensor],
                     moments: tuple[Tensor, Tensor, Tensor], order: Sequence[int],
                     n_steps: int = 25) -> tuple[Tensor, float]:
    """Local minimum of :func:`_moment_misfit` over rotations ``start @ expm(A - A^T)``."""
    rank = start.shape[0]
    wide = torch.float64
    start = start.to(wide)
    reference = tuple(t.to(wide) for t in reference)
    moments = tuple(t.to(wide) for t in moments)
    n_free = rank * (rank - 1) // 2
    if n_free == 0:
        return start, float(_moment_misfit(start, reference, moments, order))
    values = torch.zeros(n_free, dtype=wide, requires_grad=True)
    optimiser = torch.optim.LBFGS([values], max_iter=n_steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimiser.zero_grad()
        loss = _moment_misfit(start @ torch.linalg.matrix_exp(_skew(values, rank)),
                              reference, moments, order)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimiser.step(closure)
    with torch.no_grad():
        rotation = start @ torch.linalg.matrix_exp(_skew(values, rank))
        return rotation, float(_moment_misfit(rotation, reference, moments, order))


def _match(reference: tuple[Tensor, Tensor, Tensor], moments: tuple[Tensor, Tensor, Tensor],
           generator: torch.Generator, n_random: int = 1) -> list[tuple[float, Tensor, list[int]]]:
    """Rotations ``Q`` and orders: cluster ``order[j]``'s moments, rotated by ``Q``, match
    reference cluster ``j``'s (mean and covariance, :func:`_moment_misfit`).

    Candidate orders: every one for up to 3 clusters, else the Hungarian order after the
    centres' Procrustes fit (:func:`~ppl_mixtures.inference.em.dgmm._procrustes_match`).
    Each is refined from that fit and from ``n_random`` random rotations. Centres alone leave
    a rotation free (two clusters are always antipodal in a whitened frame); the covariances
    fix it.

    Returns
    -------
    list of (misfit, rotation, order)
        One per candidate order (its best rotation), lowest misfit first.
    """
    from scipy.optimize import linear_sum_assignment

    centres = moments[1]
    k, rank = centres.shape
    rotation = _procrustes_match(reference[1], centres, generator)
    if k <= 3:
        orders = [list(p) for p in itertools.permutations(range(k))]
    else:
        cost = torch.cdist(centres @ rotation, reference[1]).square().cpu().numpy()
        rows, cols = linear_sum_assignment(cost)
        order = [0] * len(rows)
        for row, col in zip(rows, cols, strict=True):
            order[int(col)] = int(row)
        orders = [order]
    starts = [rotation]
    for _ in range(n_random):
        gaussian = torch.randn(rank, rank, generator=generator, dtype=torch.float64)
        starts.append(torch.linalg.qr(gaussian)[0].to(centres))
    found = []
    for order in orders:
        fits = [_refine_rotation(start, reference, moments, order) for start in starts]
        refined, misfit = min(fits, key=lambda fit: fit[1])
        found.append((misfit, refined.to(centres.dtype), order))
    return sorted(found, key=lambda item: item[0])


def _layer_start(inputs: Tensor, clusters: Tensor, size: int, rank: int, first: bool,
                 generator: torch.Generator, reg_covar: float):
    """One layer: groups, factor analysers, and each group's candidate alignments."""
    _, means, covs = _moments(inputs, clusters)
    per_group = clusters.shape[1] // size
    groups = group_components(means, covs, size, rank, generator, slack=per_group // 3)
    if any(len(group) != per_group for group in groups):
        clusters, groups = _balance_clusters(inputs, clusters, groups, reg_covar)
    group_resp = torch.stack([clusters[:, group].sum(-1) for group in groups], -1)
    spread = float(inputs.var(0).mean()) if inputs.shape[0] > 1 else 0.0
    scaled = variance_floor(reg_covar, spread, float(inputs.mean(0).square().mean()),
                            inputs.dtype)
    floor = scaled if first else max(reg_covar, 1e-3 * spread)
    eta, loadings, noise = _factor_analyser(inputs, group_resp, rank, floor)
    weights = group_resp.mean(0) + _MASS_FLOOR_FACTOR * torch.finfo(inputs.dtype).eps
    return groups, group_resp, eta, loadings, noise, weights / weights.sum(), clusters


def _align_groups(inputs, clusters, groups, group_resp, eta, loadings, noise, generator,
                  reg_covar):
    """Whiten each group's scores and list the candidate matchings onto group 0.

    Returns the scores, hard group labels, per group ``(centre, whitening)`` and per group a
    list of ``(misfit, rotation, order)`` candidates (group 0: the identity).
    """
    rank = loadings.shape[-1]
    labels = group_resp.argmax(-1)
    scores = _posterior_mean(inputs, labels, eta, loadings, noise)
    k = len(groups[0])
    eye = torch.eye(rank, dtype=inputs.dtype, device=inputs.device)
    frames, candidates, reference = [], [], None
    for g, group in enumerate(groups):
        weight = group_resp[:, g]
        own_mass = float(weight.sum())
        rows = labels == g
        identity = [(0.0, eye, list(range(k)))]
        if own_mass <= rank + 1 or int(rows.sum()) < 2:
            frames.append((scores.new_zeros(rank), eye))
            candidates.append(identity)
            continue
        centre = (weight @ scores) / own_mass
        centred = scores - centre
        cov = (weight[:, None] * centred).T @ centred / own_mass + reg_covar * eye
        values, vectors = torch.linalg.eigh(0.5 * (cov + cov.T))
        whitening = vectors @ torch.diag(values.clamp_min(1e-12).rsqrt()) @ vectors.T
        sub_mass, centres, sub_covs = _moments(centred @ whitening,
                                               clusters[:, group] * rows[:, None])
        moments = (sub_mass / sub_mass.sum(), centres, sub_covs)
        frames.append((centre, whitening))
        if reference is None:
            reference = moments
            candidates.append(identity)
        else:
            candidates.append(_match(reference, moments, generator))
    return scores, labels, frames, candidates


def _refine_clusters(scores: Tensor, resp: Tensor, reg_covar: float, max_iter: int) -> Tensor:
    """Responsibilities of a full Gaussian mixture fitted to ``scores`` from ``resp``."""
    start = em_gmm.params_from_responsibilities(scores, resp, "full", reg_covar)
    result = run_em(scores, init_params=lambda _: start, e_step=em_gmm.e_step,
                    m_step=lambda stats: em_gmm.m_step(stats, "full", reg_covar), n_init=1,
                    max_iter=max_iter, tol=1e-5, progress=False, monotone=False)
    refined, _ = em_gmm.responsibilities(scores, result.params)
    return refined


def tree_from_responsibilities(x: Tensor, resp: Tensor, n_components: Sequence[int],
                               n_factors: Sequence[int], generator: torch.Generator,
                               reg_covar: float = 1e-6,
                               max_candidates: int = 8,
                               refine_iter: int = 50) -> list[DGMMParams]:
    """DGMM starts from soft assignments of the rows to ``P = prod G_l`` clusters.

    See the module notes: per layer, group the clusters (:func:`group_components`), fit a
    weighted PPCA per group, pass every row's posterior mean score up, whitened and rotated
    onto the first group's frame; the clusters matched across groups become the next layer's.
    Where a group's matching is in doubt (few clusters per group, whose covariances alone
    decide), the next-best matchings are kept as well: one start per combination, up to
    ``max_candidates`` in all (ranked by the summed misfit); pick among them by likelihood.

    Parameters
    ----------
    x : Tensor, shape (n_samples, n_features)
    resp : Tensor, shape (n_samples, P)
        Rows sum to 1 (e.g. a Gaussian mixture's responsibilities); the column order is free.
    n_components, n_factors : sequence of int
    generator : torch.Generator
    reg_covar : float
    max_candidates : int
        Most starts returned.
    refine_iter : int
        EM iterations of a full Gaussian mixture fitted to the aligned scores of all the rows
        (started from the matched clusters) before each deeper layer: the clusters of the
        deeper paths are then estimated from every first-layer component's rows at once,
        ``G_1`` times more than the data's mixture had for each. 0: keep the matched clusters.

    Returns
    -------
    list of DGMMParams
        Most plausible first.
    """
    n_layers = len(n_components)

    def build(layer: int, inputs: Tensor, clusters: Tensor, budget: int) -> list[tuple]:
        size, rank = n_components[layer], n_factors[layer]
        groups, group_resp, eta, loadings, noise, weights, clusters = _layer_start(
            inputs, clusters, size, rank, layer == 0, generator, reg_covar)
        if layer == n_layers - 1:
            return [(0.0, [(weights, eta, loadings, noise)])]
        scores, labels, frames, candidates = _align_groups(
            inputs, clusters, groups, group_resp, eta, loadings, noise, generator, reg_covar)
        combos = sorted(itertools.product(*candidates),
                        key=lambda combo: sum(item[0] for item in combo))[:max(1, budget)]
        k = len(groups[0])
        results = []
        for combo in combos:
            aligned = torch.zeros_like(scores)
            new_clusters = clusters.new_zeros(clusters.shape[0], k)
            new_eta, new_loadings = eta.clone(), loadings.clone()
            for g, (group, (centre, whitening), (_, rotation, order)) in enumerate(
                    zip(groups, frames, combo, strict=True)):
                change = rotation.T @ whitening  # z' = change (z - centre)
                rows = labels == g
                aligned[rows] = (scores[rows] - centre) @ change.T
                new_loadings[g] = loadings[g] @ torch.linalg.inv(change)
                new_eta[g] = eta[g] + loadings[g] @ centre
                for j in range(k):
                    new_clusters[:, j] += clusters[:, group[order[j]]]
            if refine_iter > 0:
                new_clusters = _refine_clusters(aligned, new_clusters, reg_covar, refine_iter)
            misfit = sum(item[0] for item in combo)
            own = (weights, new_eta, new_loadings, noise)
            deeper = build(layer + 1, aligned, new_clusters, budget // len(combos))
            results += [(misfit + rest, [own, *layers]) for rest, layers in deeper]
        return sorted(results, key=lambda item: item[0])[:max(1, budget)]

    starts = []
    for _, layers in build(0, x, resp, max_candidates):
        starts.append(DGMMParams(*[list(values) for values in zip(*layers, strict=True)]))
    return starts


def gmm_start(x: Tensor, n_components: Sequence[int], n_factors: Sequence[int],
              generator: torch.Generator, reg_covar: float = 1e-6,
              gmm_iter: int = 100) -> list[DGMMParams]:
    """DGMM starts from a ``prod G_l``-component full Gaussian mixture of the data.

    Fits the mixture (:func:`fit_path_mixture`), then maps it onto the tree
    (:func:`tree_from_responsibilities`).
    """
    resp, _ = fit_path_mixture(x, math.prod(n_components), generator, reg_covar, gmm_iter)
    return tree_from_responsibilities(x, resp, n_components, n_factors, generator, reg_covar)


def best_start(x: Tensor, n_components: Sequence[int], n_factors: Sequence[int],
               generator: torch.Generator, reg_covar: float = 1e-6, n_mixtures: int = 3,
               max_candidates: int = 2, trial_cycles: int = 3, n_regrow: int = 2,
               regrow_cycles: int = 15) -> DGMMParams:
    """The start of ``DeepGaussianMixture(start="gmm")``: mixtures, tree, trial runs, regrowth.

    Fits ``n_mixtures`` full Gaussian mixtures with ``prod G_l`` components
    (:func:`fit_path_mixture`, k-means++ starts) and keeps the most likely; maps it onto
    the tree (:func:`tree_from_responsibilities`, up to ``max_candidates`` starts); runs
    ``trial_cycles`` cycles of accelerated EM (:func:`~ppl_mixtures.inference.em.dgmm.accelerate`)
    from each start and keeps the most likely, then ``regrow_cycles`` more. Then
    ``n_regrow`` times: keep the first layer, grow the deeper ones again from its scores
    (:func:`regrow`), ``regrow_cycles`` accelerated cycles, kept if more likely. Returns the
    most likely parameters met (the returned value's likelihood is the highest of all the
    accelerated runs).

    Parameters
    ----------
    x : Tensor, shape (n_samples, n_features)
    n_components, n_factors : sequence of int
    generator : torch.Generator
    reg_covar : float
    n_mixtures, max_candidates, trial_cycles, n_regrow, regrow_cycles : int

    Returns
    -------
    DGMMParams
    """
    from ppl_mixtures.inference.em.dgmm import accelerate

    n_paths = math.prod(n_components)
    best_mixture: tuple[float, Tensor] | None = None
    for _ in range(max(1, n_mixtures)):
        resp, value = fit_path_mixture(x, n_paths, generator, reg_covar)
        if best_mixture is None or value > best_mixture[0]:
            best_mixture = (value, resp)
    starts = tree_from_responsibilities(x, best_mixture[1], n_components, n_factors, generator,
                                        reg_covar, max_candidates)
    best: tuple[float, DGMMParams] | None = None
    for start in starts:
        params, history = accelerate(x, start, trial_cycles, reg_covar)
        value = history[-1] if history else -math.inf
        if best is None or value > best[0]:
            best = (value, params)
    if len(n_components) < 2 or n_regrow <= 0:
        return best[1]
    params, history = accelerate(x, best[1], regrow_cycles, reg_covar)
    best = (history[-1] if history else best[0], params)
    for _ in range(n_regrow):
        try:
            grown = regrow(x, best[1], generator, reg_covar)
        except (ValueError, RuntimeError, torch.linalg.LinAlgError):
            continue  # too few rows in a component for its mixture: keep the best so far
        params, history = accelerate(x, grown, regrow_cycles, reg_covar)
        if history and history[-1] > best[0]:
            best = (history[-1], params)
    return best[1]


def regrow(x: Tensor, params: DGMMParams, generator: torch.Generator,
           reg_covar: float = 1e-6, n_mixtures: int = 3) -> DGMMParams:
    """Keep a fit's first layer and grow the layers above again from its scores.

    For each first-layer component g (rows by their most probable path): the posterior mean
    scores ``E[z^(1) | x, g]``, whitened; a full Gaussian mixture with ``prod_{l > 1} G_l``
    components fitted to them (best of ``n_mixtures`` k-means++ starts); the components'
    moments matched onto component 0's by a rotation (:func:`_match`), which reparametrises
    ``Lambda_g`` and ``eta_g`` (the first layer's likelihood is unchanged). The aligned scores
    of all rows, with their clusters refined by one mixture fitted to all of them, then
    start layers 2..h by :func:`tree_from_responsibilities`. Where the data's mixture of
    ``prod G_l`` components merged or split paths, the first layer is still found by EM;
    the deeper paths are found better inside it, each first-layer component's rows at once.

    Parameters
    ----------
    x : Tensor, shape (n_samples, n_features)
    params : DGMMParams
        A fit whose first layer is trusted.
    generator : torch.Generator
    reg_covar : float
    n_mixtures : int

    Returns
    -------
    DGMMParams
        Layers 2..h restarted: run EM afterwards.
    """
    from ppl_mixtures.inference.em.dgmm import responsibilities

    sizes, factors = params.n_components, params.n_factors
    if len(sizes) < 2:
        return params
    k = math.prod(sizes[1:])
    resp, _ = responsibilities(x, params)
    first = resp.reshape(x.shape[0], sizes[0], -1).sum(-1)
    labels = first.argmax(-1)
    group_resp = torch.nn.functional.one_hot(labels, sizes[0]).to(x.dtype)
    eta, loadings, noise = params.eta[0], params.loadings[0], params.noise_variances[0]
    scores = _posterior_mean(x, labels, eta, loadings, noise)
    clusters = x.new_zeros(x.shape[0], sizes[0] * k)
    for g in range(sizes[0]):
        rows = labels == g
        if int(rows.sum()) <= max(k, factors[0]) + 1:
            clusters[rows, g * k] = 1.0
            continue
        own = scores[rows]
        best: tuple[float, Tensor] | None = None
        for _ in range(max(1, n_mixtures)):
            fitted, value = fit_path_mixture(own, k, generator, reg_covar)
            if best is None or value > best[0]:
                best = (value, fitted)
        clusters[rows, g * k:(g + 1) * k] = best[1]
    groups = [list(range(g * k, (g + 1) * k)) for g in range(sizes[0])]
    _, _, frames, candidates = _align_groups(x, clusters, groups, group_resp, eta, loadings,
                                             noise, generator, reg_covar)
    aligned = torch.zeros_like(scores)
    pooled = clusters.new_zeros(x.shape[0], k)
    new_eta, new_loadings = eta.clone(), loadings.clone()
    for g, (group, (centre, whitening), options) in enumerate(
            zip(groups, frames, candidates, strict=True)):
        _, rotation, order = options[0]
        change = rotation.T @ whitening
        rows = labels == g
        aligned[rows] = (scores[rows] - centre) @ change.T
        new_loadings[g] = loadings[g] @ torch.linalg.inv(change)
        new_eta[g] = eta[g] + loadings[g] @ centre
        for j in range(k):
            pooled[:, j] += clusters[:, group[order[j]]]
    pooled = _refine_clusters(aligned, pooled, reg_covar, 50)
    deeper = tree_from_responsibilities(aligned, pooled, sizes[1:], factors[1:], generator,
                                        reg_covar, max_candidates=1)[0]
    return DGMMParams([params.weights[0], *deeper.weights], [new_eta, *deeper.eta],
                      [new_loadings, *deeper.loadings], [noise, *deeper.noise_variances])
