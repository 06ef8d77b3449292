"""scikit-learn's own mixture tests, run against our GaussianMixture.

The test functions of ``sklearn/mixture/tests/test_gaussian_mixture.py`` and
``test_mixture.py`` (installed with scikit-learn) are collected here as they are; a fixture
swaps the ``GaussianMixture`` name of their module for ours while each runs. Those that test
scikit-learn's private helpers, or behaviour we deliberately differ on (README, "Where we
differ from scikit-learn"), are skipped with the reason. Where only the wording of an error or
warning differs (ours name the argument and the fix), the type is still checked.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn_suites import AnyWording, adopt_tests

from ppl_mixtures import GaussianMixture

suite = pytest.importorskip("sklearn.mixture.tests.test_gaussian_mixture")
mixture_suite = pytest.importorskip("sklearn.mixture.tests.test_mixture")

PRIVATE = "tests scikit-learn's private helpers, not the estimator"
ARRAY_API = "array API namespaces: we take NumPy arrays (and torch tensors through fit)"

#: Test function -> why it does not apply to our GaussianMixture.
SKIPPED: dict[str, str] = {
    "test_suffstat_sk_full": PRIVATE,
    "test_suffstat_sk_tied": PRIVATE,
    "test_suffstat_sk_diag": PRIVATE,
    "test_gaussian_suffstat_sk_spherical": PRIVATE,
    "test_compute_log_det_cholesky": PRIVATE,
    "test_gaussian_mixture_log_probabilities": PRIVATE,
    "test_gaussian_mixture_precisions_init": PRIVATE + " (_set_parameters, _initialize)",
    "test_gaussian_mixture_all_init_does_not_estimate_gaussian_parameters": (
        PRIVATE + " (counts calls of _estimate_gaussian_parameters)"),
    "test_gaussian_mixture_array_api_compliance": ARRAY_API,
    "test_gaussian_mixture_raises_where_array_api_not_implemented": ARRAY_API,
    # deliberate differences (README, "Where we differ from scikit-learn")
    "test_init": (
        "n_init keeps the start whose fitted parameters score best (one more E-step); "
        "scikit-learn keeps the best lower_bound_ (the value before the last M-step), "
        "which this test compares"),
    "test_gaussian_mixture_setting_best_params": (
        "two components hold one point each after the first E-step, so their variance is "
        "zero: with reg_covar=0 we raise the ValueError of collapsed components, where "
        "scikit-learn's rounding leaves a tiny positive variance and it carries on"),
    "test_gaussian_mixture_precisions_init_diag": (
        "assumes our k-means start reproduces sklearn.cluster.KMeans(random_state=0), "
        "component order included; ours is a torch k-means seeded by our own generator"),
}

#: Tests whose ``pytest.raises``/``pytest.warns`` check only the type: our messages differ.
ANY_WORDING = {
    "test_check_weights",  # "weights_init must be non-negative and sum to 1"
    "test_check_means",  # "means_init has shape ...; expected ..."
    "test_check_precisions",  # "precisions_init has shape ...", "... must be positive"
    "test_gaussian_mixture_predict_predict_proba",  # NotFittedError: "... call fit(X) first"
    "test_score",  # NotFittedError
    "test_score_samples",  # NotFittedError
    "test_sample",  # NotFittedError; "n_samples=0 must be an integer >= 1"
    "test_gaussian_mixture_fit_convergence_warning",  # names max_iter and tol
    "test_regularisation",  # names the singular components and reg_covar
    "test_mixture_n_components_greater_than_n_samples_error",
}


@pytest.fixture(params=[np.float64])
def global_dtype(request):
    """scikit-learn's fixture of the same name (float64 unless asked otherwise)."""
    return request.param


@pytest.fixture
def global_random_seed():
    """scikit-learn's fixture of the same name, at its default seed."""
    return 42


@pytest.fixture(autouse=True)
def _ours_in_their_module(request, monkeypatch):
    monkeypatch.setattr(suite, "GaussianMixture", GaussianMixture)
    if request.function.__name__ in ANY_WORDING:
        monkeypatch.setattr(suite, "pytest", AnyWording())


adopt_tests(globals(), suite, SKIPPED)


@pytest.mark.parametrize("name", [n for n in vars(mixture_suite) if n.startswith("test_")])
def test_mixture_module(name, monkeypatch):
    """``test_mixture.py`` parametrises over instances made at import: pass ours instead."""
    if name in ANY_WORDING:
        monkeypatch.setattr(mixture_suite, "pytest", AnyWording())
    getattr(mixture_suite, name)(GaussianMixture())
