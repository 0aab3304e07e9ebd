"""``weakseg data import | info | show`` through the real command line entry point."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from weakseg.cli import main

from .io_fixtures import kromp_like, usiigaci_like


def test_import_info_show(tmp_path, capsys):
    truth = usiigaci_like(tmp_path / "src", n_sets=4)
    store = tmp_path / "u.zarr"
    rc = main(["data", "import", "folder", str(tmp_path / "src"), "-o", str(store),
               "--set", "splits.test=set(3|4)", "--set", "group=phase"])
    out = capsys.readouterr().out
    assert rc == 0 and "imported 4 images" in out and "test 2" in out

    assert main(["data", "info", str(store), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    n_cells = {k: len(np.unique(v)) - 1 for k, v in truth.items()}
    assert info["images"] == 4 and info["instances"] == sum(n_cells.values())
    assert info["points"] == {"centroids": sum(n_cells.values())}
    assert info["splits"]["test"]["images"] == 2
    assert info["splits"]["test"]["instances"] == n_cells["set3"] + n_cells["set4"]
    assert info["group_names"] == ["phase"] and info["splits"]["train"]["sizes"] == {"64x80": 2}

    assert main(["data", "info", str(store)]) == 0
    assert "per split" in capsys.readouterr().out

    png = tmp_path / "o.png"
    assert main(["data", "show", str(store), "set1", "-o", str(png)]) == 0
    rgb = np.asarray(Image.open(png))
    assert rgb.shape == (64, 80, 3)
    # points are drawn in yellow on each cell
    assert ((rgb[..., 0] == 255) & (rgb[..., 1] == 255) & (rgb[..., 2] == 0)).sum() >= n_cells["set1"]
    assert main(["data", "show", str(store), "set1", "-o", str(png), "--region", "0:32,0:40", "--no-labels"]) == 0
    assert np.asarray(Image.open(png)).shape == (32, 40, 3)


def test_errors_exit_2_with_message(tmp_path, capsys):
    kromp_like(tmp_path / "src", names=("a", "b"))
    (tmp_path / "src/images/b.tif").write_bytes(b"garbage")
    rc = main(["data", "import", "folder", str(tmp_path / "src"), "-o", str(tmp_path / "s.zarr")])
    err = capsys.readouterr().err
    assert rc == 2 and "b.tif: cannot read" in err and "Traceback" not in err

    rc = main(["data", "import", "folder", str(tmp_path / "src"), "-o", str(tmp_path / "s.zarr"), "--skip-bad"])
    out = capsys.readouterr().out
    assert rc == 0 and "imported 1 images" in out and "skipped 1 image(s)" in out and "import_report.json" in out

    assert main(["data", "info", str(tmp_path / "missing.zarr")]) == 2
    assert "store not found" in capsys.readouterr().err
    assert main(["data", "show", str(tmp_path / "s.zarr"), "zzz", "-o", str(tmp_path / "x.png")]) == 2
    assert "no image 'zzz'" in capsys.readouterr().err
    assert main(["data", "import", "folder", str(tmp_path / "src"), "-o", str(tmp_path / "t.zarr"),
                 "--set", "nope=1"]) == 2
    assert "unknown key 'nope'" in capsys.readouterr().err


def test_label_source_option_and_json_output(tmp_path, capsys):
    kromp_like(tmp_path / "src", names=("a", "b"))
    rc = main(["data", "import", "folder", str(tmp_path / "src"), "-o", str(tmp_path / "s.zarr"), "--json",
               "--label-source", "centroids", "--label-source", "{type: nuclei, diameter: 10}"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["images"] == 2
    names = set(out["summary"]["points"])
    assert "centroids" in names and any(n.startswith("nuclei") for n in names)


def test_set_takes_file_templates_unquoted(tmp_path, capsys):
    from .io_fixtures import blob_labels, image_for, write_png, write_tif

    labels = blob_labels()
    write_png(tmp_path / "src/raw/a.png", image_for(labels, np.uint8))
    write_tif(tmp_path / "src/gt/a_label.tif", labels.astype(np.uint16))
    rc = main(["data", "import", "folder", str(tmp_path / "src"), "-o", str(tmp_path / "s.zarr"),
               "--set", "images=raw/*.png", "--set", "labels={parent}/../gt/{stem}_label.tif",
               "--set", "splits={test: a}"])
    assert rc == 0, capsys.readouterr().err
    assert "test 1" in capsys.readouterr().out
