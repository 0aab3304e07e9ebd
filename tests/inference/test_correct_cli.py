"""``weakseg correct``: detected centres as points CSVs that the points importer reads back."""

from __future__ import annotations

import numpy as np
import tifffile

from weakseg.cli import main
from weakseg.data.store import open_store

from .blob_model import disc_image


def test_correct_writes_images_and_scored_points_that_import_as_training_data(tmp_path, blob_checkpoint, capsys):
    images = tmp_path / "new"
    images.mkdir()
    truth = {}
    for k, name in enumerate(("a", "b")):
        image, truth[name] = disc_image((72, 90), 3 + k, seed=10 + k)
        tifffile.imwrite(images / f"{name}.tif", image[0])
    out = tmp_path / "edit"
    assert main(["correct", str(blob_checkpoint), str(images), "-o", str(out), "--device", "cpu"]) == 0
    assert "wrote 2 image(s) with 7 detected points" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["a.csv", "a.tif", "b.csv", "b.tif"]
    lines = (out / "b.csv").read_text().splitlines()
    assert lines[0] == "index,axis-0,axis-1,score" and len(lines) == 1 + 4

    store = tmp_path / "corrected.zarr"
    assert main(["data", "import", "points", str(out), "-o", str(store)]) == 0
    opened = open_store(store)
    for name in ("a", "b"):
        pts = opened.points(name, "csv")
        rows, cols = np.floor(pts).astype(int).T  # every imported point lies on its own true cell
        assert np.array_equal(np.sort(truth[name][rows, cols]), np.arange(1, truth[name].max() + 1))


def test_correct_names_a_missing_input_and_still_writes_the_others(tmp_path, blob_checkpoint, capsys):
    image, _ = disc_image((40, 40), 2)
    tifffile.imwrite(tmp_path / "ok.tif", image[0])
    code = main(["correct", str(blob_checkpoint), str(tmp_path / "ok.tif"), str(tmp_path / "gone.tif"),
                 "-o", str(tmp_path / "edit"), "--device", "cpu"])
    assert code == 1
    assert f"{tmp_path / 'gone.tif'}: no such file or folder" in capsys.readouterr().err
    assert (tmp_path / "edit" / "ok.csv").is_file()
