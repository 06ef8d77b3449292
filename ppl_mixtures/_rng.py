"""Keep the user's global random streams as they were: Python's, NumPy's and torch's (CPU, CUDA).

Pyro draws from torch's global generator (guides, NUTS, ``infer_discrete``) and
``pyro.set_rng_seed`` seeds Python's, NumPy's and torch's. The estimators seed and draw inside
:func:`fork_rng`, which restores every global generator on the way out, so a fit,
a prediction or a draw never changes the numbers a user's own code gets next.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np
import torch

F = TypeVar("F", bound=Callable[..., Any])


@contextmanager
def fork_rng(cuda: bool = False) -> Iterator[None]:
    """Restore Python's, NumPy's and torch's global random states when the block ends.

    Parameters
    ----------
    cuda : bool, default False
        Also restore every CUDA device's generator. Done anyway when CUDA is already
        initialised; pass True when the block may be the first to use CUDA.
    """
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    devices: list[int] = []
    if torch.cuda.is_available() and (cuda or torch.cuda.is_initialized()):
        devices = list(range(torch.cuda.device_count()))
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def seed_global(seed: int, device: torch.device | str | None = None) -> None:
    """Seed Python's, NumPy's and torch's CPU generators, and the CUDA generator of ``device``.

    What ``pyro.set_rng_seed`` does, without ``torch.manual_seed``'s reseeding of every CUDA
    device (lazily, when CUDA is not initialised yet, which no fork could undo). Call it inside
    :func:`fork_rng` so that the caller's streams come back afterwards.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)
    device = None if device is None else torch.device(device)
    if device is not None and device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)


@contextmanager
def seeded_global_rng(seed: int, device: torch.device | str | None = None) -> Iterator[None]:
    """:func:`fork_rng` with the forked generators seeded by :func:`seed_global`."""
    cuda = device is not None and torch.device(device).type == "cuda"
    with fork_rng(cuda=cuda):
        seed_global(seed, device)
        yield


def keeps_global_rng(method: F) -> F:
    """Decorate an estimator method so that it runs inside :func:`fork_rng`."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        device = str(getattr(self, "device", "cpu"))
        with fork_rng(cuda=device == "auto" or device.startswith("cuda")):
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
