"""A start for the GMVAE: autoencoder pre-training, then a mixture fitted in the latent space.

The recipe of VaDE (Jiang et al. 2017), carried over to the GMVAE of Dilokthanakul et al. (2016):

1. :func:`pretrain_autoencoder` trains the encoder's ``x`` mean and the decoder as a plain
   (deterministic) autoencoder, ``y -> x_loc(y) -> decoder``, minimising the reconstruction
   error of the observation model (squared error for a Gaussian, cross-entropy for a
   Bernoulli) with Adam, in plain torch.
2. :func:`gmm_start` fits :class:`ppl_mixtures.GaussianMixture` (EM, ``n_init`` restarts; with
   ``equal_weights`` each restart refined by EM with the weights fixed at ``1 / K``) to the
   latent means ``x_loc(y)`` and makes the conditional prior network start at that mixture.
   Of the equal-weight restarts, ``select="balance"`` keeps the one whose clusters have the
   most even sizes (the GMVAE's prior over z is uniform; on digits this picks restarts 1-11
   points more accurate than the highest likelihood does, ``bench/RESULTS.md``).
   By default the mixture has full covariances, each carried over as a factor analyser on
   ``w`` (``x = mean_k + B_k w + noise``, ``B_k`` its leading ``Dw`` principal axes, or with
   ``factor_fit="ml"`` the maximum-likelihood factor analyser, :func:`factor_analysers`; with
   ``rotate`` in the common principal axes of the covariances,
   :mod:`~ppl_mixtures.inference.gmvae_axes`); with
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
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ppl_mixtures.inference import gmvae_axes
from ppl_mixtures.inference.em import gmm as em_gmm
from ppl_mixtures.models.gmm import GMMParams
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
#: How the equal-weight restarts are ranked (:func:`gmm_start`'s ``select``): by their
#: likelihood, by the balance of their clusters' sizes (the GMVAE's uniform prior over z), or
#: by the likelihood less the clusters' divergence from equal sizes (:func:`restart_order`).
SELECTIONS = ("likelihood", "balance", "penalised")
#: How each full covariance of the start becomes a factor analyser (:func:`factor_analysers`).
FACTOR_FITS = ("pca", "ml")
#: Latent rows on which :func:`gmm_start`'s rotation checks the decoder's outputs unchanged.
ROTATION_PROBE_ROWS = 256
#: Iterations and relative tolerance of :func:`equal_weight_em`.
EQUAL_WEIGHT_MAX_ITER = 200
EQUAL_WEIGHT_TOL = 1e-7
#: Iterations and relative tolerance of the maximum-likelihood factor analysers
#: (:func:`factor_analysers` with ``method="ml"``).
FACTOR_FIT_MAX_ITER = 500
FACTOR_FIT_TOL = 1e-6


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
              input_scale: float = FACTOR_INPUT_SCALE,
              equal_weights: bool = False, w_encoder: bool = False,
              batches: Any = None, select: str = "likelihood",
              factor_fit: str = "pca", rotate: bool = False) -> np.ndarray:
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
    equal_weights : bool, default False
        Fit the mixture with its weights fixed at ``1 / K``, the GMVAE's uniform prior over
        z: each of the ``n_init`` restarts is a one-restart fit of ``mixture`` refined by
        :func:`equal_weight_em`, and the restart of the highest equal-weight likelihood is
        kept. False: ``mixture`` with ``n_init`` restarts, its weights free (and unused).
    w_encoder : bool, default False
        ``"factor"`` only: also start the encoder's ``w`` head (its ``w_loc`` and
        ``w_log_var`` outputs) at the factor analysers' posterior of ``w`` given each row's
        latent mean and its most probable component (:func:`start_w_encoder`), instead of
        the random head, so that the first SVI steps see ``w`` that explain ``x``.
    batches : iterable of Tensor, optional
        The rows ``y`` in batches, read once by ``w_encoder`` (a stream's); default
        ``y`` in chunks.
    select : {"likelihood", "balance", "penalised"}, default "likelihood"
        ``equal_weights`` only: which restart is kept. ``"likelihood"``: the highest
        equal-weight log-likelihood. ``"balance"``: the restart whose clusters (each row
        at its most probable component) have the most even sizes, i.e. the highest entropy
        of the cluster proportions, closest to the GMVAE's uniform prior over z; ties go to
        the higher likelihood. ``"penalised"``: the highest likelihood per row less the
        Kullback-Leibler divergence of the cluster proportions from ``1 / K``
        (:func:`restart_order`).
    factor_fit : {"pca", "ml"}, default "pca"
        ``"factor"`` only: how each full covariance becomes ``B_k B_k^T + diag`` (the
        ``method`` of :func:`factor_analysers`): its leading principal axes, or the
        maximum-likelihood factor analyser of ``Dw`` factors, closer to the full
        covariance.
    rotate : bool, default False
        ``"factor"`` only: first turn the latent space to the common principal axes of the
        mixture's covariances (:func:`~ppl_mixtures.inference.gmvae_axes.common_axes`,
        weighted by the clusters' sizes), absorbed by the encoder's ``x`` mean and the
        decoder's first layer (:func:`~ppl_mixtures.inference.gmvae_axes.
        rotate_latent_space`), so that the factor analysers' diagonals hold more of each
        covariance. Skipped when the networks are not of that form, or when ``Dw >= Dx``
        (the factors then hold the whole covariance).

    Returns
    -------
    ndarray of int64, shape (N,)
        The GMM's clusters of the rows of ``y`` (what the GMVAE starts from).

    Raises
    ------
    ValueError
        When ``prior_net`` does not end with such a layer, ``input_scale`` is not positive, or
        ``select`` or ``factor_fit`` is unknown, or ``select`` other than ``"likelihood"``
        without ``equal_weights``.
    """
    if factor_fit not in FACTOR_FITS:
        raise ValueError(f"factor_fit={factor_fit!r} is not one of {FACTOR_FITS}")
    if select not in SELECTIONS:
        raise ValueError(f"select={select!r} is not one of {SELECTIONS}")
    if select != "likelihood" and not equal_weights:
        raise ValueError(f"select={select!r} ranks the equal-weight restarts; pass "
                         "equal_weights=True, or select='likelihood'")
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
    row_weights = None if weights is None else weights.detach().cpu().double().numpy()
    options = dict(covariance_type="full" if factor else "diag", reg_covar=1e-3 * spread + 1e-9,
                   progress=False, dtype="float64", device="cpu")
    if equal_weights:
        gmm_means, gmm_covariances, labels = _equal_weight_mixture(
            values, row_weights, n_components, seed, n_init, mixture, options, select)
    else:
        gmm = mixture(n_components, n_init=n_init, random_state=seed, **options).fit(
            values, sample_weight=row_weights)
        gmm_means, gmm_covariances, labels = gmm.means_, gmm.covariances_, gmm.predict(values)
    if factor and rotate and min(w_dim, x_dim) < x_dim:  # full rank: nothing left to turn
        sizes = np.bincount(labels, weights=row_weights, minlength=n_components) + 1.0
        turn = gmvae_axes.common_axes(gmm_covariances, sizes).numpy()
        if gmvae_axes.rotate_latent_space(networks, torch.as_tensor(turn),
                                          latents[:ROTATION_PROBE_ROWS],
                                          last_linear(networks.encoder)):
            gmm_means = np.asarray(gmm_means) @ turn
            gmm_covariances = turn.T @ np.asarray(gmm_covariances) @ turn
    top = min(w_dim, x_dim)
    dtype = output.bias.dtype
    means = torch.as_tensor(gmm_means, dtype=dtype)
    if factor:
        covariances = torch.as_tensor(gmm_covariances, dtype=torch.float64)  # (K, Dx, Dx)
        loadings, variances = factor_analysers(covariances, top, factor_fit)
    else:
        variances = torch.as_tensor(gmm_covariances, dtype=torch.float64)
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
    if w_encoder and factor:
        padded = torch.zeros(n_components, x_dim, w_dim, dtype=torch.float64)
        padded[..., :top] = loadings
        start_w_encoder(networks, y.split(4096) if batches is None else batches,
                        means.double(), padded, log_vars.double().exp())
    return np.asarray(labels, dtype=np.int64)


def factor_analysers(covariances: Tensor, rank: int, method: str = "pca",
                     max_iter: int = FACTOR_FIT_MAX_ITER, tol: float = FACTOR_FIT_TOL,
                     start: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Each covariance as a factor analyser ``B_k B_k^T + diag(psi_k)`` of ``rank`` factors.

    Parameters
    ----------
    covariances : Tensor, shape (K, D, D), float64
    rank : int
        Factors (columns of ``B_k``), at most D.
    method : {"pca", "ml"}, default "pca"
        ``"pca"``: ``B_k`` the leading ``rank`` principal axes scaled by the square roots of
        their variances, ``psi_k`` the rest of the diagonal (the marginal variances are kept
        exactly). ``"ml"``: the factor analyser closest to the covariance in Gaussian
        likelihood (Kullback-Leibler divergence from ``N(0, S_k)``), by the fixed point of
        Jöreskog (1967) as scikit-learn's ``FactorAnalysis`` runs it: ``B = Psi^1/2 U (L -
        I)_+^1/2`` from the leading eigenpairs ``(L, U)`` of ``Psi^-1/2 S Psi^-1/2``, then
        ``psi = diag(S - B B^T)``, started at ``"pca"``.
    max_iter, tol : int, float
        ``"ml"`` only: stop when no ``psi`` changes by more than ``tol`` relative.
    start : Tensor, shape (K, D), optional
        ``"ml"`` only: the ``psi`` to start from instead of the ``"pca"`` ones.

    Returns
    -------
    loadings : Tensor, shape (K, D, rank)
    variances : Tensor, shape (K, D)
        ``psi_k``, at least ``1e-3`` times the diagonal of ``S_k``.
    """
    diagonal = torch.diagonal(covariances, dim1=-2, dim2=-1)
    floor = 1e-3 * diagonal
    eigenvalues, eigenvectors = torch.linalg.eigh(covariances)  # ascending
    loadings = eigenvectors[..., -rank:] * eigenvalues[:, None, -rank:].clamp(min=0).sqrt()
    variances = torch.maximum(diagonal - loadings.pow(2).sum(-1), floor)
    if method == "pca":
        return loadings, variances
    if start is not None:
        variances = torch.maximum(start, floor)
    for _ in range(max_iter):
        root = variances.sqrt()
        scaled = covariances / (root[:, :, None] * root[:, None, :])
        eigenvalues, eigenvectors = torch.linalg.eigh(scaled)
        loadings = root[:, :, None] * eigenvectors[..., -rank:] * (
            eigenvalues[:, None, -rank:] - 1).clamp(min=0).sqrt()
        updated = torch.maximum(diagonal - loadings.pow(2).sum(-1), floor)
        change = float(((updated - variances).abs() / variances).max())
        variances = updated
        if change <= tol:
            break
    return loadings, variances


def start_w_encoder(networks: GMVAENetworks, batches: Any, means: Tensor, loadings: Tensor,
                    variances: Tensor, ridge: float = 1e-4) -> None:
    """Set the encoder's ``w`` head to the factor analysers' posterior of ``w`` (in place).

    Component k is ``x = mean_k + B_k w + e``, ``e ~ N(0, diag variances_k)``, ``w ~ N(0, I)``;
    given ``x`` its posterior is ``N(M B_k^T Psi^-1 (x - mean_k), M)`` with ``M = (I + B_k^T
    Psi^-1 B_k)^-1``. Every row's latent mean ``x_bar`` takes the component of highest density
    (equal weights), and the head (the ``w_loc`` and ``w_log_var`` rows of the encoder's last
    ``nn.Linear``) is the ridge least-squares map from that layer's input to the posterior
    means and log-variances, from sums accumulated batch by batch (one pass).

    Parameters
    ----------
    networks : GMVAENetworks
    batches : iterable of Tensor
        Rows y, shape (B, D) each.
    means : Tensor, shape (K, Dx)
    loadings : Tensor, shape (K, Dx, Dw)
    variances : Tensor, shape (K, Dx)
    ridge : float
        Added to the diagonal of the features' covariance, relative to its mean diagonal
        (the intercept is not penalised).
    """
    output = last_linear(networks.encoder)
    x_dim, w_dim = networks.x_dim, networks.w_dim
    if output is None or output.out_features != 2 * (x_dim + w_dim):
        return
    inverse_psi = 1.0 / variances  # (K, Dx)
    eye = torch.eye(w_dim, dtype=torch.float64)
    precision = eye + torch.einsum("kdi,kd,kdj->kij", loadings, inverse_psi, loadings)
    posterior_cov = torch.linalg.inv(precision)  # (K, Dw, Dw)
    gain = posterior_cov @ (loadings * inverse_psi[..., None]).transpose(1, 2)  # (K, Dw, Dx)
    log_var = torch.diagonal(posterior_cov, dim1=-2, dim2=-1).log()  # (K, Dw)
    covariances = loadings @ loadings.transpose(1, 2) + torch.diag_embed(variances)
    captured: list[Tensor] = []
    hook = output.register_forward_hook(lambda module, args, result: captured.append(args[0]))
    gram, cross = None, None
    try:
        with torch.no_grad():
            for y in batches:
                captured.clear()
                x_bar = networks.encode(y)[0].double()
                features = captured[-1].double().reshape(x_bar.shape[0], -1)
                features = torch.cat([features, features.new_ones(features.shape[0], 1)], 1)
                component = _gaussian_log_densities(x_bar, means, covariances).argmax(1)
                centred = (x_bar - means[component])[..., None]  # (B, Dx, 1)
                target = torch.cat([(gain[component] @ centred)[..., 0], log_var[component]], 1)
                gram = features.T @ features if gram is None else gram + features.T @ features
                cross = features.T @ target if cross is None else cross + features.T @ target
    finally:
        hook.remove()
    if gram is None:
        return
    # ridge on the centred features, the intercept unpenalised: from the sums in gram, cross
    count = gram[-1, -1]
    mean_features, mean_target = gram[:-1, -1] / count, cross[-1] / count
    covariance = gram[:-1, :-1] / count - torch.outer(mean_features, mean_features)
    covariance_target = cross[:-1] / count - torch.outer(mean_features, mean_target)
    size = covariance.shape[0]
    penalty = ridge * covariance.diagonal().mean().clamp(min=1e-12)
    weight = torch.linalg.solve(covariance + penalty * torch.eye(size, dtype=torch.float64),
                                covariance_target)  # (H, 2 Dw)
    bias = mean_target - mean_features @ weight
    rows = slice(2 * x_dim, 2 * x_dim + 2 * w_dim)
    with torch.no_grad():
        output.weight[rows] = weight.T.to(output.weight)
        output.bias[rows] = bias.to(output.bias)


def _gaussian_log_densities(values: Tensor, means: Tensor, covariances: Tensor) -> Tensor:
    """``log N(values_n | means_k, covariances_k)``, shape (N, K); covariances (K, D, D)."""
    cholesky = torch.linalg.cholesky(covariances)
    diff = (values[None] - means[:, None]).transpose(1, 2)  # (K, D, N)
    solved = torch.linalg.solve_triangular(cholesky, diff, upper=False)
    log_det = 2 * torch.diagonal(cholesky, dim1=-2, dim2=-1).log().sum(-1)
    dim = values.shape[1]
    return -0.5 * (solved.pow(2).sum(1) + log_det[:, None] + dim * math.log(2 * math.pi)).T


def equal_weight_em(values: Tensor, means: Tensor, covariances: Tensor, reg_covar: float,
                    weights: Tensor | None = None, diagonal: bool = False,
                    max_iter: int = EQUAL_WEIGHT_MAX_ITER, tol: float = EQUAL_WEIGHT_TOL,
                    ) -> tuple[Tensor, Tensor, float]:
    """EM for a Gaussian mixture whose weights are fixed at ``1 / K``, from a start.

    The GMVAE's prior over z is uniform, so its start is the maximum-likelihood mixture of
    equal weights: the E-step's responsibilities are the softmax of ``log N(x_n | mu_k,
    Sigma_k)`` over k (the ``log pi_k`` are all ``-log K``), the M-step updates only the means
    and covariances (``reg_covar`` added to each diagonal; off-diagonals dropped with
    ``diagonal``). Each iteration is the GMM's EM step
    (:func:`ppl_mixtures.inference.em.gmm.e_step` and :func:`~ppl_mixtures.inference.em.gmm.
    m_step`, ``"full"`` or ``"diag"``) with the weights put back to ``1 / K``.

    Parameters
    ----------
    values : Tensor, shape (N, D), float64
    means : Tensor, shape (K, D)
    covariances : Tensor, shape (K, D, D)
        With ``diagonal``, only their diagonals are read.
    reg_covar : float
        Added to every variance, as is (not rescaled to the data's spread).
    weights : Tensor, shape (N,), optional
        Sample weights.
    diagonal : bool, default False
    max_iter : int
    tol : float
        Stop when the mean log-likelihood changes by less than ``tol`` times its size.

    Returns
    -------
    means : Tensor, shape (K, D)
    covariances : Tensor, shape (K, D, D)
        Diagonal matrices with ``diagonal``.
    log_likelihood : float
        Mean log-likelihood per (weighted) row under the equal-weight mixture.
    """
    covariance_type = "diag" if diagonal else "full"
    if diagonal:
        covariances = torch.diagonal(covariances, dim1=-2, dim2=-1)
    params, log_likelihood = _equal_weight_em(values, means, covariances, covariance_type,
                                              reg_covar, weights, max_iter, tol)
    covariances = params.covariances
    if diagonal:
        covariances = torch.diag_embed(covariances)
    return params.means, covariances, log_likelihood


def _equal_weight_em(values: Tensor, means: Tensor, covariances: Tensor, covariance_type: str,
                     reg_covar: float, weights: Tensor | None, max_iter: int, tol: float,
                     ) -> tuple[GMMParams, float]:
    """:func:`equal_weight_em` on the GMM's parameters: covariances (K, D, D) for
    ``"full"``, (K, D) for ``"diag"``; returns the parameters (weights ``1 / K``) and the
    mean log-likelihood per (weighted) row."""
    n_components = means.shape[0]
    equal = torch.full((n_components,), 1.0 / n_components, dtype=means.dtype)
    params = GMMParams(equal, means, covariances, covariance_type)
    previous = -math.inf
    for _ in range(max_iter):
        stats = em_gmm.e_step(values, params, weights)
        log_likelihood = float(stats.log_likelihood) / float(stats.n_samples)
        if abs(log_likelihood - previous) <= tol * abs(log_likelihood):
            return params, log_likelihood
        previous = log_likelihood
        fitted = em_gmm.m_step(stats, covariance_type, reg_covar, floor=reg_covar)
        params = GMMParams(equal, fitted.means, fitted.covariances, covariance_type)
    stats = em_gmm.e_step(values, params, weights)
    return params, float(stats.log_likelihood) / float(stats.n_samples)


def restart_order(log_likelihood: float, labels: np.ndarray, weights: np.ndarray | None,
                  n_components: int, select: str = "likelihood") -> tuple[float, ...]:
    """The key that ranks an equal-weight restart (larger is better).

    Parameters
    ----------
    log_likelihood : float
        Mean equal-weight log-likelihood per row.
    labels : ndarray of int, shape (N,)
        Each row's most probable component.
    weights : ndarray, shape (N,), optional
        Sample weights (the cluster sizes are weighted counts).
    n_components : int
    select : {"likelihood", "balance", "penalised"}
        ``"likelihood"``: ``(log_likelihood,)``. ``"balance"``: ``(H, log_likelihood)`` with
        ``H = -sum_k p_k log p_k`` the entropy of the cluster proportions ``p_k`` (at most
        ``log K``, for clusters of equal sizes). ``"penalised"``: ``(log_likelihood - (log K -
        H),)``, the likelihood less ``KL(p || 1 / K)``.

    Returns
    -------
    tuple of float
    """
    if select == "likelihood":
        return (log_likelihood,)
    sizes = np.bincount(labels, weights=weights, minlength=n_components).astype(np.float64)
    proportions = sizes[sizes > 0] / sizes.sum()
    entropy = float(-(proportions * np.log(proportions)).sum())
    if select == "penalised":
        return (log_likelihood - (math.log(n_components) - entropy),)
    return (entropy, log_likelihood)


def _equal_weight_mixture(values: np.ndarray, weights: np.ndarray | None, n_components: int,
                          seed: int, n_init: int, mixture: type, options: dict,
                          select: str = "likelihood",
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best of ``n_init`` equal-weight mixtures, each EM (:func:`equal_weight_em`) started
    at a one-restart fit of ``mixture``; returns means, covariances (full (K, D, D) or
    diagonal (K, D) as ``options`` asks) and the rows' clusters.

    The first restart of the highest :func:`restart_order` (``select``) wins. A restart whose
    start is the same, bit for bit, as an earlier one's (frequent on small data: 58 of 90 on
    100 rows) would give the same EM, the same likelihood and the same clusters, so it is
    skipped without changing the choice.
    """
    covariance_type = options["covariance_type"]
    data = torch.as_tensor(values, dtype=torch.float64)
    row_weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
    seeds = np.random.default_rng(seed).integers(0, 2**31 - 1, size=n_init)
    best = None
    seen = set()
    for restart_seed in seeds:
        gmm = mixture(n_components, n_init=1, random_state=int(restart_seed), **options).fit(
            values, sample_weight=weights)
        start = (np.asarray(gmm.means_).tobytes(), np.asarray(gmm.covariances_).tobytes())
        if start in seen:
            continue
        seen.add(start)
        fitted = _equal_weight_em(
            data, torch.as_tensor(gmm.means_, dtype=torch.float64),
            torch.as_tensor(gmm.covariances_, dtype=torch.float64), covariance_type,
            options["reg_covar"], row_weights, EQUAL_WEIGHT_MAX_ITER, EQUAL_WEIGHT_TOL)
        labels = em_gmm.responsibilities(data, fitted[0])[0].argmax(1).numpy()
        key = restart_order(fitted[1], labels, weights, n_components, select)
        if best is None or key > best[0]:
            best = (key, fitted[0], labels)
    _, params, labels = best
    return params.means.numpy(), params.covariances.numpy(), labels


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
