"""The deep Gaussian mixture: path moments, the identity, exact EM, estimator, simulator."""

import math

import numpy as np
import pytest
import torch
from dgmm_helpers import random_params
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyro.infer import TraceEnum_ELBO
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from sklearn.base import clone
from sklearn.metrics import adjusted_rand_score

from ppl_mixtures.datasets import make_dgmm
from ppl_mixtures.estimators.deep_gaussian import DeepGaussianMixture, n_parameters
from ppl_mixtures.inference.em import dgmm as em_dgmm
from ppl_mixtures.inference.em import run_em
from ppl_mixtures.models import dgmm

# ------------------------------------------------------------------------------ path moments


def test_path_ordering_round_trip():
    sizes = (3, 3, 2)
    table = dgmm.path_layer_labels(sizes)
    assert table.shape == (18, 3)
    assert table[1].tolist() == [0, 0, 1] and table[2].tolist() == [0, 1, 0]
    assert table[-1].tolist() == [2, 2, 1]
    assert torch.equal(dgmm.path_index(table, sizes), torch.arange(18))
    assert np.array_equal(table.numpy() @ np.array([6, 2, 1]), np.arange(18))


def test_joint_moments_contain_path_moments():
    params = random_params((2, 3, 2), (4, 3, 1), 6, seed=1)
    _, means, covariances = dgmm.path_moments(params)
    joint_means, joint_cov = dgmm.joint_moments(params)
    assert joint_means.shape == (12, 6 + 8) and joint_cov.shape == (12, 14, 14)
    torch.testing.assert_close(joint_means[:, :6], means)
    torch.testing.assert_close(joint_cov[:, :6, :6], covariances)


def test_path_moments_match_monte_carlo():
    """Eqs. (5)-(6) against draws of the generative process, path by path (3 layers)."""
    params = random_params((2, 2, 2), (4, 3, 2), 5, seed=2)
    _, means, covariances = dgmm.path_moments(params)
    n_draws = 20000
    generator = torch.Generator().manual_seed(3)
    for path in range(params.n_paths):
        draws = dgmm._draw_paths(params, torch.full((n_draws,), path), generator)
        mean_hat, cov_hat = draws.mean(0), torch.cov(draws.T)
        sigma = covariances[path]
        variances = sigma.diagonal()
        mean_se = (variances / n_draws).sqrt()
        cov_se = ((variances[:, None] * variances[None, :] + sigma.square()) / n_draws).sqrt()
        assert ((mean_hat - means[path]).abs() < 5 * mean_se).all()
        assert ((cov_hat - sigma).abs() < 5 * cov_se).all()
        # the deepgmm 0.2.1 slip (an extra Lambda1 Lambda2 Lambda2^T Lambda1^T) is detected
        labels = dgmm.layer_labels(torch.tensor(path), params.n_components)
        lam1 = params.loadings[0][labels[0]]
        lam2 = params.loadings[1][labels[1]]
        slip = sigma + lam1 @ lam2 @ lam2.T @ lam1.T
        assert ((cov_hat - slip).abs() > 5 * cov_se).any()


# ---------------------------------------------------------------------------------- identity


@pytest.mark.parametrize("sizes, factors", [((3, 2), (4, 2)), ((2, 3, 2), (5, 3, 1))])
def test_identity_elbo_em_gmm(sizes, factors):
    n_features = 7
    params = random_params(sizes, factors, n_features, seed=4, eta_scale=2.0)
    x, _ = dgmm.sample(params, 60, torch.Generator().manual_seed(5))
    priors = dgmm.default_dgmm_priors(x, sizes, factors)
    model = dgmm.DeepGaussianMixtureModel(sizes, factors, n_features, priors)
    guide = dgmm.map_guide(model, params)
    elbo = -TraceEnum_ELBO(max_plate_nesting=1).loss(model, guide, x)
    stats = em_dgmm.e_step(x, params)
    em_value = float(stats.log_likelihood + model.log_prior(params))
    assert abs(elbo - em_value) < 1e-9 * abs(em_value)
    log_weights, means, covariances = (t.numpy() for t in dgmm.path_moments(params))
    dense = logsumexp(np.stack([
        lw + multivariate_normal(m, c).logpdf(x.numpy())
        for lw, m, c in zip(log_weights, means, covariances, strict=True)
    ], axis=1), axis=1).sum()
    assert abs(float(stats.log_likelihood) - dense) < 1e-9 * abs(dense)


def test_latent_form_single_path_is_exact_and_bounds_collapsed():
    sizes, factors, n_features = (1, 1), (3, 1), 5
    params = random_params(sizes, factors, n_features, seed=6)
    x, _ = dgmm.sample(params, 20, torch.Generator().manual_seed(7))
    priors = dgmm.default_dgmm_priors(x, sizes, factors)
    model = dgmm.DeepGaussianMixtureModel(sizes, factors, n_features, priors, form="latent")
    exact = float(dgmm.log_likelihood(x, params).sum() + model.log_prior(params))
    guide = dgmm.LatentScoreGuide(model, params, x)  # q at the exact posterior
    for _ in range(3):  # every single draw gives the exact value
        elbo = -TraceEnum_ELBO(max_plate_nesting=1).loss(model, guide, x)
        assert abs(elbo - exact) < 1e-8 * abs(exact)


def test_latent_form_lower_bound_with_several_paths():
    sizes, factors, n_features = (2, 2), (3, 1), 5
    params = random_params(sizes, factors, n_features, seed=8)
    x, _ = dgmm.sample(params, 30, torch.Generator().manual_seed(9))
    priors = dgmm.default_dgmm_priors(x, sizes, factors)
    model = dgmm.DeepGaussianMixtureModel(sizes, factors, n_features, priors, form="latent")
    collapsed = float(dgmm.log_likelihood(x, params).sum() + model.log_prior(params))
    guide = dgmm.LatentScoreGuide(model, params, x)
    elbo = -TraceEnum_ELBO(max_plate_nesting=1, num_particles=20,
                           vectorize_particles=False).loss(model, guide, x)
    assert elbo < collapsed


def test_prior_predictive_and_obs_sampling_shapes():
    sizes, factors = (2, 2), (3, 1)
    params = random_params(sizes, factors, 5, seed=10)
    x, paths = dgmm.sample(params, 9)
    assert x.shape == (9, 5) and paths.shape == (9,)
    priors = dgmm.default_dgmm_priors(x, sizes, factors)
    for form in dgmm.FORMS:
        model = dgmm.DeepGaussianMixtureModel(sizes, factors, 5, priors, form=form)
        assert model(n_samples=4).shape == (4, 5)


# ------------------------------------------------------------------------------------------ EM


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), n_samples=st.integers(20, 60),
       three_layers=st.booleans())
def test_em_never_decreases_the_log_likelihood(seed, n_samples, three_layers):
    sizes, factors = ((2, 2, 2), (3, 2, 1)) if three_layers else ((2, 2), (3, 1))
    truth = random_params(sizes, factors, 4, seed=seed, eta_scale=2.0)
    x, _ = dgmm.sample(truth, n_samples, torch.Generator().manual_seed(seed))
    params = em_dgmm.initial_params(x, sizes, factors, "random",
                                    torch.Generator().manual_seed(seed))
    history = []
    for _ in range(15):
        stats = em_dgmm.e_step(x, params)
        history.append(float(stats.log_likelihood))
        params = em_dgmm.m_step(stats)
    steps = np.diff(history)
    assert (steps > -1e-8 * np.abs(history[1:]).clip(1.0)).all(), history


def _separated_problem(n_samples=600, seed=0):
    sizes, factors, n_features = (3, 2), (4, 2), 8
    params = random_params(sizes, factors, n_features, seed=seed)
    # layer 1 better separated than layer 2, as the layer-wise start assumes
    params.eta = [8.0 * params.eta[0], 3.0 * params.eta[1]]
    params.noise_variances = [0.1 * v for v in params.noise_variances]
    x, paths = dgmm.sample(params, n_samples, torch.Generator().manual_seed(seed + 1))
    return x, paths, params, sizes, factors


def test_em_recovers_well_separated_paths():
    x, paths, truth, sizes, factors = _separated_problem()
    oracle = adjusted_rand_score(paths, dgmm.log_joint(x, truth).argmax(-1))
    assert oracle > 0.99
    generator = torch.Generator().manual_seed(0)
    result = run_em(x, init_params=lambda _: em_dgmm.initial_params(
                        x, sizes, factors, "kmeans", generator),
                    e_step=em_dgmm.e_step, m_step=em_dgmm.m_step, n_init=3, max_iter=150,
                    tol=1e-6, progress=False)
    assert not result.decreases
    ari = adjusted_rand_score(paths, dgmm.log_joint(x, result.params).argmax(-1))
    assert ari > 0.9


def test_tempered_e_step_flattens_responsibilities_and_keeps_the_likelihood():
    x, _, _, sizes, factors = _separated_problem(n_samples=200)
    params = random_params(sizes, factors, 8, seed=3)
    cold, ll_cold = em_dgmm.responsibilities(x, params)
    hot, ll_hot = em_dgmm.responsibilities(x, params, temperature=4.0)
    torch.testing.assert_close(ll_cold, ll_hot)
    torch.testing.assert_close(hot.sum(-1), torch.ones(200, dtype=torch.float64))

    def entropy(r):
        return -(r * r.clamp_min(1e-300).log()).sum(-1)

    assert torch.all(entropy(hot) >= entropy(cold) - 1e-12)
    torch.testing.assert_close(hot, torch.softmax(dgmm.log_joint(x, params) / 4.0, -1))
    # T = 1 is the plain E-step
    plain, tempered = em_dgmm.e_step(x, params), em_dgmm.e_step(x, params, temperature=1.0)
    torch.testing.assert_close(plain.second_moment, tempered.second_moment)


def test_anneal_runs_the_schedule_and_then_em_is_monotone():
    x, _, _, sizes, factors = _separated_problem(n_samples=300)
    start = em_dgmm.initial_params(x, sizes, factors, "kmeans", torch.Generator().manual_seed(1))
    same, history = em_dgmm.anneal(x, start, 1.0, 10)
    assert same is start and history == []
    params, history = em_dgmm.anneal(x, start, 5.0, 12)
    assert len(history) == 12 and all(math.isfinite(v) for v in history)
    result = run_em(x, init_params=lambda _: params, e_step=em_dgmm.e_step,
                    m_step=em_dgmm.m_step, n_init=1, max_iter=40, tol=0.0, progress=False)
    assert not result.decreases
    est = DeepGaussianMixture(sizes, factors, anneal_start=5.0, anneal_iter=12, max_iter=40,
                              random_state=0, progress=False).fit(x.numpy())
    assert np.all(np.diff(est.history_) > -1e-8) and np.isfinite(est.score(x.numpy()))


@pytest.mark.parametrize("k", [4, 9])  # every matching tried (k <= 7), alternating search
def test_procrustes_match_recovers_a_planted_rotation_and_order(k):
    generator = torch.Generator().manual_seed(k)
    reference = torch.randn(k, 3, generator=generator, dtype=torch.float64) * 3
    rotation = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))[0]
    order = torch.randperm(k, generator=generator)
    points = reference[order] @ rotation.T  # points @ rotation == reference[order]
    found = em_dgmm._procrustes_match(reference, points, generator)
    torch.testing.assert_close(found, rotation)


def test_realign_scores_keeps_the_first_layer_and_restarts_the_others():
    X, _, paths, _ = make_dgmm(600, 9, (2, 2), (4, 2), random_state=1, standardize=True)
    x = torch.as_tensor(X)
    sizes, factors = (2, 2), (4, 2)
    start = em_dgmm.initial_params(x, sizes, factors, "kmeans", torch.Generator().manual_seed(0))
    realigned = em_dgmm.realign_scores(x, start, torch.Generator().manual_seed(0))
    assert realigned.n_components == sizes and realigned.n_factors == factors
    torch.testing.assert_close(realigned.noise_variances[0], start.noise_variances[0])
    torch.testing.assert_close(realigned.weights[0], start.weights[0])
    # each first-layer component is reparametrised, not refitted: same rank-r column space
    for g in range(2):
        joint = torch.cat([start.loadings[0][g], realigned.loadings[0][g]], -1)
        assert torch.linalg.matrix_rank(joint) == factors[0]
    assert torch.isfinite(dgmm.log_likelihood(x, realigned)).all()
    again = em_dgmm.realign_scores(x, start, torch.Generator().manual_seed(0))
    torch.testing.assert_close(again.eta[1], realigned.eta[1])
    est = DeepGaussianMixture(sizes, factors, realign=True, max_iter=20, random_state=0,
                              progress=False).fit(X)
    assert np.all(np.diff(est.history_) > -1e-8) and np.isfinite(est.score(X))


# ----------------------------------------------------------------------------------- estimator


def test_estimator_em_api():
    x, paths, _, sizes, factors = _separated_problem(n_samples=300)
    X = x.numpy()
    est = DeepGaussianMixture(sizes, factors, n_init=2, max_iter=60, random_state=0,
                              start="layerwise", progress=False).fit(X)  # the API, not the start
    assert est.predict_proba(X).shape == (300, 6)
    layers = est.predict_layers(X)
    assert layers.shape == (300, 2)
    assert np.array_equal(layers @ np.array([2, 1]), est.predict(X))
    assert np.all(np.diff(est.history_) > -1e-8)
    total = est.score(X) * 300
    stats = em_dgmm.e_step(x, est.params_)
    assert abs(total - float(stats.log_likelihood)) < 1e-9 * abs(total)
    k = n_parameters(8, sizes, factors)
    assert est.bic(X) == pytest.approx(-2 * total + k * math.log(300))
    elbo = -est.elbo_loss(X)
    assert elbo == pytest.approx(total + float(est.model_.log_prior(est.params_)), rel=1e-9)
    assert est.weights_.shape == (6,) and est.covariances_.shape == (6, 8, 8)
    assert clone(est).get_params()["n_factors"] == factors
    draws, labels = est.sample(5)
    assert draws.shape == (5, 8) and labels.shape == (5,)


def test_estimator_save_load(tmp_path):
    x, _, _, sizes, factors = _separated_problem(n_samples=200)
    X = x.numpy()
    est = DeepGaussianMixture(sizes, factors, max_iter=5, random_state=0, progress=False).fit(X)
    est.save(tmp_path / "dgmm.pt")
    loaded = DeepGaussianMixture.load(tmp_path / "dgmm.pt", device="cpu")
    np.testing.assert_allclose(loaded.score_samples(X), est.score_samples(X))


@pytest.mark.parametrize("form", ["collapsed", "latent"])
def test_estimator_svi_runs(form):
    x, _, _, sizes, factors = _separated_problem(n_samples=100)
    X = x.numpy()
    est = DeepGaussianMixture(sizes, factors, inference="svi", form=form, max_iter=20,
                              random_state=0, progress=False).fit(X)
    assert len(est.history_) == 20 and np.isfinite(est.score(X))


@pytest.mark.parametrize("inference", ["em", "svi"])
def test_identifiability_keeps_the_fit_and_applies_the_constraint(inference):
    x, _, _, sizes, factors = _separated_problem(n_samples=200)
    X = x.numpy()
    common = dict(inference=inference, max_iter=15, random_state=0, progress=False)
    plain = DeepGaussianMixture(sizes, factors, **common).fit(X)
    canonical = DeepGaussianMixture(sizes, factors, identifiability="lower_triangular",
                                    **common).fit(X)
    np.testing.assert_allclose(canonical.score_samples(X), plain.score_samples(X), rtol=1e-9)
    np.testing.assert_array_equal(canonical.predict(X), plain.predict(X))
    top = canonical.loadings_[-1]  # (G_h, r_{h-1}, r_h): lower triangular, positive diagonal
    r = top.shape[-1]
    assert np.allclose(np.triu(top[:, :r, :r], 1), 0.0, atol=1e-10)
    assert np.all(np.diagonal(top[:, :r, :r], axis1=-2, axis2=-1) > 0)
    elbo = -canonical.elbo_loss(X)
    total = canonical.score(X) * 200
    assert elbo == pytest.approx(total + float(canonical.model_.log_prior(canonical.params_)),
                                 rel=1e-9)


def test_n_parameters_counts():
    # one layer: the MFA count (rotation of each Lambda_g removed)
    assert n_parameters(5, (2,), (2,)) == 1 + 2 * 5 + 2 * (5 * 2 - 1) + 2 * 5
    assert n_parameters(17, (3, 3, 2), (11, 6, 2)) == (
        2 + 3 * 17 * 13 + 2 + 3 * 11 * 8 + 1 + 2 * 6 * 4 - 2 * 1 - 2 * (11 + 6))
    # a single component below an intermediate layer adds a whitened rotation of its score
    assert n_parameters(9, (2, 1, 2), (5, 3, 2)) == (
        1 + 2 * 9 * 7 + 0 + 1 * 5 * 5 + 1 + 2 * 3 * 4 - 2 * 1 - 2 * (5 + 3) - 5 * 4 // 2)


@pytest.mark.parametrize("kwargs, match", [
    ({"n_components": (3, 2), "n_factors": (4,)}, "same length"),
    ({"n_components": (3, 2), "n_factors": (2, 2)}, "strictly decreasing"),
    ({"n_components": (3, 2), "n_factors": (2, 4)}, "strictly decreasing"),
    ({"n_components": (3, 0), "n_factors": (4, 2)}, "n_components"),
    ({"n_components": (), "n_factors": ()}, "n_components"),
    ({"n_components": (2, 2), "n_factors": (8, 2)}, "n_features"),
    ({"inference": "nuts"}, "inference"),
    ({"form": "latent"}, "form"),
    ({"init_params": "bad"}, "init_params"),
    ({"start": "kmeans"}, "start"),
    ({"accelerate": -1}, "accelerate"),
    ({"anneal_start": 0.5}, "anneal_start"),
    ({"anneal_start": 3.0, "inference": "svi"}, "anneal_start"),
    ({"anneal_iter": -1}, "anneal_iter"),
    ({"identifiability": "rotated"}, "identifiability"),
    ({"realign": True, "inference": "svi"}, "realign"),
    ({"identifiability": "diagonal", "inference": "svi", "form": "latent"}, "identifiability"),
])
def test_validation_errors(kwargs, match):
    X = np.random.default_rng(0).normal(size=(50, 8))
    arguments = {"n_components": (2, 2), "n_factors": (3, 1), "progress": False, **kwargs}
    with pytest.raises(ValueError, match=match):
        DeepGaussianMixture(**arguments).fit(X)


# ----------------------------------------------------------------------------------- simulator


def test_make_dgmm_section_3_1_and_standardisation():
    X, labels, paths, truth = make_dgmm(n_samples=500, random_state=0)
    assert X.shape == (500, 17) and labels.shape == (500, 3) and paths.shape == (500,)
    assert np.array_equal(paths, labels @ np.array([6, 2, 1]))
    assert [lam.shape for lam in truth["loadings"]] == [(3, 17, 11), (3, 11, 6), (2, 6, 2)]
    assert np.isclose((truth["loadings"][1] == 0).mean(), 0.5, atol=0.01)
    Xs, labels_s, _, truth_s = make_dgmm(n_samples=500, random_state=0, standardize=True)
    assert np.array_equal(labels, labels_s)
    np.testing.assert_allclose(Xs.mean(0), 0, atol=1e-10)
    raw = dgmm.log_likelihood(torch.as_tensor(X), dgmm.DGMMParams.from_numpy(truth))
    std = dgmm.log_likelihood(torch.as_tensor(Xs), dgmm.DGMMParams.from_numpy(truth_s))
    torch.testing.assert_close(std, raw + np.log(X.std(0)).sum())


def test_make_dgmm_rejects_bad_architecture():
    with pytest.raises(ValueError, match="n_factors"):
        make_dgmm(n_features=5, n_factors=(6, 2, 1))


# ------------------------------------------------------------------ the start from the data's GMM


def test_group_components_finds_the_first_layer_from_exact_path_moments():
    """Paths sharing a first-layer component differ inside its r_1-dimensional column space
    (eqs. 3-6): from exact path moments, shuffled, the grouping is the tree's."""
    from ppl_mixtures.inference.dgmm_start import group_components

    sizes, factors = (3, 2, 2), (5, 3, 1)
    params = random_params(sizes, factors, 8, seed=4)
    _, means, covs = dgmm.path_moments(params)
    order = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    groups = group_components(means[order], covs[order], 3, 5, torch.Generator().manual_seed(1))
    first_layer = dgmm.layer_labels(order, sizes)[:, 0]
    assert sorted(sorted(first_layer[g].tolist()) for g in groups) == [[0] * 4, [1] * 4, [2] * 4]


def test_tree_from_true_path_labels_recovers_the_layers():
    """Shuffled true path labels as the first E-step: the start's paths and layers are the
    truth's (up to relabelling), and the first candidate is the best matched."""
    from ppl_mixtures.inference.dgmm_start import tree_from_responsibilities

    X, layers, paths, _ = make_dgmm(800, 9, (2, 2), (4, 2), random_state=0, standardize=True)
    x = torch.as_tensor(X)
    generator = torch.Generator().manual_seed(0)
    shuffled = torch.randperm(4, generator=generator)[torch.as_tensor(paths)]
    starts = tree_from_responsibilities(x, torch.nn.functional.one_hot(shuffled, 4).double(),
                                        (2, 2), (4, 2), generator)
    assert 1 <= len(starts) <= 8
    predicted = dgmm.log_joint(x, starts[0]).argmax(-1)
    assert adjusted_rand_score(paths, predicted) > 0.95
    labels = dgmm.layer_labels(predicted, (2, 2)).numpy()
    for k in range(2):
        assert adjusted_rand_score(layers[:, k], labels[:, k]) > 0.95


def test_accelerated_em_is_monotone_and_ahead_of_plain_em():
    X, _, _, _ = make_dgmm(400, 9, (2, 2), (4, 2), random_state=1, standardize=True)
    x = torch.as_tensor(X)
    start = em_dgmm.initial_params(x, (2, 2), (4, 2), "kmeans", torch.Generator().manual_seed(0))
    params, history = em_dgmm.accelerate(x, start, 10)
    assert len(history) == 10 and np.all(np.diff(history) >= -1e-9)
    plain = run_em(x, init_params=lambda _: start, e_step=em_dgmm.e_step, m_step=em_dgmm.m_step,
                   max_iter=30, tol=0.0, progress=False)  # at least the 30 E-steps of 10 cycles
    assert history[-1] >= plain.log_likelihood - 1e-9
    assert float(em_dgmm.e_step(x, params).log_likelihood) / 400 == pytest.approx(history[-1])


def test_default_recovers_a_small_section_3_1_setting():
    """The default (start="gmm", accelerated EM) finds the truth's paths and likelihood where
    the paper's layer-wise start does not (measured: ARI 1.0 against 0.69-0.75 for seeds 0-2
    of this setting)."""
    X, _, paths, truth = make_dgmm(600, 9, (2, 2), (4, 2), random_state=1, standardize=True)
    oracle = float(dgmm.log_likelihood(torch.as_tensor(X),
                                       dgmm.DGMMParams.from_numpy(truth)).mean())
    common = dict(max_iter=60, random_state=0, progress=False)
    default = DeepGaussianMixture((2, 2), (4, 2), **common).fit(X)
    assert adjusted_rand_score(paths, default.predict(X)) > 0.99
    assert default.score(X) > oracle - 0.2
    assert np.all(np.diff(default.history_) > -1e-8)
    layerwise = DeepGaussianMixture((2, 2), (4, 2), start="layerwise", **common).fit(X)
    assert default.score(X) > layerwise.score(X) + 1.0


def test_layerwise_start_is_the_papers_plain_em():
    """start="layerwise" runs no acceleration unless asked: plain EM from the layer-wise start,
    and the accelerated cycles come before history_, which then starts higher."""
    x, _, _, sizes, factors = _separated_problem(n_samples=200)
    common = dict(start="layerwise", max_iter=5, tol=0.0, random_state=0, progress=False)
    plain = DeepGaussianMixture(sizes, factors, **common).fit(x.numpy())
    explicit = DeepGaussianMixture(sizes, factors, accelerate=0, **common).fit(x.numpy())
    np.testing.assert_array_equal(plain.history_, explicit.history_)
    faster = DeepGaussianMixture(sizes, factors, accelerate=5, **common).fit(x.numpy())
    assert faster.history_[0] > plain.history_[-1]


def test_weighted_e_step_equals_repeated_rows():
    x, _, _, sizes, factors = _separated_problem(n_samples=50)
    params = random_params(sizes, factors, 8, seed=2)
    counts = torch.randint(0, 3, (50,), generator=torch.Generator().manual_seed(0))
    weighted = em_dgmm.e_step(x, params, weights=counts.double())
    repeated = em_dgmm.e_step(x.repeat_interleave(counts, 0), params)
    assert weighted.n_samples == pytest.approx(repeated.n_samples)
    for field in ("log_likelihood", "path_mass", "first_moment", "second_moment"):
        torch.testing.assert_close(getattr(weighted, field), getattr(repeated, field))


def test_sample_weight_with_latent_svi_is_refused_naming_the_collapsed_form():
    X = np.random.default_rng(0).normal(size=(40, 4))
    est = DeepGaussianMixture((2, 1), (2, 1), inference="svi", form="latent", max_iter=2,
                              progress=False, random_state=0)
    with pytest.raises(ValueError, match="form='collapsed'.*inference='em'"):
        est.fit(X, sample_weight=np.ones(40))
    # the collapsed form takes them (tests/estimators/test_sample_weight.py)
    est.set_params(form="collapsed").fit(X, sample_weight=np.ones(40))
