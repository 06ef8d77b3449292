"""Command line interface: ``ppl-mixtures fit MODEL ...``, ``diagnose`` and ``compare-dgmm``.

``ppl-mixtures fit MODEL`` fits one of the model families of :mod:`ppl_mixtures.registry`
(``gmm``, ``mfa``, ``dgmm``, ``gmvae``) to a built-in data set or a ``.csv`` / ``.npy``
file, prints a summary and writes into ``--out``:

``model.safetensors``
    The fitted estimator (its ``save``; read back with
    :func:`ppl_mixtures.estimators.load_estimator`).
``summary.json``
    The numbers of the printed summary.
``clusters.png``, ``history.png``
    :func:`~ppl_mixtures.plotting.plot_clusters` and :func:`~ppl_mixtures.plotting.plot_history`
    (a GMVAE writes ``history.png``, ``latent.png`` and, for square images, ``samples.png``).
``checkpoint.safetensors``
    SVI only: the trainer's checkpoint, from which ``--resume`` continues.

``ppl-mixtures diagnose MODEL_FILE --data ...`` writes the posterior diagnostics of a saved
model (WAIC, LOO and r_hat only where the fit has posterior draws; the report says why
not otherwise); ``ppl-mixtures compare-dgmm`` runs the DGMM paper's experiment
(:mod:`ppl_mixtures.experiments.bumpy_journey`) and writes its report, tables and figures.

Exit codes: 0 on success, 2 for bad input (arguments, data, files), 1 when fitting fails.
Errors are printed as one line, ``ppl-mixtures: error: ...``, without a traceback, and
warnings as ``ppl-mixtures: warning: ...``.

``--out`` is created only when a run has something to write there; a folder that is not
empty is refused unless ``--overwrite`` (or ``--resume``) is given, and a run that fails
removes what it created (but keeps an SVI checkpoint, for ``--resume``). Built-in data are
raw; ``--scale`` preprocesses them (``fit --inference sgd`` standardises by default), and
the summary always says which scaling was applied.

Run ``ppl-mixtures --help`` or ``python -m ppl_mixtures.cli --help``.

Modules: :mod:`~ppl_mixtures.cli.parser` (arguments, sub-commands built from the registry),
:mod:`~ppl_mixtures.cli.fit` (data, estimator, fitting, torchrun),
:mod:`~ppl_mixtures.cli.outputs` (summary, plots, files), :mod:`~ppl_mixtures.cli.diagnose`,
:mod:`~ppl_mixtures.cli.compare` and :mod:`~ppl_mixtures.cli.common` (names, errors, data).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from typing import Any

from ppl_mixtures.cli.common import EXIT_FAILURE, EXIT_USAGE, PROG, CLIError
from ppl_mixtures.cli.parser import build_parser
from ppl_mixtures.registry import GMVAE_PRESETS

__all__ = ["GMVAE_PRESETS", "build_parser", "main"]


def _fail(message: Any, code: int) -> int:
    text = " ".join(str(message).split()) or "unknown error"
    print(f"{PROG}: error: {text}", file=sys.stderr)
    return code


def _show_warning(message: Any, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """Print a warning as one line, ``ppl-mixtures: warning: ...`` (no source line)."""
    text = " ".join(str(message).split())
    print(f"{PROG}: warning: {text}", file=sys.stderr if file is None else file)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line interface.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments after the program name; ``sys.argv[1:]`` by default.

    Returns
    -------
    int
        The exit code: 0 on success, 2 for bad input, 1 when a valid run fails.
        ``--help`` and ``--version`` exit through ``SystemExit(0)``, argument errors through
        ``SystemExit(2)``, as with any argparse program.
    """
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        return _run(args)


def _run(args: Any) -> int:
    try:
        return args.run(args)
    except FileNotFoundError as error:
        missing = error.filename
        return _fail(f"file not found: {missing}" if missing else error, EXIT_USAGE)
    except (CLIError, ValueError, TypeError) as error:
        return _fail(error, EXIT_USAGE)
    except (OSError, FloatingPointError) as error:
        return _fail(error, EXIT_FAILURE)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
