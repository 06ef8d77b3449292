"""BayesianGaussianMixture with SVI: swapped priors and sample weights.

Measured (CPU, float64, full batch, Adam):

- The conjugate priors passed as ``pyro.distributions`` objects (float64 tensors) give the very
  fit of the hyperparameters from the same seed: equal histories, means and ``elbo_`` (0.0
  difference, both weight prior types). From Python floats (float32 tensors, cast) the fits
  differ by ~1e-9, the rounding of ``alpha``.
- A StudentT(2, 0, 0.7) prior on the means against the conjugate prior of the same scale
  (``mean_prior=0``, ``mean_precision_prior=1``, ``covariance_prior=I``, ``nu0=2``), ten points
  around (10, 10): over seeds 0-3 (20 steps, lr 0.2) the fitted mean lies 0.16-0.43 from the
  data mean with StudentT and 1.24-1.63 with the conjugate prior (40 steps, lr 0.1:
  0.09-0.39 and 1.40-1.74; 150 steps, lr 0.05: 0.05-0.14 and 1.34-1.39), and the StudentT
  ELBO is higher by 11.9-13.2 nats (20 steps): the heavy tail lets the data overrule a prior
  it contradicts.
- Integer sample weights against repeated rows, the same start (``resp_init`` repeated), 50
  steps: ``elbo_`` equal to 2.7e-14 relative, means to 1.7e-12, losses per step to 2.6e-13
  (full and spherical, 4 components); zero weights against the rows removed to 1.9e-13; unit
  weights equal to no weights exactly. Asserted at 1e-8 (10 steps, 3 components).
"""

from __future__ import annotations

import warnings

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning

from ppl_mixtures.estimators.bayesian import BayesianGaussianMixture

QUIET = dict(progress=False, device="cpu")
F64 = dict(dtype=torch.float64)


@pytest.fixture(autouse=True)
def _no_convergence_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


def _two_blobs(seed=0):
    rng = np.random.RandomState(seed)
    return np.vstack([rng.randn(30, 2), rng.randn(30, 2) * 0.6 + [5.0, 5.0]])


def _conjugate_as_distributions(est, weight_type, n_components):
    """The priors the hyperparameters of a fitted ``est`` set, as distributions."""
    alpha = torch.tensor(est.weight_concentration_prior_, **F64)
    site_priors = {"precisions": dist.Wishart(
        torch.tensor(est.degrees_of_freedom_prior_, **F64),
        precision_matrix=torch.as_tensor(est.covariance_prior_, **F64))}
    if weight_type == "dirichlet_process":
        site_priors["sticks"] = dist.Beta(torch.tensor(1.0, **F64), alpha)
    else:
        site_priors["weights"] = dist.Dirichlet(alpha.expand(n_components))
    return site_priors


@pytest.mark.parametrize("weight_type", ["dirichlet_process", "dirichlet_distribution"])
def test_conjugate_priors_as_distributions_give_the_same_fit(weight_type):
    X = _two_blobs()
    args = dict(n_components=3, inference="svi", max_iter=8, tol=0, random_state=0,
                weight_concentration_prior_type=weight_type, **QUIET)
    plain = BayesianGaussianMixture(**args).fit(X)
    swapped = BayesianGaussianMixture(
        priors=_conjugate_as_distributions(plain, weight_type, 3), **args).fit(X)
    np.testing.assert_array_equal(swapped.history_, plain.history_)
    np.testing.assert_array_equal(swapped.means_, plain.means_)
    np.testing.assert_array_equal(swapped.weight_concentration_, plain.weight_concentration_)
    assert swapped.elbo_ == plain.elbo_
    assert swapped.lower_bound_ == swapped.elbo_  # no scikit-learn scale once swapped


def test_heavy_tailed_mean_prior_lets_distant_data_win():
    X = np.random.RandomState(0).randn(10, 2) + 10.0
    args = dict(n_components=1, mean_prior=[0.0, 0.0], mean_precision_prior=1.0,
                covariance_prior=np.eye(2), degrees_of_freedom_prior=2.0, inference="svi",
                max_iter=20, tol=0, lr=0.2, random_state=0, **QUIET)
    conjugate = BayesianGaussianMixture(**args).fit(X)
    student = BayesianGaussianMixture(priors={"means": dist.StudentT(2.0, 0.0, 0.7)},
                                      **args).fit(X)
    distance = lambda est: float(np.linalg.norm(est.means_[0] - X.mean(0)))  # noqa: E731
    assert distance(student) < 0.7 < 1.0 < distance(conjugate)
    assert student.elbo_ > conjugate.elbo_ + 5.0


def test_save_load_round_trip_with_swapped_priors(tmp_path):
    X = _two_blobs()
    priors = {"means": dist.StudentT(3.0, 0.0, 5.0), "sticks": dist.Beta(1.0, 2.0),
              "precisions": dist.Wishart(torch.tensor(3.0), covariance_matrix=torch.eye(2))}
    est = BayesianGaussianMixture(2, inference="svi", max_iter=5, priors=priors,
                                  random_state=0, **QUIET).fit(X)
    path = tmp_path / "bgmm.safetensors"
    est.save(path)
    loaded = BayesianGaussianMixture.load(path, device="cpu")
    assert sorted(loaded.model_.priors) == ["means", "precisions", "sticks"]
    assert type(loaded.model_.priors["precisions"]) is dist.Wishart
    np.testing.assert_array_equal(loaded.score_samples(X), est.score_samples(X))
    assert loaded.elbo_ == est.elbo_
    assert loaded.get_params()["priors"].keys() == priors.keys()
    # the rebuilt priors score as the fitted ones did
    for name, prior in est.model_.priors.items():
        draw = prior.sample()
        torch.testing.assert_close(loaded.model_.priors[name].log_prob(draw),
                                   prior.log_prob(draw))


def test_swapped_priors_need_svi():
    X = _two_blobs()
    with pytest.raises(ValueError, match="inference='svi'"):
        BayesianGaussianMixture(2, priors={"means": dist.Normal(0.0, 1.0)}, **QUIET).fit(X)
    with pytest.raises(ValueError, match="keys among"):
        BayesianGaussianMixture(2, inference="svi", priors={"variances": dist.Normal(0.0, 1.0)},
                                **QUIET).fit(X)


# ---------------------------------------------------------------------------- sample weights


def _compare(a, b, tolerance):
    assert a.elbo_ == pytest.approx(b.elbo_, rel=tolerance)
    np.testing.assert_allclose(a.history_, b.history_, rtol=tolerance)
    for name in ("means_", "weights_", "covariances_", "weight_concentration_"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=tolerance,
                                   atol=tolerance)


def test_svi_integer_weights_equal_repeated_rows():
    X = _two_blobs()[::2]
    counts = np.random.RandomState(2).randint(0, 4, size=len(X))
    resp = np.random.RandomState(3).dirichlet(np.ones(3), size=len(X))
    args = dict(n_components=3, inference="svi", max_iter=10, tol=0, random_state=0, **QUIET)
    weighted = BayesianGaussianMixture(resp_init=resp, **args).fit(
        X, sample_weight=counts.astype(float))
    repeated = BayesianGaussianMixture(resp_init=np.repeat(resp, counts, 0), **args).fit(
        np.repeat(X, counts, 0))
    _compare(weighted, repeated, 1e-8)
    keep = counts > 0
    zero = BayesianGaussianMixture(resp_init=resp, **args).fit(X, sample_weight=keep * 1.0)
    _compare(zero, BayesianGaussianMixture(resp_init=resp[keep], **args).fit(X[keep]), 1e-8)
    unit = BayesianGaussianMixture(resp_init=resp, **args).fit(X, sample_weight=np.ones(len(X)))
    plain = BayesianGaussianMixture(resp_init=resp, **args).fit(X)
    np.testing.assert_array_equal(unit.history_, plain.history_)
    np.testing.assert_array_equal(unit.means_, plain.means_)
