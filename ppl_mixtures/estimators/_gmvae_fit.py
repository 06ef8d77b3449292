"""How :class:`~ppl_mixtures.estimators.gmvae.GMVAE` fits: checks of the data, the
autoencoder pre-training and GMM start, then SVI (in memory, distributed, or on a stream of
batches through :mod:`ppl_mixtures.inference.gmvae_stream`).

A mixin of the estimator: it reads the estimator's arguments and sets its fitted attributes.
"""

from __future__ import annotations

import copy
import math
import os
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from ppl_mixtures import distributed as process_group
from ppl_mixtures._rng import seeded_global_rng
from ppl_mixtures.estimators._sources import DataSource
from ppl_mixtures.estimators._validation import (
    BOOLEAN,
    COMMON_CONSTRAINTS,
    DICT,
    NONE,
    Integer,
    IntegerSequence,
    Options,
    Real,
)
from ppl_mixtures.estimators.gaussian import GaussianMixture
from ppl_mixtures.inference import gmvae_pretrain, gmvae_stream
from ppl_mixtures.inference.em.gmm import DataScaleWarning
from ppl_mixtures.inference.svi import SVITrainer
from ppl_mixtures.models import gmvae

#: How :meth:`GMVAE.predict_proba` treats w: integrated over its prior, or at q(w | y)'s mean.
PREDICT_W = ("marginal", "mean")
#: Starts of the conditional prior: a GMM fitted in the latent space, or the networks' own.
INITS = ("auto", "gmm", "random")
#: How the restarts of the GMM start are ranked (``"auto"``: balance with equal weights).
INIT_SELECTS = ("auto", *gmvae_pretrain.SELECTIONS)
_NETWORK_NAMES = ("encoder", "prior_net", "decoder")


class GMVAEFitting:
    """The fitting hooks of the GMVAE estimator (see the module docstring), with the checks
    of its arguments."""

    _parameter_constraints = {
        **{k: COMMON_CONSTRAINTS[k] for k in ("random_state", "device", "dtype", "progress",
                                              "checkpoint_path", "distributed")},
        "n_components": [Integer(1)],
        "preset": [Options(("auto", *gmvae.PRESETS))],
        "latent_dim": [Integer(1), NONE],
        "w_dim": [Integer(1), NONE],
        "hidden_dims": [IntegerSequence(1), NONE],
        "prior_hidden_dims": [IntegerSequence(1), NONE],
        "networks": [DICT, NONE],
        "likelihood": [Options(gmvae.LIKELIHOODS)],
        "observation_variance": [Real(0.0, strict=True), NONE],
        "z_inference": [Options(gmvae.Z_INFERENCE)],
        "free_bits": [Real(0.0)],
        "z_prior_weight": [Real(0.0)],
        "num_particles": [Integer(1)],
        "max_iter": [Integer(1)],
        "batch_size": [Integer(1)],
        "lr": [Real(0.0, strict=True)],
        "tol": [Real(0.0)],
        "pretrain_epochs": [Integer(0)],
        "init": [Options(INITS)],
        "init_factor_scale": [Real(0.0, strict=True)],
        "init_factor_fit": [Options(gmvae_pretrain.FACTOR_FITS)],
        "init_rotate": [BOOLEAN],
        "init_restarts": [Integer(1)],
        "init_equal_weights": [BOOLEAN],
        "init_select": [Options(INIT_SELECTS)],
        "freeze_prior": [Options(("auto",)), BOOLEAN],
        "init_w_encoder": [BOOLEAN],
        "predict_w": [Options(PREDICT_W)],
        "predict_w_draws": [Integer(1)],
        "progress": [BOOLEAN],
    }
    def _check_arguments(self) -> None:
        if self.z_inference == "enumerate" and (self.free_bits > 0 or self.z_prior_weight != 1):
            raise ValueError(
                "free_bits and z_prior_weight act on the closed-form z-prior term; pass "
                "z_inference='closed_form' to use them"
            )
        if self.init_select in ("balance", "penalised") and not self.init_equal_weights:
            raise ValueError(
                f"init_select={self.init_select!r} ranks the equal-weight restarts; pass "
                "init_equal_weights=True, or init_select='likelihood' (or 'auto')"
            )
        unknown = set(self.networks or {}) - set(_NETWORK_NAMES)
        if unknown:
            raise ValueError(f"networks has unknown keys {sorted(unknown)}; use {_NETWORK_NAMES}")
        for name, module in (self.networks or {}).items():
            if not isinstance(module, torch.nn.Module):
                raise TypeError(f"networks[{name!r}] must be a torch.nn.Module")


    def _architecture(self) -> gmvae.Architecture:
        base = gmvae.PRESETS[self.preset_]
        hidden = tuple(self.hidden_dims) if self.hidden_dims is not None else None
        return gmvae.Architecture(
            x_dim=self.latent_dim or base.x_dim,
            w_dim=self.w_dim or base.w_dim,
            encoder_hidden=hidden if hidden is not None else base.encoder_hidden,
            prior_hidden=(
                tuple(self.prior_hidden_dims) if self.prior_hidden_dims is not None
                else base.prior_hidden
            ),
            decoder_hidden=hidden if hidden is not None else base.decoder_hidden,
            conv=base.conv,
            image_channels=base.image_channels,
        )

    def _build(self, n_features: int) -> gmvae.GMVAENetworks:
        user = {k: copy.deepcopy(v) for k, v in (self.networks or {}).items()}
        self.preset_ = (gmvae.auto_preset(n_features) if self.preset == "auto"
                        else self.preset)
        try:
            networks = gmvae.GMVAENetworks(
                n_features, self.n_components, self._architecture(), self.likelihood, **user,
                observation_scale=self.observation_scale_,
            )
        except ValueError as error:
            raise ValueError(f"preset={self.preset_!r}: {error}") from None
        networks = networks.to(device=self._device, dtype=self._dtype)
        if user:
            networks.check_shapes()  # a user network of the wrong shape, named before training
        self.networks_ = networks
        self.model_ = gmvae.GMVAEModel(
            networks, self.z_inference, self.free_bits, self.z_prior_weight,
            freeze_prior=self._frozen_prior(),
        )
        self.guide_ = self.model_.guide
        return networks

    def _lower_bound(self, source: DataSource) -> float:
        """Mean ELBO per sample on the training data (over all ranks when distributed);
        with sample weights, the weighted mean ``sum_n w_n ELBO_n / sum_n w_n``."""
        if source.streamed:  # one more pass, batch by batch
            return gmvae_stream.lower_bound(self, source)
        elbo = self.score_samples(source.data.cpu().numpy())
        weights = np.ones_like(elbo) if source.weights is None else (
            source.weights.detach().cpu().numpy().astype(elbo.dtype))
        if not self.distributed:
            return float(weights @ elbo / weights.sum())
        total = torch.tensor([weights @ elbo, weights.sum()], dtype=torch.float64,
                             device=self._device)
        torch.distributed.all_reduce(total)
        return float(total[0] / total[1])

    def _check_unit_range(self, x: torch.Tensor, what: str) -> None:
        """A Bernoulli likelihood scores values in [0, 1] only: refuse others, naming them."""
        if self.likelihood == "bernoulli" and bool(((x < 0) | (x > 1)).any()):
            raise ValueError(
                f"likelihood='bernoulli' needs X in [0, 1], and the X given to {what} has "
                f"values in [{float(x.min()):.4g}, {float(x.max()):.4g}]; rescale X as for "
                "fit (e.g. divide 8-bit images by 255)"
            )

    def _fitted_x(self, X: Any) -> torch.Tensor:
        x = super()._fitted_x(X)
        self._check_unit_range(x, "scoring")
        return x

    def _warn_if_far_from_unit_scale(self, x: torch.Tensor) -> None:
        """The networks start (and Adam steps) at unit scale: say so when X is far from it."""
        if self.likelihood != "gaussian" or x.shape[0] < 2:
            return
        spread = float(x.double().std(0).mean())
        if not 1e-3 <= spread <= 1e3:
            warnings.warn(
                f"X's features have a mean standard deviation of {spread:.3g}; the GMVAE's "
                "networks and learning rate are set for data of unit scale, so its clusters "
                "can change with the scale: standardise X (or scale it to [0, 1]) first",
                DataScaleWarning, stacklevel=4,
            )

    def _check_stream(self, X: Any) -> None:
        """A stream is read once per epoch: refuse one read once, and distributed streams."""
        if isinstance(X, Iterator):
            raise ValueError(
                "GMVAE reads its data once per epoch (pre-training, the GMM start, SVI), but "
                f"X is an iterator ({type(X).__name__}), which can be read only once; pass a "
                "DataLoader, a list of batches, "
                "ppl_mixtures.datasets.files.NpyBatches(path) for a .npy file, or a callable "
                "that returns a new iterator at each call (e.g. lambda: make_batches())"
            )
        if self.distributed:
            raise ValueError(
                "GMVAE(distributed=True) fits each rank's shard as one array, not a stream of "
                "batches; pass the shard as an array (a memory map: np.load(path, "
                "mmap_mode='r')[rank::world_size]), or distributed=False"
            )

    def _fit(self, source: DataSource, generator: torch.Generator, resume: bool) -> None:
        if source.streamed:  # batch by batch, never all the data at once
            gmvae_stream.fit_stream(self, source, generator, resume)
            return
        x = source.data
        self._check_unit_range(x, "fit")
        self._warn_if_far_from_unit_scale(x)
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        variance, rows = None, 0
        if self.likelihood == "gaussian" and self.observation_variance is not None:
            batch = x if source.weights is None else (x, source.weights)
            _, variance, rows = process_group.data_moments([batch], self.distributed)
        self._set_observation_scale(variance, rows)
        with seeded_global_rng(seed, x.device):  # the networks' initial weights
            self._build(x.shape[1])
        restored = bool(resume and self.checkpoint_path and os.path.exists(self.checkpoint_path))
        self._pretrain(x, seed, source.weights, restored)
        steps_per_epoch = math.ceil(x.shape[0] / self.batch_size)
        if self.distributed:  # every rank must take the same number of steps
            steps = torch.tensor([steps_per_epoch], device=x.device)
            torch.distributed.all_reduce(steps, op=torch.distributed.ReduceOp.MAX)
            steps_per_epoch = int(steps)
        trainer = SVITrainer(
            self.model_, self.guide_, lr=self.lr, num_particles=self.num_particles,
            batch_size=self.batch_size, max_steps=self._max_iter * steps_per_epoch,
            tol=self.tol, progress=self.progress and process_group.rank() == 0,
            checkpoint_path=self.checkpoint_path, seed=seed, distributed=self.distributed,
        )
        self._set_result(trainer.fit(x, resume=resume, sample_weight=source.weights))

    def _set_result(self, result: Any) -> None:
        """The fitted attributes from the SVI trainer's ``result`` (in memory and on a
        stream): ``params_``, ``history_``, ``n_iter_``, ``converged_``."""
        self.model_._register()  # bind the modules to the param store's final tensors
        self.params_ = {k: v.detach() for k, v in self.networks_.named_parameters()}
        self.history_ = result.history
        self.n_iter_ = result.n_steps
        self.converged_ = result.converged

    def _set_observation_scale(self, variance: torch.Tensor | None, rows: int) -> None:
        """``observation_scale_``: the fixed standard deviation of a Gaussian p(y | x),
        ``sqrt(observation_variance * mean(variance))`` from the data's per-feature
        ``variance`` (D,) over ``rows`` rows (1 for a single row); None when it is learned
        or the likelihood is Bernoulli."""
        self.observation_scale_ = None
        if self.likelihood == "gaussian" and self.observation_variance is not None:
            data_variance = float(variance.mean()) if rows > 1 else 1.0
            self.observation_scale_ = math.sqrt(self.observation_variance * data_variance)

    def _pretrain(self, x: torch.Tensor, seed: int, weights: torch.Tensor | None,
                  restored: bool) -> None:
        """Autoencoder pre-training, then the GMM start (``init``; see ``gmvae_pretrain``).

        ``restored``: the run resumes from a checkpoint, which holds the networks; only
        ``init_`` is set.
        """
        init = self._resolve_init(x.shape[1])
        if restored or init == "random":
            return
        if self.pretrain_epochs > 0:
            generator = torch.Generator().manual_seed(seed)
            self.pretrain_history_ = gmvae_pretrain.pretrain_autoencoder(
                self.networks_, x, self.pretrain_epochs, gmvae_pretrain.PRETRAIN_BATCH_SIZE,
                gmvae_pretrain.PRETRAIN_LR, generator, weights=weights)
        if x.shape[0] >= self.n_components:
            self._gmm_start(x, seed, weights)

    def _gmm_start(self, y: torch.Tensor | None, seed: int, weights: torch.Tensor | None,
                   latents: torch.Tensor | None = None, batches: Any = None) -> None:
        """:func:`~ppl_mixtures.inference.gmvae_pretrain.gmm_start` with the estimator's
        ``init_*`` arguments (in memory: the rows ``y`` (N, D); on a stream: their
        ``latents`` (N, Dx) and, for ``init_w_encoder``, the ``batches`` of rows)."""
        gmvae_pretrain.gmm_start(self.networks_, y, seed, GaussianMixture, weights=weights,
                                 latents=latents, input_scale=self.init_factor_scale,
                                 n_init=self.init_restarts,
                                 equal_weights=self.init_equal_weights,
                                 w_encoder=self.init_w_encoder, batches=batches,
                                 select=self._init_select(),
                                 factor_fit=self.init_factor_fit,
                                 rotate=self.init_rotate)

    def _init_select(self) -> str:
        """``init_select`` resolved: ``"auto"`` ranks equal-weight restarts by balance,
        free-weight ones by likelihood."""
        if self.init_select == "auto":
            return "balance" if self.init_equal_weights else "likelihood"
        return self.init_select

    def _resolve_init(self, n_features: int) -> str:
        """Resolve ``init`` and ``freeze_prior`` once the networks are built (in memory and
        on a stream alike): sets ``init_`` (``"auto"``: ``"gmm"`` when the data have more
        features than the latent, since an autoencoder that does not compress gives no new
        space, else ``"random"``), the model's ``freeze_prior`` and an empty
        ``pretrain_history_``; returns ``init_``."""
        self.pretrain_history_ = []
        init = self.init
        if init == "auto":
            init = "gmm" if n_features > self.networks_.x_dim else "random"
        self.init_ = init
        self.model_.freeze_prior = self._frozen_prior()
        return init

    def _frozen_prior(self) -> bool:
        """``freeze_prior`` resolved: ``"auto"`` freezes the prior network after the GMM
        start (``init_ == "gmm"``) only; False before the start is known."""
        if self.freeze_prior == "auto":
            return getattr(self, "init_", None) == "gmm"
        return bool(self.freeze_prior)

    def _set_fitted(self) -> None:
        """Nothing to convert: the fitted attributes are the networks and the history."""

    def _param_tensors(self) -> dict[str, torch.Tensor]:
        return self.params_

    def _restore(self, content: dict) -> None:
        networks = self._build(self.n_features_in_)
        networks.load_state_dict(content["params"])
        self.params_ = {k: v.detach() for k, v in networks.named_parameters()}
