"""Worker of tests/test_svi_distributed.py: SVI on this rank's shard, parameters to a file.

Launched by ``torch.distributed.run`` with 2 gloo processes; each trains the GMM's MAP guide
on rows ``rank::2`` of :func:`data`, on full batches, on minibatches and as a stream of two
batches (``fit_batches``), and writes
the parameters and losses to ``OUT/rank<r>.npz``; then the estimators with
``distributed=True``: ``GaussianMixture(inference="svi")`` and a small ``GMVAE``. Rank 1 starts from other initial values
than rank 0, so the broadcast from rank 0 is exercised.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyro
import torch
import torch.distributed as dist

from ppl_mixtures import GaussianMixture
from ppl_mixtures.datasets import make_gmm, make_pinwheel
from ppl_mixtures.estimators.gmvae import GMVAE
from ppl_mixtures.inference.svi import SVITrainer
from ppl_mixtures.models import gmm
from ppl_mixtures.models.priors import default_gmm_priors

FULL_BATCH_STEPS = 40
MINIBATCH = {"batch_size": 25, "max_steps": 600}
GMVAE_EPOCHS = 150


def data() -> torch.Tensor:
    X, _ = make_gmm(200, 3, 2, covariance_type="diag", separation=4.0, random_state=3)
    return torch.as_tensor(X, dtype=torch.float64)


def model_and_guide(x_all: torch.Tensor, shift: float = 0.0):
    """The GMM (priors from all the data, as every rank must share them) and its MAP guide."""
    model = gmm.GaussianMixtureModel(3, 2, "diag", default_gmm_priors(x_all, 3, "diag"))
    start = gmm.GMMParams(
        torch.full((3,), 1 / 3, dtype=torch.float64), x_all[:3].clone() + shift,
        torch.ones(3, 2, dtype=torch.float64), "diag",
    )
    return model, gmm.map_guide(model, start)


def train(x: torch.Tensor, x_all: torch.Tensor, distributed: bool, shift: float,
          **options) -> tuple[dict[str, np.ndarray], list[float], float]:
    pyro.clear_param_store()
    model, guide = model_and_guide(x_all, shift)
    options = {"max_steps": FULL_BATCH_STEPS, **options}
    stream = options.pop("stream", False)
    trainer = SVITrainer(model, guide, lr=0.05, tol=0, progress=False, seed=0,
                         distributed=distributed, **options)
    # stream: the shard as a list of two batches, each step on one of them
    result = (trainer.fit_batches(list(x.chunk(2)), n_samples=x.shape[0]) if stream
              else trainer.fit(x))
    params = gmm.guide_params(guide, "diag")
    values = {"weights": params.weights, "means": params.means, "variances": params.covariances}
    return ({k: v.detach().numpy() for k, v in values.items()}, result.history,
            trainer.evaluate_loss(x))


def gmm_estimator(x: torch.Tensor, distributed: bool) -> GaussianMixture:
    """GaussianMixture(inference="svi") on full batches from fixed initial values."""
    x_all = data()
    start = {"weights_init": np.full(3, 1 / 3), "means_init": x_all[:3].numpy(),
             "precisions_init": np.ones((3, 2))}
    return GaussianMixture(3, covariance_type="diag", inference="svi", max_iter=40, tol=0,
                           lr=0.05, random_state=0, progress=False, distributed=distributed,
                           **start).fit(x.numpy())


def gmvae_estimator(x: np.ndarray, distributed: bool, batch_size: int, seed: int = 0) -> GMVAE:
    """A small GMVAE on pinwheel data (two processes with batches of 50 = one with 100)."""
    return GMVAE(3, hidden_dims=(16,), prior_hidden_dims=(16,), latent_dim=2, w_dim=2,
                 max_iter=GMVAE_EPOCHS, batch_size=batch_size, lr=3e-3, dtype="float64",
                 random_state=seed, progress=False, distributed=distributed).fit(x)


def pinwheel() -> np.ndarray:
    return make_pinwheel(100, n_classes=3, random_state=0)[0]


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    x_all = data()
    shard = x_all[rank::2]
    arrays = {}
    for name, options in (("full", {}), ("mini", MINIBATCH), ("stream", {"stream": True})):
        params, history, loss = train(shard, x_all, True, shift=float(rank), **options)
        arrays.update({f"{name}_{k}": v for k, v in params.items()})
        arrays[f"{name}_history"] = np.asarray(history)
        arrays[f"{name}_loss"] = np.asarray(loss)
    est = gmm_estimator(shard, True)
    arrays.update(est_means=est.means_, est_covariances=est.covariances_,
                  est_weights=est.weights_, est_lower_bound=est.lower_bound_,
                  est_history=np.asarray(est.history_))
    vae = gmvae_estimator(pinwheel()[rank::2], True, batch_size=50)
    arrays.update(gmvae_lower_bound=vae.lower_bound_, gmvae_steps=vae.n_iter_,
                  gmvae_first_weight=vae.params_["encoder.0.weight"].numpy())
    np.savez(out / f"rank{rank}.npz", **arrays)
    # leave together: a rank exiting with the gloo group alive can abort at shutdown
    # ("terminate called without an active exception", SIGABRT)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
