"""``weakseg predict`` (a real subprocess) on inputs without signal, with NaN pixels, compressed TIFFs
and RGB arrays; and the file modes of what it writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile

import weakseg

from .blob_model import BlobModel, disc_image, same_partition


def predict_cli(env, checkpoint, inputs, out, *extra, umask=None):
    """Run ``python -m weakseg predict`` and return (completed process, summary.json as a dict)."""
    cmd = [sys.executable, "-m", "weakseg", "predict", str(checkpoint), *map(str, inputs), "-o", str(out)]
    cmd += ["--device", "cpu", "--quiet", "--tile-size", "128", "--overlap", "64", *extra]
    preexec = None if umask is None else (lambda: os.umask(umask))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, preexec_fn=preexec)
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    return proc, summary


@pytest.fixture
def bad_inputs(tmp_path):
    """A folder with blank and NaN images beside one real image and one image with a NaN stripe."""
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    tifffile.imwrite(folder / "zeros.tif", np.zeros((300, 260), np.uint16))
    tifffile.imwrite(folder / "constant.tif", np.full((256, 256), 1234, np.uint16))
    # +-2 counts on 1000: standardised, this noise would be unit-variance texture full of "blobs"
    tifffile.imwrite(folder / "near_constant.tif", (1000 + rng.integers(-2, 3, (256, 256))).astype(np.uint16))
    tifffile.imwrite(folder / "all_nan.tif", np.full((200, 220), np.nan, np.float32))
    real, truth = disc_image((200, 240), 8, seed=3)
    tifffile.imwrite(folder / "real.tif", real[0])
    striped = real[0].astype(np.float32)
    striped[:, 100:120] = np.nan
    tifffile.imwrite(folder / "striped.tif", striped)
    return folder, truth


def by_name(summary):
    return {rec["name"]: rec for rec in summary["predicted"]}


@pytest.mark.parametrize("batch", ["1", "4"])  # tiled one by one, and small images batched
def test_blank_and_nan_images_give_no_cells_and_nan_is_reported(tmp_path, bad_inputs, blob_checkpoint, cli_env, batch):
    folder, truth = bad_inputs
    out = tmp_path / "out"
    proc, summary = predict_cli(cli_env, blob_checkpoint, [folder], out, "--batch-size", batch, "--format", "tiff,csv")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    records = by_name(summary)
    assert set(records) == {"zeros", "constant", "near_constant", "all_nan", "real", "striped"}  # nothing lost
    for name in ("zeros", "constant", "near_constant", "all_nan"):
        assert records[name]["cells"] == 0, name
        assert tifffile.imread(out / f"{name}.tif").max() == 0
    assert records["real"]["cells"] == truth.max()
    assert same_partition(tifffile.imread(out / "real.tif"), truth)
    striped = tifffile.imread(out / "striped.tif")
    assert striped[:, 100:120].max() == 0 and records["striped"]["cells"] > 0
    # NaN pixels: a warning naming the file, on stderr and in the summary; not for the others
    warned = {w["source"] for w in summary["warnings"]}
    assert warned == {str(folder / "all_nan.tif"), str(folder / "striped.tif")}
    assert f"warning: {folder / 'all_nan.tif'}: 44000 of 44000 pixel values are NaN" in proc.stderr
    assert "2 warning(s)" in proc.stdout and "predicted 6 of 6 image(s)" in proc.stdout
    assert records["real"]["warnings"] == []


def test_nan_error_fails_only_the_images_with_nan(tmp_path, bad_inputs, blob_checkpoint, cli_env):
    folder, truth = bad_inputs
    out = tmp_path / "out"
    proc, summary = predict_cli(cli_env, blob_checkpoint, [folder], out, "--nan", "error")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    failed = {f["source"] for f in summary["failed"]}
    assert failed == {str(folder / "all_nan.tif"), str(folder / "striped.tif")}
    assert f"{folder / 'striped.tif'}: 4000 of 48000 pixel values are NaN or infinite" in proc.stderr
    assert len(summary["predicted"]) == 4 and "predicted 4 of 6 image(s)" in proc.stdout
    assert same_partition(tifffile.imread(out / "real.tif"), truth)
    assert not (out / "striped.tif").exists()


def test_bad_nan_choice_is_a_usage_error(tmp_path, bad_inputs, blob_checkpoint, cli_env):
    folder, _ = bad_inputs
    proc, _ = predict_cli(cli_env, blob_checkpoint, [folder], tmp_path / "o", "--nan", "zero")
    assert proc.returncode == 2 and "--nan" in proc.stderr and "Traceback" not in proc.stderr


def test_lzw_and_deflate_tiffs_are_predicted(tmp_path, blob_checkpoint, cli_env):
    image, truth = disc_image((180, 200), 7, seed=4)
    folder = tmp_path / "in"
    folder.mkdir()
    for compression, code in (("lzw", "LZW"), ("deflate", "DEFLATE")):
        tifffile.imwrite(folder / f"{compression}.tif", image[0], compression=compression)
        with tifffile.TiffFile(folder / f"{compression}.tif") as tif:
            assert tif.pages[0].compression.name == code
    proc, summary = predict_cli(cli_env, blob_checkpoint, [folder], tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert sorted(r["cells"] for r in summary["predicted"]) == [truth.max()] * 2
    for compression in ("lzw", "deflate"):
        assert same_partition(tifffile.imread(tmp_path / "out" / f"{compression}.tif"), truth)


@pytest.mark.parametrize("mask,file_mode,dir_mode", [(0o022, 0o644, 0o755)])
def test_outputs_follow_the_umask(tmp_path, blob_checkpoint, cli_env, mask, file_mode, dir_mode):
    image, _ = disc_image((100, 120), 4, seed=5)
    tifffile.imwrite(tmp_path / "cells.tif", image[0])
    out = tmp_path / "out"
    proc, _ = predict_cli(
        cli_env, blob_checkpoint, [tmp_path / "cells.tif"], out, "--format", "tiff,zarr,coco,csv,png", umask=mask
    )
    assert proc.returncode == 0, proc.stderr
    files = [p for p in out.rglob("*") if p.is_file()]
    dirs = [p for p in out.rglob("*") if p.is_dir()]
    assert len(files) >= 6 and dirs  # summary, tif, csv, coco, png and the zarr's files
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {oct(file_mode)}
    assert {oct(p.stat().st_mode & 0o777) for p in dirs} == {oct(dir_mode)}


@pytest.mark.parametrize("in_channels", [3])
def test_python_api_reads_an_rgb_array_as_the_cli_reads_its_png(tmp_path, plugin_registration, cli_env, in_channels):
    from PIL import Image

    from . import blob_model

    plugin_registration(blob_model)
    checkpoint = blob_model.write_blob_checkpoint(tmp_path / f"rgb{in_channels}.ckpt", in_channels=in_channels)
    grey, truth = disc_image((150, 170), 6, seed=6, dtype=np.float64)
    rgb = np.stack([grey[0] * f for f in (0.2, 0.35, 0.3)], axis=-1).clip(0, 255).astype(np.uint8)  # H x W x 3
    assert rgb.shape == (150, 170, 3)
    Image.fromarray(rgb).save(tmp_path / "cells.png")
    proc, _ = predict_cli(cli_env, checkpoint, [tmp_path / "cells.png"], tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    from_cli = tifffile.imread(tmp_path / "out" / "cells.tif")
    predictor = weakseg.load(checkpoint, tile_size=128, overlap=64, device="cpu")
    from_api = predictor.predict(rgb)
    np.testing.assert_array_equal(from_api, from_cli)
    assert same_partition(from_api, truth)
    np.testing.assert_array_equal(predictor.predict(np.moveaxis(rgb, -1, 0)), from_cli)  # C x H x W too


def test_blank_tiles_never_reach_the_model():
    from weakseg.inference.predictor import Predictor

    model = BlobModel()
    pred = Predictor(model, tile_size=160, overlap=80, batch_size=2)
    assert len(pred.predict_instances(np.zeros((1000, 1000), np.uint16))) == 0
    assert model.calls == []
    image, truth = disc_image((256, 256), 5, seed=7)
    half = np.full((1, 256, 640), 100, np.uint16)  # the background level, without its noise
    half[:, :, :256] = image  # signal in the left part only
    labels = pred.predict(half)
    assert same_partition(labels[:, :256], truth) and labels[:, 256:].max() == 0
    tiles = pred.plan((256, 640))
    with_signal = sum(t.x0 < 256 for t in tiles)
    assert sum(shape[0] for shape in model.calls) == with_signal < len(tiles)


class PhantomModel(BlobModel):
    """The blobs plus one full-crop "cell" at 3/4 of the width of every input, as a model finding
    cells in a flat area does."""

    def _one(self, img):
        import torch

        from weakseg.nn.instances import Instances

        inst = super()._one(img)
        h, w = img.shape
        s = self.crop_size
        loc = torch.tensor([[h / 2, 3 * w / 4]], dtype=torch.float32)
        phantom = Instances(
            torch.tensor([0.99]), loc, torch.ones(1, s, s), torch.floor(loc).long() - s // 2, (h, w)
        )
        return Instances.concat([phantom, inst], (h, w))


def test_detections_in_flat_parts_of_a_tile_are_dropped():
    from weakseg.inference.predictor import Predictor

    image, truth = disc_image((200, 200), 5, seed=9)
    padded = np.zeros((1, 200, 400), np.uint16)
    padded[:, :, :200] = image  # one tile: signal on the left, zeros on the right
    for batch_size in (1, 2):  # tiled, and the batched small-image path
        pred = Predictor(PhantomModel(), tile_size=512, overlap=64, batch_size=batch_size)
        inst = pred.predict_batch([padded])[0] if batch_size > 1 else pred.predict_instances(padded)
        assert len(inst) == truth.max() and bool((inst.locations[:, 1] < 200).all())
    # where the phantom lands on signal it is kept: the rule judges pixels, not the model
    inst = Predictor(PhantomModel(), tile_size=512, overlap=64).predict_instances(image)
    assert len(inst) == truth.max() + 1


def test_saturated_cells_are_kept():
    from weakseg.inference.predictor import Predictor

    image, truth = disc_image((200, 200), 6, seed=10)
    saturated = np.minimum(image, 300)  # every cell flat at 300 inside, the background noisy
    assert np.unique(saturated[0][truth > 0]).tolist() == [300]
    labels = Predictor(BlobModel(), tile_size=512, overlap=64).predict(saturated)
    assert same_partition(labels, truth)
