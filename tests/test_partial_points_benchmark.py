"""benchmarks/partial_points.py: the rows it trains, the page it writes, and that the page is current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCHMARK = REPO / "benchmarks" / "partial_points.py"


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("partial_points")


def _row(dataset, row, ap50, n_pred=90.0):
    return {"dataset": dataset, "row": row, "label": row, "steps": 1600, "AP50": ap50, "dice": 0.7, "F1": 0.6,
            "n_pred": n_pred, "n_gt": 100.0, "date": "2026-12-02", "cpus": 2}


def test_handling_rows_differ_from_their_baselines_only_by_the_handling(bench):
    for base in ("complete", "drop20", "drop20_jitter"):
        off, on = bench.ROWS[base][2], bench.ROWS[base + "+"][2]
        assert {k: v for k, v in on.items() if k not in bench.HANDLING} == off
        assert set(bench.HANDLING) <= set(on)
    assert bench.ROWS["half"][2]["data.use_regions"] == "false" and "data.use_regions" not in bench.ROWS["half+"][2]
    assert bench.ROWS["supervised"][1].startswith("supervised_")


def test_page_gives_each_row_its_share_of_complete_points(bench):
    stored = {"rows": [_row("kromp", "complete", 0.8), _row("kromp", "drop20+", 0.72, 95.0),
                       _row("kromp", "mixed4", 0.6), _row("kromp", "supervised", 0.9)]}
    page = bench.render(stored)
    assert "| 0.720 | 0.700 | 0.600 | 0.95 | 0.90 |" in page
    assert "0.75 (0.67 of supervised)" in page  # mixed: 0.6 / 0.8 of complete and 0.6 / 0.9 of supervised
    labels = [f"| {bench.ROWS[row][0]} |" for row in ("complete", "drop20+", "mixed4")]
    assert page.index(labels[0]) < page.index(labels[1]) < page.index(labels[2])  # the benchmark's labels, in order


def test_merge_replaces_a_row_and_keeps_the_others(bench, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "STORED", tmp_path / "partial_points.json")
    bench.STORED.write_text('{"rows": [' + ", ".join(
        __import__("json").dumps(r) for r in (_row("kromp", "complete", 0.8), _row("kromp", "half+", 0.5))) + "]}")
    merged = bench.merge([_row("kromp", "half+", 0.7), _row("usiigaci", "complete", 0.3)])
    assert [(r["dataset"], r["row"], r["AP50"]) for r in merged["rows"]] == [
        ("kromp", "complete", 0.8), ("kromp", "half+", 0.7), ("usiigaci", "complete", 0.3)]


def test_docs_page_is_current_with_the_stored_figures():
    if not (REPO / "benchmarks" / "results" / "partial_points.json").exists():
        pytest.skip("no stored partial-label figures yet")
    proc = subprocess.run([sys.executable, str(BENCHMARK), "--render-only", "--check"], capture_output=True,
                          text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
