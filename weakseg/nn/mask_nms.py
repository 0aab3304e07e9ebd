"""Mask non-maximum suppression: drop a detection whose mask lies mostly inside better ones.

Distance NMS (:mod:`weakseg.nn.nms`) keeps two detections of one cell when they are further apart
than its radius, which happens when a cell looks unlike the training cells (another objective,
another cell line): the detector fires on two parts of one cell, and each detection draws a mask
that covers much of the same cell. Pasted into a label image the better mask wins the shared
pixels and the other leaves a sliver, one false cell per duplicate.

This is the overlap rule of instance-segmentation post-processing (as in StarDist's polygon NMS
or Mask R-CNN's mask NMS), measured on the detection's own area: going down the scores, a
detection is dropped when more than ``max_overlap`` of its mask pixels are already covered by
the masks of the detections kept before it. With the default 0.5 a detection survives only
when most of its mask is its own, which needs no labelled images to choose; touching cells,
whose masks share a border, are not affected.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch loads with the model, not with the command line that names the default
    from weakseg.nn.instances import Instances

#: Default largest fraction of a detection's mask that may already belong to better detections.
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
    # a canvas padded by one crop on each side: every crop fits without clipping
    canvas = np.zeros((h + 2 * s_h, w + 2 * s_w), bool)
    inside = np.zeros_like(canvas)
    inside[s_h : s_h + h, s_w : s_w + w] = True
    ys = np.clip(np.asarray(origins[:, 0], np.int64) + s_h, 0, h + s_h)
    xs = np.clip(np.asarray(origins[:, 1], np.int64) + s_w, 0, w + s_w)
    for k in np.argsort(-np.asarray(scores, np.float64), kind="stable"):
        y, x = ys[k], xs[k]
        m = masks[k] & inside[y : y + s_h, x : x + s_w]
        area = np.count_nonzero(m)
        if area == 0:
            continue
        window = canvas[y : y + s_h, x : x + s_w]
        if np.count_nonzero(window & m) > max_overlap * area:
            keep[k] = False
        else:
            window |= m
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
