"""What a fitted estimator answers beyond scores and predictions.

:class:`QueriesMixin` holds the methods of :class:`~ppl_mixtures.estimators._base.MixtureEstimator`
that read a fit without changing it: information criteria, draws from the model, the
``TraceEnum_ELBO`` loss, the guide's parameters and the imputation of missing entries. They
rely on the base's hooks (``_check_fitted``, ``_validate_x``, ``_fitted_x``, ``_n_parameters``,
``_sample_tensors``; ``_impute`` on the estimators with ``missing``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pyro
import torch
from pyro.infer import TraceEnum_ELBO
from pyro.infer.autoguide import AutoNormal
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted

from ppl_mixtures import metrics
from ppl_mixtures._rng import keeps_global_rng
from ppl_mixtures.estimators._validation import check_int
from ppl_mixtures.inference.init import resolve_generator


class QueriesMixin:
    """Read-only queries of a fitted mixture estimator (see the module docstring)."""

    def _missing_e_step(self) -> Callable:
        """The E-step that integrates NaN entries out (a hook of the estimators with
        ``missing``)."""
        raise NotImplementedError

    @available_if(lambda est: hasattr(est, "_impute"))
    @keeps_global_rng
    def impute(self, X: Any) -> np.ndarray:
        """``X`` with every NaN entry replaced by its conditional mean given the row's
        observed entries, ``E[x_m | x_o]`` under the fitted mixture (the components'
        conditional means weighted by the row's responsibilities; Ghahramani & Jordan 1994).

        Observed entries are returned unchanged; a row without any observed entry gets the
        mixture mean. NaN input is accepted whatever ``missing`` (the fit may have been on
        complete data).

        Parameters
        ----------
        X : array-like, shape (n_samples, n_features)

        Returns
        -------
        ndarray, shape (n_samples, n_features)
        """
        self._check_fitted()
        x = self._validate_x(X, reset=False, allow_nan=True)
        with torch.no_grad():
            return self._impute(x).cpu().numpy()

    def bic(self, X: Any) -> float:
        """Bayesian information criterion ``-2 log L + p log N`` (lower is better)."""
        total = float(self.score_samples(X).sum())
        return metrics.bic(total, self._n_parameters(), len(np.asarray(X)))

    def aic(self, X: Any) -> float:
        """Akaike information criterion ``-2 log L + 2 p`` (lower is better)."""
        total = float(self.score_samples(X).sum())
        return metrics.aic(total, self._n_parameters(), len(np.asarray(X)))

    @keeps_global_rng
    def sample(self, n_samples: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n_samples`` from the fitted model.

        Returns
        -------
        X : ndarray, shape (n_samples, n_features)
        y : ndarray, shape (n_samples,)
            The cluster of each draw.
        """
        self._check_fitted()
        check_int(n_samples, "n_samples", 1)
        generator = resolve_generator(self.random_state, self._device)
        with torch.no_grad():
            x, labels = self._sample_tensors(n_samples, generator)
        return x.cpu().numpy(), labels.cpu().numpy()

    @keeps_global_rng
    def elbo_loss(self, X: Any) -> float:
        """``TraceEnum_ELBO`` loss of the fitted model and guide on ``X`` (sum over samples).

        With the point-mass guide of EM and MAP fits this is ``-(log p(X | theta) +
        log p(theta))``: the identity that ties EM and SVI together.
        """
        x = self._fitted_x(X)
        with pyro.get_param_store().scope(self.param_store_state_), torch.no_grad():
            loss = TraceEnum_ELBO(max_plate_nesting=1, strict_enumeration_warning=False).loss(
                self.model_, self.guide_, x)
        return float(loss)

    def posterior_params(self) -> dict[str, np.ndarray]:
        """The fitted guide's parameters, constrained, without entering a Pyro param store scope.

        A fit keeps its Pyro parameters in its own scope (``param_store_state_``), so the
        global ``pyro.get_param_store()`` never shows them; this reads them from there.

        Returns
        -------
        dict of str to ndarray
            Every Pyro parameter of the fit (on the CPU, in the constrained space: positive
            variances, simplex weights ...). Names carry the guide's prefix removed when it
            has one (``AutoDelta.means`` is ``means``: for EM, MAP-SVI and NUTS fits these
            are the global sites at ``params_``, shaped as the model's sites); networks'
            weights and local guides' parameters keep their full names. A mean-field guide
            (``AutoNormal``) holds ``locs.<site>`` (in the site's unconstrained space) and
            ``scales.<site>``; each site's posterior median, constrained, is added under the
            site's name.
        """
        check_is_fitted(self, "param_store_state_")
        prefix = getattr(self.guide_, "_pyro_name", None)
        store = pyro.get_param_store()
        with store.scope(self.param_store_state_), torch.no_grad():
            values = {name: store[name].detach().cpu().numpy().copy() for name in store.keys()}
            medians = (self.guide_.median() if isinstance(self.guide_, AutoNormal) else {})
        out = {}
        for name, value in values.items():
            short = name[len(prefix) + 1:] if prefix and name.startswith(f"{prefix}.") else name
            out[short if short not in values else name] = value
        for name, value in medians.items():
            out.setdefault(name, value.detach().cpu().numpy().copy())
        return out
