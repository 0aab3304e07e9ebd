"""Where a run starts: ``--resume`` from the newest snapshot that verifies (damaged or deleted files
included), refusal to overwrite an earlier run, and ``--fresh`` (old files moved aside, MLflow run marked)."""

from __future__ import annotations

import sys

import pytest
import torch
from conftest import run_command, write_recipe

from weakseg.checkpoint import load_checkpoint
from weakseg.errors import WeaksegError

TRAIN = {"steps": 30, "checkpoint_every": 10, "log_every": 5}


def weakseg_run(env, *args):
    return run_command([sys.executable, "-m", "weakseg", "run", *map(str, args), "--no-progress"], env, timeout=300)


def truncate(path) -> tuple[int, int]:
    """Cut ``path`` to half its size; returns (new size, old size)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return len(data) // 2, len(data)


def assert_same_weights(run_dir, reference_dir) -> None:
    final, expected = load_checkpoint(run_dir), load_checkpoint(reference_dir)
    assert final.step == expected.step == TRAIN["steps"]
    assert final.state_dict.keys() == expected.state_dict.keys()
    for key, value in expected.state_dict.items():
        assert torch.equal(final.state_dict[key], value), key


@pytest.mark.slow
def test_resume_skips_damaged_snapshots_and_matches_an_uninterrupted_run(
    tiny_plugin, make_recipe, plugin_env, output_dir, tmp_path, capfd
):
    from weakseg.engine.run import run_recipe

    store = tmp_path / "store.zarr"
    recipe_file = write_recipe(tmp_path / "tiny.yaml", store, **TRAIN)
    recipe = make_recipe(store, **TRAIN)
    run_recipe(recipe, output=tmp_path / "reference", progress=False)
    run_recipe(recipe, output=output_dir, progress=False)
    folder = output_dir / "tiny" / "checkpoints"
    capfd.readouterr()

    # the newest snapshot cut in half: the run goes back to step 20 and trains the last 10 steps again
    cut, size = truncate(folder / "step-00000030.ckpt")
    resumed = weakseg_run(plugin_env, recipe_file, "--output", output_dir, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert (
        f"step-00000030.ckpt is damaged (size {cut} != {size} recorded); resuming from step-00000020.ckpt"
        in resumed.stderr
    )
    assert "resuming 'tiny' from" in resumed.stderr and "at step 20/30" in resumed.stderr
    assert "step 30 (10 this time" in resumed.stdout
    assert (folder / "damaged" / "step-00000030.ckpt").stat().st_size == cut  # kept for inspection
    assert_same_weights(output_dir / "tiny", tmp_path / "reference" / "tiny")

    # last.ckpt cut in half: the snapshots are intact, the newest one is used and the pointer repaired
    truncate(folder / "last.ckpt")
    again = run_recipe(recipe, resume=True, output=output_dir, progress=False)
    err = capfd.readouterr().err
    assert "last.ckpt is damaged (not a readable pointer" in err and "resuming from step-00000030.ckpt" in err
    assert again.steps_run == 0 and load_checkpoint(folder / "last.ckpt").step == 30
    assert_same_weights(output_dir / "tiny", tmp_path / "reference" / "tiny")

    # last.ckpt deleted: still found, but a run without --resume still refuses the folder
    (folder / "last.ckpt").unlink()
    with pytest.raises(WeaksegError, match="holds checkpoints of an earlier run"):
        run_recipe(recipe, output=output_dir, progress=False)
    again = run_recipe(recipe, resume=True, output=output_dir, progress=False)
    assert "last.ckpt is missing; resuming from step-00000030.ckpt" in capfd.readouterr().err
    assert again.step == 30 and again.steps_run == 0


def test_a_folder_with_checkpoints_needs_resume_or_fresh(tiny_plugin, make_recipe, plugin_env, output_dir, tmp_path):
    from mlflow import MlflowClient

    from weakseg.engine.run import run_recipe

    store = tmp_path / "store.zarr"
    train = {"steps": 4, "checkpoint_every": 2}
    first = run_recipe(make_recipe(store, **train), output=output_dir, progress=False)
    folder = output_dir / "tiny" / "checkpoints"
    old_files = sorted(p.name for p in folder.iterdir())

    recipe_file = write_recipe(tmp_path / "tiny.yaml", store, **train)
    refused = weakseg_run(plugin_env, recipe_file, "--output", output_dir)
    assert refused.returncode == 2, refused.stderr
    assert (
        f"{folder} holds checkpoints of an earlier run of recipe 'tiny'; pass --resume to continue it or --fresh "
        "to start over" in refused.stderr
    )
    assert "Traceback" not in refused.stderr
    assert sorted(p.name for p in folder.iterdir()) == old_files  # untouched
    both = weakseg_run(plugin_env, recipe_file, "--output", output_dir, "--resume", "--fresh")
    assert both.returncode == 2 and "--resume and --fresh exclude each other" in both.stderr

    second = run_recipe(make_recipe(store, **train), output=output_dir, fresh=True, progress=False)
    assert second.step == 4 and second.steps_run == 4
    (aside,) = (output_dir / "tiny").glob("checkpoints.old-*")
    assert sorted(p.name for p in aside.iterdir()) == old_files  # moved, not deleted
    assert load_checkpoint(aside / "last.ckpt").run_id == first.run_id
    assert load_checkpoint(folder / "last.ckpt").run_id == second.run_id != first.run_id
    assert list((output_dir / "tiny").glob("eval.old-*"))  # the earlier evaluations moved with them

    client = MlflowClient(tracking_uri=f"sqlite:///{output_dir}/mlflow.db")
    runs = {r.info.run_id: r for r in client.search_runs([client.get_experiment_by_name("tiny").experiment_id])}
    assert set(runs) == {first.run_id, second.run_id}
    assert runs[second.run_id].data.tags["weakseg.restarted_from"] == first.run_id
    assert runs[second.run_id].data.tags["weakseg.earlier_checkpoints"] == str(aside)
    assert "weakseg.restarted_from" not in runs[first.run_id].data.tags
    assert runs[first.run_id].info.status == runs[second.run_id].info.status == "FINISHED"
