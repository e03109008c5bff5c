"""bench/gpu_check.sh rehearsed on the CPU: the script that meets a GPU once must work the first time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_check_runs_end_to_end_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu"
    env = {**os.environ, "PYTHON": sys.executable}
    run = subprocess.run(
        ["bash", "bench/gpu_check.sh", str(out), "--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads((out / "gpu_check.json").read_text())
    assert {"machine", "pytest-gpu", "compare-fp32", "compare-bf16"} <= set(report["steps"])
    assert all(step["rc"] == 0 for step in report["steps"].values()), report["steps"]
    assert "skipped" in report["pytest_gpu"] or "passed" in report["pytest_gpu"]
    for precision in ("fp32", "bf16"):
        settings = report["compare"][precision]["settings"]
        assert [s["label"] for s in settings] == ["small, k=2"]
        assert {"none", "alternating", "simultaneous"} <= set(settings[0]["summary"])
        assert settings[0]["spec"]["training"]["precision"] == precision
    markdown = (out / "gpu_check.md").read_text()
    assert "## fp32" in markdown and "## bf16" in markdown and "| `none` |" in markdown
