"""The generators the missing-value tests and ``bench/missing.py`` share: ``mask_missing`` (entries
removed completely at random) and ``make_correlated_gmm`` (correlated components)."""

import numpy as np
import pytest

from ppl_mixtures.datasets import make_correlated_gmm, mask_missing


@pytest.fixture(scope="module")
def X():
    return np.random.default_rng(0).normal(size=(2000, 5))


@pytest.mark.parametrize("rate", [0.0, 0.05, 0.3, 0.9])
def test_realised_rate_is_within_binomial_noise(X, rate):
    holes = mask_missing(X, rate, random_state=1)
    # 5 binomial standard deviations of the fraction of 10,000 entries
    assert abs(np.isnan(holes).mean() - rate) <= 5 * np.sqrt(rate * (1 - rate) / X.size)


def test_observed_entries_are_kept_and_x_is_not_changed(X):
    before = X.copy()
    holes = mask_missing(X, 0.3, random_state=1)
    observed = ~np.isnan(holes)
    np.testing.assert_array_equal(holes[observed], X[observed])
    np.testing.assert_array_equal(X, before)
    assert holes.shape == X.shape and holes.dtype == X.dtype


def test_missingness_is_independent_of_the_values(X):
    """MCAR: the rate is the same among the entries above and below their column's median."""
    missing = np.isnan(mask_missing(X, 0.3, random_state=2))
    high = X > np.median(X, axis=0)
    assert abs(missing[high].mean() - missing[~high].mean()) < 0.03  # 3.3 standard deviations; seed 2: -0.0002


def test_same_seed_same_holes_and_a_generator_is_drawn_in_place(X):
    first = np.isnan(mask_missing(X, 0.2, random_state=7))
    np.testing.assert_array_equal(first, np.isnan(mask_missing(X, 0.2, random_state=7)))
    assert not np.array_equal(first, np.isnan(mask_missing(X, 0.2, random_state=8)))
    rng = np.random.default_rng(7)
    np.testing.assert_array_equal(first, np.isnan(mask_missing(X, 0.2, random_state=rng)))
    # the generator moved on: a second call draws other holes
    assert not np.array_equal(first, np.isnan(mask_missing(X, 0.2, random_state=rng)))


def test_keep_observed_leaves_no_row_empty():
    X = np.ones((3000, 2))
    plain = np.isnan(mask_missing(X, 0.5, random_state=3))
    kept = np.isnan(mask_missing(X, 0.5, random_state=3, keep_observed=True))
    empty = plain.all(axis=1)
    assert empty.sum() > 600  # about a quarter of the rows are drawn empty
    assert not kept.all(axis=1).any()
    np.testing.assert_array_equal(kept[~empty], plain[~empty])  # other rows untouched
    np.testing.assert_array_equal(kept[empty], [[False, True]] * int(empty.sum()))


def test_integer_data_become_float64():
    holes = mask_missing(np.arange(12).reshape(6, 2), 0.5, random_state=0)
    assert holes.dtype == np.float64 and np.isnan(holes).any()


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, float("nan"), True, "0.2", None])
def test_bad_rate_is_refused_with_the_range_named(X, rate):
    with pytest.raises(ValueError, match=r"rate must be a number in \[0, 1\)"):
        mask_missing(X, rate)


@pytest.mark.parametrize("bad", [np.ones(5), np.ones((2, 2, 2)), np.ones((0, 3)),
                                 [["a", "b"]]])
def test_bad_x_is_refused(bad):
    with pytest.raises(ValueError, match="X "):
        mask_missing(bad, 0.1)


def test_bad_random_state_is_refused(X):
    with pytest.raises(ValueError, match="random_state"):
        mask_missing(X, 0.1, random_state="seed")


def test_correlated_gmm_shapes_seeds_and_correlation():
    X, y = make_correlated_gmm(3000, 2, 3, separation=1.0, random_state=4)
    assert X.shape == (3000, 3) and X.dtype == np.float64
    assert y.shape == (3000,) and y.dtype == np.int64 and set(np.unique(y)) == {0, 1}
    again, _ = make_correlated_gmm(3000, 2, 3, separation=1.0, random_state=4)
    np.testing.assert_array_equal(X, again)
    for k in range(2):
        # eigenvalues log-uniform in [0.05, 2]: within [0.05, 2] up to sampling noise
        eigenvalues = np.linalg.eigvalsh(np.cov(X[y == k].T))
        assert 0.04 < eigenvalues.min() and eigenvalues.max() < 2.2


@pytest.mark.parametrize("separation", [-1.0, float("inf"), "2", True])
def test_correlated_gmm_refuses_a_bad_separation(separation):
    with pytest.raises(ValueError, match="separation"):
        make_correlated_gmm(10, 2, 2, separation=separation)
