"""``Instances``: selection, shifting, pasting and concatenation of parts with different crop sizes."""

from __future__ import annotations

import numpy as np
import torch

from weakseg.nn.instances import Instances


def square(y0: int, x0: int, size: int, score: float, fill: int) -> Instances:
    masks = torch.zeros(1, size, size)
    masks[0, :fill, :fill] = 1.0
    return Instances(
        torch.tensor([score]),
        torch.tensor([[y0 + fill / 2, x0 + fill / 2]]),
        masks,
        torch.tensor([[y0, x0]]),
        (64, 64),
    )


def test_concat_pads_smaller_crops_without_moving_pixels():
    a, b = square(2, 3, 8, 0.9, 5), square(30, 40, 16, 0.8, 12)
    merged = Instances.concat([a, b], (64, 64))
    assert merged.masks.shape == (2, 16, 16) and len(merged) == 2
    assert merged.masks[0, 5:].sum() == 0 and merged.masks[0, :, 5:].sum() == 0
    labels = merged.to_label_image()
    assert np.array_equal(labels == 1, a.to_label_image() == 1)
    assert np.array_equal(labels == 2, b.to_label_image() == 1)
    assert (labels == 1).sum() == 25 and (labels == 2).sum() == 144


def test_concat_of_nothing_is_empty():
    assert len(Instances.concat([], (5, 6))) == 0 and Instances.concat([], (5, 6)).image_shape == (5, 6)
