"""Whole evaluation images of a split, raw and at original resolution, with the factor to predict them at.

The factor comes from the run's :class:`~weakseg.data.scales.InputScale` (the one its training loader
and checkpoints use); with ``data.rescale: image`` an image the run did not measure (a validation or
test image) is scored at its own known cell size, as Cellpose is scored with a given ``diameter``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs
import numpy as np

from weakseg.data.access import no_images_message, open_data_store, select_images, store_path
from weakseg.data.scales import InputScale, compute_input_scale
from weakseg.errors import DataError
from weakseg.recipe import DataConfig


@attrs.frozen
class EvalImage:
    """One whole evaluation image: raw (not standardised) float32 (C, H, W) at original resolution."""

    image_id: str
    image: np.ndarray
    labels: np.ndarray | None  # (H, W) int32 ground truth
    group: str
    group_index: int
    scale: float = 1.0  # resize factor of the model input (per group, or per image with data.rescale: image)


def iter_eval_images(
    cfg: DataConfig,
    split: str,
    max_images: int | None = None,
    *,
    scale: InputScale | None = None,
    measured: bool = False,
) -> Iterator[EvalImage]:
    """Yield the images of ``split`` (restricted to ``cfg.groups``) one at a time, in store order.

    ``scale``: the run's input scale (measured on the store when not given, as for a checkpoint
    evaluated on its own). ``measured``: each image resized by its own cell diameter (masks, else
    points), whatever the run's rescaling, as if its true diameter were given.
    """
    path = store_path(cfg)
    store = open_data_store(path)
    infos = select_images(store, split, cfg.groups)
    if not infos:
        raise DataError(no_images_message(path, store, split, cfg.groups))
    if scale is None:
        scale = compute_input_scale(cfg, store)
    per_image = (measured or scale.rescale == "image") and cfg.target_cell_size is not None
    groups = list(store.groups)
    for n, info in enumerate(infos):
        if max_images is not None and n >= max_images:
            return
        image = np.asarray(store.image(info.image_id)[...], dtype=np.float32)
        if image.ndim == 2:
            image = image[None]
        labels_arr = store.labels(info.image_id) if info.has_labels else None
        labels = None if labels_arr is None else np.asarray(labels_arr[...]).astype(np.int32, copy=False)
        factor = scale.image_scale(info.image_id, info.group)
        if per_image and (measured or (info.image_id not in scale.image_scales and info.group not in cfg.group_scales)):
            factor = _known_image_scale(cfg, store, info, labels, factor)
        yield EvalImage(
            image_id=info.image_id,
            image=image,
            labels=labels,
            group=info.group,
            group_index=groups.index(info.group) if info.group in groups else 0,
            scale=factor,
        )


def _known_image_scale(cfg: DataConfig, store: Any, info: Any, labels: np.ndarray | None, default: float) -> float:
    """``target_cell_size`` / the image's own cell diameter (metadata, masks or points) for
    ``data.rescale: image``: evaluation at each image's known cell size, as Cellpose is scored with a
    given ``diameter``. ``default`` (the group factor) when the image's cells cannot be measured."""
    from weakseg.data import cellsize
    from weakseg.data.labels import points_for

    d = cellsize.image_diameter(info, lambda: labels, lambda: points_for(store, info, cfg.label_source, 0))
    return float(cfg.target_cell_size) / d if d else default
