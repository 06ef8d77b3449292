"""``ppl-mixtures diagnose MODEL_FILE --data ...``: posterior diagnostics of a saved model.

What is reported depends on the fit, and the report says why a number is missing:

- every family with a likelihood: mean log-likelihood and BIC at the fitted parameters,
  ``summary.csv`` over every global site (weights, means, covariances), ``clusters.png``,
  ``responsibilities.png``, ``inference_data.nc``;
- posterior draws: the fit's own (NUTS, a mean-field SVI guide), else draws of the Laplace
  approximation at the point estimate (EM, SGD, MAP SVI; :mod:`ppl_mixtures.inference.laplace`,
  with its Pareto k and any regularisation of the Hessian reported); with them WAIC and LOO
  (with ArviZ's reliability warnings), ``trace.png``, and r_hat when there are two chains or
  more. A model too large for the Laplace approximation is reported as a point estimate,
  with the reason, and no WAIC or LOO;
- a family without a tractable likelihood (the GMVAE, ``Family.tractable_likelihood``):
  the ELBO, the clusters and ``latent.png``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ppl_mixtures.cli.common import (
    MODEL_FILE,
    SUMMARY_FILE,
    CLIError,
    OutputFolder,
    load_data,
    scale_data,
)
from ppl_mixtures.cli.outputs import (
    format_rows,
    label_scores,
    latent_figures,
    save_figures,
    scale_text,
)

__all__ = ["DIAGNOSE_OUTPUTS", "run_diagnose"]

#: Every file ``diagnose`` may write into ``--out``.
DIAGNOSE_OUTPUTS = ("report.md", "inference_data.nc", "summary.csv", "clusters.png",
                    "responsibilities.png", "trace.png", "latent.png")


def _has_tabulate() -> bool:
    return importlib.util.find_spec("tabulate") is not None


def _scale(args: argparse.Namespace) -> tuple[str, str]:
    """``--scale``, else the one recorded by ``fit`` next to the model, else none."""
    if args.scale is not None:
        return args.scale, "--scale"
    recorded = args.model.parent / SUMMARY_FILE
    try:
        scale = json.loads(recorded.read_text()).get("scale")
    except (OSError, ValueError, AttributeError):
        scale = None
    if scale in ("standard", "minmax"):
        return scale, f"as fitted, from {recorded}; --scale overrides"
    return "none", "default"


def _write_report(out: Path, rows: list[tuple[str, Any]], table: Any = None) -> str:
    text = format_rows(rows)
    body = "# Diagnostics\n\n```\n" + text + "\n```\n"
    if table is not None:
        body += ("\n" + table.to_markdown() + "\n" if _has_tabulate()
                 else "\nSee summary.csv.\n")
    (out / "report.md").write_text(body)
    return text


def _latent_report(est: Any, family: Any, X: np.ndarray, labels: np.ndarray | None,
                   scaling: str, folder: OutputFolder) -> str:
    """A model without a tractable likelihood (GMVAE): the ELBO and the clusters."""
    from ppl_mixtures.plotting import plot_clusters, plot_responsibilities

    predicted = est.predict(X)
    name = type(est).__name__
    rows: list[tuple[str, Any]] = [
        ("model", f"{type(est).__name__}: {family.plot_label(est)}"),
        ("samples", X.shape[0]),
        ("scaling", scaling),
        ("ELBO per sample", f"{est.score(X):.4f} (a lower bound of the mean log-likelihood)"),
        ("log-likelihood, BIC", f"n/a: a {name} has no tractable likelihood (the ELBO "
         "bounds it from below)"),
        ("WAIC, LOO, r_hat", f"n/a: a {name} has no tractable likelihood and no posterior "
         "draws of global parameters"),
        ("clusters used", f"{len(np.unique(predicted))} of {est.n_components}"),
    ]
    scores = label_scores(labels, predicted)
    if scores["ari"] is not None:
        rows.append(("ARI", f"{scores['ari']:.4f}"))
    figures = latent_figures(est, X, predicted, history=False)
    figures["clusters.png"] = plot_clusters(X, predicted, title=f"{family.plot_label(est)}: "
                                            "clusters in the data's principal plane")
    figures["responsibilities.png"] = plot_responsibilities(est.predict_proba(X))
    out = folder.create()
    save_figures(figures, out)
    return _write_report(out, rows)


def _point_table(idata: Any) -> Any:
    """The one draw of a point estimate as a table like ``az.summary``'s, one ``estimate``
    column (a single draw has no spread, interval or effective sample size)."""
    import pandas as pd

    names, values = [], []
    for name in idata.posterior.data_vars:
        array = idata.posterior[name].values[0, 0]
        for index, value in np.ndenumerate(array):
            names.append(f"{name}[{', '.join(map(str, index))}]" if index else name)
            values.append(float(value))
    return pd.DataFrame({"estimate": values}, index=names)


def _draws_text(n_chains: int, n_draws: int, has_draws: bool, kind: str = "") -> str:
    if not has_draws:
        return "1 (a point estimate)"
    if kind == "laplace":
        return f"{n_draws} (Laplace approximation at the point estimate)"
    if n_chains == 1:
        return f"{n_draws} (one chain)"
    return f"{n_chains * n_draws} ({n_chains} chains of {n_draws})"


def _criterion(result: Any, name: str) -> str:
    elpd, se = getattr(result, f"elpd_{name}"), result.se
    text = f"{elpd:.2f} (se {se:.2f}, p_{name} {getattr(result, f'p_{name}'):.2f})"
    if getattr(result, "warning", False):
        text += (" - unreliable: Pareto k above ArviZ's threshold for some observations"
                 if name == "loo" else " - unreliable: posterior variance of the "
                 "log-likelihood above 0.4 for some observations")
    return text


def _r_hat_text(est: Any, summary: Any, n_chains: int, has_draws: bool) -> str:
    if not has_draws:
        return "n/a: a point estimate has no draws"
    if n_chains >= 2 and "r_hat" in summary:
        return f"{float(summary['r_hat'].max()):.3f} (over every summarised site)"
    if getattr(est, "inference", None) == "nuts":
        return "n/a: r_hat compares chains and this fit has one (fit with --num-chains 2)"
    if summary is not None and getattr(summary, "attrs", {}).get("kind") == "laplace":
        return ("n/a: r_hat compares MCMC chains; Laplace draws are independent draws of "
                "one Gaussian")
    return ("n/a: r_hat compares MCMC chains; the draws of a mean-field guide are "
            "independent draws of one distribution")


#: Above this Pareto k of its importance ratios, Laplace draws give no WAIC or LOO: the ratios
#: have no finite mean (Vehtari et al. 2024); between 0.7 and 1 they are shown, flagged.
_UNUSABLE_PARETO_K = 1.0


def _inference_data(est: Any, args: argparse.Namespace, X: np.ndarray) -> tuple[Any, list[str]]:
    """The fit's posterior draws (its own, else Laplace) and what the Laplace step warned.

    A model above the Laplace parameter budget falls back to the point estimate; the first
    note says why.
    """
    from ppl_mixtures.diagnostics import to_inference_data
    from ppl_mixtures.inference.laplace import LaplaceWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LaplaceWarning)
        try:
            idata = to_inference_data(est, X, num_samples=args.num_samples,
                                      random_state=args.seed)
        except ValueError as err:
            if "max_parameters" not in str(err):
                raise
            idata = to_inference_data(est, X, random_state=args.seed, posterior="point")
            return idata, [f"the Laplace approximation was refused ({str(err).split(';')[0]})"]
    notes = [str(w.message) for w in caught if issubclass(w.category, LaplaceWarning)]
    for w in caught:  # pass the others on
        if not issubclass(w.category, LaplaceWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return idata, notes


def _summary_text(est: Any, idata: Any) -> str:
    """Which global sites ``summary.csv`` holds, and why the others are left out."""
    text = "summary.csv: " + ", ".join(idata.posterior.data_vars)
    if hasattr(est.params_, "n_layers"):
        return text + (" of the paths (the layers' sites are not identified: every layer's "
                       "scores can be rotated and shifted)")
    if hasattr(est.params_, "loadings") and "loadings" not in idata.posterior:
        return text + " (loadings left out: with several factors any rotation fits as well)"
    return text


def _laplace_text(attrs: dict[str, Any]) -> str:
    """Pareto k of the Laplace draws, the regularised eigenvalues, and the verdict."""
    from ppl_mixtures.diagnostics import LAPLACE_PARETO_K

    k = float(attrs.get("laplace_pareto_k", float("nan")))
    text = f"Pareto k {k:.2f}"
    count = int(attrs.get("laplace_regularised_eigenvalues", 0))
    if count:
        text += (f", {count} eigenvalue(s) of the Hessian regularised (directions the "
                 "posterior does not curve along: rotations of loadings, a boundary, a saddle)")
    if k > _UNUSABLE_PARETO_K:
        text += " - the Gaussian is a poor fit of the posterior: no WAIC or LOO from it"
    elif k > LAPLACE_PARETO_K:
        text += (" - unreliable: the Gaussian is a poor fit of the posterior, so WAIC and LOO "
                 "are only indicative")
    return text


def _mixture_report(est: Any, family: Any, args: argparse.Namespace, X: np.ndarray,
                    labels: np.ndarray | None, scaling: str, folder: OutputFolder) -> str:
    from ppl_mixtures.diagnostics import import_arviz, posterior_draws_hint, quiet_arviz
    from ppl_mixtures.plotting import plot_clusters, plot_responsibilities

    az = import_arviz()
    idata, laplace_notes = _inference_data(est, args, X)
    kind = idata.posterior.attrs.get("posterior_kind", "point")
    has_draws = kind != "point"
    n_chains, n_draws = idata.posterior.sizes["chain"], idata.posterior.sizes["draw"]
    with quiet_arviz(), warnings.catch_warnings():
        # ArviZ's reliability warnings: the report flags them (see _criterion)
        warnings.filterwarnings("ignore", message="Estimated shape parameter of Pareto")
        warnings.filterwarnings("ignore", message="For one or more samples the posterior")
        if has_draws:
            summary = az.summary(idata, var_names=list(idata.posterior.data_vars), kind="all")
            summary.attrs["kind"] = kind
            if n_chains < 2:
                summary = summary.drop(columns=["r_hat"], errors="ignore")
            waic, loo = az.waic(idata), az.loo(idata)
        else:
            summary = _point_table(idata)
            waic = loo = None
    pareto_k = float(idata.posterior.attrs.get("laplace_pareto_k", float("nan")))
    hint = posterior_draws_hint(est, command_line=True)
    if kind == "laplace" and pareto_k > _UNUSABLE_PARETO_K:
        waic = loo = None
        missing = (f"n/a: the Laplace approximation is no usable posterior (Pareto k "
                   f"{pareto_k:.2f} > {_UNUSABLE_PARETO_K:g}); {hint}")
    elif laplace_notes and not has_draws:
        missing = f"n/a: needs posterior draws: {laplace_notes[0]}; {hint}"
    else:
        missing = f"n/a: needs posterior draws: {hint}"
    predicted = est.predict(X)
    rows: list[tuple[str, Any]] = [
        ("model", f"{type(est).__name__}: {family.plot_label(est)}"),
        ("samples", X.shape[0]),
        ("scaling", scaling),
        ("posterior draws", _draws_text(n_chains, n_draws, has_draws, kind)),
        ("mean log-likelihood", f"{est.score(X):.4f}"),
        ("BIC", f"{est.bic(X):.2f}"),
        ("WAIC elpd", missing if waic is None else _criterion(waic, "waic")),
        ("LOO elpd", missing if loo is None else _criterion(loo, "loo")),
        ("max r_hat", _r_hat_text(est, summary, n_chains, has_draws)),
        ("summary", _summary_text(est, idata)),
    ]
    if kind == "laplace":
        rows.append(("Laplace", _laplace_text(idata.posterior.attrs)))
    scores = label_scores(labels, predicted)
    if scores["ari"] is not None:
        rows.append(("ARI", f"{scores['ari']:.4f}"))
    responsibilities = est.predict_proba(X)
    figures = {
        "clusters.png": plot_clusters(
            X, predicted, means=est.means_, covariances=family.full_covariances(est),
            title=f"{family.plot_label(est)} on {Path(str(args.data)).name}"),
        "responsibilities.png": plot_responsibilities(responsibilities),
    }
    if has_draws:
        with quiet_arviz():
            axes = az.plot_trace(idata, var_names=["weights", "means"], compact=True)
        figures["trace.png"] = np.ravel(axes)[0].figure
    out = folder.create()
    idata.to_netcdf(str(out / "inference_data.nc"))
    summary.to_csv(out / "summary.csv")
    save_figures(figures, out)
    return _write_report(out, rows, summary)


def run_diagnose(args: argparse.Namespace) -> int:
    """Score the model on ``--data``; write the report, inference data, summary and plots."""
    from ppl_mixtures.estimators import load_estimator
    from ppl_mixtures.registry import family_of

    if not args.model.exists():
        raise CLIError(f"MODEL_FILE {args.model} does not exist; pass a {MODEL_FILE} from "
                       "'fit'")
    folder = OutputFolder(args.out, overwrite=args.overwrite, outputs=DIAGNOSE_OUTPUTS)
    folder.check()
    est = load_estimator(args.model, device="cpu")
    family = family_of(est)
    X, labels = load_data(args)
    args.scale, args.scale_reason = _scale(args)
    X = scale_data(X, args.scale)
    if X.shape[1] != est.n_features_in_:
        raise CLIError(f"--data has {X.shape[1]} features but the model was fitted on "
                       f"{est.n_features_in_}; pass the data it was fitted on")
    scaling = scale_text(args)
    with folder:
        if family.tractable_likelihood:
            text = _mixture_report(est, family, args, X, labels, scaling, folder)
        else:
            text = _latent_report(est, family, X, labels, scaling, folder)
    print(text + f"\noutputs  {args.out}")
    return 0
