# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Posterior diagnostics with ArviZ
#
# `ppl_mixtures.diagnostics` turns fitted estimators into ArviZ `InferenceData` and adds the
# mixture-specific tools ArviZ lacks:
#
# * `to_inference_data(est, X)`: posterior draws (NUTS chains, draws of a mean-field guide, or
#   of the Laplace approximation at a point estimate),
#   pointwise marginal log-likelihood (for LOO/WAIC) and posterior predictive data;
# * `relabel` / `apply_relabelling`: undo label switching;
# * `sample_assignments`: decode clusters with `pyro.infer.infer_discrete`;
# * `select_n_components` / `plot_selection`: choose K by BIC, AIC, ICL or PSIS-LOO.
#
# At the end we run a miniature of the deep-GMM "bumpy journey" experiment of Selosse et al.
# 2020 (EM vs SVI).
#
# Works cited by author and year are listed with full references in
# [docs/references.md](../docs/references.md).

# %%
import os
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets
SMOKE = os.environ.get("PPL_MIXTURES_SMOKE") == "1"  # tiny sizes for the test suite


def claim(statement, holds):
    """Print whether this run bears out a statement of the text; a full-size run stops if not."""
    print(("claim holds: " if holds else "claim DOES NOT HOLD: ") + statement)
    assert holds or SMOKE, statement

# %%
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
SVI_STEPS = 150 if SMOKE else 1000
NUTS_WARMUP, NUTS_DRAWS, CHAINS = (15, 20, 2) if SMOKE else (200, 300, 2)
N_DRAWS = 40 if SMOKE else 400    # draws of the mean-field guide
print(f"SMOKE={SMOKE}: N={N_SAMPLES}, SVI steps={SVI_STEPS}, NUTS {CHAINS} chains of "
      f"{NUTS_WARMUP}+{NUTS_DRAWS}")

# %% [markdown]
# ## Two fits of the same mixture: mean-field SVI and NUTS
#
# Three spherical clusters in 2-D. Both fits use the same model and priors; NUTS runs
# `CHAINS` chains one after the other (their draws are relabelled to the k-means start).

# %%
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

# %% [markdown]
# ## `az.summary`: R-hat and effective sample sizes
#
# For NUTS, `r_hat` close to 1 and large `ess_bulk` mean the chains agree (in the smoke run
# the chains are far too short for that). The mean-field draws are independent, one "chain":
# their ESS is the number of draws and R-hat is not informative.

# %%
summary_nuts = az.summary(idata_nuts, var_names=["weights", "means"], round_to=3)
claim(f"the NUTS chains agree: largest r_hat {summary_nuts['r_hat'].max():.3f} <= 1.05",
      summary_nuts["r_hat"].max() <= 1.05)
summary_nuts

# %%
az.summary(idata_mf, var_names=["weights"], kind="stats", round_to=3)

# %% [markdown]
# NUTS also reports on itself: `sample_stats.diverging` marks the draws whose trajectory
# diverged (a sign of a posterior geometry the sampler cannot follow; there should be none),
# and the attribute `acceptance_rate` holds each chain's fraction of moves. `az.plot_trace`
# draws the divergences as ticks under the traces.

# %%
print("divergent draws per chain:", idata_nuts.sample_stats.diverging.values.sum(axis=1))
claim("no NUTS draw diverged", not idata_nuts.sample_stats.diverging.values.any())
print("acceptance rate per chain:", np.round(idata_nuts.sample_stats.attrs["acceptance_rate"], 3))
axes = az.plot_trace(idata_nuts, var_names=["weights", "covariances"], compact=True,
                     divergences="bottom")
plt.gcf().tight_layout()
plt.show()

# %% [markdown]
# ## Label switching and cluster assignments
#
# The estimator already aligns NUTS draws; `relabel` does it for any stack of draws, e.g. to
# match the mean-field draws to the NUTS posterior means. `apply_relabelling` applies the
# permutations to every per-component array. `sample_assignments` decodes assignments with
# `infer_discrete`: temperature 0 gives the MAP cluster (equal to `predict`), temperature 1 a
# posterior draw.

# %%
draw_means = idata_mf.posterior["means"].values          # (chain, draw, K, D)
perms = relabel(draw_means, reference=nuts.means_)
aligned_weights = apply_relabelling(idata_mf.posterior["weights"].values, perms)
print("mean-field weights, aligned to the NUTS labels:", np.round(aligned_weights.mean((0, 1)), 3))
print("NUTS posterior mean weights:                   ", np.round(nuts.weights_, 3))

map_labels = sample_assignments(nuts, X, temperature=0)
draw_labels = sample_assignments(nuts, X, temperature=1, random_state=0)
claim("the MAP decode equals predict", np.array_equal(map_labels, nuts.predict(X)))
print("one posterior draw differs from it on", int((draw_labels != map_labels).sum()), "points")

# %% [markdown]
# ## Posterior predictive check
#
# `to_inference_data` stores one synthetic data set per draw in `posterior_predictive`. We
# overlay the density of the first feature of a few replicated data sets on the observed one:
# the observed curve should look like one more draw.

# %%
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

# %% [markdown]
# ## Comparing numbers of components with LOO and WAIC
#
# `az.loo` (PSIS leave-one-out) and `az.waic` need posterior draws and the pointwise
# log-likelihood, which `to_inference_data` supplies. We fit mean-field SVI with K = 2, 3, 4
# and rank them with `az.compare` (higher `elpd` is better).

# %%
candidates = [2, 3, 4]
idatas = {}
for k in candidates:
    est = GaussianMixture(k, inference="svi", guide="mean_field", max_iter=SVI_STEPS,
                          **common).fit(X)
    idatas[f"K={k}"] = to_inference_data(est, X, num_samples=N_DRAWS, random_state=0)
waic = {name: float(az.waic(d).elpd_waic) for name, d in idatas.items()}
print("elpd_waic:", {name: round(v, 1) for name, v in waic.items()})
ranking = az.compare(idatas, ic="loo")
claim(f"LOO ranks the true K = 3 first (then {', '.join(ranking.index[1:])})",
      ranking.index[0] == "K=3")
ranking

# %% [markdown]
# `select_n_components` wraps the refits: here BIC over the same candidates with EM (lower is
# better), drawn by `plot_selection`. With `criterion="loo"` it uses PSIS-LOO on a
# mean-field or NUTS template instead.

# %%
rows = select_n_components(GaussianMixture(covariance_type="spherical", random_state=0,
                                           progress=False, device="cpu"),
                           X, candidates=[1, 2, 3, 4, 5], criterion="bic")
print(pd.DataFrame(rows).drop(columns="estimator"))
claim("BIC selects the true K = 3",
      [row["n_components"] for row in rows if row["selected"]] == [3])
fig = plot_selection(rows)
plt.show()

# %% [markdown]
# ## The deep GMM's "bumpy journey", in miniature
#
# `ppl_mixtures.experiments.bumpy_journey` reproduces the simulation of Selosse et al. 2020
# (section 3) on the deep Gaussian mixture of Viroli & McLachlan 2019: plain EM from random
# starts, EM with deterministic annealing, EM with realigned layers, and MAP-SVI,
# scored against the true paths (adjusted Rand index, ARI) and the oracle (the true
# parameters). `ExperimentConfig.quick()` is a setting of seconds; the full experiment uses
# `ExperimentConfig()`, also run by `ppl-mixtures compare-dgmm` (several minutes on 2 cores:
# its `--help` gives the measured time and the smallest meaningful run).

# %%
# bic_runs=0: the BIC table (Table 1 of the paper) is not shown here
config = ExperimentConfig.quick(progress=False, runs=1, bic_runs=0)
if not SMOKE:
    config = ExperimentConfig.quick(progress=False, runs=3, svi_runs=2, em_max_iter=100,
                                    svi_max_iter=300, n_samples=1000, bic_runs=0)
result = run_experiment(config)
table = pd.DataFrame(result.summary())
table[["method", "runs", "path_ari_best", "path_ari_mean", "log_likelihood_best",
       "nonempty_mean", "seconds_mean"]].round(3)

# %%
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

# %% [markdown]
# ## Take-aways
#
# * `to_inference_data` makes any fitted mixture an ArviZ object; NUTS and mean-field SVI give
#   their own draws, point estimates (EM, SGD, MAP) draws of a Laplace approximation at the
#   estimate (check its Pareto k in `idata.posterior.attrs`); all work with `az.loo`.
# * Check R-hat/ESS and trace plots before trusting NUTS; relabel before summarising
#   per-component quantities of draws from another fit.
# * Compare K with `az.compare` (LOO) or `select_n_components` (BIC/AIC/ICL/LOO).
