"""A start for the GMVAE: autoencoder pre-training, then a mixture fitted in the latent space.

The recipe of VaDE (Jiang et al. 2017), carried over to the GMVAE of Dilokthanakul et al. (2016):

1. :func:`pretrain_autoencoder` trains the encoder's ``x`` mean and the decoder as a plain
   (deterministic) autoencoder, ``y -> x_loc(y) -> decoder``, minimising the reconstruction
   error of the observation model (squared error for a Gaussian, cross-entropy for a
   Bernoulli) with Adam, in plain torch.
2. :func:`gmm_start` fits :class:`ppl_mixtures.GaussianMixture` (EM, 10 restarts) to the
   latent means ``x_loc(y)`` and makes the conditional prior network start at that mixture.
   By default the mixture has full covariances, each carried over as a factor analyser on
   ``w`` (``x = mean_k + B_k w + noise``, ``B_k`` its leading ``Dw`` principal axes); with
   ``covariance="diag"`` the last layer of ``prior_net`` gets zero weights and the
   mixture's means and log-variances as its bias, so ``p(x | w, z=k) = N(mean_k, diag
   var_k)`` for every ``w`` at the first SVI step. The encoder's ``x`` log-variance is set
   to the log of a tenth of the mixture's smallest component variance per dimension (its
   last layer's weights for those outputs set to zero), so that the first samples of
   ``q(x | y)`` stay within the clusters.

The GMVAE's prior over ``z`` is uniform, so the mixture's weights are not used. Both steps only
need the last layers of ``prior_net`` (and of the encoder, for the variance) to be
``torch.nn.Linear`` modules, which holds for every preset (:func:`last_linear` finds them).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from ppl_mixtures.models.gmvae import LOG_VAR_BOUND, GMVAENetworks

#: Initial variance of q(x | y) as a fraction of the smallest component variance of the start.
ENCODER_VARIANCE_FRACTION = 0.1
#: Rows per step of the pre-training (plain torch, cheap per step: small batches, more steps).
PRETRAIN_BATCH_SIZE = 128
#: Adam learning rate of the pre-training, whatever the SVI learning rate.
PRETRAIN_LR = 1e-3
#: Slope of the hidden units that carry w linearly in the factor-analyser start (tanh(0.01 w)
#: departs from 0.01 w by under 0.01 % for ``|w| < 1``, under 0.2 % for ``|w| < 4``). The
#: readout weights are the loadings divided by it. Slopes of 0.3 and 1 (less sensitive
#: first-layer weights) did not keep SVI from lowering the start's accuracy on digits
#: (seeds 0-2, ``bench/RESULTS.md``), so the default stays.
FACTOR_INPUT_SCALE = 0.01


def last_linear(module: nn.Module) -> nn.Linear | None:
    """The last ``nn.Linear`` of a module made of nested containers, if it ends with one.

    Follows the last child of every container (``nn.Sequential`` and the preset modules,
    whose last registered child is their output layer); None when the chain ends with
    anything else (an activation, a user layer).
    """
    while not isinstance(module, nn.Linear):
        children = list(module.children())
        if not children:
            return None
        module = children[-1]
    return module


def _reconstruction_loss(networks: GMVAENetworks, y: Tensor, weights: Tensor | None) -> Tensor:
    """Mean over rows (weighted) of the reconstruction error of ``y`` through ``x_loc``."""
    x_loc = networks.encode(y)[0]
    raw = networks.decoder(x_loc)
    if networks.likelihood == "bernoulli":
        errors = nn.functional.binary_cross_entropy_with_logits(raw, y, reduction="none")
    else:
        loc = raw[..., : networks.data_dim]  # fixed scale: the mean alone; learned: [loc, log_var]
        errors = (loc - y).pow(2)
    if weights is None:
        return errors.sum(-1).mean()
    return (errors.sum(-1) * weights).sum() / weights.sum().clamp(min=1e-12)


def pretrain_autoencoder(networks: GMVAENetworks, y: Tensor, epochs: int, batch_size: int,
                         lr: float, generator: torch.Generator,
                         weights: Tensor | None = None) -> list[float]:
    """Train ``encoder`` (its ``x`` mean) and ``decoder`` as an autoencoder, in place.

    Parameters
    ----------
    networks : GMVAENetworks
    y : Tensor, shape (N, D)
    epochs : int
        Passes over ``y``; 0 does nothing.
    batch_size : int
        Rows per Adam step; the rows are shuffled every epoch by ``generator``.
    lr : float
        Adam learning rate.
    generator : torch.Generator
        On the CPU; draws the permutations.
    weights : Tensor, shape (N,), optional
        Sample weights: each row's error counts in proportion (weighted mean per batch).

    Returns
    -------
    list of float
        The mean loss of every epoch (per row), for inspection.
    """
    parameters = [*networks.encoder.parameters(), *networks.decoder.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=lr)
    losses = []
    for _ in range(epochs):
        total = 0.0
        for index in torch.randperm(y.shape[0], generator=generator).split(batch_size):
            index = index.to(y.device)
            optimizer.zero_grad()
            loss = _reconstruction_loss(networks, y[index],
                                        None if weights is None else weights[index])
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * index.shape[0]
        losses.append(total / y.shape[0])
    return losses


def latent_means(networks: GMVAENetworks, y: Tensor, batch_size: int = 4096) -> Tensor:
    """Means of q(x | y) for every row, shape (N, Dx), without gradients."""
    with torch.no_grad():
        return torch.cat([networks.encode(chunk)[0] for chunk in y.split(batch_size)])


def gmm_start(networks: GMVAENetworks, y: Tensor, seed: int, mixture: type,
              n_init: int = 10, covariance: str = "factor",
              weights: Tensor | None = None, latents: Tensor | None = None,
              input_scale: float = FACTOR_INPUT_SCALE) -> np.ndarray:
    """Start the conditional prior at a GMM fitted to the latent means (in place).

    Parameters
    ----------
    networks : GMVAENetworks
        Its ``prior_net`` must end with an ``nn.Linear`` of ``2 K Dx`` outputs.
    y : Tensor, shape (N, D)
    seed : int
        ``random_state`` of the GMM (k-means starts).
    mixture : type
        The Gaussian mixture estimator to fit: a class with scikit-learn's
        ``GaussianMixture`` constructor, ``fit(X, sample_weight=...)``, ``means_`` and
        ``covariances_`` (the GMVAE passes :class:`ppl_mixtures.GaussianMixture`; given as an
        argument because the estimators layer imports this module, not the other way round).
    n_init : int, default 10
        Restarts of the GMM (the best likelihood is kept).
    covariance : {"factor", "diag"}, default "factor"
        ``"diag"``: a diagonal GMM; ``p(x | w, z=k)`` starts at ``N(mean_k, diag var_k)``, the
        same for every ``w``. ``"factor"``: a full-covariance GMM whose components are carried
        over as factor analysers, ``x = mean_k + B_k w + noise`` with ``B_k`` (Dx, Dw) the
        leading ``Dw`` principal axes of covariance ``k`` scaled by the square roots of their
        variances and the diagonal noise the rest of its diagonal: since ``w ~ N(0, I)``,
        ``p(x | z=k)`` starts at ``N(mean_k, B_k B_k^T + diag)``. It needs a ``prior_net`` of one
        Tanh hidden layer with at least ``Dw`` units (the presets'); others get ``"diag"``.
    weights : Tensor, shape (N,), optional
        Sample weights of the GMM fit.
    latents : Tensor, shape (N, Dx), optional
        The latent means, already computed (a stream's, :mod:`.gmvae_stream`); ``y`` is then
        not read.
    input_scale : float, default :data:`FACTOR_INPUT_SCALE` (0.01)
        ``"factor"`` only: the first ``Dw`` hidden units compute ``tanh(input_scale * w_j)``,
        nearly linear in ``w``, and the output layer reads them out with weights ``B_k /
        input_scale``. Smaller values make the start a closer factor analyser but the
        network more sensitive to its first layer's weights during SVI.

    Returns
    -------
    ndarray of int64, shape (N,)
        The GMM's clusters of the rows of ``y`` (what the GMVAE starts from).

    Raises
    ------
    ValueError
        When ``prior_net`` does not end with such a layer, or ``input_scale`` is not positive.
    """
    if not input_scale > 0:
        raise ValueError(f"input_scale={input_scale!r} must be positive (the slope of the "
                         "factor-analyser start, e.g. 0.01)")
    n_components, x_dim, w_dim = networks.n_components, networks.x_dim, networks.w_dim
    output = last_linear(networks.prior_net)
    if output is None or output.out_features != 2 * n_components * x_dim:
        raise ValueError(
            "init='gmm' needs a prior_net that ends with an nn.Linear of 2 * n_components * "
            "latent_dim outputs; pass init='random' with this network"
        )
    layers = list(networks.prior_net.children())
    factor = (covariance == "factor" and len(layers) == 3 and isinstance(layers[0], nn.Linear)
              and isinstance(layers[1], nn.Tanh) and layers[0].out_features >= w_dim
              and layers[0].in_features == w_dim)
    latents = latent_means(networks, y) if latents is None else latents
    values = latents.detach().cpu().double().numpy()
    spread = float(values.var(0).mean()) if values.shape[0] > 1 else 1.0
    gmm = mixture(
        n_components, covariance_type="full" if factor else "diag",
        reg_covar=1e-3 * spread + 1e-9, n_init=n_init, random_state=seed, progress=False,
        dtype="float64", device="cpu",
    ).fit(values, sample_weight=None if weights is None else weights.detach().cpu().numpy())
    dtype = output.bias.dtype
    means = torch.as_tensor(gmm.means_, dtype=dtype)
    if factor:
        covariances = torch.as_tensor(gmm.covariances_, dtype=torch.float64)  # (K, Dx, Dx)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariances)  # ascending
        top = min(w_dim, x_dim)
        loadings = eigenvectors[..., -top:] * eigenvalues[:, None, -top:].clamp(min=0).sqrt()
        residual = torch.diagonal(covariances, dim1=-2, dim2=-1) - loadings.pow(2).sum(-1)
        floor = 1e-3 * torch.diagonal(covariances, dim1=-2, dim2=-1)
        variances = torch.maximum(residual, floor)
    else:
        variances = torch.as_tensor(gmm.covariances_, dtype=torch.float64)
    log_vars = variances.log().clamp(-LOG_VAR_BOUND, LOG_VAR_BOUND).to(dtype)
    with torch.no_grad():
        output.weight.zero_()
        output.bias.copy_(torch.cat([means.reshape(-1), log_vars.reshape(-1)]).to(output.bias))
        if factor:  # tanh(eps w) ~ eps w on the first top hidden units, read out by B_k / eps
            hidden = layers[0]
            hidden.weight[:top].zero_()
            hidden.weight[:top, :top] = input_scale * torch.eye(top, dtype=dtype)
            hidden.bias[:top].zero_()
            # rows of the means: component k, latent dimension d at k * Dx + d
            readout = (loadings / input_scale).reshape(n_components * x_dim, top)
            output.weight[: n_components * x_dim, :top] = readout.to(dtype)
    _narrow_encoder(networks, log_vars.min(0).values + math.log(ENCODER_VARIANCE_FRACTION))
    return gmm.predict(values)


def _narrow_encoder(networks: GMVAENetworks, log_var: Tensor) -> None:
    """Make q(x | y) start with log-variance ``log_var`` (Dx,) for every row, if possible."""
    output = last_linear(networks.encoder)
    x_dim = networks.x_dim
    if output is None or output.out_features != 2 * (x_dim + networks.w_dim):
        return  # a user encoder of another form keeps its own variances
    rows = slice(x_dim, 2 * x_dim)  # outputs [x_loc, x_log_var, w_loc, w_log_var]
    with torch.no_grad():
        output.weight[rows] = 0.0
        output.bias[rows] = log_var.to(output.bias)
