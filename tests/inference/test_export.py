"""Exports round-trip: label TIFF, OME-Zarr labels, COCO json (RLE), per-cell CSV, PNG overlay."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import tifffile

from weakseg.inference import export, tiling
from weakseg.inference.tiling import LabelTable

from .blob_model import disc_image

# pycocotools' decode trips numpy 2's copy-keyword deprecation inside the library
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def labelled():
    image, labels = disc_image((150, 190), 25, seed=3, channels=2)
    n = int(labels.max())
    table = LabelTable(np.linspace(0.99, 0.5, n).astype(np.float32), np.zeros((n, 2), np.float32))
    return image, labels, table


def test_tiff_round_trip(tmp_path, labelled):
    _, labels, _ = labelled
    path = export.write_tiff(tmp_path / "l.tif", labels)
    back = tifffile.imread(path)
    assert back.dtype == np.int32
    np.testing.assert_array_equal(back, labels)
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].compression != 1  # compressed
    assert [p.name for p in tmp_path.iterdir()] == ["l.tif"]  # no temporary left behind


def test_coco_json_decodes_to_the_same_masks(tmp_path, labelled):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    _, labels, table = labelled
    path = export.write_coco(tmp_path / "l.coco.json", labels, table, file_name="img.tif")
    data = json.loads(path.read_text())
    assert len(data["annotations"]) == labels.max()
    for ann in data["annotations"]:
        k = ann["id"]
        decoded = mask_utils.decode(ann["segmentation"])
        np.testing.assert_array_equal(decoded.astype(bool), labels == k)
        assert ann["area"] == (labels == k).sum()
        ys, xs = np.nonzero(labels == k)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert ann["score"] == pytest.approx(float(table.scores[k - 1]))
    coco = COCO()
    coco.dataset = data
    coco.createIndex()
    assert len(coco.getAnnIds(imgIds=[1])) == labels.max()


def test_coco_rle_edge_cases():
    from pycocotools import mask as mask_utils

    labels = np.zeros((6, 5), np.int32)
    labels[0, 0] = 1  # first pixel
    labels[:, 4] = 2  # a full last column (runs across the image end)
    labels[2:5, 1:3] = 3
    for ann in export.coco_dict(labels)["annotations"]:
        np.testing.assert_array_equal(mask_utils.decode(ann["segmentation"]).astype(bool), labels == ann["id"])


def test_measurements_match_regionprops(monkeypatch, labelled):
    from skimage.measure import regionprops

    image, labels, table = labelled
    monkeypatch.setattr(tiling, "BAND_PIXELS", 1000)  # many bands: cells straddle them
    cols = export.measure(labels, image, table)
    props = regionprops(labels, intensity_image=np.moveaxis(image, 0, -1).astype(np.float64))
    assert len(cols["label"]) == len(props) == labels.max()
    for i, p in enumerate(props):
        assert cols["label"][i] == p.label
        assert cols["area"][i] == p.area
        np.testing.assert_allclose([cols["centroid_y"][i], cols["centroid_x"][i]], np.array(p.centroid) + 0.5)
        assert [cols[k][i] for k in ("bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1")] == list(p.bbox)
        np.testing.assert_allclose([cols["mean_intensity_c0"][i], cols["mean_intensity_c1"][i]], p.intensity_mean)
        assert cols["score"][i] == pytest.approx(table.scores[p.label - 1])


def test_csv_has_one_row_per_cell(tmp_path, labelled):
    image, labels, table = labelled
    path = export.write_csv(tmp_path / "cells.csv", labels, image, table)
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == labels.max()
    assert {"label", "score", "area", "centroid_y", "bbox_x1", "mean_intensity_c1"} <= set(rows[0])


def test_ome_zarr_labels_new_store_and_inside_input(tmp_path, labelled):
    import zarr

    from weakseg.inference.io import read_image

    image, labels, _ = labelled
    path = export.write_zarr_labels(tmp_path / "out.ome.zarr", labels, chunk=64)
    root = zarr.open_group(path, mode="r")
    assert root["labels"].attrs["ome"]["labels"] == ["cells"]
    assert "image-label" in root["labels/cells"].attrs["ome"]
    np.testing.assert_array_equal(root["labels/cells/0"][:], labels)
    # an existing OME-Zarr image gets labels/cells beside its data
    img = zarr.open_group(tmp_path / "img.zarr", mode="w", zarr_format=3)
    img.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": ["c", "y", "x"], "datasets": [{"path": "0"}]}]}
    img.create_array("0", shape=image.shape, dtype=image.dtype)[:] = image
    export.add_labels_to_ome_zarr(tmp_path / "img.zarr", labels)
    export.add_labels_to_ome_zarr(tmp_path / "img.zarr", labels[::-1].copy())  # overwrite atomically
    again = zarr.open_group(tmp_path / "img.zarr", mode="r")
    assert again["labels"].attrs["ome"]["labels"] == ["cells"]
    np.testing.assert_array_equal(again["labels/cells/0"][:], labels[::-1])
    np.testing.assert_array_equal(read_image(tmp_path / "img.zarr"), image)


def test_png_overlay(tmp_path, labelled):
    from PIL import Image

    image, labels, _ = labelled
    path = export.write_png_overlay(tmp_path / "o.png", labels, image, max_side=100)
    pic = np.asarray(Image.open(path))
    assert pic.shape == (75, 95, 3)
    assert ((pic == (255, 220, 0)).all(-1)).sum() > 0  # outlines drawn


def test_atomic_file_leaves_target_untouched_on_error(tmp_path):
    target = tmp_path / "keep.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), export.atomic_file(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
