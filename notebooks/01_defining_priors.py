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
# # Defining your own priors
#
# Every model of `ppl_mixtures` is a Pyro program whose global sites (weights, means,
# variances, ...) have **replaceable priors**. In this notebook we
#
# 1. look at the default priors of the Gaussian mixture (`default_gmm_priors`): site names
#    and shapes;
# 2. write a new prior: a **sparse Dirichlet** on the weights (concentration much smaller than
#    1), which lets a deliberately over-sized mixture switch off the components it does not
#    need, and a heavy-tailed Student-t prior on the means;
# 3. pass it with `GaussianMixture(..., priors={...})` and fit by SVI (MAP and mean-field
#    guides) and by NUTS, and count the components that keep a weight above 1%;
# 4. do the same for the deep Gaussian mixture, `DeepGaussianMixture(priors=...)`.
#
# Set the environment variable `PPL_MIXTURES_SMOKE=1` to run everything on tiny sizes
# (this is what the test suite does).
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
import matplotlib.pyplot as plt
import numpy as np
import pyro.distributions as dist
import torch

from ppl_mixtures import DeepGaussianMixture, GaussianMixture
from ppl_mixtures.datasets import make_dgmm, make_gmm
from ppl_mixtures.models.priors import GMM_GLOBAL_SITES, default_gmm_priors

N_SAMPLES = 100 if SMOKE else 400
K = 5 if SMOKE else 8            # deliberately more components than the 3 true ones
SVI_STEPS = 150 if SMOKE else 1500
NUTS_WARMUP, NUTS_DRAWS = (10, 10) if SMOKE else (100, 100)
N_NUTS, K_NUTS = (50, 4) if SMOKE else (100, 4)   # NUTS: fewer rows and components
print(f"SMOKE={SMOKE}: N={N_SAMPLES}, K={K}, SVI steps={SVI_STEPS}, NUTS {NUTS_WARMUP}+{NUTS_DRAWS}")

# %% [markdown]
# ## Data: three Gaussian clusters
#
# `make_gmm` draws a mixture with known labels. We will fit it with `K` components, more than
# the three that generated it, and see which priors prune the extra ones.

# %%
X, y = make_gmm(N_SAMPLES, n_components=3, n_features=2, covariance_type="spherical",
                separation=4.0, random_state=0)
fig, ax = plt.subplots(figsize=(4, 4))
ax.scatter(X[:, 0], X[:, 1], c=y, s=10, cmap="viridis")
ax.set_title("training data (true clusters)")
plt.show()

# %% [markdown]
# ## The default priors: site names and shapes
#
# `default_gmm_priors(x, K, covariance_type)` returns one distribution per global site.
# Except for `weights` (a Dirichlet over all K weights at once), each prior is for **one
# component**: the model expands it over the `"components"` plate. A scalar distribution
# (`batch_shape == ()`, `event_shape == ()`) is broadcast over the site's event shape, so
# `dist.Normal(0., 5.)` is a valid prior for means of any dimension.

# %%
x = torch.as_tensor(X)  # float64, as the estimator will use
defaults = default_gmm_priors(x, K, "spherical")
print("global sites of the GMM:", GMM_GLOBAL_SITES)
for name, prior in defaults.items():
    print(f"{name:>12}: {type(prior).__name__:<15} batch_shape={tuple(prior.batch_shape)} "
          f"event_shape={tuple(prior.event_shape)}")
print("default weight concentration:", defaults["weights"].concentration.tolist())


# %% [markdown]
# ## A new prior
#
# * **Weights**: `Dirichlet(alpha * 1_K)` with `alpha = 0.05`. With `alpha < 1` the density
#   piles up at the corners of the simplex: it prefers a few large weights and many tiny ones,
#   so superfluous components are driven to (almost) zero weight instead of splitting a
#   cluster in two.
# * **Means**: a Student-t with 3 degrees of freedom, centred on the data mean: heavy tails
#   allow clusters far away, while most of the mass stays near the data.
#
# The priors must live on the dtype (and device) of the fitted data: the estimators fit
# float64 arrays in float64, so we build the tensors in float64 (and fit on the CPU).
# Only the sites you pass are replaced; the variances keep their default prior.

# %%
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


# %% [markdown]
# ## SVI: MAP and mean-field guides, default vs sparse prior
#
# `guide="map"` fits point masses (MAP); `guide="mean_field"` fits independent Normals in
# the unconstrained space of each site. For each guide we fit once with the default
# (flat, `alpha = 1`) Dirichlet and once with the sparse one, from the same k-means start.

# %%
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
for guide in ("map", "mean_field"):
    claim(f"{guide}: the sparse prior keeps fewer components above 1% than the default one",
          n_active(fits[guide, "sparse"].weights_) < n_active(fits[guide, "default"].weights_))
    claim(f"{guide}: with the sparse prior, the three true clusters keep a weight above 1%",
          n_active(fits[guide, "sparse"].weights_) == 3)

# %% [markdown]
# The bar chart shows the sorted weights of each fit. With the sparse Dirichlet the tail of
# small weights is pushed towards zero (how far depends on the number of steps: the full run
# goes further than the smoke run).

# %%
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

# %% [markdown]
# ## NUTS on small data
#
# `inference="nuts"` runs NUTS over the global sites with the assignments summed out.
# `max_iter` is the number of draws per chain. The draws are relabelled to the starting
# components and kept in `posterior_samples_`; `weights_` is the posterior mean.
# NUTS costs a full-data gradient per leapfrog step, and the sparse Dirichlet makes the
# posterior of the small weights hard to explore (long trajectories), so we run it on the
# first `N_NUTS` rows with `K_NUTS` components (at full size this cell takes about a minute and a half
# on one core).

# %%
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
claim("most NUTS draws give a weight above 1% to at most three components",
      (active_per_draw <= 3).mean() > 0.5)

# %%
fig, ax = plt.subplots(figsize=(6, 3))
ax.boxplot([w[:, k] for k in range(K_NUTS)])
ax.set_xlabel("component")
ax.set_ylabel("posterior draws of the weight")
ax.set_title("NUTS, sparse Dirichlet prior")
plt.show()

# %% [markdown]
# ## The same idea for the deep Gaussian mixture
#
# The deep Gaussian mixture (Viroli & McLachlan 2019; Selosse et al. 2020) stacks mixtures of
# factor analysers. `DeepGaussianMixture` names its sites per layer: `weights1`, `eta1`, `loadings1`,
# `noise_variances1`, then `weights2`, ... (see `ppl_mixtures.models.dgmm.default_dgmm_priors`).
# Here we give the first layer three components where the data have two, and a sparse
# Dirichlet on `weights1`; the priors are used by `inference="svi"` (EM is maximum likelihood
# and ignores them).

# %%
Xd, layers, paths, truth = make_dgmm(n_samples=200 if SMOKE else 1000, n_features=6,
                                     n_components=(2, 1), n_factors=(3, 1), random_state=0,
                                     standardize=True)
xd = torch.as_tensor(Xd)
dgmm_priors = {"weights1": dist.Dirichlet(torch.full((3,), 0.05, dtype=xd.dtype))}
smallest = {}
for label, prior in (("default", None), ("sparse", dgmm_priors)):
    deep = DeepGaussianMixture((3, 1), (3, 1), inference="svi", priors=prior,
                               max_iter=100 if SMOKE else 1500, lr=0.05, random_state=0,
                               device="cpu", progress=False).fit(Xd)
    smallest[label] = float(deep.layer_weights_[0].min())
    print(f"{label:<7} layer-1 weights: {np.round(np.sort(deep.layer_weights_[0])[::-1], 3)}")
claim("the sparse Dirichlet pushes the superfluous first-layer component's weight lower",
      smallest["sparse"] < smallest["default"])

# %% [markdown]
# ## Take-aways
#
# * A prior is a dict `{site name: distribution}`; start from the site names and shapes of
#   `default_gmm_priors` (or `default_dgmm_priors`, `default_mfa_priors`) and replace what you
#   like. One component's prior is enough: the plate does the rest.
# * A sparse Dirichlet (`alpha << 1`) lets an over-complete mixture prune itself, under MAP,
#   mean-field SVI and NUTS alike; count the components above a small weight to read off
#   the effective number of clusters.
