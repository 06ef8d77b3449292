""":class:`~ppl_mixtures.estimators.GaussianMixture`'s checks across arguments and its save/load
hooks (mixins, kept apart from the estimator's parameters and fitting paths).

:class:`GMMModel` builds the Pyro model (deferred after EM); :class:`GMMChecks` refuses argument combinations that no path can fit (checked once, before a
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
from ppl_mixtures.models.priors import data_moments, default_gmm_priors


def _gmm_model(x: torch.Tensor, moments: tuple[torch.Tensor, torch.Tensor] | None,
               n_components: int, covariance_type: str, priors: dict | None,
               missing: bool) -> gmm.GaussianMixtureModel:
    """The Pyro model with the default priors for ``x`` (or ``moments``), updated by ``priors``."""
    defaults = default_gmm_priors(x, n_components, covariance_type, moments=moments)
    defaults.update(priors or {})
    return gmm.GaussianMixtureModel(n_components, x.shape[1], covariance_type, defaults,
                                    missing=missing)


class GMMModel:
    """The Pyro model of :class:`~ppl_mixtures.estimators.GaussianMixture`: built with its
    priors for SVI, NUTS and SGD, deferred until read after an EM fit."""

    def _build_model(self, x: torch.Tensor,
                     moments: tuple[torch.Tensor, torch.Tensor] | None = None,
                     ) -> gmm.GaussianMixtureModel:
        """The Pyro model with the default priors for ``x``, updated by ``priors``.

        ``moments``: mean and variance of all the data when ``x`` is one batch or one shard.
        """
        return _gmm_model(x, moments, self.n_components, self.covariance_type, self.priors,
                          self._marginalize)

    @property
    def model_(self) -> gmm.GaussianMixtureModel:
        """The Pyro model of the fit (its priors built when first read after an EM fit)."""
        model = self.__dict__.get("_model")
        if model is None:
            deferred = self.__dict__.get("_deferred_model")
            if deferred is None:
                raise AttributeError(f"{type(self).__name__} has no model_ before fit")
            model = _gmm_model(*deferred)
            self.__dict__["_model"] = model
            self.__dict__.pop("_deferred_model", None)
        return model

    @model_.setter
    def model_(self, model: gmm.GaussianMixtureModel | None) -> None:
        self.__dict__["_model"] = model
        self.__dict__.pop("_deferred_model", None)

    def _defer_model(self, x: torch.Tensor,
                     moments: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        """Set ``model_`` to ``_build_model(x, moments)``, built when first read.

        EM is maximum likelihood: it never reads the priors, whose distributions (checked
        arguments, transforms) cost more than the rest of a small fit's set-up. The data's
        moments are taken now (two vectors of length D; the data itself is not kept), and
        the arguments too (``set_params`` after the fit changes nothing), so the priors built
        later are the ones an eager build would have given.
        """
        self.__dict__.pop("_model", None)
        self.__dict__["_deferred_model"] = (
            x[:1].clone(), data_moments(x, moments), self.n_components, self.covariance_type,
            dict(self.priors or {}), self._marginalize,
        )


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
