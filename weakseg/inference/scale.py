"""Which factor to resize new images by, so that their cells look like the training cells.

A model only segments cells of about the size it was trained on. Training may resize images
(``data.target_cell_size`` normalises the typical cell diameter per group, ``data.group_scales``
fixes a factor per group, CKS paper section 4.1 / LIVECell per-cell-line scaling); the checkpoint
records those factors, the normalised diameter and the training pixel size
(:class:`weakseg.data.scales.InputScale`, measured once per run), and prediction reads them from the
checkpoint alone: the training store need not exist where the model is applied. For a new image the
factor is, in order:

1. ``scale`` given explicitly;
2. ``diameter`` (typical cell diameter of the new images in pixels, as Cellpose's ``diameter``):
   ``cell_diameter / diameter``;
3. ``pixel_size`` of the new images: ``group scale * pixel_size / training pixel size``;
4. otherwise the training factor: that of ``group`` when given, the only one when all groups
   shared one, else the median over groups (with a warning saying how to be specific). A model
   trained with ``data.rescale: image`` (each image resized by its own cell size) warns here too:
   its images need ``diameter``.

Checkpoints written before the factors were recorded are served by recomputing them from the
stored recipe and its store when that is reachable; otherwise the factor is 1 with a warning.
"""

from __future__ import annotations

import math
import statistics
import warnings
from typing import Any

from weakseg.data.scales import InputScale
from weakseg.errors import WeaksegError


def checkpoint_input_scale(ckpt: Any) -> InputScale | None:
    """The checkpoint's recorded resizing, or one recomputed from its recipe's store (older files)."""
    info = getattr(ckpt, "input_scale", None)
    if info:
        return InputScale.from_dict(info)
    data = getattr(getattr(ckpt, "recipe", None), "data", None)
    if data is None:
        return None
    if data.target_cell_size is None and not data.group_scales:
        return InputScale()
    try:
        from weakseg.data.scales import compute_input_scale

        return compute_input_scale(data)
    except Exception as exc:  # the training store may be elsewhere on this machine
        warnings.warn(
            f"{ckpt.path}: the model was trained on resized images (data.target_cell_size / "
            f"data.group_scales) but this checkpoint does not record the factors and its store "
            f"{data.store!r} cannot be read ({exc}); predicting at scale 1: pass scale=/--scale or "
            "diameter=/--diameter",
            stacklevel=3,
        )
        return None


def resolve_scale(
    ckpt: Any,
    *,
    scale: float | None = None,
    diameter: float | None = None,
    pixel_size: float | None = None,
    group: str | None = None,
) -> float:
    """The resize factor for new images (see the module docstring for the order of precedence)."""
    given = [name for name, v in (("scale", scale), ("diameter", diameter), ("pixel_size", pixel_size)) if v]
    if len(given) > 1:
        raise WeaksegError(f"give one of scale, diameter and pixel_size, not {' and '.join(given)}")
    for name, value in (("scale", scale), ("diameter", diameter), ("pixel_size", pixel_size)):
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise WeaksegError(f"{name} must be a positive number, got {value!r}")
    if scale is not None:
        return float(scale)
    path = getattr(ckpt, "path", "the checkpoint")
    info = checkpoint_input_scale(ckpt) or InputScale()
    if diameter is not None:
        trained = info.cell_diameter
        if not trained:
            raise WeaksegError(
                f"{path}: the model was trained without data.target_cell_size, so its cell diameter is not "
                "known; pass --scale (resize factor) instead of --diameter"
            )
        return float(trained) / float(diameter)
    base = _group_scale(info, group, path)
    if pixel_size is None and info.rescale == "image":
        warnings.warn(
            f"{path}: the model was trained with every image resized by its own cell size "
            f"(data.rescale: image); predicting at its group factor {base:.3g} (median cell size): pass "
            f"diameter=/--diameter D (the typical cell diameter of these images, pixels) for their factor",
            stacklevel=3,
        )
    if pixel_size is not None:
        trained_px = info.pixel_size
        if not trained_px:
            raise WeaksegError(
                f"{path}: records no training pixel size (the training images had none, or several); pass "
                "--scale or --diameter instead of --pixel-size, or import the training data with its pixel size"
            )
        return base * float(pixel_size) / float(trained_px)
    return base


def _group_scale(info: InputScale, group: str | None, path: Any) -> float:
    """The factor of ``group``; without one, the training groups' common factor or their median."""
    scales = info.trained_group_scales
    if group is not None:
        if group not in scales:
            known = ", ".join(sorted(scales)) or "none recorded"
            raise WeaksegError(f"{path}: unknown training group {group!r} (groups: {known})")
        return float(scales[group])
    distinct = sorted(set(scales.values()))
    if not distinct:
        return 1.0
    if len(distinct) == 1:
        return float(distinct[0])
    median = float(statistics.median(scales.values()))
    listed = ", ".join(f"{g} {s:.3g}" for g, s in sorted(scales.items()))
    warnings.warn(
        f"{path}: training groups were resized by different factors ({listed}); using the median "
        f"{median:.3g}: pass group=/--group NAME, diameter=/--diameter D or scale=/--scale S",
        stacklevel=3,
    )
    return median
