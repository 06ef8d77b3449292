"""The Gaussian mixture variational autoencoder (GMVAE): networks, helpers, Pyro model and guide.

Generative model (Dilokthanakul et al. 2016, eqs. 1a-1d), with the paper's names (y data, x
and w continuous latents, z the cluster)::

    w[n]   ~ N(0, I_{Dw})                                         site "w",   (N, Dw)
    z[n]   ~ Categorical(1/K)            (summed out)             site "z" if z_site, (N,)
    x[n]   ~ N(mu_z(w[n]; beta), diag sigma^2_z(w[n]; beta))      site "x",   (N, Dx)
    y[n]   ~ Bernoulli(mu(x[n]; theta))                           site "obs", (N, D)
           or N(mu(x[n]; theta), diag sigma^2(x[n]; theta))

One network (the *conditional prior* network, beta) maps ``w`` to all K means and variances at
once. The recognition model (eq. 3's mean-field family) is ``q(x | y) q(w | y)``, two Gaussians
whose parameters come from one shared encoder (their Table A.1). The z-posterior is not a
variational factor: it is ``p(z | x, w)`` in closed form (eq. 3).

Two ways of treating z give two selectable objectives (``z_inference``):

``"enumerate"`` (default)
    ``z`` is summed out exactly, so the ``x`` site is scored by ``log p(x | w) = logsumexp_k
    [log pi_k + log N(x | mu_k(w), sigma_k(w))]``. By default the sum is taken inside the
    ``x`` site (:class:`MarginalComponents`), which leaves no discrete site to enumerate: the
    same ELBO and gradients as Pyro's enumeration with one traced site fewer and none of
    ``TraceEnum_ELBO``'s enumeration work per step (``bench/gmvae.py``). ``z_site=True``
    (:class:`GMVAEModel`) keeps ``z`` as a discrete site with
    ``infer={"enumerate": "parallel"}`` that ``TraceEnum_ELBO`` sums out, for tools that
    need the site (``infer_discrete``).
``"closed_form"``
    The four-term ELBO of eq. (4): no ``z`` site; the ``x`` site is scored by the conditional
    prior term ``sum_k p(z=k | x, w) log N(x | mu_k(w), sigma_k(w))`` (eq. 5, evaluated at the
    sampled ``x`` rather than with the analytic Gaussian KL), and a factor ``"z_prior"`` adds
    ``-z_prior_weight * max(free_bits, KL(p(z | x, w) || p(z)))`` (the z-prior term, eqs. 6-7,
    the *free bits* or minimum-information constraint of Kingma et al. 2016). The max is taken
    per data point and per Monte Carlo sample of (x, w).

With ``free_bits=0`` and ``z_prior_weight=1`` the two objectives are equal sample by sample,
since ``sum_k r_k [log pi_k + log p(x | z=k, w) - log r_k] = log p(x | w)`` for
``r = p(z | x, w)``; the tests hold this identity in float64.

Network contract
----------------
:class:`GMVAENetworks` holds three ``torch.nn.Module`` s; any user module with these shapes
can replace a preset one (images are flattened: ``D`` is the number of pixels).

- ``encoder``: (..., D) -> (..., 2 Dx + 2 Dw), read as ``[x_loc, x_log_var, w_loc, w_log_var]``.
- ``prior_net``: (..., Dw) -> (..., 2 K Dx), read as ``[means (K Dx), log_vars (K Dx)]``.
- ``decoder``: (..., Dx) -> (..., D) Bernoulli logits, or (..., 2 D) ``[loc, log_var]``.
  The Bernoulli likelihood accepts grey levels in [0, 1] (scored by the binary cross-entropy).

Variances are exponentiated log-variances (as in Table A.1 of Dilokthanakul et al. 2016), with
the log-variance clamped to ``[-LOG_VAR_BOUND, LOG_VAR_BOUND]``.

The networks are registered with ``pyro.module(..., update_module_params=True)`` at every call
of the model and the guide, so their parameters live in the Pyro param store: the SVI trainer's
checkpoints hold them and a restored param store is re-bound to the modules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.torch_distribution import TorchDistribution
from pyro.ops.indexing import Vindex
from torch import Tensor, nn

from ppl_mixtures.models._sites import weighted_rows

LIKELIHOODS = ("bernoulli", "gaussian")
Z_INFERENCE = ("enumerate", "closed_form")
#: Bound on every log-variance a network outputs (numerical safety, documented above).
LOG_VAR_BOUND = 15.0


@dataclass(frozen=True)
class Architecture:
    """Sizes of the three MLPs (Dilokthanakul et al. 2016, Tables A.1-A.3).

    Attributes
    ----------
    x_dim, w_dim : int
        Dimensions ``Dx`` of x and ``Dw`` of w.
    encoder_hidden : tuple of int
        Hidden widths of the shared encoder of q(x | y), q(w | y) (ReLU).
    prior_hidden : tuple of int
        Hidden widths of the conditional prior network p(x | w, z) (Tanh).
    decoder_hidden : tuple of int
        Hidden widths of the observation network p(y | x) (ReLU).
    conv : tuple of (channels, kernel, stride, padding), default ()
        Convolutions (ReLU) before the encoder's fully connected layers, in the paper's
        "conv 16x6x6 (1-0)" notation; the decoder mirrors them with transposed convolutions
        after its fully connected layers. Empty: fully connected networks only.
    image_channels : int, default 1
        Channels of the images when ``conv`` is given; each image is a flattened
        (channels, side, side) square, so D = channels * side**2.
    """

    x_dim: int
    w_dim: int
    encoder_hidden: tuple[int, ...]
    prior_hidden: tuple[int, ...]
    decoder_hidden: tuple[int, ...]
    conv: tuple[tuple[int, int, int, int], ...] = ()
    image_channels: int = 1


#: Presets from the appendix of Dilokthanakul et al. (2016). ``"synthetic"`` is the pinwheel network
#: exactly; ``"mnist_mlp"`` keeps the MNIST sizes (Dx=200, Dw=150, 500 hidden units) with fully
#: connected layers in place of the convolutions and without batch normalisation. ``"digits_mlp"``
#: keeps those hidden widths with small latents (Dx=10, Dw=2): on scikit-learn's 8x8 digits the
#: MNIST latents put every image in one cluster (with or without free bits), these reached Hungarian
#: accuracy 0.79-0.88 over three seeds (Gaussian likelihood, ``observation_variance=0.05``,
#: closed-form z-term with free bits 1; ``bench/gmvae_digits.py``). ``"mnist_conv"`` is the paper's
#: MNIST network (Tables A.1-A.3: conv 16x6x6 (1-0), 32x6x6 (1-0), 64x4x4 (2-1), fc 500; the decoder
#: mirrored with transposed convolutions) for 28x28 images, without batch normalisation;
#: ``"digits_conv"`` is its 8x8 counterpart (conv 32x3x3 (1-1), 64x4x4 (2-1), fc 500) with the
#: ``"digits_mlp"`` latents; ``"svhn_conv"`` the paper's SVHN network for 32x32 colour images
#: (flattened channel-first, D = 3 * 32 * 32).
PRESETS: dict[str, Architecture] = {
    "synthetic": Architecture(2, 2, (120, 120), (120,), (120, 120)),
    "mnist_mlp": Architecture(200, 150, (500,), (500,), (500,)),
    "digits_mlp": Architecture(10, 2, (500,), (500,), (500,)),
    "mnist_conv": Architecture(
        200, 150, (500,), (500,), (500,), conv=((16, 6, 1, 0), (32, 6, 1, 0), (64, 4, 2, 1))
    ),
    "digits_conv": Architecture(10, 2, (500,), (500,), (500,), conv=((32, 3, 1, 1), (64, 4, 2, 1))),
    "svhn_conv": Architecture(
        200, 150, (500,), (500,), (500,), conv=((64, 4, 2, 1), (128, 4, 2, 1), (246, 4, 2, 1)),
        image_channels=3,
    ),
}
#: Largest number of features for which ``preset="auto"`` takes ``"synthetic"``.
AUTO_SYNTHETIC_MAX_FEATURES = 16


def auto_preset(data_dim: int) -> str:
    """The preset ``"auto"`` stands for: ``"synthetic"`` up to 16 features, else ``"digits_mlp"``.

    The MNIST latent sizes (Dx=200, Dw=150) put all of scikit-learn's digits in one cluster,
    so wider data gets the small latents measured on digits; choose ``"mnist_conv"`` or
    ``"mnist_mlp"`` explicitly to follow Dilokthanakul et al. (2016) on MNIST-sized data.
    """
    return "synthetic" if data_dim <= AUTO_SYNTHETIC_MAX_FEATURES else "digits_mlp"


def mlp(in_dim: int, hidden: tuple[int, ...], out_dim: int, activation: type[nn.Module]) -> nn.Module:
    """A fully connected network ``in_dim -> hidden... -> out_dim`` with ``activation`` between."""
    layers: list[nn.Module] = []
    width = in_dim
    for size in hidden:
        layers += [nn.Linear(width, size), activation()]
        width = size
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


def image_side(data_dim: int, channels: int) -> int:
    """Side of the square images that ``data_dim = channels * side**2`` features hold."""
    side = math.isqrt(data_dim // channels) if data_dim % channels == 0 else 0
    if side * side * channels != data_dim:
        raise ValueError(
            f"a convolutional preset needs square images: {data_dim} features are not "
            f"{channels} channel(s) of side x side pixels; flatten (channels, side, side) "
            "images, or use an MLP preset"
        )
    return side


def _conv_sizes(side: int, conv: tuple[tuple[int, int, int, int], ...]) -> list[int]:
    """Image side before every convolution and after the last one."""
    sizes = [side]
    for _, kernel, stride, padding in conv:
        size = (sizes[-1] + 2 * padding - kernel) // stride + 1
        if size < 1:
            raise ValueError(
                f"images of side {side} are too small for the convolutions {conv}: choose a "
                "preset made for this image size (e.g. 'digits_conv' for 8x8, 'mnist_conv' "
                "for 28x28) or an MLP preset"
            )
        sizes.append(size)
    return sizes


class ConvEncoder(nn.Module):
    """Convolutions (ReLU), then a fully connected network: (..., C side**2) -> (..., out_dim).

    Parameters
    ----------
    side, channels : int
        Image side and channels; inputs are flattened (channels, side, side) images.
    conv : tuple of (channels, kernel, stride, padding)
    hidden : tuple of int
        Widths of the fully connected ReLU layers after the convolutions.
    out_dim : int
    """

    def __init__(self, side: int, channels: int, conv: tuple[tuple[int, int, int, int], ...],
                 hidden: tuple[int, ...], out_dim: int) -> None:
        super().__init__()
        self.image_shape = (channels, side, side)
        layers: list[nn.Module] = []
        width = channels
        for out_channels, kernel, stride, padding in conv:
            layers += [nn.Conv2d(width, out_channels, kernel, stride, padding), nn.ReLU()]
            width = out_channels
        self.convolutions = nn.Sequential(*layers)
        flat = width * _conv_sizes(side, conv)[-1] ** 2
        self.dense = mlp(flat, hidden, out_dim, nn.ReLU)

    def forward(self, y: Tensor) -> Tensor:
        batch = y.shape[:-1]
        features = self.convolutions(y.reshape(-1, *self.image_shape))
        return self.dense(features.flatten(1)).reshape(*batch, -1)


class ConvDecoder(nn.Module):
    """Fully connected layers (ReLU), then transposed convolutions mirroring a ConvEncoder.

    Maps (..., in_dim) to (..., out_channels * side**2): ``out_channels`` is the image's
    channels (Bernoulli logits or Gaussian means) or twice that (means, then log-variances).
    """

    def __init__(self, side: int, out_channels: int,
                 conv: tuple[tuple[int, int, int, int], ...], hidden: tuple[int, ...],
                 in_dim: int) -> None:
        super().__init__()
        sizes = _conv_sizes(side, conv)
        self.start_shape = (conv[-1][0], sizes[-1], sizes[-1])
        self.dense = nn.Sequential(
            mlp(in_dim, hidden, math.prod(self.start_shape), nn.ReLU), nn.ReLU()
        )
        layers: list[nn.Module] = []
        for index in range(len(conv) - 1, -1, -1):
            in_channels, kernel, stride, padding = conv[index]
            target = sizes[index]
            extra = target - ((sizes[index + 1] - 1) * stride - 2 * padding + kernel)
            to = conv[index - 1][0] if index > 0 else out_channels
            layers.append(nn.ConvTranspose2d(in_channels, to, kernel, stride, padding, extra))
            if index > 0:
                layers.append(nn.ReLU())
        self.convolutions = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        batch = x.shape[:-1]
        hidden = self.dense(x.reshape(-1, x.shape[-1])).reshape(-1, *self.start_shape)
        return self.convolutions(hidden).flatten(1).reshape(*batch, -1)


def _split_gaussian(raw: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """Split (..., 2 dim) into a location and a scale ``exp(log_var / 2)``, each (..., dim)."""
    loc, log_var = raw[..., :dim], raw[..., dim:]
    return loc, torch.exp(0.5 * log_var.clamp(-LOG_VAR_BOUND, LOG_VAR_BOUND))


class GMVAENetworks(nn.Module):
    """The recognition, conditional prior and observation networks of a GMVAE.

    Parameters
    ----------
    data_dim : int
        Number of features D of y.
    n_components : int
        Number of clusters K.
    architecture : Architecture
        Sizes of the preset MLPs (and ``x_dim``, ``w_dim`` for user modules).
    likelihood : {"bernoulli", "gaussian"}
        Observation model p(y | x), eq. (1d).
    encoder, prior_net, decoder : torch.nn.Module, optional
        User modules following the contract of the module docstring; None builds the MLP.
    observation_scale : float, optional
        Gaussian likelihood only: a fixed standard deviation of p(y | x), the decoder then
        giving the mean alone (D outputs instead of 2 D). None learns the variance too, which
        lets the decoder explain low-dimensional data by itself: on pinwheel every such run
        collapsed q(x | y) to a point and put all data in one cluster (ARI 0.0), while a fixed
        scale reached ARI 0.975-0.985.
    """

    def __init__(
        self,
        data_dim: int,
        n_components: int,
        architecture: Architecture,
        likelihood: str = "gaussian",
        encoder: nn.Module | None = None,
        prior_net: nn.Module | None = None,
        decoder: nn.Module | None = None,
        observation_scale: float | None = None,
    ) -> None:
        super().__init__()
        arch = architecture
        self.data_dim, self.n_components, self.likelihood = data_dim, n_components, likelihood
        self.x_dim, self.w_dim = arch.x_dim, arch.w_dim
        self.observation_scale = observation_scale
        fixed = likelihood == "bernoulli" or observation_scale is not None
        out = data_dim if fixed else 2 * data_dim
        code = 2 * (arch.x_dim + arch.w_dim)
        if arch.conv and (encoder is None or decoder is None):
            side = image_side(data_dim, arch.image_channels)
            encoder = encoder or ConvEncoder(
                side, arch.image_channels, arch.conv, arch.encoder_hidden, code
            )
            decoder = decoder or ConvDecoder(
                side, out // (side * side), arch.conv, arch.decoder_hidden, arch.x_dim
            )
        self.encoder = encoder or mlp(data_dim, arch.encoder_hidden, code, nn.ReLU)
        self.prior_net = prior_net or mlp(
            arch.w_dim, arch.prior_hidden, 2 * n_components * arch.x_dim, nn.Tanh
        )
        self.decoder = decoder or mlp(arch.x_dim, arch.decoder_hidden, out, nn.ReLU)

    def check_shapes(self) -> None:
        """Run each network on two rows of zeros and compare its output with the contract.

        Raises
        ------
        ValueError
            Naming the network, the input it was given, the output it gave and the one the
            contract (module docstring) asks for; also when the network fails on such input.
        """
        fixed = self.likelihood == "bernoulli" or self.observation_scale is not None
        expected = {
            "encoder": (self.data_dim, 2 * (self.x_dim + self.w_dim),
                        "2 Dx + 2 Dw: [x_loc, x_log_var, w_loc, w_log_var]"),
            "prior_net": (self.w_dim, 2 * self.n_components * self.x_dim,
                          "2 K Dx: [means, log_vars]"),
            "decoder": (self.x_dim, self.data_dim if fixed else 2 * self.data_dim,
                        "D logits or means" if fixed else "2 D: [loc, log_var]"),
        }
        parameter = next(self.parameters(), None)
        options = ({} if parameter is None else
                   {"dtype": parameter.dtype, "device": parameter.device})
        for name, (width_in, width_out, meaning) in expected.items():
            probe = torch.zeros(2, width_in, **options)
            try:
                with torch.no_grad():
                    out = getattr(self, name)(probe)
            except (RuntimeError, ValueError, TypeError) as error:
                raise ValueError(
                    f"networks[{name!r}] fails on input of shape (2, {width_in}) ({error}); it "
                    f"must map (..., {width_in}) to (..., {width_out}) = ({meaning})"
                ) from None
            if tuple(out.shape) != (2, width_out):
                raise ValueError(
                    f"networks[{name!r}] maps input of shape (2, {width_in}) to "
                    f"{tuple(out.shape)}; it must give (2, {width_out}) = ({meaning})"
                )

    def encode(self, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Parameters of q(x | y) and q(w | y) (Dilokthanakul et al. 2016, Table A.1).

        Parameters
        ----------
        y : Tensor, shape (..., D)

        Returns
        -------
        x_loc, x_scale : Tensor, shape (..., Dx)
        w_loc, w_scale : Tensor, shape (..., Dw)
        """
        raw = self.encoder(y)
        x_raw, w_raw = raw[..., : 2 * self.x_dim], raw[..., 2 * self.x_dim :]
        return (*_split_gaussian(x_raw, self.x_dim), *_split_gaussian(w_raw, self.w_dim))

    def conditional_prior(self, w: Tensor, frozen: bool = False) -> tuple[Tensor, Tensor]:
        """All K components of p(x | w, z) in one forward pass (eq. 1c, Table A.2).

        Parameters
        ----------
        w : Tensor, shape (..., Dw)
        frozen : bool, default False
            Run ``prior_net`` with its parameters detached: gradients still reach ``w`` but
            not the prior network's weights (which an optimiser then leaves as they are).

        Returns
        -------
        means, scales : Tensor, shape (..., K, Dx)
        """
        if frozen:
            detached = {name: value.detach() for name, value in
                        self.prior_net.named_parameters()}
            raw = torch.func.functional_call(self.prior_net, detached, (w,))
        else:
            raw = self.prior_net(w)
        size = self.n_components * self.x_dim
        shape = (*raw.shape[:-1], self.n_components, self.x_dim)
        means = raw[..., :size].reshape(shape)
        log_vars = raw[..., size:].reshape(shape).clamp(-LOG_VAR_BOUND, LOG_VAR_BOUND)
        return means, torch.exp(0.5 * log_vars)

    def observation(self, x: Tensor) -> dist.Distribution:
        """p(y | x) (eq. 1d) with event shape (D,) and batch shape ``x.shape[:-1]``."""
        raw = self.decoder(x)
        if self.likelihood == "bernoulli":
            # Grey levels in [0, 1] are scored by the cross-entropy -BCE(y, sigmoid(raw)), as
            # Dilokthanakul et al. (2016) do for MNIST; the support check would reject non-binary y.
            return dist.Bernoulli(logits=raw, validate_args=False).to_event(1)
        if self.observation_scale is not None:  # fixed noise: the decoder gives the mean only
            return dist.Normal(raw, torch.full_like(raw, self.observation_scale)).to_event(1)
        return dist.Normal(*_split_gaussian(raw, self.data_dim)).to_event(1)


# ---------------------------------------------------------------------------------------------
# Deterministic helpers
# ---------------------------------------------------------------------------------------------


def component_log_prob(x: Tensor, means: Tensor, scales: Tensor) -> Tensor:
    """``log N(x | mu_k(w), diag sigma_k^2(w))`` for every component (eq. 1c).

    Parameters
    ----------
    x : Tensor, shape (..., Dx)
    means, scales : Tensor, shape (..., K, Dx)

    Returns
    -------
    Tensor, shape (..., K)
    """
    return dist.Normal(means, scales).log_prob(x.unsqueeze(-2)).sum(-1)


def z_posterior_logits(x: Tensor, means: Tensor, scales: Tensor) -> Tensor:
    """Log of the z-posterior ``p(z = k | x, w)`` in closed form (eq. 3), uniform pi.

    Takes the arguments of :func:`component_log_prob` and normalises its (..., K) result over
    the components: the log-probabilities returned, shape (..., K), log-sum-exp to zero.
    """
    return torch.log_softmax(component_log_prob(x, means, scales), dim=-1)


def z_prior_kl(log_posterior: Tensor) -> Tensor:
    """``KL(p(z | x, w) || Cat(1/K))``, the z-prior term's KL (eqs. 4 and 6).

    Parameters
    ----------
    log_posterior : Tensor, shape (..., K)

    Returns
    -------
    Tensor, shape (...)
    """
    n_components = log_posterior.shape[-1]
    return (log_posterior.exp() * (log_posterior + math.log(n_components))).sum(-1)


class ExpectedComponentLogProb(TorchDistribution):
    """The distribution of the ``x`` site under ``z_inference="closed_form"``.

    Its (unnormalised) ``log_prob(x)`` is the conditional prior term of eq. (5) at one sample,
    ``sum_k p(z=k | x, w) log N(x | mu_k(w), sigma_k(w))``; ``sample`` draws from the uniform
    mixture ``p(x | w)``.

    Parameters
    ----------
    means, scales : Tensor, shape (..., K, Dx)
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, means: Tensor, scales: Tensor, validate_args: bool | None = None) -> None:
        self.means, self.scales = means, scales
        super().__init__(means.shape[:-2], means.shape[-1:], validate_args=False)

    def log_prob(self, x: Tensor) -> Tensor:
        log_probs = component_log_prob(x, self.means, self.scales)
        return (torch.softmax(log_probs, dim=-1) * log_probs).sum(-1)

    def sample(self, sample_shape: tuple[int, ...] = ()) -> Tensor:
        mixture = dist.MixtureSameFamily(
            dist.Categorical(logits=torch.zeros(self.means.shape[:-1], dtype=self.means.dtype,
                                                device=self.means.device)),
            dist.Normal(self.means, self.scales).to_event(1),
        )
        return mixture.sample(torch.Size(sample_shape))


class MarginalComponents(ExpectedComponentLogProb):
    """``p(x | w)``: the uniform mixture of the K conditional priors, z summed out.

    ``log_prob(x) = logsumexp_k log N(x | mu_k(w), sigma_k(w)) - log K``, what enumerating
    ``"z"`` gives. The model's ``"x"`` site takes it under ``"enumerate"`` (always under
    sample weights, which Pyro's enumerated ELBO cannot scale per row: it takes one scalar
    scale for enumerated sites).
    """

    def log_prob(self, x: Tensor) -> Tensor:
        log_probs = component_log_prob(x, self.means, self.scales)
        return torch.logsumexp(log_probs, -1) - math.log(log_probs.shape[-1])


def conditional_prior_objective(
    x: Tensor,
    means: Tensor,
    scales: Tensor,
    z_inference: str = "enumerate",
    free_bits: float = 0.0,
    z_prior_weight: float = 1.0,
) -> Tensor:
    """What the model contributes for ``x`` given ``w``: ``log p(x | w)`` or its eq. (4) form.

    Parameters
    ----------
    x : Tensor, shape (..., Dx)
    means, scales : Tensor, shape (..., K, Dx)
    z_inference : {"enumerate", "closed_form"}
    free_bits, z_prior_weight : float
        Only for ``"closed_form"``: the threshold lambda of eq. (7) and the weight of the
        z-prior term.

    Returns
    -------
    Tensor, shape (...)
        ``"enumerate"``: ``logsumexp_k log N(x | mu_k, sigma_k) - log K`` (z summed out).
        ``"closed_form"``: ``sum_k r_k log N(x | mu_k, sigma_k) - weight * max(lambda, KL(r ||
        1/K))`` with ``r = p(z | x, w)`` (eqs. 3-7); equal to the former when lambda = 0 and
        weight = 1.
    """
    log_probs = component_log_prob(x, means, scales)
    if z_inference == "enumerate":
        return torch.logsumexp(log_probs, -1) - math.log(log_probs.shape[-1])
    log_posterior = torch.log_softmax(log_probs, -1)
    conditional = (log_posterior.exp() * log_probs).sum(-1)
    kl = z_prior_kl(log_posterior)
    return conditional - z_prior_weight * kl.clamp(min=free_bits)


def elbo_per_sample(
    networks: GMVAENetworks,
    y: Tensor,
    num_particles: int = 1,
    z_inference: str = "enumerate",
    free_bits: float = 0.0,
    z_prior_weight: float = 1.0,
    noise: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """The GMVAE objective per data point in plain torch (eq. 4), averaged over M particles.

    Draws ``w`` then ``x`` from the guide for each particle, in the order the Pyro guide does,
    so that with the same random state it reproduces the Pyro loss exactly. With ``noise``,
    particle ``m`` of every row is ``loc + scale * noise[m]`` instead (common random numbers):
    each row's estimate then depends on that row alone, not on the others or their order.

    Parameters
    ----------
    networks : GMVAENetworks
    y : Tensor, shape (N, D)
    num_particles : int
        Monte Carlo samples M of (x, w) per data point.
    z_inference, free_bits, z_prior_weight
        As in :func:`conditional_prior_objective`; the defaults give the ELBO, a lower bound
        of ``log p(y)``.
    noise : (Tensor, Tensor), optional
        Standard normal draws of shapes (M, w_dim) and (M, x_dim), shared by every row.

    Returns
    -------
    Tensor, shape (N,)
    """
    x_loc, x_scale, w_loc, w_scale = networks.encode(y)
    q_w = dist.Normal(w_loc, w_scale).to_event(1)
    q_x = dist.Normal(x_loc, x_scale).to_event(1)
    prior_w = dist.Normal(torch.zeros_like(w_loc), torch.ones_like(w_scale)).to_event(1)
    total = torch.zeros(y.shape[0], dtype=y.dtype, device=y.device)
    for particle in range(num_particles):
        if noise is None:
            w, x = q_w.rsample(), q_x.rsample()
        else:
            w = w_loc + w_scale * noise[0][particle]
            x = x_loc + x_scale * noise[1][particle]
        means, scales = networks.conditional_prior(w)
        total = total + (
            networks.observation(x).log_prob(y)
            + conditional_prior_objective(x, means, scales, z_inference, free_bits, z_prior_weight)
            + prior_w.log_prob(w)
            - q_x.log_prob(x)
            - q_w.log_prob(w)
        )
    return total / num_particles


def cluster_log_joint(networks: GMVAENetworks, y: Tensor) -> Tensor:
    """``log pi_k + log N(x_bar | mu_k(w_bar), sigma_k(w_bar))`` at the encoder's means.

    ``x_bar`` and ``w_bar`` are the means of q(x | y) and q(w | y); the softmax over k is the
    z-posterior of eq. (3) at those points.

    Parameters
    ----------
    networks : GMVAENetworks
    y : Tensor, shape (N, D)

    Returns
    -------
    Tensor, shape (N, K)
    """
    x_loc, _, w_loc, _ = networks.encode(y)
    means, scales = networks.conditional_prior(w_loc)
    return component_log_prob(x_loc, means, scales) - math.log(networks.n_components)


#: Entries of the (rows, draws, K, Dx) block evaluated at once by :func:`marginal_log_joint`.
_BLOCK_ENTRIES = 2**22


def prior_w_draws(w_dim: int, n_draws: int, dtype: torch.dtype = torch.float32,
                  device: torch.device | str | None = None) -> Tensor:
    """Fixed draws of ``w ~ N(0, I)``: a scrambled Sobol sequence mapped by the normal quantile.

    Deterministic (the scrambling has a fixed seed), so every call gives the same points; a
    quasi-random sequence covers a low-dimensional ``w`` more evenly than independent draws.

    Parameters
    ----------
    w_dim : int
    n_draws : int
    dtype, device
        Of the result.

    Returns
    -------
    Tensor, shape (n_draws, w_dim)
    """
    engine = torch.quasirandom.SobolEngine(w_dim, scramble=True, seed=0)
    uniform = engine.draw(n_draws, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    return (math.sqrt(2.0) * torch.erfinv(2 * uniform - 1)).to(dtype=dtype, device=device)


def marginal_log_joint(networks: GMVAENetworks, y: Tensor, w_draws: Tensor) -> Tensor:
    """``log pi_k + log p(x_bar | z = k)`` with w integrated out over its prior.

    ``p(x | z = k) = E_{w ~ N(0, I)} N(x | mu_k(w), sigma_k(w))`` is estimated by the mean over
    the fixed draws ``w_draws`` (the same for every row), at the mean ``x_bar`` of q(x | y).
    The softmax over k is the model's z-posterior ``p(z | x_bar)``: unlike
    :func:`cluster_log_joint` it does not depend on the w-encoder, and it carries the spread
    of each component along w (the factor-analyser start puts each cluster's leading
    covariance directions there).

    Parameters
    ----------
    networks : GMVAENetworks
    y : Tensor, shape (N, D)
    w_draws : Tensor, shape (S, Dw)
        Draws of the prior of w (:func:`prior_w_draws`).

    Returns
    -------
    Tensor, shape (N, K)
    """
    x_loc = networks.encode(y)[0]
    means, scales = networks.conditional_prior(w_draws)  # (S, K, Dx)
    n_draws, n_components, x_dim = means.shape
    rows = max(1, _BLOCK_ENTRIES // (n_draws * n_components * x_dim))
    blocks = []
    for chunk in x_loc.split(rows):
        log_probs = component_log_prob(chunk[:, None, :], means, scales)  # (n, S, K)
        blocks.append(torch.logsumexp(log_probs, 1))
    return torch.cat(blocks) - math.log(n_draws) - math.log(n_components)


def sample(
    networks: GMVAENetworks,
    n_samples: int,
    component: int | None = None,
    generator: torch.Generator | None = None,
    observation: str = "sample",
) -> tuple[Tensor, Tensor]:
    """Ancestral samples of eqs. (1a-1d).

    Parameters
    ----------
    networks : GMVAENetworks
    n_samples : int
    component : int, optional
        Fix z to this cluster (the rows of Fig. 5a of Dilokthanakul et al. 2016); None draws
        z ~ Cat(1/K).
    generator : torch.Generator, optional
    observation : {"sample", "mean"}
        Return draws of y, or the mean of p(y | x) (pixel probabilities for Bernoulli).

    Returns
    -------
    y : Tensor, shape (n_samples, D)
    z : Tensor, shape (n_samples,)
    """
    param = next(networks.parameters())
    options = {"dtype": param.dtype, "device": param.device}
    w = torch.randn(n_samples, networks.w_dim, generator=generator, **options)
    if component is None:
        z = torch.randint(networks.n_components, (n_samples,), generator=generator,
                          device=param.device)
    else:
        z = torch.full((n_samples,), component, dtype=torch.long, device=param.device)
    means, scales = networks.conditional_prior(w)
    index = torch.arange(n_samples, device=param.device)
    noise = torch.randn(n_samples, networks.x_dim, generator=generator, **options)
    x = means[index, z] + scales[index, z] * noise
    raw = networks.decoder(x)
    if networks.likelihood == "bernoulli":
        probs = torch.sigmoid(raw)
        if observation == "mean":
            return probs, z
        return torch.bernoulli(probs, generator=generator), z
    if networks.observation_scale is not None:
        loc, scale = raw, torch.full_like(raw, networks.observation_scale)
    else:
        loc, scale = _split_gaussian(raw, networks.data_dim)
    if observation == "mean":
        return loc, z
    return loc + scale * torch.randn(loc.shape, generator=generator, **options), z


# ---------------------------------------------------------------------------------------------
# Pyro model and guide
# ---------------------------------------------------------------------------------------------


@dataclass(eq=False)
class GMVAEModel:
    """The GMVAE as a Pyro model ``model(y, subsample=None)`` with its guide ``model.guide``.

    Parameters
    ----------
    networks : GMVAENetworks
    z_inference : {"enumerate", "closed_form"}, default "enumerate"
        See the module docstring.
    free_bits : float, default 0.0
        Threshold lambda of the z-prior term, eq. (7) (``"closed_form"`` only).
    z_prior_weight : float, default 1.0
        Weight of the z-prior term (``"closed_form"`` only).
    name : str, default "gmvae"
        Prefix of the networks' parameters in the Pyro param store.
    z_site : bool, default False
        ``"enumerate"`` only: sample ``z`` at a discrete site that ``TraceEnum_ELBO``
        enumerates (the model of earlier releases) instead of summing it out inside the
        ``"x"`` site; the same ELBO, one site more and slower steps.
    freeze_prior : bool, default False
        Keep the conditional prior network ``beta`` at its start: the model runs it with
        detached parameters (:meth:`GMVAENetworks.conditional_prior` with ``frozen=True``), so
        the ELBO's gradients never reach them and SVI trains the encoder and the decoder
        only. After the GMM start this keeps the mixture it starts from.

    Sites: ``"w"`` (N, Dw), ``"z"`` (N,) enumerated (``"enumerate"`` with ``z_site=True``
    only), ``"x"`` (N, Dx), ``"z_prior"`` factor (``"closed_form"`` only), ``"obs"`` (N, D).

    ``model(y, sample_weight=w)`` (and the guide alike) scales every site of row n by
    ``w_n`` (``poutine.scale``), so the ELBO is ``sum_n w_n ELBO_n``: integer weights are
    repeated rows. Pyro's enumerated ELBO takes only scalar scales, so under weights
    ``"enumerate"`` sums ``z`` out inside the ``"x"`` site (:class:`MarginalComponents`, the
    same ``p(x | w)``) even with ``z_site=True``.
    """

    max_plate_nesting = 1

    networks: GMVAENetworks
    z_inference: str = "enumerate"
    free_bits: float = 0.0
    z_prior_weight: float = 1.0
    name: str = "gmvae"
    z_site: bool = False
    freeze_prior: bool = False

    def _register(self) -> GMVAENetworks:
        return pyro.module(self.name, self.networks, update_module_params=True)

    def __call__(self, y: Tensor, subsample: Tensor | None = None,
                 sample_weight: Tensor | None = None) -> None:
        """The generative model, eqs. (1a-1d), over the rows ``subsample`` of ``y`` (N, D).

        ``sample_weight`` (N,), optional: each row's weight (see the class docstring).
        """
        networks = self._register()
        w_dim, n_components = networks.w_dim, networks.n_components
        with pyro.plate("data", y.shape[0], subsample=subsample) as index, _row_scale(
                sample_weight, index):
            batch = y[index]
            zeros = batch.new_zeros(w_dim)
            w = pyro.sample("w", dist.Normal(zeros, 1.0).expand([len(index), w_dim]).to_event(1))
            means, scales = networks.conditional_prior(w, frozen=self.freeze_prior)
            if self.z_inference == "enumerate" and (sample_weight is not None
                                                    or not self.z_site):
                x = pyro.sample("x", MarginalComponents(means, scales))
            elif self.z_inference == "enumerate":
                z = pyro.sample(
                    "z",
                    dist.Categorical(logits=batch.new_zeros(n_components)),
                    infer={"enumerate": "parallel"},
                )
                loc, scale = Vindex(means)[..., z, :], Vindex(scales)[..., z, :]
                x = pyro.sample("x", dist.Normal(loc, scale).to_event(1))
            else:
                x = pyro.sample("x", ExpectedComponentLogProb(means, scales))
                kl = z_prior_kl(z_posterior_logits(x, means, scales))
                pyro.factor("z_prior", -self.z_prior_weight * kl.clamp(min=self.free_bits))
            pyro.sample("obs", networks.observation(x), obs=batch)

    def guide(self, y: Tensor, subsample: Tensor | None = None,
              sample_weight: Tensor | None = None) -> None:
        """The recognition model q(w | y) q(x | y) (eq. 3's family, Table A.1)."""
        networks = self._register()
        with pyro.plate("data", y.shape[0], subsample=subsample) as index, _row_scale(
                sample_weight, index):
            x_loc, x_scale, w_loc, w_scale = networks.encode(y[index])
            pyro.sample("w", dist.Normal(w_loc, w_scale).to_event(1))
            pyro.sample("x", dist.Normal(x_loc, x_scale).to_event(1))


def _row_scale(sample_weight: Tensor | None, index: Tensor) -> Any:
    """Scale the sites of the rows ``index`` by their weights (nothing without weights; rows
    of weight 0 masked: :func:`~ppl_mixtures.models._sites.weighted_rows`)."""
    if sample_weight is not None and sample_weight.shape[0] <= int(index.max()):
        raise ValueError(f"sample_weight has {sample_weight.shape[0]} entries; expected one per "
                         "row of y")
    return weighted_rows(None if sample_weight is None else sample_weight[index])
