"""ppl-mixtures: mixture models in Pyro with EM, SVI and more over one generative code.

The public API is imported lazily so that ``import ppl_mixtures`` stays light.
"""

from ppl_mixtures._version import __version__

_ESTIMATORS = ("BayesianGaussianMixture", "DeepGaussianMixture", "GMVAE", "GaussianMixture", "MixtureOfFactorAnalyzers",
               "load_estimator")
__all__ = [*_ESTIMATORS, "__version__", "select_model"]


def __getattr__(name: str):
    if name in _ESTIMATORS:
        from ppl_mixtures import estimators

        return getattr(estimators, name)
    if name == "select_model":
        from ppl_mixtures.selection import select_model

        return select_model
    raise AttributeError(f"module 'ppl_mixtures' has no attribute {name!r}")
