"""Seeded watershed: the training-free baseline a CellProfiler user would run.

Foreground by Otsu's threshold, on the smoothed intensity for fluorescence and on the local
standard deviation (texture) for phase contrast or bright field, where cells are not uniformly
brighter than the background. Watershed flooding from one seed per cell: the given points (e.g.
nuclei detected in a stain at prediction time, the A431 setting of the CKS paper) or, when none
are given, maxima of the smoothed distance transform of the foreground, or LoG blobs on a nuclear
channel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy import ndimage as ndi
from skimage.feature import blob_log, peak_local_max
from skimage.filters import gaussian, threshold_otsu
from skimage.morphology import disk, remove_small_objects
from skimage.segmentation import watershed
from torch import nn

from weakseg_nishimura.masks import labels_to_instances

if TYPE_CHECKING:  # pragma: no cover
    from weakseg.nn.instances import Instances
    from weakseg_nishimura.plugin import SeededWatershedConfig


def intensity_channel(image: np.ndarray, channel: int | None, nuclear_channel: int | None) -> np.ndarray:
    """One (H, W) float32 intensity image from a (C, H, W) image."""
    img = np.asarray(image, np.float32)
    if img.ndim == 2:
        return img
    if channel is not None:
        return img[channel]
    keep = [c for c in range(img.shape[0]) if c != nuclear_channel] or list(range(img.shape[0]))
    return img[keep].mean(axis=0)


def local_std(image: np.ndarray, size: int) -> np.ndarray:
    """Standard deviation in a ``size`` x ``size`` window around each pixel."""
    img = np.asarray(image, np.float64)
    mean = ndi.uniform_filter(img, size)
    mean_sq = ndi.uniform_filter(img * img, size)
    return np.sqrt(np.clip(mean_sq - mean * mean, 0, None)).astype(np.float32)


def foreground_mask(intensity: np.ndarray, cfg: SeededWatershedConfig) -> np.ndarray:
    """Otsu foreground: on smoothed intensity (fluorescence) or on local standard deviation (phase)."""
    smooth = gaussian(intensity, cfg.smooth_sigma) if cfg.smooth_sigma > 0 else intensity
    feature = smooth if cfg.modality == "fluorescence" else local_std(smooth, cfg.texture_window)
    if float(feature.max() - feature.min()) <= 1e-12:
        return np.zeros(feature.shape, bool)
    fg = feature > threshold_otsu(feature)
    if cfg.closing_radius > 0:
        fg = ndi.binary_closing(fg, disk(cfg.closing_radius), border_value=0)
    if cfg.min_size > 0:
        fg = remove_small_objects(fg, max_size=cfg.min_size)
    if cfg.max_hole_size > 0:
        fg = fill_holes(fg, cfg.max_hole_size)
    return fg


def fill_holes(mask: np.ndarray, max_size: int) -> np.ndarray:
    """Fill background components of at most ``max_size`` px that do not touch the image border."""
    holes, n = ndi.label(~mask)
    if n == 0:
        return mask
    sizes = np.bincount(holes.ravel(), minlength=n + 1)
    border = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
    fill = sizes <= max_size
    fill[0] = False
    fill[border] = False
    return mask | fill[holes]


def own_seeds(image: np.ndarray, fg: np.ndarray, cfg: SeededWatershedConfig) -> np.ndarray:
    """Seeds (N, 2) (y, x) pixel centres when no points are given."""
    if cfg.nuclear_channel is not None:
        nuc = np.asarray(image, np.float32)[cfg.nuclear_channel]
        lo, hi = np.percentile(nuc, [1, 99.8])
        nuc = np.clip((nuc - lo) / max(float(hi - lo), 1e-6), 0, 1)
        blobs = blob_log(nuc, min_sigma=cfg.blob_min_sigma, max_sigma=cfg.blob_max_sigma,
                         threshold=cfg.blob_threshold)
        return blobs[:, :2].astype(np.float32) + 0.5 if len(blobs) else np.zeros((0, 2), np.float32)
    if not fg.any():
        return np.zeros((0, 2), np.float32)
    dist = ndi.distance_transform_edt(fg)
    if cfg.seed_smooth > 0:
        dist = gaussian(dist, cfg.seed_smooth)
    comps, _ = ndi.label(fg)
    peaks = peak_local_max(dist, min_distance=cfg.seed_min_distance, labels=comps, exclude_border=False)
    return peaks.astype(np.float32) + 0.5


def watershed_labels(image: np.ndarray, points: np.ndarray, cfg: SeededWatershedConfig) -> np.ndarray:
    """Label image (H, W) int32 where label k + 1 grew from seed ``points[k]``; 0 is background."""
    intensity = intensity_channel(image, cfg.channel, cfg.nuclear_channel)
    fg = foreground_mask(intensity, cfg)
    return flood(intensity, fg, points, cfg)


def flood(intensity: np.ndarray, fg: np.ndarray, points: np.ndarray, cfg: SeededWatershedConfig) -> np.ndarray:
    """Watershed of the chosen surface from seed discs, restricted to foreground plus the seeds."""
    h, w = fg.shape
    markers = np.zeros((h, w), np.int32)
    pts = np.floor(np.asarray(points, np.float64).reshape(-1, 2)).astype(np.int64)
    inside = (pts[:, 0] >= 0) & (pts[:, 0] < h) & (pts[:, 1] >= 0) & (pts[:, 1] < w)
    r = cfg.seed_radius
    for k in np.nonzero(inside)[0]:
        y, x = pts[k]
        ya, yb, xa, xb = max(y - r, 0), min(y + r + 1, h), max(x - r, 0), min(x + r + 1, w)
        yy, xx = np.mgrid[ya:yb, xa:xb]
        markers[ya:yb, xa:xb][(yy - y) ** 2 + (xx - x) ** 2 <= r * r] = k + 1
    if not markers.any():
        return markers
    mask = fg | (markers > 0)
    if cfg.surface == "distance":
        surface = -ndi.distance_transform_edt(mask)
    else:
        smooth = gaussian(intensity, cfg.smooth_sigma) if cfg.smooth_sigma > 0 else intensity
        surface = -smooth if cfg.modality == "fluorescence" else smooth
    labels = watershed(surface, markers, mask=mask, compactness=cfg.compactness).astype(np.int32)
    if cfg.min_area > 0:
        sizes = np.bincount(labels.ravel(), minlength=len(pts) + 1)
        labels[(sizes < cfg.min_area)[labels] & (labels > 0)] = 0
    return labels


class SeededWatershedPrincipal(nn.Module):
    """Predicts ``Instances`` with no training; ``predict_with_points`` uses given seeds (score 1)."""

    #: The evaluation may call ``predict_with_points`` with the image's points.
    accepts_points = True

    def __init__(self, config: SeededWatershedConfig) -> None:
        super().__init__()
        self.config = config

    def _one(self, image: torch.Tensor, points: np.ndarray | None) -> Instances:
        arr = image.detach().float().cpu().numpy()
        intensity = intensity_channel(arr, self.config.channel, self.config.nuclear_channel)
        fg = foreground_mask(intensity, self.config)
        if points is None:
            points = own_seeds(arr, fg, self.config)
        labels = flood(intensity, fg, points, self.config)
        locations = torch.as_tensor(np.asarray(points, np.float32).reshape(-1, 2), device=image.device)
        scores = torch.ones(len(locations), device=image.device)
        return labels_to_instances(labels, locations, scores, size=self.config.mask_size)

    def predict(self, image: torch.Tensor) -> list[Instances]:
        """Own seeds (distance-transform maxima, or LoG blobs on ``nuclear_channel``)."""
        return [self._one(image[b], None) for b in range(image.shape[0])]

    def predict_with_points(
        self, image: torch.Tensor, points: list[torch.Tensor] | list[np.ndarray]
    ) -> list[Instances]:
        """Seeds = the given points, one (N_b, 2) (y, x) array per image of the batch."""
        if len(points) != image.shape[0]:
            raise ValueError(f"predict_with_points: {len(points)} point sets for a batch of {image.shape[0]} images")
        out = []
        for b in range(image.shape[0]):
            p = points[b]
            p = p.detach().cpu().numpy() if isinstance(p, torch.Tensor) else np.asarray(p)
            out.append(self._one(image[b], p.astype(np.float32).reshape(-1, 2)))
        return out
