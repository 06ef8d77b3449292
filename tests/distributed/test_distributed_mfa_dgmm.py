"""Distributed MFA and DGMM EM: 2 gloo processes on loopback, each with half the data (rows
``rank::2``), equal one process on all the data to 1e-6, from the same start.

The worker (``_distributed_mfa_dgmm_worker.py``) is launched once by ``torch.distributed.run``
in a subprocess with a bounded time; the argument checks and a one-rank group run in-process.
"""

from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist
from _distributed_mfa_dgmm_worker import ATTRIBUTES, data, estimator, start
from _launch import launch_ranks

from ppl_mixtures.datasets import make_gmm
from ppl_mixtures.estimators.deep_gaussian import DeepGaussianMixture
from ppl_mixtures.estimators.factor_analyzers import MixtureOfFactorAnalyzers

WORKER = Path(__file__).with_name("_distributed_mfa_dgmm_worker.py")
MODELS = ("mfa", "dgmm")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Both ranks' fitted attributes, from one torchrun launch shared by the tests below."""
    return launch_ranks(WORKER, tmp_path_factory.mktemp("distributed_mfa_dgmm"))


@pytest.fixture(scope="module")
def single_process():
    X = data()
    return {model: estimator(model, start(model, X)).fit(X) for model in MODELS}


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("fit", ["given", "stream"])
def test_two_ranks_equal_one_process_on_all_data(ranks, single_process, model, fit):
    reference = single_process[model]
    for rank_values in ranks:
        for attr in ("weights_", "means_", "covariances_", "lower_bound_"):
            np.testing.assert_allclose(rank_values[f"{model}_{fit}_{attr}"],
                                       getattr(reference, attr), rtol=0, atol=1e-6,
                                       err_msg=attr)
        np.testing.assert_allclose(rank_values[f"{model}_{fit}_history_"], reference.history_,
                                   rtol=0, atol=1e-6)
        assert int(rank_values[f"{model}_{fit}_n_iter_"]) == reference.n_iter_
        assert bool(rank_values[f"{model}_{fit}_converged_"]) == reference.converged_


@pytest.mark.parametrize("model", MODELS)
def test_random_start_is_broadcast_so_ranks_agree(ranks, model):
    """No start given and a different random_state per rank: rank 0's draw is used."""
    first, second = ranks
    for attr in ATTRIBUTES:
        np.testing.assert_array_equal(first[f"{model}_random_{attr}"],
                                      second[f"{model}_random_{attr}"])
    assert np.all(np.diff(first[f"{model}_random_history_"]) > -1e-9)  # monotone EM


def test_not_initialised_and_other_inference_name_the_argument():
    X, _ = make_gmm(60, 2, 4, random_state=0)
    assert not dist.is_initialized()
    for est in (MixtureOfFactorAnalyzers(2, 1, distributed=True),
                DeepGaussianMixture((2,), (1,), distributed=True)):
        assert est.get_params()["distributed"] is True
        with pytest.raises(ValueError, match="distributed=True needs torch.distributed.*torchrun"):
            est.fit(X)
        with pytest.raises(ValueError, match="distributed=True needs torch.distributed"):
            est.fit([X[:30], X[30:]])
    with pytest.raises(ValueError, match="distributed=True is implemented for inference='em'"):
        MixtureOfFactorAnalyzers(2, 1, inference="svi", distributed=True).fit(X)
    with pytest.raises(ValueError, match="distributed=True is implemented for inference='em'"):
        DeepGaussianMixture((2,), (1,), inference="svi", distributed=True).fit(X)
    with pytest.raises(ValueError, match="distributed='yes' must be True or False"):
        MixtureOfFactorAnalyzers(2, 1, distributed="yes").fit(X)


@pytest.mark.usefixtures("one_rank_group")
def test_one_rank_equals_plain_fit():
    """On one rank, distributed EM (draw on rank 0, broadcast, all-reduce) is plain EM."""
    X, _ = make_gmm(200, 3, 5, random_state=1)
    options = dict(max_iter=5, tol=0.0, random_state=0, progress=False, device="cpu")
    for est in (MixtureOfFactorAnalyzers(3, 2, **options),
                DeepGaussianMixture((2, 2), (3, 1), anneal_start=2.0, anneal_iter=3,
                                    **options)):
        one = est.set_params(distributed=True).fit(X)
        one_means, one_history = one.means_, list(one.history_)
        plain = est.set_params(distributed=False).fit(X)
        # equal up to the rounding of the all-reduced sums (summation order), which the DGMM
        # default's SQUAREM extrapolation amplifies: measured up to 3.6e-10 on the means
        np.testing.assert_allclose(one_means, plain.means_, rtol=0, atol=1e-8)
        assert one_history == pytest.approx(plain.history_, abs=1e-8)
    with pytest.raises(ValueError, match="realign=True runs k-means on the scores of all the "
                                         "data at once, which distributed=True"):
        DeepGaussianMixture((2, 2), (3, 1), realign=True, distributed=True).fit(X)
    small = DeepGaussianMixture((2, 2), (3, 1), distributed=True, progress=False)
    with pytest.raises(ValueError, match="n_samples=3 over all ranks should be >= "
                                         "n_components=4"):
        small.fit(X[:3])
    with pytest.raises(ValueError, match=r"the first batch has 3 rows, fewer than "
                                         r"n_components=\(2, 2\) \(4 clusters\)"):
        small.fit([X[:3], X[3:]])


@pytest.mark.usefixtures("one_rank_group")
def test_one_rank_relabels_as_plain_fit():
    """The default's relabelling of the deeper layers (``relabel=True``) takes its E-steps
    through the all-reduced sums: from a start whose second-layer labels are swapped under
    one first-layer component, one rank makes the same change and ends at the same fit."""
    import warnings

    import torch
    from sklearn.exceptions import ConvergenceWarning

    from ppl_mixtures.datasets import make_dgmm
    from ppl_mixtures.inference.em import dgmm as em_dgmm
    from ppl_mixtures.inference.em import dgmm_relabel
    from ppl_mixtures.models import dgmm

    X, _, _, params = make_dgmm(600, 9, (2, 2), (4, 2), random_state=0, standardize=True)
    x = torch.as_tensor(X)
    truth = dgmm.DGMMParams.from_numpy(params)
    swapped = dgmm_relabel.relabelled(em_dgmm.e_step(x, truth), 1, 1, (1, 0))
    fits = {}
    for distributed in (True, False):
        est = DeepGaussianMixture((2, 2), (4, 2), max_iter=2, progress=False, device="cpu",
                                  distributed=distributed)
        est._initial_params = lambda rows, generator: swapped
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter=2: a short search
            fits[distributed] = est.fit(X)
    one, plain = fits[True], fits[False]
    assert one.relabel_changes_ == plain.relabel_changes_ != []
    assert one.history_ == pytest.approx(plain.history_, abs=1e-6)
    np.testing.assert_allclose(one.means_, plain.means_, rtol=0, atol=1e-5)
