"""Seconds per DGMM EM iteration and per SVI step in the setting of Selosse et al. (2020, sec. 3.1).

On ``make_dgmm(n_samples, 17, (3, 3, 2), (11, 6, 2), standardize=True)``, one run measures:

- ``em_dgmm``: one exact EM iteration of the DGMM (``e_step`` + ``m_step``,
  :mod:`ppl_mixtures.inference.em.dgmm`);
- ``em_sklearn_18``: one EM iteration of scikit-learn's full-covariance GaussianMixture with the
  same number of components as the DGMM has paths (18), on the same data (``max_iter=1`` fits,
  warm-started): the cost of the unstructured model the DGMM constrains;
- ``svi_pyro``: one SVI step of ``DeepGaussianMixture(inference="svi")``'s Pyro model (collapsed
  form, MAP guide, ``TraceEnum_ELBO`` over the three enumerated layer sites);
- ``svi_torch``: one Adam step on ``-log_likelihood`` written as a plain torch loop over the same
  helper (:func:`ppl_mixtures.models.dgmm.log_likelihood`): the ratio is Pyro's overhead.

    python bench/dgmm.py [--n-samples 4000] [--repeats 3] [--device cpu|cuda]

Prints one JSON line per repeat and the spread.

Recovery of the section 3.1 truth by a fitting strategy (one JSON line per seed: path ARI,
per-layer ARIs, log-likelihood per point against the true parameters', non-empty paths,
seconds), on ``make_dgmm(4000, 17, (3, 3, 2), (11, 6, 2), random_state=seed,
standardize=True)``, the fit's ``random_state`` being the seed::

    python bench/dgmm.py --recovery --seeds 0 1 2 100 101 [--start auto|gmm|layerwise] [--max-iter 150]
        [--compare-old] [--compare-release] [--compare-relabel] [--compare-reframe]

and on scikit-learn's wine data (standardised; ``(3, 2), (5, 2)``; first-layer ARI against the
cultivars), seeds 0-4::

    python bench/dgmm.py --wine [--start auto|gmm|layerwise]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
import pyro
import torch
from pyro.infer import SVI, TraceEnum_ELBO
from pyro.optim import Adam
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from ppl_mixtures.datasets import make_dgmm
from ppl_mixtures.inference.em import dgmm as em_dgmm
from ppl_mixtures.models import dgmm

SIZES, FACTORS = (3, 3, 2), (11, 6, 2)


def seconds_per_call(step, n_calls: int, device: str) -> float:
    step()  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n_calls):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / n_calls


def em_step(x: torch.Tensor, start: dgmm.DGMMParams):
    state = {"params": start}

    def step() -> None:
        state["params"] = em_dgmm.m_step(em_dgmm.e_step(x, state["params"]))

    return step


def sklearn_step(X: np.ndarray, seed: int):
    sk = SkGaussianMixture(int(np.prod(SIZES)), covariance_type="full", max_iter=1,
                           warm_start=True, random_state=seed, init_params="kmeans")

    def step() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            sk.fit(X)

    step()  # the k-means start is not timed
    return step


def pyro_step(x: torch.Tensor, start: dgmm.DGMMParams, lr: float):
    pyro.clear_param_store()
    priors = dgmm.default_dgmm_priors(x, SIZES, FACTORS)
    model = dgmm.DeepGaussianMixtureModel(SIZES, FACTORS, x.shape[1], priors)
    guide = dgmm.map_guide(model, start)
    svi = SVI(model, guide, Adam({"lr": lr}), TraceEnum_ELBO(max_plate_nesting=1))
    return lambda: svi.step(x)


def torch_step(x: torch.Tensor, start: dgmm.DGMMParams, lr: float):
    """Adam on unconstrained parameters (log-weights, eta, loadings, log-variances)."""
    leaves = {
        "logits": [w.log().clone().requires_grad_() for w in start.weights],
        "eta": [e.clone().requires_grad_() for e in start.eta],
        "loadings": [m.clone().requires_grad_() for m in start.loadings],
        "log_psi": [p.log().clone().requires_grad_() for p in start.noise_variances],
    }
    optimiser = torch.optim.Adam([t for group in leaves.values() for t in group], lr=lr)

    def step() -> None:
        optimiser.zero_grad()
        params = dgmm.DGMMParams(
            [torch.softmax(t, -1) for t in leaves["logits"]], leaves["eta"], leaves["loadings"],
            [t.exp() for t in leaves["log_psi"]],
        )
        loss = -dgmm.log_likelihood(x, params).sum()
        loss.backward()
        optimiser.step()

    return step


#: ``--compare-old``: the default before the accelerated EM loop (20 SQUAREM cycles, then plain
#: EM for up to 500 iterations at tol 1e-5), fitted beside the default in the same process.
OLD_DEFAULT = {"accelerate": 20, "max_iter": 500, "tol": 1e-5}


def recovery(seeds: list[int], start: str, max_iter: int | None,
             compare_old: bool = False, compare_release: bool = False,
             compare_relabel: bool = False, compare_reframe: bool = False) -> None:
    """One default-settings fit per seed of the section 3.1 setting, scored against the truth;
    with ``compare_old``, the old default's fit of the same data first (interleaved); with
    ``compare_release``, the default without its released floor (``final_reg_covar=None``:
    the same search, stopped at ``reg_covar``) first; with ``compare_relabel``, the default
    without the deeper layers' relabelling (``relabel=False``) first; with ``compare_reframe``,
    the default without the frames' move (``reframe=False``) first. Each default row holds
    ``reframe`` (the move's log-likelihood per point before and after, and moves kept)."""
    from ppl_mixtures.estimators import DeepGaussianMixture
    from ppl_mixtures.metrics import adjusted_rand_score

    settings = [("old", OLD_DEFAULT)] if compare_old else []
    if compare_release:
        settings.append(("unreleased", {"final_reg_covar": None}))
    if compare_relabel:
        settings.append(("no_relabel", {"relabel": False}))
    if compare_reframe:
        settings.append(("no_reframe", {"reframe": False}))
    settings.append(("default", {} if max_iter is None else {"max_iter": max_iter}))
    rows = []
    for seed in seeds:
        X, layers, paths, params = make_dgmm(4000, 17, SIZES, FACTORS, random_state=seed,
                                             standardize=True)
        x = torch.as_tensor(X)
        oracle = float(dgmm.log_likelihood(x, dgmm.DGMMParams.from_numpy(params)).mean())
        for name, options in settings:
            begin = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                est = DeepGaussianMixture(SIZES, FACTORS, start=start, random_state=seed,
                                          progress=False, **options).fit(X)
            seconds = time.perf_counter() - begin
            predicted, labels = est.predict(X), est.predict_layers(X)
            history = np.asarray(est.history_)
            row = {
                "seed": seed, "fit": name, "start": start, **options,
                "path_ari": adjusted_rand_score(paths, predicted),
                "layer_ari": [adjusted_rand_score(layers[:, k], labels[:, k])
                              for k in range(len(SIZES))],
                "log_likelihood": est.score(X), "oracle_log_likelihood": oracle,
                "nonempty_paths": int(np.unique(predicted).size), "n_iter": int(est.n_iter_),
                "converged": bool(est.converged_),
                "convergence_warning": any(issubclass(w.category, ConvergenceWarning)
                                           for w in caught),
                "monotone": bool(np.all(np.diff(history) >= -1e-8)),
                "seconds": seconds, "torch_threads": torch.get_num_threads(),
                "relabel_changes": getattr(est, "relabel_changes_", None),
                "reframe": getattr(est, "reframe_", None),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    for name, _ in settings:
        aris = [row["path_ari"] for row in rows if row["fit"] == name]
        print(f"{name}: path ARI best {max(aris):.3f} mean {np.mean(aris):.3f} "
              f"min {min(aris):.3f}")


def wine(start: str) -> None:
    """First-layer ARI against the cultivars of ``DeepGaussianMixture((3, 2), (5, 2))``."""
    from sklearn.datasets import load_wine
    from sklearn.preprocessing import StandardScaler

    from ppl_mixtures.estimators import DeepGaussianMixture
    from ppl_mixtures.metrics import adjusted_rand_score

    data = load_wine()
    X = StandardScaler().fit_transform(data.data)
    for seed in range(5):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est = DeepGaussianMixture((3, 2), (5, 2), start=start, random_state=seed,
                                      progress=False).fit(X)
        ari = adjusted_rand_score(data.target, est.predict_layers(X)[:, 0])
        print(json.dumps({"seed": seed, "start": start, "layer1_ari": ari,
                          "log_likelihood": est.score(X)}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--calls", type=int, default=20, help="timed calls per measurement")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--recovery", action="store_true",
                        help="recovery of the truth by DeepGaussianMixture(start=...)")
    parser.add_argument("--wine", action="store_true", help="first-layer ARI on wine")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--start", default="auto", choices=("auto", "gmm", "layerwise"))
    parser.add_argument("--max-iter", type=int, default=None,
                        help="EM iterations (default: the estimator's)")
    parser.add_argument("--compare-old", action="store_true",
                        help="--recovery: also fit the old default (OLD_DEFAULT), interleaved")
    parser.add_argument("--compare-release", action="store_true",
                        help="--recovery: also fit the default with final_reg_covar=None")
    parser.add_argument("--compare-relabel", action="store_true",
                        help="--recovery: also fit the default with relabel=False")
    parser.add_argument("--compare-reframe", action="store_true",
                        help="--recovery: also fit the default with reframe=False")
    args = parser.parse_args()
    if args.recovery:
        recovery(args.seeds, args.start, args.max_iter, args.compare_old, args.compare_release,
                 args.compare_relabel, args.compare_reframe)
        return
    if args.wine:
        wine(args.start)
        return
    X, _, _, _ = make_dgmm(args.n_samples, 17, SIZES, FACTORS, random_state=0, standardize=True)
    x = torch.as_tensor(X, dtype=torch.float64, device=args.device)
    start = em_dgmm.initial_params(x, SIZES, FACTORS, "kmeans",
                                   torch.Generator(device="cpu").manual_seed(0))
    rows = []
    for repeat in range(args.repeats):
        row = {
            "repeat": repeat, "n_samples": args.n_samples, "device": args.device,
            "torch_threads": torch.get_num_threads(),
            "em_dgmm": seconds_per_call(em_step(x, start), args.calls, args.device),
            "em_sklearn_18": seconds_per_call(sklearn_step(X, repeat), args.calls, "cpu"),
            "svi_pyro": seconds_per_call(pyro_step(x, start, args.lr), args.calls, args.device),
            "svi_torch": seconds_per_call(torch_step(x, start, args.lr), args.calls,
                                          args.device),
        }
        row["em_ratio_dgmm_over_sklearn"] = row["em_dgmm"] / row["em_sklearn_18"]
        row["svi_ratio_pyro_over_torch"] = row["svi_pyro"] / row["svi_torch"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    for key in ("em_dgmm", "em_sklearn_18", "svi_pyro", "svi_torch",
                "em_ratio_dgmm_over_sklearn", "svi_ratio_pyro_over_torch"):
        values = [row[key] for row in rows]
        print(f"{key:>28}: {min(values):.4f} .. {max(values):.4f}")


if __name__ == "__main__":
    main()
