"""The Bayesian GMM's model file: its bound is the Pyro model's ELBO, CAVI's bound is scikit-learn's.

- :func:`bayesian_gmm.elbo` at any ``q`` equals ``-TraceEnum_ELBO`` of the Pyro model with
  :class:`VariationalGuide` at the same parameters, in expectation: the Monte Carlo mean of the
  loss over particles lies within 4 standard errors of it (measured: within 1.3 standard
  errors for all eight covariance and weight-prior types, 400 particles).
- At the CAVI update of ``q`` for given responsibilities, the full ELBO minus scikit-learn's
  bound (constants dropped) is one constant of the priors and the data size, whatever the
  responsibilities, and the full ELBO never decreases under exact CAVI (``reg_covar=0``).
- The Wishart KL against a Monte Carlo estimate from torch's Wishart.
"""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro.infer import TraceEnum_ELBO

from ppl_mixtures.inference.em import cavi_gmm
from ppl_mixtures.models import bayesian_gmm as bgmm

CONFIGS = [(w, c) for w in bgmm.WEIGHT_PRIOR_TYPES for c in bgmm.COVARIANCE_TYPES]


def _data(n_per_cluster=15, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.cat([torch.randn(n_per_cluster, 2, generator=generator),
                      torch.randn(n_per_cluster, 2, generator=generator) + 4.0])


def _priors(x, weight_type, covariance_type):
    covariance = {"full": torch.cov(x.T), "tied": torch.cov(x.T), "diag": x.var(0),
                  "spherical": x.var(0).mean()}[covariance_type]
    return bgmm.BayesianGMMPriors(torch.tensor(0.5), torch.tensor(1.0), x.mean(0),
                                  torch.tensor(3.0), covariance, covariance_type, weight_type)


def _cavi_q(x, priors, n_components=3, iterations=3, seed=1):
    generator = torch.Generator().manual_seed(seed)
    resp = torch.softmax(torch.randn(x.shape[0], n_components, generator=generator), -1)
    q = cavi_gmm.initial_params(x, resp, priors, 0.0)
    e_step, m_step = cavi_gmm.make_steps(priors, 0.0)
    for _ in range(iterations):
        q = m_step(e_step(x, q))
    return q


def _check_identity(weight_type, covariance_type, n_particles):
    x = _data()
    priors = _priors(x, weight_type, covariance_type)
    q = _cavi_q(x, priors)
    resp, _ = cavi_gmm.responsibilities(x, q)
    expected = float(bgmm.elbo(x, resp, q, priors))
    model = bgmm.BayesianGaussianMixtureModel(3, priors)
    guide = bgmm.VariationalGuide(q)
    loss = TraceEnum_ELBO(max_plate_nesting=1)
    losses = torch.tensor([loss.loss(model, guide, x) for _ in range(n_particles)])
    standard_error = float(losses.std()) / n_particles ** 0.5
    assert abs(-float(losses.mean()) - expected) < 4.0 * standard_error + 1e-9


def test_elbo_is_trace_enum_elbo_in_expectation():
    _check_identity("dirichlet_process", "full", 80)


@pytest.mark.slow
@pytest.mark.parametrize("weight_type, covariance_type", CONFIGS)
def test_elbo_is_trace_enum_elbo_in_expectation_every_type(weight_type, covariance_type):
    _check_identity(weight_type, covariance_type, 400)


def test_fixed_responsibilities_guide_matches_elbo_at_those_responsibilities():
    """With ``q(assignment)`` given (not the update), the bound follows those values."""
    x = _data()
    priors = _priors(x, "dirichlet_distribution", "diag")
    q = _cavi_q(x, priors)
    resp = torch.full((x.shape[0], 3), 1.0 / 3)
    expected = float(bgmm.elbo(x, resp, q, priors))
    model = bgmm.BayesianGaussianMixtureModel(3, priors)
    guide = bgmm.VariationalGuide(q, responsibilities=resp)
    loss = TraceEnum_ELBO(max_plate_nesting=1)
    losses = torch.tensor([loss.loss(model, guide, x) for _ in range(80)])
    assert abs(-float(losses.mean()) - expected) < 4.0 * float(losses.std()) / 80 ** 0.5


@pytest.mark.parametrize("weight_type, covariance_type", CONFIGS)
def test_full_elbo_is_sklearn_bound_plus_a_constant_and_never_decreases(weight_type,
                                                                       covariance_type):
    x = _data(20, seed=3)
    priors = _priors(x, weight_type, covariance_type)
    generator = torch.Generator().manual_seed(4)
    resp = torch.softmax(3.0 * torch.randn(x.shape[0], 4, generator=generator), -1)
    q = cavi_gmm.initial_params(x, resp, priors, 0.0)
    differences, bounds = [], []
    for _ in range(15):
        resp, _ = cavi_gmm.responsibilities(x, q)
        stats = cavi_gmm.statistics(x, resp, q.means, covariance_type)
        q = cavi_gmm.m_step(stats, priors, 0.0)
        full = float(bgmm.elbo(x, resp, q, priors))
        differences.append(full - float(bgmm.sklearn_lower_bound(stats.entropy, q)))
        bounds.append(full)
    assert max(differences) - min(differences) < 1e-9 * abs(differences[0])
    assert all(b >= a - 1e-9 * abs(a) for a, b in zip(bounds, bounds[1:], strict=False))
    assert bounds[-1] > bounds[0]


def test_kl_wishart_against_monte_carlo():
    generator = torch.Generator().manual_seed(5)
    factor = torch.randn(3, 3, generator=generator)
    scale_inverse_q = factor @ factor.T + 3.0 * torch.eye(3)
    scale_inverse_p = torch.eye(3) * 2.0
    dof_q, dof_p = torch.tensor(7.5), torch.tensor(4.0)
    exact = bgmm.kl_wishart(dof_q, scale_inverse_q, dof_p, scale_inverse_p)
    assert float(bgmm.kl_wishart(dof_q, scale_inverse_q, dof_q, scale_inverse_q)) == \
        pytest.approx(0.0, abs=1e-12)
    q = torch.distributions.Wishart(dof_q, precision_matrix=scale_inverse_q)
    p = torch.distributions.Wishart(dof_p, precision_matrix=scale_inverse_p)
    torch.manual_seed(6)
    draws = q.sample((20000,))
    ratios = q.log_prob(draws) - p.log_prob(draws)
    assert float(exact) == pytest.approx(float(ratios.mean()),
                                         abs=4.0 * float(ratios.std()) / 20000 ** 0.5)


@pytest.mark.parametrize("weight_type", bgmm.WEIGHT_PRIOR_TYPES)
def test_model_sites_and_prior_draws(weight_type):
    x = _data()
    priors = _priors(x, weight_type, "full")
    model = bgmm.BayesianGaussianMixtureModel(3, priors)
    trace = pyro.poutine.trace(model).get_trace(n_samples=7)
    names = {name for name, site in trace.nodes.items() if site["type"] == "sample"}
    weight_site = "sticks" if weight_type == "dirichlet_process" else "weights"
    assert {weight_site, "precisions", "means", "assignment", "obs"} <= names
    assert trace.nodes["obs"]["value"].shape == (7, 2)
    assert trace.nodes["precisions"]["value"].shape == (3, 2, 2)


def test_expected_weights_dirichlet_process_follow_the_sticks():
    x = _data()
    priors = _priors(x, "dirichlet_process", "spherical")
    q = _cavi_q(x, priors)
    a, b = q.weight_concentration
    sticks = a / (a + b)
    unnormalised = torch.stack([sticks[0], sticks[1] * (1 - sticks[0]),
                                sticks[2] * (1 - sticks[0]) * (1 - sticks[1])])
    torch.testing.assert_close(bgmm.expected_weights(q), unnormalised / unnormalised.sum())
