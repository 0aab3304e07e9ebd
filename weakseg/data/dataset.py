"""Torch-facing data of a run: augmented training crops and whole evaluation images over a weakseg store.

The code lives in smaller modules; this one gathers their public names (the ones the engine,
evaluation and benchmarks import):

* :mod:`weakseg.data.access` - the recipe's store, image selection, :func:`data_summary`;
* :mod:`weakseg.data.scales` - cell diameters, per-group / per-image factors, :class:`InputScale`;
* :mod:`weakseg.data.evalimages` - :func:`iter_eval_images`, whole images for scoring;
* :mod:`weakseg.data.crops` - :class:`CropDataset`, the map-style dataset of augmented crops;
* :mod:`weakseg.data.loader` - :func:`make_train_loader`, the deterministic endless batch stream.
"""

from __future__ import annotations

from weakseg.data.access import data_summary, store_path
from weakseg.data.crops import (
    CROP_RETRIES,
    FULL_STATS_PIXELS,
    STATS_WINDOWS,
    CropDataset,
    CropSample,
    ImageEntry,
    crops_per_image,
    sample_pixels,
)
from weakseg.data.evalimages import EvalImage, iter_eval_images
from weakseg.data.loader import TrainLoader, build_train_dataset, collate_crops, make_train_loader
from weakseg.data.scales import (
    InputScale,
    compute_input_scale,
    input_scale_info,
    measure_image_diameters,
    resolve_group_scales,
    resolve_image_scales,
)

__all__ = [
    "CROP_RETRIES",
    "FULL_STATS_PIXELS",
    "STATS_WINDOWS",
    "CropDataset",
    "CropSample",
    "EvalImage",
    "ImageEntry",
    "InputScale",
    "TrainLoader",
    "build_train_dataset",
    "collate_crops",
    "compute_input_scale",
    "crops_per_image",
    "data_summary",
    "input_scale_info",
    "iter_eval_images",
    "make_train_loader",
    "measure_image_diameters",
    "resolve_group_scales",
    "resolve_image_scales",
    "sample_pixels",
    "store_path",
]
