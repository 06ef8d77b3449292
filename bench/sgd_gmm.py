"""Max-component SGD for Gaussian mixtures (Gepperth & Pfülb 2021): speed, digits vs EM, memory.

Three sections, each printed as a table (and written with ``--json``):

1. throughput: training samples per second of :class:`SGDGMMTrainer` (diagonal covariances)
   on uniform random data in [0, 1], D in {64, 784}, K in {25, 100}, batch sizes 1 and 64,
   on the CPU and on CUDA when present;
2. digits: scikit-learn's 8 x 8 digits scaled to [0, 1] (1797 x 64), K = 25 on a 5 x 5 grid,
   B = 1, the paper's defaults (and the same with ``lr_final``): final max-component loss
   (eq. 2) and negative log-likelihood per sample against EM (diagonal, k-means start, every
   variance floored at sigma_min^2 after each M-step), seconds per epoch;
3. local principal directions on digits, S in {8, 16, 32}, against the diagonal model and the
   full one (S = D = 64): final losses and parameter memory (and peak CUDA memory of a step).

    python bench/sgd_gmm.py --quick            # about a minute on 2 cores
    python bench/sgd_gmm.py [--epochs 20] [--json out.json] [--figure centroids.png]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from sklearn.datasets import load_digits

from ppl_mixtures.inference.em import gmm as em_gmm
from ppl_mixtures.inference.em import run_em
from ppl_mixtures.inference.init import initial_responsibilities
from ppl_mixtures.inference.sgd_gmm import SGDConfig, SGDGMMTrainer
from ppl_mixtures.models import gmm

SIGMA_MIN = 0.15


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def throughput(device: str, n_features: int, n_components: int, batch_size: int,
               n_steps: int, seed: int = 0) -> float:
    """Training samples per second over ``n_steps`` steps, after 10 warm-up steps."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand((n_steps + 10) * batch_size, n_features, generator=generator,
                   dtype=torch.float32).to(device)
    trainer = SGDGMMTrainer(n_components, SGDConfig(batch_size=batch_size,
                                                    total_steps=n_steps + 10), seed=seed)
    trainer.partial_fit(x[: 10 * batch_size])
    synchronize(device)
    start = time.perf_counter()
    trainer.partial_fit(x[10 * batch_size:])
    synchronize(device)
    return n_steps * batch_size / (time.perf_counter() - start)


def em_with_floor(x: torch.Tensor, n_components: int, seed: int, max_iter: int):
    """EM with diagonal covariances, every variance floored at ``SIGMA_MIN**2``."""
    floor = SIGMA_MIN**2
    generator = torch.Generator(device=x.device).manual_seed(seed)

    def floored(params: gmm.GMMParams) -> gmm.GMMParams:
        return gmm.GMMParams(params.weights, params.means,
                             params.covariances.clamp_min(floor), "diag")

    def init(_: int) -> gmm.GMMParams:
        resp = initial_responsibilities(x, n_components, "kmeans", generator)
        return floored(em_gmm.params_from_responsibilities(x, resp, "diag", 0.0))

    start = time.perf_counter()
    result = run_em(x, init_params=init, e_step=em_gmm.e_step,
                    m_step=lambda stats: floored(em_gmm.m_step(stats, "diag", 0.0)),
                    max_iter=max_iter, tol=1e-4, progress=False)
    seconds = time.perf_counter() - start
    return result.params, seconds, result.n_iter


def losses(x: torch.Tensor, params: gmm.GMMParams) -> tuple[float, float]:
    """Max-component loss (eq. 2) and negative log-likelihood (eq. 1) per sample."""
    with torch.no_grad():
        log_joint = gmm.log_joint(x, params)
        return (float(-log_joint.amax(1).mean()),
                float(-torch.logsumexp(log_joint, 1).mean()))


def train_sgd(x: torch.Tensor, epochs: int, seed: int, **kwargs) -> tuple[SGDGMMTrainer, float]:
    covariance = "principal" if "n_principal_directions" in kwargs else "diag"
    rank = kwargs.pop("n_principal_directions", None)
    trainer = SGDGMMTrainer(25, SGDConfig(batch_size=1, sigma_min=SIGMA_MIN, **kwargs),
                            covariance_type=covariance, n_principal_directions=rank, seed=seed)
    start = time.perf_counter()
    trainer.fit(x, epochs)
    return trainer, (time.perf_counter() - start) / epochs


def peak_cuda_bytes(trainer: SGDGMMTrainer, x: torch.Tensor) -> int | None:
    if x.device.type != "cuda":
        return None
    torch.cuda.reset_peak_memory_stats()
    trainer.step(x[:1])
    return int(torch.cuda.max_memory_allocated())


def print_table(title: str, rows: list[dict]) -> None:
    print(f"\n## {title}")
    keys = list(rows[0])
    print(" | ".join(keys))
    for row in rows:
        print(" | ".join(f"{row[k]:.4g}" if isinstance(row[k], float) else str(row[k])
                         for k in keys))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="3 epochs, fewer timed steps (for a smoke run)")
    parser.add_argument("--epochs", type=int, default=20, help="SGD epochs on digits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", default=None, help="write all rows to this file")
    parser.add_argument("--figure", default=None, help="save the SGD centroid grid here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    epochs = 3 if args.quick else args.epochs
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    report: dict[str, list[dict]] = {"throughput": [], "digits": [], "principal": []}

    for device in devices:
        for n_features in (64, 784):
            for n_components in (25, 100):
                for batch_size in (1, 64):
                    n_steps = (100 if batch_size == 1 else 20) * (1 if args.quick else 10)
                    rate = throughput(device, n_features, n_components, batch_size, n_steps)
                    report["throughput"].append(dict(
                        device=device, D=n_features, K=n_components, B=batch_size,
                        samples_per_s=rate))
    print_table("throughput (float32, diag)", report["throughput"])

    device = devices[-1]
    x = torch.tensor(load_digits().data / 16.0, dtype=torch.float64, device=device)
    em_params, em_seconds, em_iter = em_with_floor(x, 25, args.seed, max_iter=100)
    em_mc, em_nll = losses(x, em_params)
    report["digits"].append(dict(method=f"EM diag, floor {SIGMA_MIN}^2 ({em_iter} it)",
                                 max_component_loss=em_mc, nll=em_nll,
                                 s_per_epoch=em_seconds / em_iter))
    runs = {"SGD diag, paper defaults": {}, "SGD diag, lr_final=3e-4": {"lr_final": 3e-4},
            "SGD diag, no annealing": {"sigma0": 0.012}}
    trainers = {}
    for name, options in runs.items():
        trainer, per_epoch = train_sgd(x, epochs, args.seed, **options)
        trainers[name] = trainer
        mc, nll = losses(x, trainer.to_gmm_params())
        used = len(torch.unique(trainer.log_joint(x).argmax(1)))
        report["digits"].append(dict(method=f"{name} ({epochs} ep, {used} used)",
                                     max_component_loss=mc, nll=nll, s_per_epoch=per_epoch))
    print_table(f"digits / 16, K = 25 (5 x 5), B = 1, seed {args.seed}", report["digits"])

    n_features = x.shape[1]
    diag = trainers["SGD diag, paper defaults"]
    rows = [dict(model="diag", values=diag.n_parameter_elements(),
                 cuda_peak_MiB=peak_cuda_bytes(diag, x), s_per_epoch=None,
                 **dict(zip(("max_component_loss", "nll"),
                            losses(x, diag.to_gmm_params()), strict=True)))]
    for rank in (8, 16, 32, n_features):
        trainer, per_epoch = train_sgd(x, epochs, args.seed, n_principal_directions=rank)
        mc, nll = losses(x, trainer.to_gmm_params())
        rows.append(dict(model=f"S={rank}" + (" (full)" if rank == n_features else ""),
                         values=trainer.n_parameter_elements(),
                         cuda_peak_MiB=peak_cuda_bytes(trainer, x), s_per_epoch=per_epoch,
                         max_component_loss=mc, nll=nll))
    rows.append(dict(model="full, stored as covariances (EM)",
                     values=25 * (n_features * n_features + n_features + 1),
                     cuda_peak_MiB=None, s_per_epoch=None, max_component_loss=None, nll=None))
    for row in rows:
        row["MiB_float64"] = row["values"] * 8 / 2**20
        if row["cuda_peak_MiB"] is not None:
            row["cuda_peak_MiB"] /= 2**20
    report["principal"] = rows
    print_table(f"principal directions, digits, K = 25, B = 1, {epochs} epochs", rows)

    if args.figure:
        from ppl_mixtures.plotting import plot_centroid_grid

        means = trainers["SGD diag, paper defaults"].means
        fig = plot_centroid_grid(means, (5, 5), (8, 8), title="SGD centroids, digits")
        fig.savefig(args.figure, dpi=120)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=1)


if __name__ == "__main__":
    main()
