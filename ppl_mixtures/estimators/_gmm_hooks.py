""":class:`~ppl_mixtures.estimators.GaussianMixture`'s checks across arguments and its save/load
hooks (mixins, kept apart from the estimator's parameters and fitting paths).

:class:`GMMChecks` refuses argument combinations that no path can fit (checked once, before a
fit starts); :class:`GMMPersistence` gives :meth:`~ppl_mixtures.estimators._persistence.PersistenceMixin.save`
what it stores beside the fitted attributes (the SGD trainer's state, a mean-field guide's
parameters) and rebuilds the model and guide on load.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyro
import torch

from ppl_mixtures.estimators._sgd import MaxComponentSGD
from ppl_mixtures.models import gmm


class GMMChecks:
    """The argument and data checks of :class:`~ppl_mixtures.estimators.GaussianMixture`."""

    def _check_arguments(self) -> None:
        if self.n_principal_directions is not None and (
            self.inference != "sgd" or self.covariance_type != "full"
        ):
            raise ValueError(
                f"n_principal_directions={self.n_principal_directions!r} needs "
                "inference='sgd' and covariance_type='full'; set it to None otherwise"
            )
        if self.inference == "sgd":
            if self.warm_start:
                raise ValueError("warm_start=True continues EM, SVI or NUTS; with "
                                 "inference='sgd' call partial_fit(X) to go on training")
            MaxComponentSGD(self).check_arguments()

    def _shape_key(self) -> dict[str, Any]:
        return {"n_components": self.n_components, "covariance_type": self.covariance_type}

    def _check_stream(self, X: Any) -> None:
        if self.inference == "svi" and self._marginalize:
            raise ValueError("missing='marginalize' with inference='svi' fits one array; for "
                             "a stream of batches use inference='em' (or pass one array)")
        if self.inference == "svi" and isinstance(X, Iterator):
            raise ValueError(
                "inference='svi' on a stream needs a source it can read more than once (a "
                "list of arrays or a DataLoader): an iterator is read once, which leaves "
                "no pass to set the priors and score the fit; wrap the data in a "
                "DataLoader, or use inference='em' or 'sgd'"
            )


class GMMPersistence:
    """What :class:`~ppl_mixtures.estimators.GaussianMixture` saves and how it is restored."""

    def _param_tensors(self) -> dict[str, torch.Tensor]:
        return self.params_.tensors()

    def _extra_state(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        sgd = getattr(self, "_sgd", None)
        if sgd is not None:
            extra["sgd_state"] = sgd.state()
        if self.inference == "svi" and self.guide == "mean_field":
            # the guide's own parameters keep the posterior spread (not a point mass)
            store = self.param_store_state_["params"]
            extra["guide_values"] = {name: value.detach() for name, value in store.items()}
        return extra

    def _restore(self, content: dict) -> None:
        self.params_ = gmm.GMMParams(covariance_type=self.covariance_type, **content["params"])
        self.model_ = gmm.GaussianMixtureModel(
            self.n_components, self.n_features_in_, self.covariance_type, content["priors"],
            missing=self._marginalize,
        )
        extra = content["extra"]
        if "sgd_state" in extra:
            self._sgd = MaxComponentSGD(self, state=extra["sgd_state"])
        values = extra.get("guide_values")
        if values is not None:
            self.guide_ = gmm.mean_field_guide(self.model_, self.params_)
            self.guide_(self._placeholder_row())
            store = pyro.get_param_store()
            with torch.no_grad():
                for name, value in values.items():
                    store.get_param(name).unconstrained().copy_(value.to(self._device))
        else:
            self.guide_ = gmm.map_guide(self.model_, self.params_)
            self.guide_(self._placeholder_row())
