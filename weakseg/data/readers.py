"""Reading image files as (C, Y, X) arrays; large TIFFs lazily, region by region.

TIFF files go through tifffile (``aszarr``: a chunked view of the file, so a 20000 x 20000 image is
never decoded whole; LZW and deflate compression are decoded by imagecodecs); PNG, JPEG, BMP and
other formats through Pillow (these are small by nature). Every failure to read raises
:class:`~weakseg.errors.DataError` naming the file.

This module is also the one home of the axis rules, for training data and for prediction alike
(weakseg.inference.io and ``weakseg.load(...).predict(array)`` use them): :func:`channel_layout`
for stored axis names (TIFF, OME-Zarr) and :func:`guess_axes` for arrays without names, which reads
an (H, W, 3) RGB array and a (C, H, W) array both the right way round.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np

from weakseg.errors import DataError

#: Files with these suffixes are treated as images by the importers.
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
TIFF_SUFFIXES = (".tif", ".tiff")
#: Images with more pixels than this (per channel) are read lazily when the format allows.
LAZY_PIXELS = 8192 * 8192
#: At most this many channels (after merging non-spatial axes) are accepted.
MAX_CHANNELS = 16


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


# ------------------------------------------------------------------------------------------
# Axis rules (the one place that decides which axes of a stored image are channels)
# ------------------------------------------------------------------------------------------

#: Non-spatial axes that are never channels: more than one plane along them is a stack, not an image.
STACK_AXES = "tz"


def channel_layout(axes: str, shape: tuple[int, ...], name: str | Path) -> tuple[list[int], int, int]:
    """Positions of the non-spatial axes, of Y and of X in an axes string (tifffile or OME, any case).

    Every non-spatial axis is read as channels (they are merged, in order, into one channel axis)
    except time and depth: a ``t`` or ``z`` axis longer than 1 is a stack and refused. At most
    :data:`MAX_CHANNELS` channels are accepted.
    """
    low = axes.lower()
    if len(low) != len(shape) or len(set(low)) != len(low):
        raise DataError(f"{name}: array of shape {tuple(shape)} does not match axes {axes!r}")
    if "y" not in low or "x" not in low:
        raise DataError(f"{name}: the image has axes {axes!r} without Y and X; export it as a 2-D image")
    for a, n in zip(low, shape, strict=True):
        if a in STACK_AXES and n != 1:
            raise DataError(
                f"{name}: axis {a!r} has length {n} (axes {axes!r}, shape {tuple(shape)}); only 2-D images "
                "with channels are supported: save one plane per file"
            )
    y, x = low.index("y"), low.index("x")
    other = [i for i in range(len(low)) if i not in (y, x)]
    n_channels = int(np.prod([shape[i] for i in other])) if other else 1
    if n_channels > MAX_CHANNELS:
        raise DataError(
            f"{name}: the image has axes {axes!r} and shape {tuple(shape)}, i.e. {n_channels} planes; weakseg reads "
            f"2-D images with at most {MAX_CHANNELS} channels: export one plane (or one time point) per file"
        )
    return other, y, x


def to_cyx(block: np.ndarray, other: list[int], y: int, x: int) -> np.ndarray:
    """A block read with every axis kept, as (C, Y, X) (non-spatial axes merged into C)."""
    block = np.transpose(block, [*other, y, x])
    return block.reshape((-1, *block.shape[-2:]))


def guess_axes(shape: tuple[int, ...], name: str | Path) -> str:
    """Axes of an array without axis names (numpy, plain zarr): (Y, X); (C, Y, X) with at most
    :data:`MAX_CHANNELS` channels first; (Y, X, C) with at most 4 last (RGB, RGBA) when the first
    axis is longer; leading singleton axes (T, Z...) are allowed."""
    shape = tuple(int(v) for v in shape)
    if len(shape) == 2:
        return "yx"
    if len(shape) == 3:
        if shape[-1] <= 4 < shape[0]:
            return "yxc"
        if shape[0] <= MAX_CHANNELS:
            return "cyx"
        if shape[-1] <= MAX_CHANNELS:
            return "yxc"
    if 3 < len(shape) <= 9 and all(n == 1 for n in shape[: len(shape) - 3]):
        lead = len(shape) - 3  # leading singleton axes (t, z...), then the plain guess
        return "tzqijk"[:lead] + guess_axes(shape[lead:], name)
    raise DataError(
        f"{name}: cannot tell the axes of an array of shape {shape}; expected (Y, X), (C, Y, X) or (Y, X, C)"
    )


def array_to_cyx(array: np.ndarray, name: str | Path = "image") -> np.ndarray:
    """A numpy array of any accepted layout (see :func:`guess_axes`) as (C, Y, X)."""
    array = np.asarray(array)
    other, y, x = channel_layout(guess_axes(array.shape, name), array.shape, name)
    return to_cyx(array, other, y, x)


class LazyImage:
    """A (C, Y, X) view of one TIFF series that reads only the requested region.

    Index it like a numpy array (``img[:, y0:y1, x0:x1]``); steps are allowed. ``np.asarray(img)``
    reads the whole image.
    """

    def __init__(self, path: str | Path) -> None:
        import tifffile
        import zarr

        self.path = Path(path)
        try:
            with tifffile.TiffFile(self.path) as tif:
                series = tif.series[0]
                self._axes = series.axes
                native_shape = tuple(series.shape)
                self.dtype = np.dtype(series.dtype)
            self._store = tifffile.imread(self.path, aszarr=True, series=0, level=0)
            self._array = zarr.open_array(self._store, mode="r")
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001 - any decoder failure is a user data problem
            raise DataError(f"{self.path}: cannot read the TIFF ({type(exc).__name__}: {exc})") from None
        self._other, self._y, self._x = channel_layout(self._axes, native_shape, self.path)
        n_channels = int(np.prod([native_shape[i] for i in self._other])) if self._other else 1
        self.shape = (n_channels, native_shape[self._y], native_shape[self._x])
        self.ndim = 3

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        key = key + (slice(None),) * (3 - len(key))
        c_key, y_key, x_key = key
        native: list[Any] = [slice(None)] * len(self._axes)
        native[self._y] = y_key
        native[self._x] = x_key
        try:
            block = np.asarray(self._array[tuple(native)])
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"{self.path}: cannot read the TIFF ({type(exc).__name__}: {exc})") from None
        # integer y/x indices drop axes: restore them so the layout stays (C, Y, X)
        if isinstance(y_key, int | np.integer) or isinstance(x_key, int | np.integer):
            raise TypeError("LazyImage: index Y and X with slices")
        return to_cyx(block, self._other, self._y, self._x)[c_key]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:, :, :]
        return out if dtype is None else out.astype(dtype)

    def close(self) -> None:
        store = getattr(self, "_store", None)
        if store is not None:
            with contextlib.suppress(Exception):
                store.close()

    def __repr__(self) -> str:
        return f"LazyImage({str(self.path)!r}, shape={self.shape}, dtype={self.dtype})"


class Plane:
    """A 2-D (Y, X) view of channel ``c`` of a lazy (C, Y, X) image."""

    def __init__(self, image: Any, channel: int = 0) -> None:
        self.image = image
        self.channel = channel
        self.shape = tuple(image.shape[1:])
        self.dtype = np.dtype(image.dtype)
        self.ndim = 2

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        key = key + (slice(None),) * (2 - len(key))
        return np.asarray(self.image[(slice(self.channel, self.channel + 1), *key)])[0]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:, :]
        return out if dtype is None else out.astype(dtype)


def read_pil(path: Path, *, palette_as_rgb: bool = False) -> np.ndarray:
    """A PNG / JPEG / BMP... file as (C, Y, X) through Pillow; alpha is dropped (it is no signal).

    Palette images keep their indices (label images are often saved so) unless ``palette_as_rgb``,
    which an image to segment wants: its colours.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if palette_as_rgb and im.mode in ("P", "PA"):
                im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
            if im.mode in ("RGBA", "LA"):
                im = im.convert("RGB" if im.mode == "RGBA" else "L")
            elif im.mode in ("CMYK", "YCbCr", "HSV", "LAB"):
                im = im.convert("RGB")
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: cannot read the image ({type(exc).__name__}: {exc}); is the file complete?") from None
    return arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)  # (Y, X) or (Y, X, S) -> (C, Y, X)


def _tiff_read(path: Path) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes = series.axes
            arr = series.asarray()
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a user data problem
        raise DataError(f"{path}: cannot read the TIFF ({type(exc).__name__}: {exc}); is the file complete?") from None
    other, y, x = channel_layout(axes, tuple(arr.shape), path)
    return to_cyx(arr, other, y, x)


def tiff_pixels(path: Path) -> int | None:
    """Y * X of the first series of a TIFF, from its header only (None when unreadable)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            return int(series.shape[series.axes.index("Y")] * series.shape[series.axes.index("X")])
    except Exception:  # noqa: BLE001
        return None


def read_image(path: str | Path, *, lazy_pixels: int | None = None) -> np.ndarray | LazyImage:
    """Read an image file as (C, Y, X): numpy, or a :class:`LazyImage` for TIFFs above ``lazy_pixels``.

    ``lazy_pixels`` defaults to :data:`LAZY_PIXELS` (read at call time, so tests may lower it).
    """
    path = Path(path)
    lazy_pixels = LAZY_PIXELS if lazy_pixels is None else lazy_pixels
    if not path.is_file():
        raise DataError(f"{path}: image file not found")
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        pixels = tiff_pixels(path)
        if pixels is not None and pixels > lazy_pixels:
            return LazyImage(path)
        arr = _tiff_read(path)
    else:
        arr = read_pil(path)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise DataError(f"{path}: expected a 2-D image (optionally with channels), got shape {arr.shape}")
    return arr


def read_plane(path: str | Path, *, lazy_pixels: int | None = None, what: str = "label image") -> np.ndarray | Plane:
    """Read a single-channel image (label image, nuclear stain) as (Y, X), lazily when large."""
    path = Path(path)
    img = read_image(path, lazy_pixels=lazy_pixels)
    if img.shape[0] != 1:
        raise DataError(
            f"{path}: the {what} has {img.shape[0]} channels; expected a single-channel image"
            + (" (instance ids as integers, not colours)" if what == "label image" else "")
        )
    if isinstance(img, np.ndarray):
        return img[0]
    return Plane(img, 0)
