"""Tests of :mod:`ppl_mixtures.inference.laplace`: the Laplace approximation at a point estimate."""

import random
import warnings

import numpy as np
import pytest
import torch

from ppl_mixtures import diagnostics
from ppl_mixtures.estimators import GaussianMixture
from ppl_mixtures.inference.laplace import (
    LaplaceWarning,
    laplace_posterior,
    negative_log_joint,
)
from ppl_mixtures.models import gmm

N_ROWS, SIGMA = 2000, 1.5


@pytest.fixture(scope="module")
def gaussian():
    """One Gaussian component in one dimension, many rows: the posterior is nearly conjugate."""
    rng = np.random.default_rng(0)
    X = 2.0 + SIGMA * rng.standard_normal((N_ROWS, 1))
    est = GaussianMixture(1, covariance_type="diag", progress=False, random_state=0,
                          device="cpu").fit(X)
    return X, est


def test_laplace_sd_of_a_gaussian_mean_is_sigma_over_sqrt_n(gaussian):
    """MacKay 2003, ch. 27: the posterior of a mean under N rows of known scale has sd sigma/sqrt(N);
    that of log sigma^2 has sd sqrt(2/N) (Fisher information of a log-variance)."""
    X, est = gaussian
    approximation = diagnostics.laplace_approximation(est, X)
    sd = approximation.unconstrained_sd()
    fitted_sd = float(np.sqrt(est.covariances_[0, 0]))
    # the weak data-scaled priors move these by well under 0.1% at N = 2000
    assert float(sd["means"][0, 0]) == pytest.approx(fitted_sd / np.sqrt(N_ROWS), rel=2e-3)
    assert float(sd["variances"][0, 0]) == pytest.approx(np.sqrt(2 / N_ROWS), rel=2e-3)
    assert approximation.n_parameters == 2  # one weight: no unconstrained value
    assert approximation.n_regularised == 0
    assert approximation.offset_sd < 0.1  # the ML estimate is all but the posterior mode
    # draws in constrained space agree with the Gaussian above
    draws = approximation.sample(4000, torch.Generator().manual_seed(0))
    assert draws["weights"].shape == (4000, 1) and draws["means"].shape == (4000, 1, 1)
    assert torch.all(draws["variances"] > 0)
    assert float(draws["means"].std()) == pytest.approx(fitted_sd / np.sqrt(N_ROWS), rel=0.05)
    # and the importance ratios are nearly flat: a Gaussian posterior is fitted well
    _, log_ratios = approximation.sample_with_log_ratios(100, torch.Generator().manual_seed(1))
    assert float(log_ratios.std()) < 0.2  # measured 0.05: p and q differ by a constant
    assert diagnostics.laplace_pareto_k(log_ratios) < diagnostics.LAPLACE_PARETO_K


def test_negative_log_joint_is_the_enumerated_loss_plus_the_log_jacobian(gaussian):
    """U(u) = -(log p(x | theta) + log p(theta)) - log|J|, the identity of the project's spine."""
    X, est = gaussian
    x = est._fitted_x(X)
    blobs = GaussianMixture(2, progress=False, random_state=0, device="cpu").fit(
        np.concatenate([X, X + 6.0]))
    for fitted, data in ((est, X), (blobs, np.concatenate([X, X + 6.0]))):
        x = fitted._fitted_x(data)
        approximation = diagnostics.laplace_approximation(fitted, data, find_mode=False)
        energy = negative_log_joint(fitted.model_, x, approximation._layout)
        u = approximation.loc.clone().requires_grad_(True)
        log_jacobian = sum(
            item.transform.log_abs_det_jacobian(
                u[item.start:item.stop].reshape(item.unconstrained_shape),
                approximation.mode[item.name]).sum()
            for item in approximation._layout)
        expected = -(fitted.score(data) * len(data)
                     + float(fitted.model_.log_prior(fitted.params_)))
        assert float((energy(u) + log_jacobian).detach()) == pytest.approx(expected, rel=1e-10)


def test_a_saddle_point_is_regularised_with_a_warning():
    """Two equal narrow components at the mean of two clusters: splitting them raises the
    posterior, so the Hessian there has a negative eigenvalue."""
    rng = np.random.default_rng(1)
    X = np.concatenate([rng.normal(-3, 1, (100, 1)), rng.normal(3, 1, (100, 1))])
    est = GaussianMixture(2, covariance_type="diag", progress=False, random_state=0,
                          device="cpu").fit(X)
    x = est._fitted_x(X)
    saddle = gmm.GMMParams(torch.tensor([0.5, 0.5]), x.mean(0).expand(2, 1).clone(),
                           x.var(0).expand(2, 1) / 4, "diag")
    with pytest.warns(LaplaceWarning, match=r"not positive definite: \d+ of 5 eigenvalues.*"
                      r"To avoid it, fit the MAP"):
        approximation = laplace_posterior(est.model_, x, gmm.params_to_sites(saddle),
                                          find_mode=False)
    assert approximation.n_regularised >= 1
    torch.testing.assert_close(approximation.loc, approximation.start)  # centred as asked
    assert float(torch.linalg.eigvalsh(approximation.hessian).min()) < 0  # as computed
    assert torch.all(approximation.eigenvalues > 0)  # as used
    # the negative eigenvalues are replaced by their absolute values (Nocedal & Wright 2006)
    raw = torch.linalg.eigvalsh(approximation.hessian).abs().sort().values
    np.testing.assert_allclose(approximation.eigenvalues.sort().values, raw, rtol=1e-8)
    covariance = approximation.covariance
    np.testing.assert_allclose(covariance, covariance.T, atol=1e-12)
    draws = approximation.sample(50, torch.Generator().manual_seed(0))
    assert all(torch.isfinite(value).all() for value in draws.values())


def test_the_parameter_budget_names_the_alternatives(gaussian):
    X, est = gaussian
    with pytest.raises(ValueError, match=r"2 unconstrained values, above max_parameters=1 .*"
                       r"inference='nuts'.*guide='mean_field'"):
        diagnostics.laplace_approximation(est, X, max_parameters=1)


def test_draws_are_reproducible_and_leave_the_global_streams_alone(gaussian):
    X, est = gaussian
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    states = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    approximation = diagnostics.laplace_approximation(est, X)
    first = approximation.sample(20, torch.Generator().manual_seed(3))
    again = approximation.sample(20, torch.Generator().manual_seed(3))
    other = approximation.sample(20, torch.Generator().manual_seed(4))
    approximation.sample(20)  # a fresh generator: nothing global is read
    approximation.sample_with_log_ratios(5, torch.Generator().manual_seed(3))
    for name in first:
        torch.testing.assert_close(first[name], again[name], rtol=0, atol=0)
    assert not torch.equal(first["means"], other["means"])
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1])
    assert random.getstate() == states[2]


def test_a_bad_eigenvalue_floor_is_refused(gaussian):
    X, est = gaussian
    with pytest.raises(ValueError, match="eigenvalue_floor=0 must be positive"):
        diagnostics.laplace_approximation(est, X, eigenvalue_floor=0)


def test_no_warning_at_a_well_separated_fit():
    rng = np.random.default_rng(2)
    X = np.concatenate([rng.normal(-4, 1, (150, 2)), rng.normal(4, 1, (150, 2))])
    est = GaussianMixture(2, progress=False, random_state=0, device="cpu").fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LaplaceWarning)
        approximation = diagnostics.laplace_approximation(est, X)
    # 1 weight + 4 means + 4 variances + 2 correlations
    assert approximation.n_parameters == 11


def test_the_centre_is_the_mode_of_the_unconstrained_posterior():
    """An EM estimate (maximum likelihood) is moved to the mode of U (priors, log-Jacobian):
    the gradient vanishes there, and U is lower than at the estimate."""
    rng = np.random.default_rng(3)
    X = np.concatenate([rng.normal(-2, 1, (40, 2)), rng.normal(2, 1, (40, 2))])
    est = GaussianMixture(2, progress=False, random_state=0, device="cpu").fit(X)
    x = est._fitted_x(X)
    approximation = diagnostics.laplace_approximation(est, X)
    at_estimate = diagnostics.laplace_approximation(est, X, find_mode=False)
    energy = negative_log_joint(est.model_, x, approximation._layout)
    assert float(energy(approximation.loc)) < float(energy(approximation.start))
    assert approximation.offset_sd < 1e-3 < at_estimate.offset_sd
    # a Laplace approximation is not far from the estimate: well under a posterior sd per value
    shift = (approximation.loc - approximation.start).abs() / approximation.covariance.diagonal().sqrt()
    assert float(shift.max()) < 1.0


@pytest.mark.slow
def test_laplace_agrees_with_nuts_on_a_small_mixture():
    """Two components in one dimension, 120 rows: the Laplace draws of the EM fit and NUTS
    draws of the same model agree. Measured (1000 NUTS draws, 4000 Laplace draws): posterior
    means within 0.25 NUTS sd, sds within 10% (variances' sds 10% low: their posterior is
    skewed), elpd_loo -230.3 against -230.0."""
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(-2, 1, (60, 1)), rng.normal(2, 0.7, (60, 1))])
    options = {"covariance_type": "diag", "progress": False, "random_state": 0, "device": "cpu"}
    em = GaussianMixture(2, **options).fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nuts = GaussianMixture(2, inference="nuts", max_iter=500, num_warmup=300,
                               **options).fit(X)
    laplace = diagnostics.to_inference_data(em, X, num_samples=2000, random_state=0).posterior
    sampled = diagnostics.to_inference_data(nuts, X, random_state=0).posterior
    order = np.argsort(em.means_[:, 0])
    nuts_order = np.argsort(nuts.means_[:, 0])
    for name in ("weights", "means", "covariances"):
        ours = laplace[name].values.reshape(-1, 2)[:, order]
        theirs = sampled[name].values.reshape(-1, 2)[:, nuts_order]
        np.testing.assert_array_less(np.abs(ours.mean(0) - theirs.mean(0)), 0.4 * theirs.std(0))
        np.testing.assert_allclose(ours.std(0), theirs.std(0), rtol=0.2)
