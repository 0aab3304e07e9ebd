"""The training loop: learning, phases, schedule, precision, NaN stop, interruption and exact resume."""

from __future__ import annotations

import math
import os
import signal

import pytest
import torch
from conftest import blob_batches

from weakseg.checkpoint import CheckpointDir, load_checkpoint
from weakseg.components import DataSummary
from weakseg.engine.trainer import LRSchedule, NonFiniteLossError, Trainer, TrainingInterrupted, autocast_dtype

SUMMARY = DataSummary(in_channels=1)


def make_trainer(recipe, tmp_path, callbacks=(), seed=0):
    from weakseg.build import build_strategy
    from weakseg.checkpoint import seed_everything

    seed_everything(recipe.train.seed)
    strategy = build_strategy(recipe, SUMMARY)
    return Trainer(
        strategy,
        recipe,
        SUMMARY,
        batches=blob_batches(seed),
        checkpoints=CheckpointDir(tmp_path / "checkpoints", keep=2),
        callbacks=callbacks,
        progress=False,
    )


def params(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_learns_and_reports_phases(make_recipe, tmp_path):
    seen = []
    trainer = make_trainer(
        make_recipe(steps=30, optimizer={"type": "adam", "lr": 0.02, "schedule": "constant"}),
        tmp_path,
        callbacks=[lambda t, step, losses: seen.append((step, t.phase, dict(losses)))],
    )
    result = trainer.fit()
    assert result.step == 30 and result.steps_run == 30
    assert [s for s, _, _ in seen] == list(range(1, 31))
    # the strategy declares warmup (steps 0, 1) then main; main adds the l2 term
    assert [p for _, p, _ in seen[:3]] == ["warmup", "warmup", "main"]
    assert "l2" not in seen[0][2] and "l2" in seen[5][2]
    # the engine sums the named losses
    assert seen[5][2]["loss"] == pytest.approx(seen[5][2]["bce"] + seen[5][2]["l2"], rel=1e-5)
    first = sum(x[2]["bce"] for x in seen[:5]) / 5
    last = sum(x[2]["bce"] for x in seen[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    assert result.checkpoint == tmp_path / "checkpoints" / "last.ckpt"
    assert load_checkpoint(result.checkpoint).step == 30


def test_lr_schedules():
    fine = LRSchedule(lr=1e-3, total_steps=100, schedule="finetune", finetune_lr=2e-4, finetune_start=0.8)
    assert fine(0) == fine(79) == 1e-3 and fine(80) == fine(99) == 2e-4
    warm = LRSchedule(lr=1e-3, total_steps=100, schedule="constant", warmup_steps=4)
    assert [warm(s) for s in range(5)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3])
    cos = LRSchedule(lr=1.0, total_steps=10, schedule="cosine")
    assert cos(0) == 1.0 and cos(5) == pytest.approx(0.5) and cos(10) == pytest.approx(0.0)


def test_optimizer_follows_schedule(make_recipe, tmp_path):
    lrs = []
    trainer = make_trainer(
        make_recipe(steps=10, optimizer={"type": "adamw", "lr": 0.01, "finetune_lr": 0.001, "finetune_start": 0.5}),
        tmp_path,
        callbacks=[lambda t, step, losses: lrs.append(t.optimizer.param_groups[0]["lr"])],
    )
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    # biases get no weight decay
    decays = sorted((g["weight_decay"], sorted(p.ndim for p in g["params"])) for g in trainer.optimizer.param_groups)
    assert decays == [(0.0, [1, 1, 1]), (1e-4, [4, 4, 4])]
    trainer.fit()
    assert lrs == [0.01] * 5 + [0.001] * 5


def test_lr_factors_scale_the_named_parts_through_the_schedule(make_recipe, tmp_path):
    seen = []
    optimizer = {"type": "adamw", "lr": 0.01, "finetune_lr": 0.001, "finetune_start": 0.5, "lr_factors": {"head": 3.0}}
    trainer = make_trainer(
        make_recipe(steps=4, optimizer=optimizer),
        tmp_path,
        callbacks=[lambda t, step, losses: seen.append({g["lr_factor"]: g["lr"] for g in t.optimizer.param_groups})],
    )
    head = {id(p) for p in trainer.strategy.net[4].parameters()}
    for group in trainer.optimizer.param_groups:
        assert {id(p) in head for p in group["params"]} == {group["lr_factor"] == 3.0}
    trainer.fit()
    assert seen == [{1.0: 0.01, 3.0: pytest.approx(0.03)}] * 2 + [{1.0: 0.001, 3.0: pytest.approx(0.003)}] * 2


def test_lr_factors_resume_with_the_recipe_factors(make_recipe, tmp_path):
    optimizer = {"type": "adam", "lr": 0.01, "schedule": "constant", "lr_factors": {"head": 3.0}}
    first = make_trainer(make_recipe(steps=3, optimizer=optimizer), tmp_path)
    first.fit()
    ckpt = load_checkpoint(first.last_checkpoint)
    changed = make_trainer(make_recipe(steps=6, optimizer={**optimizer, "lr_factors": {"head": 5.0}}), tmp_path)
    changed.restore(ckpt)
    assert sorted(g["lr_factor"] for g in changed.optimizer.param_groups) == [1.0, 1.0, 5.0, 5.0]
    assert changed.optimizer.state  # the moments were kept
    regrouped = make_trainer(make_recipe(steps=6, optimizer={**optimizer, "lr_factors": {}}), tmp_path)
    with pytest.warns(UserWarning, match="lr_factors changed"):
        regrouped.restore(ckpt)
    assert regrouped.step == 3 and not regrouped.optimizer.state


def test_lr_factors_name_only_parts_the_strategy_declares(make_recipe, tmp_path):
    from weakseg.errors import WeaksegError

    match = r"lr_factors: unknown part 'collaborator'; strategy 'tiny_test' names: head"
    with pytest.raises(WeaksegError, match=match):
        make_trainer(make_recipe(steps=2, optimizer={"lr_factors": {"collaborator": 2.0}}), tmp_path)


def test_bf16_autocast_on_cpu(make_recipe, tmp_path):
    assert autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    assert autocast_dtype("auto", torch.device("cpu")) is None
    assert autocast_dtype("auto", torch.device("cuda", 0)) is torch.bfloat16
    dtypes = []
    trainer = make_trainer(make_recipe(steps=4, precision="bf16"), tmp_path)
    trainer.strategy.net[0].register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    result = trainer.fit()
    assert dtypes == [torch.bfloat16] * 4
    assert math.isfinite(result.losses["loss"])
    assert all(p.dtype == torch.float32 for p in trainer.strategy.parameters())  # master weights stay fp32


def test_nan_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(make_recipe, tmp_path, monkeypatch):
    monkeypatch.setenv("WEAKSEG_TINY_NAN_AT", "6")
    trainer = make_trainer(make_recipe(steps=12, checkpoint_every=4), tmp_path)
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit()
    message = str(info.value)
    assert "bce=nan" in message and "step 6" in message and "last.ckpt (step 4)" in message
    saved = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert saved.step == 4
    assert all(torch.isfinite(v).all() for v in saved.state_dict.values() if v.is_floating_point())
    # the optimizer never applied the NaN step
    assert all(torch.isfinite(p).all() for p in trainer.strategy.parameters())


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_checkpoints_and_resume_is_exact(make_recipe, tmp_path, signum):
    recipe = make_recipe(steps=12, checkpoint_every=5)
    reference = make_trainer(recipe, tmp_path / "ref")
    reference.fit()
    expected = params(reference.strategy)

    def kill_at_7(trainer, step, losses):
        if step == 7:
            os.kill(os.getpid(), signum)

    first = make_trainer(recipe, tmp_path / "run", callbacks=[kill_at_7])
    previous = signal.getsignal(signum)
    with pytest.raises(TrainingInterrupted) as info:
        first.fit()
    assert signal.getsignal(signum) is previous  # handlers restored
    assert info.value.exit_code == 128 + signum and info.value.step == 7
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert ckpt.step == 7 and ckpt.raw["data"] == {"step": 7, "seed": 0, "world_size": 1}

    steps = []
    second = make_trainer(recipe, tmp_path / "run", callbacks=[lambda t, s, _: steps.append(s)])
    second.restore(ckpt)
    result = second.fit()
    assert steps == list(range(8, 13))  # nothing redone
    assert result.step == 12 and result.steps_run == 5
    resumed = params(second.strategy)
    assert int(resumed["seen_steps"]) == 12
    for key, value in expected.items():
        assert torch.equal(value, resumed[key]), key
