"""A cheaper sum for the enumerated sites of a mixture: :class:`DenseTraceEnum_ELBO`.

Pyro's :class:`~pyro.infer.TraceEnum_ELBO` traces the user's model and guide and then packs the
traces and contracts them with a log-space einsum and DiCE bookkeeping. For the simple shape
every mixture of this project has (reparameterised guide sites, the enumerated labels and the
factors that depend on them in one plate set), the same ELBO is one log-sum-exp over the
enumerated values; :class:`DenseTraceEnum_ELBO` computes that and hands any other trace to
Pyro's contraction. It is the default loss of :class:`~ppl_mixtures.inference.svi.SVITrainer`.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from pyro.distributions.util import is_identically_zero, scale_and_mask
from pyro.infer import TraceEnum_ELBO
from pyro.infer.enum import get_importance_trace
from pyro.infer.traceenum_elbo import _compute_dice_elbo, _get_common_scale
from pyro.infer.util import is_validation_enabled
from pyro.util import check_traceenum_requirements, warn_if_nan
from torch import Tensor


class DenseTraceEnum_ELBO(TraceEnum_ELBO):
    """:class:`~pyro.infer.TraceEnum_ELBO` that sums the enumerated sites out in one dense pass.

    The default loss of :class:`~ppl_mixtures.inference.svi.SVITrainer`. It runs the user's model and guide through
    Pyro's own machinery (guide trace, model replayed under parallel enumeration, site log
    densities), and differs from its parent only in how it adds them up, when the traces have
    the simple shape of the zoo's mixtures:

    - every guide site is reparameterised (no score-function terms) and none is enumerated;
    - every model site whose log density depends on an enumerated variable (the enumerated
      sites themselves included) sits in the same plates (e.g. all in ``"data"``);
    - the broadcast table of those log densities is at most twice as large as the densities
      themselves (no blow-up that variable elimination would avoid);
    - no site is enumerated by sampling (``num_samples``) and particles are not vectorised.

    The ELBO is then ``sum over the other model sites of log p - sum over the guide sites of
    log q + scale * sum over the plates of logsumexp over the enumerated values of the sum of
    the enumerated factors``: the same quantity as Pyro's tensor-network contraction (the
    masks and the common subsampling scale applied as Pyro applies them: masks inside the
    log-sum-exp, the scale outside), without packing the traces, the log-space einsum and
    the DiCE bookkeeping, so with fewer (N x K) passes forward and backward. Any other trace
    is handed to Pyro's own contraction, so every model :class:`~pyro.infer.TraceEnum_ELBO`
    accepts is accepted, with the same result. ``compute_marginals`` and ``sample_posterior``
    are the parent's.
    """

    _dense_wanted = False

    def _get_trace(self, model, guide, args, kwargs):
        if not self._dense_wanted or self.vectorize_particles:
            return super()._get_trace(model, guide, args, kwargs)
        model_trace, guide_trace = get_importance_trace(
            "flat", self.max_plate_nesting, model, guide, args, kwargs
        )
        if is_validation_enabled():
            check_traceenum_requirements(model_trace, guide_trace)
            if self.strict_enumeration_warning and not any(
                site["type"] == "sample" and site["infer"].get("enumerate")
                for trace in (model_trace, guide_trace) for site in trace.nodes.values()
            ):
                warnings.warn("DenseTraceEnum_ELBO found no sample site configured for "
                              "enumeration; Trace_ELBO does the same work", stacklevel=2)
        model_trace._dense_elbo = _dense_elbo(model_trace, guide_trace, self.max_plate_nesting)
        if model_trace._dense_elbo is None:  # Pyro's contraction needs packed traces
            guide_trace.pack_tensors()
            model_trace.pack_tensors(guide_trace.plate_to_symbol)
        return model_trace, guide_trace

    def _particles(self, model, guide, args, kwargs):
        """(model trace, guide trace, ELBO of the particle) for every particle."""
        self._dense_wanted = True
        try:
            for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
                elbo = getattr(model_trace, "_dense_elbo", None)
                if elbo is None:
                    elbo = _compute_dice_elbo(model_trace, guide_trace)
                yield model_trace, guide_trace, elbo
        finally:
            self._dense_wanted = False

    def loss(self, model, guide, *args, **kwargs):
        elbo = 0.0
        for _, _, particle in self._particles(model, guide, args, kwargs):
            if not is_identically_zero(particle):
                elbo += particle.item() / self.num_particles
        warn_if_nan(-elbo, "loss")
        return -elbo

    def differentiable_loss(self, model, guide, *args, **kwargs):
        elbo = 0.0
        for _, _, particle in self._particles(model, guide, args, kwargs):
            if not is_identically_zero(particle):
                elbo = elbo + particle
        elbo = elbo / self.num_particles
        if not torch.is_tensor(elbo) or not elbo.requires_grad:
            raise ValueError(f"the ELBO cannot be differentiated: {elbo}")
        warn_if_nan(-elbo, "loss")
        return -elbo

    def loss_and_grads(self, model, guide, *args, **kwargs):
        elbo = 0.0
        for model_trace, guide_trace, particle in self._particles(model, guide, args, kwargs):
            if is_identically_zero(particle):
                continue
            elbo += particle.item() / self.num_particles
            trainable = any(site["type"] == "param" for trace in (model_trace, guide_trace)
                            for site in trace.nodes.values())
            if trainable and particle.requires_grad:
                (-particle / self.num_particles).backward(retain_graph=True)
        warn_if_nan(-elbo, "loss")
        return -elbo


def _vectorised_plates(site: dict[str, Any]) -> frozenset[str]:
    return frozenset(frame.name for frame in site["cond_indep_stack"] if frame.vectorized)


def _dense_elbo(model_trace: Any, guide_trace: Any, max_plate_nesting: int) -> Tensor | None:
    """The ELBO of one particle summed densely (see :class:`DenseTraceEnum_ELBO`), or None
    when the traces are not of the simple shape it handles."""
    guide_sites = [site for site in guide_trace.nodes.values() if site["type"] == "sample"]
    for site in guide_sites:
        if site["infer"].get("enumerate") or not is_identically_zero(
                site["score_parts"].score_function):
            return None
    enum_dims = set()
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or name in guide_trace.nodes:
            continue
        if site["infer"].get("num_samples") is not None:
            return None  # sampled (Monte Carlo) enumeration: Pyro's estimator
        if site["infer"].get("_enumerate_dim") is not None:
            enum_dims.add(site["infer"]["_enumerate_dim"])
        elif site["infer"].get("enumerate") and not site["is_observed"]:
            return None  # enumerated in another way than in parallel
    elbo: Any = 0.0
    factors, scales, plates = [], [], set()
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample":
            continue
        log_p = site["unscaled_log_prob"]
        if name not in guide_trace.nodes and site["infer"].get("_enumerate_dim") is not None:
            factors.append(log_p)  # as Pyro: an enumerated site's own mask is not applied
        elif isinstance(log_p, Tensor) and any(
                log_p.dim() >= -dim and log_p.shape[dim] > 1 for dim in enum_dims):
            factors.append(scale_and_mask(log_p, mask=site["mask"]))
        else:
            elbo = elbo + site["log_prob_sum"]
            continue
        scales.append(site["scale"])
        plates.add(_vectorised_plates(site))
    if factors:
        if len(plates) > 1:
            return None
        shape = torch.broadcast_shapes(*(factor.shape for factor in factors))
        if math.prod(shape) > 2 * sum(factor.numel() for factor in factors):
            return None
        scale = _get_common_scale(scales)
        joint = factors[0]
        for factor in factors[1:]:
            joint = joint + factor
        lead = len(shape) - max_plate_nesting
        if lead > 0:
            joint = joint.reshape((-1,) + tuple(shape[lead:]))
            # an observation's (N, K) table seen as (K, N) puts the enumerated values
            # innermost in memory: reduced along the last dimension of the view that has
            # them there, the pass and its backward run on contiguous memory
            moved = joint.movedim(0, -1)
            joint = moved.logsumexp(-1) if moved.is_contiguous() else joint.logsumexp(0)
        elbo = elbo + scale_and_mask(joint, scale=scale).sum()
    for site in guide_sites:
        elbo = elbo - site["log_prob_sum"]
    return elbo
