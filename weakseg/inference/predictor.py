"""Prediction with a trained principal model on images of any size.

:class:`Predictor` wraps any model with ``predict(image (B, C, H, W) float32 standardised) ->
list[Instances]`` (the principal model of a strategy, weakseg.strategy) and takes care of what a
user's image needs before and after the model:

1. per-image, per-channel standardisation (statistics over the whole image, applied per tile);
2. rescaling by ``scale`` (or, with a per-image ``sizer``, by each image's estimated cell size:
   :mod:`weakseg.inference.scale`) so that cells have the size the model was trained on; results are mapped
   back to the original pixel grid (mask crops are resampled bilinearly, so a crop of size S becomes
   about S / scale, as in the reference implementation's scaled
   inference);
3. tiles with overlap, batched through the model, mask NMS within each tile (weakseg.nn.mask_nms:
   a detection whose mask mostly repeats a better one's is a duplicate) and stitching
   (weakseg.inference.tiling);
4. optional bf16 autocast (CPU with AVX512-BF16, or CUDA).

``predict_instances`` returns every detection (for COCO-style AP); ``predict`` returns an int32 label
image of the detections scoring at least ``score_threshold``, pasted tile by tile so that a
10000 x 10000 image never needs full-size float copies or dense per-instance masks.
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from weakseg.data.normalize import ImageScan, has_signal, scan_image, standardize
from weakseg.devices import resolve_device
from weakseg.errors import DataError, WeaksegError
from weakseg.inference.adapt import AdaptedView, adapt_channels, best_first, drop_flat, rescale_instances
from weakseg.inference.tiling import (
    ChannelFirst,
    LabelStitcher,
    LabelTable,
    Tile,
    as_view,
    cross_tile_duplicates,
    in_core,
    plan_tiles,
)
from weakseg.nn.instances import Instances
from weakseg.nn.mask_nms import DEFAULT_MAX_OVERLAP, mask_nms

__all__ = ["NAN_POLICIES", "PRECISIONS", "InputWarning", "Predictor", "adapt_channels", "load_predictor"]
__all__ += ["rescale_instances", "resolve_device"]

PRECISIONS = ("fp32", "bf16")
#: What to do with NaN / infinite pixels: predict them as background (with a warning) or refuse the image.
NAN_POLICIES = ("background", "error")


class InputWarning(UserWarning):
    """Something about an input image the user should know (it is still predicted); names the image."""


class Predictor:
    """Run a principal model on images of any size, any dtype, at any scale.

    Args:
        model: has ``predict(image (B, C, H, W) float32) -> list[Instances]`` (input-pixel coordinates).
        scale: the image is resized by this factor before the model (cell size as in training);
            results come back in original coordinates.
        tile_size, overlap: tile edge and minimum overlap in *model-input* pixels. The overlap should
            exceed the model's crop size (96 in the paper) plus a few pixels so that every kept cell
            was seen whole.
        batch_size: tiles per forward pass.
        device: "cpu", "cuda", "cuda:1" or "auto".
        precision: "fp32" or "bf16" (torch.autocast with bfloat16).
        score_threshold, min_area, mask_threshold: for label images (``predict``).
        in_channels: the model's channel count; images are converted when it differs (None: as is).
        dedup_distance: instances from two tiles closer than this (model-input pixels) are duplicates.
        max_overlap: mask NMS (:mod:`weakseg.nn.mask_nms`): a detection whose mask has an IoU above this
            with the pixels a better detection of the same tile holds is dropped; 1 keeps every detection.
        nan_policy: "background" (default): NaN / infinite pixels are reported with an
            :class:`InputWarning` naming the image and predicted as a flat region at the image's mean
            level; "error": such an image raises :class:`~weakseg.errors.DataError`.
        sizer: an :class:`~weakseg.inference.scale.ImageSizer`; one with a size model resizes each image
            by its own estimated cell size instead of ``scale`` (see :meth:`for_image`).

    Tiles (and small images) without signal (see :func:`weakseg.data.normalize.has_signal`: zero,
    constant, near-constant or non-finite throughout) never reach the model and give no cells, so a
    blank image costs one read, not a forward pass per tile; detections whose mask covers no signal
    (a flat part of a tile that has signal elsewhere) are dropped (:func:`~weakseg.inference.adapt.drop_flat`).
    """

    def __init__(
        self,
        model: Any,
        *,
        scale: float = 1.0,
        tile_size: int = 1024,
        overlap: int = 128,
        batch_size: int = 4,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        score_threshold: float = 0.5,
        min_area: int = 0,
        mask_threshold: float = 0.5,
        in_channels: int | None = None,
        dedup_distance: float = 8.0,
        max_overlap: float = DEFAULT_MAX_OVERLAP,
        nan_policy: str = "background",
        sizer: Any = None,
    ) -> None:
        if nan_policy not in NAN_POLICIES:
            raise WeaksegError(f"nan_policy must be one of {', '.join(NAN_POLICIES)}, got {nan_policy!r}")
        if not (scale > 0 and math.isfinite(scale)):
            raise WeaksegError(f"scale must be a positive number, got {scale!r}")
        if precision not in PRECISIONS:
            raise WeaksegError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if tile_size < 32:
            raise WeaksegError(f"tile size must be at least 32 pixels, got {tile_size}")
        if not 0 <= overlap < tile_size:
            raise WeaksegError(f"overlap ({overlap}) must be in [0, tile size {tile_size})")
        if batch_size < 1:
            raise WeaksegError(f"batch size must be at least 1, got {batch_size}")
        if not 0.0 <= max_overlap <= 1.0:
            raise WeaksegError(f"max_overlap must be in [0, 1] (1 turns mask NMS off), got {max_overlap!r}")
        self.model = model
        self.scale = float(scale)
        self.tile_size = int(tile_size)
        self.overlap = int(overlap)
        self.batch_size = int(batch_size)
        self.device = resolve_device(device)
        self.precision = precision
        self.score_threshold = float(score_threshold)
        self.min_area = int(min_area)
        self.mask_threshold = float(mask_threshold)
        self.in_channels = in_channels
        self.dedup_distance = float(dedup_distance)
        self.max_overlap = float(max_overlap)
        self.nan_policy = nan_policy
        self.sizer = sizer
        #: How the images of this predictor are resized (a :class:`~weakseg.inference.scale.Sizing`).
        self.sizing = sizer.fixed if sizer is not None else None
        self._warned_overlap = False
        if isinstance(model, torch.nn.Module):
            model.to(self.device)
            model.eval()

    # ---------------------------------------------------------------- model calls

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def run_model(self, batch: torch.Tensor) -> list[Instances]:
        """One forward pass on a standardised (B, C, H, W) batch; results as float32 on the CPU,
        after mask NMS (``max_overlap``)."""
        with torch.inference_mode(), self._autocast():
            out = self.model.predict(batch.to(self.device, non_blocking=True))
        return [
            mask_nms(
                Instances(
                    o.scores.detach().float().cpu(),
                    o.locations.detach().float().cpu(),
                    o.masks.detach().float().cpu(),
                    o.origins.detach().long().cpu(),
                    tuple(o.image_shape) if o.image_shape else tuple(batch.shape[-2:]),
                ),
                self.mask_threshold,
                self.max_overlap,
            )
            for o in out
        ]

    def _check_overlap(self, inst: Instances) -> None:
        if self._warned_overlap or len(inst) == 0:
            return
        crop = int(inst.masks.shape[-1])
        if self.overlap < crop + 2 * self.dedup_distance:
            self._warned_overlap = True
            warnings.warn(
                f"tile overlap {self.overlap} px is smaller than the model's crop size {crop} px plus "
                f"{2 * self.dedup_distance:g}; cells on tile seams may be cut (raise --overlap)",
                stacklevel=3,
            )

    # ---------------------------------------------------------------- tiles

    def plan(self, shape: tuple[int, int]) -> list[Tile]:
        """Tiles in original pixels for an image of ``shape``: the model sees ``tile_size`` pixels."""
        tile = max(1, round(self.tile_size / self.scale))
        overlap = min(tile - 1, round(self.overlap / self.scale))
        return plan_tiles(shape, tile, overlap)

    def _view(self, image: Any) -> ChannelFirst:
        if isinstance(image, np.ndarray | ChannelFirst) or hasattr(image, "shape"):
            if isinstance(image, torch.Tensor):
                image = image.detach().cpu().numpy()
            view = as_view(image)
        else:
            view = as_view(np.asarray(image))
        if self.in_channels is not None and view.shape[0] != self.in_channels:
            view = AdaptedView(view, self.in_channels)
        if view.shape[1] < 1 or view.shape[2] < 1:
            raise DataError(f"{view.name}: empty image of shape {view.shape}")
        return view

    def scan(self, view: ChannelFirst) -> ImageScan:
        """Whole-image statistics of ``view``; reports (or, with ``nan_policy="error"``, refuses)
        NaN / infinite pixels, naming the image."""
        scan = scan_image(view)
        if scan.nonfinite:
            what = f"{scan.nonfinite} of {scan.values} pixel values are NaN or infinite"
            if self.nan_policy == "error":
                raise DataError(
                    f"{view.name}: {what}; fix the image, or predict them as background "
                    "(--nan background; nan_policy='background' in Python)"
                )
            warnings.warn(
                f"{view.name}: {what}; they are predicted as background (--nan error refuses such images)",
                InputWarning,
                stacklevel=3,
            )
        return scan

    def _to_model(self, arrays: list[np.ndarray]) -> tuple[torch.Tensor, tuple[int, int]]:
        """Equally shaped standardised (C, h, w) arrays as a batch on the device, resized there by
        ``scale``; returns the batch and its (h, w)."""
        batch = torch.from_numpy(np.stack(arrays)).to(self.device, non_blocking=True)
        oh, ow = batch.shape[-2:]
        if self.scale != 1.0:
            oh, ow = max(1, round(oh * self.scale)), max(1, round(ow * self.scale))
            antialias = self.scale < 1.0
            batch = F.interpolate(batch, size=(oh, ow), mode="bilinear", align_corners=False, antialias=antialias)
        return batch, (int(oh), int(ow))

    def iter_tiles(
        self, image: Any, progress: Callable[[int, int], None] | None = None, binary: bool = False
    ) -> Iterator[tuple[int, Tile, Instances]]:
        """Yield (tile index, tile, instances it owns) with instances in original image coordinates.

        Tiles without signal are not run through the model and yield nothing. ``progress(done,
        total)`` is called after each batch of tiles. With ``binary`` the masks are thresholded at
        ``mask_threshold`` (bool, a quarter of the memory) as soon as they are in original coordinates.
        """
        view = self._view(image)
        _, h, w = view.shape
        scan = self.scan(view)
        min_range = scan.min_range()
        tiles = self.plan((h, w))
        tol = self.dedup_distance / self.scale if len(tiles) > 1 else 0.0
        for b0 in range(0, len(tiles), self.batch_size):
            group = list(enumerate(tiles[b0 : b0 + self.batch_size], start=b0))
            regions = [view.read(t.y0, t.y1, t.x0, t.x1) for _, t in group]
            live = [(k, r) for k, r in zip(group, regions, strict=True) if has_signal(r, min_range)]
            if live:
                batch, (oh, ow) = self._to_model([standardize(r, scan.mean, scan.std) for _, r in live])
                th, tw = live[0][0][1].shape
                for ((index, tile), region), inst in zip(live, self.run_model(batch), strict=True):
                    self._check_overlap(inst)
                    inst = rescale_instances(inst, oh / th, ow / tw, (th, tw))
                    inst = drop_flat(inst, region, min_range, self.mask_threshold).shift(tile.y0, tile.x0, (h, w))
                    if binary:
                        inst.masks = inst.masks >= self.mask_threshold
                    keep = torch.from_numpy(in_core(inst.locations.numpy(), tile, tol))
                    yield index, tile, inst if bool(keep.all()) else inst.select(keep)
            if progress is not None:
                progress(b0 + len(group), len(tiles))

    # ---------------------------------------------------------------- sizing

    @property
    def per_image(self) -> bool:
        """Whether every image is resized by its own estimated cell size (a size model)."""
        return self.sizer is not None and self.sizer.per_image

    def for_image(self, image: Any) -> Predictor:
        """This predictor at ``image``'s own factor when sizing per image (a copy), else itself."""
        if not self.per_image:
            return self
        sized = copy.copy(self)
        sized.sizer = None
        sized.sizing = self.sizer.size(self._view(image))
        sized.scale = float(sized.sizing.scale)
        return sized

    def sizing_info(self) -> dict[str, Any]:
        """``{"scale", "diameter", "sizing"}`` of the images this predictor resizes alike."""
        if self.sizing is not None:
            return self.sizing.to_dict()
        return {"scale": round(self.scale, 6), "diameter": None, "sizing": "scale"}

    # ---------------------------------------------------------------- public API

    def predict_instances(self, image: Any, progress: Callable[[int, int], None] | None = None) -> Instances:
        """All detections of ``image`` ((C, H, W), (H, W, C) RGB or (H, W), any dtype) in original coordinates.

        Every tile's own instances are concatenated and cross-tile duplicates removed. Masks stay
        dense crops (N, S, S), so for huge images prefer :meth:`predict`/:meth:`predict_labels`.
        """
        view = self._view(image)
        if self.per_image:
            return self.for_image(view).predict_instances(view, progress)
        _, h, w = view.shape
        parts, tile_ids = [], []
        for index, _tile, inst in self.iter_tiles(view, progress):
            parts.append(inst)
            tile_ids.append(np.full(len(inst), index))
        if not parts or sum(len(p) for p in parts) == 0:
            size = int(parts[0].masks.shape[-1]) if parts else 1
            return Instances.empty((h, w), size)
        merged = Instances.concat(parts, (h, w))  # tiles may return different crop sizes
        if len(parts) > 1:
            keep = cross_tile_duplicates(
                merged.locations.numpy().astype(np.float64),
                merged.scores.numpy(),
                np.concatenate(tile_ids),
                self.dedup_distance / self.scale,
            )
            merged = merged.select(torch.from_numpy(keep))
        return best_first(merged)

    def predict_labels(
        self, image: Any, out: Any = None, progress: Callable[[int, int], None] | None = None
    ) -> tuple[Any, LabelTable]:
        """Label image (int32; ``out`` if given, e.g. a zarr array) and a table of label scores and
        locations; label k has the k-th highest score among the pasted instances."""
        view = self._view(image)
        if self.per_image:
            return self.for_image(view).predict_labels(view, out, progress)
        _, h, w = view.shape
        stitcher = self._stitcher((h, w), out)
        for index, _tile, inst in self.iter_tiles(view, progress, binary=True):
            if len(inst):
                stitcher.add(
                    inst.scores.numpy(),
                    inst.locations.numpy(),
                    inst.masks.numpy(),
                    inst.origins.numpy(),
                    tile_index=index,
                )
        return stitcher.finish()

    def _stitcher(self, shape: tuple[int, int], out: Any = None) -> LabelStitcher:
        return LabelStitcher(
            shape,
            out,
            score_threshold=self.score_threshold,
            mask_threshold=self.mask_threshold,
            min_area=self.min_area,
            dedup_distance=self.dedup_distance / self.scale,
        )

    def labels_from_instances(self, inst: Instances) -> tuple[np.ndarray, LabelTable]:
        """Label image and table of one image's instances, pasted exactly as :meth:`predict_labels` does."""
        stitcher = self._stitcher(inst.image_shape)
        if len(inst):
            stitcher.add(
                inst.scores.numpy(),
                inst.locations.numpy(),
                (inst.masks >= self.mask_threshold).numpy(),
                inst.origins.numpy(),
                tile_index=0,
            )
        return stitcher.finish()

    def fits_one_tile(self, shape: Sequence[int]) -> bool:
        """Whether an image of (..., H, W) ``shape`` is predicted in one forward pass (batchable)."""
        return max(int(shape[-2]), int(shape[-1])) <= self.tile_size / self.scale

    def predict(self, image: Any) -> np.ndarray:
        """An int32 instance label image of ``image`` (0 background, 1..M by decreasing score)."""
        labels, _ = self.predict_labels(image)
        return np.asarray(labels)

    def predict_batch(self, images: Sequence[Any]) -> list[Instances]:
        """Instances of several images that fit in one tile, in batches of ``batch_size`` (for
        throughput on many small images of equal size); larger images go through tiling, images
        without signal give no instances without a forward pass. Sizing per image, each image is
        predicted at its own factor."""
        if self.per_image:
            return [self.for_image(image).predict_batch([image])[0] for image in images]
        results: list[Instances | None] = [None] * len(images)
        small: dict[tuple[int, ...], list[tuple[int, ChannelFirst, ImageScan]]] = {}
        for i, image in enumerate(images):
            view = self._view(image)
            if not self.fits_one_tile(view.shape):
                results[i] = self.predict_instances(view)
                continue
            scan = self.scan(view)
            region = view.read()
            if not has_signal(region, scan.min_range()):
                results[i] = Instances.empty(view.shape[1:], 1)
                continue
            small.setdefault(view.shape, []).append((i, region, scan))
        for shape, members in small.items():
            _, h, w = shape
            for b0 in range(0, len(members), self.batch_size):
                part = members[b0 : b0 + self.batch_size]
                batch, (oh, ow) = self._to_model([standardize(r, sc.mean, sc.std) for _, r, sc in part])
                for (i, region, sc), inst in zip(part, self.run_model(batch), strict=True):
                    inst = rescale_instances(inst, oh / h, ow / w, (h, w))
                    results[i] = best_first(drop_flat(inst, region, sc.min_range(), self.mask_threshold))
        return [r for r in results if r is not None]


# ------------------------------------------------------------------------------------------------
# Loading from a checkpoint
# ------------------------------------------------------------------------------------------------


def load_predictor(
    checkpoint: str | Path,
    *,
    scale: float | None = None,
    diameter: float | None = None,
    pixel_size: float | None = None,
    group: str | None = None,
    device: str | torch.device = "cpu",
    **kwargs: Any,
) -> Predictor:
    """A :class:`Predictor` for the principal model of a weakseg checkpoint.

    Images are resized the way the training images were unless told otherwise: ``scale`` (a
    factor), ``diameter`` (typical cell diameter of the new images, pixels) or ``pixel_size`` (of
    the new images); ``group`` picks one training group's factor when groups were resized
    differently (see :mod:`weakseg.inference.scale`). Given none of them, a checkpoint with a size model
    resizes each image by its own estimated cell diameter. ``mask_threshold`` defaults to the trained
    recipe's ``eval.mask_threshold`` (``auto``: the strategy's label-free one). Other keyword arguments go
    to :class:`Predictor`.
    """
    from weakseg.checkpoint import load_strategy
    from weakseg.inference.scale import image_sizer

    path = Path(checkpoint)
    dev = resolve_device(device)
    strategy, ckpt = load_strategy(str(path), device=str(dev))
    principal = strategy.principal()
    sizer = image_sizer(
        ckpt, principal, scale=scale, diameter=diameter, pixel_size=pixel_size, group=group, device=dev
    )
    kwargs["scale"] = sizer.fixed.scale
    kwargs["sizer"] = sizer
    summary = getattr(ckpt, "data_summary", None)
    in_channels = summary.get("in_channels") if isinstance(summary, dict) else getattr(summary, "in_channels", None)
    kwargs.setdefault("in_channels", in_channels)
    if kwargs.get("mask_threshold") is None:
        from weakseg.inference.mask_threshold import checkpoint_mask_threshold

        kwargs["mask_threshold"] = checkpoint_mask_threshold(strategy, ckpt)
    return Predictor(principal, device=dev, **kwargs)
