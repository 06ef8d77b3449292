"""The SVI trainer's cheaper step: the dense enumerated ELBO and one optimiser over all tensors.

Oracles: Pyro's own ``TraceEnum_ELBO`` (same loss and gradients) and Pyro's per-tensor
``PyroOptim`` (same steps, bit for bit), on the zoo's models and on a hand-written mixture.
"""

from __future__ import annotations

import copy

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO
from pyro.infer.autoguide import AutoDelta, init_to_value

from ppl_mixtures.datasets import make_dgmm, make_gmm
from ppl_mixtures.inference import _joint_optim
from ppl_mixtures.inference import elbo as elbo_module
from ppl_mixtures.inference.em import dgmm as em_dgmm
from ppl_mixtures.inference.em.gmm import params_from_responsibilities
from ppl_mixtures.inference.init import initial_responsibilities
from ppl_mixtures.inference.svi import DenseTraceEnum_ELBO, SVITrainer
from ppl_mixtures.models import dgmm, gmm
from ppl_mixtures.models.priors import default_gmm_priors


def _gmm(covariance_type: str, n: int = 200):
    X, _ = make_gmm(n, 3, 4, random_state=0)
    x = torch.as_tensor(X, dtype=torch.float64)
    resp = initial_responsibilities(x, 3, "k-means++", torch.Generator().manual_seed(0))
    init = params_from_responsibilities(x, resp, covariance_type, 1e-6)
    model = gmm.GaussianMixtureModel(3, 4, covariance_type,
                                     default_gmm_priors(x, 3, covariance_type))
    return model, gmm.map_guide(model, init), x


def _gmm_mean_field(covariance_type: str):
    model, _, x = _gmm(covariance_type)
    resp = initial_responsibilities(x, 3, "k-means++", torch.Generator().manual_seed(0))
    init = params_from_responsibilities(x, resp, covariance_type, 1e-6)
    return model, gmm.mean_field_guide(model, init), x


def _dgmm():
    sizes, factors = (3, 2), (3, 2)
    X, _, _, _ = make_dgmm(150, 5, sizes, factors, random_state=0, standardize=True)
    x = torch.as_tensor(X)
    start = em_dgmm.initial_params(x, sizes, factors, "kmeans", torch.Generator().manual_seed(0))
    model = dgmm.DeepGaussianMixtureModel(sizes, factors, 5,
                                          dgmm.default_dgmm_priors(x, sizes, factors))
    return model, dgmm.map_guide(model, start), x


def _mixture_with_discrete_guide():
    """A global Bernoulli sampled by the guide (score-function terms): Pyro's own path."""
    def model(x, subsample=None):
        flip = pyro.sample("flip", dist.Bernoulli(0.3))
        loc = pyro.sample("loc", dist.Normal(0.0, 3.0))
        with pyro.plate("data", x.shape[0], subsample=subsample) as rows:
            k = pyro.sample("k", dist.Categorical(torch.tensor([0.4, 0.6])),
                            infer={"enumerate": "parallel"})
            shift = torch.stack([loc, -loc + flip])[k]
            pyro.sample("obs", dist.Normal(shift, 1.0), obs=x[rows])

    def guide(x, subsample=None):
        p = pyro.param("p", torch.tensor(0.5), constraint=dist.constraints.unit_interval)
        pyro.sample("flip", dist.Bernoulli(p))
        pyro.sample("loc", dist.Normal(pyro.param("m", torch.tensor(1.0)), 0.5))

    model.max_plate_nesting = 1
    x = torch.randn(50, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    return model, guide, x.float()


CASES = {
    "gmm_full": lambda: _gmm("full"),
    "gmm_diag": lambda: _gmm("diag"),
    "gmm_spherical": lambda: _gmm("spherical"),
    "gmm_tied_mean_field": lambda: _gmm_mean_field("tied"),
    "dgmm": _dgmm,
}


def _loss_and_grads(loss_class, model, guide, x, **kwargs):
    pyro.set_rng_seed(1)
    elbo = loss_class(max_plate_nesting=1, strict_enumeration_warning=False)
    with poutine.trace(param_only=True) as capture:
        loss = elbo.differentiable_loss(model, guide, x, **kwargs)
    names = sorted(capture.trace.nodes)
    tensors = [capture.trace.nodes[name]["value"].unconstrained() for name in names]
    grads = torch.autograd.grad(loss, tensors, allow_unused=True)
    return loss.item(), dict(zip(names, grads, strict=True))


@pytest.fixture
def dense_calls(monkeypatch):
    """Counts of traces summed by the dense path and handed to Pyro's contraction."""
    calls = {"dense": 0, "pyro": 0}
    original = elbo_module._dense_elbo

    def counting(*args):
        result = original(*args)
        calls["pyro" if result is None else "dense"] += 1
        return result

    monkeypatch.setattr(elbo_module, "_dense_elbo", counting)
    return calls


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("rows", ["all", "subsample", "weights"])
def test_dense_elbo_equals_traceenum_elbo(case, rows, dense_calls):
    pyro.clear_param_store()
    model, guide, x = CASES[case]()
    kwargs = {}
    if rows == "subsample":
        kwargs["subsample"] = torch.arange(0, x.shape[0], 7)
    if rows == "weights":
        if case == "gmm_tied_mean_field" or case == "dgmm":
            pytest.skip("one weighted model per family is enough")
        kwargs["sample_weight"] = torch.linspace(0.2, 2.0, x.shape[0], dtype=x.dtype)
    guide(x)  # an autoguide's first call traces the model (random draws): not in the comparison
    expected, expected_grads = _loss_and_grads(TraceEnum_ELBO, model, guide, x, **kwargs)
    loss, grads = _loss_and_grads(DenseTraceEnum_ELBO, model, guide, x, **kwargs)
    assert dense_calls == {"dense": 1, "pyro": 0}
    # float64: measured |rel. difference| <= 3e-16 (loss) and <= 6e-14 of the largest gradient
    # entry (a gradient that is zero up to rounding, ~1e-13, differs in its rounding only)
    assert loss == pytest.approx(expected, rel=1e-12)
    assert grads.keys() == expected_grads.keys()
    scale = max(grad.abs().max() for grad in expected_grads.values())
    for name, grad in expected_grads.items():
        assert (grads[name] - grad).abs().max() <= 1e-10 * scale, name


def test_dense_elbo_hands_score_function_guides_to_pyro(dense_calls):
    pyro.clear_param_store()
    model, guide, x = _mixture_with_discrete_guide()
    expected, expected_grads = _loss_and_grads(TraceEnum_ELBO, model, guide, x)
    loss, grads = _loss_and_grads(DenseTraceEnum_ELBO, model, guide, x)
    assert dense_calls == {"dense": 0, "pyro": 1}
    assert loss == pytest.approx(expected, rel=1e-6)
    for name, grad in expected_grads.items():
        torch.testing.assert_close(grads[name], grad)


def test_dense_elbo_loss_matches_and_leaves_marginals_to_pyro():
    pyro.clear_param_store()
    model, guide, x = _gmm("diag")
    dense = DenseTraceEnum_ELBO(max_plate_nesting=1, strict_enumeration_warning=False)
    plain = TraceEnum_ELBO(max_plate_nesting=1, strict_enumeration_warning=False)
    assert dense.loss(model, guide, x) == pytest.approx(plain.loss(model, guide, x), rel=1e-12)
    marginals = dense.compute_marginals(model, guide, x)  # the parent's, on packed traces
    expected = plain.compute_marginals(model, guide, x)
    torch.testing.assert_close(marginals["assignment"].probs, expected["assignment"].probs)


def test_trainer_defaults_are_the_fast_paths():
    model, guide, _ = _gmm("diag")
    trainer = SVITrainer(model, guide)
    assert isinstance(trainer.loss, DenseTraceEnum_ELBO)
    assert isinstance(trainer._fresh_optimizer(), _joint_optim._JointOptim)


# -- one optimiser over all tensors ----------------------------------------------------------


def _mixture(x, subsample=None):
    weights = pyro.sample("weights", dist.Dirichlet(torch.ones(2)))
    with pyro.plate("components", 2):
        locs = pyro.sample("locs", dist.Normal(0.0, 10.0))
        scales = pyro.sample("scales", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", x.shape[0], subsample=subsample):
        k = pyro.sample("k", dist.Categorical(weights), infer={"enumerate": "parallel"})
        pyro.sample("obs", dist.Normal(locs[k], scales[k]), obs=x if subsample is None
                    else x[subsample])


_mixture.max_plate_nesting = 1


def _mixture_guide():
    init = init_to_value(values={"locs": torch.tensor([-1.0, 1.0]), "weights": torch.ones(2) / 2,
                                 "scales": torch.ones(2)})
    return AutoDelta(poutine.block(_mixture, hide=["k"]), init_loc_fn=init)


def _data():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(2, (200,), generator=generator)
    return torch.tensor([-2.0, 2.0])[labels] + torch.randn(200, generator=generator)


def _run(optimizer, lr=0.05, **options):
    pyro.clear_param_store()
    trainer = SVITrainer(_mixture, _mixture_guide(), optimizer=optimizer, lr=lr, max_steps=40,
                         tol=0, progress=False, seed=0, **options)
    result = trainer.fit(_data())
    values = {name: value.detach().clone()
              for name, value in pyro.get_param_store().named_parameters()}
    return result.history, values, trainer._optim.get_state()


@pytest.mark.parametrize("name, per_tensor", [
    ("adam", lambda: pyro.optim.Adam({"lr": 0.05})),
    ("clipped_adam", lambda: pyro.optim.ClippedAdam({"lr": 0.05})),
])
@pytest.mark.parametrize("batch_size", [None, 64])
def test_one_optimiser_takes_pyros_per_tensor_steps(name, per_tensor, batch_size):
    history, values, _ = _run(name, batch_size=batch_size)
    expected_history, expected_values, _ = _run(per_tensor(), batch_size=batch_size)
    # the same arithmetic tensor by tensor: equal bits (asserted to 1e-6 as the brief asks)
    assert history == pytest.approx(expected_history, rel=1e-6, abs=0)
    assert history == expected_history
    for key, value in expected_values.items():
        assert torch.equal(values[key], value), key


def test_one_optimiser_state_has_pyros_layout_both_ways():
    _, _, joint_state = _run("adam")
    _, _, expected = _run(pyro.optim.Adam({"lr": 0.05}))
    assert joint_state.keys() == expected.keys()
    for name, state in expected.items():
        assert joint_state[name]["param_groups"] == state["param_groups"]
        for key, value in state["state"][0].items():
            torch.testing.assert_close(joint_state[name]["state"][0][key], value, rtol=0, atol=0)


def test_one_optimiser_resumes_from_a_per_tensor_state():
    """A PyroOptim's state loaded into the joint optimiser continues as PyroOptim would."""
    x = _data()

    def steps(optim, n):
        svi = pyro.infer.SVI(_mixture, guide, optim, TraceEnum_ELBO(max_plate_nesting=1))
        return [svi.step(x) for _ in range(n)]

    pyro.clear_param_store()
    guide = _mixture_guide()
    first = pyro.optim.Adam({"lr": 0.05})
    steps(first, 5)
    saved_state = copy.deepcopy(first.get_state())  # torch's state dicts alias the state
    saved_params = {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}
    expected = steps(first, 5)
    for name, value in saved_params.items():
        pyro.get_param_store().get_param(name).unconstrained().data.copy_(value)
    joint = _joint_optim._JointOptim(torch.optim.Adam, {"lr": 0.05})
    joint.set_state(saved_state)
    assert steps(joint, 5) == expected


def test_one_optimiser_steps_only_the_tensors_passed():
    a = torch.zeros(3, requires_grad=True)
    b = torch.zeros(2, requires_grad=True)
    pyro.clear_param_store()
    pyro.param("a", a)
    pyro.param("b", b)
    a_u = pyro.get_param_store().get_param("a").unconstrained()
    b_u = pyro.get_param_store().get_param("b").unconstrained()
    optim = _joint_optim._JointOptim(torch.optim.Adam, {"lr": 0.1})
    a_u.grad, b_u.grad = torch.ones(3), torch.ones(2)
    optim({a_u, b_u})
    before = b_u.detach().clone()
    a_u.grad = torch.ones(3)
    optim({a_u})
    assert torch.equal(b_u.detach(), before)  # b had a stale gradient and was not stepped
    assert torch.equal(b_u.grad, torch.ones(2))  # and its gradient is left as it was


# -- the model side: the enumerated observation and labels -----------------------------------


def test_enumerated_observation_is_the_transposed_table():
    """Under parallel enumeration the observation site returns the table itself (transposed),
    bit for bit what picking entry (n, assignment) one by one gives."""
    pyro.clear_param_store()
    model, guide, x = _gmm("full")
    guide(x)
    params = gmm.guide_params(guide, "full")
    labels = dist.Categorical(params.weights).expand((x.shape[0],))
    support = labels.enumerate_support(expand=False)  # Pyro's tagged arange(K), shape (K, 1)
    observation = gmm.ComponentObservation(params, support, 4)
    fast = observation.log_prob(x)
    gathered = gmm.ComponentObservation(params, support.clone(), 4).log_prob(x)  # untagged
    assert fast.shape == gathered.shape == (3, x.shape[0])
    assert torch.equal(fast, gathered)
    assert torch.equal(fast, gmm.component_log_prob(x, params).T)


def test_expanded_enumerated_assignment_keeps_its_mark_only_along_dim_0():
    """The data plate expands (K, 1) to (K, N): the enumerated support stays marked; an expand
    that adds leading dims (dim 0 no longer the support) drops the mark."""
    params = gmm.GMMParams(torch.ones(3) / 3, torch.zeros(3, 2), torch.ones(3, 2), "diag")
    support = dist.Categorical(params.weights).expand((5,)).enumerate_support(expand=False)
    observation = gmm.ComponentObservation(params, support, 2)
    plate_view = observation._expand_assignment((3, 5))
    assert getattr(plate_view, "_pyro_categorical_support", None) is not None
    assert getattr(observation._expand_assignment((4, 3, 5)), "_pyro_categorical_support",
                   None) is None
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    table = gmm.component_log_prob(x, params)
    fast = gmm.ComponentObservation(params, plate_view, 2).log_prob(x)
    assert torch.equal(fast, table.T)
