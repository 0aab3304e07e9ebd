"""Automatic sizing end to end: a tiny CKS run gets a size model; ``weakseg predict``, ``weakseg evaluate`` and
``weakseg.load`` size each image by it (the same diameter for the same image), the CLI options win, a
checkpoint without one behaves as before, and ``weakseg size-model`` adds one to it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import yaml

import weakseg

pytestmark = pytest.mark.slow  # a real (tiny) CKS run, then CLI subprocesses: about a minute on 2 busy cores

TINY_MODEL = {
    "backbone": {"type": "convnext_atto", "fpn_channels": 32},
    "head": {"type": "lacss", "crop_size": 32, "encoder_hidden": [32], "detection_layers": 1, "segmentation_layers": 1},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-step CKS run whose images are each resized by their own cell size (``data.rescale: image``)."""
    import torch

    tmp = tmp_path_factory.mktemp("sizing")
    recipe = {
        "name": "sized",
        "data": {
            "store": str(tmp / "store.zarr"),
            "synthetic": {"n_images": 4, "size": 96, "cell_diameter": 12.0, "val_fraction": 0.5, "seed": 0},
            "crop_size": 64,
            "num_workers": 0,
            "target_cell_size": 14.0,
            "rescale": "image",
        },
        "model": TINY_MODEL,
        "collaborator": {"type": "cks"},
        "strategy": {"type": "cks"},
        "train": {"steps": 2, "device": "cpu", "precision": "fp32", "eval_every": 0, "checkpoint_every": 0},
        "eval": {"max_images": 1, "panel": False},
    }
    path = tmp / "sized.yaml"
    path.write_text(yaml.safe_dump(recipe))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = weakseg.train(path, output=tmp / "runs", progress=False)
    finally:
        torch.set_num_threads(threads)
    return tmp, result


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "weakseg", *args], capture_output=True, text=True, env=env)


def _val_image(tmp) -> tuple[str, np.ndarray]:
    from weakseg.data.store import open_store

    store = open_store(tmp / "store.zarr")
    info = next(iter(store.select(split="val")))
    return info.image_id, np.asarray(store.image(info.image_id)[...])


def test_a_run_adds_a_verified_size_model_to_its_checkpoint(run):
    from weakseg.checkpoint import load_checkpoint
    from weakseg.checkpoint.files import read_pointer, verify_file

    _, result = run
    ckpt = load_checkpoint(result.checkpoint)  # size and sha256 checked against the rewritten record
    assert ckpt.size_model is not None and ckpt.size_model["cell_diameter"] == 14.0
    assert verify_file(read_pointer(result.checkpoint)) is not None


def test_predict_and_evaluate_choose_the_same_diameter_and_the_cli_option_wins(run):
    import tifffile

    tmp, result = run
    image_id, image = _val_image(tmp)
    (tmp / "in").mkdir(exist_ok=True)
    tifffile.imwrite(tmp / "in" / f"{image_id}.tif", image[0])
    ckpt, device = str(result.checkpoint), ("--device", "cpu")
    proc = _cli("predict", ckpt, str(tmp / "in"), "-o", str(tmp / "out"), *device, "--quiet")
    assert proc.returncode == 0, proc.stderr
    (record,) = json.loads((tmp / "out" / "summary.json").read_text())["predicted"]
    assert record["sizing"] == "size model" and record["diameter"] > 0
    assert record["scale"] == pytest.approx(14.0 / record["diameter"], rel=1e-3)
    assert "data.rescale: image" not in proc.stderr  # the size model replaces the group-factor warning

    proc = _cli("evaluate", ckpt, str(tmp / "store.zarr"), "--split", "val", *device, "--json")
    assert proc.returncode == 0, proc.stderr
    sized = json.loads(proc.stdout)["images"][image_id]
    assert sized["sizing"] == "size model" and sized["diameter"] == pytest.approx(record["diameter"], rel=1e-3)

    args = ("--device", "cpu", "--quiet", "--diameter", "20")
    proc = _cli("predict", str(result.checkpoint), str(tmp / "in"), "-o", str(tmp / "out20"), *args)
    assert proc.returncode == 0, proc.stderr
    (record,) = json.loads((tmp / "out20" / "summary.json").read_text())["predicted"]
    assert (record["sizing"], record["diameter"], record["scale"]) == ("diameter", 20.0, pytest.approx(0.7))
    proc = _cli(
        "evaluate",
        str(result.checkpoint),
        str(tmp / "store.zarr"),
        "--split",
        "val",
        "--device",
        "cpu",
        "--json",
        "--scale",
        "0.9",
    )
    assert json.loads(proc.stdout)["images"][image_id]["scale"] == 0.9
    # scoring at the store's measured cell sizes, as before automatic sizing, is still there
    proc = _cli("evaluate", ckpt, str(tmp / "store.zarr"), "--split", "val", *device, "--json", "--known-sizes")
    assert proc.returncode == 0, proc.stderr
    assert "images" not in json.loads(proc.stdout)


def test_load_sizes_each_image_and_a_checkpoint_without_a_size_model_behaves_as_before(run, tmp_path):
    from weakseg.checkpoint import save_checkpoint
    from weakseg.checkpoint.load import read_checkpoint_file

    tmp, result = run
    _, image = _val_image(tmp)
    predictor = weakseg.load(str(result.checkpoint), device="cpu")
    sized = predictor.for_image(image)
    assert predictor.per_image and sized.sizing.source == "size model"
    assert sized.scale == pytest.approx(14.0 / sized.sizing.diameter)
    np.testing.assert_array_equal(predictor.predict(image), sized.predict(image))

    _, raw = read_checkpoint_file(result.checkpoint)
    raw.pop("size_model")
    old = save_checkpoint(raw, tmp_path / "old.ckpt")
    with pytest.warns(UserWarning, match=r"data.rescale: image"):
        plain = weakseg.load(str(old), device="cpu")
    assert not plain.per_image and plain.for_image(image) is plain
    assert plain.sizing.source == "training factor"

    proc = _cli("size-model", str(old), "--store", str(tmp / "store.zarr"), "--samples", "40", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert "size model: regression on 40 crops" in proc.stdout
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no group-factor warning once the checkpoint has a size model
        assert weakseg.load(str(old), device="cpu").per_image


def test_size_model_cli_names_a_bad_store(run):
    _, result = run
    proc = _cli("size-model", str(result.checkpoint), "--store", "/nonexistent/store.zarr")
    assert proc.returncode == 2 and "--store /nonexistent/store.zarr" in proc.stderr and "Traceback" not in proc.stderr


def test_evaluate_at_true_diameters_names_each_images_measured_diameter(run):
    from weakseg.data.access import open_data_store
    from weakseg.data.cellsize import diameter_from_labels

    tmp, result = run
    image_id, _ = _val_image(tmp)
    proc = _cli(
        "evaluate", str(result.checkpoint), str(tmp / "store.zarr"), "--split", "val", "--device", "cpu", "--json",
        "--true-diameters",
    )
    assert proc.returncode == 0, proc.stderr
    sized = json.loads(proc.stdout)["images"][image_id]
    labels = np.asarray(open_data_store(tmp / "store.zarr").labels(image_id)[...])
    assert sized["sizing"] == "measured"
    assert sized["diameter"] == pytest.approx(diameter_from_labels(labels), rel=1e-6)
    assert sized["scale"] == pytest.approx(14.0 / sized["diameter"], rel=1e-6)
