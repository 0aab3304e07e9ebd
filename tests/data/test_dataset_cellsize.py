"""Typical cell sizes and the per-group scales derived from them."""

from __future__ import annotations

import numpy as np
import pytest

from weakseg.data.cellsize import diameter_from_labels, diameter_from_points, group_scales, image_diameter


def test_diameters_from_masks_and_from_points():
    labels = np.zeros((200, 200), np.int32)
    yy, xx = np.mgrid[:200, :200]
    centres = [(y, x) for y in range(20, 200, 40) for x in range(20, 200, 40)]
    for i, (cy, cx) in enumerate(centres, start=1):
        labels[(yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2 < 15**2] = i
    assert diameter_from_labels(labels) == pytest.approx(30.0, rel=0.03)
    assert diameter_from_points(np.asarray(centres, np.float32)) == pytest.approx(40.0)
    assert diameter_from_labels(np.zeros((5, 5), np.int32)) is None
    assert diameter_from_points(np.zeros((1, 2))) is None


class Info:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def test_image_diameter_prefers_metadata_then_masks_then_points():
    labels = np.zeros((50, 50), np.int32)
    labels[10:20, 10:20] = 1
    pts = np.array([[0, 0], [0, 7]], np.float32)
    meta = Info(metadata={"cell_diameter": 12.5}, shape=(1, 50, 50), has_labels=True)
    assert image_diameter(meta, lambda: labels, lambda: pts) == 12.5
    masks = Info(metadata={}, shape=(1, 50, 50), has_labels=True)
    assert image_diameter(masks, lambda: labels, lambda: pts) == pytest.approx(np.sqrt(400 / np.pi))
    points = Info(metadata={}, shape=(1, 50, 50), has_labels=False)
    assert image_diameter(points, lambda: pytest.fail("masks read"), lambda: pts) == pytest.approx(7.0)


def test_group_scales_precedence():
    scales = group_scales(["a", "b", "c"], {"a": [10.0, 30.0], "b": [5.0]}, target_cell_size=40.0, fixed={"b": 1.5})
    assert scales == {"a": 2.0, "b": 1.5, "c": 1.0}
    assert group_scales(["a"], {"a": [10.0]}, target_cell_size=None, fixed={}) == {"a": 1.0}
