"""The experiment of Selosse et al. (2020, section 3): EM's "bumpy journey", with SVI beside it.

One call, :func:`run_experiment`, simulates the data of their section 3.1
(:func:`~ppl_mixtures.datasets.make_dgmm`, standardised) and fits the same
:class:`~ppl_mixtures.estimators.DeepGaussianMixture` by

``em``
    plain exact EM from random k-means starts (the paper's algorithm, with expectations in
    place of sampled scores, so the likelihood never goes down);
``em_annealed``
    the same starts, first through deterministic annealing (``anneal_start``), then plain EM;
``em_realigned``
    ``em_annealed``, then the first layer kept, its components' scores put in one frame and
    the deeper layers restarted (``realign=True``), then plain EM again;
``em_gmm``
    the estimator's default (``start="gmm"``): the data's own ``prod G_l``-component Gaussian
    mixture mapped onto the tree of paths, the layers above the first regrown from its
    scores, accelerated (SQUAREM) cycles, then plain EM
    (:mod:`ppl_mixtures.inference.dgmm_start`);
``svi``
    MAP by ``TraceEnum_ELBO`` on the collapsed Pyro model from the layer-wise start;
``svi_gmm``
    the same SVI from ``em_gmm``'s start (identical code and start as the EM row);

and scores the true parameters as the ``oracle`` row. :func:`write_report` writes the paper's
tables and figures:

- Table 1 (``table1_bic.csv``): G(1) chosen by BIC over ``bic_candidates`` per run, for the DGMM
  (G(2), G(3) fixed at the truth) and for a full-covariance GMM (the stand-in for mclust,
  Scrucca et al. 2016). Left out, with Figure 2, when ``bic_runs=0``.
- Figure 2 (``fig2_layer1_ari.png``): ARI of the first layer (DGMM) and of the GMM at the
  BIC-chosen size.
- Figure 3 (``fig3_path_ari.png``): boxplots of the global (path) ARI per method, oracle line.
- Figure 4 (``fig4_bic_trace.png``): BIC over the EM iterations of one run; the SVI loss beside.
- Figure 5 (``fig5_mutual_ari.png``) and ``mutual_ari_em.csv``: mutual ARI of the EM runs'
  partitions (left out with one run).
- Table 2 (``table2_nonempty.csv``): non-empty global clusters per run.
- Table 3 (``table3_layer_ari.csv``): ARI of each layer per run.
- ``runs.csv`` (one row per fitted run), ``report.md`` (all tables, the oracle row and the
  settings) and ``results.json``.

BIC follows scikit-learn's sign (``-2 log L + p log N``, lower is better; the paper's R code
reports ``-BIC``). The data are standardised feature by feature (the raw scale reaches the
thousands), and the true parameters are mapped by the same affine change
(``make_dgmm(standardize=True)``), so the oracle is scored on the data that are fitted.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ppl_mixtures import metrics
from ppl_mixtures._progress import progress_bar
from ppl_mixtures.datasets import make_dgmm

__all__ = [
    "ExperimentConfig",
    "ExperimentResult",
    "RunRecord",
    "mutual_ari",
    "run_experiment",
    "write_report",
]

#: The fitted methods, in report order.
METHODS = ("em", "em_annealed", "em_realigned", "em_gmm", "svi", "svi_gmm")
#: Methods fitted ``svi_runs`` times (the others ``runs`` times).
SVI_METHODS = ("svi", "svi_gmm")


@dataclass
class ExperimentConfig:
    """Settings of the experiment. The defaults finished in 402 s on 2 CPU cores (measured
    before the ``em_gmm`` and ``svi_gmm`` rows and Table 1 by ``em_gmm`` were added, which
    make it several times longer).

    Attributes
    ----------
    n_samples, n_features, n_components, n_factors
        The simulated DGMM (Selosse et al. 2020, section 3.1: 4000, 17, (3, 3, 2), (11, 6, 2)).
    runs : int
        Random starts of ``em`` and ``em_annealed`` (Figures 3 and 5, Tables 2 and 3; the
        paper uses 20, and 100 for Figure 5); at least 1, and 2 for the mutual ARI of
        Figure 5 (left out with one run).
    svi_runs : int
        Random starts of ``svi`` and ``svi_gmm`` (each step costs several EM iterations).
    bic_runs : int
        Runs per candidate G(1) for Table 1 (the paper uses 20); 0 skips Table 1 and
        Figure 2.
    bic_candidates : tuple of int
        Candidate G(1) (and GMM sizes) for Table 1.
    bic_method : str
        The DGMM fit of Table 1: ``"em_gmm"`` (the default estimator) or ``"em"`` (the
        paper's plain EM).
    em_max_iter, em_tol, svi_max_iter, svi_lr
        Budgets of each fit (``em_gmm``, the default estimator, keeps its own ``max_iter``
        and ``tol``: its iterations are blocks of SQUAREM cycles).
    anneal_start, anneal_iter
        Deterministic annealing of ``em_annealed``.
    init : str
        Start of every fit (``DeepGaussianMixture(init_params=...)``).
    seed : int
        Seed of the simulated data; run r of every method uses ``random_state = seed + r``.
    device : str
    progress : bool
    """

    n_samples: int = 4000
    n_features: int = 17
    n_components: tuple[int, ...] = (3, 3, 2)
    n_factors: tuple[int, ...] = (11, 6, 2)
    runs: int = 5
    svi_runs: int = 2
    bic_runs: int = 2
    bic_candidates: tuple[int, ...] = (2, 3, 4, 5, 6)
    bic_method: str = "em_gmm"
    em_max_iter: int = 200
    em_tol: float = 1e-5
    svi_max_iter: int = 500
    svi_lr: float = 0.02
    anneal_start: float = 5.0
    anneal_iter: int = 150
    init: str = "kmeans"
    seed: int = 0
    device: str = "cpu"
    progress: bool = True

    @classmethod
    def quick(cls, **overrides: Any) -> ExperimentConfig:
        """A small setting for tests and smoke runs (seconds, not minutes)."""
        settings: dict[str, Any] = dict(
            n_samples=300, n_features=9, n_components=(2, 2), n_factors=(4, 2), runs=2,
            svi_runs=1, bic_runs=1, bic_candidates=(1, 2, 3), em_max_iter=15, svi_max_iter=15,
            anneal_iter=5,
        )
        settings.update(overrides)
        return cls(**settings)

    def check(self) -> None:
        """Raise ``ValueError`` naming the first bad setting."""
        for name in ("n_samples", "n_features", "runs", "em_max_iter", "svi_max_iter"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be an integer >= 1")
        for name, skips in (("svi_runs", "SVI"), ("bic_runs", "Table 1")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}={value!r} must be an integer >= 0 (0 skips {skips})")
        if self.bic_method not in ("em", "em_gmm"):
            raise ValueError(f"bic_method={self.bic_method!r} must be 'em_gmm' or 'em'")
        if not self.bic_candidates or any(int(g) < 1 for g in self.bic_candidates):
            raise ValueError(
                f"bic_candidates={self.bic_candidates!r} must be a non-empty list of "
                "positive integers"
            )


@dataclass
class RunRecord:
    """One fitted run (or the oracle) scored against the simulated truth.

    Attributes
    ----------
    method : str
        ``"oracle"`` or one of :data:`METHODS`.
    run : int
    random_state : int or None
    log_likelihood : float
        Mean log-likelihood per sample.
    bic : float
    path_ari : float
        ARI of the predicted path (global cluster) against the true path.
    layer_ari : list of float
        ARI of each layer's label, ``s_1 .. s_h``.
    nonempty_paths : list of int
        Paths (1-based, as in the paper's Table 2) that receive at least one sample.
    seconds : float
    n_iter : int
    converged : bool
    history : list of float
        EM: mean log-likelihood per iteration; SVI: loss per sample per step.
    """

    method: str
    run: int
    random_state: int | None
    log_likelihood: float
    bic: float
    path_ari: float
    layer_ari: list[float]
    nonempty_paths: list[int]
    seconds: float = 0.0
    n_iter: int = 0
    converged: bool = True
    history: list[float] = field(default_factory=list, repr=False)

    @property
    def n_nonempty(self) -> int:
        return len(self.nonempty_paths)


@dataclass
class ExperimentResult:
    """Everything :func:`run_experiment` measured.

    Attributes
    ----------
    config : ExperimentConfig
    oracle : RunRecord
    records : list of RunRecord
        Every fitted run of :data:`METHODS`.
    predictions : dict of str to ndarray, shape (runs, n_samples)
        Predicted paths of each method's runs (for the mutual ARI).
    bic_table : list of dict
        Table 1, one row per run: ``{"run", "dgmm_g1", "gmm_g", "dgmm_layer1_ari", "gmm_ari",
        "dgmm_bic": {G: BIC}, "gmm_bic": {G: BIC}}``.
    seconds : float
    """

    config: ExperimentConfig
    oracle: RunRecord
    records: list[RunRecord]
    predictions: dict[str, np.ndarray]
    bic_table: list[dict[str, Any]]
    n_parameters: int
    seconds: float = 0.0

    def by_method(self, method: str) -> list[RunRecord]:
        return [record for record in self.records if record.method == method]

    def summary(self) -> list[dict[str, Any]]:
        """One row per method (oracle first): best/mean/sd of path ARI, log-likelihood (and
        its gap to the oracle's), per-layer ARIs, non-empty paths, seconds."""
        rows = [_summarise("oracle", [self.oracle])]
        rows += [_summarise(m, self.by_method(m)) for m in METHODS if self.by_method(m)]
        for row in rows:
            row["log_likelihood_gap"] = self.oracle.log_likelihood - row["log_likelihood_best"]
        return rows


def _summarise(method: str, records: Sequence[RunRecord]) -> dict[str, Any]:
    aris = np.array([r.path_ari for r in records])
    lls = np.array([r.log_likelihood for r in records])
    layer = np.array([r.layer_ari for r in records])
    best = int(np.argmax(lls))
    return {
        "method": method,
        "runs": len(records),
        "path_ari_best": float(aris.max()),
        "path_ari_mean": float(aris.mean()),
        "path_ari_sd": float(aris.std()),
        "path_ari_at_best_loglik": float(aris[best]),
        "log_likelihood_best": float(lls.max()),
        "log_likelihood_mean": float(lls.mean()),
        "layer_ari_mean": [float(v) for v in layer.mean(0)],
        "layer1_ari_1_runs": int((layer[:, 0] > 0.999).sum()),
        "nonempty_mean": float(np.mean([r.n_nonempty for r in records])),
        "seconds_mean": float(np.mean([r.seconds for r in records])),
    }


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------


def _score(method: str, run: int, random_state: int | None, log_joint: torch.Tensor,
           n_params: int, truth: dict[str, np.ndarray], n_components: Sequence[int],
           **extra: Any) -> tuple[RunRecord, np.ndarray]:
    """Score a (N, P) table of ``log p(x_n, path)`` against the true labels."""
    from ppl_mixtures.models.dgmm import layer_labels

    log_lik = torch.logsumexp(log_joint, -1)
    paths = log_joint.argmax(-1)
    layers = layer_labels(paths.cpu(), n_components).numpy()
    paths_np = paths.cpu().numpy()
    n_samples = log_joint.shape[0]
    record = RunRecord(
        method=method, run=run, random_state=random_state,
        log_likelihood=float(log_lik.mean()),
        bic=metrics.bic(float(log_lik.sum()), n_params, n_samples),
        path_ari=float(metrics.adjusted_rand_score(truth["paths"], paths_np)),
        layer_ari=[float(metrics.adjusted_rand_score(truth["layers"][:, k], layers[:, k]))
                   for k in range(layers.shape[1])],
        nonempty_paths=[int(p) + 1 for p in np.unique(paths_np)],
        **extra,
    )
    return record, paths_np


def _oracle(x: torch.Tensor, truth: dict[str, Any], config: ExperimentConfig,
            n_params: int) -> RunRecord:
    from ppl_mixtures.models import dgmm

    params = dgmm.DGMMParams.from_numpy(truth["params"], dtype=x.dtype, device=x.device)
    with torch.no_grad():
        record, _ = _score("oracle", 0, None, dgmm.log_joint(x, params), n_params, truth,
                           config.n_components)
    return record


def _estimator(config: ExperimentConfig, method: str, random_state: int,
               n_components: Sequence[int] | None = None) -> Any:
    from ppl_mixtures.estimators import DeepGaussianMixture

    common: dict[str, Any] = dict(
        n_factors=config.n_factors, init_params=config.init, random_state=random_state,
        device=config.device, progress=False,
    )
    sizes = tuple(n_components or config.n_components)
    start = "gmm" if method in ("em_gmm", "svi_gmm") else "layerwise"
    if method in SVI_METHODS:
        return DeepGaussianMixture(sizes, inference="svi", max_iter=config.svi_max_iter,
                                   lr=config.svi_lr, start=start, **common)
    anneal = config.anneal_start if method in ("em_annealed", "em_realigned") else 1.0
    # em_gmm is the default estimator: its accelerated loop keeps its own max_iter and tol
    # (iterations of 10 SQUAREM cycles); the paper's plain EM gets the experiment's budget
    default = method == "em_gmm"
    return DeepGaussianMixture(sizes, inference="em",
                               max_iter=None if default else config.em_max_iter,
                               tol=None if default else config.em_tol, anneal_start=anneal,
                               anneal_iter=config.anneal_iter, start=start,
                               realign=method == "em_realigned", **common)


def _fit_run(X: np.ndarray, x: torch.Tensor, truth: dict[str, Any], config: ExperimentConfig,
             method: str, run: int) -> tuple[RunRecord, np.ndarray]:
    random_state = config.seed + run
    start = time.perf_counter()
    est = _estimator(config, method, random_state).fit(X)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        joint = est._log_joint(est._fitted_x(X))
    return _score(method, run, random_state, joint, est._n_parameters(), truth,
                  config.n_components, seconds=seconds, n_iter=int(est.n_iter_),
                  converged=bool(est.converged_), history=[float(v) for v in est.history_])


def _bic_table(X: np.ndarray, truth: dict[str, Any], config: ExperimentConfig,
               tick: Callable[[], None]) -> list[dict[str, Any]]:
    """Table 1 and Figure 2: G(1) by BIC for the DGMM and the GMM, per run."""
    from ppl_mixtures.estimators import GaussianMixture

    rows = []
    layer1 = truth["layers"][:, 0]
    for run in range(config.bic_runs):
        random_state = config.seed + run
        dgmm_fits, gmm_fits = {}, {}
        for size in config.bic_candidates:
            sizes = (int(size), *config.n_components[1:])
            est = _estimator(config, config.bic_method, random_state, sizes).fit(X)
            dgmm_fits[int(size)] = (est.bic(X), est.predict_layers(X)[:, 0])
            tick()
            gmm = GaussianMixture(int(size), covariance_type="full", max_iter=config.em_max_iter,
                                  random_state=random_state, device=config.device,
                                  progress=False).fit(X)
            gmm_fits[int(size)] = (gmm.bic(X), gmm.predict(X))
            tick()
        best_dgmm = min(dgmm_fits, key=lambda g: dgmm_fits[g][0])
        best_gmm = min(gmm_fits, key=lambda g: gmm_fits[g][0])
        rows.append({
            "run": run,
            "dgmm_g1": best_dgmm,
            "gmm_g": best_gmm,
            "dgmm_layer1_ari": float(metrics.adjusted_rand_score(layer1, dgmm_fits[best_dgmm][1])),
            "gmm_ari": float(metrics.adjusted_rand_score(layer1, gmm_fits[best_gmm][1])),
            "dgmm_bic": {g: float(v[0]) for g, v in dgmm_fits.items()},
            "gmm_bic": {g: float(v[0]) for g, v in gmm_fits.items()},
        })
    return rows


def mutual_ari(predictions: np.ndarray) -> np.ndarray:
    """ARI of every pair of partitions (Figure 5 of Selosse et al. 2020).

    Parameters
    ----------
    predictions : array-like of int, shape (n_runs, n_samples)

    Returns
    -------
    ndarray, shape (n_runs, n_runs)
        Symmetric, ones on the diagonal.
    """
    predictions = np.asarray(predictions)
    n_runs = predictions.shape[0]
    matrix = np.eye(n_runs)
    for i in range(n_runs):
        for j in range(i + 1, n_runs):
            matrix[i, j] = matrix[j, i] = metrics.adjusted_rand_score(predictions[i],
                                                                      predictions[j])
    return matrix


def run_experiment(config: ExperimentConfig | None = None) -> ExperimentResult:
    """Simulate the section 3.1 data and run every method and Table 1 on it.

    Parameters
    ----------
    config : ExperimentConfig, optional
        Defaults to ``ExperimentConfig()``.

    Returns
    -------
    ExperimentResult
    """
    from ppl_mixtures.estimators.deep_gaussian import n_parameters

    config = config or ExperimentConfig()
    config.check()
    start = time.perf_counter()
    X, layers, paths, params = make_dgmm(
        config.n_samples, config.n_features, config.n_components, config.n_factors,
        random_state=config.seed, standardize=True,
    )
    truth = {"layers": layers, "paths": paths, "params": params}
    x = torch.as_tensor(X, dtype=torch.float64)
    n_params = n_parameters(config.n_features, config.n_components, config.n_factors)
    oracle = _oracle(x, truth, config, n_params)
    plan = [(m, r) for m in METHODS
            for r in range(config.svi_runs if m in SVI_METHODS else config.runs)]
    total = len(plan) + 2 * config.bic_runs * len(config.bic_candidates)
    records: list[RunRecord] = []
    predictions: dict[str, list[np.ndarray]] = {m: [] for m in METHODS}
    with progress_bar(total=total, desc="bumpy journey", enabled=config.progress) as bar:
        for method, run in plan:
            bar.set_postfix_str(f"{method} run {run}")
            record, predicted = _fit_run(X, x, truth, config, method, run)
            records.append(record)
            predictions[method].append(predicted)
            bar.update()
        bar.set_postfix_str("Table 1")
        bic_rows = _bic_table(X, truth, config, lambda: bar.update())
    return ExperimentResult(
        config=config, oracle=oracle, records=records,
        predictions={m: np.stack(p) for m, p in predictions.items() if p},
        bic_table=bic_rows, n_parameters=n_params, seconds=time.perf_counter() - start,
    )


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    import csv

    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def _run_rows(result: ExperimentResult) -> tuple[list[str], list[list[Any]]]:
    h = len(result.config.n_components)
    header = ["method", "run", "random_state", "log_likelihood", "bic", "path_ari",
              *[f"layer{k + 1}_ari" for k in range(h)], "nonempty", "n_iter", "converged",
              "seconds"]
    rows = [[r.method, r.run, r.random_state, r.log_likelihood, r.bic, r.path_ari,
             *r.layer_ari, r.n_nonempty, r.n_iter, r.converged, r.seconds]
            for r in [result.oracle, *result.records]]
    return header, rows


def _figures(result: ExperimentResult, out: Path) -> list[str]:
    from ppl_mixtures.plotting import _pyplot

    plt = _pyplot()
    written = []

    def save(fig: Any, name: str) -> None:
        fig.savefig(out / name, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(name)

    if result.bic_table:
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.boxplot([[row["dgmm_layer1_ari"] for row in result.bic_table],
                    [row["gmm_ari"] for row in result.bic_table]])
        ax.set_xticks([1, 2], ["DGMM layer 1", "GMM (full)"])
        ax.set_ylabel("ARI against the true first-layer labels")
        ax.set_title("Figure 2: first layer at the BIC-chosen size")
        save(fig, "fig2_layer1_ari.png")

    methods = [m for m in METHODS if result.by_method(m)]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.boxplot([[r.path_ari for r in result.by_method(m)] for m in methods])
    ax.set_xticks(range(1, len(methods) + 1), methods)
    ax.axhline(result.oracle.path_ari, color="k", ls="--", label="true parameters")
    ax.set_ylabel("ARI of the global (path) partition")
    ax.set_ylim(-0.05, 1.05)
    ax.legend(loc="lower right")
    ax.set_title("Figure 3: global partition over random starts")
    save(fig, "fig3_path_ari.png")

    n_samples, n_params = result.config.n_samples, result.n_parameters
    em_run = result.by_method("em")[0]
    bic_trace = [metrics.bic(ll * n_samples, n_params, n_samples) for ll in em_run.history]
    svi = result.by_method("svi")
    fig, axes = plt.subplots(1, 2 if svi else 1, figsize=(10 if svi else 5, 4), squeeze=False)
    axes[0, 0].plot(range(1, len(bic_trace) + 1), bic_trace)
    axes[0, 0].axhline(result.oracle.bic, color="k", ls="--", label="true parameters")
    axes[0, 0].set_xlabel("EM iteration")
    axes[0, 0].set_ylabel("BIC (lower is better)")
    axes[0, 0].legend()
    axes[0, 0].set_title("Figure 4: BIC over EM iterations (run 0)")
    if svi:
        axes[0, 1].plot(range(1, len(svi[0].history) + 1), svi[0].history)
        axes[0, 1].axhline(-result.oracle.log_likelihood, color="k", ls="--",
                           label="true parameters (-log-lik.)")
        axes[0, 1].set_xlabel("SVI step")
        axes[0, 1].set_ylabel("loss per sample (negative ELBO / N)")
        axes[0, 1].legend()
        axes[0, 1].set_title("SVI (run 0)")
    save(fig, "fig4_bic_trace.png")

    if len(result.predictions["em"]) >= 2:
        matrix = mutual_ari(result.predictions["em"])
        fig, ax = plt.subplots(figsize=(5, 4))
        image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
        fig.colorbar(image, ax=ax, label="ARI")
        ax.set_xlabel("EM run")
        ax.set_ylabel("EM run")
        ax.set_title("Figure 5: mutual ARI of the EM runs")
        save(fig, "fig5_mutual_ari.png")
    return written


def write_report(result: ExperimentResult, out: str | Path) -> Path:
    """Write ``report.md``, the CSV tables, ``results.json`` and the PNG figures into ``out``.

    Returns
    -------
    Path
        The path of ``report.md``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = result.config
    header, rows = _run_rows(result)
    _write_csv(out / "runs.csv", header, rows)
    h = len(config.n_components)
    n_paths = int(np.prod(config.n_components))
    table1_header = ["run", "dgmm_g1", "gmm_g", "dgmm_layer1_ari", "gmm_ari"]
    table1 = [[row[k] for k in table1_header] for row in result.bic_table]
    if table1:
        _write_csv(out / "table1_bic.csv", table1_header, table1)
    table2 = [[r.method, r.run, r.n_nonempty, " ".join(map(str, r.nonempty_paths))]
              for r in result.records]
    _write_csv(out / "table2_nonempty.csv", ["method", "run", "nonempty", "paths"], table2)
    table3_header = ["method", "run", *[f"layer{k + 1}_ari" for k in range(h)], "path_ari"]
    table3 = [[r.method, r.run, *r.layer_ari, r.path_ari] for r in result.records]
    _write_csv(out / "table3_layer_ari.csv", table3_header, table3)
    matrix = mutual_ari(result.predictions["em"])
    if len(matrix) >= 2:
        np.savetxt(out / "mutual_ari_em.csv", matrix, delimiter=",", fmt="%.4f")
    figures = _figures(result, out)
    summary = result.summary()
    (out / "results.json").write_text(json.dumps({
        "config": dataclasses.asdict(config),
        "summary": summary,
        "runs": [dataclasses.asdict(r) | {"history": None} for r in [result.oracle,
                                                                       *result.records]],
        "table1": result.bic_table,
        "seconds": result.seconds,
    }, indent=2, default=str) + "\n")

    off_diagonal = matrix[~np.eye(len(matrix), dtype=bool)]
    if off_diagonal.size:
        mutual = (
            f"Mutual ARI of the EM runs (Figure 5): off-diagonal min {off_diagonal.min():.3f}, "
            f"mean {off_diagonal.mean():.3f}, max {off_diagonal.max():.3f}; "
            f"{int((off_diagonal > 0.999).sum() // 2)} pairs of runs end in the same "
            "partition."
        )
    else:
        mutual = "Mutual ARI of the EM runs (Figure 5): left out, it needs two EM runs (--runs 2)."
    table1_text = (
        _markdown_table(["run", "DGMM G(1)", "GMM G", "DGMM layer-1 ARI", "GMM ARI"], table1)
        if table1 else "Skipped (bic_runs=0, --bic-runs 0 on the command line)."
    )
    summary_rows = [[s["method"], s["runs"], s["path_ari_best"], s["path_ari_mean"],
                     s["path_ari_sd"], s["path_ari_at_best_loglik"], s["log_likelihood_best"],
                     s["log_likelihood_gap"], s["log_likelihood_mean"],
                     " / ".join(f"{v:.2f}" for v in s["layer_ari_mean"]),
                     s["layer1_ari_1_runs"], s["nonempty_mean"], s["seconds_mean"]]
                    for s in summary]
    text = [
        "# The bumpy journey: EM and SVI on the DGMM of Selosse et al. (2020), section 3.1",
        "",
        f"Data: `make_dgmm(n_samples={config.n_samples}, n_features={config.n_features}, "
        f"n_components={config.n_components}, n_factors={config.n_factors}, "
        f"random_state={config.seed}, standardize=True)`: {n_paths} paths, features centred "
        "and scaled to unit variance (true parameters mapped by the same change). "
        f"Run r uses random_state={config.seed}+r. BIC = -2 log L + p log N with "
        f"p = {result.n_parameters} (lower is better). Total time {result.seconds:.0f} s.",
        "",
        "## Summary (oracle = the true parameters)",
        "",
        _markdown_table(["method", "runs", "path ARI best", "mean", "sd", "at best log-lik",
                         "log-lik best", "oracle - best", "log-lik mean",
                         "layer ARIs (mean)", "layer-1 ARI = 1 (runs)",
                         "non-empty paths (mean)", "seconds/run"], summary_rows),
        "",
        mutual,
        "",
        "## Table 1: G(1) chosen by BIC "
        f"(candidates {list(config.bic_candidates)}, G(2..h) fixed at the truth, DGMM fitted "
        f"by {config.bic_method})",
        "",
        table1_text,
        "",
        "## Table 2: non-empty global clusters per run",
        "",
        _markdown_table(["method", "run", "non-empty", "paths"], table2),
        "",
        "## Table 3: ARI per layer per run",
        "",
        _markdown_table(table3_header, [[result.oracle.method, 0, *result.oracle.layer_ari,
                                         result.oracle.path_ari], *table3]),
        "",
        "## Figures",
        "",
        *[f"![{name}]({name})" for name in figures],
        "",
    ]
    report = out / "report.md"
    report.write_text("\n".join(text))
    return report
