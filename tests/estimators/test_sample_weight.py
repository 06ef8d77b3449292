"""``sample_weight``: integer weights are repeated rows, zero weights removed rows, everywhere.

The oracle is the fit (or the objective) on the data with every row repeated as many times as
its weight says, from the same start: EM of both estimators (every covariance type), the
k-means start, the SVI/NUTS/GMVAE objectives and short fits, SGD, streams of ``(x, w)``
batches and a one-rank process group; plus the errors that name ``sample_weight``.
"""

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO
from sklearn.base import clone
from torch.utils.data import DataLoader, TensorDataset

from ppl_mixtures import GMVAE, DeepGaussianMixture, GaussianMixture, MixtureOfFactorAnalyzers
from ppl_mixtures.datasets import make_gmm
from ppl_mixtures.inference.em import gmm as em_gmm
from ppl_mixtures.inference.em import mfa as em_mfa
from ppl_mixtures.inference.init import _lloyd, initial_responsibilities, kmeans, kmeans_plusplus
from ppl_mixtures.inference.sgd_gmm import SGDConfig, SGDGMMTrainer

# the short fits that give the starts stop at max_iter on purpose
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical", "tied_diag")
FITTED = ("weights_", "means_", "covariances_")


@pytest.fixture(scope="module")
def data():
    """Three clusters, integer weights in {0, ..., 3} (some rows dropped), the repeated rows."""
    X, _ = make_gmm(120, 3, 3, separation=3.0, random_state=0)
    weights = np.random.default_rng(1).integers(0, 4, X.shape[0])
    return X, weights, np.repeat(X, weights, axis=0)


def given_start(X, covariance_type):
    """All three initial values of GaussianMixture, from a short fit (the same for both fits)."""
    start = GaussianMixture(3, covariance_type=covariance_type, max_iter=2, random_state=0,
                            progress=False).fit(X)
    return dict(weights_init=start.weights_, means_init=start.means_,
                precisions_init=start.precisions_)


def assert_same(a, b, attributes=FITTED, atol=1e-6):
    for name in attributes:
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=0, atol=atol,
                                   err_msg=name)


# --------------------------------------------------------------------------------------- EM


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_em_integer_weights_equal_repeated_rows(data, covariance_type):
    X, weights, repeated = data
    est = GaussianMixture(3, covariance_type=covariance_type, max_iter=15, tol=0.0,
                          progress=False, **given_start(X, covariance_type))
    weighted = clone(est).fit(X, sample_weight=weights)
    reference = clone(est).fit(repeated)
    assert_same(weighted, reference, (*FITTED, "lower_bound_", "precisions_"))
    np.testing.assert_allclose(weighted.history_, reference.history_, rtol=0, atol=1e-6)
    assert weighted.n_iter_ == reference.n_iter_


def test_em_float32_weights_equal_repeated_rows(data):
    """The whitened float32 E-step (tied/full) weighs its responsibilities too."""
    X, weights, repeated = data
    est = GaussianMixture(3, max_iter=10, tol=0.0, progress=False, dtype="float32",
                          **given_start(X, "full"))
    assert_same(clone(est).fit(X, sample_weight=weights), clone(est).fit(repeated), atol=1e-4)


def test_em_zero_weights_remove_rows_and_uniform_weights_change_nothing(data):
    X, weights, _ = data
    est = GaussianMixture(3, max_iter=15, tol=0.0, progress=False, random_state=0)
    kept = weights > 0
    start = given_start(X[kept], "full")
    dropped = clone(est).set_params(**start).fit(X, sample_weight=kept.astype(float))
    assert_same(dropped, clone(est).set_params(**start).fit(X[kept]), (*FITTED, "lower_bound_"))
    # uniform weights (any scale, an array or one number), default k-means start included
    plain = clone(est).fit(X)
    for uniform in (np.ones(len(X)), np.full(len(X), 2.5), 4.0):
        assert_same(clone(est).fit(X, sample_weight=uniform), plain,
                    (*FITTED, "lower_bound_", "history_"), atol=1e-9)


def test_e_steps_in_blocks_weigh_every_block(data, monkeypatch):
    """The GMM E-step in blocks of rows and the MFA E-step in float64 blocks split the
    weights with the rows."""
    X, weights, repeated = data
    x, w = torch.as_tensor(X), torch.as_tensor(weights, dtype=torch.float64)
    gm = GaussianMixture(3, max_iter=2, random_state=0, progress=False).fit(X)
    mfa = MixtureOfFactorAnalyzers(3, 1, max_iter=2, random_state=0, progress=False).fit(X)
    whole = {"gmm": em_gmm.e_step(x, gm.params_, w), "mfa": em_mfa.e_step(x, mfa.params_, w)}
    monkeypatch.setattr(em_gmm, "_E_STEP_BLOCK_ELEMENTS", 3 * 16)  # blocks of 16 rows
    monkeypatch.setattr(em_mfa, "_WIDE_BLOCK_ELEMENTS", 3 * 2 * 16)
    monkeypatch.setattr(em_mfa, "needs_float64", lambda params: True)
    blocks = {"gmm": em_gmm.e_step(x, gm.params_, w), "mfa": em_mfa.e_step(x, mfa.params_, w)}
    repeated_stats = em_gmm.e_step(torch.as_tensor(repeated), gm.params_)
    for name, stats in blocks.items():
        for field in type(stats).summed_fields:
            torch.testing.assert_close(torch.as_tensor(getattr(stats, field)),
                                       torch.as_tensor(getattr(whole[name], field)),
                                       rtol=1e-12, atol=1e-9)
    for field in type(repeated_stats).summed_fields:
        torch.testing.assert_close(torch.as_tensor(getattr(blocks["gmm"], field)),
                                   torch.as_tensor(getattr(repeated_stats, field)),
                                   rtol=1e-12, atol=1e-9)


def test_fit_predict_passes_the_weights(data):
    X, weights, _ = data
    est = GaussianMixture(3, max_iter=5, progress=False, random_state=0)
    labels = clone(est).fit_predict(X, sample_weight=weights)
    np.testing.assert_array_equal(labels, clone(est).fit(X, sample_weight=weights).predict(X))


def test_default_start_follows_the_weights(data):
    """From the weighted k-means start EM reaches the repeated rows' optimum (other draws)."""
    X, weights, repeated = data
    est = GaussianMixture(3, random_state=0, progress=False, tol=1e-8, max_iter=300)
    weighted, reference = clone(est).fit(X, sample_weight=weights), clone(est).fit(repeated)
    order_w, order_r = np.argsort(weighted.means_[:, 0]), np.argsort(reference.means_[:, 0])
    np.testing.assert_allclose(weighted.means_[order_w], reference.means_[order_r], atol=1e-5)
    np.testing.assert_allclose(weighted.lower_bound_, reference.lower_bound_, atol=1e-7)


# --------------------------------------------------------------------------------- k-means


def test_kmeans_is_weight_aware(data):
    X, weights, repeated = data
    x, w = torch.as_tensor(X), torch.as_tensor(weights, dtype=torch.float64)
    # Lloyd's iterations from the same seeds: the centres of the repeated rows
    seeds = x[[0, 50, 100]]
    mean = (w @ x) / w.sum()
    centers, labels = _lloyd(x - mean, seeds - mean, 100, 0.0, w)
    ref_centers, _ = _lloyd(torch.as_tensor(repeated) - mean, seeds - mean, 100, 0.0)
    torch.testing.assert_close(centers, ref_centers, rtol=0, atol=1e-12)
    # seeds and centres never come from rows of weight 0
    only = torch.zeros_like(w)
    only[[3, 40, 77, 90]] = 1.0
    generator = torch.Generator().manual_seed(0)
    seeds = kmeans_plusplus(x, 3, generator, sample_weight=only)
    assert all(any(torch.equal(s, x[i]) for i in (3, 40, 77, 90)) for s in seeds)
    for method in ("kmeans", "k-means++", "random_from_data"):
        resp = initial_responsibilities(x, 3, method, generator, only)
        assert resp.shape == (len(X), 3) and torch.allclose(resp.sum(1), torch.ones(len(X),
                                                                                     dtype=x.dtype))
    # the weighted inertia, at the best of a few starts the repeated rows' best
    centers, labels, inertia = kmeans(x, 3, generator, n_init=10, sample_weight=w)
    assert inertia == pytest.approx(float(w @ (x - centers[labels]).square().sum(1)), rel=1e-12)
    _, _, ref_inertia = kmeans(torch.as_tensor(repeated), 3, torch.Generator().manual_seed(0),
                               n_init=10)
    assert inertia == pytest.approx(ref_inertia, rel=1e-9)
    with pytest.raises(ValueError, match="only 4 rows have a positive sample_weight.*n_clusters=5"):
        kmeans(x, 5, generator, sample_weight=only)


# ------------------------------------------------------------------------------------- MFA


def test_mfa_em_integer_and_zero_weights(data):
    X, weights, repeated = data
    start = MixtureOfFactorAnalyzers(3, 1, max_iter=3, random_state=0, progress=False).fit(X)
    x, w = torch.as_tensor(X), torch.as_tensor(weights, dtype=torch.float64)
    stats = em_mfa.e_step(x, start.params_, w)
    reference = em_mfa.e_step(torch.as_tensor(repeated), start.params_)
    for name in type(stats).summed_fields:
        torch.testing.assert_close(torch.as_tensor(getattr(stats, name)),
                                   torch.as_tensor(getattr(reference, name)), rtol=1e-12,
                                   atol=1e-9)
    # whole fits from the same (warm) start
    fits = {}
    for name, (rows, row_weights) in {"weighted": (X, weights), "repeated": (repeated, None),
                                      "kept": (X[weights > 0], None),
                                      "zeros": (X, (weights > 0).astype(float))}.items():
        est = clone(start).set_params(warm_start=True, max_iter=3).fit(X)
        est.set_params(max_iter=10, tol=0.0)
        fits[name] = est.fit(rows, sample_weight=row_weights)
    params = ("weights_", "means_", "loadings_", "noise_variances_", "lower_bound_", "history_")
    assert_same(fits["weighted"], fits["repeated"], params)
    assert_same(fits["zeros"], fits["kept"], params)


# ------------------------------------------------------------------- SVI, NUTS: objectives


@pytest.mark.parametrize("make", [
    lambda: GaussianMixture(3, max_iter=3, random_state=0, progress=False),
    lambda: MixtureOfFactorAnalyzers(3, 1, max_iter=3, random_state=0, progress=False),
    lambda: DeepGaussianMixture((2, 1), (2, 1), max_iter=3, random_state=0, progress=False),
])
def test_enumerated_elbo_with_weights_equals_repeated_rows(data, make):
    """At equal parameters: ``model(x, sample_weight=w)`` scores the repeated rows."""
    X, weights, repeated = data
    est = make().fit(X)
    x, w = torch.as_tensor(X), torch.as_tensor(weights, dtype=torch.float64)
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    with pyro.get_param_store().scope(est.param_store_state_), torch.no_grad():
        weighted = elbo.loss(est.model_, est.guide_, x, sample_weight=w)
        reference = elbo.loss(est.model_, est.guide_, torch.as_tensor(repeated))
        half = torch.arange(0, len(X), 2)  # a subsample scales the weighted rows alike
        sub = elbo.loss(est.model_, est.guide_, x, subsample=half, sample_weight=w)
        sub_ref = elbo.loss(est.model_, est.guide_, x[half],
                            sample_weight=w[half] * (len(X) / len(half)))
    assert weighted == pytest.approx(reference, rel=1e-12)
    log_prior = float(est.model_.log_prior(est.params_))
    assert sub - sub_ref == pytest.approx(0.0, abs=1e-8 * abs(sub))
    assert -weighted - log_prior == pytest.approx(float(est.score_samples(X) @ weights), rel=1e-10)


@pytest.mark.parametrize("inference", ["svi", "nuts"])
def test_svi_and_nuts_short_fits_equal_repeated_rows(data, inference):
    """Same seed, full batches: the steps (SVI) and the potential (NUTS) are the same."""
    X, weights, repeated = data
    options = dict(max_iter=20) if inference == "svi" else dict(max_iter=5, num_warmup=5)
    est = GaussianMixture(3, covariance_type="diag", inference=inference, random_state=0,
                          progress=False, **given_start(X, "diag"), **options)
    weighted, reference = clone(est).fit(X, sample_weight=weights), clone(est).fit(repeated)
    assert_same(weighted, reference, (*FITTED, "history_"), atol=1e-7)
    if inference == "svi":  # lower_bound_: the weighted mean log-likelihood
        np.testing.assert_allclose(weighted.lower_bound_, reference.lower_bound_, atol=1e-9)
        expected = weighted.score_samples(X) @ weights / weights.sum()
        assert weighted.lower_bound_ == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(("make", "attributes"), [
    (lambda: MixtureOfFactorAnalyzers(3, 1, max_iter=3, random_state=0, progress=False),
     ("means_", "loadings_", "history_")),
    (lambda: DeepGaussianMixture((2, 1), (2, 1), max_iter=3, random_state=0, progress=False),
     ("weights_", "means_", "history_")),
])
def test_mfa_and_dgmm_svi_short_fits_equal_repeated_rows(data, make, attributes):
    """From the same start (a warm start from a short EM fit), 20 SVI steps."""
    X, weights, repeated = data
    start = make().fit(X)
    fits = []
    for rows, row_weights in ((X, weights), (repeated, None)):
        est = clone(start).set_params(warm_start=True).fit(X)
        est.set_params(inference="svi", max_iter=20)
        fits.append(est.fit(rows, sample_weight=row_weights))
    assert_same(*fits, attributes, atol=1e-7)


# -------------------------------------------------------------------------------------- SGD


def test_sgd_weighted_step_and_fits_equal_repeated_rows(data):
    X, weights, repeated = data
    x, w = torch.as_tensor(X), torch.as_tensor(weights, dtype=torch.float64)
    trainers = [SGDGMMTrainer(3, SGDConfig(batch_size=None), seed=0) for _ in range(2)]
    weighted = trainers[0].step(x, w, float(w.mean()))
    reference = trainers[1].step(torch.as_tensor(repeated))
    assert weighted.loss == pytest.approx(reference.loss, rel=1e-12)
    assert weighted.nll == pytest.approx(reference.nll, rel=1e-12)
    torch.testing.assert_close(trainers[0].means, trainers[1].means, rtol=0, atol=1e-12)
    # the estimator, one batch per epoch (not shuffled: a permutation of N or of sum(w) rows
    # would draw other initial means from the trainer's generator), and partial_fit
    est = GaussianMixture(3, covariance_type="diag", inference="sgd", batch_size=10_000,
                          max_iter=5, random_state=0, progress=False,
                          sgd_options={"shuffle": False})
    assert_same(clone(est).fit(X, sample_weight=weights), clone(est).fit(repeated),
                (*FITTED, "history_"), atol=1e-9)
    partial = clone(est).partial_fit(X, sample_weight=weights)
    assert_same(partial, clone(est).partial_fit(repeated), (*FITTED, "lower_bound_"), atol=1e-9)
    with pytest.raises(ValueError, match="sample_weight has 3 entries but X has 120 rows"):
        clone(est).partial_fit(X, sample_weight=[1, 2, 3])


# ------------------------------------------------------------------------------------ GMVAE


def gmvae(**kwargs):
    return GMVAE(3, likelihood="gaussian", max_iter=1, batch_size=32, latent_dim=2, w_dim=2,
                 hidden_dims=(8,), prior_hidden_dims=(8,), pretrain_epochs=0, progress=False,
                 device="cpu", dtype="float64", random_state=0, **kwargs)


def test_gmvae_weighted_elbo_equals_repeated_rows(data):
    """At equal parameters and equal draws of the latents: the weighted ELBO is the repeated
    rows' (the closed form scales each row's sites; "enumerate" sums z out under weights)."""
    X, weights, repeated = data
    x, w = torch.as_tensor(X), torch.as_tensor(weights, dtype=torch.float64)
    index = torch.as_tensor(np.repeat(np.arange(len(X)), weights))
    for z_inference in ("closed_form", "enumerate"):
        est = gmvae(z_inference=z_inference).fit(X)
        model, guide = est.model_, est.guide_
        with pyro.get_param_store().scope(est.param_store_state_), torch.no_grad():
            pyro.set_rng_seed(0)
            guide_trace = poutine.trace(guide).get_trace(x, sample_weight=w)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
                x, sample_weight=w)
            weighted = model_trace.log_prob_sum() - guide_trace.log_prob_sum()
            latents = {name: guide_trace.nodes[name]["value"][index] for name in ("w", "x")}
            ones = torch.ones(len(index), dtype=torch.float64)
            repeated_guide = poutine.trace(poutine.condition(guide, data=latents)).get_trace(
                x[index], sample_weight=ones)
            repeated_model = poutine.trace(poutine.condition(model, data=latents)).get_trace(
                x[index], sample_weight=ones)
            reference = repeated_model.log_prob_sum() - repeated_guide.log_prob_sum()
            # unit weights: the Pyro loss of the unweighted model (z enumerated) at one seed
            elbo = TraceEnum_ELBO(max_plate_nesting=1)
            pyro.set_rng_seed(1)
            unit = elbo.loss(model, guide, x, sample_weight=torch.ones(len(X), dtype=x.dtype))
            pyro.set_rng_seed(1)
            plain = elbo.loss(model, guide, x)
        assert float(weighted) == pytest.approx(float(reference), rel=1e-10)
        assert unit == pytest.approx(plain, rel=1e-10)


def test_gmvae_unit_weights_fit_as_no_weights_and_bound_is_weighted(data):
    X, weights, _ = data
    plain = gmvae().fit(X)
    unit = gmvae().fit(X, sample_weight=np.ones(len(X)))
    # unit weights round differently in the start's weighted sums, and its iterative factor
    # analysers amplify that (measured 9e-14 here, 1e-10 in a CI run)
    np.testing.assert_allclose(unit.history_, plain.history_, rtol=1e-8)
    weighted = gmvae().fit(X, sample_weight=weights)
    expected = weighted.score_samples(X) @ weights / weights.sum()
    assert weighted.lower_bound_ == pytest.approx(expected, rel=1e-10)


# ------------------------------------------------------------------ streams, process groups


def weighted_loader(X, weights, batch_size=32):
    dataset = TensorDataset(torch.as_tensor(X), torch.as_tensor(weights, dtype=torch.float64))
    return DataLoader(dataset, batch_size=batch_size)


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_stream_of_weighted_batches_equals_in_memory_weighted_fit(data, covariance_type):
    X, weights, _ = data
    est = GaussianMixture(3, covariance_type=covariance_type, max_iter=10, tol=0.0,
                          progress=False, **given_start(X, covariance_type))
    reference = clone(est).fit(X, sample_weight=weights)
    streamed = clone(est).fit(weighted_loader(X, weights), sample_weight="batches")
    as_pairs = clone(est).fit([(X[:70], weights[:70]), (X[70:], weights[70:])],
                              sample_weight="batches")
    for fit in (streamed, as_pairs):
        assert_same(fit, reference, (*FITTED, "lower_bound_", "history_"))


def test_weighted_streams_for_svi_sgd_and_mfa(data):
    X, weights, repeated = data
    svi = GaussianMixture(3, covariance_type="diag", inference="svi", max_iter=30,
                          random_state=0, progress=False, **given_start(X, "diag"))
    one_batch = clone(svi).fit(weighted_loader(X, weights, 1000), sample_weight="batches")
    in_memory = clone(svi).fit(X, sample_weight=weights)
    assert_same(one_batch, in_memory, (*FITTED, "lower_bound_", "history_"), atol=1e-7)
    sgd = GaussianMixture(3, covariance_type="diag", inference="sgd", max_iter=3,
                          random_state=0, progress=False, sgd_options={"shuffle": False})
    streamed = clone(sgd).fit(weighted_loader(X, weights, 1000), sample_weight="batches")
    assert_same(streamed, clone(sgd).set_params(batch_size=10_000).fit(repeated),
                (*FITTED, "history_"), atol=1e-9)
    start = MixtureOfFactorAnalyzers(3, 1, max_iter=3, random_state=0, progress=False).fit(X)
    fits = []
    for rows, row_weights in ((weighted_loader(X, weights), "batches"), (X, weights)):
        est = clone(start).set_params(warm_start=True).fit(X)
        fits.append(est.set_params(max_iter=5, tol=0.0).fit(rows, sample_weight=row_weights))
    assert_same(*fits, ("means_", "loadings_", "lower_bound_", "history_"))


def test_one_rank_process_group_equals_single_process(data, one_rank_group):
    X, weights, _ = data
    est = GaussianMixture(3, max_iter=8, tol=0.0, progress=False, **given_start(X, "full"))
    shard = clone(est).set_params(distributed=True).fit(X, sample_weight=weights)
    assert_same(shard, clone(est).fit(X, sample_weight=weights),
                (*FITTED, "lower_bound_", "history_"))


# -------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(("sample_weight", "match"), [
    (np.ones(7), "sample_weight has 7 entries but X has 120 rows; pass one weight per row"),
    (-np.ones(120), "sample_weight contains negative values.*weights must be >= 0"),
    (np.r_[np.nan, np.ones(119)], "sample_weight contains NaN or inf; pass finite weights"),
    (np.r_[np.inf, np.ones(119)], "sample_weight contains NaN or inf"),
    (np.zeros(120), "sample_weight is zero for every row.*give at least one row a positive"),
    (np.ones((120, 1)), r"sample_weight has shape \(120, 1\); it must be one-dimensional.*ravel"),
    ("batches", "sample_weight='batches' is only for a stream of batches"),
    (["a"] * 120, "sample_weight must hold numbers"),
])
def test_invalid_weights_name_the_argument_and_the_fix(data, sample_weight, match):
    X = data[0]
    with pytest.raises(ValueError, match=match):
        GaussianMixture(3, progress=False).fit(X, sample_weight=sample_weight)


def test_stream_weight_errors(data):
    X, weights, _ = data
    est = GaussianMixture(3, progress=False, max_iter=2)
    with pytest.raises(ValueError, match="with a stream of batches: pass sample_weight='batches'"):
        clone(est).fit([X[:60], X[60:]], sample_weight=weights)
    with pytest.raises(ValueError, match=r"reads every batch as a pair \(x, w\)"):
        clone(est).fit([X[:60], X[60:]], sample_weight="batches")
    with pytest.raises(ValueError, match=r"sample_weight \(the w of a batch \(x, w\)\) contains"):
        clone(est).fit([(X[:60], -np.ones(60)), (X[60:], np.ones(60))], sample_weight="batches")
    with pytest.raises(ValueError, match="only 2 rows have a positive sample_weight"):
        w = np.zeros(len(X))
        w[:2] = 1
        clone(est).fit(X, sample_weight=w)
