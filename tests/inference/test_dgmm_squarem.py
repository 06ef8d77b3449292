"""The DGMM's accelerated EM loop: SQUAREM cycles as the loop's M-step (monotone, ahead of
plain EM), and the estimator's default built on them (converges, equals its stream fit)."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning

from ppl_mixtures.datasets import make_dgmm
from ppl_mixtures.estimators import DeepGaussianMixture
from ppl_mixtures.estimators._dgmm_fit import SQUAREM_CYCLES, SQUAREM_MAX_ITER, SQUAREM_TOL
from ppl_mixtures.inference.em import dgmm as em_dgmm
from ppl_mixtures.inference.em.loop import run_em

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
                                  progress=False)
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
