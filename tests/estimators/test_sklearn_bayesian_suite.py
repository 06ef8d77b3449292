"""scikit-learn's own Bayesian mixture tests, run against our BayesianGaussianMixture.

The test functions of ``sklearn/mixture/tests/test_bayesian_mixture.py`` (installed with
scikit-learn) are collected here as they are; a fixture swaps the ``BayesianGaussianMixture``
name of their module for ours while each runs (as ``test_sklearn_suite.py`` does for the
GaussianMixture). Those that test scikit-learn's private helpers are skipped with the reason.
Where only the wording of an error differs (ours name the argument and the fix), the type is
still checked.
"""

from __future__ import annotations

import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks
from sklearn_suites import AnyWording, adopt_tests

from ppl_mixtures.estimators.bayesian import BayesianGaussianMixture

suite = pytest.importorskip("sklearn.mixture.tests.test_bayesian_mixture")

PRIVATE = "tests scikit-learn's private helpers, not the estimator"

#: Test function -> why it does not apply to our BayesianGaussianMixture.
SKIPPED: dict[str, str] = {
    "test_log_dirichlet_norm": PRIVATE + " (_log_dirichlet_norm)",
    "test_log_wishart_norm": PRIVATE + " (_log_wishart_norm)",
    "test_compare_covar_type": PRIVATE + " (_check_parameters, _initialize_parameters)",
}

#: Slow (hundreds of warm-started one-iteration fits, ~30 s on 2 cores): run with ``-m slow``.
#: The bound's monotonicity is also checked, fast, in tests/models/test_bayesian_gmm_model.py.
SLOW = {"test_monotonic_likelihood"}

#: Tests whose ``pytest.raises`` check only the type: our messages differ.
ANY_WORDING = {
    "test_bayesian_mixture_precisions_prior_initialisation",  # names degrees_of_freedom_prior
    "test_bayesian_mixture_check_is_fitted",  # "... is not fitted yet; call fit(X) first."
    "test_bayesian_mixture_predict_predict_proba",  # NotFittedError
}


def _quiet(**kwargs):
    """Ours, without progress bars (the suite builds it with scikit-learn's arguments)."""
    kwargs.setdefault("progress", False)
    return BayesianGaussianMixture(**kwargs)


@pytest.fixture(autouse=True)
def _ours_in_their_module(request, monkeypatch):
    monkeypatch.setattr(suite, "BayesianGaussianMixture", _quiet)
    if request.function.__name__ in ANY_WORDING:
        monkeypatch.setattr(suite, "pytest", AnyWording())


adopt_tests(globals(), suite, SKIPPED, SLOW)



@parametrize_with_checks([BayesianGaussianMixture(progress=False, random_state=0)])
def test_sklearn_estimator_checks(estimator, check):
    """scikit-learn's estimator checks (``check_estimator``), every one of them (measured:
    47 pass, one skipped by scikit-learn itself without ``SCIPY_ARRAY_API``)."""
    check(estimator)
