"""The fused E-step kernels against the plain two-step E-step they replace.

Reference: responsibilities from :func:`ppl_mixtures.models.gmm.log_joint` (the Pyro model's
densities) and moments about the means summed row by row in float64
(``stats_from_responsibilities``), on the same blocks of rows.
"""

import pytest
import torch

from ppl_mixtures.datasets import make_gmm
from ppl_mixtures.inference.em import gmm as em_gmm
from ppl_mixtures.models import gmm

TYPES = ("spherical", "diag", "tied_diag", "tied", "full")


def _start(covariance_type, n=400, d=5, k=4, offset=0.0):
    X, _ = make_gmm(n, k, d, separation=3.0, random_state=0)
    x = torch.as_tensor(X) + offset
    resp = torch.softmax(torch.randn(n, k, generator=torch.Generator().manual_seed(1),
                                     dtype=torch.float64), 1)
    return x, em_gmm.params_from_responsibilities(x, resp, covariance_type)


def _reference(x, params, weights=None):
    resp, sample_ll = em_gmm.responsibilities(x, params)
    return em_gmm.stats_from_responsibilities(x, resp, sample_ll, params, weights)


def _assert_same(stats, reference, rtol):
    assert stats.n_samples == pytest.approx(reference.n_samples, rel=1e-12)
    for name in em_gmm.GMMStats.summed_fields[1:]:
        value, expected = getattr(stats, name), getattr(reference, name)
        scale = float(torch.as_tensor(expected).abs().max())
        torch.testing.assert_close(torch.as_tensor(value, dtype=torch.float64),
                                   torch.as_tensor(expected, dtype=torch.float64),
                                   rtol=0, atol=rtol * scale, msg=name)


@pytest.mark.parametrize("covariance_type", TYPES)
@pytest.mark.parametrize("weighted", [False, True])
def test_fused_e_step_matches_the_two_step_one(covariance_type, weighted):
    """Densities and statistics in one pass (matmul-shaped for the diagonal types, whitened
    for tied and full): the same sums to float64 rounding, with and without weights."""
    x, params = _start(covariance_type, offset=50.0)  # far from the origin: cancellation
    weights = (torch.rand(x.shape[0], generator=torch.Generator().manual_seed(2),
                          dtype=torch.float64) * 3 if weighted else None)
    _assert_same(em_gmm.e_step(x, params, weights), _reference(x, params, weights), 1e-10)


@pytest.mark.parametrize("covariance_type", ["diag", "spherical"])
def test_blocks_by_rows_add_up(covariance_type, monkeypatch):
    x, params = _start(covariance_type)
    whole = em_gmm.e_step(x, params)
    monkeypatch.setattr(em_gmm, "_E_STEP_BLOCK_ELEMENTS", 4 * 37)  # blocks of 37 rows
    assert em_gmm.e_step_block_rows(4) == 37
    _assert_same(em_gmm.e_step(x, params), whole, 1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_one_component_at_a_time_matches_side_by_side(dtype, monkeypatch):
    """Large K D^2: float64 whitens by triangular solves, float32 by the rounded inverse."""
    x, params = _start("full")
    x, params = x.to(dtype), params.to(dtype)
    stacked = em_gmm.e_step(x, params)
    monkeypatch.setattr(gmm, "_STACKED_WHITENING_MAX", 0)
    alone = em_gmm.e_step(x, params)
    _assert_same(alone, stacked, 1e-12 if dtype == torch.float64 else 1e-5)


def test_gram_without_syrk_is_the_same(monkeypatch):
    """The BLAS rank-k update and the plain product give the same upper triangle."""
    values = torch.randn(50, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    fast = torch.zeros(6, 6, dtype=torch.float64)
    em_gmm._gram(fast, values)
    monkeypatch.setattr(em_gmm, "_SYRK", {})
    plain = torch.zeros(6, 6, dtype=torch.float64)
    em_gmm._gram(plain, values)
    torch.testing.assert_close(fast, plain)
    torch.testing.assert_close(em_gmm._symmetric(plain), values.T @ values)


def test_float32_diagonal_e_step_matches_float64():
    x, params = _start("diag")
    single = em_gmm.e_step(x.float(), params.to(torch.float32))
    double = em_gmm.e_step(x, params.to(torch.float32).to(torch.float64))
    _assert_same(single, double, 1e-5)
