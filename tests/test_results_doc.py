"""docs/results.md: its generated part is what ``benchmarks/accuracy.py`` renders from the stored figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCHMARK = REPO / "benchmarks" / "accuracy.py"


def test_results_page_is_rendered_from_the_stored_figures():
    proc = subprocess.run(
        [sys.executable, str(BENCHMARK), "--render-only", "--check"], capture_output=True, text=True, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr + "\nregenerate with `python benchmarks/accuracy.py --render-only`"


def test_render_replaces_only_the_generated_part_and_check_sees_staleness(tmp_path, load_benchmark):
    bench = load_benchmark("accuracy")
    stored = json.loads((REPO / "benchmarks" / "results" / "accuracy.json").read_text())
    stored["rows"][0]["AP50"] = 0.123  # a changed figure must show up in the page
    figures = tmp_path / "figures.json"
    figures.write_text(json.dumps(stored))
    doc = tmp_path / "results.md"
    doc.write_text(f"# Page\n\nintro\n\n{bench.BEGIN}\nold table\n{bench.END}\n\ndiscussion kept\n")

    assert bench.main(["--render-only", "--results", str(figures), "--docs", str(doc), "--check"]) == 1
    assert bench.main(["--render-only", "--results", str(figures), "--docs", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("# Page\n\nintro\n\n") and text.endswith("\n\ndiscussion kept\n")
    assert "old table" not in text and "| kromp | CKS (points only) | 0.123 |" in text
    assert "CKS AP50 0.123 = 14 % of supervised 0.892" in text
    assert bench.main(["--render-only", "--results", str(figures), "--docs", str(doc), "--check"]) == 0
    # the page states figures and setting, no judgement against a target and no machine load
    assert "2 CPU cores" in text and "train.steps=800" in text
    for word in ("MISSES", "meets", "bar", "load"):
        assert word not in text


def test_merge_replaces_only_the_rerun_cells_and_lists_both_commands(tmp_path, load_benchmark):
    bench = load_benchmark("accuracy")
    stored = json.loads((REPO / "benchmarks" / "results" / "accuracy.json").read_text())
    cells = [(r["dataset"], r["strategy"]) for r in stored["rows"]]
    rerun = {**stored["rows"][0], "AP50": 0.777, "date": "2030-01-01"}
    rerun_cmd = "python benchmarks/accuracy.py --strategies cks --merge"
    merged = bench.merge_rows(stored, [rerun], rerun_cmd)

    assert [(r["dataset"], r["strategy"]) for r in merged["rows"]] == cells  # order and cells kept
    assert merged["rows"][0]["AP50"] == 0.777
    assert merged["rows"][1:] == stored["rows"][1:]
    assert bench.stored_commands(merged) == [*bench.stored_commands(stored), rerun_cmd]
    section = bench.docs_section(merged)
    assert f"`{rerun_cmd}`" in section and f"`{bench.stored_commands(stored)[0]}`" in section
    assert "to 2030-01-01" in section  # the setting shows the span of measurement dates

    figures = tmp_path / "figures.json"
    figures.write_text(json.dumps(stored))
    again = bench.store_results([rerun], ["--strategies", "cks", "--merge"], figures, merge=True)
    assert len(again["rows"]) == len(cells) and again["rows"][0]["AP50"] == 0.777
    assert json.loads(figures.read_text()) == again
