"""Tests of :mod:`ppl_mixtures.diagnostics`: ArviZ data, relabelling, assignments, model choice."""

import random
import warnings

import arviz as az
import numpy as np
import pyro
import pytest
import torch
from matplotlib.figure import Figure

from ppl_mixtures import diagnostics
from ppl_mixtures.datasets import make_gmm
from ppl_mixtures.estimators import GaussianMixture, MixtureOfFactorAnalyzers
from ppl_mixtures.models import gmm

N_COMPONENTS = 2


@pytest.fixture(scope="module")
def data():
    X, _ = make_gmm(200, N_COMPONENTS, 2, covariance_type="diag", random_state=0)
    return X


def _fit(X, **kwargs):
    torch.set_default_dtype(torch.float64)
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="num_chains=")  # chains run in sequence
        return GaussianMixture(N_COMPONENTS, covariance_type="diag", progress=False,
                               random_state=0, **kwargs).fit(X)


@pytest.fixture(scope="module")
def em_fit(data):
    return _fit(data)


@pytest.fixture(scope="module")
def svi_fit(data):
    return _fit(data, inference="svi", guide="mean_field", max_iter=150)


@pytest.fixture(scope="module")
def nuts_fit(data):
    return _fit(data, inference="nuts", max_iter=30, num_warmup=30, num_chains=2)


def _check_groups(idata, n_chains, n_draws, n_rows, n_features, log_likelihood=True):
    posterior = idata.posterior
    sizes = dict(posterior.sizes)
    assert sizes.pop("feature_bis", n_features) == n_features
    sizes.pop("factor", None)  # MFA loadings
    assert sizes == {"chain": n_chains, "draw": n_draws, "component": N_COMPONENTS,
                     "feature": n_features}
    assert posterior.means.dims == ("chain", "draw", "component", "feature")
    assert posterior.weights.dims == ("chain", "draw", "component")
    np.testing.assert_array_equal(posterior.component.values, np.arange(N_COMPONENTS))
    if log_likelihood:
        assert idata.log_likelihood.obs.dims == ("chain", "draw", "observation")
        assert idata.log_likelihood.obs.shape == (n_chains, n_draws, n_rows)
    else:
        assert "log_likelihood" not in idata.groups()
    assert idata.observed_data.obs.shape == (n_rows, n_features)
    assert idata.posterior_predictive.obs.dims == ("chain", "draw", "observation", "feature")
    assert idata.posterior_predictive.obs.shape == (n_chains, n_draws, n_rows, n_features)
    np.testing.assert_allclose(posterior.weights.sum("component"), 1.0, rtol=1e-10)


def _arviz_stats(idata, loo=True):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few draws: ArviZ warns about shapes and Pareto k
        summary = az.summary(idata)
        assert {"weights[0]", "means[1, 1]"} <= set(summary.index)
        assert np.isfinite(az.waic(idata).elpd_waic)
        if loo:
            assert np.isfinite(az.loo(idata).elpd_loo)


def test_inference_data_of_a_point_estimate_only_on_request(em_fit, data):
    """Issue: az.loo(to_inference_data(<SVI MAP fit>, X)) died inside ArviZ (IndexError);
    a point estimate now gets Laplace draws, and one draw only with posterior="point"."""
    idata = diagnostics.to_inference_data(em_fit, data, random_state=0, posterior="point")
    with pytest.warns(FutureWarning, match="point_estimate is deprecated"):
        old = diagnostics.to_inference_data(em_fit, data, random_state=0, point_estimate=True)
    np.testing.assert_array_equal(old.posterior.means.values, idata.posterior.means.values)
    with pytest.raises(ValueError, match=r"posterior='mcmc' is not one of \('auto'"):
        diagnostics.to_inference_data(em_fit, data, posterior="mcmc")
    assert idata.posterior.attrs["posterior_kind"] == "point"
    _check_groups(idata, 1, 1, *data.shape, log_likelihood=False)
    np.testing.assert_allclose(idata.posterior.means.values[0, 0], em_fit.means_)
    np.testing.assert_allclose(idata.posterior.covariances.values[0, 0], em_fit.covariances_)
    assert "sample_stats" not in idata.groups()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one draw: no spread
        assert {"weights[0]", "means[1, 1]"} <= set(az.summary(idata, kind="stats").index)


def test_inference_data_mean_field_svi(svi_fit, data):
    idata = diagnostics.to_inference_data(svi_fit, data, num_samples=60, random_state=1)
    _check_groups(idata, 1, 60, *data.shape)
    assert float(idata.posterior.means.std("draw").max()) > 0  # real draws, not a point
    _arviz_stats(idata)
    # each draw's pointwise log-likelihood is marginal at that draw's parameters
    first = idata.posterior.isel(chain=0, draw=0)
    params = gmm.GMMParams(*(torch.as_tensor(first[k].values) for k in
                             ("weights", "means", "covariances")), "diag")
    expected = gmm.log_likelihood(torch.as_tensor(data), params).numpy()
    np.testing.assert_allclose(idata.log_likelihood.obs.values[0, 0], expected, atol=1e-10)
    # seeded: the same random_state gives the same draws
    again = diagnostics.to_inference_data(svi_fit, data, num_samples=60, random_state=1)
    np.testing.assert_array_equal(again.posterior.means.values, idata.posterior.means.values)


def test_inference_data_nuts_chains(nuts_fit, data):
    idata = diagnostics.to_inference_data(nuts_fit, data, random_state=0)
    _check_groups(idata, 2, 30, *data.shape)
    samples = nuts_fit.posterior_samples_["means"].reshape(2, 30, N_COMPONENTS, 2)
    np.testing.assert_allclose(idata.posterior.means.values, samples)
    assert idata.sample_stats.lp.shape == (2, 30)
    first = {k: torch.as_tensor(v.reshape((2, 30) + v.shape[1:])[1, 4])
             for k, v in nuts_fit.posterior_samples_.items()}
    log_prior = float(nuts_fit.model_.log_prior(gmm.sites_to_params(first, "diag")))
    log_lik = float(idata.log_likelihood.obs.isel(chain=1, draw=4).sum())
    assert float(idata.sample_stats.lp[1, 4]) == pytest.approx(log_lik + log_prior, rel=1e-12)
    diverging = idata.sample_stats.diverging.values
    assert diverging.shape == (2, 30) and diverging.dtype == bool
    np.testing.assert_array_equal(diverging, nuts_fit.sampler_stats_["diverging"])
    # a Laplace approximation at the NUTS posterior mean, on request
    laplace = diagnostics.to_inference_data(nuts_fit, data, num_samples=20,
                                            posterior="laplace", random_state=0)
    assert laplace.posterior.attrs["posterior_kind"] == "laplace"
    assert "sample_stats" not in laplace.groups()
    assert idata.posterior.attrs["posterior_kind"] == "nuts"
    rates = idata.sample_stats.attrs["acceptance_rate"]
    assert len(rates) == 2 and all(0 < r <= 1 for r in rates)
    _arviz_stats(idata)


def test_inference_data_mfa_point_estimate(data):
    mfa = MixtureOfFactorAnalyzers(2, n_factors=1, progress=False, random_state=0).fit(data)
    idata = diagnostics.to_inference_data(mfa, data, random_state=0, posterior="point")
    _check_groups(idata, 1, 1, *data.shape, log_likelihood=False)
    assert idata.posterior.covariances.dims == ("chain", "draw", "component", "feature",
                                                "feature_bis")
    np.testing.assert_allclose(idata.posterior.covariances.values[0, 0], mfa.covariances_)
    # every identified global site: one factor, so its loadings too (up to a sign)
    np.testing.assert_allclose(idata.posterior.loadings.values[0, 0], mfa.loadings_)
    np.testing.assert_allclose(idata.posterior.noise_variances.values[0, 0],
                               mfa.noise_variances_)
    assert diagnostics.sample_assignments(mfa, data).tolist() == mfa.predict(data).tolist()


def _default_fits(data):
    """Default fits of the three families with a likelihood, each with its data (small)."""
    from ppl_mixtures.estimators import DeepGaussianMixture

    options = {"progress": False, "random_state": 0}
    noise = 0.1 * np.random.default_rng(0).standard_normal((len(data), 3))
    wide = data[:, [0, 1, 1]] + noise  # three features, for factor models
    return [(GaussianMixture(N_COMPONENTS, **options).fit(data), data),
            (MixtureOfFactorAnalyzers(N_COMPONENTS, **options).fit(wide), wide),
            (DeepGaussianMixture((2, 2), (2, 1), **options).fit(wide), wide)]


def test_loo_and_waic_of_every_default_point_fit(data):
    """Issue 18: az.loo(to_inference_data(GaussianMixture(3).fit(X), X)) works by default, from
    draws of the Laplace approximation at the estimate (MacKay 2003, ch. 27)."""
    for est, X in _default_fits(data):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pareto k of few draws; LaplaceWarning (DGMM)
            idata = diagnostics.to_inference_data(est, X, num_samples=40, random_state=0)
            loo, waic = az.loo(idata), az.waic(idata)
        attrs = idata.posterior.attrs
        assert attrs["posterior_kind"] == "laplace" and np.isfinite(attrs["laplace_pareto_k"])
        assert idata.log_likelihood.obs.shape == (1, 40, len(X))
        assert float(idata.posterior.means.std("draw").max()) > 0
        assert np.isfinite(loo.elpd_loo) and np.isfinite(waic.elpd_waic)
        # the draws spread around the estimate: LOO is below the fitted log-likelihood
        assert loo.elpd_loo < est.score(X) * len(X)
        if isinstance(est, GaussianMixture):  # well specified: p_loo near P = 9
            assert 5 < loo.p_loo < 15 and attrs["laplace_pareto_k"] < 0.7
            # seeded: the same random_state gives the same Laplace draws, another does not
            again = diagnostics.to_inference_data(est, X, num_samples=40, random_state=0)
            other = diagnostics.to_inference_data(est, X, num_samples=40, random_state=1)
            np.testing.assert_array_equal(again.posterior.means.values,
                                          idata.posterior.means.values)
            assert not np.array_equal(other.posterior.means.values,
                                      idata.posterior.means.values)


def test_draws_and_hints_come_from_the_registry(em_fit, svi_fit):
    from ppl_mixtures.estimators import DeepGaussianMixture

    assert not diagnostics.has_posterior_draws(em_fit)
    assert diagnostics.has_posterior_draws(svi_fit)
    assert diagnostics.posterior_draws_hint(em_fit, command_line=True) == (
        "fit with --inference nuts or --inference svi --guide mean_field")
    assert diagnostics.posterior_draws_hint(MixtureOfFactorAnalyzers()) == (
        "fit with inference='nuts'")
    assert diagnostics.posterior_draws_hint(DeepGaussianMixture()) == (
        "no DeepGaussianMixture fit has them (EM and SVI give point estimates)")


def test_a_gmvae_has_no_inference_data(data):
    """Issue: diagnose on a GMVAE died with AttributeError '_sample_tensors'."""
    from ppl_mixtures.estimators import GMVAE

    est = GMVAE(2, max_iter=1, batch_size=100, progress=False, random_state=0).fit(data)
    with pytest.raises(ValueError, match="GMVAE has no tractable likelihood.*score"):
        diagnostics.to_inference_data(est, data)
    with pytest.raises(ValueError, match="GMVAE has no tractable likelihood.*score"):
        diagnostics.laplace_approximation(est, data)


def test_quiet_arviz_silences_the_banner_only():
    banner = ("\nArviZ is undergoing a major refactor to improve flexibility and "
              "extensibility while maintaining a user-friendly interface.")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with diagnostics.quiet_arviz():
            warnings.warn(banner, FutureWarning, stacklevel=1)
            warnings.warn("another FutureWarning", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["another FutureWarning"]
    assert diagnostics.import_arviz() is az


def test_relabel_recovers_planted_permutations():
    rng = np.random.default_rng(0)
    reference = np.array([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    n_chains, n_draws = 2, 20
    planted = np.stack([[rng.permutation(3) for _ in range(n_draws)] for _ in range(n_chains)])
    clean = reference + 0.1 * rng.standard_normal((n_chains, n_draws, 3, 2))
    weights = np.broadcast_to(np.array([0.2, 0.3, 0.5]), (n_chains, n_draws, 3))
    switched_means = diagnostics.apply_relabelling(clean, planted)
    switched_weights = diagnostics.apply_relabelling(weights, planted)
    permutations = diagnostics.relabel(switched_means, reference=reference)
    assert permutations.shape == (n_chains, n_draws, 3)
    np.testing.assert_array_equal(diagnostics.apply_relabelling(switched_means, permutations),
                                  clean)
    np.testing.assert_array_equal(diagnostics.apply_relabelling(switched_weights, permutations),
                                  weights)
    # default reference: the first draw (here planted as the identity)
    planted[0, 0] = np.arange(3)
    default = diagnostics.relabel(diagnostics.apply_relabelling(clean, planted))
    np.testing.assert_array_equal(
        diagnostics.apply_relabelling(diagnostics.apply_relabelling(clean, planted), default),
        clean)


def test_sample_assignments_map_equals_predict(em_fit, svi_fit, data):
    for est in (em_fit, svi_fit):
        decoded = diagnostics.sample_assignments(est, data, temperature=0)
        assert decoded.shape == (len(data),)
        np.testing.assert_array_equal(decoded, est.predict(data))


def test_sample_assignments_frequencies_match_predict_proba():
    X, _ = make_gmm(60, 2, 1, separation=1.0, random_state=3)  # overlapping: fuzzy posteriors
    est = _fit(X, max_iter=50)
    proba = est.predict_proba(X)
    assert 0.1 < proba[:, 0].mean() < 0.9 and np.any((proba > 0.2) & (proba < 0.8))
    n_draws = 600
    draws = np.stack([diagnostics.sample_assignments(est, X, temperature=1, random_state=seed)
                      for seed in range(n_draws)])
    frequencies = np.stack([(draws == k).mean(0) for k in range(2)], axis=1)
    tolerance = 4.5 * np.sqrt(proba * (1 - proba) / n_draws) + 3.0 / n_draws
    assert np.all(np.abs(frequencies - proba) <= tolerance)
    np.testing.assert_array_equal(
        diagnostics.sample_assignments(est, X, temperature=1, random_state=7),
        diagnostics.sample_assignments(est, X, temperature=1, random_state=7))


def test_select_n_components_bic_picks_true_k():
    X, _ = make_gmm(300, 3, 2, covariance_type="diag", separation=6.0, random_state=1)
    template = GaussianMixture(covariance_type="diag", progress=False, random_state=0)
    rows = diagnostics.select_n_components(template, X, [1, 2, 3, 4, 5], criterion="bic")
    assert [row["n_components"] for row in rows] == [1, 2, 3, 4, 5]
    assert {"n_components", "criterion", "value", "log_likelihood", "n_parameters",
            "selected", "estimator"} <= set(rows[0])
    chosen = [row["n_components"] for row in rows if row["selected"]]
    assert chosen == [3]
    assert rows[2]["value"] == pytest.approx(rows[2]["estimator"].bic(X), rel=1e-12)
    assert rows[2]["n_parameters"] == 3 * 2 * 2 + 2
    for criterion in ("aic", "icl"):
        other = diagnostics.select_n_components(template, X, [2, 3], criterion=criterion)
        assert [row["n_components"] for row in other if row["selected"]] == [3]
    figure = diagnostics.plot_selection(rows)
    assert isinstance(figure, Figure)
    assert len(figure.axes[0].lines) == 2


def test_select_n_components_loo_uses_posterior_draws(data):
    template = GaussianMixture(covariance_type="diag", inference="svi", guide="mean_field",
                               max_iter=60, progress=False, random_state=0)
    rows = diagnostics.select_n_components(template, data, [2], criterion="loo",
                                           random_state=0)
    idata = diagnostics.to_inference_data(rows[0]["estimator"], data, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert rows[0]["value"] == pytest.approx(float(az.loo(idata).elpd_loo), rel=1e-12)
    assert rows[0]["selected"]
    assert isinstance(diagnostics.plot_selection(rows), Figure)


def test_errors_name_the_argument(em_fit, data):
    with pytest.raises(ValueError, match="not fitted.*fit"):
        diagnostics.to_inference_data(GaussianMixture(2), data)
    with pytest.raises(ValueError, match="not fitted.*fit"):
        diagnostics.sample_assignments(GaussianMixture(2), data)
    with pytest.raises(ValueError, match="criterion='dic'.*bic"):
        diagnostics.select_n_components(em_fit, data, [1, 2], criterion="dic")
    with pytest.raises(ValueError, match="candidates is empty"):
        diagnostics.select_n_components(em_fit, data, [])
    with pytest.raises(ValueError, match="temperature=-1.*0.*1"):
        diagnostics.sample_assignments(em_fit, data, temperature=-1)
    with pytest.raises(ValueError, match="temperature=0.5"):
        diagnostics.sample_assignments(em_fit, data, temperature=0.5)
    with pytest.raises(ValueError, match="num_samples"):
        diagnostics.to_inference_data(em_fit, data, num_samples=0)
    with pytest.raises(ValueError, match="num_samples=1 must be an integer >= 2"):
        diagnostics.to_inference_data(em_fit, data, num_samples=1)
    with pytest.raises(ValueError, match="criterion='loo' needs posterior draws"):
        diagnostics.select_n_components(em_fit, data, [2], criterion="loo")
    with pytest.raises(ValueError, match="reference"):
        diagnostics.relabel(np.zeros((4, 2, 2)), reference=np.zeros((3, 2)))


def test_sampler_statistics_places_divergences_per_chain():
    from ppl_mixtures.inference.mcmc import sampler_statistics

    class FinishedRun:  # what pyro.infer.MCMC.diagnostics() returns for NUTS, two chains
        num_chains, num_samples = 2, 5

        def diagnostics(self):
            return {"means": {}, "divergences": {"chain 0": [1, 4], "chain 1": []},
                    "acceptance rate": {"chain 0": 0.5, "chain 1": 0.9}}

    stats = sampler_statistics(FinishedRun())
    np.testing.assert_array_equal(stats["diverging"], [[0, 1, 0, 0, 1], [0, 0, 0, 0, 0]])
    np.testing.assert_allclose(stats["acceptance_rate"], [0.5, 0.9])


# ---------------------------------------------------------------------------------------------
# Global random streams
# ---------------------------------------------------------------------------------------------


def _global_states():
    return torch.get_rng_state(), np.random.get_state(), random.getstate()


def _assert_unchanged(before):
    torch_state, numpy_state, python_state = before
    assert torch.equal(torch.get_rng_state(), torch_state)
    after = np.random.get_state()
    assert after[0] == numpy_state[0] and np.array_equal(after[1], numpy_state[1])
    assert after[2:] == numpy_state[2:]
    assert random.getstate() == python_state


@pytest.mark.parametrize("random_state", [0, None, np.random.RandomState(3)])
def test_diagnostics_leave_the_global_random_streams_alone(svi_fit, em_fit, data, random_state):
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    before = _global_states()
    diagnostics.to_inference_data(svi_fit, data, num_samples=5, random_state=random_state)
    diagnostics.to_inference_data(em_fit, data, random_state=random_state, posterior="point")
    diagnostics.to_inference_data(em_fit, data, num_samples=5, random_state=random_state)
    for temperature in (0, 1):
        diagnostics.sample_assignments(svi_fit, data, temperature=temperature,
                                       random_state=random_state)
    _assert_unchanged(before)
    # and the next global draws are those of the seeds, as if nothing had run
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    diagnostics.sample_assignments(em_fit, data, temperature=1, random_state=random_state)
    assert torch.equal(torch.rand(3), expected)


def test_diagnostics_are_reproducible_whatever_the_global_state(svi_fit, data):
    torch.manual_seed(1)
    first = diagnostics.to_inference_data(svi_fit, data, num_samples=8, random_state=5)
    draws = diagnostics.sample_assignments(svi_fit, data, temperature=1, random_state=5)
    torch.manual_seed(2)
    torch.rand(10)
    second = diagnostics.to_inference_data(svi_fit, data, num_samples=8, random_state=5)
    np.testing.assert_array_equal(first.posterior.means.values, second.posterior.means.values)
    np.testing.assert_array_equal(first.posterior_predictive.obs.values,
                                  second.posterior_predictive.obs.values)
    np.testing.assert_array_equal(
        draws, diagnostics.sample_assignments(svi_fit, data, temperature=1, random_state=5))
    other = diagnostics.to_inference_data(svi_fit, data, num_samples=8, random_state=6)
    assert not np.array_equal(first.posterior.means.values, other.posterior.means.values)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_diagnostics_leave_the_cuda_streams_alone(data):
    est = _fit(data, inference="svi", guide="mean_field", max_iter=20, device="cuda")
    states = [torch.cuda.get_rng_state(i) for i in range(torch.cuda.device_count())]
    cpu = torch.get_rng_state()
    first = diagnostics.to_inference_data(est, data, num_samples=4, random_state=0)
    draws = diagnostics.sample_assignments(est, data, temperature=1, random_state=0)
    assert torch.equal(torch.get_rng_state(), cpu)
    for index, state in enumerate(states):
        assert torch.equal(torch.cuda.get_rng_state(index), state)
    again = diagnostics.to_inference_data(est, data, num_samples=4, random_state=0)
    np.testing.assert_array_equal(first.posterior.means.values, again.posterior.means.values)
    np.testing.assert_array_equal(
        draws, diagnostics.sample_assignments(est, data, temperature=1, random_state=0))
