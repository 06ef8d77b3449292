"""Laplace approximation of the posterior of a model's global sites at a point estimate.

A point estimate (EM, MAP SVI, SGD) becomes a Gaussian posterior in the unconstrained space of
the global sites (MacKay 2003, ch. 27; Bishop 2006, section 4.4)::

    u = T^-1(theta)                       T = biject_to(support), site by site
    U(u) = -log p(x, T(u)) - log |det dT/du|
         = TraceEnum_ELBO().differentiable_loss(model | theta = T(u), empty guide) - log |J|
    q(u) = N(u_hat, H^-1),   H = d^2 U / du du^T at u_hat = argmin U near T^-1(theta_hat)

The negative log joint comes from the model itself: the model conditioned on the global
values, with a guide that samples nothing, so that ``TraceEnum_ELBO`` sums the enumerated
discrete sites (the assignments) out exactly. Pyro's ``AutoLaplaceApproximation`` traces the
model without enumeration and cannot be used on the mixtures. The centre ``u_hat`` is the mode
of ``U`` found by L-BFGS from the estimate (an EM estimate maximises the likelihood in
constrained coordinates, without the priors and the Jacobian, so it sits near the mode, not
at it). The Hessian is taken by ``torch.autograd`` (one gradient with ``create_graph=True``,
then batched backward passes over rows of the identity). Draws ``u = u_hat + S eps``
(``S S^T = H^-1``, ``eps ~ N(0, I)`` from the caller's generator) are mapped back through
``T``. :meth:`LaplacePosterior.sample_with_log_ratios` also returns the importance ratios
``p / q`` of the draws, whose Pareto k says whether the Gaussian fits (Yao et al. 2018).

Not positive definite
---------------------
The Hessian may still not be positive definite at the centre: a fit at a boundary, a saddle,
or directions the model does not identify (rotations of factor loadings). Eigenvalues of
``H`` below ``eigenvalue_floor * max(eig)`` are then replaced by
``max(|lambda|, eigenvalue_floor * max(eig))`` (the modified-eigenvalue Hessian of Nocedal &
Wright 2006, section 3.4) and a :class:`LaplaceWarning` says how many and how to avoid it.
:attr:`LaplacePosterior.offset_sd` reports how far the centre is from the mode of the
Gaussian model of ``U`` (one Newton step, in posterior standard deviations).

Size
----
The full Hessian needs P backward passes and P x P memory (P unconstrained values).
``max_parameters`` (default :data:`MAX_PARAMETERS`) refuses larger models with an error that
names the alternatives; see the measured times in the docstring of :data:`MAX_PARAMETERS`.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO
from torch import Tensor
from torch.distributions import biject_to
from torch.distributions.transforms import Transform

from ppl_mixtures._rng import fork_rng

#: Largest number of unconstrained values (P) for which :func:`laplace_posterior` builds the
#: full Hessian by default. Time grows as P backward passes of the enumerated loss (each
#: O(N K D^2)) and memory as P^2. Measured on a shared 2-core CPU, float64, one thread: a
#: full-covariance GMM on 500 rows, P = 59 (D = 4) in 0.3 s, P = 224 (D = 8) in 1.3 s, P = 917
#: (D = 16, K = 6) in 11 s; a diagonal GMM on the digits (N = 1797, D = 64, K = 10, P = 1,289)
#: in 172 s. A full GMM on the digits (P = 21,449) would take hours and 3.7 GB: refused.
MAX_PARAMETERS = 1000

#: Default relative eigenvalue floor of the Hessian (see the module docstring).
EIGENVALUE_FLOOR = 1e-6

#: Rows of the identity pushed through one batched backward pass.
_CHUNK = 64


class LaplaceWarning(RuntimeWarning):
    """A Laplace approximation to be read with care: its Hessian was not positive definite and
    was regularised, or (:mod:`ppl_mixtures.diagnostics`) its draws fit the posterior poorly."""


@dataclass
class _SiteLayout:
    """Where one global site lives in the unconstrained vector."""

    name: str
    shape: torch.Size
    transform: Transform
    unconstrained_shape: torch.Size
    start: int
    stop: int


@dataclass
class LaplacePosterior:
    """A Gaussian ``N(loc, scale @ scale.T)`` over the unconstrained global sites.

    Attributes
    ----------
    mode : dict of str to Tensor
        The constrained values of the global sites at the centre.
    loc : Tensor, shape (P,)
        The centre in unconstrained coordinates: the mode found from the estimate (or the
        estimate itself with ``find_mode=False``).
    start : Tensor, shape (P,)
        The estimate in unconstrained coordinates.
    hessian : Tensor, shape (P, P)
        ``H``, the Hessian of the negative log joint (with the log-Jacobian) at ``loc``, as
        computed (before any regularisation).
    eigenvalues : Tensor, shape (P,)
        Eigenvalues of ``H`` after regularisation (all positive).
    scale : Tensor, shape (P, P)
        A square root of the covariance: ``covariance = scale @ scale.T = H^-1`` (from the
        eigendecomposition of the regularised ``H``).
    n_regularised : int
        Eigenvalues of ``H`` that were raised to the floor or replaced by their absolute value.
    offset_sd : float
        ``sqrt(g^T H^-1 g)`` with ``g`` the gradient at ``loc``: how many posterior standard
        deviations one Newton step would move the centre (about 0 at a mode).
    seconds : float
        Time taken to build the approximation.
    """

    mode: dict[str, Tensor]
    loc: Tensor
    start: Tensor
    hessian: Tensor
    eigenvalues: Tensor
    scale: Tensor
    n_regularised: int
    offset_sd: float
    seconds: float
    _layout: list[_SiteLayout] = field(repr=False)
    _energy: Callable[[Tensor], Tensor] | None = field(default=None, repr=False)

    @property
    def n_parameters(self) -> int:
        """P, the number of unconstrained values."""
        return int(self.loc.shape[0])

    @property
    def covariance(self) -> Tensor:
        """``H^-1`` (regularised), shape (P, P), in unconstrained coordinates."""
        return self.scale @ self.scale.T

    def unconstrained_sd(self) -> dict[str, Tensor]:
        """Posterior standard deviation of each unconstrained value, by site.

        Returns
        -------
        dict of str to Tensor
            One tensor per site, of the site's unconstrained shape.
        """
        sd = self.covariance.diagonal().sqrt()
        return {item.name: sd[item.start:item.stop].reshape(item.unconstrained_shape)
                for item in self._layout}

    def sample(self, n_samples: int, generator: torch.Generator | None = None
               ) -> dict[str, Tensor]:
        """Draw the global sites from the approximation.

        Parameters
        ----------
        n_samples : int
            S, the number of draws.
        generator : torch.Generator, optional
            The source of the normal draws (on ``loc``'s device). None uses a fresh generator
            seeded from nothing global: pass one for reproducible draws. The global random
            state is never read or advanced.

        Returns
        -------
        dict of str to Tensor
            Every global site, shape ``(S,) + site shape``, in constrained space.
        """
        return self.sample_with_log_ratios(n_samples, generator, log_ratios=False)[0]

    def sample_with_log_ratios(self, n_samples: int, generator: torch.Generator | None = None,
                               log_ratios: bool = True, max_ratios: int | None = None,
                               ) -> tuple[dict[str, Tensor], Tensor | None]:
        """:meth:`sample`, with the log importance ratios of the draws.

        ``log r_s = log p(x, theta_s) + log |J(u_s)| - log q(u_s)`` up to a constant: how much
        the true posterior and the Gaussian disagree at each draw. Their Pareto-smoothed tail
        (``arviz.psislw``; Yao et al. 2018) says whether the approximation can be trusted
        (k < 0.7). Costs one evaluation of the negative log joint per draw (about 20 ms
        for a small mixture, mostly Pyro's tracing): ``max_ratios`` limits them to the
        first draws.

        Returns
        -------
        draws : dict of str to Tensor
            As :meth:`sample`.
        log_ratios : Tensor, shape (min(S, max_ratios),), or None when ``log_ratios=False``
        """
        if generator is None:
            generator = torch.Generator(device=self.loc.device)
            generator.seed()
        noise = torch.randn(n_samples, self.n_parameters, generator=generator,
                            dtype=self.loc.dtype, device=self.loc.device)
        unconstrained = self.loc + noise @ self.scale.T
        ratios = None
        if log_ratios and self._energy is not None:
            with fork_rng(cuda=self.loc.is_cuda), torch.no_grad():
                kept = unconstrained[:max_ratios]
                energies = torch.stack([self._energy(u) for u in kept])
            ratios = -energies + 0.5 * (noise[:max_ratios] ** 2).sum(-1)
        with torch.no_grad():
            draws = {item.name: item.transform(unconstrained[:, item.start:item.stop].reshape(
                (n_samples,) + tuple(item.unconstrained_shape))) for item in self._layout}
        return draws, ratios


def _empty_guide(*args: Any, **kwargs: Any) -> None:
    """A guide that samples nothing: the globals are conditioned, the discrete sites enumerated."""


def _layout(model: Callable, x: Tensor, sites: dict[str, Tensor]) -> list[_SiteLayout]:
    """Each global site's bijection to unconstrained space and its slice of the vector."""
    with fork_rng(cuda=x.is_cuda), torch.no_grad():  # the trace samples the local sites
        trace = poutine.trace(poutine.condition(model, data=sites)).get_trace(x)
    layout, start = [], 0
    for name, value in sites.items():
        if name not in trace.nodes:
            raise ValueError(f"sites: {name!r} is not a sample site of the model")
        transform = biject_to(trace.nodes[name]["fn"].support)
        shape = transform.inverse_shape(value.shape)
        stop = start + math.prod(shape)
        layout.append(_SiteLayout(name, value.shape, transform, shape, start, stop))
        start = stop
    return layout


def negative_log_joint(model: Callable, x: Tensor, layout: list[_SiteLayout]
                       ) -> Callable[[Tensor], Tensor]:
    """``U(u) = -log p(x, T(u)) - log |det dT/du|``, the discrete sites summed out.

    Parameters
    ----------
    model : callable
        A Pyro model called as ``model(x)``, with attribute ``max_plate_nesting``.
    x : Tensor, shape (n_samples, n_features)
    layout : list
        From the model's global sites (built inside :func:`laplace_posterior`).

    Returns
    -------
    callable ``Tensor (P,) -> Tensor ()``
        Differentiable when its argument requires grad; a plain value otherwise.
    """
    elbo = TraceEnum_ELBO(max_plate_nesting=model.max_plate_nesting)

    def energy(u: Tensor) -> Tensor:
        values, log_jacobian = {}, u.new_zeros(())
        for item in layout:
            piece = u[item.start:item.stop].reshape(item.unconstrained_shape)
            value = item.transform(piece)
            log_jacobian = log_jacobian + item.transform.log_abs_det_jacobian(piece, value).sum()
            values[item.name] = value
        conditioned = poutine.condition(model, data=values)
        if not u.requires_grad:  # a value only: no graph
            return u.new_tensor(elbo.loss(conditioned, _empty_guide, x)) - log_jacobian
        return elbo.differentiable_loss(conditioned, _empty_guide, x) - log_jacobian

    return energy


def _hessian(energy: Callable[[Tensor], Tensor], loc: Tensor) -> tuple[Tensor, Tensor]:
    """Gradient (P,) and Hessian (P, P) of ``energy`` at ``loc`` by ``torch.autograd``."""
    u = loc.detach().clone().requires_grad_(True)
    value = energy(u)
    if not torch.isfinite(value):
        raise ValueError("the negative log joint is not finite at the given sites; pass "
                         "values inside the support of every prior")
    (gradient,) = torch.autograd.grad(value, u, create_graph=True)
    size = u.shape[0]
    eye = torch.eye(size, dtype=u.dtype, device=u.device)
    rows = []
    for start in range(0, size, _CHUNK):
        block = eye[start:start + _CHUNK]
        (part,) = torch.autograd.grad(gradient, u, grad_outputs=block, retain_graph=True,
                                      is_grads_batched=True)
        rows.append(part.detach())
    hessian = torch.cat(rows)
    return gradient.detach(), (hessian + hessian.T) / 2


def _find_mode(energy: Callable[[Tensor], Tensor], start: Tensor, max_iter: int) -> Tensor:
    """The nearest mode of ``exp(-energy)`` from ``start``, by L-BFGS with a Wolfe line search."""
    u = start.detach().clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([u], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9,
                                  tolerance_change=1e-12, history_size=20,
                                  line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        value = energy(u)
        value.backward()
        return value

    optimizer.step(closure)
    found = u.detach()
    if not torch.isfinite(found).all() or energy(found) > energy(start.detach()):
        return start.detach()  # keep the estimate rather than a worse point
    return found


def _regularise(hessian: Tensor, eigenvalue_floor: float) -> tuple[Tensor, Tensor, int, float]:
    """Eigenvalues and vectors of ``hessian`` with the small and negative ones modified.

    Returns the modified eigenvalues (P,), the eigenvectors (P, P), how many were modified and
    the smallest eigenvalue before.
    """
    eigenvalues, vectors = torch.linalg.eigh(hessian)
    largest = float(eigenvalues.abs().max()) if eigenvalues.numel() else 1.0
    floor = eigenvalue_floor * largest
    low = eigenvalues < floor
    modified = torch.where(low, eigenvalues.abs().clamp_min(floor), eigenvalues)
    return modified, vectors, int(low.sum()), float(eigenvalues.min())


def laplace_posterior(
    model: Callable,
    x: Tensor,
    sites: dict[str, Tensor],
    *,
    max_parameters: int = MAX_PARAMETERS,
    eigenvalue_floor: float = EIGENVALUE_FLOOR,
    fix: str = "fit the MAP of the model with its priors or sample it with NUTS",
    find_mode: bool = True,
    max_iter: int = 100,
) -> LaplacePosterior:
    """Gaussian approximation of ``p(theta | x)`` at the global values ``sites``.

    Parameters
    ----------
    model : callable
        A Pyro model called as ``model(x)`` whose discrete sites carry
        ``infer={"enumerate": "parallel"}``, with attribute ``max_plate_nesting`` and no
        continuous local sites (the collapsed form of a zoo model).
    x : Tensor, shape (n_samples, n_features)
        The data.
    sites : dict of str to Tensor
        The point estimate: a value for every global site (e.g. a model module's
        ``params_to_sites(estimator.params_)``), in the support of its prior.
    max_parameters : int, default :data:`MAX_PARAMETERS`
        Refuse (``ValueError``) when the global sites have more unconstrained values.
    eigenvalue_floor : float, default :data:`EIGENVALUE_FLOOR`
        Eigenvalues of the Hessian below ``eigenvalue_floor`` times the largest are replaced
        by ``max(|lambda|, eigenvalue_floor * largest)``, with a :class:`LaplaceWarning`.
    fix : str
        What the warning recommends (the caller knows its options).
    find_mode : bool, default True
        Centre the Gaussian at the mode of the posterior density of the unconstrained values
        (with the priors and the log-Jacobian), found by L-BFGS from ``sites``, as a Laplace
        approximation is defined; an EM estimate (maximum likelihood, constrained
        coordinates) is usually near it. False centres it at ``sites`` themselves.
    max_iter : int, default 100
        L-BFGS iterations of the search for the mode.

    Returns
    -------
    LaplacePosterior

    Raises
    ------
    ValueError
        If P exceeds ``max_parameters`` or the negative log joint is not finite at ``sites``.
    """
    began = time.perf_counter()
    if not eigenvalue_floor > 0:
        raise ValueError(f"eigenvalue_floor={eigenvalue_floor!r} must be positive")
    sites = {name: value.detach() for name, value in sites.items()}
    layout = _layout(model, x, sites)
    size = layout[-1].stop if layout else 0
    if size > max_parameters:
        raise ValueError(
            f"the Laplace approximation needs the full Hessian of {size:,} unconstrained "
            f"values, above max_parameters={max_parameters:,} (P backward passes and P^2 "
            "memory); use a smaller model, raise max_parameters if you can wait, or get "
            "posterior draws otherwise: inference='nuts', or inference='svi' with "
            "guide='mean_field' where the estimator offers them"
        )
    start = torch.cat([item.transform.inv(sites[item.name]).reshape(-1) for item in layout])
    energy = negative_log_joint(model, x, layout)
    with fork_rng(cuda=x.is_cuda):
        loc = _find_mode(energy, start, max_iter) if find_mode and size else start
        gradient, hessian = _hessian(energy, loc)
    eigenvalues, vectors, n_regularised, smallest = _regularise(hessian, eigenvalue_floor)
    if n_regularised:
        warnings.warn(
            f"the Hessian of the negative log joint at the centre of the Laplace approximation "
            f"is not positive definite: {n_regularised} of {size} eigenvalues are below "
            f"{eigenvalue_floor:g} times the largest (smallest {smallest:.3g}), so the centre "
            "is not a strict mode of the posterior in unconstrained coordinates (a saddle or "
            "a boundary, the estimate itself with find_mode=False, or directions the model "
            "does not identify, such as rotations of factor loadings); they were replaced by "
            "max(|eigenvalue|, floor) and the draws along them are only indicative. To avoid "
            f"it, {fix}", LaplaceWarning, stacklevel=2)
    scale = vectors * eigenvalues.rsqrt()
    offset = float((gradient @ scale).norm())
    with torch.no_grad():
        mode = {item.name: item.transform(loc[item.start:item.stop].reshape(
            item.unconstrained_shape)) for item in layout}
    return LaplacePosterior(
        mode=mode, loc=loc, start=start, hessian=hessian, eigenvalues=eigenvalues, scale=scale,
        n_regularised=n_regularised, offset_sd=offset,
        seconds=time.perf_counter() - began, _layout=layout, _energy=energy,
    )


__all__ = [
    "EIGENVALUE_FLOOR",
    "MAX_PARAMETERS",
    "LaplacePosterior",
    "LaplaceWarning",
    "laplace_posterior",
    "negative_log_joint",
]
