"""Canonical forms (Selosse et al. 2020, section 3.4) and path alignment of the DGMM."""

import numpy as np
import pytest
import torch
from dgmm_helpers import random_params

from ppl_mixtures.datasets import make_dgmm
from ppl_mixtures.models import dgmm
from ppl_mixtures.models import dgmm_identify as ident

CONSTRAINTS = ident.CONSTRAINTS
#: (n_components, n_factors, n_features); (2, 1, 2) has a one-component middle layer, whose
#: score z^(1) has a rotation freedom in its noise-whitened metric.
ARCHITECTURES = [((3,), (2,), 5), ((2, 3), (3, 2), 5), ((2, 1, 2), (4, 3, 2), 6),
                 ((1, 2), (3, 2), 5)]


def section_params(seed=0):
    """Small DGMM from the section 3.1 simulator (standardised; zeros in the loadings)."""
    x, _, _, arrays = make_dgmm(n_samples=60, n_features=6, n_components=(3, 2, 2),
                                n_factors=(4, 3, 2), random_state=seed, standardize=True)
    return torch.as_tensor(x), dgmm.DGMMParams.from_numpy(arrays)


def all_params():
    cases = [("G" + "".join(map(str, g)) + "-r" + "".join(map(str, r)),
              random_params(g, r, d, seed=i)) for i, (g, r, d) in enumerate(ARCHITECTURES)]
    return [*cases, ("make_dgmm", section_params()[1])]


CASES = all_params()


def data_for(params, n_samples=40, seed=1):
    x, _ = dgmm.sample(params, n_samples, torch.Generator().manual_seed(seed))
    return x


def random_orthogonal(size, generator, batch=()):
    q, _ = torch.linalg.qr(torch.randn(*batch, size, size, generator=generator,
                                       dtype=torch.float64))
    return q


def random_gauge(params, seed=5):
    """Apply random likelihood-preserving symmetries to every score."""
    generator = torch.Generator().manual_seed(seed)
    for layer in range(1, params.n_layers):
        rank = params.n_factors[layer - 1]
        scales = (0.5 + 1.5 * torch.rand(rank, generator=generator, dtype=torch.float64)
                  ) * torch.where(torch.rand(rank, generator=generator) < 0.5, -1.0, 1.0)
        if params.n_components[layer] == 1:
            whiten = torch.diag(params.noise_variances[layer][0].rsqrt())
            matrix = torch.diag(scales) @ random_orthogonal(rank, generator) @ whiten
        else:
            matrix = torch.diag(scales)[torch.randperm(rank, generator=generator)]
        shift = torch.randn(rank, generator=generator, dtype=torch.float64)
        params = ident.transform_scores(params, layer, matrix, shift)
    rotations = random_orthogonal(params.n_factors[-1], generator, (params.n_components[-1],))
    return ident.rotate_last_layer(params, rotations)


def assert_same_params(left, right, atol=1e-8):
    for name in ("weights", "eta", "loadings", "noise_variances"):
        for a, b in zip(getattr(left, name), getattr(right, name), strict=True):
            torch.testing.assert_close(a, b, atol=atol, rtol=1e-8)


def assert_same_likelihood(x, left, right):
    torch.testing.assert_close(dgmm.log_likelihood(x, left), dgmm.log_likelihood(x, right),
                               rtol=1e-10, atol=0)


# ------------------------------------------------------------------------------ identify


@pytest.mark.parametrize("constraint", CONSTRAINTS)
@pytest.mark.parametrize("name,params", CASES, ids=[c[0] for c in CASES])
def test_identify_preserves_likelihood_and_is_idempotent(name, params, constraint):
    x = data_for(params)
    canonical = ident.identify(params, constraint)
    assert_same_likelihood(x, params, canonical)
    torch.testing.assert_close(dgmm.path_moments(canonical)[1], dgmm.path_moments(params)[1])
    assert_same_params(ident.identify(canonical, constraint), canonical, atol=1e-9)


@pytest.mark.parametrize("constraint", CONSTRAINTS)
@pytest.mark.parametrize("name,params", CASES, ids=[c[0] for c in CASES])
def test_symmetric_params_share_the_canonical_form(name, params, constraint):
    moved = random_gauge(params)
    assert_same_likelihood(data_for(params), params, moved)
    assert_same_params(ident.identify(moved, constraint), ident.identify(params, constraint))


@pytest.mark.parametrize("constraint", CONSTRAINTS)
def test_last_layer_rotation_only(constraint):
    params = random_params((2, 3), (3, 2), 5, seed=7)
    rotations = random_orthogonal(2, torch.Generator().manual_seed(3), (3,))
    rotated = ident.rotate_last_layer(params, rotations)
    assert not torch.allclose(rotated.loadings[-1], params.loadings[-1])
    assert_same_params(ident.identify(rotated, constraint), ident.identify(params, constraint))


def pooled_gram(params, layer, metric=None):
    loadings, weights = params.loadings[layer], params.weights[layer]
    scaled = loadings if metric is None else loadings / metric.sqrt()[..., None]
    return torch.einsum("g,gpr,gps->rs", weights, scaled, scaled)


def is_decreasing(values):
    return bool((values[:-1] >= values[1:] - 1e-12).all())


def off_diagonal(matrix):
    return matrix - torch.diag_embed(torch.diagonal(matrix, dim1=-2, dim2=-1))


@pytest.mark.parametrize("name,params", CASES, ids=[c[0] for c in CASES])
def test_lower_triangular_holds(name, params):
    out = ident.identify(params, "lower_triangular")
    last = out.loadings[-1]
    rank = last.shape[-1]
    assert torch.triu(last[:, :rank], diagonal=1).abs().max() < 1e-12
    assert (torch.diagonal(last[:, :rank], dim1=-2, dim2=-1) > 0).all()
    for layer in range(out.n_layers - 1):
        mean, variance = ident.score_moments(out, layer + 1)
        torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-10, rtol=0)
        torch.testing.assert_close(variance, torch.ones_like(variance))
        pooled = torch.einsum("g,gpr->pr", out.weights[layer], out.loadings[layer])[:rank]
        assert (torch.diagonal(pooled) > 0).all()
        if out.n_components[layer + 1] == 1:
            assert torch.triu(pooled, diagonal=1).abs().max() < 1e-12


@pytest.mark.parametrize("name,params", CASES, ids=[c[0] for c in CASES])
def test_diagonal_holds(name, params):
    out = ident.identify(params, "diagonal")
    last = out.loadings[-1]
    gram = last.mT @ (last / out.noise_variances[-1][..., None])
    assert off_diagonal(gram).abs().max() < 1e-10 * gram.abs().max()
    assert all(is_decreasing(torch.diagonal(g)) for g in gram)
    for layer in range(out.n_layers - 1):
        _, variance = ident.score_moments(out, layer + 1)
        torch.testing.assert_close(variance, torch.ones_like(variance))
        pooled = pooled_gram(out, layer, out.noise_variances[layer])
        assert is_decreasing(torch.diagonal(pooled))
        if out.n_components[layer + 1] == 1:
            assert off_diagonal(pooled).abs().max() < 1e-10 * pooled.abs().max()


@pytest.mark.parametrize("name,params", CASES, ids=[c[0] for c in CASES])
def test_orthonormal_holds(name, params):
    out = ident.identify(params, "orthonormal")
    last = out.loadings[-1]
    gram = last.mT @ last
    assert off_diagonal(gram).abs().max() < 1e-10 * gram.abs().max()
    assert all(is_decreasing(torch.diagonal(g)) for g in gram)
    for layer in range(out.n_layers - 1):
        pooled = pooled_gram(out, layer)
        torch.testing.assert_close(torch.diagonal(pooled), torch.ones(pooled.shape[0]))
        assert is_decreasing(ident.score_moments(out, layer + 1)[1])
        if out.n_components[layer + 1] == 1:
            torch.testing.assert_close(pooled, torch.eye(pooled.shape[0]))


def test_intermediate_rotation_breaks_diagonal_noise():
    params = random_params((2, 3), (3, 2), 5, seed=2)
    rotation = random_orthogonal(3, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="non-diagonal"):
        ident.transform_scores(params, 1, rotation)


def test_center_false_keeps_shift():
    params = random_params((2, 3), (3, 2), 5, seed=8)
    out = ident.identify(params, "diagonal", center=False)
    assert_same_likelihood(data_for(params), params, out)
    assert ident.score_moments(out, 1)[0].abs().max() > 1e-3


def test_unknown_constraint_names_argument_and_options():
    with pytest.raises(ValueError, match="constraint='varimax'.*lower_triangular.*orthonormal"):
        ident.identify(CASES[0][1], "varimax")


# ------------------------------------------------------------------------------ alignment


def test_permute_components_preserves_likelihood_and_relabels_paths():
    x, params = section_params(seed=3)
    perms = [np.array([2, 0, 1]), np.array([1, 0]), np.array([1, 0])]
    permuted = ident.permute_components(params, perms)
    assert_same_likelihood(x, params, permuted)
    path_perm = ident.path_permutation(perms, params.n_components)
    torch.testing.assert_close(dgmm.log_joint(x, permuted), dgmm.log_joint(x, params)[:, path_perm])


@pytest.mark.parametrize("method", ["brute", "hungarian"])
def test_match_layers_recovers_planted_permutation(method):
    params = random_params((3, 3, 2), (3, 2, 1), 5, seed=4)
    params.eta[0] *= 4.0
    planted = [np.array([1, 2, 0]), np.array([2, 1, 0]), np.array([1, 0])]
    # identify and a symmetry move do not matter: path moments are invariant
    shuffled = random_gauge(ident.permute_components(params, planted), seed=9)
    found = ident.match_layers(params, shuffled, method=method)
    realigned = ident.permute_components(shuffled, found)
    for perm, match in zip(planted, found, strict=True):
        assert np.array_equal(perm[match], np.arange(len(perm)))
    torch.testing.assert_close(dgmm.path_moments(realigned)[1], dgmm.path_moments(params)[1])
    path_perm = ident.align_paths(params, shuffled)
    torch.testing.assert_close(dgmm.path_moments(shuffled)[1][path_perm],
                               dgmm.path_moments(params)[1])


def test_match_paths_and_unstructured_alignment():
    params = random_params((2, 3), (3, 2), 5, seed=6)
    params.eta[0] *= 4.0
    means = dgmm.path_moments(params)[1]
    planted = torch.randperm(means.shape[0], generator=torch.Generator().manual_seed(1))
    assert np.array_equal(planted.numpy()[ident.match_paths(means, means[planted])], np.arange(6))
    assert np.array_equal(ident.align_paths(params, params, structured=False), np.arange(6))
    with pytest.raises(ValueError, match="shape"):
        ident.match_paths(means, means[:3])


def test_relabel_labels_recovers_planted_permutation():
    rng = np.random.default_rng(0)
    reference = rng.integers(0, 5, size=300)
    planted = np.array([3, 0, 4, 1, 2])
    labels = planted[reference]
    noisy = labels.copy()
    flip = rng.random(300) < 0.1
    noisy[flip] = rng.integers(0, 5, size=flip.sum())
    assert np.array_equal(ident.relabel_labels(reference, labels), reference)
    assert (ident.relabel_labels(reference, noisy) == reference).mean() > 0.85
    perm = ident.align_paths(reference, labels, n_paths=6)
    assert perm.shape == (6,) and np.array_equal(perm[:5], planted)
    with pytest.raises(ValueError, match="not a mix"):
        ident.align_paths(CASES[0][1], reference)
