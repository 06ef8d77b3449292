""":class:`~ppl_mixtures.estimators.BayesianGaussianMixture`'s priors: the conjugate priors of a
fit resolved from its arguments and the (weighted) data, with the checks of the array
arguments (``mean_prior``, ``covariance_prior``, ``resp_init``) against the data's shape.

A mixin of the estimator: it reads the ``*_prior`` arguments and sets the fitted ``*_prior_``
attributes (scikit-learn's names), from which :meth:`BGMMPriors._prior_tensors` rebuilds the
model's priors on load.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ppl_mixtures.inference.init import initial_responsibilities
from ppl_mixtures.models import bayesian_gmm as bgmm


class BGMMPriors:
    """The prior and array-argument hooks of the variational Bayesian Gaussian mixture."""

    def _array(self, value: Any, name: str, shape: tuple[int, ...]) -> np.ndarray:
        array = np.asarray(value, dtype=np.float64)
        if array.shape != shape:
            raise ValueError(f"{name} has shape {array.shape}; expected {shape} for "
                             f"covariance_type={self.covariance_type!r} and the "
                             f"{shape[-1] if shape else 1} features of X")
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{name} contains NaN or inf; pass finite values")
        return array

    def _resolve_priors(self, x: torch.Tensor,
                        sample_weight: torch.Tensor | None) -> bgmm.BayesianGMMPriors:
        """The priors of this fit (defaults from the weighted data); sets the ``*_prior_``."""
        n_features = x.shape[1]
        weights = x.new_ones(x.shape[0]) if sample_weight is None else sample_weight
        total = weights.sum()
        data_mean = (weights[:, None] * x).sum(0) / total
        centred = x - data_mean
        # frequency weights: equal to np.cov(X.T) (ddof=1) of the repeated rows
        data_cov = (weights[:, None] * centred).T @ centred / (total - 1.0).clamp_min(1.0)
        self.weight_concentration_prior_ = float(
            1.0 / self.n_components if self.weight_concentration_prior is None
            else self.weight_concentration_prior)
        self.mean_precision_prior_ = float(
            1.0 if self.mean_precision_prior is None else self.mean_precision_prior)
        self.mean_prior_ = (data_mean.cpu().numpy() if self.mean_prior is None
                            else self._array(self.mean_prior, "mean_prior", (n_features,)))
        dof = self.degrees_of_freedom_prior
        if dof is not None and not dof > n_features - 1.0:
            raise ValueError(
                f"degrees_of_freedom_prior={dof!r} must be greater than n_features - 1 = "
                f"{n_features - 1} (a Wishart needs it); pass a larger value or None")
        self.degrees_of_freedom_prior_ = float(n_features if dof is None else dof)
        self.covariance_prior_ = self._covariance_prior(data_cov)
        return self._prior_tensors(x)

    def _prior_tensors(self, like: torch.Tensor) -> bgmm.BayesianGMMPriors:
        """The resolved ``*_prior_`` attributes as tensors in ``like``'s dtype and device."""
        def as_tensor(value: Any) -> torch.Tensor:
            return torch.as_tensor(value, dtype=like.dtype, device=like.device)

        return bgmm.BayesianGMMPriors(
            as_tensor(self.weight_concentration_prior_), as_tensor(self.mean_precision_prior_),
            as_tensor(self.mean_prior_), as_tensor(self.degrees_of_freedom_prior_),
            as_tensor(self.covariance_prior_), self.covariance_type,
            self.weight_concentration_prior_type)

    def _covariance_prior(self, data_cov: torch.Tensor) -> Any:
        n_features, kind = data_cov.shape[0], self.covariance_type
        if self.covariance_prior is None:
            variances = data_cov.diagonal()
            value = {"full": data_cov, "tied": data_cov, "diag": variances,
                     "spherical": variances.mean()}[kind].cpu().numpy()
            return float(value) if kind == "spherical" else value
        if kind == "spherical":
            value = float(self._array(self.covariance_prior, "covariance_prior", ()))
            if not value > 0:
                raise ValueError(f"covariance_prior={value!r} must be positive for "
                                 "covariance_type='spherical'")
            return value
        shape = (n_features, n_features) if kind in ("full", "tied") else (n_features,)
        value = self._array(self.covariance_prior, "covariance_prior", shape)
        if kind == "diag" and not np.all(value > 0):
            raise ValueError("covariance_prior must be positive for covariance_type='diag'")
        if kind in ("full", "tied") and not (
                np.allclose(value, value.T) and np.all(np.linalg.eigvalsh(value) > 0)):
            raise ValueError(f"covariance_prior must be symmetric positive definite for "
                             f"covariance_type={kind!r}")
        return value

    def _initial_resp(self, x: torch.Tensor, generator: torch.Generator,
                      sample_weight: torch.Tensor | None) -> torch.Tensor:
        if self.resp_init is None:
            return initial_responsibilities(x, self.n_components, self.init_params, generator,
                                            sample_weight)
        resp = self._array(self.resp_init, "resp_init", (x.shape[0], self.n_components))
        if np.any(resp < 0) or not np.allclose(resp.sum(1), 1.0):
            raise ValueError("resp_init must be non-negative with rows summing to 1")
        return torch.as_tensor(resp, dtype=x.dtype, device=x.device)
