"""Shared helpers of the DGMM tests."""

import torch

from ppl_mixtures.models import dgmm


def random_params(n_components, n_factors, n_features, seed=0, eta_scale=1.0):
    generator = torch.Generator().manual_seed(seed)

    def draw(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    widths = [n_features, *n_factors]
    params = dgmm.DGMMParams([], [], [], [])
    for layer, size in enumerate(n_components):
        width, rank = widths[layer], widths[layer + 1]
        weights = torch.rand(size, generator=generator, dtype=torch.float64) + 0.5
        params.weights.append(weights / weights.sum())
        params.eta.append(eta_scale * draw(size, width))
        params.loadings.append(draw(size, width, rank))
        params.noise_variances.append(
            0.2 + torch.rand(size, width, generator=generator, dtype=torch.float64))
    return params
