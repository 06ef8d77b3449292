"""``ppl-mixtures fit gmm|mfa --missing marginalize``: files with missing cells, the loaders'
``allow_missing``, the summary's count and ``imputed.csv``."""

import json

import numpy as np
import pytest
from test_cli import assert_one_line_error  # tests/cli is on the path (no package)

from ppl_mixtures.cli import main
from ppl_mixtures.datasets import load_csv, load_npy, make_gmm, mask_missing
from ppl_mixtures.estimators import load_estimator


def incomplete_data(n_samples=150, fraction=0.15, seed=0):
    """Two separated 3-D components, ``fraction`` of the cells missing completely at random
    (no row left without an observed cell)."""
    X, y = make_gmm(n_samples=n_samples, n_components=2, n_features=3, random_state=seed)
    missing = np.isnan(mask_missing(X, fraction, random_state=seed, keep_observed=True))
    return X, y, missing


def write_csv(path, X, missing, tokens=("", "NA", "nan", " N/A ")):
    """A CSV with a header, missing cells written with each of ``tokens`` in turn."""
    lines, count = ["a,b,c"], 0
    for row, row_missing in zip(X, missing, strict=True):
        cells = []
        for value, absent in zip(row, row_missing, strict=True):
            if absent:
                cells.append(tokens[count % len(tokens)])
                count += 1
            else:
                cells.append(repr(float(value)))
        lines.append(",".join(cells))
    path.write_text("\n".join(lines) + "\n")
    return path


def fit(out, *args, model="gmm"):
    return main(["fit", model, "--out", str(out), "--no-progress", "--device", "cpu", *args])


def test_loaders_keep_missing_cells_as_nan_only_when_asked(tmp_path):
    X, _, missing = incomplete_data(20)
    path = write_csv(tmp_path / "d.csv", X, missing)
    loaded, _ = load_csv(path, allow_missing=True)
    np.testing.assert_array_equal(np.isnan(loaded), missing)
    np.testing.assert_array_equal(loaded[~missing], X[~missing])
    with pytest.raises(ValueError, match="is empty .* allow_missing=True .*--missing marginalize"):
        load_csv(path)
    # a first row with a missing cell is data, not a header
    (tmp_path / "first.csv").write_text("NA,1\n2,3\n")
    first, _ = load_csv(tmp_path / "first.csv", allow_missing=True)
    assert first.shape == (2, 2) and np.isnan(first[0, 0])
    # infinite values and words are refused all the same
    (tmp_path / "inf.csv").write_text("1,2\ninf,NA\n")
    with pytest.raises(ValueError, match="1 infinite value.*line 2, column 0"):
        load_csv(tmp_path / "inf.csv", allow_missing=True)
    (tmp_path / "word.csv").write_text("1,2\noops,NA\n")
    with pytest.raises(ValueError, match="'oops' is not a number"):
        load_csv(tmp_path / "word.csv", allow_missing=True)

    array = np.where(missing, np.nan, X)
    np.save(tmp_path / "d.npy", array)
    np.testing.assert_array_equal(load_npy(tmp_path / "d.npy", allow_missing=True)[0], array)
    with pytest.raises(ValueError, match="NaN or infinite.*--missing marginalize"):
        load_npy(tmp_path / "d.npy")


def test_missing_cells_are_refused_naming_the_option(tmp_path, capsys):
    X, _, missing = incomplete_data(30)
    path = write_csv(tmp_path / "d.csv", X, missing)
    assert fit(tmp_path / "run", "--data", str(path), "-k", "2") == 2
    assert_one_line_error(capsys, "d.csv", "--missing marginalize", "missing value")
    assert not (tmp_path / "run").exists()
    with pytest.raises(SystemExit) as exit_info:
        fit(tmp_path / "run", "--data", str(path), "-k", "2", "--missing", "sometimes")
    assert exit_info.value.code == 2
    assert "invalid choice: 'sometimes'" in capsys.readouterr().err


def test_fit_gmm_marginalize_counts_the_cells_and_writes_imputed_csv(tmp_path, capsys):
    X, _, missing = incomplete_data()
    path = write_csv(tmp_path / "d.csv", X, missing)
    out = tmp_path / "run"
    assert fit(out, "--data", str(path), "-k", "2", "--missing", "marginalize") == 0
    printed = capsys.readouterr().out
    n_missing = int(missing.sum())
    assert f"missing cells        {n_missing} of {X.size}" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["missing_cells"] == n_missing

    data = np.where(missing, np.nan, X)
    est = load_estimator(out / "model.safetensors", device="cpu")
    assert est.missing == "marginalize"
    assert est.score(data) == pytest.approx(summary["mean_log_likelihood"], rel=1e-12)
    imputed = np.loadtxt(out / "imputed.csv", delimiter=",")
    np.testing.assert_array_equal(imputed[~missing], X[~missing])  # written to 17 digits
    np.testing.assert_allclose(imputed, est.impute(data), rtol=1e-14, atol=1e-14)
    # the conditional means are closer to the truth than the column means (measured here:
    # RMSE 1.30 against 1.44; the two components overlap in part)
    column_means = np.nanmean(data, axis=0)
    error = np.sqrt(np.mean((imputed - X)[missing] ** 2))
    baseline = np.sqrt(np.mean((np.broadcast_to(column_means, X.shape) - X)[missing] ** 2))
    assert error < baseline


def test_imputed_csv_is_in_the_units_of_the_data_under_scale(tmp_path):
    X, _, missing = incomplete_data()
    X = X * np.array([1.0, 100.0, 0.01]) + np.array([0.0, 50.0, -3.0])
    path = write_csv(tmp_path / "d.csv", X, missing)
    out = tmp_path / "run"
    assert fit(out, "--data", str(path), "-k", "2", "--missing", "marginalize",
               "--scale", "standard") == 0
    data = np.where(missing, np.nan, X)
    center, spread = np.nanmean(data, axis=0), np.nanstd(data, axis=0)
    est = load_estimator(out / "model.safetensors", device="cpu")
    expected = est.impute((data - center) / spread) * spread + center
    imputed = np.loadtxt(out / "imputed.csv", delimiter=",")
    np.testing.assert_array_equal(imputed[~missing], X[~missing])
    np.testing.assert_allclose(imputed, expected, rtol=1e-9, atol=1e-12)


def test_fit_mfa_marginalize_from_npy(tmp_path, capsys):
    X, _, missing = incomplete_data()
    np.save(tmp_path / "d.npy", np.where(missing, np.nan, X))
    out = tmp_path / "run"
    assert fit(out, "--data", str(tmp_path / "d.npy"), "-k", "2", "--n-factors", "1",
               "--missing", "marginalize", model="mfa") == 0
    assert f"{int(missing.sum())} of {X.size}" in capsys.readouterr().out
    imputed = np.loadtxt(out / "imputed.csv", delimiter=",")
    assert np.isfinite(imputed).all()
    np.testing.assert_array_equal(imputed[~missing], X[~missing])


def test_marginalize_on_complete_data_changes_nothing(tmp_path, capsys):
    X, _, _ = incomplete_data()
    path = write_csv(tmp_path / "d.csv", X, np.zeros(X.shape, dtype=bool))
    assert fit(tmp_path / "plain", "--data", str(path), "-k", "2") == 0
    assert fit(tmp_path / "marg", "--data", str(path), "-k", "2", "--missing",
               "marginalize") == 0
    plain = json.loads((tmp_path / "plain" / "summary.json").read_text())
    marginalized = json.loads((tmp_path / "marg" / "summary.json").read_text())
    assert plain["missing_cells"] is None and marginalized["missing_cells"] == 0
    assert marginalized["mean_log_likelihood"] == pytest.approx(plain["mean_log_likelihood"],
                                                                rel=1e-10)
    assert not (tmp_path / "marg" / "imputed.csv").exists()


def test_fit_gmm_by_sgd_marginalize_standardises_the_observed_entries(tmp_path, capsys):
    X, _, missing = incomplete_data()
    path = write_csv(tmp_path / "d.csv", X, missing)
    out = tmp_path / "run"
    assert fit(out, "--data", str(path), "-k", "2", "--inference", "sgd", "--covariance-type",
               "diag", "--max-iter", "3", "--missing", "marginalize") == 0
    printed = capsys.readouterr().out
    assert "standard" in printed and f"{int(missing.sum())} of {X.size}" in printed
    imputed = np.loadtxt(out / "imputed.csv", delimiter=",")
    np.testing.assert_array_equal(imputed[~missing], X[~missing])
    assert np.isfinite(imputed).all()
