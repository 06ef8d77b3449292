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
from ppl_mixtures.cli.common import MODEL_FILE
from ppl_mixtures.registry import Family

__all__ = [
    "WRITERS",
    "format_summary",
    "label_scores",
    "summary",
    "write_latent_outputs",
    "write_mixture_outputs",
    "write_outputs",
]

#: Axis labels of ``history.png`` by inference path.
HISTORY_LABELS = {
    "sgd": ("epoch", "smoothed max-component loss per sample"),
    "em": ("iteration", "mean log-likelihood per sample"),
    "svi": ("step", "loss per sample (negative ELBO / N)"),
}


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
    return {
        "model": family.name,
        "dataset": str(args.data),
        "n_samples": int(X.shape[0]),
        "n_features": int(X.shape[1]),
        "n_components": _components(est.n_components),
        "covariance_type": getattr(est, "covariance_type", None),
        "n_factors": getattr(est, "n_factors", None),
        "inference": est.inference,
        "converged": bool(est.converged_),
        "n_iter": int(est.n_iter_),
        "mean_log_likelihood": est.score(X),
        "bic": est.bic(X),
        "aic": est.aic(X),
        **label_scores(labels, predicted),
        "seconds": float(est.fit_seconds_),
        "seed": args.seed,
        "device": str(reference.device),
        "dtype": str(reference.dtype).removeprefix("torch."),
        "version": __version__,
    }


def format_summary(summary: dict[str, Any], out: Path) -> str:
    """The printed table of :func:`summary`."""
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


def _save(fig: Any, path: Path) -> None:
    from ppl_mixtures.plotting import _pyplot

    fig.savefig(path, dpi=100, bbox_inches="tight")
    _pyplot().close(fig)


def _save_plots(family: Family, args: argparse.Namespace, est: Any, X: np.ndarray,
                predicted: np.ndarray, out: Path) -> None:
    from ppl_mixtures.plotting import plot_clusters, plot_history

    _save(plot_clusters(
        X, predicted, means=est.means_, covariances=family.full_covariances(est),
        title=f"{family.plot_label(est)} on {Path(args.data).name}: K={est._n_clusters()}",
    ), out / "clusters.png")
    xlabel, ylabel = HISTORY_LABELS[est.inference]
    _save(plot_history(est.history_, xlabel=xlabel, ylabel=ylabel, title="training history"),
          out / "history.png")


def write_mixture_outputs(family: Family, args: argparse.Namespace, est: Any, X: np.ndarray,
                          labels: np.ndarray | None, out: Path) -> None:
    """Predict, write the model file, ``summary.json`` and the plots; print the summary."""
    out.mkdir(parents=True, exist_ok=True)
    predicted = est.predict(X)
    numbers = summary(family, args, est, X, labels, predicted)
    est.save(out / MODEL_FILE)
    (out / "summary.json").write_text(json.dumps(numbers, indent=2) + "\n")
    _save_plots(family, args, est, X, predicted, out)
    print(format_summary(numbers, out))


def _latent_figures(est: Any, X: np.ndarray, predicted: np.ndarray, out: Path) -> None:
    from ppl_mixtures.plotting import plot_centroid_grid, plot_clusters, plot_history

    _save(plot_history(est.history_, xlabel="step", ylabel="loss per sample (negative ELBO)",
                       title=f"{type(est).__name__} training"), out / "history.png")
    _save(plot_clusters(est.transform(X), predicted,
                        title=f"latent x of the {type(est).__name__} (K={est.n_components}), "
                        "by cluster"), out / "latent.png")
    side = math.isqrt(X.shape[1])
    if side * side == X.shape[1] and side > 1:
        per_row = 8
        images = np.concatenate([est.sample(per_row, component=k, observation="mean")[0]
                                 for k in range(est.n_components)])
        _save(plot_centroid_grid(images, (est.n_components, per_row), (side, side),
                                 title="samples per component (rows)"), out / "samples.png")


def write_latent_outputs(family: Family, args: argparse.Namespace, est: Any, X: np.ndarray,
                         labels: np.ndarray | None, out: Path) -> None:
    """A deep latent model (GMVAE): the model file, ``summary.json``, the figures; print."""
    predicted = est.predict(X)
    numbers = {
        "model": family.name, "dataset": str(args.data), "n_samples": int(X.shape[0]),
        "n_features": int(X.shape[1]), "n_components": int(est.n_components),
        "preset": est.preset_, "likelihood": est.likelihood, "z_inference": est.z_inference,
        "free_bits": est.free_bits, "num_particles": est.num_particles,
        "epochs": est.max_iter, "steps": int(est.n_iter_),
        "elbo_per_sample": float(est.lower_bound_), **label_scores(labels, predicted),
        "clusters_used": int(len(np.unique(predicted))), "seconds": float(est.fit_seconds_),
        "seed": args.seed, "version": __version__,
    }
    est.save(out / MODEL_FILE)
    (out / "summary.json").write_text(json.dumps(numbers, indent=2) + "\n")
    _latent_figures(est, X, predicted, out)
    width = max(len(key) for key in numbers)
    print("\n".join(f"{key:<{width}}  {value}" for key, value in numbers.items())
          + f"\noutputs  {out}")


#: The writer of each ``Family.outputs``.
WRITERS: dict[str, Callable[..., None]] = {
    "mixture": write_mixture_outputs,
    "latent": write_latent_outputs,
}


def write_outputs(family: Family, args: argparse.Namespace, est: Any, X: np.ndarray,
                  labels: np.ndarray | None, out: Path) -> None:
    """Write and print what ``fit`` gives for the family (see :data:`WRITERS`)."""
    WRITERS[family.outputs](family, args, est, X, labels, out)
