"""The CKS strategies: ``cks`` (points), ``supervised`` (masks) and ``mixed`` (both, in one run).

Yu, "Point-supervised Single-cell Segmentation via Collaborative Knowledge Sharing", Sec. III-E:
the principal model learns from L_det + L_S + L_B + L_MC, the collaborator from L_M + L_B, all
weights 1, one optimiser over both (as in the reference implementation). Which model each
loss updates is fixed by the stop-gradients inside :mod:`weakseg_cks.losses`; the engine simply
back-propagates the sum of the named losses returned by ``forward``.

- ``cks``: point labels only. A warm-up phase (default 10 % of the steps) uses a near-flat prior
  (sigma 100, pi 1), hard collaborator labels and the log overlap penalty; then the soft phase
  with the configured prior (pi 2, sigma 20 or per group).
- ``supervised``: instance masks, the same principal model: BCE on each instance crop against its
  own mask (K/N normalisation) plus the detection loss at the mask centroids; the upper bound.
- ``mixed``: images with masks get the supervised terms (and the collaborator foreground a BCE
  against the union of the masks), images with points only get the CKS terms.

Partial point sets (``cks``): where a batch carries an ``annotated`` mask, detector negatives and
collaborator background pixels no instance crop covers count only inside the annotated region;
``unlabelled: {type: pu}`` lowers the weight of confident unlabelled pixels and ``pseudo_points``
adds the principal's confident detections far from every point as extra points after a burn-in.

The named losses: ``detection`` (L_det), ``foreground`` (L_M), ``instance`` (L_S), ``border`` (L_B),
``collapse`` (L_MC), ``mask`` (supervised BCE), ``foreground_supervised`` (collaborator BCE).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from weakseg.components import Batch, DataSummary, Phase
from weakseg.errors import DataError, RecipeError
from weakseg.nn.init import lecun_normal_
from weakseg.recipe import LossSpec, raise_problems
from weakseg.registry import close_matches
from weakseg.strategy import StrategyModule
from weakseg_cks.losses import (
    SupervisedInstanceLoss,
    crop_geometry,
    foreground_weights,
    gaussian_prior,
    label_free_mask_threshold,
    mask_centroids,
    supervised_foreground_loss,
)
from weakseg_cks.monitor import ForegroundMonitor
from weakseg_cks.self_training import pseudo_points
from weakseg_cks.train_components import (
    CksStrategyConfig,
    MixedStrategyConfig,
    SupervisedStrategyConfig,
    loss_problems,
    model_problems,
)

_TRAINING_API = ("forward_train", "detection_loss", "training_locations", "segment", "predict")


# --------------------------------------------------------------------------------------------
# building blocks from the recipe
# --------------------------------------------------------------------------------------------


def build_principal(recipe: Any, data: DataSummary, strategy: str) -> nn.Module:
    """The principal model of ``recipe.model`` (backbone + head), checked for the training API."""
    raise_problems(model_problems(recipe, strategy, collaborator=False))
    backbone = recipe.model.backbone.build(in_channels=data.in_channels)
    principal = recipe.model.head.build(backbone=backbone, in_channels=data.in_channels)
    if recipe.model.init == "lecun":
        lecun_normal_(principal, exclude=[m for m in (getattr(backbone, "body", None),) if m is not None])
    missing = [name for name in _TRAINING_API if not callable(getattr(principal, name, None))]
    if missing or not isinstance(principal, nn.Module):
        raise RecipeError(
            f"recipe.model.head: principal head {recipe.model.head.type!r} cannot be trained by strategy "
            f"{strategy!r}: it lacks the training API ({', '.join(missing) or 'not a torch module'}); "
            "use head type 'lacss'"
        )
    return principal


def build_collaborator(recipe: Any, data: DataSummary, strategy: str) -> nn.Module:
    """The collaborator of ``recipe.collaborator``."""
    raise_problems(model_problems(recipe, strategy, collaborator=True))
    collaborator = recipe.collaborator.build(in_channels=data.in_channels, n_groups=data.n_groups)
    if recipe.model is not None and recipe.model.init == "lecun":
        lecun_normal_(collaborator)
    return collaborator


def build_loss(spec: Any, role: str, key: str) -> nn.Module:
    """Build a registered consistency loss whose config declares ``role`` (see ``loss_problems``)."""
    raise_problems(loss_problems(spec, role, key))
    return spec.build()


def sigma_table(sigma: float | dict[str, float], data: DataSummary) -> list[float]:
    """The prior sigma of each group index, from one number or ``{group name: sigma, default: sigma}``."""
    names = list(data.group_names)
    if len(names) < data.n_groups:
        names += [f"group{k}" for k in range(len(names), data.n_groups)]
    if not isinstance(sigma, dict):
        return [float(sigma)] * max(len(names), 1)
    unknown = [k for k in sigma if k != "default" and k not in names]
    if unknown:
        raise RecipeError(
            f"recipe.strategy.sigma: unknown group {unknown[0]!r}{close_matches(unknown[0], names)} "
            f"(the training data has groups: {', '.join(names)}; `default` covers the rest)"
        )
    table = []
    for name in names:
        if name in sigma:
            table.append(sigma[name])
        elif "default" in sigma:
            table.append(sigma["default"])
        else:
            raise RecipeError(f"recipe.strategy.sigma: no sigma for group {name!r}; give one per group or a `default`")
    return table or [float(sigma.get("default", 20.0))]


def warmup_length(config: Any, recipe: Any) -> int:
    """Warm-up steps: ``warmup_steps`` when given, else ``warmup_fraction`` of ``train.steps``."""
    if config.warmup_steps is not None:
        return int(config.warmup_steps)
    return int(round(config.warmup_fraction * recipe.train.steps))


def points_on(image: torch.Tensor, points: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Point sets as float (N, 2) tensors on the image's device, non-finite rows dropped."""
    out = []
    for p in points:
        p = torch.as_tensor(p, device=image.device).float().reshape(-1, 2)
        out.append(p[torch.isfinite(p).all(1)])
    return out


# --------------------------------------------------------------------------------------------
# strategies
# --------------------------------------------------------------------------------------------


class PrincipalStrategy(StrategyModule):
    """Common parts: the principal model (``principal()``) and an optional collaborator (``panel``)."""

    def __init__(self, principal: nn.Module, collaborator: nn.Module | None = None) -> None:
        super().__init__()
        self.principal_model = principal
        self.collaborator = collaborator

    def principal(self) -> nn.Module:
        return self.principal_model

    def parameter_groups(self) -> dict[str, nn.Module]:
        """``principal`` and, when there is one, ``collaborator``: each may get its own learning-rate factor
        (``train.optimizer.lr_factors``; the collaborator is tiny and, at 1e-3, moves by at most Adam's step
        per iteration, which can leave it behind the principal in a short run)."""
        parts: dict[str, nn.Module] = {"principal": self.principal_model}
        if self.collaborator is not None:
            parts["collaborator"] = self.collaborator
        return parts

    def _group(self, batch: Batch) -> torch.Tensor:
        group = torch.as_tensor(batch.group, device=batch.image.device).long().reshape(-1)
        if group.numel() != batch.image.shape[0]:
            group = torch.zeros(batch.image.shape[0], dtype=torch.long, device=batch.image.device)
        return group

    @torch.no_grad()
    def panel(self, image: torch.Tensor, group: int = 0) -> dict[str, np.ndarray]:
        """The collaborator's foreground and border probabilities (H, W) for one standardised image."""
        if self.collaborator is None:
            return {}
        x = torch.as_tensor(image)
        x = x[None] if x.ndim == 3 else x[:1]
        param = next(self.collaborator.parameters())
        x = x.to(device=param.device, dtype=param.dtype)
        g = torch.full((1,), int(group), dtype=torch.long, device=x.device)
        was_training = self.collaborator.training
        self.collaborator.eval()
        try:
            out = self.collaborator(x, g)
        finally:
            self.collaborator.train(was_training)
        return {
            "collaborator_foreground": torch.sigmoid(out.foreground[0].float()).cpu().numpy(),
            "collaborator_border": torch.sigmoid(out.border[0].float()).cpu().numpy(),
        }

    def _segment(
        self,
        batch: Batch,
        points: list[torch.Tensor],
        use_detections: bool,
        *,
        weighting: dict[str, Any] | None = None,
        extra_points: Any = None,
    ):
        """Principal forward, detection loss at ``points`` and the instance crops (+ their geometry).

        ``weighting``: keyword arguments of the detection loss (annotated mask, PU prior);
        ``extra_points(out, points)`` may add points (self-training) before the loss is computed.
        """
        model = self.principal_model
        out = model.forward_train(batch.image)
        if extra_points is not None:
            points = extra_points(out, points)
        detection = model.detection_loss(out, points, **weighting) if weighting else model.detection_loss(out, points)
        locations = model.training_locations(out, points) if use_detections else points
        crops = model.segment(out, locations)
        if len(crops) == 0:
            # no instance in the whole batch: keep every principal parameter in the graph (with zero
            # gradient) so that DistributedDataParallel without find_unused_parameters still works
            crops.logits = crops.logits + sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0
        b, _, h, w = batch.image.shape
        geom = crop_geometry(crops.origins, crops.batch_index, (h, w), b, crops.crop_size)
        return detection, crops, geom


class CksStrategy(PrincipalStrategy):
    """Collaborative Knowledge Sharing from point labels (``strategy: {type: cks}``).

    Reads its settings (``pi``, ``warmup_sigma``, ``border_weight``, ...) from ``config``; ``sigma``
    (one value per group index) and ``warmup_steps`` are resolved against the data and the schedule.
    """

    def __init__(
        self,
        principal: nn.Module,
        collaborator: nn.Module,
        config: CksStrategyConfig,
        *,
        sigma: Sequence[float],
        warmup_steps: int,
        pseudo_after: int = 0,
    ) -> None:
        super().__init__(principal, collaborator)
        self.config = config
        self.pseudo_after = int(pseudo_after)
        self._pseudo_found, self._pseudo_images = 0, 0
        self.monitor = ForegroundMonitor()
        self.consistency = build_loss(config.consistency, "foreground", "consistency")
        self.instance_loss = build_loss(config.instance_loss, "instance", "instance_loss")
        self.border_loss = build_loss(LossSpec.of("border"), "border", "border")
        self.collapse_loss = build_loss(LossSpec.of("collapse", weight=config.collapse_weight), "collapse", "collapse")
        self.register_buffer("sigma", torch.tensor(list(sigma), dtype=torch.float32), persistent=False)
        self.warmup_steps = int(warmup_steps)

    def phases(self) -> list[Phase]:
        if self.warmup_steps > 0:
            return [Phase("warmup", 0), Phase("main", self.warmup_steps)]
        return [Phase("main", 0)]

    def in_warmup(self, step: int) -> bool:
        return step < self.warmup_steps

    def prior(self, crops: Any, geom: Any, group: torch.Tensor, warm: bool) -> torch.Tensor | None:
        """The Gaussian prior logit offset of each crop (M, S, S), or None when pi = 0."""
        pi = self.config.warmup_pi if warm else self.config.pi
        if pi == 0:
            return None
        if warm:
            sigma = torch.full((geom.n_instances,), self.config.warmup_sigma, device=group.device)
        else:
            table = self.sigma.to(group.device)
            sigma = table[group.clamp(0, table.numel() - 1)][geom.batch_index]
        return gaussian_prior(crops.crop_size, sigma, pi)

    def cks_losses(
        self,
        crops: Any,
        geom: Any,
        collab: Any,
        group: torch.Tensor,
        step: int,
        images: torch.Tensor | None = None,
        annotated: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """L_M, L_S, L_B, L_MC over the selected images (all by default).

        ``annotated`` (B, H, W) and ``unlabelled`` weight L_M (:func:`~weakseg_cks.losses.foreground_weights`);
        L_B only counts crop-covered pixels and L_S, L_MC live inside the crops, so they need no weights.
        """
        warm = self.in_warmup(step)
        logits = crops.logits
        prior_pu = self.config.unlabelled.prior if self.config.unlabelled is not None else None
        weights = foreground_weights(geom, annotated, collab.foreground, prior_pu)
        extra = {"weights": weights} if weights is not None else {}
        return {
            "foreground": self.consistency(
                collab.foreground, logits, geom, self.prior(crops, geom, group, warm), images, **extra
            ),
            "instance": self.instance_loss(logits, geom, collab.foreground, hard=warm, images=images),
            "border": self.config.border_weight * self.border_loss(logits, geom, collab.border, images),
            "collapse": self.collapse_loss(logits, geom, images),
        }

    def detection_weighting(self, batch: Batch) -> dict[str, Any]:
        """Keyword arguments of the detection loss for partial point sets (empty when points are complete)."""
        weighting: dict[str, Any] = {}
        if batch.annotated is not None:
            weighting["annotated"] = batch.annotated
        if self.config.unlabelled is not None:
            weighting["unlabelled_prior"] = self.config.unlabelled.prior
        return weighting

    def _pseudo_points_hook(self, batch: Batch, step: int) -> Any:
        """``extra_points(out, points)`` adding confident detections as points, or None (off or burn-in)."""
        cfg = self.config.pseudo_points
        if cfg is None:
            return None
        self._pseudo_images += int(batch.image.shape[0])
        if step < self.pseudo_after:
            return None

        def add(out: Any, points: list[torch.Tensor]) -> list[torch.Tensor]:
            detections = self.principal_model.detect(out, min_score=cfg.threshold)
            segment = None
            if cfg.separate:

                def segment(locations: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
                    crops = self.principal_model.segment(out, locations)
                    return crops.logits.detach(), crops.origins

            allowed = None
            if not cfg.in_regions and batch.annotated is not None:
                allowed = list(batch.annotated <= 0.5)
            found = pseudo_points(
                detections,
                points,
                threshold=cfg.threshold,
                distance=cfg.distance,
                limit=cfg.limit,
                segment=segment,
                allowed=allowed,
            )
            self._pseudo_found += sum(int(f.shape[0]) for f in found)
            return [torch.cat([p, f.to(p)]) for p, f in zip(points, found, strict=True)]

        return add

    def label_free_mask_threshold(self, cell_diameter: float | None) -> float | None:
        """The mask threshold implied by the prior for cells of ``cell_diameter`` model pixels
        (:func:`~weakseg_cks.losses.label_free_mask_threshold`, median sigma over groups); None without either."""
        if not cell_diameter or self.config.pi == 0:
            return None
        return label_free_mask_threshold(self.config.pi, float(self.sigma.median()), 0.5 * float(cell_diameter))

    def interval_metrics(self) -> dict[str, float]:
        """The collaborator's foreground on points / overall (:mod:`weakseg_cks.monitor`) and, with
        self-training on, ``pseudo_points``: mean pseudo points per training image since the last call."""
        out = self.monitor.metrics()
        if self.config.pseudo_points is None:
            return out
        mean = self._pseudo_found / max(self._pseudo_images, 1)
        self._pseudo_found, self._pseudo_images = 0, 0
        return {**out, "pseudo_points": mean}

    def forward(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        points = points_on(batch.image, batch.points)
        detection, crops, geom = self._segment(
            batch,
            points,
            self.config.use_detections,
            weighting=self.detection_weighting(batch),
            extra_points=self._pseudo_points_hook(batch, step),
        )
        group = self._group(batch)
        collab = self.collaborator(batch.image, group)
        self.monitor.update(collab.foreground, points, last_warmup_step=step == self.warmup_steps - 1)
        losses = self.cks_losses(crops, geom, collab, group, step, annotated=batch.annotated)
        return {"detection": detection, **losses}


def _mask_targets(batch: Batch, strategy: str, required: bool) -> tuple[list, list, torch.Tensor]:
    """Per image: instance ids and centroids of its mask (None for images without masks), and labels (B, H, W)."""
    b, _, h, w = batch.image.shape
    ids: list[torch.Tensor | None] = []
    cents: list[torch.Tensor | None] = []
    labels = torch.zeros(b, h, w, dtype=torch.long, device=batch.image.device)
    missing = []
    for k, mask in enumerate(batch.masks):
        if mask is None:
            missing.append(batch.image_ids[k] if k < len(batch.image_ids) else f"#{k}")
            ids.append(None)
            cents.append(None)
            continue
        mask = torch.as_tensor(mask, device=batch.image.device).long()
        if tuple(mask.shape) != (h, w):
            raise DataError(
                f"image {batch.image_ids[k] if k < len(batch.image_ids) else k}: mask shape {tuple(mask.shape)} "
                f"does not match the image crop ({h}, {w})"
            )
        labels[k] = mask
        i, c = mask_centroids(mask)
        ids.append(i)
        cents.append(c)
    if required and missing:
        raise DataError(
            f"strategy {strategy!r} needs instance masks for every training image, but image(s) "
            f"{', '.join(map(str, missing[:5]))} have none; use a store with labels (recipe.data.store) "
            "or strategy 'cks' / 'mixed'"
        )
    return ids, cents, labels


class SupervisedStrategy(PrincipalStrategy):
    """Fully supervised principal model from instance masks (``strategy: {type: supervised}``)."""

    def __init__(self, principal: nn.Module, config: SupervisedStrategyConfig) -> None:
        super().__init__(principal, None)
        self.config = config
        self.mask_loss = SupervisedInstanceLoss()

    def forward(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        ids, cents, labels = _mask_targets(batch, "supervised", required=True)
        detection, crops, geom = self._segment(batch, list(cents), self.config.use_detections)
        instance_ids = torch.cat(ids) if ids else torch.zeros(0, dtype=torch.long, device=labels.device)
        return {"detection": detection, "mask": self.mask_loss(crops.logits, geom, labels, instance_ids)}


class MixedStrategy(CksStrategy):
    """Masks where there are masks, points elsewhere, one run (``strategy: {type: mixed}``)."""

    config: MixedStrategyConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.mask_loss = SupervisedInstanceLoss()

    def forward(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        ids, cents, labels = _mask_targets(batch, "mixed", required=False)
        points = points_on(batch.image, batch.points)
        supervised = torch.tensor([c is not None for c in cents], device=batch.image.device)
        targets = [c if c is not None else p for c, p in zip(cents, points, strict=True)]
        detection, crops, geom = self._segment(batch, targets, self.config.use_detections)
        group = self._group(batch)
        collab = self.collaborator(batch.image, group)
        instance_ids = (
            torch.cat(
                [
                    i if i is not None else torch.zeros(len(p), dtype=torch.long, device=labels.device)
                    for i, p in zip(ids, targets, strict=True)
                ]
            )
            if targets
            else torch.zeros(0, dtype=torch.long, device=labels.device)
        )
        losses = {"detection": detection}
        losses["mask"] = self.mask_loss(crops.logits, geom, labels, instance_ids, images=supervised)
        if self.config.supervise_collaborator:
            losses["foreground_supervised"] = supervised_foreground_loss(collab.foreground, labels, images=supervised)
        losses.update(self.cks_losses(crops, geom, collab, group, step, images=~supervised))
        return losses


# --------------------------------------------------------------------------------------------
# factories called by the recipe configs (weakseg_cks.train_components)
# --------------------------------------------------------------------------------------------


def _schedule(config: CksStrategyConfig, recipe: Any, data: DataSummary) -> dict[str, Any]:
    """The data- and schedule-dependent settings: sigma per group index, warm-up length."""
    return {"sigma": sigma_table(config.sigma, data), "warmup_steps": warmup_length(config, recipe)}


def build_cks(config: CksStrategyConfig, recipe: Any, data: DataSummary) -> CksStrategy:
    schedule = _schedule(config, recipe, data)
    principal = build_principal(recipe, data, "cks")
    collaborator = build_collaborator(recipe, data, "cks")
    if config.pseudo_points is not None:
        if not callable(getattr(principal, "detect", None)):
            raise RecipeError(
                f"recipe.strategy.pseudo_points: principal head {recipe.model.head.type!r} has no detect(); "
                "use head type 'lacss' or remove pseudo_points"
            )
        schedule["pseudo_after"] = int(round(config.pseudo_points.after * recipe.train.steps))
    return CksStrategy(principal, collaborator, config, **schedule)


def build_supervised(config: SupervisedStrategyConfig, recipe: Any, data: DataSummary) -> SupervisedStrategy:
    if not data.has_masks:
        raise RecipeError(
            "recipe.strategy: strategy 'supervised' needs instance masks, but the training split of "
            "recipe.data.store has none; import labelled data or use strategy 'cks' (points only)"
        )
    principal = build_principal(recipe, data, "supervised")
    return SupervisedStrategy(principal, config)


def build_mixed(config: MixedStrategyConfig, recipe: Any, data: DataSummary) -> MixedStrategy:
    for key in ("unlabelled", "pseudo_points"):
        if getattr(config, key) is not None:
            raise RecipeError(
                f"recipe.strategy.{key}: strategy 'mixed' trains images with masks, whose cells are all labelled; "
                f"{key} is an option of strategy 'cks' (remove it here)"
            )
    schedule = _schedule(config, recipe, data)
    principal = build_principal(recipe, data, "mixed")
    collaborator = build_collaborator(recipe, data, "mixed")
    return MixedStrategy(principal, collaborator, config, **schedule)
