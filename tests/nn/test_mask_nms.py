"""Mask NMS: a detection whose mask mostly repeats what a better detection holds is dropped."""

from __future__ import annotations

import numpy as np
import torch

from weakseg.nn.instances import Instances
from weakseg.nn.mask_nms import mask_nms, mask_nms_keep


def square(s: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((s, s), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_duplicate_of_a_better_mask_is_dropped_whatever_the_input_order():
    cell = square(20, 2, 18, 2, 18)
    masks = np.stack([cell, cell])
    origins = np.array([[10, 10], [11, 10]])
    keep = mask_nms_keep(np.array([0.6, 0.9]), masks, origins, (64, 64))
    assert keep.tolist() == [False, True]


def test_touching_and_partly_overlapping_cells_are_kept():
    a, b = square(20, 0, 20, 0, 10), square(20, 0, 20, 10, 20)  # side by side in one window
    keep = mask_nms_keep(np.array([0.9, 0.8]), np.stack([a, b]), np.array([[5, 5], [5, 5]]), (64, 64))
    assert keep.all()
    # 60 of 200 pixels shared: IoU 60 / 340 = 0.18, kept at 0.5, dropped at 0.1
    c = square(20, 0, 20, 7, 17)
    args = (np.array([0.9, 0.8]), np.stack([a, c]), np.array([[5, 5], [5, 5]]), (64, 64))
    assert mask_nms_keep(*args, max_overlap=0.5).all()
    assert mask_nms_keep(*args, max_overlap=0.1).tolist() == [True, False]
    assert mask_nms_keep(*args, max_overlap=0.0).tolist() == [True, False]


def test_a_neighbour_mostly_under_an_overgrown_mask_is_kept():
    big = square(30, 0, 20, 0, 20)  # 400 px, bleeding over the small cell next to it
    small = square(30, 0, 10, 14, 24)  # 100 px, 60 of them under the big mask: IoU 60 / 440
    keep = mask_nms_keep(np.array([0.9, 0.8]), np.stack([big, small]), np.array([[0, 0], [0, 0]]), (64, 64))
    assert keep.all()


def test_one_keeps_everything_and_a_dropped_mask_suppresses_nothing():
    cell = square(16, 0, 16, 0, 16)
    masks = np.stack([cell, cell, square(16, 0, 16, 8, 14)])
    origins = np.array([[0, 0], [0, 4], [0, 8]])
    scores = np.array([0.9, 0.8, 0.7])
    assert mask_nms_keep(scores, masks, origins, (32, 32), max_overlap=1.0).all()
    # the second shares 192 of its 256 pixels with the first (IoU 0.6) and goes; the third (image
    # columns 16-22) would have an IoU of 2/3 with the second, but is judged against the kept first one only
    keep = mask_nms_keep(scores, masks, origins, (32, 32), max_overlap=0.5)
    assert keep.tolist() == [True, False, True]


def test_only_pixels_inside_the_image_count():
    cell = square(20, 0, 20, 0, 20)
    # the first crop reaches 10 px past the top-left corner: only its 10 x 10 image pixels count, and
    # they are the better second detection's (counting the 400 crop pixels would make the IoU 1/4)
    origins = np.array([[-10, -10], [0, 0]])
    masks = np.stack([cell, square(20, 0, 10, 0, 10)])
    keep = mask_nms_keep(np.array([0.5, 0.9]), masks, origins, (40, 40))
    assert keep.tolist() == [False, True]
    # a detection with no pixel in the image is kept (other filters decide)
    outside = mask_nms_keep(np.array([0.9, 0.5]), np.stack([cell, cell]), np.array([[0, 0], [-30, -30]]), (40, 40))
    assert outside.all()


def test_instances_wrapper_keeps_tensors_and_binarises_probabilities():
    cell = square(12, 1, 11, 1, 11).astype(np.float32)
    masks = torch.from_numpy(np.stack([cell * 0.9, cell * 0.7, cell * 0.2]))
    inst = Instances(
        torch.tensor([0.9, 0.8, 0.7]),
        torch.tensor([[6.0, 6.0], [6.0, 7.0], [6.0, 8.0]]),
        masks,
        torch.tensor([[0, 0], [0, 1], [0, 2]]),
        (24, 24),
    )
    out = mask_nms(inst, mask_threshold=0.5)
    # the third mask is empty at 0.5 and kept; the second has an IoU of 90 / 110 with the first
    assert out.scores.tolist() == [0.8999999761581421, 0.699999988079071]
    assert torch.is_tensor(out.masks) and out.masks.dtype == torch.float32
    assert len(mask_nms(inst, max_overlap=1.0)) == 3
