"""An EM fit's point-mass ``guide_`` is built when first read, with the same result."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from ppl_mixtures import GaussianMixture, MixtureOfFactorAnalyzers
from ppl_mixtures.datasets import make_gmm


@pytest.fixture(scope="module")
def data():
    X, _ = make_gmm(300, n_components=3, n_features=4, covariance_type="full", random_state=0)
    return X


@pytest.mark.parametrize("make", [
    lambda: GaussianMixture(3, covariance_type="full", random_state=0, progress=False),
    lambda: MixtureOfFactorAnalyzers(3, n_factors=1, random_state=0, progress=False),
])
def test_guide_is_built_on_first_read_and_ties_em_to_the_elbo(data, make):
    est = make().fit(data)
    assert "_guide" not in vars(est) and "_deferred_guide" in vars(est)
    state = {name: value.clone() for name, value in est.param_store_state_["params"].items()}
    # the identity of EM and MAP-SVI: -elbo_loss = log-likelihood + log prior at params_
    log_joint = est.score(data) * len(data) + float(est.model_.log_prior(est.params_))
    assert -est.elbo_loss(data) == pytest.approx(log_joint, rel=1e-10)
    assert "_guide" in vars(est) and "_deferred_guide" not in vars(est)
    # the guide's values live in the fit's own scope, beside what the fit left there
    assert set(state) <= set(est.param_store_state_["params"])
    assert est.posterior_params()  # reads the built guide's parameters


def test_a_deferred_guide_survives_pickle(data):
    est = GaussianMixture(3, random_state=0, progress=False).fit(data)
    back = pickle.loads(pickle.dumps(est))
    np.testing.assert_allclose(back.elbo_loss(data), est.elbo_loss(data), rtol=1e-12)


def test_a_refit_builds_the_guide_of_the_new_fit(data):
    est = GaussianMixture(3, random_state=0, progress=False).fit(data)
    first = est.elbo_loss(data)
    est.set_params(n_components=2).fit(data)
    log_joint = est.score(data) * len(data) + float(est.model_.log_prior(est.params_))
    assert -est.elbo_loss(data) == pytest.approx(log_joint, rel=1e-10)
    assert est.elbo_loss(data) != first
