"""GMM EM: scikit-learn as oracle, monotone likelihood, float32, sufficient statistics."""

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from ppl_mixtures.datasets import make_gmm
from ppl_mixtures.inference.em import gmm as em_gmm
from ppl_mixtures.inference.em import run_em
from ppl_mixtures.models import gmm

SK_TYPES = ("spherical", "diag", "tied", "full")


def sklearn_init(X, n_components, covariance_type, seed):
    """An initial point drawn by scikit-learn itself (one k-means++ M-step)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = SkGaussianMixture(
            n_components, covariance_type=covariance_type, init_params="k-means++",
            max_iter=1, random_state=seed,
        ).fit(X)
    return start.weights_, start.means_, start.precisions_


def to_params(weights, means, precisions, covariance_type):
    precisions = torch.as_tensor(precisions)
    cov = torch.linalg.inv(precisions) if covariance_type in ("tied", "full") else 1 / precisions
    return gmm.GMMParams(torch.as_tensor(weights), torch.as_tensor(means), cov, covariance_type)


def run(x, params, covariance_type, max_iter, tol=0.0, reg_covar=1e-6):
    return run_em(
        x, init_params=lambda _: params, e_step=em_gmm.e_step,
        m_step=lambda s: em_gmm.m_step(s, covariance_type, reg_covar),
        max_iter=max_iter, tol=tol, progress=False,
    )


@pytest.mark.parametrize("covariance_type", SK_TYPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_em_equals_sklearn_from_same_init(covariance_type, seed):
    X, _ = make_gmm(600, 4, 3, covariance_type="full", separation=2.0, random_state=seed)
    weights, means, precisions = sklearn_init(X, 4, covariance_type, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sk = SkGaussianMixture(
            4, covariance_type=covariance_type, weights_init=weights, means_init=means,
            precisions_init=precisions, max_iter=25, tol=0.0, reg_covar=1e-6,
        ).fit(X)
    ours = run(torch.as_tensor(X), to_params(weights, means, precisions, covariance_type),
               covariance_type, max_iter=25)
    assert ours.n_iter == sk.n_iter_ == 25
    assert abs(ours.log_likelihood - sk.score(X)) < 1e-6
    np.testing.assert_allclose(ours.params.means.numpy(), sk.means_, atol=1e-6)
    np.testing.assert_allclose(ours.params.covariances.numpy(), sk.covariances_, atol=1e-6)
    np.testing.assert_allclose(ours.params.weights.numpy(), sk.weights_, atol=1e-8)


def test_tied_diag_m_step_is_weighted_pooled_diagonal():
    X, _ = make_gmm(300, 3, 4, covariance_type="tied_diag", random_state=3)
    x = torch.as_tensor(X)
    resp = torch.softmax(torch.randn(300, 3, generator=torch.Generator().manual_seed(0)), 1)
    params = em_gmm.params_from_responsibilities(x, resp, "tied_diag", reg_covar=0.0)
    nk = resp.sum(0)
    means = (resp.T @ x) / nk[:, None]
    pooled = sum((resp[:, k, None] * (x - means[k]) ** 2).sum(0) for k in range(3)) / 300
    torch.testing.assert_close(params.means, means)
    torch.testing.assert_close(params.covariances, pooled)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    covariance_type=st.sampled_from(gmm.COVARIANCE_TYPES),
    n_components=st.integers(1, 5),
    n_features=st.integers(1, 4),
)
def test_em_log_likelihood_never_decreases(seed, covariance_type, n_components, n_features):
    g = torch.Generator().manual_seed(seed)
    n = 20 * n_components * n_features + 10
    x = torch.randn(n, n_features, generator=g) * torch.rand(n_features, generator=g).add(0.2)
    x[: n // 3] += 3 * torch.randn(n_features, generator=g)
    resp = torch.softmax(3 * torch.randn(n, n_components, generator=g), 1)
    params = em_gmm.params_from_responsibilities(x, resp, covariance_type, 1e-6)
    result = run(x, params, covariance_type, max_iter=30)
    steps = np.diff(result.history)
    assert steps.min() >= -1e-10 * max(1.0, abs(result.history[-1]))
    assert result.decreases == []


def test_float32_matches_float64():
    X, _ = make_gmm(2000, 3, 5, random_state=0)
    weights, means, precisions = sklearn_init(X, 3, "full", 0)
    params = to_params(weights, means, precisions, "full")
    r64 = run(torch.as_tensor(X), params, "full", max_iter=20)
    r32 = run(torch.as_tensor(X, dtype=torch.float32), params.to(torch.float32), "full", max_iter=20)
    assert r32.params.means.dtype == torch.float32
    assert abs(r32.log_likelihood - r64.log_likelihood) < 1e-4


def test_stats_add_over_batches():
    X, _ = make_gmm(500, 3, 4, random_state=1)
    x = torch.as_tensor(X)
    params = to_params(*sklearn_init(X, 3, "full", 1), "full")
    whole = em_gmm.e_step(x, params)
    parts = em_gmm.e_step(x[:200], params) + em_gmm.e_step(x[200:], params)
    a, b = em_gmm.m_step(whole, "full"), em_gmm.m_step(parts, "full")
    torch.testing.assert_close(a.covariances, b.covariances)
    torch.testing.assert_close(parts.log_likelihood, whole.log_likelihood)


def test_n_init_keeps_best_and_converges():
    X, _ = make_gmm(800, 4, 2, separation=4.0, random_state=2)
    x = torch.as_tensor(X)
    g = torch.Generator().manual_seed(0)

    def init(_):
        resp = torch.softmax(5 * torch.randn(800, 4, generator=g), 1)
        return em_gmm.params_from_responsibilities(x, resp, "full", 1e-6)

    result = run_em(x, init_params=init, e_step=em_gmm.e_step,
                    m_step=lambda s: em_gmm.m_step(s, "full", 1e-6), n_init=3, max_iter=300,
                    tol=1e-6, progress=False)
    assert result.converged
    assert len(result.restart_log_likelihoods) == 3
    assert result.log_likelihood == max(result.restart_log_likelihoods)
