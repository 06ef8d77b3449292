"""Model search over the number of components and the covariance type, as mclust does.

:func:`select_model` fits every combination of ``n_components`` and ``covariance_types``
(Scrucca et al. 2016 for mclust's search; Biernacki et al. 2000 for ICL), scores each with
BIC, AIC, ICL or PSIS-LOO, and returns a :class:`ModelSelection`: a tidy table, a plot of the
criterion against K per covariance type, and the best fitted estimator. A candidate that
cannot be fitted (more components than rows, a singular covariance) gets a row with its error
instead of stopping the search.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning

from ppl_mixtures.models.gmm import COVARIANCE_TYPES

#: Criteria: lower is better for all but ``"loo"`` (an expected log predictive density).
CRITERIA = ("bic", "aic", "icl", "loo")
_COLUMNS = ("n_components", "covariance_type", "criterion", "value", "log_likelihood",
            "n_parameters", "converged", "seconds", "selected", "error")


@dataclass
class ModelSelection:
    """The result of :func:`select_model`.

    Attributes
    ----------
    rows : list of dict
        One per candidate, in search order, with the keys of :meth:`table`.
    estimators : dict of (int, str) to estimator
        The fitted candidate for each ``(n_components, covariance_type)`` that could be fitted.
    criterion : str
    best_estimator_ : estimator
        The fitted candidate with the best criterion.
    best_params_ : dict
        Its ``n_components`` and ``covariance_type``.
    """

    rows: list[dict[str, Any]]
    estimators: dict[tuple[int, str | None], Any] = field(repr=False)
    criterion: str
    best_estimator_: Any = field(repr=False)
    best_params_: dict[str, Any]

    def table(self):
        """The rows as a ``pandas.DataFrame`` (one row per candidate), best first."""
        import pandas as pd

        frame = pd.DataFrame(self.rows, columns=list(_COLUMNS))
        ascending = self.criterion != "loo"
        return frame.sort_values("value", ascending=ascending, na_position="last",
                                 kind="stable").reset_index(drop=True)

    def plot(self, ax: Any = None):
        """The criterion against the number of components, one line per covariance type.

        Returns
        -------
        matplotlib.figure.Figure
        """
        from ppl_mixtures.plotting import _pyplot

        plt = _pyplot()
        if ax is None:
            _, ax = plt.subplots(figsize=(6, 4))
        types = list(dict.fromkeys(row["covariance_type"] for row in self.rows))
        for kind in types:
            rows = [r for r in self.rows if r["covariance_type"] == kind]
            ax.plot([r["n_components"] for r in rows], [r["value"] for r in rows], "o-",
                    label=str(kind))
        best = self.best_params_
        best_row = next(r for r in self.rows if r["selected"])
        ax.scatter([best["n_components"]], [best_row["value"]], s=160, facecolors="none",
                   edgecolors="black", zorder=3, label="selected")
        better = "higher" if self.criterion == "loo" else "lower"
        ax.set(xlabel="number of components K",
               ylabel=f"{self.criterion.upper()} ({better} is better)",
               title=f"model search: {self.criterion.upper()}")
        ax.legend(fontsize="small")
        return ax.figure


def select_model(X: Any, n_components: Iterable[int] = range(1, 10),
                 covariance_types: Sequence[str] | None = COVARIANCE_TYPES,
                 criterion: str = "bic", *, estimator: Any = None,
                 random_state: Any = 0, **estimator_options: Any) -> ModelSelection:
    """Fit every ``n_components`` x ``covariance_types`` candidate and pick the best.

    Parameters
    ----------
    X : array-like, shape (n_samples, n_features)
    n_components : iterable of int, default range(1, 10)
    covariance_types : sequence of str or None, default all five
        ``"full"``, ``"tied"``, ``"diag"``, ``"tied_diag"``, ``"spherical"``; None keeps the
        template's own (for estimators without a covariance type, e.g. the MFA).
    criterion : {"bic", "aic", "icl", "loo"}, default "bic"
        BIC, AIC and ICL: lower is better. ``"loo"``: PSIS-LOO ``elpd_loo`` (higher is
        better; needs posterior draws, e.g. ``inference="nuts"``).
    estimator : estimator, optional
        The template (cloned for each candidate); default
        ``GaussianMixture(random_state=random_state, **estimator_options)``.
    random_state : int or None, default 0
        Seeds every candidate's fit (and the draws of ``"loo"``).
    **estimator_options
        Passed to the default template (e.g. ``n_init=3``, ``progress=False``).

    Returns
    -------
    ModelSelection

    Raises
    ------
    ValueError
        For an unknown criterion or covariance type, no candidates, or when no candidate
        could be fitted (the message lists their errors).
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion={criterion!r} is not supported; use one of {CRITERIA}")
    counts = [int(k) for k in n_components]
    if not counts or any(k < 1 for k in counts):
        raise ValueError(f"n_components={counts!r} must hold integers >= 1, e.g. range(1, 10)")
    types: list[str | None] = [None] if covariance_types is None else list(covariance_types)
    unknown = [t for t in types if t is not None and t not in COVARIANCE_TYPES]
    if unknown or not types:
        raise ValueError(f"covariance_types={covariance_types!r}: use some of "
                         f"{COVARIANCE_TYPES}, or None")
    from ppl_mixtures.diagnostics import _criterion_value

    if estimator is None:
        from ppl_mixtures.estimators import GaussianMixture

        estimator = GaussianMixture(random_state=random_state,
                                    **{"progress": False, **estimator_options})
    rows, fitted_by_key = [], {}
    for kind in types:
        for k in counts:
            params = {"n_components": k, **({} if kind is None else {"covariance_type": kind})}
            row = {"n_components": k, "covariance_type": kind, "criterion": criterion,
                   "value": np.nan, "log_likelihood": np.nan, "n_parameters": None,
                   "converged": None, "seconds": np.nan, "selected": False, "error": None}
            start = time.perf_counter()
            try:
                with warnings.catch_warnings():  # recorded in the "converged" column instead
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    fitted = clone(estimator).set_params(**params).fit(X)
                log_likelihood = float(fitted.score_samples(X).sum())
                row.update(value=_criterion_value(fitted, X, criterion, log_likelihood,
                                                   random_state),
                           log_likelihood=log_likelihood,
                           n_parameters=int(fitted._n_parameters()),
                           converged=bool(fitted.converged_))
                fitted_by_key[(k, kind)] = fitted
            except (ValueError, RuntimeError, FloatingPointError) as error:
                row["error"] = f"{type(error).__name__}: {error}"
            row["seconds"] = time.perf_counter() - start
            rows.append(row)
    values = np.array([row["value"] for row in rows], dtype=float)
    if np.all(np.isnan(values)):
        errors = "; ".join(f"K={r['n_components']} {r['covariance_type']}: {r['error']}"
                           for r in rows[:3])
        raise ValueError(f"no candidate could be fitted ({errors})")
    best = int(np.nanargmax(values) if criterion == "loo" else np.nanargmin(values))
    rows[best]["selected"] = True
    key = (rows[best]["n_components"], rows[best]["covariance_type"])
    best_params = {"n_components": key[0]}
    if key[1] is not None:
        best_params["covariance_type"] = key[1]
    return ModelSelection(rows, fitted_by_key, criterion, fitted_by_key[key], best_params)


__all__ = ["CRITERIA", "ModelSelection", "select_model"]
