"""scikit-learn style estimator for the Gaussian mixture VAE (Dilokthanakul et al. 2016).

:class:`GMVAE` builds the networks and the Pyro model of :mod:`ppl_mixtures.models.gmvae` and
fits them with :class:`~ppl_mixtures.inference.svi.SVITrainer` (``TraceEnum_ELBO``, Adam,
minibatches, checkpoints). Unlike the other mixtures its likelihood is intractable:
``score_samples`` is a Monte Carlo estimate of the ELBO, a lower bound of ``log p(y)``, and
the estimator does not offer ``bic``/``aic`` (``hasattr(GMVAE(), "bic")`` is False).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.base import TransformerMixin
from sklearn.utils.metaestimators import available_if
from torch import nn

from ppl_mixtures._rng import keeps_global_rng
from ppl_mixtures.estimators._base import MixtureEstimator
from ppl_mixtures.estimators._gmvae_fit import GMVAEFitting
from ppl_mixtures.estimators._validation import check_int
from ppl_mixtures.inference import gmvae_pretrain
from ppl_mixtures.inference.init import resolve_generator
from ppl_mixtures.models import gmvae

TRANSFORM_LATENTS = ("x", "w")


def _no_information_criteria(estimator: Any) -> bool:
    raise AttributeError(
        "GMVAE has no tractable likelihood and no meaningful parameter count, so it offers "
        "no bic/aic; compare models with score(X) (the ELBO) on held-out data instead"
    )


class GMVAE(GMVAEFitting, TransformerMixin, MixtureEstimator):
    """Gaussian mixture variational autoencoder: deep clustering by SVI (Dilokthanakul et al. 2016).

    Parameters
    ----------
    n_components : int, default 10
        Number of clusters K.
    preset : {"auto", "synthetic", "digits_mlp", "digits_conv", "mnist_mlp", "mnist_conv", \
"svhn_conv"}, default "auto"
        Network sizes from the appendix of Dilokthanakul et al. (2016) (``"synthetic"``, ``"mnist_conv"``,
        ``"svhn_conv"``; ``"mnist_mlp"`` replaces the convolutions by fully connected layers),
        or small latents for 8x8 digits (``"digits_mlp"``, ``"digits_conv"``); see
        :data:`ppl_mixtures.models.gmvae.PRESETS`. ``"auto"`` takes ``"synthetic"`` up to 16
        features and ``"digits_mlp"`` above (``preset_`` holds the choice). Convolutional
        presets need flattened square images. The arguments below override parts of it.
    latent_dim : int, optional
        Dimension of x (the clustered latent); default from ``preset``.
    w_dim : int, optional
        Dimension of w; default from ``preset``.
    hidden_dims : tuple of int, optional
        Hidden widths of the encoder and of the decoder; default from ``preset``.
    prior_hidden_dims : tuple of int, optional
        Hidden widths of the conditional prior network; default from ``preset``.
    networks : dict of str to torch.nn.Module, optional
        User modules replacing presets, keyed ``"encoder"``, ``"prior_net"``, ``"decoder"``
        (contract in :mod:`ppl_mixtures.models.gmvae`). They are deep-copied at ``fit``.
    likelihood : {"gaussian", "bernoulli"}, default "gaussian"
        p(y | x), eq. (1d). Bernoulli needs data in [0, 1].
    observation_variance : float or None, default 0.01
        Gaussian likelihood: the fixed variance of p(y | x) as a fraction of the data's mean
        per-feature variance (``observation_scale_`` holds the resulting standard deviation).
        None learns it, which on low-dimensional data lets the decoder explain y alone and
        collapses every point into one cluster (measured on pinwheel: ARI 0.0 learned,
        0.975-0.985 fixed at 0.01-0.05 of the data variance).
    z_inference : {"enumerate", "closed_form"}, default "enumerate"
        ``"enumerate"``: z summed out exactly, inside the model's ``"x"`` site (no discrete
        site to enumerate; ``GMVAEModel(z_site=True)`` enumerates one, with the same ELBO).
        ``"closed_form"``: the four-term ELBO of eq. (4) with the z-posterior p(z | x, w),
        which admits ``free_bits`` and ``z_prior_weight``.
    free_bits : float, default 0.0
        lambda of eq. (7): the z-prior term is ``-max(lambda, KL(p(z|x,w) || p(z)))``. Needs
        ``z_inference="closed_form"`` when positive.
    z_prior_weight : float, default 1.0
        Weight of the z-prior term (``"closed_form"`` only).
    num_particles : int, default 1
        Monte Carlo samples M of (x, w) per data point and step.
    max_iter : int, default 100
        Epochs (passes over the data); SVI steps = ``max_iter * ceil(n_samples / batch_size)``.
    batch_size : int, default 128
        Rows per SVI step. A stream of batches (``fit(loader)``, ``fit(NpyBatches(path))``,
        a callable returning a new iterator per pass) is fitted one step per batch of its
        own, pre-training and GMM start included, with the result of the in-memory fit fed
        the same batches (:mod:`ppl_mixtures.inference.gmvae_stream`, ``docs/scaling.md``).
    lr : float, default 1e-3
        Adam learning rate (Dilokthanakul et al. use 1e-4).
    tol : float, default 0.0
        Early stopping of the trainer (relative change of the smoothed loss); 0 disables it.
    pretrain_epochs : int, default 100
        Epochs of autoencoder pre-training before SVI (the recipe of VaDE, Jiang et al. 2017):
        the encoder's x mean and the decoder minimise the reconstruction error, in plain
        torch, with Adam (learning rate 1e-3, batches of 128 rows), to give the GMM start
        of ``init`` a latent space; only with that start. 0: the GMM is fitted to the
        latents of the random encoder.
    init : {"auto", "gmm", "random"}, default "auto"
        Start of the mixture. ``"gmm"``: after the pre-training, a full-covariance
        :class:`~ppl_mixtures.GaussianMixture` (``init_restarts``) is fitted to the encoder's x
        means and the conditional prior network starts at it, each component carried over
        as a factor analyser on w (diagonal when the prior network is not a one-hidden-layer
        Tanh MLP); q(x | y) starts narrower than the clusters. It needs a ``prior_net``
        ending with an ``nn.Linear``, is skipped with fewer rows than ``n_components`` and,
        distributed, runs on each rank's shard before rank 0's networks are broadcast.
        ``"random"``: the networks' random weights, without pre-training (the estimator of
        earlier releases). ``"auto"``: ``"gmm"`` when the data have more features than
        ``latent_dim``, else ``"random"`` (on 2-D data a Gaussian start splits curved
        clusters). See :mod:`ppl_mixtures.inference.gmvae_pretrain`; measured in
        ``bench/RESULTS.md``.
    init_factor_scale : float, default 0.01
        ``init="gmm"`` only: slope of the prior network's hidden units that carry ``w`` in
        the factor-analyser start, ``tanh(init_factor_scale * w)``, read out by the loadings
        divided by it (``input_scale`` of
        :func:`~ppl_mixtures.inference.gmvae_pretrain.gmm_start`).
    init_factor_fit : {"ml", "pca"}, default "ml"
        ``init="gmm"`` with the factor start only: how each full covariance of the latent
        mixture becomes the prior network's factor analyser ``B_k B_k^T + diag`` with
        ``w_dim`` factors: the maximum-likelihood factor analyser (``"ml"``,
        :func:`~ppl_mixtures.inference.gmvae_pretrain.factor_analysers`), closer to the
        full covariance, or its leading principal axes (``"pca"``, the default before this
        release).
    init_rotate : bool, default True
        ``init="gmm"`` with the factor start only: before carrying the covariances over,
        turn the latent space to their common principal axes (an orthogonal map taken up by
        the encoder's x mean and the decoder's first layer, so the autoencoder is
        unchanged), where the factor analysers' diagonals hold more of each covariance
        (:mod:`ppl_mixtures.inference.gmvae_axes`); on digits the start (with
        ``init_factor_fit="ml"``) was more accurate on every seed (``bench/RESULTS.md``).
        False with ``init_factor_fit="pca"`` is the start of earlier releases.
    init_restarts : int, default 90
        ``init="gmm"`` only: restarts of the mixture fitted in the latent space (the one
        ``init_select`` ranks first is kept; 10 before this release). Each is a one-restart GMM
        fit and an equal-weight EM (skipped when its GMM repeats an earlier restart's): about
        a fifth of an M = 1 fit on digits; fewer restarts for quick experiments.
    init_equal_weights : bool, default True
        ``init="gmm"`` only: fit that mixture with its weights fixed at ``1 / K``, the
        GMVAE's uniform prior over z (each restart refined by EM with equal weights,
        :func:`~ppl_mixtures.inference.gmvae_pretrain.equal_weight_em`); its likelihood
        ranks the restarts by accuracy better on digits than the free-weight likelihood.
    init_select : {"auto", "balance", "penalised", "likelihood"}, default "auto"
        ``init="gmm"`` only: which of the ``init_restarts`` restarts starts the GMVAE.
        ``"balance"``: the one whose clusters (each row at its most probable component) have
        the most even sizes (highest entropy of the cluster proportions; ties to the higher
        likelihood), the sizes the GMVAE's uniform prior over z expects. ``"penalised"``:
        the highest likelihood per row less the divergence of the cluster proportions from
        ``1 / K``. ``"likelihood"``: the highest likelihood (the earlier behaviour). The
        first two need ``init_equal_weights=True``; ``"auto"``: ``"balance"`` with equal
        weights, else ``"likelihood"``. On digits ``"balance"`` was the most accurate on
        every seed, but on classes of very unequal sizes (44-180 images) its start lost 6
        points to ``"likelihood"`` (``bench/RESULTS.md``): when the clusters may have very
        unequal sizes, pass ``"likelihood"``.
    freeze_prior : {"auto", True, False}, default "auto"
        Keep the conditional prior network at its start for the whole fit (SVI trains the
        encoder and the decoder only; ``GMVAEModel(freeze_prior=True)``): the mixture stays
        the GMM start's. ``"auto"``: frozen after the GMM start, trained after a random one
        (``init_`` says which ran): on digits, training it moved every run 3-7 points away
        from its start, up or down (``bench/RESULTS.md``). ``False`` (with
        ``init_restarts=10, init_equal_weights=False``) is the earlier behaviour.
    init_w_encoder : bool, default False
        ``init="gmm"`` with the factor start only: start the encoder's ``w`` head at the
        factor analysers' posterior of w given each row's latent mean and component
        (:func:`~ppl_mixtures.inference.gmvae_pretrain.start_w_encoder`) instead of its
        random weights.
    predict_w : {"marginal", "mean"}, default "marginal"
        How :meth:`predict_proba` (and :meth:`predict`) treat ``w``. ``"marginal"``: the
        z-posterior ``p(z | x_bar)`` at the mean ``x_bar`` of q(x | y), w integrated out over
        its prior N(0, I) by ``predict_w_draws`` fixed quasi-random draws (deterministic; the
        same for every row). ``"mean"``: ``p(z | x_bar, w_bar)`` at the means of q(x | y) and
        q(w | y) (earlier releases), which ignores each cluster's spread along w.
    predict_w_draws : int, default 256
        Draws of w for ``predict_w="marginal"`` (enough for a small ``w_dim``).
    device : str, default "auto"
    dtype : {"float32", "float64", None}, default "float32"
        None follows the data.
    random_state : int, RandomState, Generator or None
        Seeds the network initialisation and the SVI run.
    progress : bool, default True
    checkpoint_path : str, optional
        SVI checkpoint; ``fit(X, resume=True)`` continues from it (distributed: one file per
        rank, see :class:`~ppl_mixtures.inference.svi.SVITrainer`).
    distributed : bool, default False
        Data-parallel SVI over an initialised ``torch.distributed`` process group (launch
        with ``torchrun``, call :func:`ppl_mixtures.distributed.init_from_env`): the ``X``
        given to :meth:`fit` on each rank is its shard, gradients are summed over ranks with
        each shard's likelihood scaled so that every step is the single-process step on all
        the data, and rank 0's initial networks are broadcast. The fixed observation
        variance is set from all ranks' data, every rank takes as many steps per epoch as the
        largest shard needs, and ``lower_bound_`` is the mean ELBO over all ranks.

    Attributes
    ----------
    networks_ : GMVAENetworks
        The trained networks.
    model_ : GMVAEModel
        The Pyro model; ``guide_`` is its guide ``model_.guide``.
    params_ : dict of str to Tensor
        The networks' parameters.
    history_ : list of float
        Loss (negative objective per sample) at every SVI step.
    n_iter_ : int
        SVI steps taken. ``converged_`` is True when early stopping fired.
    lower_bound_ : float
        Mean ELBO per sample on the training data (:meth:`score`).
    preset_ : str
        The preset used (``preset`` itself, or what ``"auto"`` chose).
    init_ : str
        The start used, ``"gmm"`` or ``"random"`` (what ``"auto"`` chose).
    pretrain_history_ : list of float
        Mean reconstruction loss per row of every pre-training epoch (empty without it, and
        after a resumed fit, which restores the networks from the checkpoint).
    n_features_in_, fit_seconds_
    """

    def __init__(
        self,
        n_components: int = 10,
        *,
        preset: str = "auto",
        latent_dim: int | None = None,
        w_dim: int | None = None,
        hidden_dims: tuple[int, ...] | None = None,
        prior_hidden_dims: tuple[int, ...] | None = None,
        networks: dict[str, nn.Module] | None = None,
        likelihood: str = "gaussian",
        observation_variance: float | None = 0.01,
        z_inference: str = "enumerate",
        free_bits: float = 0.0,
        z_prior_weight: float = 1.0,
        num_particles: int = 1,
        max_iter: int = 100,
        batch_size: int = 128,
        lr: float = 1e-3,
        tol: float = 0.0,
        pretrain_epochs: int = 100,
        init: str = "auto",
        init_factor_scale: float = gmvae_pretrain.FACTOR_INPUT_SCALE,
        init_factor_fit: str = "ml",
        init_rotate: bool = True,
        init_restarts: int = 90,
        init_equal_weights: bool = True,
        init_select: str = "auto",
        freeze_prior: Any = "auto",
        init_w_encoder: bool = False,
        predict_w: str = "marginal",
        predict_w_draws: int = 256,
        device: str = "auto",
        dtype: Any = "float32",
        random_state: Any = None,
        progress: bool = True,
        checkpoint_path: str | None = None,
        distributed: bool = False,
    ) -> None:
        self.n_components = n_components
        self.preset = preset
        self.latent_dim = latent_dim
        self.w_dim = w_dim
        self.hidden_dims = hidden_dims
        self.prior_hidden_dims = prior_hidden_dims
        self.networks = networks
        self.likelihood = likelihood
        self.observation_variance = observation_variance
        self.z_inference = z_inference
        self.free_bits = free_bits
        self.z_prior_weight = z_prior_weight
        self.num_particles = num_particles
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.lr = lr
        self.tol = tol
        self.pretrain_epochs = pretrain_epochs
        self.init = init
        self.init_factor_scale = init_factor_scale
        self.init_factor_fit = init_factor_fit
        self.init_rotate = init_rotate
        self.init_restarts = init_restarts
        self.init_equal_weights = init_equal_weights
        self.init_select = init_select
        self.freeze_prior = freeze_prior
        self.init_w_encoder = init_w_encoder
        self.predict_w = predict_w
        self.predict_w_draws = predict_w_draws
        self.device = device
        self.dtype = dtype
        self.random_state = random_state
        self.progress = progress
        self.checkpoint_path = checkpoint_path
        self.distributed = distributed

    #: The one inference path (a class attribute, not an argument).
    inference = "svi"
    _inference_methods = ("svi",)
    _distributed_inference_methods = ("svi",)
    #: Streams of batches are fitted by SVI too (:mod:`ppl_mixtures.inference.gmvae_stream`).
    _stream_inference_methods = ("svi",)

    def __sklearn_tags__(self):
        """scikit-learn's tags: ``transform`` returns the fit's dtype (float32 by default)."""
        tags = super().__sklearn_tags__()
        if self.dtype is None:
            tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        else:
            tags.transformer_tags.preserves_dtype = [str(self.dtype).removeprefix("torch.")]
        return tags

    # ---------------------------------------------------------------------------- prediction

    def _log_joint(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(z = k) + log p(x_bar | z = k)``, shape (N, K), w as ``predict_w`` says.

        ``"marginal"``: w integrated out over its prior; ``"mean"``: at q(w | y)'s mean.
        """
        if self.predict_w == "mean":
            return gmvae.cluster_log_joint(self.networks_, x)
        draws = gmvae.prior_w_draws(self.networks_.w_dim, self.predict_w_draws, x.dtype,
                                    x.device)
        return gmvae.marginal_log_joint(self.networks_, x, draws)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Cluster probabilities ``p(z | x_bar)``, shape (n_samples, n_components).

        The model's z-posterior at the mean ``x_bar`` of the encoder's q(x | y), with w
        integrated out over its prior (``predict_w="marginal"``, the default, by
        ``predict_w_draws`` fixed draws: repeated calls agree), or at the mean ``w_bar`` of
        q(w | y) (``predict_w="mean"``, eq. 3 at ``(x_bar, w_bar)``). :meth:`predict` is its
        argmax.
        """
        return super().predict_proba(X)

    @keeps_global_rng
    def transform(self, X: Any, latent: str = "x") -> np.ndarray:
        """Posterior means of a latent under the encoder.

        Parameters
        ----------
        X : array-like, shape (n_samples, n_features)
        latent : {"x", "w"}, default "x"
            ``"x"``: mean of q(x | y), shape (n_samples, latent_dim), the space where the
            clusters live. ``"w"``: mean of q(w | y), shape (n_samples, w_dim).

        Returns
        -------
        ndarray
        """
        if latent not in TRANSFORM_LATENTS:
            raise ValueError(f"latent={latent!r} is not one of {TRANSFORM_LATENTS}")
        x = self._fitted_x(X)
        with torch.no_grad():
            x_loc, _, w_loc, _ = self.networks_.encode(x)
        return (x_loc if latent == "x" else w_loc).cpu().numpy()

    def score_samples(self, X: Any, num_particles: int | None = None) -> np.ndarray:
        """Monte Carlo ELBO of every sample, a lower bound of ``log p(y_n)``; shape (n_samples,).

        The ELBO with z summed out (no free bits, prior weight 1), whatever the training
        objective, averaged over ``num_particles`` draws of (x, w) (default: the estimator's).
        The draws are common random numbers from ``random_state`` (the same standard normal
        noise for every row), so a row's score does not depend on the other rows or their
        order, and repeated calls agree; the global random streams are not used.
        """
        x = self._fitted_x(X)
        particles = num_particles or self.num_particles
        generator = resolve_generator(self.random_state)
        noise = tuple(torch.randn((particles, size), generator=generator, dtype=x.dtype).to(
            x.device) for size in (self.networks_.w_dim, self.networks_.x_dim))
        with torch.no_grad():
            return gmvae.elbo_per_sample(self.networks_, x, particles,
                                         noise=noise).cpu().numpy()

    def score(self, X: Any, y: Any = None) -> float:
        """Mean ELBO per sample (a lower bound of the mean log-likelihood, not the likelihood)."""
        return float(self.score_samples(X).mean())

    @available_if(_no_information_criteria)
    def bic(self, X: Any) -> float:  # pragma: no cover - never available
        raise NotImplementedError

    @available_if(_no_information_criteria)
    def aic(self, X: Any) -> float:  # pragma: no cover - never available
        raise NotImplementedError

    def _n_parameters(self) -> int:
        return sum(p.numel() for p in self.networks_.parameters())

    @keeps_global_rng
    def sample(
        self, n_samples: int = 1, component: int | None = None, observation: str = "sample"
    ) -> tuple[np.ndarray, np.ndarray]:
        """Draw from the generative model, eqs. (1a-1d).

        Parameters
        ----------
        n_samples : int, default 1
        component : int, optional
            Draw every sample from this cluster (Fig. 5a of Dilokthanakul et al. 2016); None draws z uniformly.
        observation : {"sample", "mean"}, default "sample"
            Draws of y, or the mean of p(y | x) (pixel probabilities for Bernoulli).

        Returns
        -------
        X : ndarray, shape (n_samples, n_features)
        z : ndarray of int64, shape (n_samples,)
        """
        self._check_fitted()
        check_int(n_samples, "n_samples", 1)
        if component is not None and not 0 <= check_int(component, "component", 0) < (
            self.n_components
        ):
            raise ValueError(f"component={component} must be below n_components")
        if observation not in ("sample", "mean"):
            raise ValueError(f"observation={observation!r} is not 'sample' or 'mean'")
        generator = resolve_generator(self.random_state, self._device)
        with torch.no_grad():
            y, z = gmvae.sample(self.networks_, n_samples, component, generator, observation)
        return y.cpu().numpy(), z.cpu().numpy()
