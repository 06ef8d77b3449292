"""Names shared by the command's modules: program, exit codes, file names, errors, data."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

PROG = "ppl-mixtures"
#: Exit code for bad input, as argparse uses for bad arguments.
EXIT_USAGE = 2
#: Exit code when a valid run fails (a diverging fit, an unwritable output folder).
EXIT_FAILURE = 1
#: K when neither --n-components nor labels say it.
DEFAULT_N_COMPONENTS = 3
#: What ``fit`` writes into ``--out``: the fitted estimator and the SVI checkpoint.
MODEL_FILE = "model.safetensors"
CHECKPOINT_FILE = "checkpoint.safetensors"


class CLIError(Exception):
    """Bad input found after parsing; printed as one line, exit code 2."""


def load_data(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray | None]:
    """``--data`` with ``--label-column`` (CSV) or ``--labels`` (NPY): ``(X, labels or None)``."""
    from ppl_mixtures.datasets import load_dataset

    suffix = Path(args.data).suffix.lower()
    options: dict[str, Any] = {}
    if args.label_column is not None:
        if suffix != ".csv":
            raise CLIError("--label-column applies to .csv files only")
        column = args.label_column
        options["label_column"] = int(column) if column.lstrip("-").isdigit() else column
    if args.labels is not None:
        if suffix != ".npy":
            raise CLIError("--labels applies to .npy files only")
        options["labels_path"] = args.labels
    return load_dataset(args.data, **options)
