"""Reading image files as (C, Y, X) arrays; large TIFFs lazily, region by region.

TIFF files go through tifffile (``aszarr``: a chunked view of the file, so a 20000 x 20000 image is
never decoded whole); PNG, JPEG, BMP and other formats through Pillow (these are small by nature).
Every failure to read raises :class:`~weakseg.errors.DataError` naming the file.
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


def _channel_layout(axes: str, shape: tuple[int, ...], path: Path) -> tuple[list[int], int, int]:
    """Positions of the non-spatial axes, of Y and of X in a tifffile axes string."""
    if "Y" not in axes or "X" not in axes:
        raise DataError(f"{path}: the TIFF has axes {axes!r} without Y and X; export it as a 2-D image")
    y, x = axes.index("Y"), axes.index("X")
    other = [i for i in range(len(axes)) if i not in (y, x)]
    n_channels = int(np.prod([shape[i] for i in other])) if other else 1
    if n_channels > MAX_CHANNELS:
        raise DataError(
            f"{path}: the TIFF has axes {axes!r} and shape {shape}, i.e. {n_channels} planes; weakseg reads 2-D "
            f"images with at most {MAX_CHANNELS} channels: export one plane (or one time point) per file"
        )
    return other, y, x


def _to_cyx(block: np.ndarray, other: list[int], y: int, x: int) -> np.ndarray:
    block = np.transpose(block, [*other, y, x])
    return block.reshape((-1, *block.shape[-2:]))


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
        self._other, self._y, self._x = _channel_layout(self._axes, native_shape, self.path)
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
        return _to_cyx(block, self._other, self._y, self._x)[c_key]

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


def _pil_read(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA"):
                im = im.convert("RGB" if im.mode == "RGBA" else "L")
            elif im.mode in ("CMYK", "YCbCr", "HSV", "LAB"):
                im = im.convert("RGB")
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: cannot read the image ({type(exc).__name__}: {exc}); is the file complete?") from None
    if arr.ndim == 3:  # (Y, X, S)
        arr = np.moveaxis(arr, -1, 0)
    return arr


def _tiff_read(path: Path) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes = series.axes
            arr = series.asarray()
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a user data problem
        raise DataError(f"{path}: cannot read the TIFF ({type(exc).__name__}: {exc}); is the file complete?") from None
    other, y, x = _channel_layout(axes, tuple(arr.shape), path)
    return _to_cyx(arr, other, y, x)


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
        arr = _pil_read(path)
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
