"""End to end: ``weakseg run`` on a real synthetic store, MLflow run, SIGTERM + ``--resume``."""

from __future__ import annotations

import json
import signal
import sys

import pytest
import torch
from conftest import run_command, write_recipe

from weakseg.checkpoint import load_checkpoint
from weakseg.errors import WeaksegError


def weakseg_run(env, *args, timeout=300):
    """``python -m weakseg run ...`` in a subprocess."""
    return run_command([sys.executable, "-m", "weakseg", "run", *map(str, args), "--no-progress"], env, timeout)


def test_run_recipe_tracks_metrics_panels_and_checkpoints(tiny_plugin, make_recipe, output_dir):
    from mlflow import MlflowClient

    from weakseg.engine.run import run_recipe

    recipe = make_recipe(steps=6, eval_every=3, checkpoint_every=3, log_every=1)
    result = run_recipe(recipe, output=output_dir, progress=False)
    run_dir = output_dir / "tiny"
    assert result.run_dir == run_dir and result.step == 6 and result.steps_run == 6
    assert (run_dir / "recipe.yaml").read_text() == recipe.to_yaml()
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt.step == 6
    # how the training images were resized travels with the model, for prediction on new images
    assert set(ckpt.input_scale["group_scales"]) == {"fluorescence", "phase"}
    assert ckpt.input_scale["cell_diameter"] is None
    assert ckpt.size_model is None  # the tiny strategy's principal offers no backbone features
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == {
        "last.ckpt",
        "step-00000003.ckpt",
        "step-00000003.ckpt.sha256.json",
        "step-00000006.ckpt",
        "step-00000006.ckpt.sha256.json",
    }
    for step in (3, 6):
        stored = json.loads((run_dir / "eval" / f"metrics-step-{step:08d}.json").read_text())
        assert stored["split"] == "val" and set(stored["groups"]) == {"fluorescence", "phase"}
        assert (run_dir / "eval" / f"panel-step-{step:08d}.png").read_bytes()[:4] == b"\x89PNG"
    assert {"val/AP50", "val/mAP", "val/dice", "val/F1", "val/phase/AP50"} <= set(result.metrics)

    client = MlflowClient(tracking_uri=f"sqlite:///{output_dir}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert run.info.run_id == result.run_id and run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == list(range(1, 7))
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/AP50")] == [3, 6]
    assert client.get_metric_history(run.info.run_id, "val/fluorescence/dice")
    assert run.data.params["data.label_source.type"] == "centroids"
    panels = [f.path for f in client.list_artifacts(run.info.run_id, "panels")]
    assert panels == ["panels/panel-step-00000003.png", "panels/panel-step-00000006.png"]
    top = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"recipe.yaml", "eval", "panels", "checkpoints"} <= top
    # the final snapshot itself (not the last.ckpt pointer) with its record
    assert {f.path for f in client.list_artifacts(run.info.run_id, "checkpoints")} == {
        "checkpoints/step-00000006.ckpt",
        "checkpoints/step-00000006.ckpt.sha256.json",
    }

    # the same run folder is never overwritten by accident
    with pytest.raises(WeaksegError, match="--resume"):
        run_recipe(recipe, output=output_dir, progress=False)
    # resuming a finished run trains nothing more and keeps the MLflow run
    again = run_recipe(recipe, resume=True, output=output_dir, progress=False)
    assert again.steps_run == 0 and again.step == 6 and again.run_id == result.run_id
    # resuming with a recipe that trains something else is refused, naming the key
    changed = make_recipe(steps=6, eval_every=3, checkpoint_every=3, log_every=1, batch_size=3)
    with pytest.raises(WeaksegError, match=r"recipe.train.batch_size: 2 -> 3"):
        run_recipe(changed, resume=True, output=output_dir, progress=False)


def test_training_free_strategy_is_only_evaluated(tiny_plugin, make_recipe, output_dir):
    from mlflow import MlflowClient

    from weakseg.engine.run import run_recipe
    from weakseg.recipe import StrategySpec

    recipe = make_recipe(steps=50)
    recipe = recipe.evolve(strategy=StrategySpec.of("tiny_test", trainable=False))
    result = run_recipe(recipe, output=output_dir, progress=False)
    assert result.step == 0 and result.steps_run == 0
    saved = load_checkpoint(result.checkpoint)
    assert saved.step == 0 and "optimizer" not in saved.raw
    assert "val/AP50" in result.metrics
    client = MlflowClient(tracking_uri=result.tracking_uri)
    assert client.get_run(result.run_id).info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(result.run_id, "val/dice")] == [0]
    assert client.get_metric_history(result.run_id, "train/loss") == []


@pytest.mark.slow
def test_sigterm_then_resume_matches_an_uninterrupted_run(tiny_plugin, make_recipe, plugin_env, output_dir, tmp_path):
    from mlflow import MlflowClient

    from weakseg.engine.run import run_recipe

    store = tmp_path / "store.zarr"
    train = {"steps": 10, "checkpoint_every": 4, "log_every": 1}
    recipe = write_recipe(tmp_path / "tiny.yaml", store, **train)
    log = tmp_path / "steps.jsonl"
    # the uninterrupted reference runs in this process (one thread, like the subprocesses)
    run_recipe(make_recipe(store, **train), output=tmp_path / "reference", progress=False)

    killed = weakseg_run(
        {**plugin_env, "WEAKSEG_TINY_SIGTERM_AT": "5", "WEAKSEG_TINY_LOG": str(log)}, recipe, "--output", output_dir
    )
    assert killed.returncode == 128 + signal.SIGTERM, killed.stderr
    assert "interrupted by SIGTERM at step 6/10" in killed.stderr and "--resume" in killed.stderr
    ckpt = load_checkpoint(output_dir / "tiny")
    assert ckpt.step == 6  # the step in flight finished, then the checkpoint was written

    resumed = weakseg_run({**plugin_env, "WEAKSEG_TINY_LOG": str(log)}, recipe, "--output", output_dir, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming 'tiny'" in resumed.stderr

    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert steps == list(range(10))  # every step once, none redone
    final = load_checkpoint(output_dir / "tiny")
    expected = load_checkpoint(tmp_path / "reference" / "tiny")
    assert final.step == expected.step == 10
    for key, value in expected.state_dict.items():
        assert torch.equal(final.state_dict[key], value), key

    client = MlflowClient(tracking_uri=f"sqlite:///{output_dir}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert run.info.run_id == ckpt.run_id == final.run_id and run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == list(range(1, 11))


def test_split_without_ground_truth_trains_without_evaluation(tiny_plugin, make_recipe, output_dir):
    import attrs

    from weakseg.engine.run import run_recipe

    recipe = make_recipe(steps=2, eval_every=1)
    recipe = recipe.evolve(eval=attrs.evolve(recipe.eval, split="test"))
    with pytest.warns(UserWarning, match=r"recipe.eval.split: store .* has no 'test' images \(splits: train, val\)"):
        result = run_recipe(recipe, output=output_dir, progress=False)
    assert result.step == 2 and result.metrics == {}
    assert not (output_dir / "tiny" / "eval").exists()
