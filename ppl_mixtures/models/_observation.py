"""The observation site shared by the zoo's mixtures: scored by the model's own (N, C) table.

A mixture's ``obs`` site is ``x | cluster ~ p_cluster(x)``. Instead of indexing the cluster's
parameters by the enumerated assignment and building a batched Pyro distribution, the site
evaluates the (N, C) table ``log p_c(x_n)`` once, with the same helper as the EM E-step, and
picks the entries named by the assignment: under parallel enumeration (assignment of shape
(C, 1)) that is the whole table, transposed to (C, N).
"""

from __future__ import annotations

from typing import Any

import pyro.distributions as dist
import torch
from pyro.ops.indexing import Vindex
from torch import Tensor


class TableObservation(dist.TorchDistribution):
    """Base of the mixtures' observation distributions.

    Subclasses implement ``_table(x) -> (N, C)`` (log density of every row under every
    cluster) and ``_draw(labels) -> (..., D)`` (one draw per label).

    Parameters
    ----------
    params : Any
        The model's unbatched parameter container (with a ``means`` tensor of shape (C, D)
        or any tensor giving the event size in its last dimension).
    assignment : Tensor of long
        Cluster of each observation; any shape that broadcasts with the data's (N,).
    event_size : int
        D, the size of one observation.
    """

    arg_constraints: dict = {}
    support = dist.constraints.real_vector
    has_rsample = False

    def __init__(self, params: Any, assignment: Tensor, event_size: int,
                 validate_args: bool | None = None) -> None:
        self.params = params
        self.assignment = assignment
        self.event_size = event_size
        super().__init__(assignment.shape, torch.Size([event_size]), validate_args=validate_args)

    def _table(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _draw(self, labels: Tensor) -> Tensor:
        raise NotImplementedError

    def expand(self, batch_shape, _instance=None):
        return type(self)(self.params, self._expand_assignment(batch_shape), self.event_size)

    def _expand_assignment(self, batch_shape) -> Tensor:
        """``assignment.expand(batch_shape)``, still marked as Pyro's enumerated support
        (``arange(C)`` along dim 0) when it was, so that :meth:`log_prob` can use the table
        as it is. Subclasses that override ``expand`` call it."""
        expanded = self.assignment.expand(batch_shape)
        support = getattr(self.assignment, "_pyro_categorical_support", None)
        if support is not None and expanded.dim() == self.assignment.dim():  # dim 0 kept
            expanded._pyro_categorical_support = support
        return expanded

    def log_prob(self, value: Tensor) -> Tensor:
        table = self._table(value.reshape(-1, value.shape[-1]))
        assignment = self.assignment
        if (value.dim() == 2 and assignment.dim() >= 2 and assignment.shape[1:-1].numel() == 1
                and assignment.shape[-1] in (1, value.shape[0])
                and assignment.shape[0] == table.shape[-1]
                and getattr(assignment, "_pyro_categorical_support", None) is not None):
            # parallel enumeration: the assignment is Pyro's arange(C) of shape (C, 1, .., 1)
            # (or that, expanded by the data plate), so the entries it picks are the whole
            # table, transposed (a view, no gather)
            return table.T.reshape(assignment.shape[:-1] + table.shape[:1])
        table = table.reshape(value.shape[:-1] + table.shape[-1:])  # (..., N, C)
        rows = torch.arange(value.shape[-2], device=value.device)
        return Vindex(table)[..., rows, self.assignment]

    def sample(self, sample_shape: tuple[int, ...] = ()) -> Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        return self._draw(self.assignment.expand(shape))
