"""Exact, monotone EM for the deep Gaussian mixture, over all layers at once.

Which EM this is
----------------
Not the layer-wise scheme with *sampled* scores of Selosse et al. (2020, section 2.3; the CRAN
deepgmm code draws the z's stochastically, so its likelihood may go down). Here the
complete data are ``(x, s_1..s_h, z^(1)..z^(h))`` and the complete log-likelihood is::

    sum_l log pi^(l)_{s_l} + sum_l log N(z^(l-1) | eta^(l)_{s_l} + Lambda^(l)_{s_l} z^(l),
                                             Psi^(l)_{s_l}) + log N(z^(h) | 0, I)

with ``z^(0) = x`` (eq. 1). Its expectation under ``p(s, z | x, theta_old)`` separates into one
term per (layer, component), each a weighted linear regression of ``z^(l-1)`` on ``z^(l)``, so
every layer's parameters are maximised in closed form from one E-step: this is plain EM and the
observed log-likelihood of eq. (3) never decreases.

E-step: path responsibilities ``r_ns`` from :func:`ppl_mixtures.models.dgmm.log_joint` (the
collapsed Pyro model's helper, so the log-likelihoods are identical), and the exact Gaussian
posterior of all scores given ``x`` and the path (:func:`~ppl_mixtures.models.dgmm.posterior_scores`:
conditional mean per row, one covariance per path). With ``y = (x, z^(1), ..., z^(h))`` the
sufficient statistics per path are ``W_s = sum_n r_ns``, ``sum_n r_ns E[y]`` and
``sum_n r_ns E[y y^T]`` (moments taken about a fixed ``shift`` to keep digits: the model's own
mean of ``y`` (:func:`model_mean`), a function of the parameters alone, so the statistics of
batches of a stream, or of the shards of several processes, add up to those of all the data).

M-step, for layer l and component g, summing the statistics over the paths with ``s_l = g``
(``a`` = block z^(l-1), ``b`` = block z^(l), ``b~ = (b, 1)``)::

    [Lambda | eta~] = E[a b~^T] E[b~ b~^T]^-1
    psi            = diag(E[a a^T] - [Lambda | eta~] E[b~ a^T]) / W      (floored at reg_covar)
    pi^(l)_g       = W_g / N

A component whose mass ``W_g`` is below ``1e-10 N`` keeps its previous ``eta, Lambda, psi``
(a partial M-step, still monotone).

Float32: the path densities and scores are computed in float32 (over float64 factorisations),
the statistics are added in float64, and the M-step's regressions run in float64, before
the parameters are rounded once to float32. The regressions fall back on a small ridge, and
then on a clear ``ValueError``, when a design matrix is singular (data whose rows are all
identical, empty components).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ppl_mixtures.inference.em.gmm import stats_floor, variance_floor
from ppl_mixtures.inference.em.loop import SummedStats
from ppl_mixtures.inference.init import initial_responsibilities
from ppl_mixtures.models.dgmm import DGMMParams, log_joint, posterior_scores
from ppl_mixtures.models.gmm import factorise

#: Floor on each component's total responsibility, as scikit-learn adds (10 * eps).
_MASS_FLOOR_FACTOR = 10.0
#: Components with less mass than this fraction of N keep their parameters.
_EMPTY_FRACTION = 1e-10
#: Rows of one block of a float32 E-step: its (rows, P, D + R) float64 tables hold about 2^21
#: numbers.
_WIDE_BLOCK_ELEMENTS = 1 << 21


@dataclass
class DGMMStats(SummedStats):
    """Sufficient statistics of one E-step (sums over samples: they add across batches).

    The fields named by ``summed_fields`` are sums over samples (see
    :class:`~ppl_mixtures.inference.em.loop.SummedStats`). ``shift`` and ``params`` are
    functions of the E-step's parameters alone, the same for every batch and rank: carried
    along, not summed.

    Attributes
    ----------
    n_samples : float
    log_likelihood : Tensor, scalar
        ``sum_n log p(x_n | theta)`` at the E-step's parameters.
    path_mass : Tensor, shape (P,)
        ``W_s = sum_n r_ns``.
    first_moment : Tensor, shape (P, D + R)
        ``sum_n r_ns (E[y_n | x_n, s] - shift)``.
    second_moment : Tensor, shape (P, D + R, D + R)
        ``sum_n r_ns E[(y_n - shift)(y_n - shift)^T | x_n, s]``.
    shift : Tensor, shape (D + R,)
        The model's mean of ``y = (x, z^(1), ..., z^(h))`` at ``params`` (:func:`model_mean`).
    params : DGMMParams
        The E-step's parameters (kept by empty components).
    """

    summed_fields = (*SummedStats.summed_fields, "path_mass", "first_moment", "second_moment")

    path_mass: Tensor
    first_moment: Tensor
    second_moment: Tensor
    shift: Tensor
    params: DGMMParams


def model_mean(params: DGMMParams) -> Tensor:
    """Mean of ``y = (x, z^(1), ..., z^(h))`` under the model, shape (D + R,).

    From the top down (eq. 1): ``E[z^(h)] = 0`` and, since ``s_l`` is independent of the
    layers above, ``E[z^(l-1)] = sum_g pi^(l)_g (eta^(l)_g + Lambda^(l)_g E[z^(l)])``.
    The E-step centres its moments on it: it depends on the parameters only (unlike the
    data mean of a batch), and is close to the data mean for any sensible fit.

    Parameters
    ----------
    params : DGMMParams

    Returns
    -------
    Tensor, shape (D + R,)
        Blocks ``x, z^(1), ..., z^(h)``.
    """
    mean = params.eta[-1].new_zeros(params.n_factors[-1])
    blocks = [mean]
    for layer in reversed(range(params.n_layers)):
        weights = params.weights[layer]
        mean = weights @ params.eta[layer] + torch.einsum(
            "g,gpr,r->p", weights, params.loadings[layer], mean)
        blocks.insert(0, mean)
    return torch.cat(blocks)


def responsibilities(x: Tensor, params: DGMMParams,
                     temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """Posterior path probabilities (N, P) and per-sample log-likelihoods (N,).

    With ``temperature`` T > 1 the probabilities are ``softmax(log p(x, s) / T)`` (flattened,
    for deterministic annealing); the log-likelihoods are always the untempered ones.
    """
    joint = log_joint(x, params)
    norm = torch.logsumexp(joint, dim=-1)
    if temperature != 1.0:
        return torch.softmax(joint / temperature, dim=-1), norm
    return torch.exp(joint - norm[:, None]), norm


def e_step(x: Tensor, params: DGMMParams, temperature: float = 1.0,
           weights: Tensor | None = None) -> DGMMStats:
    """E-step: path responsibilities and posterior score moments, reduced to statistics.

    Parameters
    ----------
    x : Tensor, shape (n_samples, n_features)
    params : DGMMParams
    temperature : float, default 1.0
        Path responsibilities ``proportional to p(x, s)^(1/T)`` (deterministic annealing, see
        :func:`anneal`). Only ``T = 1`` is an EM step that cannot lower the likelihood.
    weights : Tensor, shape (n_samples,), optional
        Sample weights: ``r_ns`` becomes ``w_n r_ns`` in every sum, the log-likelihood is
        ``sum_n w_n log p(x_n)`` and ``n_samples`` is ``sum_n w_n`` (integer weights give the
        statistics of repeated rows).

    Returns
    -------
    DGMMStats
        In float32 fits: the sums in float64 (added over blocks of rows), the likelihood in
        float32.
    """
    if x.dtype == torch.float64:
        return _e_step(x, params, temperature, weights)
    width = x.shape[1] + sum(params.n_factors)
    rows = max(1, _WIDE_BLOCK_ELEMENTS // (params.n_paths * width))
    total = None
    blocks = x.split(rows)
    weight_blocks = [None] * len(blocks) if weights is None else weights.split(rows)
    for block, weight in zip(blocks, weight_blocks, strict=True):
        stats = _e_step(block, params, temperature, weight)
        total = stats if total is None else total + stats
    total.log_likelihood = total.log_likelihood.to(x.dtype)
    return total


def _e_step(x: Tensor, params: DGMMParams, temperature: float,
            weights: Tensor | None = None) -> DGMMStats:
    """One block's statistics; float64 sums whatever the dtype (see :func:`e_step`)."""
    wide = torch.float64
    resp, sample_ll = responsibilities(x, params, temperature)
    n_samples = float(x.shape[0])
    if weights is not None:
        resp = resp * weights.to(resp.dtype)[:, None]
        sample_ll = sample_ll * weights.to(sample_ll.dtype)
        n_samples = float(weights.sum(dtype=wide))
    score_means, score_cov = posterior_scores(x, params)  # (N, P, R), (P, R, R)
    shift = model_mean(params)  # the parameters' alone: batches' statistics add up
    data_shift, score_shift = shift[:x.shape[1]].to(wide), shift[x.shape[1]:].to(wide)
    resp = resp.to(wide)
    mass = resp.sum(0)
    xc = x.to(wide) - data_shift
    zc = score_means.to(wide) - score_shift
    first = torch.cat([resp.T @ xc, torch.einsum("np,npr->pr", resp, zc)], -1)
    weighted_x = resp[:, :, None] * xc[:, None, :]  # (N, P, D)
    xx = torch.einsum("npi,nj->pij", weighted_x, xc)
    xz = torch.einsum("npi,npj->pij", weighted_x, zc)
    zz = torch.einsum("np,npi,npj->pij", resp, zc, zc) + mass[:, None, None] * score_cov.to(wide)
    second = torch.cat([torch.cat([xx, xz], -1), torch.cat([xz.transpose(-1, -2), zz], -1)], -2)
    return DGMMStats(n_samples, sample_ll.sum(dtype=wide), mass, first, second, shift, params)


def _layer_sums(stats: DGMMStats, layer: int) -> tuple[Tensor, Tensor, Tensor]:
    """Statistics summed over the paths through each component of ``layer`` (0-based)."""
    sizes = stats.params.n_components
    others = tuple(k for k in range(len(sizes)) if k != layer)

    def reduce(tensor: Tensor) -> Tensor:
        shaped = tensor.reshape(*sizes, *tensor.shape[1:])
        return shaped.sum(others) if others else shaped

    return reduce(stats.path_mass), reduce(stats.first_moment), reduce(stats.second_moment)


def _regress(mass: Tensor, first: Tensor, second: Tensor, a: slice, b: slice, shift: Tensor,
             floor: float, layer: int) -> tuple[Tensor, Tensor, Tensor]:
    """Weighted regression of block ``a`` on block ``b`` with intercept, per component.

    Float64 statistics in, float64 parameters out. Returns eta (G, p), loadings (G, p, r),
    noise variances (G, p).
    """
    rank = b.stop - b.start
    shift = shift.to(mass.dtype)
    design = torch.cat([
        torch.cat([second[:, b, b], first[:, b, None]], -1),
        torch.cat([first[:, None, b], mass[:, None, None]], -1),
    ], -2)  # E[b~ b~^T] * W, (G, r + 1, r + 1)
    cross = torch.cat([second[:, a, b], first[:, a, None]], -1)  # (G, p, r + 1)
    coef = _solve_design(design, cross.transpose(-1, -2), layer).transpose(-1, -2)
    loadings, intercept = coef[..., :rank], coef[..., rank]
    residual = second[:, a, a].diagonal(dim1=-2, dim2=-1) - (coef * cross).sum(-1)
    noise = (residual / mass[:, None]).clamp_min(floor)
    eta = shift[a] + intercept - (loadings @ shift[b, None]).squeeze(-1)
    return eta, loadings, noise


def _solve_design(design: Tensor, rhs: Tensor, layer: int) -> Tensor:
    """``design^-1 rhs`` per component; a tiny ridge where a design matrix is singular.

    A component whose inputs are all one point (data whose rows are identical) or that has no
    mass has a singular design; a pseudo-observation at the prior moments of the scores,
    ``10 eps (mean diagonal + 1)`` on the diagonal, makes it solvable (empty components then
    keep their parameters anyway). A ``ValueError`` names the component if even that fails.
    """
    coef, info = torch.linalg.solve_ex(design, rhs)
    bad = (info != 0) | ~torch.isfinite(coef).all(-1).all(-1)
    if not bool(bad.any()):
        return coef
    eye = torch.eye(design.shape[-1], dtype=design.dtype, device=design.device)
    scale = design.diagonal(dim1=-2, dim2=-1).abs().mean(-1, keepdim=True)[..., None] + 1.0
    ridge = design + _MASS_FLOOR_FACTOR * torch.finfo(design.dtype).eps * scale * eye
    _, factors, _, failing = factorise(ridge)
    if bool((failing & bad).any()):
        components = (failing & bad).nonzero().flatten().tolist()[:10]
        raise ValueError(
            f"the DGMM M-step cannot solve the regression of layer {layer + 1}, component(s) "
            f"{components}: its design matrix is singular or not finite (the data's rows are "
            "identical or hold extreme values); pass data with distinct rows, fewer "
            "n_components, a larger reg_covar, or standardised X"
        )
    ridged = torch.cholesky_solve(rhs, factors)
    return torch.where(bad[:, None, None], ridged, coef)


def m_step(stats: DGMMStats, reg_covar: float = 1e-6) -> DGMMParams:
    """M-step: every layer's weights, intercepts, loadings and noise variances in closed form.

    Runs in float64 and rounds the parameters once to their dtype.

    Parameters
    ----------
    stats : DGMMStats
    reg_covar : float
        Floor on every noise variance; on the first layer (the data's own scale) scaled down
        for data of tiny variance (:func:`~ppl_mixtures.inference.em.gmm.variance_floor`).

    Returns
    -------
    DGMMParams
    """
    old = stats.params
    dtype, wide = old.eta[0].dtype, torch.float64
    widths = (old.n_features, *old.n_factors)
    offsets = [0, *torch.tensor(widths).cumsum(0).tolist()]
    eps = torch.finfo(dtype).eps
    path_mass = stats.path_mass.to(wide)
    first_moment, second_moment = stats.first_moment.to(wide), stats.second_moment.to(wide)
    d = old.n_features
    data_floor = stats_floor(
        reg_covar, path_mass, first_moment[:, :d],
        second_moment[:, :d, :d].diagonal(dim1=-2, dim2=-1), stats.shift[:d])
    summed = DGMMStats(stats.n_samples, stats.log_likelihood, path_mass, first_moment,
                       second_moment, stats.shift, old)
    new = DGMMParams([], [], [], [])
    for layer in range(old.n_layers):
        mass, first, second = _layer_sums(summed, layer)
        a = slice(offsets[layer], offsets[layer + 1])
        b = slice(offsets[layer + 1], offsets[layer + 2])
        floored = mass + _MASS_FLOOR_FACTOR * eps
        floor = (data_floor if layer == 0 else reg_covar) or eps
        eta, loadings, noise = _regress(floored, first, second, a, b, stats.shift, floor, layer)
        keep = mass < _EMPTY_FRACTION * stats.n_samples
        new.weights.append((floored / floored.sum()).to(dtype))
        new.eta.append(torch.where(keep[:, None], old.eta[layer], eta.to(dtype)))
        new.loadings.append(torch.where(keep[:, None, None], old.loadings[layer],
                                        loadings.to(dtype)))
        new.noise_variances.append(torch.where(keep[:, None], old.noise_variances[layer],
                                               noise.to(dtype)))
    return new


def anneal(x: Any, params: DGMMParams, start_temperature: float, n_iter: int,
           reg_covar: float = 1e-6, *,
           tempered_e_step: Callable[[Any, DGMMParams, float], DGMMStats] | None = None,
           ) -> tuple[DGMMParams, list[float]]:
    """Deterministic-annealing EM (Ueda & Nakano 1998): ``n_iter`` tempered EM steps, T from
    ``start_temperature`` down to 1 on a geometric schedule.

    At T > 1 the path responsibilities are flattened (``p(s | x)^(1/T)``, renormalised), so
    early M-steps see every path with some mass: paths are not emptied before the deeper layers
    have found their structure, the failure of plain EM in Table 2 of Selosse et al. (2020). The
    tempered steps are not monotone in the likelihood; run plain EM (``temperature=1``)
    afterwards.

    Parameters
    ----------
    x : Tensor, shape (n_samples, n_features), or any data ``tempered_e_step`` accepts
    params : DGMMParams
        Starting point.
    start_temperature : float
        T of the first step (>= 1; 1 returns ``params`` unchanged).
    n_iter : int
        Number of tempered steps.
    reg_covar : float
    tempered_e_step : callable ``(x, params, temperature) -> DGMMStats``, optional
        The E-step at a temperature; default :func:`e_step`. Pass one that sums over a
        stream of batches or over ranks (one pass per tempered step), as the EM loop's.

    Returns
    -------
    params : DGMMParams
    history : list of float
        Mean log-likelihood per sample before each tempered step.
    """
    history: list[float] = []
    if start_temperature <= 1.0 or n_iter <= 0:
        return params, history
    step_at = e_step if tempered_e_step is None else tempered_e_step
    ratio = (1.0 / start_temperature) ** (1.0 / n_iter)
    for step in range(n_iter):
        stats = step_at(x, params, start_temperature * ratio**step)
        history.append(float(stats.log_likelihood) / stats.n_samples)
        params = m_step(stats, reg_covar)
    return params, history


def _to_vector(params: DGMMParams) -> list[Tensor]:
    """Unconstrained coordinates: log-weights, eta, loadings, log noise variances."""
    return ([w.log() for w in params.weights] + list(params.eta) + list(params.loadings)
            + [v.log() for v in params.noise_variances])


def _from_vector(values: list[Tensor], n_layers: int) -> DGMMParams:
    weights = [torch.softmax(v, -1) for v in values[:n_layers]]
    return DGMMParams(weights, values[n_layers:2 * n_layers], values[2 * n_layers:3 * n_layers],
                      [v.exp() for v in values[3 * n_layers:]])


def accelerate(x: Any, params: DGMMParams, n_cycles: int, reg_covar: float = 1e-6, *,
               e_step_fn: Callable[[Any, DGMMParams], DGMMStats] | None = None,
               tol: float = 0.0) -> tuple[DGMMParams, list[float]]:
    """Monotone squared-extrapolation EM (SQUAREM, Varadhan & Roland 2008).

    Each cycle runs two EM steps ``theta1 = M(theta0)``, ``theta2 = M(theta1)``, extrapolates
    ``theta' = theta0 - 2 a r + a^2 v`` (``r = theta1 - theta0``, ``v = theta2 - 2 theta1 +
    theta0``, ``a = -|r| / |v|``, in log-weights, intercepts, loadings and log-variances), and
    applies one more EM step to it. The extrapolated point is kept only when its likelihood is
    at least ``theta2``'s; otherwise ``M(theta2)`` is: every cycle's likelihood is at least that
    of plain EM's third step, so the sequence never goes down. Where EM creeps along a ridge
    (the deep layers' frames against the first layer's loadings), a cycle moves many EM steps.

    Parameters
    ----------
    x : Tensor or any data ``e_step_fn`` accepts
    params : DGMMParams
    n_cycles : int
        Each costs three or four E-steps.
    reg_covar : float
    e_step_fn : callable ``(x, params) -> DGMMStats``, optional
        Default :func:`e_step`; pass one that sums over batches or ranks.
    tol : float
        Stop when a cycle raises the mean log-likelihood by less than this.

    Returns
    -------
    params : DGMMParams
    history : list of float
        Mean log-likelihood per sample after each cycle.
    """
    step_at = e_step if e_step_fn is None else e_step_fn
    history: list[float] = []
    stats = step_at(x, params)
    for _ in range(n_cycles):
        before = float(stats.log_likelihood) / stats.n_samples
        first = m_step(stats, reg_covar)
        stats1 = step_at(x, first)
        second = m_step(stats1, reg_covar)
        stats2 = step_at(x, second)
        plain = float(stats2.log_likelihood) / stats2.n_samples
        step_length, jump_to = _extrapolation(params, first, second)
        params, stats = second, stats2
        if step_length is not None:
            try:
                candidate = m_step(step_at(x, jump_to(min(-1.0, step_length))), reg_covar)
                cand_stats = step_at(x, candidate)
                value = float(cand_stats.log_likelihood) / cand_stats.n_samples
            except (ValueError, RuntimeError, torch.linalg.LinAlgError):
                value = -math.inf
            if math.isfinite(value) and value >= plain:
                params, stats = candidate, cand_stats
        after = float(stats.log_likelihood) / stats.n_samples
        history.append(after)
        if after - before < tol:
            break
    return params, history


def _extrapolation(params: DGMMParams, first: DGMMParams, second: DGMMParams,
                   ) -> tuple[float | None, Callable[[float], DGMMParams]]:
    """SQUAREM's step length and extrapolation from ``theta0 = params`` and two EM steps.

    ``r = theta1 - theta0``, ``v = theta2 - 2 theta1 + theta0``; the step length is
    ``a = -|r| / |v|`` (None when ``v`` vanishes), and ``jump_to(a)`` gives
    ``theta0 - 2 a r + a^2 v`` (Varadhan & Roland 2008, scheme S3).
    """
    v0, v1, v2 = _to_vector(params), _to_vector(first), _to_vector(second)
    r = [b - a for a, b in zip(v0, v1, strict=True)]
    v = [c - 2 * b + a for a, b, c in zip(v0, v1, v2, strict=True)]
    r_norm = math.sqrt(sum(float(t.square().sum()) for t in r))
    v_norm = math.sqrt(sum(float(t.square().sum()) for t in v))

    def jump_to(alpha: float) -> DGMMParams:
        jumped = [a - 2 * alpha * dr + alpha**2 * dv for a, dr, dv in zip(v0, r, v, strict=True)]
        return _from_vector(jumped, params.n_layers)

    usable = v_norm > 0 and math.isfinite(r_norm / v_norm)
    return (-r_norm / v_norm if usable else None), jump_to


def squarem_m_step(stats: DGMMStats, x: Any, reg_covar: float = 1e-6, *,
                   e_step_fn: Callable[[Any, DGMMParams], DGMMStats] | None = None,
                   n_cycles: int = 1) -> DGMMParams:
    """Monotone SQUAREM cycles (Varadhan & Roland 2008) in the place of EM's M-step.

    The EM loop's E-step at ``theta0`` gives ``stats``; the cycle takes two EM steps
    ``theta1 = M(theta0)``, ``theta2 = M(theta1)`` (one more E-step, at ``theta1``),
    extrapolates ``theta' = theta0 - 2 a r + a^2 v`` as :func:`accelerate` does and evaluates
    the likelihood there (a second E-step). If ``L(theta') >= L(theta1)``, it returns
    ``M(theta')``, else ``theta2``. Either way the returned parameters' likelihood is at least
    ``L(theta1) >= L(theta0)`` (an EM step never lowers it), so the loop's history is monotone
    and its convergence test applies to cycles. Two extra E-steps per cycle, none wasted: the
    loop's next E-step is the one at the returned parameters. Where EM creeps (on the section
    3.1 setting of Selosse et al. 2020, noise variances of a deeper layer shrink by a tenth of
    a percent per step), one cycle moves as far as many EM steps.

    With ``n_cycles`` > 1 the cycles follow one another (an E-step at each cycle's result
    starts the next), so one iteration of the EM loop covers ``n_cycles`` cycles and its
    convergence test measures their summed gain: SQUAREM's gains are uneven from cycle to
    cycle (rejected extrapolations, then long jumps), and their sum over a window tells a
    creep from a stop more reliably than one cycle's.

    Parameters
    ----------
    stats : DGMMStats
        The E-step at the current parameters (``stats.params``).
    x : Tensor or any data ``e_step_fn`` accepts
    reg_covar : float
    e_step_fn : callable ``(x, params) -> DGMMStats``, optional
        Default :func:`e_step`; pass the loop's own (summed over batches or ranks), so every
        rank takes the same decision.
    n_cycles : int, default 1
        Cycles per call (``3 n_cycles - 1`` E-steps).

    Returns
    -------
    DGMMParams
    """
    step_at = e_step if e_step_fn is None else e_step_fn
    params = _squarem_cycle(stats, x, reg_covar, step_at)
    for _ in range(n_cycles - 1):
        params = _squarem_cycle(step_at(x, params), x, reg_covar, step_at)
    return params


def _squarem_cycle(stats: DGMMStats, x: Any, reg_covar: float,
                   step_at: Callable[[Any, DGMMParams], DGMMStats]) -> DGMMParams:
    """One cycle of :func:`squarem_m_step` from the E-step ``stats``."""
    params = stats.params
    first = m_step(stats, reg_covar)
    stats1 = step_at(x, first)
    second = m_step(stats1, reg_covar)
    reached = float(stats1.log_likelihood) / stats1.n_samples
    step_length, jump_to = _extrapolation(params, first, second)
    if step_length is None or step_length >= -1.0:
        return second  # a = -1: the extrapolation is theta2 itself
    try:
        jump_stats = step_at(x, jump_to(step_length))
        value = float(jump_stats.log_likelihood) / jump_stats.n_samples
        if math.isfinite(value) and value >= reached:
            return m_step(jump_stats, reg_covar)
    except (ValueError, RuntimeError, torch.linalg.LinAlgError):
        pass
    return second


# ---------------------------------------------------------------------------------------------
# Initialisation
# ---------------------------------------------------------------------------------------------


def _factor_analyser(inputs: Tensor, resp: Tensor, rank: int,
                     floor: float) -> tuple[Tensor, Tensor, Tensor]:
    """Weighted probabilistic PCA per component: eta (G, p), loadings (G, p, r), psi (G, p)."""
    mass = resp.sum(0).clamp_min(1e-12)
    eta = (resp.T @ inputs) / mass[:, None]
    centred = inputs[None] - eta[:, None]  # (G, N, p)
    cov = (resp.T[:, :, None] * centred).transpose(-1, -2) @ centred / mass[:, None, None]
    eigvals, eigvecs = torch.linalg.eigh(0.5 * (cov + cov.transpose(-1, -2)))
    eigvals, eigvecs = eigvals.flip(-1), eigvecs.flip(-1)
    residual = eigvals[:, rank:].mean(-1, keepdim=True) if inputs.shape[1] > rank else 0.0
    spread = (eigvals[:, :rank] - residual).clamp_min(floor).sqrt()
    loadings = eigvecs[:, :, :rank] * spread[:, None, :]
    noise = (cov.diagonal(dim1=-2, dim2=-1) - loadings.square().sum(-1)).clamp_min(floor)
    return eta, loadings, noise


def _posterior_mean(inputs: Tensor, labels: Tensor, eta: Tensor, loadings: Tensor,
                    noise: Tensor) -> Tensor:
    """``E[z | input, g]`` of a factor analyser, each row under its own component (N, r).

    The r x r systems ``I + Lambda^T Psi^-1 Lambda`` are solved in float64 (they are positive
    definite, but in float32 their rounding can make them singular).
    """
    wide = torch.float64
    scaled = loadings.to(wide) / noise.to(wide)[:, :, None]  # Psi^-1 Lambda, (G, p, r)
    eye = torch.eye(loadings.shape[-1], dtype=wide, device=inputs.device)
    precision = eye + loadings.to(wide).transpose(-1, -2) @ scaled  # (G, r, r)
    gain = torch.linalg.solve(precision, scaled.transpose(-1, -2)).to(inputs.dtype)  # (G, r, p)
    return (gain[labels] @ (inputs - eta[labels])[:, :, None]).squeeze(-1)


def initial_params(
    x: Tensor,
    n_components: Sequence[int],
    n_factors: Sequence[int],
    method: str,
    generator: torch.Generator,
    reg_covar: float = 1e-6,
) -> DGMMParams:
    """Layer-wise start: cluster the layer's input, fit a factor analyser per cluster, and pass
    the posterior mean scores up as the next layer's input.

    Layer 1 clusters ``x`` into G_1 groups with ``method`` (see
    :func:`~ppl_mixtures.inference.init.initial_responsibilities`), fits a weighted PPCA of
    rank r_1 in each, and computes ``E[z^(1) | x, g]`` under each row's group; layer 2 does
    the same on those scores, and so on. Noise variances are floored at ``1e-3`` of the
    layer input's mean variance and at ``reg_covar`` (on the first layer scaled down for data
    of tiny variance, :func:`~ppl_mixtures.inference.em.gmm.variance_floor`).

    Returns
    -------
    DGMMParams
    """
    inputs = x
    params = DGMMParams([], [], [], [])
    for layer, (size, rank) in enumerate(zip(n_components, n_factors, strict=True)):
        resp = initial_responsibilities(inputs, size, method, generator)
        spread = float(inputs.var(0).mean()) if inputs.shape[0] > 1 else 0.0
        # the first layer's floor follows the data's scale; the scores above are unit-scale
        scaled = variance_floor(reg_covar, spread, float(inputs.mean(0).square().mean()),
                                inputs.dtype)
        floor = max(scaled if layer == 0 else reg_covar, 1e-3 * spread)
        eta, loadings, noise = _factor_analyser(inputs, resp, rank, floor)
        weights = resp.mean(0) + _MASS_FLOOR_FACTOR * torch.finfo(x.dtype).eps
        params.weights.append(weights / weights.sum())
        params.eta.append(eta)
        params.loadings.append(loadings)
        params.noise_variances.append(noise)
        inputs = _posterior_mean(inputs, resp.argmax(-1), eta, loadings, noise)
    return params


def _procrustes_match(reference: Tensor, points: Tensor, generator: torch.Generator,
                      n_starts: int = 8) -> Tensor:
    """Orthogonal ``Q`` (r, r) and matching that bring ``points @ Q`` onto ``reference``.

    ``reference`` and ``points`` are (k, r) cluster centres of two score clouds. For ``k <= 7``
    every matching is tried (k! orthogonal Procrustes problems); above, Hungarian matching and
    Procrustes alternate from ``n_starts`` random rotations. Returns the best ``Q``.
    """

    from scipy.optimize import linear_sum_assignment

    def procrustes(target: Tensor) -> tuple[Tensor, float]:
        u, _, vh = torch.linalg.svd(points.T @ target)
        rotation = u @ vh
        return rotation, float((points @ rotation - target).square().sum())

    k, rank = reference.shape
    best: tuple[float, Tensor] | None = None
    if k <= 7:
        for order in itertools.permutations(range(k)):
            rotation, residual = procrustes(reference[list(order)])
            if best is None or residual < best[0]:
                best = (residual, rotation)
        return best[1]
    for _ in range(n_starts):
        gaussian = torch.randn(rank, rank, generator=generator, dtype=torch.float64)
        rotation = torch.linalg.qr(gaussian)[0].to(reference)
        for _ in range(50):
            cost = torch.cdist(points @ rotation, reference).square().cpu().numpy()
            _, order = linear_sum_assignment(cost)
            rotation, residual = procrustes(reference[torch.as_tensor(order)])
        if best is None or residual < best[0]:
            best = (residual, rotation)
    return best[1]


def realign_scores(x: Tensor, params: DGMMParams, generator: torch.Generator,
                   reg_covar: float = 1e-6) -> DGMMParams:
    """Keep the first layer, put its components' scores in one frame, restart the layers above.

    Under the model every first-layer component maps the *same* score distribution
    ``z^(1)`` (a mixture over the deeper paths) to the data (eq. 2); a layer-wise start
    estimates each component's scores in its own arbitrary frame, and the layers above then
    see G_1 rotated copies of one mixture, which EM does not untangle (the empty paths and
    low deeper-layer ARI of Selosse et al. 2020). Here, for each first-layer component g (rows
    assigned to it by their most probable path):

    1. whiten its posterior-mean scores: ``w = W_g (E[z^(1) | x, g] - m_g)``;
    2. cluster them into ``k = G_2 ... G_h`` groups (k-means) and find the orthogonal
       ``Q_g`` that maps the group centres onto component 0's (:func:`_procrustes_match`);
    3. reparametrise component g's factor model by the affine change ``z' = Q_g^T w``
       (``Lambda_g <- Lambda_g A_g^-1``, ``eta_g <- eta_g + Lambda_g m_g``, with
       ``A_g = Q_g^T W_g``): the first layer's likelihood is unchanged.

    The aligned scores of all rows then start layers 2..h by :func:`initial_params` (k-means
    and a PPCA per cluster). Layers 2..h start afresh, so the likelihood may go down; run EM
    afterwards.

    Parameters
    ----------
    x : Tensor, shape (n_samples, n_features)
    params : DGMMParams
        A fit whose first layer is trusted (e.g. after :func:`anneal` and EM).
    generator : torch.Generator
    reg_covar : float

    Returns
    -------
    DGMMParams
    """
    sizes, factors = params.n_components, params.n_factors
    if len(sizes) < 2:
        return params
    resp, _ = responsibilities(x, params)
    first = resp.reshape(x.shape[0], sizes[0], -1).sum(-1).argmax(-1)
    eta, loadings, noise = params.eta[0], params.loadings[0], params.noise_variances[0]
    scores = _posterior_mean(x, first, eta, loadings, noise)
    n_groups = math.prod(sizes[1:])
    new_eta, new_loadings = eta.clone(), loadings.clone()
    aligned = torch.zeros_like(scores)
    reference = None
    for g in range(sizes[0]):
        rows = first == g
        if int(rows.sum()) <= max(n_groups, factors[0]):
            continue  # too few rows to estimate a frame: keep the component as it is
        own = scores[rows]
        centre = own.mean(0)
        cov = torch.cov(own.T) + reg_covar * torch.eye(own.shape[1], dtype=own.dtype,
                                                       device=own.device)
        values, vectors = torch.linalg.eigh(cov)
        whitening = vectors @ torch.diag(values.rsqrt()) @ vectors.T
        white = (own - centre) @ whitening
        labels = initial_responsibilities(white, n_groups, "kmeans", generator)
        centres = (labels.T @ white) / labels.sum(0).clamp_min(1.0)[:, None]
        if reference is None:
            reference, rotation = centres, torch.eye(own.shape[1], dtype=own.dtype,
                                                     device=own.device)
        else:
            rotation = _procrustes_match(reference, centres, generator)
        change = rotation.T @ whitening  # z' = change (z - centre)
        aligned[rows] = (own - centre) @ change.T
        new_loadings[g] = loadings[g] @ torch.linalg.inv(change)
        new_eta[g] = eta[g] + loadings[g] @ centre
    deeper = initial_params(aligned, sizes[1:], factors[1:], "kmeans", generator, reg_covar)
    return DGMMParams([params.weights[0], *deeper.weights], [new_eta, *deeper.eta],
                      [new_loadings, *deeper.loadings], [noise, *deeper.noise_variances])


__all__ = [
    "DGMMStats",
    "accelerate",
    "anneal",
    "realign_scores",
    "e_step",
    "initial_params",
    "m_step",
    "model_mean",
    "responsibilities",
    "squarem_m_step",
]
