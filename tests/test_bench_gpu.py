"""``bench/gpu.py`` (every GPU measurement in one run) works without a GPU: its quick CPU run
goes through every section, so the script a lent GPU session runs cannot rot unseen."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_cpu_run_measures_every_section(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py"), "--device", "cpu", "--quick",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "gpu.json").read_text())
    assert {row["section"] for row in rows} == {"em", "svi", "gmvae", "sgd"}  # no 2 GPUs: no nccl
    for row in rows:
        assert row["ours"] > 0 and row["device"] == "cpu"
    em = [row for row in rows if row["section"] == "em"]
    assert len(em) == 8  # four covariance types x two dtypes
    for row in em:  # the same fit as scikit-learn's from the same start
        assert abs(float(row["check"].split()[1])) < 1e-5
    report = (tmp_path / "gpu.md").read_text()
    assert report.count("\n| ") == len(rows) + 1 and "Skipped" not in report


def test_refuses_cuda_without_a_gpu(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py"), "--device", "cuda", "--out",
         str(tmp_path)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert done.returncode == 2 and "--device cpu" in done.stderr
