"""The training stream: :func:`make_train_loader` turns a store into an endless iterator of :class:`Batch`.

:func:`build_train_dataset` indexes the training split (points from the label source, the run's
resize factors from :class:`~weakseg.data.scales.InputScale`, crops per image) into a
:class:`~weakseg.data.crops.CropDataset`. The order of samples and their augmentation come from
:mod:`weakseg.data.sampling`, so the batch of step k does not depend on resuming, workers or timing;
workers use zarr directly (no dask) and never import torch (:mod:`weakseg.data.pool`), which keeps
each of them near 100 MB.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np

from weakseg.components import Batch
from weakseg.data.access import no_images_message, open_data_store, select_images, store_path
from weakseg.data.crops import CropDataset, CropSample, ImageEntry, crops_per_image, pack_annotated
from weakseg.data.sampling import StreamSampler
from weakseg.data.scales import InputScale, compute_input_scale
from weakseg.errors import DataError
from weakseg.recipe import DataConfig


def collate_crops(samples: Sequence[CropSample]) -> Batch:
    """Stack crops into a :class:`Batch` of torch tensors (masks int64)."""
    images = np.stack([s.image for s in samples])
    masks = [s.mask for s in samples]
    meta = [(s.points, s.mask is not None, s.group, s.image_id, pack_annotated(s.annotated)) for s in samples]
    return _to_batch(images, masks, meta)


def _annotated_batch(meta: Sequence[tuple], size: tuple[int, int]) -> Any:
    """(B, S, S) float32 tensor, 1 where annotated (crops without a region: everywhere), or None when no
    crop of the batch has a region."""
    import torch

    packed = [m[4] if len(m) > 4 else None for m in meta]
    if all(p is None for p in packed):
        return None
    out = np.ones((len(meta), *size), np.float32)
    for b, p in enumerate(packed):
        if p is not None:
            shape, bits = p
            out[b] = np.unpackbits(bits, count=shape[0] * shape[1]).reshape(shape)
    return torch.from_numpy(out)


def _to_batch(images: np.ndarray, masks: Any, meta: Sequence[tuple], copy: bool = False) -> Batch:
    """Wrap arrays into a :class:`Batch` (images copied when ``copy``; masks always become int64 copies).

    ``meta`` holds (points, has mask, group, image id, packed annotated mask or None) per crop.
    Copies and conversions are done by numpy: torch would run them on its intra-op thread pool,
    whose spinning threads cost the training process several ms of CPU per crop.
    """
    import torch

    return Batch(
        image=torch.from_numpy(images.copy() if copy else images),
        points=[torch.from_numpy(np.asarray(m[0], np.float32).reshape(-1, 2)) for m in meta],
        masks=[torch.from_numpy(np.asarray(masks[b]).astype(np.int64)) if m[1] else None for b, m in enumerate(meta)],
        group=torch.tensor([m[2] for m in meta], dtype=torch.int64),
        image_ids=[m[3] for m in meta],
        annotated=_annotated_batch(meta, tuple(images.shape[-2:])),
    )


def build_train_dataset(
    cfg: DataConfig, *, seed: int, scale: InputScale | None = None, points_only: bool = False
) -> CropDataset:
    """Index the training split: points from ``cfg.label_source``, resize factors, crops per image.

    ``points_only``: the strategy trains from points alone, so ``data.crop_edge_cells: auto`` keeps the
    points of cells cut by the crop edge and spares the cells just outside it (see :func:`edge_cells`).

    ``scale``: the run's input scale (:func:`~weakseg.data.scales.compute_input_scale` with the same
    ``seed`` when not given). Images without any point cannot supervise a point-trained model: they are
    left out with a warning; if none is left, a DataError says so.
    """
    from weakseg.data.labels import points_for
    from weakseg.data.partial import region_for

    path = store_path(cfg)
    store = open_data_store(path)
    infos = select_images(store, cfg.train_split, cfg.groups)
    if not infos:
        raise DataError(no_images_message(path, store, cfg.train_split, cfg.groups))
    if scale is None:
        scale = compute_input_scale(cfg, store, seed)
    groups = list(store.groups)
    ignore_edges = edge_cells(cfg, points_only) == "ignore"
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
        factor = scale.image_scale(info.image_id, info.group)
        radius = edge_radius(cfg, pts, factor) if ignore_edges else 0.0
        region = region_for(store, info, cfg.label_source) if cfg.use_regions else None
        box = store.region_attrs(info.image_id, region).get("bbox") if region is not None else None
        entries.append(
            ImageEntry(
                image_id=info.image_id,
                shape=shape,  # type: ignore[arg-type]
                group_index=groups.index(info.group) if info.group in groups else 0,
                scale=factor,
                has_labels=bool(info.has_labels),
                n_crops=crops_per_image(shape, factor, cfg.crop_size),
                region=region,
                region_box=tuple(int(v) for v in box) if box else None,  # type: ignore[arg-type]
                edge_radius=radius,
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
    if cfg.mask_images is not None:
        entries = keep_masks_of(entries, cfg.mask_images, seed)
    if cfg.mask_share is not None:
        entries = repeat_masked(entries, cfg.mask_share)
    margin = cfg.region_margin
    if margin is None:
        margin = 0.5 * cfg.target_cell_size if cfg.target_cell_size else 0.0
    return CropDataset(
        path,
        entries,
        points,
        crop_size=cfg.crop_size,
        augment=cfg.augment,
        seed=seed,
        region_margin=margin,
        keep_cut_points=ignore_edges,
    )


def edge_cells(cfg: DataConfig, points_only: bool) -> str:
    """``data.crop_edge_cells`` resolved: ``ignore`` or ``background`` (``auto`` by the strategy's kind)."""
    mode = getattr(cfg, "crop_edge_cells", "background")
    if mode == "auto":
        return "ignore" if points_only else "background"
    return mode


def edge_radius(cfg: DataConfig, points: np.ndarray, factor: float) -> float:
    """A cell radius in crop pixels: half of ``target_cell_size``, else half the image's point spacing."""
    if cfg.target_cell_size:
        return 0.5 * float(cfg.target_cell_size)
    from weakseg.data.cellsize import diameter_from_points

    spacing = diameter_from_points(points)
    return 0.5 * spacing * factor if spacing else 0.0


def keep_masks_of(entries: list[ImageEntry], count: int, seed: int) -> list[ImageEntry]:
    """``entries`` with the masks of only ``count`` of them (a seeded pick among those with masks) kept;
    the others become point-only images (``data.mask_images``)."""
    labelled = sorted(e.image_id for e in entries if e.has_labels)
    rng = np.random.default_rng([seed, 0x6D61736B])  # its own stream: the pick does not move crop sampling
    kept = set(rng.permutation(labelled)[:count].tolist()) if labelled else set()
    return [e if e.image_id in kept else attrs.evolve(e, has_labels=False) for e in entries]


def repeat_masked(entries: list[ImageEntry], share: float) -> list[ImageEntry]:
    """``entries`` with the crops of the images that have masks repeated so that they make about ``share``
    of all crops (``data.mask_share``); unchanged unless some images have masks and some do not."""
    masked = sum(e.n_crops for e in entries if e.has_labels)
    other = sum(e.n_crops for e in entries if not e.has_labels)
    if not masked or not other:
        return entries
    factor = share * other / ((1.0 - share) * masked)
    if factor <= 1.0:
        return entries
    return [attrs.evolve(e, n_crops=max(1, round(e.n_crops * factor))) if e.has_labels else e for e in entries]


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
    scale: InputScale | None = None,
    points_only: bool = False,
) -> TrainLoader:
    """An endless, deterministic stream of augmented, standardised training crops as :class:`Batch`.

    ``cfg.num_workers`` spawned worker processes read from the store (0: the calling process
    does); the batch of step k is the same whether training started at 0 or resumed at
    ``start_step``; ranks read disjoint shards. Call ``close()`` on the result (or use it in a
    ``with`` block) to stop the workers. ``scale``: the run's input scale (measured when not given).
    """
    dataset = build_train_dataset(cfg, seed=seed, scale=scale, points_only=points_only)
    sampler = StreamSampler(
        len(dataset), batch_size=batch_size, seed=seed, rank=rank, world_size=world_size, start_step=start_step
    )
    return TrainLoader(dataset, sampler, cfg.num_workers)
