"""The deep Gaussian mixture model (DGMM): parameters, path moments, Pyro model and guides.

Generative model (Selosse et al. 2020, eq. 1), layers ``l = 1..h`` with ``p_0 = D`` and
``p_l = r_l``::

    s_l[n]      ~ Categorical(pi^(l))                      sites "s1".."sh"  (enumerated)
    z^(h)[n]    ~ N(0, I_{r_h})                            site  "zh"        (latent form)
    z^(l-1)[n]  = eta^(l)_{s_l} + Lambda^(l)_{s_l} z^(l)[n] + u^(l)[n],
                  u^(l)[n] ~ N(0, diag(psi^(l)_{s_l}))     sites "z{l-1}", and "obs" for l = 1

so that ``x = z^(0)``. Integrating the scores out gives the *global GMM* of eq. (3): one
Gaussian per path ``s = (s_1, ..., s_h)`` with weight ``prod_l pi^(l)_{s_l}`` (eq. 4), mean
(eq. 5) and covariance (eq. 6)::

    mu_s    = eta^(1) + Lambda^(1) (eta^(2) + Lambda^(2) (... eta^(h)))
    Sigma_s = Psi^(1) + Lambda^(1) (Psi^(2) + Lambda^(2) (... (Psi^(h) + Lambda^(h) Lambda^(h)^T)
              ...) Lambda^(2)^T) Lambda^(1)^T

(eqs. (7)-(10) are the same recursion started at a deeper layer). :func:`path_moments`
evaluates it, :func:`component_log_prob` scores data under every path, and the Pyro model's
collapsed form scores its ``"obs"`` site with that same helper, as the EM E-step of
:mod:`ppl_mixtures.inference.em.dgmm` does.

Path ordering
-------------
Paths are numbered row-major over ``(s_1, ..., s_h)`` with ``s_1`` the *slowest* index, as
``numpy.ravel_multi_index``: ``path = sum_l s_l * prod_{k > l} G_k``. For G = (3, 3, 2), path 0
is (0, 0, 0), path 1 is (0, 0, 1), path 2 is (0, 1, 0), ..., path 17 is (2, 2, 1).
:func:`path_index` and :func:`layer_labels` convert both ways; :func:`path_layer_labels`
lists every path's labels.

Sites
-----
Global: ``"weights{l}"`` (G_l,), ``"eta{l}"`` (G_l, p_{l-1}), ``"loadings{l}"``
(G_l, p_{l-1}, r_l), ``"noise_variances{l}"`` (G_l, p_{l-1}), with plates ``"components{l}"``.
Local (plate ``"data"``): ``"s1".."sh"`` (enumerated), ``"z1".."zh"`` (latent form only) and
``"obs"``. ``max_plate_nesting`` is 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoDelta
from pyro.ops.indexing import Vindex
from torch import Tensor

from ppl_mixtures.models import _sites, gmm
from ppl_mixtures.models._observation import TableObservation
from ppl_mixtures.models._sites import DataPlateModel, LocalGaussianGuide

FORMS = ("collapsed", "latent")
#: Per-layer global site stems; the site of layer l is ``stem + str(l)``.
LAYER_SITES = ("weights", "eta", "loadings", "noise_variances")


@dataclass
class DGMMParams:
    """Parameters of a deep Gaussian mixture with h layers (lists index layers 1..h as 0..h-1).

    Attributes
    ----------
    weights : list of Tensor, shape (G_l,)
        Mixing proportions pi^(l) of each layer.
    eta : list of Tensor, shape (G_l, p_{l-1})
        Intercepts eta^(l)_g.
    loadings : list of Tensor, shape (G_l, p_{l-1}, r_l)
        Loading matrices Lambda^(l)_g.
    noise_variances : list of Tensor, shape (G_l, p_{l-1})
        Diagonals of the noise covariances Psi^(l)_g (variances, positive).
    """

    weights: list[Tensor]
    eta: list[Tensor]
    loadings: list[Tensor]
    noise_variances: list[Tensor]

    @property
    def n_layers(self) -> int:
        return len(self.weights)

    @property
    def n_components(self) -> tuple[int, ...]:
        return tuple(int(w.shape[0]) for w in self.weights)

    @property
    def n_factors(self) -> tuple[int, ...]:
        return tuple(int(lam.shape[-1]) for lam in self.loadings)

    @property
    def n_features(self) -> int:
        return int(self.eta[0].shape[-1])

    @property
    def n_paths(self) -> int:
        return math.prod(self.n_components)

    def to(self, *args: Any, **kwargs: Any) -> DGMMParams:
        """Move every tensor, as ``Tensor.to`` does."""
        return DGMMParams(*[[t.to(*args, **kwargs) for t in getattr(self, name)]
                            for name in ("weights", "eta", "loadings", "noise_variances")])

    def tensors(self) -> dict[str, Tensor]:
        """Flat dict ``{"weights1": ..., "eta1": ..., ...}`` keyed by the model's site names."""
        return params_to_sites(self)

    @classmethod
    def from_numpy(cls, arrays: dict[str, Sequence[Any]], dtype: torch.dtype = torch.float64,
                   device: Any = None) -> DGMMParams:
        """Build from a dict of per-layer arrays, as :func:`~ppl_mixtures.datasets.make_dgmm`
        returns (keys ``weights``, ``eta``, ``loadings``, ``noise_variances``)."""
        return cls(*[[torch.as_tensor(a, dtype=dtype, device=device) for a in arrays[name]]
                     for name in ("weights", "eta", "loadings", "noise_variances")])


# ---------------------------------------------------------------------------------------------
# Path bookkeeping
# ---------------------------------------------------------------------------------------------


def _strides(n_components: Sequence[int]) -> list[int]:
    """``stride_l = prod_{k > l} G_k``: s_1 is the slowest index."""
    return [math.prod(n_components[index + 1:]) for index in range(len(n_components))]


def path_index(labels: Tensor | Sequence[Tensor], n_components: Sequence[int]) -> Tensor:
    """Global path number of per-layer labels (row-major, s_1 slowest).

    Parameters
    ----------
    labels : Tensor of long, shape (..., h), or a sequence of h broadcastable long tensors
        ``s_1, ..., s_h`` (the second form takes enumerated Pyro values as they come).
    n_components : sequence of int
        ``(G_1, ..., G_h)``.

    Returns
    -------
    Tensor of long, the broadcast shape of the labels, values in ``[0, prod G_l)``.
    """
    if isinstance(labels, Tensor):
        labels = labels.unbind(-1)
    return sum(s * stride for s, stride in zip(labels, _strides(n_components), strict=True))


def layer_labels(path: Tensor, n_components: Sequence[int]) -> Tensor:
    """Inverse of :func:`path_index`: per-layer labels of path numbers.

    Parameters
    ----------
    path : Tensor of long, any shape
    n_components : sequence of int

    Returns
    -------
    Tensor of long, shape ``path.shape + (h,)``
    """
    return torch.stack([torch.div(path, stride, rounding_mode="floor") % size
                        for size, stride in zip(n_components, _strides(n_components),
                                                strict=True)], dim=-1)


def path_layer_labels(n_components: Sequence[int], device: Any = None) -> Tensor:
    """Labels of every path in path order, Tensor of long, shape (P, h)."""
    paths = torch.arange(math.prod(n_components), device=device)
    return layer_labels(paths, n_components)


def _path_gather(params: DGMMParams) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Per layer, the (eta, loadings, noise variances) of each path's component: (P, ...)."""
    table = path_layer_labels(params.n_components, params.eta[0].device)
    return [(params.eta[layer][table[:, layer]], params.loadings[layer][table[:, layer]],
             params.noise_variances[layer][table[:, layer]]) for layer in range(params.n_layers)]


# ---------------------------------------------------------------------------------------------
# Deterministic helpers
# ---------------------------------------------------------------------------------------------


def path_log_weights(params: DGMMParams) -> Tensor:
    """``log pi_s = sum_l log pi^(l)_{s_l}`` (eq. 4), shape (P,), in path order."""
    table = path_layer_labels(params.n_components, params.weights[0].device)
    return sum(w.log()[table[:, layer]] for layer, w in enumerate(params.weights))


def path_moments(params: DGMMParams) -> tuple[Tensor, Tensor, Tensor]:
    """Weights, means and covariances of the global GMM, eqs. (3)-(6) (and (8)-(10)).

    Evaluated from the deepest layer up: ``m = eta^(h)``, ``C = Psi^(h) + Lambda^(h)
    Lambda^(h)^T``, then for ``l = h-1, ..., 1``: ``m <- eta^(l) + Lambda^(l) m`` and
    ``C <- Psi^(l) + Lambda^(l) C Lambda^(l)^T``, vectorised over the P paths.

    Parameters
    ----------
    params : DGMMParams

    Returns
    -------
    log_weights : Tensor, shape (P,)
    means : Tensor, shape (P, D)
    covariances : Tensor, shape (P, D, D)
    """
    layers = _path_gather(params)
    eta, loadings, noise = layers[-1]
    means = eta
    covariances = loadings @ loadings.transpose(-1, -2) + torch.diag_embed(noise)
    for eta, loadings, noise in reversed(layers[:-1]):
        means = eta + (loadings @ means[..., None]).squeeze(-1)
        covariances = loadings @ covariances @ loadings.transpose(-1, -2) + torch.diag_embed(noise)
    return path_log_weights(params), means, covariances


def joint_moments(params: DGMMParams) -> tuple[Tensor, Tensor]:
    """Joint mean and covariance of ``y = (x, z^(1), ..., z^(h))`` given each path.

    Built from the top down: ``z^(h) ~ N(0, I)`` and ``z^(l-1) = eta^(l) + Lambda^(l) z^(l) +
    u^(l)`` give ``Cov(z^(l-1), z^(k)) = Lambda^(l) Cov(z^(l), z^(k))`` for ``k >= l`` and
    ``Var(z^(l-1)) = Lambda^(l) Var(z^(l)) Lambda^(l)^T + Psi^(l)`` (eq. 1). The ``x`` block is
    :func:`path_moments`' ``means`` / ``covariances``. Blocks are ordered ``x, z^(1), ...,
    z^(h)``, of sizes ``D, r_1, ..., r_h`` (total ``D + R``, ``R = sum_l r_l``).

    Returns
    -------
    means : Tensor, shape (P, D + R)
    covariances : Tensor, shape (P, D + R, D + R)
    """
    layers = _path_gather(params)
    n_paths, r_top = params.n_paths, params.n_factors[-1]
    like = params.eta[0]
    means = like.new_zeros(n_paths, r_top)
    covariances = torch.eye(r_top, dtype=like.dtype, device=like.device).expand(
        n_paths, r_top, r_top)
    for eta, loadings, noise in reversed(layers):
        width = loadings.shape[-1]  # the block z^(l) is the first `width` coordinates
        cross = loadings @ covariances[:, :width, :]  # Cov(z^(l-1), (z^(l), ..., z^(h)))
        top = cross[:, :, :width] @ loadings.transpose(-1, -2) + torch.diag_embed(noise)
        covariances = torch.cat([torch.cat([top, cross], -1),
                                 torch.cat([cross.transpose(-1, -2), covariances], -1)], -2)
        new_mean = eta + (loadings @ means[:, :width, None]).squeeze(-1)
        means = torch.cat([new_mean, means], -1)
    return means, covariances


def as_gmm(params: DGMMParams) -> gmm.GMMParams:
    """The global GMM of eq. (3) as a full-covariance :class:`~ppl_mixtures.models.gmm.GMMParams`
    with P components in path order."""
    log_weights, means, covariances = path_moments(params)
    return gmm.GMMParams(log_weights.exp(), means, covariances, "full")


def component_log_prob(x: Tensor, params: DGMMParams) -> Tensor:
    """``log N(x_n | mu_s, Sigma_s)`` for every sample and path.

    Dense: the P path covariances are multiplied out and factorised in float64 whatever the
    parameters' dtype (a path covariance ``Psi + Lambda C Lambda^T`` rounded to float32 is
    not positive definite any more once ``Psi`` is small next to it), then the whitened
    distances of :func:`ppl_mixtures.models.gmm.component_log_prob` (vectorised over paths,
    chunked over rows, differentiable).

    Parameters
    ----------
    x : Tensor, shape (N, D)
    params : DGMMParams
        With P paths, the product of ``params.n_components``.

    Returns
    -------
    Tensor, shape (N, P)
        Column s for path s, in the path order of the module docstring.
    """
    dtype = params.eta[0].dtype
    log_weights, means, covariances = path_moments(params.to(torch.float64))
    factors = gmm.float64_factors(covariances)
    mixture = gmm.GMMParams(log_weights.exp().to(dtype), means.to(dtype),
                            covariances.to(dtype), "full")
    return gmm.component_log_prob(x, mixture, factors)


def log_joint(x: Tensor, params: DGMMParams) -> Tensor:
    """``log pi_s + log N(x_n | mu_s, Sigma_s)``, shape (n_samples, P); its logsumexp over paths
    is the log-likelihood of eq. (3)."""
    return component_log_prob(x, params) + path_log_weights(params)


def log_likelihood(x: Tensor, params: DGMMParams) -> Tensor:
    """Marginal log-likelihood of every sample, shape (n_samples,)."""
    return torch.logsumexp(log_joint(x, params), dim=-1)


def _draw_paths(params: DGMMParams, paths: Tensor, generator: torch.Generator | None) -> Tensor:
    """Ancestral draws of x given path numbers (any shape), through the layers (eq. 1)."""
    labels = layer_labels(paths, params.n_components)
    like = params.eta[0]

    def normal(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=generator, dtype=like.dtype, device=like.device)

    scores = normal(*paths.shape, params.n_factors[-1])
    for layer in reversed(range(params.n_layers)):
        s = labels[..., layer]
        eta, loadings = params.eta[layer][s], params.loadings[layer][s]
        noise_sd = params.noise_variances[layer][s].sqrt()
        scores = eta + (loadings @ scores[..., None]).squeeze(-1) + noise_sd * normal(*eta.shape)
    return scores


def sample(params: DGMMParams, n_samples: int,
           generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Draw from the DGMM by ancestral sampling through the layers (eq. 1).

    Returns
    -------
    x : Tensor, shape (n_samples, n_features)
    paths : Tensor of long, shape (n_samples,)
        Path numbers (see the module docstring); :func:`layer_labels` gives the layers'.
    """
    log_weights = path_log_weights(params)
    paths = torch.multinomial(log_weights.exp(), n_samples, replacement=True,
                              generator=generator)
    return _draw_paths(params, paths, generator), paths


# ---------------------------------------------------------------------------------------------
# Priors and Pyro sites <-> parameters
# ---------------------------------------------------------------------------------------------


def default_dgmm_priors(
    x: Tensor,
    n_components: Sequence[int],
    n_factors: Sequence[int],
    *,
    weight_concentration: float = 1.0,
    scale_factor: float = 3.0,
    latent_scale: float = 10.0,
    variance_concentration: float = 1.0,
    variance_rate_factor: float = 0.01,
    moments: tuple[Tensor, Tensor] | None = None,
) -> dict[str, dist.Distribution]:
    """Weak, data-scaled priors for :class:`DeepGaussianMixtureModel`; replace any of them.

    Layer 1 (the data): ``eta1 ~ N(data mean, scale_factor * data std)`` per feature,
    ``loadings1 ~ N(0, scale_factor * data std)`` per row, ``noise_variances1 ~
    InverseGamma(variance_concentration, variance_rate_factor * data variance)``. Deeper
    layers live on the scale of latent scores, which the model fixes only through
    ``z^(h) ~ N(0, I)``: ``eta{l}, loadings{l} ~ N(0, latent_scale)`` and
    ``noise_variances{l} ~ InverseGamma(variance_concentration, variance_rate_factor)``.
    Weights are symmetric Dirichlet. Each prior is for one component; the model expands it
    over the layer's ``"components{l}"`` plate.

    Parameters
    ----------
    x : Tensor, shape (n_samples, n_features)
    n_components, n_factors : sequence of int, length h
    moments : (Tensor, Tensor), optional
        The data's per-feature mean and variance, each (n_features,), when they are not those
        of ``x`` (weighted rows, a batch of a stream).

    Returns
    -------
    dict[str, Distribution]
        Keys ``"weights{l}"``, ``"eta{l}"``, ``"loadings{l}"``, ``"noise_variances{l}"``.
    """
    if moments is not None:
        data_mean, data_var = (m.to(dtype=x.dtype, device=x.device) for m in moments)
    else:
        data_mean = x.mean(0)
        data_var = x.var(0) if x.shape[0] > 1 else torch.ones_like(data_mean)
    data_var = data_var.clamp_min(1e-12)
    data_sd = data_var.sqrt()
    priors: dict[str, dist.Distribution] = {}
    widths = [x.shape[-1], *n_factors]
    for index, size in enumerate(n_components):
        layer, width, rank = index + 1, widths[index], widths[index + 1]
        if index == 0:
            loc, scale, rate = data_mean, scale_factor * data_sd, variance_rate_factor * data_var
        else:
            loc = x.new_zeros(width)
            scale = x.new_full((width,), latent_scale)
            rate = x.new_full((width,), variance_rate_factor)
        priors[f"weights{layer}"] = dist.Dirichlet(x.new_full((size,), weight_concentration))
        priors[f"eta{layer}"] = dist.Normal(loc, scale).to_event(1)
        priors[f"loadings{layer}"] = dist.Normal(
            x.new_zeros(width, rank), scale[:, None].expand(width, rank)).to_event(2)
        priors[f"noise_variances{layer}"] = dist.InverseGamma(
            torch.full_like(rate, variance_concentration), rate).to_event(1)
    return priors


def params_to_sites(params: DGMMParams) -> dict[str, Tensor]:
    """The values of the model's global sites that correspond to ``params``."""
    return {f"{stem}{layer + 1}": getattr(params, stem)[layer]
            for layer in range(params.n_layers) for stem in LAYER_SITES}


def sites_to_params(sites: dict[str, Tensor], n_layers: int) -> DGMMParams:
    """Inverse of :func:`params_to_sites`."""
    return DGMMParams(*[[sites[f"{stem}{layer + 1}"] for layer in range(n_layers)]
                        for stem in LAYER_SITES])


class PathObservation(TableObservation):
    """``x | path ~ N(mu_path, Sigma_path)`` scored by :func:`component_log_prob`.

    The ``"obs"`` site of the collapsed :class:`DeepGaussianMixtureModel`: the (N, P) table is
    computed once with EM's helper and the entries of the enumerated path are picked.
    """

    def _table(self, x: Tensor) -> Tensor:
        return component_log_prob(x, self.params)

    def _draw(self, labels: Tensor) -> Tensor:
        return _draw_paths(self.params, labels, None)


# ---------------------------------------------------------------------------------------------
# Pyro model and guides
# ---------------------------------------------------------------------------------------------


class DeepGaussianMixtureModel(DataPlateModel):
    """The DGMM as a Pyro model with one enumerated site per layer, in two forms.

    Parameters
    ----------
    n_components : sequence of int
        ``(G_1, ..., G_h)``.
    n_factors : sequence of int
        ``(r_1, ..., r_h)``; the estimator checks ``D > r_1 > ... > r_h``.
    n_features : int
        D.
    priors : dict[str, Distribution]
        One prior per global site; start from :func:`default_dgmm_priors`.
    form : {"collapsed", "latent"}, default "collapsed"
        ``"collapsed"``: the scores are integrated out and ``"obs"`` is the path Gaussian of
        eqs. (3)-(6), scored by :func:`component_log_prob`. ``"latent"``: every score
        ``z^(l)`` is a sampled site ``"z{l}"`` of shape (N, r_l) and each layer is the
        conditional Gaussian of eq. (2); pair it with :class:`LatentScoreGuide`.

    Notes
    -----
    Call it as ``model(x)``, ``model(x, subsample=idx)`` (likelihood scaled by ``N/len(idx)``)
    or ``model(n_samples=N)`` to draw from the prior predictive. The enumerated ``s_l`` of
    layer l occupies enumeration dim ``-(l + 1)``; the collapsed form combines them into the
    path number with :func:`path_index` and picks the table's column with ``Vindex``; the
    latent form indexes each layer's parameters by its ``s_l`` with ``Vindex``. Global sites
    must be unbatched (one value each; no vectorised particles).
    """

    _params_to_sites = staticmethod(params_to_sites)

    def __init__(self, n_components: Sequence[int], n_factors: Sequence[int], n_features: int,
                 priors: dict[str, dist.Distribution], form: str = "collapsed") -> None:
        if form not in FORMS:
            raise ValueError(f"form={form!r} is not one of {FORMS}")
        if len(n_components) != len(n_factors):
            raise ValueError("n_components and n_factors must have the same length (layers)")
        self.n_components = tuple(int(g) for g in n_components)
        self.n_factors = tuple(int(r) for r in n_factors)
        self.n_features = int(n_features)
        self.n_layers = len(self.n_components)
        needed = [f"{stem}{layer}" for layer in range(1, self.n_layers + 1) for stem in LAYER_SITES]
        _sites.check_priors(priors, needed, "default_dgmm_priors")
        self.priors = priors
        self.form = form

    @property
    def discrete_sites(self) -> tuple[str, ...]:
        return tuple(f"s{layer}" for layer in range(1, self.n_layers + 1))

    @property
    def local_sites(self) -> tuple[str, ...]:
        """Sites of the data plate that a guide over the global sites must not see."""
        scores = tuple(f"z{layer}" for layer in range(1, self.n_layers + 1))
        return self.discrete_sites + (scores if self.form == "latent" else ())

    def _sample_globals(self) -> dict[str, Tensor]:
        widths = (self.n_features, *self.n_factors)
        sites: dict[str, Tensor] = {}
        for index, size in enumerate(self.n_components):
            layer, width, rank = index + 1, widths[index], widths[index + 1]
            sites[f"weights{layer}"] = pyro.sample(f"weights{layer}",
                                                   self.priors[f"weights{layer}"])
            shapes = {"eta": (width,), "loadings": (width, rank), "noise_variances": (width,)}
            with pyro.plate(f"components{layer}", size):
                for stem, shape in shapes.items():
                    name = f"{stem}{layer}"
                    sites[name] = pyro.sample(
                        name, _sites.site_distribution(self.priors[name], shape, name))
        return sites

    def _latent_observation(self, params: DGMMParams, labels: list[Tensor]) -> dist.Distribution:
        """Sample z^(h), ..., z^(1) (eq. 2) and return the distribution of x given z^(1)."""
        like = params.eta[0]
        r_top = self.n_factors[-1]
        scores = pyro.sample(
            f"z{self.n_layers}",
            dist.Normal(like.new_zeros(r_top), like.new_ones(r_top)).to_event(1))
        for index in reversed(range(self.n_layers)):
            s = labels[index]
            loadings = Vindex(params.loadings[index])[..., s, :, :]
            loc = Vindex(params.eta[index])[..., s, :] + (loadings @ scores[..., None]).squeeze(-1)
            scale = Vindex(params.noise_variances[index])[..., s, :].sqrt()
            layer_dist = dist.Normal(loc, scale).to_event(1)
            if index == 0:
                return layer_dist
            scores = pyro.sample(f"z{index}", layer_dist)
        raise AssertionError("unreachable")

    def _sample_locals(self, sites: dict[str, Tensor]) -> dist.Distribution:
        params = sites_to_params(sites, self.n_layers)
        labels = [_sites.sample_labels(f"s{index + 1}", params.weights[index])
                  for index in range(self.n_layers)]
        if self.form == "collapsed":
            return PathObservation(params, path_index(labels, self.n_components), self.n_features)
        return self._latent_observation(params, labels)

    def _weigh_rows(self, sites: dict[str, Tensor], observation: dist.Distribution,
                    observed: Tensor, weights: Tensor) -> None:
        """Collapsed form: the factor ``(w_n - 1) log p(x_n)``, ``log p(x_n)`` the logsumexp
        over paths of ``log pi_path + log N(x_n | mu_path, Sigma_path)`` (eq. 3), so the rows
        count ``w_n log p(x_n)`` (see :meth:`DataPlateModel._weigh_rows`)."""
        params = sites_to_params(sites, self.n_layers)
        if any(w.dim() != 1 for w in params.weights):
            raise ValueError("sample_weight needs one value of every global site (no "
                             "vectorised particles or batched draws)")
        log_marginal = torch.logsumexp(log_joint(observed, params), dim=-1)
        pyro.factor(self.weight_site, (weights - 1.0) * log_marginal)


def map_guide(model: DeepGaussianMixtureModel, init_params: DGMMParams) -> AutoDelta:
    """Point masses on the global sites (MAP), started at copies of ``init_params``.

    For the collapsed form, ``-TraceEnum_ELBO`` with this guide equals
    ``log p(x | theta) + log p(theta)`` at the guide's values: the layers' labels are summed
    out by enumeration and the scores analytically.
    """
    return _sites.point_mass_guide(model, params_to_sites(init_params), model.local_sites)


def posterior_scores(x: Tensor, params: DGMMParams) -> tuple[Tensor, Tensor]:
    """Posterior of all scores ``Z = (z^(1), ..., z^(h))`` given ``x`` and each path.

    Gaussian conditioning of :func:`joint_moments`: with ``C_x = Sigma_s = L L^T``,
    ``E[Z | x, s] = m_Z + C_Zx Sigma_s^-1 (x - mu_s)`` and ``Cov[Z | x, s] = C_ZZ - C_Zx
    Sigma_s^-1 C_xZ`` (the latter does not depend on x).

    Parameters
    ----------
    x : Tensor, shape (n_samples, D)
    params : DGMMParams
        With P paths and ``R = sum_l r_l`` scores per row.

    Returns
    -------
    means : Tensor, shape (n_samples, P, R)
    covariances : Tensor, shape (P, R, R)
    """
    dtype = params.eta[0].dtype
    means, covariances = joint_moments(params.to(torch.float64))
    d, n_paths = params.n_features, params.n_paths
    factors = gmm.float64_factors(covariances[:, :d, :d])  # float64, whatever the dtype
    cross = covariances[:, :d, d:]  # C_xZ, (P, D, R)
    gain = torch.cholesky_solve(cross, factors)  # Sigma^-1 C_xZ, (P, D, R)
    # E[Z | x, s] = (m_Z - mu_s^T gain_s) + x^T gain_s: one (N, D) @ (D, P R) product
    offsets = (means[:, d:] - (means[:, None, :d] @ gain).squeeze(-2)).to(dtype)  # (P, R)
    stacked = gain.permute(1, 0, 2).reshape(d, -1).to(dtype)
    score_means = (x @ stacked).view(x.shape[0], n_paths, -1) + offsets
    score_cov = covariances[:, d:, d:] - cross.transpose(-1, -2) @ gain
    return score_means, (0.5 * (score_cov + score_cov.transpose(-1, -2))).to(dtype)


class LatentScoreGuide(LocalGaussianGuide):
    """Guide of the latent form: MAP globals and a local Gaussian over all of a row's scores.

    ``q(theta, Z) = delta(theta) prod_n N(Z_n | m_n, S_n S_n^T)`` with ``Z_n = (z^(1)_n, ...,
    z^(h)_n)`` of size ``R = sum_l r_l``, one mean (N, R) and lower-triangular factor (N, R, R)
    per row, held as Pyro params ``"LatentScoreGuide.loc"`` / ``"LatentScoreGuide.scale_tril"``.
    The joint draw is an auxiliary site ``"_scores"`` (whose log density the ELBO counts) and each
    ``"z{l}"`` is a ``Delta`` on its block, so the guide correlates the layers' scores. ``q`` does
    not depend on the enumerated labels, so the ELBO is a lower bound of the collapsed
    ``log p(x | theta) + log p(theta)``; with a single path (every ``G_l = 1``) and ``q`` at the
    exact posterior (:func:`posterior_scores`) it *equals* it for every draw. Local
    parameters are the simplest correct choice for small problems (no amortisation).

    Parameters
    ----------
    model : DeepGaussianMixtureModel
        A model of form ``"latent"``.
    init_params : DGMMParams
    x : Tensor, shape (n_samples, D), optional
        When given, ``q(Z_n)`` starts at the exact posterior under the row's most probable
        path; otherwise at ``N(0, I)``.
    """

    loc_param = "LatentScoreGuide.loc"
    scale_tril_param = "LatentScoreGuide.scale_tril"
    like_site = "eta1"

    def __init__(self, model: DeepGaussianMixtureModel, init_params: DGMMParams,
                 x: Tensor | None = None) -> None:
        super().__init__(model, map_guide, init_params, sum(model.n_factors))
        if x is not None:
            with torch.no_grad():
                means, covariances = posterior_scores(x, init_params)
                joint = log_joint(x, init_params)
                self._init_locals = _sites.posterior_at_best(joint, means, covariances)

    def _sample_scores(self, sites: dict[str, Tensor], scores: dist.Distribution) -> None:
        # the auxiliary site carries log q (the ELBO counts it); the Deltas only split it
        joint = pyro.sample("_scores", scores, infer={"is_auxiliary": True})
        start = 0
        for index, width in enumerate(self.model.n_factors):
            block = joint[..., start:start + width]
            sites[f"z{index + 1}"] = pyro.sample(
                f"z{index + 1}", dist.Delta(block, event_dim=1))
            start += width


def guide_params(guide: AutoDelta | LatentScoreGuide, n_layers: int) -> DGMMParams:
    """The global parameters held by a guide (its point masses)."""
    with torch.no_grad():
        return sites_to_params(guide.median(), n_layers)


# ---------------------------------------------------------------------------- counting


def n_parameters(n_features: int, n_components: Sequence[int], n_factors: Sequence[int]) -> int:
    """Free parameters of a DGMM, after removing its known continuous symmetries.

    Per layer l (p_0 = D, p_l = r_l): ``G_l - 1`` weights, ``G_l p_{l-1}`` intercepts,
    ``G_l p_{l-1} r_l`` loadings and ``G_l p_{l-1}`` noise variances. Then subtract:

    - last layer: ``G_h r_h (r_h - 1) / 2``, since only ``Lambda^(h)_g Lambda^(h)_g^T`` enters
      the likelihood (eq. 6), each ``Lambda^(h)_g`` is defined up to its own rotation (the MFA
      count of each last-layer component);
    - each intermediate score z^(l), ``l < h``: ``2 r_l``, for a shift ``z -> z + c`` (absorbed by
      ``eta^(l+1) += c``, ``eta^(l) -= Lambda^(l) c``) and a per-coordinate scale ``z -> D z``
      (absorbed by ``Lambda^(l) D^-1`` and ``D eta^(l+1), D Lambda^(l+1), D^2 Psi^(l+1)``).
      An intermediate rotation is not a symmetry when ``G_{l+1} >= 2``: it would make the
      ``Psi^(l+1)_g`` non-diagonal. When ``G_{l+1} = 1`` a rotation in the metric whitened by
      that single ``Psi^(l+1)`` keeps it diagonal: ``r_l (r_l - 1) / 2`` more are subtracted
      (see :mod:`ppl_mixtures.models.dgmm_identify`).

    (The deepgmm package subtracts ``r_l (r_l - 1) / 2`` per component of every layer instead;
    BIC values are therefore not comparable with the paper's to the unit.)

    Parameters
    ----------
    n_features : int
    n_components, n_factors : sequence of int, length h

    Returns
    -------
    int
    """
    widths = [n_features, *n_factors]
    count = 0
    for layer, size in enumerate(n_components):
        width, rank = widths[layer], widths[layer + 1]
        count += (size - 1) + size * width * (rank + 2)
    r_top = n_factors[-1]
    count -= n_components[-1] * r_top * (r_top - 1) // 2
    count -= sum(2 * r for r in n_factors[:-1])
    count -= sum(r * (r - 1) // 2 for r, below in zip(n_factors[:-1], n_components[1:], strict=True)
                 if below == 1)
    return count


#: The list fields of :class:`~ppl_mixtures.models.DGMMParams`, in order.
_PARAM_FIELDS = ("weights", "eta", "loadings", "noise_variances")


def flatten_params(params: DGMMParams) -> torch.Tensor:
    """All of ``params``' tensors in one flat tensor (to broadcast it as one tensor)."""
    return torch.cat([t.reshape(-1) for name in _PARAM_FIELDS for t in getattr(params, name)])


def unflatten_params(flat: torch.Tensor, n_features: int, n_components: Sequence[int],
                      n_factors: Sequence[int]) -> DGMMParams:
    """Inverse of :func:`flatten_params` for a DGMM of these sizes."""
    widths = (n_features, *n_factors)
    shapes = {
        "weights": [(size,) for size in n_components],
        "eta": [(size, widths[k]) for k, size in enumerate(n_components)],
        "loadings": [(size, widths[k], widths[k + 1]) for k, size in enumerate(n_components)],
        "noise_variances": [(size, widths[k]) for k, size in enumerate(n_components)],
    }
    sizes = [math.prod(shape) for name in _PARAM_FIELDS for shape in shapes[name]]
    chunks = iter(flat.split(sizes))
    return DGMMParams(*[[next(chunks).view(shape) for shape in shapes[name]]
                             for name in _PARAM_FIELDS])


__all__ = [
    "flatten_params",
    "n_parameters",
    "unflatten_params",
    "FORMS",
    "DGMMParams",
    "DeepGaussianMixtureModel",
    "LatentScoreGuide",
    "PathObservation",
    "as_gmm",
    "component_log_prob",
    "default_dgmm_priors",
    "guide_params",
    "joint_moments",
    "layer_labels",
    "log_joint",
    "log_likelihood",
    "map_guide",
    "params_to_sites",
    "path_index",
    "path_layer_labels",
    "path_log_weights",
    "path_moments",
    "posterior_scores",
    "sample",
    "sites_to_params",
]
