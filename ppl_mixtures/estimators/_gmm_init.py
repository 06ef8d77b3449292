"""Initial values of :class:`~ppl_mixtures.estimators.GaussianMixture`.

``weights_init``, ``means_init`` and ``precisions_init`` are checked against K, D and the
covariance type; what is not given is drawn from responsibilities of ``init_params``
(:func:`~ppl_mixtures.inference.init.initial_responsibilities`) and one M-step.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ppl_mixtures.inference.em import gmm as em_gmm
from ppl_mixtures.inference.em.missing import mean_impute
from ppl_mixtures.inference.init import initial_responsibilities
from ppl_mixtures.models import gmm


def check_init_arrays(est: Any, n_features: int) -> dict[str, torch.Tensor]:
    """Validate ``weights_init``, ``means_init`` and ``precisions_init`` against K and D."""
    k, d = est.n_components, n_features
    shapes = {
        "spherical": (k,), "diag": (k, d), "tied_diag": (d,), "tied": (d, d),
        "full": (k, d, d),
    }
    expected = {
        "weights_init": (k,), "means_init": (k, d),
        "precisions_init": shapes[est.covariance_type],
    }
    out = {}
    for name, shape in expected.items():
        value = getattr(est, name)
        if value is None:
            continue
        array = np.asarray(value, dtype=np.float64)
        if array.shape != shape:
            raise ValueError(
                f"{name} has shape {array.shape}; expected {shape} for n_components={k}, "
                f"n_features={d}, covariance_type={est.covariance_type!r}"
            )
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{name} contains NaN or inf")
        out[name] = torch.as_tensor(array, dtype=est._dtype, device=est._device)
    weights = out.get("weights_init")
    if weights is not None and (
        bool((weights < 0).any()) or abs(float(weights.sum()) - 1.0) > 1e-6
    ):
        raise ValueError("weights_init must be non-negative and sum to 1")
    precisions = out.get("precisions_init")
    if precisions is not None:
        out["precisions_init"] = _precisions_to_covariances(est, precisions)
    return out

def _precisions_to_covariances(est: Any, precisions: torch.Tensor) -> torch.Tensor:
    if est.covariance_type in gmm.DIAGONAL_TYPES:
        if bool((precisions <= 0).any()):
            raise ValueError("precisions_init must be positive")
        return precisions.reciprocal()
    transposed = precisions.transpose(-1, -2)  # exactly symmetric: no tolerance pass needed
    if not (torch.equal(precisions, transposed)
            or torch.allclose(precisions, transposed, atol=1e-8, rtol=1e-6)):
        raise ValueError("precisions_init must be symmetric")
    factors, info = torch.linalg.cholesky_ex(precisions)
    if bool((info != 0).any()):
        raise ValueError("precisions_init must be positive definite")
    return torch.cholesky_inverse(factors)



def initial_params(est: Any, x: torch.Tensor, generator: torch.Generator,
                   given: dict[str, torch.Tensor],
                   weights: torch.Tensor | None = None) -> gmm.GMMParams:
    """The initial parameters: ``given`` where given, the rest from ``init_params`` on ``x``.

    ``weights`` (shape (n_samples,), optional): the rows' sample weights, which the
    k-means start and the first M-step follow. NaN entries (``missing="marginalize"``) are
    replaced by their column's mean for the start.
    """
    if len(given) == 3:  # every initial value given: nothing to draw
        return gmm.GMMParams(given["weights_init"], given["means_init"],
                             given["precisions_init"], est.covariance_type)
    x = mean_impute(x)
    resp = initial_responsibilities(x, est.n_components, est.init_params, generator, weights)
    params = em_gmm.params_from_responsibilities(x, resp, est.covariance_type, est.reg_covar,
                                                 weights)
    return gmm.GMMParams(
        given.get("weights_init", params.weights),
        given.get("means_init", params.means),
        given.get("precisions_init", params.covariances),
        est.covariance_type,
    )
