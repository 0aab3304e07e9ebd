"""Fitting images to a model and the model's results back to the images.

- :func:`adapt_channels` / :class:`AdaptedView`: an image with another channel count than the
  model's (RGB for a grey model, grey for an RGB one) converted as it is read;
- :func:`rescale_instances`: instances found in a resized image mapped back to its pixel grid;
- :func:`best_first`: instances in decreasing score order, the order every output uses.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from weakseg.errors import DataError
from weakseg.inference.tiling import ChannelFirst
from weakseg.nn.instances import Instances

#: Masks resampled per chunk of this many instances when mapping back from a rescaled image.
RESAMPLE_CHUNK = 256


def rescale_instances(inst: Instances, sy: float, sx: float, image_shape: tuple[int, int]) -> Instances:
    """Map instances found in an image resized by (sy, sx) back to the original pixel grid.

    Crop pixel (a, b) of a crop with origin (y0, x0) covers the resized image's pixel
    (y0 + a, x0 + b); with edge indexing (pixel centres at i + 0.5) original position u maps to u * s.
    Each original pixel centre of the new, larger or smaller crop samples the old crop bilinearly
    (zero outside it). The new crop is ceil(S / s) + 1 pixels square so it covers the whole old one.
    """
    if sy == 1.0 and sx == 1.0:
        return Instances(inst.scores, inst.locations, inst.masks, inst.origins, tuple(image_shape))
    n = len(inst)
    size = int(inst.masks.shape[-1])
    new_size = int(math.ceil(size / min(sy, sx))) + 1
    scale = torch.tensor([sy, sx], dtype=torch.float64)
    locations = (inst.locations.double() / scale).float()
    if n == 0:
        return Instances.empty(image_shape, new_size)
    o = inst.origins.double()
    new_origins = torch.floor(o / scale).long()
    a = torch.arange(new_size, dtype=torch.float64) + 0.5
    gy = ((new_origins[:, :1].double() + a) * sy - o[:, :1]) * (2.0 / size) - 1.0  # (N, S')
    gx = ((new_origins[:, 1:].double() + a) * sx - o[:, 1:]) * (2.0 / size) - 1.0
    out = []
    masks = inst.masks.float()
    for k in range(0, n, RESAMPLE_CHUNK):
        sl = slice(k, k + RESAMPLE_CHUNK)
        m = gy[sl].shape[0]
        grid = torch.stack(
            [gx[sl][:, None, :].expand(m, new_size, new_size), gy[sl][:, :, None].expand(m, new_size, new_size)], -1
        ).float()
        sampled = F.grid_sample(masks[sl, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out.append(sampled[:, 0])
    return Instances(inst.scores, locations, torch.cat(out), new_origins, tuple(image_shape))


def adapt_channels(image: np.ndarray, in_channels: int | None, name: str = "image") -> np.ndarray:
    """Make a (C, h, w) array have the model's channel count: RGB(A) -> grey for 1-channel models,
    alpha dropped for 3-channel ones, grey repeated for 3-channel ones; anything else is an error."""
    c = image.shape[0]
    if in_channels is None or c == in_channels:
        return image
    if in_channels == 1 and c in (3, 4):
        return image[:3].mean(axis=0, keepdims=True, dtype=np.float32)
    if c == 4 and in_channels == 3:
        return image[:3]
    if c == 1 and in_channels == 3:
        return np.repeat(image, 3, axis=0)
    raise DataError(f"{name}: has {c} channels but the model expects {in_channels}; convert the image first")


class AdaptedView(ChannelFirst):
    """A view whose reads are converted to the model's channel count."""

    def __init__(self, base: ChannelFirst, in_channels: int | None) -> None:
        super().__init__(base.array, base.axes, base.name)
        self.in_channels = in_channels
        adapt_channels(np.zeros((base.shape[0], 1, 1), np.float32), in_channels, base.name)  # fail early

    @property
    def shape(self) -> tuple[int, int, int]:
        c, h, w = super().shape
        return (self.in_channels or c, h, w)

    def read(self, y0: int = 0, y1: int | None = None, x0: int = 0, x1: int | None = None) -> np.ndarray:
        return adapt_channels(super().read(y0, y1, x0, x1), self.in_channels, self.name)


def best_first(inst: Instances) -> Instances:
    """Instances sorted by decreasing score (no copy when they already are)."""
    if len(inst) < 2 or bool((inst.scores[:-1] >= inst.scores[1:]).all()):
        return inst
    return inst.select(torch.argsort(inst.scores, descending=True, stable=True))


#: Pixels around a mask's bounding box that :func:`drop_flat` judges with it.
FLAT_MARGIN = 4


def drop_flat(inst: Instances, region: np.ndarray, min_range: np.ndarray, mask_threshold: float = 0.5) -> Instances:
    """Drop instances that cover no signal in ``region`` (the raw (C, h, w) pixels they were found
    in, same frame as ``inst``): the finite values in the bounding box of the mask (binarised at
    ``mask_threshold``; the whole crop when that is empty), widened by :data:`FLAT_MARGIN` pixels,
    span no more than ``min_range`` (see :func:`weakseg.data.normalize.has_signal`).

    A model finds "cells" in flat areas (zero padding, a blank part of a slide) next to real ones;
    a tile with signal elsewhere still reaches the model, so its flat parts are judged here. The
    margin keeps a saturated cell (flat inside) by the background around it.
    """
    from weakseg.data.normalize import has_signal

    n = len(inst)
    if n == 0:
        return inst
    _, h, w = region.shape
    size = int(inst.masks.shape[-1])
    origins = inst.origins.numpy()
    masks = inst.masks.numpy()
    keep = np.zeros(n, bool)
    for k in range(n):
        rows = np.nonzero((masks[k] >= mask_threshold).any(axis=1))[0]
        cols = np.nonzero((masks[k] >= mask_threshold).any(axis=0))[0]
        r0, r1, c0, c1 = (rows[0], rows[-1] + 1, cols[0], cols[-1] + 1) if len(rows) else (0, size, 0, size)
        oy, ox = int(origins[k, 0]), int(origins[k, 1])
        ya, yb = max(oy + r0 - FLAT_MARGIN, 0), min(oy + r1 + FLAT_MARGIN, h)
        xa, xb = max(ox + c0 - FLAT_MARGIN, 0), min(ox + c1 + FLAT_MARGIN, w)
        keep[k] = ya < yb and xa < xb and has_signal(region[:, ya:yb, xa:xb], min_range)
    return inst if keep.all() else inst.select(torch.from_numpy(keep))
