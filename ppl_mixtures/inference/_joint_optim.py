"""The named optimisers of :class:`~ppl_mixtures.inference.svi.SVITrainer` as one torch
optimiser over all parameters (:class:`_JointOptim`), with Pyro's per-parameter state layout."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pyro
import pyro.optim
import torch
from pyro.optim import PyroOptim
from pyro.optim.clipped_adam import ClippedAdam as ClippedAdamTorch
from torch import Tensor

#: The torch optimiser behind each name of OPTIMIZERS, stepped as one over all parameters.
JOINT_OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "clipped_adam": ClippedAdamTorch,
}


class _JointOptim(PyroOptim):
    """A named optimiser of :data:`~ppl_mixtures.inference.svi.OPTIMIZERS`, run as one torch optimiser over all parameters.

    :class:`pyro.optim.PyroOptim` keeps one torch optimiser per parameter tensor and steps
    them one after the other. With the same settings for every tensor (a named optimiser has
    only ``lr``), one optimiser over all of them takes the same steps, bit for bit (Adam's and
    ClippedAdam's updates are computed tensor by tensor, ClippedAdam's clipping is elementwise
    and its learning-rate decay once per step), in one call instead of one per tensor. A
    tensor not passed to a call is not stepped (as with PyroOptim); new tensors join the
    optimiser when they first appear. :meth:`get_state` and :meth:`set_state` use
    PyroOptim's layout (one single-tensor state dict per parameter name), so a checkpoint
    written by either is read by the other.
    """

    def __init__(self, constructor: type[torch.optim.Optimizer], optim_args: dict) -> None:
        super().__init__(constructor, optim_args)
        self._params: list[Tensor] = []
        self._known: set[Tensor] = set()
        self._optimizer: torch.optim.Optimizer | None = None

    def __call__(self, params: Iterable[Tensor], *args: Any, **kwargs: Any) -> None:
        params = params if isinstance(params, (set, frozenset)) else set(params)
        new = [p for p in params if p not in self._known]
        if new:
            self._add(new)
        if self._optimizer is None:  # nothing to step yet
            return
        resting = [(p, p.grad) for p in self._params if p not in params and p.grad is not None]
        for p, _ in resting:  # torch skips tensors without a gradient
            p.grad = None
        try:
            self._optimizer.step(*args, **kwargs)
        finally:
            for p, grad in resting:
                p.grad = grad

    def _add(self, new: list[Tensor]) -> None:
        """Rebuild the optimiser over the known tensors and ``new`` ones, keeping the state."""
        store = pyro.get_param_store()
        new.sort(key=lambda p: store.param_name(p) or "")
        old = self._optimizer
        optimizer = self.pt_optim_constructor(self._params + new, **self.pt_optim_args)
        if old is not None:
            hyper = {k: v for k, v in old.param_groups[0].items() if k != "params"}
            optimizer.param_groups[0].update(hyper)
            for p in self._params:
                if p in old.state:
                    optimizer.state[p] = old.state[p]
        for p in new:
            saved = self._state_waiting_to_be_consumed.pop(store.param_name(p), None)
            if saved is not None:  # torch casts the state to the tensor's dtype and device
                single = self.pt_optim_constructor([p], **self.pt_optim_args)
                single.load_state_dict(saved)
                if p in single.state:
                    optimizer.state[p] = single.state[p]
                if old is None and not self._params:  # e.g. ClippedAdam's decayed lr
                    hyper = {k: v for k, v in single.param_groups[0].items() if k != "params"}
                    optimizer.param_groups[0].update(hyper)
        self._params = self._params + new
        self._known.update(new)
        self._optimizer = optimizer

    def get_state(self) -> dict:
        if self._optimizer is None:
            return {}
        store = pyro.get_param_store()
        hyper = {k: v for k, v in self._optimizer.param_groups[0].items() if k != "params"}
        return {
            store.param_name(p): {
                "state": {0: self._optimizer.state[p]} if p in self._optimizer.state else {},
                "param_groups": [{**hyper, "params": [0]}],
            }
            for p in self._params
        }
