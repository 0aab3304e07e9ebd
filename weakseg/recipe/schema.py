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
from weakseg.validators import fraction, non_negative, positive, positive_range, positive_values

Precision = Literal["fp32", "bf16", "auto"]


@attrs.frozen(kw_only=True)
class SyntheticData:
    """Generate a seeded synthetic store at ``data.store`` when it is missing or stale (demo runs).

    Images of touching irregular cells with instance masks, centroid points and a nuclear-stain image;
    each image's group is its modality. Changing any key here regenerates the store.
    """

    #: Number of images generated.
    n_images: int = attrs.field(default=8, validator=positive)
    #: Side of each square image, in pixels.
    size: int = attrs.field(default=256, validator=positive)
    #: Look of the images: ``phase`` (phase-contrast-like), ``fluorescence`` (a cytoplasmic stain) or
    #: ``mixed`` (the two alternating).
    modality: Literal["phase", "fluorescence", "mixed"] = "mixed"
    #: Typical cell diameter in pixels; each image varies it by up to 15 % either way.
    cell_diameter: float = attrs.field(default=24.0, validator=positive)
    #: Fraction of each group's images put in the ``val`` split (the rest are ``train``); with more than
    #: one image, a positive fraction always yields at least one validation image.
    val_fraction: float = attrs.field(default=0.25, validator=fraction)
    #: Seed of the images and of the split: the same settings always give the same store.
    seed: int = 0


@attrs.frozen(kw_only=True)
class AugmentConfig:
    """Training augmentations of the paper (flips, 90-degree rotations, resize, intensity), drawn per crop.

    Only training crops are augmented; evaluation and prediction see the images as they are.
    """

    #: Flip each crop vertically and horizontally, each with probability 0.5.
    flips: bool = True
    #: Rotate each crop by a random multiple of 90 degrees.
    rot90: bool = True
    #: [low, high] of the random resize factor, drawn uniformly and applied on top of the cell-size
    #: rescaling (``data.target_cell_size``, ``data.group_scales``); ``[1.0, 1.0]`` turns the random resize off.
    scale_range: tuple[float, float] = attrs.field(default=(0.85, 1.15), validator=positive_range)
    #: Draw the resize factor separately for y and x (cells get stretched), instead of one for both axes.
    anisotropic: bool = True
    #: Largest random brightness shift, added to the standardised crop (in units of the image's standard
    #: deviation), drawn uniformly in [-brightness, brightness]; 0 turns it off.
    brightness: float = attrs.field(default=0.3, validator=non_negative)
    #: [low, high] of the random contrast factor that multiplies the standardised crop, drawn uniformly;
    #: ``[1.0, 1.0]`` turns it off.
    contrast: tuple[float, float] = attrs.field(default=(0.6, 1.4), validator=positive_range)
    #: [low, high] of the random gamma (both above 0), drawn log-uniformly and applied to intensities mapped
    #: to [0, 1] by the image's 0.1-99.9 percentile range, before standardisation; ``[1.0, 1.0]`` turns it off.
    gamma: tuple[float, float] = attrs.field(default=(0.5, 2.0), validator=positive_range)
    #: Largest factor by which half the crops are shrunk (antialiased) and enlarged back, drawn log-uniformly
    #: in [1, resample]: fine detail is lost as in a lower-magnification image resized to the training cell
    #: size, so that a model trained on high-magnification images also serves low-magnification ones. 1.0
    #: (default) turns it off.
    resample: float = attrs.field(default=1.0, validator=attrs.validators.ge(1.0))


@attrs.frozen(kw_only=True)
class DataConfig:
    """Where training data comes from and how crops are made."""

    #: Path of the weakseg zarr store (written by ``weakseg data import``, or generated when ``data.synthetic``
    #: is set); a relative path is taken from the working directory.
    store: str
    #: Store split whose images are trained on; its cell sizes also set the per-group scales.
    train_split: str = "train"
    #: Name of the validation split, for reference only: what a run evaluates is ``eval.split``.
    val_split: str = "val"
    #: Where the training points come from, e.g. ``centroids`` of the masks, ``nuclei`` blobs on a nuclear
    #: channel, ``csv`` (the imported points), ``jitter`` (moved / dropped points) or ``region`` (another
    #: source's points inside a region, which is then marked as the annotated part of the image).
    label_source: LabelSourceSpec = attrs.field(factory=lambda: LabelSourceSpec.of("centroids"))
    #: Whether the annotated region of a training image (``weakseg data region``, or the one a ``region``
    #: label source keeps) limits where an unlabelled pixel is taught as background; false treats every
    #: image as annotated everywhere (what a complete point set means).
    use_regions: bool = True
    #: Pixels (of the training crops) inside an annotated region's edge that are not taught as background
    #: either: a cell whose point lies just outside the region reaches into it. null: half of
    #: ``target_cell_size`` (a cell radius; 0 without one).
    region_margin: float | None = attrs.field(default=None, validator=non_negative)
    #: Cells cut by the edge of a training crop, for strategies that train from points: ``ignore`` keeps the
    #: points of cells the edge cuts (by default they are dropped with their masks when the store has masks)
    #: and leaves a cell radius around points just outside the crop out of the background losses (half of
    #: ``target_cell_size``, else half the point spacing); ``background`` teaches both as background, as
    #: mask supervision does; ``auto`` is ``ignore`` for strategies that train from points alone (cks,
    #: nishimura) and ``background`` for the others.
    crop_edge_cells: Literal["auto", "background", "ignore"] = "background"
    #: Use the masks of only this many training images (picked at random with ``train.seed``); the others
    #: train from their points as if they had no masks. null uses every mask in the store. For measuring how
    #: few masks ``strategy: {type: mixed}`` needs on a fully labelled set.
    mask_images: int | None = attrs.field(default=None, validator=non_negative)
    #: Share of the training crops taken from the images with masks when only some have them (their crops
    #: repeat): with ``strategy: {type: mixed}`` a few masked images would otherwise give only their share
    #: of the area. null draws every image in proportion to its area.
    mask_share: float | None = attrs.field(
        default=None, validator=attrs.validators.optional([attrs.validators.gt(0.0), attrs.validators.lt(1.0)])
    )
    #: Side of the square training crops, in pixels after rescaling; smaller images are padded. Each image
    #: gives about (scaled area / crop area) crops per epoch; larger crops add context and memory.
    crop_size: int = attrs.field(default=544, validator=positive)
    #: Random augmentation of the training crops.
    augment: AugmentConfig = attrs.field(factory=AugmentConfig)
    #: Typical cell diameter (pixels) that images are resized to, in training, evaluation and (recorded in
    #: the checkpoint) prediction; diameters come from importer metadata, masks or point spacing, measured on
    #: ``train_split`` where a group has images there. null keeps the original size.
    target_cell_size: float | None = attrs.field(default=None, validator=positive)
    #: Fixed resize factor per group (e.g. cell line), e.g. {A172: 1.0, BV2: 2.6}; a listed group uses it
    #: instead of target_cell_size, the others are measured (or kept at 1.0 without target_cell_size).
    group_scales: dict[str, float] = attrs.field(factory=dict, validator=positive_values)
    #: How target_cell_size is applied: ``group`` (one factor per group from its median cell diameter,
    #: the paper's per-cell-line scaling) or ``image`` (each image by its own measured diameter, for sets
    #: that mix magnifications; evaluation then uses each image's known size, and prediction needs
    #: ``--diameter`` per batch of images of one magnification).
    rescale: Literal["group", "image"] = "group"
    #: Only images of these groups (as the importer assigned them) are trained on and evaluated (empty = all).
    groups: tuple[str, ...] = ()
    #: Worker processes (per training process) that read and augment crops; 0 makes them in the training
    #: process itself (simplest to debug). May change on ``--resume``.
    num_workers: int = attrs.field(default=2, validator=non_negative)
    #: Settings of a generated demo store; null uses the existing store at ``data.store``.
    synthetic: SyntheticData | None = None


@attrs.frozen(kw_only=True)
class ModelConfig:
    """The principal model: a backbone and a principal head (``head:`` has no default).

    Strategies that train a principal (cks, supervised, mixed) need it; the others (nishimura,
    seeded-watershed) run without it.
    """

    #: The feature extractor (e.g. ``convnext_small``; ``convnext_atto`` is small enough for CPU runs).
    backbone: BackboneSpec = attrs.field(factory=lambda: BackboneSpec.of("convnext_small"))
    #: Required: principal heads come from plugins (``weakseg plugins`` lists them), e.g. ``{type: lacss}``.
    head: HeadSpec
    #: A checkpoint or run folder whose trained principal initialises this run's principal (the
    #: paper's "CKS-2": pre-trained elsewhere, e.g. with masks on another dataset); tensors are
    #: matched by name and shape. Used when a run starts, ignored on ``--resume``.
    init_from: str | None = None
    #: What ``init_from`` copies: ``principal`` (the principal alone; a collaborator starts fresh: the setting
    #: for pre-training elsewhere) or ``all`` (every tensor of the source run's model that fits, the
    #: collaborator included: for continuing a model on more or corrected images).
    init_scope: Literal["principal", "all"] = "principal"
    #: Initialisation of the layers weakseg defines (the FPN, the principal head and the collaborator; a
    #: timm trunk keeps timm's): ``torch`` (torch's defaults) or ``lecun`` (LeCun-normal weights and zero
    #: biases, as the CKS reference implementation starts them; see :mod:`weakseg.nn.init`).
    init: Literal["torch", "lecun"] = "torch"


@attrs.frozen(kw_only=True)
class OptimizerConfig:
    """The optimiser and its learning-rate schedule (the paper: AdamW at 1e-3, then 2e-4 for the last part)."""

    #: ``adamw`` (decoupled weight decay), ``adam`` (weight decay as an L2 term) or ``sgd`` (momentum 0.9).
    type: Literal["adamw", "adam", "sgd"] = "adamw"
    #: Base learning rate; the schedule and the warm-up scale it.
    lr: float = attrs.field(default=1e-3, validator=attrs.validators.gt(0))
    #: Weight decay strength (biases and normalisation weights excluded); 0 turns it off.
    weight_decay: float = attrs.field(default=1e-4, validator=attrs.validators.ge(0))
    #: ``constant`` (``lr`` throughout), ``cosine`` (from ``lr`` down to 0 at the last step) or ``finetune``
    #: (``lr``, then ``finetune_lr`` from ``finetune_start``).
    schedule: Literal["constant", "cosine", "finetune"] = "finetune"
    #: Learning rate of the final fine-tuning stretch (the paper: 2e-4) when schedule is "finetune".
    finetune_lr: float = attrs.field(default=2e-4, validator=positive)
    #: Fraction of ``train.steps`` after which the fine-tuning rate applies (0.8: the last 20 % of the steps).
    finetune_start: float = attrs.field(default=0.8, validator=[attrs.validators.ge(0), attrs.validators.le(1)])
    #: Steps of linear warm-up from near 0 to the scheduled rate at the start of training; 0 turns it off.
    warmup_steps: int = attrs.field(default=0, validator=non_negative)
    #: Learning-rate factors of named parts of the strategy (CKS and the supervised mode: ``principal`` and
    #: ``collaborator``), e.g. ``{collaborator: 3.0}`` trains the collaborator at 3x the scheduled rate.
    #: Parts not named keep factor 1.
    lr_factors: dict[str, float] = attrs.field(factory=dict, validator=positive_values)


@attrs.frozen(kw_only=True)
class TrainConfig:
    """The step-based training schedule and the engine's settings."""

    #: Optimiser steps to train for, one batch each; schedule fractions (``finetune_start``, cosine, a
    #: strategy's warm-up fraction) are of this number. 0 trains nothing (training-free strategies). May be
    #: raised on ``--resume`` to extend a run.
    steps: int = attrs.field(default=90_000, validator=attrs.validators.ge(0))
    #: Crops per step in each process; under torchrun the effective batch is batch_size times the number of
    #: processes.
    batch_size: int = attrs.field(default=1, validator=attrs.validators.ge(1))
    #: The optimiser and its learning-rate schedule.
    optimizer: OptimizerConfig = attrs.field(factory=OptimizerConfig)
    #: ``bf16`` runs the forward pass in bfloat16 autocast, ``fp32`` in float32; ``auto`` is bf16 on CUDA and
    #: fp32 on the CPU. Try fp32 when a loss turns NaN.
    precision: Precision = "auto"
    #: Largest global norm of the gradients (larger ones are scaled down to it); null or 0 turns clipping
    #: off. The norm is logged as ``train/grad_norm``; lower it when the loss spikes.
    grad_clip: float | None = attrs.field(default=10.0, validator=non_negative)
    #: Steps between logs of the training metrics to MLflow (losses averaged over the interval, learning
    #: rate, throughput); the last step is always logged.
    log_every: int = attrs.field(default=10, validator=positive)
    #: Steps between evaluations of ``eval.split`` during training; 0 turns them off. The final evaluation
    #: after the last step always runs.
    eval_every: int = attrs.field(default=4500, validator=non_negative)
    #: Steps between checkpoints (``last.ckpt`` plus the 3 newest step snapshots); 0 writes one only at the
    #: end or on interruption. Outside a terminal, the progress line is printed at the same interval.
    checkpoint_every: int = attrs.field(default=1000, validator=non_negative)
    #: Seed of the initial weights, the order and augmentation of the training crops and seeded label
    #: sources; a run is reproducible from it, and resumes with the same batches.
    seed: int = 0
    #: ``auto`` (the process's CUDA device when there is one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``;
    #: under torchrun ``cuda`` is each process's local GPU. May change on ``--resume``.
    device: str = "auto"
    #: DDP: let unused parameters pass (needed when a phase skips a sub-model). Only matters with several
    #: processes; false is faster when every parameter gets a gradient at every step.
    find_unused_parameters: bool = True
    #: After the last step, fit a size model (an image's cell diameter from its blob scale, the principal's
    #: backbone features or the size of its own masks, whichever was most accurate on the training images)
    #: into the final checkpoint, so that predict and evaluate resize each new image by its own
    #: estimated cell size; strategies whose principal offers no features get none. ``weakseg size-model``
    #: adds one to an existing checkpoint.
    size_model: bool = True


def _mask_threshold(value: Any) -> float | str:
    """``eval.mask_threshold``: ``auto`` or a probability in (0, 1)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        raise ValueError(f"mask_threshold must be a probability in (0, 1) or 'auto', got {value!r}")
    return float(value)


@attrs.frozen(kw_only=True)
class EvalConfig:
    """Periodic and final evaluation."""

    #: Store split scored during and after training; metrics are logged as ``<split>/AP50`` and so on. It
    #: needs instance masks, else the run trains without evaluation. ``weakseg evaluate`` takes ``--split``.
    split: str = "val"
    #: Only the first N images of the split (store order) are scored; null scores them all. Lower it to keep
    #: periodic evaluation of a large split short.
    max_images: int | None = attrs.field(default=None, validator=positive)
    #: Detection score from which predictions count for Dice, F1 and accuracy and are drawn in the panel (AP
    #: ranks every detection); also the default of ``weakseg evaluate --score-threshold``.
    score_threshold: float = attrs.field(default=0.5, validator=fraction)
    #: Probability at which instance masks are binarised, in evaluation and (as the trained model's
    #: default) in ``weakseg predict`` / ``weakseg.load``; like Cellpose's ``cellprob_threshold``. ``auto``:
    #: the strategy's label-free threshold where it has one (CKS: the principal's probability at a cell's
    #: edge implied by its prior and ``data.target_cell_size``), else 0.5; no mask is needed to choose it.
    #: ``weakseg evaluate --sweep-mask-threshold`` on a labelled validation split calibrates a number.
    mask_threshold: Any = attrs.field(default="auto", converter=_mask_threshold)
    #: At each evaluation, draw a PNG of the first image (image, ground truth, predictions and any
    #: collaborator maps) into ``<run>/eval`` and MLflow; false skips it.
    panel: bool = True


@attrs.frozen(kw_only=True)
class OutputConfig:
    """Where runs are written and tracked."""

    #: Output folder: the run goes to ``<dir>/<name>`` and the default MLflow store to ``<dir>/mlflow.db``.
    #: ``weakseg run --output DIR`` overrides it; under torchrun it must be writable from the rank-0 node.
    dir: str = "runs"
    #: MLflow tracking URI; null uses ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<dir>/mlflow.db``.
    tracking_uri: str | None = None
    #: MLflow experiment of the run; null uses the recipe name.
    experiment: str | None = None


@attrs.frozen(kw_only=True)
class Recipe:
    """A complete, validated description of one training run."""

    #: Name of the run: its folder (``<output.dir>/<name>``), its MLflow run and, by default, its experiment.
    name: str
    #: Free text, stored as the MLflow run's note.
    description: str = ""
    #: The training data.
    data: DataConfig
    #: The principal model; null for strategies that do not use one (nishimura, seeded-watershed).
    model: ModelConfig | None = None
    #: The collaborator model that strategies such as ``cks`` and ``mixed`` train alongside the principal;
    #: null for the others.
    collaborator: CollaboratorSpec | None = None
    #: How the principal is trained (``cks``, ``supervised``, ``mixed``, ``nishimura``, ``seeded-watershed``,
    #: ...); its sibling keys are the strategy's settings.
    strategy: StrategySpec
    #: The training schedule and engine settings.
    train: TrainConfig = attrs.field(factory=TrainConfig)
    #: Evaluation during and after training.
    eval: EvalConfig = attrs.field(factory=EvalConfig)
    #: Where the run is written and tracked.
    output: OutputConfig = attrs.field(factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (components as ``{type: name, **arguments}``) that validates back to this recipe."""
        return converter.unstructure(self)

    def to_yaml(self) -> str:
        """The resolved recipe as YAML text, as written beside a run and into its checkpoints."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def flat_params(self) -> dict[str, Any]:
        """The recipe flattened to dotted keys (MLflow params), e.g. ``model.backbone.type``."""
        return flatten(self.to_dict())

    def evolve(self, **changes: Any) -> Recipe:
        """A copy with top-level fields replaced (the recipe is frozen)."""
        return attrs.evolve(self, **changes)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings to dotted keys (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``); empty mappings stay leaves."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out
