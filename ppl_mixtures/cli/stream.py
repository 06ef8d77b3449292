"""``fit MODEL --stream``: fit on a ``.npy`` (or uncompressed IDX) file read batch by batch.

The file is opened as a memory map (:class:`ppl_mixtures.datasets.files.NpyBatches`,
:class:`~ppl_mixtures.datasets.files.IdxBatches`) and handed to ``fit`` as a stream, so it may
be larger than memory. ``--stream`` asks for it; a ``.npy`` file larger than
:data:`STREAM_AUTO_BYTES` is streamed without it (a note says so). ``--scale`` is applied batch by
batch with statistics taken in chunks. The summary's scores, the clusters and the figures are
computed on the first :data:`OUTPUT_ROWS` rows (``samples (N)`` counts all the rows).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from ppl_mixtures.cli.common import CLIError, note
from ppl_mixtures.registry import Family

#: A ``.npy`` file larger than this is streamed even without ``--stream``.
STREAM_AUTO_BYTES = 2 * 1024**3
#: Rows on which a streamed fit's summary and figures are computed.
OUTPUT_ROWS = 10_000
#: Rows per batch when the estimator has no ``batch_size`` (an EM pass sums over batches).
EM_BATCH_ROWS = 65_536


def wants_stream(family: Family, args: argparse.Namespace) -> bool:
    """Whether ``--data`` is streamed: ``--stream``, or a ``.npy`` file over the threshold.

    Raises :class:`CLIError` (exit code 2) for what a stream cannot do: a built-in data set or
    a CSV file, an inference path that does not take streams, ``--distributed``,
    ``--missing marginalize``.
    """
    path = Path(args.data)
    requested = bool(getattr(args, "stream", False))
    large = (path.suffix.lower() == ".npy" and path.is_file()
             and path.stat().st_size > STREAM_AUTO_BYTES)
    if not (requested or large):
        return False
    if not path.is_file() or path.suffix.lower() == ".csv":
        raise CLIError(f"--stream reads a .npy or uncompressed IDX file, not {args.data!r}; "
                       "convert the data with numpy.save, or drop --stream")
    streamed = getattr(family.estimator_class(), "_stream_inference_methods", ())
    if args.inference not in streamed:
        raise CLIError(f"fit {family.name} --inference {args.inference} cannot read a stream "
                       f"of batches (--stream{' is implied by a file this large' * large}); "
                       + (f"use --inference {' or '.join(streamed)}" if streamed
                          else "load data that fit in memory"))
    if getattr(args, "distributed", False):
        raise CLIError("--stream and --distributed do not combine: under torchrun each "
                       "process loads its rows of --data")
    if getattr(args, "option_missing", None) == "marginalize":
        raise CLIError("--stream does not read missing values; drop --missing marginalize")
    if large and not requested:
        note(f"{path} holds {path.stat().st_size / 1024**3:.1f} GiB: it is read batch by batch "
             "through a memory map (as with --stream)")
    return True


def open_stream(args: argparse.Namespace, est: Any) -> tuple[Any, np.ndarray, Any]:
    """The reader of ``--data``, its first rows (for the outputs) and their labels.

    Batches of the estimator's ``batch_size`` (else :data:`EM_BATCH_ROWS` rows), for SVI of
    rows shuffled once by ``--seed`` (the same batches at every pass, so that ``--resume``
    continues the run exactly), scaled by ``args.scale``. Sets ``args.n_rows``.
    """
    from ppl_mixtures.datasets.files import IdxBatches, NpyBatches

    path = Path(args.data)
    reader_class = NpyBatches if path.suffix.lower() == ".npy" else IdxBatches
    svi = getattr(est, "inference", None) == "svi"
    try:
        reader = reader_class(path, getattr(est, "batch_size", None) or EM_BATCH_ROWS,
                              shuffle="once" if svi else False, random_state=args.seed, scale=args.scale)
    except ValueError as error:
        raise CLIError(str(error)) from None
    args.n_rows = reader.n_samples
    head = reader.head(OUTPUT_ROWS)
    labels = None
    if getattr(args, "labels", None) is not None:
        from ppl_mixtures.datasets.files import _load_npy_array

        labels = _load_npy_array(args.labels, "labels file").reshape(-1)
        if labels.shape[0] != reader.n_samples:
            raise CLIError(f"--labels {args.labels} holds {labels.shape[0]} labels, but "
                           f"--data has {reader.n_samples} rows")
        labels = labels[:OUTPUT_ROWS]
    if reader.n_samples > OUTPUT_ROWS:
        note(f"the summary's scores and the figures use the first {OUTPUT_ROWS} of "
             f"{reader.n_samples} rows")
    return reader, head, labels
