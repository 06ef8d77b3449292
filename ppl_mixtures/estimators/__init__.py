"""scikit-learn style estimators over the zoo's Pyro models, one file per estimator.

:class:`GaussianMixture` (``gaussian.py``), :class:`MixtureOfFactorAnalyzers`
(``factor_analyzers.py``), :class:`DeepGaussianMixture` (``deep_gaussian.py``) and
:class:`GMVAE` (``gmvae.py``) share one base (``_base.py``): declarative argument checks,
data sources (a matrix, a stream of batches, a distributed shard), scoring, sampling and the
safe file format. :func:`load_estimator` reads any of them back.
"""

from __future__ import annotations

import os

from ppl_mixtures import io, registry
from ppl_mixtures.estimators._base import MixtureEstimator
from ppl_mixtures.estimators.bayesian import BayesianGaussianMixture
from ppl_mixtures.estimators.deep_gaussian import DeepGaussianMixture
from ppl_mixtures.estimators.factor_analyzers import MixtureOfFactorAnalyzers
from ppl_mixtures.estimators.gaussian import GaussianMixture
from ppl_mixtures.estimators.gmvae import GMVAE

#: Every estimator of :data:`ppl_mixtures.registry.FAMILIES`, in the registry's order.
ESTIMATORS: tuple[type[MixtureEstimator], ...] = tuple(
    family.estimator_class() for family in registry.FAMILIES.values()
)


def load_estimator(path: str | os.PathLike[str], device: str = "auto") -> MixtureEstimator:
    """Read any estimator written by ``save``, whatever its class; nothing in it is executed.

    Parameters
    ----------
    path : str or path-like
    device : str, default "auto"
        Where the fitted tensors go.

    Returns
    -------
    GaussianMixture, MixtureOfFactorAnalyzers, DeepGaussianMixture or GMVAE

    Raises
    ------
    ppl_mixtures.io.FileFormatError
        A pickle (the format before 0.2), a damaged or truncated file, another format
        version, or a class this version does not know; the message names the file.
    """
    content, _ = io.read(path, "estimator")
    classes = {family.estimator_class().__name__: family.estimator_class()
               for family in registry.FAMILIES.values()}
    name = content.get("class")
    if name not in classes:
        raise io.FileFormatError(f"{os.fspath(path)} holds a {name!r}, which this version of "
                                 f"ppl-mixtures does not know (it knows {sorted(classes)})")
    return classes[name]._from_content(content, device)


__all__ = ["GMVAE", "BayesianGaussianMixture", "DeepGaussianMixture", "GaussianMixture", "MixtureOfFactorAnalyzers",
           "MixtureEstimator", "load_estimator"]
