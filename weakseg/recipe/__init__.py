"""Recipes: YAML -> validated, frozen attrs objects.

A recipe names components with ``type:`` plus sibling keyword arguments; each component's kwargs
are validated against the config class its plugin registered. ``extends: base.yaml`` inherits and
overrides (paths relative to the extending file), ``--set a.b.c=value`` overrides from the command
line. Every error names the key path (``recipe.model.backbone.depth: expected int, got 'five'``);
unknown keys and unknown component names come with close matches; YAML syntax errors name the file
and line.

The parts: :mod:`~weakseg.recipe.specs` (component specs), :mod:`~weakseg.recipe.schema` (the attrs
classes), :mod:`~weakseg.recipe.convert` (structuring and error messages) and
:mod:`~weakseg.recipe.loading` (files, ``extends``, ``--set``, strategy checks). Import from here.
"""

from weakseg.recipe.convert import converter, format_structure_error, structure
from weakseg.recipe.loading import (
    apply_overrides,
    check_recipe,
    deep_merge,
    load_raw,
    load_recipe,
    raise_problems,
    read_yaml,
    recipe_from_yaml_text,
    recipe_problems,
)
from weakseg.recipe.schema import (
    AugmentConfig,
    DataConfig,
    EvalConfig,
    ModelConfig,
    OptimizerConfig,
    OutputConfig,
    Precision,
    Recipe,
    SyntheticData,
    TrainConfig,
    flatten,
)
from weakseg.recipe.specs import (
    SPEC_CLASSES,
    BackboneSpec,
    CollaboratorSpec,
    ComponentSpec,
    HeadSpec,
    ImporterSpec,
    LabelSourceSpec,
    LossSpec,
    StrategySpec,
    spec_factory,
)

__all__ = [
    "SPEC_CLASSES",
    "AugmentConfig",
    "BackboneSpec",
    "CollaboratorSpec",
    "ComponentSpec",
    "DataConfig",
    "EvalConfig",
    "HeadSpec",
    "ImporterSpec",
    "LabelSourceSpec",
    "LossSpec",
    "ModelConfig",
    "OptimizerConfig",
    "OutputConfig",
    "Precision",
    "Recipe",
    "StrategySpec",
    "SyntheticData",
    "TrainConfig",
    "apply_overrides",
    "check_recipe",
    "converter",
    "deep_merge",
    "flatten",
    "format_structure_error",
    "load_raw",
    "load_recipe",
    "raise_problems",
    "read_yaml",
    "recipe_from_yaml_text",
    "recipe_problems",
    "spec_factory",
    "structure",
]
