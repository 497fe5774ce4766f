"""scripts/cuda_check.sh, the GPU check: its plumbing, on a machine without a GPU.

The GPU steps themselves (CUDA tests, runs, --gpu_id, benchmarks) need a GPU; here the script
runs with ``CUDA_CHECK_STEPS=report`` (environment, generated data and the report only), with an
interpreter that fails (every step fails, and each is still recorded), and with no time left.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "cuda_check.sh"


def run_check(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, Path]:
    """Run the script from ``tmp_path`` (not the repository root), without PYTHONPATH, reporting
    into ``tmp_path/out`` as on the GPU machine; returns the result and the report's path."""
    base = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("CUDA_CHECK_")}
    env = {**base, "OUT": str(tmp_path / "out"), "CUDA_CHECK_WORK": str(tmp_path / "work"),
           "CUDA_CHECK_PYTHON": sys.executable, **env}
    result = subprocess.run(["bash", str(SCRIPT)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    return result, tmp_path / "out" / "cuda_report.md"


def table_rows(report: Path) -> dict[str, list[str]]:
    """The report's step table: step name → [status, seconds, result]."""
    rows = [line.strip("|").split(" | ") for line in report.read_text().splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [cell.strip() for cell in cells[1:]] for cells in rows[2:]}


def test_the_script_is_valid_bash():
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_report_mode_generates_the_data_and_writes_the_report(tmp_path):
    result, report = run_check(tmp_path, CUDA_CHECK_STEPS="report")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = table_rows(report)
    assert list(rows) == ["environment", "data"]
    assert all(status == "ok" and float(seconds) > 0 for status, seconds, _ in rows.values())
    assert rows["environment"][2].startswith(f"torch {torch.__version__}, CUDA {torch.version.cuda}")
    assert (tmp_path / "out" / "cuda_check_logs.tar.gz").is_file()

    # the official CIFAR-100 pickles, readable as dataset/cifar.py reads them
    folder = tmp_path / "work" / "cifar" / "cifar-100-python"
    assert sorted(p.name for p in folder.iterdir()) == ["meta", "test", "train"]
    for split, count in (("train", 5000), ("test", 1000)):
        with (folder / split).open("rb") as file:
            entry = pickle.load(file, encoding="bytes")
        assert entry[b"data"].shape == (count, 3072) and entry[b"data"].dtype == np.uint8
        assert sorted(set(entry[b"fine_labels"])) == list(range(100))


def test_a_failed_step_is_recorded_and_the_next_still_runs(tmp_path):
    result, report = run_check(tmp_path, CUDA_CHECK_STEPS="report", CUDA_CHECK_PYTHON="false")
    assert result.returncode == 1
    rows = table_rows(report)
    assert [rows[name][0] for name in ("environment", "data")] == ["failed (exit 1)"] * 2
    assert "2 steps, 2 failed" in result.stdout


def test_steps_beyond_the_budget_are_skipped_and_count_as_failed(tmp_path):
    result, report = run_check(tmp_path, CUDA_CHECK_STEPS="report", CUDA_CHECK_BUDGET_S="0")
    assert result.returncode == 1
    assert [row[0] for row in table_rows(report).values()] == ["skipped: out of time"] * 2


def test_an_unknown_step_name_is_refused(tmp_path):
    result, report = run_check(tmp_path, CUDA_CHECK_STEPS="runs,test")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: CUDA_CHECK_STEPS names 'test'; use tests, runs, gpu_id, bench or report"
    assert not report.exists()
