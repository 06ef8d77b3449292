"""Shared helpers of the DGMM tests."""

import numpy as np
import pytest
import torch

from ppl_mixtures.datasets import make_dgmm
from ppl_mixtures.estimators import DeepGaussianMixture
from ppl_mixtures.inference.em import dgmm as em_dgmm
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


def fit_from(start, X, n_components, n_factors, **options):
    """A default ``DeepGaussianMixture`` fit of ``X`` whose start is ``start``."""
    est = DeepGaussianMixture(n_components, n_factors, progress=False, **options)
    est._initial_params = lambda x, generator: start
    return est.fit(X)


def assert_stream_fit_moves_as_in_memory(fit, X, start, decisions):
    """Two batches take the move's decisions (``decisions(fitted estimator)``) as the
    in-memory fit does, and give its fit up to the rounding of the sums, which the SQUAREM
    loop amplifies along flat directions over a whole default fit (measured: 2.4e-7 on the
    history and 3.0e-5 on the means); returns the in-memory fit."""
    in_memory, streamed = fit(X, start), fit([X[:250], X[250:]], start)
    assert decisions(streamed) == decisions(in_memory)
    np.testing.assert_allclose(streamed.history_, in_memory.history_, rtol=0, atol=1e-6)
    for attr in ("weights_", "means_", "covariances_"):
        np.testing.assert_allclose(getattr(streamed, attr), getattr(in_memory, attr),
                                   rtol=0, atol=2e-4)
    return in_memory


def assert_move_validated_and_unused_by_plain_em(fit, X, start, n_components, n_factors,
                                                 flag, record):
    """A non-boolean ``flag`` names the argument; plain EM (accelerate=0) and tol=0 ignore
    it (same histories, no ``record``)."""
    with pytest.raises(ValueError, match=flag):
        DeepGaussianMixture(n_components, n_factors, progress=False, **{flag: "yes"}).fit(X)
    for options in ({"accelerate": 0, "max_iter": 3, "tol": 0.0}, {"max_iter": 2, "tol": 0.0}):
        fits = [fit(X, start, **{flag: value}, **options) for value in (True, False)]
        assert fits[0].history_ == fits[1].history_
        assert not hasattr(fits[0], record)


def settled_layerwise_starts(n_components, n_factors):
    """``(x, params, history)`` for three layer-wise k-means starts (seeds 0-2) after three
    accelerated EM cycles on a small draw of the model (300 rows, 9 features): fits whose
    labellings and frames may be right or wrong, for the moves' monotonicity tests."""
    X, _, _, _ = make_dgmm(300, 9, n_components, n_factors, random_state=3, standardize=True)
    x = torch.as_tensor(X)
    for seed in range(3):
        start = em_dgmm.initial_params(x, n_components, n_factors, "kmeans",
                                       torch.Generator().manual_seed(seed))
        params, history = em_dgmm.accelerate(x, start, 3, 1e-6)
        yield x, params, history
