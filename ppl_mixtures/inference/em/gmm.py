"""Pure E- and M-steps of EM for the Gaussian mixture, all five covariance types.

The E-step takes its log densities from :func:`ppl_mixtures.models.gmm.log_joint` (the same
code the Pyro model is tested against) and returns *sufficient statistics*, so that streaming
and distributed EM can add them up over batches or ranks before one M-step.

Second moments are accumulated about the current means (``shift``) rather than about the
origin: near convergence the new means hardly move, so ``S/N_k - m m^T`` loses no digits even
in float32 when clusters lie far from the origin.

Float32 fits keep their data and their density passes in float32 but their statistics in
float64: sums are accumulated in float64; full second moments are taken in each component's
whitened frame (``y = L_k^-1 (x - mu_k)``, where a float32 product loses no more than it does
on well-conditioned data) and mapped back in float64, or, one component at a time (large
K D^2), about the means from float64 rows; tied ones from float64 rows; and the M-step runs in
float64 before rounding the parameters once to float32. On ill-conditioned data this keeps
EM as monotone as float32 parameters allow (measured in ``tests/inference/test_numerics.py``).

The passes over the rows (per covariance family, threaded over ranges of chunks), the
statistics they return (:class:`GMMStats`) and the M-step's cached Cholesky factors
(:func:`factors_of`) live in :mod:`ppl_mixtures.inference.em._gmm_kernels`.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from ppl_mixtures.inference.em._gmm_kernels import (  # noqa: F401  (GMMStats, factors_of, scoring_log_joint: API)
    GMMStats,
    _dense_e_step,
    _diagonal_e_step,
    _remember_factors,
    _small_diagonal_e_step,
    _takes_numpy,
    _total_weight,
    factors_of,
    pooled,
    scoring_log_joint,
)
from ppl_mixtures.models import gmm
from ppl_mixtures.models.gmm import DIAGONAL_TYPES, GMMParams, _row_chunks, log_joint

#: Floor on each component's total responsibility, as scikit-learn adds (10 * eps).
_NK_FLOOR_FACTOR = 10.0
#: Entries of the (rows, K + D) tables of one E-step block (2^18: 2 MB in float64).
_E_STEP_BLOCK_ELEMENTS = 1 << 18
#: Fewest rows of an E-step block (unless the budget above is set lower, as tests do).
_MIN_BLOCK_ROWS = 256
#: Below this mean per-feature variance of the data, ``reg_covar`` shrinks with the variance
#: (:func:`variance_floor`); at and above it, ``reg_covar`` is scikit-learn's absolute floor.
SMALL_DATA_VARIANCE = 1e-3


class DataScaleWarning(UserWarning):
    """The data's variance is so small that ``reg_covar`` was scaled down with it."""


def variance_floor(reg_covar: float, data_variance: float, mean_square: float = 0.0,
                   dtype: torch.dtype = torch.float64) -> float:
    """The floor that EM adds to every variance: ``reg_covar``, scaled for tiny data.

    ``reg_covar`` is an absolute variance (scikit-learn's meaning), which on data of mean
    per-feature variance ``v`` at or above :data:`SMALL_DATA_VARIANCE` is used as given. Below,
    it shrinks in proportion, ``reg_covar * v / SMALL_DATA_VARIANCE``: otherwise the default
    1e-6 swamps data measured in small units (``X * 1e-6`` has ``v`` = 1e-12) and every
    component blurs into one. So the fit of ``c X`` is the fit of ``X``, scaled, for any small
    ``c``. A variance that the rounding of the data could produce (every row the same, up to
    ``100 eps`` of its values) gives no scale to follow: ``reg_covar`` is kept.

    Parameters
    ----------
    reg_covar : float
    data_variance : float
        Mean over features of the data's variance.
    mean_square : float, default 0
        Mean over features of the square of the data's mean (how large the values are).
    dtype : torch.dtype, default float64
        The data's dtype (its rounding).
    """
    rounding = (_RESOLUTION * torch.finfo(dtype).eps) ** 2 * max(mean_square, 0.0)
    if not max(rounding, 0.0) < data_variance < SMALL_DATA_VARIANCE:  # NaN falls here too
        return reg_covar
    return reg_covar * data_variance / SMALL_DATA_VARIANCE


#: A variance below ``(100 eps |mean|)^2`` may be rounding alone (:func:`variance_floor`).
_RESOLUTION = 100.0


def warn_small_scale(reg_covar: float, data_variance: float, mean_square: float = 0.0,
                     dtype: torch.dtype = torch.float64, name: str = "X") -> None:
    """A :class:`DataScaleWarning` when :func:`variance_floor` scales ``reg_covar`` down."""
    floor = variance_floor(reg_covar, data_variance, mean_square, dtype)
    if reg_covar > 0 and floor < reg_covar:
        warnings.warn(
            f"{name} has a mean per-feature variance of {data_variance:.3g}, below "
            f"{SMALL_DATA_VARIANCE:g}: reg_covar={reg_covar:g} would swamp it, so the floor on "
            f"every variance is scaled down with the data to {floor:.3g}. Standardise {name} "
            "(e.g. sklearn.preprocessing.StandardScaler) to fit on the usual scale",
            DataScaleWarning, stacklevel=4,
        )


def data_spread(resp_sum: Tensor, first_moment: Tensor, second_diagonal: Tensor,
                shift: Tensor) -> tuple[float, float]:
    """Mean per-feature variance and squared mean of all the data, from sums about ``shift``.

    The variance is ``sum_k [diag(S_k) + 2 (s_k - m) * F_k + N_k (s_k - m)^2] / N`` with the
    data mean ``m = sum_k (N_k s_k + F_k) / N``: the responsibilities of every row add up to
    one, so this is the variance of the rows whatever the responsibilities.

    Parameters
    ----------
    resp_sum : Tensor, shape (K,)
    first_moment : Tensor, shape (K, D)
    second_diagonal : Tensor, shape (K, D), or (D,) pooled over the components (tied)
    shift : Tensor, shape (K, D) or (D,)

    Returns
    -------
    variance, mean_square : float
        Both averaged over features.
    """
    wide = torch.float64
    resp_sum, first = resp_sum.to(wide), first_moment.to(wide)
    shift = shift.to(wide).expand_as(first)
    total = resp_sum.sum()
    mean = (resp_sum[:, None] * shift + first).sum(0) / total
    offset = shift - mean
    second_diagonal = second_diagonal.to(wide)
    if second_diagonal.dim() == 1:  # pooled (tied)
        spread = (2.0 * offset * first + resp_sum[:, None] * offset.square()).sum(0)
        spread += second_diagonal
    else:
        spread = (second_diagonal + 2.0 * offset * first
                  + resp_sum[:, None] * offset.square()).sum(0)
    return float((spread / total).mean()), float(mean.square().mean())


def stats_floor(reg_covar: float, resp_sum: Tensor, first_moment: Tensor,
                second_diagonal: Tensor, shift: Tensor) -> float:
    """:func:`variance_floor` for the data summed in an E-step's statistics."""
    variance, mean_square = data_spread(resp_sum, first_moment, second_diagonal, shift)
    return variance_floor(reg_covar, variance, mean_square, shift.dtype)


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
    one batched product per (rows, K, D) chunk). The chunks' sums are added in float64
    whatever the data's dtype.

    Parameters
    ----------
    x : Tensor, shape (N, D)
    resp : Tensor, shape (N, K)
    shift : Tensor, shape (K, D)
    full : bool
        Whole (K, D, D) second moments when True, their diagonals (K, D) otherwise.

    Returns
    -------
    first, second : Tensor of float64
    """
    n_components, n_features = shift.shape
    wide = torch.float64
    first = x.new_zeros(n_components, n_features, dtype=wide)
    if full:
        second = x.new_zeros(n_components, n_features, n_features, dtype=wide)
        rows = _second_moment_rows(n_features)
        for start in range(0, x.shape[0], rows):
            block, block_resp = x[start:start + rows], resp[start:start + rows]
            for k in range(n_components):
                diff = block - shift[k]
                weighted = diff * block_resp[:, k, None]
                first[k] += weighted.sum(0)
                if x.dtype == wide:
                    second[k].addmm_(weighted.T, diff)
                else:
                    second[k] += weighted.T @ diff
        return first, second
    second = x.new_zeros(n_components, n_features, dtype=wide)
    for rows in _row_chunks(x.shape[0], n_components, n_features):
        diff = x[rows][None, :, :] - shift[:, None, :]  # (K, n, D)
        weighted = diff * resp[rows].T[:, :, None]
        first += weighted.sum(1)
        second += (weighted * diff).sum(1)
    return first, second


def _second_moment_rows(n_features: int) -> int:
    """Rows per chunk of the full second moments: about 2^17 entries, at least 512 rows."""
    return max(512, (1 << 17) // n_features)


def e_step_block_rows(n_components: int, n_features: int = 0) -> int:
    """Rows of one E-step block: its (rows, K + D) tables hold about 2^18 entries.

    Blocks are sized by rows under a memory budget (``_E_STEP_BLOCK_ELEMENTS`` numbers
    for the (rows, K) log densities and responsibilities and the (rows, D) rows and squares),
    at least ``_MIN_BLOCK_ROWS`` rows, so that one block's matrix products stay large
    whatever K and D, and memory beyond the data is one block's, never N x K.
    """
    rows = _E_STEP_BLOCK_ELEMENTS // max(1, n_components + n_features)
    fewest = min(_MIN_BLOCK_ROWS, _E_STEP_BLOCK_ELEMENTS // max(1, n_components))
    return max(fewest, rows, 1)


def e_step(x: Tensor, params: GMMParams, weights: Tensor | None = None) -> GMMStats:
    """E-step: responsibilities at ``params``, reduced to sufficient statistics.

    One pass over the rows computes the log densities and the statistics together, and the
    (N, K) tables of log densities and responsibilities never exist whole: beyond the data,
    memory is bounded by one block of rows (``bench/scale.py`` measures the peak per point;
    see ``docs/scaling.md``). The diagonal types run over blocks of
    :func:`e_step_block_rows` rows (matrix products); tied and full factorise their
    covariances once per E-step and whiten chunks of rows.

    Parameters
    ----------
    x : Tensor, shape (n_samples, n_features)
    params : GMMParams
        The current parameters; their means are the ``shift`` of the moments.
    weights : Tensor, shape (n_samples,), optional
        Sample weights: every sum over rows is weighted (``r_nk`` becomes ``w_n r_nk``,
        ``n_samples`` is ``sum_n w_n``), so integer weights give the statistics of repeated
        rows. None (the default) adds no work.

    Returns
    -------
    GMMStats
        The statistics of all of ``x``, as one block would give them.
    """
    if params.covariance_type not in DIAGONAL_TYPES:
        # chunked inside, its memory bounded by one chunk; one factorisation per E-step
        return _dense_e_step(x, params, weights)
    if _takes_numpy(x, params, weights):  # NumPy: torch's fixed cost per op dominates
        return _small_diagonal_e_step(x, params, weights)
    # blocks of rows, contiguous ranges of them over torch's threads
    return _diagonal_e_step(x, params, weights,
                            rows=e_step_block_rows(params.n_components, x.shape[1]))


def stats_from_responsibilities(x: Tensor, resp: Tensor, sample_log_likelihood: Tensor,
                                params: GMMParams, weights: Tensor | None = None) -> GMMStats:
    """The second half of the E-step: sufficient statistics from the responsibilities.

    Parameters
    ----------
    x : Tensor, shape (n_samples, n_features)
    resp : Tensor, shape (n_samples, n_components)
    sample_log_likelihood : Tensor, shape (n_samples,)
    params : GMMParams
        The E-step's parameters (its means are the ``shift`` of the moments).
    weights : Tensor, shape (n_samples,), optional
        Sample weights, multiplied into the responsibilities and the log-likelihoods once.

    Returns
    -------
    GMMStats
    """
    if weights is not None:
        resp, sample_log_likelihood = resp * weights[:, None], sample_log_likelihood * weights
    full = params.covariance_type not in DIAGONAL_TYPES
    first, second = moments(x, resp, params.means, full)
    second = pooled(second, params.covariance_type)
    wide = torch.float64
    # the likelihood in the data's dtype: the EM loop's rounding slack follows its dtype
    return GMMStats(_total_weight(x.shape[0], weights),
                    sample_log_likelihood.sum(dtype=wide).to(x.dtype),
                    resp.sum(0, dtype=wide), first, second, params.means)


def m_step(stats: GMMStats, covariance_type: str, reg_covar: float = 1e-6,
           floor: float | None = None) -> GMMParams:
    """M-step: the parameters that maximise the expected complete log-likelihood.

    The updates of Balshaw (2022): ``pi_k = N_k / N``, ``mu_k = sum_n r_nk x_n / N_k`` and the
    responsibility-weighted covariance under each constraint; ``reg_covar`` is added to every
    variance so that no component can shrink onto a single point (the singularity of
    Balshaw 2022, section 2). It runs in float64 and rounds the parameters once to their
    dtype (that of ``stats.shift``).

    Parameters
    ----------
    stats : GMMStats
    covariance_type : str
    reg_covar : float
        Non-negative value added to the diagonal of every covariance; scaled down on data of
        tiny variance (:func:`variance_floor`).
    floor : float, optional
        That floor when the caller already has it (:func:`stats_floor` of an earlier E-step
        of the same data: the data's variance does not depend on the responsibilities), so
        it is not taken from ``stats`` again.

    Returns
    -------
    GMMParams
    """
    dtype, wide = stats.shift.dtype, torch.float64
    eps = torch.finfo(dtype).eps
    full = covariance_type not in DIAGONAL_TYPES
    second_moment = stats.second_moment.to(wide)
    if floor is None:
        diagonal = second_moment.diagonal(dim1=-2, dim2=-1) if full else second_moment
        floor = stats_floor(reg_covar, stats.resp_sum, stats.first_moment, diagonal,
                            stats.shift)
    reg_covar = floor
    resp_sum = stats.resp_sum.to(wide) + _NK_FLOOR_FACTOR * eps
    weights = (resp_sum / resp_sum.sum()).to(dtype)
    offset = stats.first_moment.to(wide) / resp_sum[:, None]  # new mean - shift, (K, D)
    means = (stats.shift.to(wide) + offset).to(dtype)
    if not full:
        central = second_moment / resp_sum[:, None] - offset.square()  # (K, D)
        if covariance_type == "diag":
            covariances = central + reg_covar
        elif covariance_type == "spherical":
            covariances = central.mean(-1) + reg_covar
        else:  # tied_diag
            covariances = (resp_sum[:, None] * central).sum(0) / resp_sum.sum() + reg_covar
        covariances = covariances.clamp_min(reg_covar or eps).to(dtype)
        return GMMParams(weights, means, covariances, covariance_type)
    if covariance_type == "tied":  # pooled: (S - sum_k N_k m_k m_k^T) / N
        central = (second_moment - (offset.T * resp_sum) @ offset
                   ) / resp_sum.sum()
    else:  # S / N_k - m m^T, in place on a fresh (K, D, D) tensor (three passes, not six)
        central = second_moment / resp_sum[:, None, None]
        central.sub_(offset[:, :, None] * offset[:, None, :])
    if not torch.equal(central, central.transpose(-1, -2)):  # summed stats may not be
        central = 0.5 * (central + central.transpose(-1, -2))
    central.diagonal(dim1=-2, dim2=-1).add_(reg_covar)
    covariances, factors, jitter, failing = gmm.factorise(central.to(dtype))
    largest = float(jitter.max())
    if largest > reg_covar > 0:  # reg_covar=0 asks for the exact M-step: no floor to raise
        _warn_jitter(largest, reg_covar, dtype)
    if not bool(failing.any()):  # the next E-step whitens with these factors
        _remember_factors(covariances, factors)
    return GMMParams(weights, means, covariances, covariance_type)


def _warn_jitter(jitter: float, reg_covar: float, dtype: torch.dtype) -> None:
    """Say that the M-step had to add more than ``reg_covar`` to factorise a covariance."""
    if dtype == torch.float64:
        cause = ("some covariances are singular (a component has collapsed onto fewer distinct "
                 "points than features)")
        advice = f"Raise reg_covar to about {jitter:.0e}, or lower n_components"
    else:
        name = str(dtype).replace("torch.", "")
        cause = (f"{name} cannot store these covariances positive definite: their smallest "
                 "eigenvalues fall below its rounding")
        advice = (f"Raise reg_covar to about {jitter:.0e}, or fit with dtype='float64'; EM's "
                  "likelihood may otherwise go down between iterations and end below a "
                  "float64 fit")
    warnings.warn(
        f"With reg_covar={reg_covar:g}, {cause}, so EM added about {jitter:.0e} to their "
        f"diagonals. {advice}",
        gmm.CovarianceJitterWarning, stacklevel=3,
    )


def ensure_positive_definite(covariances: Tensor, max_tries: int = 6) -> Tensor:
    """Add the least jitter, in powers of ten, that makes every matrix factorisable.

    In float32 a rank-deficient component (fewer points than features) comes out of the
    M-step with eigenvalues a few rounding errors below zero, more than a small ``reg_covar``
    can lift. Each failing matrix gets ``10^j * D * eps * mean(diag)`` added to its diagonal,
    starting from j = 0, until its Cholesky factorisation (in float64) succeeds; matrices that
    factorise are returned untouched (:func:`ppl_mixtures.models.gmm.factorise`).

    Parameters
    ----------
    covariances : Tensor, shape (..., D, D)
    """
    return gmm.factorise(covariances, max_tries)[0]


def params_from_responsibilities(
    x: Tensor, resp: Tensor, covariance_type: str, reg_covar: float = 1e-6,
    weights: Tensor | None = None,
) -> GMMParams:
    """Initial parameters from (hard or soft) responsibilities: one M-step.

    ``weights`` (shape (n_samples,), optional): sample weights, multiplied into ``resp``.
    """
    n_components = resp.shape[1]
    if weights is None:
        shift = x.mean(0).expand(n_components, -1)
    else:
        resp = resp * weights[:, None]
        shift = ((weights @ x) / weights.sum()).expand(n_components, -1)
    full = covariance_type not in DIAGONAL_TYPES
    first, second = moments(x, resp, shift, full)
    stats = GMMStats(_total_weight(x.shape[0], weights), x.new_zeros(()), resp.sum(0), first,
                     pooled(second, covariance_type), shift)
    return m_step(stats, covariance_type, reg_covar)
