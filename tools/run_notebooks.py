"""Run the tutorial notebooks at full size and save them with their outputs.

Usage (from the repository root; leave the machine otherwise idle, the saved run's timing is
what ``tests/test_notebooks.py`` holds to the budget)::

    python tools/run_notebooks.py                      # every notebook
    python tools/run_notebooks.py notebooks/02_svi_training.ipynb

Each notebook runs top to bottom in a fresh ``python3`` kernel (``PPL_MIXTURES_SMOKE`` unset,
matplotlib's inline backend, so the figures are saved), is written back in place with its
outputs and each cell's timing in its metadata, and the slowest cells are printed. A failing
cell (a ``claim`` that does not hold at full size included) stops the run and leaves the file
as it was.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime
from pathlib import Path

import nbclient
import nbformat

ROOT = Path(__file__).resolve().parents[1]


def _seconds(cell) -> float:
    stamps = cell.metadata.get("execution", {})
    start, end = stamps.get("iopub.execute_input"), stamps.get("shell.execute_reply")
    if not (start and end):
        return 0.0
    return (datetime.fromisoformat(end.rstrip("Z"))
            - datetime.fromisoformat(start.rstrip("Z"))).total_seconds()


def run(path: Path, timeout: int) -> float:
    nb = nbformat.read(path, as_version=4)
    os.environ.pop("PPL_MIXTURES_SMOKE", None)
    os.environ.pop("MPLBACKEND", None)  # the kernel's inline backend saves the figures
    begin = time.perf_counter()
    nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=True,
                            resources={"metadata": {"path": str(path.parent)}}).execute()
    total = time.perf_counter() - begin
    nbformat.write(nb, path)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    print(f"{path.name}: {total:.0f} s")
    for cell in sorted(code, key=_seconds, reverse=True)[:5]:
        print(f"  {_seconds(cell):7.1f} s  {cell.source.splitlines()[0][:70]}")
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path,
                        default=sorted((ROOT / "notebooks").glob("*.ipynb")))
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    args = parser.parse_args(argv)
    for path in args.notebooks:
        run(path.resolve(), args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
