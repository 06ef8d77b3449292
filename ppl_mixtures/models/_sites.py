"""What every zoo model shares: parameter containers, the call on the data plate, log prior, guides.

:class:`DataPlateModel` is the common frame of the mixtures (``model(x)``,
``model(x, subsample=idx)``, ``model(n_samples=N)``); each model supplies its global sites and
what it samples for one row. :class:`LocalGaussianGuide` is the common frame of the guides of
the latent forms: point masses on the globals and one Gaussian per row over its scores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import replace
from typing import Any, TypeVar

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoDelta, init_to_value
from torch import Tensor

_Params = TypeVar("_Params", bound="ComponentParams")


class ComponentParams:
    """Base of the parameter containers whose ``means`` are (n_components, n_features).

    A subclass is a dataclass with a ``means`` field and a ``tensors()`` method that names its
    tensor fields.
    """

    means: Tensor

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @property
    def n_features(self) -> int:
        return self.means.shape[1]

    def tensors(self) -> dict[str, Tensor]:
        raise NotImplementedError

    def to(self: _Params, *args, **kwargs) -> _Params:
        """Move every tensor, as ``Tensor.to`` does."""
        return replace(self, **{name: t.to(*args, **kwargs) for name, t in self.tensors().items()})


def weighted_rows(weights: Tensor | None) -> AbstractContextManager:
    """Scale the sites drawn inside by the rows' ``weights`` (n,), masking the rows of weight
    0 (``poutine.scale`` takes positive scales only); nothing when ``weights`` is None.

    For sites a *guide* enumerates or samples per row: Pyro's enumerated ELBO takes only a
    scalar scale on sites the model enumerates (those get the factor site of
    :meth:`DataPlateModel._weigh_rows` instead).
    """
    if weights is None:
        return nullcontext()
    stack = ExitStack()
    stack.enter_context(poutine.mask(mask=weights > 0))
    stack.enter_context(poutine.scale(scale=torch.where(weights > 0, weights, 1.0)))
    return stack


def detached_copies(sites: dict[str, Tensor]) -> dict[str, Tensor]:
    """Site values detached from the caller's tensors: the param store would otherwise alias
    them and the optimiser would update the caller's tensors in place."""
    return {name: value.detach().clone() for name, value in sites.items()}


def globals_only(model: Callable, local_sites: Iterable[str]) -> Callable:
    """The model with its local (per data point) sites hidden, for autoguides of the globals."""
    return poutine.block(model, hide=list(local_sites))


def point_mass_guide(model: Callable, sites: dict[str, Tensor],
                     local_sites: Iterable[str]) -> AutoDelta:
    """``AutoDelta`` over the global sites of ``model``, started at copies of ``sites``."""
    return AutoDelta(globals_only(model, local_sites),
                     init_loc_fn=init_to_value(values=detached_copies(sites)))


def log_prior(sample_globals: Callable[[], object], sites: dict[str, Tensor]) -> Tensor:
    """``log p(theta)``: the global sites' log densities at ``sites`` summed (a scalar).

    Parameters
    ----------
    sample_globals : callable
        The model's function that samples its global sites (and nothing else).
    sites : dict of str to Tensor
        A value for every global site.
    """
    trace = poutine.trace(poutine.condition(sample_globals, data=sites)).get_trace()
    return sum(site["fn"].log_prob(site["value"]).sum() for site in trace.nodes.values()
               if site["type"] == "sample")


def site_distribution(prior: dist.Distribution, event_shape: tuple[int, ...], name: str):
    """Shape a user's prior for one component (or a tied site) into the site's event shape."""
    if tuple(prior.event_shape) == event_shape:
        return prior
    if tuple(prior.event_shape) == () and tuple(prior.batch_shape) in ((), event_shape):
        return prior.expand(event_shape).to_event(len(event_shape))
    raise ValueError(
        f"prior for site {name!r} has batch_shape {tuple(prior.batch_shape)} and event_shape "
        f"{tuple(prior.event_shape)}; expected a scalar distribution or event_shape {event_shape}"
    )


def check_priors(priors: dict[str, dist.Distribution], needed: Iterable[str],
                 defaults: str) -> None:
    """Raise a ``ValueError`` naming the sites of ``needed`` that ``priors`` has no prior for."""
    missing = [name for name in needed if name not in priors]
    if missing:
        raise ValueError(f"priors is missing {missing}; start from {defaults}(...)")


def sample_labels(name: str, weights: Tensor) -> Tensor:
    """The enumerated discrete site ``name ~ Categorical(weights)`` of one row."""
    labels = dist.Categorical(weights)
    labels.logits  # noqa: B018 - log(weights) once, so the data plate expands a view, not (N, K)
    return pyro.sample(name, labels, infer={"enumerate": "parallel"})


class DataPlateModel:
    """Base of the zoo's mixture models: the ``"data"`` plate and its ``"obs"`` site.

    Call a model as ``model(x)`` to condition on data of shape (N, D), ``model(x,
    subsample=idx)`` to condition on the rows ``idx`` with the likelihood scaled by
    ``N / len(idx)``, or ``model(n_samples=N)`` to draw from the prior predictive.
    ``model(x, sample_weight=w)`` weighs the log-likelihood of row ``n`` by ``w_n`` (shape
    (N,); integer weights are repeated rows): see :meth:`_weigh_rows`.

    A subclass defines ``_sample_globals()`` (samples the global sites and nothing else,
    returns them by name), ``_sample_locals(sites)`` (run inside the data plate: samples a row's
    labels and latent scores, returns the distribution of ``"obs"``) and ``_params_to_sites``
    (its module's ``params_to_sites``, for :meth:`log_prior`).
    """

    max_plate_nesting = 1
    _params_to_sites: Callable[[Any], dict[str, Tensor]]

    def _sample_globals(self) -> dict[str, Tensor]:
        raise NotImplementedError

    def _sample_locals(self, sites: dict[str, Tensor]) -> dist.Distribution:
        raise NotImplementedError

    def __call__(
        self,
        x: Tensor | None = None,
        subsample: Tensor | None = None,
        n_samples: int | None = None,
        sample_weight: Tensor | None = None,
    ) -> Tensor:
        """Run the model; returns the observations (sampled when ``x`` is None)."""
        if x is None and n_samples is None:
            raise ValueError("pass data x of shape (N, D) or n_samples to sample from the prior")
        if x is not None:
            self._check_data(x)
        if sample_weight is not None:
            self._check_weights(x, sample_weight)
        sites = self._sample_globals()
        size = x.shape[0] if x is not None else n_samples
        with pyro.plate("data", size, subsample=subsample) as rows:
            observation = self._sample_locals(sites)
            observed = None if x is None else (x if subsample is None else x[subsample])
            value = pyro.sample("obs", observation, obs=observed)
            if sample_weight is not None:
                self._weigh_rows(sites, observation, observed, sample_weight[rows])
            return value

    #: Name of the factor site that carries the sample weights (:meth:`_weigh_rows`).
    weight_site = "sample_weight"
    #: Whether the latent form (``form="latent"``) takes sample weights too.
    weighs_latent_rows = False

    def _check_weights(self, x: Tensor | None, sample_weight: Tensor) -> None:
        if x is None:
            raise ValueError("sample_weight weighs observed rows: pass data x with it")
        if sample_weight.shape != x.shape[:1]:
            raise ValueError(f"sample_weight has shape {tuple(sample_weight.shape)}; expected "
                             f"({x.shape[0]},), one weight per row of x")
        if getattr(self, "form", "collapsed") == "latent" and not self.weighs_latent_rows:
            raise ValueError("sample_weight needs the model's collapsed form (the latent "
                             "form's per-row factors are not weighted); build the model with "
                             "form='collapsed'")

    def _weigh_rows(self, sites: dict[str, Tensor], observation: dist.Distribution,
                    observed: Tensor, weights: Tensor) -> None:
        """Turn the rows' log-likelihood ``log p(x_n)`` into ``w_n log p(x_n)``.

        Pyro's enumerated ELBO takes only one scalar ``poutine.scale`` for enumerated sites
        (``enumeration only supports scalar poutine.scale``), so the per-row weights cannot
        scale the ``"assignment"`` and ``"obs"`` sites themselves. The model keeps them as
        they are (their enumerated sum is ``log p(x_n)``) and adds, inside the data plate,
        the factor site ``"sample_weight"`` of value ``(w_n - 1) log p(x_n)`` (the same
        table the observation is scored with, summed over the clusters): the total is
        ``w_n log p(x_n)`` exactly, for the ELBO, its gradients and NUTS's potential, and a
        subsample or a stream's batch scales it as it scales the rows.
        """
        table = getattr(observation, "_table", None)
        if table is None or "weights" not in sites or sites["weights"].dim() != 1:
            raise ValueError("sample_weight needs one value of every global site (no "
                             "vectorised particles or batched draws)")
        log_marginal = torch.logsumexp(table(observed) + sites["weights"].log(), dim=-1)
        pyro.factor(self.weight_site, (weights - 1.0) * log_marginal)

    def log_prior(self, params: Any) -> Tensor:
        """``log p(theta)`` of the global sites at ``params`` (a scalar)."""
        return log_prior(self._sample_globals, self._params_to_sites(params))

    def _check_data(self, x: Tensor) -> None:
        """A clear error for data of the wrong shape, before any matrix product fails."""
        expected = self.n_features
        if x.dim() == 2 and x.shape[1] == expected:
            return
        hint = (" (one feature per row: x[:, None])" if x.dim() == 1 and expected == 1 else
                f" (rows of {expected} values: x.reshape(-1, {expected}))"
                if x.numel() % expected == 0 else "")
        raise ValueError(f"x has shape {tuple(x.shape)}, but this model expects data of shape "
                         f"(n_samples, {expected}){hint}")


def posterior_at_best(log_joint: Tensor, means: Tensor,
                      covariances: Tensor) -> tuple[Tensor, Tensor]:
    """Each row's Gaussian posterior of its scores under its most probable component.

    Parameters
    ----------
    log_joint : Tensor, shape (N, C)
        ``log p(x_n, c)``; its argmax picks each row's component.
    means : Tensor, shape (N, C, R)
        Posterior means of the scores given the row and a component.
    covariances : Tensor, shape (C, R, R)
        Posterior covariances given a component (the same for every row).

    Returns
    -------
    mean : Tensor, shape (N, R)
    scale_tril : Tensor, shape (N, R, R)
        Cholesky factor of the covariance.
    """
    best = log_joint.argmax(-1)
    rows = torch.arange(log_joint.shape[0], device=log_joint.device)
    return means[rows, best], torch.linalg.cholesky(covariances)[best]


class LocalGaussianGuide:
    """Base of the guides of the latent forms: MAP globals, one Gaussian per row over its scores.

    ``q(theta, Z) = delta(theta) prod_n N(Z_n | m_n, S_n S_n^T)`` with ``m_n`` (N, R) and lower
    triangular ``S_n`` (N, R, R) held as the Pyro params named by ``loc_param`` and
    ``scale_tril_param``, indexed by the rows of a subsample. A subclass names them, names
    ``like_site`` (a global site whose dtype and device the local params take) and samples the
    model's local sites from a row's Gaussian in ``_sample_scores``.

    Parameters
    ----------
    model : DataPlateModel
        A model of form ``"latent"``.
    map_guide : callable ``(model, init_params) -> AutoDelta``
        The module's guide of point masses on the global sites (held as ``global_guide``).
    init_params : Any
        The parameter container the point masses start at.
    latent_size : int
        R, the size of a row's scores.
    """

    loc_param: str
    scale_tril_param: str
    like_site: str

    def __init__(self, model: Any, map_guide: Callable[[Any, Any], AutoDelta], init_params: Any,
                 latent_size: int) -> None:
        if model.form != "latent":
            raise ValueError(
                f"{type(self).__name__} needs a model of form 'latent'; use map_guide"
            )
        self.model = model
        self.global_guide = map_guide(model, init_params)
        self.latent_size = latent_size
        #: (mean (N, R), scale_tril (N, R, R)) to start ``q`` at, or None for ``N(0, I)``.
        self._init_locals: tuple[Tensor, Tensor] | None = None

    def _sample_scores(self, sites: dict[str, Tensor], scores: dist.Distribution) -> None:
        raise NotImplementedError

    def _local_params(self, n_samples: int, like: Tensor) -> tuple[Tensor, Tensor]:
        size = self.latent_size
        if self._init_locals is not None:
            loc_init, tril_init = self._init_locals
        else:
            loc_init = like.new_zeros(n_samples, size)
            tril_init = torch.eye(size, dtype=like.dtype, device=like.device).expand(
                n_samples, size, size
            )
        loc = pyro.param(self.loc_param, lambda: loc_init.detach().clone())
        scale_tril = pyro.param(
            self.scale_tril_param,
            lambda: tril_init.detach().clone(),
            constraint=dist.constraints.lower_cholesky,
        )
        return loc, scale_tril

    def __call__(
        self,
        x: Tensor | None = None,
        subsample: Tensor | None = None,
        n_samples: int | None = None,
    ) -> dict[str, Tensor]:
        sites = self.global_guide(x, subsample=subsample, n_samples=n_samples)
        size = x.shape[0] if x is not None else n_samples
        loc, scale_tril = self._local_params(size, sites[self.like_site])
        with pyro.plate("data", size, subsample=subsample) as rows:
            scores = dist.MultivariateNormal(loc[rows], scale_tril=scale_tril[rows])
            self._sample_scores(sites, scores)
        return sites

    def median(self) -> dict[str, Tensor]:
        """Values of the global sites."""
        return self.global_guide.median()
