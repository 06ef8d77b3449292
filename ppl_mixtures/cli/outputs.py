"""What ``fit`` prints and writes: the summary, ``summary.json``, the model file and plots.

A family's ``outputs`` (:mod:`ppl_mixtures.registry`) picks the writer: ``"mixture"``
(:func:`write_mixture_outputs`) or ``"latent"`` (:func:`write_latent_outputs`).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ppl_mixtures._version import __version__
from ppl_mixtures.cli.common import MODEL_FILE, SUMMARY_FILE
from ppl_mixtures.registry import Family

__all__ = [
    "IMPUTED_FILE",
    "WRITERS",
    "format_rows",
    "format_summary",
    "label_scores",
    "latent_figures",
    "save_figures",
    "scale_text",
    "summary",
    "write_latent_outputs",
    "write_mixture_outputs",
    "write_outputs",
]

#: ``--missing marginalize`` with missing cells: the data with each filled by its conditional
#: mean under the fit (``impute``), in the units of ``--data`` (before ``--scale``).
IMPUTED_FILE = "imputed.csv"

#: Axis labels of ``history.png`` by inference path.
HISTORY_LABELS = {
    "sgd": ("epoch", "smoothed max-component loss per sample"),
    "em": ("iteration", "mean log-likelihood per sample"),
    "svi": ("step", "loss per sample (negative ELBO / N)"),
    "nuts": ("draw", "mean log-likelihood per sample at the draw"),
    "cavi": ("iteration", "lower bound (scikit-learn's, total over rows)"),
}
#: What ``n_iter_`` counts, by inference path, in the printed summary.
STEP_NAMES = {"em": "iterations", "svi": "steps", "sgd": "epochs", "nuts": "draws per chain",
              "cavi": "iterations"}


def scale_text(args: argparse.Namespace) -> str:
    """The printed ``scaling`` row: what ``--scale`` did and why."""
    from ppl_mixtures.datasets import describe_scale

    text = describe_scale(args.scale)
    reason = getattr(args, "scale_reason", "default")
    return text if reason in ("default", "--scale") else f"{text}: {reason}"


def _inference_text(summary: dict[str, Any]) -> str:
    text = summary["inference"]
    details = []
    if summary.get("guide"):
        details.append(f"{summary['guide']} guide")
    if summary.get("batch_size"):
        details.append(f"batch size {summary['batch_size']}")
    return f"{text} ({', '.join(details)})" if details else text


def label_scores(labels: np.ndarray | None, predicted: np.ndarray) -> dict[str, float | None]:
    """ARI, NMI and cluster accuracy against known labels (``None`` each without labels)."""
    if labels is None:
        return {"ari": None, "nmi": None, "cluster_accuracy": None}
    from ppl_mixtures import metrics

    return {
        "ari": float(metrics.adjusted_rand_score(labels, predicted)),
        "nmi": float(metrics.normalized_mutual_info_score(labels, predicted)),
        "cluster_accuracy": metrics.cluster_accuracy(labels, predicted),
    }


def _components(value: Any) -> int | list[int]:
    """``n_components`` for JSON: an int, or a list of ints per layer."""
    if isinstance(value, (tuple, list)):
        return [int(item) for item in value]
    return int(value)


def summary(family: Family, args: argparse.Namespace, est: Any, X: np.ndarray,
            labels: np.ndarray | None, predicted: np.ndarray) -> dict[str, Any]:
    """The numbers of a fitted mixture, as printed and written to ``summary.json``."""
    reference = next(iter(est._param_tensors().values()))
    inference = est.inference
    batch_size = getattr(est, "batch_size", None) if inference in ("svi", "sgd") else None
    return {
        "model": family.name,
        "dataset": str(args.data),
        "scale": args.scale,
        "n_samples": int(getattr(args, "n_rows", None) or X.shape[0]),  # streamed: all rows
        "n_features": int(X.shape[1]),
        "n_components": _components(est.n_components),
        "covariance_type": getattr(est, "covariance_type", None),
        "n_factors": getattr(est, "n_factors", None),
        "inference": inference,
        "guide": getattr(est, "guide", None) if inference == "svi" else None,
        "batch_size": None if batch_size is None else int(batch_size),
        "converged": bool(est.converged_),
        "n_iter": int(est.n_iter_),
        "mean_log_likelihood": est.score(X),
        "bic": est.bic(X),
        "aic": est.aic(X),
        "missing_cells": getattr(args, "missing_cells", None),
        **label_scores(labels, predicted),
        "seconds": float(est.fit_seconds_),
        "seed": args.seed,
        "device": str(reference.device),
        "dtype": str(reference.dtype).removeprefix("torch."),
        "version": __version__,
    }


def format_summary(summary: dict[str, Any], out: Path, scaling: str | None = None) -> str:
    """The printed table of :func:`summary` (``scaling``: the ``scaling`` row's text)."""
    steps = STEP_NAMES.get(summary["inference"], "iterations")
    rows = [
        ("dataset", summary["dataset"]),
        ("scaling", scaling or summary["scale"]),
        ("samples (N)", summary["n_samples"]),
        ("features (D)", summary["n_features"]),
        ("components (K)", summary["n_components"]),
        ("covariance type" if summary["n_factors"] is None else "factors",
         summary["covariance_type"] or summary["n_factors"]),
        ("inference", _inference_text(summary)),
    ]
    if summary.get("missing_cells") is not None:
        cells = summary["n_samples"] * summary["n_features"]
        rows.append(("missing cells", f"{summary['missing_cells']} of {cells} "
                     f"({100 * summary['missing_cells'] / cells:.1f} %), integrated out"))
    rows += [
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
    return format_rows(rows)


def save_figures(figures: dict[str, Any], out: Path) -> None:
    """Save every ``{file name: figure}`` into ``out`` and close them all."""
    from ppl_mixtures.plotting import _pyplot

    plt = _pyplot()
    try:
        for name, fig in figures.items():
            fig.savefig(out / name, dpi=100, bbox_inches="tight")
    finally:
        for fig in figures.values():
            plt.close(fig)


def _mixture_figures(family: Family, args: argparse.Namespace, est: Any, X: np.ndarray,
                     predicted: np.ndarray) -> dict[str, Any]:
    from ppl_mixtures.plotting import plot_clusters, plot_history

    scaled = "" if args.scale == "none" else f" ({args.scale} scaled)"
    if np.isnan(X).any():  # missing cells drawn at their conditional means
        X, scaled = est.impute(X), scaled + ", missing cells imputed"
    figures = {"clusters.png": plot_clusters(
        X, predicted, means=est.means_, covariances=family.full_covariances(est),
        title=f"{family.plot_label(est)} on {Path(args.data).name}{scaled}: "
        f"K={est._n_clusters()}",
    )}
    xlabel, ylabel = HISTORY_LABELS[est.inference]
    figures["history.png"] = plot_history(est.history_, xlabel=xlabel, ylabel=ylabel,
                                          title="training history")
    return figures


def write_mixture_outputs(family: Family, args: argparse.Namespace, est: Any, X: np.ndarray,
                          labels: np.ndarray | None, out: Path) -> None:
    """Predict and draw, then write the model file, ``summary.json`` and the plots; print.

    Everything is computed before the first file is written, so a failure leaves no
    partial set of outputs.
    """
    predicted = est.predict(X)
    numbers = summary(family, args, est, X, labels, predicted)
    figures = _mixture_figures(family, args, est, X, predicted)
    imputed = imputed_data(est, X, getattr(args, "loaded_data", X))
    est.save(out / MODEL_FILE)
    (out / SUMMARY_FILE).write_text(json.dumps(numbers, indent=2) + "\n")
    if imputed is not None:
        np.savetxt(out / IMPUTED_FILE, imputed, delimiter=",", fmt="%.17g")
    save_figures(figures, out)
    print(format_summary(numbers, out, scale_text(args)))


def imputed_data(est: Any, X: np.ndarray, loaded: np.ndarray) -> np.ndarray | None:
    """``loaded`` with its missing cells filled by their conditional means under ``est``.

    Parameters
    ----------
    est : fitted estimator with ``impute``
    X : ndarray, shape (n_samples, n_features)
        The data as fitted (after ``--scale``), NaN where a cell is missing.
    loaded : ndarray, shape (n_samples, n_features)
        The same data before scaling (the units of ``--data``).

    Returns
    -------
    ndarray, shape (n_samples, n_features), or None when no cell is missing
        Observed cells exactly as loaded; a missing cell's imputed value mapped back through
        the column's affine scaling (recovered from two observed cells of the column, or its
        one observed cell when the column is constant).
    """
    missing = np.isnan(X)
    if not missing.any():
        return None
    imputed = est.impute(X)
    filled = loaded.copy()
    for column in np.flatnonzero(missing.any(axis=0)):
        observed = ~missing[:, column]
        raw, scaled = loaded[observed, column], X[observed, column]
        if raw.size == 0:  # nothing observed: the fit's scale is the loaded one
            slope, offset = 1.0, 0.0
        else:
            low, high = np.argmin(raw), np.argmax(raw)
            slope = (1.0 if raw[high] == raw[low]
                     else (raw[high] - raw[low]) / (scaled[high] - scaled[low]))
            offset = raw[low] - slope * scaled[low]
        rows = missing[:, column]
        filled[rows, column] = offset + slope * imputed[rows, column]
    return filled


def latent_figures(est: Any, X: np.ndarray, predicted: np.ndarray, *,
                   history: bool = True) -> dict[str, Any]:
    """``history.png``, ``latent.png`` and, for square images, ``samples.png`` of a GMVAE."""
    from ppl_mixtures.plotting import plot_centroid_grid, plot_clusters, plot_history

    name = type(est).__name__
    figures = {}
    if history:
        figures["history.png"] = plot_history(
            est.history_, xlabel="step", ylabel="loss per sample (negative ELBO)",
            title=f"{name} training")
    figures["latent.png"] = plot_clusters(
        est.transform(X), predicted,
        title=f"latent x of the {name} (K={est.n_components}), by cluster")
    side = math.isqrt(X.shape[1])
    if history and side * side == X.shape[1] and side > 1:
        per_row = 8
        images = np.concatenate([est.sample(per_row, component=k, observation="mean")[0]
                                 for k in range(est.n_components)])
        figures["samples.png"] = plot_centroid_grid(
            images, (est.n_components, per_row), (side, side),
            title="samples per component (rows)")
    return figures


def _latent_rows(numbers: dict[str, Any], scaling: str) -> list[tuple[str, Any]]:
    """The printed table of a GMVAE fit, numbers formatted."""
    rows: list[tuple[str, Any]] = [
        ("dataset", numbers["dataset"]),
        ("scaling", scaling),
        ("samples (N)", numbers["n_samples"]),
        ("features (D)", numbers["n_features"]),
        ("components (K)", numbers["n_components"]),
        ("preset", numbers["preset"]),
        ("likelihood", numbers["likelihood"]),
        ("z inference", numbers["z_inference"]),
    ]
    if numbers["free_bits"]:
        rows.append(("free bits", f"{numbers['free_bits']:g}"))
    rows += [
        ("particles", numbers["num_particles"]),
        ("epochs", numbers["epochs"]),
        ("steps", numbers["steps"]),
        ("ELBO per sample", f"{numbers['elbo_per_sample']:.4f} (a lower bound of the mean "
         "log-likelihood)"),
    ]
    if numbers["ari"] is not None:
        rows += [
            ("ARI", f"{numbers['ari']:.4f}"),
            ("NMI", f"{numbers['nmi']:.4f}"),
            ("cluster accuracy", f"{numbers['cluster_accuracy']:.4f}"),
        ]
    rows += [
        ("clusters used", f"{numbers['clusters_used']} of {numbers['n_components']}"),
        ("seconds", f"{numbers['seconds']:.2f}"),
    ]
    return rows


def write_latent_outputs(family: Family, args: argparse.Namespace, est: Any, X: np.ndarray,
                         labels: np.ndarray | None, out: Path) -> None:
    """A deep latent model (GMVAE): the model file, ``summary.json``, the figures; print."""
    predicted = est.predict(X)
    numbers = {
        "model": family.name, "dataset": str(args.data), "scale": args.scale,
        "n_samples": int(getattr(args, "n_rows", None) or X.shape[0]),  # streamed: all rows
        "n_features": int(X.shape[1]), "n_components": int(est.n_components),
        "preset": est.preset_, "likelihood": est.likelihood, "z_inference": est.z_inference,
        "free_bits": est.free_bits, "num_particles": est.num_particles,
        "epochs": est.max_iter, "steps": int(est.n_iter_),
        "elbo_per_sample": float(est.lower_bound_), **label_scores(labels, predicted),
        "clusters_used": int(len(np.unique(predicted))), "seconds": float(est.fit_seconds_),
        "seed": args.seed, "version": __version__,
    }
    figures = latent_figures(est, X, predicted)
    est.save(out / MODEL_FILE)
    (out / SUMMARY_FILE).write_text(json.dumps(numbers, indent=2) + "\n")
    save_figures(figures, out)
    print(format_rows([*_latent_rows(numbers, scale_text(args)), ("outputs", str(out))]))


def format_rows(rows: list[tuple[str, Any]]) -> str:
    """``name  value`` lines, the names padded to one width."""
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


#: The writer of each ``Family.outputs``.
WRITERS: dict[str, Callable[..., None]] = {
    "mixture": write_mixture_outputs,
    "latent": write_latent_outputs,
}


def write_outputs(family: Family, args: argparse.Namespace, est: Any, X: np.ndarray,
                  labels: np.ndarray | None, out: Path) -> None:
    """Write and print what ``fit`` gives for the family (see :data:`WRITERS`)."""
    WRITERS[family.outputs](family, args, est, X, labels, out)
