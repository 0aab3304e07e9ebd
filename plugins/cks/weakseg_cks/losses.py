"""The CKS consistency losses, vectorised over instances.

Yu, "Point-supervised Single-cell Segmentation via Collaborative Knowledge Sharing", Sec. III-C/D:

- ``L_M`` (eq. 4, 6): the collaborator foreground ``f`` follows the merged principal map
  ``g = sigma(max_i [l_i + pi * exp(-r^2 / 2 sigma^2)])`` (max over the crops covering a pixel, 0
  where none does), with ``g`` detached: L_M = mean_x [g (1 - f) + (1 - g) f]. The cross-entropy
  ablation (eq. 5) uses the hard label ``g >= 0.5``.
- ``L_S`` (eq. 8): each instance ``y_i`` follows the detached collaborator foreground inside its
  crop, plus the overlap penalty ``y_i * sum_{j != i} y_j``; averaged over the K = S^2 crop pixels
  and over the image's instances. Warm-up form: hard ``f >= 0.5`` and the log overlap
  ``y_i * sum_{j != i} softplus(l_j)``.
- ``L_B`` (eq. 9, 10): ``B_p = tanh(sum_i sqrt(clip((sobel_y^2 + sobel_x^2) / 8, 1e-8, 1)))`` against
  the collaborator border ``e``, 1/2 (e - B_p)^2 averaged over crop-covered pixels; no stop-gradient:
  it updates both models.
- ``L_MC``: w * mean_i S / sqrt(max(A_i, eps)) with A_i the crop's mass inside the image (w = 0.01).

The geometry follows the reference implementation: crop pixel (a, b) of instance i
is image pixel ``origins[i] + (a, b)``; crop pixels outside the image read 0 from the image-sized
collaborator maps and take no part in sums over images. Instances are never looped over: crop
pixels are scattered into flat (B * H * W) image maps with ``index_add`` / ``scatter_reduce`` and
gathered back with one index. Every loss returns the mean over the images it is asked about of a
per-image value, so ``images=`` selects e.g. the point-labelled images of a mixed batch.

All maths runs in float32, whatever precision the models ran in.

Call protocol (what a strategy passes; a third-party loss registered for the same ``role`` must
accept the same arguments): ``role = "foreground"``: ``(fg_logits, logits, geom, prior, images)``;
``"instance"``: ``(logits, geom, fg_logits, hard=..., images=...)``; ``"border"``:
``(logits, geom, border_logits, images)``; ``"collapse"``: ``(logits, geom, images)``. ``logits``
(M, S, S) are the principal's crop logits, ``fg_logits`` / ``border_logits`` (B, H, W) the
collaborator's, ``geom`` a :class:`CropGeometry`, ``images`` an optional (B,) bool selection.
"""

from __future__ import annotations

import math
from typing import Literal

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from weakseg_cks.train_components import COLLAPSE_WEIGHT

FLOAT32_EPS = float(torch.finfo(torch.float32).eps)


@attrs.frozen
class CropGeometry:
    """Where each crop pixel lies in the flattened (B * H * W) batch of images.

    ``flat_index`` (M, S, S) int64 points at the pixel under each crop pixel, or at the dump slot
    ``n_pixels`` when the crop pixel lies outside its image; ``inside`` (M, S, S) bool says which.
    """

    flat_index: torch.Tensor
    inside: torch.Tensor
    batch_index: torch.Tensor  # (M,) int64
    n_images: int
    image_shape: tuple[int, int]
    crop_size: int

    @property
    def n_pixels(self) -> int:
        return self.n_images * self.image_shape[0] * self.image_shape[1]

    @property
    def n_instances(self) -> int:
        return int(self.batch_index.shape[0])

    def counts(self) -> torch.Tensor:
        """Instances per image, (B,) float."""
        return torch.bincount(self.batch_index, minlength=self.n_images).float()


def crop_geometry(
    origins: torch.Tensor,
    batch_index: torch.Tensor,
    image_shape: tuple[int, int],
    n_images: int,
    crop_size: int,
) -> CropGeometry:
    """The :class:`CropGeometry` of square crops with top-left ``origins`` (M, 2) (y0, x0)."""
    h, w = int(image_shape[0]), int(image_shape[1])
    device = origins.device
    origins = origins.long()
    batch_index = batch_index.long().to(device)
    offs = torch.arange(crop_size, device=device)
    ys = origins[:, 0, None] + offs  # (M, S)
    xs = origins[:, 1, None] + offs
    inside = ((ys >= 0) & (ys < h))[:, :, None] & ((xs >= 0) & (xs < w))[:, None, :]
    flat = (batch_index[:, None, None] * h + ys[:, :, None]) * w + xs[:, None, :]
    flat = torch.where(inside, flat, torch.full_like(flat, n_images * h * w))
    return CropGeometry(flat, inside, batch_index, int(n_images), (h, w), int(crop_size))


def scatter_sum(values: torch.Tensor, geom: CropGeometry) -> torch.Tensor:
    """Sum crop values (M, S, S) into image maps (B, H, W); differentiable; outside pixels dropped."""
    out = values.new_zeros(geom.n_pixels + 1)
    out = out.index_add(0, geom.flat_index.reshape(-1), values.reshape(-1))
    return out[:-1].view(geom.n_images, *geom.image_shape)


def scatter_max(values: torch.Tensor, geom: CropGeometry, fill: float) -> torch.Tensor:
    """Per-pixel max of crop values into image maps (B, H, W), ``fill`` where no crop covers (no grad)."""
    out = values.new_full((geom.n_pixels + 1,), fill)
    out = out.scatter_reduce(0, geom.flat_index.reshape(-1), values.detach().reshape(-1), "amax", include_self=True)
    return out[:-1].view(geom.n_images, *geom.image_shape)


def gather_crops(maps: torch.Tensor, geom: CropGeometry) -> torch.Tensor:
    """Read image maps (B, H, W) under each crop pixel -> (M, S, S); 0 outside the image."""
    flat = torch.cat([maps.reshape(-1), maps.new_zeros(1)])
    return flat[geom.flat_index]


def coverage(geom: CropGeometry) -> torch.Tensor:
    """(B, H, W) bool: pixels covered by at least one crop."""
    hits = torch.zeros(geom.n_pixels + 1, dtype=torch.bool, device=geom.flat_index.device)
    hits[geom.flat_index.reshape(-1)] = True
    return hits[:-1].view(geom.n_images, *geom.image_shape)


def per_image_instance_mean(values: torch.Tensor, geom: CropGeometry) -> torch.Tensor:
    """(M,) per-instance values -> (B,) sum over the image's instances / (N_b + eps) ("K/N" normalisation)."""
    sums = values.new_zeros(geom.n_images).index_add(0, geom.batch_index, values)
    return sums / (geom.counts().to(values) + FLOAT32_EPS)


def mean_over_images(per_image: torch.Tensor, images: torch.Tensor | None) -> torch.Tensor:
    """Mean of (B,) values over the selected images (all when ``images`` is None); 0 when none is selected."""
    if images is None:
        return per_image.mean() if per_image.numel() else per_image.sum()
    weights = images.to(per_image)
    return (per_image * weights).sum() / weights.sum().clamp(min=1.0)


def gaussian_prior(crop_size: int, sigma: torch.Tensor, pi: float | torch.Tensor) -> torch.Tensor:
    """The logit offset ``pi * exp(-r^2 / (2 sigma_i^2))`` (M, S, S), r from the crop centre (S - 1) / 2.

    ``sigma`` (M,) is each instance's sigma in image pixels (per group); ``pi`` = 0 switches the prior off.
    """
    sigma = sigma.float()
    c = (crop_size - 1) / 2.0
    d = torch.arange(crop_size, device=sigma.device, dtype=torch.float32) - c
    r2 = d[:, None] ** 2 + d[None, :] ** 2
    return pi * torch.exp(-r2[None] / (2.0 * sigma[:, None, None] ** 2))


def label_free_mask_threshold(pi: float, sigma: float, radius: float) -> float:
    """The principal's probability at the edge of a cell of ``radius`` pixels, where the prior-shifted map
    M_p (eq. 4), and so the collaborator it teaches, crosses 0.5: ``sigmoid(-pi * exp(-R^2 / (2 sigma^2)))``.

    L_M pulls the collaborator towards M_p and L_S pulls the principal towards the collaborator, so a
    points-trained principal marks a cell's edge at this probability, not at 0.5 (0.20 for R = 17 px,
    sigma = 20, pi = 2: what labelled validation masks choose on nuclei). Needs no mask to compute.
    """
    return 1.0 / (1.0 + math.exp(pi * math.exp(-(radius**2) / (2.0 * sigma**2))))


def merged_principal_map(logits: torch.Tensor, geom: CropGeometry, prior: torch.Tensor | None) -> torch.Tensor:
    """M_p (eq. 4): sigma(max_i [l_i + prior_i]) per pixel, 0 where no crop covers; detached."""
    with torch.no_grad():
        shifted = logits.detach().float()
        if prior is not None:
            shifted = shifted + prior
        return torch.sigmoid(scatter_max(shifted, geom, fill=-1e6))


# --------------------------------------------------------------------------------------------
# L_M: collaborator foreground vs merged principal map
# --------------------------------------------------------------------------------------------


class ForegroundConsistency(nn.Module):
    """L_M: the collaborator foreground follows the detached merged principal map (eq. 4-6).

    ``kind="linear"`` is the paper's loss g (1 - f) + (1 - g) f; ``"cross_entropy"`` is eq. 5 (BCE
    against the hard label g >= 0.5), the ablation of Table V. Gradients reach the collaborator only.
    """

    role = "foreground"

    def __init__(self, kind: Literal["linear", "cross_entropy"] = "linear") -> None:
        super().__init__()
        if kind not in ("linear", "cross_entropy"):
            raise ValueError(f"unknown foreground consistency {kind!r}")
        self.kind = kind

    def forward(
        self,
        fg_logits: torch.Tensor,
        logits: torch.Tensor,
        geom: CropGeometry,
        prior: torch.Tensor | None = None,
        images: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        target = merged_principal_map(logits, geom, prior)
        return self.from_target(fg_logits, target, images, weights)

    def from_target(
        self,
        fg_logits: torch.Tensor,
        target: torch.Tensor,
        images: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The loss against a given (detached) target probability map (B, H, W).

        ``weights`` (B, H, W) makes each image's mean a weighted mean (see :func:`foreground_weights`).
        """
        fg_logits = fg_logits.float()
        target = target.detach().float()
        if self.kind == "linear":
            f = torch.sigmoid(fg_logits)
            pixel = target * (1.0 - f) + (1.0 - target) * f
        else:
            pixel = F.binary_cross_entropy_with_logits(fg_logits, (target >= 0.5).float(), reduction="none")
        if weights is None:
            return mean_over_images(pixel.flatten(1).mean(1), images)
        w = weights.detach().to(pixel)
        per_image = (pixel * w).flatten(1).sum(1) / w.flatten(1).sum(1).clamp(min=1.0)
        return mean_over_images(per_image, images)


def foreground_weights(
    geom: CropGeometry,
    annotated: torch.Tensor | None,
    fg_logits: torch.Tensor | None = None,
    unlabelled_prior: float | None = None,
) -> torch.Tensor | None:
    """Per-pixel weights (B, H, W) of L_M when some cells may lack a point; None when all have one.

    A pixel no instance crop covers is taught as background (the merged map is 0 there). That is
    evidence only where the points are complete: outside the ``annotated`` region such pixels get
    weight 0. With ``unlabelled_prior`` they also get the positive-unlabelled weight of the
    collaborator's own foreground probability (:func:`~weakseg_cks.detection.pu_negative_weight`),
    so a confident unlabelled cell is not pushed to background as hard. Covered pixels keep weight 1.
    """
    if annotated is None and not unlabelled_prior:
        return None
    from weakseg_cks.detection import pu_negative_weight

    covered = coverage(geom)
    w = torch.ones(covered.shape, device=covered.device) if annotated is None else annotated.float().to(covered.device)
    if unlabelled_prior and fg_logits is not None:
        w = w * pu_negative_weight(torch.sigmoid(fg_logits.detach().float()), unlabelled_prior)
    return torch.where(covered, torch.ones_like(w), w)


# --------------------------------------------------------------------------------------------
# L_S: instances vs collaborator foreground, with the overlap penalty
# --------------------------------------------------------------------------------------------


def overlap_term(logits: torch.Tensor, y: torch.Tensor, geom: CropGeometry, form: str) -> torch.Tensor:
    """y_i * sum_{j != i} o_j per crop pixel, o = y ("soft") or softplus(l) = -log(1 - y) ("log").

    The sum over the other instances is the scattered sum map minus the instance itself.
    """
    own = y if form == "soft" else F.softplus(logits)
    own = own * geom.inside
    total = gather_crops(scatter_sum(own, geom), geom)
    return y * (total - own)


class InstanceConsistency(nn.Module):
    """L_S (eq. 8): each instance follows the detached collaborator foreground, plus the overlap penalty.

    ``hard=True`` (CKS warm-up) thresholds the collaborator at 0.5 and uses the log overlap
    y_i * sum_{j != i} softplus(l_j). ``cross_entropy=True`` replaces the linear term with BCE
    against the hard collaborator label (Table V, "principal model: entropy"). Updates the principal only.
    """

    role = "instance"

    def __init__(self, cross_entropy: bool = False, overlap_weight: float = 1.0) -> None:
        super().__init__()
        self.cross_entropy = cross_entropy
        self.overlap_weight = overlap_weight

    def forward(
        self,
        logits: torch.Tensor,
        geom: CropGeometry,
        fg_logits: torch.Tensor,
        *,
        hard: bool = False,
        images: torch.Tensor | None = None,
    ) -> torch.Tensor:
        logits = logits.float()
        y = torch.sigmoid(logits)
        f = gather_crops(torch.sigmoid(fg_logits.detach().float()), geom)
        if hard or self.cross_entropy:
            f = (f >= 0.5).float()
        if self.cross_entropy:
            consistency = F.binary_cross_entropy_with_logits(logits, f, reduction="none")
        else:
            consistency = (1.0 - f) * y + f * (1.0 - y)
        pixel = consistency
        if self.overlap_weight:
            pixel = pixel + self.overlap_weight * overlap_term(logits, y, geom, "log" if hard else "soft")
        per_instance = pixel.flatten(1).mean(1)  # 1/K
        return mean_over_images(per_image_instance_mean(per_instance, geom), images)


# --------------------------------------------------------------------------------------------
# L_B: border consistency
# --------------------------------------------------------------------------------------------


def sobel_border(y: torch.Tensor) -> torch.Tensor:
    """sqrt(clip((s_y^2 + s_x^2) / 8, 1e-8, 1)) of crops (M, S, S), Sobel with zero padding 1.

    Kernels [[-1, -2, -1], [0, 0, 0], [1, 2, 1]] and its transpose, written as separable shifted
    sums (7x faster than a 1-channel conv2d and its backward on CPU).
    """
    p = F.pad(y, (1, 1, 1, 1))
    smooth_x = p[:, :, :-2] + 2.0 * p[:, :, 1:-1] + p[:, :, 2:]  # (M, S + 2, S)
    s_y = smooth_x[:, 2:] - smooth_x[:, :-2]
    smooth_y = p[:, :-2] + 2.0 * p[:, 1:-1] + p[:, 2:]  # (M, S, S + 2)
    s_x = smooth_y[:, :, 2:] - smooth_y[:, :, :-2]
    return torch.sqrt(torch.clamp((s_y * s_y + s_x * s_x) / 8.0, 1e-8, 1.0))


def principal_border_map(logits: torch.Tensor, geom: CropGeometry) -> torch.Tensor:
    """B_p (eq. 9): tanh of the summed Sobel borders of all instances, (B, H, W); differentiable."""
    b = sobel_border(torch.sigmoid(logits.float())) * geom.inside
    return torch.tanh(scatter_sum(b, geom))


class BorderConsistency(nn.Module):
    """L_B (eq. 10): 1/2 (e - B_p)^2 over crop-covered pixels; updates both models (no stop-gradient)."""

    role = "border"

    def forward(
        self,
        logits: torch.Tensor,
        geom: CropGeometry,
        border_logits: torch.Tensor,
        images: torch.Tensor | None = None,
    ) -> torch.Tensor:
        target = principal_border_map(logits, geom)
        e = torch.sigmoid(border_logits.float())
        covered = coverage(geom).float()
        sq = 0.5 * (e - target) ** 2 * covered
        per_image = sq.flatten(1).sum(1) / covered.flatten(1).sum(1).clamp(min=1.0)
        return mean_over_images(per_image, images)


# --------------------------------------------------------------------------------------------
# L_MC: collapse penalty
# --------------------------------------------------------------------------------------------


class CollapsePenalty(nn.Module):
    """L_MC: w * mean_i S / sqrt(max(A_i, eps)), A_i = crop mass inside the image; updates the principal."""

    role = "collapse"

    def __init__(self, weight: float = COLLAPSE_WEIGHT) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, logits: torch.Tensor, geom: CropGeometry, images: torch.Tensor | None = None) -> torch.Tensor:
        y = torch.sigmoid(logits.float()) * geom.inside
        area = y.flatten(1).sum(1)
        per_instance = geom.crop_size / torch.sqrt(torch.clamp(area, min=FLOAT32_EPS))
        return self.weight * mean_over_images(per_image_instance_mean(per_instance, geom), images)


# --------------------------------------------------------------------------------------------
# Supervision from instance masks (supervised and mixed strategies)
# --------------------------------------------------------------------------------------------


def mask_centroids(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Instance ids (N,) and centroids (N, 2) (y, x) = mean pixel index + 0.5 of a label image (H, W)."""
    h, w = labels.shape
    flat = labels.reshape(-1)
    ids, inverse = torch.unique(flat, return_inverse=True)
    n = ids.shape[0]
    ys = torch.arange(h, device=labels.device, dtype=torch.float64).repeat_interleave(w)
    xs = torch.arange(w, device=labels.device, dtype=torch.float64).repeat(h)
    count = torch.bincount(inverse, minlength=n).double()
    cy = torch.bincount(inverse, weights=ys, minlength=n) / count
    cx = torch.bincount(inverse, weights=xs, minlength=n) / count
    keep = ids > 0
    centroids = torch.stack([cy, cx], 1)[keep].float() + 0.5
    return ids[keep], centroids


class SupervisedInstanceLoss(nn.Module):
    """BCE of each instance crop against its own ground-truth mask (0 outside the image), K/N normalised."""

    def forward(
        self,
        logits: torch.Tensor,
        geom: CropGeometry,
        labels: torch.Tensor,
        instance_ids: torch.Tensor,
        images: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``labels`` (B, H, W) int64 label images; ``instance_ids`` (M,) the label each crop segments."""
        logits = logits.float()
        target = (gather_crops(labels, geom) == instance_ids[:, None, None]) & geom.inside
        bce = F.binary_cross_entropy_with_logits(logits, target.float(), reduction="none")
        return mean_over_images(per_image_instance_mean(bce.flatten(1).mean(1), geom), images)


def supervised_foreground_loss(
    fg_logits: torch.Tensor, labels: torch.Tensor, images: torch.Tensor | None = None
) -> torch.Tensor:
    """BCE of the collaborator foreground against the union of the ground-truth masks."""
    bce = F.binary_cross_entropy_with_logits(fg_logits.float(), (labels > 0).float(), reduction="none")
    return mean_over_images(bce.flatten(1).mean(1), images)


def sigma_for_instances(sigma_per_group: torch.Tensor, group: torch.Tensor, geom: CropGeometry) -> torch.Tensor:
    """Each instance's prior sigma (M,) from its image's group."""
    return sigma_per_group.to(group.device)[group.long()][geom.batch_index]


__all__ = [
    "BorderConsistency",
    "CollapsePenalty",
    "CropGeometry",
    "ForegroundConsistency",
    "InstanceConsistency",
    "SupervisedInstanceLoss",
    "crop_geometry",
    "foreground_weights",
    "gaussian_prior",
    "mask_centroids",
    "merged_principal_map",
    "principal_border_map",
    "sigma_for_instances",
    "supervised_foreground_loss",
]
