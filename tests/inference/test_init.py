"""Tests for ppl_mixtures.inference.init: k-means++, k-means, generators, responsibilities.

Thresholds come from measured runs (float64, CPU): on the separated blobs our inertia equals
scikit-learn's to ~1e-15; on the overlapping case the mean inertia ratio over 8 seeds was
0.993 (ours lower; single seeds within 1.8%); the greedy k-means++ potential averaged 0.94 times
scikit-learn's over 30 seeds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.cluster import kmeans_plusplus as sklearn_kmeans_plusplus
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from ppl_mixtures.inference.init import (
    INIT_METHODS,
    _relocate_empty_clusters,
    initial_responsibilities,
    kmeans,
    kmeans_plusplus,
    resolve_generator,
    responsibilities_from_labels,
)

HARD_METHODS = ("kmeans", "k-means++", "random_from_data")


def _blobs(seed: int, n_samples: int = 600, centers: int = 4, n_features: int = 3,
           cluster_std: float = 0.5) -> tuple[torch.Tensor, np.ndarray]:
    x, y = make_blobs(n_samples=n_samples, centers=centers, n_features=n_features,
                      cluster_std=cluster_std, center_box=(-10.0, 10.0), random_state=seed)
    return torch.as_tensor(x), y


def _potential(x: torch.Tensor, centers: torch.Tensor) -> float:
    return float(torch.cdist(x, centers).square().min(dim=1).values.sum())


def _is_one_hot(resp: torch.Tensor) -> bool:
    return bool(((resp == 0) | (resp == 1)).all()) and bool((resp.sum(1) == 1).all())


# ------------------------------------------------------------------------------------ k-means


@pytest.mark.parametrize("seed", range(5))
def test_kmeans_recovers_separated_blobs_like_sklearn(seed):
    x, y = _blobs(seed)
    centers, labels, inertia = kmeans(x, 4, resolve_generator(seed), n_init=3)
    reference = KMeans(n_clusters=4, n_init=3, random_state=seed).fit(x.numpy())

    assert centers.shape == (4, 3) and labels.shape == (600,) and labels.dtype == torch.long
    assert adjusted_rand_score(y, labels.numpy()) >= 0.99
    assert inertia == pytest.approx(reference.inertia_, rel=0.01)
    # the inertia is that of the returned centers and labels, which are consistent
    assert inertia == pytest.approx(float((x - centers[labels]).square().sum()), rel=1e-12)
    assert torch.equal(labels, torch.cdist(x, centers).argmin(dim=1))


def test_kmeans_inertia_matches_sklearn_on_overlapping_clusters():
    ratios = []
    for seed in range(8):
        x, _ = _blobs(seed, n_samples=1500, centers=10, n_features=2, cluster_std=3.0)
        _, _, inertia = kmeans(x, 10, resolve_generator(seed), n_init=3)
        reference = KMeans(n_clusters=10, n_init=3, random_state=seed).fit(x.numpy())
        ratios.append(inertia / reference.inertia_)
    assert abs(np.mean(ratios) - 1.0) < 0.02
    assert max(abs(r - 1.0) for r in ratios) < 0.06


def test_kmeans_more_inits_never_worse():
    x, _ = _blobs(1, n_samples=800, centers=8, n_features=2, cluster_std=2.0)
    _, _, single = kmeans(x, 8, resolve_generator(5), n_init=1)
    _, _, several = kmeans(x, 8, resolve_generator(5), n_init=4)
    assert several <= single + 1e-9


def test_kmeans_is_deterministic_and_float32_agrees():
    x, _ = _blobs(2)
    first = kmeans(x, 4, resolve_generator(11))
    second = kmeans(x, 4, resolve_generator(11))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    centers32, labels32, inertia32 = kmeans(x.float(), 4, resolve_generator(11))
    assert centers32.dtype == torch.float32 and labels32.dtype == torch.long
    assert adjusted_rand_score(first[1].numpy(), labels32.numpy()) == 1.0
    assert inertia32 == pytest.approx(first[2], rel=1e-4)


def test_kmeans_with_fewer_distinct_points_than_clusters():
    x = torch.tensor([[0.0, 0.0], [5.0, 5.0], [-5.0, 3.0]]).repeat(10, 1)
    centers, labels, inertia = kmeans(x, 5, resolve_generator(0), n_init=2)
    assert torch.isfinite(centers).all()
    assert inertia == pytest.approx(0.0, abs=1e-12)
    assert len(torch.unique(labels)) >= 3


def test_relocate_empty_clusters_moves_the_farthest_point():
    x = torch.tensor([[0.0], [1.0], [2.0], [10.0]])
    labels = torch.zeros(4, dtype=torch.long)
    min_sq_distances = (x[:, 0] - 3.25).square()
    sums = torch.zeros(2, 1).index_add_(0, labels, x)
    counts = torch.tensor([4.0, 0.0])
    _relocate_empty_clusters(x, labels, min_sq_distances, sums, counts)
    assert labels.tolist() == [0, 0, 0, 1]
    assert counts.tolist() == [3.0, 1.0]
    assert sums[:, 0].tolist() == [3.0, 10.0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"n_init": 0}, "n_init"), ({"max_iter": 0}, "max_iter"), ({"tol": -1.0}, "tol")],
)
def test_kmeans_rejects_bad_arguments(kwargs, match):
    x, _ = _blobs(0, n_samples=20)
    with pytest.raises(ValueError, match=match):
        kmeans(x, 2, resolve_generator(0), **kwargs)


# ---------------------------------------------------------------------------------- k-means++


@pytest.mark.parametrize("n_local_trials", [None, 1])
def test_kmeans_plusplus_seeds_are_distinct_rows(n_local_trials):
    x, _ = _blobs(0, n_samples=300, centers=6)
    centers = kmeans_plusplus(x, 6, resolve_generator(3), n_local_trials=n_local_trials)
    assert centers.shape == (6, 3) and centers.dtype == x.dtype
    matches = (centers[:, None, :] == x[None, :, :]).all(-1)  # (K, N)
    assert bool((matches.sum(1) >= 1).all())
    assert len(torch.unique(centers, dim=0)) == 6


def test_kmeans_plusplus_determinism():
    x, _ = _blobs(4, n_samples=300, centers=5)
    first = kmeans_plusplus(x, 5, resolve_generator(7))
    assert torch.equal(first, kmeans_plusplus(x, 5, resolve_generator(7)))
    others = [kmeans_plusplus(x, 5, resolve_generator(seed)) for seed in range(8, 14)]
    assert sum(not torch.equal(first, other) for other in others) >= 5


def test_kmeans_plusplus_potential_like_sklearn_greedy():
    x, _ = _blobs(3, n_samples=1000, centers=6, n_features=4, cluster_std=1.5)
    seeds = range(20)
    greedy = np.mean([_potential(x, kmeans_plusplus(x, 6, resolve_generator(s))) for s in seeds])
    plain = np.mean([
        _potential(x, kmeans_plusplus(x, 6, resolve_generator(s), n_local_trials=1))
        for s in seeds
    ])
    reference = np.mean([
        _potential(x, torch.as_tensor(sklearn_kmeans_plusplus(x.numpy(), 6, random_state=s)[0]))
        for s in seeds
    ])
    assert greedy < plain
    assert greedy == pytest.approx(reference, rel=0.15)


@pytest.mark.parametrize("n_clusters", [0, 11])
def test_kmeans_plusplus_rejects_bad_cluster_counts(n_clusters):
    x = torch.randn(10, 2)
    with pytest.raises(ValueError, match="n_clusters"):
        kmeans_plusplus(x, n_clusters, resolve_generator(0))


# --------------------------------------------------------------------------------- generators


def _first_draw(generator: torch.Generator) -> float:
    return float(torch.rand(1, generator=generator))


def test_resolve_generator_from_ints_and_numpy_states():
    assert _first_draw(resolve_generator(3)) == _first_draw(resolve_generator(np.int64(3)))
    assert _first_draw(resolve_generator(3)) != _first_draw(resolve_generator(4))
    from_rs = [_first_draw(resolve_generator(np.random.RandomState(1))) for _ in range(2)]
    from_gen = [_first_draw(resolve_generator(np.random.default_rng(1))) for _ in range(2)]
    assert from_rs[0] == from_rs[1] and from_gen[0] == from_gen[1]
    generator = torch.Generator()
    assert resolve_generator(generator) is generator
    assert resolve_generator(None, "cpu").device.type == "cpu"


@pytest.mark.parametrize("bad", ["seed", 1.5, True, [1]])
def test_resolve_generator_type_error(bad):
    with pytest.raises(TypeError, match="random_state"):
        resolve_generator(bad)


def test_resolve_generator_negative_seed():
    with pytest.raises(ValueError, match="random_state"):
        resolve_generator(-1)


# --------------------------------------------------------------------------- responsibilities


@pytest.mark.parametrize("method", INIT_METHODS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_initial_responsibilities(method, dtype):
    x, y = _blobs(5)
    x = x.to(dtype)
    resp = initial_responsibilities(x, 4, method, resolve_generator(0))
    assert resp.shape == (600, 4) and resp.dtype == dtype and resp.device == x.device
    assert torch.allclose(resp.sum(1), torch.ones(600, dtype=dtype))
    assert bool((resp >= 0).all())
    if method in HARD_METHODS:
        assert _is_one_hot(resp)
        assert bool((resp.sum(0) > 0).all())
    if method == "kmeans":
        assert adjusted_rand_score(y, resp.argmax(1).numpy()) >= 0.99
    again = initial_responsibilities(x, 4, method, resolve_generator(0))
    assert torch.equal(resp, again)


def test_initial_responsibilities_errors():
    x, _ = _blobs(0, n_samples=10)
    with pytest.raises(ValueError, match="random_from_data"):
        initial_responsibilities(x, 2, "spectral", resolve_generator(0))
    with pytest.raises(ValueError, match="n_components"):
        initial_responsibilities(x, 11, "kmeans", resolve_generator(0))


def test_responsibilities_from_labels():
    labels = torch.tensor([2, 0, 1, 2])
    resp = responsibilities_from_labels(labels, 3)
    assert resp.shape == (4, 3) and resp.dtype == torch.get_default_dtype()
    assert torch.equal(resp.argmax(1), labels) and _is_one_hot(resp)
    assert responsibilities_from_labels(labels, 4, dtype=torch.float32).dtype == torch.float32


@pytest.mark.parametrize(
    "labels",
    [torch.tensor([0, 3]), torch.tensor([-1, 0]), torch.tensor([0.0, 1.0]),
     torch.zeros(2, 2, dtype=torch.long)],
)
def test_responsibilities_from_labels_rejects_bad_labels(labels):
    with pytest.raises(ValueError, match="labels"):
        responsibilities_from_labels(labels, 3)


# ------------------------------------------------------------------------------------- device


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_data_with_cuda_or_cpu_generator():
    x, y = _blobs(0)
    x_cuda = x.cuda()
    for generator in (resolve_generator(0, x_cuda.device), resolve_generator(0)):
        centers, labels, _ = kmeans(x_cuda, 4, generator)
        assert centers.device == x_cuda.device and labels.device == x_cuda.device
        assert adjusted_rand_score(y, labels.cpu().numpy()) >= 0.99
        for method in INIT_METHODS:
            resp = initial_responsibilities(x_cuda, 4, method, generator)
            assert resp.device == x_cuda.device
    # a CPU generator draws the same seeds for CUDA data as for CPU data
    on_cpu = kmeans_plusplus(x, 4, resolve_generator(1))
    on_cuda = kmeans_plusplus(x_cuda, 4, resolve_generator(1))
    assert torch.allclose(on_cpu, on_cuda.cpu())


def test_kmeans_start_as_good_as_sklearn_on_standardised_iris():
    """Issue 18 item 10: the start, judged over seeds rather than on one.

    Measured, seeds 0-19: k-means (one run) mean inertia 145.7 here, 150.8 for scikit-learn's
    ``KMeans(n_init=1)``; a one-start full GMM's mean ARI 0.862 here, 0.825 for scikit-learn's
    ``GaussianMixture`` (each has unlucky seeds: ours 0 and 7 end at ARI 0.52 and 0.46).
    """
    from sklearn.datasets import load_iris
    from sklearn.mixture import GaussianMixture as SkGaussianMixture
    from sklearn.preprocessing import StandardScaler

    from ppl_mixtures import GaussianMixture

    X, y = load_iris(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    seeds = range(20)
    ours = [kmeans(torch.tensor(X), 3, torch.Generator().manual_seed(s))[2] for s in seeds]
    theirs = [KMeans(3, n_init=1, random_state=s).fit(X).inertia_ for s in seeds]
    assert np.mean(ours) <= 1.01 * np.mean(theirs)
    ours_ari = [adjusted_rand_score(y, GaussianMixture(3, random_state=s, progress=False)
                                    .fit(X).predict(X)) for s in seeds]
    theirs_ari = [adjusted_rand_score(y, SkGaussianMixture(3, random_state=s).fit(X).predict(X))
                  for s in seeds]
    assert np.mean(ours_ari) >= np.mean(theirs_ari) - 0.02
