"""Running scikit-learn's own test modules against our estimators (shared by the suites).

``tests/estimators/test_sklearn_suite.py`` (the Gaussian mixture) and
``test_sklearn_bayesian_suite.py`` (the Bayesian mixture) collect scikit-learn's test functions
as they are, skip those that test its private helpers or a documented difference, and check only
the exception or warning type where our messages are worded differently.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest


class AnyWording:
    """``pytest`` as the suite's module sees it, with ``match`` dropped from raises/warns."""

    def __getattr__(self, name):
        return getattr(pytest, name)

    @staticmethod
    def raises(expected, *args, match=None, **kwargs):
        return pytest.raises(expected, *args, **kwargs)

    @staticmethod
    def warns(expected, *args, match=None, **kwargs):
        return pytest.warns(expected, *args, **kwargs)


def _adopt(function: Callable, reason: str | None, slow: bool) -> Callable:
    @functools.wraps(function)  # keeps the signature (fixtures) and parametrize marks
    def run(*args, **kwargs):
        return function(*args, **kwargs)

    if reason:
        return pytest.mark.skip(reason=reason)(run)
    return pytest.mark.slow(run) if slow else run


def adopt_tests(namespace: dict[str, Any], suite: ModuleType, skipped: dict[str, str],
                slow: frozenset[str] | set[str] = frozenset()) -> None:
    """Put every ``test_*`` function of ``suite`` into ``namespace`` (a test module's globals),
    skipped with the reason of ``skipped`` or marked ``slow`` where listed."""
    for name, function in vars(suite).items():
        if name.startswith("test_") and callable(function):
            namespace[name] = _adopt(function, skipped.get(name), name in slow)
