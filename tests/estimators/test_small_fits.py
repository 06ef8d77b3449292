"""The shortcuts that keep a small fit's set-up cheap change no result and no check.

A plain float array skips scikit-learn's ``validate_data`` (same array, same
``n_features_in_``, same errors for anything else); an EM fit builds its priors only when
``model_`` is read (the same priors as an eager build); the deferred ``guide_`` keeps one
copied row, not the training data; the argument checks accept and refuse as before.
"""

from __future__ import annotations

import gc
import warnings
import weakref

import numpy as np
import pandas as pd
import pyro.distributions as dist
import pytest
import torch

from ppl_mixtures import GaussianMixture
from ppl_mixtures.estimators._sources import DataSource
from ppl_mixtures.estimators._validation import Integer, Options, Real


def blobs(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(m, 0.5, (40, 3)) for m in (0.0, 3.0, 6.0)])


def small(**kwargs) -> GaussianMixture:
    kwargs = {"n_components": 3, "random_state": 0, "progress": False, "device": "cpu",
              **kwargs}
    return GaussianMixture(**kwargs)


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_plain_array_fit_equals_the_validated_list_fit(covariance_type):
    X = blobs()
    fast = small(covariance_type=covariance_type).fit(X)
    slow = small(covariance_type=covariance_type).fit(X.tolist())  # through validate_data
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        np.testing.assert_array_equal(getattr(fast, name), getattr(slow, name))
    assert fast.n_features_in_ == slow.n_features_in_ == 3
    assert fast.lower_bound_ == slow.lower_bound_
    np.testing.assert_array_equal(fast.predict_proba(X), slow.predict_proba(X.tolist()))


def test_float32_and_strided_arrays_take_the_same_path_as_before():
    X = blobs()
    est = small(covariance_type="diag").fit(X.astype(np.float32))
    assert est.params_.means.dtype == torch.float32
    strided = np.asfortranarray(np.repeat(X, 2, axis=1))[:, ::2]  # a non-contiguous view
    a = small(covariance_type="diag").fit(strided)
    b = small(covariance_type="diag").fit(np.ascontiguousarray(strided))
    # the view is used as it is (as validate_data hands it back): equal up to the order of
    # the sums over its strided memory
    np.testing.assert_allclose(a.means_, b.means_, rtol=1e-12)


def test_non_finite_and_mismatched_arrays_get_scikit_learns_errors():
    X = blobs()
    bad = X.copy()
    bad[3, 1] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        small().fit(bad)
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="missing='marginalize'"):
        small().fit(bad)
    est = small().fit(X)
    with pytest.raises(ValueError, match="X has 2 features, but GaussianMixture is expecting 3"):
        est.predict(X[:, :2])


def test_feature_names_follow_the_last_fit():
    X = blobs()
    frame = pd.DataFrame(X, columns=["a", "b", "c"])
    est = small().fit(frame)
    assert list(est.feature_names_in_) == ["a", "b", "c"]
    with pytest.warns(UserWarning, match="does not have valid feature names"):
        est.predict(X)  # fitted with names, predicted without: scikit-learn's warning
    est.fit(X)
    assert not hasattr(est, "feature_names_in_")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        est.predict(X)


def test_an_em_fit_keeps_no_reference_to_the_training_data():
    X = blobs()
    alive = weakref.ref(X)
    est = small(covariance_type="diag").fit(X)
    del X
    gc.collect()
    assert alive() is None  # the deferred guide keeps a copied row, not a view of X
    assert est.guide_ is not None  # and is still built when read


@pytest.mark.parametrize("covariance_type", ["full", "spherical"])
@pytest.mark.parametrize("weighted", [False, True])
def test_em_priors_built_on_read_equal_an_eager_build(covariance_type, weighted):
    X = blobs()
    weights = np.random.default_rng(1).uniform(0.5, 2.0, len(X)) if weighted else None
    mine = dist.Normal(torch.tensor(0.0, dtype=torch.float64),
                       torch.tensor(5.0, dtype=torch.float64))
    est = small(covariance_type=covariance_type, priors={"means": mine})
    est.fit(X, sample_weight=weights)
    assert "_deferred_model" in vars(est)  # EM never read them
    est.set_params(covariance_type="tied", priors=None)  # after the fit: no effect on model_
    assert est.model_.covariance_type == covariance_type
    priors = est.model_.priors
    assert est.model_ is est.model_  # built once
    x = torch.as_tensor(X)
    moments = None
    if weighted:  # the fit's priors follow the weighted moments of all the rows
        source = DataSource(x, False, torch.as_tensor(weights))
        moments = source.moments()[:2]
    est.set_params(covariance_type=covariance_type, priors={"means": mine})
    eager = est._build_model(x, moments).priors  # what the fit built before, eagerly
    assert priors["means"] is mine and sorted(priors) == sorted(eager)
    for name in ("weights", "variances", "corr_cholesky"):
        if name not in eager:
            continue
        built, expected = priors[name], eager[name]
        assert type(built) is type(expected)
        base, ref = getattr(built, "base_dist", built), getattr(expected, "base_dist", expected)
        for field in ("concentration", "rate"):
            if hasattr(ref, field):
                assert torch.equal(getattr(base, field), getattr(ref, field))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind", ["em", "svi", "mfa"])
def test_the_data_moments_are_taken_once_and_give_the_same_priors(kind, dtype, monkeypatch):
    """The ``reg_covar`` scale check's pass over the data (``column_moments``) serves the
    default priors too: one pass per fit, priors equal bit for bit to those built from the
    data alone."""
    from ppl_mixtures import MixtureOfFactorAnalyzers
    from ppl_mixtures.io import _distribution_arguments
    from ppl_mixtures.models import mfa, priors

    X = blobs() * [1.0, 10.0, 0.1] + 5.0
    calls = []
    taken = priors.column_moments
    monkeypatch.setattr(priors, "column_moments", lambda x: calls.append(x.shape) or taken(x))
    if kind == "mfa":
        est = MixtureOfFactorAnalyzers(2, 1, max_iter=3, dtype=dtype, progress=False,
                                       random_state=0).fit(X)
    else:
        est = small(inference=kind, max_iter=3, dtype=dtype).fit(X)
    fitted = est.model_.priors
    assert calls == [X.shape]
    x = torch.as_tensor(X, dtype=getattr(torch, dtype))
    expected = (mfa.default_mfa_priors(x, 2, 1) if kind == "mfa"
                else priors.default_gmm_priors(x, 3, "full"))
    assert sorted(fitted) == sorted(expected)
    for name, prior in expected.items():
        arguments = _distribution_arguments(fitted[name])
        for field, value in _distribution_arguments(prior).items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(arguments[field], value), (name, field)


def test_argument_checks_accept_and_refuse_as_declared():
    assert Integer(1).accepts(3) and Integer(1).accepts(np.int64(3))
    assert not Integer(1).accepts(0) and not Integer(1).accepts(True)
    assert not Integer(1).accepts(np.bool_(True)) and not Integer(1).accepts(2.0)
    assert Real(0.0).accepts(0.0) and Real(0.0).accepts(1) and Real(0.0).accepts(np.float32(2))
    assert not Real(0.0).accepts(-1e-9) and not Real(0.0).accepts(float("nan"))
    assert not Real(0.0).accepts(False) and not Real(0.0, strict=True).accepts(0.0)
    assert Options(("a", None)).accepts(None) and Options(("a", None)).accepts("a")
    assert not Options(("a",)).accepts(np.array(["a", "b"]))  # ambiguous truth: refused
    with pytest.raises(ValueError, match=r"n_components=0 must be an integer >= 1"):
        small(n_components=0).fit(blobs())
    with pytest.raises(ValueError, match=r"covariance_type='fuller' must be one of"):
        small(covariance_type="fuller").fit(blobs())
