"""The plugin's npe2 manifest validates, its commands import, and the package metadata points at it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from napari_helpers import require

REPO = Path(__file__).resolve().parents[3]
MANIFEST = REPO / "plugins" / "napari" / "weakseg_napari" / "napari.yaml"


def test_manifest_validates_with_its_imports():
    npe2 = require("npe2")
    manifest = npe2.PluginManifest.from_file(MANIFEST)
    manifest.validate_imports()  # every python_name resolves to a callable
    assert manifest.name == "weakseg"
    contributions = manifest.contributions
    assert [r.command for r in contributions.readers] == ["weakseg.get_reader"]
    assert contributions.readers[0].accepts_directories
    assert [w.layer_types for w in contributions.writers] == [["points"]]
    assert contributions.writers[0].filename_extensions == [".csv"]
    assert [w.display_name for w in contributions.widgets] == ["Segment and correct"]


def test_npe2_validate_command_accepts_the_manifest():
    require("npe2")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "plugins" / "napari"), *sys.path])}
    proc = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", str(MANIFEST), "--imports"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "valid" in proc.stdout


def test_pyproject_ships_the_manifest_as_an_entry_point_and_package_data():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert meta["project"]["entry-points"]["napari.manifest"] == {"weakseg": "weakseg_napari:napari.yaml"}
    assert "napari.yaml" in meta["tool"]["setuptools"]["package-data"]["weakseg_napari"]
    assert "plugins/napari" in meta["tool"]["setuptools"]["packages"]["find"]["where"]
    extra = meta["project"]["optional-dependencies"]["napari"]
    assert any(req.startswith("napari[") for req in extra) and any(req.startswith("npe2") for req in extra)
    assert not any("napari" in dep for dep in meta["project"]["dependencies"])  # the core install stays light


def test_docs_page_shows_the_committed_screenshot_and_the_readme_links_it():
    page = (REPO / "docs" / "napari.md").read_text()
    assert "](images/napari_widget.png)" in page
    picture = REPO / "docs" / "images" / "napari_widget.png"
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and picture.stat().st_size > 20_000
    readme = (REPO / "README.md").read_text()
    assert "[docs/napari.md](docs/napari.md)" in readme and 'pip install -e ".[napari]"' in readme
