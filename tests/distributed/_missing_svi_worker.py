"""Worker of tests/distributed/test_missing_svi_distributed.py: distributed SVI with
``missing="marginalize"`` on this rank's rows ``rank::2`` of :func:`incomplete_data`.

Launched by ``torch.distributed.run`` with 2 gloo processes; each fits
``GaussianMixture(inference="svi", missing="marginalize", distributed=True)`` (diag and full)
and writes the fitted arrays to ``OUT/rank<r>.npz``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch.distributed as dist

from ppl_mixtures import GaussianMixture
from ppl_mixtures.datasets import make_gmm, mask_missing

COVARIANCE_TYPES = ("diag", "full")


def incomplete_data() -> np.ndarray:
    """120 rows of a 3-component 3-D mixture, 20 % of the entries missing at random."""
    X, _ = make_gmm(120, 3, 3, separation=3.0, random_state=5)
    return mask_missing(X, 0.2, random_state=5, keep_observed=True)


def svi_estimator(x: np.ndarray, covariance_type: str, distributed: bool) -> GaussianMixture:
    """Full-batch SVI from fixed initial values (the column means of the observed entries
    plus fixed offsets; unit precisions)."""
    x_all = incomplete_data()
    centre = np.nanmean(x_all, axis=0)
    means = centre + np.array([[-1.0, 0.0, 0.5], [0.0, 1.0, -0.5], [1.0, -1.0, 0.0]])
    precisions = (np.ones((3, 3)) if covariance_type == "diag"
                  else np.repeat(np.eye(3)[None], 3, axis=0))
    return GaussianMixture(3, covariance_type=covariance_type, inference="svi", max_iter=30,
                           tol=0, lr=0.05, random_state=0, progress=False,
                           missing="marginalize", distributed=distributed,
                           weights_init=np.full(3, 1 / 3), means_init=means,
                           precisions_init=precisions).fit(x)


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    shard = incomplete_data()[rank::2]
    arrays = {}
    for covariance_type in COVARIANCE_TYPES:
        est = svi_estimator(shard, covariance_type, True)
        for name in ("weights_", "means_", "covariances_", "history_", "lower_bound_"):
            arrays[f"{covariance_type}_{name}"] = np.asarray(getattr(est, name))
    np.savez(out / f"rank{rank}.npz", **arrays)
    # leave together: a rank exiting with the gloo group alive can abort at shutdown
    # ("terminate called without an active exception", SIGABRT)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
