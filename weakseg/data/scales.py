"""How much a run resizes its images: cell diameters, per-group and per-image factors, :class:`InputScale`.

A model segments cells of about the size it was trained on. ``data.target_cell_size`` resizes the
images of each group so that their typical cell diameter becomes the target (``data.rescale: image``:
each training image by its own diameter); ``data.group_scales`` fixes a group's factor instead.

A run measures this once, with :func:`compute_input_scale`, and hands the same :class:`InputScale` to
the training loader, to the evaluation images and to its checkpoints, so that the model is trained,
scored and later applied at one set of factors (prediction reads them from the checkpoint:
:mod:`weakseg.inference.scale`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from weakseg.data.access import open_data_store, select_images, store_path
from weakseg.recipe import DataConfig

RESCALE_MODES = ("group", "image")

_DIAMETER_CACHE: dict[tuple[Any, ...], dict[str, tuple[str, float]]] = {}


def measure_image_diameters(cfg: DataConfig, store: Any = None, seed: int = 0) -> dict[str, tuple[str, float]]:
    """``{image_id: (group, typical cell diameter)}`` for the training split plus the images of groups
    absent from it (see :mod:`weakseg.data.cellsize` for how a diameter is measured); images whose
    size cannot be measured are left out. Cached per process."""
    from weakseg.data import cellsize
    from weakseg.data.labels import points_for

    store = store if store is not None else open_data_store(store_path(cfg))
    key = (str(Path(store.path).resolve()), cfg.train_split, repr(cfg.label_source), seed)
    if key in _DIAMETER_CACHE:
        return dict(_DIAMETER_CACHE[key])
    infos = select_images(store, cfg.train_split, ())
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

    store = store if store is not None else open_data_store(store_path(cfg))
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
    store = store if store is not None else open_data_store(store_path(cfg))
    return {
        image_id: float(cfg.target_cell_size) / d
        for image_id, (group, d) in measure_image_diameters(cfg, store, seed).items()
        if group not in cfg.group_scales and d > 0
    }


def _floats(mapping: Mapping[str, Any] | None) -> dict[str, float]:
    return {str(k): float(v) for k, v in (mapping or {}).items()}


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


@attrs.frozen(kw_only=True)
class InputScale:
    """The resize factors of one run, measured once and shared by training, evaluation and checkpoints.

    ``group_scales``: the factor of every group of the store (1.0 when not rescaled);
    ``trained_groups``: the groups of the training images (the ones a new image may be predicted as);
    ``image_scales``: with ``data.rescale: image``, the factor of each training image measured by its
    own cells (images not listed use their group's factor); ``cell_diameter``: the typical cell
    diameter in model-input pixels (``data.target_cell_size``; ``None`` when cell size is not
    normalised); ``pixel_size``: the pixel size of the training images when they all share one;
    ``rescale``: ``image`` when every training image was resized by its own cell size, else ``group``.
    """

    group_scales: Mapping[str, float] = attrs.field(factory=dict, converter=_floats)
    trained_groups: tuple[str, ...] = attrs.field(default=(), converter=lambda gs: tuple(str(g) for g in gs))
    image_scales: Mapping[str, float] = attrs.field(factory=dict, converter=_floats)
    cell_diameter: float | None = attrs.field(default=None, converter=_optional_float)
    pixel_size: float | None = attrs.field(default=None, converter=_optional_float)
    rescale: str = attrs.field(default="group", validator=attrs.validators.in_(RESCALE_MODES))

    def group_scale(self, group: str) -> float:
        """The factor of a group's images (1.0 for a group the run did not resize)."""
        return float(self.group_scales.get(group, 1.0))

    def image_scale(self, image_id: str, group: str) -> float:
        """The factor of one image: its own with ``data.rescale: image`` when measured, else its group's."""
        value = self.image_scales.get(image_id)
        return float(value) if value is not None else self.group_scale(group)

    @property
    def trained_group_scales(self) -> dict[str, float]:
        """The factors of the training groups (what prediction on new images chooses from)."""
        return {g: s for g, s in self.group_scales.items() if g in self.trained_groups}

    def to_dict(self) -> dict[str, Any]:
        """Plain types for a checkpoint (``torch.load(weights_only=True)`` reads them back).

        ``group_scales`` holds the training groups only (the key prediction reads, as in checkpoints
        that record nothing else); the other groups of the store are under ``other_group_scales``.
        """
        others = {g: s for g, s in self.group_scales.items() if g not in self.trained_groups}
        return {
            "group_scales": self.trained_group_scales,
            "other_group_scales": others,
            "image_scales": dict(self.image_scales),
            "cell_diameter": self.cell_diameter,
            "pixel_size": self.pixel_size,
            "rescale": self.rescale,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InputScale:
        """The inverse of :meth:`to_dict`; keys missing from older checkpoints take their defaults."""
        trained = _floats(d.get("group_scales"))
        return cls(
            group_scales={**_floats(d.get("other_group_scales")), **trained},
            trained_groups=tuple(trained),
            image_scales=d.get("image_scales") or {},
            cell_diameter=d.get("cell_diameter"),
            pixel_size=d.get("pixel_size"),
            rescale=d.get("rescale") or "group",
        )


def compute_input_scale(cfg: DataConfig, store: Any = None, seed: int = 0) -> InputScale:
    """Measure a run's :class:`InputScale` on its store (once per run: pass the result on).

    ``seed`` is the run's ``train.seed``: label sources that draw points (jittered or dropped points)
    give the diameters the training crops are made from.
    """
    store = store if store is not None else open_data_store(store_path(cfg))
    scales = resolve_group_scales(cfg, store, seed)
    infos = select_images(store, cfg.train_split, cfg.groups)
    sizes = {info.pixel_size for info in infos}
    pixel_size = next(iter(sizes)) if len(sizes) == 1 else None
    trained = [g for g in scales if g in {info.group for info in infos}] or list(scales)
    normalised = cfg.target_cell_size is not None
    return InputScale(
        group_scales=scales,
        trained_groups=tuple(trained),
        image_scales=resolve_image_scales(cfg, store, seed),
        cell_diameter=cfg.target_cell_size if normalised else None,
        pixel_size=pixel_size,
        rescale=cfg.rescale if normalised else "group",
    )


def input_scale_info(cfg: DataConfig, store: Any = None) -> dict[str, Any]:
    """:func:`compute_input_scale` as the checkpoint's dict (``InputScale.to_dict``).

    A new image with cells of diameter D is predicted at ``cell_diameter / D``; one of pixel size P
    at ``group scale * P / pixel_size`` (see :mod:`weakseg.inference.scale`).
    """
    return compute_input_scale(cfg, store).to_dict()
