"""Command line interface: ``ppl-mixtures fit gmm|mfa|dgmm ...`` and ``ppl-mixtures compare-dgmm``.

Fits a model to a built-in data set or a ``.csv`` / ``.npy`` file, prints a summary and writes
into ``--out``:

``model.pt``
    The fitted estimator (:meth:`~ppl_mixtures.estimators.GaussianMixture.save`).
``summary.json``
    The numbers of the printed summary.
``clusters.png``, ``history.png``
    :func:`~ppl_mixtures.plotting.plot_clusters` and :func:`~ppl_mixtures.plotting.plot_history`.
``checkpoint.pt``
    SVI only: the trainer's checkpoint, from which ``--resume`` continues.

``ppl-mixtures compare-dgmm`` runs the DGMM paper's experiment
(:mod:`ppl_mixtures.experiments.bumpy_journey`) and writes its report, tables and figures.

Exit codes: 0 on success, 2 for bad input (arguments, data, files), 1 when fitting fails.
Errors are printed as one line, ``ppl-mixtures: error: ...``, without a traceback.

Run ``ppl-mixtures --help`` or ``python -m ppl_mixtures.cli --help``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from ppl_mixtures._version import __version__
from ppl_mixtures.datasets import BUILTIN_DATASETS, COVARIANCE_TYPES

__all__ = ["build_parser", "main"]

PROG = "ppl-mixtures"
#: Exit code for bad input, as argparse uses for bad arguments.
EXIT_USAGE = 2
#: Exit code when a valid run fails (a diverging fit, an unwritable output folder).
EXIT_FAILURE = 1
#: K when neither --n-components nor labels say it.
DEFAULT_N_COMPONENTS = 3

_GMM_INFERENCE = ("em", "svi")
_HISTORY_LABELS = {
    "sgd": ("epoch", "smoothed max-component loss per sample"),
    "em": ("iteration", "mean log-likelihood per sample"),
    "svi": ("step", "loss per sample (negative ELBO / N)"),
}


class CLIError(Exception):
    """Bad input found after parsing; printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line: ``prog: error: message``."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


# ---------------------------------------------------------------------------------------------
# Argument types
# ---------------------------------------------------------------------------------------------


def _integer(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def _real(*, positive: bool) -> Callable[[str], float]:
    bound = "> 0" if positive else ">= 0"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise argparse.ArgumentTypeError(f"must be a finite number {bound}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


# ---------------------------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------------------------


def _common_fit_options() -> argparse.ArgumentParser:
    """Options shared by every ``fit`` model: data, K, budget, seed, device, outputs."""
    parent = argparse.ArgumentParser(add_help=False)
    data = parent.add_argument_group("data")
    data.add_argument(
        "--data", default="gmm", metavar="NAME|PATH",
        help=f"built-in data set ({', '.join(BUILTIN_DATASETS)}) or a .csv / .npy file "
        "(default: gmm, a synthetic 3-component mixture with known labels)",
    )
    data.add_argument(
        "--label-column", metavar="COL",
        help="CSV only: column holding known labels, by header name or integer index",
    )
    data.add_argument(
        "--labels", metavar="PATH", help="NPY only: a .npy file holding the known labels",
    )
    fitting = parent.add_argument_group("fitting")
    fitting.add_argument(
        "--n-components", "-k", type=_integer(1), metavar="K",
        help=f"number of components (default: the number of distinct known labels, else "
        f"{DEFAULT_N_COMPONENTS})",
    )
    fitting.add_argument(
        "--max-iter", type=_integer(1), metavar="N",
        help="EM iterations or SVI steps (default: the estimator's, 100 for EM, 1000 for SVI)",
    )
    fitting.add_argument(
        "--tol", type=_real(positive=False), help="convergence tolerance (default: the estimator's)",
    )
    fitting.add_argument(
        "--n-init", type=_integer(1), default=1, metavar="N",
        help="restarts; the best is kept (default: 1)",
    )
    fitting.add_argument(
        "--seed", type=_integer(0), default=0, metavar="S", help="random seed (default: 0)",
    )
    fitting.add_argument(
        "--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N",
    )
    fitting.add_argument(
        "--dtype", choices=("float32", "float64"),
        help="floating point precision (default: the data's, float64)",
    )
    output = parent.add_argument_group("output")
    output.add_argument(
        "--out", type=Path, metavar="DIR",
        help="output folder, created when missing (default: runs/<model>)",
    )
    output.add_argument(
        "--resume", action="store_true",
        help="SVI only: continue from DIR/checkpoint.pt (--max-iter counts all steps)",
    )
    output.add_argument(
        "--no-progress", dest="progress", action="store_false", help="hide progress bars",
    )
    return parent


def _add_gmm_parser(models: Any, common: argparse.ArgumentParser) -> None:
    parser = models.add_parser(
        "gmm", parents=[common], help="Gaussian mixture (EM or SVI)",
        description="Fit a Gaussian mixture by EM or by SVI over the same Pyro model.",
    )
    gmm = parser.add_argument_group("Gaussian mixture")
    gmm.add_argument(
        "--covariance-type", choices=COVARIANCE_TYPES, default="full",
        help="covariance constraint (default: full)",
    )
    gmm.add_argument(
        "--inference", choices=(*_GMM_INFERENCE, "sgd"), default="em",
        help="expectation-maximisation, stochastic variational inference or the max-component "
        "SGD of seed 004 (default: em)",
    )
    gmm.add_argument(
        "--batch-size", type=_integer(1), metavar="B",
        help="SVI/SGD minibatch size (default: full batch for SVI, 1 for SGD)",
    )
    gmm.add_argument(
        "--lr", type=_real(positive=True),
        help="learning rate (default: 0.05 for SVI, 0.011 for SGD)",
    )
    _add_distributed_option(gmm, "EM or SVI")
    parser.set_defaults(run=_fit_gmm, model="gmm")


def _add_distributed_option(group: Any, paths: str) -> None:
    group.add_argument(
        "--distributed", action="store_true",
        help=f"{paths} across the processes of a torchrun launch: each process reads --data "
        "and keeps rows rank::world_size, EM statistics or SVI gradients are all-reduced, "
        "rank 0 writes the outputs (see docs/scaling.md)",
    )


def _add_em_svi_options(group: Any, lr: float) -> None:
    """``--inference em|svi``, ``--batch-size`` and ``--lr`` of the MFA and DGMM parsers."""
    group.add_argument(
        "--inference", choices=_GMM_INFERENCE, default="em",
        help="expectation-maximisation or stochastic variational inference (default: em)",
    )
    group.add_argument(
        "--batch-size", type=_integer(1), metavar="B",
        help="SVI minibatch size (default: full batch)",
    )
    group.add_argument(
        "--lr", type=_real(positive=True), default=lr, help=f"SVI learning rate (default: {lr})",
    )
    _add_distributed_option(group, "EM")


def _add_mfa_parser(models: Any, common: argparse.ArgumentParser) -> None:
    parser = models.add_parser(
        "mfa", parents=[common], help="mixture of factor analysers (EM or SVI)",
        description="Fit a mixture of factor analysers (x = eta_g + Lambda_g z + u) by EM or "
        "by SVI over the same (collapsed) Pyro model.",
    )
    mfa = parser.add_argument_group("mixture of factor analysers")
    mfa.add_argument(
        "--n-factors", type=_integer(1), default=2, metavar="R",
        help="latent factors per component, < number of features (default: 2)",
    )
    _add_em_svi_options(mfa, lr=0.05)
    parser.set_defaults(run=_fit_gmm, model="mfa")


#: ``ppl_mixtures.models.gmvae.PRESETS`` by name (kept here so that ``--help`` needs no torch).
GMVAE_PRESETS = ("synthetic", "digits_mlp", "digits_conv", "mnist_mlp", "mnist_conv", "svhn_conv")


def _add_gmvae_parser(models: Any, common: argparse.ArgumentParser) -> None:
    parser = models.add_parser(
        "gmvae", parents=[common], help="Gaussian-mixture VAE (SVI)",
        description="Train a Gaussian-mixture VAE (seed 002) by SVI; --max-iter counts epochs. "
        "Writes model.pt, summary.json, history.png, latent.png (the clustered latent x, "
        "coloured by cluster) and, for square images (e.g. --data digits), samples.png (one "
        "row of generated images per component).",
    )
    group = parser.add_argument_group("Gaussian-mixture VAE")
    group.add_argument("--preset", choices=("auto", *GMVAE_PRESETS), default="auto",
                       help="network sizes; auto: synthetic up to 16 features, digits_mlp "
                       "above (default: auto)")
    group.add_argument("--likelihood", choices=("gaussian", "bernoulli"), default="gaussian",
                       help="p(y | x) (default: gaussian)")
    group.add_argument("--observation-variance", type=_real(positive=True), default=0.01,
                       metavar="V", help="fixed Gaussian variance, a fraction of the data's "
                       "(default: 0.01)")
    group.add_argument("--z-inference", choices=("enumerate", "closed_form"),
                       default="enumerate", help="z summed out, or the seed's closed-form "
                       "term with free bits (default: enumerate)")
    group.add_argument("--free-bits", type=_real(positive=False), default=0.0, metavar="L",
                       help="lambda of the closed-form z term (default: 0)")
    group.add_argument("--num-particles", type=_integer(1), default=1, metavar="M",
                       help="samples of (x, w) per data point (default: 1)")
    group.add_argument("--batch-size", type=_integer(1), default=128, metavar="B",
                       help="minibatch size (default: 128)")
    group.add_argument("--lr", type=_real(positive=True), default=1e-3,
                       help="Adam learning rate (default: 0.001)")
    _add_distributed_option(group, "SVI")
    parser.set_defaults(run=_fit_gmvae, model="gmvae", inference="svi")


def _integer_list(text: str) -> tuple[int, ...]:
    """``"3,3,2"`` -> ``(3, 3, 2)``: one positive integer per layer."""
    try:
        values = tuple(int(item) for item in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 3,3,2, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"every entry must be an integer >= 1, got {text!r}")
    return values


def _add_dgmm_parser(models: Any, common: argparse.ArgumentParser) -> None:
    parser = models.add_parser(
        "dgmm", parents=[common], help="deep Gaussian mixture (EM or SVI)",
        description="Fit a deep Gaussian mixture (stacked mixtures of factor analysers, seed "
        "000) by exact EM or by SVI; clusters are the paths through the layers.",
    )
    dgmm = parser.add_argument_group("deep Gaussian mixture")
    dgmm.add_argument(
        "--layers", type=_integer_list, default=(3, 3, 2), metavar="G1,G2,...",
        help="components per layer (default: 3,3,2; replaces --n-components)",
    )
    dgmm.add_argument(
        "--n-factors", type=_integer_list, default=(11, 6, 2), metavar="R1,R2,...",
        help="factor dimension per layer, strictly decreasing and below the number of "
        "features (default: 11,6,2)",
    )
    _add_em_svi_options(dgmm, lr=0.02)
    dgmm.add_argument(
        "--anneal-start", type=_real(positive=True), default=1.0, metavar="T0",
        help="EM only: deterministic annealing from temperature T0 > 1 before EM "
        "(default: 1, off)",
    )
    parser.set_defaults(run=_fit_gmm, model="dgmm")


def _add_compare_dgmm_parser(commands: Any) -> None:
    from ppl_mixtures.experiments.bumpy_journey import ExperimentConfig

    defaults = ExperimentConfig()
    parser = commands.add_parser(
        "compare-dgmm", help="the DGMM paper's experiment: EM and SVI from random starts",
        description="Simulate the seed's section 3.1 data (N=4000, J=17, G=(3,3,2), "
        "R=(11,6,2), standardised), fit the DGMM by EM, annealed EM and SVI from random "
        "starts, score the true parameters, and write the paper's Tables 1-3 and Figures 2-5 "
        "with report.md into --out. The defaults take about 7 minutes on 2 CPU cores.",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/compare-dgmm"), metavar="DIR",
                        help="output folder (default: runs/compare-dgmm)")
    parser.add_argument("--runs", type=_integer(2), default=defaults.runs, metavar="N",
                        help=f"EM starts, also the size of the mutual-ARI matrix "
                        f"(default: {defaults.runs}; the seed uses 20 and 100)")
    parser.add_argument("--svi-runs", type=_integer(0), default=defaults.svi_runs, metavar="N",
                        help=f"SVI starts (default: {defaults.svi_runs}; 0 skips SVI)")
    parser.add_argument("--bic-runs", type=_integer(1), default=defaults.bic_runs, metavar="N",
                        help=f"runs per candidate G(1) in Table 1 (default: {defaults.bic_runs})")
    parser.add_argument("--n-samples", type=_integer(10), default=defaults.n_samples,
                        metavar="N", help=f"simulated samples (default: {defaults.n_samples})")
    parser.add_argument("--em-max-iter", type=_integer(1), default=defaults.em_max_iter,
                        metavar="N", help=f"EM iterations per run (default: {defaults.em_max_iter})")
    parser.add_argument("--svi-max-iter", type=_integer(1), default=defaults.svi_max_iter,
                        metavar="N", help=f"SVI steps per run (default: {defaults.svi_max_iter})")
    parser.add_argument("--seed", type=_integer(0), default=0, metavar="S",
                        help="seed of the simulated data; run r uses S + r (default: 0)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    parser.add_argument("--quick", action="store_true",
                        help="a small problem in seconds (a smoke test, not the paper's setting)")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="hide the progress bar")
    parser.set_defaults(run=_compare_dgmm)


def _add_diagnose_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "diagnose", help="posterior diagnostics of a saved model on data",
        description="Load a model written by 'fit' (model.pt), score it on --data, and write "
        "inference_data.nc (arviz), summary.csv (az.summary), report.md (log-likelihood, BIC, "
        "WAIC and LOO where the fit has posterior draws, r_hat), clusters.png, "
        "responsibilities.png and, with draws, trace.png into --out.",
    )
    parser.add_argument("model", type=Path, metavar="MODEL_FILE", help="a model.pt from 'fit'")
    parser.add_argument("--data", required=True, metavar="NAME|PATH",
                        help="built-in data set name or a .csv / .npy file (as for 'fit')")
    parser.add_argument("--label-column", metavar="COL", help="CSV only: labels column")
    parser.add_argument("--labels", metavar="PATH", help="NPY only: a .npy file of labels")
    parser.add_argument("--out", type=Path, default=Path("runs/diagnose"), metavar="DIR",
                        help="output folder (default: runs/diagnose)")
    parser.add_argument("--num-samples", type=_integer(2), default=200, metavar="N",
                        help="draws of a mean-field SVI guide (default: 200)")
    parser.add_argument("--seed", type=_integer(0), default=0, metavar="S")
    parser.set_defaults(run=_diagnose)


def build_parser() -> argparse.ArgumentParser:
    """The ``ppl-mixtures`` argument parser, with one sub-command per action and model.

    Returns
    -------
    argparse.ArgumentParser
        Parsed arguments carry ``run``, the function that executes the command.
    """
    parser = _Parser(
        prog=PROG,
        description="Mixture models in Pyro: fit, evaluate and plot from the command line.",
        epilog=f"Example: {PROG} fit gmm --data wine --out runs/wine",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(
        title="commands", dest="command", metavar="COMMAND", required=True,
        parser_class=_Parser,
    )
    fit = commands.add_parser(
        "fit", help="fit a model, print a summary, write model, summary and plots",
        description="Fit a model and write model.pt, summary.json, clusters.png and "
        "history.png into --out.",
    )
    models = fit.add_subparsers(
        title="models", dest="model", metavar="MODEL", required=True, parser_class=_Parser,
    )
    _add_gmm_parser(models, _common_fit_options())
    _add_mfa_parser(models, _common_fit_options())
    _add_dgmm_parser(models, _common_fit_options())
    _add_gmvae_parser(models, _common_fit_options())
    _add_compare_dgmm_parser(commands)
    _add_diagnose_parser(commands)
    return parser


# ---------------------------------------------------------------------------------------------
# fit
# ---------------------------------------------------------------------------------------------


def _load_data(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray | None]:
    from ppl_mixtures.datasets import load_dataset

    suffix = Path(args.data).suffix.lower()
    options: dict[str, Any] = {}
    if args.label_column is not None:
        if suffix != ".csv":
            raise CLIError("--label-column applies to .csv files only")
        column = args.label_column
        options["label_column"] = int(column) if column.lstrip("-").isdigit() else column
    if args.labels is not None:
        if suffix != ".npy":
            raise CLIError("--labels applies to .npy files only")
        options["labels_path"] = args.labels
    return load_dataset(args.data, **options)


def _check_options(args: argparse.Namespace) -> None:
    if args.model == "dgmm" and args.n_components is not None:
        raise CLIError("fit dgmm takes --layers G1,G2,... (components per layer), "
                       "not --n-components")
    if args.resume and args.inference != "svi":
        raise CLIError("--resume applies to --inference svi only (EM runs are not checkpointed)")
    allowed = ("em", "svi") if args.model == "gmm" else ("em",)
    if getattr(args, "distributed", False) and args.inference not in allowed:
        raise CLIError(f"--distributed needs --inference {' or '.join(allowed)}, not "
                       f"{args.inference}")


def _label_scores(labels: np.ndarray | None, predicted: np.ndarray) -> dict[str, float | None]:
    if labels is None:
        return {"ari": None, "nmi": None, "cluster_accuracy": None}
    from ppl_mixtures import metrics

    return {
        "ari": float(metrics.adjusted_rand_score(labels, predicted)),
        "nmi": float(metrics.normalized_mutual_info_score(labels, predicted)),
        "cluster_accuracy": metrics.cluster_accuracy(labels, predicted),
    }


def _summary(
    args: argparse.Namespace, est: Any, X: np.ndarray, labels: np.ndarray | None,
    predicted: np.ndarray,
) -> dict[str, Any]:
    """The numbers of a fitted run, as printed and written to ``summary.json``."""
    reference = next(iter(est._param_tensors().values()))
    return {
        "model": args.model,
        "dataset": str(args.data),
        "n_samples": int(X.shape[0]),
        "n_features": int(X.shape[1]),
        "n_components": (list(est.n_components) if args.model == "dgmm"
                         else int(est.n_components)),
        "covariance_type": getattr(est, "covariance_type", None),
        "n_factors": getattr(est, "n_factors", None),
        "inference": est.inference,
        "converged": bool(est.converged_),
        "n_iter": int(est.n_iter_),
        "mean_log_likelihood": est.score(X),
        "bic": est.bic(X),
        "aic": est.aic(X),
        **_label_scores(labels, predicted),
        "seconds": float(est.fit_seconds_),
        "seed": args.seed,
        "device": str(reference.device),
        "dtype": str(reference.dtype).removeprefix("torch."),
        "version": __version__,
    }


def _format_summary(summary: dict[str, Any], out: Path) -> str:
    steps = "steps" if summary["inference"] == "svi" else "iterations"
    rows = [
        ("dataset", summary["dataset"]),
        ("samples (N)", summary["n_samples"]),
        ("features (D)", summary["n_features"]),
        ("components (K)", summary["n_components"]),
        ("covariance type" if summary["n_factors"] is None else "factors",
         summary["covariance_type"] or summary["n_factors"]),
        ("inference", summary["inference"]),
        ("converged", "yes" if summary["converged"] else "no"),
        (steps, summary["n_iter"]),
        ("mean log-likelihood", f"{summary['mean_log_likelihood']:.4f}"),
        ("BIC", f"{summary['bic']:.2f}"),
        ("AIC", f"{summary['aic']:.2f}"),
    ]
    if summary["ari"] is not None:
        rows += [
            ("ARI", f"{summary['ari']:.4f}"),
            ("NMI", f"{summary['nmi']:.4f}"),
            ("cluster accuracy", f"{summary['cluster_accuracy']:.4f}"),
        ]
    rows += [("seconds", f"{summary['seconds']:.2f}"), ("outputs", str(out))]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _full_covariances(est: Any) -> np.ndarray:
    """(K, D, D) covariance matrices of a fitted estimator, for the cluster ellipses, or None.

    A GaussianMixture keeps ``covariances_`` in scikit-learn's per-type shapes; MFA and DGMM
    keep full matrices already.
    """
    if type(est).__name__ != "GaussianMixture":
        return getattr(est, "covariances_", None)  # None: no ellipses (e.g. GMVAE)
    from ppl_mixtures.models.gmm import covariance_matrices

    return covariance_matrices(est.params_).detach().cpu().numpy()


def _save_plots(args: argparse.Namespace, est: Any, X: np.ndarray, predicted: np.ndarray,
                out: Path) -> None:
    from ppl_mixtures.plotting import _pyplot, plot_clusters, plot_history

    plt = _pyplot()
    if args.model == "gmm":
        kind = f"GMM ({est.covariance_type}, {est.inference})"
    elif args.model == "mfa":
        kind = f"MFA (r={est.n_factors}, {est.inference})"
    else:
        kind = f"DGMM (G={est.n_components}, r={est.n_factors}, {est.inference})"
    fig = plot_clusters(
        X, predicted, means=est.means_, covariances=_full_covariances(est),
        title=f"{kind} on {Path(args.data).name}: K={est._n_clusters()}",
    )
    fig.savefig(out / "clusters.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    xlabel, ylabel = _HISTORY_LABELS[est.inference]
    fig = plot_history(est.history_, xlabel=xlabel, ylabel=ylabel, title="training history")
    fig.savefig(out / "history.png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def _fit_gmm(args: argparse.Namespace) -> int:
    """``ppl-mixtures fit gmm|mfa``: fit, print the summary, write the outputs."""
    _check_options(args)
    X, labels = _load_data(args)
    if args.model == "dgmm":
        n_components = args.layers
    elif args.n_components is not None:
        n_components = args.n_components
    elif labels is not None:
        n_components = len(np.unique(labels))
    else:
        n_components = DEFAULT_N_COMPONENTS
    out = args.out if args.out is not None else Path("runs") / args.model
    checkpoint = out / "checkpoint.pt"
    if args.resume and not checkpoint.exists():
        print(f"{PROG}: note: no checkpoint at {checkpoint}; starting afresh", file=sys.stderr)

    from ppl_mixtures.estimators import (
        DeepGaussianMixture,
        GaussianMixture,
        MixtureOfFactorAnalyzers,
    )

    common = dict(
        inference=args.inference, n_init=args.n_init, max_iter=args.max_iter, tol=args.tol,
        lr=args.lr, batch_size=args.batch_size, random_state=args.seed, device=args.device,
        dtype=args.dtype, progress=args.progress,
        checkpoint_path=str(checkpoint) if args.inference == "svi" else None,
    )
    common["distributed"] = args.distributed
    if args.model == "gmm":
        est = GaussianMixture(n_components, covariance_type=args.covariance_type, **common)
    elif args.model == "mfa":
        est = MixtureOfFactorAnalyzers(n_components, n_factors=args.n_factors, **common)
    else:
        est = DeepGaussianMixture(n_components, n_factors=args.n_factors,
                                  anneal_start=args.anneal_start, **common)
    return _fit_and_write(est, X, out, args.resume,
                          lambda: _write_fit_outputs(args, est, X, labels, out))


def _fit_and_write(est: Any, X: np.ndarray, out: Path, resume: bool,
                   write: Callable[[], None]) -> int:
    """Fit ``est`` on ``X``, then ``write`` the outputs.

    With ``est.distributed`` (``--distributed`` under torchrun) each process fits its rows
    ``rank::world_size`` and rank 0 alone writes.
    """
    out.mkdir(parents=True, exist_ok=True)  # before fitting: SVI checkpoints go there
    if not est.distributed:
        est.fit(X, resume=resume)
        write()
        return 0
    import torch.distributed

    from ppl_mixtures.distributed import init_from_env

    rank, world_size = init_from_env()
    try:
        est.fit(X[rank::world_size], resume=resume)
        if rank == 0:
            write()
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()
    return 0


def _write_fit_outputs(args: argparse.Namespace, est: Any, X: np.ndarray,
                       labels: np.ndarray | None, out: Path) -> None:
    """Predict, then write ``model.pt``, ``summary.json`` and the plots; print the summary."""
    out.mkdir(parents=True, exist_ok=True)
    predicted = est.predict(X)
    summary = _summary(args, est, X, labels, predicted)
    est.save(out / "model.pt")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _save_plots(args, est, X, predicted, out)
    print(_format_summary(summary, out))


def _gmvae_figures(est: Any, X: np.ndarray, predicted: np.ndarray, out: Path) -> None:
    from ppl_mixtures.plotting import _pyplot, plot_centroid_grid, plot_clusters, plot_history

    plt = _pyplot()
    fig = plot_history(est.history_, xlabel="step", ylabel="loss per sample (negative ELBO)",
                       title="GMVAE training")
    fig.savefig(out / "history.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    fig = plot_clusters(est.transform(X), predicted,
                        title=f"latent x of the GMVAE (K={est.n_components}), by cluster")
    fig.savefig(out / "latent.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    side = math.isqrt(X.shape[1])
    if side * side == X.shape[1] and side > 1:
        per_row = 8
        images = np.concatenate([est.sample(per_row, component=k, observation="mean")[0]
                                 for k in range(est.n_components)])
        fig = plot_centroid_grid(images, (est.n_components, per_row), (side, side),
                                 title="samples per component (rows)")
        fig.savefig(out / "samples.png", dpi=100, bbox_inches="tight")
        plt.close(fig)


def _fit_gmvae(args: argparse.Namespace) -> int:
    """``ppl-mixtures fit gmvae``: train, print the summary, write the outputs."""
    from ppl_mixtures.estimators import GMVAE

    X, labels = _load_data(args)
    n_components = args.n_components or (len(np.unique(labels)) if labels is not None
                                         else DEFAULT_N_COMPONENTS)
    out = args.out if args.out is not None else Path("runs") / "gmvae"
    checkpoint = out / "checkpoint.pt"
    if args.resume and not checkpoint.exists():
        print(f"{PROG}: note: no checkpoint at {checkpoint}; starting afresh", file=sys.stderr)
    est = GMVAE(
        n_components, preset=args.preset, likelihood=args.likelihood,
        observation_variance=args.observation_variance, z_inference=args.z_inference,
        free_bits=args.free_bits, num_particles=args.num_particles,
        max_epochs=args.max_iter or 100, batch_size=args.batch_size, lr=args.lr,
        device=args.device, dtype=args.dtype or "float32", random_state=args.seed,
        progress=args.progress, checkpoint_path=str(checkpoint), distributed=args.distributed,
    )
    return _fit_and_write(est, X, out, args.resume,
                          lambda: _write_gmvae_outputs(args, est, X, labels, out))


def _write_gmvae_outputs(args: argparse.Namespace, est: Any, X: np.ndarray,
                         labels: np.ndarray | None, out: Path) -> None:
    """Predict, then write ``model.pt``, ``summary.json`` and the figures; print the summary."""
    n_components = est.n_components
    predicted = est.predict(X)
    summary = {
        "model": "gmvae", "dataset": str(args.data), "n_samples": int(X.shape[0]),
        "n_features": int(X.shape[1]), "n_components": int(n_components),
        "preset": est.preset_, "likelihood": args.likelihood, "z_inference": args.z_inference,
        "free_bits": args.free_bits, "num_particles": args.num_particles,
        "epochs": est.max_epochs, "steps": int(est.n_iter_),
        "elbo_per_sample": float(est.lower_bound_), **_label_scores(labels, predicted),
        "clusters_used": int(len(np.unique(predicted))), "seconds": float(est.fit_seconds_),
        "seed": args.seed, "version": __version__,
    }
    est.save(out / "model.pt")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _gmvae_figures(est, X, predicted, out)
    width = max(len(key) for key in summary)
    print("\n".join(f"{key:<{width}}  {value}" for key, value in summary.items())
          + f"\noutputs  {out}")


def _diagnose(args: argparse.Namespace) -> int:
    """``ppl-mixtures diagnose MODEL_FILE --data ...``: write the diagnostics report."""
    import warnings

    import arviz as az

    from ppl_mixtures.diagnostics import to_inference_data
    from ppl_mixtures.estimators import load_estimator
    from ppl_mixtures.plotting import _pyplot, plot_clusters, plot_responsibilities

    if not args.model.exists():
        raise CLIError(f"MODEL_FILE {args.model} does not exist; pass a model.pt from 'fit'")
    est = load_estimator(args.model, device="cpu")
    X, labels = _load_data(args)
    if X.shape[1] != est.n_features_in_:
        raise CLIError(f"--data has {X.shape[1]} features but the model was fitted on "
                       f"{est.n_features_in_}; pass the data it was fitted on")
    args.out.mkdir(parents=True, exist_ok=True)
    idata = to_inference_data(est, X, num_samples=args.num_samples, random_state=args.seed)
    idata.to_netcdf(str(args.out / "inference_data.nc"))
    n_draws = idata.posterior.sizes["chain"] * idata.posterior.sizes["draw"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # arviz warns about single draws and Pareto k
        summary = az.summary(idata, var_names=["weights"], kind="all" if n_draws > 1
                             else "stats")
        waic = az.waic(idata)
        loo = az.loo(idata) if n_draws > 1 else None
    summary.to_csv(args.out / "summary.csv")
    predicted = est.predict(X)
    rows = [
        ("model", f"{type(est).__name__} ({getattr(est, 'inference', '')})"),
        ("samples", X.shape[0]),
        ("posterior draws", n_draws),
        ("mean log-likelihood", f"{est.score(X):.4f}"),
        ("BIC", f"{est.bic(X):.2f}"),
        ("WAIC elpd", f"{waic.elpd_waic:.2f} (se {waic.se:.2f})"),
        ("LOO elpd", f"{loo.elpd_loo:.2f} (se {loo.se:.2f})" if loo is not None
         else "n/a (a point estimate has one draw)"),
    ]
    if "r_hat" in summary:
        rows.append(("max r_hat (weights)", f"{float(summary['r_hat'].max()):.3f}"))
    scores = _label_scores(labels, predicted)
    if scores["ari"] is not None:
        rows.append(("ARI", f"{scores['ari']:.4f}"))
    width = max(len(name) for name, _ in rows)
    text = "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
    (args.out / "report.md").write_text(
        "# Diagnostics\n\n```\n" + text + "\n```\n\n" + summary.to_markdown()
        if hasattr(summary, "to_markdown") and _has_tabulate() else
        "# Diagnostics\n\n```\n" + text + "\n```\n\nSee summary.csv.\n")
    plt = _pyplot()
    fig = plot_clusters(X, predicted, means=est.means_, covariances=_full_covariances(est),
                        title=f"{type(est).__name__} on {Path(str(args.data)).name}")
    fig.savefig(args.out / "clusters.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    fig = plot_responsibilities(est.predict_proba(X))
    fig.savefig(args.out / "responsibilities.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    if n_draws > 1:
        axes = az.plot_trace(idata, var_names=["weights"], compact=True)
        axes.ravel()[0].figure.savefig(args.out / "trace.png", dpi=100, bbox_inches="tight")
        plt.close("all")
    print(text + f"\noutputs  {args.out}")
    return 0


def _has_tabulate() -> bool:
    import importlib.util

    return importlib.util.find_spec("tabulate") is not None


def _compare_dgmm(args: argparse.Namespace) -> int:
    """``ppl-mixtures compare-dgmm``: run the experiment, write and print its summary."""
    from ppl_mixtures.experiments.bumpy_journey import (
        ExperimentConfig,
        run_experiment,
        write_report,
    )

    settings = dict(runs=args.runs, svi_runs=args.svi_runs, bic_runs=args.bic_runs,
                    seed=args.seed, device=args.device, progress=args.progress)
    if args.quick:
        config = ExperimentConfig.quick(**settings)
    else:
        config = ExperimentConfig(n_samples=args.n_samples, em_max_iter=args.em_max_iter,
                                  svi_max_iter=args.svi_max_iter, **settings)
    config.check()
    args.out.mkdir(parents=True, exist_ok=True)
    result = run_experiment(config)
    report = write_report(result, args.out)
    header = f"{'method':<12} {'runs':>4} {'path ARI best':>13} {'mean':>6} {'log-lik best':>12}"
    lines = [header]
    for row in result.summary():
        lines.append(f"{row['method']:<12} {row['runs']:>4} {row['path_ari_best']:>13.3f} "
                     f"{row['path_ari_mean']:>6.3f} {row['log_likelihood_best']:>12.3f}")
    lines.append(f"report: {report} ({result.seconds:.0f} s)")
    print("\n".join(lines))
    return 0


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def _fail(message: Any, code: int) -> int:
    text = " ".join(str(message).split()) or "unknown error"
    print(f"{PROG}: error: {text}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line interface.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments after the program name; ``sys.argv[1:]`` by default.

    Returns
    -------
    int
        The exit code: 0 on success, 2 for bad input, 1 when a valid run fails.
        ``--help`` and ``--version`` exit through ``SystemExit(0)``, argument errors through
        ``SystemExit(2)``, as with any argparse program.
    """
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except FileNotFoundError as error:
        missing = error.filename
        return _fail(f"file not found: {missing}" if missing else error, EXIT_USAGE)
    except (CLIError, ValueError, TypeError) as error:
        return _fail(error, EXIT_USAGE)
    except (OSError, FloatingPointError) as error:
        return _fail(error, EXIT_FAILURE)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)


if __name__ == "__main__":
    raise SystemExit(main())
