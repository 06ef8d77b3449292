"""Scikit-learn's bundled copies of four UCI data sets (no download): wine, digits, iris and
breast cancer.

Every loader takes ``scale`` (:func:`~ppl_mixtures.datasets.scaling.scale_features`:
``"none"``, ``"standard"`` or ``"minmax"``). ``load_iris`` and ``load_breast_cancer`` return
the data as scikit-learn does unless asked. ``load_wine`` and ``load_digits`` keep their
earlier defaults for existing callers (wine standardised, digits divided by 16): pass
``scale="none"`` for the raw data. :func:`~ppl_mixtures.datasets.load_dataset` and the
command line's ``--data`` give every built-in raw unless ``scale`` / ``--scale`` asks.
"""

from __future__ import annotations

import numpy as np

from ppl_mixtures.datasets.scaling import scale_features

__all__ = ["load_breast_cancer", "load_digits", "load_iris", "load_wine"]


def _standardize(X: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per column (population std); constant columns become 0."""
    return scale_features(X, "standard")


def _sklearn(name: str) -> tuple[np.ndarray, np.ndarray]:
    import sklearn.datasets

    X, y = getattr(sklearn.datasets, f"load_{name}")(return_X_y=True)
    return np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.int64)


def load_wine(standardize: bool = True, *,
              scale: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The UCI wine recognition data: 178 wines, 13 chemical measurements, 3 cultivars.

    Wraps :func:`sklearn.datasets.load_wine` (bundled with scikit-learn, no download).

    Parameters
    ----------
    standardize : bool, default=True
        Centre every column and divide it by its population standard deviation (the raw
        features range from about 0.1 (hue) to about 1700 (proline)). Ignored when ``scale``
        is given.
    scale : {"none", "standard", "minmax"}, optional
        Replaces ``standardize``: ``"none"`` gives the data as scikit-learn returns them.

    Returns
    -------
    X : ndarray of float64, shape (178, 13)
    y : ndarray of int64, shape (178,)
        Cultivar, in {0, 1, 2}.
    """
    X, y = _sklearn("wine")
    if scale is None:
        scale = "standard" if standardize else "none"
    return scale_features(X, scale), y


def load_digits(standardize: bool = False, scale01: bool = True, *,
                scale: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The UCI handwritten digits: 1797 images of 8x8 pixels with 17 grey levels (0..16).

    Wraps :func:`sklearn.datasets.load_digits` (bundled with scikit-learn, no download).
    Images are flattened row by row into 64 features.

    Parameters
    ----------
    standardize : bool, default=False
        Centre every pixel column and divide it by its population standard deviation; the
        always-blank border pixels (standard deviation 0) become 0. Standardising is invariant to
        rescaling, so ``scale01`` makes no difference when this is True. Ignored when
        ``scale`` is given.
    scale01 : bool, default=True
        Divide the grey levels by 16 so that pixels lie in [0, 1]. When False (and not
        standardised), pixels keep their raw values 0..16, as float64. Ignored when ``scale``
        is given.
    scale : {"none", "standard", "minmax"}, optional
        Replaces ``standardize`` and ``scale01``: ``"none"`` gives the raw grey levels 0..16
        as scikit-learn returns them; ``"minmax"`` maps each pixel column onto [0, 1] by its
        own range (not the same as dividing by 16).

    Returns
    -------
    X : ndarray of float64, shape (1797, 64)
    y : ndarray of int64, shape (1797,)
        The digit, in {0, ..., 9}.
    """
    X, y = _sklearn("digits")
    if scale is not None:
        return scale_features(X, scale), y
    if scale01:
        X = X / 16.0
    if standardize:
        X = _standardize(X)
    return X, y


def load_iris(*, scale: str | None = "none") -> tuple[np.ndarray, np.ndarray]:
    """Fisher's iris data: 150 flowers, 4 measurements in cm, 3 species.

    Wraps :func:`sklearn.datasets.load_iris` (bundled with scikit-learn, no download).

    Parameters
    ----------
    scale : {"none", "standard", "minmax"}, default "none"
        ``"none"``: the measurements as scikit-learn returns them.

    Returns
    -------
    X : ndarray of float64, shape (150, 4)
    y : ndarray of int64, shape (150,)
        Species, in {0, 1, 2}.
    """
    X, y = _sklearn("iris")
    return scale_features(X, scale), y


def load_breast_cancer(*, scale: str | None = "none") -> tuple[np.ndarray, np.ndarray]:
    """The Wisconsin diagnostic breast cancer data: 569 tumours, 30 features, 2 classes.

    Wraps :func:`sklearn.datasets.load_breast_cancer` (bundled with scikit-learn, no
    download). The raw features range from about 0.001 to about 4000 (areas).

    Parameters
    ----------
    scale : {"none", "standard", "minmax"}, default "none"
        ``"none"``: the features as scikit-learn returns them.

    Returns
    -------
    X : ndarray of float64, shape (569, 30)
    y : ndarray of int64, shape (569,)
        0 malignant, 1 benign.
    """
    X, y = _sklearn("breast_cancer")
    return scale_features(X, scale), y
