"""Tests for ppl_mixtures.metrics: label agreement scores and information criteria."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import sklearn.metrics
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

from ppl_mixtures.metrics import (
    adjusted_rand_score,
    aic,
    bic,
    cluster_accuracy,
    icl,
    majority_cluster_accuracy,
    n_parameters,
    normalized_mutual_info_score,
)

SKLEARN_COVARIANCE_TYPES = ("spherical", "diag", "tied", "full")


def _brute_force_accuracy(y_true: list[int], y_pred: list[int]) -> float:
    """Best accuracy over every one-to-one map of cluster ids to class ids (or to nothing)."""
    clusters, classes = sorted(set(y_pred)), sorted(set(y_true))
    size = max(len(clusters), len(classes))
    targets = classes + [None] * (size - len(classes))  # None: an unmatched cluster
    best = 0
    for assignment in itertools.permutations(targets, len(clusters)):
        mapping = dict(zip(clusters, assignment, strict=True))
        best = max(best, sum(mapping[p] == t for t, p in zip(y_true, y_pred, strict=True)))
    return best / len(y_true)


def _brute_force_majority(y_true: list[int], y_pred: list[int]) -> float:
    correct = 0
    for cluster in set(y_pred):
        members = [t for t, p in zip(y_true, y_pred, strict=True) if p == cluster]
        correct += max(members.count(label) for label in set(members))
    return correct / len(y_true)


_label_pairs = st.integers(1, 12).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 3), min_size=n, max_size=n),
        st.lists(st.integers(0, 4), min_size=n, max_size=n),
    )
)


@settings(max_examples=150, deadline=None)
@given(_label_pairs)
def test_cluster_accuracy_matches_brute_force(labels):
    y_true, y_pred = labels
    assert cluster_accuracy(y_true, y_pred) == pytest.approx(_brute_force_accuracy(y_true, y_pred))
    majority = majority_cluster_accuracy(y_true, y_pred)
    assert majority == pytest.approx(_brute_force_majority(y_true, y_pred))
    assert majority >= cluster_accuracy(y_true, y_pred) - 1e-12


def test_cluster_accuracy_is_invariant_to_relabelling():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 5, size=200)
    permutation = rng.permutation(5) + 10  # also shift the ids
    assert cluster_accuracy(y_true, permutation[y_true]) == 1.0
    names = np.array(["a", "b", "c", "d", "e"])
    assert cluster_accuracy(names[y_true], permutation[y_true]) == 1.0
    assert majority_cluster_accuracy(y_true, permutation[y_true]) == 1.0


def test_unequal_numbers_of_clusters_and_classes():
    y_true = [0, 0, 1, 1]
    over_split = [0, 1, 2, 3]
    assert cluster_accuracy(y_true, over_split) == 0.5  # two clusters stay unmatched
    assert majority_cluster_accuracy(y_true, over_split) == 1.0  # many-to-one forgives it
    merged = [0, 0, 0, 0]
    assert cluster_accuracy(y_true, merged) == 0.5
    assert majority_cluster_accuracy(y_true, merged) == 0.5


def test_cluster_accuracy_hand_example():
    y_true = [0, 0, 0, 1, 1, 1, 2, 2]
    y_pred = [1, 1, 0, 0, 0, 2, 2, 2]
    # Best matching: 1->0 (2), 0->1 (2), 2->2 (2): 6 of 8.
    assert cluster_accuracy(y_true, y_pred) == 0.75


def test_accuracies_accept_torch_tensors():
    y_true = torch.tensor([0, 0, 1, 1, 2])
    y_pred = torch.tensor([2, 2, 0, 0, 1])
    assert cluster_accuracy(y_true, y_pred) == 1.0
    assert majority_cluster_accuracy(y_true, y_pred) == 1.0


@pytest.mark.parametrize("score", [cluster_accuracy, majority_cluster_accuracy])
@pytest.mark.parametrize(
    ("y_true", "y_pred", "match"),
    [
        ([0, 1, 1], [0, 1], "same length, got 3 and 2"),
        ([[0, 1]], [[0, 1]], "must be 1-D label arrays"),
        ([], [], "are empty"),
    ],
)
def test_accuracies_reject_bad_labels(score, y_true, y_pred, match):
    with pytest.raises(ValueError, match=match):
        score(y_true, y_pred)


def test_ari_and_nmi_are_scikit_learns():
    assert adjusted_rand_score is sklearn.metrics.adjusted_rand_score
    assert normalized_mutual_info_score is sklearn.metrics.normalized_mutual_info_score
    assert adjusted_rand_score([0, 0, 1, 1], [1, 1, 0, 0]) == 1.0


# --------------------------------------------------------------------------------------------
# Information criteria
# --------------------------------------------------------------------------------------------


def _fitted_sklearn_gmm(n_components: int, n_features: int, covariance_type: str):
    X = np.random.default_rng(n_components * 10 + n_features).normal(size=(40, n_features))
    X[:20] += 4.0
    gm = GaussianMixture(
        n_components=n_components, covariance_type=covariance_type, max_iter=5, random_state=0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm.fit(X)
    return gm, X


@pytest.mark.parametrize("covariance_type", SKLEARN_COVARIANCE_TYPES)
@pytest.mark.parametrize(("n_components", "n_features"), [(1, 1), (2, 3), (3, 2)])
def test_n_parameters_matches_scikit_learn(covariance_type, n_components, n_features):
    gm, _ = _fitted_sklearn_gmm(n_components, n_features, covariance_type)
    assert n_parameters(n_components, n_features, covariance_type) == gm._n_parameters()


@pytest.mark.parametrize(("n_components", "n_features"), [(1, 1), (2, 3), (5, 4)])
def test_n_parameters_tied_diag(n_components, n_features):
    expected = (n_components - 1) + n_components * n_features + n_features
    assert n_parameters(n_components, n_features, "tied_diag") == expected


def test_n_parameters_orders_nested_structures():
    count = {name: n_parameters(3, 4, name) for name in ("spherical", "diag", "tied_diag", "tied")}
    full = n_parameters(3, 4, "full")
    assert count["spherical"] < count["diag"] < full
    assert count["tied_diag"] < count["diag"] and count["tied_diag"] < count["tied"] < full


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((2, 2, "banded"), r"covariance_type must be one of .*'tied_diag'.*got 'banded'"),
        ((0, 2, "full"), "n_components must be a positive integer"),
        ((2, 1.5, "full"), "n_features must be a positive integer"),
    ],
)
def test_n_parameters_rejects_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        n_parameters(*args)


@pytest.mark.parametrize("covariance_type", SKLEARN_COVARIANCE_TYPES)
def test_bic_and_aic_match_scikit_learn(covariance_type):
    gm, X = _fitted_sklearn_gmm(2, 3, covariance_type)
    n_samples = X.shape[0]
    log_likelihood = gm.score(X) * n_samples
    n_params = n_parameters(2, 3, covariance_type)
    assert bic(log_likelihood, n_params, n_samples) == pytest.approx(gm.bic(X), rel=1e-12)
    assert aic(log_likelihood, n_params, n_samples) == pytest.approx(gm.aic(X), rel=1e-12)
    assert aic(log_likelihood, n_params) == aic(log_likelihood, n_params, n_samples)


def test_bic_and_aic_formulas():
    assert bic(-10.0, 3, 100) == pytest.approx(20.0 + 3 * math.log(100))
    assert aic(-10.0, 3, 100) == pytest.approx(26.0)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((float("nan"), 3, 10), "log_likelihood_total must be finite"),
        ((-1.0, -1, 10), "n_params must be a non-negative integer"),
        ((-1.0, 2.5, 10), "n_params must be a non-negative integer"),
        ((-1.0, 3, 0), "n_samples must be a positive integer"),
    ],
)
@pytest.mark.parametrize("criterion", [bic, aic])
def test_criteria_reject_bad_arguments(criterion, args, match):
    with pytest.raises(ValueError, match=match):
        criterion(*args)


def test_icl_hand_computed():
    responsibilities = np.array([[1.0, 0.0], [0.5, 0.5], [0.25, 0.75]])
    entropy = 0.0 + math.log(2.0) - (0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    expected = 20.0 + 3 * math.log(3) + 2 * entropy
    assert icl(-10.0, 3, 3, responsibilities) == pytest.approx(expected, rel=1e-14)
    assert icl(-10.0, 3, 3, torch.tensor(responsibilities)) == pytest.approx(expected, rel=1e-14)
    assert icl(-10.0, 3, 3, responsibilities.tolist()) == pytest.approx(expected, rel=1e-14)


def test_icl_equals_bic_for_hard_assignments_and_exceeds_it_otherwise():
    hard = np.eye(3)[[0, 2, 1, 1]]
    assert icl(-5.0, 4, 4, hard) == bic(-5.0, 4, 4)
    soft = np.full((4, 3), 1 / 3)
    assert icl(-5.0, 4, 4, soft) == pytest.approx(bic(-5.0, 4, 4) + 2 * 4 * math.log(3))


def test_icl_accepts_a_tensor_that_requires_grad():
    responsibilities = torch.softmax(torch.randn(5, 3), dim=-1).requires_grad_()
    assert math.isfinite(icl(-1.0, 2, 5, responsibilities))


@pytest.mark.parametrize(
    ("responsibilities", "match"),
    [
        (np.full(3, 1 / 3), r"must be 2-D .* got shape \(3,\)"),
        (np.full((2, 2), 0.5), "responsibilities have 2 rows but n_samples=3"),
        (np.array([[0.5, 0.4], [1.0, 0.0], [0.0, 1.0]]), "row 0 sums to 0.9"),
        (np.array([[1.5, -0.5], [1.0, 0.0], [0.0, 1.0]]), "non-negative"),
        (np.array([[np.nan, 1.0], [1.0, 0.0], [0.0, 1.0]]), "finite"),
    ],
)
def test_icl_rejects_bad_responsibilities(responsibilities, match):
    with pytest.raises(ValueError, match=match):
        icl(-1.0, 2, 3, responsibilities)
