"""Sample weights on the MFA's latent form (``MixtureOfFactorAnalyzersModel(form="latent")``):
every term of a row's ELBO is weighted, so integer weights are repeated rows."""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO

from ppl_mixtures import MixtureOfFactorAnalyzers
from ppl_mixtures.datasets import make_gmm
from ppl_mixtures.models import mfa


@pytest.fixture(scope="module")
def fitted():
    X, _ = make_gmm(n_samples=30, n_components=2, n_features=4, random_state=4)
    est = MixtureOfFactorAnalyzers(2, 1, max_iter=20, random_state=0, progress=False).fit(X)
    x = torch.as_tensor(X)
    model = mfa.MixtureOfFactorAnalyzersModel(2, 4, 1, mfa.default_mfa_priors(x, 2, 1),
                                              form="latent")
    weights = np.random.default_rng(4).integers(0, 4, size=len(X))  # zeros included
    return x, est.params_, model, weights


class FixedDraw(dist.TorchDistribution):
    """``base`` whose draw is ``value``: the guide's ``log q`` at a chosen ``z``."""

    arg_constraints = {}
    has_rsample = True

    def __init__(self, base, value):
        self.base, self.value = base, value
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    @property
    def support(self):
        return self.base.support

    def rsample(self, sample_shape=()):
        return self.value

    def log_prob(self, value):
        return self.base.log_prob(value)


class FixedScoresGuide(mfa.LatentFactorGuide):
    """The latent form's guide with its scores ``z`` of the rows drawn fixed at ``scores``."""

    scores = None

    def _sample_scores(self, sites, scores):
        super()._sample_scores(sites, FixedDraw(scores, self.scores))


def loss(model, params, x, z, **kwargs):
    """``-ELBO`` with the guide's local Gaussians at the exact posteriors of ``x``'s rows and
    its scores drawn at ``z`` (the same draw for a row and its copies)."""
    pyro.clear_param_store()
    guide = FixedScoresGuide(model, params, x)
    guide.scores = z
    with torch.no_grad():
        return TraceEnum_ELBO(max_plate_nesting=1).loss(model, guide, x, **kwargs)


def test_integer_weights_equal_repeated_rows(fitted):
    x, params, model, counts = fitted
    index = torch.as_tensor(np.repeat(np.arange(len(x)), counts))
    z = torch.randn(len(x), 1, generator=torch.Generator().manual_seed(0), dtype=x.dtype)
    weights = torch.as_tensor(counts, dtype=x.dtype)
    weighted = loss(model, params, x, z, sample_weight=weights)
    repeated = loss(model, params, x[index], z[index])
    assert weighted == pytest.approx(repeated, rel=1e-12)
    # unit weights change nothing; zero weights remove the rows
    plain = loss(model, params, x, z)
    assert loss(model, params, x, z, sample_weight=torch.ones_like(weights)) == pytest.approx(
        plain, rel=1e-12)
    kept = weights > 0
    assert loss(model, params, x, z, sample_weight=kept.to(x.dtype)) == pytest.approx(
        loss(model, params, x[kept], z[kept]), rel=1e-12)


def test_fixed_draws_give_the_loss_of_the_guide_that_drew_them(fitted):
    """The check above relies on it: the loss at the guide's own draw of ``z``."""
    x, params, model, _ = fitted
    pyro.clear_param_store()
    guide = mfa.LatentFactorGuide(model, params, x)
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    with torch.no_grad():
        elbo.loss(model, guide, x)  # a first call draws more (it sets up the params)
        pyro.set_rng_seed(3)
        drawn = poutine.trace(guide).get_trace(x).nodes["z"]["value"]
        pyro.set_rng_seed(3)
        sampled = elbo.loss(model, guide, x)
    assert loss(model, params, x, drawn) == pytest.approx(sampled, rel=1e-12)


def test_subsample_scales_the_weighted_rows(fitted):
    x, params, model, counts = fitted
    z = torch.randn(len(x), 1, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    weights = torch.as_tensor(counts, dtype=x.dtype)
    half = torch.arange(0, len(x), 2)
    sub = loss(model, params, x, z[half], subsample=half, sample_weight=weights)
    sub_ref = loss(model, params, x[half], z[half],
                   sample_weight=weights[half] * (len(x) / len(half)))
    # the globals' prior is the same in both; the rows' terms scale by N / n alike
    assert sub == pytest.approx(sub_ref, rel=1e-12)
