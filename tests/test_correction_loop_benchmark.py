"""benchmarks/correction_loop.py: the simulated annotator, and a --smoke run of the whole benchmark."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
BENCHMARK = REPO / "benchmarks" / "correction_loop.py"


def test_simulated_correction_keeps_near_detections_adds_missed_cells_and_deletes_the_rest(load_benchmark):
    bench = load_benchmark("correction_loop")
    labels = np.zeros((40, 60), np.int32)
    labels[0:10, 0:10] = 1  # centre (5, 5), radius ~5.6
    labels[20:30, 20:30] = 2  # centre (25, 25)
    labels[0:10, 40:50] = 3  # centre (5, 45): never detected
    detected = np.array([[6.0, 6.0], [5.0, 4.0], [27.0, 25.0], [35.0, 55.0], [25.0, 33.0]])
    points, added, deleted = bench.simulate_correction(detected, labels)
    # kept: the nearer of the two detections on cell 1, the one on cell 2; deleted: the duplicate, the one
    # on background and the one farther than half a radius from cell 2's centre
    assert added == 1 and deleted == 3
    np.testing.assert_allclose(points, [[5.0, 4.0], [27.0, 25.0], [5.0, 45.0]])
    points, added, deleted = bench.simulate_correction(np.zeros((0, 2)), labels)
    assert (len(points), added, deleted) == (3, 3, 0)


@pytest.mark.slow  # three tiny CKS runs, three evaluations and a prediction: about a minute on 2 busy cores
def test_smoke_run_writes_the_page_and_figures(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_ENABLE_ASYNC_LOGGING": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    docs = tmp_path / "correction_loop.md"
    proc = subprocess.run(
        [sys.executable, str(BENCHMARK), "--smoke", "--control", "--out", str(tmp_path / "out"), "--docs", str(docs)],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    results = json.loads((tmp_path / "out" / "correction_loop.json").read_text())
    c = results["corrections"]
    assert results["smoke"] and results["steps"] == 2 and results["test_images"] >= 1
    assert len(results["train_images"]) == 3 and len(results["corrected_images"]) == 2
    assert not set(results["train_images"]) & set(results["corrected_images"])
    assert c["clicks"] == c["added"] + c["deleted"] and c["cells"] > 0
    for model in ("before", "after", "continued"):
        assert 0.0 <= results[model]["dice"] <= 1.0
    assert len({results["runs"][k] for k in ("before", "after", "continued")}) == 3
    page = docs.read_text()
    assert "| model | test AP50 | test Dice |" in page and f"{c['clicks']} clicks" in page
    assert "retrained as long without the corrected images" in page
