"""Declarative checks of constructor arguments, and the dtype/device arguments.

An estimator declares ``_parameter_constraints``: argument name -> list of constraints, any
one of which the value must satisfy (scikit-learn's convention). :func:`validate_parameters`
checks them all at the start of ``fit`` and raises one ``ValueError`` (``TypeError`` where
only the type is wrong) that names the argument, the value and what is allowed.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class Constraint:
    """What an argument may be: :meth:`accepts` and a phrase for error messages."""

    def accepts(self, value: Any) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class Integer(Constraint):
    """An integer (``bool`` excluded) in ``[low, high]``."""

    low: int | None = None
    high: int | None = None

    def accepts(self, value: Any) -> bool:
        # a plain int first: the abstract-class check costs more than the rest of a fit's checks
        if type(value) is not int and (isinstance(value, (bool, np.bool_))
                                       or not isinstance(value, numbers.Integral)):
            return False
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)

    def describe(self) -> str:
        return "an integer" + _range(self.low, self.high, closed=True)


@dataclass(frozen=True)
class Real(Constraint):
    """A finite real number above ``low`` (strictly with ``strict``)."""

    low: float | None = None
    strict: bool = False

    def accepts(self, value: Any) -> bool:
        if type(value) not in (float, int) and (isinstance(value, (bool, np.bool_))
                                                or not isinstance(value, numbers.Real)):
            return False
        if not math.isfinite(value):
            return False
        if self.low is None:
            return True
        return value > self.low if self.strict else value >= self.low

    def describe(self) -> str:
        if self.low is None:
            return "a finite number"
        if self.low == 0:
            return "a positive number" if self.strict else "a non-negative number"
        return f"a number {'>' if self.strict else '>='} {self.low:g}"


@dataclass(frozen=True)
class Options(Constraint):
    """One of a few values."""

    values: tuple[Any, ...]

    def accepts(self, value: Any) -> bool:
        try:
            for option in self.values:
                if value is option or bool(value == option):
                    return True
        except (TypeError, ValueError):
            pass
        return False

    def describe(self) -> str:
        return "one of " + ", ".join(repr(v) for v in self.values)


@dataclass(frozen=True)
class InstanceOf(Constraint):
    """An instance of one of ``types``."""

    types: tuple[type, ...]
    phrase: str

    def accepts(self, value: Any) -> bool:
        return isinstance(value, self.types)

    def describe(self) -> str:
        return self.phrase


@dataclass(frozen=True)
class IntegerSequence(Constraint):
    """A non-empty sequence of integers >= ``low`` (e.g. components per layer)."""

    low: int = 1

    def accepts(self, value: Any) -> bool:
        if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) == 0:
            return False
        return all(Integer(self.low).accepts(v) for v in value)

    def describe(self) -> str:
        return f"a non-empty sequence of integers >= {self.low}"


#: ``None`` as an allowed value.
NONE = Options((None,))
BOOLEAN = InstanceOf((bool, np.bool_), "True or False")
DICT = InstanceOf((Mapping,), "a dict")
PATH = InstanceOf((str, os.PathLike), "a path")


def _range(low: Any, high: Any, closed: bool) -> str:
    if low is not None and high is not None:
        return f" in [{low}, {high}]"
    if low is not None:
        return f" >= {low}"
    if high is not None:
        return f" <= {high}"
    return ""


def validate_parameters(estimator: Any) -> None:
    """Check every argument against ``estimator._parameter_constraints``.

    Raises
    ------
    ValueError
        Naming the first argument that no constraint accepts, its value and what is allowed.
    """
    for name, constraints in type(estimator)._parameter_constraints.items():
        value = getattr(estimator, name)
        for constraint in constraints:  # a loop, not any(...): ~30 arguments every fit
            if constraint.accepts(value):
                break
        else:
            _refuse(estimator, name, value, constraints)


def _refuse(estimator: Any, name: str, value: Any, constraints: list[Constraint]) -> None:
    """The ``ValueError`` of :func:`validate_parameters` for an argument nothing accepts."""
    allowed = " or ".join(c.describe() if c is not NONE else "None" for c in constraints)
    raise ValueError(f"{name}={value!r} must be {allowed} ({type(estimator).__name__})")


def check_int(value: Any, name: str, minimum: int) -> int:
    """``value`` as an int >= ``minimum``; a ``ValueError`` naming ``name`` otherwise."""
    if not Integer(minimum).accepts(value):
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")
    return int(value)


def resolve_dtype(dtype: Any, data_dtype: np.dtype) -> torch.dtype:
    """``dtype`` argument -> torch dtype; None follows the data (float32 stays float32)."""
    if dtype is None:
        return torch.float32 if data_dtype == np.float32 else torch.float64
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in _DTYPES:
        return _DTYPES[dtype]
    if dtype in (np.float32, np.float64):
        return _DTYPES[np.dtype(dtype).name]
    raise ValueError(f"dtype={dtype!r} is not supported; use None, 'float32' or 'float64'")


def resolve_device(device: Any) -> torch.device:
    """``device`` argument -> torch device; ``"auto"`` picks CUDA when it is available."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device={device!r} is not a device; use 'auto', 'cpu' or 'cuda'") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available; use 'auto' or 'cpu'")
    return resolved


#: Constraints every estimator shares (subclasses extend the dict).
COMMON_CONSTRAINTS: dict[str, list[Constraint]] = {
    "n_init": [Integer(1)],
    "max_iter": [Integer(1), NONE],
    "tol": [Real(0.0), NONE],
    "lr": [Real(0.0, strict=True), NONE],
    "batch_size": [Integer(1), NONE],
    "random_state": [InstanceOf((numbers.Integral, np.random.RandomState, np.random.Generator,
                                 torch.Generator), "an int, a RandomState, a Generator"), NONE],
    "device": [InstanceOf((str, torch.device), "a device name such as 'auto', 'cpu', 'cuda'")],
    "dtype": [Options(("float32", "float64")), InstanceOf((torch.dtype, type), "a dtype"), NONE],
    "progress": [BOOLEAN],
    "checkpoint_path": [PATH, NONE],
    "distributed": [BOOLEAN],
}
