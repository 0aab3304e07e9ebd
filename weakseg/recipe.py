"""Recipes: YAML -> validated, frozen attrs objects.

A recipe names components with ``type:`` plus sibling keyword arguments; each component's kwargs
are validated against the config class its plugin registered. ``extends: base.yaml`` inherits and
overrides (paths relative to the extending file), ``--set a.b.c=value`` overrides from the command
line. Every error names the key path (``recipe.model.backbone.depth: expected int, got 'five'``);
unknown keys and unknown component names come with close matches; YAML syntax errors name the file
and line.
"""

from __future__ import annotations

import copy
import sys
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import attrs
import cattrs
import yaml
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError

from weakseg.errors import RecipeError, WeaksegError

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup
from weakseg.registry import close_matches

# --------------------------------------------------------------------------------------------
# Component specs: {type: name, **kwargs} -> (name, config instance of the registered class)
# --------------------------------------------------------------------------------------------


@attrs.frozen
class ComponentSpec:
    """A registry entry chosen by name plus its validated config. ``build(**ctx)`` makes it."""

    kind: ClassVar[str] = ""
    type: str
    config: Any

    def build(self, **context: Any) -> Any:
        return self.config.build(**context)

    def __getattr__(self, name: str) -> Any:
        # spec.sigma reads spec.config.sigma: recipes read naturally in code.
        if name.startswith("_") or name in ("type", "config"):
            raise AttributeError(name)
        return getattr(self.config, name)

    @classmethod
    def of(cls, name: str, **kwargs: Any) -> ComponentSpec:
        """Make a spec in code: ``LossSpec.of("linear")``; validates like a recipe would (RecipeError)."""
        return structure({"type": name, **kwargs}, cls, root=f"{cls.kind}[{name!r}]")


class BackboneSpec(ComponentSpec):
    kind = "backbones"


class HeadSpec(ComponentSpec):
    kind = "principal_heads"


class CollaboratorSpec(ComponentSpec):
    kind = "collaborators"


class LossSpec(ComponentSpec):
    kind = "consistency_losses"


class LabelSourceSpec(ComponentSpec):
    kind = "label_sources"


class StrategySpec(ComponentSpec):
    kind = "strategies"


class ImporterSpec(ComponentSpec):
    kind = "importers"


def spec_factory(cls: type[ComponentSpec], name: str, **kwargs: Any) -> Any:
    """An attrs default factory for a spec field: ``attrs.field(factory=spec_factory(LossSpec, "linear"))``."""
    return lambda: cls.of(name, **kwargs)


# --------------------------------------------------------------------------------------------
# The recipe schema
# --------------------------------------------------------------------------------------------

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
    """The principal model: a backbone and a principal head."""

    backbone: BackboneSpec = attrs.field(factory=lambda: BackboneSpec.of("convnext_small"))
    head: HeadSpec = attrs.field(factory=lambda: HeadSpec.of("lacss"))
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


# --------------------------------------------------------------------------------------------
# The converter: strict scalars, registry-driven component specs
# --------------------------------------------------------------------------------------------


class _TypeMismatch(ValueError):
    pass


def _describe(value: Any) -> str:
    return repr(value) if not isinstance(value, (dict, list)) else type(value).__name__


def _strict_int(value: Any, _: type) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        # YAML reads 9e4 as a string and 9.0e+4 as a float: accept whole numbers written that way.
        try:
            number = float(value) if isinstance(value, (str, float)) else None
        except ValueError:
            number = None
        if number is not None and number.is_integer():
            return int(number)
        raise _TypeMismatch(f"expected int, got {_describe(value)}")
    return value


def _strict_float(value: Any, _: type) -> float:
    if isinstance(value, str):
        try:  # PyYAML reads 1e-3 (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _TypeMismatch(f"expected float, got {_describe(value)}")
    return float(value)


def _strict_bool(value: Any, _: type) -> bool:
    if not isinstance(value, bool):
        raise _TypeMismatch(f"expected true or false, got {_describe(value)}")
    return value


def _strict_str(value: Any, _: type) -> str:
    if not isinstance(value, str):
        raise _TypeMismatch(f"expected a string, got {_describe(value)}")
    return value


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True)
    conv.register_structure_hook(int, _strict_int)
    conv.register_structure_hook(float, _strict_float)
    conv.register_structure_hook(bool, _strict_bool)
    conv.register_structure_hook(str, _strict_str)

    def is_literal(t: Any) -> bool:
        return typing.get_origin(t) is Literal

    def structure_literal(value: Any, t: Any) -> Any:
        choices = typing.get_args(t)
        if value in choices:
            return value
        names = [str(c) for c in choices]
        raise _TypeMismatch(
            f"expected one of {', '.join(repr(c) for c in choices)}, got {_describe(value)}"
            + close_matches(str(value), names)
        )

    conv.register_structure_hook_func(is_literal, structure_literal)

    def is_spec(t: Any) -> bool:
        return isinstance(t, type) and issubclass(t, ComponentSpec) and t is not ComponentSpec

    def structure_spec(value: Any, cls: type[ComponentSpec]) -> ComponentSpec:
        from weakseg.plugins import registries

        if isinstance(value, str):
            value = {"type": value}
        if not isinstance(value, Mapping):
            raise _TypeMismatch(f"expected a mapping with 'type:' naming a component, got {_describe(value)}")
        if "type" not in value:
            reg = registries()[cls.kind]
            raise _TypeMismatch(f"missing 'type:' naming a {reg.noun} (one of: {', '.join(reg.names())})")
        name = value["type"]
        entry = registries()[cls.kind].get(str(name))
        kwargs = {k: v for k, v in value.items() if k != "type"}
        config = conv.structure(kwargs, entry.config_cls)
        return cls(type=entry.name, config=config)

    conv.register_structure_hook_func(is_spec, structure_spec)

    def unstructure_spec(spec: ComponentSpec) -> dict[str, Any]:
        return {"type": spec.type, **conv.unstructure(spec.config)}

    conv.register_unstructure_hook_func(is_spec, unstructure_spec)
    # tuples unstructure to lists so YAML stays plain
    conv.register_unstructure_hook(tuple, lambda t: [conv.unstructure(v) for v in t])
    return conv


converter = _make_converter()


# --------------------------------------------------------------------------------------------
# Error formatting: cattrs exception groups -> "recipe.a.b: message"
# --------------------------------------------------------------------------------------------


def _field_names(cls: type) -> list[str]:
    return [a.alias or a.name for a in attrs.fields(cls)] if attrs.has(cls) else []


def _leaf_message(exc: BaseException) -> str:
    if isinstance(exc, ForbiddenExtraKeysError):
        fields = _field_names(exc.cl)
        parts = []
        for extra in sorted(exc.extra_fields):
            parts.append(f"unknown key {extra!r}{close_matches(extra, fields)}")
        return "; ".join(parts) + f" (allowed: {', '.join(fields)})"
    if isinstance(exc, KeyError) and exc.args:
        return f"required key {exc.args[0]!r} is missing"
    if isinstance(exc, WeaksegError | _TypeMismatch):
        return str(exc)
    if isinstance(exc, ValueError | TypeError):
        return f"invalid value: {exc}"
    return f"{type(exc).__name__}: {exc}"


def _walk(exc: BaseException, path: str, out: list[tuple[str, str]]) -> None:
    if isinstance(exc, ClassValidationError | IterableValidationError):
        for sub in exc.exceptions:
            sub_path = path
            for note in getattr(sub, "__notes__", []):
                name = getattr(note, "name", None)
                index = getattr(note, "index", None)
                if name is not None:
                    sub_path = f"{path}.{name}"
                    break
                if index is not None:
                    sub_path = f"{path}[{index!r}]" if not isinstance(index, int) else f"{path}[{index}]"
                    break
            _walk(sub, sub_path, out)
        return
    if isinstance(exc, ForbiddenExtraKeysError):
        out.append((path, _leaf_message(exc)))
        return
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            _walk(sub, path, out)
        return
    out.append((path, _leaf_message(exc)))


def format_structure_error(exc: BaseException, root: str = "recipe") -> str:
    """One line per problem: ``recipe.train.steps: expected int, got 'ten'``."""
    problems: list[tuple[str, str]] = []
    _walk(exc, root, problems)
    return "\n".join(f"{p}: {m}" for p, m in problems)


def structure(data: Any, cls: type, root: str = "recipe") -> Any:
    """Structure ``data`` into ``cls``; any problem raises :class:`RecipeError` with key paths."""
    try:
        return converter.structure(data, cls)
    except (ClassValidationError, IterableValidationError, ForbiddenExtraKeysError) as exc:
        raise RecipeError(format_structure_error(exc, root)) from None
    except (WeaksegError, _TypeMismatch, ValueError, TypeError) as exc:
        raise RecipeError(f"{root}: {_leaf_message(exc)}") from None


# --------------------------------------------------------------------------------------------
# YAML loading: extends, --set overrides
# --------------------------------------------------------------------------------------------


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping; a syntax error names the file and line."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise RecipeError(f"{path}: recipe file not found (run `weakseg recipes list` for the shipped ones)") from None
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read the recipe: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise RecipeError(f"{where}: YAML syntax error: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: YAML syntax error: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a YAML mapping at the top level, got {type(data).__name__}")
    return data


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``override`` into ``base``; a component whose ``type`` changes is replaced whole."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        old = out.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping):
            if "type" in value and "type" in old and value["type"] != old["type"]:
                out[key] = copy.deepcopy(dict(value))
            else:
                out[key] = deep_merge(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_raw(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a recipe file and resolve ``extends`` (recursively, relative to each file)."""
    path = Path(path)
    resolved = path.resolve()
    if resolved in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, resolved))
        raise RecipeError(f"{path}: 'extends' forms a cycle: {chain}")
    data = read_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    parents = parent if isinstance(parent, list) else [parent]
    merged: dict[str, Any] = {}
    for p in parents:
        if not isinstance(p, str):
            raise RecipeError(f"{path}: recipe.extends: expected a file name, got {_describe(p)}")
        merged = deep_merge(merged, load_raw(path.parent / p, (*_seen, resolved)))
    return deep_merge(merged, data)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML; a leading ``recipe.`` is optional)."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise RecipeError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.steps=100")
        parts = key.strip().split(".")
        if parts[0] == "recipe":
            parts = parts[1:]
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise RecipeError(f"--set {item!r}: the value is not valid YAML: {exc}") from None
        node = data
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                where = ".".join(["recipe", *parts[: i + 1]])
                raise RecipeError(f"--set {item!r}: {where} is not a mapping")
            node = nxt
        node[parts[-1]] = value
    return data


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load, merge, override and validate a recipe file."""
    data = apply_overrides(load_raw(path), overrides or [])
    try:
        return structure(data, Recipe)
    except RecipeError as exc:
        raise RecipeError(f"{path}:\n{exc}") from None


def recipe_from_yaml_text(text: str, origin: str = "<checkpoint>") -> Recipe:
    """Validate a resolved recipe stored as YAML text (e.g. in a checkpoint)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RecipeError(f"{origin}: the stored recipe is not valid YAML: {exc}") from None
    try:
        return structure(data, Recipe)
    except RecipeError as exc:
        raise RecipeError(f"{origin}:\n{exc}") from None
