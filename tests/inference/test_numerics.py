"""Numerics of EM and SVI in float32, on ill-conditioned, rank-deficient, degenerate and
tiny-scale data (the robustness issue's "Numerics" section).

Monotonicity is measured on the *true* log-likelihood: every iterate of a float32 EM run is
scored in float64 on the same (float32-valued) data, so what is checked is the parameters,
not the float32 E-step's own estimate of their likelihood.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from ppl_mixtures import DeepGaussianMixture, GaussianMixture, MixtureOfFactorAnalyzers
from ppl_mixtures.inference.em import dgmm as em_dgmm
from ppl_mixtures.inference.em import gmm as em_gmm
from ppl_mixtures.inference.em import mfa as em_mfa
from ppl_mixtures.inference.init import initial_responsibilities
from ppl_mixtures.models import dgmm, gmm, mfa

QUIET = dict(progress=False, random_state=0, device="cpu")


def rotated(cond: float, n: int = 3000, d: int = 10, k: int = 3, offset: float = 10.0,
            sep: float = 2.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Clusters whose covariance has condition number ``cond``, rotated, off the origin."""
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.standard_normal((d, d)))
    scales = np.logspace(0, -np.log10(cond) / 2, d)
    labels = rng.integers(k, size=n)
    means = rng.standard_normal((k, d)) * sep * scales
    return (means[labels] + rng.standard_normal((n, d)) * scales) @ rotation.T + offset, labels


def feature_scales(n: int = 1500, d: int = 10, k: int = 3, seed: int = 0):
    """Clusters in features whose standard deviations run from 1e-3 to 1e3 (cond(X) ~ 1e6)."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((k, d)) * 3
    labels = rng.integers(k, size=n)
    return (means[labels] + rng.standard_normal((n, d))) * np.logspace(-3, 3, d), labels


def true_history(x: np.ndarray, start, e_step, m_step, log_likelihood, n_iter: int,
                 dtype: torch.dtype) -> list[float]:
    """EM in ``dtype`` from ``start``; the float64 log-likelihood per sample of each iterate."""
    data = torch.as_tensor(x, dtype=dtype)
    exact = data.to(torch.float64)
    params, history = start.to(dtype), []
    for _ in range(n_iter):
        params = m_step(e_step(data, params))
        with torch.no_grad():
            history.append(float(log_likelihood(exact, params.to(torch.float64)).mean()))
    return history


def worst_decrease(history: list[float]) -> float:
    return float(max(0.0, -np.diff(history).min()))


def _gmm_case(covariance_type):
    x, _ = rotated(1e8)
    x32 = torch.as_tensor(x, dtype=torch.float32)
    resp = initial_responsibilities(x32, 3, "kmeans", torch.Generator().manual_seed(0))
    start = em_gmm.params_from_responsibilities(x32, resp, covariance_type)
    return (x, start, em_gmm.e_step, lambda s: em_gmm.m_step(s, covariance_type),
            gmm.log_likelihood)


def _mfa_case():
    x, _ = feature_scales()
    x32 = torch.as_tensor(x, dtype=torch.float32)
    resp = initial_responsibilities(x32, 3, "kmeans", torch.Generator().manual_seed(0))
    return x, em_mfa.params_from_responsibilities(x32, resp, 3), em_mfa.e_step, em_mfa.m_step, \
        mfa.log_likelihood


def _dgmm_case():
    x, _ = rotated(1e8)
    x32 = torch.as_tensor(x, dtype=torch.float32)
    start = em_dgmm.initial_params(x32, (3, 2), (3, 2), "kmeans", torch.Generator().manual_seed(0))
    return x, start, em_dgmm.e_step, em_dgmm.m_step, dgmm.log_likelihood


# Measured on 2 CPU cores (worst decrease of the float64 log-likelihood per sample over the
# iterations of a float32 EM run; before -> after the float64 statistics): GMM full 0.054 ->
# 0.0028, tied 0.033 -> 0.0030 (rotated, cond 1e8, 60 iterations); MFA 3.2 -> 0 (feature
# scales 1e-3..1e3, 150 iterations); DGMM 0.0055 -> 0 (rotated, cond 1e8, 150 iterations).
# Final gap to float64 after the same iterations: 0.016, 0.046, 0.080, 0.011 -> at most 0.001.
@pytest.mark.parametrize("case,n_iter,bound", [
    (lambda: _gmm_case("full"), 60, 0.01),
    (lambda: _gmm_case("tied"), 60, 0.01),
    (_mfa_case, 150, 1e-4),
    (_dgmm_case, 150, 1e-4),
], ids=["gmm-full", "gmm-tied", "mfa", "dgmm"])
def test_float32_em_is_monotone_on_ill_conditioned_data(case, n_iter, bound):
    x, start, e_step, m_step, log_likelihood = case()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gmm.CovarianceJitterWarning)
        single = true_history(x, start, e_step, m_step, log_likelihood, n_iter, torch.float32)
        double = true_history(x, start, e_step, m_step, log_likelihood, n_iter, torch.float64)
    assert worst_decrease(single) <= bound
    # float64's own rounding at condition 1e8, about eps * cond = 2e-8 per sample: tied, from
    # the k-means starts of seeds 0-3, 0.9e-8 to 2.9e-8 (full: 0)
    assert worst_decrease(double) <= 1e-7
    assert abs(single[-1] - double[-1]) <= 0.005  # per sample, after the same iterations


def test_float32_statistics_are_float64_and_parameters_keep_their_dtype():
    x, start, e_step, m_step, _ = _gmm_case("full")
    stats = e_step(torch.as_tensor(x, dtype=torch.float32), start)
    assert stats.second_moment.dtype == stats.resp_sum.dtype == torch.float64
    assert stats.log_likelihood.dtype == stats.shift.dtype == torch.float32
    params = m_step(stats)
    assert {t.dtype for t in params.tensors().values()} == {torch.float32}


@pytest.mark.parametrize("covariance_type", ["full", "tied"])
def test_whitened_float32_e_step_matches_float64(covariance_type):
    """The float32 E-step's moments (taken whitened) against the float64 E-step's."""
    x, _ = rotated(1e4, n=500)
    x64 = torch.as_tensor(x)
    resp = initial_responsibilities(x64, 3, "kmeans", torch.Generator().manual_seed(0))
    params = em_gmm.params_from_responsibilities(x64, resp, covariance_type)
    single = em_gmm.e_step(x64.float(), params.to(torch.float32))
    double = em_gmm.e_step(x64, params.to(torch.float32).to(torch.float64))
    scale = double.second_moment.abs().amax()
    torch.testing.assert_close(single.second_moment, double.second_moment, rtol=0,
                               atol=1e-5 * float(scale))
    torch.testing.assert_close(single.resp_sum, double.resp_sum, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(float(single.log_likelihood), float(double.log_likelihood),
                               rtol=1e-5, atol=0)


def test_float32_per_component_e_step_matches_the_stacked_one(monkeypatch):
    """Large K D^2 whitens one component at a time: the same statistics."""
    x, _ = rotated(1e4, n=500)
    x32 = torch.as_tensor(x, dtype=torch.float32)
    resp = initial_responsibilities(x32, 3, "kmeans", torch.Generator().manual_seed(0))
    params = em_gmm.params_from_responsibilities(x32, resp, "full")
    stacked = em_gmm.e_step(x32, params)
    monkeypatch.setattr(gmm, "_STACKED_WHITENING_MAX", 0)
    assert gmm.whitening_plan(params).stacked is None
    alone = em_gmm.e_step(x32, params)
    for name in em_gmm.GMMStats.summed_fields[1:]:
        torch.testing.assert_close(getattr(alone, name), getattr(stacked, name), rtol=1e-5,
                                   atol=1e-4)


# ------------------------------------------------------------------------ high dimension


def test_float32_full_covariances_in_784_dimensions_fit():
    """(600, 784) with constant and nearly constant pixels: a fit, no LinAlgError."""
    rng = np.random.default_rng(0)
    x = rng.random((600, 784)).astype(np.float32)
    x[:, :100] = 0.0
    x[:, 100:200] *= 1e-3
    est = GaussianMixture(3, dtype="float32", max_iter=3, **QUIET).fit(x)
    assert np.isfinite(est.lower_bound_)
    assert est.covariances_.dtype == np.float32
    assert np.isfinite(est.score_samples(x)).all()


def test_float32_svi_with_near_singular_covariances_fits():
    """120 rows per component in 100 dimensions: ``L L^T`` rounded to float32 is not positive
    definite, so SVI scores with the Pyro model's own ``scale_tril``."""
    x = np.random.default_rng(0).standard_normal((600, 100)).astype(np.float32)
    est = GaussianMixture(5, dtype="float32", inference="svi", max_iter=30, **QUIET)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning after 30 steps
        est.fit(x)
    assert np.isfinite(est.history_).all()
    assert np.isfinite(est.score_samples(x)).all()
    assert np.linalg.eigvalsh(est.covariances_.astype(np.float64)).min() > 0


@pytest.mark.filterwarnings("ignore::ppl_mixtures.inference.em.loop.LikelihoodDecreaseWarning")
def test_rank_deficient_float32_data_fits_and_says_what_to_change():
    """Rank 10 in 60 dimensions: float32 cannot store the covariances with reg_covar=1e-6;
    the fit goes on and the warning names reg_covar and float64; with the reg_covar it
    suggests, float32 ends where float64 does."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((600, 10)) @ rng.standard_normal((10, 60))).astype(np.float32)
    with pytest.warns(gmm.CovarianceJitterWarning, match="reg_covar.*dtype=.float64."):
        est = GaussianMixture(3, dtype="float32", max_iter=5, **QUIET).fit(x)
    assert np.isfinite(est.score_samples(x)).all()
    options = dict(reg_covar=1e-2, max_iter=20, **QUIET)
    with warnings.catch_warnings():
        warnings.simplefilter("error", gmm.CovarianceJitterWarning)
        single = GaussianMixture(3, dtype="float32", **options).fit(x)
    double = GaussianMixture(3, dtype="float64", **options).fit(x.astype(np.float64))
    # about 35 nats per sample: within 0.1 (with reg_covar=1e-6 float32 fell ~900 short)
    assert abs(single.score(x.astype(np.float64)) - double.score(x.astype(np.float64))) < 0.1


def test_cholesky_factors_jitter_a_rounded_matrix_with_a_warning():
    factor = torch.randn(40, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    factor[:, :5] *= 1e-6  # eigenvalues down to ~1e-12: not positive definite in float32
    covariance = (factor @ factor.T).to(torch.float32)
    assert torch.linalg.cholesky_ex(covariance.double()).info != 0
    params = gmm.GMMParams(torch.ones(1), torch.zeros(1, 40), covariance[None], "full")
    with pytest.warns(gmm.CovarianceJitterWarning, match=r"component\(s\) \[0\]"):
        factors = gmm.cholesky_factors(params)
    assert factors.dtype == torch.float32 and torch.isfinite(factors).all()


def test_a_float64_covariance_that_needs_jitter_is_not_sent_to_float64():
    """The warning's remedy for a float64 matrix is reg_covar or fewer components (it
    advised dtype='float64' to fits already in float64, e.g. the DGMM's start)."""
    covariance = torch.tensor([[1.0, 1.0], [1.0, 1.0 - 1e-9]], dtype=torch.float64)
    params = gmm.GMMParams(torch.ones(1, dtype=torch.float64),
                           torch.zeros(1, 2, dtype=torch.float64), covariance[None], "full")
    with pytest.warns(gmm.CovarianceJitterWarning, match="reg_covar, or use fewer") as caught:
        gmm.cholesky_factors(params)
    assert "dtype=" not in str(caught[0].message)


def test_a_covariance_that_cannot_factorise_is_named():
    covariance = torch.eye(3)
    covariance[1, 1] = float("nan")
    params = gmm.GMMParams(torch.full((2,), 0.5), torch.zeros(2, 3),
                           torch.stack([torch.eye(3), covariance]), "full")
    with pytest.raises(ValueError, match=r"component\(s\) \[1\].*reg_covar"):
        gmm.log_joint(torch.zeros(4, 3), params)


def test_the_model_scores_with_its_scale_tril():
    """With the factors at hand the densities equal those from the covariances."""
    generator = torch.Generator().manual_seed(0)
    raw = torch.randn(2, 4, 4, generator=generator, dtype=torch.float64)
    factors = torch.linalg.cholesky(raw @ raw.transpose(-1, -2) + torch.eye(4))
    params = gmm.GMMParams(torch.full((2,), 0.5), torch.randn(2, 4, generator=generator,
                                                             dtype=torch.float64),
                           factors @ factors.transpose(-1, -2), "full")
    x = torch.randn(7, 4, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(gmm.component_log_prob(x, params, factors),
                               gmm.component_log_prob(x, params))


# ------------------------------------------------------------------------ degenerate data


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("layers", [dict(n_components=5, n_factors=2),
                                    dict(n_components=(5, 2), n_factors=(2, 1))])
def test_dgmm_on_identical_rows_fits(dtype, layers):
    x = np.full((50, 4), 3.0)
    est = DeepGaussianMixture(max_iter=20, dtype=dtype, **layers, **QUIET).fit(x)
    assert np.isfinite(est.lower_bound_)
    assert len(np.unique(est.predict(x))) == 1


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("init_params", ["kmeans", "random"])
def test_dgmm_with_more_components_than_distinct_points_fits(dtype, init_params):
    points = np.random.default_rng(0).standard_normal((3, 4))
    x = np.repeat(points, [7, 5, 9], axis=0)
    est = DeepGaussianMixture(5, n_factors=2, max_iter=20, dtype=dtype,
                              init_params=init_params, **QUIET).fit(x)
    assert np.isfinite(est.score_samples(x)).all()
    assert len(np.unique(est.predict(x))) <= 3


def test_dgmm_singular_design_falls_back_on_a_ridge_then_names_the_component():
    design = torch.zeros(2, 3, 3, dtype=torch.float64)
    design[0] = torch.eye(3)
    rhs = torch.ones(2, 3, 4, dtype=torch.float64)
    coef = em_dgmm._solve_design(design, rhs, 0)
    assert torch.isfinite(coef).all()
    torch.testing.assert_close(coef[0], rhs[0])
    design[1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"layer 1, component\(s\) \[1\]"):
        em_dgmm._solve_design(design, rhs, 0)


# ------------------------------------------------------------------------ the data's scale


def blobs(n_per: int = 60, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(m, 0.5, (n_per, 3)) for m in (0.0, 3.0, 6.0)])
    return x, np.repeat([0, 1, 2], n_per)


ESTIMATORS = {
    "gmm-full": lambda **kw: GaussianMixture(3, **kw),
    "gmm-diag": lambda **kw: GaussianMixture(3, covariance_type="diag", **kw),
    "gmm-tied": lambda **kw: GaussianMixture(3, covariance_type="tied", **kw),
    "mfa": lambda **kw: MixtureOfFactorAnalyzers(3, n_factors=1, **kw),
    "dgmm": lambda **kw: DeepGaussianMixture(3, n_factors=1, **kw),
}


@pytest.mark.parametrize("name", list(ESTIMATORS))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("scale", [1e-6, 1e-12])
def test_tiny_scale_data_gives_the_same_partition_with_a_warning(name, dtype, scale):
    x, labels = blobs()
    reference = ESTIMATORS[name](dtype=dtype, **QUIET).fit(x).predict(x)
    assert adjusted_rand_score(labels, reference) == 1.0
    small = (x * scale).astype(dtype)
    with pytest.warns(em_gmm.DataScaleWarning, match="variance of .*reg_covar=1e-06.*Standardise"):
        est = ESTIMATORS[name](dtype=dtype, **QUIET).fit(small)
    assert adjusted_rand_score(reference, est.predict(small)) == 1.0


def test_unit_scale_data_keeps_reg_covar_as_given():
    x, _ = blobs()
    with warnings.catch_warnings():
        warnings.simplefilter("error", em_gmm.DataScaleWarning)
        GaussianMixture(3, **QUIET).fit(x)
        GaussianMixture(3, **QUIET).fit(x * 0.05)  # variance ~1e-2: still ordinary
    stats = em_gmm.e_step(torch.as_tensor(x), em_gmm.params_from_responsibilities(
        torch.as_tensor(x), torch.eye(3, dtype=torch.float64).repeat_interleave(60, 0), "diag"))
    spread, _ = em_gmm.data_spread(stats.resp_sum, stats.first_moment, stats.second_moment,
                                   stats.shift)
    assert spread == pytest.approx(float(x.var(0).mean()), rel=1e-12)


def test_variance_floor():
    assert em_gmm.variance_floor(1e-6, 1.0) == 1e-6
    assert em_gmm.variance_floor(1e-2, 1e-3) == 1e-2  # a deliberate reg_covar on ordinary data
    assert em_gmm.variance_floor(1e-6, 1e-12) == pytest.approx(1e-15)
    assert em_gmm.variance_floor(1e-6, 0.0) == 1e-6  # identical rows: no scale to follow
    # rounding of identical rows far from the origin is no scale either
    assert em_gmm.variance_floor(1e-6, 1e-30, mean_square=9.0) == 1e-6
    assert em_gmm.variance_floor(1e-6, 1e-12, 9.0, torch.float32) == 1e-6


def _floor_variance_case(covariance_type: str):
    """Three components in 12 features; the first is blank (mean 0) at the variance floor
    (1e-6) in features 0-5, where the others have ink (means 8 and 14): the digits' blank
    pixels. Rows of the first component, and its parameters, in float64."""
    generator = torch.Generator().manual_seed(0)
    means = torch.tensor([[0.0] * 6 + [3.0] * 6, [8.0] * 6 + [1.0] * 6,
                          [14.0] * 6 + [5.0] * 6], dtype=torch.float64)
    variances = torch.ones(3, 12, dtype=torch.float64) * 4.0
    variances[0, :6] = 1e-6
    rows = means[0] + variances[0].sqrt() * torch.randn(200, 12, generator=generator,
                                                        dtype=torch.float64)
    if covariance_type == "spherical":  # the floor on the whole first component
        variances = torch.tensor([1e-6, 4.0, 4.0], dtype=torch.float64)
        rows = means[0] + 1e-3 * torch.randn(200, 12, generator=generator, dtype=torch.float64)
    weights = torch.full((3,), 1 / 3, dtype=torch.float64)
    return rows, gmm.GMMParams(weights, means, variances, covariance_type)


@pytest.mark.parametrize("covariance_type", ["diag", "spherical"])
def test_float32_diagonal_densities_at_the_variance_floor(covariance_type):
    """Float32 log densities (model and E-step) of the rows of a component at the variance
    floor equal float64's of the same float32 numbers. Measured: up to 19 nats apart (diag;
    spherical 46) about the plain mean of the means, 2e-5 now (the expansion is about the
    precision-weighted mean; see ``models.gmm.expansion_center``); the E-step's likelihood
    1.3e-4 apart."""
    rows, params = _floor_variance_case(covariance_type)
    single_rows, single = rows.float(), params.to(torch.float32)
    exact = gmm.component_log_prob(single_rows.double(), single.to(torch.float64))
    model = gmm.component_log_prob(single_rows, single)
    torch.testing.assert_close(model.double(), exact, rtol=0, atol=2e-4)
    likelihood = em_gmm.e_step(single_rows, single).log_likelihood
    exact_likelihood = em_gmm.e_step(single_rows.double(), single.to(torch.float64))
    assert abs(float(likelihood) - float(exact_likelihood.log_likelihood)) < 2e-3


def test_float32_factor_analyser_densities_at_the_variance_floor():
    """The MFA's float32 log densities (Woodbury about the precision-weighted centre) of the
    rows of a component whose noise variances sit at the floor where the others have ink
    equal float64's of the same float32 numbers. Measured: up to 39 nats apart about the
    plain mean of the means (on a fitted MFA of the digits: 0.89 nats on average, weighted by
    the responsibilities), 3e-5 now (the digits: 1.1e-5)."""
    rows, params = _floor_variance_case("diag")
    loadings = torch.zeros(3, 12, 2, dtype=torch.float64)
    loadings[:, 6:, 0], loadings[:, 6:, 1] = 0.5, torch.linspace(-1, 1, 6)
    factors = mfa.MFAParams(params.weights, params.means, loadings, params.covariances)
    single_rows, single = rows.float(), factors.to(torch.float32)
    exact = mfa.component_log_prob(single_rows.double(), single.to(torch.float64))
    torch.testing.assert_close(mfa.component_log_prob(single_rows, single).double(), exact,
                               rtol=0, atol=2e-4)


def test_float32_diagonal_fit_of_the_digits_matches_float64():
    """scikit-learn's digits (blank pixels at the reg_covar floor), 20 iterations from one
    start: float32 and float64 reach the same likelihood and means. Measured: 2.0 nats per
    sample apart and means 2.7 apart before the precision-weighted centre; 7e-6 and 1.3e-5 now."""
    from sklearn.datasets import load_digits

    x = load_digits().data
    rng = np.random.default_rng(0)
    start = dict(weights_init=np.full(10, 0.1), means_init=x[rng.choice(len(x), 10, replace=False)],
                 precisions_init=np.full((10, 64), 1 / x.var(0).mean()))
    fits = {}
    for dtype in ("float64", "float32"):
        est = GaussianMixture(10, covariance_type="diag", max_iter=20, tol=0.0, dtype=dtype,
                              **start, **QUIET)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fits[dtype] = est.fit(x.astype(dtype))
    assert abs(fits["float32"].lower_bound_ - fits["float64"].lower_bound_) < 1e-3
    np.testing.assert_allclose(np.asarray(fits["float32"].means_, dtype=float),
                               np.asarray(fits["float64"].means_), atol=1e-3)


@pytest.mark.parametrize("covariance_type", ["diag", "full"])
def test_float32_and_float64_fits_from_one_seed_agree(covariance_type):
    """The default (k-means) start draws its uniforms in float64 whatever the data's dtype,
    so float32 data takes float64's seeds, as scikit-learn's does. Measured on the digits,
    random_state=0: the same partition and lower bounds 3e-4 (diag) and 1.1e-4 (full) apart;
    before, the starts agreed to an ARI of 0.77-0.86 and the fits ended 6.2 (diag) and 0.75
    (full) nats per sample apart."""
    from sklearn.datasets import load_digits

    x = load_digits().data
    fits = {}
    for dtype in ("float64", "float32"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fits[dtype] = GaussianMixture(10, covariance_type=covariance_type, dtype=dtype,
                                          **QUIET).fit(x.astype(dtype))
    assert adjusted_rand_score(fits["float64"].predict(x), fits["float32"].predict(x)) > 0.99
    assert abs(fits["float32"].lower_bound_ - fits["float64"].lower_bound_) < 0.01
