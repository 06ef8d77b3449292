"""Incomplete data: entries of a complete matrix removed completely at random.

``mask_missing``
    A copy of ``X`` with each entry replaced by NaN independently with probability ``rate``:
    missing completely at random (MCAR, Rubin 1976), the setting in which
    ``missing="marginalize"`` (Ghahramani & Jordan 1994) fits the mixture of the complete
    data. The tests and ``bench/missing.py`` draw their incomplete data with it.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from ppl_mixtures.datasets.synthetic import _check_random_state

__all__ = ["mask_missing"]


def _check_rate(rate: Any) -> float:
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0.0 <= rate < 1.0:
        raise ValueError(
            f"rate must be a number in [0, 1), the probability that an entry is removed, got "
            f"{rate!r}; e.g. rate=0.15 removes about 15% of the entries"
        )
    return float(rate)


def mask_missing(
    X: Any,
    rate: float,
    *,
    random_state: int | np.random.Generator | None = None,
    keep_observed: bool = False,
) -> np.ndarray:
    """A copy of ``X`` with entries missing completely at random (NaN).

    Every entry is removed independently with probability ``rate`` (one uniform draw per
    entry, row by row: ``random_state.random(X.shape) < rate``), whatever its value or the
    rest of its row, so the realised fraction of removed entries is ``rate`` up to binomial
    noise (standard deviation ``sqrt(rate (1 - rate) / X.size)``).

    Parameters
    ----------
    X : array-like, shape (n_samples, n_features)
        The complete data. Floating arrays keep their dtype, others become float64; entries
        that are NaN already stay NaN.
    rate : float in [0, 1)
        The probability that an entry is removed.
    random_state : int, numpy Generator or None
        An int seeds a new generator (the same seed gives the same holes); a ``Generator`` is
        drawn from in place, continuing its stream (one ``random(X.shape)`` call).
    keep_observed : bool, default False
        Give back the first entry of every row whose entries were all drawn as missing, so
        that each row keeps an observed entry (the realised rate is then a little lower).
        False: such rows stay entirely NaN, as MCAR draws them.

    Returns
    -------
    ndarray, shape (n_samples, n_features)
        The copy of ``X`` with NaN where entries were removed; ``np.isnan`` of it is the
        missingness mask.

    Raises
    ------
    ValueError
        When ``X`` is not 2-D or is empty, ``rate`` is outside [0, 1), or ``random_state`` is
        not a seed or a Generator.

    Examples
    --------
    >>> from ppl_mixtures.datasets import make_gmm, mask_missing
    >>> X, _ = make_gmm(n_samples=500, n_features=4, random_state=0)
    >>> holes = mask_missing(X, 0.2, random_state=0)
    >>> bool(abs(np.isnan(holes).mean() - 0.2) < 0.03)
    True
    """
    rate = _check_rate(rate)
    rng = _check_random_state(random_state)
    array = np.asarray(X)
    if not np.issubdtype(array.dtype, np.floating):
        try:
            array = array.astype(np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"X must hold numbers, got an array of dtype {array.dtype}; pass "
                             "a numeric array of shape (n_samples, n_features)") from None
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"X has shape {array.shape}; pass a non-empty 2-D array of shape "
                         "(n_samples, n_features)")
    missing = rng.random(array.shape) < rate
    if keep_observed:
        missing[missing.all(axis=1), 0] = False
    out = array.copy()
    out[missing] = np.nan
    return out
