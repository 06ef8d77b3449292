"""``ppl-mixtures fit MODEL``: load the data, build the family's estimator, fit, write.

Nothing here names a model: the family (:mod:`ppl_mixtures.registry`) says which estimator to
build, which options it takes (and with which inference paths), which inference paths
checkpoint or run distributed, and which scale an inference path needs by default.
"""

from __future__ import annotations

import argparse
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ppl_mixtures.cli.common import (
    CHECKPOINT_FILE,
    CHECKPOINT_PATTERN,
    DEFAULT_N_COMPONENTS,
    MODEL_FILE,
    SUMMARY_FILE,
    CLIError,
    OutputFolder,
    load_data,
    note,
    scale_data,
)
from ppl_mixtures.cli.outputs import IMPUTED_FILE
from ppl_mixtures.cli.stream import open_stream, wants_stream
from ppl_mixtures.registry import Family, get_family

__all__ = ["FIT_OUTPUTS", "build_estimator", "check_options", "fit_and_write", "resolve_scale",
           "run_fit"]

#: Every file ``fit`` may write into ``--out`` (any family).
FIT_OUTPUTS = (MODEL_FILE, SUMMARY_FILE, "clusters.png", "history.png", "latent.png",
               "samples.png", IMPUTED_FILE, CHECKPOINT_PATTERN)


def check_options(family: Family, args: argparse.Namespace) -> None:
    """Reject option combinations the family does not support (exit code 2)."""
    components = family.components_option
    if components is not None and args.n_components is not None:
        raise CLIError(f"fit {family.name} takes {components.flag} {components.metavar} "
                       "(the components), not --n-components")
    if args.resume and args.inference not in family.resume:
        raise CLIError(f"--resume applies to --inference {' or '.join(family.resume)} only "
                       f"({args.inference.upper()} runs are not checkpointed)")
    if args.distributed and args.inference not in family.distributed:
        raise CLIError(f"--distributed needs --inference {' or '.join(family.distributed)}, "
                       f"not {args.inference}")
    for option in family.options:
        value = getattr(args, option.dest)
        if value is not None and value != option.default and not option.applies_to(
            args.inference
        ):
            raise CLIError(f"{option.flag} applies to --inference "
                           f"{' or '.join(option.inference)} only, not {args.inference}")


def resolve_scale(family: Family, args: argparse.Namespace) -> tuple[str, str]:
    """``(scale, why)``: ``--scale``, or the inference path's default, and how it was chosen."""
    if args.scale is not None:
        return args.scale, "--scale"
    scale = family.default_scale(args.inference)
    if scale == "none":
        return scale, "default"
    return scale, f"the default for --inference {args.inference}; --scale none turns it off"


def _n_components(family: Family, args: argparse.Namespace, labels: np.ndarray | None) -> Any:
    """K: the family's own option (e.g. dgmm's --layers), --n-components, the labels, or 3."""
    components = family.components_option
    if components is not None:
        return getattr(args, components.dest)
    if args.n_components is not None:
        return args.n_components
    if labels is not None:
        return len(np.unique(labels))
    return DEFAULT_N_COMPONENTS


def build_estimator(family: Family, args: argparse.Namespace, n_components: Any,
                    checkpoint: Path) -> Any:
    """The family's estimator with the parsed options.

    The common options go to the estimator when its constructor takes them; ``--n-init``,
    ``--max-iter``, ``--tol`` and ``--dtype``, when given to an estimator that does not take
    them, are an error rather than silently ignored. Options left unset (``None``) take the
    family's command-line default for the inference path (e.g. ``--batch-size 32`` for SGD)
    or leave the estimator's defaults.
    """
    cls = family.estimator_class()
    accepted = inspect.signature(cls).parameters
    kwargs: dict[str, Any] = {}
    requested = {
        "--n-init": ("n_init", args.n_init),
        "--max-iter": ("max_iter", args.max_iter),
        "--tol": ("tol", args.tol),
        "--dtype": ("dtype", args.dtype),
    }
    for flag, (name, value) in requested.items():
        if value is None:
            continue
        if name not in accepted:
            raise CLIError(f"fit {family.name} does not take {flag}")
        kwargs[name] = value
    settings = {
        "inference": args.inference,
        "random_state": args.seed,
        "device": args.device,
        "progress": args.progress,
        "distributed": args.distributed,
        "checkpoint_path": str(checkpoint) if args.inference in family.resume else None,
    }
    kwargs.update({name: value for name, value in settings.items()
                   if value is not None and name in accepted})
    for option in family.options:
        value = getattr(args, option.dest)
        if value is None:
            value = option.default_for(args.inference)
        if value is not None:
            kwargs[option.arg] = value
    kwargs["n_components"] = n_components
    return cls(**kwargs)


def fit_and_write(est: Any, X: np.ndarray, folder: OutputFolder, resume: bool,
                  write: Callable[[], None]) -> int:
    """Fit ``est`` on ``X``, then ``write`` the outputs into ``folder``.

    The folder is made just before fitting when the fit writes a checkpoint there, else just
    before writing. With ``est.distributed`` (``--distributed`` under torchrun) each process
    fits its rows ``rank::world_size`` and rank 0 alone writes. A process group this call
    initialises (:func:`~ppl_mixtures.distributed.init_from_env`) is destroyed when it returns,
    after a barrier when every rank finished, and also when the fit fails (no barrier then: the
    other ranks may never reach it); a group the caller initialised is left to the caller.
    """
    checkpointed = getattr(est, "checkpoint_path", None) is not None
    if not getattr(est, "distributed", False):
        if checkpointed:
            folder.create()
        est.fit(X, resume=resume)
        folder.create()
        write()
        return 0
    import torch.distributed

    from ppl_mixtures.distributed import init_from_env, is_initialized

    owns_group = not is_initialized()
    rank, world_size = init_from_env()
    try:
        if checkpointed:  # every rank writes its own checkpoint there
            folder.create()
        est.fit(X[rank::world_size], resume=resume)
        if rank == 0:
            folder.create()
            write()
        torch.distributed.barrier()  # no rank leaves (and tears the group down) before all end
    finally:
        if owns_group:
            torch.distributed.destroy_process_group()
    return 0


def run_fit(args: argparse.Namespace) -> int:
    """``ppl-mixtures fit MODEL``: fit, print the summary, write the outputs."""
    from ppl_mixtures.cli.outputs import write_outputs

    family = get_family(args.model)
    check_options(family, args)
    out = args.out if args.out is not None else Path("runs") / family.name
    args.out = out
    rank = int(os.environ.get("RANK", "0")) if args.distributed else 0
    folder = OutputFolder(out, overwrite=args.overwrite, resume=args.resume,
                          outputs=FIT_OUTPUTS, cleanup=rank == 0)
    folder.check(resume_hint="continue an SVI run" if args.inference in family.resume
                 else None)
    if wants_stream(family, args):  # --stream: batches of a memory map (cli/stream.py)
        args.scale, args.scale_reason = resolve_scale(family, args)
        args.missing_cells = None
        if args.resume and not (out / CHECKPOINT_FILE).exists():
            note(f"no checkpoint at {out / CHECKPOINT_FILE}; starting afresh")
        est = build_estimator(family, args, _n_components(family, args, None),
                              out / CHECKPOINT_FILE)
        data, X, labels = open_stream(args, est)  # labels: of the first rows only
        if family.components_option is None and args.n_components is None and (
                labels is not None):
            est.set_params(n_components=_n_components(family, args, labels))
        args.loaded_data = X
        with folder:
            return fit_and_write(est, data, folder, args.resume,
                                 lambda: write_outputs(family, args, est, X, labels, out))
    marginalize = getattr(args, "option_missing", None) == "marginalize"
    X, labels = load_data(args, allow_missing=marginalize)
    # --missing marginalize: how many cells are missing; the data as loaded, for imputed.csv
    args.missing_cells = int(np.isnan(X).sum()) if marginalize else None
    args.loaded_data = X
    args.scale, args.scale_reason = resolve_scale(family, args)
    X = scale_data(X, args.scale)
    n_components = _n_components(family, args, labels)
    checkpoint = out / CHECKPOINT_FILE
    if args.resume and not checkpoint.exists():
        note(f"no checkpoint at {checkpoint}; starting afresh")
    est = build_estimator(family, args, n_components, checkpoint)
    with folder:
        return fit_and_write(est, X, folder, args.resume,
                             lambda: write_outputs(family, args, est, X, labels, out))
