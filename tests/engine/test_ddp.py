"""Two processes on gloo under torchrun: equal weights, disjoint shards, reduced metrics, one MLflow run."""

from __future__ import annotations

import json
import sys
from collections import defaultdict

import pytest
import torch
from conftest import run_command, write_recipe

from weakseg.checkpoint import load_checkpoint

pytestmark = pytest.mark.ddp

STEPS = 6


def test_two_process_gloo_run(tiny_plugin, plugin_env, output_dir, tmp_path):
    from mlflow import MlflowClient

    from weakseg.data.store import open_store

    store = tmp_path / "store.zarr"
    # one 64 px crop per 64 px image, so a shard position is an image: shards are checkable by image id
    recipe = write_recipe(
        tmp_path / "tiny.yaml", store, steps=STEPS, batch_size=1, checkpoint_every=3, eval_every=2, log_every=1
    )
    recipe.write_text(recipe.read_text().replace("crop_size: 32", "crop_size: 64"))
    log, dump = tmp_path / "steps.jsonl", tmp_path / "dump"
    dump.mkdir()
    env = {**plugin_env, "WEAKSEG_TINY_LOG": str(log), "WEAKSEG_TINY_DUMP": str(dump)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "weakseg", "run", str(recipe), "--output", str(output_dir), "--no-progress"]
    proc = run_command(cmd, env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    # data: every step on both ranks; per epoch the two shards are disjoint and cover the train split
    train_ids = sorted(info.image_id for info in open_store(store).select(split="train"))
    assert len(train_ids) % 2 == 0, train_ids
    records = [json.loads(line) for line in log.read_text().splitlines()]
    seen: dict[int, dict[int, list[str]]] = defaultdict(dict)
    for r in records:
        seen[r["rank"]][r["step"]] = r["ids"]
    assert sorted(seen) == [0, 1] and all(sorted(seen[r]) == list(range(STEPS)) for r in (0, 1))
    per_epoch = len(train_ids) // 2
    for first in range(0, STEPS - per_epoch + 1, per_epoch):
        epoch = [i for s in range(first, first + per_epoch) for r in (0, 1) for i in seen[r][s]]
        assert sorted(epoch) == train_ids
    for s in range(STEPS):
        assert not set(seen[0][s]) & set(seen[1][s])

    # weights: identical on both ranks at every checkpoint and equal to what rank 0 saved
    final = load_checkpoint(output_dir / "tiny")
    assert final.step == STEPS
    for step in (3, STEPS):
        w0 = torch.load(dump / f"rank0-step{step}.pt", weights_only=True)
        w1 = torch.load(dump / f"rank1-step{step}.pt", weights_only=True)
        for key in w0:
            assert torch.equal(w0[key], w1[key]), (step, key)
    for key, value in w0.items():
        assert torch.equal(final.state_dict[key], value), key
    assert final.raw["data"]["world_size"] == 2 and len(final.raw["rng"]) == 2

    # tracking: one run, written by rank 0 only, with losses averaged over the ranks
    client = MlflowClient(tracking_uri=f"sqlite:///{output_dir}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["weakseg.world_size"] == "2"
    history = client.get_metric_history(run.info.run_id, "train/bce")
    assert [m.step for m in history] == list(range(1, STEPS + 1))
    bce = {(r["rank"], r["step"]): r["bce"] for r in records}
    for m in history:
        assert m.value == pytest.approx((bce[0, m.step - 1] + bce[1, m.step - 1]) / 2, rel=1e-5)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/AP50")] == [2, 4, STEPS]
