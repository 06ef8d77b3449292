"""NUTS over the GMM with the assignments enumerated, and the relabelling of draws."""

import numpy as np
import pytest
import torch

from ppl_mixtures import GaussianMixture
from ppl_mixtures.datasets import make_gmm
from ppl_mixtures.inference import mcmc
from ppl_mixtures.inference.mcmc import align_components, run_nuts, split_r_hat
from ppl_mixtures.metrics import adjusted_rand_score


@pytest.mark.parametrize("covariance_type", ["diag", "full"])
def test_nuts_posterior_mean_is_near_the_em_optimum(covariance_type):
    X, y = make_gmm(120, 3, 2, separation=5.0, random_state=0)
    nuts = GaussianMixture(3, covariance_type=covariance_type, inference="nuts", max_iter=40,
                           num_warmup=40, random_state=0, progress=False).fit(X)
    em = GaussianMixture(3, covariance_type=covariance_type, random_state=0,
                         progress=False).fit(X)
    # measured on this draw: |gap| <= 0.002 nats per sample, ARI 1.0, max r_hat <= 1.04
    assert abs(nuts.score(X) - em.score(X)) < 0.02
    assert adjusted_rand_score(y, nuts.predict(X)) == 1.0
    assert nuts.posterior_samples_["means"].shape == (40, 3, 2)
    assert len(nuts.history_) == 40 and nuts.converged_


def test_align_components_undoes_label_switching():
    g = torch.Generator().manual_seed(0)
    reference = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    means = reference + 0.1 * torch.randn(50, 3, 2, generator=g)
    weights = torch.tensor([0.2, 0.3, 0.5]).expand(50, 3)
    perms = torch.stack([torch.randperm(3, generator=g) for _ in range(50)])
    rows = torch.arange(50)[:, None]
    switched = {"means": means[rows, perms], "weights": weights[rows, perms]}
    aligned, found = align_components(switched, reference, ["means", "weights"])
    torch.testing.assert_close(aligned["means"], means)
    torch.testing.assert_close(aligned["weights"], weights)
    assert found.shape == (50, 3)


def test_split_r_hat_flags_a_drifting_chain():
    rng = np.random.default_rng(0)
    stationary = rng.normal(size=(400, 2))
    drifting = stationary + np.linspace(0, 5, 400)[:, None]
    assert np.all(split_r_hat(stationary) < 1.05)
    assert np.all(split_r_hat(drifting) > 1.5)


@pytest.mark.slow
def test_nuts_mixes_on_600_points_after_relabelling():
    """Issue 7's check, kept out of the default suite (about 3 minutes on 2 cores).

    Measured: data seed 100, 2 chains of 300 warm-up + 300 draws: max r_hat 1.02, minimum
    bulk ESS 1094 over weights and means, ARI 1.0.
    """
    import arviz as az

    from ppl_mixtures.diagnostics import to_inference_data

    X, y = make_gmm(600, 3, 2, covariance_type="diag", separation=4.0, random_state=100)
    est = GaussianMixture(3, covariance_type="diag", inference="nuts", max_iter=300,
                          num_warmup=300, num_chains=2, random_state=0, progress=False).fit(X)
    summary = az.summary(to_inference_data(est, X), var_names=["weights", "means"])
    assert float(summary["r_hat"].max()) < 1.05
    assert float(summary["ess_bulk"].min()) > 200
    assert adjusted_rand_score(y, est.predict(X)) == 1.0


def test_parallel_chains_follows_the_argument_and_the_free_cores(monkeypatch):
    monkeypatch.setattr(mcmc, "free_cores", lambda: 1)
    assert not mcmc.parallel_chains(2, "auto")  # one core: chains in sequence
    assert mcmc.parallel_chains(2, "parallel")
    monkeypatch.setattr(mcmc, "free_cores", lambda: 3)
    assert mcmc.parallel_chains(2, "auto")  # 2 chains + this process fit on 3 cores
    assert not mcmc.parallel_chains(3, "auto")
    assert not mcmc.parallel_chains(2, "sequential")
    assert not mcmc.parallel_chains(1, "parallel")  # one chain never needs a process
    with pytest.raises(ValueError, match="chain_method='threads' is not one of"):
        mcmc.parallel_chains(2, "threads")


def _tiny_nuts(**options):
    x = torch.tensor([[0.0], [1.0], [10.0], [11.0], [12.0]])
    est = GaussianMixture(2, random_state=0, progress=False).fit(x.numpy())
    from ppl_mixtures.models import gmm

    sites = gmm.params_to_sites(est.params_)
    return run_nuts(est.model_, x, sites, num_samples=3, num_warmup=3, num_chains=2, seed=0,
                    progress=False, **options)


def test_sequential_chains_stay_in_process_where_pyro_would_fork(monkeypatch):
    # Pyro starts one process per chain whenever it sees enough cores (and, before
    # chain_method, with the "fork" context); "sequential" keeps both chains here.
    import pyro.infer.mcmc.api as pyro_mcmc

    monkeypatch.setattr(pyro_mcmc.mp, "cpu_count", lambda: 16)
    run = _tiny_nuts(chain_method="sequential")
    assert isinstance(run.sampler, pyro_mcmc._UnarySampler)
    assert run.get_samples(group_by_chain=True)["means"].shape == (2, 3, 2, 1)


@pytest.mark.slow
def test_parallel_chains_are_reproducible():
    """Two spawned processes (about 70 s on a loaded 2-core machine: slower than sequential
    there, 43 s for 2 x 60 iterations on 100 points; see the notes)."""
    import pyro.infer.mcmc.api as pyro_mcmc

    first, second = _tiny_nuts(chain_method="parallel"), _tiny_nuts(chain_method="parallel")
    assert isinstance(first.sampler, pyro_mcmc._MultiSampler)
    a = first.get_samples(group_by_chain=True)["means"]
    b = second.get_samples(group_by_chain=True)["means"]
    assert a.shape == (2, 3, 2, 1)
    torch.testing.assert_close(a, b)


def test_median_point_estimate_ignores_a_wandering_empty_component():
    # Issue 18 item 12: 5 % of the draws hold the low component far away (it took no data):
    # the posterior means move with them, the medians used for params_ stay with the bulk.
    from ppl_mixtures.estimators._nuts import median_gaussian_params

    g = torch.Generator().manual_seed(0)
    s = 200
    means = torch.tensor([[0.5], [11.0]]) + 0.3 * torch.randn(s, 2, 1, generator=g)
    means[:10, 0] = 8.0
    weights = torch.tensor([0.4, 0.6]).expand(s, 2).clone()
    variances = torch.full((s, 2, 1), 0.5)
    variances[:10, 0] = 30.0
    w, m, v = median_gaussian_params(weights, means, variances, diagonal=True)
    assert abs(float(m[0, 0]) - 0.5) < 0.1 and abs(float(means[:, 0].mean()) - 0.5) > 0.3
    assert float(v[0, 0]) == 0.5
    torch.testing.assert_close(w, torch.tensor([0.4, 0.6]))
    # full covariances: median variances with the mean correlation, positive definite
    corr = torch.tensor([[1.0, 0.5], [0.5, 1.0]])
    scale = torch.tensor([1.0, 2.0])
    full = (corr * scale[:, None] * scale[None, :]).expand(s, 2, 2, 2).clone()
    full[:10, 0] *= 40.0
    _, _, cov = median_gaussian_params(weights, means.expand(s, 2, 2), full, diagonal=False)
    torch.testing.assert_close(cov, corr * scale[:, None] * scale[None, :]
                               + torch.zeros(2, 1, 1))
    assert bool((torch.linalg.eigvalsh(cov) > 0).all())


def test_nuts_params_are_the_relabelled_medians():
    X = np.array([[0.0], [1.0], [10.0], [11.0], [12.0]])
    est = GaussianMixture(2, inference="nuts", max_iter=10, num_warmup=10, random_state=0,
                          progress=False).fit(X)
    draws = est.posterior_samples_
    np.testing.assert_allclose(est.means_, np.median(draws["means"], axis=0), rtol=1e-6)
    np.testing.assert_allclose(est.covariances_[:, 0, 0],
                               np.median(draws["variances"][:, :, 0], axis=0), rtol=1e-6)
    np.testing.assert_allclose(est.weights_.sum(), 1.0, rtol=1e-6)
