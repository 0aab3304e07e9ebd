"""benchmarks/gpu_check.sh: the one-call GPU check runs end to end (at tiny sizes on a CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_gpu_check_runs_every_case_and_reports_its_figures(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--tiny", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    results = {r["case"]: r for r in report["results"]}
    assert set(results) == {"train", "infer", "ddp"} and all(r["ok"] for r in results.values())
    assert results["train"]["steps_per_s"] > 0 and results["train"]["finite"]
    assert results["infer"]["images_per_s_end_to_end_batch2"] > 0
    assert results["ddp"]["backend"] == "gloo" and results["ddp"]["all_reduce"] == 1.0
    assert "| train | steps_per_s |" in proc.stdout  # the table
