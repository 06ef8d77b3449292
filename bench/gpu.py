"""Every GPU measurement in one run, written as one table (the performance issue's list).

Sections, each timed on ``--device`` (CUDA when present) with the reference beside it:

* ``em``: ``GaussianMixture`` EM per covariance type, float32 and float64, at the benchmark
  shape (N = 100k, D = 32, K = 16), large-K diag (200k, 64, 128) and D = 784 full (1e4, 784,
  16), from the same start as scikit-learn (``bench/gmm_em.py``); scikit-learn's CPU seconds
  per iteration in the same row (once per shape and type: it does not depend on the device);
* ``svi``: the GMM's ``SVITrainer`` step (full and diag, N = 50k, D = 10, K = 10) against the
  hand-written torch loop of ``bench/gmm_svi.py``, float32 and float64;
* ``gmvae``: one epoch of the GMVAE at ``digits_mlp`` (digits, batch 128), Pyro against the
  plain torch loop (``bench/gmvae.py``);
* ``sgd``: training samples per second of the max-component SGD (``bench/sgd_gmm.py``);
* ``nccl``: with two or more GPUs, a 2-process ``torchrun`` of ``ppl-mixtures fit gmm
  --distributed`` (NCCL), wall seconds of the launch.

Stops starting new rows once ``--budget`` seconds have passed (default 420: the whole run
within 8 minutes), and says which rows it skipped. Writes the table (Markdown) and the rows
(JSON) to ``--out``. Without a GPU, ``--device cpu --quick`` runs every section on small
shapes (the test suite does, so the script cannot rot unseen).

    python bench/gpu.py [--out runs/gpu] [--budget 420]
    python bench/gpu.py --device cpu --quick     # a smoke run of every section
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gmm_em  # noqa: E402  (the bench scripts beside this one)
import gmm_svi  # noqa: E402
import gmvae as gmvae_bench  # noqa: E402
import sgd_gmm  # noqa: E402

#: (name, N, D, K, covariance types, iterations); ``--quick`` shrinks N and the iterations
EM_CASES = (
    ("benchmark", 100_000, 32, 16, ("full", "tied", "diag", "spherical"), 10),
    ("large-k", 200_000, 64, 128, ("diag", "spherical"), 5),
    ("d784", 10_000, 784, 16, ("full",), 2),
)
QUICK_EM_CASES = (("benchmark", 2_000, 8, 4, ("full", "tied", "diag", "spherical"), 3),)


class Budget:
    """Seconds left of the run; rows that would start after it are recorded as skipped."""

    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds
        self.skipped: list[str] = []

    def allows(self, label: str) -> bool:
        if time.perf_counter() < self.end:
            return True
        self.skipped.append(label)
        return False


def _em_data(n: int, d: int, k: int) -> np.ndarray:
    if d >= 256:  # make_gmm draws an (N, D, D) tensor of factors: too large here
        rng = np.random.default_rng(0)
        means = rng.normal(scale=2.0, size=(k, d))
        labels = rng.integers(k, size=n)
        return means[labels] + rng.normal(size=(n, d)) * rng.uniform(0.5, 2.0, (k, d))[labels]
    X, _ = gmm_em.make_gmm(n, k, d, separation=2.0, random_state=0)
    return X


def em_rows(device: str, quick: bool, budget: Budget) -> list[dict]:
    rows = []
    for name, n, d, k, types, iters in (QUICK_EM_CASES if quick else EM_CASES):
        X = _em_data(n, d, k)
        for covariance_type in types:
            if not budget.allows(f"em {name} {covariance_type}"):
                continue
            init = gmm_em.initial_point(X, k, covariance_type)
            sk_seconds, _, sk_score = gmm_em.fit_sklearn(X, init, covariance_type, iters)
            for dtype in ("float32", "float64"):
                gmm_em.fit_ours(X, init, covariance_type, 1, dtype, device)  # warm-up
                seconds, _, score = gmm_em.fit_ours(X, init, covariance_type, iters, dtype,
                                                    device)
                rows.append({
                    "section": "em", "case": f"{name} ({n}, {d}, {k}) {covariance_type}",
                    "dtype": dtype, "device": device, "ours": seconds / iters,
                    "reference": sk_seconds / iters, "reference_name": "scikit-learn CPU",
                    "unit": "s/iteration", "check": f"dLL {score - sk_score:.1e}",
                })
                print(json.dumps(rows[-1]), flush=True)
    return rows


def svi_rows(device: str, quick: bool, budget: Budget) -> list[dict]:
    rows = []
    n, d, k, steps = (2_000, 4, 3, 5) if quick else (50_000, 10, 10, 30)
    X, _ = gmm_em.make_gmm(n, k, d, separation=3.0, random_state=0)
    for covariance_type in ("full", "diag"):
        for dtype in (torch.float32, torch.float64):
            label = f"svi {covariance_type} {dtype}"
            if not budget.allows(label):
                continue
            x = torch.as_tensor(X, dtype=dtype, device=device)
            init = gmm_svi_init(x, k, covariance_type)
            model, guide = gmm_svi.gmm_model_guide(x, init, covariance_type)
            ours = gmm_svi.trainer_seconds(model, guide, x, 0.01, steps, device)
            reference = gmm_svi.time_steps(gmm_svi.torch_step(x, init, 0.01), steps, device)
            rows.append({
                "section": "svi", "case": f"GMM ({n}, {d}, {k}) {covariance_type}",
                "dtype": str(dtype).replace("torch.", ""), "device": device, "ours": ours,
                "reference": reference, "reference_name": "torch loop", "unit": "s/step",
                "check": f"ratio {ours / reference:.2f}",
            })
            print(json.dumps(rows[-1]), flush=True)
    return rows


def gmm_svi_init(x: torch.Tensor, k: int, covariance_type: str):
    """The start both SVI loops share: EM-style parameters from random responsibilities."""
    from ppl_mixtures.inference.em import gmm as em_gmm

    generator = torch.Generator().manual_seed(0)
    resp = torch.softmax(torch.randn(x.shape[0], k, generator=generator, dtype=x.dtype), 1)
    return em_gmm.params_from_responsibilities(x, resp.to(x.device), covariance_type)


def gmvae_rows(device: str, quick: bool, budget: Budget) -> list[dict]:
    if not budget.allows("gmvae digits_mlp"):
        return []
    from sklearn.datasets import load_digits

    y = torch.as_tensor(load_digits().data / 16.0, dtype=torch.float32, device=device)
    if quick:
        y = y[:256]
    args = argparse.Namespace(epochs=1, batch_size=128, z_inference="enumerate")
    gmvae_bench.pyro_seconds_per_epoch(y, args, "digits_mlp")  # warm-up
    ours = gmvae_bench.pyro_seconds_per_epoch(y, args, "digits_mlp")
    reference = gmvae_bench.torch_seconds_per_epoch(y, args, "digits_mlp")
    row = {"section": "gmvae", "case": f"digits_mlp, {y.shape[0]} rows, batch 128",
           "dtype": "float32", "device": device, "ours": ours, "reference": reference,
           "reference_name": "torch loop", "unit": "s/epoch",
           "check": f"ratio {ours / reference:.2f}"}
    print(json.dumps(row), flush=True)
    return [row]


def sgd_rows(device: str, quick: bool, budget: Budget) -> list[dict]:
    rows = []
    shapes = ((64, 25, 64),) if quick else ((64, 25, 64), (784, 100, 64), (784, 100, 1))
    for n_features, n_components, batch_size in shapes:
        label = f"sgd D={n_features} K={n_components} B={batch_size}"
        if not budget.allows(label):
            continue
        steps = 20 if quick else 500
        rate = sgd_gmm.throughput(device, n_features, n_components, batch_size, steps)
        rows.append({"section": "sgd", "case": label, "dtype": "float32", "device": device,
                     "ours": rate, "reference": math.nan, "reference_name": "–",
                     "unit": "samples/s", "check": ""})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def nccl_rows(device: str, quick: bool, budget: Budget, out: Path) -> list[dict]:
    if device != "cuda" or torch.cuda.device_count() < 2 or not budget.allows("nccl"):
        return []
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "-m", "ppl_mixtures.cli", "fit", "gmm", "--distributed", "--device", "cuda",
               "--data", "gmm", "--max-iter", "20", "--no-progress", "--seed", "0",
               "--out", str(out / "nccl_fit")]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    seconds = time.perf_counter() - start
    row = {"section": "nccl", "case": "torchrun 2 GPUs: fit gmm --distributed",
           "dtype": "float64", "device": device, "ours": seconds, "reference": math.nan,
           "reference_name": "–", "unit": "s (launch)",
           "check": "ok" if done.returncode == 0 else f"exit {done.returncode}: "
                                                      f"{done.stderr[-300:]!r}"}
    print(json.dumps(row), flush=True)
    return [row]


def table(rows: list[dict], skipped: list[str], header: str) -> str:
    lines = [header, "",
             "| section | case | dtype | ours | reference | reference / ours | check |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        speed = row["reference"] / row["ours"] if math.isfinite(row["reference"]) else math.nan
        reference = ("–" if not math.isfinite(row["reference"])
                     else f"{row['reference']:.4g} ({row['reference_name']})")
        lines.append(f"| {row['section']} | {row['case']} | {row['dtype']} | "
                     f"{row['ours']:.4g} {row['unit']} | {reference} | "
                     f"{'–' if math.isnan(speed) else f'{speed:.2f}'} | {row['check']} |")
    if skipped:
        lines += ["", f"Skipped (over the time budget): {', '.join(skipped)}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small shapes (a smoke run)")
    parser.add_argument("--budget", type=float, default=420.0,
                        help="seconds after which no new row starts")
    parser.add_argument("--sections", default="em,svi,gmvae,sgd,nccl")
    parser.add_argument("--out", default="runs/gpu", help="folder for gpu.md and gpu.json")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device; pass --device cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    budget = Budget(args.budget)
    started = time.perf_counter()
    sections = args.sections.split(",")
    rows: list[dict] = []
    for name, run in (("em", em_rows), ("svi", svi_rows), ("gmvae", gmvae_rows),
                      ("sgd", sgd_rows)):
        if name in sections:
            rows += run(args.device, args.quick, budget)
    if "nccl" in sections:
        rows += nccl_rows(args.device, args.quick, budget, out)
    name = (torch.cuda.get_device_name() if args.device == "cuda"
            else f"CPU, {torch.get_num_threads()} threads")
    header = (f"# bench/gpu.py on {name} (torch {torch.__version__}, "
              f"{time.perf_counter() - started:.0f} s{', quick' if args.quick else ''})")
    report = table(rows, budget.skipped, header)
    (out / "gpu.md").write_text(report)
    (out / "gpu.json").write_text(json.dumps(rows, indent=1))
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
