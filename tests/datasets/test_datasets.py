"""Tests for ppl_mixtures.datasets: the synthetic mixture, the bundled data and the file loaders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ppl_mixtures.datasets import (
    BUILTIN_DATASETS,
    COVARIANCE_TYPES,
    SCALES,
    describe_scale,
    load_breast_cancer,
    load_csv,
    load_dataset,
    load_digits,
    load_iris,
    load_npy,
    load_wine,
    make_dgmm,
    make_gmm,
    scale_features,
)


def _pairwise_distances(points: np.ndarray) -> np.ndarray:
    """Distances between distinct rows, shape (K (K - 1) / 2,)."""
    diffs = points[:, None, :] - points[None, :, :]
    upper = np.triu_indices(points.shape[0], k=1)
    return np.sqrt((diffs**2).sum(-1))[upper]


def _max_std(covariances: np.ndarray) -> float:
    return float(np.sqrt(np.linalg.eigvalsh(covariances).max()))


# --------------------------------------------------------------------------------------------
# make_gmm
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_make_gmm_shapes_and_dtypes(covariance_type):
    X, y, params = make_gmm(
        n_samples=250,
        n_components=4,
        n_features=3,
        covariance_type=covariance_type,
        random_state=0,
        return_params=True,
    )
    assert X.shape == (250, 3) and X.dtype == np.float64
    assert y.shape == (250,) and y.dtype == np.int64
    assert set(np.unique(y)) == {0, 1, 2, 3}
    assert params["weights"].shape == (4,)
    assert params["means"].shape == (4, 3)
    assert params["covariances"].shape == (4, 3, 3)
    assert np.all(np.isfinite(X))


def test_make_gmm_without_params_returns_pair():
    result = make_gmm(n_samples=30, random_state=0)
    assert isinstance(result, tuple) and len(result) == 2


def test_make_gmm_is_deterministic_given_random_state():
    first = make_gmm(n_samples=100, random_state=7, return_params=True)
    second = make_gmm(n_samples=100, random_state=7, return_params=True)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    for key in ("weights", "means", "covariances"):
        np.testing.assert_array_equal(first[2][key], second[2][key])
    other = make_gmm(n_samples=100, random_state=8)
    assert not np.allclose(first[0], other[0])


def test_make_gmm_accepts_a_generator():
    X_seed, _ = make_gmm(n_samples=50, random_state=3)
    X_gen, _ = make_gmm(n_samples=50, random_state=np.random.default_rng(3))
    np.testing.assert_array_equal(X_seed, X_gen)


def test_make_gmm_counts_follow_weights_exactly():
    _, y, params = make_gmm(
        n_samples=1000, n_components=3, weights=[0.5, 0.3, 0.2], random_state=0, return_params=True
    )
    np.testing.assert_array_equal(np.bincount(y), [500, 300, 200])
    np.testing.assert_allclose(params["weights"], [0.5, 0.3, 0.2])


@pytest.mark.parametrize(
    ("n_samples", "weights"),
    [(7, None), (10, [0.15, 0.15, 0.7]), (101, [0.01, 0.495, 0.495]), (5, [1.0, 0.0, 0.0])],
)
def test_make_gmm_counts_are_a_proportional_split(n_samples, weights):
    _, y, params = make_gmm(
        n_samples=n_samples, n_components=3, weights=weights, random_state=0, return_params=True
    )
    counts = np.bincount(y, minlength=3)
    assert counts.sum() == n_samples
    assert np.all(np.abs(counts - n_samples * params["weights"]) < 1.0)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_make_gmm_sample_moments_match_true_params(covariance_type):
    X, y, params = make_gmm(
        n_samples=6000,
        n_components=3,
        n_features=3,
        covariance_type=covariance_type,
        random_state=1,
        return_params=True,
    )
    for k in range(3):
        points = X[y == k]
        n_k = points.shape[0]
        cov = params["covariances"][k]
        # Standard errors of the sample mean and of each sample covariance entry (Gaussian).
        mean_se = np.sqrt(np.diag(cov) / n_k)
        cov_se = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n_k)
        assert np.all(np.abs(points.mean(0) - params["means"][k]) < 5 * mean_se)
        assert np.all(np.abs(np.cov(points, rowvar=False) - cov) < 5 * cov_se)


def _covariances(covariance_type: str, n_components: int = 4, n_features: int = 3) -> np.ndarray:
    return make_gmm(
        n_samples=20,
        n_components=n_components,
        n_features=n_features,
        covariance_type=covariance_type,
        random_state=2,
        return_params=True,
    )[2]["covariances"]


def _is_diagonal(matrices: np.ndarray) -> bool:
    off_diagonal = matrices * (1 - np.eye(matrices.shape[-1]))
    return bool(np.all(off_diagonal == 0))


def _all_equal(matrices: np.ndarray) -> bool:
    return bool(np.all(matrices == matrices[0]))


def test_spherical_covariances_are_multiples_of_identity():
    covariances = _covariances("spherical")
    scales = covariances[:, 0, 0]
    np.testing.assert_array_equal(covariances, scales[:, None, None] * np.eye(3))
    assert len(np.unique(scales)) == 4  # one variance per component


def test_diag_covariances_are_diagonal_and_per_component():
    covariances = _covariances("diag")
    assert _is_diagonal(covariances) and not _all_equal(covariances)
    assert not np.all(np.diagonal(covariances, axis1=1, axis2=2) == covariances[:, :1, 0])


def test_tied_diag_covariances_are_one_shared_diagonal():
    covariances = _covariances("tied_diag")
    assert _is_diagonal(covariances) and _all_equal(covariances)


def test_tied_covariances_are_one_shared_full_matrix():
    covariances = _covariances("tied")
    assert _all_equal(covariances) and not _is_diagonal(covariances)


def test_full_covariances_are_per_component_full_matrices():
    covariances = _covariances("full")
    assert not _all_equal(covariances) and not _is_diagonal(covariances)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_covariances_are_symmetric_positive_definite(covariance_type):
    covariances = _covariances(covariance_type)
    np.testing.assert_allclose(covariances, np.swapaxes(covariances, 1, 2))
    eigenvalues = np.linalg.eigvalsh(covariances)
    assert np.all(eigenvalues >= 0.5 - 1e-12) and np.all(eigenvalues <= 1.5 + 1e-12)


@pytest.mark.parametrize("separation", [0.5, 3.0, 10.0])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_closest_means_are_separation_max_stds_apart(separation, covariance_type):
    _, _, params = make_gmm(
        n_samples=50,
        n_components=5,
        n_features=2,
        covariance_type=covariance_type,
        separation=separation,
        random_state=4,
        return_params=True,
    )
    distances = _pairwise_distances(params["means"])
    target = separation * _max_std(params["covariances"])
    assert distances.min() >= target * (1 - 1e-12)
    np.testing.assert_allclose(distances.min(), target, rtol=1e-12)


def test_zero_separation_puts_means_at_origin_and_one_component_is_centred():
    _, _, params = make_gmm(n_samples=20, separation=0.0, random_state=0, return_params=True)
    np.testing.assert_array_equal(params["means"], 0.0)
    X, y, params = make_gmm(n_samples=20, n_components=1, random_state=0, return_params=True)
    np.testing.assert_array_equal(params["means"], 0.0)
    assert np.all(y == 0) and X.shape == (20, 2)


@settings(max_examples=25, deadline=None)
@given(
    n_components=st.integers(1, 5),
    n_features=st.integers(1, 4),
    extra_samples=st.integers(0, 40),
    covariance_type=st.sampled_from(COVARIANCE_TYPES),
    separation=st.floats(0.0, 20.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_make_gmm_invariants(
    n_components, n_features, extra_samples, covariance_type, separation, seed
):
    n_samples = n_components + extra_samples
    X, y, params = make_gmm(
        n_samples=n_samples,
        n_components=n_components,
        n_features=n_features,
        covariance_type=covariance_type,
        separation=separation,
        random_state=seed,
        return_params=True,
    )
    assert X.shape == (n_samples, n_features) and y.shape == (n_samples,)
    assert np.all(np.isfinite(X))
    counts = np.bincount(y, minlength=n_components)
    assert np.all(np.abs(counts - n_samples / n_components) < 1.0)
    if n_components > 1:
        target = separation * _max_std(params["covariances"])
        np.testing.assert_allclose(
            _pairwise_distances(params["means"]).min(), target, rtol=1e-9, atol=1e-12
        )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_samples": 0}, "n_samples must be a positive integer"),
        ({"n_samples": 2.5}, "n_samples must be a positive integer"),
        ({"n_samples": True}, "n_samples must be a positive integer"),
        ({"n_components": 0}, "n_components must be a positive integer"),
        ({"n_features": -1}, "n_features must be a positive integer"),
        ({"n_samples": 2, "n_components": 3}, "n_samples=2 is smaller than n_components=3"),
        ({"covariance_type": "banded"}, r"covariance_type must be one of .*'tied_diag'"),
        ({"separation": -1.0}, "separation must be finite and >= 0"),
        ({"separation": float("inf")}, "separation must be finite and >= 0"),
        ({"separation": float("nan")}, "separation must be finite and >= 0"),
        ({"separation": "far"}, "separation must be a real number"),
        ({"weights": [0.5, 0.5]}, r"weights must be a 1-D sequence of length n_components=3"),
        ({"weights": [[0.2, 0.3, 0.5]]}, r"weights must be a 1-D sequence"),
        ({"weights": [0.5, 0.5, 0.5]}, r"weights must sum to 1, got sum 1\.5"),
        ({"weights": [1.2, -0.1, -0.1]}, "weights must be finite and non-negative"),
        ({"weights": [np.nan, 0.5, 0.5]}, "weights must be finite and non-negative"),
        ({"random_state": -3}, "random_state must be a non-negative integer seed"),
        ({"random_state": "seed"}, "random_state must be None"),
    ],
)
def test_make_gmm_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_gmm(**kwargs)


# --------------------------------------------------------------------------------------------
# Bundled data
# --------------------------------------------------------------------------------------------


def test_load_wine_standardized_by_default():
    X, y = load_wine()
    assert X.shape == (178, 13) and X.dtype == np.float64
    assert y.shape == (178,) and y.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(y), [59, 71, 48])
    np.testing.assert_allclose(X.mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(X.std(0), 1.0, rtol=1e-12)


def test_load_wine_raw_matches_scikit_learn():
    from sklearn.datasets import load_wine as sklearn_load_wine

    X, y = load_wine(standardize=False)
    X_ref, y_ref = sklearn_load_wine(return_X_y=True)
    np.testing.assert_array_equal(X, X_ref)
    np.testing.assert_array_equal(y, y_ref)
    assert X[:, 12].max() > 1000  # proline: why standardising is the default


def test_load_digits_scaled_to_unit_interval_by_default():
    from sklearn.datasets import load_digits as sklearn_load_digits

    X, y = load_digits()
    X_ref, y_ref = sklearn_load_digits(return_X_y=True)
    assert X.shape == (1797, 64) and X.dtype == np.float64
    assert y.shape == (1797,) and y.dtype == np.int64
    assert X.min() == 0.0 and X.max() == 1.0
    np.testing.assert_allclose(X * 16, X_ref)
    np.testing.assert_array_equal(y, y_ref)


@pytest.mark.parametrize("name, shape, n_classes", [
    ("wine", (178, 13), 3), ("digits", (1797, 64), 10), ("iris", (150, 4), 3),
    ("breast_cancer", (569, 30), 2),
])
def test_bundled_data_are_raw_unless_asked(name, shape, n_classes):
    """Issue: wine came standardised and digits scaled to [0, 1], silently."""
    import sklearn.datasets

    X_ref, y_ref = getattr(sklearn.datasets, f"load_{name}")(return_X_y=True)
    X, y = load_dataset(name)
    assert X.shape == shape and X.dtype == np.float64 and y.dtype == np.int64
    np.testing.assert_array_equal(X, X_ref)
    np.testing.assert_array_equal(y, y_ref)
    assert len(np.unique(y)) == n_classes
    loader = {"wine": load_wine, "digits": load_digits, "iris": load_iris,
              "breast_cancer": load_breast_cancer}[name]
    np.testing.assert_array_equal(loader(scale="none")[0], X_ref)
    for scale in ("standard", "minmax"):
        np.testing.assert_allclose(loader(scale=scale)[0], scale_features(X_ref, scale))
        np.testing.assert_allclose(load_dataset(name, scale=scale)[0],
                                   scale_features(X_ref, scale))


def test_load_dataset_dgmm_is_the_raw_simulation():
    X, paths = load_dataset("dgmm")
    X_ref, _, paths_ref, _ = make_dgmm(random_state=0)
    np.testing.assert_array_equal(X, X_ref)
    np.testing.assert_array_equal(paths, paths_ref)
    assert X.shape == (4000, 17) and np.abs(X).max() > 1000
    standardised = make_dgmm(random_state=0, standardize=True)[0]
    np.testing.assert_allclose(load_dataset("dgmm", scale="standard")[0], standardised,
                               atol=1e-10)


def test_loaders_keep_their_python_defaults():
    """bench/, notebooks/ and tests/estimators call load_wine() and load_digits() bare."""
    np.testing.assert_allclose(load_wine()[0], load_wine(scale="standard")[0])
    np.testing.assert_allclose(load_digits()[0], load_digits(scale="none")[0] / 16.0)


def test_scale_features():
    X = np.array([[1.0, 5.0, 2.0], [3.0, 5.0, 4.0], [5.0, 5.0, 9.0]])
    assert SCALES == ("none", "standard", "minmax")
    assert scale_features(X, "none") is X and scale_features(X, None) is X
    standard = scale_features(X, "standard")
    np.testing.assert_allclose(standard.mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(standard.std(0), [1.0, 0.0, 1.0])  # constant column -> 0
    minmax = scale_features(X, "minmax")
    np.testing.assert_allclose(minmax, [[0, 0, 0], [0.5, 0, 2 / 7], [1, 0, 1]])
    assert X[0, 0] == 1.0  # not modified
    with pytest.raises(ValueError, match="scale='unit' is not one of"):
        scale_features(X, "unit")
    with pytest.raises(ValueError, match="scale='max' is not one of"):
        load_dataset("gmm", scale="max")
    assert describe_scale("minmax").startswith("minmax")


def test_load_digits_raw_and_standardized():
    X_raw, _ = load_digits(scale01=False)
    assert X_raw.max() == 16.0 and np.all(X_raw == np.round(X_raw))
    X, _ = load_digits(standardize=True)
    constant = X_raw.std(0) == 0
    assert constant.any()  # the blank border pixels
    np.testing.assert_array_equal(X[:, constant], 0.0)
    np.testing.assert_allclose(X[:, ~constant].std(0), 1.0, rtol=1e-12)
    np.testing.assert_allclose(X.mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(load_digits(standardize=True, scale01=False)[0], X, atol=1e-12)


# --------------------------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------------------------


def _write(tmp_path: Path, text: str, name: str = "data.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_load_csv_with_header_and_label_by_name(tmp_path):
    path = _write(tmp_path, "a,b,label\n1.0,2.5,0\n-3,4e-1,1\n5,6,1\n")
    X, y = load_csv(path, label_column="label")
    np.testing.assert_array_equal(X, [[1.0, 2.5], [-3.0, 0.4], [5.0, 6.0]])
    assert X.dtype == np.float64
    np.testing.assert_array_equal(y, [0, 1, 1])
    assert y.dtype == np.int64


def test_load_csv_without_header(tmp_path):
    path = _write(tmp_path, "1,2,3\n4,5,6\n")
    X, y = load_csv(path)
    np.testing.assert_array_equal(X, [[1, 2, 3], [4, 5, 6]])
    assert y is None


@pytest.mark.parametrize("label_column", [0, -3])
def test_load_csv_label_by_index(tmp_path, label_column):
    path = _write(tmp_path, "2,1.5,7\n0,2.5,8\n")
    X, y = load_csv(path, label_column=label_column)
    np.testing.assert_array_equal(X, [[1.5, 7], [2.5, 8]])
    np.testing.assert_array_equal(y, [2, 0])


def test_load_csv_string_labels_without_header(tmp_path):
    # The label column is not numeric, but it is excluded from header inference.
    path = _write(tmp_path, "1,2,setosa\n3,4,virginica\n")
    X, y = load_csv(path, label_column=-1)
    np.testing.assert_array_equal(X, [[1, 2], [3, 4]])
    np.testing.assert_array_equal(y, ["setosa", "virginica"])


def test_load_csv_float_labels_stay_float(tmp_path):
    _, y = load_csv(_write(tmp_path, "x,t\n1,0.5\n2,1\n"), label_column="t")
    assert y.dtype == np.float64
    np.testing.assert_array_equal(y, [0.5, 1.0])


def test_load_csv_explicit_header_flag_delimiter_and_blank_lines(tmp_path):
    path = _write(tmp_path, "10;20\n\n 1 ; 2 \n3;4\n\n")
    X, _ = load_csv(path, delimiter=";", header=True)  # numeric column names
    np.testing.assert_array_equal(X, [[1, 2], [3, 4]])
    X, _ = load_csv(path, delimiter=";", header=False)
    np.testing.assert_array_equal(X, [[10, 20], [1, 2], [3, 4]])


def test_load_csv_suffix_does_not_matter(tmp_path):
    X, _ = load_csv(_write(tmp_path, "1,2\n3,4\n", name="data.txt"))
    np.testing.assert_array_equal(X, [[1, 2], [3, 4]])


def test_load_csv_missing_file(tmp_path):
    path = tmp_path / "nowhere.csv"
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        load_csv(path)


def test_load_csv_directory(tmp_path):
    with pytest.raises(ValueError, match="not a regular file"):
        load_csv(tmp_path)


@pytest.mark.parametrize("text", ["", "\n\n", " , \n"])
def test_load_csv_empty_file(tmp_path, text):
    with pytest.raises(ValueError, match="is empty"):
        load_csv(_write(tmp_path, text))


def test_load_csv_header_only(tmp_path):
    with pytest.raises(ValueError, match="header row but no data rows"):
        load_csv(_write(tmp_path, "a,b,c\n"))


def test_load_csv_ragged_rows(tmp_path):
    path = _write(tmp_path, "a,b,c\n1,2,3\n4,5\n")
    with pytest.raises(ValueError, match="ragged rows: line 3 has 2 fields but line 1 has 3"):
        load_csv(path)


def test_load_csv_non_numeric_cell(tmp_path):
    path = _write(tmp_path, "a,b\n1,2\n3,oops\n")
    with pytest.raises(ValueError, match=r"line 3, column 1 \('b'\): the cell 'oops' is not a"):
        load_csv(path)


def test_load_csv_empty_cell(tmp_path):
    path = _write(tmp_path, "1,2\n3,\n")
    with pytest.raises(ValueError, match=r"line 2, column 1: the cell '' is empty"):
        load_csv(path)


def test_load_csv_nan_and_inf(tmp_path):
    path = _write(tmp_path, "a,b,c\n1,2,3\n4,nan,6\ninf,8,NaN\n")
    message = r"contains 3 NaN or infinite value\(s\); the first is nan at line 3, column 1.*impute"
    with pytest.raises(ValueError, match=message):
        load_csv(path)


@pytest.mark.parametrize("text, where", [
    ("a,y\n1,0\n2,nan\n3,1\n", "1 missing.*the first is nan at line 3"),
    ("a,y\n1,0\n2,\n3,1\n", "1 empty label cell.*line 3"),
])
def test_load_csv_refuses_missing_labels(tmp_path, text, where):
    with pytest.raises(ValueError, match=f"label_column='y' of .*data.csv.*{where}"):
        load_csv(_write(tmp_path, text), label_column="y")


def test_load_csv_nan_location_accounts_for_label_column(tmp_path):
    path = _write(tmp_path, "0,1,2\n1,3,nan\n")
    with pytest.raises(ValueError, match="contains 1 NaN.*line 2, column 2"):
        load_csv(path, label_column=0)


@pytest.mark.parametrize(
    ("text", "kwargs", "match"),
    [
        ("1,2\n3,4\n", {"label_column": "y"}, "label_column='y' is a name, but .* no header"),
        ("a,b\n3,4\n", {"label_column": "y"}, r"label_column='y' is not a column .*\['a', 'b'\]"),
        ("1,2\n3,4\n", {"label_column": 2}, r"label_column=2 is out of range .*\[-2, 1\]"),
        ("1\n3\n", {"label_column": 0}, "no feature columns besides label_column=0"),
        ("1,2\n", {"label_column": 1.0}, "label_column must be a column name"),
        ("1,2\n", {"header": "yes"}, "header must be 'infer', True or False"),
        ("1,2\n", {"delimiter": ", "}, "delimiter must be a single character"),
    ],
)
def test_load_csv_rejects_bad_arguments(tmp_path, text, kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_csv(_write(tmp_path, text), **kwargs)


# --------------------------------------------------------------------------------------------
# NPY
# --------------------------------------------------------------------------------------------


def test_load_npy_with_and_without_labels(tmp_path):
    data = np.arange(12, dtype=np.int32).reshape(4, 3)
    np.save(tmp_path / "X.npy", data)
    np.save(tmp_path / "y.npy", np.array([0, 1, 1, 0]))
    X, y = load_npy(tmp_path / "X.npy")
    assert X.dtype == np.float64 and y is None
    np.testing.assert_array_equal(X, data)
    X, y = load_npy(str(tmp_path / "X.npy"), labels_path=tmp_path / "y.npy")
    np.testing.assert_array_equal(y, [0, 1, 1, 0])


def test_load_npy_refuses_missing_labels(tmp_path):
    np.save(tmp_path / "X.npy", np.ones((4, 2)))
    np.save(tmp_path / "y.npy", np.array([0.0, np.nan, 1.0, np.inf]))
    with pytest.raises(ValueError, match=r"labels file '.*y\.npy' holds 2 missing \(NaN or "
                       r"infinite\) label\(s\) of 4; the first is nan at row 1"):
        load_npy(tmp_path / "X.npy", labels_path=tmp_path / "y.npy")


def test_load_npy_column_labels_are_flattened(tmp_path):
    np.save(tmp_path / "X.npy", np.ones((3, 2)))
    np.save(tmp_path / "y.npy", np.array([[1], [2], [3]]))
    _, y = load_npy(tmp_path / "X.npy", labels_path=tmp_path / "y.npy")
    np.testing.assert_array_equal(y, [1, 2, 3])


def test_load_npy_suffix_does_not_matter(tmp_path):
    path = tmp_path / "data.bin"
    with path.open("wb") as handle:
        np.save(handle, np.eye(2))
    np.testing.assert_array_equal(load_npy(path)[0], np.eye(2))


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.arange(5.0), r"shape \(5,\) \(1-D\).*reshape\(-1, 1\)"),
        (np.zeros((2, 3, 4)), r"shape \(2, 3, 4\) \(3-D\).*reshape\(len\(X\), -1\)"),
        (np.array([["a", "b"]]), "dtype <U1; expected real numbers"),
        (np.array([[1 + 2j]]), "expected real numbers"),
        (np.zeros((0, 3)), "empty array"),
        (np.array([[1.0, np.inf], [np.nan, 2.0]]), r"2 NaN .* first is inf at row 0, column 1"),
    ],
)
def test_load_npy_rejects_bad_arrays(tmp_path, array, match):
    np.save(tmp_path / "X.npy", array)
    with pytest.raises(ValueError, match=match):
        load_npy(tmp_path / "X.npy")


def test_load_npy_missing_and_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.npy"):
        load_npy(tmp_path / "absent.npy")
    (tmp_path / "text.npy").write_text("1,2\n3,4\n")
    with pytest.raises(ValueError, match="could not be read as a .npy array"):
        load_npy(tmp_path / "text.npy")
    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(ValueError, match="could not be read as a .npy array"):
        load_npy(tmp_path / "empty.npy")
    np.save(tmp_path / "objects.npy", np.array([[1, None]], dtype=object))
    with pytest.raises(ValueError, match="could not be read as a .npy array"):
        load_npy(tmp_path / "objects.npy")
    np.savez(tmp_path / "archive.npz", X=np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"\.npz archive with arrays \['X'\]"):
        load_npy(tmp_path / "archive.npz")


def test_load_npy_labels_must_match_rows(tmp_path):
    np.save(tmp_path / "X.npy", np.ones((3, 2)))
    np.save(tmp_path / "y.npy", np.arange(4))
    with pytest.raises(ValueError, match=r"shape \(4,\).*3 rows; expected shape \(3,\)"):
        load_npy(tmp_path / "X.npy", labels_path=tmp_path / "y.npy")
    with pytest.raises(FileNotFoundError, match="nolabels.npy"):
        load_npy(tmp_path / "X.npy", labels_path=tmp_path / "nolabels.npy")


# --------------------------------------------------------------------------------------------
# load_dataset
# --------------------------------------------------------------------------------------------


def test_builtin_dataset_names():
    assert BUILTIN_DATASETS == ("gmm", "synthetic", "wine", "digits", "iris", "breast_cancer",
                                "dgmm", "pinwheel")


def test_load_dataset_pinwheel_is_the_seeds_five_arms():
    from ppl_mixtures.datasets import make_pinwheel

    X, y = load_dataset("pinwheel")
    assert X.shape == (2000, 2) and sorted(np.unique(y)) == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(X, make_pinwheel(400, random_state=0)[0])


@pytest.mark.parametrize("name", ["gmm", "synthetic", "GMM"])
def test_load_dataset_synthetic_defaults(name):
    X, y = load_dataset(name)
    X_ref, y_ref = make_gmm(n_samples=1500, n_components=3, n_features=2, random_state=0)
    np.testing.assert_array_equal(X, X_ref)
    np.testing.assert_array_equal(y, y_ref)


def test_load_dataset_passes_keywords():
    X, y = load_dataset("gmm", n_samples=40, n_features=5, covariance_type="diag")
    assert X.shape == (40, 5) and y.shape == (40,)
    X, _ = load_dataset("wine", standardize=False)
    np.testing.assert_array_equal(X, load_wine(standardize=False)[0])
    X, y = load_dataset("digits")
    assert X.shape == (1797, 64) and X.max() == 16.0  # raw grey levels


def test_load_dataset_from_files(tmp_path):
    csv_path = _write(tmp_path, "f1,f2,c\n1,2,0\n3,4,1\n")
    X, y = load_dataset(str(csv_path), label_column="c")
    np.testing.assert_array_equal(X, [[1, 2], [3, 4]])
    np.testing.assert_array_equal(y, [0, 1])
    with (tmp_path / "X.NPY").open("wb") as handle:  # np.save(path) would append ".npy"
        np.save(handle, np.ones((2, 2)))
    X, y = load_dataset(tmp_path / "X.NPY")
    assert X.shape == (2, 2) and y is None


def test_load_dataset_errors(tmp_path):
    with pytest.raises(
        ValueError, match=r"Unknown data set 'irises'.*'wine'.*existing \.csv or \.npy"
    ):
        load_dataset("irises")
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        load_dataset(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="Unknown data set"):
        load_dataset(_write(tmp_path, "1,2\n", name="data.tsv"))
    with pytest.raises(ValueError, match=r"make_gmm\(\.\.\., return_params=True\)"):
        load_dataset("gmm", return_params=True)
