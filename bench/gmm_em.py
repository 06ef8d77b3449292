"""GMM EM speed against scikit-learn, from the same initial weights, means and precisions.

A matrix of covariance type x shape, each cell timed side by side with scikit-learn in one
run (ours and theirs alternately, ``--repeats`` times, ``tol=0`` so both run the same
iterations), with the peak memory each fit adds to the process (resident set sampled every
2 ms) and the final mean log-likelihood of each:

* ``benchmark``: N = 100k, D = 32, K = 16 (every covariance type);
* ``d784``: N = 1e4, D = 784, K = 16, full (MNIST-sized features);
* ``large-k``: N = 200k, D = 64, K = 128, diag and spherical;
* ``small``: the digits (N = 1797, D = 64, K = 10), per-iteration fixed cost;
* ``tiny``: N = 500, D = 2, K = 3 (every covariance type): the fixed cost of a fit and of
  each iteration, where every tensor operation's overhead counts;
* ``huge`` (only with ``--huge``): N = 1e6, D = 128, K = 1024, diag and spherical, ours
  alone (scikit-learn's (N, K) tables would take 8 GB): one E-step and M-step, its peak
  memory beyond the data.

Prints one JSON line per cell and repeat, then a table of the speed-ups (scikit-learn's
seconds / ours; above 1 is faster) with their range and median over the repeats. Fits of a
few milliseconds (``small``, ``tiny``) are timed as the best of several back-to-back fits per
repeat (``INNER``), each side alike: one fit of 5-10 ms varies by 2x from one to the next on
this machine, and the ratio of two single fits measured that noise, not the code.

    python bench/gmm_em.py [--cases benchmark,d784,large-k,small,tiny] [--repeats 3] [--huge]
    python bench/gmm_em.py --cases "" --huge   # the huge run alone
    python bench/gmm_em.py --cases benchmark --peers   # with torchgmm and pomegranate

``--peers`` times torchgmm 0.1.4 and pomegranate 1.1.2 (float32, their own code) for the
same number of iterations where they are installed (in a separate environment: they pull
in Lightning and numba), from the same initial means (pomegranate: weights, means and
covariances too).
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
import warnings

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from ppl_mixtures import GaussianMixture
from ppl_mixtures.datasets import make_gmm

#: name -> (n_samples, n_features, n_components, covariance types, iterations)
CASES = {
    "benchmark": (100_000, 32, 16, ("full", "tied", "diag", "spherical"), 10),
    "d784": (10_000, 784, 16, ("full",), 2),
    "large-k": (200_000, 64, 128, ("diag", "spherical"), 5),
    "small": (None, 64, 10, ("full", "diag", "spherical"), 20),
    "tiny": (500, 2, 3, ("full", "tied", "diag", "spherical"), 20),
}
#: Fits per repeat whose fastest is kept, by case (1 where not named).
INNER = {"small": 3, "tiny": 9}


class PeakMemory:
    """Peak resident memory added while the block runs (sampled by a thread), in MB; with
    ``sample=False`` no thread runs and 0 is reported."""

    def __init__(self, sample: bool = True):
        self.sample = sample
        self.added_mb = 0.0

    def __enter__(self):
        if not self.sample:
            return self
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc):
        if not self.sample:
            return
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())
        self.added_mb = (self.peak - self.base) / 2**20


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def data(case: str) -> tuple[np.ndarray, int]:
    n_samples, n_features, n_components, _, _ = CASES[case]
    if case == "small":
        return load_digits().data.astype(np.float64), n_components
    if case == "d784":  # make_gmm draws an (N, D, D) tensor of factors: too large here
        rng = np.random.default_rng(0)
        means = rng.normal(scale=2.0, size=(n_components, n_features))
        labels = rng.integers(n_components, size=n_samples)
        scales = rng.uniform(0.5, 2.0, size=(n_components, n_features))
        noise = rng.normal(size=(n_samples, n_features))
        return means[labels] + noise * scales[labels], n_components
    X, _ = make_gmm(n_samples, n_components, n_features, separation=2.0, random_state=0)
    return X, n_components


def initial_point(X: np.ndarray, n_components: int, covariance_type: str, seed: int = 0):
    """Uniform weights, K rows as means, every precision ``1 / mean variance``."""
    rng = np.random.default_rng(seed)
    means = X[rng.choice(len(X), n_components, replace=False)]
    precision = 1.0 / max(X.var(0).mean(), 1e-6)
    n_features = X.shape[1]
    precisions = {
        "full": np.stack([np.eye(n_features) * precision] * n_components),
        "tied": np.eye(n_features) * precision,
        "diag": np.full((n_components, n_features), precision),
        "spherical": np.full(n_components, precision),
    }[covariance_type]
    return np.full(n_components, 1 / n_components), means, precisions


def fit_sklearn(X, init, covariance_type, n_iter, memory=True):
    weights, means, precisions = init
    # With all three initial values given scikit-learn still runs its ``init_params`` start
    # and then overrides everything it drew: the default ("kmeans") would add one whole
    # KMeans fit to its time. "random_from_data" costs one M-step on a one-hot table (its
    # draws are discarded the same way), so the time is the EM's, as ours is.
    est = SkGaussianMixture(
        len(weights), covariance_type=covariance_type, weights_init=weights, means_init=means,
        precisions_init=precisions, max_iter=n_iter, tol=0.0, init_params="random_from_data",
        random_state=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        with PeakMemory(memory) as peak:
            start = time.perf_counter()
            est.fit(X)
            seconds = time.perf_counter() - start
    return seconds, peak.added_mb, est.score(X)


def fit_ours(X, init, covariance_type, n_iter, dtype, device="cpu", memory=True):
    weights, means, precisions = init
    est = GaussianMixture(
        len(weights), covariance_type=covariance_type, weights_init=weights, means_init=means,
        precisions_init=precisions, max_iter=n_iter, tol=0.0, dtype=dtype, device=device,
        progress=False, random_state=0,
    )
    with PeakMemory(memory) as peak:
        start = time.perf_counter()
        est.fit(X)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return seconds, peak.added_mb, est.score(X)


def fit_torchgmm(X, init, covariance_type, n_iter):
    """Seconds of a torchgmm 0.1.4 fit of ``n_iter`` iterations in float32 (the dtype it
    runs in) from the same initial means (its covariances start its own way), or None
    when torchgmm is not installed. Install it beside, not into, the project (``pip
    install torchgmm pomegranate`` in a separate environment with this package)."""
    try:
        from torchgmm.bayes import GaussianMixture as TorchGMM
    except ImportError:
        return None
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    est = TorchGMM(len(init[0]), covariance_type=covariance_type,
                   init_means=torch.as_tensor(init[1], dtype=torch.float32),
                   convergence_tolerance=0.0,
                   trainer_params={"max_epochs": n_iter, "enable_progress_bar": False,
                                   "accelerator": "cpu", "logger": False,
                                   "enable_checkpointing": False,
                                   "enable_model_summary": False})
    x = torch.as_tensor(X, dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        est.fit(x)
        return time.perf_counter() - start


def fit_pomegranate(X, init, covariance_type, n_iter):
    """Seconds of a pomegranate 1.1.2 ``GeneralMixtureModel`` fit of ``n_iter`` iterations in
    float32 from the same weights, means and covariances, or None when pomegranate is not
    installed or has no such covariance type (it has no tied one)."""
    names = {"full": "full", "diag": "diag", "spherical": "sphere"}
    if covariance_type not in names:
        return None
    try:
        from pomegranate.distributions import Normal
        from pomegranate.gmm import GeneralMixtureModel
    except ImportError:
        return None
    weights, means, precisions = init
    covariances = {"full": lambda: np.linalg.inv(precisions),
                   "diag": lambda: 1.0 / precisions,
                   "spherical": lambda: 1.0 / precisions}[covariance_type]()
    f32 = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    parts = [Normal(means=f32(means[k]), covs=f32(covariances[k]),
                    covariance_type=names[covariance_type]) for k in range(len(weights))]
    mixture = GeneralMixtureModel(parts, priors=f32(weights), max_iter=n_iter, tol=0.0)
    start = time.perf_counter()
    mixture.fit(f32(X))
    return time.perf_counter() - start


def _isolated(fit, *args):
    """``fit(*args)`` in a fresh process: Lightning (under torchgmm) leaves the process
    changed (our next fits ran 20x slower in the same process), so peers never run in ours."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fit, *args).result()


def huge(dtype: str) -> list[dict]:
    """One E-step and M-step at N = 1e6, D = 128, K = 1024: memory bounded by one block."""
    from ppl_mixtures.inference.em import gmm as em_gmm
    from ppl_mixtures.models.gmm import GMMParams

    rows = []
    torch_dtype = getattr(torch, dtype)
    generator = torch.Generator().manual_seed(0)
    n_samples, n_features, n_components = 1_000_000, 128, 1024
    x = torch.randn(n_samples, n_features, generator=generator, dtype=torch_dtype)
    for covariance_type in ("diag", "spherical"):
        shape = (n_components, n_features) if covariance_type == "diag" else (n_components,)
        params = GMMParams(torch.full((n_components,), 1 / n_components, dtype=torch_dtype),
                           x[:n_components].clone(), torch.ones(shape, dtype=torch_dtype),
                           covariance_type)
        with PeakMemory() as memory:
            start = time.perf_counter()
            em_gmm.m_step(em_gmm.e_step(x, params), covariance_type)
            seconds = time.perf_counter() - start
        rows.append({"case": "huge", "covariance_type": covariance_type, "dtype": dtype,
                     "n": n_samples, "d": n_features, "k": n_components,
                     "ours_s_per_iter": seconds, "ours_peak_mb": memory.added_mb,
                     "data_mb": x.numel() * x.element_size() / 2**20,
                     "n_by_k_table_mb": n_samples * n_components * x.element_size() / 2**20})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--types", default=None, help="comma-separated covariance types")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-iter", type=int, default=None, help="override every case's")
    parser.add_argument("--huge", action="store_true")
    parser.add_argument("--peers", action="store_true",
                        help="also time torchgmm and pomegranate (float32) where installed")
    args = parser.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for case in filter(None, args.cases.split(",")):  # --cases "" --huge: the huge run alone
        X, n_components = data(case)
        n_iter = args.n_iter or CASES[case][4]
        types = CASES[case][3]
        if args.types:
            types = [t for t in types if t in args.types.split(",")]
        for covariance_type in types:
            init = initial_point(X, n_components, covariance_type)
            fit_ours(X, init, covariance_type, 1, "float64")  # warm-up
            inner = INNER.get(case, 1)
            for repeat in range(args.repeats):
                sk_seconds, sk_mb, sk_score = _fastest(inner, fit_sklearn, X, init,
                                                       covariance_type, n_iter)
                # scikit-learn's BLAS threads keep spinning for a while after a call; with two
                # threads a small fit started at once ran 4-8x slower (digits diag, float64)
                time.sleep(0.2)
                peers = {}
                if args.peers:
                    for peer, fit in (("torchgmm", fit_torchgmm),
                                      ("pomegranate", fit_pomegranate)):
                        seconds = _isolated(fit, X, init, covariance_type, n_iter)
                        if seconds is not None:
                            peers[f"{peer}_s_per_iter"] = seconds / n_iter
                for device in devices:
                    for dtype in ("float64", "float32"):
                        seconds, mb, score = _fastest(inner, fit_ours, X, init,
                                                      covariance_type, n_iter, dtype, device)
                        rows.append({
                            "case": case, "covariance_type": covariance_type,
                            "repeat": repeat, "device": device, "dtype": dtype,
                            "n": len(X), "d": X.shape[1], "k": n_components, "iters": n_iter,
                            "sklearn_s_per_iter": sk_seconds / n_iter,
                            "ours_s_per_iter": seconds / n_iter,
                            "speedup_vs_sklearn": sk_seconds / seconds,
                            "sklearn_peak_mb": sk_mb, "ours_peak_mb": mb,
                            "sklearn_loglik": sk_score, "ours_loglik": score,
                            "loglik_diff": score - sk_score, **peers,
                        })
                        print(json.dumps(rows[-1]), flush=True)
    if args.huge:
        for dtype in ("float32", "float64"):
            huge(dtype)
    print(f"\nthreads={torch.get_num_threads()}; speed-up = scikit-learn s / ours s "
          "(min-max over repeats, median); peak MB added by the fit")
    print(f"{'case':10} {'type':10} {'device':6} {'dtype':8} {'speed-up (median)':>21} "
          f"{'ours s/it':>10} {'sk s/it':>10} {'ours MB':>8} {'sk MB':>8} {'dLL':>9}"
          + ("  torchgmm s/it  pomegranate s/it" if args.peers else ""))
    keys = sorted({(r["case"], r["covariance_type"], r["device"], r["dtype"]) for r in rows},
                  key=lambda key: [list(CASES).index(key[0]), *key[1:]])
    for key in keys:
        cell = [r for r in rows if (r["case"], r["covariance_type"], r["device"],
                                    r["dtype"]) == key]
        speed = [r["speedup_vs_sklearn"] for r in cell]
        print(f"{key[0]:10} {key[1]:10} {key[2]:6} {key[3]:8} "
              f"{min(speed):6.2f}-{max(speed):<6.2f} ({np.median(speed):5.2f}) "
              f"{np.median([r['ours_s_per_iter'] for r in cell]):10.4f} "
              f"{np.median([r['sklearn_s_per_iter'] for r in cell]):10.4f} "
              f"{max(r['ours_peak_mb'] for r in cell):8.0f} "
              f"{max(r['sklearn_peak_mb'] for r in cell):8.0f} "
              f"{max(abs(r['loglik_diff']) for r in cell):9.2e}"
              + ("".join(f"  {_median(cell, peer):>14}" for peer in ("torchgmm", "pomegranate"))
                 if args.peers else ""))


def _fastest(inner: int, fit, *args) -> tuple:
    """``fit(*args)`` timed as the fastest of ``inner`` calls, with the peak memory of one
    more call: with ``inner`` > 1 the timed calls run without the memory sampler, whose
    thread wakes every 2 ms and takes the interpreter from a fit of a few milliseconds."""
    if inner == 1:
        return fit(*args)
    seconds = min(fit(*args, memory=False)[0] for _ in range(inner))
    _, added_mb, score = fit(*args)
    return seconds, added_mb, score


def _median(cell: list[dict], peer: str) -> str:
    values = [r[f"{peer}_s_per_iter"] for r in cell if f"{peer}_s_per_iter" in r]
    return f"{np.median(values):.4f}" if values else "-"


if __name__ == "__main__":
    main()
