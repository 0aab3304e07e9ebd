"""Reading images to predict: TIFF / PNG / JPEG files, folders of them, zarr and OME-Zarr stores.

Large inputs stay lazy: uncompressed TIFFs are memory-mapped, compressed or tiled TIFFs are read
through tifffile's zarr interface, zarr arrays are sliced region by region. Everything is exposed
as a :class:`~weakseg.inference.tiling.ChannelFirst` view in (C, Y, X) order; which axes are
channels is decided by weakseg.data.readers, the same rules as for imported training data. An unreadable file
raises :class:`~weakseg.errors.DataError` naming it, so a caller can report it and go on.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from weakseg.data.readers import guess_axes, read_pil
from weakseg.errors import DataError
from weakseg.inference.tiling import ChannelFirst

TIFF_SUFFIXES = (".tif", ".tiff")
PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
ZARR_SUFFIXES = (".zarr",)
IMAGE_SUFFIXES = TIFF_SUFFIXES + PIL_SUFFIXES


@attrs.frozen
class InputImage:
    """One image to predict: ``name`` (unique, used for output files), where it comes from
    (``path`` plus, inside a zarr store, the array ``key``) for messages and reading."""

    name: str
    path: Path
    key: str | None = None

    @property
    def source(self) -> str:
        return f"{self.path}" if self.key is None else f"{self.path} ({self.key})"

    @contextlib.contextmanager
    def open(self) -> Iterator[ChannelFirst]:
        """The image as a lazy (C, Y, X) view; files are closed on exit."""
        with open_image(self.path, self.key) as view:
            yield view


def _is_zarr(path: Path) -> bool:
    return path.is_dir() and (
        path.suffix.lower() in ZARR_SUFFIXES
        or (path / "zarr.json").exists()
        or (path / ".zgroup").exists()
        or (path / ".zarray").exists()
    )


# ------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _open_tiff(path: Path) -> Iterator[ChannelFirst]:
    import tifffile

    try:
        tif = tifffile.TiffFile(path)
    except Exception as exc:  # noqa: BLE001 - any parser failure means the file is unreadable
        raise DataError(f"{path}: not a readable TIFF ({type(exc).__name__}: {exc})") from exc
    try:
        if not tif.series:
            raise DataError(f"{path}: the TIFF holds no image")
        series = tif.series[0]
        axes = series.axes.lower()
        array: Any
        try:
            array = tifffile.memmap(path, mode="r")  # uncompressed, contiguous: zero-copy
            if tuple(array.shape) != tuple(series.shape):
                raise ValueError("memmap shape differs from the series")
        except Exception:  # noqa: BLE001 - compressed or tiled: read through zarr, region by region
            try:
                import zarr

                array = zarr.open_array(series.aszarr(), mode="r")
            except Exception:  # noqa: BLE001 - last resort: decode it whole
                array = series.asarray()
        yield ChannelFirst(array, axes, str(path))
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{path}: cannot read the TIFF ({type(exc).__name__}: {exc})") from exc
    finally:
        tif.close()


def _open_pil(path: Path) -> ChannelFirst:
    """PNG / JPEG / BMP through the data importers' reader; palette images as their colours."""
    return ChannelFirst(read_pil(path, palette_as_rgb=True), "cyx", str(path))


# ------------------------------------------------------------------------------------------------
# Zarr / OME-Zarr
# ------------------------------------------------------------------------------------------------


def _ome_image(group: Any, path: Path) -> tuple[Any, str] | None:
    """(level-0 array, axes) of an OME-Zarr image group (NGFF 0.4 or 0.5), or None."""
    attrs_ = dict(group.attrs)
    ome = attrs_.get("ome", attrs_)
    multiscales = ome.get("multiscales") if isinstance(ome, dict) else None
    if not multiscales:
        return None
    ms = multiscales[0]
    datasets = ms.get("datasets") or []
    if not datasets:
        raise DataError(f"{path}: OME-Zarr multiscales lists no datasets")
    array = group[datasets[0]["path"]]
    axes_meta = ms.get("axes")
    if axes_meta:
        names = [a["name"] if isinstance(a, dict) else str(a) for a in axes_meta]
        axes = "".join(n[0].lower() for n in names)
    else:
        axes = guess_axes(tuple(array.shape), str(path))
    return array, axes


@contextlib.contextmanager
def _open_zarr(path: Path, key: str | None) -> Iterator[ChannelFirst]:
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
        if key:
            node = node[key]
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{path}: not a readable zarr store ({type(exc).__name__}: {exc})") from exc
    name = f"{path}" if key is None else f"{path}/{key}"
    if isinstance(node, zarr.Array):
        yield ChannelFirst(node, guess_axes(tuple(node.shape), name), name)
        return
    found = _ome_image(node, Path(name))
    if found is None:
        raise DataError(f"{name}: a zarr group without OME-Zarr multiscales metadata; point at an image array")
    array, axes = found
    yield ChannelFirst(array, axes, name)


def _zarr_images(path: Path) -> list[tuple[str, str | None]]:
    """(name suffix, key) of every image in a zarr store: the root image, a weakseg store's images,
    or the OME-Zarr image groups one level down (a bioformats2raw-style collection)."""
    import zarr

    try:
        root = zarr.open(str(path), mode="r")
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{path}: not a readable zarr store ({type(exc).__name__}: {exc})") from exc
    if isinstance(root, zarr.Array) or _ome_image(root, path) is not None:
        return [("", None)]
    meta = dict(root.attrs).get("weakseg")
    if isinstance(meta, dict):
        from weakseg.data.store import open_store

        store = open_store(path)  # checks that the import completed
        return [(info.image_id, f"images/{info.image_id}") for info in store.images]
    out = []
    for key, child in sorted(root.members(), key=lambda kv: kv[0]):
        if key == "labels":
            continue
        if isinstance(child, zarr.Group) and _ome_image(child, path / key) is not None:
            out.append((key, key))
    if not out:
        raise DataError(f"{path}: no image found in this zarr store (no array, OME-Zarr image or weakseg store)")
    return out


# ------------------------------------------------------------------------------------------------
# Public helpers
# ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def open_image(path: str | Path, key: str | None = None) -> Iterator[ChannelFirst]:
    """Open one image lazily as a (C, Y, X) view; raises DataError naming ``path`` if unreadable."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if _is_zarr(path):
        with _open_zarr(path, key) as view:
            yield view
        return
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        with _open_tiff(path) as view:
            yield view
        return
    if suffix in PIL_SUFFIXES:
        yield _open_pil(path)
        return
    raise DataError(f"{path}: unsupported file type {suffix!r}; use TIFF, PNG, JPEG or a zarr store")


def read_image(path: str | Path, key: str | None = None) -> np.ndarray:
    """The whole image as a (C, Y, X) numpy array of its stored dtype."""
    with open_image(path, key) as view:
        return view.read()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "image"


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", ".ome.zarr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def discover(inputs: Sequence[str | Path]) -> tuple[list[InputImage], list[tuple[str, str]]]:
    """Expand the command line's inputs into images: files, folders (their image files and zarr
    stores, not recursive), zarr stores (every image in them).

    Returns (images, problems) where problems are (source, message) pairs for inputs that could not
    even be listed; names are made unique (``cells``, ``cells_2``...).
    """
    found: list[tuple[str, Path, str | None]] = []
    problems: list[tuple[str, str]] = []

    def add_path(path: Path) -> None:
        if _is_zarr(path):
            try:
                for suffix, key in _zarr_images(path):
                    found.append((_stem(path) + (f"_{suffix}" if suffix else ""), path, key))
            except DataError as exc:
                problems.append((str(path), str(exc)))
        else:
            found.append((_stem(path), path, None))

    for item in inputs:
        path = Path(item)
        if not path.exists():
            problems.append((str(path), f"{path}: no such file or folder"))
        elif path.is_dir() and not _is_zarr(path):
            children = sorted(p for p in path.iterdir() if not p.name.startswith("."))
            members = [p for p in children if _is_zarr(p) or (p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)]
            if not members:
                problems.append((str(path), f"{path}: no TIFF, PNG, JPEG or zarr images in this folder"))
            for child in members:
                add_path(child)
        else:
            add_path(path)
    images: list[InputImage] = []
    used: dict[str, int] = {}
    for name, path, key in found:
        base = _safe(name)
        used[base] = used.get(base, 0) + 1
        unique = base if used[base] == 1 else f"{base}_{used[base]}"
        images.append(InputImage(unique, path, key))
    return images, problems
