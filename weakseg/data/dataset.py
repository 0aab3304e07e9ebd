"""Torch datasets over a weakseg store: augmented training crops and whole evaluation images.

Training (:func:`make_train_loader`) is a map-style dataset over *(image, crop)* indices: an image
contributes about (scaled area / crop area) crops per epoch, so a 20000 x 20000 slide is visited in
proportion to its size while a 500 x 700 image gives one crop. Each sample reads from zarr only
the region its (scaled) crop needs, resamples it (:mod:`weakseg.data.augment`), standardises it with
per-image statistics (computed once per image from a cheap subsample and cached) and transforms
points and masks with it.

The dataset is spawn-safe: it pickles a small index (ids, shapes, groups, scales, points) and opens
the store lazily inside each DataLoader worker; workers use zarr directly (no dask). The order of
samples and their augmentation come from :mod:`weakseg.data.sampling`, so the batch of step k does
not depend on resuming, workers or timing.
"""

from __future__ import annotations

import contextlib
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

try:  # torch is a dependency, but keep this module importable for light-weight uses
    from torch.utils.data import Dataset as _TorchDataset
except ImportError:  # pragma: no cover
    _TorchDataset = object  # type: ignore[assignment,misc]

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


_SCALE_CACHE: dict[tuple[Any, ...], dict[str, float]] = {}


def resolve_group_scales(cfg: DataConfig, store: Any = None, seed: int = 0) -> dict[str, float]:
    """Scale factor per group name: ``cfg.group_scales``, else ``cfg.target_cell_size`` / typical diameter.

    Diameters are measured on the training split (the scale a model was trained at is the scale it
    must be applied at); groups absent from it are measured on the other images of the store.
    Results are cached per process.
    """
    from weakseg.data import cellsize

    store = store if store is not None else _open(store_path(cfg))
    groups = list(store.groups)
    if cfg.target_cell_size is None or all(g in cfg.group_scales for g in groups):
        return cellsize.group_scales(groups, {}, target_cell_size=None, fixed=cfg.group_scales)
    fixed = tuple(sorted(cfg.group_scales.items()))
    key = (str(Path(store.path).resolve()), cfg.train_split, cfg.target_cell_size, fixed)
    if key in _SCALE_CACHE:
        return dict(_SCALE_CACHE[key])
    from weakseg.data.labels import points_for

    diameters: dict[str, list[float]] = {}
    infos = _select(store, cfg.train_split, ())
    train_groups = {info.group for info in infos}
    infos += [info for info in store.images if info.group not in train_groups]
    for info in infos:
        if info.group in cfg.group_scales:
            continue

        def labels(info: Any = info) -> np.ndarray | None:
            arr = store.labels(info.image_id)
            return None if arr is None else np.asarray(arr[...])

        def points(info: Any = info) -> np.ndarray | None:
            return points_for(store, info, cfg.label_source, seed)

        d = cellsize.image_diameter(info, labels, points)
        if d is not None:
            diameters.setdefault(info.group, []).append(d)
    missing = [g for g in groups if g not in cfg.group_scales and g not in diameters]
    if missing:
        warnings.warn(
            f"{store.path}: cannot measure the cell size of groups {missing} (no masks or points); "
            "they are not rescaled (set data.group_scales for them)",
            stacklevel=2,
        )
    scales = cellsize.group_scales(groups, diameters, target_cell_size=cfg.target_cell_size, fixed=cfg.group_scales)
    _SCALE_CACHE[key] = scales
    return dict(scales)


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
    scale: float = 1.0  # resize factor of the model input (per-group rescaling)


def iter_eval_images(cfg: DataConfig, split: str, max_images: int | None = None) -> Iterator[EvalImage]:
    """Yield the images of ``split`` (restricted to ``cfg.groups``) one at a time, in store order."""
    path = store_path(cfg)
    store = _open(path)
    infos = _select(store, split, cfg.groups)
    if not infos:
        raise DataError(_no_images_message(path, store, split, cfg.groups))
    scales = resolve_group_scales(cfg, store)
    groups = list(store.groups)
    for n, info in enumerate(infos):
        if max_images is not None and n >= max_images:
            return
        image = np.asarray(store.image(info.image_id)[...], dtype=np.float32)
        if image.ndim == 2:
            image = image[None]
        labels_arr = store.labels(info.image_id) if info.has_labels else None
        labels = None if labels_arr is None else np.asarray(labels_arr[...]).astype(np.int32, copy=False)
        yield EvalImage(
            image_id=info.image_id,
            image=image,
            labels=labels,
            group=info.group,
            group_index=groups.index(info.group) if info.group in groups else 0,
            scale=float(scales.get(info.group, 1.0)),
        )


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
    """One augmented crop, before batching (arrays are torch tensors)."""

    image: Any  # (C, S, S) float32
    points: Any  # (N, 2) float32
    mask: Any  # (S, S) int64 or None
    group: int
    image_id: str


def crops_per_image(shape: Sequence[int], scale: float, crop_size: int) -> int:
    """How many crops an image contributes per epoch: its scaled area in crop areas, at least 1."""
    area = shape[-2] * shape[-1] * scale * scale
    return max(1, int(round(area / float(crop_size * crop_size))))


class CropDataset(_TorchDataset):
    """Map-style dataset of augmented crops; a key is ``(epoch, index)`` or a plain ``index``.

    ``index`` runs over all (image, crop) pairs; the crop's location and augmentation are drawn
    from ``item_rng(seed, epoch, index)``. The store is opened on first use in each process.
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
        self._crop_offsets = np.cumsum([0] + [e.n_crops for e in self.entries]).astype(np.int64)
        self._store: Any = None
        self._stats: OrderedDict[str, ImageStats] = OrderedDict()
        self._arrays: OrderedDict[str, Any] = OrderedDict()

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
        import torch

        epoch, index = key if isinstance(key, tuple) else (0, int(key))
        image_pos, _ = self.locate(int(index))
        entry = self.entries[image_pos]
        rng = item_rng(self.seed, int(epoch), int(index))
        points = self.image_points(image_pos)
        transform, inside = self._draw_crop(rng, entry, points)
        jitter = draw_intensity(rng, self.augment) if self.augment is not None else IntensityJitter()
        image, mask, crop_points = self.render(entry, transform, points[inside], jitter)
        return CropSample(
            image=_owned_tensor(image, torch.float32),
            points=_owned_tensor(crop_points, torch.float32),
            mask=None if mask is None else _owned_tensor(mask, torch.int64),
            group=entry.group_index,
            image_id=entry.image_id,
        )

    def _draw_crop(
        self, rng: np.random.Generator, entry: ImageEntry, points: np.ndarray
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
            inside = _points_in_window(points, transform.window())
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
        labels_arr = self.store.labels(entry.image_id) if entry.has_labels else None
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
                mask = np.zeros((self.crop_size, self.crop_size), np.int64)
        crop_points, _ = transform.points(points[keep])
        return image, mask, crop_points

    # -- caches ----------------------------------------------------------------------------------
    def _array(self, image_id: str) -> Any:
        arr = self._arrays.get(image_id)
        if arr is None:
            arr = self.store.image(image_id)
            self._arrays[image_id] = arr
            if len(self._arrays) > 64:
                self._arrays.popitem(last=False)
        return arr

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


def _owned_tensor(array: np.ndarray, dtype: Any) -> Any:
    """Copy into a tensor that owns its memory.

    Tensors that wrap large numpy buffers (``torch.from_numpy``) and travel from a spawned worker
    made the worker abort at exit with torch 2.15 ("terminate called without an active exception");
    torch-allocated tensors do not, and the copy replaces the dtype conversion we need anyway.
    """
    import torch

    out = torch.empty(array.shape, dtype=dtype)
    out.numpy()[...] = array
    return out


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


def _points_in_window(points: np.ndarray, window: tuple[float, float, float, float]) -> np.ndarray:
    """Indices of the (y-sorted) points inside a source window (y0, y1, x0, x1)."""
    y0, y1, x0, x1 = window
    lo, hi = np.searchsorted(points[:, 0], [y0, y1], side="left")
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
    """Stack crops into a :class:`Batch` (runs inside the worker)."""
    import torch

    return Batch(
        image=torch.stack([s.image for s in samples]),
        points=[s.points for s in samples],
        masks=[s.mask for s in samples],
        group=torch.tensor([s.group for s in samples], dtype=torch.int64),
        image_ids=[s.image_id for s in samples],
    )


class SerializedBatch:
    """A :class:`Batch` pickled inside the worker's main thread (see :func:`collate_serialized`)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def load(self) -> Batch:
        import pickle

        return pickle.loads(self.data)


def collate_serialized(samples: Sequence[CropSample]) -> SerializedBatch:
    """Collate, then pickle the batch (tensors moved to shared memory) in the worker's main thread.

    A DataLoader worker hands results to a queue whose feeder *thread* pickles them; when the
    loader shuts down, the worker's interpreter exits while that thread may still be moving a large
    tensor into shared memory inside torch's C++ code, and Python's finalisation then aborts the
    worker ("terminate called without an active exception"; seen with torch 2.15 and Python 3.11),
    which the main process reports as a crashed worker. Pickling here leaves the feeder thread only
    bytes to send.
    """
    from multiprocessing.reduction import ForkingPickler

    return SerializedBatch(bytes(ForkingPickler.dumps(collate_crops(samples))))


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
        scale = float(scales.get(info.group, 1.0))
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
    """An endless iterator of :class:`Batch` over a torch DataLoader; ``close()`` stops its workers."""

    def __init__(self, dataset: CropDataset, sampler: StreamSampler, num_workers: int) -> None:
        from torch.utils.data import DataLoader

        self.dataset = dataset
        self.sampler = sampler
        extra: dict[str, Any] = {"collate_fn": collate_crops}
        if num_workers > 0:
            extra = {
                "collate_fn": collate_serialized,
                "multiprocessing_context": "spawn",
                "prefetch_factor": 2,
                "worker_init_fn": _worker_init,
            }
        self.loader = DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, **extra)
        self._iterator: Any = None
        self.step = sampler.start_step

    def __iter__(self) -> TrainLoader:
        return self

    def __next__(self) -> Batch:
        if self._iterator is None:
            self._iterator = iter(self.loader)
        batch = next(self._iterator)
        if isinstance(batch, SerializedBatch):
            batch = batch.load()
        self.step += 1
        return batch

    def close(self) -> None:
        """Shut the worker processes down (also done when the loader is garbage-collected)."""
        iterator, self._iterator = self._iterator, None
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()

    def __enter__(self) -> TrainLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        with contextlib.suppress(Exception):
            self.close()


def _worker_init(_: int) -> None:
    """Keep each worker to one compute thread: the workers already run in parallel."""
    import torch

    torch.set_num_threads(1)


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

    ``cfg.num_workers`` spawned workers read from the store; the batch of step k is the same
    whether training started at 0 or resumed at ``start_step``; ranks read disjoint shards.
    """
    dataset = build_train_dataset(cfg, seed=seed)
    sampler = StreamSampler(
        len(dataset), batch_size=batch_size, seed=seed, rank=rank, world_size=world_size, start_step=start_step
    )
    return TrainLoader(dataset, sampler, cfg.num_workers)
