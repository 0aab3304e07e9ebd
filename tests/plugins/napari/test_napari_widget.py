"""The dock widget on a real napari Viewer: predict the current image, then train and retrain from points."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from napari_helpers import require

require("napari")
require("pytestqt")

from weakseg_napari._widget import WeaksegWidget  # noqa: E402

#: A principal model small enough to train a few steps on a CPU in seconds (as in tests/test_api.py).
TINY_MODEL = {
    "backbone": {"type": "convnext_atto", "fpn_channels": 32},
    "head": {"type": "lacss", "crop_size": 32, "encoder_hidden": [32], "detection_layers": 1, "segmentation_layers": 1},
}


def _save_screenshot(viewer, tmp_path: Path) -> Path:
    """The viewer window with the dock widget as PNG in tmp, copied to $WEAKSEG_SCREENSHOT_DIR when set."""
    path = tmp_path / "napari_widget.png"
    viewer.window.resize(1100, 640)
    viewer.reset_view()
    viewer.screenshot(str(path), canvas_only=False)
    target = os.environ.get("WEAKSEG_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(target) / path.name)
    return path


def test_widget_predicts_the_current_image_into_labels_and_scored_points(viewer, qtbot, blob_checkpoint, tmp_path):
    from inference.blob_model import disc_image, same_partition
    from PIL import Image

    image, truth = disc_image((160, 200), 7, seed=1)
    widget = WeaksegWidget(viewer)
    viewer.window.add_dock_widget(widget, name="weakseg")
    viewer.add_image(image[0], name="nuclei")
    widget.checkpoint.setText(str(blob_checkpoint))

    worker = widget.predict()
    assert worker is not None
    qtbot.waitUntil(lambda: "nuclei points" in viewer.layers, timeout=120_000)

    labels = viewer.layers["nuclei cells"].data
    assert same_partition(labels, truth)  # the blob model finds every disc exactly
    points = viewer.layers["nuclei points"]
    assert len(points.data) == 7 and points.metadata["weakseg"]["image"] == "nuclei"
    scores = np.asarray(points.features["score"])
    assert scores.shape == (7,) and np.all((scores > 0) & (scores < 1))
    rows, cols = np.round(points.data).astype(int).T  # napari coordinates: every centre on its own cell
    assert np.array_equal(np.sort(labels[rows, cols]), np.arange(1, 8))
    assert widget.progress.value() == widget.progress.maximum() == 1  # one tile
    assert "7 cells" in widget.status.text() and widget.train_button.isEnabled()

    shot = _save_screenshot(viewer, tmp_path)
    picture = np.asarray(Image.open(shot))
    assert picture.shape[0] > 200 and picture.shape[1] > 300 and picture.std() > 5


def test_widget_explains_what_is_missing_instead_of_starting(viewer):
    widget = WeaksegWidget(viewer)
    assert widget.predict() is None and "open an image" in widget.status.text()
    widget.recipe.setText("recipe.yaml")
    assert widget.train() is None and "points layer" in widget.status.text()
    assert widget.train(retrain=True) is None and "model to start from" in widget.status.text()


@pytest.fixture
def tiny_recipe(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    recipe = {
        "name": "napari-tiny",
        "data": {"store": "unused.zarr", "crop_size": 64, "num_workers": 0, "target_cell_size": None},
        "model": TINY_MODEL,
        "collaborator": {"type": "cks"},
        "strategy": {"type": "cks"},
        "train": {"steps": 50, "batch_size": 1, "device": "cpu", "precision": "fp32", "eval_every": 0,
                  "checkpoint_every": 0, "log_every": 1},
        "eval": {"max_images": 1, "panel": False},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.mark.slow  # two real (tiny) CKS runs tracked in MLflow: about a minute on 2 busy cores
def test_widget_trains_from_points_layers_then_retrains_from_its_model(viewer, qtbot, tiny_recipe, tmp_path):
    from inference.blob_model import disc_image
    from mlflow import MlflowClient

    image, truth = disc_image((64, 64), 4, seed=2, radius=(5, 7))
    ids = np.unique(truth)[1:]
    centres = np.array([np.argwhere(truth == k).mean(0) for k in ids])
    viewer.add_image(image[0], name="cells")
    viewer.add_points(centres[:3], name="cells points")  # one cell still missing
    widget = WeaksegWidget(viewer)
    widget.recipe.setText(str(tiny_recipe))
    widget.steps.setValue(2)
    widget.output.setText(str(tmp_path / "work"))

    assert widget.train() is not None
    qtbot.waitUntil(lambda: widget.worker is None, timeout=300_000)
    first = widget.last_run
    assert first is not None and first["step"] == 2, widget.status.text()
    assert first["run_id"] in widget.status.text()
    assert widget.checkpoint.text() == first["checkpoint"]  # the new model is the current one
    assert Path(first["checkpoint"]).is_file()
    assert widget.progress.value() == widget.progress.maximum() == 2

    viewer.layers["cells points"].add(centres[3:])  # the correction: click the missed cell
    assert widget.train(retrain=True) is not None
    qtbot.waitUntil(lambda: widget.worker is None, timeout=300_000)
    second = widget.last_run
    assert second is not first and second["run_id"] != first["run_id"], widget.status.text()
    client = MlflowClient(tracking_uri=second["tracking_uri"])
    params = client.get_run(second["run_id"]).data.params
    assert params["model.init_from"] == first["checkpoint"] and params["train.steps"] == "2"
    assert client.get_run(first["run_id"]).info.status == "FINISHED"
    csv_text = (tmp_path / "work" / "round-2" / "points" / "cells.csv").read_text()
    assert len(csv_text.strip().splitlines()) == 1 + 4  # header + the corrected four points

    # the retrained CKS model predicts through the same child process as any other checkpoint
    viewer.layers.selection.active = viewer.layers["cells"]
    assert widget.predict() is not None
    qtbot.waitUntil(lambda: widget.worker is None, timeout=300_000)
    assert viewer.layers["cells cells"].data.shape == (64, 64), widget.status.text()
    assert "cells:" in widget.status.text()


def test_viewer_opens_a_store_and_saves_points_through_the_plugin_manifest(viewer, tmp_path):
    """napari itself picks the plugin's reader for a store folder and its writer for a points layer."""
    import npe2
    import tifffile
    from inference.blob_model import disc_image

    from weakseg.inference.correct import import_points_store, read_points, write_points_csv

    manager = npe2.PluginManager.instance()
    if "weakseg" not in manager:  # installed: found through the napari.manifest entry point
        manifest = Path(__file__).resolve().parents[3] / "plugins" / "napari" / "weakseg_napari" / "napari.yaml"
        manager.register(npe2.PluginManifest.from_file(manifest))
    image, _truth = disc_image((48, 64), 3, seed=5)
    folder = tmp_path / "images"
    folder.mkdir()
    tifffile.imwrite(folder / "dish.tif", image[0])
    write_points_csv(folder / "dish.csv", np.array([[10.0, 12.0], [30.0, 40.0]]))
    store = import_points_store(folder, tmp_path / "dish.zarr")

    layers = viewer.open(str(store), plugin="weakseg")
    assert [layer.name for layer in layers] == ["dish", "dish csv"]
    np.testing.assert_allclose(viewer.layers["dish csv"].data, [[10.0, 12.0], [30.0, 40.0]], atol=1e-5)

    viewer.layers["dish csv"].add([[20.0, 5.0]])
    saved = viewer.layers["dish csv"].save(str(tmp_path / "edited.csv"), plugin="weakseg")
    assert saved == [str(tmp_path / "edited.csv")]
    np.testing.assert_allclose(read_points(tmp_path / "edited.csv"), [[10.5, 12.5], [30.5, 40.5], [20.5, 5.5]])
