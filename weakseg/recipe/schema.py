"""The recipe schema: frozen attrs classes from ``Recipe`` down to the data, model and training settings.

Component fields are :mod:`weakseg.recipe.specs` whose configs come from the plugins' registries;
everything else is plain typed fields, validated when a recipe is structured
(:func:`weakseg.recipe.convert.structure`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import attrs
import yaml

from weakseg.recipe.convert import converter
from weakseg.recipe.specs import BackboneSpec, CollaboratorSpec, HeadSpec, LabelSourceSpec, StrategySpec

Precision = Literal["fp32", "bf16", "auto"]


@attrs.frozen(kw_only=True)
class SyntheticData:
    """Generate a seeded synthetic store at ``data.store`` when it does not exist (demo runs)."""

    n_images: int = 8
    size: int = 256
    modality: Literal["phase", "fluorescence", "mixed"] = "mixed"
    cell_diameter: float = 24.0
    val_fraction: float = 0.25
    seed: int = 0


@attrs.frozen(kw_only=True)
class AugmentConfig:
    """Training augmentations of the paper (flips, 90-degree rotations, resize, intensity)."""

    flips: bool = True
    rot90: bool = True
    scale_range: tuple[float, float] = (0.85, 1.15)
    anisotropic: bool = True
    brightness: float = 0.3
    contrast: tuple[float, float] = (0.6, 1.4)
    gamma: tuple[float, float] = (0.5, 2.0)


@attrs.frozen(kw_only=True)
class DataConfig:
    """Where training data comes from and how crops are made."""

    store: str
    train_split: str = "train"
    val_split: str = "val"
    label_source: LabelSourceSpec = attrs.field(factory=lambda: LabelSourceSpec.of("centroids"))
    crop_size: int = 544
    augment: AugmentConfig = attrs.field(factory=AugmentConfig)
    #: Rescale images so that the typical cell diameter (pixels) becomes this; None keeps sizes.
    target_cell_size: float | None = None
    #: Fixed scale factor per group (cell line), e.g. {A172: 1.0, BV2: 2.6}; overrides target_cell_size.
    group_scales: dict[str, float] = attrs.field(factory=dict)
    #: How target_cell_size is applied: ``group`` (one factor per group from its median cell diameter,
    #: the paper's per-cell-line scaling) or ``image`` (each image by its own measured diameter, for sets
    #: that mix magnifications; evaluation then uses each image's known size, and prediction needs
    #: ``--diameter`` per batch of images of one magnification).
    rescale: Literal["group", "image"] = "group"
    #: Only images of these groups are used (empty = all).
    groups: tuple[str, ...] = ()
    num_workers: int = 2
    synthetic: SyntheticData | None = None


@attrs.frozen(kw_only=True)
class ModelConfig:
    """The principal model: a backbone and a principal head (``head:`` has no default)."""

    backbone: BackboneSpec = attrs.field(factory=lambda: BackboneSpec.of("convnext_small"))
    #: Required: principal heads come from plugins (``weakseg plugins`` lists them), e.g. ``{type: lacss}``.
    head: HeadSpec
    #: A checkpoint or run folder whose trained principal initialises this run's principal (the
    #: paper's "CKS-2": pre-trained elsewhere, e.g. with masks on another dataset); tensors are
    #: matched by name and shape. Used when a run starts, ignored on ``--resume``.
    init_from: str | None = None


@attrs.frozen(kw_only=True)
class OptimizerConfig:
    """AdamW/Adam with a constant rate, optionally dropping to ``finetune_lr`` for the last part."""

    type: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = attrs.field(default=1e-3, validator=attrs.validators.gt(0))
    weight_decay: float = attrs.field(default=1e-4, validator=attrs.validators.ge(0))
    schedule: Literal["constant", "cosine", "finetune"] = "finetune"
    #: Learning rate of the final fine-tuning stretch (the paper: 2e-4) when schedule is "finetune".
    finetune_lr: float = 2e-4
    #: Fraction of the steps after which the fine-tuning rate applies.
    finetune_start: float = attrs.field(default=0.8, validator=[attrs.validators.ge(0), attrs.validators.le(1)])
    warmup_steps: int = 0


@attrs.frozen(kw_only=True)
class TrainConfig:
    """The step-based training schedule and the engine's settings."""

    steps: int = attrs.field(default=90_000, validator=attrs.validators.ge(0))
    batch_size: int = attrs.field(default=1, validator=attrs.validators.ge(1))
    optimizer: OptimizerConfig = attrs.field(factory=OptimizerConfig)
    precision: Precision = "auto"
    grad_clip: float | None = 10.0
    log_every: int = 10
    eval_every: int = 4500
    checkpoint_every: int = 1000
    seed: int = 0
    device: str = "auto"
    #: DDP: let unused parameters pass (needed when a phase skips a sub-model).
    find_unused_parameters: bool = True


@attrs.frozen(kw_only=True)
class EvalConfig:
    """Periodic and final evaluation."""

    split: str = "val"
    max_images: int | None = None
    score_threshold: float = 0.5
    #: Probability at which instance masks are binarised, in evaluation and (as the trained model's
    #: default) in ``weakseg predict`` / ``weakseg.load``; like Cellpose's ``cellprob_threshold``.
    #: ``weakseg evaluate --sweep-mask-threshold`` on a labelled validation split helps choose it.
    mask_threshold: float = attrs.field(
        default=0.5, validator=[attrs.validators.gt(0.0), attrs.validators.lt(1.0)]
    )
    panel: bool = True


@attrs.frozen(kw_only=True)
class OutputConfig:
    """Where runs are written and tracked."""

    dir: str = "runs"
    #: Default: sqlite:///<dir>/mlflow.db (MLFLOW_TRACKING_URI overrides, this key overrides both).
    tracking_uri: str | None = None
    #: Default: the recipe name.
    experiment: str | None = None


@attrs.frozen(kw_only=True)
class Recipe:
    """A complete, validated description of one training run."""

    name: str
    description: str = ""
    data: DataConfig
    model: ModelConfig | None = None
    collaborator: CollaboratorSpec | None = None
    strategy: StrategySpec
    train: TrainConfig = attrs.field(factory=TrainConfig)
    eval: EvalConfig = attrs.field(factory=EvalConfig)
    output: OutputConfig = attrs.field(factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        return converter.unstructure(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def flat_params(self) -> dict[str, Any]:
        """The recipe flattened to dotted keys (MLflow params), e.g. ``model.backbone.type``."""
        return flatten(self.to_dict())

    def evolve(self, **changes: Any) -> Recipe:
        return attrs.evolve(self, **changes)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out
