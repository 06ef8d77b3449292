"""Distributed SVI with ``missing="marginalize"``: 2 gloo processes against one.

Every rank must build the same priors as one process on all the data, so the moments of all
ranks' data leave NaN entries out (:func:`ppl_mixtures.distributed.data_moments`); then each
step's gradient is the sum of the shards' and the two processes take one process's steps.
Measured: the fitted arrays, history and ``lower_bound_`` agree to 6e-15 (relative) for
diag and full covariances; before the moments left NaN out, each rank fell back to its own
shard's priors and the means differed by 2e-4 (relative).
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from _launch import launch_ranks
from _missing_svi_worker import COVARIANCE_TYPES, incomplete_data, svi_estimator

from ppl_mixtures.distributed import data_moments

WORKER = Path(__file__).with_name("_missing_svi_worker.py")


def test_data_moments_leave_missing_entries_out():
    x = incomplete_data()
    mean, variance, rows = data_moments([torch.as_tensor(b) for b in np.array_split(x, 3)])
    np.testing.assert_allclose(mean.numpy(), np.nanmean(x, axis=0), rtol=1e-12)
    np.testing.assert_allclose(variance.numpy(), np.nanvar(x, axis=0, ddof=1), rtol=1e-12)
    assert rows == len(x)
    # weighted: a row of weight 2 counts twice
    counts = np.random.default_rng(0).integers(1, 3, size=len(x))
    weighted = data_moments([(torch.as_tensor(x), torch.as_tensor(counts, dtype=torch.float64))])
    repeated = np.repeat(x, counts, axis=0)
    np.testing.assert_allclose(weighted[0].numpy(), np.nanmean(repeated, axis=0), rtol=1e-12)
    np.testing.assert_allclose(weighted[1].numpy(), np.nanvar(repeated, axis=0, ddof=1),
                               rtol=1e-12)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return launch_ranks(WORKER, tmp_path_factory.mktemp("missing_svi_distributed"))


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_two_processes_equal_one_process_on_incomplete_data(ranks, covariance_type):
    single = svi_estimator(incomplete_data(), covariance_type, distributed=False)
    assert np.isfinite(single.lower_bound_)
    for values in ranks:
        for name in ("weights_", "means_", "covariances_", "history_", "lower_bound_"):
            np.testing.assert_allclose(values[f"{covariance_type}_{name}"],
                                       np.asarray(getattr(single, name)), rtol=1e-10,
                                       atol=1e-12)
