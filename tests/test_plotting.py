"""Figures of ppl_mixtures.plotting: created headless (conftest sets MPLBACKEND=Agg), with
the right number of ellipses and lines."""

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.patches import Ellipse

from ppl_mixtures.plotting import (
    plot_clusters,
    plot_history,
    plot_responsibilities,
    principal_plane,
)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _mixture(n_features: int, n_components: int = 3, n_per: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=5.0, size=(n_components, n_features))
    labels = np.repeat(np.arange(n_components), n_per)
    X = means[labels] + rng.normal(size=(labels.size, n_features))
    covariances = np.stack([np.eye(n_features) * (k + 1) for k in range(n_components)])
    return X, labels, means, covariances


def _ellipses(ax):
    return [patch for patch in ax.patches if isinstance(patch, Ellipse)]


@pytest.mark.parametrize("n_features", [1, 2, 5])
def test_plot_clusters_draws_one_ellipse_per_component(n_features):
    X, labels, means, covariances = _mixture(n_features)
    fig = plot_clusters(X, labels, means=means, covariances=covariances, title="t")
    (ax,) = fig.axes
    assert len(_ellipses(ax)) == 3
    assert len(ax.collections) == 1  # one scatter
    assert ax.collections[0].get_offsets().shape == (X.shape[0], 2)
    assert ax.get_title() == "t"
    fig.canvas.draw()  # renders without error


def test_plot_clusters_without_components_has_no_ellipses():
    X, labels, _, _ = _mixture(3)
    fig = plot_clusters(X, labels)
    assert _ellipses(fig.axes[0]) == []


def test_one_feature_lies_on_a_flat_strip():
    X, labels, means, covariances = _mixture(1)
    fig = plot_clusters(X[:, 0], labels, means=means, covariances=covariances)
    ax = fig.axes[0]
    np.testing.assert_array_equal(ax.collections[0].get_offsets()[:, 1], 0.0)
    for k, ellipse in enumerate(_ellipses(ax)):
        assert ellipse.height == 0.0
        assert ellipse.width == pytest.approx(4.0 * np.sqrt(covariances[k, 0, 0]))


def test_ellipse_is_the_projected_two_sigma_ellipse():
    X, labels, means, _ = _mixture(4, n_components=1)
    covariance = np.diag([9.0, 4.0, 1.0, 0.25])
    fig = plot_clusters(X, labels, means=means, covariances=covariance[None])
    (ellipse,) = _ellipses(fig.axes[0])
    center, projection = principal_plane(X)
    projected = projection.T @ covariance @ projection
    variances = np.linalg.eigvalsh(projected)[::-1]
    assert (ellipse.width, ellipse.height) == pytest.approx(4.0 * np.sqrt(variances))
    assert ellipse.center == pytest.approx((means[0] - center) @ projection)


def test_principal_plane_is_orthonormal_and_spans_the_largest_variance():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 5)) * np.array([10.0, 0.1, 5.0, 0.1, 0.1])
    _, projection = principal_plane(X)
    np.testing.assert_allclose(projection.T @ projection, np.eye(2), atol=1e-12)
    assert set(np.argmax(np.abs(projection), axis=0)) == {0, 2}


def test_plot_clusters_accepts_tensors_string_labels_and_a_tied_covariance():
    X, labels, means, covariances = _mixture(2)
    names = np.array(["a", "b", "c"])[labels]
    fig = plot_clusters(
        torch.as_tensor(X), names, means=torch.as_tensor(means), covariances=covariances[0]
    )
    assert len(_ellipses(fig.axes[0])) == 3


def test_plot_clusters_draws_into_given_axes():
    X, labels, means, covariances = _mixture(2)
    fig, (left, right) = plt.subplots(1, 2)
    assert plot_clusters(X, labels, means=means, covariances=covariances, ax=right) is fig
    assert len(_ellipses(right)) == 3 and _ellipses(left) == []


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"labels": np.zeros(5)}, "labels has shape"),
        ({"means": np.zeros((3, 4))}, "means has shape"),
        ({"means": np.zeros((3, 2)), "covariances": np.zeros((2, 2, 2))}, "covariances"),
        ({"covariances": np.zeros((3, 2, 2))}, "without means"),
    ],
)
def test_plot_clusters_rejects_mismatched_shapes(kwargs, match):
    X, labels, _, _ = _mixture(2)
    kwargs = {"labels": labels, **kwargs}
    with pytest.raises(ValueError, match=match):
        plot_clusters(X, **kwargs)


def test_plot_history_has_one_line():
    history = [-3.0, -2.5, -2.2, -2.1]
    fig = plot_history(history, ylabel="mean log-likelihood", xlabel="step")
    (ax,) = fig.axes
    assert len(ax.lines) == 1
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), history)
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), [1, 2, 3, 4])
    assert ax.get_ylabel() == "mean log-likelihood" and ax.get_xlabel() == "step"


def test_plot_history_rejects_empty():
    with pytest.raises(ValueError, match="non-empty"):
        plot_history([], ylabel="loss")


def test_plot_responsibilities_says_when_it_shows_a_subset():
    """Issue: responsibilities.png silently showed 500 of 1,500 rows."""
    rng = np.random.default_rng(0)
    values = rng.dirichlet(np.ones(3), size=1500)
    (ax, _) = plot_responsibilities(values).axes  # the heatmap and its colour bar
    assert ax.get_title() == "responsibilities (500 of 1,500 rows, evenly spaced)"
    assert ax.images[0].get_array().shape == (500, 3)
    fig = plot_responsibilities(values[:200], title="fit")
    assert fig.axes[0].get_title() == "fit"  # every row shown: nothing to say
    assert fig.axes[0].images[0].get_array().shape == (200, 3)
    with pytest.raises(ValueError, match="max_rows=0"):
        plot_responsibilities(values, max_rows=0)
