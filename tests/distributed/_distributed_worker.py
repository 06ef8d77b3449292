"""One rank of the distributed GMM EM test: launched by tests/test_distributed.py with torchrun.

Usage: ``python -m torch.distributed.run --nproc-per-node 2 tests/_distributed_worker.py OUT``.
Each rank fits rows ``rank::world_size`` of the data of :func:`data` three ways and writes
``OUT/rank{r}.npz`` (keys ``{fit}_{attribute}``):

``given``  all initial values given, the shard as one array;
``stream`` the same, the shard as a list of batches (distributed and out-of-core at once);
``random`` no initial values (k-means on rank 0, broadcast), ``n_init=2``;
``weighted`` as ``given``, with the shard's rows of :func:`sample_weights`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch.distributed as dist

from ppl_mixtures import GaussianMixture
from ppl_mixtures.datasets import make_gmm
from ppl_mixtures.distributed import init_from_env

N_COMPONENTS, MAX_ITER, COVARIANCE_TYPE = 3, 12, "full"
ATTRIBUTES = ("weights_", "means_", "covariances_", "history_", "n_iter_", "converged_",
              "lower_bound_")


def data() -> np.ndarray:
    """The fixed float64 data set, shape (600, 4)."""
    X, _ = make_gmm(600, N_COMPONENTS, 4, separation=2.0, random_state=5)
    return np.asarray(X, dtype=np.float64)


def sample_weights(n_samples: int) -> np.ndarray:
    """Integer weights 0, 1, 2, 3, 0, 1, ... of the rows of :func:`data`."""
    return (np.arange(n_samples) % 4).astype(np.float64)


def initial_values(X: np.ndarray) -> dict[str, np.ndarray]:
    """``weights_init``, ``means_init``, ``precisions_init`` from one EM step of a fixed start."""
    start = GaussianMixture(N_COMPONENTS, covariance_type=COVARIANCE_TYPE, max_iter=1,
                            random_state=0, progress=False, device="cpu").fit(X)
    return {"weights_init": start.weights_, "means_init": start.means_,
            "precisions_init": start.precisions_}


def estimator(**kwargs) -> GaussianMixture:
    return GaussianMixture(N_COMPONENTS, covariance_type=COVARIANCE_TYPE, max_iter=MAX_ITER,
                           tol=0.0, progress=False, device="cpu", **kwargs)


def main(out: Path) -> None:
    rank, world_size = init_from_env()
    X = data()
    shard = X[rank::world_size]
    given = initial_values(X)
    fits = {
        "given": estimator(distributed=True, **given).fit(shard),
        "stream": estimator(distributed=True, **given).fit(np.array_split(shard, 4)),
        "random": estimator(distributed=True, n_init=2, random_state=rank).fit(shard),
        "weighted": estimator(distributed=True, **given).fit(
            shard, sample_weight=sample_weights(len(X))[rank::world_size]),
    }
    arrays = {f"{name}_{attr}": np.asarray(getattr(est, attr))
              for name, est in fits.items() for attr in ATTRIBUTES}
    np.savez(out / f"rank{rank}.npz", **arrays)
    # leave together: a rank exiting with the gloo group alive can abort at shutdown
    # ("terminate called without an active exception", SIGABRT)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
