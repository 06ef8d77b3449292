"""The one estimator contract, checked on every estimator the registry lists."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from estimator_configs import SMALL, make_small
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from ppl_mixtures import estimators, registry
from ppl_mixtures.datasets import make_gmm

#: Arguments every estimator takes, with the same meaning.
SHARED_ARGUMENTS = ("n_components", "max_iter", "tol", "lr", "batch_size", "random_state",
                    "device", "dtype", "progress", "checkpoint_path", "distributed")
#: Arguments that take arrays or user objects, checked by the estimator where it uses them.
UNDECLARED = {"weights_init", "means_init", "precisions_init"}


@pytest.fixture(scope="module")
def X():
    return make_gmm(n_samples=120, n_components=3, n_features=4, random_state=3)[0]



def test_the_registry_lists_every_estimator():
    assert {registry.estimator_class(name) for name in registry.FAMILIES} == set(
        estimators.ESTIMATORS)
    for name in registry.FAMILIES:
        assert registry.family_of(registry.estimator_class(name)).name == name


@pytest.mark.parametrize("name", list(SMALL))
def test_constructor_stores_arguments_and_declares_their_constraints(name):
    cls = registry.estimator_class(name)
    arguments = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    assert set(SHARED_ARGUMENTS) <= set(arguments)
    est = cls()
    assert est.get_params() == {a: inspect.signature(cls).parameters[a].default
                                for a in arguments}
    assert set(cls._parameter_constraints) == set(arguments) - UNDECLARED
    copy = clone(make_small(name))
    assert copy.get_params() == make_small(name).get_params()


@pytest.mark.parametrize("name", list(SMALL))
@pytest.mark.parametrize("argument,value", [("n_components", 0), ("max_iter", -1),
                                            ("tol", -1.0), ("lr", 0.0), ("batch_size", 0),
                                            ("progress", "yes"), ("distributed", 1.5),
                                            ("random_state", "seed")])
def test_bad_arguments_name_themselves_at_fit(X, name, argument, value):
    est = make_small(name, **{argument: value})
    with pytest.raises(ValueError, match=f"{argument}={value!r}"):
        est.fit(X)


@pytest.mark.parametrize("name", list(SMALL))
def test_not_fitted_then_fitted(X, name):
    est = make_small(name)
    for call in (lambda: est.predict(X), lambda: est.score_samples(X), lambda: est.sample(2),
                 lambda: est.save("unused.safetensors")):
        with pytest.raises(NotFittedError, match="call fit"):
            call()
    assert est.fit(X) is est
    assert est.n_features_in_ == 4 and isinstance(est.converged_, bool)
    assert est.n_iter_ >= 1 and len(est.history_) >= 1
    assert isinstance(est.lower_bound_, float) and np.isfinite(est.lower_bound_)
    assert est.fit_seconds_ > 0 and est.model_ is not None and est.guide_ is not None
    proba = est.predict_proba(X)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-6)  # GMVAE: float32
    np.testing.assert_array_equal(est.predict(X), proba.argmax(1))
    assert est.score_samples(X).shape == (120,) and isinstance(est.score(X), float)
    samples, labels = est.sample(5)
    assert samples.shape == (5, 4) and labels.shape == (5,)
    with pytest.raises(ValueError, match="features"):
        est.predict(X[:, :3])


@pytest.mark.parametrize("name", ["gmm", "mfa", "dgmm"])
def test_likelihood_models_offer_information_criteria(X, name):
    est = make_small(name).fit(X)
    assert est.bic(X) > est.aic(X) - 1e9 and np.isfinite(est.bic(X))
    # EM's lower_bound_ is scikit-learn's: the last E-step's value, before the last M-step;
    # the fitted parameters' own log-likelihood is score(X), one more E-step
    assert est.lower_bound_ == est.lower_bounds_[-1] == est.history_[-1]
    assert max(est.restart_log_likelihoods_) == pytest.approx(est.score(X), rel=1e-9)
    assert est.score(X) >= est.lower_bound_ - 1e-9


def test_factor_models_share_the_noise_variances_name(X):
    assert make_small("mfa").fit(X).noise_variances_.shape == (3, 4)
    assert [v.shape for v in make_small("dgmm").fit(X).noise_variances_] == [(2, 4), (2, 2)]
