"""Blob detection on a nuclear stain: the points of the ``nuclei`` label source.

Laplacian-of-Gaussian or difference-of-Gaussian blobs (scikit-image) about one nucleus diameter wide,
found in tiles on large (lazy) images and on a downsampled image when nuclei are large.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _percentile_range(plane: Any, percentiles: tuple[float, float]) -> tuple[float, float]:
    shape = plane.shape
    step = max(1, int(np.sqrt(shape[0] * shape[1] / 4e6)))
    sample = np.asarray(plane[::step, ::step] if isinstance(plane, np.ndarray) else plane[:, :][::step, ::step])
    lo, hi = np.percentile(sample, percentiles)
    return float(lo), float(hi)


def detect_nuclei(
    plane: Any,
    *,
    diameter: float,
    size_range: float = 1.5,
    method: str = "log",
    threshold: float = 0.05,
    overlap: float = 0.5,
    invert: bool = False,
    percentiles: tuple[float, float] = (1.0, 99.8),
    tile: int = 2048,
) -> np.ndarray:
    """Centres (+0.5) of bright blobs about ``diameter`` px wide in a 2-D image (lazy ones in tiles)."""
    from skimage.feature import blob_dog, blob_log

    h, w = plane.shape
    lo, hi = _percentile_range(plane, percentiles)
    scale = hi - lo if hi > lo else 1.0
    sigma = diameter / (2 * np.sqrt(2))
    min_sigma, max_sigma = sigma / size_range, sigma * size_range
    margin = int(np.ceil(3 * max_sigma)) + 2
    tile = max(tile, 8 * margin)

    # large nuclei are found on a downsampled image (about 12 px across): same result, far fewer operations
    factor = max(1, int(diameter // 12))

    def detect(block: np.ndarray) -> np.ndarray:
        """Blob centres in continuous coordinates of ``block`` (pixel centres at i + 0.5)."""
        norm = np.clip((block.astype(np.float32) - lo) / scale, 0, 1)
        if invert:
            norm = 1 - norm
        if factor > 1:
            from skimage.transform import downscale_local_mean

            norm = downscale_local_mean(norm, (factor, factor))
        s_lo, s_hi = min_sigma / factor, max_sigma / factor
        if method == "dog":
            blobs = blob_dog(norm, min_sigma=s_lo, max_sigma=s_hi, threshold=threshold, overlap=overlap,
                             exclude_border=False)
        else:
            blobs = blob_log(norm, min_sigma=s_lo, max_sigma=s_hi, num_sigma=5, threshold=threshold,
                             overlap=overlap, exclude_border=False)
        if not len(blobs):
            return np.zeros((0, 2))
        return (blobs[:, :2].astype(np.float64) + 0.5) * factor

    if h <= tile and w <= tile:
        pts = detect(np.asarray(plane[:, :]))
    else:
        found = []
        for y0 in range(0, h, tile):
            for x0 in range(0, w, tile):
                y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
                ry0, rx0 = max(0, y0 - margin), max(0, x0 - margin)
                ry1, rx1 = min(h, y1 + margin), min(w, x1 + margin)
                blobs = detect(np.asarray(plane[ry0:ry1, rx0:rx1])) + [ry0, rx0]
                inside = (blobs[:, 0] >= y0) & (blobs[:, 0] < y1) & (blobs[:, 1] >= x0) & (blobs[:, 1] < x1)
                found.append(blobs[inside])
        pts = np.concatenate(found) if found else np.zeros((0, 2))
    if len(pts):
        pts = pts[np.lexsort((pts[:, 1], pts[:, 0]))]
    return pts.astype(np.float32)
