"""Cell diameter from the size of the model's own masks: a size cue that sees whole cells.

Run at the training factor on an image of another magnification, a trained principal still draws one
mask per cell, and the masks follow the cells' size only part of the way (cells of half the training
size come out at perhaps three quarters of it). Their median equivalent diameter is therefore a
monotonic but compressed measure of the image's cell size. A log-linear map, fitted on the training
images whose diameters are known (from masks or, for a points-only set, from point spacing), undoes
the compression::

    log D = intercept + slope * log(d_masks / factor)

with ``d_masks`` the median equivalent diameter (model-input pixels) of the detections scoring at least
:data:`SCORE` and ``factor`` the one resize factor every image is measured at. This is the cue for
phase contrast, where the blob scale of :mod:`weakseg.inference.blob_size` follows the fine texture and
not the cells; the size model keeps it only when it was the most accurate of its estimators on the
training images, each left out of its own fit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np
import torch
import torch.nn.functional as F

from weakseg.data.normalize import standardize

#: Detections at or above this score are measured.
SCORE = 0.5
#: Mask probability at which a mask's area is counted (any fixed value works: the fit absorbs it).
MASK_LEVEL = 0.5
#: Fewest detections an image must give for its masks to be measured.
MIN_DETECTIONS = 3
#: Largest side, in model-input pixels, of the centre region that is segmented.
REGION = 768
#: Fewest training images the fit is trusted on.
MIN_IMAGES = 4
#: The slope is kept within these bounds (a flat mask response would ask for an unbounded one).
SLOPE_RANGE = (0.25, 4.0)


def centre_box(h: int, w: int, factor: float) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the centre region of an (h, w) image that is at most :data:`REGION` pixels
    once resized by ``factor``."""
    side = max(8, math.ceil(REGION / factor))
    sy, sx = min(side, h), min(side, w)
    y0, x0 = (h - sy) // 2, (w - sx) // 2
    return y0, y0 + sy, x0, x0 + sx


def region_at(image: Any, factor: float) -> np.ndarray:
    """The :func:`centre_box` region of a (C, H, W) array or view with ``read``."""
    _, h, w = (int(v) for v in image.shape)
    y0, y1, x0, x1 = centre_box(h, w, factor)
    region = image.read(y0, y1, x0, x1) if hasattr(image, "read") else image[:, y0:y1, x0:x1]
    return np.asarray(region, np.float32)


def standardized_at(region: np.ndarray, factor: float, device: Any = "cpu") -> torch.Tensor:
    """A raw (C, h, w) region standardised and resized by ``factor`` (antialiased when shrinking), as a
    (1, C, h', w') tensor: how both the size model's cues see an image."""
    x = torch.from_numpy(standardize(region)).to(device)[None]
    if factor != 1.0:
        size = (max(8, round(x.shape[-2] * factor)), max(8, round(x.shape[-1] * factor)))
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=factor < 1.0)
    return x


def mask_diameter(principal: Any, region: np.ndarray, factor: float, device: Any = "cpu") -> float | None:
    """Median equivalent diameter (model-input pixels) of the principal's masks on ``region`` resized by
    ``factor``; ``None`` with fewer than :data:`MIN_DETECTIONS` detections."""
    x = standardized_at(region, factor, device)
    with torch.inference_mode():
        inst = principal.predict(x)[0]
    keep = inst.scores.float() >= SCORE
    if int(keep.sum()) < MIN_DETECTIONS:
        return None
    areas = (inst.masks[keep].float() >= MASK_LEVEL).flatten(1).sum(1).double().cpu().numpy()
    areas = areas[areas > 0]
    if areas.size < MIN_DETECTIONS:
        return None
    return float(np.median(np.sqrt(4.0 * areas / math.pi)))


@attrs.frozen
class MaskSizeCalibration:
    """The log-linear map from the masks' size at ``factor`` to the image's cell diameter (input pixels).

    ``error`` / ``error90`` are the median / 90th percentile of the relative error on the training
    images, each left out of its own fit.
    """

    slope: float
    intercept: float
    factor: float
    error: float = math.nan
    error90: float = math.nan
    n_images: int = 0

    @property
    def usable(self) -> bool:
        """Enough training images and a finite left-out error."""
        return self.n_images >= MIN_IMAGES and math.isfinite(self.error90)

    def diameter_from(self, measured: float) -> float:
        """The cell diameter (input pixels) for a mask diameter ``measured`` (model-input pixels)."""
        return float(math.exp(self.intercept + self.slope * math.log(measured / self.factor)))

    def diameter(self, principal: Any, image: Any, device: Any = "cpu") -> float | None:
        """The estimated cell diameter of a raw (C, H, W) image; ``None`` when too few cells are detected."""
        measured = mask_diameter(principal, region_at(image, self.factor), self.factor, device)
        return None if measured is None else self.diameter_from(measured)

    def to_dict(self) -> dict[str, Any]:
        """Primitives for a checkpoint."""
        return {k: float(v) if k != "n_images" else int(v) for k, v in attrs.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Any) -> MaskSizeCalibration | None:
        """The inverse of :meth:`to_dict`; ``None`` for a missing entry."""
        if not d:
            return None
        values = {f.name: d[f.name] for f in attrs.fields(cls) if f.name in d}
        return cls(**{k: int(v) if k == "n_images" else float(v) for k, v in values.items()})


def _fit_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares slope (clipped to :data:`SLOPE_RANGE`) and intercept of y on x."""
    if x.size < 2 or np.ptp(x) < 1e-9:
        return 1.0, float(np.mean(y - x))
    slope = float(np.clip(np.polyfit(x, y, 1)[0], *SLOPE_RANGE))
    return slope, float(np.mean(y) - slope * np.mean(x))


def fit_mask_calibration(
    measured: Sequence[float | None], diameters: Sequence[float], factor: float
) -> MaskSizeCalibration | None:
    """Fit the map on training images: ``measured`` mask diameters at ``factor`` (``None`` where an image
    gave too few detections) against their known cell ``diameters``; ``None`` below :data:`MIN_IMAGES`."""
    pairs = [(m, d) for m, d in zip(measured, diameters, strict=True) if m is not None and m > 0 and d > 0]
    if len(pairs) < MIN_IMAGES:
        return None
    x = np.log(np.array([m for m, _ in pairs]) / factor)
    y = np.log(np.array([d for _, d in pairs]))
    errors = []
    for k in range(len(pairs)):
        rest = np.arange(len(pairs)) != k
        slope, intercept = _fit_line(x[rest], y[rest])
        errors.append(abs(math.expm1(intercept + slope * x[k] - y[k])))
    slope, intercept = _fit_line(x, y)
    return MaskSizeCalibration(
        slope=slope,
        intercept=intercept,
        factor=float(factor),
        error=float(np.median(errors)),
        error90=float(np.percentile(errors, 90)),
        n_images=len(pairs),
    )
