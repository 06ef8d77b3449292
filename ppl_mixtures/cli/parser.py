"""The ``ppl-mixtures`` argument parser: one ``fit`` sub-command per registered model family.

The ``fit MODEL`` parsers are built from :data:`ppl_mixtures.registry.FAMILIES`: the common
options (data, K, budget, seed, device, outputs), ``--inference`` from the family's inference
paths, the family's own options, and ``--distributed`` where the family runs under torchrun.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from ppl_mixtures._version import __version__
from ppl_mixtures.cli.common import (
    CHECKPOINT_FILE,
    DEFAULT_N_COMPONENTS,
    EXIT_USAGE,
    MODEL_FILE,
    PROG,
    SUMMARY_FILE,
)
from ppl_mixtures.registry import FAMILIES, Family, Option

__all__ = ["build_parser", "integer", "integer_list", "real"]

#: How ``--help`` names each inference path.
INFERENCE_NAMES = {
    "em": "expectation-maximisation",
    "svi": "stochastic variational inference",
    "sgd": "the max-component SGD of Gepperth & Pfülb (2021)",
    "nuts": "the No-U-Turn sampler",
    "cavi": "coordinate-ascent variational inference",
}


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line: ``prog: error: message``."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


# ---------------------------------------------------------------------------------------------
# Argument types
# ---------------------------------------------------------------------------------------------


def integer(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer ``>= minimum``."""

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


def real(*, positive: bool) -> Callable[[str], float]:
    """An argparse type: a finite number ``> 0`` (``positive``) or ``>= 0``."""
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


def boolean(words: tuple[str, ...] = ()) -> Callable[[str], Any]:
    """An argparse type: ``true``/``false`` (or ``yes``/``no``, ``1``/``0``) -> True/False;
    each of ``words`` (e.g. ``("auto",)``) is returned as it is."""
    spelled = " or ".join(("true", "false", *words))

    def parse(text: str) -> Any:
        word = text.strip().lower()
        if word in words:
            return word
        if word in ("true", "yes", "1"):
            return True
        if word in ("false", "no", "0"):
            return False
        raise argparse.ArgumentTypeError(f"expected {spelled}, got {text!r}")

    parse.__name__ = "boolean"
    return parse


def integer_list(text: str) -> tuple[int, ...]:
    """An argparse type: ``"3,3,2"`` -> ``(3, 3, 2)``, positive integers."""
    try:
        values = tuple(int(item) for item in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 3,3,2, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"every entry must be an integer >= 1, got {text!r}")
    return values


#: The argparse type of each :data:`ppl_mixtures.registry.OPTION_TYPES` (``choice``: none;
#: ``boolean``: :func:`boolean` of the option's ``choices``, made per option).
_OPTION_PARSERS: dict[str, Callable[[str], Any] | None] = {
    "count": integer(1),
    "counts": integer_list,
    "positive": real(positive=True),
    "nonnegative": real(positive=False),
    "choice": None,
}


# ---------------------------------------------------------------------------------------------
# fit MODEL
# ---------------------------------------------------------------------------------------------


def _paths(names: tuple[str, ...]) -> str:
    """``("em", "svi")`` -> ``"EM or SVI"``."""
    return " or ".join(name.upper() for name in names)


def _scale_help(family: Family | None) -> str:
    defaults = "" if family is None else "".join(
        f", {scale} for --inference {path}" for path, scale in family.scale)
    return ("preprocess the features with statistics of --data: none, standard (zero mean and "
            "unit variance per feature) or minmax ([0, 1] per feature); printed in the "
            f"summary (default: none{defaults})")


def _add_data_options(parser: argparse.ArgumentParser, family: Family | None,
                      default: str | None) -> Any:
    from ppl_mixtures.datasets import BUILTIN_DATASETS, SCALES

    data = parser.add_argument_group("data")
    data.add_argument(
        "--data", default=default, required=default is None, metavar="NAME|PATH",
        help=f"built-in data set ({', '.join(BUILTIN_DATASETS)}; raw, as scikit-learn or "
        "the simulation gives them) or a .csv / .npy file"
        + (f" (default: {default})" if default else ""),
    )
    data.add_argument(
        "--label-column", metavar="COL",
        help="CSV only: column holding known labels, by header name or integer index",
    )
    data.add_argument(
        "--labels", metavar="PATH", help="NPY only: a .npy file holding the known labels",
    )
    data.add_argument("--scale", choices=SCALES, help=_scale_help(family))
    return data


def _common_fit_options(family: Family) -> argparse.ArgumentParser:
    """Options shared by every ``fit`` model: data, K, budget, seed, device, outputs."""

    parent = argparse.ArgumentParser(add_help=False)
    data = _add_data_options(parent, family, family.dataset)
    data.add_argument(
        "--stream", action="store_true",
        help="read --data (.npy, or uncompressed IDX) batch by batch through a memory map "
        "instead of loading it: data larger than memory; a .npy file over 2 GiB is streamed "
        "without it (see docs/scaling.md)",
    )
    fitting = parent.add_argument_group("fitting")
    fitting.add_argument(
        "--n-components", "-k", type=integer(1), metavar="K",
        help=f"number of components (default: the number of distinct known labels, else "
        f"{DEFAULT_N_COMPONENTS})",
    )
    fitting.add_argument(
        "--max-iter", type=integer(1), metavar="N", help=family.max_iter_help,
    )
    fitting.add_argument(
        "--tol", type=real(positive=False), help="convergence tolerance (default: the estimator's)",
    )
    if family.n_init:
        fitting.add_argument(
            "--n-init", type=integer(1), metavar="N",
            help="restarts; the best is kept (default: 1)",
        )
    fitting.add_argument(
        "--seed", type=integer(0), default=0, metavar="S", help="random seed (default: 0)",
    )
    fitting.add_argument(
        "--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N",
    )
    fitting.add_argument(
        "--dtype", choices=("float32", "float64"),
        help="floating point precision (default: the estimator's, float64 for mixtures)",
    )
    output = parent.add_argument_group("output")
    output.add_argument(
        "--out", type=Path, metavar="DIR",
        help="output folder, created when needed; refused when not empty, unless --overwrite "
        f"or --resume (default: runs/{family.name})",
    )
    output.add_argument(
        "--overwrite", action="store_true",
        help="write into a non-empty --out, replacing its files",
    )
    if family.resume:
        output.add_argument(
            "--resume", action="store_true",
            help=f"{_paths(family.resume)} only: continue from DIR/{CHECKPOINT_FILE} "
            "(--max-iter counts all steps)",
        )
    output.add_argument(
        "--no-progress", dest="progress", action="store_false", help="hide progress bars",
    )
    return parent


def _add_option(group: Any, option: Option) -> None:
    metavar = option.metavar
    if option.type == "boolean":  # true/false and the option's own words, parsed to values
        metavar = metavar or "{" + ",".join((*option.choices, "true", "false")) + "}"
        group.add_argument(option.flag, dest=option.dest, type=boolean(option.choices),
                           default=option.default, metavar=metavar, help=option.help)
        return
    if metavar is None and option.type != "choice":
        metavar = option.flag.lstrip("-").upper().replace("-", "_")
    group.add_argument(
        option.flag, dest=option.dest, type=_OPTION_PARSERS[option.type],
        choices=option.choices or None, default=option.default, metavar=metavar,
        help=option.help,
    )


def _add_family_parser(models: Any, family: Family) -> None:
    """``fit NAME``: the common options, then the family's."""
    from ppl_mixtures.cli.fit import run_fit

    parser = models.add_parser(
        family.name, parents=[_common_fit_options(family)], help=family.help,
        description=family.description,
    )
    group = parser.add_argument_group(f"{family.name} options")
    if len(family.inference) > 1:
        names = [INFERENCE_NAMES.get(name, name) for name in family.inference]
        group.add_argument(
            "--inference", choices=family.inference, default=family.inference[0],
            help=f"{', '.join(names[:-1])} or {names[-1]} (default: {family.inference[0]})",
        )
    for option in family.options:
        _add_option(group, option)
    if family.distributed:
        group.add_argument(
            "--distributed", action="store_true",
            help=f"{_paths(family.distributed)} across the processes of a torchrun launch: "
            "each process reads --data and keeps rows rank::world_size, EM statistics or SVI "
            "gradients are all-reduced, rank 0 writes the outputs (see docs/scaling.md)",
        )
    parser.set_defaults(run=run_fit, model=family.name, inference=family.inference[0],
                        distributed=False, resume=False, n_init=None)


# ---------------------------------------------------------------------------------------------
# compare-dgmm, diagnose
# ---------------------------------------------------------------------------------------------


def _add_compare_dgmm_parser(commands: Any) -> None:
    from ppl_mixtures.cli.compare import run_compare_dgmm
    from ppl_mixtures.experiments.bumpy_journey import ExperimentConfig

    defaults = ExperimentConfig()
    parser = commands.add_parser(
        "compare-dgmm", help="the DGMM paper's experiment: EM and SVI from random starts",
        description="Simulate the section 3.1 data of Selosse et al. (2020) (N=4000, J=17, G=(3,3,2), "
        "R=(11,6,2), standardised), fit the DGMM by EM, annealed EM and SVI from random "
        "starts, score the true parameters, and write the paper's Tables 1-3 and Figures 2-5 "
        "with report.md into --out. The defaults take about 7 minutes on 2 CPU cores; "
        "'--runs 1 --svi-runs 0 --bic-runs 0' is the smallest run (about a minute).",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/compare-dgmm"), metavar="DIR",
                        help="output folder, refused when not empty unless --overwrite "
                        "(default: runs/compare-dgmm)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty --out, replacing its files")
    parser.add_argument("--runs", type=integer(1), default=defaults.runs, metavar="N",
                        help=f"EM starts, also the size of the mutual-ARI matrix of Figure 5, "
                        f"drawn from 2 runs (default: {defaults.runs}; Selosse et al. use 20, "
                        "and 100 for Figure 5)")
    parser.add_argument("--svi-runs", type=integer(0), default=defaults.svi_runs, metavar="N",
                        help=f"SVI starts (default: {defaults.svi_runs}; 0 skips SVI)")
    parser.add_argument("--bic-runs", type=integer(0), default=defaults.bic_runs, metavar="N",
                        help=f"runs per candidate G(1) in Table 1 (default: {defaults.bic_runs}; "
                        "0 skips Table 1 and Figure 2)")
    parser.add_argument("--n-samples", type=integer(10), default=defaults.n_samples,
                        metavar="N", help=f"simulated samples (default: {defaults.n_samples})")
    parser.add_argument("--em-max-iter", type=integer(1), default=defaults.em_max_iter,
                        metavar="N", help=f"EM iterations per run (default: {defaults.em_max_iter})")
    parser.add_argument("--svi-max-iter", type=integer(1), default=defaults.svi_max_iter,
                        metavar="N", help=f"SVI steps per run (default: {defaults.svi_max_iter})")
    parser.add_argument("--seed", type=integer(0), default=0, metavar="S",
                        help="seed of the simulated data; run r uses S + r (default: 0)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    parser.add_argument("--quick", action="store_true",
                        help="a small problem in seconds (a smoke test, not the paper's setting)")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="hide the progress bar")
    parser.set_defaults(run=run_compare_dgmm)


def _add_diagnose_parser(commands: Any) -> None:
    from ppl_mixtures.cli.diagnose import run_diagnose

    parser = commands.add_parser(
        "diagnose", help="posterior diagnostics of a saved model on data",
        description=f"Load a model written by 'fit' ({MODEL_FILE}), score it on --data, and "
        "write report.md (log-likelihood, BIC; WAIC, LOO and r_hat where the fit has "
        "posterior draws, and why not where it has none), inference_data.nc (arviz), "
        "summary.csv (az.summary of the weights, means and covariances), clusters.png, "
        "responsibilities.png and, with draws, trace.png into --out. A GMVAE has no "
        "tractable likelihood: its report gives the ELBO and the clusters, with latent.png.",
    )
    parser.add_argument("model", type=Path, metavar="MODEL_FILE",
                        help=f"a {MODEL_FILE} from 'fit'")
    data = _add_data_options(parser, None, None)
    data.description = (f"--scale defaults to the scale recorded in the {SUMMARY_FILE} next "
                        "to MODEL_FILE (what 'fit' applied), else none")
    parser.add_argument("--out", type=Path, default=Path("runs/diagnose"), metavar="DIR",
                        help="output folder, refused when not empty unless --overwrite "
                        "(default: runs/diagnose)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty --out, replacing its files")
    parser.add_argument("--num-samples", type=integer(2), default=200, metavar="N",
                        help="draws of a mean-field SVI guide (default: 200)")
    parser.add_argument("--seed", type=integer(0), default=0, metavar="S")
    parser.set_defaults(run=run_diagnose)


def _add_select_parser(commands: Any) -> None:
    from ppl_mixtures.cli.select import run_select

    parser = commands.add_parser(
        "select", help="model search over K and the covariance type (as mclust)",
        description="Fit a Gaussian mixture for every number of components and covariance "
        "type, score each by --criterion, and write selection.csv (every candidate), "
        f"selection.png (the criterion against K per covariance type), {SUMMARY_FILE} and "
        f"the best model as {MODEL_FILE} into --out.",
    )
    _add_data_options(parser, None, "gmm")
    search = parser.add_argument_group("search")
    search.add_argument("-k", "--n-components", type=integer_list, default=tuple(range(1, 10)),
                        metavar="K1,K2,...", help="numbers of components (default: 1,...,9)")
    search.add_argument("--covariance-types", type=lambda text: text.split(","),
                        default=["all"], metavar="T1,T2,...",
                        help="covariance types, comma-separated, or all (default: all)")
    search.add_argument("--criterion", choices=("bic", "aic", "icl"), default="bic",
                        help="lower is better for all three (default: bic)")
    search.add_argument("--n-init", type=integer(1), default=1, metavar="N",
                        help="EM starts per candidate (default: 1)")
    parser.add_argument("--seed", type=integer(0), default=0, metavar="S",
                        help="random seed (default: 0)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--out", type=Path, default=Path("runs/select"), metavar="DIR",
                        help="output folder, refused when not empty unless --overwrite "
                        "(default: runs/select)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty --out, replacing its files")
    parser.set_defaults(run=run_select)


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
        description=f"Fit a model and write {MODEL_FILE}, summary.json, clusters.png and "
        "history.png into --out.",
    )
    models = fit.add_subparsers(
        title="models", dest="model", metavar="MODEL", required=True, parser_class=_Parser,
    )
    for family in FAMILIES.values():
        _add_family_parser(models, family)
    _add_compare_dgmm_parser(commands)
    _add_diagnose_parser(commands)
    _add_select_parser(commands)
    return parser
