"""GMM EM at scale: seconds per iteration as N grows, memory per point, 1 and 2 processes.

For every (N, K, D) of the grid, in a fresh process each (so that peak memory is the point's
own), this script times EM iterations of ``ppl_mixtures`` (full covariances by default):

* 1 process, and 2 processes launched by ``torch.distributed.run`` (gloo on CPU, NCCL on
  CUDA), each holding N / 2 rows and all-reducing the E-step statistics, as
  ``GaussianMixture(distributed=True)`` does;
* scikit-learn's ``GaussianMixture`` on the same data and initial point (1 process), as
  ``(t(1 + I iterations) - t(1 iteration)) / I``, so its initialisation is not counted.

Where the time goes, per EM iteration: ``cholesky`` (the K D x D factorisations and
triangular inverses), ``log_prob`` (whitening matmul, log densities, softmax), ``moments``
(the weighted second-moment matmul of the E-step), ``m_step``, ``all_reduce`` (the collective
itself) and ``wait`` (a barrier before it: the time a rank waits for the slower one). Memory:
peak resident set (CPU; ``torch.cuda.max_memory_allocated`` on CUDA) above the process's
footprint before the data was made, per data point, the data included.

Points whose projected time (from the throughput measured on smaller points) exceeds
``--budget-s``, or whose data would not fit in ``--max-memory-gb``, are skipped and listed as
such. Threads are pinned to 1 per process (``OMP_NUM_THREADS=1``) so that 1 and 2 processes
compare on equal cores. Writes ``scale.csv`` and ``scale.png`` to ``--out``.

    python bench/scale.py --quick            # about a minute: N = 1e4, 1e5; K = 16; D = 32
    python bench/scale.py                    # N = 1e4 .. 1e6, K = 16, 64, D = 32, 784
    python bench/scale.py --max-n 1e7 --budget-s 600
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from ppl_mixtures.inference.em import gmm as em_gmm
from ppl_mixtures.models import gmm

PARTS = ("cholesky", "log_prob", "moments", "wait", "all_reduce", "m_step")
COLUMNS = ("engine", "processes", "n", "k", "d", "covariance_type", "dtype", "device",
           "seconds_per_iter", "cpu_seconds_per_iter", *(f"{p}_s" for p in PARTS), "peak_bytes_per_point",
           "data_bytes_per_point", "status")
SINGLE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


# ------------------------------------------------------------------------------ one process


def current_rss() -> int:
    """Resident set size now, in bytes (Linux ``/proc``)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    """Peak resident set size of this process so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def make_shard(n: int, k: int, d: int, rank: int, dtype: torch.dtype, device: torch.device,
               covariance_type: str = "full") -> tuple[torch.Tensor, gmm.GMMParams]:
    """``n`` points of a K-cluster mixture (this rank's seed) and a common initial point.

    Filled in chunks, so no temporary as large as the data is made.

    Returns
    -------
    x : Tensor, shape (n, d)
    start : GMMParams
        Uniform weights, the true centres shifted by noise, unit covariances (the same on
        every rank).
    """
    common = torch.Generator().manual_seed(1234)
    centres = 4.0 * torch.randn(k, d, generator=common, dtype=dtype)
    start_means = centres + torch.randn(k, d, generator=common, dtype=dtype)
    local = torch.Generator().manual_seed(10_000 + rank)
    x = torch.empty(n, d, dtype=dtype)
    for begin in range(0, n, 65536):
        rows = min(65536, n - begin)
        labels = torch.randint(k, (rows,), generator=local)
        x[begin:begin + rows] = torch.randn(rows, d, generator=local, dtype=dtype)
        x[begin:begin + rows] += centres[labels]
    start = gmm.GMMParams(torch.full((k,), 1.0 / k, dtype=dtype), start_means,
                          unit_covariances(k, d, covariance_type, dtype), covariance_type)
    return x.to(device), start.to(device)


def unit_covariances(k: int, d: int, covariance_type: str, dtype: torch.dtype) -> torch.Tensor:
    """Identity covariances in the layout of ``covariance_type``."""
    eye = torch.eye(d, dtype=dtype)
    layouts = {"full": lambda: eye.expand(k, d, d).clone(), "tied": lambda: eye,
               "diag": lambda: torch.ones(k, d, dtype=dtype),
               "tied_diag": lambda: torch.ones(d, dtype=dtype),
               "spherical": lambda: torch.ones(k, dtype=dtype)}
    return layouts[covariance_type]()


class Timers:
    """Wall-clock seconds per named part, summed over the timed iterations."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = dict.fromkeys(PARTS, 0.0)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def __call__(self, part: str) -> Iterator[None]:
        self.sync()
        start = time.perf_counter()
        yield
        self.sync()
        self.seconds[part] += time.perf_counter() - start


def timed_em_iteration(x: torch.Tensor, params: gmm.GMMParams, timers: Timers,
                       distributed: bool) -> gmm.GMMParams:
    """One EM iteration, split into its parts (the library's own functions, in order)."""
    from ppl_mixtures.distributed import all_reduce_stats

    whitening_s = 0.0
    if params.covariance_type not in gmm.DIAGONAL_TYPES:
        before = timers.seconds["cholesky"]
        with timers("cholesky"):
            gmm.whitening(params)
        whitening_s = timers.seconds["cholesky"] - before
    blocks = x.split(em_gmm.e_step_block_rows(params.n_components, x.shape[1]))  # diagonal e_step's blocks
    stats = None
    for block in blocks:
        with timers("log_prob"):
            resp, sample_ll = em_gmm.responsibilities(block, params)
        with timers("moments"):
            block_stats = em_gmm.stats_from_responsibilities(block, resp, sample_ll, params)
            stats = block_stats if stats is None else stats + block_stats
        del resp, sample_ll
    # responsibilities() whitens once per block: book that time as "cholesky", not "log_prob"
    timers.seconds["cholesky"] += whitening_s * (len(blocks) - 1)
    timers.seconds["log_prob"] -= whitening_s * len(blocks)
    if distributed:
        import torch.distributed as dist

        with timers("wait"):
            dist.barrier()
        with timers("all_reduce"):
            stats = all_reduce_stats(stats)
    with timers("m_step"):
        return em_gmm.m_step(stats, params.covariance_type, 1e-6)


def run_ours(config: dict) -> dict:
    """This process's share of one point: EM iterations of ppl_mixtures, timed by part."""
    from ppl_mixtures import distributed as dist_em

    torch.set_num_threads(1)
    distributed = "RANK" in os.environ
    rank, world = dist_em.init_from_env() if distributed else (0, 1)
    device = torch.device(config["device"])
    if device.type == "cuda" and distributed:
        device = torch.device("cuda", torch.cuda.current_device())
    dtype = getattr(torch, config["dtype"])
    n_local = config["n"] // world + (rank < config["n"] % world)
    before = current_rss()
    x, params = make_shard(n_local, config["k"], config["d"], rank, dtype, device,
                           config["covariance_type"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timers = Timers(device)
    params = timed_em_iteration(x, params, timers, distributed)  # warm-up, not counted
    timers.seconds = dict.fromkeys(PARTS, 0.0)
    cpu_began = time.process_time()
    for _ in range(config["iters"]):
        params = timed_em_iteration(x, params, timers, distributed)
    cpu_seconds = time.process_time() - cpu_began
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = peak_rss() - before
    per_iter = {f"{p}_s": s / config["iters"] for p, s in timers.seconds.items()}
    result = {
        "seconds_per_iter": sum(per_iter.values()),
        "cpu_seconds_per_iter": cpu_seconds / config["iters"],
        **per_iter,
        "peak_bytes_per_point": peak / n_local,
        "data_bytes_per_point": x.element_size() * x.shape[1],
    }
    if distributed:
        import torch.distributed as dist

        everyone: list = [None] * world
        dist.all_gather_object(everyone, result)
        result = {**max(everyone, key=lambda r: r["seconds_per_iter"]),  # the slowest rank
                  "peak_bytes_per_point": max(r["peak_bytes_per_point"] for r in everyone)}
        dist.destroy_process_group()
    return result if rank == 0 else {}


def run_sklearn(config: dict) -> dict:
    """scikit-learn's EM on the same data and initial point: seconds per iteration, peak."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    before = current_rss()
    x, start = make_shard(config["n"], config["k"], config["d"], 0, torch.float64,
                          torch.device("cpu"), config["covariance_type"])
    X = x.numpy()
    covariances = start.covariances.numpy()
    precisions = (1.0 / covariances if config["covariance_type"] in gmm.DIAGONAL_TYPES
                  else np.linalg.inv(covariances))

    def fit_seconds(max_iter: int) -> tuple[float, float]:
        est = SkGaussianMixture(
            config["k"], covariance_type=config["covariance_type"],
            weights_init=start.weights.numpy(), means_init=start.means.numpy(),
            precisions_init=precisions, max_iter=max_iter, tol=0.0,
            init_params="random_from_data", random_state=0,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            began, cpu_began = time.perf_counter(), time.process_time()
            est.fit(X)
            return time.perf_counter() - began, time.process_time() - cpu_began

    one, one_cpu = fit_seconds(1)
    more, more_cpu = fit_seconds(1 + config["iters"])
    return {
        "seconds_per_iter": max(more - one, 0.0) / config["iters"],
        "cpu_seconds_per_iter": max(more_cpu - one_cpu, 0.0) / config["iters"],
        "peak_bytes_per_point": (peak_rss() - before) / config["n"],
        "data_bytes_per_point": X.itemsize * X.shape[1],
    }


def worker(config: dict, result_path: Path) -> None:
    result = run_sklearn(config) if config["engine"] == "sklearn" else run_ours(config)
    if result:
        result_path.write_text(json.dumps(result))


# ---------------------------------------------------------------------------------- driver


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(config: dict, timeout_s: float) -> dict:
    """Run one point in fresh process(es); its result, or a status saying why there is none."""
    with tempfile.TemporaryDirectory() as tmp:
        result_path = Path(tmp) / "result.json"
        script = [str(Path(__file__).resolve()), "--worker", json.dumps(config),
                  "--result", str(result_path)]
        if config["processes"] > 1:
            command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node",
                       str(config["processes"]), "--master-addr", "127.0.0.1",
                       "--master-port", str(free_port()), *script]
        else:
            command = [sys.executable, *script]
        env = {**os.environ, **SINGLE_THREAD}
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            log, _ = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            return {"status": f"timeout after {timeout_s:.0f} s"}
        if process.returncode != 0 or not result_path.exists():
            print(log[-3000:], file=sys.stderr)
            return {"status": f"failed (exit {process.returncode})"}
        return {**json.loads(result_path.read_text()), "status": "ok"}


def work_units(n: int, k: int, d: int, covariance_type: str) -> float:
    """Arithmetic of one EM iteration up to a constant: N K D^2 (tied, full) or N K D."""
    return n * k * (d * d if covariance_type in ("full", "tied") else d)


def grid(args: argparse.Namespace) -> list[dict]:
    if args.quick:
        sizes, ks, ds = [10_000, 100_000], [16], [32]
    else:
        top = int(math.log10(args.max_n))
        sizes, ks, ds = [10**e for e in range(4, top + 1)], args.k, args.d
    points = []
    for k in ks:
        for d in ds:
            for n in sizes:
                for engine, processes in [("ppl_mixtures", p) for p in args.processes] + (
                        [] if args.no_sklearn else [("sklearn", 1)]):
                    if engine == "sklearn" and args.device != "cpu":
                        continue
                    points.append(dict(engine=engine, processes=processes, n=n, k=k, d=d,
                                       covariance_type=args.covariance_type,
                                       dtype="float64" if engine == "sklearn" else args.dtype,
                                       device="cpu" if engine == "sklearn" else args.device,
                                       iters=args.iters))
    return points


def projected_seconds(config: dict, rates: dict) -> float:
    """Wall time of the point from the fastest throughput seen by its engine (or a guess)."""
    key = (config["engine"], config["processes"], config["device"])
    rate = rates.get(key, 2e9 if config["device"] == "cpu" else 1e11)
    passes = config["iters"] + 1 if config["engine"] != "sklearn" else 2 * config["iters"] + 4
    units = work_units(config["n"], config["k"], config["d"], config["covariance_type"])
    return 5.0 + passes * units / rate


def projected_bytes(config: dict) -> float:
    """Data, log-joint, responsibilities and a chunk of whitened rows (per process: all)."""
    n, k, d = config["n"], config["k"], config["d"]
    return 8.0 * (n * d * (2 if config["engine"] == "sklearn" else 1) + 4 * n * k)


def run_grid(args: argparse.Namespace) -> list[dict]:
    rows, rates = [], {}
    for config in grid(args):
        label = (f"{config['engine']:>12} x{config['processes']} N={config['n']:.0e} "
                 f"K={config['k']} D={config['d']}")
        projected = projected_seconds(config, rates)
        if projected_bytes(config) > args.max_memory_gb * 2**30:
            outcome = {"status": f"skipped: data over {args.max_memory_gb:.0f} GB"}
        elif projected > args.budget_s:
            outcome = {"status": f"skipped: projected {projected:.0f} s > budget"}
        else:
            outcome = launch(config, timeout_s=max(3 * projected, 120.0))
        if outcome["status"] == "ok":
            key = (config["engine"], config["processes"], config["device"])
            units = work_units(config["n"], config["k"], config["d"], config["covariance_type"])
            rate = units / max(outcome["seconds_per_iter"], 1e-9)
            rates[key] = max(rates.get(key, 0.0), rate)
            print(f"{label}: {outcome['seconds_per_iter']:.4g} s/iter, "
                  f"{outcome['peak_bytes_per_point']:.0f} B/point", flush=True)
        else:
            print(f"{label}: {outcome['status']}", flush=True)
        rows.append({**config, **outcome})
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["status"] == "ok"]
    figure, (curve, parts) = plt.subplots(1, 2, figsize=(13, 5))
    styles = {("ppl_mixtures", 1): "-o", ("ppl_mixtures", 2): "--s", ("sklearn", 1): ":^"}
    shapes = sorted({(r["k"], r["d"]) for r in done})
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (k, d) in enumerate(shapes):
        for (engine, processes), style in styles.items():
            line = sorted((r["n"], r["seconds_per_iter"]) for r in done if r["k"] == k
                          and r["d"] == d and r["engine"] == engine
                          and r["processes"] == processes)
            if line:
                curve.plot(*zip(*line, strict=True), style, color=colours[index % len(colours)],
                           label=f"K={k} D={d} {engine} x{processes}")
    curve.set(xscale="log", yscale="log", xlabel="N (points)", ylabel="seconds per EM iteration",
              title="GMM EM, full covariances")
    if curve.lines:
        curve.legend(fontsize=7)
    ours = [r for r in done if r["engine"] == "ppl_mixtures"]
    largest = {}
    for r in ours:
        key = (r["k"], r["d"], r["processes"])
        if key not in largest or r["n"] > largest[key]["n"]:
            largest[key] = r
    bars = sorted(largest.values(), key=lambda r: (r["k"], r["d"], r["processes"]))
    bottom = np.zeros(len(bars))
    for part in PARTS:
        share = np.array([r[f"{part}_s"] / r["seconds_per_iter"] for r in bars])
        parts.bar(range(len(bars)), share, bottom=bottom, label=part)
        bottom += share
    parts.set_xticks(range(len(bars)),
                     [f"K={r['k']} D={r['d']}\nN={r['n']:.0e} x{r['processes']}" for r in bars],
                     fontsize=7)
    parts.set(ylabel="share of an EM iteration", title="where the time goes (largest N)")
    if bars:
        parts.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def markdown(rows: list[dict]) -> str:
    lines = ["| engine | procs | N | K | D | s/iter | CPU s/iter | cholesky | log_prob | moments | "
             "m_step | all_reduce | wait | B/point (data) |", "|" + "---|" * 14]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['engine']} | {r['processes']} | {r['n']:.0e} | {r['k']} | "
                         f"{r['d']} | {r['status']} |" + " |" * 8)
            continue
        parts = [f"{r.get(f'{p}_s', float('nan')):.3g}" for p in
                 ("cholesky", "log_prob", "moments", "m_step", "all_reduce", "wait")]
        if r["engine"] == "sklearn":
            parts = ["-"] * 6
        lines.append(f"| {r['engine']} | {r['processes']} | {r['n']:.0e} | {r['k']} | {r['d']} "
                     f"| {r['seconds_per_iter']:.4g} | {r['cpu_seconds_per_iter']:.4g} | "
                     f"{' | '.join(parts)} | "
                     f"{r['peak_bytes_per_point']:.0f} ({r['data_bytes_per_point']}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cuda = torch.cuda.is_available()
    parser.add_argument("--quick", action="store_true", help="small grid, about a minute")
    parser.add_argument("--max-n", type=float, default=1e7 if cuda else 1e6)
    parser.add_argument("--k", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--d", type=int, nargs="+", default=[32, 784])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--covariance-type", default="full", choices=gmm.COVARIANCE_TYPES)
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--iters", type=int, default=3, help="timed EM iterations per point")
    parser.add_argument("--budget-s", type=float, default=90.0,
                        help="skip a point whose projected wall time exceeds this")
    total_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    parser.add_argument("--max-memory-gb", type=float, default=0.5 * total_gb)
    parser.add_argument("--no-sklearn", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("runs/scale"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker), args.result)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    rows = run_grid(args)
    write_csv(rows, args.out / "scale.csv")
    plot(rows, args.out / "scale.png")
    print(markdown(rows))
    print(f"\nwrote {args.out / 'scale.csv'} and {args.out / 'scale.png'} "
          f"in {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
