"""Augmented training crops over a weakseg store: :class:`CropDataset`, a map-style dataset of (image, crop).

An image contributes about (scaled area / crop area) crops per epoch, so a 20000 x 20000 slide is
visited in proportion to its size while a 500 x 700 image gives one crop. Each sample reads from zarr
only the region its (scaled) crop needs, resamples it (:mod:`weakseg.data.augment`), standardises it
with per-image statistics (computed once per image from a cheap subsample and cached) and transforms
points and masks with it.

The dataset is spawn-safe: it pickles a small index (ids, shapes, groups, scales, points) and opens
the store lazily inside each worker process; making a sample never imports torch.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
from scipy import ndimage

from weakseg.data.access import open_data_store
from weakseg.data.augment import (
    CropTransform,
    ImageStats,
    IntensityJitter,
    apply_intensity,
    cut_instances,
    draw_intensity,
    draw_transform,
)
from weakseg.data.sampling import Key, item_rng
from weakseg.errors import DataError
from weakseg.recipe import AugmentConfig

#: Images with at most this many pixels per channel get their statistics from all pixels.
FULL_STATS_PIXELS = 2048 * 2048
#: Number of pixel windows read to estimate the statistics of a larger image.
STATS_WINDOWS = 16
#: How often a crop location is redrawn when it contains no point.
CROP_RETRIES = 5


@attrs.frozen
class ImageEntry:
    """What a worker needs to know about one training image (small and picklable)."""

    image_id: str
    shape: tuple[int, int, int]  # (C, Y, X)
    group_index: int
    scale: float
    has_labels: bool
    n_crops: int
    #: Stored region (``regions/<name>``) where the points are complete; None: annotated everywhere.
    region: str | None = None
    #: The region's bounding box (y0, y1, x0, x1) in source pixels: crops are drawn to overlap it.
    region_box: tuple[int, int, int, int] | None = None
    #: Crop pixels within this distance of a point just outside the crop are not taught as background (the
    #: cell of that point reaches into the crop); 0 turns it off (``data.crop_edge_cells``).
    edge_radius: float = 0.0


@attrs.frozen
class CropSample:
    """One augmented crop, before batching."""

    image: np.ndarray  # (C, S, S) float32, standardised
    points: np.ndarray  # (N, 2) float32 (y, x) in the crop
    mask: np.ndarray | None  # (S, S) int32 instance ids, 0 = background or padding
    group: int
    image_id: str
    #: (S, S) uint8, 1 where the crop's points are complete (padding counts as annotated); None: all of it.
    annotated: np.ndarray | None = None


def crops_per_image(shape: Sequence[int], scale: float, crop_size: int) -> int:
    """How many crops an image contributes per epoch: its scaled area in crop areas, at least 1."""
    area = shape[-2] * shape[-1] * scale * scale
    return max(1, int(round(area / float(crop_size * crop_size))))


class CropDataset:
    """Map-style dataset of augmented crops; a key is ``(epoch, index)`` or a plain ``index``.

    ``index`` runs over all (image, crop) pairs; the crop's location and augmentation are drawn
    from ``item_rng(seed, epoch, index)``. The store is opened on first use in each process.
    Samples are numpy arrays and making them never imports torch, so data workers stay small
    (a torch DataLoader accepts the dataset too: it has ``__len__`` and ``__getitem__``).
    """

    def __init__(
        self,
        path: str | Path,
        entries: Sequence[ImageEntry],
        points: Sequence[np.ndarray],
        *,
        crop_size: int,
        augment: AugmentConfig | None,
        seed: int,
        label_margin: int = 64,
        stats_cache_size: int = 4096,
        region_margin: float = 0.0,
        keep_cut_points: bool = False,
    ) -> None:
        if len(entries) != len(points):
            raise ValueError("one point array per image entry is needed")
        if not entries:
            raise ValueError("CropDataset needs at least one image")
        self.path = str(path)
        self.entries = list(entries)
        self.crop_size = int(crop_size)
        self.augment = augment
        self.seed = int(seed)
        self.label_margin = int(label_margin)
        self.region_margin = float(region_margin)
        #: Keep the points of cells whose mask the crop edge cuts to under half (point supervision); by default
        #: they are dropped with their masks, as mask supervision needs.
        self.keep_cut_points = bool(keep_cut_points)
        self.stats_cache_size = int(stats_cache_size)
        # points of every image, sorted by y, in one array (cheap to pickle into spawned workers)
        sorted_pts = [_sort_by_y(p) for p in points]
        self._point_offsets = np.cumsum([0] + [len(p) for p in sorted_pts]).astype(np.int64)
        self._points = np.concatenate(sorted_pts).astype(np.float32) if sorted_pts else np.zeros((0, 2), np.float32)
        self._point_y = np.ascontiguousarray(self._points[:, 0])  # searched per crop
        self._crop_offsets = np.cumsum([0] + [e.n_crops for e in self.entries]).astype(np.int64)
        channels = {int(e.shape[0]) for e in self.entries}
        if len(channels) != 1:
            raise DataError(f"{path}: training images with different channel counts {sorted(channels)}")
        self.channels = channels.pop()
        self._store: Any = None
        self._stats: OrderedDict[str, ImageStats] = OrderedDict()
        self._arrays: OrderedDict[tuple[str, str], Any] = OrderedDict()

    # -- pickling: the store and caches stay behind ------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_store"] = None
        state["_stats"] = OrderedDict()
        state["_arrays"] = OrderedDict()
        return state

    def __len__(self) -> int:
        return int(self._crop_offsets[-1])

    @property
    def store(self) -> Any:
        if self._store is None:
            self._store = open_data_store(self.path)
        return self._store

    def locate(self, index: int) -> tuple[int, int]:
        """(image position, crop number within the image) of a dataset index."""
        if not 0 <= index < len(self):
            raise IndexError(f"crop index {index} out of range [0, {len(self)})")
        image = int(np.searchsorted(self._crop_offsets, index, side="right") - 1)
        return image, int(index - self._crop_offsets[image])

    def image_points(self, image: int) -> np.ndarray:
        """All points of an image (sorted by y)."""
        return self._points[self._point_offsets[image] : self._point_offsets[image + 1]]

    # -- the sample ----------------------------------------------------------------------------
    def __getitem__(self, key: Key | int) -> CropSample:
        epoch, index = key if isinstance(key, tuple) else (0, int(key))
        image_pos, _ = self.locate(int(index))
        entry = self.entries[image_pos]
        rng = item_rng(self.seed, int(epoch), int(index))
        points = self.image_points(image_pos)
        ys = self._point_y[self._point_offsets[image_pos] : self._point_offsets[image_pos + 1]]
        transform, inside = self._draw_crop(rng, entry, points, ys)
        jitter = draw_intensity(rng, self.augment) if self.augment is not None else IntensityJitter()
        image, mask, crop_points = self.render(entry, transform, points[inside], jitter)
        annotated = self.render_region(entry, transform) if entry.region is not None else None
        if entry.edge_radius > 0:
            annotated = self._edge_cells(points, ys, transform, entry.edge_radius, annotated)
        return CropSample(image, crop_points, mask, entry.group_index, entry.image_id, annotated)

    def _edge_cells(
        self,
        points: np.ndarray,
        ys: np.ndarray,
        transform: CropTransform,
        radius: float,
        annotated: np.ndarray | None,
    ) -> np.ndarray | None:
        """``annotated`` (all ones when None) with a disc of ``radius`` crop pixels around every point that
        lies outside the crop but within ``radius`` of it set to 0; None stays None when there is none."""
        y0, y1, x0, x1 = transform.window()
        reach = radius / min(transform.scale)
        near = _points_in_window(points, ys, (y0 - reach, y1 + reach, x0 - reach, x1 + reach))
        if not len(near):
            return annotated
        yx = transform.points_anywhere(points[near])
        n = transform.size
        outside = (yx[:, 0] < 0) | (yx[:, 0] >= n) | (yx[:, 1] < 0) | (yx[:, 1] >= n)
        if not outside.any():
            return annotated
        out = np.ones((n, n), np.uint8) if annotated is None else annotated.copy()
        r = int(np.ceil(radius))
        for cy, cx in yx[outside]:
            ya, yb = max(0, int(np.floor(cy)) - r), min(n, int(np.ceil(cy)) + r + 1)
            xa, xb = max(0, int(np.floor(cx)) - r), min(n, int(np.ceil(cx)) + r + 1)
            if ya >= yb or xa >= xb:
                continue
            gy = np.arange(ya, yb)[:, None] + 0.5 - cy
            gx = np.arange(xa, xb)[None, :] + 0.5 - cx
            out[ya:yb, xa:xb][gy * gy + gx * gx < radius * radius] = 0
        return out

    def _draw_crop(
        self, rng: np.random.Generator, entry: ImageEntry, points: np.ndarray, ys: np.ndarray
    ) -> tuple[CropTransform, np.ndarray]:
        """A crop transform whose window holds points (and overlaps the image's annotated region).

        The window is drawn uniformly; when it holds no point, or lies outside the region's bounding box, it
        is redrawn, up to ``CROP_RETRIES`` times, the last time around a randomly chosen point (in the
        region when it has any; so sparse images still train).
        """
        shape = (entry.shape[-2], entry.shape[-1])
        augment = self.augment if self.augment is not None else _NO_AUGMENT
        box = entry.region_box
        for attempt in range(CROP_RETRIES):
            around = None
            if attempt == CROP_RETRIES - 1:
                around = _anchor(rng, points, box)
            transform = draw_transform(rng, shape, self.crop_size, augment, entry.scale, contains=around)
            inside = _points_in_window(points, ys, transform.window())
            if box is not None and not _overlaps(transform.window(), box):
                continue
            if len(inside) or not len(points):
                break
        return transform, inside

    def render_region(self, entry: ImageEntry, transform: CropTransform) -> np.ndarray:
        """The crop's annotated mask (S, S) uint8 from the image's stored region (padding counts as annotated)."""
        reader = self._array(entry.image_id, what=f"regions/{entry.region}")
        if reader is None:
            raise DataError(f"{self.path}: image {entry.image_id!r} has no region {entry.region!r}; re-run training")
        y0, y1, x0, x1 = box = transform.source_box()
        if y1 <= y0 or x1 <= x0:
            return np.ones((self.crop_size, self.crop_size), np.uint8)
        out = transform.warp(np.asarray(reader[y0:y1, x0:x1]), box, order=0).astype(np.uint8)
        out[~transform.valid()] = 1
        if self.region_margin > 0 and not out.all():
            # the region shrunk by the margin: distance to the nearest unannotated pixel
            out = (ndimage.distance_transform_edt(out) > self.region_margin).astype(np.uint8)
        return out

    def render(
        self, entry: ImageEntry, transform: CropTransform, points: np.ndarray, jitter: IntensityJitter
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Read the regions ``transform`` needs and make (image (C,S,S) float32, mask (S,S) or None, points)."""
        array = self._array(entry.image_id)
        box = transform.source_box()
        y0, y1, x0, x1 = box
        region = np.asarray(array[:, y0:y1, x0:x1]) if y1 > y0 and x1 > x0 else None
        whole = region is not None and region.shape[-2:] == tuple(entry.shape[-2:])
        stats = self._image_stats(entry, array, region if whole else None)
        valid = transform.valid()
        if region is None:
            image = np.zeros((entry.shape[0], self.crop_size, self.crop_size), np.float32)
        else:
            image = apply_intensity(transform.warp(region, box, order=1), stats, jitter)
            image[:, ~valid] = 0.0

        mask = None
        keep = np.ones(len(points), bool)
        labels_arr = self._array(entry.image_id, what="labels") if entry.has_labels else None
        if labels_arr is not None:
            lbox = transform.source_box(margin=self.label_margin)
            ly0, ly1, lx0, lx1 = lbox
            if ly1 > ly0 and lx1 > lx0:
                labels = np.asarray(labels_arr[ly0:ly1, lx0:lx1])
                cut = cut_instances(labels, lbox, transform)
                mask = transform.warp(labels, lbox, order=0)
                mask[~valid] = 0
                if len(cut):
                    mask[np.isin(mask, cut)] = 0
                    if len(points) and not self.keep_cut_points:
                        iy = np.clip(np.floor(points[:, 0]).astype(np.int64) - ly0, 0, ly1 - ly0 - 1)
                        ix = np.clip(np.floor(points[:, 1]).astype(np.int64) - lx0, 0, lx1 - lx0 - 1)
                        keep = ~np.isin(labels[iy, ix], cut)
            else:
                mask = np.zeros((self.crop_size, self.crop_size), np.int32)
        crop_points, _ = transform.points(points[keep])
        return image, mask, crop_points

    # -- caches ----------------------------------------------------------------------------------
    def _array(self, image_id: str, what: str = "image") -> Any:
        """A (cached) region reader of an image, its label image (``labels``) or a stored region mask
        (``regions/<name>``); None when the image has none."""
        from weakseg.data.fastread import RegionReader

        key = (image_id, what)
        if key in self._arrays:
            self._arrays.move_to_end(key)
            return self._arrays[key]
        if what.startswith("regions/"):
            arr = self.store.region(image_id, what.split("/", 1)[1])
        else:
            arr = self.store.labels(image_id) if what == "labels" else self.store.image(image_id)
        reader = None if arr is None else RegionReader(arr)
        self._arrays[key] = reader
        if len(self._arrays) > 64:
            self._arrays.popitem(last=False)
        return reader

    def _image_stats(self, entry: ImageEntry, array: Any, whole: np.ndarray | None) -> ImageStats:
        stats = self._stats.get(entry.image_id)
        if stats is None:
            pixels = whole if whole is not None else sample_pixels(array)
            stats = ImageStats.from_pixels(pixels)
            self._stats[entry.image_id] = stats
            if len(self._stats) > self.stats_cache_size:
                self._stats.popitem(last=False)
        else:
            self._stats.move_to_end(entry.image_id)
        return stats


_NO_AUGMENT = AugmentConfig(
    flips=False,
    rot90=False,
    scale_range=(1.0, 1.0),
    anisotropic=False,
    brightness=0.0,
    contrast=(1.0, 1.0),
    gamma=(1.0, 1.0),
)


def _sort_by_y(points: np.ndarray | None) -> np.ndarray:
    pts = np.zeros((0, 2), np.float32) if points is None else np.asarray(points, np.float32).reshape(-1, 2)
    return pts[np.argsort(pts[:, 0], kind="stable")]


def pack_annotated(annotated: np.ndarray | None) -> tuple[tuple[int, int], np.ndarray] | None:
    """A crop's annotated mask as (shape, bits) (8x smaller to send between processes); None stays None."""
    if annotated is None:
        return None
    return (int(annotated.shape[0]), int(annotated.shape[1])), np.packbits(np.asarray(annotated, bool).ravel())


def _anchor(
    rng: np.random.Generator, points: np.ndarray, box: tuple[int, int, int, int] | None
) -> tuple[float, float] | None:
    """A source location for the last crop try: a random point (inside ``box`` when one is), or a random
    location in ``box`` when no point lies there; None without points or box."""
    if box is None:
        return tuple(points[int(rng.integers(len(points)))]) if len(points) else None
    y0, y1, x0, x1 = box
    ok = np.flatnonzero((points[:, 0] >= y0) & (points[:, 0] < y1) & (points[:, 1] >= x0) & (points[:, 1] < x1))
    if len(ok):
        return tuple(points[int(ok[rng.integers(len(ok))])])
    return float(rng.uniform(y0, y1)), float(rng.uniform(x0, x1))


def _overlaps(window: tuple[float, float, float, float], box: tuple[int, int, int, int]) -> bool:
    """Whether a source window (y0, y1, x0, x1) overlaps a pixel box (y0, y1, x0, x1)."""
    return window[0] < box[1] and window[1] > box[0] and window[2] < box[3] and window[3] > box[2]


def _points_in_window(points: np.ndarray, ys: np.ndarray, window: tuple[float, float, float, float]) -> np.ndarray:
    """Indices of the (y-sorted) points inside a source window (y0, y1, x0, x1); ``ys`` is their y column."""
    y0, y1, x0, x1 = window
    lo, hi = np.searchsorted(ys, [y0, y1], side="left")
    idx = np.arange(lo, hi)
    xs = points[lo:hi, 1]
    return idx[(xs >= x0) & (xs < x1)]


def sample_pixels(array: Any, budget: int = FULL_STATS_PIXELS, windows: int = STATS_WINDOWS) -> np.ndarray:
    """Pixels (C, K) for intensity statistics: the whole image when small, else chunk-aligned windows.

    The windows sit on a regular grid over the image and each one lies inside a single chunk, so a
    huge image costs ``windows`` chunk reads, never a full read.
    """
    c, h, w = array.shape[-3], array.shape[-2], array.shape[-1]
    if h * w <= budget:
        return np.asarray(array[...]).reshape(c, -1)
    chunks = getattr(array, "chunks", None) or (c, 256, 256)
    ch, cw = max(1, min(int(chunks[-2]), 128, h)), max(1, min(int(chunks[-1]), 128, w))
    cy, cx = max(1, h // max(1, int(chunks[-2]))), max(1, w // max(1, int(chunks[-1])))
    side = max(1, int(math.ceil(math.sqrt(windows))))
    parts = []
    for gy in range(side):
        for gx in range(side):
            by = min(cy - 1, (2 * gy + 1) * cy // (2 * side)) * int(chunks[-2])
            bx = min(cx - 1, (2 * gx + 1) * cx // (2 * side)) * int(chunks[-1])
            by, bx = min(by, h - ch), min(bx, w - cw)
            parts.append(np.asarray(array[:, by : by + ch, bx : bx + cw]).reshape(c, -1))
    return np.concatenate(parts, axis=1)

