"""Files that are not usable checkpoints, given to every command that reads one: one clear message
naming the file, exit code 2, no traceback, and nothing loaded unsafely."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import run_command, write_recipe

import weakseg
from weakseg.checkpoint import FORMAT, CheckpointError


class _Marker:
    """Unpickling this would create a folder: proof of whether a file was loaded unsafely."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (str(self.path),))


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    """A checkpoint lacking its recipe, a text file named .ckpt, and one holding a pickled callable."""
    root = tmp_path_factory.mktemp("bad")
    files = {"missing": root / "missing-keys.ckpt", "text": root / "notes.ckpt", "pickled": root / "pickled.ckpt"}
    torch.save({"format": FORMAT, "state_dict": {"w": torch.zeros(2)}, "step": 3}, files["missing"])
    files["text"].write_text("trained for 3 epochs, looks good\n")
    torch.save({"format": FORMAT, "recipe": "name: x", "payload": _Marker(root / "was-unpickled")}, files["pickled"])
    files["marker"] = root / "was-unpickled"
    return files


EXPECTED = {
    "missing": "an incomplete weakseg checkpoint (no 'recipe'; no 'data_summary')",
    "text": "not a weakseg checkpoint (not a file written by torch.save",
    "pickled": "not a weakseg checkpoint: it holds pickled Python objects (posix.mkdir)",
}


def weakseg_cli(env: dict, *args) -> object:
    return run_command([sys.executable, "-m", "weakseg", *map(str, args)], env, timeout=300)


def assert_user_error(proc, path: Path, expected: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{path}: {expected}" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "KeyError" not in proc.stderr
    # torch's advice to load untrusted files unsafely is never passed on
    assert "weights_only=False" not in proc.stderr and "set to `False`" not in proc.stderr


@pytest.mark.parametrize("kind", ["missing", "text", "pickled"])
def test_weakseg_load_raises_one_checkpoint_error(bad_files, kind):
    with pytest.raises(CheckpointError) as info:
        weakseg.load(str(bad_files[kind]))
    assert str(info.value).startswith(f"{bad_files[kind]}: {EXPECTED[kind]}")
    assert not bad_files["marker"].exists()


def test_predict_and_evaluate_refuse_bad_checkpoints(bad_files, plugin_env, tmp_path):
    import numpy as np
    import tifffile

    image = tmp_path / "cells.tif"
    tifffile.imwrite(image, np.zeros((32, 32), np.uint16))
    for kind in ("missing", "text", "pickled"):
        proc = weakseg_cli(plugin_env, "predict", bad_files[kind], image, "-o", tmp_path / "out", "--device", "cpu")
        assert_user_error(proc, bad_files[kind], EXPECTED[kind])
    assert not bad_files["marker"].exists()
    proc = weakseg_cli(plugin_env, "evaluate", bad_files["pickled"], tmp_path, "--device", "cpu")
    assert_user_error(proc, bad_files["pickled"], EXPECTED["pickled"])
    assert not bad_files["marker"].exists()


def test_run_refuses_a_bad_init_from(bad_files, plugin_env, tmp_path):
    recipe = {
        "name": "warm",
        "data": {
            "store": str(tmp_path / "store.zarr"),
            "num_workers": 0,
            "synthetic": {"n_images": 2, "size": 64, "cell_diameter": 12.0, "val_fraction": 0.5, "seed": 0},
        },
        "model": {
            "backbone": {"type": "convnext_atto", "fpn_channels": 32},
            "head": {"type": "lacss", "crop_size": 32, "encoder_hidden": [32], "detection_layers": 1},
            "init_from": str(bad_files["missing"]),
        },
        "strategy": {"type": "supervised"},
        "train": {"steps": 1, "batch_size": 1, "device": "cpu", "precision": "fp32"},
    }
    path = tmp_path / "warm.yaml"
    path.write_text(yaml.safe_dump(recipe))
    proc = weakseg_cli(plugin_env, "run", path, "--output", tmp_path / "runs", "--no-progress")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"recipe.model.init_from: {bad_files['missing']}: {EXPECTED['missing']}" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "KeyError" not in proc.stderr


def test_resume_with_no_usable_snapshot_says_so(bad_files, plugin_env, tmp_path):
    recipe = write_recipe(tmp_path / "tiny.yaml", tmp_path / "store.zarr", steps=2)
    folder = tmp_path / "runs" / "tiny" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "step-00000002.ckpt").write_bytes(bad_files["missing"].read_bytes())
    proc = weakseg_cli(plugin_env, "run", recipe, "--output", tmp_path / "runs", "--resume", "--no-progress")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "step-00000002.ckpt is an incomplete weakseg checkpoint (no 'recipe'" in proc.stderr, proc.stderr
    assert "pass --fresh to start over" in proc.stderr and "Traceback" not in proc.stderr
