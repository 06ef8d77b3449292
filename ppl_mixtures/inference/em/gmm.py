"""Pure E- and M-steps of EM for the Gaussian mixture, all five covariance types.

The E-step takes its log densities from :func:`ppl_mixtures.models.gmm.log_joint` (the same
code the Pyro model is tested against) and returns *sufficient statistics*, so that streaming
and distributed EM can add them up over batches or ranks before one M-step.

Second moments are accumulated about the current means (``shift``) rather than about the
origin: near convergence the new means hardly move, so ``S/N_k - m m^T`` loses no digits even
in float32 when clusters lie far from the origin.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ppl_mixtures.inference.em.loop import SummedStats, sum_over_batches
from ppl_mixtures.models.gmm import DIAGONAL_TYPES, GMMParams, _row_chunks, log_joint

#: Floor on each component's total responsibility, as scikit-learn adds (10 * eps).
_NK_FLOOR_FACTOR = 10.0
#: Entries of the (rows, K) tables of one E-step block (2^21: 16 MB in float64).
_E_STEP_BLOCK_ELEMENTS = 1 << 21


@dataclass
class GMMStats(SummedStats):
    """Sufficient statistics of one E-step (sums over samples, so they add across batches).

    Attributes
    ----------
    n_samples, log_likelihood
        See :class:`~ppl_mixtures.inference.em.loop.SummedStats`.
    resp_sum : Tensor, shape (K,)
        ``N_k = sum_n r_nk``.
    first_moment : Tensor, shape (K, D)
        ``sum_n r_nk (x_n - shift_k)``.
    second_moment : Tensor
        ``sum_n r_nk (x_n - shift_k)(x_n - shift_k)^T``, shape (K, D, D), for tied and full;
        its diagonal only, shape (K, D), for the diagonal types.
    shift : Tensor, shape (K, D)
        The means of the E-step's parameters, about which moments are taken (the same in
        every batch and on every rank, so it is kept, not added).
    """

    summed_fields = (*SummedStats.summed_fields, "resp_sum", "first_moment", "second_moment")

    resp_sum: Tensor
    first_moment: Tensor
    second_moment: Tensor
    shift: Tensor


def responsibilities(x: Tensor, params: GMMParams) -> tuple[Tensor, Tensor]:
    """Posterior probabilities of the components (Balshaw 2022, eq. 17).

    Returns
    -------
    resp : Tensor, shape (n_samples, n_components)
    sample_log_likelihood : Tensor, shape (n_samples,)
    """
    joint = log_joint(x, params)
    norm = torch.logsumexp(joint, dim=-1)
    return torch.exp(joint - norm[:, None]), norm


def moments(x: Tensor, resp: Tensor, shift: Tensor, full: bool) -> tuple[Tensor, Tensor]:
    """Weighted first and second moments of ``x`` about ``shift``, chunked over rows.

    Diagonal second moments take one (K, rows, D) product per chunk. Whole (K, D, D) ones
    take one (D, rows) @ (rows, D) product per component and chunk of
    :func:`_second_moment_rows` rows (at least 512), added in place: a chunk small enough for
    the cache, large enough that adding to the K D^2 output costs little next to the product
    (measured on one core: 2.2x faster at K = 64, D = 32 and 7.5x at K = 16, D = 784 than
    one batched product per (rows, K, D) chunk).

    Parameters
    ----------
    x : Tensor, shape (N, D)
    resp : Tensor, shape (N, K)
    shift : Tensor, shape (K, D)
    full : bool
        Whole (K, D, D) second moments when True, their diagonals (K, D) otherwise.
    """
    n_components, n_features = shift.shape
    first = x.new_zeros(n_components, n_features)
    if full:
        second = x.new_zeros(n_components, n_features, n_features)
        rows = _second_moment_rows(n_features)
        for start in range(0, x.shape[0], rows):
            block, block_resp = x[start:start + rows], resp[start:start + rows]
            for k in range(n_components):
                diff = block - shift[k]
                weighted = diff * block_resp[:, k, None]
                first[k] += weighted.sum(0)
                second[k].addmm_(weighted.T, diff)
        return first, second
    second = x.new_zeros(n_components, n_features)
    for rows in _row_chunks(x.shape[0], n_components, n_features):
        diff = x[rows][None, :, :] - shift[:, None, :]  # (K, n, D)
        weighted = diff * resp[rows].T[:, :, None]
        first += weighted.sum(1)
        second += (weighted * diff).sum(1)
    return first, second


def _second_moment_rows(n_features: int) -> int:
    """Rows per chunk of the full second moments: about 2^17 entries, at least 512 rows."""
    return max(512, (1 << 17) // n_features)


def e_step_block_rows(n_components: int) -> int:
    """Rows of one E-step block, so that its (rows, K) tables hold about 2^21 entries."""
    return max(1, _E_STEP_BLOCK_ELEMENTS // n_components)


def _e_step_block(x: Tensor, params: GMMParams) -> GMMStats:
    resp, sample_ll = responsibilities(x, params)
    return stats_from_responsibilities(x, resp, sample_ll, params)


def e_step(x: Tensor, params: GMMParams) -> GMMStats:
    """E-step: responsibilities at ``params``, reduced to sufficient statistics.

    Runs over blocks of :func:`e_step_block_rows` rows and adds their statistics, so the
    (N, K) tables of log densities and responsibilities never exist whole: beyond the data,
    memory is bounded by one block (``bench/scale.py`` measures the peak per point; see
    ``docs/scaling.md``).

    Parameters
    ----------
    x : Tensor, shape (n_samples, n_features)
    params : GMMParams
        The current parameters; their means are the ``shift`` of the moments.

    Returns
    -------
    GMMStats
        The statistics of all of ``x``, as one block would give them.
    """
    rows = e_step_block_rows(params.n_components)
    if x.shape[0] <= rows:
        return _e_step_block(x, params)
    return sum_over_batches(_e_step_block)(x.split(rows), params)


def stats_from_responsibilities(x: Tensor, resp: Tensor, sample_log_likelihood: Tensor,
                                params: GMMParams) -> GMMStats:
    """The second half of the E-step: sufficient statistics from the responsibilities.

    Parameters
    ----------
    x : Tensor, shape (n_samples, n_features)
    resp : Tensor, shape (n_samples, n_components)
    sample_log_likelihood : Tensor, shape (n_samples,)
    params : GMMParams
        The E-step's parameters (its means are the ``shift`` of the moments).

    Returns
    -------
    GMMStats
    """
    full = params.covariance_type not in DIAGONAL_TYPES
    first, second = moments(x, resp, params.means, full)
    return GMMStats(float(x.shape[0]), sample_log_likelihood.sum(), resp.sum(0), first, second,
                    params.means)


def m_step(stats: GMMStats, covariance_type: str, reg_covar: float = 1e-6) -> GMMParams:
    """M-step: the parameters that maximise the expected complete log-likelihood.

    The updates of Balshaw (2022): ``pi_k = N_k / N``, ``mu_k = sum_n r_nk x_n / N_k`` and the
    responsibility-weighted covariance under each constraint; ``reg_covar`` is added to every
    variance so that no component can shrink onto a single point (the singularity of
    Balshaw 2022, section 2).

    Parameters
    ----------
    stats : GMMStats
    covariance_type : str
    reg_covar : float
        Non-negative value added to the diagonal of every covariance.

    Returns
    -------
    GMMParams
    """
    eps = torch.finfo(stats.resp_sum.dtype).eps
    resp_sum = stats.resp_sum + _NK_FLOOR_FACTOR * eps
    weights = resp_sum / resp_sum.sum()
    offset = stats.first_moment / resp_sum[:, None]  # new mean - shift, (K, D)
    means = stats.shift + offset
    if covariance_type in DIAGONAL_TYPES:
        central = stats.second_moment / resp_sum[:, None] - offset.square()  # (K, D)
        if covariance_type == "diag":
            covariances = central + reg_covar
        elif covariance_type == "spherical":
            covariances = central.mean(-1) + reg_covar
        else:  # tied_diag
            covariances = (resp_sum[:, None] * central).sum(0) / resp_sum.sum() + reg_covar
        return GMMParams(weights, means, covariances.clamp_min(reg_covar or eps), covariance_type)
    central = stats.second_moment / resp_sum[:, None, None] - offset[:, :, None] * offset[:, None, :]
    if covariance_type == "tied":
        central = (resp_sum[:, None, None] * central).sum(0) / resp_sum.sum()
    central = 0.5 * (central + central.transpose(-1, -2))
    eye = torch.eye(central.shape[-1], dtype=central.dtype, device=central.device)
    covariances = ensure_positive_definite(central + reg_covar * eye)
    return GMMParams(weights, means, covariances, covariance_type)


def ensure_positive_definite(covariances: Tensor, max_tries: int = 6) -> Tensor:
    """Add the least jitter, in powers of ten, that makes every matrix factorisable.

    In float32 a rank-deficient component (fewer points than features) comes out of the
    M-step with eigenvalues a few rounding errors below zero, more than a small ``reg_covar``
    can lift. Each failing matrix gets ``10^j * D * eps * mean(diag)`` added to its diagonal,
    starting from j = 0, until its Cholesky factorisation (in float64) succeeds; matrices that
    factorise are returned untouched.

    Parameters
    ----------
    covariances : Tensor, shape (..., D, D)
    """
    n_features = covariances.shape[-1]
    eye = torch.eye(n_features, dtype=covariances.dtype, device=covariances.device)
    scale = covariances.diagonal(dim1=-2, dim2=-1).mean(-1).abs().clamp_min(1e-30)
    jitter_unit = n_features * torch.finfo(covariances.dtype).eps * scale
    for attempt in range(max_tries + 1):
        info = torch.linalg.cholesky_ex(covariances.double())[1]
        failing = info != 0
        if not bool(failing.any()) or attempt == max_tries:
            return covariances
        jitter = torch.where(failing, jitter_unit * 10.0**attempt, torch.zeros_like(scale))
        covariances = covariances + jitter[..., None, None] * eye
    return covariances


def params_from_responsibilities(
    x: Tensor, resp: Tensor, covariance_type: str, reg_covar: float = 1e-6
) -> GMMParams:
    """Initial parameters from (hard or soft) responsibilities: one M-step."""
    n_components = resp.shape[1]
    shift = x.mean(0).expand(n_components, -1)
    full = covariance_type not in DIAGONAL_TYPES
    first, second = moments(x, resp, shift, full)
    stats = GMMStats(float(x.shape[0]), x.new_zeros(()), resp.sum(0), first, second, shift)
    return m_step(stats, covariance_type, reg_covar)
