"""Registers the ``bbox-centers`` label source with weakseg.

A label source config is an attrs class; ``build()`` returns an object with
``points(image=..., labels=..., points=..., nuclei=..., rng=...) -> (N, 2) float32 (y, x)``.
"""

from __future__ import annotations

import attrs
import numpy as np

from weakseg.hookspecs import hookimpl


class BBoxCenters:
    """Points at the bounding-box centre of every instance (pixel centres at i + 0.5)."""

    name = "bbox-centers"

    def __init__(self, jitter: float) -> None:
        self.jitter = jitter

    def points(self, *, image, labels, points, nuclei, rng: np.random.Generator) -> np.ndarray:
        if labels is None:
            raise ValueError("bbox-centers needs instance masks in the store")
        from scipy import ndimage

        labels = np.asarray(labels)
        slices = ndimage.find_objects(labels)
        centres = [
            ((s[0].start + s[0].stop) / 2.0, (s[1].start + s[1].stop) / 2.0) for s in slices if s is not None
        ]
        pts = np.asarray(centres, np.float32).reshape(-1, 2)
        if self.jitter > 0 and len(pts):
            pts = pts + rng.normal(0.0, self.jitter, size=pts.shape).astype(np.float32)
            pts = np.clip(pts, 0.0, np.asarray(labels.shape, np.float32) - 1e-3)
        return pts


@attrs.frozen(kw_only=True)
class BBoxCentersConfig:
    """Points at the centre of each cell's bounding box, with optional Gaussian jitter (px)."""

    jitter: float = attrs.field(default=0.0, validator=attrs.validators.ge(0))

    def build(self) -> BBoxCenters:
        return BBoxCenters(self.jitter)


@hookimpl
def weakseg_register_label_sources(registry) -> None:
    registry.add("bbox-centers", BBoxCentersConfig)
