"""What a fit carries over from the last one, and what it says when it stops unconverged.

``warm_start=True`` (scikit-learn's meaning) continues EM from the last fit's parameters:
:func:`warm_start_state` hands them over, with the last E-step's value that the first new
iteration is compared with, once it has checked that the parameters still fit the arguments
and the data (:func:`fit_key`). :func:`warn_if_unconverged` raises scikit-learn's
``ConvergenceWarning`` when EM or SVI stopped at ``max_iter`` short of ``tol``.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

from sklearn.exceptions import ConvergenceWarning

from ppl_mixtures import distributed as process_group

#: Paths whose ``tol`` is a stopping rule that ``max_iter`` can cut short.
_STOPPING_PATHS = ("em", "cavi", "svi")
_PACKAGE = str(Path(__file__).resolve().parents[1])


def _user_stacklevel() -> int:
    """The ``stacklevel`` of the first caller outside this package (the user's ``fit``)."""
    frame, level = sys._getframe(1), 1  # the function that warns: stacklevel 1
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    return level


def fit_key(est: Any, n_features: int) -> dict[str, Any]:
    """What the shapes, dtype and device of ``params_`` depend on (compared by warm starts)."""
    return {**est._shape_key(), "n_features": n_features, "dtype": est._dtype,
            "device": str(est._device)}


def warm_start_state(est: Any, n_features: int) -> tuple[Any, float | None] | None:
    """``(params, last bound)`` to continue from, or None to start afresh.

    None when ``warm_start`` is off or nothing was fitted by :meth:`fit` yet. The bound is the
    last fit's ``lower_bound_`` when that fit ran EM (it set ``lower_bounds_``), else None.

    Raises
    ------
    ValueError
        When an argument that shapes the parameters, the number of features, the dtype or
        the device changed since that fit.
    """
    previous = getattr(est, "_warm_key", None)
    if not getattr(est, "warm_start", False) or previous is None or not hasattr(est, "params_"):
        return None
    current = fit_key(est, n_features)
    if current != previous:
        changed = ", ".join(f"{name}={previous[name]!r} -> {current[name]!r}"
                            for name in current if current[name] != previous.get(name))
        raise ValueError(
            f"warm_start=True continues from the last fit's parameters, but {changed} since "
            "then; pass warm_start=False to start afresh, or restore what changed"
        )
    bound = est.lower_bound_ if hasattr(est, "lower_bounds_") else None
    return est.params_, bound


def warn_if_unconverged(est: Any) -> None:
    """``ConvergenceWarning`` when EM or SVI used all ``max_iter`` without meeting ``tol``.

    Not with ``tol=0`` (no stopping rule: the user asked for exactly ``max_iter``), nor with
    ``max_iter=0`` (the initial values were asked for), nor for NUTS and SGD, whose
    ``converged_`` means something else. On rank 0 only when distributed.
    """
    inference = getattr(est, "inference", None)
    if (inference not in _STOPPING_PATHS or est.converged_ or not est._max_iter
            or not est._tol or process_group.rank() != 0):
        return
    warnings.warn(
        f"{type(est).__name__} did not converge: {inference.upper()} stopped at "
        f"max_iter={est._max_iter} with the change of its objective still above "
        f"tol={est._tol:g}. Raise max_iter (or tol), try other initial values (init_params, "
        "n_init), or check the data for duplicated or degenerate points",
        ConvergenceWarning,
        stacklevel=_user_stacklevel(),
    )
