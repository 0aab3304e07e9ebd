"""Checkpoints: weights_only round trip, rebuilding the strategy, atomic and verified writes, the
``last.ckpt`` pointer, retention, finding the newest good snapshot, and clear errors."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from weakseg import checkpoint as ck
from weakseg.components import Batch, DataSummary

ENGINE_TESTS = Path(__file__).resolve().parent / "engine"
if str(ENGINE_TESTS) not in sys.path:  # the engine tests' tiny plugin, imported by the same name as there
    sys.path.insert(0, str(ENGINE_TESTS))

import tiny_strategy  # noqa: E402

SUMMARY = DataSummary(in_channels=1, n_groups=2, group_names=("A172", "BV2"), has_masks=True)


@pytest.fixture
def make_recipe(plugin_registration, tmp_path):
    """``make_recipe()`` -> a validated recipe of the tiny test strategy (nothing is read from its store)."""
    from weakseg.recipe import Recipe, structure

    plugin_registration(tiny_strategy)

    def make():
        return structure(
            {
                "name": "tiny",
                "data": {"store": str(tmp_path / "unused.zarr"), "label_source": {"type": "centroids"}},
                "strategy": {"type": tiny_strategy.STRATEGY, "width": 8, "warmup_steps": 2},
                "train": {"steps": 12, "device": "cpu"},
            },
            Recipe,
        )

    return make


def _one_batch() -> Batch:
    g = torch.Generator().manual_seed(0)
    return Batch(
        image=torch.rand(2, 1, 32, 32, generator=g),
        points=[torch.tensor([[8.0, 8.0], [20.0, 24.0]]), torch.tensor([[16.0, 16.0]])],
        masks=[None, None],
        group=torch.zeros(2, dtype=torch.long),
        image_ids=["a", "b"],
    )


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


def truncate(path: Path) -> int:
    """Cut ``path`` to half its size, like an interrupted copy; returns the new size."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return len(data) // 2


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
    assert ck.verify_file(path) is not None  # the record still describes the old bytes
    # no temporary left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "last.ckpt.sha256.json"]


def test_every_written_file_records_its_size_and_sha256(make_recipe, tmp_path):
    import hashlib

    _, payload = payload_for(make_recipe())
    path = ck.save_checkpoint(payload, tmp_path / "a.ckpt")
    record = json.loads((tmp_path / "a.ckpt.sha256.json").read_text())
    data = path.read_bytes()
    assert record == {"file": "a.ckpt", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    # one flipped byte keeps the size but not the digest
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(flipped))
    with pytest.raises(ck.CheckpointError, match=r"a\.ckpt: damaged \(sha256 differs"):
        ck.load_checkpoint(path)
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ck.CheckpointError, match=rf"a\.ckpt: damaged \(size {len(data) // 2} != {len(data)} recorded"):
        ck.load_checkpoint(path)


def test_last_is_a_pointer_that_shares_no_bytes_with_the_snapshots(make_recipe, tmp_path):
    _, payload = payload_for(make_recipe())
    folder = ck.CheckpointDir(tmp_path / "checkpoints", keep=2)
    for step in (10, 20, 30):
        assert folder.save({**payload, "step": step}, step) == folder.last
    assert [s for s, _ in folder.step_files()] == [20, 30]
    assert not (tmp_path / "checkpoints" / "step-00000010.ckpt.sha256.json").exists()  # dropped with its file
    assert json.loads(folder.last.read_text()) == {
        "format": "weakseg-checkpoint-pointer/1",
        "file": "step-00000030.ckpt",
        "step": 30,
    }
    assert folder.last.stat().st_ino != folder.step_path(30).stat().st_ino
    loaded = ck.load_checkpoint(folder.last)
    assert loaded.step == 30 and loaded.path == folder.last and loaded.file == folder.step_path(30)

    # damaging last.ckpt leaves the snapshot intact
    snapshot = folder.step_path(30).read_bytes()
    truncate(folder.last)
    assert folder.step_path(30).read_bytes() == snapshot
    with pytest.raises(ck.CheckpointError, match=r"last\.ckpt: damaged \(not a readable pointer"):
        ck.load_checkpoint(folder.last)
    # ...and the run folder still loads its newest good snapshot
    assert ck.load_checkpoint(tmp_path).step == 30

    only_last = ck.CheckpointDir(tmp_path / "only", keep=0)
    only_last.save(payload, 5)
    assert sorted(p.name for p in only_last.path.iterdir()) == ["last.ckpt", "last.ckpt.sha256.json"]
    assert ck.load_checkpoint(only_last.last).step == 3


def test_newest_good_skips_damaged_snapshots_and_says_why(make_recipe, tmp_path):
    _, payload = payload_for(make_recipe())
    folder = ck.CheckpointDir(tmp_path / "checkpoints", keep=3)
    for step in (10, 20, 30):
        folder.save({**payload, "step": step}, step)
    recorded = folder.step_path(30).stat().st_size
    cut = truncate(folder.step_path(30))

    found = folder.newest_good()
    assert found.checkpoint.step == 20 and found.checkpoint.file == folder.step_path(20)
    assert found.summary() == (
        f"step-00000030.ckpt is damaged (size {cut} != {recorded} recorded); resuming from step-00000020.ckpt"
    )
    with pytest.warns(UserWarning, match="step-00000030.ckpt is damaged .* loading from step-00000020.ckpt"):
        assert ck.load_checkpoint(tmp_path).step == 20

    folder.repair(found)
    assert sorted(p.name for p in (folder.path / "damaged").iterdir()) == [
        "step-00000030.ckpt",
        "step-00000030.ckpt.sha256.json",
    ]
    assert json.loads(folder.last.read_text())["file"] == "step-00000020.ckpt"
    assert folder.newest_good().skipped == ()

    # without last.ckpt the snapshots are still found
    folder.last.unlink()
    found = folder.newest_good()
    assert found.checkpoint.step == 20 and found.pointer_problem == "missing"


def test_snapshots_written_before_records_still_load(make_recipe, tmp_path):
    _, payload = payload_for(make_recipe())
    folder = ck.CheckpointDir(tmp_path / "checkpoints")
    folder.save(payload, 3)
    (folder.path / "step-00000003.ckpt.sha256.json").unlink()
    assert ck.load_checkpoint(folder.last).step == 3
    assert folder.newest_good().checkpoint.step == 3
    # without a record, the zip members' CRCs still catch a changed byte
    data = bytearray(folder.step_path(3).read_bytes())
    data[len(data) // 2] ^= 0xFF
    folder.step_path(3).write_bytes(bytes(data))
    with pytest.raises(ck.CheckpointError, match=r"step-00000003\.ckpt: damaged \(member .* fails its CRC check"):
        ck.load_checkpoint(folder.last)


def test_move_aside_keeps_every_file(make_recipe, tmp_path):
    _, payload = payload_for(make_recipe())
    folder = ck.CheckpointDir(tmp_path / "checkpoints")
    folder.save(payload, 3)
    names = sorted(p.name for p in folder.path.iterdir())
    moved = folder.move_aside()
    assert moved.parent == tmp_path and moved.name.startswith("checkpoints.old-")
    assert sorted(p.name for p in moved.iterdir()) == names and not folder.path.exists()
    assert not folder.has_checkpoints()


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
    with pytest.raises(ck.CheckpointError, match="weights_only") as info:
        ck.load_checkpoint(tmp_path / "pickled.ckpt")
    message = str(info.value)
    assert "not a weakseg checkpoint" in message and "fractions.Fraction" in message
    assert "weights_only=False" not in message and "weights_only` set to `False" not in message


def test_missing_entries_are_named(tmp_path):
    torch.save({"format": ck.FORMAT, "state_dict": {}, "step": "3"}, tmp_path / "partial.ckpt")
    with pytest.raises(ck.CheckpointError) as info:
        ck.load_checkpoint(tmp_path / "partial.ckpt")
    message = str(info.value)
    assert "partial.ckpt: an incomplete weakseg checkpoint" in message
    assert "no 'recipe'" in message and "no 'data_summary'" in message and "'step' is str, not int" in message


def test_a_text_file_is_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.ckpt").write_text("epoch 3: looks good\n")
    with pytest.raises(ck.CheckpointError, match=r"notes\.ckpt: not a weakseg checkpoint \(not a file written by"):
        ck.load_checkpoint(tmp_path / "notes.ckpt")
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(ck.CheckpointError, match=r"empty\.ckpt: not a weakseg checkpoint \(an empty file\)"):
        ck.load_checkpoint(tmp_path / "empty.ckpt")
