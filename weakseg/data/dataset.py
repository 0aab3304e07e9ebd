"""Torch datasets over a weakseg store: augmented training crops and whole evaluation images.

Training (:func:`make_train_loader`) is a map-style dataset over *(image, crop)* indices: an image
contributes about (scaled area / crop area) crops per epoch, so a 20000 x 20000 slide is visited in
proportion to its size while a 500 x 700 image gives one crop. Each sample reads from zarr only
the region its (scaled) crop needs, resamples it (:mod:`weakseg.data.augment`), standardises it with
per-image statistics (computed once per image from a cheap subsample and cached) and transforms
points and masks with it.

The dataset is spawn-safe: it pickles a small index (ids, shapes, groups, scales, points) and opens
the store lazily inside each worker process; workers use zarr directly (no dask) and never import
torch (:mod:`weakseg.data.pool`), which keeps each of them near 100 MB. The order of samples and
their augmentation come from :mod:`weakseg.data.sampling`, so the batch of step k does not depend
on resuming, workers or timing.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from weakseg.components import Batch, DataSummary
from weakseg.data.augment import (
    CropTransform,
    ImageStats,
    IntensityJitter,
    apply_intensity,
    cut_instances,
    draw_intensity,
    draw_transform,
)
from weakseg.data.sampling import Key, StreamSampler, item_rng
from weakseg.errors import DataError
from weakseg.recipe import AugmentConfig, DataConfig

#: Images with at most this many pixels per channel get their statistics from all pixels.
FULL_STATS_PIXELS = 2048 * 2048
#: Number of pixel windows read to estimate the statistics of a larger image.
STATS_WINDOWS = 16
#: How often a crop location is redrawn when it contains no point.
CROP_RETRIES = 5


# ------------------------------------------------------------------------------------------
# Store access (the store and the label source are the data-io helper's; see common.md)
# ------------------------------------------------------------------------------------------


def store_path(cfg: DataConfig) -> Path:
    """The store of ``cfg``, generated first when it is synthetic and missing."""
    if cfg.synthetic is None:
        return Path(cfg.store)  # open_store names the path when it is missing or incomplete
    from weakseg.data.prepare import ensure_store

    return Path(ensure_store(cfg))


def _open(path: Path | str) -> Any:
    from weakseg.data.store import open_store

    return open_store(path)


def _select(store: Any, split: str, groups: Sequence[str]) -> list[Any]:
    return list(store.select(split=split, groups=tuple(groups)))


# ------------------------------------------------------------------------------------------
# Summary and per-group scales
# ------------------------------------------------------------------------------------------


def data_summary(cfg: DataConfig) -> DataSummary:
    """What a strategy may know about the training split: channels, groups, whether masks exist."""
    path = store_path(cfg)
    store = _open(path)
    infos = _select(store, cfg.train_split, cfg.groups)
    if not infos:
        raise DataError(_no_images_message(path, store, cfg.train_split, cfg.groups))
    channels = sorted({int(info.shape[0]) for info in infos})
    if len(channels) != 1:
        raise DataError(
            f"{path}: the {cfg.train_split!r} images have different channel counts {channels}; "
            "import them into separate stores or give them the same channels"
        )
    groups = tuple(store.groups) or ("all",)
    return DataSummary(
        in_channels=channels[0],
        n_groups=len(groups),
        group_names=groups,
        has_masks=all(bool(info.has_labels) for info in infos),
    )


def _no_images_message(path: Path, store: Any, split: str, groups: Sequence[str]) -> str:
    splits = sorted({info.split for info in store.images})
    where = f" of groups {list(groups)}" if groups else ""
    return (
        f"{path}: no images in split {split!r}{where} (the store has splits {splits} and groups "
        f"{list(store.groups)}); check data.train_split / data.val_split / data.groups in the recipe"
    )


_DIAMETER_CACHE: dict[tuple[Any, ...], dict[str, tuple[str, float]]] = {}


def measure_image_diameters(cfg: DataConfig, store: Any = None, seed: int = 0) -> dict[str, tuple[str, float]]:
    """``{image_id: (group, typical cell diameter)}`` for the training split plus the images of groups
    absent from it (see :mod:`weakseg.data.cellsize` for how a diameter is measured); images whose
    size cannot be measured are left out. Cached per process."""
    from weakseg.data import cellsize
    from weakseg.data.labels import points_for

    store = store if store is not None else _open(store_path(cfg))
    key = (str(Path(store.path).resolve()), cfg.train_split, repr(cfg.label_source), seed)
    if key in _DIAMETER_CACHE:
        return dict(_DIAMETER_CACHE[key])
    infos = _select(store, cfg.train_split, ())
    train_groups = {info.group for info in infos}
    infos += [info for info in store.images if info.group not in train_groups]
    out: dict[str, tuple[str, float]] = {}
    for info in infos:

        def labels(info: Any = info) -> np.ndarray | None:
            arr = store.labels(info.image_id)
            return None if arr is None else np.asarray(arr[...])

        def points(info: Any = info) -> np.ndarray | None:
            return points_for(store, info, cfg.label_source, seed)

        d = cellsize.image_diameter(info, labels, points)
        if d is not None:
            out[info.image_id] = (info.group, d)
    _DIAMETER_CACHE[key] = out
    return dict(out)


def resolve_group_scales(cfg: DataConfig, store: Any = None, seed: int = 0) -> dict[str, float]:
    """Scale factor per group name: ``cfg.group_scales``, else ``cfg.target_cell_size`` / typical diameter.

    Diameters are measured on the training split (the scale a model was trained at is the scale it
    must be applied at); groups absent from it are measured on the other images of the store.
    """
    from weakseg.data import cellsize

    store = store if store is not None else _open(store_path(cfg))
    groups = list(store.groups)
    if cfg.target_cell_size is None or all(g in cfg.group_scales for g in groups):
        return cellsize.group_scales(groups, {}, target_cell_size=None, fixed=cfg.group_scales)
    diameters: dict[str, list[float]] = {}
    for group, d in measure_image_diameters(cfg, store, seed).values():
        if group not in cfg.group_scales:
            diameters.setdefault(group, []).append(d)
    missing = [g for g in groups if g not in cfg.group_scales and g not in diameters]
    if missing:
        warnings.warn(
            f"{store.path}: cannot measure the cell size of groups {missing} (no masks or points); "
            "they are not rescaled (set data.group_scales for them)",
            stacklevel=2,
        )
    return cellsize.group_scales(groups, diameters, target_cell_size=cfg.target_cell_size, fixed=cfg.group_scales)


def resolve_image_scales(cfg: DataConfig, store: Any = None, seed: int = 0) -> dict[str, float]:
    """Scale factor per training image with ``data.rescale: image``: ``target_cell_size`` / the image's own
    cell diameter, so that every training cell has about the target size even when the set mixes
    magnifications. Images of a group in ``data.group_scales`` and images whose cells cannot be measured
    keep their group factor. Empty with ``data.rescale: group`` or without ``target_cell_size``."""
    if cfg.rescale != "image" or cfg.target_cell_size is None:
        return {}
    store = store if store is not None else _open(store_path(cfg))
    return {
        image_id: float(cfg.target_cell_size) / d
        for image_id, (group, d) in measure_image_diameters(cfg, store, seed).items()
        if group not in cfg.group_scales and d > 0
    }


def input_scale_info(cfg: DataConfig, store: Any = None) -> dict[str, Any]:
    """How training images were resized, for prediction on new images (stored in checkpoints).

    ``group_scales``: the factor each group's images were resized by (1.0 when not rescaled);
    ``cell_diameter``: the typical cell diameter in model-input pixels (``data.target_cell_size``,
    ``None`` when the run did not normalise cell size); ``pixel_size``: the pixel size of the
    training images when they all share one (``None`` otherwise). A new image with cells of
    diameter D is predicted at ``cell_diameter / D``; one of pixel size P at
    ``group scale * P / pixel_size``. ``rescale``: ``image`` when every training image was resized by
    its own cell size (new images then need their own ``diameter``), else ``group``.
    """
    store = store if store is not None else _open(store_path(cfg))
    scales = resolve_group_scales(cfg, store)
    infos = _select(store, cfg.train_split, cfg.groups)
    sizes = {info.pixel_size for info in infos}
    pixel_size = next(iter(sizes)) if len(sizes) == 1 else None
    trained_groups = {info.group for info in infos} or set(scales)
    return {
        "group_scales": {g: float(s) for g, s in scales.items() if g in trained_groups},
        "cell_diameter": None if cfg.target_cell_size is None else float(cfg.target_cell_size),
        "pixel_size": None if pixel_size is None else float(pixel_size),
        "rescale": cfg.rescale if cfg.target_cell_size is not None else "group",
    }

# ------------------------------------------------------------------------------------------
# Evaluation images
# ------------------------------------------------------------------------------------------


@attrs.frozen
class EvalImage:
    """One whole evaluation image: raw (not standardised) float32 (C, H, W) at original resolution."""

    image_id: str
    image: np.ndarray
    labels: np.ndarray | None  # (H, W) int32 ground truth
    group: str
    group_index: int
    scale: float = 1.0  # resize factor of the model input (per group, or per image with data.rescale: image)


def iter_eval_images(cfg: DataConfig, split: str, max_images: int | None = None) -> Iterator[EvalImage]:
    """Yield the images of ``split`` (restricted to ``cfg.groups``) one at a time, in store order."""
    path = store_path(cfg)
    store = _open(path)
    infos = _select(store, split, cfg.groups)
    if not infos:
        raise DataError(_no_images_message(path, store, split, cfg.groups))
    scales = resolve_group_scales(cfg, store)
    per_image = cfg.rescale == "image" and cfg.target_cell_size is not None
    groups = list(store.groups)
    for n, info in enumerate(infos):
        if max_images is not None and n >= max_images:
            return
        image = np.asarray(store.image(info.image_id)[...], dtype=np.float32)
        if image.ndim == 2:
            image = image[None]
        labels_arr = store.labels(info.image_id) if info.has_labels else None
        labels = None if labels_arr is None else np.asarray(labels_arr[...]).astype(np.int32, copy=False)
        scale = float(scales.get(info.group, 1.0))
        if per_image and info.group not in cfg.group_scales:
            scale = _known_image_scale(cfg, store, info, labels, scale)
        yield EvalImage(
            image_id=info.image_id,
            image=image,
            labels=labels,
            group=info.group,
            group_index=groups.index(info.group) if info.group in groups else 0,
            scale=scale,
        )


def _known_image_scale(cfg: DataConfig, store: Any, info: Any, labels: np.ndarray | None, default: float) -> float:
    """``target_cell_size`` / the image's own cell diameter (metadata, masks or points) for
    ``data.rescale: image``: evaluation at each image's known cell size, as Cellpose is scored with a
    given ``diameter``. ``default`` (the group factor) when the image's cells cannot be measured."""
    from weakseg.data import cellsize
    from weakseg.data.labels import points_for

    d = cellsize.image_diameter(info, lambda: labels, lambda: points_for(store, info, cfg.label_source, 0))
    return float(cfg.target_cell_size) / d if d else default


# ------------------------------------------------------------------------------------------
# Training crops
# ------------------------------------------------------------------------------------------


@attrs.frozen
class ImageEntry:
    """What a worker needs to know about one training image (small and picklable)."""

    image_id: str
    shape: tuple[int, int, int]  # (C, Y, X)
    group_index: int
    scale: float
    has_labels: bool
    n_crops: int


@attrs.frozen
class CropSample:
    """One augmented crop, before batching."""

    image: np.ndarray  # (C, S, S) float32, standardised
    points: np.ndarray  # (N, 2) float32 (y, x) in the crop
    mask: np.ndarray | None  # (S, S) int32 instance ids, 0 = background or padding
    group: int
    image_id: str


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
        self._arrays: OrderedDict[tuple[str, bool], Any] = OrderedDict()

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
            self._store = _open(self.path)
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
        return CropSample(image, crop_points, mask, entry.group_index, entry.image_id)

    def _draw_crop(
        self, rng: np.random.Generator, entry: ImageEntry, points: np.ndarray, ys: np.ndarray
    ) -> tuple[CropTransform, np.ndarray]:
        """A crop transform whose window holds points.

        The window is drawn uniformly; when it holds no point it is redrawn, up to ``CROP_RETRIES``
        times, the last time around a randomly chosen point (so sparse images still train).
        """
        shape = (entry.shape[-2], entry.shape[-1])
        augment = self.augment if self.augment is not None else _NO_AUGMENT
        for attempt in range(CROP_RETRIES):
            around = None
            if attempt == CROP_RETRIES - 1 and len(points):
                around = tuple(points[int(rng.integers(len(points)))])
            transform = draw_transform(rng, shape, self.crop_size, augment, entry.scale, contains=around)
            inside = _points_in_window(points, ys, transform.window())
            if len(inside) or not len(points):
                break
        return transform, inside

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
        labels_arr = self._array(entry.image_id, labels=True) if entry.has_labels else None
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
                    if len(points):
                        iy = np.clip(np.floor(points[:, 0]).astype(np.int64) - ly0, 0, ly1 - ly0 - 1)
                        ix = np.clip(np.floor(points[:, 1]).astype(np.int64) - lx0, 0, lx1 - lx0 - 1)
                        keep = ~np.isin(labels[iy, ix], cut)
            else:
                mask = np.zeros((self.crop_size, self.crop_size), np.int32)
        crop_points, _ = transform.points(points[keep])
        return image, mask, crop_points

    # -- caches ----------------------------------------------------------------------------------
    def _array(self, image_id: str, labels: bool = False) -> Any:
        """A (cached) region reader of an image or of its label image (None when it has none)."""
        from weakseg.data.fastread import RegionReader

        key = (image_id, labels)
        if key in self._arrays:
            self._arrays.move_to_end(key)
            return self._arrays[key]
        arr = self.store.labels(image_id) if labels else self.store.image(image_id)
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


# ------------------------------------------------------------------------------------------
# Batching and the loader
# ------------------------------------------------------------------------------------------


def collate_crops(samples: Sequence[CropSample]) -> Batch:
    """Stack crops into a :class:`Batch` of torch tensors (masks int64)."""
    images = np.stack([s.image for s in samples])
    masks = [s.mask for s in samples]
    meta = [(s.points, s.mask is not None, s.group, s.image_id) for s in samples]
    return _to_batch(images, masks, meta)


def _to_batch(
    images: np.ndarray, masks: Any, meta: Sequence[tuple[np.ndarray, bool, int, str]], copy: bool = False
) -> Batch:
    """Wrap arrays into a :class:`Batch` (images copied when ``copy``; masks always become int64 copies).

    Copies and conversions are done by numpy: torch would run them on its intra-op thread pool,
    whose spinning threads cost the training process several ms of CPU per crop.
    """
    import torch

    return Batch(
        image=torch.from_numpy(images.copy() if copy else images),
        points=[torch.from_numpy(np.asarray(pts, np.float32).reshape(-1, 2)) for pts, _, _, _ in meta],
        masks=[
            torch.from_numpy(np.asarray(masks[b]).astype(np.int64)) if has else None
            for b, (_, has, _, _) in enumerate(meta)
        ],
        group=torch.tensor([g for _, _, g, _ in meta], dtype=torch.int64),
        image_ids=[i for _, _, _, i in meta],
    )


def build_train_dataset(cfg: DataConfig, *, seed: int) -> CropDataset:
    """Index the training split: points from ``cfg.label_source``, per-group scales, crops per image.

    Images without any point cannot supervise a point-trained model: they are left out with a
    warning; if none is left, a DataError says so.
    """
    from weakseg.data.labels import points_for

    path = store_path(cfg)
    store = _open(path)
    infos = _select(store, cfg.train_split, cfg.groups)
    if not infos:
        raise DataError(_no_images_message(path, store, cfg.train_split, cfg.groups))
    scales = resolve_group_scales(cfg, store, seed)
    image_scales = resolve_image_scales(cfg, store, seed)
    groups = list(store.groups)
    entries, points, empty = [], [], []
    for info in infos:
        pts = points_for(store, info, cfg.label_source, seed)
        pts = np.zeros((0, 2), np.float32) if pts is None else np.asarray(pts, np.float32).reshape(-1, 2)
        if not len(pts):
            empty.append(info.image_id)
            continue
        shape = tuple(int(v) for v in info.shape)
        if len(shape) == 2:
            shape = (1, *shape)
        scale = float(image_scales.get(info.image_id, scales.get(info.group, 1.0)))
        entries.append(
            ImageEntry(
                image_id=info.image_id,
                shape=shape,  # type: ignore[arg-type]
                group_index=groups.index(info.group) if info.group in groups else 0,
                scale=scale,
                has_labels=bool(info.has_labels),
                n_crops=crops_per_image(shape, scale, cfg.crop_size),
            )
        )
        points.append(pts)
    source = cfg.label_source.type
    if empty:
        shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        warnings.warn(
            f"{path}: {len(empty)} training image(s) have no points from label source {source!r} and are "
            f"left out of point-supervised training: {shown}",
            stacklevel=2,
        )
    if not entries:
        raise DataError(
            f"{path}: no training image has any point from label source {source!r}; check data.label_source "
            "(and that the images have masks, points or a nuclear channel it can use)"
        )
    return CropDataset(path, entries, points, crop_size=cfg.crop_size, augment=cfg.augment, seed=seed)


class TrainLoader:
    """An endless iterator of :class:`Batch`; ``close()`` (or leaving a ``with`` block) stops its workers.

    With ``num_workers == 0`` crops are made in the calling process; otherwise a
    :class:`~weakseg.data.pool.WorkerPool` of spawned, torch-free processes renders them ahead.
    Either way the batch of step k is the same.
    """

    def __init__(self, dataset: CropDataset, sampler: StreamSampler, num_workers: int) -> None:
        self.dataset = dataset
        self.sampler = sampler
        self.num_workers = int(num_workers)
        self.step = sampler.start_step
        self.pool: Any = None

    def __iter__(self) -> TrainLoader:
        return self

    def __next__(self) -> Batch:
        if self.num_workers == 0:
            batch = collate_crops([self.dataset[key] for key in self.sampler.batch_at(self.step)])
        else:
            if self.pool is None:
                self.pool = self._start_pool()
            batch = self.pool.next(functools.partial(_to_batch, copy=True))
        self.step += 1
        return batch

    def _start_pool(self) -> Any:
        from weakseg.data.pool import WorkerPool

        return WorkerPool(
            self.dataset,
            self.sampler.batch_at,
            num_workers=self.num_workers,
            batch_size=self.sampler.batch_size,
            channels=self.dataset.channels,
            size=self.dataset.crop_size,
            start_step=self.step,
        )

    def close(self) -> None:
        """Stop the worker processes (a later ``next`` starts new ones at the current step)."""
        pool, self.pool = self.pool, None
        if pool is not None:
            pool.close()

    def __enter__(self) -> TrainLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        with contextlib.suppress(Exception):
            self.close()


def make_train_loader(
    cfg: DataConfig,
    *,
    batch_size: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    start_step: int = 0,
) -> TrainLoader:
    """An endless, deterministic stream of augmented, standardised training crops as :class:`Batch`.

    ``cfg.num_workers`` spawned worker processes read from the store (0: the calling process
    does); the batch of step k is the same whether training started at 0 or resumed at
    ``start_step``; ranks read disjoint shards. Call ``close()`` on the result (or use it in a
    ``with`` block) to stop the workers.
    """
    dataset = build_train_dataset(cfg, seed=seed)
    sampler = StreamSampler(
        len(dataset), batch_size=batch_size, seed=seed, rank=rank, world_size=world_size, start_step=start_step
    )
    return TrainLoader(dataset, sampler, cfg.num_workers)
