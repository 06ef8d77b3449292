"""Names shared by the command's modules: program, exit codes, file names, errors, data, --out."""

from __future__ import annotations

import argparse
import fnmatch
import sys
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
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
#: SVI checkpoints (one per rank under --distributed): kept when a run fails, for --resume.
CHECKPOINT_PATTERN = "checkpoint*.safetensors"
#: Summary written by ``fit`` next to the model; ``diagnose`` reads its ``scale``.
SUMMARY_FILE = "summary.json"

#: Loader keyword arguments as the command line spells them, for error messages.
_OPTION_NAMES = (
    ("label_column=", "--label-column "),
    ("labels file", "--labels file"),
)


class CLIError(Exception):
    """Bad input found after parsing; printed as one line, exit code 2."""


def note(message: str) -> None:
    """Print ``ppl-mixtures: note: message`` on stderr."""
    print(f"{PROG}: note: {message}", file=sys.stderr)


def load_data(args: argparse.Namespace,
              allow_missing: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """``--data`` with ``--label-column`` (CSV) or ``--labels`` (NPY): ``(X, labels or None)``.

    The data come as loaded (built-in data sets raw); :func:`scale_data` applies ``--scale``.
    ``allow_missing`` (``--missing marginalize``): a file's missing cells become NaN.
    Errors name the command-line options (``--label-column``, ``--labels``), not the
    loaders' keyword arguments.
    """
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
    if allow_missing and suffix in (".csv", ".npy"):
        options["allow_missing"] = True
    try:
        return load_dataset(args.data, **options)
    except ValueError as error:
        message = str(error)
        for keyword, flag in _OPTION_NAMES:
            message = message.replace(keyword, flag)
        raise CLIError(message) from None


def scale_data(X: np.ndarray, scale: str) -> np.ndarray:
    """``X`` after ``--scale`` (:func:`ppl_mixtures.datasets.scale_features`)."""
    from ppl_mixtures.datasets import scale_features

    return scale_features(X, scale)


def _snapshot(path: Path) -> dict[str, tuple[int, int]]:
    """``{name: (inode, mtime_ns)}`` of the files directly in ``path`` (empty if none)."""
    if not path.is_dir():
        return {}
    return {entry.name: (entry.stat().st_ino, entry.stat().st_mtime_ns)
            for entry in path.iterdir() if entry.is_file()}


class OutputFolder:
    """The ``--out`` folder of one run.

    - :meth:`check` (before any work) refuses a folder that is not empty, unless the run
      was given ``--overwrite`` (or ``--resume``, which continues from what is there).
    - :meth:`create` makes it when the run first needs it (not before).
    - Used as a context manager, a run that fails removes what it created (the folder
      itself when it made it), but keeps SVI checkpoints (:data:`CHECKPOINT_PATTERN`), from
      which ``--resume`` continues; a run that succeeds removes the files of ``outputs``
      left by an earlier run and not written again by this one (e.g. an old ``samples.png``
      after ``--overwrite``).

    Parameters
    ----------
    path : Path
    overwrite, resume : bool
        ``--overwrite``, ``--resume``.
    outputs : sequence of str
        File names (``fnmatch`` patterns) that the command writes.
    cleanup : bool
        Whether this process may delete anything (False on ranks > 0 of a distributed run,
        whose rank 0 owns the folder).
    """

    def __init__(self, path: Path, *, overwrite: bool, resume: bool = False,
                 outputs: Sequence[str] = (), cleanup: bool = True) -> None:
        self.path = Path(path)
        self.overwrite = overwrite
        self.resume = resume
        self.outputs = tuple(outputs)
        self.cleanup = cleanup
        self._before: dict[str, tuple[int, int]] | None = None  # set by check()
        self._created: list[Path] = []

    def check(self, resume_hint: str | None = None) -> None:
        """Refuse a non-empty folder without ``--overwrite``/``--resume`` (exit code 2).

        ``resume_hint``: how ``--resume`` would apply, added to the message when it does.
        """
        path = self.path
        if path.exists() and not path.is_dir():
            raise CLIError(f"--out {path} is a file, not a folder; choose another --out")
        entries = sorted(entry.name for entry in path.iterdir()) if path.is_dir() else []
        if entries and not (self.overwrite or self.resume):
            shown = ", ".join(entries[:4]) + (f" and {len(entries) - 4} more"
                                              if len(entries) > 4 else "")
            resume = f", --resume to {resume_hint}" if resume_hint else ""
            raise CLIError(f"--out {path} is not empty ({shown}); pass --overwrite to replace "
                           f"its files{resume}, or choose another --out")
        self._before = _snapshot(path)

    def create(self) -> Path:
        """Make the folder (and missing parents), remembering what this run made."""
        missing = []
        for folder in (self.path, *self.path.parents):
            if folder.exists():
                break
            missing.append(folder)
        self.path.mkdir(parents=True, exist_ok=True)
        self._created.extend(folder for folder in missing if folder not in self._created)
        return self.path

    def _is_output(self, name: str) -> bool:
        return any(fnmatch.fnmatch(name, pattern) for pattern in self.outputs)

    def _discard(self) -> None:
        """After a failure: remove the files this run created, but not checkpoints."""
        assert self._before is not None
        kept = []
        for name, stamp in _snapshot(self.path).items():
            if self._before.get(name) == stamp:
                continue  # there before the run, untouched
            if fnmatch.fnmatch(name, CHECKPOINT_PATTERN):
                kept.append(name)
            elif name not in self._before:
                (self.path / name).unlink(missing_ok=True)
        for folder in self._created:  # the deepest first
            try:
                folder.rmdir()
            except OSError:
                break  # not empty: a kept checkpoint, or something else's files
        if kept:
            note(f"kept {', '.join(str(self.path / name) for name in sorted(kept))}: continue "
                 "with --resume, or start again with --overwrite")

    def _drop_stale(self) -> None:
        """After a success: remove earlier runs' outputs that this run did not rewrite."""
        assert self._before is not None
        now = _snapshot(self.path)
        for name, stamp in self._before.items():
            if now.get(name) == stamp and self._is_output(name) and not (
                self.resume and fnmatch.fnmatch(name, CHECKPOINT_PATTERN)
            ):
                (self.path / name).unlink(missing_ok=True)

    def __enter__(self) -> OutputFolder:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if not self.cleanup or self._before is None:
            return  # not this process's to clean, or never checked: touch nothing
        if kind is None:
            if self.overwrite and self.path.is_dir():
                self._drop_stale()
        else:
            self._discard()
