"""User errors at ``weakseg data ...`` through the real command line in a subprocess: exit code 2, one
message naming the file or flag, no traceback, and nothing lost (sources untouched, no half store)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .io_fixtures import blob_labels, image_for, kromp_like, usiigaci_like, write_tif

REPO = Path(__file__).resolve().parents[2]


def cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "weakseg", *map(str, args)], capture_output=True, text=True, cwd=REPO, timeout=300
    )


def assert_user_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)


def digest(root: Path) -> dict[str, str]:
    """Content hash of every file under ``root`` (to show that a failed command changed nothing)."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_a_non_positive_worker_count_is_a_usage_error(tmp_path):
    usiigaci_like(tmp_path / "src", n_sets=2)
    before = digest(tmp_path / "src")
    for value in ("-3", "0", "two"):
        proc = cli("data", "import", "folder", tmp_path / "src", "-o", tmp_path / "s.zarr", "--workers", value)
        assert_user_error(proc, "--workers", "positive integer")
    assert not (tmp_path / "s.zarr").exists()
    assert digest(tmp_path / "src") == before


def test_skip_bad_with_no_good_image_leaves_no_store(tmp_path):
    kromp_like(tmp_path / "src", names=("a", "b"))
    for name in ("a", "b"):
        (tmp_path / "src" / "images" / f"{name}.tif").write_bytes(b"not a tiff")
    before = digest(tmp_path / "src")
    proc = cli("data", "import", "folder", tmp_path / "src", "-o", tmp_path / "s.zarr", "--skip-bad")
    assert_user_error(proc, str(tmp_path / "src"), "none of its 2 image(s)", "a.tif", "b.tif")
    assert not (tmp_path / "s.zarr").exists()
    # an empty output folder made beforehand is kept, and stays empty
    (tmp_path / "empty.zarr").mkdir()
    proc = cli("data", "import", "folder", tmp_path / "src", "-o", tmp_path / "empty.zarr", "--skip-bad")
    assert_user_error(proc, "could be imported")
    assert list((tmp_path / "empty.zarr").iterdir()) == []
    assert digest(tmp_path / "src") == before
    # the same folder with one good image imports it and reports the other
    kromp_like(tmp_path / "src", names=("a",))
    proc = cli("data", "import", "folder", tmp_path / "src", "-o", tmp_path / "s.zarr", "--skip-bad")
    assert proc.returncode == 0, proc.stderr
    assert "imported 1 images" in proc.stdout and "b.tif" in proc.stdout


def _points_folder(root: Path, rows: dict[str, str]) -> None:
    labels = blob_labels((48, 56), n=3, seed=1)
    for name, csv in rows.items():
        write_tif(root / f"{name}.tif", image_for(labels, np.uint8))
        (root / f"{name}.csv").write_text(csv)


@pytest.mark.parametrize("value", ["nan", "NaN", "inf"])
def test_non_finite_points_are_reported_as_such_with_file_and_row(tmp_path, value):
    _points_folder(tmp_path / "pts", {"a": f"y,x\n10.5,12.5\n{value},20\n"})
    before = digest(tmp_path / "pts")
    proc = cli("data", "import", "points", tmp_path / "pts", "-o", tmp_path / "p.zarr")
    assert_user_error(proc, f"{tmp_path / 'pts' / 'a.csv'}:3", "non-finite")
    assert "outside" not in proc.stderr
    assert not (tmp_path / "p.zarr").exists()  # nothing was written, so nothing is left to resume
    assert digest(tmp_path / "pts") == before


def test_non_finite_points_skipped_with_the_reason(tmp_path):
    import json

    _points_folder(tmp_path / "pts", {"a": "y,x\n10.5,12.5\n", "b": "y,x\nnan,3\n"})
    proc = cli("data", "import", "points", tmp_path / "pts", "-o", tmp_path / "p.zarr", "--skip-bad")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "p.zarr" / "import_report.json").read_text())
    (skipped,) = report["skipped"]
    assert skipped["image_id"] == "b" and "b.csv:2" in skipped["error"] and "non-finite" in skipped["error"]


def test_bad_importer_options_name_the_option(tmp_path):
    usiigaci_like(tmp_path / "src", n_sets=1)
    out = tmp_path / "s.zarr"
    assert_user_error(cli("data", "import", "folder", tmp_path / "src", "-o", out, "--set", "images=/etc/*"),
                      "'/etc/*'", "relative to the import source")
    assert_user_error(cli("data", "import", "folder", tmp_path / "src", "-o", out, "--set", "images="),
                      "file pattern ''")
    assert_user_error(cli("data", "import", "folder", tmp_path / "src", "-o", out, "--set", "pixel_size=-1"),
                      "pixel_size", "> 0")
    assert not out.exists()


def test_show_argument_errors(tmp_path):
    from weakseg.data.ingest import run_import

    usiigaci_like(tmp_path / "src", n_sets=2)
    store = tmp_path / "s.zarr"
    run_import("folder", tmp_path / "src", store)
    before = digest(store)
    png = tmp_path / "o.png"
    assert_user_error(cli("data", "show", store, "set1", "-o", png, "--max-size", "0"), "--max-size")
    assert_user_error(cli("data", "show", store, "set1", "-o", png, "--region=-5:10,0:10"), "--region")
    assert_user_error(cli("data", "show", store, "set1", "-o", tmp_path / "src"), str(tmp_path / "src"), "folder")
    assert not png.exists()
    assert digest(store) == before
    # any file name gets a PNG (the overlay format), not an "unknown extension" error
    proc = cli("data", "show", store, "set1", "-o", tmp_path / "o.view")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "o.view").read_bytes()[:4] == b"\x89PNG"


def test_overwrite_keeps_the_old_store_until_a_new_one_is_complete(tmp_path):
    from weakseg.data.store import open_store

    usiigaci_like(tmp_path / "good", n_sets=2)
    store = tmp_path / "s.zarr"
    assert cli("data", "import", "folder", tmp_path / "good", "-o", store).returncode == 0
    before = digest(store)
    kromp_like(tmp_path / "bad", names=("a", "b"))
    for name in ("a", "b"):
        (tmp_path / "bad" / "images" / f"{name}.tif").write_bytes(b"not a tiff")
    proc = cli("data", "import", "folder", tmp_path / "bad", "-o", store, "--overwrite", "--skip-bad")
    assert_user_error(proc, str(tmp_path / "bad"), "could be imported")
    assert digest(store) == before and len(open_store(store).images) == 2  # the old store is back, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "good", "s.zarr"]
    # a successful replacement leaves nothing aside
    kromp_like(tmp_path / "bad", names=("a", "b"))
    assert cli("data", "import", "folder", tmp_path / "bad", "-o", store, "--overwrite").returncode == 0
    assert [i.image_id for i in open_store(store).images] == ["a", "b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "good", "s.zarr"]
