"""Checkpoints: weights_only round trip, rebuilding the strategy, atomic writes, retention, errors."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from weakseg.components import DataSummary
from weakseg.engine import checkpoint as ck

SUMMARY = DataSummary(in_channels=1, n_groups=2, group_names=("A172", "BV2"), has_masks=True)


def payload_for(recipe, step=3):
    from weakseg.build import build_strategy

    strategy = build_strategy(recipe, SUMMARY)
    opt = torch.optim.AdamW(strategy.parameters(), lr=1e-3)
    strategy(_one_batch(), 0)["bce"].backward()
    opt.step()
    return strategy, ck.make_payload(
        recipe_yaml=recipe.to_yaml(),
        data_summary=SUMMARY,
        state_dict=strategy.state_dict(),
        step=step,
        phase="main",
        optimizer=opt.state_dict(),
        scheduler={"lr": 1e-3},
        rng=[ck.rng_state()],
        data={"step": step, "seed": 0, "world_size": 1},
        tracking={"run_id": "abc", "tracking_uri": "sqlite:///x.db", "experiment_id": "1"},
    )


def _one_batch():
    from conftest import blob_batches

    return next(blob_batches()(0))


def test_round_trip_with_weights_only(make_recipe, tmp_path):
    recipe = make_recipe()
    strategy, payload = payload_for(recipe)
    path = ck.save_checkpoint(payload, tmp_path / "a.ckpt")
    raw = torch.load(path, weights_only=True)  # plain tensors and primitives only
    assert raw["format"] == ck.FORMAT and raw["step"] == 3

    loaded = ck.load_checkpoint(path)
    assert loaded.recipe == recipe and loaded.recipe_yaml == recipe.to_yaml()
    assert loaded.data_summary == SUMMARY
    assert loaded.step == 3 and loaded.run_id == "abc"
    assert set(loaded.raw["optimizer"]["state"]) == set(range(len(list(strategy.parameters()))))

    rebuilt, again = ck.load_strategy(path)
    assert not rebuilt.training and again.step == 3
    for key, value in strategy.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value), key
    image = _one_batch().image
    assert torch.equal(rebuilt.principal().net(image), strategy.principal().net(image))
    # a run folder works as well as the file
    ck.save_checkpoint(payload, tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert ck.load_checkpoint(tmp_path / "run").step == 3


def test_rng_state_round_trip(tmp_path):
    state = ck.rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1))
    ck.save_checkpoint({"format": ck.FORMAT, "rng": [state]}, tmp_path / "r.ckpt")
    restored = torch.load(tmp_path / "r.ckpt", weights_only=True)["rng"][0]
    random.random(), np.random.rand(), torch.rand(1)  # move the generators on
    ck.set_rng_state(restored)
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected


def test_failed_write_keeps_the_previous_checkpoint(make_recipe, tmp_path):
    _, payload = payload_for(make_recipe(), step=3)
    path = ck.save_checkpoint(payload, tmp_path / "last.ckpt")
    before = path.read_bytes()
    with pytest.raises(Exception):  # noqa: B017 - torch.save cannot pickle a lambda
        ck.save_checkpoint({**payload, "step": 4, "bad": lambda: None}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary left behind


def test_checkpoint_dir_keeps_newest_snapshots_as_links(make_recipe, tmp_path):
    _, payload = payload_for(make_recipe())
    folder = ck.CheckpointDir(tmp_path / "checkpoints", keep=2)
    for step in (10, 20, 30):
        folder.save({**payload, "step": step}, step)
    assert [s for s, _ in folder.step_files()] == [20, 30]
    assert folder.last.stat().st_ino == folder.step_path(30).stat().st_ino
    assert ck.load_checkpoint(folder.last).step == 30
    only_last = ck.CheckpointDir(tmp_path / "only", keep=0)
    only_last.save(payload, 5)
    assert [p.name for p in only_last.path.iterdir()] == ["last.ckpt"]


def test_unusable_files_raise_clear_errors(tmp_path):
    with pytest.raises(ck.CheckpointError, match="checkpoint not found"):
        ck.load_checkpoint(tmp_path / "missing.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a zip file")
    with pytest.raises(ck.CheckpointError, match="junk.ckpt"):
        ck.load_checkpoint(tmp_path / "junk.ckpt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "plain.ckpt")
    with pytest.raises(ck.CheckpointError, match="not a weakseg checkpoint"):
        ck.load_checkpoint(tmp_path / "plain.ckpt")
    from fractions import Fraction  # any class outside the weights_only allow-list

    torch.save({"format": ck.FORMAT, "obj": Fraction(1, 3)}, tmp_path / "pickled.ckpt")
    with pytest.raises(ck.CheckpointError, match="weights_only"):
        ck.load_checkpoint(tmp_path / "pickled.ckpt")
