"""Synthetic data with known labels: Gaussian mixtures and the pinwheel.

``make_gmm``
    A Gaussian mixture with any of the five covariance structures of
    :data:`ppl_mixtures.models.gmm.COVARIANCE_TYPES` and, on request, its true parameters.
``make_correlated_gmm``
    A mixture with strongly correlated full covariances (eigenvalues spread over a factor 40),
    on which missing entries can be predicted from the observed ones.
``make_pinwheel``
    Curved arms in the plane, the synthetic clustering problem of Dilokthanakul et al. (2016,
    section 4.1).

All three return NumPy arrays ``(X, y)``; see ``docs/references.md`` for the works cited.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ppl_mixtures.models.gmm import COVARIANCE_TYPES

__all__ = ["make_correlated_gmm", "make_gmm", "make_pinwheel"]

#: Range of the variances drawn for synthetic components (eigenvalues of each covariance).
_VARIANCE_RANGE = (0.5, 1.5)


def _check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def _check_weights(weights: Any, n_components: int) -> np.ndarray:
    """Return ``weights`` as a float64 vector of shape (n_components,), or uniform when None."""
    if weights is None:
        return np.full(n_components, 1.0 / n_components)
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 1 or weights.shape[0] != n_components:
        raise ValueError(
            f"weights must be a 1-D sequence of length n_components={n_components}, "
            f"got shape {weights.shape}; pass one weight per component or None for uniform."
        )
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise ValueError(f"weights must be finite and non-negative, got {weights.tolist()}.")
    if abs(weights.sum() - 1.0) > 1e-6:
        raise ValueError(
            f"weights must sum to 1, got sum {weights.sum():.6g}; "
            "divide them by their sum (weights / weights.sum())."
        )
    return weights / weights.sum()


def _check_random_state(random_state: Any) -> np.random.Generator:
    if random_state is None or isinstance(random_state, np.random.Generator):
        return np.random.default_rng(random_state)
    if isinstance(random_state, bool) or not isinstance(random_state, int | np.integer):
        raise ValueError(
            "random_state must be None, a non-negative integer seed or a numpy Generator, "
            f"got {random_state!r}."
        )
    if random_state < 0:
        raise ValueError(f"random_state must be a non-negative integer seed, got {random_state}.")
    return np.random.default_rng(int(random_state))


def _split_counts(n_samples: int, weights: np.ndarray) -> np.ndarray:
    """Exact proportional split of ``n_samples`` by the largest-remainder rule.

    Each component gets ``floor(n_samples * weight)`` points; the points left over go, one each,
    to the components with the largest fractional parts (ties to the lower index).

    Returns
    -------
    counts : ndarray of int64, shape (n_components,)
    """
    exact = n_samples * weights
    counts = np.floor(exact).astype(np.int64)
    leftover = n_samples - int(counts.sum())
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[:leftover]] += 1
    return counts


def _random_rotation(rng: np.random.Generator, n_features: int) -> np.ndarray:
    """A uniformly random orthogonal matrix, shape (n_features, n_features)."""
    q, r = np.linalg.qr(rng.standard_normal((n_features, n_features)))
    return q * np.sign(np.diag(r))


def _draw_variances(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.uniform(*_VARIANCE_RANGE, size=shape)


def _draw_covariances(
    rng: np.random.Generator, n_components: int, n_features: int, covariance_type: str
) -> np.ndarray:
    """Component covariances with the requested structure, shape (K, D, D).

    Every eigenvalue lies in ``_VARIANCE_RANGE``; the rotations of ``tied`` and ``full`` are
    uniformly random.
    """
    eye = np.eye(n_features)
    if covariance_type == "spherical":
        return _draw_variances(rng, (n_components,))[:, None, None] * eye
    if covariance_type == "diag":
        return _draw_variances(rng, (n_components, n_features))[:, :, None] * eye
    if covariance_type == "tied_diag":
        shared = np.diag(_draw_variances(rng, (n_features,)))
        return np.repeat(shared[None], n_components, axis=0)
    n_distinct = 1 if covariance_type == "tied" else n_components
    covariances = np.empty((n_distinct, n_features, n_features))
    for k in range(n_distinct):
        rotation = _random_rotation(rng, n_features)
        covariances[k] = (rotation * _draw_variances(rng, (n_features,))) @ rotation.T
        covariances[k] = 0.5 * (covariances[k] + covariances[k].T)
    return (
        np.repeat(covariances, n_components, axis=0) if covariance_type == "tied" else covariances
    )


def _max_component_std(covariances: np.ndarray) -> float:
    """Largest standard deviation along any direction of any component (sqrt of top eigenvalue)."""
    return float(np.sqrt(np.linalg.eigvalsh(covariances).max()))


def _min_pairwise_distance(points: np.ndarray) -> float:
    """Smallest Euclidean distance between two rows of ``points`` (inf for fewer than two)."""
    if points.shape[0] < 2:
        return math.inf
    diffs = points[:, None, :] - points[None, :, :]
    distances = np.sqrt((diffs**2).sum(-1))
    return float(distances[np.triu_indices(points.shape[0], k=1)].min())


def _draw_means(
    rng: np.random.Generator, n_components: int, n_features: int, min_distance: float
) -> np.ndarray:
    """Means whose closest pair is exactly ``min_distance`` apart, shape (K, D).

    A standard normal draw is rescaled about the origin; with one component the mean is 0.
    """
    raw = rng.standard_normal((n_components, n_features))
    if n_components == 1:
        return np.zeros((1, n_features))
    return raw * (min_distance / _min_pairwise_distance(raw))


def _sample_components(
    rng: np.random.Generator, means: np.ndarray, covariances: np.ndarray, counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``counts[k]`` points from component ``k`` and shuffle; shapes (N, D) and (N,)."""
    n_samples, n_features = int(counts.sum()), means.shape[1]
    labels = np.repeat(np.arange(means.shape[0], dtype=np.int64), counts)
    cholesky = np.linalg.cholesky(covariances)
    noise = rng.standard_normal((n_samples, n_features))
    X = means[labels] + np.einsum("nij,nj->ni", cholesky[labels], noise)
    order = rng.permutation(n_samples)
    return X[order], labels[order]


def make_gmm(
    n_samples: int = 1000,
    n_components: int = 3,
    n_features: int = 2,
    covariance_type: str = "full",
    separation: float = 3.0,
    weights: Sequence[float] | np.ndarray | None = None,
    random_state: int | np.random.Generator | None = None,
    return_params: bool = False,
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Sample a synthetic Gaussian mixture with known labels.

    The generative recipe, deterministic given ``random_state``:

    1. Covariances with the structure of ``covariance_type``; every eigenvalue (variance along a
       principal axis) is drawn uniformly from [0.5, 1.5]:

       - ``"spherical"``: ``sigma_k^2 * I``, one scalar variance per component;
       - ``"diag"``: a diagonal matrix per component;
       - ``"tied_diag"``: one diagonal matrix shared by all components;
       - ``"tied"``: one full matrix ``R diag(v) R^T`` (random rotation ``R``) shared by all;
       - ``"full"``: a full matrix ``R_k diag(v_k) R_k^T`` per component.

    2. Means: a standard normal draw of shape (K, D), rescaled about the origin so that the
       closest pair of means is **exactly** ``separation * max_std`` apart (all other pairs are
       farther), where ``max_std`` is the largest standard deviation along any direction of any
       component (the square root of the largest covariance eigenvalue). ``separation=0`` puts
       every mean at the origin; with one component the mean is the origin.
    3. Counts: an exact proportional split of ``n_samples`` by ``weights`` (largest-remainder
       rule: ``floor(n_samples * w_k)`` each, leftovers to the largest fractional parts), not a
       multinomial draw, so the empirical proportions match ``weights`` to within ``1 / n``.
    4. Points: ``x = mean_k + L_k z`` with ``L_k`` the Cholesky factor and ``z`` standard normal,
       then shuffled.

    Parameters
    ----------
    n_samples : int, default=1000
        Number of points N; at least ``n_components``.
    n_components : int, default=3
        Number of mixture components K.
    n_features : int, default=2
        Dimension D.
    covariance_type : {"spherical", "diag", "tied_diag", "tied", "full"}, default="full"
        Structure of the component covariances (see above).
    separation : float, default=3.0
        Minimum distance between two means in units of the largest component standard deviation.
        Must be finite and non-negative. Around 2 components overlap visibly; above 4 they are
        nearly disjoint.
    weights : array-like of shape (n_components,), optional
        Mixing proportions, non-negative and summing to 1. Uniform when None.
    random_state : int, numpy.random.Generator or None, default=None
        Seed or generator; the same integer always gives the same data.
    return_params : bool, default=False
        Also return the true parameters.

    Returns
    -------
    X : ndarray of float64, shape (n_samples, n_features)
        The sampled points, shuffled.
    y : ndarray of int64, shape (n_samples,)
        The component that generated each point.
    params : dict of ndarray
        Only when ``return_params`` is True: ``"weights"`` shape (K,), ``"means"`` shape (K, D)
        and ``"covariances"`` shape (K, D, D) (always full matrices, whatever the structure).

    Raises
    ------
    ValueError
        If an argument is out of range; the message names the argument and how to fix it.

    Examples
    --------
    >>> X, y = make_gmm(n_samples=300, n_components=2, random_state=0)
    >>> X.shape, y.shape
    ((300, 2), (300,))
    """
    n_samples = _check_positive_int(n_samples, "n_samples")
    n_components = _check_positive_int(n_components, "n_components")
    n_features = _check_positive_int(n_features, "n_features")
    if n_samples < n_components:
        raise ValueError(
            f"n_samples={n_samples} is smaller than n_components={n_components}; "
            "ask for at least one sample per component."
        )
    if covariance_type not in COVARIANCE_TYPES:
        raise ValueError(
            f"covariance_type must be one of {COVARIANCE_TYPES}, got {covariance_type!r}."
        )
    if isinstance(separation, bool) or not isinstance(separation, int | float | np.number):
        raise ValueError(f"separation must be a real number, got {separation!r}.")
    if not math.isfinite(separation) or separation < 0:
        raise ValueError(
            f"separation must be finite and >= 0 (0 puts all means at the origin), got {separation}."
        )
    weights = _check_weights(weights, n_components)
    rng = _check_random_state(random_state)

    covariances = _draw_covariances(rng, n_components, n_features, covariance_type)
    means = _draw_means(
        rng, n_components, n_features, float(separation) * _max_component_std(covariances)
    )
    X, y = _sample_components(rng, means, covariances, _split_counts(n_samples, weights))
    if not return_params:
        return X, y
    return X, y, {"weights": weights, "means": means, "covariances": covariances}


#: Range of the eigenvalues of :func:`make_correlated_gmm`'s covariances (log-uniform).
_CORRELATED_EIGENVALUE_RANGE = (0.05, 2.0)


def make_correlated_gmm(
    n_samples: int,
    n_components: int,
    n_features: int,
    *,
    separation: float = 2.0,
    random_state: int | np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Sample a Gaussian mixture with strongly correlated full covariances and known labels.

    The data on which the features tell about each other: each covariance is
    ``R_k diag(v_k) R_k^T`` with a random orthogonal ``R_k`` and eigenvalues ``v_k`` drawn
    log-uniformly in [0.05, 2] (condition numbers up to 40), so that the observed entries of a
    row predict its missing ones (the missing-value tests and ``bench/missing.py``). Unlike
    :func:`make_gmm`, the means are a plain normal draw times ``separation`` (no minimum
    distance) and the labels a uniform draw (not an exact split).

    Draws, in this order from one generator: per component a (D, D) normal matrix (its Q
    factor is ``R_k``) and D eigenvalues; the (K, D) means; the labels; the (N, D) noise.

    Parameters
    ----------
    n_samples, n_components, n_features : int
        N, K and D.
    separation : float, default 2.0
        Scale of the means: ``separation * N(0, I)`` each.
    random_state : int, numpy.random.Generator or None
        Seed, or a generator drawn from in place.

    Returns
    -------
    X : ndarray of float64, shape (n_samples, n_features)
    y : ndarray of int64, shape (n_samples,)
        The component of every row.
    """
    n_samples = _check_positive_int(n_samples, "n_samples")
    n_components = _check_positive_int(n_components, "n_components")
    n_features = _check_positive_int(n_features, "n_features")
    if isinstance(separation, bool) or not isinstance(separation, int | float | np.number) or (
            not math.isfinite(separation) or separation < 0):
        raise ValueError(f"separation must be a finite number >= 0, got {separation!r}.")
    rng = _check_random_state(random_state)
    low, high = np.log(_CORRELATED_EIGENVALUE_RANGE)
    covariances = []
    for _ in range(n_components):
        rotation, _ = np.linalg.qr(rng.normal(size=(n_features, n_features)))
        eigenvalues = np.exp(rng.uniform(low, high, size=n_features))
        covariances.append(rotation @ np.diag(eigenvalues) @ rotation.T)
    means = rng.normal(size=(n_components, n_features)) * separation
    labels = rng.integers(n_components, size=n_samples)
    noise = rng.normal(size=(n_samples, n_features))
    factors = np.linalg.cholesky(np.array(covariances))
    return means[labels] + np.einsum("nij,nj->ni", factors[labels], noise), labels



# --------------------------------------------------------------------------------------------
# Pinwheel (Dilokthanakul et al. 2016, section 4.1)
# --------------------------------------------------------------------------------------------

def _non_negative(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or value < 0:
        raise ValueError(f"{name}={value!r} must be a non-negative number")
    return float(value)


def make_pinwheel(
    n_per_class: int = 400,
    n_classes: int = 5,
    radial_std: float = 0.3,
    tangential_std: float = 0.05,
    rate: float = 0.25,
    random_state: int | np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pinwheel data: ``n_classes`` curved arms in the plane (Dilokthanakul et al. 2016, sec. 4.1).

    Each point starts at ``(1 + radial_std * e1, tangential_std * e2)`` with ``e ~ N(0, I)``,
    and is rotated by the angle ``2 pi c / n_classes + rate * exp(radius)``, where ``c`` is its
    arm and ``radius`` its first coordinate: arms further out are twisted more, which bends
    them into spirals. Points are returned in random order.

    Parameters
    ----------
    n_per_class : int, default 400
        Points per arm.
    n_classes : int, default 5
        Number of arms.
    radial_std, tangential_std : float
        Spread along and across an arm before twisting.
    rate : float, default 0.25
        Strength of the twist.
    random_state : int, numpy.random.Generator or None

    Returns
    -------
    X : ndarray of float64, shape (n_per_class * n_classes, 2)
    y : ndarray of int64, shape (n_per_class * n_classes,)
        The arm of every point, in {0, ..., n_classes - 1}.
    """
    n_per_class = _check_positive_int(n_per_class, "n_per_class")
    n_classes = _check_positive_int(n_classes, "n_classes")
    radial_std = _non_negative(radial_std, "radial_std")
    tangential_std = _non_negative(tangential_std, "tangential_std")
    rate = _non_negative(rate, "rate")
    rng = np.random.default_rng(random_state)
    labels = np.repeat(np.arange(n_classes), n_per_class)
    offsets = rng.standard_normal((labels.size, 2)) * np.array([radial_std, tangential_std])
    radius = 1.0 + offsets[:, 0]
    points = np.column_stack([radius, offsets[:, 1]])
    angles = 2.0 * np.pi * labels / n_classes + rate * np.exp(radius)
    cos, sin = np.cos(angles), np.sin(angles)
    rotated = np.column_stack(
        [cos * points[:, 0] - sin * points[:, 1], sin * points[:, 0] + cos * points[:, 1]]
    )
    order = rng.permutation(labels.size)
    return rotated[order], labels[order].astype(np.int64)

