"""Bad input and interrupted imports: clear errors naming files, --skip-bad reports, resume after a crash."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from weakseg.components import ImageRecord
from weakseg.data.ingest import run_import
from weakseg.data.store import REPORT_NAME, StoreWriter, open_store
from weakseg.errors import DataError

from .io_fixtures import blob_labels, image_for, kromp_like, write_tif


def test_corrupt_image_names_file_and_leaves_store_incomplete(tmp_path):
    kromp_like(tmp_path / "src")
    bad = tmp_path / "src/images/normal_1.tif"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated
    with pytest.raises(DataError, match=r"normal_1\.tif: cannot read.*--skip-bad|normal_1\.tif: cannot read"):
        run_import("folder", tmp_path / "src", tmp_path / "s.zarr")
    # the store is refused either way: marked incomplete, or never created when the bad file is read first
    # (the read order follows the file system's listing)
    with pytest.raises(DataError, match="incomplete|store not found"):
        open_store(tmp_path / "s.zarr")


def test_skip_bad_imports_the_rest_and_reports(tmp_path):
    kromp_like(tmp_path / "src", names=("a", "b", "c", "d", "e"))
    (tmp_path / "src/images/b.tif").write_bytes(b"not a tiff at all")
    write_tif(tmp_path / "src/labels/c.tif", np.zeros((10, 10), np.uint16))  # shape mismatch
    write_tif(tmp_path / "src/labels/d.tif", np.zeros((48, 56), np.uint16))  # no cells
    result = run_import("folder", tmp_path / "src", tmp_path / "s.zarr", skip_bad=True)
    store = open_store(tmp_path / "s.zarr")
    assert [i.image_id for i in store.images] == ["a", "e"]
    assert result.images == 2 and len(result.skipped) == 3
    report = json.loads((tmp_path / "s.zarr" / REPORT_NAME).read_text())
    errors = {item["image_id"]: item["error"] for item in report["skipped"]}
    assert "b.tif: cannot read" in errors["b"]
    assert "labels/c.tif: the label image has shape 10x10 but its image" in errors["c"] and "48x56" in errors["c"]
    assert "labels/d.tif" in errors["d"] and "no cells" in errors["d"]
    assert not (tmp_path / "s.zarr/images/b").exists()  # nothing half-written is left
    assert store.summary()["skipped"] == 3


def test_label_image_with_colours_is_rejected(tmp_path):
    from PIL import Image

    kromp_like(tmp_path / "src", names=("a",))
    (tmp_path / "src/labels/a.tif").unlink()
    Image.fromarray(np.zeros((48, 56, 3), np.uint8)).save(tmp_path / "src/labels/a.png")
    with pytest.raises(DataError, match=r"a\.png: the label image has 3 channels"):
        run_import("folder", tmp_path / "src", tmp_path / "s.zarr")


class Crash(Exception):
    """Not a data problem: stands for a crash in the middle of an import."""


def _records(n, calls, crash_at=None):
    records = []
    for k in range(n):
        labels = blob_labels(seed=k)

        def load(k=k, labels=labels):
            calls.append(k)
            if k == crash_at:
                raise Crash(f"simulated crash at image {k}")
            return image_for(labels)

        records.append(ImageRecord(image_id=f"im{k}", source=f"memory:{k}", load_image=load,
                                   load_labels=lambda labels=labels: labels))
    return records


def test_interrupted_import_resumes(tmp_path):
    path = tmp_path / "s.zarr"
    calls: list[int] = []
    writer = StoreWriter(path, fingerprint={"data": "six images"})
    with pytest.raises(Crash):
        writer.add_all(_records(6, calls, crash_at=3), workers=1)
    done_before = sorted(set(calls) - {3})
    with pytest.raises(DataError, match="incomplete.*resume"):
        open_store(path)

    calls.clear()
    writer = StoreWriter(path, fingerprint={"data": "six images"})
    skipped = writer.add_all(_records(6, calls), workers=1)
    store = writer.close()
    assert skipped == [] and sorted(writer.resumed) == [f"im{k}" for k in done_before]
    assert sorted(calls) == sorted(set(range(6)) - set(done_before))  # finished images were not redone
    assert [i.image_id for i in store.images] == [f"im{k}" for k in range(6)]
    for k in range(6):
        np.testing.assert_array_equal(store.labels(f"im{k}")[...], blob_labels(seed=k))


def test_other_options_on_unfinished_store_need_overwrite(tmp_path):
    kromp_like(tmp_path / "src")
    writer = StoreWriter(tmp_path / "s.zarr", fingerprint={"other": True})
    writer.add_all(_records(1, []))
    with pytest.raises(DataError, match="unfinished import.*--overwrite"):
        run_import("folder", tmp_path / "src", tmp_path / "s.zarr")
    run_import("folder", tmp_path / "src", tmp_path / "s.zarr", overwrite=True)
    assert len(open_store(tmp_path / "s.zarr").images) == 3


def _done_groups(store: Path) -> int:
    n = 0
    for meta in store.glob("images/*/zarr.json"):
        try:
            if "weakseg" in json.loads(meta.read_text()).get("attributes", {}):
                n += 1
        except (OSError, json.JSONDecodeError):
            pass
    return n


@pytest.mark.slow
def test_killed_cli_import_reruns_cleanly(tmp_path):
    names = tuple(f"img_{k:02d}" for k in range(24))
    truth = kromp_like(tmp_path / "src", names=names, shape=(300, 300))
    store = tmp_path / "s.zarr"
    cmd = [sys.executable, "-m", "weakseg", "data", "import", "folder", str(tmp_path / "src"), "-o", str(store),
           "--workers", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while _done_groups(store) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    if proc.returncode == 0:
        pytest.skip("the import finished before it could be killed")
    with pytest.raises(DataError, match="incomplete"):
        open_store(store)

    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "resumed" in out.stdout
    result = open_store(store)
    assert [i.image_id for i in result.images] == list(names)
    for name, labels in truth.items():
        info = result.info(name)
        assert info.n_instances == len(np.unique(labels)) - 1 == info.n_points["centroids"]
        np.testing.assert_array_equal(result.labels(name)[...], labels)
