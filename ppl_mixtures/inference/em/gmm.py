"""Pure E- and M-steps of EM for the Gaussian mixture, all five covariance types.

The E-step takes its log densities from :func:`ppl_mixtures.models.gmm.log_joint` (the same
code the Pyro model is tested against) and returns *sufficient statistics*, so that streaming
and distributed EM can add them up over batches or ranks before one M-step.

Second moments are accumulated about the current means (``shift``) rather than about the
origin: near convergence the new means hardly move, so ``S/N_k - m m^T`` loses no digits even
in float32 when clusters lie far from the origin.

Float32 fits keep their data and their (N, K, D) passes in float32 but their statistics in
float64: sums are accumulated in float64, tied and full second moments are taken in each
component's whitened frame (``y = L_k^-1 (x - mu_k)``, where a float32 product loses no more
than it does on well-conditioned data) and mapped back in float64, and the M-step runs in
float64 before rounding the parameters once to float32. On ill-conditioned data this keeps
EM as monotone as float32 parameters allow (measured in ``tests/inference/test_numerics.py``).
Float64 fits run exactly as before.
"""

from __future__ import annotations

import math
import warnings
import weakref
from dataclasses import dataclass

import torch
from torch import Tensor

from ppl_mixtures.inference.em.loop import SummedStats, sum_over_batches
from ppl_mixtures.models import gmm
from ppl_mixtures.models.gmm import DIAGONAL_TYPES, GMMParams, _row_chunks, log_joint

try:  # the BLAS rank-k update, for Gram matrices at half the work of a product
    from scipy.linalg import blas as _blas

    _SYRK = {torch.float64: _blas.dsyrk, torch.float32: _blas.ssyrk}
except ImportError:  # pragma: no cover - scipy comes with scikit-learn
    _SYRK = {}

#: Floor on each component's total responsibility, as scikit-learn adds (10 * eps).
_NK_FLOOR_FACTOR = 10.0
#: Entries of the (rows, K + D) tables of one E-step block (2^18: 2 MB in float64).
_E_STEP_BLOCK_ELEMENTS = 1 << 18
#: Fewest rows of an E-step block (unless the budget above is set lower, as tests do).
_MIN_BLOCK_ROWS = 256
#: Float64 full mixtures with at least this many components (and K D^2 within
#: ``models.gmm._STACKED_WHITENING_MAX``) take their densities and moments from the rows'
#: quadratic features (:func:`_quadratic_e_step`) instead of whitening them.
_OUTER_MIN_COMPONENTS = 4
#: Largest rounding bound ``eps max_n |x_n - c|^2 max_k |P_k|_F`` of the quadratic
#: E-step's distances; above it the whitened E-step runs (:func:`_quadratic_e_step`).
_QUADRATIC_ROUNDING = 1e-6
#: Fewest chunks of rows per thread before a pass is split over threads (_over_row_ranges).
_PARALLEL_MIN_CHUNKS = 8
#: Entries of one (rows, D (D + 1) / 2 + D) table of quadratic features.
_OUTER_ELEMENTS = 1 << 19
#: Fewest rows whitened at once when the K maps are applied one component at a time.
_MIN_WHITENED_ROWS = 256
#: Entries of one (rows, D) chunk whitened one component at a time in float64 (2^21: 16 MB;
#: float32, which keeps the K whitened chunks for its moments, stays at 2^18: larger chunks
#: did not make it faster, 5.6 s either way at D = 784, K = 10, N = 2000).
#: Measured at D = 784, K = 10, N = 2000 on one loaded core: the E-step took 1.7-2.5 s in
#: chunks of 2000 rows against 2.7-3.6 s in chunks of 334 (2^18 entries): the triangular
#: solves and rank-k updates run nearer the speed of a matrix product on taller blocks.
_WHITENED_ELEMENTS = 1 << 21
#: Below this mean per-feature variance of the data, ``reg_covar`` shrinks with the variance
#: (:func:`variance_floor`); at and above it, ``reg_covar`` is scikit-learn's absolute floor.
SMALL_DATA_VARIANCE = 1e-3


#: The float64 Cholesky factors of the last covariances the M-step factorised:
#: ``(weakref to the covariances, their version counter, factors)`` (:func:`factors_of`).
_LAST_FACTORS: list = [None]


def _remember_factors(covariances: Tensor, factors: Tensor) -> None:
    """Keep ``factors`` for :func:`factors_of` while ``covariances`` lives unchanged.

    One entry only (the M-step's latest result, which the next E-step reads): the factors
    are dropped when the covariances are freed, so a fitted estimator holds at most one
    extra set of factors, and a later in-place change of the covariances (their version
    counter moves) is never answered from the cache.
    """
    if covariances.requires_grad:
        return
    entry = (weakref.ref(covariances), covariances._version, factors)
    _LAST_FACTORS[0] = entry
    weakref.finalize(covariances, _forget_factors, entry)


def _forget_factors(entry: tuple) -> None:
    if _LAST_FACTORS[0] is entry:
        _LAST_FACTORS[0] = None


def factors_of(covariances: Tensor) -> Tensor:
    """Float64 Cholesky factors of ``covariances`` (:func:`~ppl_mixtures.models.gmm.float64_factors`).

    The M-step factorises the covariances it returns; the next E-step (and the fitted
    estimator's precisions) read those factors instead of factorising the same matrices
    again: a K D^3 / 3 saving per iteration, 0.3 s at K = 10, D = 784. The same factors, bit
    for bit, as a new factorisation would give.
    """
    entry = _LAST_FACTORS[0]
    if (entry is not None and entry[0]() is covariances
            and entry[1] == covariances._version):
        return entry[2]
    return gmm.float64_factors(covariances)


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
        ``sum_n r_nk (x_n - shift_k)(x_n - shift_k)^T``, shape (K, D, D), for full; for tied
        pooled over the components (the tied M-step needs no more), shape (D, D):
        ``sum_k sum_n r_nk (x_n - shift_k)(x_n - shift_k)^T``; its diagonal only, shape
        (K, D), for the diagonal types.
    shift : Tensor, shape (K, D)
        The means of the E-step's parameters, about which moments are taken (the same in
        every batch and on every rank, so it is kept, not added). Its dtype is the
        parameters'; the sums are float64 whatever the data's dtype.
    """

    summed_fields = (*SummedStats.summed_fields, "resp_sum", "first_moment", "second_moment")

    resp_sum: Tensor
    first_moment: Tensor
    second_moment: Tensor
    shift: Tensor


def pooled(second: Tensor, covariance_type: str) -> Tensor:
    """The :class:`GMMStats` form of per-component second moments (K, D, D) or (K, D): summed
    over the components for ``"tied"`` (shape (D, D)), unchanged otherwise."""
    return second.sum(0) if covariance_type == "tied" else second


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


def _e_step_block(x: Tensor, params: GMMParams, weights: Tensor | None = None) -> GMMStats:
    if params.covariance_type in DIAGONAL_TYPES:
        return _diagonal_e_step(x, params, weights)
    return _whitened_e_step(x, params, weights)


def _diagonal_e_step(x: Tensor, params: GMMParams, weights: Tensor | None = None) -> GMMStats:
    """One pass of a diagonal-family E-step: log densities and statistics by matrix products.

    With ``xc = x - c`` (``c`` the mean of the component means, for less cancellation far
    from the origin), ``[xc, xc^2] @ [[-2 (mu_k - c) / s_k], [1 / s_k]]`` gives every
    Mahalanobis distance up to a per-component constant (the arithmetic of
    :func:`~ppl_mixtures.models.gmm.component_log_prob`, whose clamp at zero it keeps), and
    ``r^T @ [xc, xc^2]`` gives the responsibility-weighted sums of the rows and their squares:
    two (rows, 2D) x (2D, K) products per block and no (rows, K, D) tensor. Spherical
    variances need only ``sum_d xc_d^2`` for the densities. The sums about ``c`` are turned
    into moments about the means (the ``shift``) in float64:
    ``sum r (xc - m)^2 = sum r xc^2 - 2 m sum r xc + N_k m^2``. Float32 data keeps its
    density products in float32 and takes these sums in float64 (the cancellation above
    would otherwise swamp the variance of a component that is tight far from ``c``).
    """
    n_samples, n_features = x.shape
    wide = torch.float64
    means = params.means
    center = means.mean(0)
    mc = means - center
    # [xc, xc^2] written side by side once (no concatenation: 1.5-2x cheaper on digits)
    features = x.new_empty(n_samples, 2 * n_features)
    xc = torch.sub(x, center, out=features[:, :n_features])
    squares = torch.mul(xc, xc, out=features[:, n_features:])
    precisions = gmm.diagonal_variances(params).reciprocal()  # (K, D)
    scaled = mc * precisions
    constant = (mc * scaled).sum(-1)
    log_det = precisions.log().sum(-1)
    log_2pi = n_features * math.log(2 * math.pi)
    # joint = 0.5 (log|P| - D log 2 pi - mahalanobis) + log pi, the affine parts folded into
    # one product; capping it at its value for a zero distance is the model's clamp at zero
    top = (log_det - log_2pi).mul_(0.5).add_(params.weights.log())[:, None]
    bias = top - 0.5 * constant[:, None]
    # (K, rows) tables: the (K, 2D) @ (2D, rows) product is about 2x faster than its
    # transpose with K columns (measured at 5461 rows, D = 32, K = 16, one thread)
    if params.covariance_type == "spherical":
        joint = torch.addmm(bias, scaled, xc.T)
        joint -= 0.5 * squares.sum(-1) * precisions[:, :1]
    else:
        joint = torch.addmm(bias, torch.cat([scaled, -0.5 * precisions], 1), features.T)
    joint = torch.minimum(joint, top, out=joint)
    resp, norm = _softmax_columns(joint)
    if weights is not None:
        resp, norm = resp * weights, norm * weights
    if x.dtype != wide:
        # float32 data: the sums in float64, from rows and squares rounded once; in float32
        # ``sum r xc^2 - N_k m^2`` would cancel away a tight component's variance
        wide_features = features.new_empty(n_samples, 2 * n_features, dtype=wide)
        xc = wide_features[:, :n_features].copy_(xc)
        torch.mul(xc, xc, out=wide_features[:, n_features:])
        features, resp = wide_features, resp.to(wide)
    sums = resp @ features  # (K, 2D): sum r xc, sum r xc^2
    resp_sum = resp.sum(1, dtype=wide)
    mc = mc.to(wide)
    linear, quadratic = sums[:, :n_features], sums[:, n_features:]
    # about the means: sum r (xc - m) = sum r xc - N_k m and, with it,
    # sum r (xc - m)^2 = sum r xc^2 - m (2 sum r xc - N_k m)
    first = torch.addcmul(linear, resp_sum[:, None], mc, value=-1.0)
    second = quadratic - mc * (linear + first)
    # the likelihood in the data's dtype: the EM loop's rounding slack follows its dtype
    return GMMStats(_total_weight(n_samples, weights), norm.sum(dtype=wide).to(x.dtype),
                    resp_sum, first, second, means)


def _whitened_e_step(x: Tensor, params: GMMParams, weights: Tensor | None = None) -> GMMStats:
    """The E-step of a full mixture: one whitened pass for densities and moments (a tied
    one runs :func:`_tied_e_step`).

    With ``y_nk = W_k (x_n - mu_k)``, ``W_k`` the inverse Cholesky factor that
    :func:`~ppl_mixtures.models.gmm.component_log_prob` applies, each chunk of rows is
    whitened once under every component; ``|y_nk|`` gives the log densities, and the same
    ``y`` give ``sum_n r_nk y_nk`` and ``sum_n r_nk y_nk y_nk^T`` (one batched product), which
    ``W_k^-1`` (in float64) maps back to moments about the means. So the E-step costs one
    whitening product and one moment product per row and component, the least a full
    covariance allows. The K maps are applied side by side when they fit in cache, one
    component at a time otherwise (large K D^2), on chunks of rows large enough for the
    matrix products.

    In float64 with at least :data:`_OUTER_MIN_COMPONENTS` components and the K maps small
    enough to sit side by side, :func:`_quadratic_e_step` does the same work in about half
    the arithmetic. One component at a time (large K D^2), float64 whitens by triangular
    solves and sums the moments component by component, never holding a (K, rows, D) tensor.

    In float32 with the K maps side by side, the moments are taken in the whitened frame:
    the whitened moments are near ``0`` and ``N_k I`` whatever the conditioning of
    ``Sigma_k``, so float32 products of them lose nothing that matters: about a float32 sum
    of ``(x - mu)(x - mu)^T``, whose rounding is relative to the largest eigenvalue and swamps
    the small ones on ill-conditioned data, this lowers EM's worst decrease by more than
    tenfold. One component at a time (large K D^2), float32 whitens by float32 triangular
    solves for the densities and sums the moments about the means in float64 from the rows
    a component explains, as float64 does (no D^3 map back per component: 2.2-2.5x faster
    at D = 784). ``weights`` (shape (N,)) multiply the responsibilities once.
    """
    n_samples, n_features = x.shape
    n_components = params.n_components
    wide = torch.float64
    factors = factors_of(params.covariances)
    if params.covariance_type == "tied":
        return _tied_e_step(x, params, factors, weights)
    # float64 only: float32 data keeps the whitened frame below, whose float32 products are
    # faster than float64 features (0.74-0.82 s against 0.96-1.06 s per E- and M-step at
    # N = 1e5, D = 32, K = 16, full) and lose nothing that matters
    if (x.dtype == wide and n_components >= _OUTER_MIN_COMPONENTS
            and n_components * n_features**2 <= gmm._STACKED_WHITENING_MAX):
        stats = _quadratic_e_step(x, params, factors, weights)
        if stats is not None:
            return stats
    # float32 takes its moments whitened (see above); float64 about the means, so that no
    # D^3 mapping back is needed
    whitened_frame = x.dtype != wide
    plan = None
    if params.n_components * n_features**2 <= gmm._STACKED_WHITENING_MAX:
        plan = gmm.whitening_plan(params, factors)
        center, log_det = plan.center, plan.log_det
    else:  # one component at a time: triangular solves with L_k, no inverse (float32: L_k
        # rounded to float32, 1.4x faster than a product with the inverse at D = 784; its
        # moments are taken about the means in float64, as float64's: no D^3 map back)
        factors = factors.to(x.dtype)
        center = params.means.mean(0)
        log_det = (-2.0 * factors.to(wide).diagonal(dim1=-2, dim2=-1).log().sum(-1)).to(x.dtype)
        # L_k^T, contiguous once (a transposed view would be copied by every solve)
        upper = factors.transpose(-1, -2).contiguous()
    offsets = params.means - center
    wide_offsets = params.means.to(wide) - center.to(wide)
    xc = x - center
    log_2pi = n_features * math.log(2 * math.pi)
    log_weights = params.weights.log()
    first = x.new_zeros(n_components, n_features, dtype=wide)
    second = x.new_zeros(n_components, n_features, n_features, dtype=wide)
    log_likelihood = x.new_zeros((), dtype=wide)
    resp_sum = x.new_zeros(n_components, dtype=wide)
    stacked = plan is not None and plan.stacked is not None
    if stacked:
        chunks = _row_chunks(n_samples, n_components, n_features)
    else:  # one (rows, D) solve per component: rows enough to keep it efficient
        size = max(_MIN_WHITENED_ROWS, _WHITENED_ELEMENTS // n_features)
        chunks = [slice(start, start + size) for start in range(0, n_samples, size)]
    for rows in chunks:
        block = xc[rows]
        values = None
        if stacked:
            whitened = plan.chunk(block)  # (n, K, D)
            distances = torch.linalg.vector_norm(whitened, dim=-1)  # (n, K)
            values = (whitened.transpose(0, 1) if whitened_frame
                      else block - offsets[:, None, :])  # (K, n, D)
        else:
            # y = (x - mu) L^-T: a triangular solve, half the work of a product with L^-1;
            # one component at a time, never a (K, n, D) tensor
            distances = block.new_empty(block.shape[0], n_components)
            for k in range(n_components):
                solved = torch.linalg.solve_triangular(upper[k], block - offsets[k],
                                                       upper=True, left=False)
                torch.linalg.vector_norm(solved, dim=-1, out=distances[:, k])
        # the arithmetic of gmm.log_joint, so the likelihood is the model's
        joint = 0.5 * (log_det - log_2pi - distances.square()) + log_weights
        resp, norm = _softmax(joint)
        if weights is not None:
            resp, norm = resp * weights[rows, None], norm * weights[rows]
        log_likelihood += norm.sum(dtype=wide)
        resp_sum += resp.sum(0, dtype=wide)
        if values is not None:
            _add_moments(first, second, values, resp.T)
            continue
        # moments about the means, in float64 (float32 data too: its rows widened, only those
        # a component explains), over the rows with r_nk > 0
        for k in range(n_components):  # x - mu_k again: n D work beside the n D^2 products
            rows_k, weight = _responsible_rows(resp[:, k])
            values_k = (block if rows_k is None else block.index_select(0, rows_k))
            values_k = values_k.to(wide) - wide_offsets[k]
            weight = weight.to(wide)
            first[k] += weight @ values_k
            _gram(second[k], values_k * weight.sqrt()[:, None])
    second = _symmetric(second)
    if whitened_frame and plan is not None:  # W_k^-1 maps the whitened moments back, in float64: W^-1 S W^-T
        # by two triangular solves (2 D^3), not an inverse and two products (5 D^3)
        inverse = plan.inverse_factors.to(wide)  # W, as rounded to the data's dtype
        first = torch.linalg.solve_triangular(inverse, first[:, :, None], upper=False)
        first = first.squeeze(-1)
        half = torch.linalg.solve_triangular(inverse, second, upper=False)  # W^-1 S
        second = torch.linalg.solve_triangular(inverse, half.transpose(-1, -2),
                                               upper=False).transpose(-1, -2)
    # the likelihood in the parameters' dtype: the EM loop's rounding slack follows its dtype
    return GMMStats(_total_weight(n_samples, weights), log_likelihood.to(x.dtype), resp_sum,
                    first, second, params.means)


class _BeyondReach(Exception):
    """A chunk's rows lie too far out for the quadratic expansion's rounding."""


def _quadratic_e_step(x: Tensor, params: GMMParams, factors: Tensor,
                      weights: Tensor | None = None) -> GMMStats | None:
    """Full E-step in float64 from the rows' quadratic features, small K D^2 (tied has its
    own, cheaper pass: :func:`_tied_e_step`).

    With ``xc = x - c`` (``c`` the mean of the component means) and ``m_k = mu_k - c``,
    every Mahalanobis distance is linear in the features ``f(xc) = [xc_i xc_j (i <= j), xc]``:
    ``(xc - m_k)^T P_k (xc - m_k) = sum_{i<=j} (2 - [i = j]) P_k,ij xc_i xc_j
    - 2 (P_k m_k)^T xc + m_k^T P_k m_k``, so one (rows, T) @ (T, K) product gives the log
    densities of a chunk (``T = D (D + 1) / 2 + D``), and ``r^T @ f`` of the same features
    gives ``sum_n r_nk xc_n`` and the upper triangles of ``sum_n r_nk xc_n xc_n^T``, moved to
    the means once at the end: ``S_k = A_k - (m_k L_k^T + L_k m_k^T) + N_k m_k m_k^T``. Per
    row and component that is about ``D^2`` multiply-adds against the ``2 D^2`` of whitening
    and then summing moments (measured at N = 1e5, D = 32, K = 16: see ``bench/RESULTS.md``).
    Like the diagonal E-step, the distance is capped below at zero (the model's clamp).
    The expansion cancels: its rounding is about ``eps |xc|^2 |P_k|``. Returns None, for the
    whitened E-step to run instead, when that bound exceeds :data:`_QUADRATIC_ROUNDING`
    (a near-singular covariance, or rows far from the means): on ordinary data it is
    1e-7 or less (the fused-kernel tests compare it with the whitened densities at 50
    standard deviations from the origin).
    """
    n_samples, n_features = x.shape
    n_components = params.n_components
    wide = torch.float64
    means = params.means.to(wide)
    center = means.mean(0)
    mc = means - center  # (K, D)
    eye = torch.eye(n_features, dtype=wide, device=x.device)
    inverse = torch.linalg.solve_triangular(factors.to(wide), eye, upper=False)  # L^-1
    precisions = inverse.transpose(-1, -2) @ inverse  # (K, D, D), or (D, D) tied
    # the expansion's rounding is about eps |xc|^2 |P|: past _QUADRATIC_ROUNDING (a
    # near-singular covariance, rows far out) the whitened E-step is the accurate one; each
    # chunk checks its rows' reach (no separate pass over the data), and the first chunk
    # beyond it stops the pass
    reach = _QUADRATIC_ROUNDING / (torch.finfo(wide).eps
                                   * float(torch.linalg.matrix_norm(precisions).max()))
    beyond: list[bool] = []  # set by the first chunk beyond reach, read by every thread
    log_det = 2.0 * inverse.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    upper_i, upper_j = torch.triu_indices(n_features, n_features, device=x.device)
    n_pairs = upper_i.numel()
    doubled = torch.where(upper_i == upper_j, -0.5, -1.0).to(wide)
    scaled = (precisions @ mc[:, :, None]).squeeze(-1)  # P_k m_k
    # (K, T) coefficients: the (K, T) @ (T, rows) product is 2-3x faster than its transpose
    # with K columns (measured at K = 16, T = 560), and its (K, rows) result is what the
    # moment product r @ f takes
    coefficients = torch.cat([precisions[:, upper_i, upper_j] * doubled, scaled], 1)
    top = 0.5 * (log_det - n_features * math.log(2 * math.pi)) + params.weights.log()
    bias = (top - 0.5 * (mc * scaled).sum(-1))[:, None]
    top = top[:, None]
    rows = max(1, _OUTER_ELEMENTS // (n_pairs + n_features))

    def rows_pass(begin: int, end: int) -> tuple[Tensor, Tensor, Tensor]:
        """Sums of the chunks of rows [begin, end): (r^T f, log-likelihood, r sums)."""
        features = x.new_empty(min(rows, end - begin), n_pairs + n_features, dtype=wide)
        sums = x.new_zeros(n_components, n_pairs + n_features, dtype=wide)
        log_likelihood = x.new_zeros((), dtype=wide)
        resp_sum = x.new_zeros(n_components, dtype=wide)
        for start in range(begin, end, rows):
            block = x[start:min(start + rows, end)] - center
            if beyond or not float(torch.linalg.vector_norm(block, dim=1).max()) ** 2 <= reach:
                beyond.append(True)  # NaN and inf too
                raise _BeyondReach
            table = features[:block.shape[0]]
            column = 0
            for i in range(n_features):  # row i of the upper triangle: xc_i xc_j, j >= i
                torch.mul(block[:, i:i + 1], block[:, i:],
                          out=table[:, column:column + n_features - i])
                column += n_features - i
            table[:, n_pairs:] = block
            joint = torch.addmm(bias, coefficients, table.T)  # (K, rows)
            resp, norm = _softmax_columns(torch.minimum(joint, top, out=joint))
            if weights is not None:
                part = weights[start:start + block.shape[0]]
                resp, norm = resp * part, norm * part
            log_likelihood += norm.sum(dtype=wide)
            resp_sum += resp.sum(1, dtype=wide)
            sums.addmm_(resp, table)
        return sums, log_likelihood, resp_sum

    try:
        sums, log_likelihood, resp_sum = _over_row_ranges(rows_pass, n_samples, rows)
    except _BeyondReach:
        return None
    linear = sums[:, n_pairs:]  # sum_n r_nk xc_n
    pairs = x.new_zeros(n_components, n_features, n_features, dtype=wide)
    pairs[:, upper_i, upper_j] = sums[:, :n_pairs]
    pairs[:, upper_j, upper_i] = sums[:, :n_pairs]
    first = linear - resp_sum[:, None] * mc
    cross = mc[:, :, None] * linear[:, None, :]
    second = pairs - (cross + cross.transpose(-1, -2)) + resp_sum[:, None, None] * (
        mc[:, :, None] * mc[:, None, :])
    return GMMStats(_total_weight(n_samples, weights), log_likelihood.to(x.dtype), resp_sum,
                    first, second, params.means)


def _tied_e_step(x: Tensor, params: GMMParams, factor: Tensor,
                 weights: Tensor | None = None) -> GMMStats:
    """The tied E-step: one whitening product and one Gram matrix per row, in float64.

    With ``W = L^-1`` (``L`` the shared Cholesky factor), ``y = W (x - c)`` (``c`` the mean
    of the means) and ``v_k = W (mu_k - c)``: ``-d_k / 2 = v_k^T y - |v_k|^2 / 2 - |y|^2 / 2``,
    one (rows, D) @ (D, D) product for all K components. The tied M-step needs only the
    moments summed over components, and since every row's responsibilities add up to one,
    in the whitened frame ``sum_k sum_n r_nk (y_n - v_k)(y_n - v_k)^T = G - sum_k (v_k L_k^T +
    L_k v_k^T) + sum_k N_k v_k v_k^T``, with the Gram matrix ``G = sum_n y_n y_n^T`` (a
    rank-k update) and ``L_k = sum_n r_nk y_n``; ``L`` maps it back once (``L S L^T``). A row
    costs about ``1.5 D^2 + 2 K D`` multiply-adds, where per-component moments cost
    ``K D^2 / 2`` and scikit-learn whitens each row once per component (``K D^2``). In the
    whitened frame the expansion's rounding is about ``eps`` times the rows' largest squared
    Mahalanobis distance from ``c``, relative to the identity: no guard is needed. Float32
    data is widened chunk by chunk (a float32 Gram matrix would lose that accuracy), so
    float32 and float64 cost about the same and reach the same statistics.
    """
    n_samples, n_features = x.shape
    n_components = params.n_components
    wide = torch.float64
    factor = factor.to(wide)
    means = params.means.to(wide)
    center = means.mean(0)
    eye = torch.eye(n_features, dtype=wide, device=x.device)
    whiten = torch.linalg.solve_triangular(factor, eye, upper=False).T  # W^T: y = xc @ W^T
    whitened_means = (means - center) @ whiten  # (K, D): v_k
    log_det = -2.0 * factor.diagonal().log().sum()
    top = 0.5 * (log_det - n_features * math.log(2 * math.pi)) + params.weights.log()
    bias = (top - 0.5 * whitened_means.square().sum(-1))[:, None]
    top = top[:, None]
    rows = max(_MIN_BLOCK_ROWS, _OUTER_ELEMENTS // (n_components + 2 * n_features))

    def rows_pass(begin: int, end: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Sums of the chunks of rows [begin, end): (r^T y, upper(G), log-likelihood, N_k)."""
        linear = x.new_zeros(n_components, n_features, dtype=wide)
        gram = x.new_zeros(n_features, n_features, dtype=wide)
        log_likelihood = x.new_zeros((), dtype=wide)
        resp_sum = x.new_zeros(n_components, dtype=wide)
        for start in range(begin, end, rows):
            stop = min(start + rows, end)
            whitened = (x[start:stop].to(wide) - center) @ whiten  # (rows, D)
            joint = torch.addmm(bias, whitened_means, whitened.T)  # (K, rows)
            joint -= 0.5 * whitened.square().sum(1)
            resp, norm = _softmax_columns(torch.minimum(joint, top, out=joint))
            if weights is None:
                _gram(gram, whitened)
            else:
                part = weights[start:stop].to(wide)
                resp, norm = resp * part, norm * part
                _gram(gram, whitened * part.sqrt()[:, None])
            log_likelihood += norm.sum()
            resp_sum += resp.sum(1)
            linear.addmm_(resp, whitened)
        return linear, gram, log_likelihood, resp_sum

    linear, gram, log_likelihood, resp_sum = _over_row_ranges(rows_pass, n_samples, rows)
    first = linear - resp_sum[:, None] * whitened_means  # sum_n r_nk (y_n - v_k)
    cross = whitened_means.T @ linear  # sum_k v_k L_k^T
    second = (_symmetric(gram) - (cross + cross.T)
              + (whitened_means.T * resp_sum) @ whitened_means)
    # back from the whitened frame: x - mu_k = L (y - v_k)
    first = first @ factor.T
    second = factor @ second @ factor.T
    second = 0.5 * (second + second.T)
    return GMMStats(_total_weight(n_samples, weights), log_likelihood.to(x.dtype), resp_sum,
                    first, second, params.means)


def _softmax(joint: Tensor) -> tuple[Tensor, Tensor]:
    """Responsibilities and ``logsumexp`` of a (rows, K) table, one exponential pass.

    Overwrites ``joint``. A row whose entries are all ``-inf`` gets ``norm = -inf``.
    """
    top = joint.amax(-1, keepdim=True)
    # a row of -inf: subtract a finite number instead (exp gives 0, the log -inf); one pass
    top = top.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
    resp = joint.sub_(top).exp_()
    total = resp.sum(-1, keepdim=True)
    resp /= total
    return resp, (top + total.log()).squeeze(-1)


def _parallel_workers(n_chunks: int) -> int:
    """Threads for a pass of ``n_chunks`` chunks: torch's thread count, when every thread gets
    at least :data:`_PARALLEL_MIN_CHUNKS` chunks, else 1."""
    return max(1, min(torch.get_num_threads(), n_chunks // _PARALLEL_MIN_CHUNKS))


def _over_row_ranges(rows_pass, n_samples: int, rows: int) -> tuple[Tensor, ...]:
    """``rows_pass(begin, end)`` over all rows, split into contiguous ranges of whole chunks
    run in threads (:func:`_parallel_workers`), their sums added in range order.

    Each chunk's elementwise work is below torch's parallel grain, so on its own a pass uses
    one core for all but its matrix products; torch operations release the GIL, so threads
    over ranges of chunks use the others (measured on 2 loaded cores: the full E-step at
    N = 1e5, D = 32, K = 16 1.6-1.7x faster). The ranges depend only on N and the thread
    count, so a fit is deterministic for a given ``torch.get_num_threads()``; the pool lives
    for one pass and leaves no thread behind.
    """
    n_chunks = -(-n_samples // rows)
    workers = _parallel_workers(n_chunks)
    if workers == 1:
        return rows_pass(0, n_samples)
    from concurrent.futures import ThreadPoolExecutor

    cuts = [rows * (n_chunks * i // workers) for i in range(workers)] + [n_samples]
    with ThreadPoolExecutor(workers) as pool:
        parts = list(pool.map(rows_pass, cuts[:-1], cuts[1:]))
    return tuple(sum(values[1:], values[0]) for values in zip(*parts, strict=True))


def _softmax_columns(joint: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`_softmax` of a (K, rows) table, over its components (dim 0); overwrites it."""
    top = joint.amax(0).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
    resp = joint.sub_(top).exp_()
    total = resp.sum(0)
    resp /= total
    return resp, top + total.log()


def _total_weight(n_samples: int, weights: Tensor | None) -> float:
    """``n_samples``, or ``sum_n w_n`` (in float64) with weights."""
    return float(n_samples) if weights is None else float(weights.sum(dtype=torch.float64))


def _add_moments(first: Tensor, second: Tensor, values: Tensor, resp: Tensor) -> None:
    """Add ``sum_n r_kn v_kn`` and ``sum_n r_kn v_kn v_kn^T`` (float64) in place.

    ``values`` (K, n, D) and ``resp`` (K, n) in the data's dtype. The second moments are the
    Gram matrices of ``sqrt(r_kn) v_kn`` (:func:`_gram`): half the work of a general product.
    ``second`` holds their upper triangles only until :func:`_symmetric` fills it.
    """
    if values.shape[-1] ** 2 * values.shape[0] <= gmm._STACKED_WHITENING_MAX:
        # small D: one batched product (measured faster than K rank-k updates at D = 32)
        weighted = values * resp[:, :, None]
        first += weighted.sum(1)
        second += torch.bmm(weighted.transpose(1, 2), values).triu()
        return
    for k in range(values.shape[0]):
        rows_k, weight = _responsible_rows(resp[k])
        values_k = values[k] if rows_k is None else values[k].index_select(0, rows_k)
        first[k] += (values_k * weight[:, None]).sum(0)
        _gram(second[k], values_k * weight.sqrt()[:, None])


def _responsible_rows(weight: Tensor) -> tuple[Tensor | None, Tensor]:
    """The rows of a chunk that a component's moments need: those with ``r_nk > 0``.

    A row whose responsibility underflowed to exactly zero adds exact zeros to the moments,
    so leaving it out changes nothing but the work: with separated components (most
    responsibilities 0 at D = 784) each component's rank-k update runs over its own rows
    only. Returns ``(None, weight)`` when every row counts, else the kept rows' indices and
    weights (an empty index when none does).
    """
    kept = weight > 0
    if bool(kept.all()):
        return None, weight
    rows = kept.nonzero().squeeze(1)
    return rows, weight.index_select(0, rows)


def _gram(out: Tensor, values: Tensor) -> None:
    """Add the upper triangle of ``values^T values`` ((n, D) -> (D, D)) to ``out`` (float64).

    On CPU this is the BLAS rank-k update (``syrk``, half the work of ``values.T @ values``:
    measured 2x faster at n = 1024, D = 784 on one core); elsewhere a plain product.
    """
    if values.device.type == "cpu" and values.dtype in _SYRK and values.shape[0] > 0:
        # values.T is Fortran-ordered (D, n): syrk reads it in place, A A^T = values^T values
        product = _SYRK[values.dtype](1.0, values.detach().numpy().T, lower=0)
        out += torch.from_numpy(product).to(out.dtype)
    else:
        out += (values.T @ values).to(out.dtype).triu()


def _symmetric(upper: Tensor) -> Tensor:
    """Whole symmetric matrices (..., D, D) from their upper triangles (``upper`` is
    overwritten: its strict lower triangles must be zero, as :func:`_add_moments` leaves
    them)."""
    return upper.add_(upper.triu(1).transpose(-1, -2))


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
        return _whitened_e_step(x, params, weights)
    rows = e_step_block_rows(params.n_components, x.shape[1])
    if x.shape[0] <= rows:
        return _e_step_block(x, params, weights)

    def rows_pass(begin: int, end: int) -> tuple[GMMStats]:
        """The blocks of rows [begin, end), their statistics added in order."""
        blocks = x[begin:end].split(rows)
        if weights is not None:
            blocks = zip(blocks, weights[begin:end].split(rows), strict=True)
        return (sum_over_batches(_e_step_block)(blocks, params),)

    # contiguous ranges of whole blocks over torch's threads (one range: the serial pass)
    return _over_row_ranges(rows_pass, x.shape[0], rows)[0]


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
