"""The experiment of Selosse et al. (2020, section 3) in its quick setting, and its CLI."""

import json

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from ppl_mixtures.cli import main
from ppl_mixtures.experiments.bumpy_journey import (
    METHODS,
    ExperimentConfig,
    mutual_ari,
    run_experiment,
    write_report,
)

FILES = ("report.md", "runs.csv", "table1_bic.csv", "table2_nonempty.csv",
         "table3_layer_ari.csv", "mutual_ari_em.csv", "results.json", "fig2_layer1_ari.png",
         "fig3_path_ari.png", "fig4_bic_trace.png", "fig5_mutual_ari.png")


@pytest.fixture(scope="module")
def quick_result():
    return run_experiment(ExperimentConfig.quick(progress=False))


def test_quick_experiment_records_every_run(quick_result):
    config = quick_result.config
    counts = {m: len(quick_result.by_method(m)) for m in METHODS}
    assert counts == {"em": config.runs, "em_annealed": config.runs,
                      "em_realigned": config.runs, "em_gmm": config.runs,
                      "svi": config.svi_runs, "svi_gmm": config.svi_runs}
    # at the true parameters the quick problem's partition is recovered exactly
    assert quick_result.oracle.path_ari == pytest.approx(1.0)
    assert quick_result.oracle.layer_ari == pytest.approx([1.0, 1.0])
    n_paths = int(np.prod(config.n_components))
    for record in quick_result.records:
        assert -1.0 <= record.path_ari <= 1.0 and len(record.layer_ari) == 2
        assert set(record.nonempty_paths) <= set(range(1, n_paths + 1))
        assert record.history and np.isfinite(record.log_likelihood)
        if record.method not in ("em_gmm", "svi_gmm"):
            # the true parameters fit their own data better than the layer-wise starts do in
            # the quick budget
            assert record.log_likelihood < quick_result.oracle.log_likelihood
    for method in ("em", "em_gmm"):
        for record in quick_result.by_method(method):
            assert np.all(np.diff(record.history) > -1e-8)  # EM is monotone
    # the default start finds the truth's paths and likelihood (measured: ARI 1.0, and a
    # likelihood 0.1 above the oracle's, on this quick problem); plain EM does not
    best = max(quick_result.by_method("em_gmm"), key=lambda r: r.log_likelihood)
    assert best.path_ari > 0.95
    assert best.log_likelihood > quick_result.oracle.log_likelihood - 0.5
    assert best.log_likelihood > max(r.log_likelihood for r in quick_result.by_method("em"))
    assert quick_result.predictions["em"].shape == (config.runs, config.n_samples)
    assert len(quick_result.bic_table) == config.bic_runs
    row = quick_result.bic_table[0]
    assert row["dgmm_g1"] in config.bic_candidates and row["gmm_g"] in config.bic_candidates
    assert row["dgmm_g1"] == min(row["dgmm_bic"], key=row["dgmm_bic"].get)


def test_summary_rows(quick_result):
    rows = quick_result.summary()
    assert [r["method"] for r in rows] == ["oracle", *METHODS]
    em = rows[1]
    aris = [r.path_ari for r in quick_result.by_method("em")]
    assert em["path_ari_best"] == pytest.approx(max(aris))
    assert em["path_ari_mean"] == pytest.approx(np.mean(aris))


def test_report_files(quick_result, tmp_path):
    report = write_report(quick_result, tmp_path)
    for name in FILES:
        assert (tmp_path / name).stat().st_size > 0, name
    text = report.read_text()
    for heading in ("Table 1", "Table 2", "Table 3", "oracle", "Mutual ARI"):
        assert heading in text
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results["runs"]) == 1 + len(quick_result.records)
    matrix = np.loadtxt(tmp_path / "mutual_ari_em.csv", delimiter=",")
    assert matrix.shape == (quick_result.config.runs,) * 2


def test_mutual_ari_matches_sklearn():
    rng = np.random.default_rng(0)
    predictions = rng.integers(0, 4, size=(3, 50))
    predictions[2] = (predictions[0] + 1) % 4  # a relabelling of run 0
    matrix = mutual_ari(predictions)
    np.testing.assert_allclose(matrix, matrix.T)
    np.testing.assert_allclose(np.diag(matrix), 1.0)
    assert matrix[0, 1] == pytest.approx(adjusted_rand_score(predictions[0], predictions[1]))
    assert matrix[0, 2] == pytest.approx(1.0)


@pytest.mark.parametrize("overrides, match", [
    ({"runs": 0}, "runs=0 must be an integer >= 1"),
    ({"svi_runs": -1}, "svi_runs"),
    ({"bic_runs": -1}, r"bic_runs=-1 must be an integer >= 0 \(0 skips Table 1\)"),
    ({"bic_candidates": ()}, "bic_candidates"),
    ({"n_samples": 0}, "n_samples"),
])
def test_config_errors(overrides, match):
    with pytest.raises(ValueError, match=match):
        run_experiment(ExperimentConfig.quick(**overrides))


@pytest.mark.slow  # the quick experiment of the module's fixture again (20 s), through the CLI
def test_compare_dgmm_cli(tmp_path, capsys):
    code = main(["compare-dgmm", "--quick", "--runs", "2", "--svi-runs", "0", "--bic-runs", "1",
                 "--out", str(tmp_path), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "oracle" in printed and "em_annealed" in printed and "report:" in printed
    assert (tmp_path / "report.md").exists() and (tmp_path / "fig5_mutual_ari.png").exists()


def test_compare_dgmm_cli_smallest_run(tmp_path, capsys):
    """Issue: --runs 1 was refused and --bic-runs 0 could not skip Table 1."""
    code = main(["compare-dgmm", "--quick", "--runs", "1", "--svi-runs", "0", "--bic-runs", "0",
                 "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "oracle" in printed and "em_annealed" in printed and "report:" in printed
    out = tmp_path / "out"
    written = {path.name for path in out.iterdir()}
    assert written == set(FILES) - {"table1_bic.csv", "fig2_layer1_ari.png",
                                    "fig5_mutual_ari.png", "mutual_ari_em.csv"}
    text = (out / "report.md").read_text()
    assert "Skipped (bic_runs=0" in text and "left out, it needs two EM runs" in text
    results = json.loads((out / "results.json").read_text())
    assert results["table1"] == [] and len(results["runs"]) == 1 + 4  # oracle + 4 EM methods


def test_fit_dgmm_cli(tmp_path, capsys):
    code = main(["fit", "dgmm", "--data", "dgmm", "--layers", "3,3,2", "--n-factors", "11,6,2",
                 "--max-iter", "3", "--start", "layerwise", "--out", str(tmp_path),
                 "--no-progress"])
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["n_components"] == [3, 3, 2] and summary["n_samples"] == 4000
    assert summary["ari"] is not None
    from ppl_mixtures.estimators import DeepGaussianMixture

    loaded = DeepGaussianMixture.load(tmp_path / "model.safetensors", device="cpu")
    assert loaded.n_components == (3, 3, 2)


def test_fit_dgmm_cli_rejects_n_components(tmp_path, capsys):
    code = main(["fit", "dgmm", "--data", "dgmm", "-k", "3", "--out", str(tmp_path)])
    assert code == 2
    assert "--layers" in capsys.readouterr().err
