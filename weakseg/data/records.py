"""Reading and checking one :class:`~weakseg.components.ImageRecord` before it is written to a store.

An importer hands over loaders, not arrays; :func:`load_record` calls them, turns what they return
into (C, Y, X) images and (Y, X) planes, and checks that masks, nuclear stain and points belong to
the image (shape, integer ids, at least one cell, points finite and inside). Every failure is a
:class:`~weakseg.errors.DataError` naming the file, so ``--skip-bad`` can leave the image out and say why.
Large lazy inputs stay lazy (they are copied block by block by :func:`copy_into`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import numpy as np

from weakseg.data.points_io import check_points_inside
from weakseg.data.store import CHUNK, LAZY_COPY_PIXELS
from weakseg.errors import DataError


@attrs.frozen
class LoadedRecord:
    """The checked arrays of one record (numpy, or lazy arrays for large inputs)."""

    image: Any  # (C, Y, X)
    dtype: np.dtype  # the dtype the image is stored with
    labels: Any | None  # (Y, X) instance ids
    nuclei: Any | None  # (Y, X)
    points: np.ndarray | None  # (N, 2) given points (importer CSV / locations)
    files: Mapping[str, str]  # which file each part came from (for messages)
    image_file: str

    @property
    def shape(self) -> tuple[int, int, int]:
        c, h, w = (int(v) for v in self.image.shape)
        return c, h, w


def load_record(record: Any, lazy_pixels: int = LAZY_COPY_PIXELS) -> LoadedRecord:
    """Call the record's loaders and check that everything belongs to its image."""
    files = dict(record.metadata.get("files", {})) if record.metadata else {}
    image_file = str(files.get("image", record.source))
    image = _materialize(_as_cyx(call_loader(record.load_image, image_file, "image"), image_file), lazy_pixels)
    _, h, w = (int(v) for v in image.shape)
    dtype = store_dtype(image.dtype)
    labels = nuclei = points = None
    if record.load_labels is not None:
        labels = _load_labels(record, files.get("labels", record.source), image_file, (h, w), lazy_pixels)
    if record.load_nuclei is not None:
        nuclei_file = files.get("nuclei", record.source)
        nuclei = _materialize(call_loader(record.load_nuclei, nuclei_file, "nuclear image"), lazy_pixels)
        if isinstance(nuclei, np.ndarray) and nuclei.ndim == 3 and nuclei.shape[0] == 1:
            nuclei = nuclei[0]
        check_plane(nuclei, (h, w), nuclei_file, image_file, "nuclear image")
    if record.load_points is not None:
        points = _load_points(record, files.get("points", record.source), image_file, (h, w))
    return LoadedRecord(image, dtype, labels, nuclei, points, files, image_file)


def _load_labels(record: Any, label_file: str, image_file: str, shape: tuple[int, int], lazy_pixels: int) -> Any:
    """The record's instance labels: 2-D, the image's size, integer ids in int32 range, not all zero."""
    labels = _materialize(call_loader(record.load_labels, label_file, "label image"), lazy_pixels)
    check_plane(labels, shape, label_file, image_file, "label image")
    if np.dtype(labels.dtype).kind not in "uib" and not (
        isinstance(labels, np.ndarray) and np.array_equal(labels, np.round(labels))
    ):
        raise DataError(f"{label_file}: the label image holds non-integer values; expected instance ids")
    if isinstance(labels, np.ndarray):
        if labels.size and (labels.min() < 0 or labels.max() > np.iinfo(np.int32).max):
            raise DataError(f"{label_file}: label ids must lie in 0 .. 2^31-1")
        labels = labels.astype(np.int32, copy=False)
        if not labels.any():
            raise DataError(
                f"{label_file}: the label image has no cells (all zero); remove the image or use --skip-bad"
            )
    return labels


def _load_points(record: Any, points_file: str, image_file: str, shape: tuple[int, int]) -> np.ndarray:
    """The record's given points: finite, inside the image, at least one."""
    from weakseg.components import as_points

    given = as_points(call_loader(record.load_points, points_file, "points"))
    check_points_inside(given, shape, points_file)
    if len(given) == 0:
        raise DataError(f"{points_file}: no points for image {image_file}; an image needs at least one cell")
    return given


def call_loader(loader: Callable[[], Any], file: str, what: str) -> Any:
    """Call an importer's loader; a read failure becomes a DataError naming ``file``."""
    try:
        return loader()
    except DataError:
        raise
    except (OSError, ValueError, TypeError, KeyError, IndexError, RuntimeError) as exc:
        raise DataError(f"{file}: cannot read the {what} ({type(exc).__name__}: {exc})") from None


def check_plane(arr: Any, shape: tuple[int, int], file: str, image_file: str, what: str) -> None:
    """A label or nuclear plane must be 2-D and the size of its image."""
    got = tuple(int(v) for v in arr.shape)
    if len(got) != 2:
        raise DataError(f"{file}: the {what} has shape {got}; expected a single-channel 2-D image")
    if got != shape:
        raise DataError(
            f"{file}: the {what} has shape {got[0]}x{got[1]} but its image {image_file} is {shape[0]}x{shape[1]}; "
            "check that the files belong together"
        )


def _as_cyx(image: Any, source: str) -> Any:
    """(Y, X) images become (1, Y, X) (lazy ones through a thin view); anything else but 3-D is an error."""
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = image[None]
        if image.ndim != 3:
            raise DataError(f"{source}: expected an image (C, Y, X) or (Y, X), got shape {image.shape}")
        return image
    shape = tuple(getattr(image, "shape", ()))
    if len(shape) == 2:

        class _Expand:  # (Y, X) lazy -> (1, Y, X)
            def __init__(self, inner: Any) -> None:
                self.inner, self.shape, self.dtype, self.ndim = inner, (1, *shape), np.dtype(inner.dtype), 3

            def __getitem__(self, key: Any) -> np.ndarray:
                key = key if isinstance(key, tuple) else (key,)
                key = key + (slice(None),) * (3 - len(key))
                return np.asarray(self.inner[key[1:]])[None][key[0]]

        return _Expand(image)
    if len(shape) != 3:
        raise DataError(f"{source}: expected an image (C, Y, X) or (Y, X), got shape {shape}")
    return image


def store_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype an array is stored with: bool as uint8, float64 as float32, others unchanged."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return np.dtype(np.uint8)
    if dtype.kind == "f" and dtype.itemsize > 4:
        return np.dtype(np.float32)
    if dtype.kind not in "uif":
        raise DataError(f"unsupported image data type {dtype}")
    return dtype


def _materialize(arr: Any, limit: int) -> Any:
    """Small lazy inputs are read whole; large ones stay lazy."""
    if isinstance(arr, np.ndarray):
        return arr
    shape = tuple(arr.shape)
    if shape[-1] * shape[-2] <= limit:
        return np.asarray(arr[(slice(None),) * len(shape)])
    return arr


def copy_into(target: Any, source: Any) -> None:
    """Copy a (possibly lazy, possibly huge) array into a zarr array, in parallel chunk-aligned blocks."""
    if isinstance(source, np.ndarray):
        target[...] = source
        return
    import dask.array as da

    shape = tuple(source.shape)
    chunks = (*shape[:-2], min(shape[-2], CHUNK * 2), min(shape[-1], CHUNK * 8))
    lazy = da.from_array(source, chunks=chunks, asarray=True, lock=False, fancy=False)
    da.store(lazy, target, lock=False, scheduler="threads")


def ome_multiscales(name: str, axes: list[dict[str, str]], scale: list[float]) -> dict[str, Any]:
    """One NGFF 0.5 ``multiscales`` entry with a single level ``0``."""
    return {
        "name": name,
        "axes": axes,
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
    }


def space_axes(pixel_size: float | None) -> list[dict[str, str]]:
    """NGFF y and x axes, in micrometres when the pixel size is known."""
    out = []
    for name in ("y", "x"):
        ax = {"name": name, "type": "space"}
        if pixel_size is not None:
            ax["unit"] = "micrometer"
        out.append(ax)
    return out


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON types (anything else as its string), for zarr attributes."""
    return json.loads(json.dumps(value, default=str))
