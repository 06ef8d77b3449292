"""Feature scaling, applied only when asked: ``none``, ``standard`` or ``minmax``.

:func:`scale_features` is what ``load_dataset(..., scale=...)``, the bundled loaders'
``scale=`` argument and the command line's ``--scale`` apply. The statistics come from the
data given (each column on its own); a constant column becomes 0 under either scaling.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["SCALES", "describe_scale", "scale_features"]

#: The accepted ``scale`` values (``None`` means ``"none"``).
SCALES = ("none", "standard", "minmax")

_DESCRIPTIONS = {
    "none": "none (the features as loaded)",
    "standard": "standard (zero mean, unit variance per feature)",
    "minmax": "minmax ([0, 1] per feature)",
}


def _check_scale(scale: Any) -> str:
    if scale is None:
        return "none"
    if not isinstance(scale, str) or scale not in SCALES:
        raise ValueError(f"scale={scale!r} is not one of {SCALES}")
    return scale


def describe_scale(scale: str | None) -> str:
    """One phrase saying what ``scale`` does, e.g. for a printed summary."""
    return _DESCRIPTIONS[_check_scale(scale)]


def scale_features(X: Any, scale: str | None) -> np.ndarray:
    """Scale every column of ``X``.

    Parameters
    ----------
    X : array-like, shape (n_samples, n_features)
    scale : {"none", "standard", "minmax"} or None
        ``"none"`` (or None): ``X`` as float64, unchanged (not copied when it already is
        a float64 array). ``"standard"``: zero mean and unit
        variance per column (population standard deviation). ``"minmax"``: each column
        mapped onto [0, 1]. Constant columns become 0.

    Returns
    -------
    ndarray of float64, shape (n_samples, n_features)
        ``X`` itself is never modified.
    """
    scale = _check_scale(scale)
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X has shape {X.shape}; expected (n_samples, n_features)")
    if scale == "none" or X.shape[0] == 0:
        return X
    # statistics of the observed entries: NaN (a missing value) stays NaN
    missing = bool(np.isnan(X).any())
    if scale == "standard":
        center, spread = ((np.nanmean(X, axis=0), np.nanstd(X, axis=0)) if missing
                          else (X.mean(axis=0), X.std(axis=0)))
    else:
        center = np.nanmin(X, axis=0) if missing else X.min(axis=0)
        spread = (np.nanmax(X, axis=0) if missing else X.max(axis=0)) - center
    return (X - center) / np.where(spread > 0, spread, 1.0)
