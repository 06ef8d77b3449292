"""``inference="nuts", missing="marginalize"``: NUTS over the masked model (the GMM's and the
MFA's collapsed one).

The Pyro model scores each row's observed coordinates only, so NUTS's potential energy is
``-(log-likelihood of the observed entries + log prior)`` (plus the log-Jacobian of the
unconstraining transforms), with the likelihood checked here against scipy's densities of
the observed sub-vectors; the posterior then sits on EM's fit of the same incomplete data.
"""

import warnings

import numpy as np
import pytest
import torch
from pyro.infer.mcmc.util import initialize_model
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from ppl_mixtures import GaussianMixture, MixtureOfFactorAnalyzers
from ppl_mixtures.datasets import make_gmm, mask_missing
from ppl_mixtures.models import gmm, mfa


def incomplete(n_samples, seed, fraction=0.15, n_features=2):
    X, labels = make_gmm(n_samples=n_samples, n_components=2, n_features=n_features,
                         random_state=seed)
    return mask_missing(X, fraction, random_state=seed, keep_observed=True), labels


def observed_log_likelihood(x, weights, means, covariances):
    """``sum_n log sum_k w_k N(x_n,o | mu_k,o, Sigma_k,oo)`` by scipy, row by row."""
    total = 0.0
    for row in x:
        seen = ~np.isnan(row)
        terms = [np.log(w) + multivariate_normal(mean[seen], cov[np.ix_(seen, seen)]).logpdf(
            row[seen]) for w, mean, cov in zip(weights, means, covariances, strict=True)]
        total += logsumexp(terms)
    return total


def full_covariances(est):
    covariances = est.covariances_
    if est.covariance_type == "full":
        return covariances
    if est.covariance_type == "tied":
        return np.repeat(covariances[None], est.n_components, axis=0)
    if est.covariance_type == "spherical":
        covariances = covariances[:, None] * np.ones(est.n_features_in_)
    return np.stack([np.diag(v) for v in np.broadcast_to(
        covariances, (est.n_components, est.n_features_in_))])


@pytest.mark.parametrize("covariance_type", ["spherical", "diag", "tied", "full"])
def test_potential_energy_is_minus_masked_log_likelihood_and_log_prior(covariance_type):
    x, _ = incomplete(60, seed=1, fraction=0.25, n_features=3)
    est = GaussianMixture(2, covariance_type=covariance_type, missing="marginalize",
                          random_state=0, progress=False).fit(x)
    data = torch.as_tensor(x)
    _, potential_fn, transforms, _ = initialize_model(
        est.model_, model_args=(data,), max_plate_nesting=est.model_.max_plate_nesting)
    sites = gmm.params_to_sites(est.params_)
    unconstrained = {name: transforms[name](value) for name, value in sites.items()}
    log_jacobian = sum(
        float(transforms[name].inv.log_abs_det_jacobian(unconstrained[name], value).sum())
        for name, value in sites.items())
    log_prior = float(est.model_.log_prior(est.params_))
    log_likelihood = observed_log_likelihood(x, est.weights_, est.means_,
                                             full_covariances(est))
    potential = float(potential_fn(unconstrained))
    assert potential == pytest.approx(-(log_likelihood + log_prior + log_jacobian),
                                      rel=1e-10, abs=1e-8)
    # and the estimator's own score is the same likelihood
    assert est.score(x) * len(x) == pytest.approx(log_likelihood, rel=1e-10)


def test_mfa_potential_energy_is_minus_masked_log_likelihood_and_log_prior():
    x, _ = incomplete(60, seed=1, fraction=0.25, n_features=4)
    est = MixtureOfFactorAnalyzers(2, 1, missing="marginalize", random_state=0,
                                   progress=False).fit(x)
    _, potential_fn, transforms, _ = initialize_model(
        est.model_, model_args=(torch.as_tensor(x),),
        max_plate_nesting=est.model_.max_plate_nesting)
    sites = mfa.params_to_sites(est.params_)
    unconstrained = {name: transforms[name](value) for name, value in sites.items()}
    log_jacobian = sum(
        float(transforms[name].inv.log_abs_det_jacobian(unconstrained[name], value).sum())
        for name, value in sites.items())
    covariances = (est.loadings_ @ est.loadings_.transpose(0, 2, 1)
                   + np.stack([np.diag(v) for v in est.noise_variances_]))
    log_likelihood = observed_log_likelihood(x, est.weights_, est.means_, covariances)
    log_prior = float(est.model_.log_prior(est.params_))
    assert float(potential_fn(unconstrained)) == pytest.approx(
        -(log_likelihood + log_prior + log_jacobian), rel=1e-10, abs=1e-8)


def test_mfa_nuts_runs_on_incomplete_rows():
    x, _ = incomplete(40, seed=2, n_features=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = MixtureOfFactorAnalyzers(2, 1, missing="marginalize", inference="nuts",
                                       max_iter=4, num_warmup=4, random_state=0,
                                       progress=False).fit(x)
    assert len(est.history_) == 4 and np.all(np.isfinite(est.history_))
    assert np.isfinite(est.score(x)) and np.isfinite(est.impute(x)).all()


def test_nuts_runs_on_incomplete_rows_and_scores_them():
    x, _ = incomplete(40, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = GaussianMixture(2, covariance_type="full", missing="marginalize",
                              inference="nuts", max_iter=5, num_warmup=5, random_state=0,
                              progress=False).fit(x)
    assert len(est.history_) == 5 and np.all(np.isfinite(est.history_))
    assert np.isfinite(est.score(x)) and est.posterior_samples_["means"].shape == (5, 2, 2)
    assert np.isfinite(est.impute(x)).all()


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 3])
def test_nuts_posterior_sits_on_the_em_fit(seed):
    """Measured over data seeds 0-3 and random_state 0-1 (120 rows, 15 % missing, diag, 60
    warm-up steps and 60 draws, 20-30 s each): the posterior medians' means within 0.12
    standard deviations of EM's, variances within 14 %, weights within 0.035, mean
    log-likelihood within 0.0025 of EM's."""
    x, _ = incomplete(120, seed=seed)
    options = dict(covariance_type="diag", missing="marginalize", progress=False)
    em = GaussianMixture(2, random_state=0, **options).fit(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nuts = GaussianMixture(2, inference="nuts", max_iter=60, num_warmup=60,
                               random_state=0, **options).fit(x)
    order = np.argmin(((em.means_[:, None] - nuts.means_[None]) ** 2).sum(-1), axis=1)
    assert sorted(order) == [0, 1]
    sd = np.sqrt(em.covariances_)
    assert np.abs((nuts.means_[order] - em.means_) / sd).max() < 0.25
    assert np.abs(nuts.covariances_[order] / em.covariances_ - 1).max() < 0.3
    assert np.abs(nuts.weights_[order] - em.weights_).max() < 0.08
    assert abs(nuts.score(x) - em.score(x)) < 0.01
    assert nuts.converged_
