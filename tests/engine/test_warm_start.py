"""``model.init_from``: a run's principal starts from another run's trained principal (the paper's CKS-2)."""

from __future__ import annotations

import pytest
import torch

from weakseg.build import build_strategy
from weakseg.checkpoint import make_payload, save_checkpoint
from weakseg.components import DataSummary
from weakseg.engine.warm_start import warm_start
from weakseg.errors import RecipeError
from weakseg.recipe import Recipe, recipe_from_yaml_text, structure

TINY_MODEL = {
    "backbone": {"type": "convnext_atto", "fpn_channels": 32},
    "head": {"type": "lacss", "crop_size": 32, "encoder_hidden": [32], "detection_layers": 1, "segmentation_layers": 1},
}


def tiny_recipe(strategy: str, **extra) -> Recipe:
    data = {
        "name": f"tiny-{strategy}",
        "data": {"store": "unused.zarr"},
        "model": TINY_MODEL,
        "collaborator": {"type": "cks"} if strategy == "cks" else None,
        "strategy": {"type": strategy},
        **extra,
    }
    return structure(data, Recipe)


def saved_strategy(path, recipe: Recipe, summary: DataSummary, seed: int):
    torch.manual_seed(seed)
    strategy = build_strategy(recipe, summary)
    payload = make_payload(recipe_yaml=recipe.to_yaml(), data_summary=summary, state_dict=strategy.state_dict(), step=7)
    return strategy, save_checkpoint(payload, path)


def built(recipe: Recipe, summary: DataSummary, seed: int):
    torch.manual_seed(seed)
    return build_strategy(recipe, summary)


def test_principal_comes_from_the_source_and_the_collaborator_stays_fresh(tmp_path):
    summary = DataSummary(in_channels=1, n_groups=3, group_names=("a", "b", "c"), has_masks=True)
    donor, path = saved_strategy(tmp_path / "supervised.ckpt", tiny_recipe("supervised"), summary, seed=1)
    target = built(tiny_recipe("cks"), DataSummary(in_channels=1), seed=2)
    collaborator_before = {k: v.clone() for k, v in target.collaborator.state_dict().items()}
    principal_before = {k: v.clone() for k, v in target.principal().state_dict().items()}

    report = warm_start(target, path)

    assert report.source_recipe == "tiny-supervised" and report.source_step == 7 and not report.skipped
    weights = target.principal().state_dict()
    assert set(report.loaded) == set(weights)
    for name, tensor in donor.principal().state_dict().items():
        assert torch.equal(weights[name], tensor), name
    # not vacuous: the two seeds drew different random weights (constant-initialised norms and biases agree)
    moved = [n for n, t in weights.items() if not torch.equal(t, principal_before[n])]
    assert len(moved) > 60 and "backbone.body.stem_0.weight" in moved
    for name, tensor in target.collaborator.state_dict().items():
        assert torch.equal(tensor, collaborator_before[name]), name
    assert "tiny-supervised" in report.summary() and "kept fresh" not in report.summary()


def test_scope_all_also_continues_the_collaborator(tmp_path):
    summary = DataSummary(in_channels=1)
    donor, path = saved_strategy(tmp_path / "cks.ckpt", tiny_recipe("cks"), summary, seed=1)
    target = built(tiny_recipe("cks"), summary, seed=2)
    # not vacuous: the two seeds drew different collaborator weights
    assert not torch.equal(next(target.collaborator.parameters()), next(donor.collaborator.parameters()))

    report = warm_start(target, path, scope="all")

    assert not report.skipped and "model tensors" in report.summary()
    for name, tensor in donor.state_dict().items():
        assert torch.equal(target.state_dict()[name], tensor), name
    assert any(name.startswith("collaborator.") for name in report.loaded)


def test_tensors_of_another_shape_stay_fresh_and_are_reported(tmp_path):
    donor, path = saved_strategy(
        tmp_path / "rgb.ckpt", tiny_recipe("supervised"), DataSummary(in_channels=3, has_masks=True), seed=1
    )
    target = built(tiny_recipe("cks"), DataSummary(in_channels=1), seed=2)
    stem_before = target.principal().state_dict()["backbone.body.stem_0.weight"].clone()

    report = warm_start(target, path)

    skipped = dict(report.skipped)
    assert list(skipped) == ["backbone.body.stem_0.weight"]  # the first convolution reads 3 channels there
    assert "(40, 3, 4, 4) vs (40, 1, 4, 4)" in skipped["backbone.body.stem_0.weight"]
    weights = target.principal().state_dict()
    assert torch.equal(weights["backbone.body.stem_0.weight"], stem_before)
    assert torch.equal(
        weights["backbone.body.stem_0.bias"], donor.principal().state_dict()["backbone.body.stem_0.bias"]
    )
    assert "kept fresh: backbone.body.stem_0.weight" in report.summary()


def test_a_source_with_nothing_that_fits_is_refused(tmp_path):
    unet = structure(
        {
            "name": "tiny-nishimura",
            "data": {"store": "unused.zarr"},
            "strategy": {"type": "nishimura", "unet_base": 8, "unet_depth": 2},
        },
        Recipe,
    )
    _, path = saved_strategy(tmp_path / "unet.ckpt", unet, DataSummary(in_channels=1), seed=1)
    target = built(tiny_recipe("cks"), DataSummary(in_channels=1), seed=2)
    with pytest.raises(RecipeError, match=r"model\.init_from: no weight of .*unet\.ckpt.*same backbone"):
        warm_start(target, path)


def test_a_missing_source_names_the_recipe_key(tmp_path):
    target = built(tiny_recipe("cks"), DataSummary(in_channels=1), seed=2)
    with pytest.raises(RecipeError, match=r"recipe\.model\.init_from: .*nowhere.*not found"):
        warm_start(target, tmp_path / "nowhere")


def test_init_from_is_a_recipe_key_defaulting_to_none():
    assert tiny_recipe("cks").model.init_from is None
    given = tiny_recipe("cks").to_dict()
    given["model"]["init_from"] = "runs/supervised_kromp"
    recipe = structure(given, Recipe)
    assert recipe_from_yaml_text(recipe.to_yaml()).model.init_from == "runs/supervised_kromp"


def test_run_starts_from_the_source_and_resume_does_not_read_it_again(tmp_path):
    """End to end on a real synthetic store: step-0 weights are the donor's; --resume skips init_from."""
    import shutil

    from weakseg.checkpoint import load_checkpoint
    from weakseg.engine.run import run_recipe

    base = {
        "data": {
            "store": str(tmp_path / "store.zarr"),
            "crop_size": 64,
            "num_workers": 0,
            "synthetic": {"n_images": 4, "size": 64, "cell_diameter": 12.0, "val_fraction": 0.25, "seed": 0},
        },
        "train": {
            "steps": 1,
            "batch_size": 1,
            "precision": "fp32",
            "device": "cpu",
            "eval_every": 0,
            "checkpoint_every": 1,
            "optimizer": {"type": "adam", "lr": 1.0e-9, "weight_decay": 0.0, "schedule": "constant"},
        },
        "eval": {"max_images": 1, "panel": False},
    }
    donor_recipe = tiny_recipe("supervised", **(base | {"train": {**base["train"], "seed": 5}}))
    donor_result = run_recipe(donor_recipe, output=tmp_path / "runs", progress=False)
    donor = load_checkpoint(donor_result.checkpoint).state_dict

    recipe = tiny_recipe("cks", **base)
    given = recipe.to_dict()
    given["model"]["init_from"] = str(donor_result.run_dir)
    warm = structure(given, Recipe)
    result = run_recipe(warm, output=tmp_path / "runs", progress=False)
    trained = load_checkpoint(result.checkpoint).state_dict
    # one Adam step at lr 1e-9 moves no weight by more than ~1e-9: the run started from the donor
    for name, tensor in donor.items():
        if tensor.is_floating_point():
            assert torch.allclose(trained[name], tensor, atol=1e-6), name
    assert any(k.startswith("collaborator.") for k in trained)

    shutil.rmtree(donor_result.run_dir / "checkpoints")  # a resumed run must not need the source
    longer = structure(given | {"train": {**given["train"], "steps": 2}}, Recipe)
    resumed = run_recipe(longer, resume=True, output=tmp_path / "runs", progress=False)
    assert resumed.step == 2 and resumed.steps_run == 1
