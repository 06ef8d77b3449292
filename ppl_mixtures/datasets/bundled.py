"""Scikit-learn's bundled copies of two UCI data sets (no download): wine and digits."""

from __future__ import annotations

import numpy as np

__all__ = ["load_digits", "load_wine"]


def _standardize(X: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per column (population std); constant columns become 0."""
    std = X.std(axis=0)
    return (X - X.mean(axis=0)) / np.where(std > 0, std, 1.0)


def load_wine(standardize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The UCI wine recognition data: 178 wines, 13 chemical measurements, 3 cultivars.

    Wraps :func:`sklearn.datasets.load_wine` (bundled with scikit-learn, no download).

    Parameters
    ----------
    standardize : bool, default=True
        Centre every column and divide it by its population standard deviation. Recommended:
        the raw features range from about 0.1 (hue) to about 1700 (proline), so without it a
        Gaussian mixture sees mostly proline.

    Returns
    -------
    X : ndarray of float64, shape (178, 13)
    y : ndarray of int64, shape (178,)
        Cultivar, in {0, 1, 2}.
    """
    from sklearn.datasets import load_wine as _sklearn_load_wine

    X, y = _sklearn_load_wine(return_X_y=True)
    X = np.asarray(X, dtype=np.float64)
    return (_standardize(X) if standardize else X), np.asarray(y, dtype=np.int64)


def load_digits(standardize: bool = False, scale01: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The UCI handwritten digits: 1797 images of 8x8 pixels with 17 grey levels (0..16).

    Wraps :func:`sklearn.datasets.load_digits` (bundled with scikit-learn, no download).
    Images are flattened row by row into 64 features.

    Parameters
    ----------
    standardize : bool, default=False
        Centre every pixel column and divide it by its population standard deviation; the
        always-blank border pixels (standard deviation 0) become 0. Standardising is invariant to
        rescaling, so ``scale01`` makes no difference when this is True.
    scale01 : bool, default=True
        Divide the grey levels by 16 so that pixels lie in [0, 1]. When False (and not
        standardised), pixels keep their raw values 0..16, as float64.

    Returns
    -------
    X : ndarray of float64, shape (1797, 64)
    y : ndarray of int64, shape (1797,)
        The digit, in {0, ..., 9}.
    """
    from sklearn.datasets import load_digits as _sklearn_load_digits

    X, y = _sklearn_load_digits(return_X_y=True)
    X = np.asarray(X, dtype=np.float64)
    if scale01:
        X = X / 16.0
    if standardize:
        X = _standardize(X)
    return X, np.asarray(y, dtype=np.int64)
