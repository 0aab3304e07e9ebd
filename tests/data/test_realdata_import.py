"""The bar: importing ../shared/data/usiigaci and ../shared/data/kromp gives stores whose counts match the source.

The expected counts are computed here, independently of weakseg, from the files themselves (Pillow /
tifffile + numpy): one image per source image, every instance id present, one point per id.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from weakseg.cli import main
from weakseg.data.store import open_store

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


def _info(store, capsys) -> dict:
    assert main(["data", "info", str(store), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _check(store_path, expected: dict[str, np.ndarray], capsys) -> dict:
    info = _info(store_path, capsys)
    n_ids = {k: len(np.unique(v)) - int((v == 0).any()) for k, v in expected.items()}
    assert info["complete"] is True
    assert info["images"] == len(expected)
    assert info["instances"] == sum(n_ids.values())
    assert info["points"] == {"centroids": sum(n_ids.values())}
    store = open_store(store_path)
    for image_id, labels in expected.items():
        im = store.info(image_id)
        assert im.n_instances == n_ids[image_id] == im.n_points["centroids"], image_id
        stored = store.labels(image_id)[...]
        np.testing.assert_array_equal(stored, labels.astype(np.int32))  # every id kept, unchanged
        pts = store.points(image_id, "centroids")
        # each point sits in the pixel grid of its image
        assert (pts >= 0).all() and (pts[:, 0] <= labels.shape[0]).all() and (pts[:, 1] <= labels.shape[1]).all()
    return info


def test_usiigaci(shared_data, tmp_path, capsys):
    src = shared_data / "usiigaci"
    expected = {d.name: np.asarray(Image.open(d / "instances_ids.png")) for d in sorted(src.glob("set*"))}
    assert len(expected) == 40  # per the data README
    store = tmp_path / "usiigaci.zarr"
    assert main(["data", "import", "folder", str(src), "-o", str(store), "--set", "splits.test=set(3[1-9]|40)"]) == 0
    capsys.readouterr()
    info = _check(store, expected, capsys)
    test_ids = {f"set{k}" for k in range(31, 41)}
    assert info["splits"]["test"]["images"] == 10
    assert info["splits"]["test"]["instances"] == sum(len(np.unique(expected[k])) - 1 for k in test_ids)
    assert info["splits"]["train"]["images"] == 30
    # raw pixels are stored unchanged, as uint16, one channel
    img = tifffile.imread(src / "set7" / "raw.tif")
    np.testing.assert_array_equal(open_store(store).image("set7")[0], img)


def test_kromp(shared_data, tmp_path, capsys):
    src = shared_data / "kromp"
    expected = {p.stem: tifffile.imread(p) for p in sorted((src / "labels").glob("*.tif"))}
    assert len(expected) == 42  # per the data README
    store = tmp_path / "kromp.zarr"
    assert main(["data", "import", "folder", str(src), "-o", str(store), "--set", "group_column=Diagnosis"]) == 0
    capsys.readouterr()
    info = _check(store, expected, capsys)
    assert info["instances"] == 2678  # the README's count
    assert info["group_names"] == ["Ganglioneuroblastoma", "Neuroblastoma", "normal (HaCaT)"]
    assert info["groups"] == {"Ganglioneuroblastoma": 4, "Neuroblastoma": 12, "normal (HaCaT)": 26}


def test_nuclei_label_source_on_kromp(shared_data, tmp_path):
    """Blob detection finds real nuclei (Kromp's stains) when told the nucleus size (the A431 setting)."""
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    from weakseg.data.labels import detect_nuclei
    from weakseg.data.masks import instance_centroids

    f1s = []
    for name in ("normal_5", "Neuroblastoma_3", "Ganglioneuroblastoma_0", "normal_11"):
        image = tifffile.imread(shared_data / "kromp/images" / f"{name}.tif")
        _ids, truth, area = instance_centroids(tifffile.imread(shared_data / "kromp/labels" / f"{name}.tif"))
        diameter = float(np.median(2 * np.sqrt(area / np.pi)))
        found = detect_nuclei(image, diameter=diameter)
        d = cdist(found, truth)
        r, c = linear_sum_assignment(d)
        tp = int((d[r, c] < diameter / 2).sum())
        f1s.append(2 * tp / (len(found) + len(truth)))
    assert min(f1s) > 0.6 and np.mean(f1s) > 0.8, f1s
