"""Default priors of the zoo's models; every prior is an argument a user can replace.

A prior is a Pyro distribution for *one* component's value of a global site (or for the
whole site when it is shared by all components). The model expands it over the
``"components"`` plate, so a user writes ``{"means": dist.Normal(0.0, 5.0)}`` and the model
turns it into a ``(K, D)`` site. A scalar distribution is broadcast over the site's event
shape; a distribution whose ``event_shape`` already equals the site's is used as is.

The defaults are weakly informative and scaled to the data (empirical Bayes), so that the
MAP estimate stays close to maximum likelihood while components cannot collapse onto a
single point (the singularity discussed by Balshaw 2022, section 2): the inverse-gamma prior on
every variance has its mode away from zero.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import Tensor

#: Names of the global sites of the Gaussian mixture, in the order the model samples them.
GMM_GLOBAL_SITES = ("weights", "means", "variances", "corr_cholesky")


#: Entries of one block of rows whose centred squares :func:`column_moments` sums (2^17, 1 MB
#: in float64). Measured on two idle cores against ``x.var(0)``: N = 1e5, D = 32: 6-7 ms
#: against 13-17 (float32 5-6 against 10-13); N = 2e5, D = 64: 24-34 against 52-73;
#: D = 784, N = 1e4: 18-23 against 26-29; blocks of 2^14 entries were slower (10-49 ms).
_MOMENT_BLOCK = 1 << 17


def column_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-feature mean and variance (about the mean, divided by N) of the rows of ``x``
    (N >= 1, D), both in float64.

    Two passes: the column sums (one matrix-vector product in float64), then the squared
    deviations from the mean, summed block by block of rows (no (N, D) temporary; torch's
    ``var(0)`` runs a slower per-column reduction). NaN entries make their column's
    moments NaN.
    """
    wide = torch.float64
    n_samples, n_features = x.shape
    rows = max(1, _MOMENT_BLOCK // max(1, n_features))
    if x.dtype == wide:
        total = x.new_ones(n_samples) @ x
    else:
        total = sum(x[start:start + rows].to(wide).sum(0)
                    for start in range(0, n_samples, rows))
    mean = total / n_samples
    squares = torch.zeros_like(mean)
    for start in range(0, n_samples, rows):
        deviations = x[start:start + rows].to(wide) - mean
        squares += (deviations * deviations).sum(0)
    return mean, squares / n_samples


def data_moments(x: Tensor, moments: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """Per-feature mean and variance of ``x`` (or ``moments``, moved to ``x``'s dtype and device).

    One row has variance one; every variance is floored at ``sqrt(tiny)`` of the dtype.
    NaN entries (missing values) are left out: the moments are those of the observed entries
    (``moments`` holding NaN are ignored for ``x``'s).
    """
    if moments is not None and not any(bool(torch.isnan(m).any()) for m in moments):
        data_mean, data_var = (m.to(dtype=x.dtype, device=x.device) for m in moments)
    else:
        data_mean, data_var = _observed_moments(x)
    return data_mean, data_var.clamp_min(torch.finfo(x.dtype).tiny ** 0.5)


def _observed_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-feature mean and variance (over N - 1; one for a single value) of the observed
    (not NaN) entries of ``x``, in its dtype."""
    n_samples = x.shape[0]
    if n_samples > 1:
        mean, variance = column_moments(x)
        if not bool(torch.isnan(mean).any()):  # no missing entry
            return mean.to(x.dtype), (variance * (n_samples / (n_samples - 1))).to(x.dtype)
    if bool(torch.isnan(x).any()):
        data_mean = torch.nanmean(x, 0).nan_to_num(0.0)
        counts = (~torch.isnan(x)).sum(0)
        squares = torch.nansum((x - data_mean).square(), 0)
        return data_mean, torch.where(counts > 1, squares / (counts - 1).clamp_min(1), 1.0)
    data_mean = x.mean(0)
    return data_mean, torch.ones_like(data_mean)


def prior_like(prior: dist.Distribution, like: Tensor) -> dist.Distribution:
    """``prior`` rebuilt with its floating-point tensors in ``like``'s dtype and device.

    A user's ``dist.StudentT(3.0, 0.0, 10.0)`` holds float32 tensors on the CPU; the models
    score float64 (or CUDA) sites. The distribution is rebuilt from its constructor arguments
    (as :mod:`ppl_mixtures.io` saves it); one that is already in place, or that cannot be
    rebuilt that way, is returned as is.
    """
    from ppl_mixtures.io import _distribution_arguments

    def moved(value):
        if isinstance(value, Tensor) and value.is_floating_point():
            return value.to(dtype=like.dtype, device=like.device)
        if isinstance(value, dist.Distribution):
            return prior_like(value, like)
        return value

    try:
        arguments = _distribution_arguments(prior)
        tensors = [v for v in arguments.values() if isinstance(v, Tensor) and v.is_floating_point()]
        if all(t.dtype == like.dtype and t.device == like.device for t in tensors) and not any(
                isinstance(v, dist.Distribution) for v in arguments.values()):
            return prior
        return type(prior)(**{name: moved(value) for name, value in arguments.items()})
    except (TypeError, ValueError, NotImplementedError):
        return prior


def default_gmm_priors(
    x: Tensor,
    n_components: int,
    covariance_type: str,
    *,
    weight_concentration: float = 1.0,
    mean_scale_factor: float = 3.0,
    variance_concentration: float = 1.0,
    variance_rate_factor: float = 0.01,
    correlation_concentration: float = 1.0,
    moments: tuple[Tensor, Tensor] | None = None,
) -> dict[str, dist.Distribution]:
    """Weakly informative priors for :class:`ppl_mixtures.models.gmm.GaussianMixtureModel`.

    Parameters
    ----------
    x : Tensor, shape (n_samples, n_features)
        The data; only its per-feature mean and variance are used, and its dtype and device.
    n_components : int
        Number of components K.
    covariance_type : str
        One of ``"spherical"``, ``"diag"``, ``"tied_diag"``, ``"tied"``, ``"full"``.
    weight_concentration : float
        Symmetric Dirichlet concentration on the weights (1 = flat on the simplex).
    mean_scale_factor : float
        Each mean is ``Normal(data mean, mean_scale_factor * data std)`` per feature.
    variance_concentration, variance_rate_factor : float
        Each variance is ``InverseGamma(variance_concentration, variance_rate_factor *
        data variance)``; its mode ``rate / (concentration + 1)`` keeps variances off zero.
    correlation_concentration : float
        LKJ concentration on the correlation Cholesky factor (1 = uniform over
        correlation matrices); used by ``"tied"`` and ``"full"`` only, when D > 1.
    moments : (Tensor, Tensor), optional
        Per-feature mean and variance, each of shape (n_features,), to use in place of
        ``x``'s: those of all the data when ``x`` is one batch of a stream or one process's
        shard, so that every batch and every process shares one prior.

    Returns
    -------
    dict[str, pyro.distributions.Distribution]
        Keys among :data:`GMM_GLOBAL_SITES`, on ``x``'s device and dtype.
    """
    n_features = x.shape[-1]
    data_mean, data_var = data_moments(x, moments)
    concentration = torch.full((n_components,), weight_concentration, dtype=x.dtype, device=x.device)
    priors: dict[str, dist.Distribution] = {
        "weights": dist.Dirichlet(concentration),
        "means": dist.Normal(data_mean, mean_scale_factor * data_var.sqrt()).to_event(1),
    }
    rate = variance_rate_factor * data_var
    if covariance_type == "spherical":
        rate = rate.mean()
    priors["variances"] = dist.InverseGamma(
        torch.full_like(rate, variance_concentration), rate
    ).to_event(rate.dim())
    if covariance_type in ("tied", "full") and n_features > 1:
        priors["corr_cholesky"] = dist.LKJCholesky(
            n_features, torch.tensor(correlation_concentration, dtype=x.dtype, device=x.device)
        )
    return priors
