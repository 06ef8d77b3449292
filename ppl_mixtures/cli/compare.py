"""``ppl-mixtures compare-dgmm``: the DGMM paper's experiment, EM and SVI from random starts
and from the estimator's default start (the data's own mixture mapped onto the tree)."""

from __future__ import annotations

import argparse

from ppl_mixtures.cli.common import OutputFolder

__all__ = ["COMPARE_OUTPUTS", "run_compare_dgmm"]

#: Every file ``compare-dgmm`` may write into ``--out``.
COMPARE_OUTPUTS = ("report.md", "runs.csv", "table1_bic.csv", "table2_nonempty.csv",
                   "table3_layer_ari.csv", "mutual_ari_em.csv", "results.json",
                   "fig2_layer1_ari.png", "fig3_path_ari.png", "fig4_bic_trace.png",
                   "fig5_mutual_ari.png")


def run_compare_dgmm(args: argparse.Namespace) -> int:
    """Run the experiment, write its report and print its summary table."""
    from ppl_mixtures.experiments.bumpy_journey import (
        ExperimentConfig,
        run_experiment,
        write_report,
    )

    settings = dict(runs=args.runs, svi_runs=args.svi_runs, bic_runs=args.bic_runs,
                    seed=args.seed, device=args.device, progress=args.progress)
    if args.quick:
        config = ExperimentConfig.quick(**settings)
    else:
        config = ExperimentConfig(n_samples=args.n_samples, em_max_iter=args.em_max_iter,
                                  svi_max_iter=args.svi_max_iter, **settings)
    config.check()
    folder = OutputFolder(args.out, overwrite=args.overwrite, outputs=COMPARE_OUTPUTS)
    folder.check()
    result = run_experiment(config)
    with folder:
        report = write_report(result, folder.create())
    header = (f"{'method':<12} {'runs':>4} {'path ARI best':>13} {'mean':>6} "
              f"{'log-lik best':>12} {'vs oracle':>9} {'layer ARIs (mean)':>20} "
              f"{'paths':>5} {'s/run':>6}")
    lines = [header]
    for row in result.summary():
        layers = " ".join(f"{v:.2f}" for v in row["layer_ari_mean"])
        lines.append(f"{row['method']:<12} {row['runs']:>4} {row['path_ari_best']:>13.3f} "
                     f"{row['path_ari_mean']:>6.3f} {row['log_likelihood_best']:>12.3f} "
                     f"{-row['log_likelihood_gap']:>9.3f} {layers:>20} "
                     f"{row['nonempty_mean']:>5.1f} {row['seconds_mean']:>6.1f}")
    lines.append(f"report: {report} ({result.seconds:.0f} s)")
    print("\n".join(lines))
    return 0
