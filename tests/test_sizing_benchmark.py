"""benchmarks/sizing.py: its page is written from its stored figures and is current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_the_sizing_page_is_current_with_its_figures():
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "sizing.py"), "--render-only", "--check"],
        cwd=REPO, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    page = (REPO / "docs" / "sizing.md").read_text()
    assert "| kromp | supervised |" in page and "estimate within 20 %" in page
