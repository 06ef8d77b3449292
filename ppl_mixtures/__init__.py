"""ppl-mixtures: mixture models in Pyro with EM, SVI and more over one generative code.

The public API is imported lazily so that ``import ppl_mixtures`` stays light.
"""

from ppl_mixtures._version import __version__

__all__ = ["GaussianMixture", "__version__"]


def __getattr__(name: str):
    if name == "GaussianMixture":
        from ppl_mixtures.estimators import GaussianMixture

        return GaussianMixture
    raise AttributeError(f"module 'ppl_mixtures' has no attribute {name!r}")
