"""BayesianGaussianMixture: scikit-learn's oracle, sample weights, SVI, files, global state.

Thresholds come from measured runs (seeds below): from the same initial responsibilities, the
CAVI lower bound agrees with scikit-learn's to ~3e-10 relative for all eight covariance and
weight-prior types (asserted at 1e-6); integer weights agree with repeated rows to ~1e-12.
SVI (Adam, lr 0.05, full batch) from the CAVI start settles 0.35-0.8 % below CAVI's full ELBO
on 120 rows (500 and 1500 steps alike: the Monte Carlo noise floor); asserted at 1.5 %.
SVI with swapped priors and with sample weights: tests/estimators/test_bayesian_priors.py.
"""

from __future__ import annotations

import inspect
import random
import warnings

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import TraceEnum_ELBO
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import BayesianGaussianMixture as SklearnBGMM

from ppl_mixtures.estimators.bayesian import BayesianGaussianMixture
from ppl_mixtures.models import bayesian_gmm as bgmm

QUIET = dict(progress=False, device="cpu")
CONFIGS = [(w, c) for w in bgmm.WEIGHT_PRIOR_TYPES for c in bgmm.COVARIANCE_TYPES]


def _blobs(n_per_cluster=40, seed=0):
    rng = np.random.RandomState(seed)
    centres = np.array([[0.0, 0.0], [5.0, 5.0], [-5.0, 4.0]])
    X = np.vstack([rng.randn(n_per_cluster, 2) * s + c
                   for c, s in zip(centres, (1.0, 0.6, 1.2), strict=True)])
    return X, np.repeat(np.arange(3), n_per_cluster)


def _effective(weights, threshold=1e-2):
    return int((np.asarray(weights) > threshold).sum())


def _sklearn_from(resp, **kwargs):
    """scikit-learn's estimator whose start is ``_initialize(X, resp)``."""
    est = SklearnBGMM(**kwargs)
    est._initialize_parameters = lambda X, *args, **kw: est._initialize(X, resp)
    return est


@pytest.fixture(scope="module")
def blobs():
    return _blobs()


@pytest.mark.parametrize("weight_type, covariance_type", CONFIGS)
def test_cavi_equals_sklearn_from_the_same_start(blobs, weight_type, covariance_type):
    X, _ = blobs
    resp = np.random.RandomState(1).dirichlet(np.ones(6), size=len(X))
    args = dict(n_components=6, covariance_type=covariance_type, tol=1e-6, max_iter=200,
                weight_concentration_prior_type=weight_type)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        theirs = _sklearn_from(resp, **args).fit(X)
        ours = BayesianGaussianMixture(resp_init=resp, **args, **QUIET).fit(X)
    assert ours.n_iter_ == theirs.n_iter_
    assert ours.lower_bound_ == pytest.approx(float(np.squeeze(theirs.lower_bound_)), rel=1e-6)
    assert _effective(ours.weights_) == _effective(theirs.weights_)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_",
                 "weight_concentration_", "mean_precision_", "degrees_of_freedom_"):
        np.testing.assert_allclose(np.asarray(getattr(ours, name)),
                                   np.asarray(getattr(theirs, name)), rtol=1e-6, atol=1e-8,
                                   err_msg=name)
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), atol=1e-7)
    np.testing.assert_allclose(ours.score_samples(X), theirs.score_samples(X), rtol=1e-7)


@pytest.mark.parametrize("weight_type, covariance_type",
                         [("dirichlet_process", "full"), ("dirichlet_distribution", "diag")])
def test_clusters_agree_with_sklearn_and_the_truth(blobs, weight_type, covariance_type):
    X, labels = blobs
    args = dict(n_components=6, covariance_type=covariance_type, random_state=0,
                weight_concentration_prior_type=weight_type)
    ours = BayesianGaussianMixture(**args, **QUIET).fit(X)
    theirs = SklearnBGMM(**args).fit(X)
    assert adjusted_rand_score(labels, ours.predict(X)) > 0.95
    assert adjusted_rand_score(theirs.predict(X), ours.predict(X)) > 0.95
    assert _effective(ours.weights_, 0.05) == _effective(theirs.weights_, 0.05) == 3


def _fit_weighted(est, X, sample_weight):
    """``fit(X, sample_weight=...)`` once the base takes it; until then its internal entry
    point: the data source with ``weights`` attached, as the base will attach them."""
    if "sample_weight" in inspect.signature(est.fit).parameters:
        return est.fit(X, sample_weight=sample_weight)
    est._prepare()
    source = est._source(X)
    source.weights = torch.as_tensor(sample_weight, dtype=source.sample.dtype)
    return est._fit_source(source, False)


@pytest.mark.parametrize("weight_type, covariance_type",
                         [("dirichlet_process", "full"), ("dirichlet_distribution", "spherical"),
                          ("dirichlet_process", "tied")])
def test_integer_weights_equal_repeated_rows(blobs, weight_type, covariance_type):
    X, _ = blobs
    X = X[::3]
    counts = np.random.RandomState(2).randint(0, 4, size=len(X))
    resp = np.random.RandomState(3).dirichlet(np.ones(4), size=len(X))
    args = dict(n_components=4, covariance_type=covariance_type, tol=1e-8, max_iter=50,
                weight_concentration_prior_type=weight_type, **QUIET)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        weighted = _fit_weighted(BayesianGaussianMixture(resp_init=resp, **args), X,
                                 counts.astype(float))
        repeated = BayesianGaussianMixture(resp_init=np.repeat(resp, counts, 0), **args).fit(
            np.repeat(X, counts, 0))
    assert weighted.n_iter_ == repeated.n_iter_
    assert weighted.lower_bound_ == pytest.approx(repeated.lower_bound_, rel=1e-6)
    assert weighted.elbo_ == pytest.approx(repeated.elbo_, rel=1e-6)
    for name in ("weights_", "means_", "covariances_", "mean_prior_", "covariance_prior_"):
        np.testing.assert_allclose(np.asarray(getattr(weighted, name)),
                                   np.asarray(getattr(repeated, name)), rtol=1e-6, atol=1e-9)


def test_svi_improves_its_bound(blobs):
    X = blobs[0][::2]
    short = BayesianGaussianMixture(4, inference="svi", max_iter=2, tol=0, random_state=0,
                                    **QUIET).fit(X)
    longer = BayesianGaussianMixture(4, inference="svi", max_iter=30, tol=0, random_state=0,
                                     **QUIET).fit(X)
    assert len(longer.history_) == 30
    assert np.isfinite(longer.elbo_) and longer.elbo_ > short.elbo_
    # lower_bound_ sits on scikit-learn's scale: the same constant away as CAVI's
    cavi = BayesianGaussianMixture(4, tol=1e-8, max_iter=300, random_state=0, **QUIET).fit(X)
    assert longer.elbo_ - longer.lower_bound_ == pytest.approx(cavi.elbo_ - cavi.lower_bound_,
                                                               rel=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_svi_reaches_cavi(blobs, covariance_type):
    X, labels = blobs
    args = dict(n_components=5, covariance_type=covariance_type, random_state=0, **QUIET)
    cavi = BayesianGaussianMixture(tol=1e-8, max_iter=500, **args).fit(X)
    svi = BayesianGaussianMixture(inference="svi", max_iter=500, tol=0, **args).fit(X)
    assert svi.elbo_ == pytest.approx(cavi.elbo_, rel=0.015)
    assert _effective(svi.weights_, 0.05) == _effective(cavi.weights_, 0.05)
    assert adjusted_rand_score(cavi.predict(X), svi.predict(X)) > 0.95
    assert adjusted_rand_score(labels, svi.predict(X)) > 0.95


def test_elbo_is_minus_the_expected_trace_enum_loss_of_model_and_guide(blobs):
    X, _ = blobs
    est = BayesianGaussianMixture(3, random_state=0, **QUIET).fit(X[::4])
    x = torch.as_tensor(X[::4])
    loss = TraceEnum_ELBO(max_plate_nesting=1)
    with pyro.get_param_store().scope(est.param_store_state_):
        losses = np.array([loss.loss(est.model_, est.guide_, x) for _ in range(60)])
    assert losses.std() > 0
    assert abs(-losses.mean() - est.elbo_) < 4.0 * losses.std() / np.sqrt(60)


@pytest.mark.parametrize("inference", ["cavi", "svi"])
def test_save_load_round_trip(blobs, tmp_path, inference):
    X, _ = blobs
    est = BayesianGaussianMixture(4, covariance_type="tied", inference=inference, max_iter=20,
                                  random_state=0, **QUIET)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X)
    path = tmp_path / "bgmm.safetensors"
    est.save(path)
    loaded = BayesianGaussianMixture.load(path, device="cpu")
    np.testing.assert_array_equal(loaded.predict_proba(X), est.predict_proba(X))
    np.testing.assert_array_equal(loaded.score_samples(X), est.score_samples(X))
    for name in ("weight_concentration_", "mean_precision_", "degrees_of_freedom_",
                 "covariance_prior_", "lower_bound_", "elbo_"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(est, name))
    assert loaded.get_params() == est.get_params()


def _global_state():
    return (torch.get_rng_state().clone(), np.random.get_state(), random.getstate())


def test_leaves_global_state_alone_and_is_reproducible(blobs):
    X, _ = blobs
    pyro.clear_param_store()
    mine = pyro.param("my_scale", torch.tensor(2.5))
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    before = _global_state()

    def use():
        est = BayesianGaussianMixture(4, init_params="random", random_state=0, **QUIET).fit(X)
        return est.predict_proba(X), est.score_samples(X), est.sample(5)[0]

    first = use()
    after = _global_state()
    assert torch.equal(before[0], after[0])
    assert np.array_equal(before[1][1], after[1][1]) and before[2] == after[2]
    assert list(pyro.get_param_store().keys()) == ["my_scale"]
    assert float(pyro.param("my_scale").detach()) == float(mine.detach())
    torch.manual_seed(7)
    for a, b in zip(first, use(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_sklearn_conventions(blobs):
    X, _ = blobs
    est = BayesianGaussianMixture(3, weight_concentration_prior=0.1, **QUIET)
    assert clone(est).get_params() == est.get_params()
    with pytest.raises(NotFittedError):
        est.predict(X)
    assert est.fit(X) is est
    np.testing.assert_array_equal(est.fit_predict(X), est.predict(X))
    assert est.n_features_in_ == 2 and est.weight_concentration_.shape == (2, 3)
    assert est.sample(7)[0].shape == (7, 2)


@pytest.mark.parametrize("arguments, name", [
    (dict(degrees_of_freedom_prior=0.5), "degrees_of_freedom_prior"),
    (dict(covariance_prior=np.eye(3)), "covariance_prior"),
    (dict(covariance_type="diag", covariance_prior=-np.ones(2)), "covariance_prior"),
    (dict(mean_prior=np.zeros(3)), "mean_prior"),
    (dict(resp_init=np.ones((5, 3))), "resp_init"),
    (dict(weight_concentration_prior=-1.0), "weight_concentration_prior"),
    (dict(weight_concentration_prior_type="pitman_yor"), "weight_concentration_prior_type"),
    (dict(inference="em"), "inference"),
    (dict(covariance_type="tied_diag"), "covariance_type"),
])
def test_errors_name_the_argument(blobs, arguments, name):
    X, _ = blobs
    with pytest.raises(ValueError, match=name):
        BayesianGaussianMixture(3, **arguments, **QUIET).fit(X)


def test_convergence_warning_names_max_iter(blobs):
    X, _ = blobs
    with pytest.warns(ConvergenceWarning, match="max_iter=2"):
        BayesianGaussianMixture(5, max_iter=2, tol=1e-12, random_state=0, **QUIET).fit(X)


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_posterior_goes_to_arviz(blobs, covariance_type):
    from ppl_mixtures.diagnostics import to_inference_data

    X = blobs[0][::3]
    est = BayesianGaussianMixture(4, covariance_type=covariance_type, random_state=0,
                                  **QUIET).fit(X)
    before = torch.get_rng_state().clone()
    idata = to_inference_data(est, X, num_samples=50, random_state=1)
    assert torch.equal(before, torch.get_rng_state())
    assert idata.posterior.attrs["posterior_kind"] == "variational"
    assert idata.posterior["weights"].shape == (1, 50, 4)
    assert idata.posterior["covariances"].dims[2:] == ("component", "feature", "feature_bis")
    assert idata.log_likelihood["obs"].shape == (1, 50, len(X))
    assert np.isfinite(idata.log_likelihood["obs"].values).all()
    # the draws' mean weights are q's (Monte Carlo error of 50 draws: < 0.03 here)
    np.testing.assert_allclose(idata.posterior["weights"].values.mean((0, 1)), est.weights_,
                               atol=0.03)
    again = to_inference_data(est, X, num_samples=50, random_state=1)
    np.testing.assert_array_equal(again.posterior["means"].values,
                                  idata.posterior["means"].values)
