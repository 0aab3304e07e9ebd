"""Mask non-maximum suppression: drop a detection that mostly repeats the label of a better one.

Distance NMS (:mod:`weakseg.nn.nms`) keeps two detections of one cell when they are further apart
than its radius, which happens when a cell looks unlike the training cells (another objective,
another cell line): the detector fires on two parts of one cell, and each detection draws a mask
over much of the same cell. Pasted into a label image the better mask wins the shared pixels and
the other leaves a sliver, one false cell per duplicate.

This is non-maximum suppression on masks instead of points, by mask IoU. Going down the scores,
every kept detection holds the pixels of its mask that no better detection holds (what it gets in
the label image); a detection is dropped when its mask has an IoU above ``max_overlap`` with what
one kept detection holds. The default 0.5 means "the same object" in the sense of the IoU-0.5
matching every metric here uses, so it needs no labelled images to choose; touching cells, and a
neighbour partly covered by an overgrown mask, overlap far less than that.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch loads with the model, not with the command line that names the default
    from weakseg.nn.instances import Instances

#: Default largest IoU of a detection's mask with the pixels one better detection holds.
DEFAULT_MAX_OVERLAP = 0.5


def mask_nms_keep(
    scores: np.ndarray,
    masks: np.ndarray,
    origins: np.ndarray,
    image_shape: tuple[int, int],
    max_overlap: float = DEFAULT_MAX_OVERLAP,
) -> np.ndarray:
    """Which detections survive mask NMS (boolean (N,), in the input order).

    ``masks`` (N, S, S) bool crops whose top-left pixel sits at ``origins`` (N, 2) (y0, x0) in an
    image of ``image_shape``; crops may reach past the borders (only in-image pixels count).
    Detections with no mask pixel in the image are kept (other filters decide about them). Ties in
    score keep the input order. ``max_overlap >= 1`` keeps everything.
    """
    n = len(scores)
    keep = np.ones(n, bool)
    if n < 2 or max_overlap >= 1.0:
        return keep
    s_h, s_w = masks.shape[1:]
    h, w = image_shape
    # which kept detection (index + 1) holds each pixel, on a canvas padded by one crop on each side
    holder = np.zeros((h + 2 * s_h, w + 2 * s_w), np.int32)
    inside = np.zeros(holder.shape, bool)
    inside[s_h : s_h + h, s_w : s_w + w] = True
    held = np.zeros(n + 1, np.int64)  # pixels held by each kept detection
    ys = np.clip(np.asarray(origins[:, 0], np.int64) + s_h, 0, h + s_h)
    xs = np.clip(np.asarray(origins[:, 1], np.int64) + s_w, 0, w + s_w)
    for k in np.argsort(-np.asarray(scores, np.float64), kind="stable"):
        y, x = ys[k], xs[k]
        m = masks[k] & inside[y : y + s_h, x : x + s_w]
        area = np.count_nonzero(m)
        if area == 0:
            continue
        window = holder[y : y + s_h, x : x + s_w]
        shared = np.bincount(window[m])
        shared[0] = 0
        others = np.nonzero(shared)[0]
        if len(others):
            iou = shared[others] / (area + held[others] - shared[others])
            if iou.max() > max_overlap:
                keep[k] = False
                continue
        free = m & (window == 0)
        window[free] = k + 1
        held[k + 1] = area - int(shared.sum())
    return keep


def mask_nms(inst: Instances, mask_threshold: float = 0.5, max_overlap: float = DEFAULT_MAX_OVERLAP) -> Instances:
    """``inst`` without the detections that mask NMS drops (masks binarised at ``mask_threshold``)."""
    import torch

    if len(inst) < 2 or max_overlap >= 1.0:
        return inst
    masks = inst.masks if inst.masks.dtype == torch.bool else inst.masks >= mask_threshold
    keep = mask_nms_keep(
        inst.scores.detach().float().cpu().numpy(),
        masks.detach().cpu().numpy(),
        inst.origins.detach().cpu().numpy(),
        tuple(inst.image_shape),
        max_overlap,
    )
    return inst if keep.all() else inst.select(torch.from_numpy(keep).to(inst.scores.device))
