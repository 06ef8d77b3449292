"""scikit-learn's mixture conventions: fit_predict, warm_start, verbose, max_iter=0,
lower_bound_/lower_bounds_, ConvergenceWarning, and the reg_covar=0 checks of EM."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning

from ppl_mixtures import DeepGaussianMixture, GaussianMixture, MixtureOfFactorAnalyzers
from ppl_mixtures.datasets import make_gmm
from ppl_mixtures.inference.em import LikelihoodDecreaseWarning, run_em
from ppl_mixtures.inference.em.loop import SummedStats

QUIET = dict(progress=False, device="cpu", random_state=0)
SMALL = {
    "gmm": lambda **kw: GaussianMixture(3, **QUIET, **kw),
    "mfa": lambda **kw: MixtureOfFactorAnalyzers(3, 1, **QUIET, **kw),
    "dgmm": lambda **kw: DeepGaussianMixture((2, 2), (2, 1), **QUIET, **kw),
}


@pytest.fixture(scope="module")
def X():
    return make_gmm(n_samples=150, n_components=3, n_features=4, random_state=5)[0]


@pytest.fixture(autouse=True)
def _quiet_convergence():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


# ------------------------------------------------------------------------------ fit_predict

@pytest.mark.parametrize("name", list(SMALL))
@pytest.mark.parametrize("max_iter", [1, 30])
def test_fit_predict_equals_fit_then_predict(X, name, max_iter):
    labels = SMALL[name](max_iter=max_iter).fit_predict(X)
    np.testing.assert_array_equal(labels, SMALL[name](max_iter=max_iter).fit(X).predict(X))


def test_fit_predict_takes_one_array(X):
    with pytest.raises(ValueError, match="fit_predict takes one array"):
        GaussianMixture(2, **QUIET).fit_predict([X[:50], X[50:]])


# ------------------------------------------------------------------------------- warm_start

@pytest.mark.parametrize("name", list(SMALL))
def test_warm_start_continues_where_the_last_fit_stopped(X, name):
    cold = SMALL[name](max_iter=4, tol=0.0).fit(X)
    warm = SMALL[name](max_iter=2, tol=0.0, warm_start=True)
    warm.fit(X)
    first = list(warm.lower_bounds_)
    warm.fit(X)
    np.testing.assert_allclose(warm.means_, cold.means_, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(first + warm.lower_bounds_, cold.lower_bounds_, rtol=1e-12)
    assert warm.n_iter_ == 2 and warm.history_ == warm.lower_bounds_


def test_warm_start_ignores_n_init_and_can_converge_in_one_iteration(X):
    est = GaussianMixture(3, n_init=3, max_iter=1, warm_start=True, **QUIET).fit(X)
    assert len(est.restart_log_likelihoods_) == 3
    for _ in range(300):
        est.fit(X)
        assert len(est.restart_log_likelihoods_) == 1
        if est.converged_:
            break
    assert est.converged_ and est.n_iter_ == 1


def test_warm_start_refuses_changed_shapes(X):
    est = GaussianMixture(3, max_iter=2, warm_start=True, **QUIET).fit(X)
    est.set_params(n_components=2)
    with pytest.raises(ValueError, match=r"warm_start=True .*n_components=3 -> 2.*warm_start=False"):
        est.fit(X)
    est.set_params(n_components=3)
    with pytest.raises(ValueError, match="n_features=4 -> 3"):
        est.fit(X[:, :3])
    est.set_params(warm_start=False).fit(X[:, :3])  # afresh: fine


def test_warm_start_after_load_continues(X, tmp_path):
    cold = GaussianMixture(3, max_iter=4, tol=0.0, **QUIET).fit(X)
    est = GaussianMixture(3, max_iter=2, tol=0.0, warm_start=True, **QUIET).fit(X)
    est.save(tmp_path / "gmm.safetensors")
    back = GaussianMixture.load(tmp_path / "gmm.safetensors", device="cpu")
    assert back.lower_bounds_ == est.lower_bounds_ and back.lower_bound_ == est.lower_bound_
    np.testing.assert_allclose(back.fit(X).means_, cold.means_, rtol=1e-10)


def test_warm_start_seeds_svi_and_is_refused_by_sgd(X):
    em = GaussianMixture(3, **QUIET).fit(X)
    svi = GaussianMixture(3, warm_start=True, **QUIET).fit(X)
    svi.set_params(inference="svi", max_iter=5).fit(X)  # starts at the EM estimate
    assert svi.score(X) == pytest.approx(em.score(X), abs=0.05)
    with pytest.raises(ValueError, match="partial_fit"):
        GaussianMixture(3, covariance_type="diag", inference="sgd", warm_start=True,
                        **QUIET).fit(X)


# ------------------------------------------------------------------------ verbose, max_iter

def test_verbose_prints_starts_and_iterations(X, capsys):
    GaussianMixture(3, n_init=2, max_iter=4, tol=0.0, verbose=1, verbose_interval=2,
                    **QUIET).fit(X)
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["Initialization 0", "  Iteration 2", "  Iteration 4",
                     "Initialization did not converge.", "Initialization 1", "  Iteration 2",
                     "  Iteration 4", "Initialization did not converge."]
    MixtureOfFactorAnalyzers(2, 1, verbose=2, verbose_interval=1, **QUIET).fit(X)
    out = capsys.readouterr().out
    assert "ll change" in out and "Initialization converged. time lapse" in out
    assert "lower bound" in out


def test_max_iter_zero_returns_the_initial_values(X, tmp_path):
    means = X[[0, 50, 100]]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        est = GaussianMixture(3, means_init=means, max_iter=0, **QUIET).fit(X)
    np.testing.assert_array_equal(est.means_, means)
    assert est.n_iter_ == 0 and not est.converged_ and est.lower_bounds_ == []
    assert est.lower_bound_ == -np.inf and np.isfinite(est.score(X))
    est.save(tmp_path / "zero.safetensors")
    assert GaussianMixture.load(tmp_path / "zero.safetensors").lower_bound_ == -np.inf
    with pytest.raises(ValueError, match="max_iter=0 .*inference='em'"):
        GaussianMixture(3, inference="svi", max_iter=0, **QUIET).fit(X)


def test_lower_bound_is_the_last_e_step(X):
    est = GaussianMixture(3, max_iter=3, tol=0.0, **QUIET).fit(X)
    assert est.lower_bounds_ == est.history_ and len(est.history_) == 3
    assert est.lower_bound_ == est.history_[-1] < est.score(X)
    svi = GaussianMixture(3, inference="svi", max_iter=20, **QUIET).fit(X)
    assert svi.lower_bound_ == pytest.approx(svi.score(X)) and not hasattr(svi, "lower_bounds_")


# ----------------------------------------------------------------------- ConvergenceWarning

@pytest.mark.parametrize("name", list(SMALL))
def test_convergence_warning_names_max_iter_and_tol(X, name):
    with warnings.catch_warnings():
        warnings.simplefilter("default", ConvergenceWarning)
        with pytest.warns(ConvergenceWarning, match=r"max_iter=2 .*tol=1e-12"):
            SMALL[name](max_iter=2, tol=1e-12).fit(X)
        with warnings.catch_warnings():
            warnings.simplefilter("error", ConvergenceWarning)
            SMALL[name](max_iter=2, tol=0.0).fit(X)  # tol=0: asked for exactly max_iter
            SMALL[name](max_iter=200, tol=0.5).fit(X)  # converged


def test_svi_warns_when_it_stops_at_max_iter(X):
    with warnings.catch_warnings():
        warnings.simplefilter("default", ConvergenceWarning)
        with pytest.warns(ConvergenceWarning, match="SVI stopped at max_iter=3"):
            GaussianMixture(3, inference="svi", max_iter=3, **QUIET).fit(X)


# ---------------------------------------------------------- reg_covar: exact and regularised

@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "tied_diag", "spherical"])
def test_collapsed_points_with_reg_covar_zero_raise(covariance_type):
    X = np.vstack([np.ones((5, 3)), np.zeros((5, 3))])
    est = GaussianMixture(2, covariance_type=covariance_type, reg_covar=0, **QUIET)
    with pytest.raises(ValueError, match=r"singular.*reg_covar=0.*reg_covar > 0"):
        est.fit(X)
    assert est.set_params(reg_covar=1e-6).fit(X).converged_


def _decreasing_em(monotone: bool):
    values = iter([-1.0, -0.5, -0.7, -0.69])

    def e_step(x, params):
        return SummedStats(1.0, torch.tensor(next(values)))

    return run_em(None, init_params=lambda _: 0, e_step=e_step, m_step=lambda stats: 0,
                  max_iter=3, tol=0.0, progress=False, monotone=monotone)


def test_likelihood_decrease_warns_only_for_an_exact_m_step():
    with pytest.warns(LikelihoodDecreaseWarning, match="iterations \\[3\\]"):
        assert _decreasing_em(monotone=True).decreases == [3]
    with warnings.catch_warnings():
        warnings.simplefilter("error", LikelihoodDecreaseWarning)
        assert _decreasing_em(monotone=False).decreases == [3]


def test_regularised_em_does_not_claim_a_bug(X):
    with warnings.catch_warnings():
        warnings.simplefilter("error", LikelihoodDecreaseWarning)
        GaussianMixture(3, reg_covar=0.1, max_iter=50, **QUIET).fit(X)
