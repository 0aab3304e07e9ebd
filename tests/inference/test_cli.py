"""``weakseg predict`` end to end with a real checkpoint (the blob strategy) and ``weakseg.load``."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import tifffile

import weakseg
from weakseg.cli import main

from .blob_model import disc_image, same_partition


@pytest.fixture
def inputs(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    truths = {}
    for k, shape in enumerate([(120, 160), (200, 150)]):
        image, truth = disc_image(shape, 8, seed=k)
        tifffile.imwrite(folder / f"img{k}.tif", image[0], compression="zlib")
        truths[f"img{k}"] = (image, truth)
    (folder / "bad.tif").write_bytes(b"II*\x00 this is not a tiff" * 5)
    return folder, truths


def test_load_returns_a_predictor(blob_checkpoint):
    image, truth = disc_image((90, 110), 5, seed=7)
    pred = weakseg.load(blob_checkpoint, tile_size=100, overlap=64)
    assert pred.tile_size == 100 and pred.in_channels == 1
    assert same_partition(pred.predict(image), truth)
    assert same_partition(pred.predict(np.repeat(image, 3, 0)), truth)  # RGB -> grey for a 1-channel model


def test_predict_folder_with_a_bad_file(tmp_path, inputs, blob_checkpoint, capsys):
    folder, truths = inputs
    out = tmp_path / "out"
    code = main(
        [
            "predict",
            str(blob_checkpoint),
            str(folder),
            "-o",
            str(out),
            "--format",
            "tiff,coco,csv,png,zarr",
            "--tile-size",
            "96",
            "--overlap",
            "64",
            "--device",
            "cpu",
            "--quiet",
        ]
    )
    captured = capsys.readouterr()
    assert code == 1
    assert "bad.tif" in captured.err and "predicted 2 of 3 image(s)" in captured.out
    for name, (_image, truth) in truths.items():
        labels = tifffile.imread(out / f"{name}.tif")
        assert same_partition(labels, truth)
        rows = list(csv.DictReader((out / f"{name}.csv").open()))
        assert len(rows) == truth.max()
        coco = json.loads((out / f"{name}.coco.json").read_text())
        assert len(coco["annotations"]) == truth.max()
        assert all(0.5 <= a["score"] <= 1 for a in coco["annotations"])
        assert (out / f"{name}_overlay.png").is_file()
        import zarr

        np.testing.assert_array_equal(zarr.open_array(out / f"{name}.ome.zarr" / "labels/cells/0")[:], labels)
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["predicted"]) == 2 and summary["failed"][0]["source"].endswith("bad.tif")
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporaries


def test_predict_all_good_exits_zero_and_scale(tmp_path, inputs, blob_checkpoint, capsys):
    folder, truths = inputs
    (folder / "bad.tif").unlink()
    code = main(
        [
            "predict",
            str(blob_checkpoint),
            str(folder / "img0.tif"),
            "-o",
            str(tmp_path / "o"),
            "--scale",
            "2",
            "--quiet",
            "--score-threshold",
            "0",
        ]
    )
    assert code == 0, capsys.readouterr().err
    labels = tifffile.imread(tmp_path / "o" / "img0.tif")
    truth = truths["img0"][1]
    assert labels.shape == truth.shape and labels.max() == truth.max()


def test_small_images_of_equal_size_are_batched(tmp_path, blob_checkpoint, capsys):
    folder = tmp_path / "many"
    folder.mkdir()
    truths = {}
    for k in range(5):
        shape = (96, 112) if k < 4 else (80, 80)
        image, truth = disc_image(shape, 4, seed=10 + k)
        tifffile.imwrite(folder / f"s{k}.tif", image[0])
        truths[f"s{k}"] = truth
    broken = np.zeros((96, 112, 3, 2, 2), np.uint8)  # 5-D: not an image
    tifffile.imwrite(folder / "z_broken.tif", broken, photometric="minisblack")
    results = {}
    for batch in ("1", "3"):
        out = tmp_path / f"out{batch}"
        args = [str(blob_checkpoint), str(folder), "-o", str(out), "--batch-size", batch, "--format", "tiff,csv"]
        code = main(["predict", *args, "--quiet"])
        assert code == 1 and "z_broken.tif" in capsys.readouterr().err
        summary = json.loads((out / "summary.json").read_text())
        results[batch] = {r["name"]: r["batch"] for r in summary["predicted"]}
        for name, truth in truths.items():
            assert same_partition(tifffile.imread(out / f"{name}.tif"), truth), (batch, name)
            assert len((out / f"{name}.csv").read_text().splitlines()) == truth.max() + 1
    assert set(results["1"]) == set(results["3"]) == set(truths)
    assert set(results["1"].values()) == {1}
    # four 96 x 112 images: one batch of 3 and one of 1; the 80 x 80 image alone
    assert sorted(results["3"].values()) == [1, 1, 3, 3, 3]


def test_user_errors_exit_2(tmp_path, inputs, blob_checkpoint, capsys):
    folder, _ = inputs
    assert main(["predict", str(blob_checkpoint), str(folder), "-o", str(tmp_path / "o"), "--format", "tif"]) == 2
    assert "did you mean 'tiff'" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "missing.ckpt"), str(folder), "-o", str(tmp_path / "o"), "--quiet"]) == 2
    assert "missing.ckpt" in capsys.readouterr().err
    code = main(["predict", str(blob_checkpoint), str(folder), "-o", str(tmp_path / "o"), "--pixel-size", "0.5"])
    assert code == 2 and "training pixel size" in capsys.readouterr().err
    code = main(["predict", str(blob_checkpoint), str(folder), "-o", str(tmp_path / "o"), "--max-overlap", "2"])
    assert code == 2 and "max_overlap must be in [0, 1]" in capsys.readouterr().err


@pytest.mark.slow
def test_predict_on_a_dask_cluster(tmp_path, inputs, blob_checkpoint, capsys):
    distributed = pytest.importorskip("distributed")
    folder, truths = inputs
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cl:
        code = main(
            [
                "predict",
                str(blob_checkpoint),
                str(folder),
                "-o",
                str(tmp_path / "o"),
                "--quiet",
                "--dask-scheduler",
                cl.scheduler_address,
            ]
        )
    assert code == 1 and "bad.tif" in capsys.readouterr().err
    for name, (_image, truth) in truths.items():
        assert same_partition(tifffile.imread(tmp_path / "o" / f"{name}.tif"), truth)


def test_mask_threshold_defaults_to_the_trained_recipe(tmp_path, plugin_registration):
    from . import blob_model

    plugin_registration(blob_model)
    plain = blob_model.write_blob_checkpoint(tmp_path / "plain.ckpt")
    calibrated = blob_model.write_blob_checkpoint(tmp_path / "cal.ckpt", recipe_extra={"eval": {"mask_threshold": 0.2}})
    assert weakseg.load(plain).mask_threshold == 0.5
    assert weakseg.load(calibrated).mask_threshold == 0.2
    assert weakseg.load(calibrated, mask_threshold=0.7).mask_threshold == 0.7
