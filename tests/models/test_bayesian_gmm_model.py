"""The Bayesian GMM's model file: its bound is the Pyro model's ELBO, CAVI's bound is scikit-learn's.

- :func:`bayesian_gmm.elbo` at any ``q`` equals ``-TraceEnum_ELBO`` of the Pyro model with
  :class:`VariationalGuide` at the same parameters, in expectation: the Monte Carlo mean of the
  loss over particles lies within 4 standard errors of it (measured: within 1.3 standard
  errors for all eight covariance and weight-prior types, 400 particles).
- At the CAVI update of ``q`` for given responsibilities, the full ELBO minus scikit-learn's
  bound (constants dropped) is one constant of the priors and the data size, whatever the
  responsibilities, and the full ELBO never decreases under exact CAVI (``reg_covar=0``).
- The Wishart KL against a Monte Carlo estimate from torch's Wishart.
- Swapped priors: the identity above still holds (measured, 200 particles, within 0.3-2.3
  standard errors for three types with StudentT means and Uniform sticks or Dirichlet(2)
  weights); the conjugate priors passed as distributions give the very same KL terms; the
  Monte Carlo KL terms (:data:`bayesian_gmm.MONTE_CARLO_DRAWS` draws) agree with the closed
  forms (Beta, Wishart) within 4 of their own standard errors; shapes and supports the
  guide cannot serve are refused with the site's name.
- Sample weights scale each row of the loss: at equal parameters and the same draws,
  integer weights give the loss of repeated rows, zero weights that of the rows removed,
  unit weights that of no weights (measured: equal to 6e-14, asserted at 1e-10 relative).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
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


# --------------------------------------------------------------------------- swapped priors


def _swapped(weight_type, means=True):
    """A non-conjugate prior on the weights (or sticks) and on the means."""
    site_priors = {"sticks": dist.Uniform(0.0, 1.0)} if weight_type == "dirichlet_process" \
        else {"weights": dist.Dirichlet(torch.full((3,), 2.0))}
    if means:
        site_priors["means"] = dist.StudentT(3.0, 2.0, 3.0)
    return site_priors


def _check_identity_swapped(weight_type, covariance_type, n_particles):
    pyro.clear_param_store()
    x = _data()
    priors = _priors(x, weight_type, covariance_type)
    q = _cavi_q(x, priors)
    resp, _ = cavi_gmm.responsibilities(x, q)
    model = bgmm.BayesianGaussianMixtureModel(3, priors, _swapped(weight_type))
    expected = float(bgmm.elbo(x, resp, q, priors, site_priors=model.priors))
    assert expected != pytest.approx(float(bgmm.elbo(x, resp, q, priors)), rel=1e-3)
    guide = bgmm.VariationalGuide(q)
    loss = TraceEnum_ELBO(max_plate_nesting=1)
    losses = torch.tensor([loss.loss(model, guide, x) for _ in range(n_particles)])
    standard_error = float(losses.std()) / n_particles ** 0.5
    assert abs(-float(losses.mean()) - expected) < 4.0 * standard_error


def test_elbo_with_swapped_priors_is_trace_enum_elbo_in_expectation():
    _check_identity_swapped("dirichlet_process", "full", 80)


@pytest.mark.slow
@pytest.mark.parametrize("weight_type, covariance_type", CONFIGS)
def test_elbo_with_swapped_priors_every_type(weight_type, covariance_type):
    _check_identity_swapped(weight_type, covariance_type, 300)


@pytest.mark.parametrize("weight_type", bgmm.WEIGHT_PRIOR_TYPES)
def test_conjugate_priors_as_distributions_give_the_same_kl(weight_type):
    x = _data()
    priors = _priors(x, weight_type, "full")
    q = _cavi_q(x, priors)
    alpha = priors.weight_concentration
    site_priors = {"precisions": dist.Wishart(priors.degrees_of_freedom,
                                              precision_matrix=priors.scale_inverse())}
    if weight_type == "dirichlet_process":
        site_priors["sticks"] = dist.Beta(torch.ones_like(alpha), alpha)
    else:
        site_priors["weights"] = dist.Dirichlet(alpha.expand(3))
    checked = bgmm.check_site_priors(site_priors, 3, 2, weight_type, x)
    assert float(bgmm.kl_weights(q, priors, checked)) == float(bgmm.kl_weights(q, priors))
    assert float(bgmm.kl_means_precisions(q, priors, checked)) == \
        float(bgmm.kl_means_precisions(q, priors))


def test_monte_carlo_kl_terms_agree_with_the_closed_forms():
    """``.mask(True)`` hides a prior's type, so its KL takes the Monte Carlo path."""
    x = _data().double()
    priors = bgmm.BayesianGMMPriors(*(t.double() for t in _priors(x, "dirichlet_process",
                                                                   "full").tensors().values()),
                                    "full", "dirichlet_process")
    q = _cavi_q(x, priors)
    sticks = dist.Beta(torch.tensor(1.0, dtype=x.dtype), torch.tensor(2.0, dtype=x.dtype))
    wishart = dist.Wishart(torch.tensor(4.0, dtype=x.dtype),
                           covariance_matrix=torch.eye(2, dtype=x.dtype))
    for name, prior, kl in (("sticks", sticks, bgmm.kl_weights),
                            ("precisions", wishart, bgmm.kl_means_precisions)):
        closed = float(kl(q, priors, {name: prior}))
        sampled = float(kl(q, priors, {name: prior.mask(True)}))
        with bgmm.seeded_global_rng(0):
            draws = bgmm.draw_globals(q, bgmm.MONTE_CARLO_DRAWS)[name]
        spread = float(prior.log_prob(draws).reshape(len(draws), -1).sum(-1).std())
        assert sampled != closed
        assert abs(sampled - closed) < 4.0 * spread / bgmm.MONTE_CARLO_DRAWS ** 0.5


@pytest.mark.parametrize("site_priors, message", [
    ({"weights": dist.Dirichlet(torch.ones(3))}, "'weights' is a site of "
                                                 "weight_concentration_prior_type"),
    ({"means": dist.LogNormal(0.0, 1.0)}, r"priors\['means'\] has support"),
    ({"sticks": dist.Uniform(0.2, 1.0)}, r"priors\['sticks'\] has support"),
    ({"precisions": dist.Gamma(1.0, 1.0)}, r"priors\['precisions'\] has batch_shape \(\) and "
                                           r"event_shape \(\); expected event_shape \(2, 2\)"),
    ({"means": dist.Normal(torch.zeros(4), 1.0)}, r"priors\['means'\] has batch_shape \(4,\)"),
    ({"means": 3.0}, "pass a pyro.distributions object"),
])
def test_site_priors_the_guide_cannot_serve_are_refused(site_priors, message):
    x = _data()
    with pytest.raises(ValueError, match=message):
        bgmm.BayesianGaussianMixtureModel(3, _priors(x, "dirichlet_process", "full"),
                                          site_priors)


def test_swapped_prior_shapes_and_dtype():
    x = _data().double()
    checked = bgmm.check_site_priors(
        {"means": dist.StudentT(3.0, 0.0, 1.0), "sticks": dist.Beta(torch.ones(3), 2.0)},
        3, 2, "dirichlet_process", x)
    assert checked["means"].event_shape == (2,) and checked["means"].batch_shape == ()
    assert checked["sticks"].batch_shape == (3,)
    assert checked["means"].base_dist.loc.dtype == torch.float64


# ---------------------------------------------------------------------------- sample weights


@pytest.mark.parametrize("weight_type, covariance_type", CONFIGS)
def test_sample_weight_scales_each_row_of_the_loss(weight_type, covariance_type):
    pyro.clear_param_store()
    x = _data(12).double()
    generator = torch.Generator().manual_seed(3)
    counts = torch.randint(0, 4, (x.shape[0],), generator=generator).double()
    priors = bgmm.BayesianGMMPriors(*(t.double() for t in _priors(x, weight_type,
                                                                   covariance_type).tensors()
                                      .values()), covariance_type, weight_type)
    model = bgmm.BayesianGaussianMixtureModel(3, priors)
    guide = bgmm.VariationalGuide(_cavi_q(x, priors))
    elbo = TraceEnum_ELBO(max_plate_nesting=1)

    def loss(data, **kwargs):
        pyro.set_rng_seed(5)  # the same draws of the globals in every call
        return elbo.loss(model, guide, data, **kwargs)

    keep = counts > 0
    weighted = loss(x, sample_weight=counts)
    assert weighted == pytest.approx(loss(torch.repeat_interleave(x, counts.long(), 0)),
                                     rel=1e-10)
    assert loss(x, sample_weight=keep.double()) == pytest.approx(loss(x[keep]), rel=1e-10)
    assert loss(x, sample_weight=torch.ones_like(counts)) == loss(x)
    assert weighted != pytest.approx(loss(x), rel=1e-3)
