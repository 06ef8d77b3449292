"""Figures for fitted mixtures: clusters in a principal-component plane and training curves.

Matplotlib is imported inside the functions, so ``import ppl_mixtures.plotting`` stays light;
without a display the non-interactive ``Agg`` backend is selected. The functions return the
:class:`~matplotlib.figure.Figure` and never call ``plt.show``: save it with ``fig.savefig`` or
let a notebook display it, and close it with ``plt.close(fig)`` when done.

``plot_clusters``
    Scatter of the data in the plane of its first two principal components, coloured by
    cluster, with each component's 2-sigma ellipse (its covariance projected onto that plane).
``plot_history``
    The objective per EM iteration or SVI step.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "plot_centroid_grid",
    "plot_clusters",
    "plot_history",
    "plot_responsibilities",
    "principal_plane",
]

#: Ellipses are drawn at this many standard deviations along each principal axis.
ELLIPSE_N_STD = 2.0
#: Colour map for clusters; component k and the points predicted as k share a colour.
_COLORMAP = "tab10"


def _pyplot() -> Any:
    """Import ``matplotlib.pyplot``, choosing ``Agg`` first when there is no display."""
    if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND"):
        headless = sys.platform.startswith("linux") and not (
            os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
        )
        if headless:
            import matplotlib

            matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _as_array(values: Any, name: str) -> np.ndarray:
    """A float64 NumPy array from an array-like or a torch tensor (detached, on the CPU)."""
    if hasattr(values, "detach") and hasattr(values, "cpu"):
        values = values.detach().cpu().numpy()
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be numeric: {error}") from error


def _figure_and_axes(ax: Axes | None) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 5.0))
    return fig, ax


def principal_plane(X: Any) -> tuple[np.ndarray, np.ndarray]:
    """Centre and projection of the plane in which :func:`plot_clusters` draws ``X``.

    Parameters
    ----------
    X : array-like, shape (n_samples, n_features)

    Returns
    -------
    center : ndarray, shape (n_features,)
        The mean of ``X``.
    projection : ndarray, shape (n_features, 2)
        Columns spanning the plane: the first two principal directions (right singular
        vectors of the centred data) when ``n_features > 2``; the identity when
        ``n_features == 2``; ``[[1, 0]]`` when ``n_features == 1``, which puts the data on a
        horizontal strip at height zero. Plane coordinates are ``(X - center) @ projection``.
    """
    X = _as_array(X, "X")
    center = X.mean(axis=0)
    n_features = X.shape[1]
    if n_features <= 2:
        return center, np.eye(n_features, 2)
    _, _, right_vectors = np.linalg.svd(X - center, full_matrices=False)
    return center, right_vectors[:2].T


def _label_colors(labels: np.ndarray) -> np.ndarray:
    """Colour index of every point.

    Non-negative integer labels (component indices) keep their value as colour index, so that
    points predicted as component k share the colour of ellipse k; other labels (strings,
    floats) are numbered in sorted order.
    """
    if np.issubdtype(labels.dtype, np.integer) and labels.min() >= 0:
        return labels.astype(np.int64)
    return np.unique(labels, return_inverse=True)[1].astype(np.int64)


def _check_components(
    means: Any, covariances: Any, n_features: int
) -> tuple[np.ndarray | None, np.ndarray | None]:
    if means is None:
        if covariances is not None:
            raise ValueError("covariances were given without means; pass both")
        return None, None
    means = _as_array(means, "means")
    if means.ndim != 2 or means.shape[1] != n_features:
        raise ValueError(
            f"means has shape {means.shape}; expected (n_components, {n_features}) to match X"
        )
    if covariances is None:
        return means, None
    covariances = _as_array(covariances, "covariances")
    shape = (means.shape[0], n_features, n_features)
    if covariances.shape == shape[1:]:  # one tied matrix
        covariances = np.broadcast_to(covariances, shape)
    if covariances.shape != shape:
        raise ValueError(
            f"covariances has shape {covariances.shape}; expected {shape} (one full matrix "
            "per component; expand other covariance types first, e.g. with "
            "ppl_mixtures.models.gmm.covariance_matrices)"
        )
    return means, covariances


def _ellipse(center: np.ndarray, covariance: np.ndarray, color: Any) -> Any:
    """The ``ELLIPSE_N_STD``-sigma ellipse of a 2-D Gaussian as a matplotlib patch."""
    from matplotlib.patches import Ellipse

    variances, axes = np.linalg.eigh(covariance)  # ascending eigenvalues
    major = axes[:, 1]
    width, height = 2.0 * ELLIPSE_N_STD * np.sqrt(np.clip(variances[::-1], 0.0, None))
    angle = float(np.degrees(np.arctan2(major[1], major[0])))
    return Ellipse(
        xy=tuple(center), width=width, height=height, angle=angle,
        facecolor="none", edgecolor=color, linewidth=2.0,
    )


def plot_clusters(
    X: Any,
    labels: Any,
    *,
    means: Any = None,
    covariances: Any = None,
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """Scatter the data in its first principal-component plane, coloured by cluster.

    With ``means`` (and ``covariances``), each component's mean is marked and its 2-sigma
    ellipse is drawn: with ``W`` the (D, 2) projection of :func:`principal_plane`, component k
    is shown as the Gaussian of mean ``W^T (mu_k - center)`` and covariance ``W^T Sigma_k W``,
    the exact distribution of the projected points of that component.

    Parameters
    ----------
    X : array-like or Tensor, shape (n_samples, n_features)
        The data; a 1-D array is read as one feature. One feature is drawn on a horizontal
        strip (its ellipses are flat), two are drawn as they are, more are projected.
    labels : array-like, shape (n_samples,)
        Cluster of every point (e.g. ``estimator.predict(X)``) or known classes.
    means : array-like, shape (n_components, n_features), optional
    covariances : array-like, shape (n_components, n_features, n_features) or (D, D), optional
        Full covariance matrices (a single (D, D) matrix is shared by all components). Needs
        ``means``.
    ax : matplotlib Axes, optional
        Draw into these axes; by default a new figure is created.
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
        The figure holding the axes (``ax.figure`` when ``ax`` was given). It is not shown.

    Raises
    ------
    ValueError
        If the shapes of ``X``, ``labels``, ``means`` and ``covariances`` do not agree.
    """
    X = _as_array(X, "X")
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"X has shape {X.shape}; expected a non-empty (n_samples, n_features)")
    labels = np.asarray(labels.detach().cpu() if hasattr(labels, "detach") else labels)
    if labels.shape != (X.shape[0],):
        raise ValueError(f"labels has shape {labels.shape}; expected ({X.shape[0]},) to match X")
    means, covariances = _check_components(means, covariances, X.shape[1])

    center, projection = principal_plane(X)
    points = (X - center) @ projection
    color_index = _label_colors(labels)
    fig, ax = _figure_and_axes(ax)
    colormap = _pyplot().get_cmap(_COLORMAP)
    ax.scatter(
        points[:, 0], points[:, 1], c=colormap(color_index % colormap.N), s=8, alpha=0.6,
        linewidths=0, zorder=2.5,  # above the ellipses, which are flat lines when D == 1
    )
    if means is not None:
        projected_means = (means - center) @ projection
        for k, mean in enumerate(projected_means):
            color = colormap(k % colormap.N)
            ax.plot(mean[0], mean[1], marker="x", color="black", markersize=9, mew=2, zorder=3)
            if covariances is not None:
                ax.add_patch(_ellipse(mean, projection.T @ covariances[k] @ projection, color))
    n_features = X.shape[1]
    if n_features == 1:
        ax.set_xlabel("x1")
        ax.set_yticks([])
    else:
        axis_name = "x" if n_features == 2 else "PC"
        ax.set_xlabel(f"{axis_name}1")
        ax.set_ylabel(f"{axis_name}2")
    if title is not None:
        ax.set_title(title)
    ax.autoscale_view()
    return fig


def plot_history(
    history: Sequence[float] | np.ndarray,
    *,
    ylabel: str,
    xlabel: str = "iteration",
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """Plot the training objective per EM iteration or SVI step.

    Parameters
    ----------
    history : sequence of float, length n_iter
        E.g. ``estimator.history_``: mean log-likelihood per sample (EM) or loss per sample
        (SVI).
    ylabel : str
        What the values are, e.g. ``"mean log-likelihood per sample"``.
    xlabel : str, default "iteration"
        ``"step"`` suits SVI.
    ax : matplotlib Axes, optional
        Draw into these axes; by default a new figure is created.
    title : str, optional
        Title of the axes; none by default.

    Returns
    -------
    matplotlib.figure.Figure
        The figure, with one line: ``history[i]`` at x = i + 1. It is not shown.

    Raises
    ------
    ValueError
        If ``history`` is not a non-empty 1-D sequence of numbers.
    """
    values = _as_array(history, "history")
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"history has shape {values.shape}; expected a non-empty 1-D sequence")
    fig, ax = _figure_and_axes(ax)
    from matplotlib.ticker import MaxNLocator

    ax.plot(np.arange(1, values.size + 1), values, linewidth=1.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title is not None:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    return fig


def plot_centroid_grid(
    means: Any,
    grid_shape: Sequence[int],
    image_shape: Sequence[int],
    ax: Axes | None = None,
    *,
    cmap: str = "gray",
    title: str | None = None,
) -> Figure:
    """Show component means as images laid out on the components' grid.

    Max-component SGD with annealing (``GaussianMixture(inference="sgd")``) orders the means
    on its grid like a self-organising map; this draws that grid, one tile per component, as in
    Fig. 2 of Gepperth & Pfülb (2021).

    Parameters
    ----------
    means : array-like, shape (n_components, n_features)
        E.g. ``estimator.means_``; component ``k`` is row-major cell ``k`` of the grid.
    grid_shape : (rows, cols) or (n_components,)
        Layout of the components (a 1-D grid is drawn as one row); the product must equal
        ``n_components``.
    image_shape : (height, width) or (height, width, channels)
        Shape of one mean as an image; the product must equal ``n_features``.
    ax : matplotlib Axes, optional
        Draw into these axes; by default a new figure is created.
    cmap : str, default "gray"
        Colour map for single-channel images.
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
        One image of ``rows * height`` by ``cols * width`` pixels, tiles separated by a
        one-pixel gap, every tile scaled to the range of all means. It is not shown.

    Raises
    ------
    ValueError
        If the shapes do not match ``means``.
    """
    means = _as_array(means, "means")
    grid = tuple(int(n) for n in grid_shape)
    image = tuple(int(n) for n in image_shape)
    if means.ndim != 2:
        raise ValueError(f"means has shape {means.shape}; expected (n_components, n_features)")
    if len(grid) not in (1, 2) or int(np.prod(grid)) != means.shape[0]:
        raise ValueError(f"grid_shape={grid} does not hold {means.shape[0]} components; its "
                         "product must equal n_components")
    if len(image) not in (2, 3) or int(np.prod(image)) != means.shape[1]:
        raise ValueError(f"image_shape={image} does not hold {means.shape[1]} features; its "
                         "product must equal n_features")
    rows, cols = grid if len(grid) == 2 else (1, grid[0])
    height, width = image[:2]
    channels = image[2:]
    low, high = float(means.min()), float(means.max())
    tiles = (means - low) / (high - low if high > low else 1.0)
    canvas = np.ones((rows * (height + 1) - 1, cols * (width + 1) - 1, *channels))
    for index, tile in enumerate(tiles.reshape(-1, *image)):
        top, left = (index // cols) * (height + 1), (index % cols) * (width + 1)
        canvas[top:top + height, left:left + width] = tile
    fig, ax = _figure_and_axes(ax)
    ax.imshow(canvas, cmap=cmap if not channels else None, vmin=0.0, vmax=1.0,
              interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(title)
    return fig


def plot_responsibilities(
    responsibilities: Any, *, ax: Axes | None = None, max_rows: int = 500,
    title: str | None = None,
) -> Figure:
    """Heatmap of posterior component probabilities, rows sorted by cluster then confidence.

    Parameters
    ----------
    responsibilities : array-like, shape (n_samples, n_components)
        E.g. ``estimator.predict_proba(X)``; rows sum to 1.
    ax : matplotlib Axes, optional
    max_rows : int, default 500
        At most this many rows, evenly spaced after sorting, so large data stay readable;
        the title then says how many of how many rows it shows.
    title : str, optional
        Default ``"responsibilities"``; the row count is appended when rows are left out.

    Returns
    -------
    matplotlib.figure.Figure
        Samples on the vertical axis, components across; uncertain samples show as rows with
        more than one lit cell.
    """
    values = _as_array(responsibilities, "responsibilities")
    if values.ndim != 2 or values.shape[0] == 0:
        raise ValueError(
            f"responsibilities has shape {values.shape}; expected (n_samples, n_components)")
    if isinstance(max_rows, bool) or not isinstance(max_rows, (int, np.integer)) or max_rows < 1:
        raise ValueError(f"max_rows={max_rows!r} must be an integer >= 1")
    order = np.lexsort((-values.max(1), values.argmax(1)))
    rows = values[order]
    n_rows = rows.shape[0]
    shown = ""
    if n_rows > max_rows:
        rows = rows[np.linspace(0, n_rows - 1, max_rows).astype(int)]
        shown = f" ({max_rows:,} of {n_rows:,} rows, evenly spaced)"
    fig, ax = _figure_and_axes(ax)
    image = ax.imshow(rows, aspect="auto", interpolation="nearest", cmap="viridis", vmin=0,
                      vmax=1)
    fig.colorbar(image, ax=ax, label="posterior probability")
    ax.set_xlabel("component")
    ax.set_ylabel("sample (sorted by cluster)")
    ax.set_title((title or "responsibilities") + shown)
    return fig
