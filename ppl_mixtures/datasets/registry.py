"""The data sets known by name (the command line's ``--data``) and :func:`load_dataset`."""

from __future__ import annotations

from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from ppl_mixtures.datasets.bundled import load_breast_cancer, load_digits, load_iris, load_wine
from ppl_mixtures.datasets.dgmm import make_dgmm
from ppl_mixtures.datasets.files import load_csv, load_npy
from ppl_mixtures.datasets.scaling import scale_features
from ppl_mixtures.datasets.synthetic import make_gmm, make_pinwheel

__all__ = ["BUILTIN_DATASETS", "load_dataset"]

#: Names accepted by :func:`load_dataset` (besides paths to ``.csv`` / ``.npy`` files).
BUILTIN_DATASETS = ("gmm", "synthetic", "wine", "digits", "iris", "breast_cancer", "dgmm",
                    "pinwheel")

#: Defaults used when ``load_dataset`` builds the synthetic mixture.
_SYNTHETIC_DEFAULTS: dict[str, Any] = {
    "n_samples": 1500,
    "n_components": 3,
    "n_features": 2,
    "random_state": 0,
}


def load_dataset(
    name_or_path: str | PathLike, *, scale: str | None = "none", **kwargs: Any
) -> tuple[np.ndarray, np.ndarray | None]:
    """Load a data set by name or from a file, raw unless ``scale`` asks for preprocessing.

    Parameters
    ----------
    name_or_path : str or path-like
        One of ``BUILTIN_DATASETS`` (case-insensitive):

        - ``"gmm"`` or ``"synthetic"``: :func:`make_gmm` with ``n_samples=1500``,
          ``n_components=3``, ``n_features=2``, ``random_state=0`` unless overridden;
        - ``"wine"``, ``"digits"``, ``"iris"``, ``"breast_cancer"``: scikit-learn's bundled
          copies, raw as scikit-learn returns them (:func:`load_wine` with
          ``standardize=False``, :func:`load_digits` with ``scale01=False``: grey levels
          0..16, :func:`load_iris`, :func:`load_breast_cancer`);
        - ``"dgmm"``: :func:`make_dgmm` (the setting of Selosse et al. 2020, section 3.1:
          4000 rows, 17 features, ``random_state=0`` unless overridden), raw (the values
          reach the tens of thousands; the paper's experiment standardises:
          ``scale="standard"``), labelled by path;
        - ``"pinwheel"``: :func:`make_pinwheel` (5 arms of 400 points, as in Dilokthanakul
          et al. 2016, section 4.1; ``random_state=0`` unless overridden), labelled by arm;

        or a path to a ``.csv`` file (:func:`load_csv`) or a ``.npy`` file (:func:`load_npy`).
    scale : {"none", "standard", "minmax"} or None, default "none"
        Preprocessing of the features after loading
        (:func:`~ppl_mixtures.datasets.scaling.scale_features`); None is ``"none"``.
    **kwargs
        Passed to the function chosen.

    Returns
    -------
    X : ndarray of float64, shape (n_samples, n_features)
    y : ndarray of shape (n_samples,) or None
        Labels when the source has them.

    Raises
    ------
    ValueError
        If the name is unknown and is not a path to an existing ``.csv`` / ``.npy`` file.
    FileNotFoundError
        If a ``.csv`` / ``.npy`` path does not exist.
    """
    X, y = _load(name_or_path, kwargs)
    return scale_features(X, scale), y


def _load(name_or_path: str | PathLike,
          kwargs: dict[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
    key = str(name_or_path).strip().lower() if isinstance(name_or_path, str) else None
    if key in ("gmm", "synthetic"):
        if kwargs.get("return_params"):
            raise ValueError(
                "load_dataset returns (X, y) only; call make_gmm(..., return_params=True) for "
                "the true parameters."
            )
        return make_gmm(**{**_SYNTHETIC_DEFAULTS, **kwargs})
    if key == "wine":
        return load_wine(**{"standardize": False, **kwargs})
    if key == "digits":
        return load_digits(**{"scale01": False, **kwargs})
    if key == "iris":
        return load_iris(**kwargs)
    if key == "breast_cancer":
        return load_breast_cancer(**kwargs)
    if key == "dgmm":
        X, _, paths, _ = make_dgmm(**{"random_state": 0, **kwargs})
        return X, paths
    if key == "pinwheel":
        return make_pinwheel(**{"random_state": 0, **kwargs})
    suffix = Path(name_or_path).suffix.lower()
    if suffix == ".csv":
        return load_csv(name_or_path, **kwargs)
    if suffix == ".npy":
        return load_npy(name_or_path, **kwargs)
    raise ValueError(
        f"Unknown data set {str(name_or_path)!r}: expected one of {BUILTIN_DATASETS} or the "
        "path of an existing .csv or .npy file."
    )
