"""Synthetic data from a deep Gaussian mixture in the setting of Selosse et al. (2020), sec. 3.1.

Nothing here needs torch; ``DGMMParams.from_numpy(params)`` of
:mod:`ppl_mixtures.models.dgmm` turns the returned parameters into tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["DGMM_SECTION_3_1", "make_dgmm"]

#: Per layer: (eta sd, [(psi mean, psi sd) per component], [(Lambda mean, Lambda sd) per
#: component], fraction of Lambda entries set to 0). The configuration of Selosse et al. (2020),
#: section 3.1, from their supplementary material (Psi are variances, drawn as the absolute value of
#: ``N(mean, sd^2)`` per entry).
DGMM_SECTION_3_1: tuple[tuple[float, list, list, float], ...] = (
    (20.0, [(30.0, 1.0), (3.0, 5.0), (2.0, 3.0)], [(1.0, 15.0), (-1.0, 15.0), (1.0, 15.0)], 0.2),
    (10.0, [(3.0, 2.0), (5.0, 2.0), (10.0, 2.0)], [(2.0, 2.0), (0.0, 1.0), (3.0, 2.0)], 0.5),
    (10.0, [(3.0, 2.0), (5.0, 2.0)], [(-10.0, 2.0), (10.0, 1.0)], 0.2),
)


def _check_architecture(n_features: int, n_components: Sequence[int],
                        n_factors: Sequence[int]) -> None:
    if len(n_components) != len(n_factors) or len(n_components) == 0:
        raise ValueError(
            f"n_components={tuple(n_components)} and n_factors={tuple(n_factors)} must be "
            "non-empty and of the same length (one entry per layer)"
        )
    widths = [n_features, *n_factors]
    if any(int(g) < 1 for g in n_components) or any(
        widths[k] <= widths[k + 1] for k in range(len(n_factors))
    ) or int(n_factors[-1]) < 1:
        raise ValueError(
            f"need n_components >= 1 and n_features > n_factors[0] > n_factors[1] > ... >= 1; "
            f"got n_features={n_features}, n_components={tuple(n_components)}, "
            f"n_factors={tuple(n_factors)}"
        )


def _draw_layer(rng: np.random.Generator, config: tuple, size: int, width: int,
                rank: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """eta (G, p), loadings (G, p, r), noise variances (G, p) of one layer."""
    eta_sd, noise_cfg, loading_cfg, zero_fraction = config
    eta = rng.normal(0.0, eta_sd, size=(size, width))
    noise = np.stack([np.abs(rng.normal(*noise_cfg[g % len(noise_cfg)], size=width))
                      for g in range(size)])
    loadings = np.stack([rng.normal(*loading_cfg[g % len(loading_cfg)], size=(width, rank))
                         for g in range(size)])
    n_zero = int(round(zero_fraction * loadings.size))
    flat = loadings.reshape(-1)
    flat[rng.choice(flat.size, size=n_zero, replace=False)] = 0.0
    return eta, loadings, np.maximum(noise, 1e-6)


def make_dgmm(
    n_samples: int = 4000,
    n_features: int = 17,
    n_components: Sequence[int] = (3, 3, 2),
    n_factors: Sequence[int] = (11, 6, 2),
    random_state: Any = None,
    standardize: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, list[np.ndarray]]]:
    """Simulate a deep Gaussian mixture in the configuration of Selosse et al. (2020), section 3.1.

    Per layer l and component g (Selosse et al. 2020, section 3.1, with the values of their
    supplementary material): layer 1 ``eta ~ N(0, 20^2)``, ``psi = |N(30, 1)|,
    |N(3, 5^2)|, |N(2, 3^2)|``, ``Lambda ~ N(1, 15^2), N(-1, 15^2), N(1, 15^2)``, 20% of the
    Lambda^(1) entries set to 0; layer 2 ``eta ~ N(0, 10^2)``, ``psi = |N(3, 2^2)|, |N(5, 2^2)|,
    |N(10, 2^2)|``, ``Lambda ~ N(2, 2^2), N(0, 1), N(3, 2^2)``, 50% zeroed; layer 3
    ``eta ~ N(0, 10^2)``, ``psi = |N(3, 2^2)|, |N(5, 2^2)|``, ``Lambda ~ N(-10, 2^2),
    N(10, 1)``, 20% zeroed (see :data:`DGMM_SECTION_3_1`). Weights are ``1/G_l``, each layer's
    label is uniform and independent, ``z^(h) ~ N(0, I)`` and data follow their eq. (1). Other
    architectures reuse the table: component g takes entry ``g mod len``, layers beyond the
    third take the third layer's row.

    Parameters
    ----------
    n_samples : int, default 4000
    n_features : int, default 17
        J (= p_0).
    n_components : sequence of int, default (3, 3, 2)
    n_factors : sequence of int, default (11, 6, 2)
        Must satisfy ``n_features > r_1 > ... > r_h >= 1``.
    random_state : int, Generator or None
    standardize : bool, default False
        The raw data reach the thousands. With True, each feature is centred and divided by
        its standard deviation, ``x' = (x - m) / sd``, and the returned *layer-1* parameters are
        mapped by the same affine change so that they generate ``x'`` exactly:
        ``eta'^(1) = (eta^(1) - m) / sd``, ``Lambda'^(1) = diag(1/sd) Lambda^(1)``,
        ``psi'^(1) = psi^(1) / sd^2`` (deeper layers unchanged; likelihoods shift by
        ``-sum log sd`` per point, the partition is the same). Fitting standardised data and
        comparing with these parameters is the recommended use.

    Returns
    -------
    X : ndarray, shape (n_samples, n_features)
    layer_labels : ndarray of int, shape (n_samples, h)
        ``s_1, ..., s_h`` of each sample.
    path_labels : ndarray of int, shape (n_samples,)
        ``sum_l s_l prod_{k > l} G_k`` (s_1 slowest), as
        :func:`ppl_mixtures.models.dgmm.path_index`.
    params : dict of str to list of ndarray
        The true parameters: ``weights`` (G_l,), ``eta`` (G_l, p_{l-1}), ``loadings``
        (G_l, p_{l-1}, r_l), ``noise_variances`` (G_l, p_{l-1}), one array per layer.
    """
    n_components = tuple(int(g) for g in n_components)
    n_factors = tuple(int(r) for r in n_factors)
    _check_architecture(n_features, n_components, n_factors)
    if int(n_samples) < 1:
        raise ValueError(f"n_samples={n_samples!r} must be a positive integer")
    rng = np.random.default_rng(random_state)
    widths = [n_features, *n_factors]
    params: dict[str, list[np.ndarray]] = {
        "weights": [], "eta": [], "loadings": [], "noise_variances": []}
    for layer, size in enumerate(n_components):
        config = DGMM_SECTION_3_1[min(layer, len(DGMM_SECTION_3_1) - 1)]
        eta, loadings, noise = _draw_layer(rng, config, size, widths[layer], widths[layer + 1])
        params["weights"].append(np.full(size, 1.0 / size))
        params["eta"].append(eta)
        params["loadings"].append(loadings)
        params["noise_variances"].append(noise)
    labels = np.stack([rng.integers(0, g, size=n_samples) for g in n_components], axis=1)
    strides = [math.prod(n_components[k + 1:]) for k in range(len(n_components))]
    paths = labels @ np.asarray(strides)
    scores = rng.standard_normal((n_samples, n_factors[-1]))
    for layer in reversed(range(len(n_components))):
        s = labels[:, layer]
        noise_sd = np.sqrt(params["noise_variances"][layer][s])
        scores = (params["eta"][layer][s]
                  + np.einsum("npr,nr->np", params["loadings"][layer][s], scores)
                  + noise_sd * rng.standard_normal(noise_sd.shape))
    X = scores
    if standardize:
        mean, sd = X.mean(0), X.std(0)
        X = (X - mean) / sd
        params["eta"][0] = (params["eta"][0] - mean) / sd
        params["loadings"][0] = params["loadings"][0] / sd[:, None]
        params["noise_variances"][0] = params["noise_variances"][0] / sd**2
    return X, labels, paths, params
