"""GMVAE on scikit-learn's 8x8 digits, laid out as the MNIST table of Dilokthanakul et al. (2016).

Rows K = 10, 16, 30 and columns M = 1, 10 (Monte Carlo particles); every cell gives the best and
the mean cluster accuracy over the seeds, by Hungarian matching (``cluster_accuracy``, one
cluster per class, so K > 10 is penalised) and by the paper's protocol (each cluster takes its
majority label, ``majority_cluster_accuracy``). k-means and a full-covariance GMM fitted by EM
give the reference rows. Every run is also appended as one JSON line to ``--jsonl``.

Usage::

    python bench/gmvae_digits.py [--quick] [--seeds 0 1 2] [--epochs N] [--jsonl PATH]
                                 [--settings tuned|defaults|defaults-no-start|...]
                                 [--ks 10 16 30] [--ms 1 10] [--sample-grids DIR]

``--settings defaults`` runs ``GMVAE(K)`` with the estimator's defaults (autoencoder
pre-training and the GMM start); ``defaults-no-start`` the same with ``init="random"`` (the
estimator before them); ``defaults-factor-0.3`` and ``defaults-factor-1`` the defaults
with another slope of the factor-analyser start (``init_factor_scale``, default 0.01);
``defaults-predict-mean`` predicts at q(w | y)'s mean instead of integrating w out;
``defaults-freeze-prior`` keeps the prior network at its start; ``defaults-equal-weights``
starts from an equal-weight GMM (30 restarts), with ``-freeze`` the prior network frozen too
(``-90-freeze``: 90 restarts); ``defaults-w-encoder`` starts q(w | y) at the factor posterior;
``defaults-likelihood-pick`` keeps the most likely restart of the start instead of the most
balanced one (the defaults before the fourth round); ``defaults-factor-ml`` carries the start
over as maximum-likelihood factor analysers; ``defaults-unrotated-pca`` starts in the
pre-trained latent axes with principal-axes factor analysers (the defaults before the fifth
round), ``defaults-unrotated`` and ``defaults-rotated-pca`` change one of the two;
``tuned`` (the default) the settings below. ``--sample-grids DIR`` saves, for every GMVAE
fit, decoded samples of each component as one row of images (``DIR/gmvae_samples_K*_M*_seed*.png``).

``--quick`` keeps K = 10 only, M = 1 only, and 20 epochs (about 10 s per seed on one CPU
core); the full table takes 100 epochs, about 0.45 s per epoch at M = 1 and 2.5 s at M = 10.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from ppl_mixtures import GaussianMixture
from ppl_mixtures.datasets import load_digits
from ppl_mixtures.estimators.gmvae import GMVAE
from ppl_mixtures.metrics import cluster_accuracy, majority_cluster_accuracy

#: Settings found on digits (sweep of 2026-11-23): the "digits_mlp" preset, i.e. the
#: "mnist_mlp" widths (500 hidden units) with small latents (Dx=200, Dw=150 put every image in
#: one cluster, with or without free bits), a Gaussian likelihood with fixed variance, and
#: free bits lambda = 1 nat.
GMVAE_SETTINGS = {
    "preset": "digits_mlp",
    "likelihood": "gaussian",
    "observation_variance": 0.05,
    "z_inference": "closed_form",
    "free_bits": 1.0,
    "batch_size": 128,
    "lr": 1e-3,
    "init": "random",
}
#: The rows of ``--settings``.
SETTINGS = {
    "tuned": GMVAE_SETTINGS,
    "defaults": {},
    "defaults-no-start": {"init": "random"},
    # other slopes of the factor-analyser start (ablation rows of bench/RESULTS.md)
    "defaults-factor-0.3": {"init_factor_scale": 0.3},
    "defaults-factor-1": {"init_factor_scale": 1.0},
    # issue 17, third round: each lever on its own (ablation of bench/RESULTS.md)
    "defaults-predict-mean": {"predict_w": "mean"},
    "defaults-freeze-prior": {"freeze_prior": True},
    "defaults-equal-weights": {"init_equal_weights": True, "init_restarts": 30},
    "defaults-equal-weights-freeze": {"init_equal_weights": True, "init_restarts": 30,
                                      "freeze_prior": True},
    "defaults-equal-weights-90-freeze": {"init_equal_weights": True, "init_restarts": 90,
                                         "freeze_prior": True},
    "defaults-w-encoder": {"init_w_encoder": True},
    # issue 17, fourth round: the start's restart picked by likelihood (the previous default)
    # instead of cluster balance, and the maximum-likelihood factor analysers
    "defaults-likelihood-pick": {"init_select": "likelihood"},
    "defaults-factor-ml": {"init_factor_fit": "ml"},
    # issue 17, fifth round: the start in the latent space's own axes with principal-axes
    # factor analysers (the defaults before it), and each of the two changes on its own
    "defaults-unrotated-pca": {"init_rotate": False, "init_factor_fit": "pca"},
    "defaults-unrotated": {"init_rotate": False},
    "defaults-rotated-pca": {"init_factor_fit": "pca"},
}


def _scores(y: np.ndarray, pred: np.ndarray) -> dict:
    return {
        "acc": float(cluster_accuracy(y, pred)),
        "majority_acc": float(majority_cluster_accuracy(y, pred)),
        "ari": float(adjusted_rand_score(y, pred)),
        "clusters_used": int(len(np.unique(pred))),
    }


def sample_grid(model: GMVAE, y: np.ndarray, pred: np.ndarray, path: str,
                per_row: int = 8) -> None:
    """Save ``per_row`` decoded samples (means of p(y | x)) of every component as one row of
    8x8 images (``plot_centroid_grid``, as ``ppl-mixtures fit gmvae`` draws ``samples.png``),
    rows ordered by each cluster's majority digit (clusters that took no row last)."""
    from ppl_mixtures.plotting import plot_centroid_grid

    majority = {k: int(np.bincount(y[pred == k]).argmax()) if (pred == k).any() else 99
                for k in range(model.n_components)}
    order = sorted(range(model.n_components), key=lambda k: (majority[k], k))
    images = np.concatenate([model.sample(per_row, component=k, observation="mean")[0]
                             for k in order])
    digits = ",".join(str(majority[k]) if majority[k] < 99 else "-" for k in order)
    fig = plot_centroid_grid(images, (model.n_components, per_row), (8, 8),
                             title=f"K={model.n_components}: rows = clusters by majority digit "
                             f"({digits})")
    fig.savefig(path, dpi=80, bbox_inches="tight")


def run_gmvae(X, y, k, m, seed, epochs, settings=GMVAE_SETTINGS, grid_dir=None) -> dict:
    start = time.perf_counter()
    model = GMVAE(k, num_particles=m, max_iter=epochs, random_state=seed, progress=False,
                  **settings).fit(X)
    seconds = time.perf_counter() - start
    pred = model.predict(X)
    if grid_dir:
        sample_grid(model, y, pred, f"{grid_dir}/gmvae_samples_K{k}_M{m}_seed{seed}.png")
    return {"method": "gmvae", "K": k, "M": m, "seed": seed, "epochs": epochs,
            "seconds": seconds, "sec_per_epoch": seconds / epochs, **_scores(y, pred)}


def run_references(X, y, seeds) -> list[dict]:
    rows = []
    for seed in seeds:
        start = time.perf_counter()
        pred = KMeans(10, n_init=10, random_state=seed).fit_predict(X)
        rows.append({"method": "kmeans", "K": 10, "seed": seed,
                     "seconds": time.perf_counter() - start, **_scores(y, pred)})
        start = time.perf_counter()
        gmm = GaussianMixture(10, covariance_type="full", reg_covar=1e-2, n_init=1,
                              random_state=seed).fit(X)
        rows.append({"method": "gmm_em_full", "K": 10, "seed": seed,
                     "seconds": time.perf_counter() - start, **_scores(y, gmm.predict(X))})
    return rows


def _cell(rows: list[dict], key: str) -> str:
    values = np.array([r[key] for r in rows]) * 100
    return f"{values.max():6.2f} / {values.mean():6.2f} ± {values.std():4.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--ks", type=int, nargs="+", default=None, help="rows (default 10 16 30)")
    parser.add_argument("--ms", type=int, nargs="+", default=None, help="columns (default 1 10)")
    parser.add_argument("--no-references", action="store_true", help="skip k-means and GMM")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--jsonl", default=None, help="append every run as a JSON line")
    parser.add_argument("--settings", choices=tuple(SETTINGS), default="tuned")
    parser.add_argument("--sample-grids", default=None, metavar="DIR",
                        help="save every GMVAE's samples per component as DIR/*.png")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ks, ms = ((10,), (1,)) if args.quick else ((10, 16, 30), (1, 10))
    ks, ms = args.ks or ks, args.ms or ms
    epochs = args.epochs or (20 if args.quick else 100)
    X, y = load_digits()

    def record(row: dict) -> dict:
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v
                          for k, v in row.items()}), flush=True)
        if args.jsonl:
            with open(args.jsonl, "a") as handle:
                handle.write(json.dumps(row) + "\n")
        return row

    references = [] if args.no_references else [
        record(r) for r in run_references(X, y, args.seeds)]
    settings = SETTINGS[args.settings]
    if args.sample_grids:
        os.makedirs(args.sample_grids, exist_ok=True)
    cells = {(k, m): [record(run_gmvae(X, y, k, m, s, epochs, settings, args.sample_grids))
                      for s in args.seeds]
             for k in ks for m in ms}

    print(f"\nAccuracy (%) on digits, best / mean ± sd over seeds {args.seeds}, "
          f"{epochs} epochs, settings {args.settings} {settings}")
    print("Hungarian = one cluster per class; majority = the paper's protocol (cluster -> label)")
    print(f"{'method':<22}{'K':>4}  {'Hungarian best / mean':<26}{'majority best / mean':<26}"
          "s/epoch")
    for name in ("kmeans", "gmm_em_full"):
        rows = [r for r in references if r["method"] == name]
        if rows:
            print(f"{name:<22}{10:>4}  {_cell(rows, 'acc'):<26}"
                  f"{_cell(rows, 'majority_acc'):<26}-")
    for (k, m), rows in cells.items():
        spe = np.mean([r["sec_per_epoch"] for r in rows])
        print(f"{f'GMVAE (M = {m})':<22}{k:>4}  {_cell(rows, 'acc'):<26}"
              f"{_cell(rows, 'majority_acc'):<26}{spe:.2f}")


if __name__ == "__main__":
    main()
