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
# # Training by SVI: minibatches, checkpoints, devices, and EM on the same model
#
# All estimators of `ppl_mixtures` fit the **same Pyro model** either by EM or by stochastic
# variational inference (`inference="svi"`, with `TraceEnum_ELBO`: the discrete assignments are
# summed out exactly). This notebook shows the knobs of the SVI trainer as the estimators
# expose them:
#
# * `batch_size` (minibatches; the likelihood is rescaled by `N / batch_size`) and `lr` (Adam);
# * `checkpoint_path` and `fit(X, resume=True)` to stop and continue a run;
# * `device="auto"`: CUDA when available, CPU otherwise;
# * `history_` (the loss per sample of every step) and `plot_history`;
#
# and checks that EM and MAP-SVI optimise the same objective: for a MAP guide,
# `-elbo_loss(X) == score(X) * N + log p(theta)`, for `GaussianMixture`,
# `MixtureOfFactorAnalyzers` and `DeepGaussianMixture`.
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
print("CUDA available:", torch.cuda.is_available(), f"| SMOKE={SMOKE}")

# %% [markdown]
# ## Minibatch SVI on a Gaussian mixture
#
# `device="auto"` puts the tensors on the GPU when there is one (`params_` stays there; the
# fitted NumPy attributes such as `means_` are on the host). `batch_size=128` draws 128 rows
# per step; the loss in `history_` is therefore noisy, and `tol=0` asks for exactly
# `max_iter` steps (no early stopping).

# %%
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

# %% [markdown]
# ## Checkpoints and resuming
#
# With `checkpoint_path`, the trainer writes its state (guide parameters, optimiser state,
# random state, history) to disk. A second estimator with the same settings and a larger
# `max_iter` continues from the stored step with `fit(X, resume=True)`: `max_iter` counts the
# steps **of the whole run**, and `history_` covers both legs. Training in two legs gives the
# same result as one uninterrupted run.

# %%
tmp = Path(tempfile.mkdtemp())
ckpt = tmp / "gmm_svi.safetensors"
settings = dict(covariance_type="full", inference="svi", batch_size=128, lr=0.05, tol=0.0,
                random_state=0, device="auto", progress=False, checkpoint_path=str(ckpt))
first = GaussianMixture(3, max_iter=STEPS // 2, **settings).fit(X)
print("after leg 1:", len(first.history_), "steps; checkpoint exists:", ckpt.exists())
resumed = GaussianMixture(3, max_iter=STEPS, **settings).fit(X, resume=True)
print("after leg 2:", len(resumed.history_), "steps")
claim("two legs give the same means and the same history as one run",
      np.allclose(resumed.means_, svi.means_) and np.allclose(resumed.history_, svi.history_))

fig, ax = plt.subplots(figsize=(6, 3))
plot_history(resumed.history_, ylabel="loss per sample", xlabel="step", ax=ax)
ax.axvline(STEPS // 2, color="k", ls="--", lw=0.8, label="resume")
ax.legend()
plt.show()


# %% [markdown]
# ## EM and SVI over the same generative code
#
# EM (for the Gaussian mixture as in Bishop 2006, chapter 9) maximises the likelihood;
# MAP-SVI maximises `log p(x | theta) + log p(theta)`. For any
# fitted estimator, `elbo_loss(X)` evaluates `TraceEnum_ELBO` of the fitted model and guide;
# with a point-mass guide it is exactly minus the log joint, so we can check the identity
#
# `-elbo_loss(X) == score(X) * N + model_.log_prior(params_)`
#
# for the EM fit (its `guide_` is a MAP guide at the EM estimate) and for the SVI fit.
# MAP-SVI maximises the log joint, so it should end with the higher log joint; EM maximises
# the likelihood, so it should end with the higher likelihood, up to where each stopped: EM
# stops once an iteration gains less than `tol` per sample, so where both reach the same mode
# (the Gaussian mixture below) SVI may end a hair above EM's likelihood. `compare` checks
# both statements, the second to 1e-4 nats per sample.

# %%
def objectives(est, X, name):
    n = len(X)
    loglik = est.score(X) * n
    log_prior = float(est.model_.log_prior(est.params_))
    elbo = -est.elbo_loss(X)
    assert np.isclose(elbo, loglik + log_prior, rtol=1e-8), (elbo, loglik + log_prior)
    print(f"{name:<28} log-lik {loglik:12.3f} | log prior {log_prior:9.3f} | "
          f"-elbo_loss {elbo:12.3f} (= sum)")


def compare(em_fit, svi_fit, X, name):
    n = len(X)
    joint = {est: est.score(X) * n + float(est.model_.log_prior(est.params_))
             for est in (em_fit, svi_fit)}
    claim(f"{name}: MAP-SVI has the higher log joint ({joint[svi_fit]:.1f} vs "
          f"{joint[em_fit]:.1f})", joint[svi_fit] >= joint[em_fit])
    gap = svi_fit.score(X) - em_fit.score(X)
    claim(f"{name}: EM's likelihood is at least SVI's, up to 1e-4 nats per sample "
          f"(SVI - EM: {gap:+.2g} per sample)", gap <= 1e-4)


em = GaussianMixture(3, covariance_type="full", inference="em", random_state=0,
                     device="auto", progress=False).fit(X)
full_svi = GaussianMixture(3, covariance_type="full", inference="svi", max_iter=STEPS,
                           random_state=0, device="auto", progress=False).fit(X)
objectives(em, X, "GaussianMixture EM")
objectives(full_svi, X, "GaussianMixture SVI (MAP)")
compare(em, full_svi, X, "GaussianMixture")

# %% [markdown]
# ### Mixture of factor analysers on the wine data
#
# `load_wine()` gives the 13 standardised features of scikit-learn's wine data (178 rows).
# A mixture of 3 factor analysers with 2 factors each, by EM (Ghahramani & Hinton 1996) and
# by SVI:

# %%
Xw, yw = load_wine()
mfa_em = MixtureOfFactorAnalyzers(3, n_factors=2, inference="em", random_state=0,
                                  device="auto", progress=False).fit(Xw)
mfa_svi = MixtureOfFactorAnalyzers(3, n_factors=2, inference="svi", max_iter=STEPS, lr=0.05,
                                   random_state=0, device="auto", progress=False).fit(Xw)
objectives(mfa_em, Xw, "MFA EM")
objectives(mfa_svi, Xw, "MFA SVI (MAP)")
compare(mfa_em, mfa_svi, Xw, "MFA")

fig, axes = plt.subplots(1, 2, figsize=(9, 3))
plot_history(mfa_em.history_, ylabel="mean log-likelihood", ax=axes[0], title="MFA, EM")
plot_history(mfa_svi.history_, ylabel="loss per sample", xlabel="step", ax=axes[1],
             title="MFA, SVI")
fig.tight_layout()
plt.show()

# %% [markdown]
# ### Deep Gaussian mixture
#
# A small simulated deep Gaussian mixture (Viroli & McLachlan 2019; `make_dgmm` simulates it
# as Selosse et al. 2020 do), two layers with 2 components each, 4 then 2 factors,
# standardised, fitted by exact EM and by MAP-SVI on the collapsed model (scores
# integrated out, layers' labels enumerated). The same identity holds.

# %%
Xd, layers, paths, truth = make_dgmm(n_samples=300 if SMOKE else 2000, n_features=9,
                                     n_components=(2, 2), n_factors=(4, 2), random_state=0,
                                     standardize=True)
dg_em = DeepGaussianMixture((2, 2), (4, 2), inference="em", max_iter=20 if SMOKE else 300,
                            random_state=0, device="auto", progress=False).fit(Xd)
dg_svi = DeepGaussianMixture((2, 2), (4, 2), inference="svi", max_iter=40 if SMOKE else 1500,
                             lr=0.02, random_state=0, device="auto", progress=False).fit(Xd)
objectives(dg_em, Xd, "DGMM EM")
objectives(dg_svi, Xd, "DGMM SVI (MAP)")
compare(dg_em, dg_svi, Xd, "DGMM")

fig, axes = plt.subplots(1, 2, figsize=(9, 3))
plot_history(dg_em.history_, ylabel="mean log-likelihood", ax=axes[0], title="DGMM, EM")
plot_history(dg_svi.history_, ylabel="loss per sample", xlabel="step", ax=axes[1],
             title="DGMM, SVI")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Take-aways
#
# * `batch_size`, `lr`, `max_iter`, `tol`, `checkpoint_path` and `device` are plain estimator
#   arguments; `fit(X, resume=True)` continues a checkpointed run up to `max_iter` total steps.
# * `history_` is the mean log-likelihood per EM iteration, or the loss per sample per SVI
#   step; `plot_history` draws either.
# * EM and MAP-SVI optimise objectives that differ only by the log prior, and
#   `elbo_loss` lets you check it on any fitted estimator.
