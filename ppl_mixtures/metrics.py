"""Clustering scores against known labels, and model-selection criteria for mixtures.

Label agreement
---------------
``adjusted_rand_score``, ``normalized_mutual_info_score``
    Scikit-learn's permutation-invariant scores, re-exported.
``cluster_accuracy``
    Accuracy under the best one-to-one matching of clusters to classes (Hungarian algorithm).
``majority_cluster_accuracy``
    Accuracy when every cluster predicts its majority class (many-to-one, never lower).

Model selection (lower is better, as in scikit-learn's ``GaussianMixture.bic``)
-------------------------------------------------------------------------------
``n_parameters``, ``bic``, ``aic``, ``icl``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.special import xlogy
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from ppl_mixtures.models.gmm import COVARIANCE_TYPES

__all__ = [
    "adjusted_rand_score",
    "aic",
    "bic",
    "cluster_accuracy",
    "icl",
    "majority_cluster_accuracy",
    "n_parameters",
    "normalized_mutual_info_score",
]

#: Rows of the responsibilities must sum to 1 within this tolerance.
_ROW_SUM_TOLERANCE = 1e-6


def _to_numpy(values: Any) -> np.ndarray:
    """An array from a numpy array, a sequence or a torch tensor (detached, moved to CPU)."""
    if hasattr(values, "detach") and hasattr(values, "cpu"):
        values = values.detach().cpu()
    return np.asarray(values)


def _contingency(y_true: Any, y_pred: Any) -> np.ndarray:
    """Counts of (cluster, class) pairs, shape (n_clusters, n_classes).

    Labels may be any hashable values (ints, strings); only their equality matters.
    """
    y_true, y_pred = _to_numpy(y_true), _to_numpy(y_pred)
    if y_true.ndim != 1 or y_pred.ndim != 1:
        raise ValueError(
            f"y_true and y_pred must be 1-D label arrays, got shapes {y_true.shape} and "
            f"{y_pred.shape}; flatten them with .ravel()."
        )
    if y_true.shape[0] != y_pred.shape[0]:
        raise ValueError(
            f"y_true and y_pred must have the same length, got {y_true.shape[0]} and "
            f"{y_pred.shape[0]}."
        )
    if y_true.shape[0] == 0:
        raise ValueError("y_true and y_pred are empty; pass at least one label.")
    _, class_index = np.unique(y_true, return_inverse=True)
    _, cluster_index = np.unique(y_pred, return_inverse=True)
    table = np.zeros((cluster_index.max() + 1, class_index.max() + 1), dtype=np.int64)
    np.add.at(table, (cluster_index, class_index), 1)
    return table


def cluster_accuracy(y_true: Any, y_pred: Any) -> float:
    """Accuracy of a clustering under the best one-to-one matching of clusters to classes.

    Each predicted cluster is matched to at most one class and each class to at most one
    cluster, choosing the matching that maximises the number of agreeing points (Hungarian
    algorithm on the contingency table, :func:`scipy.optimize.linear_sum_assignment`). When
    there are more clusters than classes, the unmatched clusters count as wrong; when there are
    fewer, the unmatched classes do. A relabelled perfect clustering scores 1.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        Known classes (any hashable values).
    y_pred : array-like of shape (n_samples,)
        Predicted cluster indices (any hashable values). Torch tensors are accepted.

    Returns
    -------
    float
        Fraction of points in [0, 1] whose cluster is matched to their class.

    See Also
    --------
    majority_cluster_accuracy : the many-to-one variant, which cannot penalise over-splitting.
    """
    table = _contingency(y_true, y_pred)
    rows, columns = linear_sum_assignment(table, maximize=True)
    return float(table[rows, columns].sum() / table.sum())


def majority_cluster_accuracy(y_true: Any, y_pred: Any) -> float:
    """Accuracy when every predicted cluster is labelled with its majority class.

    A many-to-one mapping: several clusters may take the same class, so the score is at least
    :func:`cluster_accuracy` and reaches 1 for any clustering that refines the classes (in the
    limit, one cluster per point). Use it to judge mixtures with more components than classes;
    use :func:`cluster_accuracy` to penalise over-splitting.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        Known classes.
    y_pred : array-like of shape (n_samples,)
        Predicted cluster indices.

    Returns
    -------
    float
        Fraction of points in [0, 1] whose class is the majority class of their cluster.
    """
    table = _contingency(y_true, y_pred)
    return float(table.max(axis=1).sum() / table.sum())


def n_parameters(n_components: int, n_features: int, covariance_type: str) -> int:
    """Number of free parameters of a Gaussian mixture.

    ``K - 1`` weights (they sum to 1) plus ``K * D`` mean entries plus the covariance entries:

    ============  ==================
    type          covariance entries
    ============  ==================
    spherical     ``K``
    diag          ``K * D``
    tied_diag     ``D``
    tied          ``D (D + 1) / 2``
    full          ``K * D (D + 1) / 2``
    ============  ==================

    Parameters
    ----------
    n_components : int
        Number of components K (>= 1).
    n_features : int
        Dimension D (>= 1).
    covariance_type : {"spherical", "diag", "tied_diag", "tied", "full"}

    Returns
    -------
    int
    """
    for name, value in (("n_components", n_components), ("n_features", n_features)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    k, d = int(n_components), int(n_features)
    covariance_counts = {
        "spherical": k,
        "diag": k * d,
        "tied_diag": d,
        "tied": d * (d + 1) // 2,
        "full": k * d * (d + 1) // 2,
    }
    if covariance_type not in covariance_counts:
        raise ValueError(
            f"covariance_type must be one of {COVARIANCE_TYPES}, got {covariance_type!r}."
        )
    return (k - 1) + k * d + covariance_counts[covariance_type]


def _check_criterion_inputs(log_likelihood_total: float, n_params: int, n_samples: int) -> None:
    if not math.isfinite(float(log_likelihood_total)):
        raise ValueError(
            f"log_likelihood_total must be finite, got {log_likelihood_total!r}; it is the summed "
            "log-likelihood of the data (e.g. score(X) * n_samples)."
        )
    if isinstance(n_params, bool) or not isinstance(n_params, int | np.integer) or n_params < 0:
        raise ValueError(f"n_params must be a non-negative integer, got {n_params!r}.")
    if isinstance(n_samples, bool) or not isinstance(n_samples, int | np.integer) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}.")


def bic(log_likelihood_total: float, n_params: int, n_samples: int) -> float:
    """Bayesian information criterion, ``-2 log L + n_params * ln(N)``; lower is better.

    Same convention as :meth:`sklearn.mixture.GaussianMixture.bic`.

    Parameters
    ----------
    log_likelihood_total : float
        Log-likelihood summed over the data, ``log L = sum_n log p(x_n)``.
    n_params : int
        Free parameters of the model (see :func:`n_parameters`).
    n_samples : int
        Number of points N.

    Returns
    -------
    float
    """
    _check_criterion_inputs(log_likelihood_total, n_params, n_samples)
    return float(-2.0 * log_likelihood_total + n_params * math.log(n_samples))


def aic(log_likelihood_total: float, n_params: int, n_samples: int | None = None) -> float:
    """Akaike information criterion, ``-2 log L + 2 n_params``; lower is better.

    Same convention as :meth:`sklearn.mixture.GaussianMixture.aic`.

    Parameters
    ----------
    log_likelihood_total : float
        Log-likelihood summed over the data.
    n_params : int
        Free parameters of the model (see :func:`n_parameters`).
    n_samples : int, optional
        Unused by the formula; accepted (and checked) so that ``aic`` and ``bic`` take the same
        arguments.

    Returns
    -------
    float
    """
    _check_criterion_inputs(log_likelihood_total, n_params, 1 if n_samples is None else n_samples)
    return float(-2.0 * log_likelihood_total + 2.0 * n_params)


def _check_responsibilities(responsibilities: Any, n_samples: int) -> np.ndarray:
    """Responsibilities as float64 (N, K), checked to be a row-stochastic matrix."""
    resp = _to_numpy(responsibilities).astype(np.float64)
    if resp.ndim != 2:
        raise ValueError(
            f"responsibilities must be 2-D with shape (n_samples, n_components), got shape "
            f"{resp.shape}."
        )
    if resp.shape[0] != n_samples:
        raise ValueError(
            f"responsibilities have {resp.shape[0]} rows but n_samples={n_samples}; pass the "
            "responsibilities of the same points the log-likelihood was summed over."
        )
    if not np.all(np.isfinite(resp)) or resp.min() < -_ROW_SUM_TOLERANCE:
        raise ValueError("responsibilities must be finite and non-negative probabilities.")
    row_error = np.abs(resp.sum(axis=1) - 1.0)
    if row_error.max() > _ROW_SUM_TOLERANCE:
        worst = int(row_error.argmax())
        raise ValueError(
            f"every row of responsibilities must sum to 1 (within {_ROW_SUM_TOLERANCE:g}); row "
            f"{worst} sums to {resp[worst].sum():.8g}. Pass posterior probabilities "
            "(e.g. predict_proba(X)), not log-probabilities or unnormalised weights."
        )
    return np.clip(resp, 0.0, 1.0)


def icl(log_likelihood_total: float, n_params: int, n_samples: int, responsibilities: Any) -> float:
    """Integrated completed likelihood (Biernacki, Celeux & Govaert 2000), BIC form.

    ``ICL = BIC + 2 * H`` with the classification entropy
    ``H = -sum_{n,k} r_nk log r_nk`` (``0 log 0 = 0``). It adds to BIC a penalty for fuzzy
    assignments, so it prefers well-separated clusters; lower is better.

    Parameters
    ----------
    log_likelihood_total, n_params, n_samples
        As in :func:`bic`: the summed log-likelihood, the free parameters and N.
    responsibilities : array-like or torch.Tensor, shape (n_samples, n_components)
        Posterior component probabilities; every row must sum to 1 within 1e-6.

    Returns
    -------
    float
    """
    _check_criterion_inputs(log_likelihood_total, n_params, n_samples)
    resp = _check_responsibilities(responsibilities, n_samples)
    entropy = -float(xlogy(resp, resp).sum())
    return bic(log_likelihood_total, n_params, n_samples) + 2.0 * entropy
