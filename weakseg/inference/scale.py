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

A checkpoint with a size model (:mod:`weakseg.inference.sizing`) replaces 4. by an estimate per image:
each new image is resized by ``cell_diameter / its estimated diameter`` (:func:`image_sizer`, used
alike by ``weakseg predict``, ``weakseg evaluate`` and ``weakseg.load``).

Checkpoints written before the factors were recorded are served by recomputing them from the
stored recipe and its store when that is reachable; otherwise the factor is 1 with a warning.
"""

from __future__ import annotations

import math
import statistics
import warnings
from typing import Any

import attrs

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


@attrs.frozen
class Sizing:
    """The factor one image is resized by, the cell diameter that implies (pixels of the image, when
    known) and where it came from: ``scale``, ``diameter``, ``pixel_size`` (given), ``size model``
    (estimated per image) or ``training factor`` (the checkpoint's recorded factor)."""

    scale: float
    diameter: float | None
    source: str

    def to_dict(self) -> dict[str, Any]:
        """``{"scale", "diameter", "sizing"}`` for summaries and tables."""
        d = None if self.diameter is None else round(float(self.diameter), 3)
        return {"scale": round(float(self.scale), 6), "diameter": d, "sizing": self.source}


class ImageSizer:
    """How each new image is resized: one fixed :class:`Sizing`, or the size model's estimate per image.

    ``model`` is a :class:`~weakseg.inference.sizing.SizeModel` (``None``: always ``fixed``); ``principal``
    the model whose features it reads; ``fixed.scale`` is also where estimation starts.
    """

    def __init__(
        self,
        fixed: Sizing,
        model: Any = None,
        principal: Any = None,
        device: Any = "cpu",
        group_scales: dict[str, float] | None = None,
    ) -> None:
        self.fixed = fixed
        self.model = model
        self.principal = principal
        self.device = device
        #: Training factors by group, for images whose group is known (``weakseg evaluate`` on a store).
        self.group_scales = dict(group_scales or {})
        self.trained_diameter = fixed.diameter * fixed.scale if fixed.diameter else None

    @property
    def per_image(self) -> bool:
        """Whether images are sized one by one (a size model is used)."""
        return self.model is not None

    def size(self, image: Any, group: str | None = None) -> Sizing:
        """The sizing of one raw (C, H, W) image (array or view with ``read``); ``group``, when known, picks
        that training group's factor where no size model and no user option decide."""
        if self.model is None:
            if group in self.group_scales:
                f = float(self.group_scales[group])
                return Sizing(f, self.trained_diameter / f if self.trained_diameter else None, "training factor")
            return self.fixed
        from weakseg.inference.sizing import estimate_diameter

        d = estimate_diameter(self.principal, self.model, image, start=self.fixed.scale, device=self.device)
        return Sizing(self.model.cell_diameter / d, d, "size model")


def image_sizer(
    ckpt: Any,
    principal: Any = None,
    *,
    scale: float | None = None,
    diameter: float | None = None,
    pixel_size: float | None = None,
    group: str | None = None,
    device: Any = "cpu",
    groups_known: bool = False,
) -> ImageSizer:
    """The sizing of new images for a checkpoint: what the user gave (``scale``, ``diameter``,
    ``pixel_size``, ``group``) wins; else the checkpoint's size model per image when it has one, the
    training images came at different cell sizes (:func:`_varied_sizes`) and ``principal`` offers
    features; else the recorded training factor (with :func:`resolve_scale`'s warnings;
    with ``groups_known`` an image of a training group takes its group's factor, without the warning)."""
    from weakseg.inference.sizing import SizeModel, features_of

    model = SizeModel.from_dict(getattr(ckpt, "size_model", None))
    options = (("scale", scale), ("diameter", diameter), ("pixel_size", pixel_size))
    given = next((n for n, v in options if v is not None), None)
    info = checkpoint_input_scale(ckpt) or InputScale()
    automatic = model is not None and features_of(principal) is not None and _varied_sizes(model, info)
    if given is None and group is None and automatic:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            start = resolve_scale(ckpt)
        return ImageSizer(Sizing(start, model.cell_diameter / start, "training factor"), model, principal, device)
    if given == "diameter" and model is not None and not info.cell_diameter and 0 < diameter < math.inf:
        # no data.target_cell_size: the size model knows the cell diameter the model was trained at
        return ImageSizer(Sizing(model.cell_diameter / float(diameter), float(diameter), "diameter"))
    by_group = groups_known and given is None and group is None
    with warnings.catch_warnings():
        if by_group:
            warnings.simplefilter("ignore")
        factor = resolve_scale(ckpt, scale=scale, diameter=diameter, pixel_size=pixel_size, group=group)
    trained = model.cell_diameter if model is not None else info.cell_diameter
    d = float(diameter) if diameter else (float(trained) / factor if trained else None)
    groups = info.trained_group_scales if by_group else None
    return ImageSizer(Sizing(factor, d, given or ("group" if group else "training factor")), group_scales=groups)


def _varied_sizes(model: Any, info: InputScale) -> bool:
    """Whether the training images came at different cell sizes, so that new images are sized one by one:
    their diameters spread widely (:attr:`~weakseg.inference.sizing.SizeModel.sizes_new_images`), the run
    rescaled image by image (``data.rescale: image``) or its groups were resized by different factors."""
    factors = {round(float(f), 4) for f in (info.trained_group_scales or {}).values()}
    return model.sizes_new_images or info.rescale == "image" or len(factors) > 1
