"""Data sets for the model zoo: synthetic mixtures, bundled benchmarks and file loaders.

Every loader returns ``(X, y)`` where ``X`` is a float64 array of shape ``(n_samples, n_features)``
and ``y`` is an array of shape ``(n_samples,)`` holding the known labels, or ``None`` when the
source has none (``make_dgmm`` returns more, see its docstring). The data are NumPy arrays;
convert with ``torch.as_tensor(X)`` when needed.

Modules
-------
:mod:`~ppl_mixtures.datasets.synthetic`
    ``make_gmm`` (a Gaussian mixture with known labels and, on request, its true parameters),
    ``make_correlated_gmm`` (strongly correlated full covariances) and ``make_pinwheel``
    (Dilokthanakul et al. 2016, section 4.1).
:mod:`~ppl_mixtures.datasets.dgmm`
    ``make_dgmm``: the deep Gaussian mixture of Selosse et al. (2020, section 3.1), with
    its configuration table ``DGMM_SECTION_3_1``.
:mod:`~ppl_mixtures.datasets.bundled`
    ``load_wine``, ``load_digits``, ``load_iris``, ``load_breast_cancer``: scikit-learn's
    bundled copies of the UCI data (no download), each with a ``scale`` argument.
:mod:`~ppl_mixtures.datasets.missing`
    ``mask_missing``: entries of a complete matrix removed completely at random (NaN).
:mod:`~ppl_mixtures.datasets.scaling`
    ``scale_features`` (``"none"``, ``"standard"``, ``"minmax"``), applied only when asked.
:mod:`~ppl_mixtures.datasets.files`
    ``load_csv``, ``load_npy``, ``read_idx``, ``load_mnist_idx``: numeric files on disk, checked
    cell by cell with errors that say where the problem is.
:mod:`~ppl_mixtures.datasets.registry`
    ``load_dataset``: one entry point that dispatches on a name from ``BUILTIN_DATASETS`` or on
    a file suffix; built-in data come raw unless ``scale`` asks.

``COVARIANCE_TYPES`` is :data:`ppl_mixtures.models.gmm.COVARIANCE_TYPES`, re-exported here.
The works cited are listed in ``docs/references.md``.
"""

from __future__ import annotations

from ppl_mixtures.datasets.bundled import load_breast_cancer, load_digits, load_iris, load_wine
from ppl_mixtures.datasets.dgmm import DGMM_SECTION_3_1, make_dgmm
from ppl_mixtures.datasets.files import IDX_DTYPES as IDX_DTYPES
from ppl_mixtures.datasets.files import PathType as PathType
from ppl_mixtures.datasets.files import load_csv, load_mnist_idx, load_npy, read_idx
from ppl_mixtures.datasets.missing import mask_missing
from ppl_mixtures.datasets.registry import BUILTIN_DATASETS, load_dataset
from ppl_mixtures.datasets.scaling import SCALES, describe_scale, scale_features
from ppl_mixtures.datasets.synthetic import make_correlated_gmm, make_gmm, make_pinwheel
from ppl_mixtures.models.gmm import COVARIANCE_TYPES

__all__ = [
    "BUILTIN_DATASETS",
    "COVARIANCE_TYPES",
    "DGMM_SECTION_3_1",
    "SCALES",
    "describe_scale",
    "load_breast_cancer",
    "load_csv",
    "load_dataset",
    "load_digits",
    "load_iris",
    "load_mnist_idx",
    "load_npy",
    "load_wine",
    "make_correlated_gmm",
    "make_dgmm",
    "make_gmm",
    "make_pinwheel",
    "mask_missing",
    "read_idx",
    "scale_features",
]
