"""The GaussianMixture estimator: scikit-learn as oracle, SVI against EM, input validation."""

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from ppl_mixtures import GaussianMixture
from ppl_mixtures.datasets import make_gmm
from ppl_mixtures.metrics import adjusted_rand_score

SK_TYPES = ("spherical", "diag", "tied", "full")


def sklearn_fit(X, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return SkGaussianMixture(**kwargs).fit(X)


@pytest.fixture(scope="module")
def blobs():
    return make_gmm(900, 3, 2, separation=6.0, random_state=0)


@pytest.mark.parametrize("covariance_type", SK_TYPES)
def test_same_init_same_log_likelihood_as_sklearn(covariance_type):
    X, _ = make_gmm(800, 4, 3, separation=2.0, random_state=5)
    start = sklearn_fit(X, n_components=4, covariance_type=covariance_type, max_iter=1,
                        init_params="k-means++", random_state=0)
    init = dict(weights_init=start.weights_, means_init=start.means_,
                precisions_init=start.precisions_)
    sk = sklearn_fit(X, n_components=4, covariance_type=covariance_type, max_iter=40, tol=0,
                     **init)
    ours = GaussianMixture(4, covariance_type=covariance_type, max_iter=40, tol=0,
                           progress=False, **init).fit(X)
    assert abs(ours.score(X) - sk.score(X)) < 1e-6
    np.testing.assert_allclose(ours.precisions_cholesky_, sk.precisions_cholesky_, atol=1e-5)
    assert ours.bic(X) == pytest.approx(sk.bic(X), rel=1e-9)
    assert ours.aic(X) == pytest.approx(sk.aic(X), rel=1e-9)
    np.testing.assert_allclose(ours.predict_proba(X), sk.predict_proba(X), atol=1e-6)


@pytest.mark.parametrize("covariance_type", SK_TYPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_own_init_reaches_sklearn(covariance_type, seed):
    X, _ = make_gmm(1000, 4, 3, covariance_type="full", separation=2.5, random_state=100 + seed)
    sk = sklearn_fit(X, n_components=4, covariance_type=covariance_type, n_init=3,
                     random_state=seed)
    ours = GaussianMixture(4, covariance_type=covariance_type, n_init=3, random_state=seed,
                           progress=False).fit(X)
    assert ours.score(X) >= sk.score(X) - 0.005


def test_svi_reaches_em_clustering(blobs):
    X, y = blobs
    em = GaussianMixture(3, random_state=0, progress=False).fit(X)
    svi = GaussianMixture(3, inference="svi", random_state=0, progress=False).fit(X)
    ari_em = adjusted_rand_score(y, em.predict(X))
    ari_svi = adjusted_rand_score(y, svi.predict(X))
    assert ari_svi >= 0.95 * ari_em
    assert abs(svi.score(X) - em.score(X)) < 0.05
    assert len(svi.history_) == svi.n_iter_


def test_svi_minibatch_and_mean_field(blobs):
    X, y = blobs
    for kwargs in ({"batch_size": 128}, {"guide": "mean_field"}):
        est = GaussianMixture(3, inference="svi", max_iter=600, random_state=1, progress=False,
                              **kwargs).fit(X)
        assert adjusted_rand_score(y, est.predict(X)) > 0.95


@pytest.mark.parametrize("covariance_type", ("diag", "tied_diag", "full"))
def test_elbo_loss_of_fitted_map_guide_is_minus_log_joint(blobs, covariance_type):
    X, _ = blobs
    est = GaussianMixture(3, covariance_type=covariance_type, random_state=0,
                          progress=False).fit(X)
    log_prior = float(est.model_.log_prior(est.params_))
    assert -est.elbo_loss(X) == pytest.approx(est.score(X) * len(X) + log_prior, rel=1e-10)


def test_fitted_attributes_and_sample(blobs):
    X, _ = blobs
    est = GaussianMixture(3, covariance_type="diag", random_state=0, progress=False).fit(X)
    assert est.weights_.shape == (3,) and est.means_.shape == (3, 2)
    assert est.covariances_.shape == (3, 2) and est.converged_
    assert est.n_features_in_ == 2 and isinstance(est.means_, np.ndarray)
    assert est.history_ == sorted(est.history_)
    draws, labels = est.sample(500)
    assert draws.shape == (500, 2) and labels.shape == (500,)
    assert np.abs(draws.mean(0) - X.mean(0)).max() < 0.6


def test_float32_stays_float32_and_300_features_fit():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1500, 300)).astype(np.float32)
    X[:500] += 2.0
    est = GaussianMixture(3, progress=False, random_state=0, max_iter=20).fit(X)
    assert est.params_.means.dtype == torch.float32
    assert np.all(np.isfinite(est.means_)) and np.all(np.isfinite(est.covariances_))
    assert np.isfinite(est.score(X))
    est = GaussianMixture(2, dtype="float32", progress=False, random_state=0).fit(X[:, :5])
    assert est.params_.means.dtype == torch.float32


def test_save_load_round_trip(blobs, tmp_path):
    X, _ = blobs
    est = GaussianMixture(3, covariance_type="tied", random_state=0, progress=False).fit(X)
    path = tmp_path / "gmm.pt"
    est.save(path)
    back = GaussianMixture.load(path, device="cpu")
    np.testing.assert_allclose(back.predict_proba(X), est.predict_proba(X))
    assert back.score(X) == pytest.approx(est.score(X))
    assert back.get_params() == {**est.get_params(), "device": "cpu"}


def test_get_set_params_clone():
    est = GaussianMixture(4, covariance_type="diag", inference="svi")
    assert est.get_params()["n_components"] == 4
    est.set_params(n_components=2)
    copy = clone(est)
    assert copy.n_components == 2 and copy.inference == "svi" and copy is not est


def test_random_state_makes_fits_repeatable(blobs):
    X, _ = blobs
    a = GaussianMixture(3, init_params="random", random_state=7, progress=False).fit(X)
    b = GaussianMixture(3, init_params="random", random_state=7, progress=False).fit(X)
    np.testing.assert_array_equal(a.means_, b.means_)


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize(
    ("X", "match"),
    [
        (np.array([[0.0, np.nan], [1.0, 2.0], [2.0, 1.0]]), "NaN"),
        (np.array([[0.0, np.inf], [1.0, 2.0], [2.0, 1.0]]), "infinity"),
        (np.arange(6.0), "Expected 2D array"),
        (np.zeros((3, 2, 2)), "dim 3"),
        (np.array([["a", "b"], ["c", "d"]]), "convert"),
    ],
    ids=["nan", "inf", "1d", "3d", "strings"],
)
def test_bad_x_raises_clear_error(X, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture(1, progress=False).fit(X)


def test_fewer_samples_than_components():
    with pytest.raises(ValueError, match="n_samples=3 should be >= n_components=5"):
        GaussianMixture(5, progress=False).fit(np.random.default_rng(0).normal(size=(3, 2)))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"covariance_type": "banana"}, "covariance_type='banana'"),
        ({"inference": "magic"}, "inference='magic'"),
        ({"n_components": 0}, "n_components=0"),
        ({"n_init": 0}, "n_init=0"),
        ({"reg_covar": -1.0}, "reg_covar=-1.0"),
        ({"init_params": "nope"}, "init_params='nope'"),
        ({"dtype": "int8"}, "dtype='int8'"),
        ({"device": "tpu"}, "device='tpu'"),
        ({"means_init": np.zeros((2, 2))}, "means_init has shape"),
        ({"weights_init": np.array([0.2, 0.2, 0.2])}, "weights_init must"),
    ],
)
def test_bad_arguments(blobs, kwargs, match):
    X, _ = blobs
    with pytest.raises(ValueError, match=match):
        GaussianMixture(**{"n_components": 3, "progress": False, **kwargs}).fit(X)


def test_predict_wrong_number_of_features(blobs):
    X, _ = blobs
    est = GaussianMixture(2, progress=False, random_state=0).fit(X)
    with pytest.raises(ValueError, match="X has 3 features, but GaussianMixture is expecting 2"):
        est.predict(np.zeros((4, 3)))


@pytest.mark.parametrize("method", ["predict", "predict_proba", "score", "score_samples", "bic"])
def test_not_fitted(method, blobs):
    with pytest.raises(NotFittedError, match="call fit"):
        getattr(GaussianMixture(2), method)(blobs[0])


@pytest.mark.parametrize("batch_size", [None, 200])
def test_svi_resume_equals_uninterrupted(blobs, tmp_path, batch_size):
    X, _ = blobs
    common = dict(inference="svi", random_state=3, tol=0, progress=False, batch_size=batch_size)
    straight = GaussianMixture(3, max_iter=60, **common).fit(X)
    path = str(tmp_path / "ckpt.pt")
    GaussianMixture(3, max_iter=30, checkpoint_path=path, **common).fit(X)
    resumed = GaussianMixture(3, max_iter=60, checkpoint_path=path, **common).fit(X, resume=True)
    assert resumed.n_iter_ == 60
    np.testing.assert_array_equal(resumed.means_, straight.means_)
    np.testing.assert_array_equal(resumed.history_, straight.history_)


@settings(max_examples=30, deadline=None)
@given(
    n_samples=st.integers(1, 12),
    n_features=st.integers(1, 4),
    bad=st.sampled_from([np.nan, np.inf, -np.inf]),
    position=st.integers(0, 10_000),
)
def test_hypothesis_nonfinite_input_always_raises_value_error(n_samples, n_features, bad,
                                                              position):
    X = np.random.default_rng(position).normal(size=(n_samples, n_features))
    X.flat[position % X.size] = bad
    with pytest.raises(ValueError, match="NaN|infinity"):
        GaussianMixture(1, progress=False).fit(X)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("inference", ["em", "svi"])
def test_cuda_fit_matches_cpu(blobs, inference):
    X, _ = blobs
    kwargs = dict(inference=inference, random_state=0, progress=False, max_iter=50,
                  init_params="random_from_data")
    cpu = GaussianMixture(3, device="cpu", **kwargs).fit(X)
    gpu = GaussianMixture(3, device="cuda", **kwargs).fit(X)
    assert gpu.params_.means.is_cuda
    assert abs(gpu.score(X) - cpu.score(X)) < 1e-3


@pytest.mark.parametrize("inference, guide", [("em", "map"), ("svi", "map"),
                                              ("svi", "mean_field")])
def test_posterior_params_without_a_param_store_scope(blobs, inference, guide):
    # The fit's Pyro parameters live in its own scope: the global store stays empty, and
    # posterior_params() reads the guide's constrained values from the fit's scope.
    import pyro

    X = blobs[0]
    pyro.clear_param_store()
    est = GaussianMixture(3, inference=inference, guide=guide, max_iter=30, random_state=0,
                          progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X)
    assert list(pyro.get_param_store().keys()) == []
    params = est.posterior_params()
    sites = {"weights", "means", "variances", "corr_cholesky"}
    if guide == "mean_field":  # the Normals' parameters, and each site's median
        assert {f"{kind}.{site}" for kind in ("locs", "scales") for site in sites} <= set(params)
        assert sites <= set(params)
    else:
        assert set(params) == sites
    np.testing.assert_allclose(params["means"], est.means_, rtol=1e-6)
    np.testing.assert_allclose(params["weights"], est.weights_, rtol=1e-6)
    assert (params["variances"] > 0).all()  # constrained, not the unconstrained logs
