"""The principal model's point detector (the reference calls it LPN): head, targets, loss, decoding.

CKS paper, Sec. III-A and Eq. 3: one detection head with weights **shared** across FPN levels
(strides 4, 8, 16 by default) predicts a cell-presence probability per grid pixel and the (dy, dx)
offset of the cell location from the pixel centre, in that level's feature pixels. Facts from the
reference implementation (LACSS):

- targets: every pixel takes its **nearest** point; it is positive when that point is closer than
  ``roi`` = 8 image pixels (8 / stride feature pixels, at every level); the regression target is the
  offset to that point in feature pixels;
- loss: focal BCE (gamma 2, no alpha) over all pixels of all levels plus Huber (delta 1, averaged
  over the two coordinates) over positives, both divided by the total pixel count;
- decoding: location = (grid + 0.5 + offset) * stride; locations outside the image score 0; all
  levels merged; distance NMS at 8 px; at most 2560 detections with score >= 0.2.

Coordinates are (y, x) image pixels with pixel centres at i + 0.5.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from weakseg.nn.focal import focal_bce_with_logits
from weakseg.nn.nms import distance_nms


class _ChannelsLastInstanceNorm(torch.autograd.Function):
    """Per-channel GroupNorm (groups = channels) of a channels-last CPU tensor, with a fast backward.

    On CPU, torch's GroupNorm backward is several times slower on channels-last tensors than its
    forward. Per image, a per-channel GroupNorm *is* a training-mode BatchNorm of a batch of one,
    whose channels-last backward kernel is fast, so the backward runs that kernel image by image
    (a loop over the batch, not over instances). Forward: the native GroupNorm.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps: float):  # type: ignore[override]
        b, c, h, w = x.shape
        y, mean, rstd = torch.ops.aten.native_group_norm(x, weight, bias, b, c, h * w, c, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, weight, mean, rstd = ctx.saved_tensors
        grad = grad.contiguous(memory_format=torch.channels_last)
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]]
        dxs, dws, dbs = [], [], []
        for i in range(x.shape[0]):
            dx, dw, db = torch.ops.aten.native_batch_norm_backward(
                grad[i : i + 1], x[i : i + 1], weight, None, None,
                mean[i].float(), rstd[i].float(), True, ctx.eps, mask,
            )
            dxs.append(dx)
            dws.append(dw)
            dbs.append(db)
        if len(dxs) == 1:
            return dxs[0], dws[0], dbs[0], None
        dx = torch.cat(dxs).contiguous(memory_format=torch.channels_last) if mask[0] else None
        dw = torch.stack(dws).sum(0) if mask[1] else None
        db = torch.stack(dbs).sum(0) if mask[2] else None
        return dx, dw, db, None


class ChannelNorm(nn.GroupNorm):
    """Per-channel GroupNorm (groups = channels: instance norm with a learned scale and bias, eps 1e-6).

    Same parameters as ``nn.GroupNorm(C, C)``. When gradients are needed, channels-last CPU tensors
    take :class:`_ChannelsLastInstanceNorm` (the native channels-last forward alone is fast).
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__(channels, channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
        channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
        if needs_grad and channels_last and x.device.type == "cpu":
            return _ChannelsLastInstanceNorm.apply(x, self.weight, self.bias, self.eps)
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


def conv_norm_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    """3x3 conv (no bias) -> per-channel GroupNorm (instance norm with affine, eps 1e-6) -> ReLU."""
    return [
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        ChannelNorm(out_channels),
        nn.ReLU(inplace=True),
    ]


class DetectionHead(nn.Module):
    """Shared detection head: ``n_layers`` x (conv3x3 + instance norm + ReLU), 1x1 score and 1x1 offset."""

    def __init__(self, in_channels: int, channels: int, n_layers: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for k in range(n_layers):
            layers += conv_norm_relu(in_channels if k == 0 else channels, channels)
        self.tower = nn.Sequential(*layers)
        width = channels if n_layers else in_channels
        self.score = nn.Conv2d(width, 1, 1)
        self.regression = nn.Conv2d(width, 2, 1)

    def forward(self, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Feature (B, C, h, w) -> score logits (B, 1, h, w), offsets (B, 2, h, w) in feature pixels."""
        x = self.tower(feature)
        return self.score(x), self.regression(x)


def level_targets(
    points: torch.Tensor, shape: tuple[int, int], stride: int, roi: float = 8.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Detection targets of one image at one level.

    ``points`` (N, 2) image pixels. Returns the binary score target (h, w) and the offset target
    (2, h, w) in feature pixels (zero where the score target is 0). Only pixels whose nearest point
    lies within ``roi / stride`` feature pixels can be positive, so the nearest point is searched
    only in a small window around each point (no (h*w, N) distance matrix).
    """
    h, w = shape
    device = points.device
    score = torch.zeros(h * w, device=device)
    offset = torch.zeros(2, h * w, device=device)
    points = points.detach().float().reshape(-1, 2)
    points = points[torch.isfinite(points).all(1)]
    n = points.shape[0]
    if n == 0:
        return score.view(h, w), offset.view(2, h, w)
    radius = roi / stride
    reach = math.ceil(radius) + 1
    span = torch.arange(-reach, reach + 1, device=device)
    window = torch.stack(torch.meshgrid(span, span, indexing="ij"), -1).reshape(-1, 2)  # (K, 2)
    pf = points / stride  # feature units
    cand = torch.floor(pf).long()[:, None, :] + window[None]  # (N, K, 2)
    d2 = ((cand.float() + 0.5 - pf[:, None, :]) ** 2).sum(-1)  # (N, K)
    ok = (cand[..., 0] >= 0) & (cand[..., 0] < h) & (cand[..., 1] >= 0) & (cand[..., 1] < w) & (d2 < radius**2)
    flat = (cand[..., 0] * w + cand[..., 1])[ok]
    d2 = d2[ok]
    owner = torch.arange(n, device=device)[:, None].expand(-1, window.shape[0])[ok]
    if flat.numel() == 0:
        return score.view(h, w), offset.view(2, h, w)
    best = torch.full((h * w,), math.inf, device=device).scatter_reduce(0, flat, d2, "amin")
    is_best = d2 == best[flat]
    # ties: the lowest point index wins, like an argmin
    big = torch.full((h * w,), n, dtype=torch.long, device=device)
    nearest = big.scatter_reduce(0, flat[is_best], owner[is_best], "amin")
    pos = nearest < n
    idx = torch.nonzero(pos).squeeze(1)
    score[idx] = 1.0
    centres = torch.stack([idx // w, idx % w], 0).float() + 0.5
    offset[:, idx] = pf[nearest[idx]].T - centres
    return score.view(h, w), offset.view(2, h, w)


def pu_negative_weight(prob: torch.Tensor, prior: float) -> torch.Tensor:
    """Weight of an unlabelled pixel taught as background: its chance of really being background.

    Positive-unlabelled learning (Elkan & Noto 2008): when a share ``prior`` of the cells has no
    label, a classifier of labelled vs unlabelled with output p gives an unlabelled sample the chance
    ``prior / (1 - prior) * p / (1 - p)`` of being a cell. The weight is 1 minus that, clipped to
    [0, 1] (0 from p >= 1 - prior on), computed without gradient.
    """
    p = prob.detach().float().clamp(0.0, 1.0 - 1e-6)
    return (1.0 - (prior / (1.0 - prior)) * p / (1.0 - p)).clamp(0.0, 1.0)


def level_annotated(annotated: torch.Tensor, shape: tuple[int, int], stride: int) -> torch.Tensor:
    """The annotated share (B, h, w) of each grid cell of a level, from the image-sized mask (B, H, W).

    The principal pads images at the bottom and right; padding counts as annotated (it holds no cell).
    """
    h, w = shape
    a = annotated.float()[:, None]
    pad_y, pad_x = h * stride - a.shape[-2], w * stride - a.shape[-1]
    a = F.pad(a, (0, max(pad_x, 0), 0, max(pad_y, 0)), value=1.0)[..., : h * stride, : w * stride]
    return F.avg_pool2d(a, stride)[:, 0]


def _negative_weights(
    logit: torch.Tensor, score_t: torch.Tensor, stride: int, annotated: torch.Tensor | None, prior: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss weight, counted weight) per grid pixel (B, h, w): positives 1; negatives their annotated share,
    times the PU weight when ``prior`` is set (the counted weight leaves the PU weight out)."""
    region = torch.ones_like(score_t)
    if annotated is not None:
        region = level_annotated(annotated.to(score_t.device), tuple(score_t.shape[-2:]), stride)
    counted = torch.where(score_t > 0, torch.ones_like(region), region)
    neg = region if not prior else region * pu_negative_weight(torch.sigmoid(logit.float()), prior)
    return torch.where(score_t > 0, torch.ones_like(neg), neg), counted


def detection_loss_terms(
    logits: Sequence[torch.Tensor],
    regressions: Sequence[torch.Tensor],
    strides: Sequence[int],
    points: Sequence[torch.Tensor],
    *,
    roi: float = 8.0,
    gamma: float = 2.0,
    huber_delta: float = 1.0,
    localization_norm: str = "pixels",
    annotated: torch.Tensor | None = None,
    unlabelled_prior: float | None = None,
) -> dict[str, torch.Tensor]:
    """The paper's L_det (Eq. 3) as coded in the reference: ``{"focal": ..., "localization": ...}``.

    Focal BCE summed over every pixel of every level, Huber on the offsets of positive pixels
    (mean of the two coordinates); both divided by the total pixel count of the batch
    (``localization_norm="positives"`` divides the Huber sum by the positive count, as v0.3.0).

    ``annotated`` (B, H, W), 1 where the points are complete: a negative grid pixel counts with its
    annotated share (0 outside the region) and the pixel count becomes the counted weight.
    ``unlabelled_prior``: negatives are also weighted by :func:`pu_negative_weight`.
    """
    batch = logits[0].shape[0]
    focal = logits[0].new_zeros((), dtype=torch.float32)
    huber = focal.clone()
    n_pixels: int | torch.Tensor = 0
    n_pos = focal.clone()
    weighted = annotated is not None or bool(unlabelled_prior)
    for logit, reg, stride in zip(logits, regressions, strides, strict=True):
        h, w = logit.shape[-2:]
        targets = [level_targets(points[b], (h, w), stride, roi) for b in range(batch)]
        score_t = torch.stack([t[0] for t in targets])  # (B, h, w)
        offset_t = torch.stack([t[1] for t in targets])  # (B, 2, h, w)
        if weighted:
            weight, counted = _negative_weights(logit[:, 0], score_t, stride, annotated, unlabelled_prior)
            focal = focal + (focal_bce_with_logits(logit[:, 0], score_t, gamma) * weight).sum()
            n_pixels = n_pixels + counted.sum()
        else:
            n_pixels += batch * h * w
            focal = focal + focal_bce_with_logits(logit[:, 0], score_t, gamma).sum()
        per_pixel = F.huber_loss(reg.float(), offset_t, reduction="none", delta=huber_delta).mean(1)
        huber = huber + (per_pixel * score_t).sum()
        n_pos = n_pos + score_t.sum()
    if weighted:
        n_pixels = torch.as_tensor(n_pixels, dtype=torch.float32, device=focal.device).clamp_min(1.0)
    if localization_norm == "positives":
        localization = huber / n_pos.clamp_min(1.0)
    else:
        localization = huber / n_pixels
    return {"focal": focal / n_pixels, "localization": localization}


def decode_candidates(
    logits: Sequence[torch.Tensor],
    regressions: Sequence[torch.Tensor],
    strides: Sequence[int],
    image_shape: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every pixel of every level as a candidate: scores (B, P) and locations (B, P, 2) in image pixels.

    Candidates whose location falls outside the (unpadded) image get score 0.
    """
    all_scores, all_locs = [], []
    height, width = image_shape
    for logit, reg, stride in zip(logits, regressions, strides, strict=True):
        b, _, h, w = logit.shape
        grid = torch.stack(
            torch.meshgrid(
                torch.arange(h, device=logit.device, dtype=torch.float32),
                torch.arange(w, device=logit.device, dtype=torch.float32),
                indexing="ij",
            ),
            0,
        )  # (2, h, w)
        loc = (grid + 0.5 + reg.float()) * stride  # (B, 2, h, w)
        score = torch.sigmoid(logit[:, 0].float())
        inside = (loc[:, 0] >= 0) & (loc[:, 0] < height) & (loc[:, 1] >= 0) & (loc[:, 1] < width)
        all_scores.append(torch.where(inside, score, torch.zeros_like(score)).reshape(b, -1))
        all_locs.append(loc.permute(0, 2, 3, 1).reshape(b, -1, 2))
    return torch.cat(all_scores, 1), torch.cat(all_locs, 1)


def select_detections(
    scores: torch.Tensor, locations: torch.Tensor, *, min_score: float, nms_distance: float, max_detections: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Score floor, distance NMS and the output cap for one image: (scores (K,), locations (K, 2)), best first.

    Filtering by ``min_score`` before NMS is exact: a point below the floor can only suppress
    lower-scoring points, which are below the floor too.
    """
    keep = scores >= min_score
    scores, locations = scores[keep], locations[keep]
    if nms_distance > 0:
        idx = distance_nms(locations, scores, nms_distance, max_detections)
    else:
        idx = torch.sort(scores, descending=True, stable=True).indices[:max_detections]
    return scores[idx], locations[idx]


def match_training_locations(
    det_locations: torch.Tensor, det_scores: torch.Tensor, points: torch.Tensor, max_offset: float = 12.0
) -> torch.Tensor:
    """Each point replaced by the best-scoring detection assigned to it (reference ``_gen_train_locations``).

    A detection is assigned to its nearest point if that point is closer than ``max_offset``
    pixels; each point then takes the location of its highest-scoring detection. Points without
    a detection keep their own location.
    """
    points = points.detach()
    n, k = points.shape[0], det_locations.shape[0]
    if n == 0 or k == 0:
        return points.clone().float()
    d2 = torch.cdist(det_locations.float(), points.float()) ** 2  # (K, N)
    dmin, nearest = d2.min(1)
    assigned = dmin < max_offset**2
    # pick, per point, the highest score; ties -> first detection
    order = torch.sort(det_scores, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(k, device=order.device)
    best_rank = torch.full((n,), k, dtype=torch.long, device=points.device)
    best_rank = best_rank.scatter_reduce(0, nearest[assigned], rank[assigned], "amin")
    has = best_rank < k
    out = points.clone().float()
    out[has] = det_locations[order[best_rank[has]]].float()
    return out
