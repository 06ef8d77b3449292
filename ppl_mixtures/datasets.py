"""Data sets for the model zoo: synthetic Gaussian mixtures, bundled benchmarks and file loaders.

Every loader returns ``(X, y)`` where ``X`` is a float64 array of shape ``(n_samples, n_features)``
and ``y`` is an array of shape ``(n_samples,)`` holding the known labels, or ``None`` when the
source has none. Nothing here needs torch; convert with ``torch.as_tensor(X)`` when needed.

Sources
-------
``make_gmm``
    A synthetic Gaussian mixture with known labels and, on request, its true parameters.
``load_wine``, ``load_digits``
    Scikit-learn's bundled copies of the UCI wine and digits data (no download).
``load_csv``, ``load_npy``
    Numeric files on disk, checked cell by cell with errors that say where the problem is.
``load_dataset``
    One entry point that dispatches on a name from ``BUILTIN_DATASETS`` or on a file suffix.
"""

from __future__ import annotations

import csv
import gzip
import math
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = [
    "make_dgmm",
    "load_mnist_idx",
    "make_pinwheel",
    "read_idx",
    "BUILTIN_DATASETS",
    "COVARIANCE_TYPES",
    "load_csv",
    "load_dataset",
    "load_digits",
    "load_npy",
    "load_wine",
    "make_gmm",
]

#: Covariance structures, from the most to the least constrained.
COVARIANCE_TYPES = ("spherical", "diag", "tied_diag", "tied", "full")

#: Names accepted by :func:`load_dataset` (besides paths to ``.csv`` / ``.npy`` files).
BUILTIN_DATASETS = ("gmm", "synthetic", "wine", "digits", "dgmm", "pinwheel")

#: Range of the variances drawn for synthetic components (eigenvalues of each covariance).
_VARIANCE_RANGE = (0.5, 1.5)

#: Defaults used when ``load_dataset`` builds the synthetic mixture.
_SYNTHETIC_DEFAULTS: dict[str, Any] = {
    "n_samples": 1500,
    "n_components": 3,
    "n_features": 2,
    "random_state": 0,
}

PathType = str | PathLike


# --------------------------------------------------------------------------------------------
# Synthetic Gaussian mixture
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Bundled benchmarks
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def _existing_file(path: PathType) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No such file: '{path}'.")
    if not path.is_file():
        raise ValueError(f"'{path}' is not a regular file (a directory?); pass a file path.")
    return path


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _check_finite(
    X: np.ndarray,
    source: str,
    row_names: Sequence[str] | None = None,
    column_numbers: Sequence[int] | None = None,
) -> None:
    """Raise if ``X`` (N, D) holds NaN or inf, saying how many and where the first one is.

    ``row_names[i]`` and ``column_numbers[j]`` say where row ``i`` and column ``j`` of ``X``
    come from in the source (default: ``"row i"`` and ``j``).
    """
    bad = ~np.isfinite(X)
    if not bad.any():
        return
    row, column = (int(i) for i in np.argwhere(bad)[0])
    where_row = f"row {row}" if row_names is None else row_names[row]
    where_column = column if column_numbers is None else column_numbers[column]
    raise ValueError(
        f"{source} contains {int(bad.sum())} NaN or infinite value(s); the first is "
        f"{float(X[row, column])!r} at {where_row}, column {where_column}. "
        "Clean the data or impute the missing values (e.g. sklearn.impute.SimpleImputer) first."
    )


def _read_csv_rows(path: Path, delimiter: str) -> list[tuple[int, list[str]]]:
    """Non-blank rows of a CSV file as ``(line_number, stripped cells)``, 1-based line numbers."""
    rows = []
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        try:
            for cells in reader:
                cells = [cell.strip() for cell in cells]
                if any(cells):
                    rows.append((reader.line_num, cells))
        except (csv.Error, UnicodeDecodeError) as error:
            raise ValueError(f"'{path}' could not be parsed as CSV text: {error}.") from error
    if not rows:
        raise ValueError(f"'{path}' is empty: it has no data rows.")
    return rows


def _has_header(first_row: list[str], label_index: int | None) -> bool:
    """A first row is a header when a feature cell (not the label cell) is not a number."""
    n_columns = len(first_row)
    label_index = None if label_index is None else label_index % n_columns
    return any(not _is_number(cell) for index, cell in enumerate(first_row) if index != label_index)


def _resolve_label_column(
    label_column: str | int, names: list[str] | None, n_columns: int, path: Path
) -> int:
    """Index in [0, n_columns) of the label column given by name or (possibly negative) index."""
    if isinstance(label_column, str):
        if names is None:
            raise ValueError(
                f"label_column={label_column!r} is a name, but '{path}' has no header row; "
                "pass the column's integer index instead."
            )
        if label_column not in names:
            raise ValueError(
                f"label_column={label_column!r} is not a column of '{path}'; "
                f"the columns are {names}."
            )
        return names.index(label_column)
    if not -n_columns <= label_column < n_columns:
        raise ValueError(
            f"label_column={label_column} is out of range for '{path}', which has {n_columns} "
            f"columns; use an index in [{-n_columns}, {n_columns - 1}]."
        )
    return label_column % n_columns


def _parse_labels(cells: list[str]) -> np.ndarray:
    """Labels as int64 when all integral numbers, float64 when numeric, else strings."""
    if all(_is_number(cell) for cell in cells):
        values = np.array([float(cell) for cell in cells])
        if np.all(np.isfinite(values)) and np.all(values == np.round(values)):
            return values.astype(np.int64)
        return values
    return np.array(cells)


def _parse_features(
    rows: list[tuple[int, list[str]]],
    feature_columns: list[int],
    names: list[str] | None,
    path: Path,
) -> np.ndarray:
    """Feature cells as float64 (N, D), with an error naming line, column and value otherwise."""
    X = np.empty((len(rows), len(feature_columns)))
    for i, (line, cells) in enumerate(rows):
        for j, column in enumerate(feature_columns):
            try:
                X[i, j] = float(cells[column])
            except ValueError:
                name = f" ({names[column]!r})" if names is not None else ""
                what = "is empty (a missing value)" if cells[column] == "" else "is not a number"
                raise ValueError(
                    f"'{path}', line {line}, column {column}{name}: the cell "
                    f"{cells[column]!r} {what}. Every feature cell must be numeric; "
                    "pass label_column=... for a column of class names."
                ) from None
    return X


def load_csv(
    path: PathType,
    *,
    label_column: str | int | None = None,
    delimiter: str = ",",
    header: Literal["infer"] | bool = "infer",
) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a numeric CSV file into a feature matrix and optional labels.

    Blank lines are skipped and whitespace around cells is ignored. Every feature cell must
    parse as a float (``nan``/``inf`` parse but are then rejected).

    Parameters
    ----------
    path : str or path-like
        The file; its suffix does not matter.
    label_column : str or int, optional
        Column to split off as labels, by header name or by integer index (negative counts from
        the end). Labels may be numbers or strings (class names).
    delimiter : str, default=","
        One-character field separator (``"\\t"`` for TSV, ``";"``, ...).
    header : "infer" or bool, default="infer"
        Whether the first row holds column names. ``"infer"`` treats it as a header when one of
        its cells outside the label column is not a number.

    Returns
    -------
    X : ndarray of float64, shape (n_samples, n_features)
        All columns except the label column, in file order.
    y : ndarray of shape (n_samples,) or None
        The label column: int64 when every label is an integer, float64 when numeric, strings
        otherwise; None when ``label_column`` is None.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is empty, its rows have different lengths, a feature cell is not numeric
        (the message gives the line, column and value) or holds NaN/inf (the message gives
        how many and where the first one is), or if an argument is invalid.
    """
    if header not in ("infer", True, False):
        raise ValueError(f"header must be 'infer', True or False, got {header!r}.")
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise ValueError(f"delimiter must be a single character, got {delimiter!r}.")
    if label_column is not None and (
        isinstance(label_column, bool) or not isinstance(label_column, str | int | np.integer)
    ):
        raise ValueError(
            f"label_column must be a column name (str), an integer index or None, "
            f"got {label_column!r}."
        )
    path = _existing_file(path)
    rows = _read_csv_rows(path, delimiter)

    first_line, first_row = rows[0]
    n_columns = len(first_row)
    for line, cells in rows[1:]:
        if len(cells) != n_columns:
            raise ValueError(
                f"'{path}' has ragged rows: line {line} has {len(cells)} fields but line "
                f"{first_line} has {n_columns}; every row needs the same number of columns."
            )
    if header == "infer":
        has_header = _has_header(first_row, None if isinstance(label_column, str) else label_column)
    else:
        has_header = bool(header)
    names = first_row if has_header else None
    data_rows = rows[1:] if has_header else rows
    if not data_rows:
        raise ValueError(f"'{path}' has a header row but no data rows.")

    label_index = (
        None
        if label_column is None
        else _resolve_label_column(label_column, names, n_columns, path)
    )
    feature_columns = [index for index in range(n_columns) if index != label_index]
    if not feature_columns:
        raise ValueError(f"'{path}' has no feature columns besides label_column={label_column!r}.")

    X = _parse_features(data_rows, feature_columns, names, path)
    _check_finite(X, f"'{path}'", [f"line {line}" for line, _ in data_rows], feature_columns)
    y = (
        None
        if label_index is None
        else _parse_labels([cells[label_index] for _, cells in data_rows])
    )
    return X, y


def _load_npy_array(path: PathType, what: str) -> np.ndarray:
    path = _existing_file(path)
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise ValueError(
            f"{what} '{path}' could not be read as a .npy array ({error}); save it with "
            "numpy.save and a numeric dtype."
        ) from error
    if isinstance(array, np.lib.npyio.NpzFile):
        keys = list(array.keys())
        array.close()
        raise ValueError(
            f"{what} '{path}' is an .npz archive with arrays {keys}, not a single .npy array; "
            "load it with numpy.load and save the array you want with numpy.save."
        )
    return array


def load_npy(
    path: PathType, *, labels_path: PathType | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a 2-D numeric array saved with :func:`numpy.save`, and optional labels.

    Parameters
    ----------
    path : str or path-like
        A ``.npy`` file holding an array of shape (n_samples, n_features) with a real (or bool)
        dtype; its suffix does not matter. Pickled (object) arrays are refused.
    labels_path : str or path-like, optional
        A ``.npy`` file holding the labels, shape (n_samples,) (or (n_samples, 1)).

    Returns
    -------
    X : ndarray of float64, shape (n_samples, n_features)
    y : ndarray of shape (n_samples,) or None
        The labels as stored, None when ``labels_path`` is None.

    Raises
    ------
    FileNotFoundError
        If a file does not exist.
    ValueError
        If a file is not a readable ``.npy`` array, ``X`` is not 2-D, empty, or non-numeric,
        holds NaN/inf (how many and where the first is), or the labels do not match ``X``.
    """
    array = _load_npy_array(path, "data file")
    if array.ndim != 2:
        hint = (
            "for a single feature use X.reshape(-1, 1)"
            if array.ndim == 1
            else "flatten each sample first, e.g. X.reshape(len(X), -1)"
        )
        raise ValueError(
            f"'{path}' holds an array of shape {array.shape} ({array.ndim}-D); expected a 2-D "
            f"array of shape (n_samples, n_features): {hint}."
        )
    if array.dtype.kind not in "biuf":
        raise ValueError(f"'{path}' holds an array of dtype {array.dtype}; expected real numbers.")
    if array.size == 0:
        raise ValueError(f"'{path}' holds an empty array of shape {array.shape}.")
    X = array.astype(np.float64)
    _check_finite(X, f"'{path}'")
    if labels_path is None:
        return X, None
    labels = _load_npy_array(labels_path, "labels file")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.shape != (X.shape[0],):
        raise ValueError(
            f"labels in '{labels_path}' have shape {labels.shape}, but the data in '{path}' "
            f"have {X.shape[0]} rows; expected shape ({X.shape[0]},)."
        )
    return X, labels


# --------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------


def load_dataset(
    name_or_path: str | PathLike, **kwargs: Any
) -> tuple[np.ndarray, np.ndarray | None]:
    """Load a data set by name or from a file.

    Parameters
    ----------
    name_or_path : str or path-like
        One of ``BUILTIN_DATASETS`` (case-insensitive):

        - ``"gmm"`` or ``"synthetic"``: :func:`make_gmm` with ``n_samples=1500``,
          ``n_components=3``, ``n_features=2``, ``random_state=0`` unless overridden;
        - ``"wine"``: :func:`load_wine`;
        - ``"digits"``: :func:`load_digits`;
        - ``"dgmm"``: :func:`make_dgmm` (the DGMM paper's section 3.1 setting, standardised,
          ``random_state=0`` unless overridden), labelled by path;
        - ``"pinwheel"``: :func:`make_pinwheel` (the GMVAE paper's 5 arms, 400 points each,
          ``random_state=0`` unless overridden), labelled by arm;

        or a path to a ``.csv`` file (:func:`load_csv`) or a ``.npy`` file (:func:`load_npy`).
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
    key = str(name_or_path).strip().lower() if isinstance(name_or_path, str) else None
    if key in ("gmm", "synthetic"):
        if kwargs.get("return_params"):
            raise ValueError(
                "load_dataset returns (X, y) only; call make_gmm(..., return_params=True) for "
                "the true parameters."
            )
        return make_gmm(**{**_SYNTHETIC_DEFAULTS, **kwargs})
    if key == "wine":
        return load_wine(**kwargs)
    if key == "digits":
        return load_digits(**kwargs)
    if key == "dgmm":
        X, _, paths, _ = make_dgmm(**{"random_state": 0, "standardize": True, **kwargs})
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


# ---------------------------------------------------------------------------------------------
# GMVAE data (seed 002, section 4): the pinwheel and MNIST IDX files
# ---------------------------------------------------------------------------------------------

#: IDX element types: the third magic byte -> big-endian NumPy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


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
    """Pinwheel data: ``n_classes`` curved arms in the plane (seed 002, section 4.1).

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


def _read_bytes(path: PathType) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file {path} does not exist")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            return handle.read()
    except (OSError, EOFError) as err:
        raise ValueError(f"{path} could not be read as an IDX file: {err}") from err


def read_idx(path: PathType) -> np.ndarray:
    """Read one IDX file (plain or gzipped) into an array of its native shape.

    The format: two zero bytes, one byte for the element type (see :data:`IDX_DTYPES`), one
    byte for the number of dimensions ``d``, then ``d`` big-endian unsigned 32-bit sizes, then
    the elements in big-endian C order.

    Parameters
    ----------
    path : str or PathLike

    Returns
    -------
    ndarray, shape (n_0, ..., n_{d-1})

    Raises
    ------
    FileNotFoundError
        When ``path`` is not a file.
    ValueError
        When the file is not IDX: bad magic number, unknown type code, truncated header, or a
        data length that does not match the header's sizes.
    """
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(f"{path} is too short to be an IDX file ({len(data)} bytes)")
    if data[0] != 0 or data[1] != 0:
        raise ValueError(
            f"{path} has magic number 0x{data[:4].hex()}; an IDX file starts with two zero bytes"
        )
    type_code, n_dims = data[2], data[3]
    if type_code not in IDX_DTYPES:
        known = ", ".join(f"0x{code:02X}" for code in IDX_DTYPES)
        raise ValueError(f"{path} has IDX type code 0x{type_code:02X}; expected one of {known}")
    header_end = 4 + 4 * n_dims
    if len(data) < header_end:
        raise ValueError(f"{path} is truncated: its header announces {n_dims} dimensions")
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=n_dims, offset=4))
    dtype = IDX_DTYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header_end != expected:
        raise ValueError(
            f"{path} holds {len(data) - header_end} bytes of data; its header {shape} of "
            f"{dtype.name} needs {expected}"
        )
    return np.frombuffer(data, dtype=dtype, offset=header_end).reshape(shape).astype(
        dtype.newbyteorder("=")
    )


def load_mnist_idx(
    images_path: PathType, labels_path: PathType | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """MNIST (or any IDX image set) from files the user already has.

    Parameters
    ----------
    images_path : str or PathLike
        IDX file of images, shape (n_samples, rows, cols) or (n_samples, n_features), e.g.
        ``train-images-idx3-ubyte`` or its ``.gz``.
    labels_path : str or PathLike, optional
        IDX file of labels, shape (n_samples,), e.g. ``train-labels-idx1-ubyte``.

    Returns
    -------
    X : ndarray of float64, shape (n_samples, rows * cols)
        Pixels flattened row by row; unsigned bytes are divided by 255 so that they lie in
        [0, 1], other types are returned as they are (as float64).
    y : ndarray of int64, shape (n_samples,), or None when ``labels_path`` is None

    Raises
    ------
    ValueError
        For a malformed IDX file (see :func:`read_idx`), images with fewer than 2 dimensions,
        labels that are not 1-D, or label and image counts that differ.
    """
    images = read_idx(images_path)
    if images.ndim < 2:
        raise ValueError(
            f"{images_path} holds an array of shape {images.shape}; images need at least 2 "
            "dimensions (n_samples, ...). Is it a labels file?"
        )
    scale = 255.0 if images.dtype == np.uint8 else 1.0
    X = images.reshape(images.shape[0], -1).astype(np.float64) / scale
    if labels_path is None:
        return X, None
    labels = read_idx(labels_path)
    if labels.ndim != 1:
        raise ValueError(f"{labels_path} holds shape {labels.shape}; labels must be 1-D")
    if labels.shape[0] != X.shape[0]:
        raise ValueError(
            f"{images_path} has {X.shape[0]} images but {labels_path} has {labels.shape[0]} "
            "labels"
        )
    return X, labels.astype(np.int64)


# The deep Gaussian mixture simulator (seed 000, section 3.1) lives beside, numpy only.
from ppl_mixtures.datasets_dgmm import make_dgmm  # noqa: E402
