"""The correction loop without a GUI: detect -> points CSV -> edit -> import -> retrain (weakseg.inference.correct)."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

import weakseg
from weakseg.errors import DataError
from weakseg.inference import correct

from .blob_model import disc_image, same_partition


def test_detect_returns_labels_and_one_scored_centre_per_label(blob_checkpoint):
    image, truth = disc_image((120, 140), 6, seed=4)
    found = correct.detect(weakseg.load(str(blob_checkpoint)), image)
    assert same_partition(found.labels, truth)
    assert found.points.shape == (6, 2) and found.scores.shape == (6,)
    assert np.all(np.diff(found.scores) <= 0)  # label k + 1 has the k-th highest score
    rows, cols = np.floor(found.points).astype(int).T  # weakseg convention: pixel i covers [i, i + 1)
    assert np.array_equal(found.labels[rows, cols], np.arange(1, 7))


def test_napari_conversion_is_the_half_pixel_offset_and_keeps_the_last_two_axes():
    pts = np.array([[1.5, 2.5], [10.0, 0.5]], np.float32)
    np.testing.assert_allclose(correct.to_napari(pts), pts - 0.5)
    np.testing.assert_allclose(correct.from_napari(correct.to_napari(pts)), pts)
    np.testing.assert_allclose(correct.from_napari(np.array([[0, 4.0, 5.0]])), [[4.5, 5.5]])  # (z, y, x)
    assert correct.from_napari(np.zeros((0, 2))).shape == (0, 2)


def test_points_csv_round_trips_through_the_points_importer_reader(tmp_path):
    pts = np.array([[3.25, 4.0], [7.0, 8.5]])
    path = correct.write_points_csv(tmp_path / "sub" / "a.csv", correct.to_napari(pts), {"score": [0.9, 0.25]})
    assert path.read_text().splitlines() == ["index,axis-0,axis-1,score", "0,2.75,3.5,0.9", "1,6.5,8,0.25"]
    np.testing.assert_allclose(correct.read_points(path), pts)
    with pytest.raises(DataError, match="property 'score' has 1 values for 2 points"):
        correct.write_points_csv(tmp_path / "b.csv", pts, {"score": [1.0]})


def test_training_folder_refuses_images_without_points(tmp_path):
    image, _ = disc_image((32, 32), 1)
    with pytest.raises(DataError, match="no images with points"):
        correct.write_training_folder(tmp_path / "f", [])
    with pytest.raises(DataError, match="img: has no points; click once inside every cell"):
        correct.write_training_folder(tmp_path / "f", [("img", image, np.zeros((0, 2)))])
    rgb = np.zeros((20, 30, 3), np.uint8)
    assert correct.as_channel_first(rgb).shape == (3, 20, 30)
    with pytest.raises(DataError, match="expected a 2-D image"):
        correct.as_channel_first(np.zeros((2, 3, 4, 5)))


@pytest.mark.slow  # two real (tiny) CKS runs tracked in MLflow: about 40 s on 2 busy cores
def test_train_from_points_then_retrain_from_the_model_with_corrected_points(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    recipe = {
        "name": "loop-tiny",
        "data": {"store": "unused.zarr", "crop_size": 64, "num_workers": 0},
        "model": {
            "backbone": {"type": "convnext_atto", "fpn_channels": 32},
            "head": {"type": "lacss", "crop_size": 32, "encoder_hidden": [32], "detection_layers": 1,
                     "segmentation_layers": 1},
        },
        "collaborator": {"type": "cks"},
        "strategy": {"type": "cks"},
        "train": {"steps": 50, "batch_size": 1, "device": "cpu", "precision": "fp32", "eval_every": 0,
                  "checkpoint_every": 0},
    }
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(recipe))
    image, truth = disc_image((64, 64), 4, seed=2, radius=(5, 7))
    centres = np.array([np.argwhere(truth == k).mean(0) + 0.5 for k in range(1, truth.max() + 1)], np.float32)

    first = correct.train_from_points(tmp_path / "tiny.yaml", [("a", image, centres[:3])], tmp_path / "r0",
                                      name="first", steps=2, output=tmp_path / "runs")
    assert first.step == 2 and first.checkpoint.is_file() and first.metrics == {}  # no masks: no evaluation
    store = (tmp_path / "r0" / "store.zarr")
    assert weakseg.load(str(first.checkpoint)).predict(image).shape == (64, 64)

    second = correct.train_from_points(
        tmp_path / "tiny.yaml", [("a", image, centres[:3]), ("b", image, centres)], tmp_path / "r1",
        name="second", steps=2, output=tmp_path / "runs", init_from=first.checkpoint,
    )
    client = MlflowClient(tracking_uri=second.tracking_uri)
    params = client.get_run(second.run_id).data.params
    assert params["model.init_from"] == str(first.checkpoint)
    assert params["model.init_scope"] == "all"  # the retrain continues the collaborator too
    assert params["data.store"] == str(tmp_path / "r1" / "store.zarr")
    assert params["data.label_source.type"] == "csv"
    from weakseg.data.store import open_store

    assert open_store(store).info("a").n_points["csv"] == 3
    assert open_store(tmp_path / "r1" / "store.zarr").info("b").n_points["csv"] == 4
