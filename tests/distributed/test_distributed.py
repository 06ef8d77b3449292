"""Distributed GMM EM: 2 gloo processes on loopback, each with half the data, equal one process.

The worker (``_distributed_worker.py``) is launched by ``torch.distributed.run`` in a
subprocess with a bounded time; the statistics helpers are also checked in-process on a
one-rank gloo group.
"""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from _distributed_worker import ATTRIBUTES, data, estimator, initial_values, sample_weights
from _launch import launch_ranks

from ppl_mixtures import GaussianMixture
from ppl_mixtures import distributed as dist_em
from ppl_mixtures.datasets import make_gmm
from ppl_mixtures.inference.em import gmm as em_gmm
from ppl_mixtures.models import gmm

WORKER = Path(__file__).with_name("_distributed_worker.py")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Both ranks' fitted attributes, from one torchrun launch shared by the tests below."""
    return launch_ranks(WORKER, tmp_path_factory.mktemp("distributed"))


@pytest.fixture(scope="module")
def single_process():
    X = data()
    return estimator(**initial_values(X)).fit(X)


@pytest.mark.parametrize("fit", ["given", "stream"])
def test_two_ranks_equal_one_process_on_all_data(ranks, single_process, fit):
    for rank_values in ranks:
        for attr in ("weights_", "means_", "covariances_", "lower_bound_"):
            np.testing.assert_allclose(rank_values[f"{fit}_{attr}"],
                                       getattr(single_process, attr), rtol=0, atol=1e-6)
        np.testing.assert_allclose(rank_values[f"{fit}_history_"], single_process.history_,
                                   rtol=0, atol=1e-6)
        assert int(rank_values[f"{fit}_n_iter_"]) == single_process.n_iter_
        assert bool(rank_values[f"{fit}_converged_"]) == single_process.converged_


def test_weighted_shards_equal_one_weighted_process(ranks):
    """Each rank passes its shard's sample weights: the fit of all the data, weighted."""
    X = data()
    reference = estimator(**initial_values(X)).fit(X, sample_weight=sample_weights(len(X)))
    for rank_values in ranks:
        for attr in ("weights_", "means_", "covariances_", "lower_bound_", "history_"):
            np.testing.assert_allclose(rank_values[f"weighted_{attr}"],
                                       getattr(reference, attr), rtol=0, atol=1e-6)


def test_random_init_is_broadcast_so_ranks_agree(ranks):
    """No initial values and a different random_state per rank: rank 0's draw is used."""
    first, second = ranks
    for attr in ATTRIBUTES:
        np.testing.assert_array_equal(first[f"random_{attr}"], second[f"random_{attr}"])
    assert np.all(np.diff(first["random_history_"]) > -1e-9)  # EM over all data: monotone


def test_not_initialised_and_other_inference_name_the_argument():
    X, _ = make_gmm(60, 2, 2, random_state=0)
    assert not dist.is_initialized()
    with pytest.raises(ValueError, match="distributed=True needs torch.distributed.*torchrun"):
        GaussianMixture(2, distributed=True).fit(X)
    with pytest.raises(ValueError, match="distributed=True needs torch.distributed"):
        GaussianMixture(2, distributed=True).fit([X[:30], X[30:]])
    with pytest.raises(ValueError, match="distributed=True is implemented for inference='em' "
                                         "and 'svi', not inference='nuts'"):
        GaussianMixture(2, inference="nuts", distributed=True).fit(X)
    with pytest.raises(ValueError, match="distributed='yes' must be True or False"):
        GaussianMixture(2, distributed="yes").fit(X)
    for name in dist_em.TORCHRUN_VARIABLES:
        assert name not in os.environ
    with pytest.raises(ValueError, match="init_from_env: the environment lacks.*torchrun"):
        dist_em.init_from_env()


def test_helpers_on_one_rank(one_rank_group):
    X, _ = make_gmm(200, 3, 2, random_state=1)
    x = torch.as_tensor(X)
    resp = torch.softmax(torch.randn(200, 3, generator=torch.Generator().manual_seed(0)), 1)
    params = em_gmm.params_from_responsibilities(x, resp, "full")
    stats = em_gmm.e_step(x, params)
    reduced = dist_em.all_reduce_e_step(em_gmm.e_step)(x, params)
    for name in em_gmm.GMMStats.summed_fields:
        torch.testing.assert_close(torch.as_tensor(getattr(reduced, name)),
                                   torch.as_tensor(getattr(stats, name)))
    assert isinstance(reduced.n_samples, float) and reduced.shift is stats.shift
    sent = dist_em.broadcast_result(lambda: params, device="cpu")()
    assert isinstance(sent, gmm.GMMParams) and sent.covariance_type == "full"
    torch.testing.assert_close(sent.covariances, params.covariances)
    assert dist_em.check_shards(2, x.dtype, 200, 3) == 200
    with pytest.raises(ValueError, match="n_samples=2 over all ranks should be >= n_components=3"):
        dist_em.check_shards(2, x.dtype, 2, 3)
    with pytest.raises(ValueError, match="the first batch has 2 rows, fewer than n_components=3 "):
        GaussianMixture(3, distributed=True, progress=False).fit([X[:2], X[2:]])
    with pytest.raises(TypeError, match="summed_fields"):
        dist_em.all_reduce_stats(params)
    one = GaussianMixture(3, distributed=True, max_iter=5, tol=0, random_state=0,
                          progress=False).fit(X)
    plain = GaussianMixture(3, max_iter=5, tol=0, random_state=0, progress=False).fit(X)
    np.testing.assert_allclose(one.means_, plain.means_, atol=1e-12)
    assert one.history_ == pytest.approx(plain.history_, abs=1e-12)
