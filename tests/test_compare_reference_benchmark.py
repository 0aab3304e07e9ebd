"""benchmarks/compare_reference.py: figures stored per CPU kind, the docs table rendered from them and current."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCHMARK = REPO / "benchmarks" / "compare_reference.py"


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("compare_reference")


def test_the_speed_table_in_the_results_page_is_current():
    proc = subprocess.run(
        [sys.executable, str(BENCHMARK), "--render-only", "--check"], cwd=REPO, capture_output=True, text=True
    )
    hint = "regenerate with `python benchmarks/compare_reference.py --render-only`"
    assert proc.returncode == 0, f"{proc.stderr}\n{hint}"


@pytest.mark.parametrize(
    ("flags", "kind"),
    [
        ("fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile", "amx"),
        ("fpu avx2 avx512f avx512_bf16", "avx512-bf16"),
        ("fpu avx2 avx512f", "avx512"),
        ("fpu avx2 fma", "other"),
    ],
)
def test_the_cpu_kind_comes_from_its_flags(bench, flags, kind):
    info = bench.cpu_info(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n")
    assert info == {"model": "Some CPU", "kind": kind}


def test_ratios_and_peak_shares_come_from_the_medians(bench):
    times = {"train/reference": [30.0, 20.0, 40.0], "train/bf16": [2.0, 3.0, 1.0], "train/fp32": [6.0, 6.0, 6.0],
             "infer/reference": [9.0], "infer/bf16": [1.0], "infer/fp32": [3.0]}
    rows = bench.summarise(times, {"train": 100.0, "infer": 30.0}, {"bf16": 200.0, "fp32": 50.0})
    assert rows["train"]["ratio_bf16"] == 15.0 and rows["train"]["ratio_fp32"] == 5.0
    assert rows["train"]["bf16_peak_share"] == 0.25  # 100 GFLOP in 2 s = 50 GFLOP/s of 200
    assert rows["infer"]["fp32_peak_share"] == 0.2


def test_a_new_kind_adds_rows_and_only_the_generated_block_changes(bench, tmp_path):
    stored = json.loads((REPO / "benchmarks" / "results" / "compare_reference.json").read_text())
    kind = next(iter(stored))
    other = copy.deepcopy(stored[kind])
    other["cpu"] = {"model": "Test CPU", "kind": "other"}
    other["cases"]["train"]["ratio_bf16"] = 99.0
    stored["other"] = other
    figures = tmp_path / "figures.json"
    figures.write_text(json.dumps(stored))
    doc = tmp_path / "results.md"
    doc.write_text(f"# Page\n\nintro\n\n{bench.BEGIN}\nold table\n{bench.END}\n\nkept\n")

    argv = ["--render-only", "--stored", str(figures), "--docs", str(doc)]
    assert bench.main([*argv, "--check"]) == 1
    assert bench.main(argv) == 0
    assert bench.main([*argv, "--check"]) == 0
    text = doc.read_text()
    assert text.startswith("# Page\n\nintro\n\n") and text.endswith("\n\nkept\n") and "old table" not in text
    assert "| Test CPU (other) |" in text and "| 99.0x |" in text
    assert text.count("| CKS training step") == len(stored)  # one training row per kind
