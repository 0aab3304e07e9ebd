"""Typical cell size per image and per group, and the per-group rescaling it implies.

The CKS implementation pre-scales every LIVECell cell line so that cells reach one common size
(scale = 34.6 px / the line's average cell size) and applies the same scale at test time. Here the
scale of a group is ``DataConfig.group_scales[group]`` when given, else ``target_cell_size`` divided
by the group's typical cell diameter, else 1.0. The typical diameter of an image is, in order of
preference: ``metadata["cell_diameter"]`` written by an importer; the median equivalent diameter of
its instance masks (small label images only: a mask is read whole); the median nearest-neighbour
distance of its points (for touching cells about one diameter). A group's diameter is the median
over its images.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

#: Label images larger than this many pixels are not read whole to measure cell sizes.
MAX_MASK_PIXELS = 4096 * 4096


def diameter_from_labels(labels: np.ndarray) -> float | None:
    """Median equivalent diameter sqrt(4 area / pi) of the instances of a label image, or None."""
    flat = np.asarray(labels).ravel()
    flat = flat[flat > 0]
    if not flat.size:
        return None
    _, areas = np.unique(flat, return_counts=True)
    return float(np.median(np.sqrt(4.0 * areas / math.pi)))


def diameter_from_points(points: np.ndarray) -> float | None:
    """Median distance from each point to its nearest neighbour, or None with fewer than 2 points."""
    from scipy.spatial import cKDTree

    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(pts) < 2:
        return None
    dist, _ = cKDTree(pts).query(pts, k=2)
    nn = dist[:, 1]
    nn = nn[nn > 0]
    return float(np.median(nn)) if nn.size else None


def image_diameter(
    info: Any,
    load_labels: Callable[[], np.ndarray | None],
    load_points: Callable[[], np.ndarray | None],
) -> float | None:
    """Typical cell diameter (pixels) of one store image (see the module docstring for the order)."""
    meta = getattr(info, "metadata", None) or {}
    value = meta.get("cell_diameter") if isinstance(meta, Mapping) else None
    if isinstance(value, (int, float)) and value > 0:
        return float(value)
    shape = tuple(getattr(info, "shape", ()))
    if getattr(info, "has_labels", False) and len(shape) >= 2 and shape[-1] * shape[-2] <= MAX_MASK_PIXELS:
        labels = load_labels()
        if labels is not None:
            d = diameter_from_labels(labels)
            if d is not None:
                return d
    points = load_points()
    return diameter_from_points(points) if points is not None else None


def group_scales(
    groups: Iterable[str],
    diameters: Mapping[str, list[float]],
    *,
    target_cell_size: float | None,
    fixed: Mapping[str, float],
) -> dict[str, float]:
    """Scale factor per group: ``fixed`` first, then ``target_cell_size / median diameter``, else 1.0."""
    out: dict[str, float] = {}
    for group in groups:
        if group in fixed:
            out[group] = float(fixed[group])
        elif target_cell_size and diameters.get(group):
            out[group] = float(target_cell_size) / float(np.median(diameters[group]))
        else:
            out[group] = 1.0
    return out
