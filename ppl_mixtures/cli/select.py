"""``ppl-mixtures select``: mclust's model search over K and the covariance type.

Fits ``GaussianMixture`` for every ``--n-components`` x ``--covariance-types`` candidate
(:func:`ppl_mixtures.selection.select_model`), prints the best rows, and writes
``selection.csv`` (every candidate), ``selection.png`` (the criterion against K per
covariance type), ``summary.json`` and the winner as ``model.safetensors``.
"""

from __future__ import annotations

import argparse
import json

from ppl_mixtures.cli.common import (
    MODEL_FILE,
    SUMMARY_FILE,
    CLIError,
    OutputFolder,
    load_data,
    scale_data,
)

__all__ = ["SELECT_OUTPUTS", "run_select"]

#: Every file ``select`` may write into ``--out``.
SELECT_OUTPUTS = ("selection.csv", "selection.png", SUMMARY_FILE, MODEL_FILE)
_SHOWN = 10


def run_select(args: argparse.Namespace) -> int:
    """Search, print the best candidates, write the table, the plot and the winner."""
    from ppl_mixtures.models.gmm import COVARIANCE_TYPES
    from ppl_mixtures.plotting import _pyplot
    from ppl_mixtures.selection import select_model

    types = COVARIANCE_TYPES if args.covariance_types == ["all"] else args.covariance_types
    unknown = [name for name in types if name not in COVARIANCE_TYPES]
    if unknown:
        raise CLIError(f"--covariance-types: unknown {', '.join(unknown)}; use some of "
                       f"{', '.join(COVARIANCE_TYPES)} (comma-separated) or all")
    folder = OutputFolder(args.out, overwrite=args.overwrite, outputs=SELECT_OUTPUTS)
    folder.check()
    X, _ = load_data(args)
    X = scale_data(X, args.scale or "none")
    search = select_model(X, n_components=args.n_components, covariance_types=types,
                          criterion=args.criterion, random_state=args.seed,
                          n_init=args.n_init, device=args.device, progress=False)
    table = search.table()
    with folder:
        out = folder.create()
        table.to_csv(out / "selection.csv", index=False)
        figure = search.plot()
        figure.savefig(out / "selection.png", dpi=100, bbox_inches="tight")
        _pyplot().close(figure)
        search.best_estimator_.save(out / MODEL_FILE)
        (out / SUMMARY_FILE).write_text(json.dumps({
            "command": "select", "dataset": str(args.data), "scale": args.scale or "none",
            "criterion": args.criterion, "best": search.best_params_,
            "n_candidates": len(table), "failed": int(table["error"].notna().sum()),
        }, indent=2))
    shown = table.head(_SHOWN)[["n_components", "covariance_type", "value", "log_likelihood",
                                "n_parameters", "converged"]]
    print(f"{args.criterion.upper()} ({'higher' if args.criterion == 'loo' else 'lower'} is "
          f"better), best {len(shown)} of {len(table)} candidates:")
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    best = search.best_params_
    print(f"selected: K={best['n_components']}, covariance_type={best.get('covariance_type')}; "
          f"outputs in {out}")
    return 0
