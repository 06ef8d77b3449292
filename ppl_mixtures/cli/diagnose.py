"""``ppl-mixtures diagnose MODEL_FILE --data ...``: posterior diagnostics of a saved model."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from ppl_mixtures.cli.common import MODEL_FILE, CLIError, load_data
from ppl_mixtures.cli.outputs import label_scores

__all__ = ["run_diagnose"]


def _has_tabulate() -> bool:
    return importlib.util.find_spec("tabulate") is not None


def run_diagnose(args: argparse.Namespace) -> int:
    """Score the model on ``--data``; write inference data, summary, report and plots."""
    import warnings

    import arviz as az

    from ppl_mixtures.diagnostics import to_inference_data
    from ppl_mixtures.estimators import load_estimator
    from ppl_mixtures.plotting import _pyplot, plot_clusters, plot_responsibilities
    from ppl_mixtures.registry import family_of

    if not args.model.exists():
        raise CLIError(f"MODEL_FILE {args.model} does not exist; pass a {MODEL_FILE} from "
                       "'fit'")
    est = load_estimator(args.model, device="cpu")
    family = family_of(est)
    X, labels = load_data(args)
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
    scores = label_scores(labels, predicted)
    if scores["ari"] is not None:
        rows.append(("ARI", f"{scores['ari']:.4f}"))
    width = max(len(name) for name, _ in rows)
    text = "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
    (args.out / "report.md").write_text(
        "# Diagnostics\n\n```\n" + text + "\n```\n\n" + summary.to_markdown()
        if hasattr(summary, "to_markdown") and _has_tabulate() else
        "# Diagnostics\n\n```\n" + text + "\n```\n\nSee summary.csv.\n")
    plt = _pyplot()
    fig = plot_clusters(X, predicted, means=est.means_, covariances=family.full_covariances(est),
                        title=f"{family.plot_label(est)} on {Path(str(args.data)).name}")
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
