"""The E-step passes of :mod:`ppl_mixtures.inference.em.gmm`: one pass over blocks of rows
computing densities and sufficient statistics together, per covariance family.

:func:`ppl_mixtures.inference.em.gmm.e_step` chooses among them; this module holds the
kernels, the statistics they return (:class:`GMMStats`) and the float64 Cholesky factors the
M-step leaves for the next E-step (:func:`factors_of`).

* diagonal types: :func:`_diagonal_e_step`, two matrix products per block;
* tied: :func:`_tied_e_step`, one whitening for every component and a Gram matrix;
* full: :func:`_quadratic_e_step` (float64, small K D^2: the rows' quadratic features), or
  :func:`_whitened_e_step` (side by side, or one component at a time by triangular solves);
  :func:`_dense_e_step` chooses among tied and full's passes;
* small CPU data, every type: the same arithmetic in one NumPy block
  (:func:`_small_diagonal_e_step`, :func:`_small_tied_e_step`, :func:`_small_full_e_step`;
  :func:`_takes_numpy` decides), where torch's fixed cost per operation would dominate.

Chunks of rows keep every table in cache and memory bounded by one chunk; the tied and full
passes, and the diagonal one at large K D, run contiguous ranges of chunks on torch's threads
(:func:`_over_row_ranges`); a light diagonal pass uses torch's own threads inside each
block's operations.
"""

from __future__ import annotations

import contextlib
import math
import threading
import weakref
from dataclasses import dataclass

import numpy as np
import torch
from numpy import shares_memory as numpy_shares_memory
from torch import Tensor

from ppl_mixtures.inference.em.loop import SummedStats, kept_tables
from ppl_mixtures.models import gmm
from ppl_mixtures.models.gmm import GMMParams, _row_chunks

try:  # the BLAS rank-k update, for Gram matrices at half the work of a product
    from scipy.linalg import blas as _blas

    _SYRK = {torch.float64: _blas.dsyrk, torch.float32: _blas.ssyrk}
    _TRSM = {torch.float64: _blas.dtrsm, torch.float32: _blas.strsm}
except ImportError:  # pragma: no cover - scipy comes with scikit-learn
    _SYRK, _TRSM = {}, {}


#: Float64 full mixtures with at least this many components (and K D^2 within
#: ``models.gmm._STACKED_WHITENING_MAX``) take their densities and moments from the rows'
#: quadratic features (:func:`_quadratic_e_step`) instead of whitening them.
_OUTER_MIN_COMPONENTS = 4
#: Largest rounding bound ``eps max_n |x_n - c|^2 max_k |P_k|_F`` of the quadratic
#: E-step's distances; above it the whitened E-step runs (:func:`_quadratic_e_step`).
_QUADRATIC_ROUNDING = 1e-6
#: Fewest chunks of rows per thread before a pass is split over threads (_over_row_ranges).
_PARALLEL_MIN_CHUNKS = 8
#: Whether the row-range threads of a pass run their own operations in one thread each.
_ONE_THREAD_EACH = True
#: Multiply-adds per row of a diagonal E-step's product (K times the features' width) from
#: which its blocks run over row ranges (:func:`_diagonal_e_step`); lighter ones run in the
#: caller's thread.
_THREADED_DIAGONAL_WORK = 4096
#: Widths of the diagonal E-step's feature table are rounded up to a multiple of this many
#: columns (zeros) on CPU from ``_PADDED_MIN_WIDTH`` columns up (see :func:`_table_width`).
_WIDTH_MULTIPLE = 12
_PADDED_MIN_WIDTH = 24
#: Largest ``n_samples * (n_components + n_features)`` of a CPU E-step taken by NumPy in one
#: block (:func:`_takes_numpy`) instead of torch's kernels: there a torch operation's fixed
#: cost (~4-6 us each, some 50 per E-step) outweighs the arithmetic.
#: Measured on two idle cores (one diagonal E-step, NumPy against torch): at 2^12 NumPy took
#: 121-163 us against 256-423 (1.8-3.2x faster) whatever D (2, 10, 30) and dtype; at 2^14
#: 1.1-2.2x faster; at 2^15 from 0.78x (D = 2, diag, 6553 rows) to 1.7x; at 2^16 mostly
#: slower (0.45-1.2x): torch's elementwise passes are quicker per row.
_SMALL_WORK = 1 << 14
#: Largest ``n_samples * n_components * n_features^2`` of a full E-step taken by NumPy
#: (:func:`_small_full_e_step`, which holds (K, N, D) offsets and whitens each): 2^16, e.g.
#: N = 500, D = 2, K = 3 (6000) or N = 400, D = 4, K = 10.
_SMALL_FULL_WORK = 1 << 16
#: Per thread: whether it is a row-range worker of :func:`_over_row_ranges`.
_WORKER = threading.local()
#: Entries of one (rows, D (D + 1) / 2 + D) table of quadratic features.
_OUTER_ELEMENTS = 1 << 19
#: Rows per chunk of the quadratic E-step's check of the rows' reach.
_REACH_ROWS = 1 << 14
#: Bytes of the largest (N, D (D + 1) / 2 + D) float64 table of quadratic features that an EM
#: fit keeps from one iteration to the next (:func:`_kept_features`; 64 MiB). Measured on one
#: core with a 32 MiB L3 cache: at N = 1797, D = 64, K = 10 (31 MB) the E-step took 11.5 ms
#: from the kept table against 17.6 ms building it chunk by chunk; at N = 1e5, D = 32, K = 16
#: (448 MB, read from memory) 206 against 195 ms: a table beyond the cache gains nothing.
_KEPT_FEATURES_BYTES = 64 << 20
#: Fewest rows whitened at once when the K maps are applied one component at a time.
_MIN_WHITENED_ROWS = 256
#: Entries of one (rows, D) chunk whitened one component at a time in float64 (2^21: 16 MB;
#: float32, which keeps the K whitened chunks for its moments, stays at 2^18: larger chunks
#: did not make it faster, 5.6 s either way at D = 784, K = 10, N = 2000).
#: Measured at D = 784, K = 10, N = 2000 on one loaded core: the E-step took 1.7-2.5 s in
#: chunks of 2000 rows against 2.7-3.6 s in chunks of 334 (2^18 entries): the triangular
#: solves and rank-k updates run nearer the speed of a matrix product on taller blocks.
_WHITENED_ELEMENTS = 1 << 21
#: A row's contribution to a component's moments is left out when it is below this fraction
#: of one float64 rounding unit of the chunk's largest, divided by the chunk's rows (see
#: :func:`_contributing_rows`): all left-out terms together stay below a tenth of one
#: rounding unit of the kept sum.
_NEGLIGIBLE_ROUNDING = 0.1 * torch.finfo(torch.float64).eps

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


def _diagonal_e_step(x: Tensor, params: GMMParams, weights: Tensor | None = None,
                     rows: int | None = None) -> GMMStats:
    """The E-step of a diagonal-family mixture: log densities and statistics by matrix
    products, over blocks of ``rows`` rows (all of ``x`` at once by default).

    With ``xc = x - c`` (``c`` the precision-weighted mean of the component means,
    :func:`~ppl_mixtures.models.gmm.expansion_center`, for less cancellation), the features
    ``f = [xc, q]`` (``q = xc^2``; spherical: ``|xc|^2``) and the coefficients
    ``[(mu_k - c) / s_k, -1 / (2 s_k)]`` give every Mahalanobis distance, with the affine
    parts of the log density as the product's bias, in one (K, F) @ (F, rows) product (the
    arithmetic of :func:`~ppl_mixtures.models.gmm.component_log_prob`, whose clamp at zero
    it keeps), and ``r^T @ f`` gives the responsibility-weighted sums of the rows and of
    their squares: two products per block, no (rows, K, D) tensor. The coefficients are prepared once per
    E-step and the feature table is written in place, block after block. Spherical
    variances need only ``|xc|^2`` for the densities, and the moments only its sum (see
    :class:`GMMStats`). The sums about ``c`` are turned into moments about the means (the
    ``shift``) in float64: ``sum r (xc - m)^2 = sum r xc^2 - 2 m sum r xc + N_k m^2``.
    These sums are taken in float64 whatever the data's dtype (in float32 the cancellation
    above would swamp the variance of a component that is tight far from ``c``). Float32
    data keeps its density products in float32 on a GPU and in heavy blocks (K F from
    :data:`_THREADED_DIAGONAL_WORK` up, where the float32 product is the cheaper); in light
    blocks on CPU the whole pass runs in float64, from one table filled from the float32
    rows (two tables, one per dtype, cost more than the float64 products save). On CPU the
    table is widened with zero columns (:func:`_table_width`).
    """
    n_samples, n_features = x.shape
    n_components = params.n_components
    wide = torch.float64
    spherical = params.covariance_type == "spherical"
    n_f = _diagonal_features(params.covariance_type, n_features)
    # light blocks (K F below _THREADED_DIAGONAL_WORK) run in this thread; heavy ones over
    # row ranges. Float32 data on CPU in light blocks is taken in float64 throughout: one
    # table, filled from the float32 rows, instead of a float32 table for the densities and
    # a float64 one for the sums (measured in bench/RESULTS.md, tenth round)
    heavy = n_components * n_f >= _THREADED_DIAGONAL_WORK
    compute = wide if (x.dtype != wide and x.is_cpu and not heavy) else x.dtype
    plan = _diagonal_plan(params, compute, x)
    center, mc, coefficients, top, bias = (plan.center, plan.mc, plan.coefficients, plan.top,
                                           plan.bias)
    width = coefficients.shape[1]
    rows = n_samples if rows is None else max(1, rows)

    def features_table(dtype: torch.dtype, size: int) -> Tensor:
        return _diagonal_table(x, size, width, n_f, dtype)

    def fill(table: Tensor, block: Tensor) -> None:
        _fill_diagonal(table, block, center.to(table.dtype), spherical)

    def rows_pass(begin: int, end: int) -> tuple[Tensor, Tensor, Tensor]:
        """Sums of the blocks of rows [begin, end): (r^T f in float64, log-likelihood,
        N_k)."""
        size = min(rows, end - begin)
        table = features_table(compute, size)
        wide_table = features_table(wide, size) if compute != wide else None
        sums = log_likelihood = resp_sum = None
        for start in range(begin, end, rows):
            block = x[start:min(start + rows, end)]
            n = block.shape[0]
            features = table[:n]
            fill(features, block)
            joint = torch.addmm(bias, coefficients, features.T)  # (K, n)
            resp, norm = _softmax_columns(torch.minimum(joint, top, out=joint))
            if weights is not None:
                part = weights[start:start + n]
                resp, norm = resp * part, norm * part
            part_likelihood = norm.sum(dtype=wide)
            log_likelihood = (part_likelihood if log_likelihood is None
                              else log_likelihood.add_(part_likelihood))
            if wide_table is not None:
                # float32 data: the sums in float64, from rows and squares rounded once; in
                # float32 ``sum r xc^2 - N_k m^2`` would cancel away a tight component's
                # variance
                features = wide_table[:n]
                fill(features, block)  # torch.sub promotes the rows to float64
                resp = resp.to(wide)
            part_sum = resp.sum(1, dtype=wide)
            resp_sum = part_sum if resp_sum is None else resp_sum.add_(part_sum)
            sums = resp @ features if sums is None else sums.addmm_(resp, features)
        if sums is None:  # no rows
            return (x.new_zeros(n_components, n_f, dtype=wide), x.new_zeros((), dtype=wide),
                    x.new_zeros(n_components, dtype=wide))
        return sums, log_likelihood, resp_sum

    # light blocks (K F below _THREADED_DIAGONAL_WORK) in this thread, on torch's own
    # threads: at N = 1e5, D = 32, K = 16 on two idle cores the E-step took 11.1 ms against
    # 18.1 ms over two row-range threads (one thread: 17.1 ms). Heavy blocks over row ranges:
    # at N = 2e5, D = 64, K = 128 whole fits ran 3.1-4.0x scikit-learn's speed over row
    # ranges against 2.2-2.6x in this thread
    if heavy:
        sums, log_likelihood, resp_sum = _over_row_ranges(rows_pass, n_samples, rows)
    else:
        sums, log_likelihood, resp_sum = rows_pass(0, n_samples)
    mc = mc.to(wide)
    linear, quadratic = sums[:, :n_features], sums[:, n_features:n_f]
    # about the means: sum r (xc - m) = sum r xc - N_k m and, with it,
    # sum r (xc - m)^2 = sum r xc^2 - m (2 sum r xc - N_k m)
    first = torch.addcmul(linear, resp_sum[:, None], mc, value=-1.0)
    if spherical:  # the total over features, spread evenly (see GMMStats)
        total = quadratic[:, 0] - (mc * (linear + first)).sum(-1)
        second = (total / n_features)[:, None].expand(-1, n_features).contiguous()
    else:
        second = quadratic - mc * (linear + first)
    # the likelihood in the data's dtype: the EM loop's rounding slack follows its dtype
    return GMMStats(_total_weight(n_samples, weights), log_likelihood.to(x.dtype),
                    resp_sum, first, second, params.means)


@dataclass
class _DiagonalPlan:
    """The per-parameters part of a diagonal-family density by one product (see
    :func:`_diagonal_e_step`): with ``xc = x - center`` and the features ``f = [xc, q]``
    (``q = xc^2``, spherical ``|xc|^2``, then zero columns to the table's width),
    ``min(coefficients @ f^T + bias, top)`` is ``log pi_k + log N(x | mu_k, Sigma_k)``,
    (K, rows)."""

    center: Tensor  # (D,)
    mc: Tensor  # (K, D): the means less the centre
    coefficients: Tensor  # (K, width): [(mu_k - c) / s_k, -1 / (2 s_k), 0...]
    top: Tensor  # (K, 1): the log joint at a zero distance (the model's clamp at zero)
    bias: Tensor  # (K, 1): the affine parts of the log joint


def _diagonal_features(covariance_type: str, n_features: int) -> int:
    """Columns of the diagonal features ``[xc, q]`` before padding: ``2 D``, spherical
    ``D + 1`` (``q = |xc|^2``)."""
    return n_features + (1 if covariance_type == "spherical" else n_features)


def _diagonal_plan(params: GMMParams, dtype: torch.dtype, x: Tensor) -> _DiagonalPlan:
    """:class:`_DiagonalPlan` of ``params`` in ``dtype``, for the rows ``x`` (its device
    sets the table's width, :func:`_table_width`)."""
    n_components, n_features = params.means.shape
    spherical = params.covariance_type == "spherical"
    n_f = _diagonal_features(params.covariance_type, n_features)
    means = params.means.to(dtype)
    precisions = gmm.diagonal_variances(params).to(dtype).reciprocal()  # (K, D)
    center = gmm.expansion_center(means, precisions)
    mc = means - center
    scaled = mc * precisions
    log_2pi = n_features * math.log(2 * math.pi)
    # joint = 0.5 (log|P| - D log 2 pi - mahalanobis) + log pi, the affine parts as the
    # product's bias; capping it at its value for a zero distance is the model's clamp at zero
    top = (precisions.log().sum(-1) - log_2pi).mul_(0.5).add_(params.weights.to(dtype).log())
    bias = top - 0.5 * (mc * scaled).sum(-1)
    squares = -0.5 * (precisions[:, :1] if spherical else precisions)
    # (K, F) coefficients and (K, rows) tables: the (K, F) @ (F, rows) product is about 2x
    # faster than its transpose with K columns (measured at 5461 rows, D = 32, K = 16); the
    # table's columns past n_f stay zero, as do their coefficients
    width = _table_width(n_f, x)
    coefficients = torch.cat([scaled, squares, scaled.new_zeros(n_components, width - n_f)], 1)
    return _DiagonalPlan(center, mc, coefficients, top[:, None], bias[:, None])


def _diagonal_table(x: Tensor, size: int, width: int, n_f: int, dtype: torch.dtype) -> Tensor:
    """A (size, width) feature table on ``x``'s device; the padding columns past ``n_f`` zero."""
    if width == n_f:
        return x.new_empty(size, width, dtype=dtype)
    return x.new_zeros(size, width, dtype=dtype)


def _fill_diagonal(table: Tensor, block: Tensor, center: Tensor, spherical: bool) -> None:
    """Write the features ``[xc, xc^2]`` (spherical ``[xc, |xc|^2]``) of ``block`` (rows, D)
    about ``center`` into the first columns of ``table`` (its dtype; ``torch.sub`` promotes
    float32 rows)."""
    n_features = block.shape[1]
    xc = torch.sub(block, center, out=table[:, :n_features])
    if spherical:
        torch.sum(xc * xc, 1, out=table[:, n_features])
    else:
        torch.mul(xc, xc, out=table[:, n_features:2 * n_features])


def _diagonal_scoring_log_joint(x: Tensor, params: GMMParams, rows: int) -> Tensor:
    """:func:`scoring_log_joint` of a diagonal-family mixture, over blocks of ``rows`` rows:
    the E-step's features and coefficients (:func:`_diagonal_plan`) in the data's dtype, each
    block's (K, rows) product capped and written into the (N, K) result.

    The model's function (:func:`~ppl_mixtures.models.gmm.component_log_prob`, which SVI
    differentiates) builds the (N, 2D) features and several (N, K) tables at once; at
    N = 1e5, D = 32, K = 16 ``predict`` took 2.5x scikit-learn's time by it (see
    ``bench/RESULTS.md``).
    """
    n_samples, n_features = x.shape
    spherical = params.covariance_type == "spherical"
    n_f = _diagonal_features(params.covariance_type, n_features)
    plan = _diagonal_plan(params, x.dtype, x)
    out = x.new_empty(n_samples, params.n_components)
    table = _diagonal_table(x, min(rows, n_samples), plan.coefficients.shape[1], n_f, x.dtype)
    for start in range(0, n_samples, rows):
        block = x[start:start + rows]
        features = table[:block.shape[0]]
        _fill_diagonal(features, block, plan.center, spherical)
        joint = torch.addmm(plan.bias, plan.coefficients, features.T)  # (K, n)
        out[start:start + block.shape[0]] = torch.minimum(joint, plan.top, out=joint).T
    return out


def _table_width(n_f: int, x: Tensor) -> int:
    """Columns of the diagonal E-step's feature table for ``n_f`` features: on CPU, from
    :data:`_PADDED_MIN_WIDTH` up, rounded up to a multiple of :data:`_WIDTH_MULTIPLE`.

    The moment product ``r^T f`` ((K, rows) @ (rows, width)) runs at MKL's speed only for
    some widths: at 5461 rows, K = 16, float64, two threads, widths 33 and 65 took 470-510
    us against 210-250 for 36 and 48 (the spherical table of D = 32 is 33 wide). The zero
    columns cost their share of the density product.
    """
    if not x.is_cpu or n_f < _PADDED_MIN_WIDTH:
        return n_f
    return -(-n_f // _WIDTH_MULTIPLE) * _WIDTH_MULTIPLE


def _takes_numpy(x: Tensor, params: GMMParams, weights: Tensor | None) -> bool:
    """Whether this E-step is taken in NumPy (:func:`_small_diagonal_e_step`,
    :func:`_small_tied_e_step`, :func:`_small_full_e_step`): small CPU float data and
    parameters of its dtype, nothing under autograd."""
    if x.shape[0] * (params.n_components + x.shape[1]) > _SMALL_WORK:
        return False
    dtype = x.dtype
    if not (x.is_cpu and dtype in _NUMPY_FLOATS and x.layout == torch.strided):
        return False
    for t in (x, params.weights, params.means, params.covariances, weights):
        if t is not None and (t.requires_grad or t.dtype != dtype or not t.is_cpu):
            return False
    return True


_NUMPY_FLOATS = (torch.float32, torch.float64)


def _numpy_responsibilities(joint, top, weights: Tensor | None):
    """NumPy's :func:`_softmax_columns` of a (K, N) table of log joints capped at ``top``
    (K,) (the model's clamp at a zero distance), in place: the (weighted) responsibilities
    and the (weighted) log-likelihood of the rows. Call it under ``np.errstate``."""
    np.minimum(joint, top[:, None], out=joint)
    peak = joint.max(0)
    if not np.isfinite(peak).all():  # as _softmax_columns: a row of -inf keeps 0
        peak = np.nan_to_num(peak, nan=0.0, posinf=0.0, neginf=0.0)
    joint -= peak
    resp = np.exp(joint, out=joint)
    total = resp.sum(0)
    resp /= total
    norm = np.log(total)
    norm += peak
    if weights is not None:
        part = weights.numpy().astype(np.float64, copy=False)
        resp *= part
        norm *= part
    return resp, norm.sum()


def _numpy_top(log_det, params: GMMParams, n_features: int):
    """``0.5 (log|P_k| - D log 2 pi) + log pi_k``, (K,): each component's log joint at a zero
    distance (the cap of :func:`_numpy_responsibilities`). Call it under ``np.errstate``."""
    return (0.5 * (log_det - n_features * math.log(2 * math.pi))
            + np.log(params.weights.numpy().astype(np.float64, copy=False)))


def _numpy_stats(x: Tensor, params: GMMParams, weights: Tensor | None, log_likelihood,
                 resp_sum, first, second) -> GMMStats:
    """:class:`GMMStats` of NumPy float64 sums; the likelihood in the data's dtype."""
    likelihood = np.asarray(log_likelihood, dtype=np.float32 if x.dtype == torch.float32
                            else np.float64)
    return GMMStats(_total_weight(x.shape[0], weights), torch.from_numpy(likelihood),
                    torch.from_numpy(resp_sum), torch.from_numpy(first),
                    torch.from_numpy(second), params.means)


def _numpy_inverse_factors(factors: Tensor) -> np.ndarray:
    """``L^-1`` of float64 Cholesky factors (D, D) or (K, D, D), as NumPy float64, by torch's
    triangular solve: scipy's would wake its BLAS threads beside torch's (3.6 ms a call at
    D = 2 on two cores, against ~10 us)."""
    factors = factors.to(torch.float64)
    eye = torch.eye(factors.shape[-1], dtype=torch.float64).expand_as(factors)
    return torch.linalg.solve_triangular(factors, eye, upper=False).numpy()


def _small_tied_e_step(x: Tensor, params: GMMParams, factor: Tensor,
                       weights: Tensor | None = None) -> GMMStats:
    """:func:`_tied_e_step` of small data on the CPU (see :func:`_takes_numpy`), in NumPy
    float64 in one block: the same whitening by ``W = L^-1``, expansion of the distances and
    pooled moments from the Gram matrix, without torch's fixed cost per operation."""
    wide = np.float64
    data = x.numpy().astype(wide, copy=False)
    means = params.means.numpy().astype(wide, copy=False)
    lower = factor.to(torch.float64).numpy()
    n_components, n_features = means.shape
    center = means.sum(0) / n_components
    whiten = _numpy_inverse_factors(factor).T  # W^T: y = xc @ W^T
    whitened_means = (means - center) @ whiten  # (K, D): v_k
    with np.errstate(all="ignore"):  # as torch: log(0) = -inf, silently
        log_det = -2.0 * np.log(np.diagonal(lower)).sum()
        top = _numpy_top(log_det, params, n_features)
        bias = top - 0.5 * (whitened_means * whitened_means).sum(1)
        whitened = (data - center) @ whiten  # (N, D)
        joint = whitened_means @ whitened.T  # (K, N)
        joint += bias[:, None]
        joint -= 0.5 * (whitened * whitened).sum(1)
        resp, log_likelihood = _numpy_responsibilities(joint, top, weights)
    scaled = whitened if weights is None else whitened * weights.numpy()[:, None]
    gram = scaled.T @ whitened
    resp_sum = resp.sum(1)
    linear = resp @ whitened  # (K, D)
    first = linear - resp_sum[:, None] * whitened_means
    cross = whitened_means.T @ linear
    second = gram - (cross + cross.T) + (whitened_means.T * resp_sum) @ whitened_means
    first = first @ lower.T  # back from the whitened frame
    second = lower @ second @ lower.T
    second = 0.5 * (second + second.T)
    return _numpy_stats(x, params, weights, log_likelihood, resp_sum, first, second)


def _small_full_e_step(x: Tensor, params: GMMParams, factors: Tensor,
                       weights: Tensor | None = None) -> GMMStats:
    """The full E-step of small data on the CPU (see :func:`_takes_numpy`), in NumPy float64
    in one block: each row's offset from each mean whitened by ``L_k^-1`` for the densities,
    the moments about the means summed directly (no expansion, so no cancellation to guard
    against). Taken only while the (K, N, D) offsets are small (``_SMALL_FULL_WORK``)."""
    wide = np.float64
    data = x.numpy().astype(wide, copy=False)
    means = params.means.numpy().astype(wide, copy=False)
    n_components, n_features = means.shape
    whiten = _numpy_inverse_factors(factors).transpose(0, 2, 1)  # L_k^-T
    offsets = data[None, :, :] - means[:, None, :]  # (K, N, D): x_n - mu_k
    whitened = offsets @ whiten  # (K, N, D)
    with np.errstate(all="ignore"):  # as torch: log(0) = -inf, silently
        lower = factors.to(torch.float64).numpy()
        log_det = -2.0 * np.log(np.diagonal(lower, axis1=1, axis2=2)).sum(1)
        top = _numpy_top(log_det, params, n_features)
        joint = top[:, None] - 0.5 * (whitened * whitened).sum(2)  # (K, N)
        resp, log_likelihood = _numpy_responsibilities(joint, top, weights)
    resp_sum = resp.sum(1)
    first = (resp[:, None, :] @ offsets)[:, 0, :]  # (K, D)
    second = (offsets * resp[:, :, None]).transpose(0, 2, 1) @ offsets  # (K, D, D)
    second = 0.5 * (second + second.transpose(0, 2, 1))
    return _numpy_stats(x, params, weights, log_likelihood, resp_sum, first, second)


def _small_diagonal_e_step(x: Tensor, params: GMMParams,
                           weights: Tensor | None = None) -> GMMStats:
    """:func:`_diagonal_e_step` of small data on the CPU, in NumPy float64 in one block.

    The same arithmetic (features ``[xc, q]`` about the precision-weighted mean of the
    means, one (K, F) @ (F, N) product with the model's clamp at a zero distance, then
    ``r^T f``), for data of at most ``_SMALL_WORK`` numbers in its (N, K + D) tables: there
    each of the torch route's ~50 operations costs its fixed ~4-6 us, NumPy's ~1-3 us. Float32 data
    is taken in float64 (its likelihood rounded back to float32, as the torch route's): at
    this size the copy is negligible.
    """
    wide = np.float64
    data = x.numpy().astype(wide, copy=False)
    means = params.means.numpy().astype(wide, copy=False)
    variances = params.covariances.numpy().astype(wide, copy=False)
    n_components, n_features = means.shape
    covariance_type = params.covariance_type
    with np.errstate(all="ignore"):  # as torch: log(0) = -inf, 0/0 = nan, silently
        precisions = 1.0 / variances  # spherical (K,), diag (K, D), tied_diag (D,)
        log_precisions = np.log(precisions)
        if covariance_type == "spherical":
            log_det = n_features * log_precisions
            squares = precisions[:, None]  # the coefficient of |xc|^2
        else:
            log_det = log_precisions.sum(-1)
            squares = np.broadcast_to(precisions, means.shape)
        # gmm.expansion_center: per feature, the precision-weighted mean of the means
        center = (squares * means).sum(0) / squares.sum(0)
        center = np.where(np.isfinite(center), center, means.sum(0) / n_components)
        mc = means - center
        scaled = mc * squares
        top = _numpy_top(log_det, params, n_features)
        bias = top - 0.5 * (mc * scaled).sum(1)
        coefficients = np.concatenate([scaled, -0.5 * squares], 1)  # (K, F)
        xc = data - center
        squared = xc * xc
        if covariance_type == "spherical":
            squared = squared.sum(1, keepdims=True)
        features = np.concatenate([xc, squared], 1)  # (N, F)
        joint = coefficients @ features.T  # (K, N)
        joint += bias[:, None]
        resp, log_likelihood = _numpy_responsibilities(joint, top, weights)
    sums = resp @ features  # (K, F)
    resp_sum = resp.sum(1)
    linear, quadratic = sums[:, :n_features], sums[:, n_features:]
    first = linear - resp_sum[:, None] * mc  # about the means, as _diagonal_e_step
    if covariance_type == "spherical":
        total_square = quadratic[:, 0] - (mc * (linear + first)).sum(1)
        second = np.repeat((total_square / n_features)[:, None], n_features, 1)
    else:
        second = quadratic - mc * (linear + first)
    return _numpy_stats(x, params, weights, log_likelihood, resp_sum, first, second)


def _dense_e_step(x: Tensor, params: GMMParams, weights: Tensor | None = None) -> GMMStats:
    """The E-step of a tied or full mixture: the covariances' float64 Cholesky factors (the
    M-step's, :func:`factors_of`) and the pass that suits the case.

    * tied: :func:`_tied_e_step`; small CPU data in one NumPy block
      (:func:`_small_tied_e_step`);
    * full, small CPU data: one NumPy block (:func:`_small_full_e_step`);
    * full, float64, at least :data:`_OUTER_MIN_COMPONENTS` components and the K whitening
      maps small enough to sit side by side: :func:`_quadratic_e_step` (about half the
      arithmetic), unless its rounding bound is exceeded;
    * otherwise :func:`_whitened_e_step`.
    """
    n_components, n_features = params.means.shape
    factors = factors_of(params.covariances)
    if params.covariance_type == "tied":
        if _takes_numpy(x, params, weights):  # NumPy: torch's fixed cost per op dominates
            return _small_tied_e_step(x, params, factors, weights)
        return _tied_e_step(x, params, factors, weights)
    if (n_components * n_features**2 * x.shape[0] <= _SMALL_FULL_WORK
            and _takes_numpy(x, params, weights)):
        return _small_full_e_step(x, params, factors, weights)
    # float64 only: float32 data keeps the whitened frame, whose float32 products are
    # faster than float64 features (0.74-0.82 s against 0.96-1.06 s per E- and M-step at
    # N = 1e5, D = 32, K = 16, full) and lose nothing that matters
    if (x.dtype == torch.float64 and n_components >= _OUTER_MIN_COMPONENTS
            and n_components * n_features**2 <= gmm._STACKED_WHITENING_MAX):
        stats = _quadratic_e_step(x, params, factors, weights)
        if stats is not None:
            return stats
    return _whitened_e_step(x, params, factors, weights)


def _whitened_e_step(x: Tensor, params: GMMParams, factors: Tensor,
                     weights: Tensor | None = None) -> GMMStats:
    """The E-step of a full mixture: one whitened pass for densities and moments
    (``factors``: the covariances' float64 Cholesky factors, :func:`factors_of`).

    With ``y_nk = W_k (x_n - mu_k)``, ``W_k`` the inverse Cholesky factor that
    :func:`~ppl_mixtures.models.gmm.component_log_prob` applies, each chunk of rows is
    whitened once under every component; ``|y_nk|`` gives the log densities, and the same
    ``y`` give ``sum_n r_nk y_nk`` and ``sum_n r_nk y_nk y_nk^T`` (one batched product), which
    ``W_k^-1`` (in float64) maps back to moments about the means. So the E-step costs one
    whitening product and one moment product per row and component, the least a full
    covariance allows. The K maps are applied side by side when they fit in cache, one
    component at a time otherwise (large K D^2), on chunks of rows large enough for the
    matrix products.

    Where :func:`_quadratic_e_step` applies (:func:`_dense_e_step`), it does the same work in
    about half the arithmetic. One component at a time (large K D^2), float64 whitens by
    triangular solves and sums the moments component by component, never holding a (K,
    rows, D) tensor.

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
        center = params.means.mean(0)
        upper, log_det = _solve_factors(factors, x.dtype)
    offsets = params.means - center
    wide_offsets = params.means.to(wide) - center.to(wide)
    xc = x - center
    log_2pi = n_features * math.log(2 * math.pi)
    log_weights = params.weights.log()
    first = x.new_zeros(n_components, n_features, dtype=wide)
    second = x.new_zeros(n_components, n_features, n_features, dtype=wide)
    log_likelihood = x.new_zeros((), dtype=wide)
    resp_sum = x.new_zeros(n_components, dtype=wide)
    stacked = plan is not None  # built only for K D^2 within the side-by-side limit
    if stacked:
        chunks = _row_chunks(n_samples, n_components, n_features)
    else:  # one (rows, D) solve per component: rows enough to keep it efficient
        size = _solved_rows(n_features)
        chunks = [slice(start, start + size) for start in range(0, n_samples, size)]
    # one component at a time the BLAS solves and rank-k updates use every core; torch's own
    # threads, woken by the light operations between them, would spin beside them (D = 784,
    # K = 16, N = 1e4 on 2 cores: 3.1-3.6 s per E-step, 1.8-2.0 s with torch's operations in
    # this thread)
    with _torch_threads_for_blas(x, not stacked):
        for rows in chunks:
            block = xc[rows]
            values = None
            if stacked:
                whitened = plan.chunk(block)  # (n, K, D)
                distances = torch.linalg.vector_norm(whitened, dim=-1)  # (n, K)
                values = (whitened.transpose(0, 1) if whitened_frame
                          else block - offsets[:, None, :])  # (K, n, D)
            else:
                distances = block.new_empty(block.shape[0], n_components)
                work = block.new_empty(block.shape)
                _distances_by_solves(block, upper, offsets, distances, work)
            # the arithmetic of gmm.log_joint, so the likelihood is the model's
            squared = distances.square()
            joint = 0.5 * (log_det - log_2pi - squared) + log_weights
            resp, norm = _softmax(joint)
            if weights is not None:
                resp, norm = resp * weights[rows, None], norm * weights[rows]
            log_likelihood += norm.sum(dtype=wide)
            resp_sum += resp.sum(0, dtype=wide)
            if values is not None:
                _add_moments(first, second, values, resp.T)
                continue
            # moments about the means, in float64 (float32 data too: its rows widened), over
            # the rows whose contribution is not negligible (_contributing_rows); float64
            # rows are taken into the solves' buffer, no new (rows, D) tensor per component
            for k in range(n_components):  # x - mu_k again: n D work beside the n D^2 products
                rows_k, weight = _contributing_rows(resp[:, k], squared[:, k])
                if x.dtype == wide:
                    values_k = work[:weight.shape[0]]
                    if rows_k is None:
                        torch.sub(block, wide_offsets[k], out=values_k)
                    else:
                        torch.index_select(block, 0, rows_k, out=values_k)
                        values_k.sub_(wide_offsets[k])
                else:
                    values_k = (block if rows_k is None else block.index_select(0, rows_k))
                    values_k = values_k.to(wide) - wide_offsets[k]
                weight = weight.to(wide)
                first[k] += weight @ values_k
                _gram(second[k], values_k.mul_(weight.sqrt()[:, None]))
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


@dataclass
class _KeptFeatures:
    """The quadratic features of a fit's rows about a fixed centre (:func:`_kept_features`)."""

    version: int  # x._version when the centre and reach were taken
    center: Tensor  # (D,) float64: the rows' mean
    farthest: float  # max_n |x_n - center|^2
    spans: Tensor  # (D,) float64: max_n |x_ni - center_i|
    table: Tensor | None = None  # (N, T) float64, allocated when first needed
    filled: bool = False  # whether a whole pass has written every row of the table


def _tensor_version(x: Tensor) -> int | None:
    """``x._version``, or None for a tensor without a version counter (inference mode)."""
    try:
        return x._version
    except RuntimeError:  # pragma: no cover - inference tensors only
        return None


def _reach(x: Tensor, center: Tensor) -> tuple[float, Tensor]:
    """``max_n |x_n - center|^2`` and, per feature, ``max_n |x_ni - center_i|``, in float64,
    chunk by chunk (NaN if a row holds one), in one work buffer: a new (chunk, D) tensor and
    its square per chunk were fresh memory every time, and their page faults doubled the
    pass (N = 1e5, D = 32: 13-19 ms, ~3,000-5,000 faults, against 8-10 ms)."""
    x, center = x.detach(), center.detach()  # a bound: no gradient (and out= refuses one)
    farthest = 0.0
    spans = torch.zeros_like(center)
    work = x.new_empty(min(_REACH_ROWS, x.shape[0]), x.shape[1], dtype=center.dtype)
    for start in range(0, x.shape[0], _REACH_ROWS):
        chunk = x[start:start + _REACH_ROWS]
        block = torch.sub(chunk, center, out=work[:chunk.shape[0]]).abs_()
        torch.maximum(spans, block.amax(0), out=spans)
        farthest = max(farthest, float(block.square_().sum(1).max()))
    return farthest, spans


def _expansion_rounding(farthest: float, spans: Tensor, offsets: Tensor,
                        precisions: Tensor) -> float:
    """A bound on the rounding of the quadratic expansion's distances, in units of ``eps``:
    ``max_n sum_ij |P_k,ij| |xc_ni| |xc_nj|`` over rows and components, bounded by the
    smaller of ``max_n |xc_n|^2 max_k |P_k|_F`` and ``max_k s^T |P_k| s`` with ``s`` the
    features' largest deviations (of the rows, and of the means ``offsets`` (K, D)).

    The second is far smaller where the data have constant features (the digits' blank
    pixels): their near-singular covariances make ``|P_k|_F`` huge, but the rows never
    move along them.
    """
    whole = farthest * float(torch.linalg.matrix_norm(precisions).max())
    span = torch.maximum(spans, offsets.abs().amax(0))
    by_feature = float(torch.einsum("i,kij,j->k", span, precisions.abs(), span).max())
    return min(whole, by_feature)


def _kept_features(x: Tensor, width: int) -> _KeptFeatures | None:
    """The quadratic features that the running EM fit of ``x`` keeps between iterations, or
    None (``x`` is not the fit's data, e.g. a stream's batch, or its table of ``width``
    float64 numbers per row would exceed :data:`_KEPT_FEATURES_BYTES`).

    The features are taken about the rows' mean, fixed for the whole fit, so one table serves
    every iteration (the uncached pass takes them about the mean of the component means,
    which moves); the store (:func:`ppl_mixtures.inference.em.loop.kept_tables`) is emptied
    when the fit ends, and a change of ``x`` in place starts a new table.
    """
    store = kept_tables(x)
    version = _tensor_version(x)
    if store is None or version is None or x.shape[0] * width * 8 > _KEPT_FEATURES_BYTES:
        return None
    kept = store.get("quadratic features")
    if kept is None or kept.version != version:
        center = x.mean(0, dtype=torch.float64)
        kept = _KeptFeatures(version, center, *_reach(x, center))
        store["quadratic features"] = kept
    return kept


def _fill_features(table: Tensor, block: Tensor) -> None:
    """Write the quadratic features ``[xc_i xc_j (i <= j), xc]`` of the centred rows
    ``block`` (rows, D) into ``table`` (rows, D (D + 1) / 2 + D)."""
    n_features = block.shape[1]
    column = 0
    for i in range(n_features):  # row i of the upper triangle: xc_i xc_j, j >= i
        torch.mul(block[:, i:i + 1], block[:, i:], out=table[:, column:column + n_features - i])
        column += n_features - i
    table[:, column:] = block


def _quadratic_e_step(x: Tensor, params: GMMParams, factors: Tensor,
                      weights: Tensor | None = None) -> GMMStats | None:
    """Full E-step in float64 from the rows' quadratic features, small K D^2 (tied has its
    own, cheaper pass: :func:`_tied_e_step`).

    With ``xc = x - c`` (``c`` the mean of the component means; in an EM fit whose table of
    features is small enough to keep between iterations, :func:`_kept_features`, the rows'
    mean) and ``m_k = mu_k - c``,
    every Mahalanobis distance is linear in the features ``f(xc) = [xc_i xc_j (i <= j), xc]``:
    ``(xc - m_k)^T P_k (xc - m_k) = sum_{i<=j} (2 - [i = j]) P_k,ij xc_i xc_j
    - 2 (P_k m_k)^T xc + m_k^T P_k m_k``, so one (rows, T) @ (T, K) product gives the log
    densities of a chunk (``T = D (D + 1) / 2 + D``), and ``r^T @ f`` of the same features
    gives ``sum_n r_nk xc_n`` and the upper triangles of ``sum_n r_nk xc_n xc_n^T``, moved to
    the means once at the end: ``S_k = A_k - (m_k L_k^T + L_k m_k^T) + N_k m_k m_k^T``. Per
    row and component that is about ``D^2`` multiply-adds against the ``2 D^2`` of whitening
    and then summing moments (measured at N = 1e5, D = 32, K = 16: see ``bench/RESULTS.md``).
    Like the diagonal E-step, the distance is capped below at zero (the model's clamp).
    The expansion cancels: its rounding is about ``eps sum_ij |P_k,ij| |xc_i| |xc_j|``
    (:func:`_expansion_rounding`). Returns None, for the whitened E-step to run instead,
    when that bound exceeds :data:`_QUADRATIC_ROUNDING` (a near-singular covariance along
    which the rows move, or rows far from the means): on ordinary data it is 1e-7 or less
    (the fused-kernel tests compare it with the whitened densities at 50 standard
    deviations from the origin). Constant features (blank pixels) do not count: the rows
    never leave them, however small the variance floor makes their covariances.
    """
    n_samples, n_features = x.shape
    n_components = params.n_components
    wide = torch.float64
    n_pairs = n_features * (n_features + 1) // 2
    # in an EM fit of x with a small table: features about the rows' mean, built in the
    # first E-step and read back in the others
    kept = _kept_features(x, n_pairs + n_features)
    means = params.means.to(wide)
    center = kept.center if kept is not None else means.mean(0)
    mc = means - center  # (K, D)
    eye = torch.eye(n_features, dtype=wide, device=x.device)
    inverse = torch.linalg.solve_triangular(factors.to(wide), eye, upper=False)  # L^-1
    precisions = inverse.transpose(-1, -2) @ inverse  # (K, D, D)
    # the expansion's rounding is about eps sum |P_ij| |xc_i| |xc_j|: past _QUADRATIC_ROUNDING
    # (a near-singular covariance, rows far out) the whitened E-step is the accurate one. The
    # rows' reach is checked before any features are built (an n D pass, chunk by chunk:
    # a pass stopped part way when a later chunk was beyond reach cost 10 % of the
    # digits' E-step for nothing; a kept table's reach is taken once)
    farthest, spans = (kept.farthest, kept.spans) if kept is not None else _reach(x, center)
    rounding = torch.finfo(wide).eps * _expansion_rounding(farthest, spans, mc, precisions)
    if not rounding <= _QUADRATIC_ROUNDING:  # NaN and inf too
        return None
    if kept is not None and kept.table is None:
        kept.table = x.new_empty(n_samples, n_pairs + n_features, dtype=wide)
    fill = kept is None or not kept.filled
    log_det = 2.0 * inverse.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    upper_i, upper_j = torch.triu_indices(n_features, n_features, device=x.device)
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
        features = (x.new_empty(min(rows, end - begin), n_pairs + n_features, dtype=wide)
                    if kept is None else None)
        sums = x.new_zeros(n_components, n_pairs + n_features, dtype=wide)
        log_likelihood = x.new_zeros((), dtype=wide)
        resp_sum = x.new_zeros(n_components, dtype=wide)
        for start in range(begin, end, rows):
            stop = min(start + rows, end)
            table = features[:stop - start] if kept is None else kept.table[start:stop]
            if fill:
                _fill_features(table, x[start:stop] - center)
            joint = torch.addmm(bias, coefficients, table.T)  # (K, rows)
            resp, norm = _softmax_columns(torch.minimum(joint, top, out=joint))
            if weights is not None:
                part = weights[start:stop]
                resp, norm = resp * part, norm * part
            log_likelihood += norm.sum(dtype=wide)
            resp_sum += resp.sum(1, dtype=wide)
            sums.addmm_(resp, table)
        return sums, log_likelihood, resp_sum

    sums, log_likelihood, resp_sum = _over_row_ranges(rows_pass, n_samples, rows)
    if kept is not None:
        kept.filled = True
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
    plan = _tied_plan(params, factor)
    whitened_means = plan.whitened_means  # (K, D): v_k
    rows = _tied_rows(n_components, n_features)

    def rows_pass(begin: int, end: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Sums of the chunks of rows [begin, end): (r^T y, upper(G), log-likelihood, N_k)."""
        linear = x.new_zeros(n_components, n_features, dtype=wide)
        gram = x.new_zeros(n_features, n_features, dtype=wide)
        log_likelihood = x.new_zeros((), dtype=wide)
        resp_sum = x.new_zeros(n_components, dtype=wide)
        for start in range(begin, end, rows):
            stop = min(start + rows, end)
            whitened, joint = _tied_joint(plan, x[start:stop])
            resp, norm = _softmax_columns(joint)
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


@dataclass
class _TiedPlan:
    """The per-parameters part of a tied mixture's densities (:func:`_tied_e_step`), float64:
    with ``y = (x - center) @ whiten``, ``min(whitened_means @ y^T + bias - |y|^2 / 2, top)``
    is ``log pi_k + log N(x | mu_k, Sigma)``, (K, rows)."""

    center: Tensor  # (D,): the mean of the means
    whiten: Tensor  # (D, D): W^T, W = L^-1
    whitened_means: Tensor  # (K, D): v_k = W (mu_k - c)
    top: Tensor  # (K, 1): the log joint at a zero distance
    bias: Tensor  # (K, 1): top - |v_k|^2 / 2


def _tied_plan(params: GMMParams, factor: Tensor) -> _TiedPlan:
    """:class:`_TiedPlan` of ``params`` from the shared float64 Cholesky factor ``factor``."""
    wide = torch.float64
    n_features = params.means.shape[1]
    means = params.means.to(wide)
    center = means.mean(0)
    eye = torch.eye(n_features, dtype=wide, device=means.device)
    whiten = torch.linalg.solve_triangular(factor, eye, upper=False).T  # W^T: y = xc @ W^T
    whitened_means = (means - center) @ whiten  # (K, D): v_k
    log_det = -2.0 * factor.diagonal().log().sum()
    top = 0.5 * (log_det - n_features * math.log(2 * math.pi)) + params.weights.log()
    bias = (top - 0.5 * whitened_means.square().sum(-1))[:, None]
    return _TiedPlan(center, whiten, whitened_means, top[:, None], bias)


def _tied_rows(n_components: int, n_features: int) -> int:
    """Rows of a tied chunk: its (rows, D) whitened rows and (K, rows) joints stay small."""
    return max(1, _OUTER_ELEMENTS // (n_components + 2 * n_features))


def _tied_scoring_log_joint(x: Tensor, params: GMMParams, factor: Tensor) -> Tensor:
    """:func:`scoring_log_joint` of a tied mixture: the E-step's one whitening product per
    chunk of rows (:func:`_tied_plan`, float64), each chunk's (K, rows) joints capped and
    written into the (N, K) result in the data's dtype. The model's function applies the
    shared whitening map once per component (K D^2 per row against D^2 + K D here)."""
    wide = torch.float64
    n_samples, n_features = x.shape
    plan = _tied_plan(params, factor.to(wide))
    rows = _tied_rows(params.n_components, n_features)
    out = x.new_empty(n_samples, params.n_components)
    for start in range(0, n_samples, rows):
        joint = _tied_joint(plan, x[start:start + rows])[1]
        out[start:start + joint.shape[1]] = joint.T
    return out


def _tied_joint(plan: _TiedPlan, block: Tensor) -> tuple[Tensor, Tensor]:
    """The whitened rows ``y`` (rows, D) of ``block`` and their log joints, capped at
    ``plan.top`` (K, rows), in float64."""
    whitened = (block.to(torch.float64) - plan.center) @ plan.whiten
    joint = torch.addmm(plan.bias, plan.whitened_means, whitened.T)
    joint -= 0.5 * whitened.square().sum(1)
    return whitened, torch.minimum(joint, plan.top, out=joint)


def _distances_by_solves(block: Tensor, upper: Tensor, offsets: Tensor, out: Tensor,
                         work: Tensor) -> None:
    """Write ``|L_k^-1 (x_n - mu_k)|`` of centred rows ``block`` (n, D) into ``out`` (n, K).

    ``upper``: the factors ``L_k^T`` (K, D, D), C-contiguous, in the rows' dtype; ``offsets``
    (K, D): the means less the rows' centre; ``work`` (n, D): a buffer, left holding the last
    component's whitened rows. ``y = (x - mu) L^-T`` is a triangular solve, half the work of a
    product with ``L^-1``, one component at a time: never a (K, n, D) tensor.
    """
    for k in range(upper.shape[0]):
        _whiten_in_place(upper[k], torch.sub(block, offsets[k], out=work))
        torch.linalg.vector_norm(work, dim=-1, out=out[:, k])


def scoring_log_joint(x: Tensor, params: GMMParams) -> Tensor:
    """:func:`~ppl_mixtures.models.gmm.log_joint` for scoring and prediction (no autograd):
    ``log pi_k + log N(x_n | mu_k, Sigma_k)``, shape (n_samples, n_components).

    Full covariances whose K whitening maps are applied one component at a time (large
    K D^2) take the E-step's route on CPU: triangular solves with the M-step's Cholesky
    factors (:func:`factors_of`, no inverse), torch's operations in one thread beside the
    BLAS (measured at D = 784, K = 16, N = 1e4 on 2 cores: see ``bench/RESULTS.md``).
    Diagonal families and tied covariances take their E-step's products chunk by chunk
    (:func:`_diagonal_scoring_log_joint`, :func:`_tied_scoring_log_joint`). Every other case, and any input that requires
    grad, is the model's own function.
    """
    n_components, n_features = params.means.shape
    graded = torch.is_grad_enabled() and any(
        t.requires_grad for t in (x, params.weights, params.means, params.covariances))
    if params.covariance_type in gmm.DIAGONAL_TYPES and not graded and x.shape[0] > 0:
        from ppl_mixtures.inference.em.gmm import e_step_block_rows

        return _diagonal_scoring_log_joint(x, params,
                                           e_step_block_rows(n_components, n_features))
    if params.covariance_type == "tied" and not graded and x.shape[0] > 0:
        return _tied_scoring_log_joint(x, params, factors_of(params.covariances))
    if (params.covariance_type != "full" or x.device.type != "cpu" or not _TRSM
            or x.dtype not in _TRSM
            or n_components * n_features**2 <= gmm._STACKED_WHITENING_MAX or graded):
        return gmm.log_joint(x, params)
    upper, log_det = _solve_factors(factors_of(params.covariances), x.dtype)
    center = params.means.mean(0)
    xc = (x - center).contiguous()
    offsets = params.means - center
    distances = x.new_empty(x.shape[0], n_components)
    size = _solved_rows(n_features)
    with _torch_threads_for_blas(x, True):
        work = xc.new_empty(min(size, x.shape[0]), n_features)
        for start in range(0, x.shape[0], size):
            block = xc[start:start + size]
            _distances_by_solves(block, upper, offsets, distances[start:start + size],
                                 work[:block.shape[0]])
    log_2pi = n_features * math.log(2 * math.pi)
    return 0.5 * (log_det - log_2pi - distances.square()) + params.weights.log()


def _solve_factors(factors: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``L_k^T`` (K, D, D), C-contiguous in ``dtype`` (a transposed view would be copied by
    every solve), and ``log |Sigma_k^-1|`` (K,) from the float64 factors, in ``dtype``."""
    rounded = factors.to(dtype)
    log_det = -2.0 * rounded.to(torch.float64).diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return rounded.transpose(-1, -2).contiguous(), log_det.to(dtype)


def _solved_rows(n_features: int) -> int:
    """Rows per chunk solved one component at a time (:data:`_WHITENED_ELEMENTS`)."""
    return max(_MIN_WHITENED_ROWS, _WHITENED_ELEMENTS // n_features)


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
    N = 1e5, D = 32, K = 16 1.6-1.7x faster; idle, 94 against 132 ms; tied, with each
    worker's operations in one thread and its Gram matrices by torch, 33-38 against 58-83
    ms with scipy's rank-k update in the workers). The ranges depend only on N and the thread
    count, so a fit is deterministic for a given ``torch.get_num_threads()``; the pool lives
    for one pass and leaves no thread behind.
    """
    n_chunks = -(-n_samples // rows)
    workers = _parallel_workers(n_chunks)
    if workers == 1:
        return rows_pass(0, n_samples)
    from concurrent.futures import ThreadPoolExecutor

    cuts = [rows * (n_chunks * i // workers) for i in range(workers)] + [n_samples]
    caller_threads = torch.get_num_threads()
    one_each = _ONE_THREAD_EACH
    # every worker waits until all are started: a worker at work holds the GIL between its
    # operations, so the start of the next thread (which needs the GIL) waited for it,
    # ~3 ms a thread (cProfile of the full E-step at N = 1e5, D = 32, K = 16)
    started = threading.Event()

    def in_worker(begin: int, end: int) -> tuple[Tensor, ...]:
        started.wait()
        if not one_each:
            return rows_pass(begin, end)
        # the workers already use every core: a worker's own operations in one thread (as
        # many threads again each would oversubscribe the cores). Thread-local in effect:
        # the caller's count is put back before the worker ends (torch also records it
        # for threads it starts later), and the pool's threads end with the pass
        torch.set_num_threads(1)
        _WORKER.active = True
        try:
            return rows_pass(begin, end)
        finally:
            _WORKER.active = False
            torch.set_num_threads(caller_threads)

    with ThreadPoolExecutor(workers) as pool:
        try:
            futures = [pool.submit(in_worker, begin, end)
                       for begin, end in zip(cuts[:-1], cuts[1:], strict=True)]
        finally:
            started.set()
        parts = [future.result() for future in futures]
    return tuple(sum(values[1:], values[0]) for values in zip(*parts, strict=True))


def _softmax_columns(joint: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`_softmax` of a (K, rows) table, over its components (dim 0); overwrites it."""
    top = joint.amax(0).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
    resp = joint.sub_(top).exp_()
    total = resp.sum(0)
    resp /= total
    return resp, top + total.log()


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


def _whiten_in_place(upper: Tensor, rows: Tensor) -> None:
    """Overwrite ``rows`` (n, D), C-contiguous, with ``rows L^-T`` (each row ``r`` becomes
    ``L^-1 r``; ``upper`` is ``L^T``, C-contiguous, in the rows' dtype).

    On CPU by the BLAS triangular solve in place (scipy's ``trsm``: the rows, read as a
    Fortran-ordered (D, n) matrix, are its right-hand sides, and ``L^T`` read that way is
    ``L``), which neither copies the rows nor allocates: at D = 784 and 2,675 rows on one
    core 47 ms against 64-78 ms for ``torch.linalg.solve_triangular``. Elsewhere, and in the
    row-range workers of :func:`_over_row_ranges`, by torch.
    """
    if (rows.device.type == "cpu" and rows.dtype in _TRSM and rows.shape[0] > 0
            and rows.is_contiguous() and upper.is_contiguous()
            and not getattr(_WORKER, "active", False)):
        right = rows.detach().numpy().T  # (D, n), Fortran-ordered: the same memory
        solved = _TRSM[rows.dtype](1.0, upper.detach().numpy().T, right, side=0, lower=1,
                                   overwrite_b=1)
        if not numpy_shares_memory(solved, right):  # pragma: no cover - scipy copied
            rows.copy_(torch.from_numpy(solved.T))
        return
    torch.linalg.solve_triangular(upper, rows, upper=True, left=False, out=rows)


def _contributing_rows(weight: Tensor, squared: Tensor) -> tuple[Tensor | None, Tensor]:
    """The rows of a chunk whose contribution to a component's moments is not negligible.

    ``weight`` (rows,): the responsibilities ``r_nk`` (times the sample weights); ``squared``
    (rows,): the squared Mahalanobis distances ``d_nk^2`` under the component. A row adds
    ``r_nk`` to ``N_k``, a first moment of Mahalanobis length ``r_nk d_nk`` and a second one of
    trace ``r_nk d_nk^2`` in the component's own metric, all at most ``c_nk = r_nk (1 +
    d_nk^2)``. Rows with ``c_nk`` below ``eps / (10 n)`` times the chunk's largest ``c`` (``n``
    rows, ``eps`` float64's) are left out: together they weigh less than a tenth of one
    rounding unit of the kept sums, so the moments are those of every row to rounding.

    At D = 784 EM's first E-step from a broad start gives most ``r_nk`` tiny but not zero
    (160,000 nonzero of 160,000 at K = 16, N = 1e4; 28,000 kept), and each component's
    rank-k update runs over its own rows only. Returns ``(None, weight)`` when every row
    counts, else the kept rows' indices and weights (an empty index when none does).
    """
    contribution = weight * (1.0 + squared)
    top = contribution.amax() if contribution.numel() else contribution.new_zeros(())
    return _kept_rows(weight, contribution > top * (_NEGLIGIBLE_ROUNDING
                                                    / max(1, weight.shape[0])))


def _responsible_rows(weight: Tensor) -> tuple[Tensor | None, Tensor]:
    """The rows of a chunk that a component's moments need: those with ``r_nk > 0``.

    A row whose responsibility underflowed to exactly zero adds exact zeros to the moments,
    so leaving it out changes nothing but the work: with separated components (most
    responsibilities 0 at D = 784) each component's rank-k update runs over its own rows
    only. Returns ``(None, weight)`` when every row counts, else the kept rows' indices and
    weights (an empty index when none does).
    """
    return _kept_rows(weight, weight > 0)


def _kept_rows(weight: Tensor, kept: Tensor) -> tuple[Tensor | None, Tensor]:
    """``(None, weight)`` when ``kept`` (a boolean mask over the rows) holds everywhere, else
    the kept rows' indices and weights."""
    if bool(kept.all()):
        return None, weight
    rows = kept.nonzero().squeeze(1)
    return rows, weight.index_select(0, rows)


@contextlib.contextmanager
def _torch_threads_for_blas(x: Tensor, active: bool):
    """Torch's operations in the calling thread only, while a pass whose work is scipy's BLAS
    runs (``active``, on CPU, scipy at hand, not in a row-range worker); its thread count is
    put back afterwards."""
    threads = torch.get_num_threads()
    if (not active or threads == 1 or x.device.type != "cpu" or x.dtype not in _TRSM
            or getattr(_WORKER, "active", False)):
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _gram(out: Tensor, values: Tensor) -> None:
    """Add the upper triangle of ``values^T values`` ((n, D) -> (D, D)) to ``out`` (float64).

    On CPU this is the BLAS rank-k update (``syrk``, half the work of ``values.T @ values``:
    measured 2x faster at n = 1024, D = 784 on one core); elsewhere, and in the row-range
    workers of :func:`_over_row_ranges` (scipy's BLAS would start its own threads beside
    them), a plain product.
    """
    if (values.device.type == "cpu" and values.dtype in _SYRK and values.shape[0] > 0
            and not getattr(_WORKER, "active", False)):
        # values.T is Fortran-ordered (D, n): syrk reads it in place, A A^T = values^T values
        if out.dtype == values.dtype and out.is_contiguous():
            # added into ``out`` in place: out^T read as Fortran-ordered, its lower triangle
            # is out's upper one
            target = out.numpy().T
            added = _SYRK[values.dtype](1.0, values.detach().numpy().T, beta=1.0, c=target,
                                        lower=1, overwrite_c=1)
            if not numpy_shares_memory(added, target):  # pragma: no cover - scipy copied
                out.copy_(torch.from_numpy(added.T))
            return
        product = _SYRK[values.dtype](1.0, values.detach().numpy().T, lower=0)
        out += torch.from_numpy(product).to(out.dtype)
    else:
        out += (values.T @ values).to(out.dtype).triu()


def _symmetric(upper: Tensor) -> Tensor:
    """Whole symmetric matrices (..., D, D) from their upper triangles (``upper`` is
    overwritten: its strict lower triangles must be zero, as :func:`_add_moments` leaves
    them)."""
    return upper.add_(upper.triu(1).transpose(-1, -2))



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
        (K, D), for ``"diag"`` and ``"tied_diag"``; for ``"spherical"`` the mean of that
        diagonal over the features, repeated in each of the D columns (the spherical M-step
        needs only the total ``sum_n r_nk |x_n - shift_k|^2``), shape (K, D).
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
    over the components for ``"tied"`` (shape (D, D)), averaged over the features and
    repeated for ``"spherical"`` (shape (K, D)), unchanged otherwise."""
    if covariance_type == "tied":
        return second.sum(0)
    if covariance_type == "spherical":
        return second.mean(-1, keepdim=True).expand_as(second).contiguous()
    return second


def _total_weight(n_samples: int, weights: Tensor | None) -> float:
    """``n_samples``, or ``sum_n w_n`` (in float64) with weights."""
    return float(n_samples) if weights is None else float(weights.sum(dtype=torch.float64))
