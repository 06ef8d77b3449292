"""The mixture of factor analysers: densities against scipy, the ELBO == EM identity, monotone EM,
recovery of planted clusters (EM and SVI), the latent form's bound, and the estimator."""

import numpy as np
import pyro
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pyro.infer import TraceEnum_ELBO
from scipy.stats import dirichlet, invgamma, multivariate_normal, norm
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks

from ppl_mixtures.datasets import load_wine
from ppl_mixtures.estimators import GaussianMixture
from ppl_mixtures.estimators.factor_analyzers import MixtureOfFactorAnalyzers, n_parameters
from ppl_mixtures.inference.em import mfa as em_mfa
from ppl_mixtures.inference.em import run_em
from ppl_mixtures.inference.init import initial_responsibilities
from ppl_mixtures.inference.svi import SVITrainer
from ppl_mixtures.metrics import adjusted_rand_score
from ppl_mixtures.models import mfa

SHAPES = [(3, 5, 2), (2, 4, 3), (1, 6, 1), (4, 2, 1)]  # (K, D, r), r = D - 1 included


def random_params(n_components, n_features, n_factors, seed=0, separation=3.0):
    """float64 whatever the default dtype (module fixtures run before conftest sets it)."""
    g = torch.Generator().manual_seed(seed)
    kw = dict(generator=g, dtype=torch.float64)
    return mfa.MFAParams(
        weights=torch.softmax(torch.randn(n_components, **kw), 0),
        means=separation * torch.randn(n_components, n_features, **kw),
        loadings=torch.randn(n_components, n_features, n_factors, **kw),
        noise_variances=0.1 + 0.3 * torch.rand(n_components, n_features, **kw),
    )


def planted(n_samples, n_components, n_features, n_factors, seed, separation=3.0):
    """Data drawn from a random MFA with equal weights; returns numpy X, y and the params."""
    params = random_params(n_components, n_features, n_factors, seed, separation)
    params.weights = torch.full((n_components,), 1.0 / n_components, dtype=torch.float64)
    x, labels = mfa.sample(params, n_samples, torch.Generator().manual_seed(seed + 1))
    return x.numpy(), labels.numpy(), params


def data(n_samples=40, n_features=5, seed=1):
    return torch.randn(n_samples, n_features, generator=torch.Generator().manual_seed(seed)) * 2


def run(x, params, max_iter, tol=0.0, reg_covar=1e-6):
    return run_em(x, init_params=lambda _: params, e_step=em_mfa.e_step,
                  m_step=lambda s: em_mfa.m_step(s, reg_covar), max_iter=max_iter, tol=tol,
                  progress=False)


# ------------------------------------------------------------------------------ densities


@pytest.mark.parametrize("shape", SHAPES)
def test_component_log_prob_matches_dense_scipy(shape):
    k, d, r = shape
    params = random_params(k, d, r)
    x = data(n_features=d)
    ours = mfa.component_log_prob(x, params).numpy()
    covs = mfa.covariance_matrices(params).numpy()
    expected = np.stack(
        [multivariate_normal(params.means[g].numpy(), covs[g]).logpdf(x.numpy()) for g in range(k)],
        axis=1,
    ).reshape(len(x), k)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-10)


def test_posterior_factors_match_dense_formulas():
    params = random_params(3, 5, 2)
    x = data()
    means, covariances = mfa.posterior_factors(x, params)
    sigma_inv = torch.linalg.inv(mfa.covariance_matrices(params))
    lam = params.loadings
    gain = lam.transpose(-1, -2) @ sigma_inv  # (K, r, D)
    expected = torch.einsum("krd,nkd->nkr", gain, x[:, None, :] - params.means)
    torch.testing.assert_close(means, expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(covariances, torch.eye(2) - gain @ lam, rtol=0, atol=1e-10)


def test_float32_far_from_origin_keeps_precision():
    params = random_params(3, 6, 2)
    x = data(n_features=6)
    shift = 1e3
    far = mfa.MFAParams(params.weights, params.means + shift, params.loadings,
                        params.noise_variances)
    reference = mfa.component_log_prob(x, params)
    ours = mfa.component_log_prob((x + shift).float(), far.to(torch.float32))
    assert ours.dtype == torch.float32
    np.testing.assert_allclose(ours.double().numpy(), reference.numpy(), rtol=1e-5, atol=2e-3)


def test_sample_matches_moments():
    params = random_params(2, 3, 1)
    x, labels = mfa.sample(params, 40000, torch.Generator().manual_seed(0))
    covs = mfa.covariance_matrices(params)
    for g in range(2):
        rows = x[labels == g]
        torch.testing.assert_close(rows.mean(0), params.means[g], atol=0.05, rtol=0)
        torch.testing.assert_close(torch.cov(rows.T), covs[g], atol=0.1, rtol=0.05)


# ------------------------------------------------------------------------ the Pyro model


def make_model(x, k, r, form="collapsed"):
    return mfa.MixtureOfFactorAnalyzersModel(k, x.shape[1], r, mfa.default_mfa_priors(x, k, r),
                                             form=form)


@pytest.mark.parametrize("shape", SHAPES)
def test_enumerated_elbo_equals_em_log_likelihood_plus_log_prior(shape):
    """The spine: -TraceEnum_ELBO loss with the MAP guide == EM log-likelihood + log prior."""
    k, d, r = shape
    x = data(n_features=d)
    params = random_params(k, d, r, seed=3)
    model = make_model(x, k, r)
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(model, mfa.map_guide(model, params), x)
    expected = em_mfa.e_step(x, params).log_likelihood + model.log_prior(params)
    assert -loss == pytest.approx(float(expected), rel=1e-12, abs=1e-9)


def test_vectorised_particles_use_the_low_rank_fallback():
    x = data()
    params = random_params(3, 5, 2)
    model = make_model(x, 3, 2)
    guide = mfa.map_guide(model, params)
    plain = TraceEnum_ELBO(max_plate_nesting=1).loss(model, guide, x)
    vectorised = TraceEnum_ELBO(max_plate_nesting=1, num_particles=3,
                                vectorize_particles=True).loss(model, guide, x)
    assert vectorised == pytest.approx(plain, rel=1e-10)


def test_log_prior_matches_scipy():
    x = data()
    params = random_params(3, 5, 2)
    priors = mfa.default_mfa_priors(x, 3, 2)
    model = mfa.MixtureOfFactorAnalyzersModel(3, 5, 2, priors)
    mean_prior, loading_prior = priors["means"].base_dist, priors["loadings"].base_dist
    ig = priors["noise_variances"].base_dist
    expected = (
        dirichlet(np.ones(3)).logpdf(params.weights.numpy())
        + norm(mean_prior.loc.numpy(), mean_prior.scale.numpy()).logpdf(params.means.numpy()).sum()
        + norm(0.0, loading_prior.scale.numpy()).logpdf(params.loadings.numpy()).sum()
        + invgamma(ig.concentration.numpy(), scale=ig.rate.numpy())
        .logpdf(params.noise_variances.numpy()).sum()
    )
    assert float(model.log_prior(params)) == pytest.approx(expected, rel=1e-10)


def test_subsample_scales_likelihood():
    x = data()
    params = random_params(3, 5, 2)
    model = make_model(x, 3, 2)
    rows = torch.arange(10)
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(model, mfa.map_guide(model, params), x,
                                                    subsample=rows)
    batch_ll = mfa.log_likelihood(x[rows], params).sum() * (len(x) / 10)
    assert -loss == pytest.approx(float(batch_ll + model.log_prior(params)), rel=1e-12)


@pytest.mark.parametrize("form", mfa.FORMS)
def test_prior_predictive_shapes_and_site_names(form):
    x = data()
    model = make_model(x, 3, 2, form)
    trace = pyro.poutine.trace(model).get_trace(n_samples=7)
    assert trace.nodes["obs"]["value"].shape == (7, 5)
    assert trace.nodes["loadings"]["value"].shape == (3, 5, 2)
    assert trace.nodes["noise_variances"]["value"].shape == (3, 5)
    assert ("z" in trace.nodes) == (form == "latent")


def test_map_guide_starts_at_init_and_leaves_it_untouched():
    x = data()
    params = random_params(3, 5, 2)
    before = {k: v.clone() for k, v in params.tensors().items()}
    model = make_model(x, 3, 2)
    guide = mfa.map_guide(model, params)
    guide(x)
    torch.testing.assert_close(mfa.guide_params(guide).loadings, params.loadings)
    SVITrainer(model, guide, lr=0.1, max_steps=3, progress=False, seed=0).fit(x)
    for name, value in params.tensors().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)
    assert not torch.equal(mfa.guide_params(guide).means, params.means)


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="form='banana'"):
        mfa.MixtureOfFactorAnalyzersModel(2, 3, 1, {}, form="banana")
    with pytest.raises(ValueError, match="missing"):
        mfa.MixtureOfFactorAnalyzersModel(2, 3, 1, {"weights": None})
    with pytest.raises(ValueError, match="form 'latent'"):
        mfa.LatentFactorGuide(make_model(data(), 2, 1), random_params(2, 5, 1))


def test_user_prior_replaces_default():
    x = data()
    priors = mfa.default_mfa_priors(x, 3, 2)
    priors["loadings"] = pyro.distributions.Normal(0.0, 0.5)
    model = mfa.MixtureOfFactorAnalyzersModel(3, 5, 2, priors)
    trace = pyro.poutine.trace(model).get_trace(x)
    assert trace.nodes["loadings"]["value"].shape == (3, 5, 2)


# ------------------------------------------------------------------------- the latent form


@pytest.fixture(scope="module")
def tiny():
    """Two well separated factor analysers, D = 3, r = 1, N = 40."""
    g = torch.Generator().manual_seed(0)
    params = mfa.MFAParams(
        torch.tensor([0.5, 0.5], dtype=torch.float64),
        torch.tensor([[-4.0, 0.0, 0.0], [4.0, 0.0, 0.0]], dtype=torch.float64),
        torch.randn(2, 3, 1, generator=g, dtype=torch.float64),
        0.2 + 0.1 * torch.rand(2, 3, generator=g, dtype=torch.float64),
    )
    x, _ = mfa.sample(params, 40, g)
    return x, params


def collapsed_log_joint(model, x, params):
    return float(mfa.log_likelihood(x, params).sum() + model.log_prior(params))


def test_latent_elbo_is_exact_at_the_exact_posterior(tiny):
    """With q(z_n) = p(z_n | x_n, g_n) and certain assignments the latent ELBO is log p(x, theta)."""
    x, params = tiny
    assert float(mfa.log_joint(x, params).softmax(-1).max(-1).values.min()) > 1 - 1e-12
    latent = make_model(x, 2, 1, "latent")
    guide = mfa.LatentFactorGuide(latent, params, x)
    elbo = -TraceEnum_ELBO(max_plate_nesting=1, num_particles=5).loss(latent, guide, x)
    assert elbo == pytest.approx(collapsed_log_joint(latent, x, params), abs=1e-8)


def test_latent_elbo_is_a_bound_that_training_closes(tiny):
    x, params = tiny
    latent = make_model(x, 2, 1, "latent")
    guide = mfa.LatentFactorGuide(latent, params)  # q(z_n) starts at the prior
    estimate = TraceEnum_ELBO(max_plate_nesting=1, num_particles=100)
    with torch.no_grad():
        gap_before = collapsed_log_joint(latent, x, params) + estimate.loss(latent, guide, x)
    SVITrainer(latent, guide, lr=0.05, max_steps=600, tol=0, progress=False, seed=0).fit(x)
    fitted = mfa.guide_params(guide)
    with torch.no_grad():
        gap_after = collapsed_log_joint(latent, x, fitted) + estimate.loss(latent, guide, x)
    # measured: about 830 nats before, 3.6 after (N = 40)
    assert gap_before > 100.0
    assert 0.0 < gap_after < 0.2 * len(x)


# ------------------------------------------------------------------------------------ EM


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n_components=st.integers(1, 4),
    n_features=st.integers(2, 6),
    data_factors=st.integers(1, 3),
    factor_fraction=st.floats(0.0, 1.0),
)
def test_em_log_likelihood_never_decreases(seed, n_components, n_features, data_factors,
                                           factor_fraction):
    n_factors = 1 + int(factor_fraction * (n_features - 2))  # 1 <= r < D
    g = torch.Generator().manual_seed(seed)
    n = 15 * n_components * n_features + 10
    x = torch.randn(n, data_factors, generator=g) @ torch.randn(data_factors, n_features,
                                                                generator=g)
    x = x + 0.3 * torch.randn(n, n_features, generator=g)
    x[: n // 3] += 3 * torch.randn(n_features, generator=g)
    resp = torch.softmax(3 * torch.randn(n, n_components, generator=g), 1)
    params = em_mfa.params_from_responsibilities(x, resp, n_factors)
    result = run(x, params, max_iter=25)
    steps = np.diff(result.history)
    assert steps.min() >= -1e-10 * max(1.0, abs(result.history[-1]))
    assert result.decreases == []


def test_stats_add_over_batches():
    x = torch.as_tensor(planted(500, 3, 6, 2, seed=4)[0])
    params = random_params(3, 6, 2, seed=4)
    whole = em_mfa.e_step(x, params)
    parts = em_mfa.e_step(x[:200], params) + em_mfa.e_step(x[200:], params)
    a, b = em_mfa.m_step(whole), em_mfa.m_step(parts)
    torch.testing.assert_close(a.loadings, b.loadings)
    torch.testing.assert_close(a.noise_variances, b.noise_variances)
    torch.testing.assert_close(parts.log_likelihood, whole.log_likelihood)


def test_m_step_floors_noise_and_survives_an_empty_component():
    x = torch.as_tensor(planted(300, 2, 5, 1, seed=5)[0])
    resp = torch.zeros(300, 3)
    resp[:, 0], resp[:5, 1], resp[:5, 0] = 1.0, 1.0, 0.0  # component 2 empty, 1 has 5 points
    params = em_mfa.params_from_responsibilities(x, resp, 3, reg_covar=1e-3)
    new = em_mfa.m_step(em_mfa.e_step(x, params), reg_covar=1e-3)
    assert bool((new.noise_variances >= 1e-3).all())
    for tensor in new.tensors().values():
        assert bool(torch.isfinite(tensor).all())


def test_float32_em_matches_float64():
    X, _, _ = planted(800, 3, 8, 2, seed=6)
    x = torch.as_tensor(X)
    resp = initial_responsibilities(x, 3, "kmeans", torch.Generator().manual_seed(0))
    params = em_mfa.params_from_responsibilities(x, resp, 2)
    r64 = run(x, params, max_iter=20)
    r32 = run(x.float(), params.to(torch.float32), max_iter=20)
    assert r32.params.loadings.dtype == torch.float32
    assert abs(r32.log_likelihood - r64.log_likelihood) < 1e-4


# ------------------------------------------------------------------------------ recovery


@pytest.fixture(scope="module")
def planted_data():
    X, y, _ = planted(900, 3, 10, 2, seed=0)
    return X, y


@pytest.mark.parametrize("inference", ["em", "svi"])
def test_planted_clusters_are_recovered(planted_data, inference):
    X, y = planted_data
    est = MixtureOfFactorAnalyzers(3, 2, inference=inference, random_state=0,
                                   progress=False).fit(X)
    ari = adjusted_rand_score(y, est.predict(X))
    print(f"planted MFA (N=900, K=3, D=10, r=2) {inference}: ARI = {ari:.4f}")
    assert ari > 0.95  # measured 1.0 for seeds 0-4, EM and SVI


def test_svi_reaches_the_em_log_likelihood(planted_data):
    X, _ = planted_data
    em = MixtureOfFactorAnalyzers(3, 2, random_state=0, progress=False).fit(X)
    svi = MixtureOfFactorAnalyzers(3, 2, inference="svi", batch_size=300, max_iter=400,
                                   random_state=0, progress=False).fit(X)
    assert abs(svi.score(X) - em.score(X)) < 0.02
    assert len(svi.history_) == svi.n_iter_


@pytest.mark.parametrize(("inference", "n_init"), [("em", 5), ("svi", 1)])
def test_wine_clusters(inference, n_init):
    X, y = load_wine()
    est = MixtureOfFactorAnalyzers(3, 2, inference=inference, n_init=n_init, random_state=0,
                                   progress=False).fit(X)
    ari = adjusted_rand_score(y, est.predict(X))
    print(f"wine (standardised, K=3, r=2, {inference}, n_init={n_init}): ARI = {ari:.4f}")
    # measured over random_state 0-4: EM 0.86-0.98 (n_init 1 or 5), SVI 0.86-1.0
    assert ari > 0.8


def test_one_component_with_d_minus_1_factors_nears_the_full_gaussian():
    X, _, _ = planted(600, 1, 4, 3, seed=7)
    est = MixtureOfFactorAnalyzers(1, 3, tol=1e-8, max_iter=2000, random_state=0,
                                   progress=False).fit(X)
    full = GaussianMixture(1, covariance_type="full", progress=False).fit(X)
    assert est.score(X) <= full.score(X) + 1e-9  # the full covariance is the unconstrained MLE
    assert est.score(X) > full.score(X) - 0.01
    assert est.history_ == sorted(est.history_)


# ----------------------------------------------------------------------------- estimator


@pytest.fixture(scope="module")
def fitted(planted_data):
    X, _ = planted_data
    return MixtureOfFactorAnalyzers(3, 2, random_state=0, progress=False).fit(X)


def test_fitted_attributes_transform_and_sample(fitted, planted_data):
    X, _ = planted_data
    est = fitted
    assert est.weights_.shape == (3,) and est.means_.shape == (3, 10)
    assert est.loadings_.shape == (3, 10, 2) and est.noise_variances_.shape == (3, 10)
    assert est.covariances_.shape == (3, 10, 10) and est.converged_
    np.testing.assert_allclose(
        est.covariances_,
        est.loadings_ @ est.loadings_.transpose(0, 2, 1) + np.stack(
            [np.diag(v) for v in est.noise_variances_]),
    )
    scores = est.transform(X)
    assert scores.shape == (900, 2) and np.all(np.isfinite(scores))
    # scores of a component's own points are roughly standard normal
    labels = est.predict(X)
    assert np.abs(scores[labels == 0].std(0) - 1).max() < 0.2
    draws, draw_labels = est.sample(300)
    assert draws.shape == (300, 10) and draw_labels.shape == (300,)


def test_bic_uses_the_mfa_parameter_count(fitted, planted_data):
    X, _ = planted_data
    k, d, r = 3, 10, 2
    count = (k - 1) + k * d + k * (d * r - r * (r - 1) // 2) + k * d
    assert n_parameters(k, d, r) == count == 2 + 30 + 57 + 30
    total = fitted.score(X) * len(X)
    assert fitted.bic(X) == pytest.approx(-2 * total + count * np.log(len(X)))
    assert fitted.aic(X) == pytest.approx(-2 * total + 2 * count)


def test_elbo_loss_of_em_estimate_is_minus_log_joint(fitted, planted_data):
    X, _ = planted_data
    log_prior = float(fitted.model_.log_prior(fitted.params_))
    assert -fitted.elbo_loss(X) == pytest.approx(fitted.score(X) * len(X) + log_prior,
                                                 rel=1e-10)


def test_save_load_round_trip(fitted, planted_data, tmp_path):
    X, _ = planted_data
    path = tmp_path / "mfa.pt"
    fitted.save(path)
    back = MixtureOfFactorAnalyzers.load(path, device="cpu")
    np.testing.assert_allclose(back.predict_proba(X), fitted.predict_proba(X))
    np.testing.assert_allclose(back.transform(X), fitted.transform(X))
    assert back.score(X) == pytest.approx(fitted.score(X))
    assert back.get_params() == {**fitted.get_params(), "device": "cpu"}


def test_get_set_params_clone():
    est = MixtureOfFactorAnalyzers(4, 2, inference="svi")
    assert est.get_params()["n_factors"] == 2
    est.set_params(n_components=2)
    copy = clone(est)
    assert copy.n_components == 2 and copy.inference == "svi" and copy is not est


@pytest.mark.parametrize("method", ["predict", "predict_proba", "score", "transform", "bic"])
def test_not_fitted(method, planted_data):
    with pytest.raises(NotFittedError, match="call fit"):
        getattr(MixtureOfFactorAnalyzers(2), method)(planted_data[0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_factors": 0}, "n_factors=0"),
        ({"n_factors": 4}, "n_factors=4 must be < n_features=4"),
        ({"n_factors": 7}, "n_factors=7 must be < n_features=4"),
        ({"inference": "magic"}, "inference='magic'"),
        ({"n_components": 0}, "n_components=0"),
        ({"reg_covar": -1.0}, "reg_covar=-1.0"),
        ({"init_params": "nope"}, "init_params='nope'"),
        ({"lr": 0}, "lr=0"),
    ],
)
def test_bad_arguments(kwargs, match):
    X = np.random.default_rng(0).normal(size=(30, 4))
    with pytest.raises(ValueError, match=match):
        MixtureOfFactorAnalyzers(**{"n_components": 2, "progress": False, **kwargs}).fit(X)


def test_random_state_makes_fits_repeatable(planted_data):
    X, _ = planted_data
    a = MixtureOfFactorAnalyzers(3, 2, init_params="random", max_iter=10, random_state=7,
                                 progress=False).fit(X)
    b = MixtureOfFactorAnalyzers(3, 2, init_params="random", max_iter=10, random_state=7,
                                 progress=False).fit(X)
    np.testing.assert_array_equal(a.loadings_, b.loadings_)


@parametrize_with_checks([MixtureOfFactorAnalyzers(progress=False, random_state=0)])
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)


# ----------------------------------------------------------------------------------- NUTS


@pytest.fixture(scope="module")
def nuts_mfa():
    X, y, _ = planted(80, 2, 3, 1, seed=4, separation=4.0)
    est = MixtureOfFactorAnalyzers(2, 1, inference="nuts", max_iter=15, num_warmup=15,
                                   num_chains=2, random_state=0, progress=False,
                                   dtype="float64").fit(X)
    return est, X, y


def test_nuts_recovers_clusters_and_reports_its_chains(nuts_mfa):
    est, X, y = nuts_mfa
    assert adjusted_rand_score(y, est.predict(X)) == 1.0
    assert est.posterior_samples_["loadings"].shape == (30, 2, 3, 1)
    assert set(est.r_hat_) == {*mfa.MFA_GLOBAL_SITES, "covariances"}
    assert est.r_hat_["covariances"].shape == (2, 3, 3)
    assert est.sampler_stats_["diverging"].shape == (2, 15)
    assert len(est.history_) == 30 and est.n_iter_ == 15


def test_nuts_point_estimate_is_the_densest_draw(nuts_mfa):
    est, X, _ = nuts_mfa
    x = torch.as_tensor(X)
    draws = [mfa.sites_to_params({k: torch.as_tensor(v[i]) for k, v in
                                  est.posterior_samples_.items()}) for i in range(30)]
    density = [float(mfa.log_likelihood(x, d).sum() + est.model_.log_prior(d)) for d in draws]
    best = draws[int(np.argmax(density))]
    torch.testing.assert_close(est.params_.loadings, best.loadings)
    assert est.score(X) == pytest.approx(float(mfa.log_likelihood(x, best).mean()))


def test_nuts_inference_data_for_arviz(nuts_mfa):
    import arviz as az

    from ppl_mixtures import diagnostics

    est, X, _ = nuts_mfa
    idata = diagnostics.to_inference_data(est, X, random_state=0)
    assert idata.posterior.covariances.shape == (2, 15, 2, 3, 3)
    draw = mfa.sites_to_params({k: torch.as_tensor(v[15 + 7]) for k, v in
                                est.posterior_samples_.items()})  # chain 1, draw 7
    by_hand = torch.logsumexp(mfa.log_joint(torch.as_tensor(X), draw), -1).numpy()
    np.testing.assert_allclose(idata.log_likelihood.obs.values[1, 7], by_hand, rtol=1e-10)
    np.testing.assert_allclose(idata.posterior.covariances.values[1, 7],
                               mfa.covariance_matrices(draw).numpy(), rtol=1e-10)
    assert idata.sample_stats.diverging.shape == (2, 15)
    assert np.isfinite(az.summary(idata, var_names=["means", "covariances"])["r_hat"]).all()
    assert np.isfinite(az.loo(idata).elpd_loo) and np.isfinite(az.waic(idata).elpd_waic)


def test_svi_starts_where_em_starts():
    """Issue 18 item 10: SVI's MAP guide starts at EM's initial values (the same
    ``init_params`` draw from the same ``random_state``). One Adam step of lr 1e-6 moves no
    value by more than 1e-6, so its parameters are EM's ``max_iter=0`` ones. (On digits the
    gap after 500 SVI steps comes from the optimiser: Adam's first steps move every mean
    coordinate by about ``lr`` while noise variances sit at the 1e-6 floor.)"""
    X = load_wine()[0][:, :6]
    X = (X - X.mean(0)) / X.std(0)
    em = MixtureOfFactorAnalyzers(3, n_factors=2, max_iter=0, random_state=4,
                                  progress=False).fit(X)
    with pytest.warns(Warning):  # one step: not converged
        svi = MixtureOfFactorAnalyzers(3, n_factors=2, inference="svi", max_iter=1, lr=1e-6,
                                       random_state=4, progress=False).fit(X)
    for name in ("weights", "means", "loadings", "noise_variances"):
        np.testing.assert_allclose(getattr(svi.params_, name).numpy(),
                                   getattr(em.params_, name).numpy(), atol=1e-4, rtol=1e-4)
    assert abs(svi.score(X) - em.score(X)) < 1e-3
