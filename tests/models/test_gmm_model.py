"""The Pyro GMM against scipy, and the identity -ELBO(MAP guide) == EM log-likelihood + log prior."""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import TraceEnum_ELBO
from scipy.stats import invgamma, multivariate_normal

from ppl_mixtures.inference.em import gmm as em_gmm
from ppl_mixtures.models import gmm
from ppl_mixtures.models.priors import default_gmm_priors

N, D, K = 40, 3, 4


def random_params(covariance_type: str, seed: int = 0) -> gmm.GMMParams:
    g = torch.Generator().manual_seed(seed)
    factor = torch.randn(K, D, D, generator=g)
    full = factor @ factor.transpose(-1, -2) + 0.5 * torch.eye(D)
    covariances = {
        "spherical": torch.rand(K, generator=g) + 0.5,
        "diag": torch.rand(K, D, generator=g) + 0.5,
        "tied_diag": torch.rand(D, generator=g) + 0.5,
        "tied": full[0],
        "full": full,
    }[covariance_type]
    weights = torch.softmax(torch.randn(K, generator=g), 0)
    return gmm.GMMParams(weights, 3 * torch.randn(K, D, generator=g), covariances, covariance_type)


@pytest.fixture
def data():
    return torch.randn(N, D, generator=torch.Generator().manual_seed(1)) * 2.0


@pytest.mark.parametrize("covariance_type", gmm.COVARIANCE_TYPES)
def test_component_log_prob_matches_scipy(covariance_type, data):
    params = random_params(covariance_type)
    ours = gmm.component_log_prob(data, params).numpy()
    covs = gmm.covariance_matrices(params).numpy()
    expected = np.stack(
        [multivariate_normal(params.means[k].numpy(), covs[k]).logpdf(data.numpy()) for k in range(K)],
        axis=1,
    )
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-10)


def _far_rows_and_means(params):
    """Means and rows moved 40 away from the origin, one row exactly on the first mean;
    both need gradients."""
    means = (params.means.double() + 40.0).requires_grad_()
    x = (torch.randn(N, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
         * 2.0 + 40.0)
    return means, torch.cat([x, means[:1].detach()]).requires_grad_()


def _assert_differentiates_as(ours, reference, means, spread, x, atol):
    """``ours(means, spread, x)`` equals ``reference`` in value (to ``atol``), in its
    gradients in the three (to 1e-10 of the largest) and in its Hessian in the means."""
    value, expected = ours(means, spread, x), reference(means, spread, x)
    torch.testing.assert_close(value, expected, rtol=0, atol=atol)
    weights = torch.rand(value.shape, generator=torch.Generator().manual_seed(4),
                         dtype=torch.float64)
    grads = torch.autograd.grad((value * weights).sum(), (means, spread, x))
    expected_grads = torch.autograd.grad((expected * weights).sum(), (means, spread, x))
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10 * float(want.abs().max()))
    rows, fixed = x.detach(), spread.detach()
    hessians = [torch.autograd.functional.hessian(lambda m, f=f: f(m, fixed, rows).sum(),
                                                  means.detach()) for f in (ours, reference)]
    torch.testing.assert_close(hessians[0], hessians[1], rtol=0, atol=1e-9)


@pytest.mark.parametrize("covariance_type", gmm.DIAGONAL_TYPES)
def test_diagonal_densities_differentiate_as_torch_distributions(covariance_type):
    """The diagonal densities (one product, the centre and the rounding cap out of autograd)
    against torch.distributions.Normal far from the origin: values, gradients in the means,
    variances and rows (the GMVAE differentiates its latent rows), and the Hessian in the
    means (Laplace's), all to float64 rounding; a row on a mean keeps its curvature."""
    params = random_params(covariance_type)
    means, x = _far_rows_and_means(params)
    weights = params.weights.double()

    def ours(m, v, rows):
        return gmm.component_log_prob(rows, gmm.GMMParams(weights, m, v, covariance_type))

    def reference(m, v, rows):
        scale = gmm.diagonal_variances(gmm.GMMParams(weights, m, v, covariance_type)).sqrt()
        return dist.Normal(m, scale).log_prob(rows[:, None, :]).sum(-1)

    _assert_differentiates_as(ours, reference, means,
                              params.covariances.double().requires_grad_(), x, 1e-11)


@pytest.mark.parametrize("covariance_type", ["tied", "full"])
@pytest.mark.parametrize("stacked", [True, False])
def test_whitened_densities_differentiate_as_torch_distributions(covariance_type, stacked,
                                                                 monkeypatch):
    """Tied and full densities (the centre out of autograd) against MultivariateNormal far from
    the origin, the K maps side by side or one at a time: gradients in the means, Cholesky
    factors and rows, and the Hessian in the means, to float64 rounding; a row exactly on a
    mean included (the norm's second derivative there was NaN)."""
    if not stacked:
        monkeypatch.setattr(gmm, "_STACKED_WHITENING_MAX", 0)
    params = random_params(covariance_type)
    means, x = _far_rows_and_means(params)
    weights = params.weights.double()

    def ours(m, f, rows):
        cov = f @ f.transpose(-1, -2)
        return gmm.component_log_prob(rows, gmm.GMMParams(weights, m, cov, covariance_type),
                                      factors=f)

    def reference(m, f, rows):
        return dist.MultivariateNormal(m, scale_tril=f).log_prob(rows[:, None, :])

    factors = torch.linalg.cholesky(params.covariances.double()).requires_grad_()
    _assert_differentiates_as(ours, reference, means, factors, x, 1e-10)


@pytest.mark.parametrize("covariance_type", gmm.COVARIANCE_TYPES)
def test_float32_far_from_origin_keeps_precision(covariance_type, data):
    params = random_params(covariance_type)
    shift = 1e3
    far = gmm.GMMParams(params.weights, params.means + shift, params.covariances, covariance_type)
    reference = gmm.component_log_prob(data, params)
    ours = gmm.component_log_prob((data + shift).float(), far.to(torch.float32))
    np.testing.assert_allclose(ours.double().numpy(), reference.numpy(), atol=2e-3)


@pytest.mark.parametrize("covariance_type", gmm.COVARIANCE_TYPES)
def test_enumerated_elbo_equals_em_log_likelihood_plus_log_prior(covariance_type, data):
    """The spine: -TraceEnum_ELBO loss with the MAP guide == EM log-likelihood + log prior."""
    params = random_params(covariance_type)
    model = gmm.GaussianMixtureModel(K, D, covariance_type, default_gmm_priors(data, K, covariance_type))
    guide = gmm.map_guide(model, params)
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(model, guide, data)
    em_ll = em_gmm.e_step(data, params).log_likelihood
    expected = float(em_ll + model.log_prior(params))
    assert -loss == pytest.approx(expected, rel=1e-12, abs=1e-9)


def test_log_prior_matches_scipy_for_diag(data):
    params = random_params("diag")
    priors = default_gmm_priors(data, K, "diag")
    model = gmm.GaussianMixtureModel(K, D, "diag", priors)
    loc, scale = priors["means"].base_dist.loc.numpy(), priors["means"].base_dist.scale.numpy()
    ig = priors["variances"].base_dist
    from scipy.stats import dirichlet, norm

    expected = (
        dirichlet(np.ones(K)).logpdf(params.weights.numpy())
        + norm(loc, scale).logpdf(params.means.numpy()).sum()
        + invgamma(ig.concentration.numpy(), scale=ig.rate.numpy()).logpdf(params.covariances.numpy()).sum()
    )
    assert float(model.log_prior(params)) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("covariance_type", gmm.COVARIANCE_TYPES)
def test_sites_round_trip(covariance_type):
    params = random_params(covariance_type)
    back = gmm.sites_to_params(gmm.params_to_sites(params), covariance_type)
    torch.testing.assert_close(back.covariances, params.covariances)


@pytest.mark.parametrize("covariance_type", gmm.COVARIANCE_TYPES)
def test_model_samples_have_right_shapes_and_guide_median_is_init(covariance_type, data):
    model = gmm.GaussianMixtureModel(K, D, covariance_type, default_gmm_priors(data, K, covariance_type))
    assert model(n_samples=7).shape == (7, D)
    params = random_params(covariance_type)
    for make in (gmm.map_guide, gmm.mean_field_guide):
        pyro.clear_param_store()
        guide = make(model, params)
        guide(data)
        back = gmm.guide_params(guide, covariance_type)
        torch.testing.assert_close(back.means, params.means)
        torch.testing.assert_close(back.covariances, params.covariances)


def test_subsample_scales_likelihood(data):
    params = random_params("diag")
    model = gmm.GaussianMixtureModel(K, D, "diag", default_gmm_priors(data, K, "diag"))
    guide = gmm.map_guide(model, params)
    rows = torch.arange(10)
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(model, guide, data, subsample=rows)
    batch_ll = gmm.log_likelihood(data[rows], params).sum() * (N / 10)
    assert -loss == pytest.approx(float(batch_ll + model.log_prior(params)), rel=1e-12)


def test_user_prior_replaces_default(data):
    priors = default_gmm_priors(data, K, "diag")
    priors["means"] = dist.Normal(0.0, 5.0)
    model = gmm.GaussianMixtureModel(K, D, "diag", priors)
    trace = pyro.poutine.trace(model).get_trace(data)
    assert trace.nodes["means"]["value"].shape == (K, D)
    with pytest.raises(ValueError, match="prior for site 'means'"):
        priors["means"] = dist.Normal(torch.zeros(D + 1), 1.0)
        pyro.poutine.trace(gmm.GaussianMixtureModel(K, D, "diag", priors)).get_trace(data)


def test_bad_model_arguments(data):
    with pytest.raises(ValueError, match="covariance_type"):
        gmm.GaussianMixtureModel(K, D, "banana", {})
    with pytest.raises(ValueError, match="missing"):
        gmm.GaussianMixtureModel(K, D, "full", {"weights": dist.Dirichlet(torch.ones(K))})


@pytest.mark.parametrize("covariance_type", gmm.COVARIANCE_TYPES)
def test_one_feature_identity(covariance_type):
    """D = 1 has no correlations: the model drops the LKJ site and the identity still holds."""
    x = torch.randn(30, 1, generator=torch.Generator().manual_seed(2))
    cov = {"spherical": torch.ones(2), "diag": torch.ones(2, 1), "tied_diag": torch.ones(1),
           "tied": torch.ones(1, 1) * 2, "full": torch.ones(2, 1, 1) * 0.5}[covariance_type]
    params = gmm.GMMParams(torch.tensor([0.3, 0.7]), torch.tensor([[-1.0], [1.0]]), cov,
                           covariance_type)
    model = gmm.GaussianMixtureModel(2, 1, covariance_type, default_gmm_priors(x, 2, covariance_type))
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(model, gmm.map_guide(model, params), x)
    expected = gmm.log_likelihood(x, params).sum() + model.log_prior(params)
    assert -loss == pytest.approx(float(expected), rel=1e-12)


@pytest.mark.parametrize("covariance_type", gmm.COVARIANCE_TYPES)
def test_fast_observation_equals_pyro_native_distributions(covariance_type, data):
    """The observation site scored by component_log_prob equals Pyro's Normal/MVN path."""
    params = random_params(covariance_type)
    model = gmm.GaussianMixtureModel(K, D, covariance_type, default_gmm_priors(data, K, covariance_type))
    sites = gmm.params_to_sites(params)
    assignment = torch.arange(K)[:, None]  # as under parallel enumeration
    fast = model._observation(sites, assignment).log_prob(data)
    # vectorised particles give the globals a particle dim and take the Pyro-native path
    guide = gmm.map_guide(model, params)
    one = TraceEnum_ELBO(max_plate_nesting=1).loss(model, guide, data)
    vectorised = TraceEnum_ELBO(max_plate_nesting=1, num_particles=3, vectorize_particles=True)
    assert vectorised.loss(model, guide, data) == pytest.approx(one, rel=1e-10)
    assert fast.shape == (K, N)
    draws = model._observation(sites, torch.zeros(5000, dtype=torch.long)).sample()
    torch.testing.assert_close(draws.mean(0), params.means[0], atol=0.15, rtol=0)


def test_wide_full_covariances_take_the_per_component_path_to_the_same_density():
    """K D^2 above the side-by-side limit: one whitening map at a time, same log densities."""
    from scipy.stats import multivariate_normal

    from ppl_mixtures.models.gmm import _STACKED_WHITENING_MAX

    n_components, n_features = 3, 600  # 3 * 600^2 > 2^20
    assert n_components * n_features**2 > _STACKED_WHITENING_MAX
    g = torch.Generator().manual_seed(0)
    factors = torch.randn(n_components, n_features, n_features, generator=g) / n_features**0.5
    covariances = factors @ factors.transpose(-1, -2) + torch.eye(n_features)
    params = gmm.GMMParams(torch.ones(n_components) / n_components,
                           torch.randn(n_components, n_features, generator=g), covariances,
                           "full")
    x = torch.randn(50, n_features, generator=g)
    expected = np.stack([multivariate_normal(params.means[k].numpy(), covariances[k].numpy())
                         .logpdf(x.numpy()) for k in range(n_components)], -1)
    np.testing.assert_allclose(gmm.component_log_prob(x, params).numpy(), expected, rtol=1e-9)


def test_data_of_the_wrong_shape_is_named_before_any_product_fails():
    from ppl_mixtures.models import dgmm, mfa

    x = torch.randn(30, 2, dtype=torch.float64)
    models = [
        gmm.GaussianMixtureModel(2, 2, "full", default_gmm_priors(x, 2, "full")),
        mfa.MixtureOfFactorAnalyzersModel(2, 2, 1, mfa.default_mfa_priors(x, 2, 1)),
        dgmm.DeepGaussianMixtureModel((2,), (1,), 2, dgmm.default_dgmm_priors(x, (2,), (1,))),
    ]
    for model in models:
        with pytest.raises(ValueError, match=r"x has shape \(6,\), but this model expects data "
                                             r"of shape \(n_samples, 2\) \(rows of 2 values"):
            model(torch.randn(6, dtype=torch.float64))
        with pytest.raises(ValueError, match=r"x has shape \(6, 3\)"):
            model(torch.randn(6, 3, dtype=torch.float64))
        assert model(x).shape == (30, 2)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("block", [1 << 17, 50])  # one block, and many (partial last one)
def test_column_moments_match_numpy(dtype, block, monkeypatch):
    """The blocked float64 mean and variance of the priors and the small-scale check equal
    NumPy's on the same numbers, far from the origin too; a NaN makes only its column NaN;
    ``data_moments`` leaves missing entries out and gives one row a unit variance."""
    from ppl_mixtures.models import priors

    monkeypatch.setattr(priors, "_MOMENT_BLOCK", block)
    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.normal(1e4, 3.0, size=(1003, 7)), dtype=dtype)
    mean, variance = priors.column_moments(x)
    exact = x.double().numpy()
    assert mean.dtype == variance.dtype == torch.float64
    np.testing.assert_allclose(mean.numpy(), exact.mean(0), rtol=1e-14)
    np.testing.assert_allclose(variance.numpy(), exact.var(0), rtol=1e-10)
    data_mean, data_var = priors.data_moments(x)
    assert data_var.dtype == dtype
    np.testing.assert_allclose(data_var.double().numpy(), exact.var(0, ddof=1),
                               rtol=1e-12 if dtype == torch.float64 else 1e-6)
    x[5, 2] = float("nan")
    mean, variance = priors.column_moments(x)
    assert torch.isnan(mean[2]) and not torch.isnan(mean[[0, 1, 3]]).any()
    np.testing.assert_allclose(priors.data_moments(x)[1][2].double().numpy(),
                               np.nanvar(x.double().numpy()[:, 2], ddof=1), rtol=1e-6)
    assert torch.equal(priors.data_moments(x[:1, [0, 1]])[1], torch.ones(2, dtype=dtype))
