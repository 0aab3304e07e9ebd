"""Recipes: strict validation with key paths, close matches, extends, --set, YAML errors."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import attrs
import pytest
import yaml

from weakseg.errors import RecipeError
from weakseg.hookspecs import hookimpl
from weakseg.recipe import (
    LossSpec,
    Recipe,
    apply_overrides,
    check_recipe,
    deep_merge,
    load_recipe,
    recipe_from_yaml_text,
    recipe_problems,
    structure,
)


@attrs.frozen(kw_only=True)
class TBackbone:
    """Test backbone."""

    depth: int = 3

    def build(self, in_channels: int):
        return ("backbone", self.depth, in_channels)


@attrs.frozen(kw_only=True)
class THead:
    """Test head."""

    crop: int = 96

    def build(self, backbone, in_channels):
        return ("head", self.crop)


@attrs.frozen(kw_only=True)
class TLoss:
    """Test loss."""

    weight: float = 1.0

    def build(self):
        return self.weight


@attrs.frozen(kw_only=True)
class TStrategy:
    """Test strategy with a nested component."""

    consistency: LossSpec = attrs.field(factory=lambda: LossSpec.of("t-linear"))
    sigma: float = 20.0

    def build(self, recipe, data):
        return ("strategy", self.consistency.build())


@attrs.frozen(kw_only=True)
class TLabels:
    """Test label source."""

    def build(self):
        return None


@attrs.frozen(kw_only=True)
class TCheckedStrategy:
    """Test strategy that refuses recipes without a model and losses heavier than 5."""

    consistency: LossSpec = attrs.field(factory=lambda: LossSpec.of("t-linear"))

    def check(self, recipe):
        problems = []
        if recipe.model is None:
            problems.append(("recipe.model", "this strategy trains a model; add a `model:` section"))
        if self.consistency.config.weight > 5:
            problems.append(("recipe.strategy.consistency.weight", "at most 5"))
        return problems

    def build(self, recipe, data):
        return "checked"


class _Plugin:
    @hookimpl
    def weakseg_register_backbones(self, registry):
        registry.add("t-convnext_small", TBackbone)

    @hookimpl
    def weakseg_register_principal_heads(self, registry):
        registry.add("t-head", THead)

    @hookimpl
    def weakseg_register_consistency_losses(self, registry):
        registry.add("t-linear", TLoss)
        registry.add("t-cross_entropy", TLoss)

    @hookimpl
    def weakseg_register_strategies(self, registry):
        registry.add("t-cks", TStrategy)
        registry.add("t-checked", TCheckedStrategy)

    @hookimpl
    def weakseg_register_label_sources(self, registry):
        registry.add("t-centroids", TLabels)


@pytest.fixture(autouse=True)
def _components(plugin_registration):
    plugin_registration(_Plugin())


BASE = """
name: demo
data: {store: demo.zarr, label_source: {type: t-centroids}}
model:
  backbone: {type: t-convnext_small, depth: 4}
  head: {type: t-head}
strategy: {type: t-cks, consistency: {type: t-linear, weight: 2}}
train: {steps: 100}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def errors_of(path: Path, overrides=None) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides)
    return str(info.value)


def test_valid_recipe_builds_frozen_objects_and_components(tmp_path):
    recipe = load_recipe(write(tmp_path, "r.yaml", BASE))
    assert recipe.model.backbone.type == "t-convnext_small"
    assert recipe.model.backbone.build(in_channels=3) == ("backbone", 4, 3)
    assert recipe.strategy.build(recipe=recipe, data=None) == ("strategy", 2.0)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        recipe.name = "other"


def test_type_error_carries_the_key_path(tmp_path):
    msg = errors_of(write(tmp_path, "r.yaml", BASE.replace("depth: 4", "depth: 'five'")))
    assert "recipe.model.backbone.depth: expected int, got 'five'" in msg
    assert str(tmp_path / "r.yaml") in msg


def test_unknown_component_gets_close_match_and_plugins_pointer(tmp_path):
    msg = errors_of(write(tmp_path, "r.yaml", BASE.replace("t-convnext_small", "t-convnext_smal")))
    assert "recipe.model.backbone: unknown backbone 't-convnext_smal'; did you mean 't-convnext_small'?" in msg
    assert "weakseg plugins" in msg


def test_unknown_keys_are_rejected_with_close_matches_at_every_level(tmp_path):
    text = BASE.replace("train: {steps: 100}", "train: {stpes: 100}").replace("weight: 2", "wieght: 2")
    msg = errors_of(write(tmp_path, "r.yaml", text))
    assert "recipe.train: unknown key 'stpes'; did you mean 'steps'?" in msg
    assert "recipe.strategy.consistency: unknown key 'wieght'; did you mean 'weight'?" in msg


def test_literal_choices_and_validators_are_reported(tmp_path):
    text = BASE.replace("train: {steps: 100}", "train: {steps: 100, precision: fp16, optimizer: {lr: -1}}")
    msg = errors_of(write(tmp_path, "r.yaml", text))
    assert "recipe.train.precision: expected one of 'fp32', 'bf16', 'auto', got 'fp16'; did you mean 'bf16'?" in msg
    assert "recipe.train.optimizer" in msg and "'lr' must be > 0" in msg


def test_missing_required_key(tmp_path):
    msg = errors_of(write(tmp_path, "r.yaml", BASE.replace("name: demo\n", "")))
    assert "recipe: required key 'name' is missing" in msg or "recipe.name" in msg


def test_scientific_notation_for_ints_and_floats(tmp_path):
    recipe = load_recipe(write(tmp_path, "r.yaml", BASE.replace("steps: 100", "steps: 9e4, optimizer: {lr: 1e-3}")))
    assert recipe.train.steps == 90000 and recipe.train.optimizer.lr == pytest.approx(1e-3)
    msg = errors_of(write(tmp_path, "r2.yaml", BASE.replace("steps: 100", "steps: 2.5")))
    assert "recipe.train.steps: expected int, got 2.5" in msg


def test_extends_inherits_and_overrides_relative_to_the_file(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    sub = tmp_path / "sub"
    sub.mkdir()
    child = write(sub, "child.yaml", """
        extends: ../base.yaml
        name: child
        model: {backbone: {depth: 6}}
        strategy: {consistency: {type: t-cross_entropy}}
    """)
    recipe = load_recipe(child)
    assert recipe.name == "child"
    assert recipe.model.backbone.config.depth == 6
    assert recipe.model.head.type == "t-head"  # inherited
    # A changed component type replaces that component's kwargs instead of merging them.
    assert recipe.strategy.consistency.type == "t-cross_entropy"
    assert recipe.strategy.consistency.config.weight == 1.0


def test_extends_cycle_is_reported(tmp_path):
    write(tmp_path, "a.yaml", "extends: b.yaml\nname: a\n")
    write(tmp_path, "b.yaml", "extends: a.yaml\nname: b\n")
    assert "cycle" in errors_of(tmp_path / "a.yaml")


def test_set_overrides_parse_yaml_values_and_are_validated(tmp_path):
    path = write(tmp_path, "r.yaml", BASE)
    recipe = load_recipe(path, ["train.steps=7", "recipe.model.backbone.depth=2", "eval.max_images=3"])
    assert (recipe.train.steps, recipe.model.backbone.config.depth, recipe.eval.max_images) == (7, 2, 3)
    assert "recipe.train.steps: expected int, got 'many'" in errors_of(path, ["train.steps=many"])
    with pytest.raises(RecipeError, match="expected KEY=VALUE"):
        apply_overrides({}, ["train.steps"])


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "bad.yaml", "name: demo\ndata:\n  store: [unclosed\n")
    msg = errors_of(path)
    assert msg.startswith(f"{path}:") and "YAML syntax error" in msg
    line = int(msg.split(":")[1])
    assert line in (3, 4)


def test_missing_file_is_a_user_error(tmp_path):
    assert "recipe file not found" in errors_of(tmp_path / "nope.yaml")


def test_resolved_yaml_round_trips(tmp_path):
    recipe = load_recipe(write(tmp_path, "r.yaml", BASE))
    text = recipe.to_yaml()
    assert yaml.safe_load(text)["strategy"] == {"type": "t-cks", "consistency": {"type": "t-linear", "weight": 2.0},
                                               "sigma": 20.0}
    assert recipe_from_yaml_text(text) == recipe
    params = recipe.flat_params()
    assert params["model.backbone.type"] == "t-convnext_small"
    assert params["strategy.consistency.weight"] == 2.0


def test_deep_merge_does_not_mutate_inputs():
    base = {"a": {"b": 1, "c": [1]}}
    merged = deep_merge(base, {"a": {"b": 2}})
    assert merged == {"a": {"b": 2, "c": [1]}} and base == {"a": {"b": 1, "c": [1]}}


def test_recipe_class_is_the_schema():
    fields = {f.name for f in attrs.fields(Recipe)}
    assert {"name", "data", "model", "collaborator", "strategy", "train", "eval", "output"} <= fields


def test_mask_threshold_must_be_a_probability(tmp_path):
    msg = errors_of(write(tmp_path, "r.yaml", BASE + "eval: {mask_threshold: 1.5}\n"))
    assert "recipe.eval: invalid value: mask_threshold must be a probability in (0, 1) or 'auto', got 1.5" in msg


def test_the_strategy_checks_the_whole_recipe_on_load(tmp_path):
    text = BASE.replace("type: t-cks,", "type: t-checked,").replace("weight: 2", "weight: 9")
    text = text.replace("model:\n  backbone: {type: t-convnext_small, depth: 4}\n  head: {type: t-head}\n", "")
    path = write(tmp_path, "r.yaml", text)
    msg = errors_of(path)
    assert msg.startswith(f"{path}:")
    assert "recipe.model: this strategy trains a model" in msg
    assert "recipe.strategy.consistency.weight: at most 5" in msg
    # the same recipe structured in code passes the schema; check_recipe reports the same problems
    recipe = structure(yaml.safe_load(textwrap.dedent(text)), Recipe)
    assert [key for key, _ in recipe_problems(recipe)] == ["recipe.model", "recipe.strategy.consistency.weight"]
    with pytest.raises(RecipeError, match=r"recipe\.model"):
        check_recipe(recipe)
    assert load_recipe(write(tmp_path, "ok.yaml", BASE.replace("type: t-cks,", "type: t-checked,"))).name == "demo"


def test_a_model_section_needs_a_head(tmp_path):
    msg = errors_of(write(tmp_path, "r.yaml", BASE.replace("  head: {type: t-head}\n", "")))
    assert "recipe.model.head: required key 'head' is missing" in msg


def test_a_recipe_that_is_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    msg = errors_of(path)
    assert msg.startswith(f"{path}: the recipe is not UTF-8 text") and "save the file as UTF-8" in msg
    parent = tmp_path / "child.yaml"
    parent.write_text("extends: latin1.yaml\n")
    assert errors_of(parent).startswith(f"{path}: the recipe is not UTF-8")


def test_public_names_stay_importable_from_weakseg_recipe():
    import weakseg.recipe as recipe_module

    for name in recipe_module.__all__:
        assert getattr(recipe_module, name) is not None, name


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.grad_clip=-1", "grad_clip must be >= 0"),
        ("data.augment.gamma=[0, 2]", "gamma must be [low, high] with 0 < low <= high"),
        ("data.augment.contrast=[1.5, 1.0]", "contrast must be [low, high]"),
        ("data.group_scales={a: 0}", "group_scales values must be > 0"),
        ("train.log_every=0", "log_every must be > 0"),
        ("eval.score_threshold=2", "score_threshold must lie in [0, 1]"),
        ("data.crop_size=0", "crop_size must be > 0"),
    ],
)
def test_out_of_range_values_fail_when_the_recipe_is_read(tmp_path, override, message):
    """Values that would crash or silently misbehave mid-training are refused up front, with the section."""
    path = tmp_path / "r.yaml"
    path.write_text("name: r\ndata: {store: s.zarr}\nstrategy: {type: seeded-watershed}\n")
    with pytest.raises(RecipeError, match=re.escape(message)):
        load_recipe(path, [override])
