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

__all__ = ["IDX_DTYPES", "load_csv", "load_mnist_idx", "load_npy", "read_idx"]

PathType = str | PathLike


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
        how many and where the first one is), a label is missing (empty, NaN or inf), or if
        an argument is invalid.
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
        holds NaN/inf (how many and where the first is), or the labels do not match ``X``
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
