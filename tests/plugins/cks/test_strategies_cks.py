"""CKS strategies built from recipes: losses, gradient flow through the real models, phases, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from weakseg_cks.losses import InstanceConsistency, crop_geometry

from weakseg.build import build_strategy
from weakseg.components import Batch, DataSummary
from weakseg.errors import DataError, RecipeError
from weakseg.recipe import Recipe, recipe_from_yaml_text, structure

TINY_MODEL = {
    "backbone": {"type": "convnext_atto", "fpn_channels": 32},
    "head": {"type": "lacss", "crop_size": 32, "encoder_hidden": [32], "detection_layers": 1, "segmentation_layers": 1},
}


def make_recipe(strategy: dict | None = None, *, model: dict | None = TINY_MODEL, collaborator="cks", steps=100):
    data = {"name": "t", "data": {"store": "unused.zarr"}, "strategy": strategy or {"type": "cks"}}
    data["train"] = {"steps": steps}
    if model is not None:
        data["model"] = model
    if collaborator is not None:
        data["collaborator"] = {"type": collaborator} if isinstance(collaborator, str) else collaborator
    return structure(data, Recipe)


def make_strategy(strategy=None, summary=None, **kw):
    torch.manual_seed(0)
    summary = summary or DataSummary(in_channels=1, n_groups=2, group_names=("big", "small"))
    return build_strategy(make_recipe(strategy, **kw), summary)


def disc_batch(n_images=2, size=64, with_masks=(False, False), seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] + 0.5
    images, points, masks = [], [], []
    for b in range(n_images):
        labels = np.zeros((size, size), np.int64)
        centres = [(16 + 4 * b, 18), (40, 44), (20, 48)]
        for k, (cy, cx) in enumerate(centres, 1):
            labels[(yy - cy) ** 2 + (xx - cx) ** 2 < 49] = k
        img = (labels > 0).astype(np.float32) + rng.normal(0, 0.2, labels.shape).astype(np.float32)
        images.append(img[None])
        points.append(torch.tensor(centres, dtype=torch.float32))
        masks.append(torch.tensor(labels) if with_masks[b] else None)
    return Batch(
        image=torch.tensor(np.stack(images)),
        points=points,
        masks=masks,
        group=torch.tensor([0, 1][:n_images]),
        image_ids=[f"img{b}" for b in range(n_images)],
    )


CKS_KEYS = {"detection", "foreground", "instance", "border", "collapse"}


def test_cks_returns_the_named_losses_and_roundtrips_through_yaml():
    strategy = make_strategy({"type": "cks", "sigma": {"big": 20, "small": 10}})
    losses = strategy(disc_batch(), 50)
    assert set(losses) == CKS_KEYS
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    recipe = make_recipe({"type": "cks", "sigma": {"big": 20, "default": 10}})
    again = recipe_from_yaml_text(recipe.to_yaml())
    assert again.strategy.config.sigma == {"big": 20.0, "default": 10.0}


def _param_groups(strategy):
    p = strategy.principal_model
    return {
        "backbone": list(p.backbone.parameters()),
        "detector": list(p.detector.parameters()),
        "segmentor": list(p.segmentor.parameters()),
        "collab_fg": list(strategy.collaborator.foreground.parameters()),
        "collab_border": list(strategy.collaborator.border.parameters()),
    }


def _touched(loss, groups):
    names = list(groups)
    flat = [p for n in names for p in groups[n]]
    grads = torch.autograd.grad(loss, flat, retain_graph=True, allow_unused=True)
    out, k = set(), 0
    for n in names:
        g = grads[k : k + len(groups[n])]
        k += len(groups[n])
        if any(x is not None and bool(x.abs().sum() > 0) for x in g):
            out.add(n)
    return out


@pytest.mark.parametrize("step", [0, 50])  # warm-up (hard labels, log overlap) and soft phase
def test_each_loss_updates_exactly_its_models(step):
    strategy = make_strategy()
    losses = strategy(disc_batch(), step)
    groups = _param_groups(strategy)
    principal_seg = {"backbone", "segmentor"}
    assert _touched(losses["detection"], groups) == {"backbone", "detector"}
    assert _touched(losses["foreground"], groups) == {"collab_fg"}  # L_M: collaborator fg only
    assert _touched(losses["instance"], groups) == principal_seg  # L_S: principal only
    assert _touched(losses["border"], groups) == principal_seg | {"collab_border"}  # L_B: both
    assert _touched(losses["collapse"], groups) == principal_seg  # L_MC: principal only


def test_warmup_uses_hard_labels_and_log_overlap_then_soft():
    strategy = make_strategy({"type": "cks", "warmup_steps": 10})
    assert [(p.name, p.start) for p in strategy.phases()] == [("warmup", 0), ("main", 10)]
    assert strategy.phase_at(9) == "warmup" and strategy.phase_at(10) == "main"
    batch = disc_batch()
    warm, main = strategy(batch, 9)["instance"], strategy(batch, 10)["instance"]
    # recompute both forms from the same crops and collaborator output
    model = strategy.principal_model
    with torch.no_grad():
        out = model.forward_train(batch.image)
        crops = model.segment(out, model.training_locations(out, batch.points))
        geom = crop_geometry(crops.origins, crops.batch_index, (64, 64), 2, crops.crop_size)
        fg = strategy.collaborator(batch.image, batch.group).foreground
    hard = InstanceConsistency()(crops.logits, geom, fg, hard=True)
    soft = InstanceConsistency()(crops.logits, geom, fg, hard=False)
    assert warm.item() == pytest.approx(hard.item(), rel=1e-5)
    assert main.item() == pytest.approx(soft.item(), rel=1e-5)
    assert abs(hard.item() - soft.item()) > 1e-4


def test_warmup_fraction_of_the_training_steps():
    assert [p.start for p in make_strategy(steps=200).phases()] == [0, 20]
    assert [p.name for p in make_strategy({"type": "cks", "warmup_fraction": 0.0}).phases()] == ["main"]


def test_prior_follows_the_phase_and_the_group_sigma():
    strategy = make_strategy({"type": "cks", "sigma": {"big": 20, "small": 5}, "pi": 2.0, "warmup_steps": 5})
    batch = disc_batch()
    model = strategy.principal_model
    with torch.no_grad():
        out = model.forward_train(batch.image)
        crops = model.segment(out, batch.points)
    geom = crop_geometry(crops.origins, crops.batch_index, (64, 64), 2, crops.crop_size)
    main = strategy.prior(crops, geom, batch.group, warm=False)
    warm = strategy.prior(crops, geom, batch.group, warm=True)
    c = crops.crop_size // 2  # crop pixel (c, c) is 0.5 px off the centre on each axis
    corner_r2 = 2 * ((crops.crop_size - 1) / 2) ** 2
    big, small = main[crops.batch_index == 0][0], main[crops.batch_index == 1][0]
    assert big[c, c].item() == pytest.approx(2.0 * math.exp(-0.5 / (2 * 20**2)), rel=1e-5)
    assert big[0, 0].item() == pytest.approx(2.0 * math.exp(-corner_r2 / (2 * 20**2)), rel=1e-5)
    assert small[0, 0].item() == pytest.approx(2.0 * math.exp(-corner_r2 / (2 * 5**2)), rel=1e-5)
    assert warm[0, 0, 0].item() == pytest.approx(1.0 * math.exp(-corner_r2 / (2 * 100**2)), rel=1e-5)
    no_prior = make_strategy({"type": "cks", "pi": 0.0})
    assert no_prior.prior(crops, geom, batch.group, warm=False) is None


def test_zero_points_and_odd_image_sizes():
    strategy = make_strategy()
    batch = Batch(
        image=torch.randn(2, 1, 45, 71),
        points=[torch.zeros(0, 2), torch.tensor([[10.0, 60.0]])],
        masks=[None, None],
        group=torch.tensor([0, 1]),
    )
    losses = strategy(batch, 50)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    empty = Batch(image=torch.randn(1, 1, 33, 40), points=[torch.zeros(0, 2)], masks=[None], group=torch.tensor([0]))
    losses = strategy(empty, 50)
    assert losses["instance"].item() == 0 and losses["collapse"].item() == 0
    strategy.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    # every parameter stays in the graph (DDP without find_unused_parameters)
    assert all(p.grad is not None for p in strategy.parameters())


def test_panel_gives_collaborator_maps_in_unit_range():
    strategy = make_strategy()
    maps = strategy.panel(torch.randn(1, 1, 40, 52), group=1)
    assert set(maps) == {"collaborator_foreground", "collaborator_border"}
    for m in maps.values():
        assert m.shape == (40, 52) and m.min() >= 0 and m.max() <= 1


def test_principal_predicts_instances():
    strategy = make_strategy()
    (inst,) = strategy.principal().predict(torch.randn(1, 1, 64, 64))
    assert inst.image_shape == (64, 64)


# ---------------------------------------------------------------------------------------------
# supervised and mixed
# ---------------------------------------------------------------------------------------------


def test_supervised_learns_masks_and_needs_them():
    strategy = make_strategy({"type": "supervised"}, collaborator=None, summary=DataSummary(1, has_masks=True))
    losses = strategy(disc_batch(with_masks=(True, True)), 0)
    assert set(losses) == {"detection", "mask"}
    assert _touched(losses["mask"], {"seg": list(strategy.principal_model.segmentor.parameters())}) == {"seg"}
    with pytest.raises(DataError, match="img1"):
        strategy(disc_batch(with_masks=(True, False)), 0)
    with pytest.raises(RecipeError, match="masks"):
        make_strategy({"type": "supervised"}, collaborator=None, summary=DataSummary(1, has_masks=False))


def test_supervised_mask_loss_falls_when_trained():
    strategy = make_strategy({"type": "supervised"}, collaborator=None, summary=DataSummary(1, has_masks=True))
    batch = disc_batch(with_masks=(True, True))
    opt = torch.optim.Adam(strategy.parameters(), lr=2e-3)
    first = None
    for step in range(15):
        losses = strategy(batch, step)
        first = first if first is not None else losses["mask"].item()
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    assert losses["mask"].item() < 0.7 * first


def test_mixed_uses_supervised_terms_on_masked_images_and_cks_terms_elsewhere():
    strategy = make_strategy({"type": "mixed"})
    keys = CKS_KEYS | {"mask", "foreground_supervised"}
    all_masks = strategy(disc_batch(with_masks=(True, True)), 50)
    assert set(all_masks) == keys
    assert all_masks["mask"].item() > 0 and all_masks["foreground_supervised"].item() > 0
    for k in ("foreground", "instance", "border", "collapse"):
        assert all_masks[k].item() == 0
    no_masks = strategy(disc_batch(), 50)
    assert no_masks["mask"].item() == 0 and no_masks["instance"].item() > 0
    half = strategy(disc_batch(with_masks=(True, False)), 50)
    assert half["mask"].item() > 0 and half["instance"].item() > 0
    groups = _param_groups(strategy)
    assert _touched(half["foreground_supervised"], groups) == {"collab_fg"}
    assert _touched(half["mask"], groups) == {"backbone", "segmentor"}


# ---------------------------------------------------------------------------------------------
# recipe errors
# ---------------------------------------------------------------------------------------------


def test_missing_models_are_recipe_errors_naming_the_key():
    with pytest.raises(RecipeError, match=r"recipe\.collaborator"):
        make_strategy(collaborator=None)
    with pytest.raises(RecipeError, match=r"recipe\.model"):
        make_strategy(model=None)
    with pytest.raises(RecipeError, match=r"recipe\.model"):
        make_strategy({"type": "mixed"}, model=None)


def test_bad_strategy_keys_are_recipe_errors():
    with pytest.raises(RecipeError, match=r"sigma.*'smal'.*did you mean 'small'"):
        make_strategy({"type": "cks", "sigma": {"big": 20, "smal": 10}})
    with pytest.raises(RecipeError, match=r"no sigma for group 'small'"):
        make_strategy({"type": "cks", "sigma": {"big": 20}})
    with pytest.raises(RecipeError, match="sigma"):
        make_recipe({"type": "cks", "sigma": -1})
    with pytest.raises(RecipeError, match=r"recipe\.strategy\.pi"):
        make_recipe({"type": "cks", "pi": "lots"})
    with pytest.raises(RecipeError, match=r"recipe\.strategy\.consistency.*border.*linear"):
        make_strategy({"type": "cks", "consistency": {"type": "border"}})
    with pytest.raises(RecipeError, match="consisteny"):
        make_recipe({"type": "cks", "consisteny": {"type": "linear"}})


def test_ablation_switches_build():
    strategy = make_strategy(
        {"type": "cks", "consistency": {"type": "cross_entropy"}, "instance_loss": {"type": "instance_cross_entropy"}}
    )
    assert strategy.consistency.kind == "cross_entropy" and strategy.instance_loss.cross_entropy
    assert set(strategy(disc_batch(), 50)) == CKS_KEYS


def test_principal_and_collaborator_can_train_at_their_own_rates():
    from weakseg.engine.optim import LRSchedule, build_optimizer
    from weakseg.recipe.schema import OptimizerConfig

    strategy = make_strategy()
    parts = strategy.parameter_groups()
    assert set(parts) == {"principal", "collaborator"}
    named = {id(p) for part in parts.values() for p in part.parameters()}
    assert named == {id(p) for p in strategy.parameters()}
    optimizer = build_optimizer(strategy, OptimizerConfig(lr=1e-3, lr_factors={"collaborator": 10.0}), parts)
    LRSchedule(lr=1e-3, total_steps=10, schedule="constant").apply(optimizer, 0)
    collaborator = {id(p) for p in strategy.collaborator.parameters()}
    for group in optimizer.param_groups:
        in_collaborator = {id(p) in collaborator for p in group["params"]}
        assert len(in_collaborator) == 1
        assert group["lr"] == pytest.approx(1e-2 if in_collaborator.pop() else 1e-3)


def test_lecun_init_reaches_every_layer_weakseg_defines_and_leaves_the_timm_trunk():
    from weakseg.nn.init import fan_in

    torch_init = make_strategy()
    lecun = make_strategy(model={**TINY_MODEL, "init": "lecun"})
    trunk = lecun.principal_model.backbone.body
    for (name, p), (_, q) in zip(trunk.named_parameters(), torch_init.principal_model.backbone.body.named_parameters(),
                                 strict=True):
        assert torch.equal(p, q), name  # timm's own initialisation, untouched
    trunk_ids = {id(p) for p in trunk.parameters()}
    layers = [m for m in lecun.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear))
              and id(m.weight) not in trunk_ids]
    assert any(isinstance(m, torch.nn.ConvTranspose2d) for m in layers)
    assert any(m in set(lecun.collaborator.modules()) for m in layers)
    for m in layers:
        bound = 2 / math.sqrt(fan_in(m)) / 0.8796256610342398 + 1e-6
        assert m.weight.abs().max().item() <= bound
        assert m.bias is None or torch.count_nonzero(m.bias) == 0
    upsample = next(m for m in layers if isinstance(m, torch.nn.ConvTranspose2d))
    torch_upsample = next(m for m in torch_init.modules() if isinstance(m, torch.nn.ConvTranspose2d))
    assert torch_upsample.weight.std() > 2 * upsample.weight.std()  # torch's fan-in counts output channels
