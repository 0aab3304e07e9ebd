"""The Python API: ``weakseg.train`` runs a recipe file through ``weakseg run``'s code path."""

from __future__ import annotations

import pytest
import yaml

import weakseg

#: A principal model small enough to train a few steps on a CPU in seconds (ConvNeXt-atto, narrow FPN).
TINY_MODEL = {
    "backbone": {"type": "convnext_atto", "fpn_channels": 32},
    "head": {"type": "lacss", "crop_size": 32, "encoder_hidden": [32], "detection_layers": 1, "segmentation_layers": 1},
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny convolutions run fastest on one thread


@pytest.fixture
def tiny_recipe(tmp_path, monkeypatch):
    """A CKS recipe file on a small synthetic store (generated on first use)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    recipe = {
        "name": "api-tiny",
        "data": {
            "store": str(tmp_path / "store.zarr"),
            "synthetic": {"n_images": 4, "size": 64, "cell_diameter": 12.0, "val_fraction": 0.5, "seed": 0},
            "crop_size": 64,
            "num_workers": 0,
        },
        "model": TINY_MODEL,
        "collaborator": {"type": "cks"},
        "strategy": {"type": "cks"},
        "train": {
            "steps": 50,
            "batch_size": 1,
            "device": "cpu",
            "precision": "fp32",
            "eval_every": 0,
            "checkpoint_every": 1,
            "log_every": 1,
        },
        "eval": {"max_images": 1, "panel": False},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.mark.slow  # a real (tiny) CKS run and a fresh MLflow store: about 20 s on 2 busy cores
def test_train_runs_a_recipe_file_with_overrides_and_tracks_it(tiny_recipe, tmp_path):
    from mlflow import MlflowClient

    from weakseg.checkpoint import load_checkpoint

    out = tmp_path / "runs"
    result = weakseg.train(tiny_recipe, output=out, overrides={"name": "api"}, progress=False, **{"train.steps": 2})

    assert result.run_dir == out / "api" and result.step == 2 and result.steps_run == 2
    assert result.checkpoint == out / "api" / "checkpoints" / "last.ckpt"
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt.step == 2 and "steps: 2" in ckpt.recipe_yaml
    assert "val/AP50" in result.metrics
    client = MlflowClient(tracking_uri=f"sqlite:///{out}/mlflow.db")
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.params["train.steps"] == "2"
    assert [m.step for m in client.get_metric_history(result.run_id, "train/loss")] == [1, 2]

    # resume continues the same MLflow run with more steps, as `weakseg run --resume --set train.steps=3`
    again = weakseg.train(
        tiny_recipe, output=out, resume=True, progress=False, overrides={"name": "api", "train.steps": 3}
    )
    assert again.run_id == result.run_id and again.step == 3 and again.steps_run == 1


def test_train_reports_a_misspelt_override_key(tiny_recipe):
    from weakseg.recipe import load_recipe

    with pytest.raises(weakseg.WeaksegError, match=r"recipe.train: unknown key 'stesp'; did you mean 'steps'"):
        weakseg.train(tiny_recipe, **{"train.stesp": 2})
    # a validated Recipe object takes the same dotted overrides
    with pytest.raises(weakseg.WeaksegError, match=r"recipe.train: unknown key 'stesp'"):
        weakseg.train(load_recipe(tiny_recipe), overrides={"train.stesp": 2})
