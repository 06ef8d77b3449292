"""Model search: the true K and covariance type come back where BIC should find them."""

from __future__ import annotations

import numpy as np
import pytest

from ppl_mixtures import MixtureOfFactorAnalyzers
from ppl_mixtures.datasets import make_gmm
from ppl_mixtures.selection import select_model


def _elongated_clusters(seed):
    """Three well separated clusters, each stretched along its own direction (full)."""
    rng = np.random.default_rng(seed)
    parts = []
    for center, angle in zip([(0, 0, 0), (12, 0, 4), (0, 12, -4)], [0.3, 1.2, 2.4], strict=True):
        c, s = np.cos(angle), np.sin(angle)
        rotation = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
        scales = np.array([3.0, 0.3, 0.6])
        parts.append(center + (rng.normal(size=(200, 3)) * scales) @ rotation.T)
    return np.concatenate(parts)


@pytest.mark.parametrize("covariance_type", ["spherical", "full"])
def test_bic_recovers_k_and_the_covariance_type(covariance_type):
    if covariance_type == "spherical":
        X, _ = make_gmm(n_samples=600, n_components=3, n_features=3, separation=5.0,
                        covariance_type="spherical", random_state=4)
    else:
        X = _elongated_clusters(4)
    search = select_model(X, n_components=range(1, 6),
                          covariance_types=("spherical", "diag", "full"), device="cpu")
    assert search.best_params_ == {"n_components": 3, "covariance_type": covariance_type}
    table = search.table()
    assert len(table) == 15 and table.loc[0, "selected"] and table["selected"].sum() == 1
    assert table["value"].is_monotonic_increasing
    assert search.best_estimator_.n_components == 3
    figure = search.plot()
    assert len(figure.axes[0].lines) == 3


def test_candidates_that_cannot_be_fitted_get_their_error():
    X, _ = make_gmm(n_samples=4, n_components=2, n_features=2, random_state=0)
    search = select_model(X, n_components=[1, 2, 8], covariance_types=["diag"], device="cpu")
    errors = search.table().set_index("n_components")["error"]
    assert errors[8].startswith("ValueError: n_samples=4 should be >= n_components=8")
    assert search.rows[0]["error"] is None and search.best_params_["n_components"] in (1, 2)


def test_other_templates_and_bad_arguments():
    X, _ = make_gmm(n_samples=300, n_components=2, n_features=4, separation=6.0,
                    random_state=1)
    search = select_model(X, n_components=[1, 2, 3], covariance_types=None, criterion="icl",
                          estimator=MixtureOfFactorAnalyzers(n_factors=1, progress=False,
                                                             device="cpu", random_state=0))
    assert search.best_params_ == {"n_components": 2}
    assert list(search.table()["covariance_type"].unique()) == [None]
    with pytest.raises(ValueError, match="criterion='cv'"):
        select_model(X, criterion="cv")
    with pytest.raises(ValueError, match="covariance_types=\\['banana'\\]"):
        select_model(X, covariance_types=["banana"])
    with pytest.raises(ValueError, match="n_components=\\[\\]"):
        select_model(X, n_components=[])
    assert np.isfinite(search.table()["value"]).all()
