"""Two touching discs drawn in the test (fluorescence-like or phase-like), for the unit tests."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def touching_discs(
    modality: str = "fluorescence", shape: tuple[int, int] = (64, 96), radius: float = 16.0, noise: float = 0.03,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(image (1, H, W) float32, labels (H, W) int32 with ids 1 and 2, centres (2, 2) (y, x))``.

    The discs overlap by a few pixels; each pixel goes to the nearer centre, so they share a straight
    border. Fluorescence: bright dome-shaped discs on a dark background (dimmer where they touch).
    Phase: dark discs with a bright halo around and between them.
    """
    h, w = shape
    cy = h / 2
    centres = np.array([[cy, w / 2 - radius + 1.5], [cy, w / 2 + radius - 1.5]], np.float32)
    yy, xx = np.mgrid[:h, :w] + 0.5
    dist = np.stack([np.hypot(yy - c[0], xx - c[1]) for c in centres])
    inside = dist.min(axis=0) < radius
    labels = np.where(inside, dist.argmin(axis=0) + 1, 0).astype(np.int32)
    rel = dist.min(axis=0) / radius
    if modality == "fluorescence":
        image = np.where(inside, 0.4 + 0.6 * np.clip(1 - rel**2, 0, 1), 0.0)
    else:
        border = np.zeros(shape, bool)
        for k in (1, 2):
            cell = labels == k
            border |= ndi.binary_dilation(cell, iterations=2) & ~ndi.binary_erosion(cell, iterations=1)
        image = np.where(inside, 0.3, 0.5) + 0.5 * border
    image = ndi.gaussian_filter(image.astype(np.float64), 1.0)
    image = image + np.random.default_rng(seed).normal(0, noise, shape)
    return image[None].astype(np.float32), labels, centres


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def mean_instance_iou(labels: np.ndarray, pred: np.ndarray) -> float:
    """Mean over ground-truth cells of the IoU with the predicted cell overlapping it most (0 if none).

    The per-instance IoU of the paper's evaluation code (Nishimura et al. 2019).
    """
    ious = []
    for k in np.unique(labels[labels > 0]):
        gt = labels == k
        hits = pred[gt]
        hits = hits[hits > 0]
        ious.append(iou(gt, pred == np.bincount(hits).argmax()) if len(hits) else 0.0)
    return float(np.mean(ious)) if ious else 0.0
