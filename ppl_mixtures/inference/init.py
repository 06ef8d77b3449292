"""Initialisation of mixture models: k-means++, Lloyd's k-means, random and from labels.

Everything here runs in torch, vectorised, on the data's device and in the data's dtype, so the
same code seeds a fit on CPU or CUDA without a round trip through NumPy.

Random numbers and devices
--------------------------
A ``torch.Generator`` belongs to one device. Every draw in this module is made on the
*generator's* device and the result (indices or uniforms) is then moved to the data's device.
:func:`resolve_generator` builds a generator on the data's device, so the usual path never
copies; a CPU generator passed with CUDA data also works (the few random numbers are drawn on
the CPU and moved), and gives the same draws as it would on CPU data.

Distances
---------
Squared Euclidean distances use the expanded form ``|x|^2 + |c|^2 - 2 x.c``, clamped at 0,
on data centred at its mean (as scikit-learn does, to lose fewer digits in float32). Blocks of
samples are processed in chunks so that memory stays ``O(chunk * K)``; k-means++ holds one
``(n_local_trials, N)`` block. Reported inertias are recomputed exactly as
``sum_n |x_n - c_{label_n}|^2``.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "INIT_METHODS",
    "initial_responsibilities",
    "kmeans",
    "kmeans_plusplus",
    "resolve_generator",
    "responsibilities_from_labels",
]

#: Names accepted by :func:`initial_responsibilities` (scikit-learn's ``init_params``).
INIT_METHODS: tuple[str, ...] = ("kmeans", "k-means++", "random", "random_from_data")

#: Largest number of entries of one (samples x centers) distance block.
_CHUNK_ELEMENTS = 2**22

_MAX_SEED = 2**64


# ------------------------------------------------------------------------------------ generators


def resolve_generator(
    random_state: None | int | np.random.RandomState | np.random.Generator | torch.Generator,
    device: torch.device | str | None = None,
) -> torch.Generator:
    """Turn a scikit-learn style ``random_state`` into a ``torch.Generator``.

    Parameters
    ----------
    random_state : None, int, numpy.random.RandomState, numpy.random.Generator or torch.Generator
        ``None`` seeds a new generator from system entropy (not reproducible). An int in
        ``[0, 2**64)`` seeds a new generator. A NumPy random state or generator is consumed once
        to draw a seed, so the result is deterministic given its state. A ``torch.Generator`` is
        returned as is (whatever its device; see the module notes on devices).
    device : torch.device or str, optional
        Device of the new generator, normally the data's device; CPU when omitted.

    Returns
    -------
    torch.Generator

    Raises
    ------
    TypeError
        If ``random_state`` is of another type (``bool`` included).
    ValueError
        If an int seed is negative or not below ``2**64``.
    """
    if isinstance(random_state, torch.Generator):
        return random_state
    device = torch.device("cpu") if device is None else torch.device(device)
    generator = torch.Generator(device=device)
    if random_state is None:
        generator.seed()
        return generator
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool | np.bool_):
        seed = int(random_state)
        if not 0 <= seed < _MAX_SEED:
            raise ValueError(f"random_state={seed} must be an int in [0, 2**64)")
    elif isinstance(random_state, np.random.RandomState):
        seed = int(random_state.randint(np.iinfo(np.int64).max, dtype=np.int64))
    elif isinstance(random_state, np.random.Generator):
        seed = int(random_state.integers(np.iinfo(np.int64).max, dtype=np.int64))
    else:
        raise TypeError(
            f"random_state={random_state!r} of type {type(random_state).__name__} cannot seed a "
            "generator; pass None, an int, a numpy.random.RandomState or Generator, or a "
            "torch.Generator"
        )
    generator.manual_seed(seed)
    return generator


def _uniform(shape: tuple[int, ...], generator: torch.Generator, like: Tensor) -> Tensor:
    """Uniform draws on ``[0, 1)`` from ``generator``, in ``like``'s dtype and on its device.

    Drawn in float64 whatever that dtype, then rounded: torch's float32 and float64 draws
    from one generator state differ, so float32 data took other k-means++ seeds than the same
    data in float64 (the digits: a k-means start that agreed with float64's to an ARI of
    0.77-0.86 over four seeds), where scikit-learn draws in float64 for both.
    """
    draws = torch.rand(shape, generator=generator, device=generator.device, dtype=torch.float64)
    return draws.to(device=like.device, dtype=like.dtype)


def _random_index(high: int, generator: torch.Generator, like: Tensor) -> Tensor:
    """One index uniform on ``{0, ..., high - 1}``, shape (1,), on ``like``'s device."""
    index = torch.randint(high, (1,), generator=generator, device=generator.device)
    return index.to(like.device)


def _random_subset(n: int, size: int, generator: torch.Generator, like: Tensor) -> Tensor:
    """``size`` distinct indices uniform among ``{0, ..., n - 1}``, on ``like``'s device."""
    permutation = torch.randperm(n, generator=generator, device=generator.device)
    return permutation[:size].to(like.device)


# ------------------------------------------------------------------------------------- distances


def _check_n_clusters(n_samples: int, n_clusters: int, name: str = "n_clusters") -> None:
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(n_clusters).__name__}")
    if n_clusters < 1:
        raise ValueError(f"{name}={n_clusters} must be >= 1")
    if n_clusters > n_samples:
        raise ValueError(
            f"n_samples={n_samples} should be >= {name}={n_clusters}; pass more samples or "
            f"lower {name}"
        )


def _squared_distances(
    points: Tensor, centers: Tensor, points_sq_norms: Tensor, centers_sq_norms: Tensor
) -> Tensor:
    """Squared Euclidean distances by the expanded form, clamped at 0.

    Parameters
    ----------
    points : Tensor, shape (M, D)
    centers : Tensor, shape (K, D)
    points_sq_norms : Tensor, shape (M,)
    centers_sq_norms : Tensor, shape (K,)

    Returns
    -------
    Tensor, shape (M, K)
    """
    norms = points_sq_norms[:, None] + centers_sq_norms[None, :]
    return torch.addmm(norms, points, centers.T, alpha=-2.0).clamp_(min=0.0)


def _nearest_center(
    x: Tensor, centers: Tensor, x_sq_norms: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Index of and squared distance to the nearest center, in chunks of samples.

    Parameters
    ----------
    x : Tensor, shape (N, D)
    centers : Tensor, shape (K, D)
    x_sq_norms : Tensor, shape (N,), optional
        ``(x ** 2).sum(-1)``, when already at hand.

    Returns
    -------
    labels : Tensor, shape (N,), long
    min_sq_distances : Tensor, shape (N,)
    """
    if x_sq_norms is None:
        x_sq_norms = x.square().sum(-1)
    centers_sq_norms = centers.square().sum(-1)
    chunk = max(1, _CHUNK_ELEMENTS // centers.shape[0])
    labels, distances = [], []
    for start in range(0, x.shape[0], chunk):
        block = _squared_distances(
            x[start:start + chunk], centers, x_sq_norms[start:start + chunk], centers_sq_norms
        )
        block_min, block_labels = block.min(dim=-1)
        labels.append(block_labels)
        distances.append(block_min)
    return torch.cat(labels), torch.cat(distances)


def _inertia(x: Tensor, centers: Tensor, labels: Tensor,
             weights: Tensor | None = None) -> Tensor:
    """Exact ``sum_n w_n |x_n - centers[labels_n]|^2`` (``w_n = 1`` by default), a scalar."""
    distances = (x - centers[labels]).square().sum(-1)
    return distances.sum() if weights is None else weights @ distances


def check_weights(weights: Tensor | None, n_samples: int, n_clusters: int,
                  name: str = "n_clusters") -> None:
    """At least ``n_clusters`` rows of positive weight, or a ``ValueError`` that says so."""
    if weights is None:
        return
    if weights.shape != (n_samples,):
        raise ValueError(f"sample_weight has shape {tuple(weights.shape)}; expected "
                         f"({n_samples},), one weight per row")
    positive = int((weights > 0).sum())
    if positive < n_clusters:
        raise ValueError(
            f"only {positive} rows have a positive sample_weight, fewer than {name}="
            f"{n_clusters}; give more rows a positive weight or lower {name}"
        )


def _weighted_mean(x: Tensor, weights: Tensor | None) -> Tensor:
    """Mean of the rows of ``x`` (weighted by ``weights``), shape (D,)."""
    return x.mean(dim=0) if weights is None else (weights @ x) / weights.sum()


def _weighted_index(weights: Tensor, generator: torch.Generator, like: Tensor) -> Tensor:
    """One index drawn with probability proportional to ``weights``, shape (1,)."""
    cumulative = torch.cumsum(weights, dim=0)
    target = _uniform((1,), generator, like) * cumulative[-1]
    return torch.searchsorted(cumulative, target, right=True).clamp_(max=weights.shape[0] - 1)


# --------------------------------------------------------------------------------------- k-means++


def _kmeans_plusplus_indices(
    x: Tensor, n_clusters: int, generator: torch.Generator, n_local_trials: int | None,
    sample_weight: Tensor | None = None,
) -> Tensor:
    """Row indices of the greedy k-means++ seeds of centred data ``x`` (N, D); shape (K,).

    With ``sample_weight`` (N,), a row of weight ``w`` counts as ``w`` rows: the first seed
    is drawn with probability proportional to ``w``, the next ones to ``w d^2``, and the
    potential is ``sum_n w_n d_n^2`` (rows of weight 0 are never drawn).
    """
    n_samples = x.shape[0]
    if n_local_trials is None:
        n_local_trials = 2 + int(math.log(n_clusters))
    x_sq_norms = x.square().sum(-1)
    indices = torch.empty(n_clusters, dtype=torch.long, device=x.device)
    if sample_weight is None:
        first = _random_index(n_samples, generator, x)
    else:
        first = _weighted_index(sample_weight, generator, x)
    indices[0] = first[0]
    closest = _squared_distances(x[first], x, x_sq_norms[first], x_sq_norms)[0]
    for cluster in range(1, n_clusters):
        # D^2 sampling: a point is drawn with probability proportional to its distance to the
        # nearest seed so far. If every distance is 0 (fewer distinct rows than clusters) draw
        # uniformly instead; no host sync is needed for this choice.
        if sample_weight is None:
            potential = closest.sum()
            weights = torch.where(potential > 0, closest, torch.ones_like(closest))
        else:
            weighted = sample_weight * closest
            weights = torch.where(weighted.sum() > 0, weighted, sample_weight)
        cumulative = torch.cumsum(weights, dim=0)
        targets = _uniform((n_local_trials,), generator, x) * cumulative[-1]
        # right=True: the chosen point's own weight is > 0, so a seed is never drawn twice.
        candidates = torch.searchsorted(cumulative, targets, right=True).clamp_(max=n_samples - 1)
        to_candidates = _squared_distances(
            x[candidates], x, x_sq_norms[candidates], x_sq_norms
        )  # (n_local_trials, N)
        torch.minimum(to_candidates, closest[None, :], out=to_candidates)
        # greedy step: keep the candidate that lowers the potential the most
        potentials = (to_candidates.sum(-1) if sample_weight is None
                      else to_candidates @ sample_weight)
        best = torch.argmin(potentials)
        indices[cluster] = candidates[best]
        closest = to_candidates[best]
    return indices


@torch.no_grad()
def kmeans_plusplus(
    x: Tensor,
    n_clusters: int,
    generator: torch.Generator,
    n_local_trials: int | None = None,
    sample_weight: Tensor | None = None,
) -> Tensor:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii, 2007; scikit-learn's default variant).

    The first seed is a uniformly random row. Each next seed is the best of ``n_local_trials``
    rows drawn with probability proportional to the squared distance to the nearest seed so
    far: the one that lowers the total potential ``sum_n min_k |x_n - c_k|^2`` the most.

    Parameters
    ----------
    x : Tensor, shape (n_samples, n_features)
    n_clusters : int
        Number of seeds ``K``, ``1 <= K <= n_samples``.
    generator : torch.Generator
        Source of randomness; see the module notes on devices.
    n_local_trials : int, optional
        Candidates per seed; ``2 + floor(ln K)`` when omitted. ``1`` gives plain k-means++.
    sample_weight : Tensor, shape (n_samples,), optional
        Non-negative row weights: a row of weight ``w`` is drawn as ``w`` copies of it would
        be; rows of weight 0 are never seeds (at least ``K`` rows need a positive weight).

    Returns
    -------
    centers : Tensor, shape (n_clusters, n_features)
        Rows of ``x``, distinct whenever ``x`` has at least ``K`` distinct rows. Same dtype and
        device as ``x``.

    Raises
    ------
    ValueError
        If ``n_clusters`` is not in ``[1, n_samples]`` or ``n_local_trials < 1``.
    """
    _check_n_clusters(x.shape[0], n_clusters)
    if n_local_trials is not None and n_local_trials < 1:
        raise ValueError(f"n_local_trials={n_local_trials} must be >= 1")
    check_weights(sample_weight, x.shape[0], n_clusters)
    centred = x - _weighted_mean(x, sample_weight)
    indices = _kmeans_plusplus_indices(centred, n_clusters, generator, n_local_trials,
                                       sample_weight)
    return x[indices].clone()


# ------------------------------------------------------------------------------------- k-means


def _relocate_empty_clusters(
    x: Tensor,
    labels: Tensor,
    min_sq_distances: Tensor,
    sums: Tensor,
    counts: Tensor,
    weights: Tensor | None = None,
) -> None:
    """Give each empty cluster one of the points farthest from their centers, in place.

    The ``n_empty`` points with the largest distance to their assigned center leave their
    cluster (its sum and count are reduced) and each becomes the sole member of one empty
    cluster, as scikit-learn's Lloyd implementation does.

    Parameters
    ----------
    x : Tensor, shape (N, D)
    labels : Tensor, shape (N,), long
        Updated in place for the moved points.
    min_sq_distances : Tensor, shape (N,)
        Squared distance of each point to its assigned center.
    sums : Tensor, shape (K, D)
        Per-cluster sums of the points; updated in place.
    counts : Tensor, shape (K,)
        Per-cluster numbers of points; updated in place.
    weights : Tensor, shape (N,), optional
        Row weights: ``sums`` and ``counts`` are weighted, a cluster of weight 0 is empty and
        only rows of positive weight move.
    """
    empty = torch.nonzero(counts == 0).squeeze(-1)
    if empty.numel() == 0:
        return
    if weights is not None:
        _relocate_weighted(x, labels, min_sq_distances, sums, counts, weights, empty)
        return
    farthest = torch.topk(min_sq_distances, empty.numel()).indices
    old = labels[farthest]
    sums.index_add_(0, old, x[farthest], alpha=-1.0)
    counts.index_add_(0, old, torch.full_like(old, -1, dtype=counts.dtype))
    sums[empty] = x[farthest]
    counts[empty] = 1
    labels[farthest] = empty


def _relocate_weighted(x: Tensor, labels: Tensor, min_sq_distances: Tensor, sums: Tensor,
                       counts: Tensor, weights: Tensor, empty: Tensor) -> None:
    """:func:`_relocate_empty_clusters` with row weights (rows of weight 0 never move)."""
    distances = torch.where(weights > 0, min_sq_distances,
                            torch.full_like(min_sq_distances, -1.0))
    farthest = torch.topk(distances, empty.numel()).indices
    moved = weights[farthest]
    old = labels[farthest]
    sums.index_add_(0, old, x[farthest] * moved[:, None], alpha=-1.0)
    counts.index_add_(0, old, -moved)
    sums[empty] = x[farthest] * moved[:, None]
    counts[empty] = moved
    labels[farthest] = empty


def _lloyd(
    x: Tensor, centers: Tensor, max_iter: int, tol_abs: float,
    weights: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Lloyd's iterations on centred data from ``centers`` (weighted means with ``weights``).

    Parameters
    ----------
    x : Tensor, shape (N, D)
    centers : Tensor, shape (K, D)
    max_iter : int
    tol_abs : float
        Stop when the summed squared center shift is ``<= tol_abs``.
    weights : Tensor, shape (N,), optional
        Row weights: each center moves to the weighted mean of its rows.

    Returns
    -------
    centers : Tensor, shape (K, D)
    labels : Tensor, shape (N,), long
        Nearest center of each point, consistent with the returned centers.
    """
    n_clusters = centers.shape[0]
    x_sq_norms = x.square().sum(-1)
    previous_labels = None
    for _ in range(max_iter):
        labels, min_sq_distances = _nearest_center(x, centers, x_sq_norms)
        if previous_labels is not None and torch.equal(labels, previous_labels):
            return centers, labels  # strict convergence: the centers would not move
        previous_labels = labels.clone()
        if weights is None:
            sums = torch.zeros_like(centers).index_add_(0, labels, x)
            counts = torch.bincount(labels, minlength=n_clusters).to(x.dtype)
        else:
            sums = torch.zeros_like(centers).index_add_(0, labels, x * weights[:, None])
            counts = x.new_zeros(n_clusters).index_add_(0, labels, weights)
        _relocate_empty_clusters(x, labels, min_sq_distances, sums, counts, weights)
        # a cluster emptied by the relocation keeps its center until the next assignment
        new_centers = torch.where(
            counts[:, None] > 0, sums / counts.clamp(min=1.0)[:, None], centers
        )
        shift = (new_centers - centers).square().sum()
        centers = new_centers
        if float(shift) <= tol_abs:
            break
    labels, _ = _nearest_center(x, centers, x_sq_norms)
    return centers, labels


@torch.no_grad()
def kmeans(
    x: Tensor,
    n_clusters: int,
    generator: torch.Generator,
    n_init: int = 1,
    max_iter: int = 100,
    tol: float = 1e-4,
    sample_weight: Tensor | None = None,
) -> tuple[Tensor, Tensor, float]:
    """Lloyd's k-means from greedy k-means++ seeds, best of ``n_init`` runs by inertia.

    Each iteration assigns every point to its nearest center and moves each center to the mean
    of its points. A cluster left empty takes the point farthest from its assigned center (that
    point leaves its old cluster), as scikit-learn does. A run stops when the labels no longer
    change, or when the summed squared center shift is at most ``tol`` times the mean
    per-feature variance of ``x`` (scikit-learn's relative tolerance), or after ``max_iter``
    iterations; the labels returned are always those of the nearest returned center.

    Parameters
    ----------
    x, n_clusters, generator
        As in :func:`kmeans_plusplus`, which seeds every run: the data (n_samples, n_features),
        the number of clusters ``K`` (``1 <= K <= n_samples``) and the source of randomness.
    n_init : int, default 1
        Number of runs from different seeds; the one with the lowest inertia is returned.
    max_iter : int, default 100
        Most Lloyd iterations per run.
    tol : float, default 1e-4
        Relative tolerance on the center shift.
    sample_weight : Tensor, shape (n_samples,), optional
        Non-negative row weights: the seeds, the centers (weighted means), the tolerance
        (weighted variance) and the inertia count a row of weight ``w`` as ``w`` rows; at
        least ``K`` rows need a positive weight.

    Returns
    -------
    centers : Tensor, shape (n_clusters, n_features)
    labels : Tensor, shape (n_samples,), long
    inertia : float
        ``sum_n w_n |x_n - centers[labels_n]|^2`` (``w_n = 1`` without weights).

    Raises
    ------
    ValueError
        If ``n_clusters`` is not in ``[1, n_samples]``, ``n_init < 1``, ``max_iter < 1`` or
        ``tol < 0``.
    """
    _check_n_clusters(x.shape[0], n_clusters)
    if n_init < 1:
        raise ValueError(f"n_init={n_init} must be >= 1")
    if max_iter < 1:
        raise ValueError(f"max_iter={max_iter} must be >= 1")
    if tol < 0:
        raise ValueError(f"tol={tol} must be >= 0")
    check_weights(sample_weight, x.shape[0], n_clusters)
    mean = _weighted_mean(x, sample_weight)
    centred = x - mean
    if sample_weight is None:
        tol_abs = float(tol * centred.var(dim=0, unbiased=False).mean())
    else:
        tol_abs = float(tol * (sample_weight @ centred.square()).mean() / sample_weight.sum())
    best: tuple[Tensor, Tensor, float] | None = None
    for _ in range(n_init):
        seeds = centred[_kmeans_plusplus_indices(centred, n_clusters, generator, None,
                                                 sample_weight)]
        centers, labels = _lloyd(centred, seeds, max_iter, tol_abs, sample_weight)
        inertia = float(_inertia(centred, centers, labels, sample_weight))
        if best is None or inertia < best[2]:
            best = (centers, labels, inertia)
    centers, labels, inertia = best
    return centers + mean, labels, inertia


# ------------------------------------------------------------------------------ responsibilities


def responsibilities_from_labels(
    labels: Tensor, n_components: int, dtype: torch.dtype | None = None
) -> Tensor:
    """One-hot responsibilities from hard labels.

    Parameters
    ----------
    labels : Tensor, shape (n_samples,), integer
        Component of each sample, in ``[0, n_components)``.
    n_components : int
    dtype : torch.dtype, optional
        Floating dtype of the result; the default float dtype when omitted.

    Returns
    -------
    Tensor, shape (n_samples, n_components)
        On the labels' device.

    Raises
    ------
    ValueError
        If ``labels`` is not one-dimensional and integer, or a label is out of range.
    """
    if labels.dim() != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must hold integers, got dtype {labels.dtype}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_components):
        raise ValueError(
            f"labels must lie in [0, {n_components}) for n_components={n_components}, got "
            f"values in [{int(labels.min())}, {int(labels.max())}]"
        )
    resp = torch.zeros(labels.shape[0], n_components, dtype=dtype, device=labels.device)
    return resp.scatter_(1, labels.long()[:, None], 1.0)


def _one_hot(labels: Tensor, n_components: int, like: Tensor) -> Tensor:
    """One-hot (N, K) of in-range ``labels`` (N,), in ``like``'s dtype and on its device."""
    resp = torch.zeros(labels.shape[0], n_components, dtype=like.dtype, device=like.device)
    return resp.scatter_(1, labels[:, None], 1.0)


@torch.no_grad()
def initial_responsibilities(
    x: Tensor, n_components: int, method: str, generator: torch.Generator,
    sample_weight: Tensor | None = None,
) -> Tensor:
    """Initial responsibilities for EM / SVI, as scikit-learn's ``init_params``.

    Parameters
    ----------
    x : Tensor, shape (n_samples, n_features)
    n_components : int
        ``K``, ``1 <= K <= n_samples``.
    method : {"kmeans", "k-means++", "random", "random_from_data"}
        - ``"kmeans"``: one-hot of the labels of :func:`kmeans` with ``n_init=1``.
        - ``"k-means++"``: one-hot of the nearest :func:`kmeans_plusplus` seed.
        - ``"random"``: rows of uniform random numbers, each normalised to sum to 1.
        - ``"random_from_data"``: ``K`` distinct rows of ``x`` chosen uniformly at random as
          centers, one-hot of the nearest.

        Unlike scikit-learn, which marks only the chosen rows for the last two, every row here
        gets a one-hot assignment, so that every sample informs the first M-step.
    generator : torch.Generator
        Source of randomness; see the module notes on devices.
    sample_weight : Tensor, shape (n_samples,), optional
        Non-negative row weights, which the k-means methods and ``"random_from_data"`` follow
        (a row of weight ``w`` counts as ``w`` rows; rows of weight 0 are never centers);
        ``"random"`` ignores them (the first M-step weighs the rows). Equal weights draw
        what no weights draw.

    Returns
    -------
    Tensor, shape (n_samples, n_components)
        Rows sum to 1; same dtype and device as ``x``.

    Raises
    ------
    ValueError
        If ``method`` is unknown or ``n_components`` is not in ``[1, n_samples]``.
    """
    if method not in INIT_METHODS:
        raise ValueError(f"init method {method!r} is not one of {INIT_METHODS}")
    _check_n_clusters(x.shape[0], n_components, "n_components")
    check_weights(sample_weight, x.shape[0], n_components, "n_components")
    if sample_weight is not None and bool((sample_weight == sample_weight[0]).all()):
        sample_weight = None  # equal weights count every row alike: the unweighted draws
    if method == "random":
        resp = _uniform((x.shape[0], n_components), generator, x)
        return resp / resp.sum(dim=1, keepdim=True)
    if method == "kmeans":
        _, labels, _ = kmeans(x, n_components, generator, n_init=1,
                              sample_weight=sample_weight)
        return _one_hot(labels, n_components, x)
    centred = x - _weighted_mean(x, sample_weight)
    if method == "k-means++":
        indices = _kmeans_plusplus_indices(centred, n_components, generator, None,
                                           sample_weight)
    elif sample_weight is None:
        indices = _random_subset(x.shape[0], n_components, generator, x)
    else:  # distinct rows, each draw proportional to the weights of the rows left
        draws = torch.multinomial(sample_weight.to(generator.device), n_components,
                                  replacement=False, generator=generator)
        indices = draws.to(x.device)
    labels, _ = _nearest_center(centred, centred[indices])
    return _one_hot(labels, n_components, x)
