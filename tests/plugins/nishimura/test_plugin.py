"""Registration, recipe validation, cheap import, and the strategy contract of both baselines."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from weakseg.components import Batch, DataSummary
from weakseg.errors import RecipeError
from weakseg.nn.instances import Instances
from weakseg.plugins import registries
from weakseg.recipe import Recipe, StrategySpec, structure
from weakseg.strategy import StrategyModule

SUMMARY = DataSummary(in_channels=1)


def tiny(**kwargs) -> StrategyModule:
    torch.manual_seed(0)
    return StrategySpec.of("nishimura", unet_base=4, unet_depth=2, sigma=3.0, **kwargs).build(recipe=None, data=SUMMARY)


def test_both_strategies_are_registered_through_the_entry_point():
    strategies = registries().strategies
    for name in ("nishimura", "seeded-watershed"):
        entry = strategies.get(name)
        assert "weakseg_nishimura" in str(entry.source)
        assert entry.description


def test_recipe_keys_validate():
    recipe = structure(
        {
            "name": "n",
            "data": {"store": "x.zarr"},
            "strategy": {"type": "nishimura", "variant": "lite", "sigma": 8, "modality": "fluorescence"},
        },
        Recipe,
    )
    assert recipe.strategy.config.variant == "lite" and recipe.strategy.config.sigma == 8.0
    with pytest.raises(RecipeError, match=r"recipe\.strategy\.variant"):
        structure({"name": "n", "data": {"store": "x"}, "strategy": {"type": "nishimura", "variant": "gc"}}, Recipe)
    with pytest.raises(RecipeError, match="sigmaa"):
        structure({"name": "n", "data": {"store": "x"}, "strategy": {"type": "nishimura", "sigmaa": 3}}, Recipe)
    with pytest.raises(RecipeError, match="sigma"):
        structure({"name": "n", "data": {"store": "x"}, "strategy": {"type": "nishimura", "sigma": -1}}, Recipe)


def test_window_defaults_from_sigma():
    cfg = StrategySpec.of("nishimura").config
    assert cfg.resolved_window() == 128  # 2 * 2.6 * 12 + 64 = 126.4, rounded up to 16
    assert StrategySpec.of("nishimura", window=80).config.resolved_window() == 80
    assert StrategySpec.of("nishimura", whole_image=True).config.resolved_window() is None


def test_backprop_precision_resolves_per_device(monkeypatch):
    cpu = torch.device("cpu")
    assert tiny(backprop_precision="bf16").principal().backprop_bf16(cpu)
    assert not tiny(backprop_precision="fp32").principal().backprop_bf16(cpu)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert not tiny().principal().backprop_bf16(cpu)  # auto: fp32 where bf16 would be emulated
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert tiny().principal().backprop_bf16(cpu)


def test_plugin_module_is_cheap_to_import():
    code = "import sys, weakseg_nishimura.plugin; print('torch' in sys.modules, 'skimage' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_nishimura_forward_is_heatmap_mse():
    strategy = tiny()
    points = [torch.tensor([[8.5, 8.5], [20.5, 24.5]]), torch.zeros(0, 2)]
    batch = Batch(image=torch.randn(2, 1, 32, 36), points=points, masks=[None, None],
                  group=torch.zeros(2, dtype=torch.long))
    losses = strategy(batch, 0)
    assert set(losses) == {"heatmap_mse"} and losses["heatmap_mse"].ndim == 0
    losses["heatmap_mse"].backward()
    assert all(p.grad is not None for p in strategy.parameters() if p.requires_grad)
    # A few Adam steps on this batch lower the loss.
    opt = torch.optim.Adam(strategy.parameters(), 1e-2)
    first = None
    for _ in range(8):
        loss = strategy(batch, 0)["heatmap_mse"]
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first


def test_nishimura_principal_predicts_instances_under_inference_mode():
    strategy = tiny(peak_threshold=0.0, peak_min_distance=4, max_peaks=5).train()
    model = strategy.principal()
    assert strategy.trainable and list(model.parameters())  # shares the U-Net
    with torch.inference_mode():
        out = model.predict(torch.randn(2, 1, 40, 44))
    assert len(out) == 2 and all(isinstance(o, Instances) for o in out)
    for inst in out:
        assert inst.image_shape == (40, 44) and 0 < len(inst) <= 5
        assert inst.masks.shape[1:] == (inst.masks.shape[1],) * 2
        assert torch.all(inst.scores >= 0)
        assert inst.to_label_image(0.0).max() == len(inst)
    assert strategy.training  # prediction put the U-Net back in training mode
    panel = strategy.panel(torch.randn(1, 40, 44))
    assert panel["heatmap"].shape == (40, 44) and 0 <= panel["heatmap"].min() <= panel["heatmap"].max() <= 1


def test_state_dict_round_trip():
    a, b = tiny(), tiny()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 1, 24, 24)
    a.eval()
    b.eval()
    torch.testing.assert_close(a.principal().heatmap(x), b.principal().heatmap(x))


def test_seeded_watershed_is_training_free():
    strategy = StrategySpec.of("seeded-watershed", modality="fluorescence").build(recipe=None, data=SUMMARY)
    assert strategy.trainable is False
    assert list(strategy.parameters()) == [] and strategy.state_dict() == {}
    model = strategy.principal()
    assert model.accepts_points
    img = np.zeros((1, 1, 32, 32), np.float32)
    img[0, 0, 8:20, 8:20] = 1.0
    (inst,) = model.predict(torch.from_numpy(img))
    assert len(inst) == 1 and inst.to_label_image(0.5)[14, 14] == 1
