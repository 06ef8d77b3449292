"""Out-of-core EM for the MFA and the DGMM: one pass over the batches per iteration equals
full-batch EM (same start, ``tol=0``, fixed ``max_iter``), as for the GMM in test_streaming_em."""

import numpy as np
import pytest
import torch
from sklearn.base import clone
from torch.utils.data import DataLoader, TensorDataset

from ppl_mixtures.datasets import make_gmm
from ppl_mixtures.estimators.deep_gaussian import DeepGaussianMixture
from ppl_mixtures.estimators.factor_analyzers import MixtureOfFactorAnalyzers
from ppl_mixtures.inference.em import dgmm as em_dgmm
from ppl_mixtures.inference.em import mfa as em_mfa
from ppl_mixtures.inference.em.loop import run_em, sum_over_batches

FITTED = ("weights_", "means_", "covariances_", "lower_bound_")
LAYERS, FACTORS = (2, 2), (3, 1)


@pytest.fixture(scope="module")
def data():
    X, y = make_gmm(480, 3, 5, separation=2.0, random_state=4)
    return X, y


def mfa_estimator(**kwargs):
    options = dict(max_iter=8, tol=0.0, progress=False, device="cpu")
    return MixtureOfFactorAnalyzers(3, 2, **{**options, **kwargs})


def dgmm_estimator(**kwargs):
    options = dict(max_iter=8, tol=0.0, progress=False, device="cpu")
    return DeepGaussianMixture(LAYERS, FACTORS, **{**options, **kwargs})


def mfa_start(x):
    resp = torch.softmax(torch.randn(x.shape[0], 3, generator=torch.Generator().manual_seed(0)),
                         1)
    return em_mfa.params_from_responsibilities(x, resp, 2)


def dgmm_start(x):
    return em_dgmm.initial_params(x, LAYERS, FACTORS, "kmeans", torch.Generator().manual_seed(0))


MODELS = {
    "mfa": (mfa_estimator, mfa_start, {}),
    "dgmm": (dgmm_estimator, dgmm_start, {}),
    "dgmm_annealed": (dgmm_estimator, dgmm_start, {"anneal_start": 3.0, "anneal_iter": 4}),
}


def with_start(estimator, start):
    """The estimator, starting EM from ``start`` whatever the data it is given."""
    estimator._initial_params = lambda x, generator: start
    return estimator


def assert_same_fit(streamed, reference, atol=1e-6):
    for attr in FITTED:
        np.testing.assert_allclose(getattr(streamed, attr), getattr(reference, attr),
                                   rtol=0, atol=atol, err_msg=attr)
    np.testing.assert_allclose(streamed.history_, reference.history_, rtol=0, atol=atol)
    assert streamed.n_iter_ == reference.n_iter_
    assert streamed.converged_ == reference.converged_


@pytest.mark.parametrize("name", list(MODELS))
def test_list_and_dataloader_equal_full_batch(data, name):
    make, start_from, extra = MODELS[name]
    X, y = data
    start = start_from(torch.as_tensor(X))
    reference = with_start(make(**extra), start).fit(X)
    as_list = with_start(make(**extra), start).fit(np.array_split(X, 7))
    loader = DataLoader(TensorDataset(torch.tensor(X), torch.tensor(y)), batch_size=128)
    from_loader = with_start(make(**extra), start).fit(loader)
    for streamed in (as_list, from_loader):
        assert_same_fit(streamed, reference)
        assert streamed.n_features_in_ == X.shape[1]
    assert as_list.score(X) == pytest.approx(reference.score(X), abs=1e-8)


@pytest.mark.parametrize("name", ["mfa", "dgmm"])
def test_start_is_drawn_from_the_first_batch(data, name):
    """No start given: drawn from the first batch; with the whole data set as the only batch,
    the stream fit is the in-memory fit, restarts included."""
    make, _, _ = MODELS[name]
    X, _ = data
    estimator = make(n_init=2, random_state=1, max_iter=5)
    in_memory = clone(estimator).fit(X)
    streamed = clone(estimator).fit((X,))
    assert_same_fit(streamed, in_memory)
    assert streamed.restart_log_likelihoods_ == pytest.approx(
        in_memory.restart_log_likelihoods_, abs=1e-8)


def test_convergence_follows_full_batch(data):
    """tol > 0 stops at the same iteration."""
    X, _ = data
    start = mfa_start(torch.as_tensor(X))
    reference = with_start(mfa_estimator(tol=1e-4, max_iter=200), start).fit(X)
    assert reference.converged_ and reference.n_iter_ < 200
    assert_same_fit(with_start(mfa_estimator(tol=1e-4, max_iter=200), start).fit(
        [X[:200], X[200:]]), reference)


@pytest.mark.parametrize("name", ["mfa", "dgmm"])
def test_run_em_over_batches_is_the_one_loop(data, name):
    """The loop itself: sum_over_batches(e_step) on batches equals e_step on the matrix, and
    the statistics of two halves add up to those of the whole (the shifts are the
    parameters', not the batches')."""
    x = torch.as_tensor(data[0])
    if name == "mfa":
        start, e_step, m_step = mfa_start(x), em_mfa.e_step, em_mfa.m_step
    else:
        start, e_step, m_step = dgmm_start(x), em_dgmm.e_step, em_dgmm.m_step
    whole = e_step(x, start)
    halves = e_step(x[:100], start) + e_step(x[100:], start)
    for field in type(whole).summed_fields:
        torch.testing.assert_close(torch.as_tensor(getattr(halves, field)),
                                   torch.as_tensor(getattr(whole, field)))
    common = dict(init_params=lambda _: start, m_step=m_step, max_iter=5, tol=0.0,
                  progress=False)
    in_memory = run_em(x, e_step=e_step, **common)
    batched = run_em(list(x.split(97)), e_step=sum_over_batches(e_step), **common)
    assert batched.history == pytest.approx(in_memory.history, abs=1e-10)
    assert batched.log_likelihood == pytest.approx(in_memory.log_likelihood, abs=1e-10)
    torch.testing.assert_close(batched.params.weights, in_memory.params.weights)


@pytest.mark.parametrize("name", ["mfa", "dgmm"])
def test_iterator_one_pass(data, name):
    make, start_from, _ = MODELS[name]
    X, _ = data
    start = start_from(torch.as_tensor(X))
    # accelerated cycles need passes over the data: an iterator skips them (DGMM default)
    once = {"accelerate": 0} if name == "dgmm" else {}
    reference = with_start(make(max_iter=1, **once), start).fit(X)
    streamed = with_start(make(max_iter=1), start).fit(iter(np.array_split(X, 5)))
    for attr in ("weights_", "means_", "covariances_", "history_"):
        np.testing.assert_allclose(getattr(streamed, attr), getattr(reference, attr),
                                   rtol=0, atol=1e-6)
    # read once: no pass after the M-step, so lower_bound_ is the E-step's, at the start
    assert streamed.lower_bound_ == pytest.approx(reference.history_[0], abs=1e-10)
    with pytest.raises(ValueError, match="an iterator can be traversed once, but max_iter=8 "
                                         "EM iterations.*pass a list or a DataLoader"):
        make().fit(iter(np.array_split(X, 5)))


def test_bad_streams_name_the_fix(data):
    X, _ = data
    batches = [X[:240], X[240:]]
    with pytest.raises(ValueError, match="can be fitted with inference='em', not "
                                         "inference='svi'"):
        mfa_estimator(inference="svi").fit(batches)
    with pytest.raises(ValueError, match="can be fitted with inference='em', not "
                                         "inference='svi'"):
        dgmm_estimator(inference="svi").fit(batches)
    with pytest.raises(ValueError, match=r"the first batch has 2 rows, fewer than "
                                         r"n_components=3 \(3 clusters\).*pass larger batches"):
        mfa_estimator().fit([X[:2], X[2:]])
    with pytest.raises(ValueError, match=r"the first batch has 3 rows, fewer than "
                                         r"n_components=\(2, 2\) \(4 clusters\)"):
        dgmm_estimator().fit([X[:3], X[3:]])
    with pytest.raises(ValueError, match="X is an empty stream of batches"):
        mfa_estimator(max_iter=1).fit(iter([]))
    with pytest.raises(ValueError, match="X has 2 features, but MixtureOfFactorAnalyzers is "
                                         "expecting 5"):
        mfa_estimator(max_iter=2).fit([X[:240], X[240:, :2]])
    with pytest.raises(ValueError, match="realign=True runs k-means on the scores of all the "
                                         "data at once, which a stream of batches does not "
                                         "hold; set realign=False"):
        dgmm_estimator(realign=True).fit(batches)
    with pytest.raises(ValueError, match="anneal_start=3.0 makes anneal_iter=4 passes over the "
                                         "data before EM, but an iterator can be traversed "
                                         "once"):
        dgmm_estimator(max_iter=1, anneal_start=3.0, anneal_iter=4).fit(iter(batches))
