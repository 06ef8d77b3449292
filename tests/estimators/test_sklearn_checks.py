"""scikit-learn's own estimator checks on GaussianMixture (all apply; none is expected to fail)."""

from sklearn.utils.estimator_checks import parametrize_with_checks

from ppl_mixtures import GaussianMixture


@parametrize_with_checks([GaussianMixture(progress=False, random_state=0)])
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)
