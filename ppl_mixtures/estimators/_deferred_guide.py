"""The fitted ``guide_`` of an estimator, built when first read.

An EM fit ends with a point-mass guide at ``params_`` (so ``elbo_loss``, ``posterior_params``
and the diagnostics see EM and MAP fits alike). Building it traces the Pyro model and
transforms every global site: 7.5 ms of a 13 ms fit at N = 500, and 5.6 s at D = 784 with
full covariances (the correlation factors of 10 × 784 × 784), more than many fits' EM. EM fits
therefore defer it (:meth:`DeferredGuideMixin._defer_guide`) and pay only when it is read.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pyro
import torch

from ppl_mixtures._rng import fork_rng


class DeferredGuideMixin:
    """``guide_`` as a property: set as usual, or deferred until first read."""

    @property
    def guide_(self) -> Any:
        """The fitted Pyro guide (a point mass at ``params_`` for EM fits, built on first use).

        An EM fit defers it (:meth:`_defer_guide`): tracing the model and transforming every
        global site costs more than a small fit's EM, and most fits never read it.
        """
        guide = self.__dict__.get("_guide")
        if guide is None:
            deferred = self.__dict__.get("_deferred_guide")
            if deferred is None:
                raise AttributeError(f"{type(self).__name__} has no guide_ before fit")
            make, first_row = deferred
            state = self.__dict__.get("param_store_state_")
            store = pyro.get_param_store()
            # in a forked random state: reading guide_ draws nothing from the caller's streams
            with (store.scope(state) if state is not None else contextlib.nullcontext(),
                  fork_rng(cuda=first_row.is_cuda)):
                guide = make(self.model_, self.params_)
                guide(first_row)  # creates the global parameters at params_
            self.__dict__["_guide"] = guide
            self.__dict__.pop("_deferred_guide", None)
        return guide

    @guide_.setter
    def guide_(self, guide: Any) -> None:
        self.__dict__["_guide"] = guide
        self.__dict__.pop("_deferred_guide", None)

    def _defer_guide(self, make: Callable[[Any, Any], Any], first_row: torch.Tensor) -> None:
        """Set ``guide_`` to ``make(model_, params_)`` traced on ``first_row``, built when read."""
        self.__dict__.pop("_guide", None)
        self.__dict__["_deferred_guide"] = (make, first_row)
