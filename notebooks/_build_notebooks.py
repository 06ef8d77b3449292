"""Generate the tutorial notebooks of ``notebooks/`` (outputs cleared).

Run ``python notebooks/_build_notebooks.py`` after editing a cell here; the ``.ipynb`` files
are written next to this script. Each notebook starts with a ``SMOKE`` switch: with the
environment variable ``PPL_MIXTURES_SMOKE=1`` it shrinks data and iterations (tests), and
otherwise uses realistic sizes.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

SETUP = '''import os
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets
SMOKE = os.environ.get("PPL_MIXTURES_SMOKE") == "1"  # tiny sizes for the test suite
'''


def md(text: str):
    return new_markdown_cell(text.strip("\n"))


def code(text: str):
    return new_code_cell(text.strip("\n"))


# ---------------------------------------------------------------------------------------------
# 01: defining priors
# ---------------------------------------------------------------------------------------------

NB01 = [
    md("""
# Defining your own priors

Every model of `ppl_mixtures` is a Pyro program whose global sites (weights, means,
variances, ...) have **replaceable priors**. In this notebook we

1. look at the default priors of the Gaussian mixture (`default_gmm_priors`): site names
   and shapes;
2. write a new prior: a **sparse Dirichlet** on the weights (concentration much smaller than
   1), which lets a deliberately over-sized mixture switch off the components it does not
   need, and a heavy-tailed Student-t prior on the means;
3. pass it with `GaussianMixture(..., priors={...})` and fit by SVI (MAP and mean-field
   guides) and by NUTS, and count the components that keep a weight above 1%;
4. do the same for the deep Gaussian mixture, `DeepGaussianMixture(priors=...)`.

Set the environment variable `PPL_MIXTURES_SMOKE=1` to run everything on tiny sizes
(this is what the test suite does).
"""),
    code(SETUP),
    code('''
import matplotlib.pyplot as plt
import numpy as np
import pyro.distributions as dist
import torch

from ppl_mixtures import DeepGaussianMixture, GaussianMixture
from ppl_mixtures.datasets import make_dgmm, make_gmm
from ppl_mixtures.models.priors import GMM_GLOBAL_SITES, default_gmm_priors

N_SAMPLES = 100 if SMOKE else 400
K = 5 if SMOKE else 8            # deliberately more components than the 3 true ones
SVI_STEPS = 300 if SMOKE else 1500
NUTS_WARMUP, NUTS_DRAWS = (15, 15) if SMOKE else (100, 100)
N_NUTS, K_NUTS = (50, 4) if SMOKE else (150, 5)   # NUTS: fewer rows and components
print(f"SMOKE={SMOKE}: N={N_SAMPLES}, K={K}, SVI steps={SVI_STEPS}, NUTS {NUTS_WARMUP}+{NUTS_DRAWS}")
'''),
    md("""
## Data: three Gaussian clusters

`make_gmm` draws a mixture with known labels. We will fit it with `K` components, more than
the three that generated it, and see which priors prune the extra ones.
"""),
    code('''
X, y = make_gmm(N_SAMPLES, n_components=3, n_features=2, covariance_type="spherical",
                separation=4.0, random_state=0)
fig, ax = plt.subplots(figsize=(4, 4))
ax.scatter(X[:, 0], X[:, 1], c=y, s=10, cmap="viridis")
ax.set_title("training data (true clusters)")
plt.show()
'''),
    md("""
## The default priors: site names and shapes

`default_gmm_priors(x, K, covariance_type)` returns one distribution per global site.
Except for `weights` (a Dirichlet over all K weights at once), each prior is for **one
component**: the model expands it over the `"components"` plate. A scalar distribution
(`batch_shape == ()`, `event_shape == ()`) is broadcast over the site's event shape, so
`dist.Normal(0., 5.)` is a valid prior for means of any dimension.
"""),
    code('''
x = torch.as_tensor(X)  # float64, as the estimator will use
defaults = default_gmm_priors(x, K, "spherical")
print("global sites of the GMM:", GMM_GLOBAL_SITES)
for name, prior in defaults.items():
    print(f"{name:>12}: {type(prior).__name__:<15} batch_shape={tuple(prior.batch_shape)} "
          f"event_shape={tuple(prior.event_shape)}")
print("default weight concentration:", defaults["weights"].concentration.tolist())
'''),
    md("""
## A new prior

* **Weights**: `Dirichlet(alpha * 1_K)` with `alpha = 0.05`. With `alpha < 1` the density
  piles up at the corners of the simplex: it prefers a few large weights and many tiny ones,
  so superfluous components are driven to (almost) zero weight instead of splitting a
  cluster in two.
* **Means**: a Student-t with 3 degrees of freedom, centred on the data mean: heavy tails
  allow clusters far away, while most of the mass stays near the data.

The priors must live on the dtype (and device) of the fitted data: the estimators fit
float64 arrays in float64, so we build the tensors in float64 (and fit on the CPU).
Only the sites you pass are replaced; the variances keep their default prior.
"""),
    code('''
def sparse_priors(x, n_components, alpha=0.05):
    """Sparse Dirichlet on the weights and a Student-t on every mean coordinate."""
    opts = dict(dtype=x.dtype, device=x.device)
    return {
        "weights": dist.Dirichlet(torch.full((n_components,), alpha, **opts)),
        # one component's mean: shape (D,) via to_event(1)
        "means": dist.StudentT(torch.tensor(3.0, **opts), x.mean(0),
                               2.0 * x.std(0)).to_event(1),
    }


priors = sparse_priors(x, K)
{name: (type(p).__name__, tuple(p.event_shape)) for name, p in priors.items()}
'''),
    md("""
## SVI: MAP and mean-field guides, default vs sparse prior

`guide="map"` fits point masses (MAP); `guide="mean_field"` fits independent Normals in
the unconstrained space of each site. For each guide we fit once with the default
(flat, `alpha = 1`) Dirichlet and once with the sparse one, from the same k-means start.
"""),
    code('''
def n_active(weights, threshold=0.01):
    return int((np.asarray(weights) > threshold).sum())


fits = {}
for guide in ("map", "mean_field"):
    for label, prior in (("default", None), ("sparse", priors)):
        est = GaussianMixture(K, covariance_type="spherical", inference="svi", guide=guide,
                              priors=prior, max_iter=SVI_STEPS, tol=0.0, lr=0.05, random_state=0,
                              device="cpu", progress=False).fit(X)
        fits[guide, label] = est
        print(f"{guide:>10} / {label:<7}: {n_active(est.weights_)} components > 1%, "
              f"sorted weights {np.round(np.sort(est.weights_)[::-1], 3)}")
'''),
    md("""
The bar chart shows the sorted weights of each fit. With the sparse Dirichlet the tail of
small weights is pushed towards zero (how far depends on the number of steps: the full run
goes further than the smoke run).
"""),
    code('''
fig, ax = plt.subplots(figsize=(6, 3))
width = 0.2
for i, ((guide, label), est) in enumerate(fits.items()):
    ax.bar(np.arange(K) + i * width, np.sort(est.weights_)[::-1], width,
           label=f"{guide}, {label}")
ax.axhline(0.01, color="k", lw=0.8, ls="--")
ax.set_xlabel("component (sorted by weight)")
ax.set_ylabel("weight")
ax.set_yscale("log")
ax.legend(fontsize=8)
plt.show()
'''),
    md("""
## NUTS on small data

`inference="nuts"` runs NUTS over the global sites with the assignments summed out.
`max_iter` is the number of draws per chain. The draws are relabelled to the starting
components and kept in `posterior_samples_`; `weights_` is the posterior mean.
NUTS costs a full-data gradient per leapfrog step, and the sparse Dirichlet makes the
posterior of the small weights hard to explore (long trajectories), so we run it on the
first `N_NUTS` rows with `K_NUTS` components (in full mode this cell takes a few minutes).
"""),
    code('''
X_small = X[:N_NUTS]
nuts = GaussianMixture(K_NUTS, covariance_type="spherical", inference="nuts",
                       priors=sparse_priors(torch.as_tensor(X_small), K_NUTS),
                       max_iter=NUTS_DRAWS, num_warmup=NUTS_WARMUP, random_state=0,
                       device="cpu", progress=False).fit(X_small)
w = nuts.posterior_samples_["weights"]           # (draws, K)
active_per_draw = (w > 0.01).sum(1)
print("posterior mean weights:", np.round(nuts.weights_, 3))
print("draws with 0..K_NUTS components > 1%:", np.bincount(active_per_draw, minlength=K_NUTS + 1))
print("split R-hat of the weights:", np.round(nuts.r_hat_["weights"], 2))
'''),
    code('''
fig, ax = plt.subplots(figsize=(6, 3))
ax.boxplot([w[:, k] for k in range(K_NUTS)])
ax.set_xlabel("component")
ax.set_ylabel("posterior draws of the weight")
ax.set_title("NUTS, sparse Dirichlet prior")
plt.show()
'''),
    md("""
## The same idea for the deep Gaussian mixture

`DeepGaussianMixture` names its sites per layer: `weights1`, `eta1`, `loadings1`,
`noise_variances1`, then `weights2`, ... (see `ppl_mixtures.models.dgmm.default_dgmm_priors`).
Here we give the first layer three components where the data have two, and a sparse
Dirichlet on `weights1`; the priors are used by `inference="svi"` (EM is maximum likelihood
and ignores them).
"""),
    code('''
Xd, layers, paths, truth = make_dgmm(n_samples=200 if SMOKE else 1000, n_features=6,
                                     n_components=(2, 1), n_factors=(3, 1), random_state=0,
                                     standardize=True)
xd = torch.as_tensor(Xd)
dgmm_priors = {"weights1": dist.Dirichlet(torch.full((3,), 0.05, dtype=xd.dtype))}
for label, prior in (("default", None), ("sparse", dgmm_priors)):
    deep = DeepGaussianMixture((3, 1), (3, 1), inference="svi", priors=prior,
                               max_iter=100 if SMOKE else 1500, lr=0.05, random_state=0,
                               device="cpu", progress=False).fit(Xd)
    print(f"{label:<7} layer-1 weights: {np.round(np.sort(deep.layer_weights_[0])[::-1], 3)}")
'''),
    md("""
## Take-aways

* A prior is a dict `{site name: distribution}`; start from the site names and shapes of
  `default_gmm_priors` (or `default_dgmm_priors`, `default_mfa_priors`) and replace what you
  like. One component's prior is enough: the plate does the rest.
* A sparse Dirichlet (`alpha << 1`) lets an over-complete mixture prune itself, under MAP,
  mean-field SVI and NUTS alike; count the components above a small weight to read off
  the effective number of clusters.
"""),
]

# ---------------------------------------------------------------------------------------------
# 02: SVI training
# ---------------------------------------------------------------------------------------------

NB02 = [
    md("""
# Training by SVI: minibatches, checkpoints, devices, and EM on the same model

All estimators of `ppl_mixtures` fit the **same Pyro model** either by EM or by stochastic
variational inference (`inference="svi"`, with `TraceEnum_ELBO`: the discrete assignments are
summed out exactly). This notebook shows the knobs of the SVI trainer as the estimators
expose them:

* `batch_size` (minibatches; the likelihood is rescaled by `N / batch_size`) and `lr` (Adam);
* `checkpoint_path` and `fit(X, resume=True)` to stop and continue a run;
* `device="auto"`: CUDA when available, CPU otherwise;
* `history_` (the loss per sample of every step) and `plot_history`;

and checks that EM and MAP-SVI optimise the same objective: for a MAP guide,
`-elbo_loss(X) == score(X) * N + log p(theta)`, for `GaussianMixture`,
`MixtureOfFactorAnalyzers` and `DeepGaussianMixture`.
"""),
    code(SETUP),
    code('''
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from ppl_mixtures import DeepGaussianMixture, GaussianMixture, MixtureOfFactorAnalyzers
from ppl_mixtures.datasets import load_wine, make_dgmm, make_gmm
from ppl_mixtures.plotting import plot_history

N_SAMPLES = 400 if SMOKE else 5000
STEPS = 60 if SMOKE else 1500
print("CUDA available:", torch.cuda.is_available(), "| SMOKE:", SMOKE)
'''),
    md("""
## Minibatch SVI on a Gaussian mixture

`device="auto"` puts the tensors on the GPU when there is one (`params_` stays there; the
fitted NumPy attributes such as `means_` are on the host). `batch_size=128` draws 128 rows
per step; the loss in `history_` is therefore noisy, and `tol=0` asks for exactly
`max_iter` steps (no early stopping).
"""),
    code('''
X, y = make_gmm(N_SAMPLES, n_components=3, n_features=2, covariance_type="full",
                random_state=0)
svi = GaussianMixture(3, covariance_type="full", inference="svi", batch_size=128, lr=0.05,
                      max_iter=STEPS, tol=0.0, random_state=0, device="auto",
                      progress=False).fit(X)
print("fitted on:", svi.params_.means.device, f"in {svi.fit_seconds_:.1f} s,",
      f"{svi.n_iter_} steps")
print("weights:", np.round(svi.weights_, 3))
fig = plot_history(svi.history_, ylabel="loss per sample", xlabel="step",
                   title="minibatch SVI (batch_size=128)")
plt.show()
'''),
    md("""
## Checkpoints and resuming

With `checkpoint_path`, the trainer writes its state (guide parameters, optimiser state,
random state, history) to disk. A second estimator with the same settings and a larger
`max_iter` continues from the stored step with `fit(X, resume=True)`: `max_iter` counts the
steps **of the whole run**, and `history_` covers both legs. Training in two legs gives the
same result as one uninterrupted run.
"""),
    code('''
tmp = Path(tempfile.mkdtemp())
ckpt = tmp / "gmm_svi.pt"
settings = dict(covariance_type="full", inference="svi", batch_size=128, lr=0.05, tol=0.0,
                random_state=0, device="auto", progress=False, checkpoint_path=str(ckpt))
first = GaussianMixture(3, max_iter=STEPS // 2, **settings).fit(X)
print("after leg 1:", len(first.history_), "steps; checkpoint exists:", ckpt.exists())
resumed = GaussianMixture(3, max_iter=STEPS, **settings).fit(X, resume=True)
print("after leg 2:", len(resumed.history_), "steps")
print("same as one run:", np.allclose(resumed.means_, svi.means_),
      "| same history:", np.allclose(resumed.history_, svi.history_))

fig, ax = plt.subplots(figsize=(6, 3))
plot_history(resumed.history_, ylabel="loss per sample", xlabel="step", ax=ax)
ax.axvline(STEPS // 2, color="k", ls="--", lw=0.8, label="resume")
ax.legend()
plt.show()
'''),
    md("""
## EM and SVI over the same generative code

EM maximises the likelihood; MAP-SVI maximises `log p(x | theta) + log p(theta)`. For any
fitted estimator, `elbo_loss(X)` evaluates `TraceEnum_ELBO` of the fitted model and guide;
with a point-mass guide it is exactly minus the log joint, so we can check the identity

`-elbo_loss(X) == score(X) * N + model_.log_prior(params_)`

for the EM fit (its `guide_` is a MAP guide at the EM estimate) and for the SVI fit. The EM
fit has the higher likelihood, SVI the higher likelihood **plus** log prior (when it has
converged; the priors are weak and data-scaled, so the two are close).
"""),
    code('''
def objectives(est, X, name):
    n = len(X)
    loglik = est.score(X) * n
    log_prior = float(est.model_.log_prior(est.params_))
    elbo = -est.elbo_loss(X)
    assert np.isclose(elbo, loglik + log_prior, rtol=1e-8), (elbo, loglik + log_prior)
    print(f"{name:<28} log-lik {loglik:12.3f} | log prior {log_prior:9.3f} | "
          f"-elbo_loss {elbo:12.3f} (= sum)")


em = GaussianMixture(3, covariance_type="full", inference="em", random_state=0,
                     device="auto", progress=False).fit(X)
full_svi = GaussianMixture(3, covariance_type="full", inference="svi", max_iter=STEPS,
                           random_state=0, device="auto", progress=False).fit(X)
objectives(em, X, "GaussianMixture EM")
objectives(full_svi, X, "GaussianMixture SVI (MAP)")
'''),
    md("""
### Mixture of factor analysers on the wine data

`load_wine()` gives the 13 standardised features of scikit-learn's wine data (178 rows).
A mixture of 3 factor analysers with 2 factors each, by EM and by SVI:
"""),
    code('''
Xw, yw = load_wine()
mfa_em = MixtureOfFactorAnalyzers(3, n_factors=2, inference="em", random_state=0,
                                  device="auto", progress=False).fit(Xw)
mfa_svi = MixtureOfFactorAnalyzers(3, n_factors=2, inference="svi", max_iter=STEPS, lr=0.05,
                                   random_state=0, device="auto", progress=False).fit(Xw)
objectives(mfa_em, Xw, "MFA EM")
objectives(mfa_svi, Xw, "MFA SVI (MAP)")

fig, axes = plt.subplots(1, 2, figsize=(9, 3))
plot_history(mfa_em.history_, ylabel="mean log-likelihood", ax=axes[0], title="MFA, EM")
plot_history(mfa_svi.history_, ylabel="loss per sample", xlabel="step", ax=axes[1],
             title="MFA, SVI")
fig.tight_layout()
plt.show()
'''),
    md("""
### Deep Gaussian mixture

A small simulated DGMM (`make_dgmm`, two layers with 2 components each, 4 then 2 factors,
standardised), fitted by exact EM and by MAP-SVI on the collapsed model (scores
integrated out, layers' labels enumerated). The same identity holds.
"""),
    code('''
Xd, layers, paths, truth = make_dgmm(n_samples=300 if SMOKE else 2000, n_features=9,
                                     n_components=(2, 2), n_factors=(4, 2), random_state=0,
                                     standardize=True)
dg_em = DeepGaussianMixture((2, 2), (4, 2), inference="em", max_iter=20 if SMOKE else 300,
                            random_state=0, device="auto", progress=False).fit(Xd)
dg_svi = DeepGaussianMixture((2, 2), (4, 2), inference="svi", max_iter=40 if SMOKE else 1500,
                             lr=0.02, random_state=0, device="auto", progress=False).fit(Xd)
objectives(dg_em, Xd, "DGMM EM")
objectives(dg_svi, Xd, "DGMM SVI (MAP)")

fig, axes = plt.subplots(1, 2, figsize=(9, 3))
plot_history(dg_em.history_, ylabel="mean log-likelihood", ax=axes[0], title="DGMM, EM")
plot_history(dg_svi.history_, ylabel="loss per sample", xlabel="step", ax=axes[1],
             title="DGMM, SVI")
fig.tight_layout()
plt.show()
'''),
    md("""
## Take-aways

* `batch_size`, `lr`, `max_iter`, `tol`, `checkpoint_path` and `device` are plain estimator
  arguments; `fit(X, resume=True)` continues a checkpointed run up to `max_iter` total steps.
* `history_` is the mean log-likelihood per EM iteration, or the loss per sample per SVI
  step; `plot_history` draws either.
* EM and MAP-SVI optimise objectives that differ only by the log prior, and
  `elbo_loss` lets you check it on any fitted estimator.
"""),
]

# ---------------------------------------------------------------------------------------------
# 03: posterior diagnostics
# ---------------------------------------------------------------------------------------------

NB03 = [
    md("""
# Posterior diagnostics with ArviZ

`ppl_mixtures.diagnostics` turns fitted estimators into ArviZ `InferenceData` and adds the
mixture-specific tools ArviZ lacks:

* `to_inference_data(est, X)`: posterior draws (NUTS chains, or draws of a mean-field guide),
  pointwise marginal log-likelihood (for LOO/WAIC) and posterior predictive data;
* `relabel` / `apply_relabelling`: undo label switching;
* `sample_assignments`: decode clusters with `pyro.infer.infer_discrete`;
* `select_n_components` / `plot_selection`: choose K by BIC, AIC, ICL or PSIS-LOO.

At the end we run a miniature of the deep-GMM "bumpy journey" experiment (EM vs SVI).
"""),
    code(SETUP),
    code('''
import arviz as az
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ppl_mixtures import GaussianMixture
from ppl_mixtures.datasets import make_gmm
from ppl_mixtures.diagnostics import (
    apply_relabelling,
    plot_selection,
    relabel,
    sample_assignments,
    select_n_components,
    to_inference_data,
)
from ppl_mixtures.experiments.bumpy_journey import ExperimentConfig, run_experiment

# small data: ArviZ warns about Pareto k / WAIC variance, Pyro about chains run in sequence
warnings.filterwarnings("ignore", category=UserWarning, module="arviz")
warnings.filterwarnings("ignore", message="num_chains=")
N_SAMPLES = 90 if SMOKE else 300
SVI_STEPS = 150 if SMOKE else 1500
NUTS_WARMUP, NUTS_DRAWS, CHAINS = (15, 20, 2) if SMOKE else (200, 300, 2)
N_DRAWS = 40 if SMOKE else 400    # draws of the mean-field guide
'''),
    md("""
## Two fits of the same mixture: mean-field SVI and NUTS

Three spherical clusters in 2-D. Both fits use the same model and priors; NUTS runs
`CHAINS` chains one after the other (their draws are relabelled to the k-means start).
"""),
    code('''
X, y = make_gmm(N_SAMPLES, n_components=3, n_features=2, covariance_type="spherical",
                separation=4.0, random_state=1)
common = dict(covariance_type="spherical", random_state=0, device="cpu", progress=False)
mf = GaussianMixture(3, inference="svi", guide="mean_field", max_iter=SVI_STEPS,
                     **common).fit(X)
nuts = GaussianMixture(3, inference="nuts", max_iter=NUTS_DRAWS, num_warmup=NUTS_WARMUP,
                       num_chains=CHAINS, **common).fit(X)
idata_mf = to_inference_data(mf, X, num_samples=N_DRAWS, random_state=0)
idata_nuts = to_inference_data(nuts, X, random_state=0)
idata_nuts
'''),
    md("""
## `az.summary`: R-hat and effective sample sizes

For NUTS, `r_hat` close to 1 and large `ess_bulk` mean the chains agree (in the smoke run
the chains are far too short for that). The mean-field draws are independent, one "chain":
their ESS is the number of draws and R-hat is not informative.
"""),
    code('''
summary_nuts = az.summary(idata_nuts, var_names=["weights", "means"], round_to=3)
summary_nuts
'''),
    code('''
az.summary(idata_mf, var_names=["weights"], kind="stats", round_to=3)
'''),
    md("""
NUTS also reports on itself: `sample_stats.diverging` marks the draws whose trajectory
diverged (a sign of a posterior geometry the sampler cannot follow; there should be none),
and the attribute `acceptance_rate` holds each chain's fraction of moves. `az.plot_trace`
draws the divergences as ticks under the traces.
"""),
    code('''
print("divergent draws per chain:", idata_nuts.sample_stats.diverging.values.sum(axis=1))
print("acceptance rate per chain:", np.round(idata_nuts.sample_stats.attrs["acceptance_rate"], 3))
axes = az.plot_trace(idata_nuts, var_names=["weights", "covariances"], compact=True,
                     divergences="bottom")
plt.gcf().tight_layout()
plt.show()
'''),
    md("""
## Label switching and cluster assignments

The estimator already aligns NUTS draws; `relabel` does it for any stack of draws, e.g. to
match the mean-field draws to the NUTS posterior means. `apply_relabelling` applies the
permutations to every per-component array. `sample_assignments` decodes assignments with
`infer_discrete`: temperature 0 gives the MAP cluster (equal to `predict`), temperature 1 a
posterior draw.
"""),
    code('''
draw_means = idata_mf.posterior["means"].values          # (chain, draw, K, D)
perms = relabel(draw_means, reference=nuts.means_)
aligned_weights = apply_relabelling(idata_mf.posterior["weights"].values, perms)
print("mean-field weights, aligned to the NUTS labels:", np.round(aligned_weights.mean((0, 1)), 3))
print("NUTS posterior mean weights:                   ", np.round(nuts.weights_, 3))

map_labels = sample_assignments(nuts, X, temperature=0)
draw_labels = sample_assignments(nuts, X, temperature=1, random_state=0)
print("MAP decode == predict:", np.array_equal(map_labels, nuts.predict(X)),
      "| one posterior draw differs on", int((draw_labels != map_labels).sum()), "points")
'''),
    md("""
## Posterior predictive check

`to_inference_data` stores one synthetic data set per draw in `posterior_predictive`. We
overlay the density of the first feature of a few replicated data sets on the observed one:
the observed curve should look like one more draw.
"""),
    code('''
pp = idata_nuts.posterior_predictive["obs"].values.reshape(-1, N_SAMPLES, 2)
obs = idata_nuts.observed_data["obs"].values
fig, axes = plt.subplots(1, 2, figsize=(9, 3))
for f, ax in enumerate(axes):
    bins = np.linspace(obs[:, f].min() - 2, obs[:, f].max() + 2, 40)
    for rep in pp[:: max(1, len(pp) // 30), :, f]:
        ax.hist(rep, bins=bins, density=True, histtype="step", color="C0", alpha=0.2)
    ax.hist(obs[:, f], bins=bins, density=True, histtype="step", color="k", lw=2,
            label="observed")
    ax.set_xlabel(f"feature {f}")
axes[0].legend()
fig.suptitle("posterior predictive (blue) vs observed (black)")
plt.show()
'''),
    md("""
## Comparing numbers of components with LOO and WAIC

`az.loo` (PSIS leave-one-out) and `az.waic` need posterior draws and the pointwise
log-likelihood, which `to_inference_data` supplies. We fit mean-field SVI with K = 2, 3, 4
and rank them with `az.compare` (higher `elpd` is better).
"""),
    code('''
candidates = [2, 3, 4]
idatas = {}
for k in candidates:
    est = GaussianMixture(k, inference="svi", guide="mean_field", max_iter=SVI_STEPS,
                          **common).fit(X)
    idatas[f"K={k}"] = to_inference_data(est, X, num_samples=N_DRAWS, random_state=0)
waic = {name: float(az.waic(d).elpd_waic) for name, d in idatas.items()}
print("elpd_waic:", {name: round(v, 1) for name, v in waic.items()})
az.compare(idatas, ic="loo")
'''),
    md("""
`select_n_components` wraps the refits: here BIC over the same candidates with EM (lower is
better), drawn by `plot_selection`. With `criterion="loo"` it uses PSIS-LOO on a
mean-field or NUTS template instead.
"""),
    code('''
rows = select_n_components(GaussianMixture(covariance_type="spherical", random_state=0,
                                           progress=False, device="cpu"),
                           X, candidates=[1, 2, 3, 4, 5], criterion="bic")
print(pd.DataFrame(rows).drop(columns="estimator"))
fig = plot_selection(rows)
plt.show()
'''),
    md("""
## The deep GMM's "bumpy journey", in miniature

`ppl_mixtures.experiments.bumpy_journey` reproduces the DGMM paper's simulation: plain EM
from random starts, EM with deterministic annealing, EM with realigned layers, and MAP-SVI,
scored against the true paths (adjusted Rand index, ARI) and the oracle (the true
parameters). `ExperimentConfig.quick()` is a setting of seconds; the full experiment uses
`ExperimentConfig()` (about 10 minutes).
"""),
    code('''
config = ExperimentConfig.quick(progress=False)
if not SMOKE:
    config = ExperimentConfig.quick(progress=False, runs=4, svi_runs=2, em_max_iter=100,
                                    svi_max_iter=300, n_samples=1000)
result = run_experiment(config)
table = pd.DataFrame(result.summary())
table[["method", "runs", "path_ari_best", "path_ari_mean", "log_likelihood_best",
       "nonempty_mean", "seconds_mean"]].round(3)
'''),
    code('''
fig, ax = plt.subplots(figsize=(6, 3))
for record in result.records:
    if record.method in ("em", "em_annealed"):
        ax.plot(record.history, color="C0" if record.method == "em" else "C1", alpha=0.7)
ax.axhline(result.oracle.log_likelihood, color="k", ls="--", label="oracle")
ax.set_xlabel("EM iteration")
ax.set_ylabel("mean log-likelihood")
ax.legend()
ax.set_title("EM runs (blue: plain, orange: annealed)")
plt.show()
'''),
    md("""
## Take-aways

* `to_inference_data` makes any fitted mixture an ArviZ object; NUTS and mean-field SVI give
  real posteriors (with `az.loo`), point estimates give one draw (`az.waic` only).
* Check R-hat/ESS and trace plots before trusting NUTS; relabel before summarising
  per-component quantities of draws from another fit.
* Compare K with `az.compare` (LOO) or `select_n_components` (BIC/AIC/ICL/LOO).
"""),
]


NOTEBOOKS = {
    "01_defining_priors.ipynb": NB01,
    "02_svi_training.ipynb": NB02,
    "03_posterior_diagnostics.ipynb": NB03,
}


def build() -> None:
    for name, cells in NOTEBOOKS.items():
        nb = new_notebook(cells=cells)
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                     "language": "python"}
        nb.metadata["language_info"] = {"name": "python"}
        nbformat.validate(nb)
        nbformat.write(nb, HERE / name)
        print("wrote", HERE / name)


if __name__ == "__main__":
    build()
