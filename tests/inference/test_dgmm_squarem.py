"""The DGMM's accelerated EM loop: SQUAREM cycles as the loop's M-step (monotone, ahead of
plain EM), and the estimator's default built on them (converges, equals its stream fit)."""

import warnings

import numpy as np
import pytest
import torch
from dgmm_helpers import random_params
from sklearn.exceptions import ConvergenceWarning

from ppl_mixtures.datasets import make_dgmm
from ppl_mixtures.estimators import DeepGaussianMixture
from ppl_mixtures.estimators._dgmm_fit import SQUAREM_CYCLES, SQUAREM_MAX_ITER, SQUAREM_TOL
from ppl_mixtures.inference.em import dgmm as em_dgmm
from ppl_mixtures.inference.em.loop import LikelihoodDecreaseWarning, run_em
from ppl_mixtures.models import dgmm

SIZES, FACTORS = (2, 2), (4, 2)


@pytest.fixture(scope="module")
def problem():
    X, _, paths, _ = make_dgmm(400, 9, SIZES, FACTORS, random_state=1, standardize=True)
    x = torch.as_tensor(X)
    start = em_dgmm.initial_params(x, SIZES, FACTORS, "kmeans", torch.Generator().manual_seed(0))
    return X, x, start


def counting(calls):
    def e_step(x, params):
        calls.append(1)
        return em_dgmm.e_step(x, params)
    return e_step


def test_squarem_loop_is_monotone_and_ahead_of_plain_em_per_e_step(problem):
    """Each cycle costs the loop's E-step and two more; with the same number of E-steps plain
    EM ends lower, and the loop's history never goes down."""
    _, x, start = problem
    calls = []
    e_step = counting(calls)
    fast = run_em(x, init_params=lambda _: start, e_step=e_step, tol=0.0, max_iter=10,
                  m_step=lambda s: em_dgmm.squarem_m_step(s, x, e_step_fn=e_step),
                  progress=False, evaluate_final=False)
    assert len(calls) <= 3 * 10
    assert not fast.decreases and np.all(np.diff(fast.history) >= -1e-9)
    plain = run_em(x, init_params=lambda _: start, e_step=em_dgmm.e_step,
                   m_step=em_dgmm.m_step, max_iter=len(calls), tol=0.0, progress=False)
    assert fast.history[-1] > plain.history[-1]


def test_cycles_per_call_chain_single_cycles(problem):
    """n_cycles=k is k single cycles, each started by the E-step at the last one's result."""
    _, x, start = problem
    chained = em_dgmm.squarem_m_step(em_dgmm.e_step(x, start), x, n_cycles=3)
    params = start
    for _ in range(3):
        params = em_dgmm.squarem_m_step(em_dgmm.e_step(x, params), x)
    for got, want in zip(chained.tensors().values(), params.tensors().values(), strict=True):
        torch.testing.assert_close(got, want)


def test_a_failed_extrapolation_falls_back_on_two_em_steps(problem):
    """When the extrapolated point cannot be evaluated, the cycle returns M(M(theta0))."""
    _, x, start = problem
    stats = em_dgmm.e_step(x, start)
    calls = []

    def failing(data, params):
        calls.append(1)
        if len(calls) == 2:  # the E-step at the extrapolated point
            raise ValueError("singular")
        return em_dgmm.e_step(data, params)

    got = em_dgmm.squarem_m_step(stats, x, e_step_fn=failing)
    want = em_dgmm.m_step(em_dgmm.e_step(x, em_dgmm.m_step(stats)))
    assert len(calls) == 2  # the cycle did try to extrapolate (|r| > |v| from this start)
    for a, b in zip(got.tensors().values(), want.tensors().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_default_runs_the_accelerated_loop_and_converges(problem):
    """The default's iterations are SQUAREM_CYCLES cycles each, its history is monotone and
    it stops by its own tol (measured: 2 iterations here) without a warning; accelerate=0 is
    plain EM with the plain defaults, whose iterations are single EM steps."""
    X, x, start = problem
    X600, _, _, _ = make_dgmm(600, 9, SIZES, FACTORS, random_state=1, standardize=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        default = DeepGaussianMixture(SIZES, FACTORS, random_state=0, progress=False).fit(X600)
    assert default.converged_ and default.n_iter_ < SQUAREM_MAX_ITER
    assert default._tol == SQUAREM_TOL and SQUAREM_CYCLES > 1
    assert np.all(np.diff(default.history_) >= -1e-8)
    fits = {}
    for accelerate in (None, 0):
        est = DeepGaussianMixture(SIZES, FACTORS, accelerate=accelerate, max_iter=2,
                                  relabel=False, reframe=False, progress=False)
        est._initial_params = lambda x, generator: start
        with pytest.warns(ConvergenceWarning, match="max_iter=2 .*tol="):
            fits[accelerate] = est.fit(X)
    assert fits[0]._tol == 1e-5
    plain = run_em(x, init_params=lambda _: start, e_step=em_dgmm.e_step,
                   m_step=em_dgmm.m_step, max_iter=2, tol=0.0, progress=False)
    np.testing.assert_allclose(fits[0].history_, plain.history, rtol=0, atol=1e-10)
    assert fits[None].history_[0] == pytest.approx(plain.history[0], abs=1e-10)
    assert fits[None].history_[1] > plain.history[1]


def test_default_stream_fit_equals_in_memory_fit(problem):
    """The cycles' extra E-steps go through the same sums over batches as the loop's."""
    X, _, start = problem
    fits = []
    for data in (X, [X[:150], X[150:]]):
        est = DeepGaussianMixture(SIZES, FACTORS, max_iter=2, tol=0.0, progress=False)
        est._initial_params = lambda x, generator: start
        fits.append(est.fit(data))
    in_memory, streamed = fits
    np.testing.assert_allclose(streamed.history_, in_memory.history_, rtol=0, atol=1e-8)
    for attr in ("weights_", "means_", "covariances_"):
        np.testing.assert_allclose(getattr(streamed, attr), getattr(in_memory, attr),
                                   rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def tiny_noise():
    """A (2, 2), (4, 2) DGMM whose first-layer noise variances are 0.5e-8 to 1.5e-8 (data
    variance about 45): below the default reg_covar, as on the section 3.1 setting."""
    params = random_params(SIZES, FACTORS, 9, seed=1, eta_scale=3.0)
    scale = torch.rand(params.noise_variances[0].shape, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(1))
    params.noise_variances[0] = 1e-8 * (0.5 + scale)
    x, _ = dgmm.sample(params, 600, torch.Generator().manual_seed(1))
    return x.numpy(), float(dgmm.log_likelihood(x, params).mean())


def test_released_floor_continues_the_settled_fit_to_the_truth(tiny_noise):
    """The default's second phase starts where the search (at reg_covar) settled: the same
    history up to there, then higher. Measured: 17.94 nats per point at the 1e-6 floor,
    27.39 released, truth 27.41 (seeds 0 and 2 of this draw: within 0.2 of it or above)."""
    X, truth = tiny_noise
    fits = {final: DeepGaussianMixture(SIZES, FACTORS, random_state=0, progress=False,
                                       final_reg_covar=final, reframe=False).fit(X)
            for final in (None, 1e-8)}
    kept, released = fits[None], fits[1e-8]
    n_kept = len(kept.history_)
    assert released.history_[:n_kept] == kept.history_
    assert released.n_iter_ > kept.n_iter_ and len(released.history_) == released.n_iter_
    assert np.all(np.diff(released.history_) >= -1e-8)
    assert released.converged_ and released.lower_bound_ == released.history_[-1]
    assert released._released and not kept._released
    assert max(released.restart_log_likelihoods_) == pytest.approx(released.score(X), abs=1e-9)
    assert float(kept.params_.noise_variances[0].min()) >= 1e-6
    assert float(released.params_.noise_variances[0].min()) < 1e-7
    assert released.score(X) > kept.score(X) + 5.0
    assert released.score(X) > truth - 0.5


def test_released_fit_warm_starts_at_its_own_floor(tiny_noise):
    """A warm start from a released fit keeps the released floor: no likelihood decrease,
    no second search."""
    X, _ = tiny_noise
    est = DeepGaussianMixture(SIZES, FACTORS, random_state=0, progress=False,
                              warm_start=True).fit(X)
    before = est.score(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LikelihoodDecreaseWarning)
        est.fit(X)
    assert est.score(X) >= before - 1e-8
    assert float(est.params_.noise_variances[0].min()) < 1e-7


def test_final_reg_covar_is_not_used_by_plain_em(problem):
    """accelerate=0 (plain EM) ignores final_reg_covar: the same fit with or without it."""
    X, _, start = problem
    fits = []
    for final in (None, 1e-8):
        est = DeepGaussianMixture(SIZES, FACTORS, accelerate=0, max_iter=3, tol=0.0,
                                  final_reg_covar=final, progress=False)
        est._initial_params = lambda x, generator: start
        fits.append(est.fit(X))
    assert fits[0].history_ == fits[1].history_ and fits[1].n_iter_ == 3


def test_released_stream_fit_equals_in_memory_fit(problem):
    """The release's E-steps are the stream's sums too: two batches give the in-memory fit,
    search and release (the same start; tol so large that each phase stops at its second
    iteration, the first gain being measured from -inf; without the relabelling, whose own
    stream test is in test_dgmm_relabel.py, nor the frames' move, test_dgmm_reframe.py)."""
    X, _, start = problem
    fits = []
    for data in (X, [X[:150], X[150:]]):
        est = DeepGaussianMixture(SIZES, FACTORS, tol=1e9, relabel=False, reframe=False,
                                  progress=False)
        est._initial_params = lambda x, generator: start
        fits.append(est.fit(data))
    in_memory, streamed = fits
    assert in_memory._released and streamed._released and streamed.n_iter_ == 4
    np.testing.assert_allclose(streamed.history_, in_memory.history_, rtol=0, atol=1e-8)
    for attr in ("weights_", "means_", "covariances_"):
        np.testing.assert_allclose(getattr(streamed, attr), getattr(in_memory, attr),
                                   rtol=0, atol=1e-6)


def test_release_follows_a_search_stopped_by_max_iter_but_not_tol_zero(problem):
    """A search cut by max_iter is released too (at least min(3, max_iter) iterations), so
    BIC compares candidates at one floor; tol=0 asks for exactly max_iter iterations (without
    the relabelling and the frames' move, which would continue the search from this
    layer-wise start)."""
    X, _, start = problem
    fits = {}
    for tol in (None, 0.0):
        est = DeepGaussianMixture(SIZES, FACTORS, max_iter=1, tol=tol, relabel=False,
                                  reframe=False, progress=False)
        est._initial_params = lambda x, generator: start
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            fits[tol] = est.fit(X)
        # tol=0 asks for max_iter iterations: no warning there
        assert any(w.category is ConvergenceWarning for w in caught) == (tol is None)
    assert fits[None]._released and fits[None].n_iter_ == 2
    assert not fits[0.0]._released and fits[0.0].n_iter_ == 1
    assert fits[None].history_[0] == fits[0.0].history_[0]
    assert fits[None].score(X) >= fits[0.0].score(X)
