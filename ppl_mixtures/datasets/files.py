"""Parsers for numeric data files: CSV text, ``.npy`` arrays and IDX (the MNIST format).

Every loader checks what it reads and names the file, line, column or header field at fault.
"""

from __future__ import annotations

import csv
import gzip
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Literal

import numpy as np

__all__ = ["IDX_DTYPES", "MISSING_CELLS", "IdxBatches", "NpyBatches", "RowBatches", "load_csv",
           "load_mnist_idx", "load_npy", "read_idx"]

PathType = str | PathLike

#: CSV feature cells read as a missing value (NaN) with ``allow_missing=True``, compared
#: after stripping whitespace and lower-casing: an empty cell, ``NA``, ``N/A``, ``nan``.
MISSING_CELLS = frozenset({"", "na", "n/a", "nan"})
#: How the refusal of NaN cells says to keep them (the command line's option, and the keyword).
_KEEP_MISSING = ("pass allow_missing=True (on the command line: --missing marginalize) to "
                 "read missing cells as NaN, for a model that integrates them out, or "
                 "impute them first (e.g. sklearn.impute.SimpleImputer)")


def _existing_file(path: PathType) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No such file: '{path}'.")
    if not path.is_file():
        raise ValueError(f"'{path}' is not a regular file (a directory?); pass a file path.")
    return path


def _is_missing(cell: str) -> bool:
    return cell.strip().lower() in MISSING_CELLS


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
    allow_missing: bool = False,
) -> None:
    """Raise if ``X`` (N, D) holds NaN or inf, saying how many and where the first one is.

    ``row_names[i]`` and ``column_numbers[j]`` say where row ``i`` and column ``j`` of ``X``
    come from in the source (default: ``"row i"`` and ``j``). With ``allow_missing`` NaN
    (a missing value) passes and only infinite values are refused.
    """
    bad = np.isinf(X) if allow_missing else ~np.isfinite(X)
    if not bad.any():
        return
    row, column = (int(i) for i in np.argwhere(bad)[0])
    where_row = f"row {row}" if row_names is None else row_names[row]
    where_column = column if column_numbers is None else column_numbers[column]
    value = float(X[row, column])
    if allow_missing:
        raise ValueError(
            f"{source} contains {int(bad.sum())} infinite value(s); the first is {value!r} at "
            f"{where_row}, column {where_column}. Only NaN or empty cells are read as missing "
            "values: replace the infinite ones (by NaN, or by finite values)."
        )
    if np.isinf(X).any():
        fix = "Clean the data (replace infinite values), then impute the missing ones"
    else:
        fix = "These are missing values: " + _KEEP_MISSING
    raise ValueError(
        f"{source} contains {int(bad.sum())} NaN or infinite value(s); the first is "
        f"{value!r} at {where_row}, column {where_column}. {fix}."
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


def _has_header(first_row: list[str], label_index: int | None,
                allow_missing: bool = False) -> bool:
    """A first row is a header when a feature cell (not the label cell) is not a number.

    With ``allow_missing`` a cell of :data:`MISSING_CELLS` counts as a number (a missing one).
    """
    n_columns = len(first_row)
    label_index = None if label_index is None else label_index % n_columns
    return any(not (_is_number(cell) or (allow_missing and _is_missing(cell)))
               for index, cell in enumerate(first_row) if index != label_index)


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


def _check_labels_known(labels: np.ndarray, source: str,
                        row_names: Sequence[str] | None = None) -> None:
    """Raise if numeric labels hold NaN or inf (a missing label), saying how many and where."""
    if labels.dtype.kind != "f":
        return
    bad = ~np.isfinite(labels)
    if not bad.any():
        return
    row = int(np.argmax(bad))
    where = f"row {row}" if row_names is None else row_names[row]
    raise ValueError(
        f"{source} holds {int(bad.sum())} missing (NaN or infinite) label(s) of "
        f"{labels.shape[0]}; the first is {float(labels[row])!r} at {where}. Every sample "
        "needs its known label: drop the unlabelled rows or give no labels."
    )


def _parse_labels(cells: list[str], source: str, row_names: Sequence[str]) -> np.ndarray:
    """Labels as int64 when all integral numbers, float64 when numeric, else strings.

    Empty cells and numeric labels that are NaN or infinite are refused (a missing label).
    """
    empty = [name for name, cell in zip(row_names, cells, strict=True) if not cell.strip()]
    if empty:
        raise ValueError(
            f"{source} holds {len(empty)} empty label cell(s); the first is at {empty[0]}. "
            "Every sample needs its known label: drop the unlabelled rows or give no labels."
        )
    if all(_is_number(cell) for cell in cells):
        values = np.array([float(cell) for cell in cells])
        _check_labels_known(values, source, row_names)
        if np.all(values == np.round(values)):
            return values.astype(np.int64)
        return values
    return np.array(cells)


def _parse_features(
    rows: list[tuple[int, list[str]]],
    feature_columns: list[int],
    names: list[str] | None,
    path: Path,
    allow_missing: bool = False,
) -> np.ndarray:
    """Feature cells as float64 (N, D), with an error naming line, column and value otherwise.

    With ``allow_missing`` the cells of :data:`MISSING_CELLS` become NaN.
    """
    X = np.empty((len(rows), len(feature_columns)))
    for i, (line, cells) in enumerate(rows):
        for j, column in enumerate(feature_columns):
            if allow_missing and _is_missing(cells[column]):
                X[i, j] = np.nan
                continue
            try:
                X[i, j] = float(cells[column])
            except ValueError:
                name = f" ({names[column]!r})" if names is not None else ""
                where = f"'{path}', line {line}, column {column}{name}: the cell {cells[column]!r}"
                if _is_missing(cells[column]):
                    what = "is empty (a missing value)" if cells[column] == "" else (
                        "marks a missing value")
                    raise ValueError(f"{where} {what}; {_KEEP_MISSING}.") from None
                raise ValueError(
                    f"{where} is not a number. Every feature cell must be numeric; "
                    "pass label_column=... for a column of class names."
                ) from None
    return X


def load_csv(
    path: PathType,
    *,
    label_column: str | int | None = None,
    delimiter: str = ",",
    header: Literal["infer"] | bool = "infer",
    allow_missing: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a numeric CSV file into a feature matrix and optional labels.

    Blank lines are skipped and whitespace around cells is ignored. Every feature cell must
    parse as a float (``nan``/``inf`` parse but are then rejected), or, with
    ``allow_missing``, be a missing value.

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
        its cells outside the label column is not a number (nor, with ``allow_missing``, a
        missing value).
    allow_missing : bool, default=False
        Keep missing feature values as NaN: empty cells and ``NA``, ``N/A``, ``nan`` (any
        case; :data:`MISSING_CELLS`), for an estimator with ``missing="marginalize"``.
        Infinite values and missing labels are still refused.

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
        how many and where the first one is, and how to keep missing values), a label is
        missing (empty, NaN or inf), or if an argument is invalid.
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
        has_header = _has_header(first_row, None if isinstance(label_column, str) else label_column,
                                 allow_missing)
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

    X = _parse_features(data_rows, feature_columns, names, path, allow_missing)
    _check_finite(X, f"'{path}'", [f"line {line}" for line, _ in data_rows], feature_columns,
                  allow_missing)
    y = (
        None
        if label_index is None
        else _parse_labels([cells[label_index] for _, cells in data_rows],
                           f"label_column={label_column!r} of '{path}'",
                           [f"line {line}" for line, _ in data_rows])
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
    path: PathType, *, labels_path: PathType | None = None, allow_missing: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a 2-D numeric array saved with :func:`numpy.save`, and optional labels.

    Parameters
    ----------
    path : str or path-like
        A ``.npy`` file holding an array of shape (n_samples, n_features) with a real (or bool)
        dtype; its suffix does not matter. Pickled (object) arrays are refused.
    labels_path : str or path-like, optional
        A ``.npy`` file holding the labels, shape (n_samples,) (or (n_samples, 1)).
    allow_missing : bool, default=False
        Keep NaN entries (missing values, for an estimator with ``missing="marginalize"``);
        infinite values are still refused.

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
        holds NaN/inf (how many and where the first is; NaN passes with ``allow_missing``),
        or the labels do not match ``X``
        or hold NaN/inf (a missing label).
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
    _check_finite(X, f"'{path}'", allow_missing=allow_missing)
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
    _check_labels_known(labels, f"labels file '{labels_path}'")
    return X, labels


# --------------------------------------------------------------------------------------------
# IDX files (MNIST, as used by Dilokthanakul et al. 2016, section 4)
# --------------------------------------------------------------------------------------------

#: IDX element types: the third magic byte -> big-endian NumPy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


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


# --------------------------------------------------------------------------------------------
# Batches read from disk, for fits on data larger than memory (a stream of batches)
# --------------------------------------------------------------------------------------------


class RowBatches:
    """Batches of rows of an on-disk array, read one at a time: a re-iterable stream.

    Each pass (``for batch in reader``) yields float arrays of shape (<= batch_size,
    n_features), in the order of the file, or in a random order (``shuffle``). Only the rows of one batch are in memory; the array
    is a memory map (:class:`NpyBatches`, :class:`IdxBatches` build it from a file). Pass the
    reader to ``fit`` of an estimator that takes streams (e.g. ``GMVAE().fit(reader)``).

    Parameters
    ----------
    array : ndarray or numpy.memmap, shape (n_samples, ...)
        Rows are flattened to ``n_features`` values (images row by row).
    batch_size : int, default 1024
    shuffle : {False, True, "once"}, default False
        ``True``: permute the rows anew at every pass; pass ``p`` (counted from 0 by the
        reader) draws its permutation from ``numpy.random.default_rng([random_state, p])``.
        A fit resumed from a checkpoint reads different passes from the interrupted one,
        so it cannot resume (its first batch is not the checkpoint's). ``"once"``: one
        permutation, from ``default_rng([random_state])``, the same at every pass: the
        batches mix the file's rows (a file sorted by class is not read class by class)
        and a resumed fit equals the uninterrupted one. Each batch's rows are read in
        increasing row order, which keeps the reads of a memory map local.
    random_state : int, default 0
    divide_by : float, default 1.0
        Every value is divided by it (e.g. 255 for 8-bit images).
    scale : {"none", "standard", "minmax"}, default "none"
        What :func:`ppl_mixtures.datasets.scale_features` does to an array in memory, with the
        column statistics taken at construction by reading the array in chunks (two passes
        for ``"standard"``, one for ``"minmax"``), after ``divide_by``.
    dtype : numpy dtype, default float64
        Of the batches.
    name : str, optional
        How errors call the source (the file).

    Attributes
    ----------
    n_samples, n_features : int
    center, spread : ndarray of float64, shape (n_features,)
        The batches are ``(rows / divide_by - center) / spread`` (0 and 1 without ``scale``).
    """

    def __init__(self, array: np.ndarray, batch_size: int = 1024, *, shuffle: bool = False,
                 random_state: int = 0, divide_by: float = 1.0, scale: str = "none",
                 dtype: type = np.float64, name: str = "the array") -> None:
        from ppl_mixtures.datasets.scaling import SCALES

        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or (
                batch_size < 1):
            raise ValueError(f"batch_size={batch_size!r} must be an integer >= 1")
        if array.ndim < 2:
            raise ValueError(
                f"{name} holds an array of shape {array.shape}; expected (n_samples, "
                "n_features) or images (n_samples, rows, cols): for one feature save "
                "X.reshape(-1, 1)")
        if array.dtype.kind not in "biuf":
            raise ValueError(f"{name} holds an array of dtype {array.dtype}; expected real "
                             "numbers")
        if array.shape[0] == 0 or array.size == 0:
            raise ValueError(f"{name} holds an empty array of shape {array.shape}")
        if array.ndim > 2 and not array.flags.c_contiguous:
            raise ValueError(f"{name} holds a {array.ndim}-D array in Fortran order, which "
                             "cannot be read row by row; save it in C order "
                             "(numpy.ascontiguousarray)")
        self.array = array.reshape(array.shape[0], -1) if array.ndim > 2 else array
        if shuffle not in (False, True, "once"):
            raise ValueError(f"shuffle={shuffle!r} is not False, True or 'once'")
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.random_state = random_state
        self.divide_by = float(divide_by)
        self.dtype = dtype
        self.name = name
        self.n_samples, self.n_features = self.array.shape
        self._passes = 0
        if scale not in SCALES:
            raise ValueError(f"scale={scale!r} is not one of {SCALES}")
        self.scale = scale
        self.center, self.spread = self._statistics(scale)

    def _chunks(self, rows: int = 65536):
        for start in range(0, self.n_samples, rows):
            yield np.asarray(self.array[start:start + rows], dtype=np.float64) / self.divide_by

    def _statistics(self, scale: str) -> tuple[np.ndarray, np.ndarray]:
        """Column centre and spread of ``scale`` (the population standard deviation)."""
        zeros, ones = np.zeros(self.n_features), np.ones(self.n_features)
        if scale == "none":
            return zeros, ones
        if scale == "minmax":
            low, high = np.full(self.n_features, np.inf), np.full(self.n_features, -np.inf)
            for chunk in self._chunks():
                low, high = np.minimum(low, chunk.min(0)), np.maximum(high, chunk.max(0))
            center, spread = low, high - low
        else:
            center = sum(chunk.sum(0) for chunk in self._chunks()) / self.n_samples
            spread = np.sqrt(sum(((chunk - center) ** 2).sum(0) for chunk in self._chunks())
                             / self.n_samples)
        if not (np.isfinite(center).all() and np.isfinite(spread).all()):
            raise ValueError(f"{self.name} contains NaN or infinite values; clean the data "
                             "first (a stream is not checked for missing values)")
        return center, np.where(spread > 0, spread, 1.0)

    def head(self, n_rows: int) -> np.ndarray:
        """The first ``n_rows`` rows (all when fewer), as the batches are: shape (<= n_rows, D)."""
        return self._read(slice(0, n_rows))

    def __len__(self) -> int:
        """Batches per pass."""
        return -(-self.n_samples // self.batch_size)

    def __iter__(self):
        n, size = self.n_samples, self.batch_size
        if not self.shuffle:
            for start in range(0, n, size):
                yield self._read(slice(start, start + size))
            return
        key = [self.random_state] if self.shuffle == "once" else [self.random_state,
                                                                   self._passes]
        order = np.random.default_rng(key).permutation(n)
        self._passes += 1
        for start in range(0, n, size):
            yield self._read(np.sort(order[start:start + size]))

    def _read(self, rows: slice | np.ndarray) -> np.ndarray:
        batch = np.asarray(self.array[rows], dtype=np.float64)
        if self.divide_by != 1.0:
            batch /= self.divide_by
        if self.scale != "none":
            batch = (batch - self.center) / self.spread
        return batch.astype(self.dtype, copy=False)


class NpyBatches(RowBatches):
    """Batches of the rows of a ``.npy`` file, read through a memory map.

    ``numpy.load(path, mmap_mode="r")``: the file is never read whole, so it may be larger
    than memory. Arrays of more than 2 dimensions (images) are flattened row by row.

    Parameters
    ----------
    path : str or PathLike
        A file written by :func:`numpy.save` (not pickled, not ``.npz``).
    batch_size, shuffle, random_state, divide_by, scale, dtype
        As in :class:`RowBatches`.

    Examples
    --------
    >>> from ppl_mixtures import GMVAE  # doctest: +SKIP
    >>> GMVAE(10).fit(NpyBatches("big.npy", batch_size=128, shuffle=True))  # doctest: +SKIP
    """

    def __init__(self, path: PathType, batch_size: int = 1024, **options) -> None:
        path = _existing_file(path)
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as error:
            raise ValueError(f"'{path}' could not be read as a .npy array ({error}); save it "
                             "with numpy.save and a numeric dtype.") from error
        if isinstance(array, np.lib.npyio.NpzFile):
            array.close()
            raise ValueError(f"'{path}' is an .npz archive, not a single .npy array; save "
                             "the array to stream with numpy.save.")
        self.path = path
        super().__init__(array, batch_size, name=f"'{path}'", **options)


class IdxBatches(RowBatches):
    """Batches of the images of an uncompressed IDX file (MNIST), read through a memory map.

    Like :func:`load_mnist_idx`, unsigned bytes are divided by 255 (``divide_by``) and the
    images flattened row by row. A gzipped file cannot be memory-mapped: decompress it first
    (``gunzip train-images-idx3-ubyte.gz``), or load it whole with :func:`load_mnist_idx`.

    Parameters
    ----------
    path : str or PathLike
    batch_size, shuffle, random_state, scale, dtype
        As in :class:`RowBatches`; ``divide_by`` defaults to 255 for unsigned bytes, else 1.
    """

    def __init__(self, path: PathType, batch_size: int = 1024, **options) -> None:
        path = _existing_file(path)
        with open(path, "rb") as file:
            head = file.read(4)
            if head[:2] == b"\x1f\x8b":
                raise ValueError(f"{path} is gzipped; a gzipped file cannot be read in "
                                 "chunks: decompress it first (gunzip), or load it whole "
                                 "with load_mnist_idx")
            if len(head) < 4 or head[0] != 0 or head[1] != 0:
                raise ValueError(f"{path} has magic number 0x{head.hex()}; an IDX file "
                                 "starts with two zero bytes")
            type_code, n_dims = head[2], head[3]
            if type_code not in IDX_DTYPES:
                known = ", ".join(f"0x{code:02X}" for code in IDX_DTYPES)
                raise ValueError(f"{path} has IDX type code 0x{type_code:02X}; expected one "
                                 f"of {known}")
            sizes = file.read(4 * n_dims)
        if len(sizes) < 4 * n_dims:
            raise ValueError(f"{path} is truncated: its header announces {n_dims} dimensions")
        shape = tuple(int(s) for s in np.frombuffer(sizes, dtype=">u4"))
        dtype = IDX_DTYPES[type_code]
        expected = 4 + 4 * n_dims + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if path.stat().st_size != expected:
            raise ValueError(f"{path} holds {path.stat().st_size} bytes; its header {shape} "
                             f"of {dtype.name} needs {expected}")
        array = np.memmap(path, dtype=dtype, mode="r", offset=4 + 4 * n_dims, shape=shape)
        options.setdefault("divide_by", 255.0 if dtype == np.uint8 else 1.0)
        self.path = path
        super().__init__(array, batch_size, name=str(path), **options)
