"""The fused E-step kernels against the plain two-step E-step they replace.

Reference: responsibilities from :func:`ppl_mixtures.models.gmm.log_joint` (the Pyro model's
densities) and moments about the means summed row by row in float64
(``stats_from_responsibilities``), on the same blocks of rows.
"""

import numpy as np
import pytest
import torch

from ppl_mixtures.datasets import make_gmm
from ppl_mixtures.inference.em import _gmm_kernels as kernels
from ppl_mixtures.inference.em import gmm as em_gmm
from ppl_mixtures.models import gmm

TYPES = ("spherical", "diag", "tied_diag", "tied", "full")
DIAGONAL = ("spherical", "diag", "tied_diag")
#: The types whose small E-steps NumPy takes (see kernels._takes_numpy).
SMALL_ROUTE = (*DIAGONAL, "tied", "full")


_NUMPY_ROUTE = {"_SMALL_WORK": kernels._SMALL_WORK, "_SMALL_FULL_WORK": kernels._SMALL_FULL_WORK}


@pytest.fixture(autouse=True)
def _torch_kernels(monkeypatch):
    """This module tests torch's E-step kernels on small data: the NumPy route that small
    CPU data takes by default is off unless a test asks for it (``numpy_route``)."""
    for name in _NUMPY_ROUTE:
        monkeypatch.setattr(kernels, name, -1)


@pytest.fixture
def numpy_route(monkeypatch):
    """Small CPU data takes the NumPy E-steps, as by default."""
    for name, value in _NUMPY_ROUTE.items():
        monkeypatch.setattr(kernels, name, value)


def _start(covariance_type, n=400, d=5, k=4, offset=0.0):
    X, _ = make_gmm(n, k, d, separation=3.0, random_state=0)
    x = torch.as_tensor(X) + offset
    resp = torch.softmax(torch.randn(n, k, generator=torch.Generator().manual_seed(1),
                                     dtype=torch.float64), 1)
    return x, em_gmm.params_from_responsibilities(x, resp, covariance_type)


def _reference(x, params, weights=None):
    resp, sample_ll = em_gmm.responsibilities(x, params)
    return em_gmm.stats_from_responsibilities(x, resp, sample_ll, params, weights)


def _assert_same(stats, reference, rtol):
    assert stats.n_samples == pytest.approx(reference.n_samples, rel=1e-12)
    for name in em_gmm.GMMStats.summed_fields[1:]:
        value, expected = getattr(stats, name), getattr(reference, name)
        scale = float(torch.as_tensor(expected).abs().max())
        torch.testing.assert_close(torch.as_tensor(value, dtype=torch.float64),
                                   torch.as_tensor(expected, dtype=torch.float64),
                                   rtol=0, atol=rtol * scale, msg=name)


@pytest.mark.parametrize("covariance_type", TYPES)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("route", ["torch", "numpy"])
def test_fused_e_step_matches_the_two_step_one(covariance_type, weighted, route, request):
    """Densities and statistics in one pass (matmul-shaped for the diagonal types, whitened
    for tied and full): the same sums to float64 rounding, with and without weights; the
    small data by torch's kernels and by the NumPy route (the default of such data)."""
    if route == "numpy":
        request.getfixturevalue("numpy_route")
    x, params = _start(covariance_type, offset=50.0)  # far from the origin: cancellation
    weights = (torch.rand(x.shape[0], generator=torch.Generator().manual_seed(2),
                          dtype=torch.float64) * 3 if weighted else None)
    _assert_same(em_gmm.e_step(x, params, weights), _reference(x, params, weights), 1e-10)


@pytest.mark.parametrize("offset", [0.0, 50.0, 1e4])
@pytest.mark.parametrize("weighted", [False, True])
def test_whitened_float64_moments_from_features_match_the_reference(offset, weighted,
                                                                      monkeypatch):
    """Float64, the K maps side by side, quadratic E-step turned away: the densities are
    whitened and the moments come from the rows' quadratic features about the centre of the
    means, moved to each mean; far from the origin too (the centring cancels the offset)."""
    x, params = _start("full", offset=offset)
    weights = (torch.rand(x.shape[0], generator=torch.Generator().manual_seed(2),
                          dtype=torch.float64) * 3 if weighted else None)
    monkeypatch.setattr(kernels, "_OUTER_MIN_COMPONENTS", 10**9)
    monkeypatch.setattr(kernels, "_row_chunks", lambda n, k, d: [slice(s, min(s + 37, n))
                                                            for s in range(0, n, 37)])
    _assert_same(em_gmm.e_step(x, params, weights), _reference(x, params, weights), 1e-10)


@pytest.mark.parametrize("covariance_type", ["diag", "spherical"])
def test_blocks_by_rows_add_up(covariance_type, monkeypatch):
    x, params = _start(covariance_type)
    whole = em_gmm.e_step(x, params)
    monkeypatch.setattr(em_gmm, "_E_STEP_BLOCK_ELEMENTS", 4 * 37)  # blocks of 37 rows
    assert em_gmm.e_step_block_rows(4) == 37
    _assert_same(em_gmm.e_step(x, params), whole, 1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_one_component_at_a_time_matches_side_by_side(dtype, monkeypatch):
    """Large K D^2: float64 whitens by triangular solves, float32 by the rounded inverse."""
    x, params = _start("full")
    x, params = x.to(dtype), params.to(dtype)
    stacked = em_gmm.e_step(x, params)
    monkeypatch.setattr(gmm, "_STACKED_WHITENING_MAX", 0)
    alone = em_gmm.e_step(x, params)
    _assert_same(alone, stacked, 1e-12 if dtype == torch.float64 else 1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rows_a_component_does_not_explain_are_left_out_exactly(dtype, monkeypatch):
    """Separated components: most responsibilities underflow to exactly 0, and one component
    at a time sums each one's moments over its own rows only; the statistics equal the
    side-by-side E-step's (every row), to rounding."""
    X, labels = make_gmm(300, 4, 6, separation=40.0, random_state=3)
    x = torch.as_tensor(X)
    resp = torch.nn.functional.one_hot(torch.as_tensor(labels), 4).double()
    fitted = em_gmm.params_from_responsibilities(x, resp, "full")
    # means moved off the fixed point, so that the first moments are not zero
    params = gmm.GMMParams(fitted.weights, fitted.means + 0.5, fitted.covariances, "full")
    x, params = x.to(dtype), params.to(dtype)
    exact, _ = em_gmm.responsibilities(x, params)
    assert 0.5 < float((exact == 0).double().mean()) < 1.0  # many exact zeros, not all
    rows, weight = kernels._responsible_rows(exact[:, 0])
    assert rows is not None and torch.equal(weight, exact[rows, 0]) and (weight > 0).all()
    stacked = em_gmm.e_step(x, params)
    monkeypatch.setattr(gmm, "_STACKED_WHITENING_MAX", 0)
    _assert_same(em_gmm.e_step(x, params), stacked, 1e-12 if dtype == torch.float64 else 1e-5)


def test_gram_without_syrk_is_the_same(monkeypatch):
    """The BLAS rank-k update and the plain product give the same upper triangle."""
    values = torch.randn(50, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    fast = torch.zeros(6, 6, dtype=torch.float64)
    kernels._gram(fast, values)
    monkeypatch.setattr(kernels, "_SYRK", {})
    plain = torch.zeros(6, 6, dtype=torch.float64)
    kernels._gram(plain, values)
    torch.testing.assert_close(fast, plain)
    torch.testing.assert_close(kernels._symmetric(plain), values.T @ values)


def test_float32_diagonal_e_step_matches_float64():
    x, params = _start("diag")
    single = em_gmm.e_step(x.float(), params.to(torch.float32))
    double = em_gmm.e_step(x, params.to(torch.float32).to(torch.float64))
    _assert_same(single, double, 1e-5)


@pytest.mark.parametrize("covariance_type", ["diag", "spherical"])
def test_light_float32_diagonal_e_step_runs_in_float64(covariance_type, monkeypatch):
    """Float32 data in light blocks on CPU: the whole pass in float64, so its sums equal the
    float64 E-step of the same (float32) numbers to float64 rounding; its likelihood comes
    back in float32 and its shift is the float32 means. Heavy blocks (the threshold lowered
    to 0) keep float32 densities: equal to float32 rounding only."""
    x, params = _start(covariance_type, offset=50.0)
    single = params.to(torch.float32)
    light = em_gmm.e_step(x.float(), single)
    double = em_gmm.e_step(x.float().double(), single.to(torch.float64))
    for name in ("resp_sum", "first_moment", "second_moment"):
        value, expected = getattr(light, name), getattr(double, name)
        torch.testing.assert_close(value, expected, rtol=0,
                                   atol=1e-12 * float(expected.abs().max()), msg=name)
    assert light.log_likelihood.dtype == torch.float32 and light.shift is single.means
    assert float(light.log_likelihood) == float(double.log_likelihood.float())
    monkeypatch.setattr(kernels, "_THREADED_DIAGONAL_WORK", 0)
    heavy = em_gmm.e_step(x.float(), single)
    _assert_same(heavy, double, 1e-5)
    assert float((heavy.first_moment - double.first_moment).abs().max()) > 0


@pytest.mark.parametrize("covariance_type", ["full"])
def test_quadratic_features_match_the_whitened_e_step(covariance_type, monkeypatch):
    """Float64, K D^2 small: densities and moments from the rows' quadratic features, about
    the centre and moved to the means, equal the whitened E-step's to float64 rounding,
    50 standard deviations from the origin and with several chunks of rows."""
    x, params = _start(covariance_type, offset=50.0)
    fast = em_gmm.e_step(x, params)
    monkeypatch.setattr(kernels, "_OUTER_MIN_COMPONENTS", 10**9)
    _assert_same(fast, em_gmm.e_step(x, params), 1e-12)
    monkeypatch.undo()
    monkeypatch.setattr(kernels, "_OUTER_ELEMENTS", 25 * 7)  # chunks of 7 rows
    _assert_same(em_gmm.e_step(x, params), fast, 1e-12)


@pytest.mark.parametrize("weighted", [False, True])
def test_row_ranges_in_threads_add_up_to_the_serial_pass(weighted, monkeypatch):
    """The quadratic pass split over three threads (contiguous ranges of chunks, sums added
    in range order) equals the serial pass to rounding, and repeats bit for bit."""
    x, params = _start("full", n=401)
    weights = (torch.rand(401, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
               if weighted else None)
    monkeypatch.setattr(kernels, "_OUTER_ELEMENTS", 25 * 9)  # chunks of 9 rows: 45 of them
    monkeypatch.setattr(kernels, "_parallel_workers", lambda n_chunks: 1)
    serial = em_gmm.e_step(x, params, weights)
    monkeypatch.setattr(kernels, "_parallel_workers", lambda n_chunks: 3)
    threaded = em_gmm.e_step(x, params, weights)
    _assert_same(threaded, serial, 1e-12)
    _assert_same(em_gmm.e_step(x, params, weights), threaded, 0.0)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("route", ["torch", "numpy"])
def test_tied_moments_pooled_in_the_whitened_frame_keep_a_thin_direction(weighted, route,
                                                                        monkeypatch, request):
    """Float64 tied: one whitening for the densities, the moments pooled over components
    from the whitened rows' Gram matrix and mapped back once. With a shared covariance whose
    least eigenvalue is 1e-10, 50 standard deviations from the origin, the M-step's
    covariance equals the per-component reference's in the whitened frame (where rounding
    is relative to the identity) to 1e-9, and chunks of 7 rows over 3 threads add up; by
    NumPy in one block (small data, the default) and by torch's chunks."""
    if route == "numpy":
        request.getfixturevalue("numpy_route")
    x, params = _start("tied", offset=50.0)
    thin = torch.diag(torch.tensor([1e-10, 1.0, 1.0, 1.0, 1.0], dtype=torch.float64))
    params = gmm.GMMParams(params.weights, params.means, thin, "tied")
    weights = (torch.rand(x.shape[0], generator=torch.Generator().manual_seed(2),
                          dtype=torch.float64) * 3 if weighted else None)
    stats, reference = em_gmm.e_step(x, params, weights), _reference(x, params, weights)
    assert stats.second_moment.shape == (5, 5)  # pooled
    torch.testing.assert_close(stats.log_likelihood, reference.log_likelihood, rtol=1e-12,
                               atol=0)
    ours, theirs = (em_gmm.m_step(s, "tied", reg_covar=0.0) for s in (stats, reference))
    root = torch.linalg.cholesky(theirs.covariances)
    whitened = torch.linalg.solve_triangular(root, torch.linalg.solve_triangular(
        root, ours.covariances - theirs.covariances, upper=False).T, upper=False)
    assert float(whitened.abs().max()) < 1e-9
    torch.testing.assert_close(ours.means, theirs.means, rtol=0, atol=1e-10)
    monkeypatch.setattr(kernels, "_OUTER_ELEMENTS", 7 * (4 + 10))  # chunks of 7 rows
    monkeypatch.setattr(kernels, "_parallel_workers", lambda n_chunks: 3)
    _assert_same(em_gmm.e_step(x, params, weights), stats, 1e-12)


@pytest.mark.parametrize("covariance_type", ["diag", "spherical"])
def test_diagonal_blocks_add_up_in_this_thread_and_over_row_ranges(covariance_type,
                                                                   monkeypatch):
    """The diagonal E-step's blocks (45 of 9 rows, the feature tables reused from block to
    block) add up to the two-step reference, with and without weights, in the caller's
    thread (light blocks) and split over three row-range threads (heavy blocks: the
    threshold lowered here), whose sums, added in range order, equal the serial pass's."""
    x, params = _start(covariance_type, n=401)
    weights = torch.rand(401, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    monkeypatch.setattr(em_gmm, "_E_STEP_BLOCK_ELEMENTS", 9 * (4 + 5))  # blocks of 9 rows
    monkeypatch.setattr(em_gmm, "_MIN_BLOCK_ROWS", 1)
    monkeypatch.setattr(kernels, "_parallel_workers", lambda n_chunks: 3)
    serial = {}
    for name, w in (("plain", None), ("weighted", weights)):
        serial[name] = em_gmm.e_step(x, params, w)
        _assert_same(serial[name], _reference(x, params, w), 1e-10)
    ranges = []
    monkeypatch.setattr(kernels, "_THREADED_DIAGONAL_WORK", 0)
    over_ranges = kernels._over_row_ranges
    monkeypatch.setattr(kernels, "_over_row_ranges",
                        lambda *args: ranges.append(args[1:]) or over_ranges(*args))
    for name, w in (("plain", None), ("weighted", weights)):
        _assert_same(em_gmm.e_step(x, params, w), serial[name], 1e-12)
    assert ranges == [(401, 9), (401, 9)]


@pytest.mark.parametrize("covariance_type,n_features", [("diag", 13), ("spherical", 30),
                                                         ("tied_diag", 13)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_padded_feature_table_gives_the_same_sums(covariance_type, n_features, dtype,
                                                  monkeypatch):
    """The diagonal E-step's feature table is widened with zero columns to a multiple of
    ``_WIDTH_MULTIPLE`` (26 -> 36 for diag at D = 13, 31 -> 36 for spherical at D = 30):
    the same sums as the table of its own width, and as the two-step reference."""
    x, params = _start(covariance_type, n=401, d=n_features, offset=50.0)
    n_f = n_features + (1 if covariance_type == "spherical" else n_features)
    assert kernels._table_width(n_f, x) == 36
    assert kernels._table_width(n_f, x.to("meta")) == n_f  # CPU only
    x = x.to(dtype)
    params = gmm.GMMParams(params.weights.to(dtype), params.means.to(dtype),
                           params.covariances.to(dtype), covariance_type)
    padded = em_gmm.e_step(x, params)
    monkeypatch.setattr(kernels, "_WIDTH_MULTIPLE", 1)
    plain = em_gmm.e_step(x, params)
    _assert_same(padded, plain, 1e-12 if dtype == torch.float64 else 1e-6)
    if dtype == torch.float64:
        _assert_same(padded, _reference(x, params), 1e-10)


def test_narrow_feature_tables_are_not_padded():
    x = torch.zeros(3, 5, dtype=torch.float64)
    assert [kernels._table_width(n, x) for n in (6, 10, 23, 24, 25, 33, 128)] == [
        6, 10, 23, 24, 36, 36, 132]


def test_row_range_threads_leave_the_thread_count_as_it_was(monkeypatch):
    """The row-range workers run their own operations in one thread each; the caller's
    count, and the count a thread started afterwards gets, are unchanged, and the
    statistics equal those of workers that keep the caller's count."""
    import threading

    x, params = _start("full", n=401)
    monkeypatch.setattr(kernels, "_OUTER_ELEMENTS", 9 * (15 + 5))  # chunks of 9 rows
    monkeypatch.setattr(kernels, "_parallel_workers", lambda n_chunks: 2)
    before = torch.get_num_threads()
    seen = []

    def record(begin, end):
        seen.append(torch.get_num_threads())
        return (torch.zeros(()),)

    kernels._over_row_ranges(record, 401, 9)
    assert seen == [1, 1]
    stats = em_gmm.e_step(x, params)
    assert torch.get_num_threads() == before
    later = []
    thread = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert later == [before]
    monkeypatch.setattr(kernels, "_ONE_THREAD_EACH", False)
    _assert_same(em_gmm.e_step(x, params), stats, 1e-12)


def test_threads_only_for_enough_chunks(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert kernels._parallel_workers(kernels._PARALLEL_MIN_CHUNKS * 4) == 4
    assert kernels._parallel_workers(kernels._PARALLEL_MIN_CHUNKS * 2) == 2
    assert kernels._parallel_workers(kernels._PARALLEL_MIN_CHUNKS - 1) == 1


def test_quadratic_features_step_aside_for_a_near_singular_covariance(monkeypatch):
    """A covariance with an eigenvalue near 1e-13 puts the expansion's rounding bound
    above its limit: the whitened E-step runs instead, and the statistics stay finite and
    equal to it."""
    x, params = _start("full")
    squeezed = params.covariances.clone()
    squeezed[0] = torch.diag(torch.tensor([1e-13, 1.0, 1.0, 1.0, 1.0], dtype=torch.float64))
    params = gmm.GMMParams(params.weights, params.means, squeezed, "full")
    assert kernels._quadratic_e_step(x, params, em_gmm.factors_of(squeezed)) is None
    stats = em_gmm.e_step(x, params)
    assert torch.isfinite(stats.log_likelihood) and torch.isfinite(stats.second_moment).all()
    monkeypatch.setattr(kernels, "_OUTER_MIN_COMPONENTS", 10**9)
    _assert_same(stats, em_gmm.e_step(x, params), 0.0)


def test_a_far_row_in_a_late_chunk_stops_the_quadratic_pass(monkeypatch):
    """The rounding bound is checked chunk by chunk: one row 1e7 away in the last chunk
    (chunks of 8 rows over 3 threads) stops the pass, and the whitened E-step's statistics
    come back."""
    x, params = _start("full", n=401)
    x = x.clone()
    x[-1] += 1e7
    monkeypatch.setattr(kernels, "_OUTER_ELEMENTS", 25 * 7)
    monkeypatch.setattr(kernels, "_parallel_workers", lambda n_chunks: 3)
    assert kernels._quadratic_e_step(x, params, em_gmm.factors_of(params.covariances)) is None
    stats = em_gmm.e_step(x, params)
    monkeypatch.setattr(kernels, "_OUTER_MIN_COMPONENTS", 10**9)
    _assert_same(stats, em_gmm.e_step(x, params), 0.0)


def test_m_step_factors_are_read_back_unless_changed():
    """The E-step reads the M-step's Cholesky factors (the same bits as a new factorisation);
    covariances changed in place, or other tensors, are factorised afresh."""
    x, params = _start("full")
    new = em_gmm.m_step(em_gmm.e_step(x, params), "full")
    cached = em_gmm.factors_of(new.covariances)
    assert torch.equal(cached, gmm.float64_factors(new.covariances.clone()))
    assert em_gmm.factors_of(new.covariances) is cached
    new.covariances.mul_(2.0)  # its version moves: not answered from the cache
    torch.testing.assert_close(em_gmm.factors_of(new.covariances), cached * 2.0**0.5)


@pytest.mark.parametrize("scale", [1.0, 1e-3])
def test_floor_taken_once_gives_the_same_fit(scale):
    """The estimators' M-step keeps the variance floor after the first E-step when the data
    is far above the small-variance threshold, and follows it otherwise: the same
    parameters as the plain M-step either way."""
    from ppl_mixtures.estimators._gmm_fit import _FloorOnce

    x, params = _start("diag")
    x = x * scale
    params = em_gmm.params_from_responsibilities(
        x, torch.softmax(torch.randn(x.shape[0], 4, dtype=torch.float64,
                                     generator=torch.Generator().manual_seed(1)), 1), "diag")
    once, plain = _FloorOnce("diag", 1e-6), params
    for _ in range(3):
        fast = once(em_gmm.e_step(x, params))
        plain = em_gmm.m_step(em_gmm.e_step(x, plain), "diag", 1e-6)
        params = fast
        for name in ("weights", "means", "covariances"):
            torch.testing.assert_close(getattr(fast, name), getattr(plain, name), rtol=0,
                                       atol=0)
    assert (once.floor is None) == (scale < 1)


def test_fitted_precisions_match_the_inverse():
    """``precisions_`` from the M-step's factors equal the inverse of the covariances, and
    ``precisions_cholesky_`` is scikit-learn's upper triangular ``P`` with ``P P^T``."""
    import numpy as np

    from ppl_mixtures.estimators._gmm_fit import fitted_arrays

    x, params = _start("full")
    for p in (em_gmm.m_step(em_gmm.e_step(x, params), "full"), params):
        arrays = fitted_arrays(p)
        covariances = p.covariances.numpy()
        np.testing.assert_allclose(arrays["precisions_"], np.linalg.inv(covariances),
                                   rtol=1e-10, atol=1e-12)
        chol = arrays["precisions_cholesky_"]
        np.testing.assert_array_equal(chol, np.triu(chol))
        np.testing.assert_allclose(chol @ np.swapaxes(chol, -1, -2), arrays["precisions_"],
                                   rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("covariance_type", TYPES)
def test_no_rows_give_zero_statistics(covariance_type):
    """An empty batch (a stream's, or a shard's) adds nothing: zero weight, likelihood and
    sums, for every covariance type."""
    x, params = _start(covariance_type)
    stats = em_gmm.e_step(x[:0], params)
    assert stats.n_samples == 0 and float(stats.log_likelihood) == 0.0
    for name in ("resp_sum", "first_moment", "second_moment"):
        assert not bool(getattr(stats, name).any()), name
    total = stats + em_gmm.e_step(x, params)
    _assert_same(total, em_gmm.e_step(x, params), 0.0)


def _run_em_on(x, params, e_step, max_iter=3):
    from ppl_mixtures.inference.em.loop import run_em

    return run_em(x, init_params=lambda _: params, e_step=e_step,
                  m_step=lambda stats: em_gmm.m_step(stats, "full"), max_iter=max_iter, tol=0.0,
                  progress=False, monotone=False)


@pytest.mark.parametrize("weighted", [False, True])
def test_an_em_fit_keeps_its_quadratic_features_and_leaves_nothing_behind(weighted,
                                                                         monkeypatch):
    """Inside :func:`run_em` the quadratic E-step of the fit's own tensor keeps its features
    (about the rows' mean) from the first E-step to the next: every E-step's statistics
    equal the uncached pass's to float64 rounding, 50 standard deviations from the origin,
    in chunks of 7 rows over 3 threads; the table is built once, and nothing is kept after
    the fit, for another tensor, or beyond the size limit."""
    from ppl_mixtures.inference.em import loop

    x, params = _start("full", offset=50.0)
    weights = (torch.rand(x.shape[0], generator=torch.Generator().manual_seed(2),
                          dtype=torch.float64) * 3 if weighted else None)
    monkeypatch.setattr(kernels, "_OUTER_ELEMENTS", 25 * 7)
    monkeypatch.setattr(kernels, "_parallel_workers", lambda n_chunks: 3)
    kept, fills = [], []
    fill = kernels._fill_features
    monkeypatch.setattr(kernels, "_fill_features",
                        lambda table, block: fills.append(len(block)) or fill(table, block))

    def e_step(data, current):
        stats = em_gmm.e_step(data, current, weights)
        store = loop.kept_tables(data)
        kept.append(store["quadratic features"] if store else None)
        with monkeypatch.context() as patch:  # the uncached pass
            patch.setattr(kernels, "kept_tables", lambda _: None)
            _assert_same(stats, em_gmm.e_step(data, current, weights), 1e-12)
        return stats

    _run_em_on(x, params, e_step)
    assert len(kept) == 4 and kept[0] is not None and all(k is kept[0] for k in kept)
    assert kept[0].filled and kept[0].table.shape == (x.shape[0], 15 + 5)
    torch.testing.assert_close(kept[0].center, x.mean(0))
    assert sum(fills) == x.shape[0] * 5  # once in the fit, once per uncached pass (4)
    assert getattr(loop._FIT, "scope", None) is None  # the store went with the fit
    assert loop.kept_tables(x) is None
    monkeypatch.setattr(kernels, "_KEPT_FEATURES_BYTES", x.shape[0] * 20 * 8 - 1)
    seen = []
    _run_em_on(x, params, lambda data, current: seen.append(
        kernels._kept_features(data, 20)) or em_gmm.e_step(data, current))
    assert seen == [None] * 4


def test_kept_features_follow_a_change_of_the_rows_in_place():
    """A tensor changed in place during a fit (its version moves) gets new features: the
    E-step after the change equals a fresh one's."""
    x, params = _start("full")
    x = x.clone()
    results = []

    def e_step(data, current):
        if len(results) == 2:
            data.mul_(1.5)
        stats = em_gmm.e_step(data, current)
        results.append(stats)
        return stats

    result = _run_em_on(x, params, e_step, max_iter=3)
    fresh = em_gmm.e_step(x, result.params)  # outside the fit: nothing kept
    _assert_same(results[-1], fresh, 1e-12)


def test_the_store_is_the_fits_own_thread_and_tensor():
    """:func:`kept_tables` answers only the thread running the fit, for its own tensor (a
    copy or a view is another tensor); a fit in another thread has its own store."""
    import threading

    from ppl_mixtures.inference.em import loop

    x = torch.zeros(3, 2)
    answers = {}

    def e_step(data, current):
        answers.setdefault("own", loop.kept_tables(data))
        answers.setdefault("view", loop.kept_tables(data[:2]))
        answers.setdefault("copy", loop.kept_tables(data.clone()))
        other = threading.Thread(target=lambda: answers.setdefault(
            "other thread", loop.kept_tables(data)))
        other.start()
        other.join()
        return gmm_stats_stub()

    def gmm_stats_stub():
        return loop.SummedStats(3.0, torch.tensor(-1.0))

    loop.run_em(x, init_params=lambda _: None, e_step=e_step, m_step=lambda s: None,
                max_iter=1, progress=False)
    assert answers["own"] == {}
    assert answers["view"] is None and answers["copy"] is None
    assert answers["other thread"] is None


def test_constant_features_do_not_turn_the_quadratic_e_step_away(monkeypatch):
    """A feature that never varies (a blank pixel) gets a covariance at the variance floor,
    1e-13 here, whose precision dwarfs the others: the rows never move along it, so the
    expansion's rounding stays small (the bound by features), the quadratic E-step runs,
    and it equals the whitened E-step to rounding; a row that does move along such a
    direction still turns it away."""
    x, params = _start("full", offset=50.0)
    x = x.clone()
    x[:, 0] = 3.0
    means = params.means.clone()
    means[:, 0] = 3.0
    covariances = params.covariances.clone()
    covariances[:, 0, :] = 0.0
    covariances[:, :, 0] = 0.0
    covariances[:, 0, 0] = 1e-13
    params = gmm.GMMParams(params.weights, means, covariances, "full")
    factors = em_gmm.factors_of(covariances)
    fast = kernels._quadratic_e_step(x, params, factors)
    assert fast is not None
    monkeypatch.setattr(kernels, "_OUTER_MIN_COMPONENTS", 10**9)
    _assert_same(fast, em_gmm.e_step(x, params), 1e-12)
    x[7, 0] += 1.0
    assert kernels._quadratic_e_step(x, params, factors) is None


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rows_whitened_in_place_by_blas_and_by_torch_agree(dtype, monkeypatch):
    """The in-place BLAS triangular solve (rows become ``L^-1 r``) equals torch's solve, and
    the torch fallback (row-range workers, other devices) writes the same into the rows."""
    generator = torch.Generator().manual_seed(0)
    root = torch.randn(7, 7, generator=generator, dtype=torch.float64)
    factor = torch.linalg.cholesky(root @ root.T + 7 * torch.eye(7, dtype=torch.float64))
    rows = torch.randn(30, 7, generator=generator, dtype=torch.float64)
    expected = torch.linalg.solve_triangular(factor, rows.T, upper=False).T
    upper = factor.T.contiguous().to(dtype)
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    for blas in (kernels._TRSM, {}):
        monkeypatch.setattr(kernels, "_TRSM", blas)
        work = rows.to(dtype).clone()
        pointer = work.data_ptr()
        kernels._whiten_in_place(upper, work)
        assert work.data_ptr() == pointer
        torch.testing.assert_close(work.double(), expected, rtol=0, atol=tolerance)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("weighted", [False, True])
def test_negligible_rows_are_left_out_of_the_moments_to_rounding(dtype, weighted, monkeypatch):
    """One component at a time, from a broad start in many dimensions (most responsibilities
    tiny but not zero), each component's moments skip rows whose contribution is below a
    tenth of a rounding unit: the statistics equal the reference's (every row) to float64
    rounding, and rows were in fact left out."""
    X, _ = make_gmm(600, 4, 40, separation=3.0, random_state=5)
    x = torch.as_tensor(X).to(dtype)
    means = x[torch.tensor([0, 150, 300, 450])]
    covariances = torch.eye(40, dtype=dtype).expand(4, 40, 40) * float(x.var(0).mean())
    params = gmm.GMMParams(torch.full((4,), 0.25, dtype=dtype), means,
                           covariances.contiguous(), "full")
    weights = (torch.rand(600, generator=torch.Generator().manual_seed(2),
                          dtype=dtype) * 3 if weighted else None)
    reference = _reference(x, params, weights)
    resp, _ = em_gmm.responsibilities(x, params)
    # the regime this targets: nearly every responsibility positive, most negligible
    assert float((resp > 0).double().mean()) > 0.9
    kept = []
    contributing = kernels._contributing_rows
    monkeypatch.setattr(kernels, "_contributing_rows",
                        lambda w, d2: kept.append(contributing(w, d2)) or kept[-1])
    monkeypatch.setattr(gmm, "_STACKED_WHITENING_MAX", 0)
    stats = em_gmm.e_step(x, params, weights)
    left_out = sum(600 if rows is None else 600 - rows.numel() for rows, _ in kept)
    assert left_out > 0.5 * 600 * 4
    _assert_same(stats, reference, 1e-12 if dtype == torch.float64 else 1e-5)


def test_contributing_rows_bound_what_they_leave_out():
    """The left-out rows' contributions ``r (1 + d^2)`` sum to less than a tenth of one float64
    rounding unit of the largest; an all-zero column keeps nothing; a full column keeps all."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.exp(-torch.rand(500, generator=generator, dtype=torch.float64) * 200)
    squared = torch.rand(500, generator=generator, dtype=torch.float64) * 1e4
    rows, kept = kernels._contributing_rows(weight, squared)
    assert rows is not None and 0 < rows.numel() < 500
    torch.testing.assert_close(kept, weight[rows])
    contribution = weight * (1 + squared)
    mask = torch.ones(500, dtype=torch.bool)
    mask[rows] = False
    eps = torch.finfo(torch.float64).eps
    assert float(contribution[mask].sum()) < 0.1 * eps * float(contribution.max())
    assert kernels._contributing_rows(torch.zeros(5, dtype=torch.float64),
                                      torch.ones(5, dtype=torch.float64))[0].numel() == 0
    assert kernels._contributing_rows(torch.ones(5, dtype=torch.float64),
                                      torch.ones(5, dtype=torch.float64))[0] is None


def test_gram_added_in_place_equals_the_plain_product(monkeypatch):
    """float64 rank-k updates are added into the target in place (its upper triangle, the
    lower left as it was); float32 values go through a float64 copy of the product."""
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(40, 6, generator=generator, dtype=torch.float64)
    start = torch.randn(6, 6, generator=generator, dtype=torch.float64)
    fast = start.clone()
    pointer = fast.data_ptr()
    kernels._gram(fast, values)
    assert fast.data_ptr() == pointer
    expected = start + (values.T @ values).triu()
    torch.testing.assert_close(fast.triu(), expected.triu())
    torch.testing.assert_close(fast.tril(-1), start.tril(-1))
    single = start.clone()
    kernels._gram(single, values.float())
    torch.testing.assert_close(single.triu(), expected.triu(), rtol=1e-5, atol=1e-4)


def test_per_component_pass_runs_torch_in_one_thread_and_puts_the_count_back(monkeypatch):
    """One component at a time (BLAS solves) torch's operations run in the calling thread
    only, so that its idle threads do not spin beside the BLAS; the count is restored,
    also when the pass raises."""
    if not kernels._TRSM:
        pytest.skip("scipy's BLAS is not available")
    x, params = _start("full", n=300)
    monkeypatch.setattr(gmm, "_STACKED_WHITENING_MAX", 0)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = []
        whiten = kernels._whiten_in_place
        monkeypatch.setattr(kernels, "_whiten_in_place",
                            lambda upper, rows: seen.append(torch.get_num_threads())
                            or whiten(upper, rows))
        em_gmm.e_step(x, params)
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 2

        def broken(upper, rows):
            raise RuntimeError("stop")

        monkeypatch.setattr(kernels, "_whiten_in_place", broken)
        with pytest.raises(RuntimeError, match="stop"):
            em_gmm.e_step(x, params)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_scoring_log_joint_by_solves_equals_the_models(dtype, monkeypatch):
    """Large K D^2 (forced here): scoring and prediction take triangular solves with the
    M-step's factors, equal to the model's log_joint; with autograd the model's own
    function runs (the result carries a gradient), and the thread count is put back."""
    x, params = _start("full", n=700, d=6)
    x, params = x.to(dtype), params.to(dtype)
    monkeypatch.setattr(gmm, "_STACKED_WHITENING_MAX", 0)
    monkeypatch.setattr(kernels, "_WHITENED_ELEMENTS", 6 * 300)  # chunks of 300 rows
    before = torch.get_num_threads()
    fast = em_gmm.scoring_log_joint(x, params)
    assert torch.get_num_threads() == before
    expected = gmm.log_joint(x.double(), params.to(torch.float64))
    torch.testing.assert_close(fast.double(), expected, rtol=0,
                               atol=1e-10 if dtype == torch.float64 else 1e-3)
    assert fast.dtype == dtype and fast.shape == (700, 4)
    means = params.means.clone().requires_grad_(True)
    graded = em_gmm.scoring_log_joint(x, gmm.GMMParams(params.weights, means,
                                                       params.covariances, "full"))
    assert graded.requires_grad
    torch.testing.assert_close(graded.detach(), fast, rtol=0,
                               atol=1e-10 if dtype == torch.float64 else 1e-3)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_estimator_predictions_take_the_scoring_route(monkeypatch):
    """GaussianMixture's score, predict and predict_proba read scoring_log_joint; at large
    K D^2 they equal scikit-learn's from the same parameters."""
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    from ppl_mixtures import GaussianMixture

    X, _ = make_gmm(500, 3, 8, separation=3.0, random_state=1)
    monkeypatch.setattr(gmm, "_STACKED_WHITENING_MAX", 0)
    calls = []
    scoring = kernels.scoring_log_joint
    monkeypatch.setattr(em_gmm, "scoring_log_joint",
                        lambda x, p: calls.append(1) or scoring(x, p))
    ours = GaussianMixture(3, covariance_type="full", random_state=0, progress=False).fit(X)
    theirs = SkGaussianMixture(3, covariance_type="full", max_iter=1).fit(X)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        setattr(theirs, name, getattr(ours, name))  # scikit-learn scores our parameters
    calls.clear()
    assert ours.score(X) == pytest.approx(theirs.score(X), rel=1e-10)
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), atol=1e-10)
    assert (ours.predict(X) == theirs.predict(X)).all()
    assert len(calls) == 3


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_per_component_fit_from_a_broad_start_equals_scikit_learn(monkeypatch):
    """A whole float64 EM fit one component at a time (forced), from the broad isotropic start
    of bench/gmm_em.py where most responsibilities are tiny but not zero (the rows left out
    of the moments): scikit-learn's fit from the same start, to 1e-8."""
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    from ppl_mixtures import GaussianMixture

    X, _ = make_gmm(600, 4, 40, separation=2.0, random_state=7)
    rng = np.random.default_rng(0)
    start = {"weights_init": np.full(4, 0.25),
             "means_init": X[rng.choice(600, 4, replace=False)],
             "precisions_init": np.stack([np.eye(40) / X.var(0).mean()] * 4)}
    monkeypatch.setattr(gmm, "_STACKED_WHITENING_MAX", 0)
    ours = GaussianMixture(4, covariance_type="full", max_iter=8, tol=0.0, progress=False,
                           **start).fit(X)
    theirs = SkGaussianMixture(4, covariance_type="full", max_iter=8, tol=0.0, **start).fit(X)
    assert ours.lower_bound_ == pytest.approx(theirs.lower_bound_, rel=1e-8)
    np.testing.assert_allclose(ours.means_, theirs.means_, rtol=0, atol=1e-8)
    np.testing.assert_allclose(ours.covariances_, theirs.covariances_, rtol=0, atol=1e-8)
    assert ours.score(X) == pytest.approx(theirs.score(X), rel=1e-8)


@pytest.mark.parametrize("covariance_type", SMALL_ROUTE)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("offset", [0.0, 1e3])
def test_small_e_step_by_numpy_equals_torchs(covariance_type, weighted, offset, monkeypatch,
                                             numpy_route):
    """Small CPU data takes the NumPy E-step; its statistics equal torch's blocks' to float64
    rounding (far from the origin too), with and without weights, and the statistics keep
    their types: float64 sums, the likelihood in the data's dtype."""
    x, params = _start(covariance_type, n=300, offset=offset)
    weights = (torch.rand(300, generator=torch.Generator().manual_seed(2),
                          dtype=torch.float64) * 3 if weighted else None)
    taken = []
    for name in ("_small_diagonal_e_step", "_small_tied_e_step", "_small_full_e_step"):
        small = getattr(kernels, name)
        monkeypatch.setattr(kernels, name,
                            lambda *args, small=small: taken.append(1) or small(*args))
    monkeypatch.setattr(em_gmm, "_small_diagonal_e_step", kernels._small_diagonal_e_step)
    fast = em_gmm.e_step(x, params, weights)
    assert taken == [1]
    monkeypatch.setattr(kernels, "_SMALL_WORK", -1)
    blocks = em_gmm.e_step(x, params, weights)
    assert taken == [1]
    _assert_same(fast, blocks, 1e-12)
    assert fast.shift is params.means
    assert fast.log_likelihood.dtype == torch.float64 and fast.log_likelihood.dim() == 0
    for name in ("resp_sum", "first_moment", "second_moment"):
        value = getattr(fast, name)
        assert value.dtype == torch.float64 and value.shape == getattr(blocks, name).shape


@pytest.mark.parametrize("covariance_type", SMALL_ROUTE)
def test_small_float32_data_by_numpy_is_summed_in_float64(covariance_type, numpy_route):
    """Float32 data on the NumPy route: its rows taken in float64, so the statistics equal
    the float64 E-step of the same (rounded) numbers; the likelihood comes back in float32."""
    x, params = _start(covariance_type)
    single = em_gmm.e_step(x.float(), params.to(torch.float32))
    double = em_gmm.e_step(x.float().double(), params.to(torch.float32).to(torch.float64))
    assert single.log_likelihood.dtype == torch.float32
    assert torch.equal(single.log_likelihood, double.log_likelihood.float())
    for name in ("resp_sum", "first_moment", "second_moment"):
        expected = getattr(double, name)
        torch.testing.assert_close(getattr(single, name), expected, rtol=0,
                                   atol=1e-12 * float(expected.abs().max()), msg=name)


def test_only_small_cpu_data_without_gradients_takes_numpy(numpy_route):
    """The NumPy route: small CPU float data whose parameters share its dtype; not large data,
    mixed dtypes, half precision or tensors that need gradients."""
    x, params = _start("diag", n=200)
    assert kernels._takes_numpy(x, params, None)
    assert kernels._takes_numpy(x.float(), params.to(torch.float32), None)
    assert not kernels._takes_numpy(x.float(), params, None)
    assert not kernels._takes_numpy(x, params, torch.ones(200, dtype=torch.float32))
    assert not kernels._takes_numpy(x.half(), params.to(torch.float16), None)
    grad = gmm.GMMParams(params.weights, params.means.clone().requires_grad_(),
                         params.covariances, "diag")
    assert not kernels._takes_numpy(x, grad, None)
    rows = kernels._SMALL_WORK // (4 + 5)
    big = x[:1].expand(rows + 1, -1)
    assert kernels._takes_numpy(big[:rows], params, None)
    assert not kernels._takes_numpy(big, params, None)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("covariance_type", SMALL_ROUTE)
def test_small_route_keeps_torchs_zero_weights_and_zero_weight_rows(covariance_type,
                                                                     monkeypatch, numpy_route):
    """A component of weight 0 (log 0 = -inf in every row) and rows of weight 0: NumPy's
    E-step warns of nothing and gives torch's statistics."""
    x, params = _start(covariance_type, n=120)
    weights = params.weights.clone()
    weights[1] = 0.0
    params = gmm.GMMParams(weights / weights.sum(), params.means, params.covariances,
                           covariance_type)
    row_weights = torch.ones(120, dtype=torch.float64)
    row_weights[::7] = 0.0
    fast = em_gmm.e_step(x, params, row_weights)
    assert float(fast.resp_sum[1]) == 0.0
    monkeypatch.setattr(kernels, "_SMALL_WORK", -1)
    _assert_same(fast, em_gmm.e_step(x, params, row_weights), 1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reach_of_the_rows_matches_the_direct_computation(monkeypatch, dtype):
    """``_reach`` (the quadratic E-step's rounding check), chunk by chunk in one buffer: the
    farthest squared distance and the per-feature spans equal a direct float64 computation,
    across chunk boundaries and from float32 rows; a NaN row shows in the spans."""
    monkeypatch.setattr(kernels, "_REACH_ROWS", 7)  # 50 rows: 7 full chunks and one of 1
    generator = torch.Generator().manual_seed(3)
    x = (torch.randn(50, 4, generator=generator, dtype=torch.float64) * 3 + 1).to(dtype)
    center = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)
    deviations = (x.double() - center).abs()
    farthest, spans = kernels._reach(x, center)
    assert farthest == pytest.approx(float((deviations ** 2).sum(1).max()), rel=1e-15)
    assert torch.equal(spans, deviations.amax(0))
    assert x.dtype == dtype  # the rows are read, not changed
    x_nan = x.clone()
    x_nan[23, 2] = float("nan")
    assert torch.isnan(kernels._reach(x_nan, center)[1][2])


@pytest.mark.parametrize("covariance_type", ["diag", "spherical"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_diagonal_scoring_log_joint_equals_the_models(covariance_type, dtype):
    """Diagonal families score block by block with the E-step's product: equal to the
    model's log_joint across block boundaries (rows 300 + 300 + 100), in the data's dtype,
    far from the origin, with a component of weight 0 (-inf everywhere) and a row on a
    mean (the clamp at a zero distance); with autograd the model's own function runs."""
    x, params = _start(covariance_type, n=700, d=6, offset=40.0)
    weights = params.weights.clone()
    weights[2] = 0.0
    params = gmm.GMMParams(weights / weights.sum(), params.means, params.covariances,
                           covariance_type)
    x = x.clone()
    x[5] = params.means[1]
    x, params = x.to(dtype), params.to(dtype)
    fast = kernels._diagonal_scoring_log_joint(x, params, rows=300)
    expected = gmm.log_joint(x.double(), params.to(torch.float64))
    assert fast.dtype == dtype and fast.shape == (700, 4)
    assert torch.isneginf(fast[:, 2]).all() and torch.isneginf(expected[:, 2]).all()
    finite = [0, 1, 3]
    torch.testing.assert_close(fast[:, finite].double(), expected[:, finite], rtol=0,
                               atol=1e-9 if dtype == torch.float64 else 2e-3)
    torch.testing.assert_close(em_gmm.scoring_log_joint(x, params), fast, rtol=0, atol=0)
    means = params.means.clone().requires_grad_(True)
    graded = em_gmm.scoring_log_joint(x, gmm.GMMParams(params.weights, means,
                                                       params.covariances, covariance_type))
    assert graded.requires_grad


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_predict_is_the_largest_log_joint_and_the_largest_probability():
    """predict takes the largest log joint (scikit-learn's rule) without normalising it:
    the same labels as predict_proba's largest entry and as scikit-learn's predict from the
    same parameters."""
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    from ppl_mixtures import GaussianMixture

    X, _ = make_gmm(3000, 5, 4, separation=1.0, random_state=2)  # overlapping clusters
    ours = GaussianMixture(5, covariance_type="diag", max_iter=5, random_state=0,
                           progress=False).fit(X)
    labels = ours.predict(X)
    assert labels.dtype == np.int64 and labels.shape == (3000,)
    np.testing.assert_array_equal(labels, ours.predict_proba(X).argmax(axis=1))
    theirs = SkGaussianMixture(5, covariance_type="diag", weights_init=ours.weights_,
                               means_init=ours.means_, precisions_init=ours.precisions_,
                               max_iter=1, init_params="random_from_data").fit(X)
    theirs.weights_, theirs.means_ = ours.weights_, ours.means_
    theirs.precisions_cholesky_ = np.sqrt(ours.precisions_)
    np.testing.assert_array_equal(labels, theirs.predict(X))


def test_reach_takes_rows_and_centre_that_require_grad():
    """The reach is a bound for the rounding check: rows or a centre under autograd (an
    E-step at parameters that require grad) give the same numbers, without a gradient."""
    x = torch.randn(30, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    center = torch.zeros(3, dtype=torch.float64)
    expected = kernels._reach(x, center)
    farthest, spans = kernels._reach(x.clone().requires_grad_(), center.requires_grad_())
    assert farthest == expected[0] and torch.equal(spans, expected[1])
    assert not spans.requires_grad


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_tied_scoring_log_joint_equals_the_models(dtype, monkeypatch):
    """Tied covariances score with the E-step's one whitening product per chunk (chunks of
    about 100 rows here): equal to the model's log_joint, far from the origin, with a
    component of weight 0; in the data's dtype; with autograd the model's function runs."""
    monkeypatch.setattr(kernels, "_OUTER_ELEMENTS", 100 * (4 + 2 * 6))
    x, params = _start("tied", n=700, d=6, offset=40.0)
    weights = params.weights.clone()
    weights[3] = 0.0
    params = gmm.GMMParams(weights / weights.sum(), params.means, params.covariances, "tied")
    x, params = x.to(dtype), params.to(dtype)
    fast = em_gmm.scoring_log_joint(x, params)
    expected = gmm.log_joint(x.double(), params.to(torch.float64))
    assert fast.dtype == dtype and fast.shape == (700, 4)
    assert torch.isneginf(fast[:, 3]).all() and torch.isneginf(expected[:, 3]).all()
    torch.testing.assert_close(fast[:, :3].double(), expected[:, :3], rtol=0,
                               atol=1e-9 if dtype == torch.float64 else 2e-3)
    route = kernels._tied_scoring_log_joint(x, params, kernels.factors_of(params.covariances))
    torch.testing.assert_close(fast, route, rtol=0, atol=0)
    means = params.means.clone().requires_grad_(True)
    graded = em_gmm.scoring_log_joint(x, gmm.GMMParams(params.weights, means,
                                                       params.covariances, "tied"))
    assert graded.requires_grad
