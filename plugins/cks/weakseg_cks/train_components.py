"""Recipe configs of the CKS training parts: collaborators, consistency losses, strategies.

These attrs classes are what recipes validate against (``{type: name, **kwargs}``); they import
nothing heavy, so listing plugins stays fast. ``build`` imports the torch modules lazily:
:mod:`weakseg_cks.collaborator`, :mod:`weakseg_cks.losses`, :mod:`weakseg_cks.strategies`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import attrs

from weakseg.recipe import LossSpec, spec_factory
from weakseg.validators import non_negative

#: Weight w of L_MC (the paper: 0.01): the default of the ``collapse`` loss, of the CKS strategies'
#: ``collapse_weight`` and of :class:`weakseg_cks.losses.CollapsePenalty`.
COLLAPSE_WEIGHT = 0.01

# --------------------------------------------------------------------------------------------
# Collaborators (paper Sec. III-B, Table VII)
# --------------------------------------------------------------------------------------------


def _widths(value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    widths = tuple(value)
    if not widths or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
        raise ValueError(f"widths must be a non-empty list of positive integers, got {value!r}")
    return widths


@attrs.frozen(kw_only=True)
class CksCollaboratorConfig:
    """CKS collaborator: U-Net 16/32/64 for the foreground, 3-layer CNN (32, 32) for borders (net a1/b1).

    ``foreground`` / ``border`` pick a net of the paper's Table VII (a1-a3, b1-b2); explicit
    ``*_widths`` override the channel widths; ``per_group`` gives one output channel per group
    (cell line), chosen by the image's group index. ``activation`` is ``leaky_relu`` (slope 0.1) by
    default; ``relu`` is the reference implementation's, which can leave the foreground net stuck at
    ~0.5 over the cells (see :mod:`weakseg_cks.collaborator`).
    """

    foreground: Literal["a1", "a2", "a3"] = "a1"
    border: Literal["b1", "b2"] = "b1"
    foreground_widths: tuple[int, ...] | None = attrs.field(default=None, converter=_widths)
    border_widths: tuple[int, ...] | None = attrs.field(default=None, converter=_widths)
    per_group: bool = True
    activation: Literal["leaky_relu", "relu", "gelu"] = "leaky_relu"

    def build(self, *, in_channels: int, n_groups: int = 1, **_: Any) -> Any:
        from weakseg_cks.collaborator import build_collaborator

        return build_collaborator(
            in_channels,
            n_groups,
            foreground=self.foreground,
            border=self.border,
            foreground_widths=self.foreground_widths,
            border_widths=self.border_widths,
            per_group=self.per_group,
            activation=self.activation,
        )


@attrs.frozen(kw_only=True)
class CksCollaboratorA2B1Config(CksCollaboratorConfig):
    """CKS collaborator of Table VII row a2/b1: a deeper foreground U-Net (16..128), border CNN (32, 32)."""

    foreground: Literal["a1", "a2", "a3"] = "a2"


@attrs.frozen(kw_only=True)
class CksCollaboratorA3B1Config(CksCollaboratorConfig):
    """CKS collaborator of Table VII row a3/b1: the deepest foreground U-Net (16..256), border CNN (32, 32)."""

    foreground: Literal["a1", "a2", "a3"] = "a3"


@attrs.frozen(kw_only=True)
class CksCollaboratorA1B2Config(CksCollaboratorConfig):
    """CKS collaborator of Table VII row a1/b2: default foreground U-Net, a U-Net (16/32/64) for borders."""

    border: Literal["b1", "b2"] = "b2"


@attrs.frozen(kw_only=True)
class CksCollaboratorA3B2Config(CksCollaboratorConfig):
    """CKS collaborator of Table VII row a3/b2 (the "sophisticated" setup of Fig. 7)."""

    foreground: Literal["a1", "a2", "a3"] = "a3"
    border: Literal["b1", "b2"] = "b2"


COLLABORATORS: dict[str, type] = {
    "cks": CksCollaboratorConfig,
    "cks_a2_b1": CksCollaboratorA2B1Config,
    "cks_a3_b1": CksCollaboratorA3B1Config,
    "cks_a1_b2": CksCollaboratorA1B2Config,
    "cks_a3_b2": CksCollaboratorA3B2Config,
}

# --------------------------------------------------------------------------------------------
# Consistency losses (paper Sec. III-C/D)
#
# ``role`` (a class attribute) names the term a loss can play, so that a strategy can accept or
# refuse it for one of its keys without building it (the built torch module has the same ``role``).
# --------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class LinearConsistencyConfig:
    """L_M, linear: collaborator foreground f vs detached merged principal map g, g(1-f) + (1-g)f (eq. 6)."""

    role: ClassVar[str] = "foreground"

    def build(self, **_: Any) -> Any:
        from weakseg_cks.losses import ForegroundConsistency

        return ForegroundConsistency("linear")


@attrs.frozen(kw_only=True)
class CrossEntropyConsistencyConfig:
    """L_M, cross-entropy ablation: BCE of the collaborator foreground against the hard label g >= 0.5 (eq. 5)."""

    role: ClassVar[str] = "foreground"

    def build(self, **_: Any) -> Any:
        from weakseg_cks.losses import ForegroundConsistency

        return ForegroundConsistency("cross_entropy")


@attrs.frozen(kw_only=True)
class InstanceConsistencyConfig:
    """L_S: each instance follows the detached collaborator foreground, plus the overlap penalty (eq. 8)."""

    role: ClassVar[str] = "instance"

    overlap_weight: float = attrs.field(default=1.0, validator=attrs.validators.ge(0))

    def build(self, **_: Any) -> Any:
        from weakseg_cks.losses import InstanceConsistency

        return InstanceConsistency(cross_entropy=False, overlap_weight=self.overlap_weight)


@attrs.frozen(kw_only=True)
class InstanceCrossEntropyConfig:
    """L_S, cross-entropy ablation: BCE of each instance against the hard collaborator label, plus overlap."""

    role: ClassVar[str] = "instance"

    overlap_weight: float = attrs.field(default=1.0, validator=attrs.validators.ge(0))

    def build(self, **_: Any) -> Any:
        from weakseg_cks.losses import InstanceConsistency

        return InstanceConsistency(cross_entropy=True, overlap_weight=self.overlap_weight)


@attrs.frozen(kw_only=True)
class BorderConsistencyConfig:
    """L_B: collaborator border vs tanh of summed Sobel borders of the instances, L2; updates both models."""

    role: ClassVar[str] = "border"

    def build(self, **_: Any) -> Any:
        from weakseg_cks.losses import BorderConsistency

        return BorderConsistency()


@attrs.frozen(kw_only=True)
class CollapsePenaltyConfig:
    """L_MC: w * mean_i S / sqrt(mass_i), keeps instance masks from collapsing to nothing (w = 0.01)."""

    role: ClassVar[str] = "collapse"

    weight: float = attrs.field(default=COLLAPSE_WEIGHT, validator=attrs.validators.ge(0))

    def build(self, **_: Any) -> Any:
        from weakseg_cks.losses import CollapsePenalty

        return CollapsePenalty(self.weight)


CONSISTENCY_LOSSES: dict[str, type] = {
    "linear": LinearConsistencyConfig,
    "cross_entropy": CrossEntropyConsistencyConfig,
    "instance": InstanceConsistencyConfig,
    "instance_cross_entropy": InstanceCrossEntropyConfig,
    "border": BorderConsistencyConfig,
    "collapse": CollapsePenaltyConfig,
}

# --------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------


def _sigma(value: Any) -> float | dict[str, float]:
    """sigma: one number (image pixels) or a mapping group name -> number (``default`` for the rest)."""

    def number(v: Any, where: str) -> float:
        if isinstance(v, str):
            with contextlib.suppress(ValueError):
                v = float(v)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise ValueError(f"{where} must be a positive number (Gaussian prior sigma in pixels), got {v!r}")
        return float(v)

    if isinstance(value, Mapping):
        if not value:
            raise ValueError("sigma: an empty mapping; give a number or {group name: sigma, default: sigma}")
        return {str(k): number(v, f"sigma.{k}") for k, v in value.items()}
    return number(value, "sigma")


def model_problems(recipe: Any, strategy: str, *, collaborator: bool) -> list[tuple[str, str]]:
    """A principal model (and a collaborator, when ``collaborator``) must be in the recipe."""
    problems = []
    if recipe.model is None:
        problems.append((
            "recipe.model",
            f"strategy {strategy!r} trains a principal model but the recipe has no `model:` section; add e.g. "
            "`model: {backbone: {type: convnext_small}, head: {type: lacss}}`",
        ))
    if collaborator and recipe.collaborator is None:
        problems.append((
            "recipe.collaborator",
            f"strategy {strategy!r} needs a collaborator model; add e.g. `collaborator: {{type: cks}}` "
            "(see `weakseg plugins` for the registered collaborators)",
        ))
    return problems


def loss_problems(spec: LossSpec, role: str, key: str) -> list[tuple[str, str]]:
    """The consistency loss of ``recipe.strategy.<key>`` must declare ``role`` (its config's class attribute)."""
    got = getattr(spec.config, "role", None)
    if got == role:
        return []
    from weakseg.plugins import registries

    fitting = [e.name for e in registries().consistency_losses if getattr(e.config_cls, "role", None) == role]
    return [(
        f"recipe.strategy.{key}",
        f"consistency loss {spec.type!r} is a {got or 'unknown'} loss, but this key takes a {role} loss "
        f"(one of: {', '.join(fitting)})",
    )]


def _open_fraction(instance: Any, attribute: attrs.Attribute, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{attribute.name} must lie strictly between 0 and 1, got {value!r}")


@attrs.frozen(kw_only=True)
class UnlabelledConfig:
    """How unlabelled pixels inside annotated areas are taught: ``{type: pu, prior: 0.2}``.

    ``pu`` (positive-unlabelled): a grid pixel of the detector, or a collaborator pixel no instance
    crop covers, that the model already finds confidently foreground is taught as background with
    weight 1 - prior / (1 - prior) * p / (1 - p) (0 from p >= 1 - prior on), not 1.
    """

    type: Literal["pu"] = "pu"
    #: Share of the cells in annotated areas expected to lack a point (missed clicks, dim nuclei).
    prior: float = attrs.field(default=0.2, validator=_open_fraction)


@attrs.frozen(kw_only=True)
class PseudoPointsConfig:
    """Self-training: after a burn-in, confident detections far from every point become extra points."""

    #: Burn-in: pseudo points are added from this fraction of ``train.steps`` on.
    after: float = attrs.field(default=0.3, validator=[attrs.validators.ge(0.0), attrs.validators.le(1.0)])
    #: A detection of the principal model becomes a pseudo point when its score is at least this.
    threshold: float = attrs.field(default=0.5, validator=_open_fraction)
    #: ... and no labelled point lies within this many pixels (it would be that point's detection).
    distance: float = attrs.field(default=12.0, validator=attrs.validators.gt(0))
    #: At most this many pseudo points per labelled point of a training crop (best scores first); null: no cap.
    limit: float | None = attrs.field(default=0.5, validator=attrs.validators.optional(non_negative))
    #: Drop a detection inside the predicted mask of a point or of a better pseudo point (the same cell).
    separate: bool = True
    #: Also add pseudo points inside an image's annotated region; false trusts the points there as
    #: complete and adds pseudo points only where the image has no annotation.
    in_regions: bool = True


@attrs.frozen(kw_only=True)
class CksStrategyConfig:
    """Collaborative Knowledge Sharing from point labels: principal + collaborator, warm-up then soft phase.

    Losses (all weight 1, as in the paper): detection (L_LPN), L_M (``consistency``), L_S
    (``instance_loss``), L_B and L_MC (``collapse_weight``). During the warm-up (``warmup_steps``,
    or ``warmup_fraction`` of ``train.steps``) the prior is near-flat (``warmup_sigma``,
    ``warmup_pi``) and L_S uses hard collaborator labels and the log overlap.
    ``pi: 0`` switches the Gaussian prior off; ``sigma`` is one value or ``{group: sigma}``.
    """

    #: Trains from points alone: ``data.crop_edge_cells: auto`` spares the cells cut by the crop edge.
    points_only: ClassVar[bool] = True

    #: The registered name, for messages.
    strategy: ClassVar[str] = "cks"

    consistency: LossSpec = attrs.field(factory=spec_factory(LossSpec, "linear"))
    instance_loss: LossSpec = attrs.field(factory=spec_factory(LossSpec, "instance"))
    pi: float = attrs.field(default=2.0, validator=non_negative)
    sigma: Any = attrs.field(default=20.0, converter=_sigma)
    warmup_steps: int | None = attrs.field(default=None, validator=non_negative)
    warmup_fraction: float = attrs.field(default=0.1, validator=[attrs.validators.ge(0.0), attrs.validators.le(1.0)])
    warmup_sigma: float = attrs.field(default=100.0, validator=attrs.validators.gt(0))
    warmup_pi: float = attrs.field(default=1.0, validator=non_negative)
    collapse_weight: float = attrs.field(default=COLLAPSE_WEIGHT, validator=non_negative)
    border_weight: float = attrs.field(default=1.0, validator=non_negative)
    #: Segment at the best detection within the head's match radius of each point (the reference), not the point.
    use_detections: bool = True
    #: Cells inside annotated areas may lack a point: ``{type: pu, prior: 0.2}`` teaches confident
    #: unlabelled pixels as background with a lower weight (detector and collaborator); null: full weight.
    unlabelled: UnlabelledConfig | None = None
    #: Self-training, e.g. ``{after: 0.3, threshold: 0.8}``: from that fraction of the steps on, the
    #: principal's detections scoring >= threshold far from every point train as extra points
    #: (their mean number per image is logged as ``train/pseudo_points``); null: off.
    pseudo_points: PseudoPointsConfig | None = None

    def check(self, recipe: Any) -> list[tuple[str, str]]:
        """A principal model, a collaborator, and losses of the right role for ``consistency`` / ``instance_loss``."""
        return [
            *model_problems(recipe, self.strategy, collaborator=True),
            *loss_problems(self.consistency, "foreground", "consistency"),
            *loss_problems(self.instance_loss, "instance", "instance_loss"),
        ]

    def build(self, *, recipe: Any, data: Any, **_: Any) -> Any:
        from weakseg_cks.strategies import build_cks

        return build_cks(self, recipe, data)


@attrs.frozen(kw_only=True)
class SupervisedStrategyConfig:
    """Fully supervised principal model from instance masks (BCE on crops, detection from centroids): upper bound."""

    use_detections: bool = True

    def check(self, recipe: Any) -> list[tuple[str, str]]:
        """A principal model (the masks themselves are checked when the training data is known)."""
        return model_problems(recipe, "supervised", collaborator=False)

    def build(self, *, recipe: Any, data: Any, **_: Any) -> Any:
        from weakseg_cks.strategies import build_supervised

        return build_supervised(self, recipe, data)


@attrs.frozen(kw_only=True)
class MixedStrategyConfig(CksStrategyConfig):
    """One run over images with masks (supervised terms) and images with points only (CKS terms).

    Images with masks train the principal with the supervised losses and (``supervise_collaborator``)
    the collaborator foreground with BCE against the mask; images with points only get the CKS losses.
    """

    points_only: ClassVar[bool] = False  # masks supervise part of the images

    strategy: ClassVar[str] = "mixed"

    supervise_collaborator: bool = True

    def build(self, *, recipe: Any, data: Any, **_: Any) -> Any:
        from weakseg_cks.strategies import build_mixed

        return build_mixed(self, recipe, data)


STRATEGIES: dict[str, type] = {
    "cks": CksStrategyConfig,
    "supervised": SupervisedStrategyConfig,
    "mixed": MixedStrategyConfig,
}
