"""Seconds per epoch of the GMVAE on scikit-learn's digits: Pyro (SVITrainer) vs plain torch.

Both loops optimise the same objective on the same networks (each preset of ``--presets``,
Bernoulli likelihood, K=10): the Pyro path runs ``TraceEnum_ELBO`` over
:class:`ppl_mixtures.models.gmvae.GMVAEModel`, the torch path minimises
``-elbo_per_sample(...).mean()`` with ``torch.optim.Adam`` over the same minibatches' sizes.
Both helpers are held equal (same draws, same loss) by ``tests/estimators/test_gmvae.py``.
The column ``pyro z-site`` runs the model with ``z_site=True`` (z enumerated at its own
discrete site, the model of earlier releases) for comparison. The three loops are timed in
turn, ``--rounds`` times, so that a machine shared with other jobs slows them alike; the
table gives the fastest round of each and the range of the ratios over the rounds.

Usage::

    python bench/gmvae.py [--epochs 3] [--batch-size 128] [--device cpu|cuda] [--z-inference ...]
                          [--presets digits_mlp digits_conv mnist_mlp mnist_conv] [--threads 1]
                          [--rounds 3]

The 8x8 presets run on the digits; ``mnist_conv`` (28x28) and ``svhn_conv`` (3x32x32) need
bigger images, so they run on as many uniform random images of their size (speed only).
"""

from __future__ import annotations

import argparse
import math
import time

import pyro
import torch

from ppl_mixtures.datasets import load_digits
from ppl_mixtures.inference.svi import SVITrainer
from ppl_mixtures.models import gmvae

#: Image size (channels * side**2) each convolutional preset was made for.
IMAGE_FEATURES = {"mnist_conv": 28 * 28, "svhn_conv": 3 * 32 * 32}


def _networks(n_features: int, device: torch.device, preset: str) -> gmvae.GMVAENetworks:
    torch.manual_seed(0)
    nets = gmvae.GMVAENetworks(n_features, 10, gmvae.PRESETS[preset], "bernoulli")
    return nets.to(device=device, dtype=torch.float32)


def pyro_seconds_per_epoch(y: torch.Tensor, args: argparse.Namespace, preset: str,
                           z_site: bool = False) -> float:
    pyro.clear_param_store()
    nets = _networks(y.shape[1], y.device, preset)
    model = gmvae.GMVAEModel(nets, args.z_inference, free_bits=0.0, z_site=z_site)
    steps = args.epochs * math.ceil(y.shape[0] / args.batch_size)
    trainer = SVITrainer(model, model.guide, lr=1e-3, batch_size=args.batch_size,
                         max_steps=steps, tol=0, progress=False, seed=0)
    result = trainer.fit(y)
    return result.seconds / args.epochs


def torch_seconds_per_epoch(y: torch.Tensor, args: argparse.Namespace, preset: str) -> float:
    nets = _networks(y.shape[1], y.device, preset)
    optimizer = torch.optim.Adam(nets.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(args.epochs):
        for batch in torch.randperm(y.shape[0], generator=generator).split(args.batch_size):
            optimizer.zero_grad()
            elbo = gmvae.elbo_per_sample(nets, y[batch.to(y.device)], 1, args.z_inference)
            (-elbo.mean()).backward()
            optimizer.step()
    if y.device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / args.epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--z-inference", choices=gmvae.Z_INFERENCE, default="enumerate")
    parser.add_argument("--presets", nargs="+", choices=tuple(gmvae.PRESETS),
                        default=["digits_mlp", "digits_conv", "mnist_mlp", "mnist_conv"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timings of each")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    X, _ = load_digits()
    digits = torch.as_tensor(X, dtype=torch.float32, device=args.device)
    print(f"device={args.device} z_inference={args.z_inference} batch_size={args.batch_size} "
          f"epochs={args.epochs} threads={torch.get_num_threads()}")
    print(f"{'preset':<12}{'data':<18}{'pyro s/epoch':>14}{'pyro z-site':>13}"
          f"{'torch s/epoch':>15}{'ratio':>8}{'ratio range':>15}{'z-site ratio':>14}")
    for preset in args.presets:
        y, data = digits, "digits 8x8"
        if preset in IMAGE_FEATURES:
            generator = torch.Generator().manual_seed(0)
            y = torch.rand(X.shape[0], IMAGE_FEATURES[preset], generator=generator)
            y, data = y.to(args.device), f"random {IMAGE_FEATURES[preset]}"
        warm_up = argparse.Namespace(**{**vars(args), "epochs": 1})
        pyro_seconds_per_epoch(y[:256], warm_up, preset)  # first calls pay one-time costs
        pyro_seconds_per_epoch(y[:256], warm_up, preset, z_site=True)
        torch_seconds_per_epoch(y[:256], warm_up, preset)
        pyro, old, plain = [], [], []
        for _ in range(args.rounds):
            pyro.append(pyro_seconds_per_epoch(y, args, preset))
            old.append(pyro_seconds_per_epoch(y, args, preset, z_site=True))
            plain.append(torch_seconds_per_epoch(y, args, preset))
        ratios = [p / t for p, t in zip(pyro, plain, strict=True)]
        print(f"{preset:<12}{data:<18}{min(pyro):>14.3f}{min(old):>13.3f}{min(plain):>15.3f}"
              f"{min(pyro) / min(plain):>8.2f}{f'{min(ratios):.2f}-{max(ratios):.2f}':>15}"
              f"{min(old) / min(plain):>14.2f}", flush=True)


if __name__ == "__main__":
    main()
