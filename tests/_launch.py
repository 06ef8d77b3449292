"""Launch a worker script on N gloo processes with ``torch.distributed.run``, bounded in time."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

LAUNCH_TIMEOUT_S = 180


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(arguments: list[str], nproc: int = 2, timeout_s: float = LAUNCH_TIMEOUT_S) -> str:
    """``python -m torch.distributed.run ... arguments`` on ``nproc`` CPU processes.

    Fails the test (killing the whole launch) on overrun or a non-zero exit; returns the
    launch's combined output.
    """
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
        "--master-addr", "127.0.0.1", "--master-port", str(free_port()), *arguments,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        log, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        log, _ = process.communicate()
        pytest.fail(f"torchrun did not finish in {timeout_s} s:\n{log[-4000:]}")
    assert process.returncode == 0, f"torchrun failed:\n{log[-4000:]}"
    return log


def launch(worker: Path, out: Path, nproc: int = 2, timeout_s: float = LAUNCH_TIMEOUT_S) -> str:
    """Run the script ``worker out`` on ``nproc`` CPU processes (see :func:`torchrun`)."""
    return torchrun([str(worker), str(out)], nproc, timeout_s)


def launch_ranks(worker: Path, out: Path, nproc: int = 2) -> list[dict[str, np.ndarray]]:
    """:func:`launch` the worker, then read what each rank saved to ``out/rank<r>.npz``."""
    launch(worker, out, nproc)
    return [dict(np.load(out / f"rank{rank}.npz")) for rank in range(nproc)]
