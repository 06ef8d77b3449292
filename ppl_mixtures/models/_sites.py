"""Helpers every zoo model shares for its global sites: log prior and point-mass guides."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from pyro import poutine
from pyro.infer.autoguide import AutoDelta, init_to_value
from torch import Tensor


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
