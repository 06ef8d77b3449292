"""scikit-learn's own estimator checks (all apply; none is expected to fail).

The GMVAE runs them as a transformer (``transform`` gives the encoder's means) with its
float32 default, and its ``score_samples`` uses common random numbers, so it is deterministic
and invariant to the order and subsets of the rows, as the checks demand.
"""

from sklearn.utils.estimator_checks import parametrize_with_checks

from ppl_mixtures import GMVAE, GaussianMixture, MixtureOfFactorAnalyzers


@parametrize_with_checks([
    GaussianMixture(progress=False, random_state=0),
    MixtureOfFactorAnalyzers(2, 1, max_iter=20, progress=False, random_state=0),
    GMVAE(2, max_iter=1, batch_size=16, latent_dim=2, w_dim=2, hidden_dims=(8,),
          prior_hidden_dims=(8,), progress=False, device="cpu", random_state=0),
])
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)
