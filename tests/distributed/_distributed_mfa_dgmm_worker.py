"""One rank of the distributed MFA/DGMM EM test: launched by tests/test_distributed_mfa_dgmm.py.

Usage: ``python -m torch.distributed.run --nproc-per-node 2 tests/_distributed_mfa_dgmm_worker.py
OUT``. Each rank fits rows ``rank::world_size`` of :func:`data` and writes ``OUT/rank{r}.npz``
(keys ``{fit}_{attribute}``), for ``model`` in ``mfa``, ``dgmm``:

``{model}_given``  EM from :func:`start` (a fixed function of all the data), shard as an array
                   (the DGMM with annealing, whose tempered E-steps are all-reduced too);
``{model}_stream`` the same, the shard as a list of batches;
``{model}_random`` no start given: drawn on rank 0 and broadcast (``random_state=rank``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ppl_mixtures.datasets import make_gmm
from ppl_mixtures.distributed import init_from_env
from ppl_mixtures.estimators.deep_gaussian import DeepGaussianMixture
from ppl_mixtures.estimators.factor_analyzers import MixtureOfFactorAnalyzers
from ppl_mixtures.inference.em import dgmm as em_dgmm
from ppl_mixtures.inference.em import mfa as em_mfa

MAX_ITER, LAYERS, FACTORS = 10, (2, 2), (3, 1)
ATTRIBUTES = ("weights_", "means_", "covariances_", "history_", "n_iter_", "converged_",
              "lower_bound_")


def data() -> np.ndarray:
    """The fixed float64 data set, shape (400, 5)."""
    X, _ = make_gmm(400, 3, 5, separation=2.0, random_state=6)
    return np.asarray(X, dtype=np.float64)


def start(model: str, X: np.ndarray):
    """Initial parameters of ``model`` computed from all of ``X`` (the same on every rank)."""
    x = torch.as_tensor(X)
    generator = torch.Generator().manual_seed(0)
    if model == "mfa":
        resp = torch.softmax(torch.randn(x.shape[0], 3, generator=generator), 1)
        return em_mfa.params_from_responsibilities(x, resp, 2)
    return em_dgmm.initial_params(x, LAYERS, FACTORS, "kmeans", generator)


def estimator(model: str, given=None, **kwargs):
    """The estimator of ``model``, starting from ``given`` when it is not None."""
    options = dict(max_iter=MAX_ITER, tol=0.0, progress=False, device="cpu", **kwargs)
    if model == "mfa":
        est = MixtureOfFactorAnalyzers(3, 2, **options)
    else:
        est = DeepGaussianMixture(LAYERS, FACTORS, anneal_start=3.0, anneal_iter=4, **options)
    if given is not None:
        est._initial_params = lambda x, generator: given
    return est


def main(out: Path) -> None:
    rank, world_size = init_from_env()
    X = data()
    shard = X[rank::world_size]
    fits = {}
    for model in ("mfa", "dgmm"):
        given = start(model, X)
        fits[f"{model}_given"] = estimator(model, given, distributed=True).fit(shard)
        fits[f"{model}_stream"] = estimator(model, given, distributed=True).fit(
            np.array_split(shard, 3))
        fits[f"{model}_random"] = estimator(model, distributed=True, random_state=rank).fit(
            shard)
    arrays = {f"{name}_{attr}": np.asarray(getattr(est, attr))
              for name, est in fits.items() for attr in ATTRIBUTES}
    np.savez(out / f"rank{rank}.npz", **arrays)
    # leave together: a rank exiting with the gloo group alive can abort at shutdown
    # ("terminate called without an active exception", SIGABRT)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
