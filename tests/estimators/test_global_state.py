"""Fits, predictions and draws leave the user's global state alone and are reproducible.

For every fit path: Python's, NumPy's and torch's global generators are as they were after
``fit`` + ``predict`` + ``score`` + ``sample`` (+ ``transform`` where offered), a user's own
entries in Pyro's param store survive, and the same ``random_state`` gives the same result bit
for bit whatever the global state was.
"""

from __future__ import annotations

import random

import numpy as np
import pyro
import pytest
import torch

from ppl_mixtures import (
    GMVAE,
    BayesianGaussianMixture,
    DeepGaussianMixture,
    GaussianMixture,
    MixtureOfFactorAnalyzers,
)
from ppl_mixtures.datasets import make_gmm

QUIET = dict(progress=False, device="cpu", random_state=0)

PATHS = {
    "gmm-em": lambda: GaussianMixture(3, init_params="random", **QUIET),
    "gmm-svi": lambda: GaussianMixture(3, inference="svi", max_iter=30, batch_size=50, **QUIET),
    "gmm-svi-mean-field": lambda: GaussianMixture(3, inference="svi", guide="mean_field",
                                                  max_iter=30, **QUIET),
    "gmm-sgd": lambda: GaussianMixture(3, covariance_type="diag", inference="sgd", max_iter=2,
                                       batch_size=20, **QUIET),
    "gmm-nuts": lambda: GaussianMixture(2, covariance_type="spherical", inference="nuts",
                                        max_iter=5, num_warmup=5, **QUIET),
    "mfa-em": lambda: MixtureOfFactorAnalyzers(3, 1, init_params="random", **QUIET),
    "dgmm-em": lambda: DeepGaussianMixture((2, 2), (2, 1), max_iter=10, **QUIET),
    "dgmm-svi": lambda: DeepGaussianMixture((2, 1), (2, 1), inference="svi", max_iter=10,
                                            **QUIET),
    "gmvae": lambda: GMVAE(3, max_iter=2, batch_size=50, init_restarts=3, **QUIET),
    "bgmm-cavi": lambda: BayesianGaussianMixture(3, **QUIET),
    "bgmm-svi": lambda: BayesianGaussianMixture(3, inference="svi", max_iter=20, **QUIET),
}


@pytest.fixture(scope="module")
def X():
    return make_gmm(n_samples=150, n_components=3, n_features=4, random_state=2)[0]


def _global_state():
    return (torch.get_rng_state().clone(), np.random.get_state(), random.getstate())


def _assert_unchanged(before, after):
    assert torch.equal(before[0], after[0]), "torch's global generator moved"
    assert before[1][0] == after[1][0] and np.array_equal(before[1][1], after[1][1]) and \
        before[1][2:] == after[1][2:], "NumPy's global generator moved"
    assert before[2] == after[2], "Python's global generator moved"


def _use(est, X):
    est.fit(X)
    outputs = [est.predict_proba(X), est.score_samples(X), est.sample(4)[0]]
    if hasattr(est, "transform"):
        outputs.append(est.transform(X))
    return outputs


@pytest.mark.parametrize("key", list(PATHS))
def test_fit_predict_sample_leave_global_rngs_alone(X, key):
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    before = _global_state()
    _use(PATHS[key](), X)
    _assert_unchanged(before, _global_state())


@pytest.mark.parametrize("key", list(PATHS))
def test_same_random_state_same_result_whatever_the_global_state(X, key):
    torch.manual_seed(1)
    first = _use(PATHS[key](), X)
    torch.manual_seed(2)
    np.random.seed(2)
    random.seed(2)
    second = _use(PATHS[key](), X)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("key", ["gmm-em", "gmm-svi", "gmvae"])
def test_users_param_store_survives_a_fit(X, key):
    pyro.clear_param_store()
    mine = pyro.param("my_scale", torch.tensor(2.5), constraint=pyro.distributions.constraints
                      .positive)
    PATHS[key]().fit(X)
    store = pyro.get_param_store()
    assert list(store.keys()) == ["my_scale"]
    assert store["my_scale"] is mine or float(store["my_scale"]) == 2.5


def test_partial_fit_and_load_leave_global_rngs_alone(X, tmp_path):
    est = GaussianMixture(3, covariance_type="diag", inference="sgd", batch_size=25, **QUIET)
    before = _global_state()
    est.partial_fit(X[:75]).partial_fit(X[75:])
    est.save(tmp_path / "sgd.safetensors")
    GaussianMixture.load(tmp_path / "sgd.safetensors", device="cpu").partial_fit(X)
    _assert_unchanged(before, _global_state())
