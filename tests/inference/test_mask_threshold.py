"""``eval.mask_threshold: auto``: the strategy's label-free threshold in evaluation and prediction."""

from __future__ import annotations

import pytest
import yaml
from weakseg_cks.losses import label_free_mask_threshold

import weakseg
from weakseg.errors import RecipeError
from weakseg.inference.mask_threshold import resolve_mask_threshold
from weakseg.recipe import recipe_from_yaml_text


def _recipe(strategy: dict, mask_threshold, target=34.6):
    return recipe_from_yaml_text(
        yaml.safe_dump(
            {
                "name": "tiny-cks",
                "data": {"store": "unused.zarr", "target_cell_size": target},
                "model": {"backbone": {"type": "convnext_atto"}, "head": {"type": "lacss", "max_detections": 50}},
                "collaborator": {"type": "cks"},
                "strategy": strategy,
                "eval": {"mask_threshold": mask_threshold},
            }
        )
    )


def test_the_threshold_is_where_the_prior_puts_a_cells_edge():
    assert label_free_mask_threshold(2.0, 20.0, 17.3) == pytest.approx(0.2017, abs=1e-4)
    assert label_free_mask_threshold(2.0, 20.0, 1000.0) == pytest.approx(0.5)  # far from the point: no shift
    assert label_free_mask_threshold(2.0, 10.0, 17.3) > label_free_mask_threshold(2.0, 20.0, 17.3)


def test_recipe_accepts_auto_or_a_probability_and_names_the_key_otherwise():
    assert _recipe({"type": "cks"}, "auto").eval.mask_threshold == "auto"
    assert _recipe({"type": "cks"}, 0.3).eval.mask_threshold == 0.3
    with pytest.raises(RecipeError, match="mask_threshold"):
        _recipe({"type": "cks"}, 1.5)


def test_auto_resolves_per_strategy():
    from weakseg.build import build_strategy
    from weakseg.components import DataSummary

    cks = build_strategy(_recipe({"type": "cks", "pi": 2.0, "sigma": 20.0}, "auto"), DataSummary(in_channels=1))
    assert resolve_mask_threshold("auto", cks, 34.6) == pytest.approx(0.2017, abs=1e-4)
    assert resolve_mask_threshold("auto", cks, None) == 0.5  # no cell size known
    assert resolve_mask_threshold(0.35, cks, 34.6) == 0.35
    supervised = build_strategy(_recipe({"type": "supervised"}, "auto"), DataSummary(in_channels=1, has_masks=True))
    assert resolve_mask_threshold("auto", supervised, 34.6) == 0.5


def test_a_checkpoint_with_auto_predicts_at_its_label_free_threshold(tmp_path):
    import torch

    from weakseg.build import build_strategy
    from weakseg.checkpoint import make_payload, save_checkpoint
    from weakseg.components import DataSummary
    from weakseg.data.scales import InputScale

    recipe = _recipe({"type": "cks", "pi": 2.0, "sigma": 20.0}, "auto")
    torch.manual_seed(0)
    summary = DataSummary(in_channels=1)
    strategy = build_strategy(recipe, summary)
    payload = make_payload(recipe_yaml=recipe.to_yaml(), data_summary=summary, state_dict=strategy.state_dict(),
                           step=0, input_scale=InputScale(cell_diameter=34.6).to_dict())
    path = save_checkpoint(payload, tmp_path / "cks.ckpt")
    assert weakseg.load(path).mask_threshold == pytest.approx(0.2017, abs=1e-4)
    assert weakseg.load(path, mask_threshold=0.6).mask_threshold == 0.6
