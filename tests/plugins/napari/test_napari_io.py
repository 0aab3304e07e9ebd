"""The plugin's reader and writer without Qt: stores, prediction outputs and points CSVs round trip."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from weakseg.inference.correct import import_points_store, to_napari

pytest.importorskip("dask", reason="the reader wraps store arrays in dask")

from weakseg_napari._reader import get_reader, read_store  # noqa: E402
from weakseg_napari._writer import write_points  # noqa: E402


def _disc_scene(seed: int = 0, n: int = 4):
    from inference.blob_model import disc_image

    image, labels = disc_image((80, 96), n, seed=seed)
    ids = np.unique(labels)[1:]
    yy, xx = np.nonzero(labels)
    centres = np.array([[yy[labels[yy, xx] == k].mean(), xx[labels[yy, xx] == k].mean()] for k in ids])
    return image, labels, centres  # centres: napari coordinates (pixel indices)


def test_points_layer_saved_by_the_writer_imports_and_reads_back_as_the_same_layer(tmp_path):
    image, labels, centres = _disc_scene()
    folder = tmp_path / "images"
    folder.mkdir()
    tifffile.imwrite(folder / "cells.tif", image[0])
    tifffile.imwrite(folder / "cells_masks.tif", labels)
    scores = np.linspace(0.5, 0.9, len(centres))
    written = write_points(str(folder / "cells"), centres, {"features": {"score": scores}, "name": "cells points"})
    assert written == [str(folder / "cells.csv")]
    header = (folder / "cells.csv").read_text().splitlines()[0]
    assert header == "index,axis-0,axis-1,score"

    store = import_points_store(folder, tmp_path / "cells.zarr", labels="{parent}/{stem}_masks.tif")
    reader = get_reader(str(store))
    assert reader is read_store
    layers = {meta["name"]: (data, kind) for data, meta, kind in reader(str(store))}
    # the imported points are the point set "csv"; the importer also stores the masks' centroids
    assert set(layers) == {"cells", "cells cells", "cells csv", "cells centroids"}
    data, kind = layers["cells"]
    assert kind == "image" and np.array_equal(np.asarray(data), image[0])
    data, kind = layers["cells cells"]
    assert kind == "labels" and np.array_equal(np.asarray(data), labels)
    data, kind = layers["cells csv"]
    assert kind == "points"
    np.testing.assert_allclose(data, centres, atol=1e-4)  # napari -> CSV -> store (+0.5) -> napari (-0.5)


def test_reader_shows_only_the_first_image_of_a_store_and_splits_channels(tmp_path):
    image, _labels, centres = _disc_scene()
    folder = tmp_path / "images"
    folder.mkdir()
    for k, name in enumerate(("a", "b")):
        tifffile.imwrite(folder / f"{name}.tif", np.stack([image[0], image[0] // (k + 2)]))
        write_points(str(folder / f"{name}.csv"), centres, {})
    store = import_points_store(folder, tmp_path / "two.zarr")
    layers = read_store(str(store))
    images = [(meta["name"], meta["visible"], meta.get("channel_axis")) for _d, meta, kind in layers if kind == "image"]
    assert images == [(["a c0", "a c1"], True, 0), (["b c0", "b c1"], False, 0)]


def test_prediction_outputs_open_as_labels_and_scored_points(tmp_path, blob_checkpoint, capsys):
    from inference.blob_model import disc_image

    from weakseg.cli import main

    image, truth = disc_image((96, 96), 5, seed=3)
    tifffile.imwrite(tmp_path / "img.tif", image[0])
    out = tmp_path / "pred"
    assert main(["predict", str(blob_checkpoint), str(tmp_path / "img.tif"), "-o", str(out),
                 "--format", "tiff,csv", "--device", "cpu", "--quiet"]) == 0

    layers = get_reader(str(out / "img.tif"))(str(out / "img.tif"))
    assert [(meta["name"], kind) for _d, meta, kind in layers] == [("img cells", "labels"), ("img points", "points")]
    labels = layers[0][0]
    assert labels.max() == 5 and np.array_equal(labels > 0, truth > 0)
    points, meta = layers[1][0], layers[1][1]
    assert points.shape == (5, 2)
    assert set(meta["features"]) >= {"label", "score", "area"}
    assert np.all((meta["features"]["score"] > 0) & (meta["features"]["score"] < 1))
    # each point sits on its own cell (napari coordinates: pixel indices)
    rows, cols = np.round(points).astype(int).T
    assert np.array_equal(np.sort(labels[rows, cols]), np.arange(1, 6))

    csv_layers = get_reader(str(out / "img.csv"))(str(out / "img.csv"))
    np.testing.assert_allclose(csv_layers[0][0], points)


def test_reader_leaves_other_files_to_other_plugins(tmp_path):
    tifffile.imwrite(tmp_path / "plain.tif", np.zeros((8, 8), np.uint8))
    (tmp_path / "points.csv").write_text("index,axis-0,axis-1\n0,1,2\n")
    (tmp_path / "other.zarr").mkdir()
    (tmp_path / "other.zarr" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    for name in ("plain.tif", "points.csv", "other.zarr", "missing.zarr"):
        assert get_reader(str(tmp_path / name)) is None
    assert get_reader([str(tmp_path / "plain.tif"), str(tmp_path / "points.csv")]) is None


def test_writer_adds_the_csv_suffix_and_keeps_text_features(tmp_path):
    from weakseg.inference.correct import read_points

    pts = np.array([[3.0, 4.0], [10.5, 2.25]])
    (path,) = write_points(str(tmp_path / "edited"), pts, {"properties": {"kind": np.array(["a", "b"])}})
    assert path.endswith("edited.csv")
    assert (tmp_path / "edited.csv").read_text().splitlines()[1:] == ["0,3,4,a", "1,10.5,2.25,b"]
    np.testing.assert_allclose(read_points(path), pts + 0.5)  # the importer's convention
    np.testing.assert_allclose(to_napari(read_points(path)), pts)
