"""EM with missing entries (NaN) marginalised: densities against scipy, identities, monotonicity.

The math is :mod:`ppl_mixtures.inference.em.missing` (Ghahramani & Jordan 1994).
"""

import numpy as np
import pyro
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from ppl_mixtures.datasets import mask_missing
from ppl_mixtures.inference.em import gmm as em_gmm
from ppl_mixtures.inference.em import mfa as em_mfa
from ppl_mixtures.inference.em import missing
from ppl_mixtures.inference.init import initial_responsibilities
from ppl_mixtures.models import gmm, mfa

COVARIANCE_TYPES = ("spherical", "diag", "tied_diag", "tied", "full")


def _blobs(n=240, d=4, k=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=4.0, size=(k, d))
    labels = rng.integers(k, size=n)
    mixing = rng.normal(size=(k, d, d)) * 0.6 + np.eye(d)
    x = centers[labels] + np.einsum("nij,nj->ni", mixing[labels], rng.normal(size=(n, d)))
    return torch.as_tensor(x), labels


def _with_nans(x, fraction=0.2, seed=1, empty_rows=()):
    x = torch.as_tensor(mask_missing(x.numpy(), fraction, random_state=seed))
    for row in empty_rows:
        x[row] = float("nan")
    return x


def _gmm_start(x, covariance_type, k=3):
    resp = initial_responsibilities(missing.mean_impute(x), k, "kmeans", torch.Generator().manual_seed(0))
    return em_gmm.params_from_responsibilities(missing.mean_impute(x), resp, covariance_type)


def _mfa_start(x, k=3, r=2):
    resp = initial_responsibilities(missing.mean_impute(x), k, "kmeans", torch.Generator().manual_seed(0))
    return em_mfa.params_from_responsibilities(missing.mean_impute(x), resp, r)


def _scipy_log_likelihood(x, weights, means, covariances):
    """Per row: log sum_k pi_k N(x_o | mu_k,o, Sigma_k,oo) by scipy, 0 for an empty row."""
    out = []
    for row in x:
        seen = ~np.isnan(row)
        if not seen.any():
            out.append(0.0)
            continue
        terms = [np.log(w) + multivariate_normal(m[seen], c[np.ix_(seen, seen)]).logpdf(row[seen])
                 for w, m, c in zip(weights, means, covariances, strict=True)]
        out.append(logsumexp(terms))
    return np.array(out)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_gmm_log_likelihood_of_incomplete_rows_matches_scipy(covariance_type):
    x, _ = _blobs(n=80)
    x = _with_nans(x, empty_rows=(5,))
    params = _gmm_start(x, covariance_type)
    ours = torch.logsumexp(missing.gmm_log_joint(x, params), -1).numpy()
    expected = _scipy_log_likelihood(x.numpy(), params.weights.numpy(), params.means.numpy(),
                                     gmm.covariance_matrices(params).numpy())
    np.testing.assert_allclose(ours, expected, rtol=1e-10, atol=1e-10)


def test_mfa_log_likelihood_of_incomplete_rows_matches_scipy():
    x, _ = _blobs(n=80, d=5)
    x = _with_nans(x, empty_rows=(3,))
    params = _mfa_start(x)
    ours = torch.logsumexp(missing.mfa_log_joint(x, params), -1).numpy()
    expected = _scipy_log_likelihood(x.numpy(), params.weights.numpy(), params.means.numpy(),
                                     mfa.covariance_matrices(params).numpy())
    np.testing.assert_allclose(ours, expected, rtol=1e-10, atol=1e-10)


def _run_em(x, params, e_step, m_step, n_iter):
    values = []
    for _ in range(n_iter):
        stats = e_step(x, params)
        values.append(float(stats.log_likelihood))
        params = m_step(stats)
    return params, values


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_gmm_em_is_monotone_with_missing_entries(covariance_type):
    x, _ = _blobs()
    x = _with_nans(x, fraction=0.25, empty_rows=(0, 7))
    _, values = _run_em(x, _gmm_start(x, covariance_type), missing.gmm_e_step,
                        lambda s: em_gmm.m_step(s, covariance_type, 0.0), 30)
    assert np.all(np.diff(values) >= -1e-9 * abs(values[-1])), np.diff(values).min()
    assert values[-1] > values[0] + 1.0


def test_mfa_em_is_monotone_with_missing_entries():
    x, _ = _blobs(d=5)
    x = _with_nans(x, fraction=0.25, empty_rows=(2,))
    _, values = _run_em(x, _mfa_start(x), missing.mfa_e_step, lambda s: em_mfa.m_step(s, 0.0), 30)
    assert np.all(np.diff(values) >= -1e-9 * abs(values[-1])), np.diff(values).min()
    assert values[-1] > values[0] + 1.0


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_gmm_statistics_of_incomplete_rows_match_a_direct_computation(covariance_type):
    """Expected moments against per-row conditional Gaussians written out with NumPy."""
    x, _ = _blobs(n=40)
    x = _with_nans(x, fraction=0.3, seed=4)
    params = _gmm_start(x, covariance_type)
    stats = missing.gmm_e_step(x, params)
    covs = gmm.covariance_matrices(params).numpy()
    means, weights = params.means.numpy(), params.weights.numpy()
    k, d = means.shape
    first, second = np.zeros((k, d)), np.zeros((k, d, d))
    for row in x.numpy():
        o = ~np.isnan(row)
        if not o.any():
            continue
        m = ~o
        logs = [np.log(weights[j]) + multivariate_normal(means[j][o], covs[j][np.ix_(o, o)])
                .logpdf(row[o]) for j in range(k)]
        resp = np.exp(np.array(logs) - logsumexp(logs))
        for j in range(k):
            gain = covs[j][np.ix_(m, o)] @ np.linalg.inv(covs[j][np.ix_(o, o)])
            filled = row.copy()
            filled[m] = means[j][m] + gain @ (row[o] - means[j][o])
            conditional = np.zeros((d, d))
            conditional[np.ix_(m, m)] = covs[j][np.ix_(m, m)] - gain @ covs[j][np.ix_(o, m)]
            diff = filled - means[j]
            first[j] += resp[j] * diff
            second[j] += resp[j] * (np.outer(diff, diff) + conditional)
    np.testing.assert_allclose(stats.first_moment.numpy(), first, atol=1e-9)
    got = stats.second_moment.numpy()
    if covariance_type in gmm.DIAGONAL_TYPES:
        second = np.diagonal(second, axis1=1, axis2=2)
        if covariance_type == "spherical":  # the mean over features, in every column
            second = np.repeat(second.mean(1, keepdims=True), d, axis=1)
    elif covariance_type == "tied":  # pooled over the components
        second = second.sum(0)
    np.testing.assert_allclose(got, second, atol=1e-9)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_nothing_missing_gives_the_complete_data_statistics(covariance_type):
    x, _ = _blobs()
    params = _gmm_start(x, covariance_type)
    ours, theirs = missing.gmm_e_step(x, params), em_gmm.e_step(x, params)
    for name in ("log_likelihood", "resp_sum", "first_moment", "second_moment"):
        assert torch.equal(getattr(ours, name), getattr(theirs, name))


def test_mfa_statistics_of_complete_rows_through_the_masked_path_equal_the_complete_e_step():
    """Weights route complete rows through the masked path: unit weights give the same stats."""
    x, _ = _blobs(d=5)
    params = _mfa_start(x)
    ours = missing.mfa_e_step(x, params, weights=torch.ones(x.shape[0]))
    theirs = em_mfa.e_step(x, params)
    for name in ("log_likelihood", "resp_sum", "first_moment", "second_moment", "cross_moment",
                 "factor_sum", "factor_second_moment"):
        torch.testing.assert_close(getattr(ours, name), getattr(theirs, name), rtol=1e-10,
                                   atol=1e-9)


@pytest.mark.parametrize("covariance_type", ("diag", "full"))
def test_integer_weights_equal_repeated_rows(covariance_type):
    x, _ = _blobs(n=60)
    x = _with_nans(x, fraction=0.3, seed=2, empty_rows=(1,))
    params = _gmm_start(x, covariance_type)
    counts = torch.as_tensor(np.random.default_rng(0).integers(0, 3, size=x.shape[0]))
    weighted = missing.gmm_e_step(x, params, weights=counts.to(torch.float64))
    repeated = missing.gmm_e_step(x.repeat_interleave(counts, 0), params)
    assert weighted.n_samples == repeated.n_samples
    for name in ("log_likelihood", "resp_sum", "first_moment", "second_moment"):
        torch.testing.assert_close(getattr(weighted, name), getattr(repeated, name))
    mfa_params = _mfa_start(x)
    weighted = missing.mfa_e_step(x, mfa_params, weights=counts.to(torch.float64))
    repeated = missing.mfa_e_step(x.repeat_interleave(counts, 0), mfa_params)
    for name in ("log_likelihood", "resp_sum", "cross_moment", "second_moment"):
        torch.testing.assert_close(getattr(weighted, name), getattr(repeated, name))


def test_impute_is_the_conditional_mean():
    """One full component: the imputation is the Gaussian regression of x_m on x_o."""
    x, _ = _blobs(n=30)
    holes = _with_nans(x, fraction=0.3, seed=3, empty_rows=(4,))
    params = _gmm_start(x, "full", k=1)
    filled = missing.gmm_impute(holes, params).numpy()
    mean, cov = params.means[0].numpy(), params.covariances[0].numpy()
    for row, got in zip(holes.numpy(), filled, strict=True):
        o = ~np.isnan(row)
        m = ~o
        expected = row.copy()
        if o.any():
            gain = cov[np.ix_(m, o)] @ np.linalg.inv(cov[np.ix_(o, o)])
            expected[m] = mean[m] + gain @ (row[o] - mean[o])
        else:
            expected = mean
        np.testing.assert_allclose(got, expected, atol=1e-10)


def test_mfa_impute_equals_the_gmm_imputation_with_its_covariances():
    x, _ = _blobs(d=5)
    holes = _with_nans(x, fraction=0.3, seed=5, empty_rows=(0,))
    params = _mfa_start(x)
    as_gmm = gmm.GMMParams(params.weights, params.means, mfa.covariance_matrices(params), "full")
    torch.testing.assert_close(missing.mfa_impute(holes, params),
                               missing.gmm_impute(holes, as_gmm), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_enumerated_elbo_on_incomplete_data_equals_em_log_likelihood_plus_log_prior(covariance_type):
    """The spine on incomplete data: -TraceEnum_ELBO(MAP guide) == EM log-likelihood + log prior."""
    from pyro.infer import TraceEnum_ELBO

    from ppl_mixtures.models.priors import default_gmm_priors

    x, _ = _blobs(n=60)
    x = _with_nans(x, fraction=0.25, empty_rows=(3,))
    params = _gmm_start(x, covariance_type)
    priors = default_gmm_priors(missing.mean_impute(x), 3, covariance_type)
    model = gmm.GaussianMixtureModel(3, x.shape[1], covariance_type, priors, missing=True)
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(model, gmm.map_guide(model, params), x)
    em_ll = missing.gmm_e_step(x, params).log_likelihood
    assert -loss == pytest.approx(float(em_ll + model.log_prior(params)), rel=1e-12, abs=1e-9)


def test_enumerated_elbo_of_the_mfa_on_incomplete_data_equals_em_log_likelihood_plus_log_prior():
    from pyro.infer import TraceEnum_ELBO

    x, _ = _blobs(n=60, d=5)
    x = _with_nans(x, fraction=0.25, empty_rows=(3,))
    params = _mfa_start(x)
    priors = mfa.default_mfa_priors(missing.mean_impute(x), 3, 2)
    model = mfa.MixtureOfFactorAnalyzersModel(3, 5, 2, priors, missing=True)
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(model, mfa.map_guide(model, params), x)
    em_ll = missing.mfa_e_step(x, params).log_likelihood
    assert -loss == pytest.approx(float(em_ll + model.log_prior(params)), rel=1e-12, abs=1e-9)


@pytest.mark.parametrize("covariance_type", ("diag", "full"))
def test_svi_gradients_on_incomplete_data_are_finite(covariance_type):
    """The masked densities are differentiable: NaN entries leave no NaN in the gradients."""
    from pyro.infer import TraceEnum_ELBO

    from ppl_mixtures.models.priors import default_gmm_priors

    x, _ = _blobs(n=50)
    x = _with_nans(x, fraction=0.3)
    params = _gmm_start(x, covariance_type)
    priors = default_gmm_priors(missing.mean_impute(x), 3, covariance_type)
    model = gmm.GaussianMixtureModel(3, x.shape[1], covariance_type, priors, missing=True)
    guide = gmm.map_guide(model, params)
    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(model, guide, x)
    store = pyro.get_param_store()
    leaves = [store.get_param(name).unconstrained() for name in store.keys()]
    grads = torch.autograd.grad(loss, leaves)
    assert len(grads) >= 3 and all(bool(torch.isfinite(g).all()) for g in grads)
