"""Shared test set-up: float64 on CPU, validation on, a clean param store and fixed seeds."""

import os

import pyro
import pytest
import torch

os.environ.setdefault("PPL_MIXTURES_SMOKE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under ``pytest -n N`` every worker is one process on one core: torch's intra-op
    # threads would otherwise oversubscribe the cores (N workers x all threads each).
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _pyro_setup():
    torch.set_default_dtype(torch.float64)
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()
    torch.set_default_dtype(torch.float32)


@pytest.fixture
def one_rank_group():
    """A gloo process group of one rank, in this process (for distributed code paths)."""
    import torch.distributed as dist
    from _launch import free_port

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0,
                            world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()
