"""Annotated regions: where an image's point labels are complete.

A user who clicks most cells of a few fields, or a nuclear stain that misses dim nuclei, leaves cells
without a point. Outside the parts of an image where every cell has its point, an unlabelled pixel
is not evidence of background, so the training losses must not treat it as such. A region mask says
where the points are complete:

* stored per image as ``images/<id>/regions/<name>`` (Y, X) uint8, 1 = annotated, chunked like the
  image, with ``attrs["weakseg"] = {provenance, bbox}``; ``annotated`` is the one a user imports
  (``weakseg data region``), label sources with a region rule store theirs under their own name;
* imported from a label image (non-zero = annotated) or a napari shapes-layer CSV (rectangles,
  ellipses and polygons are filled; columns ``index, shape-type, vertex-index, axis-0, axis-1``,
  napari's pixel centres at integer coordinates);
* or drawn by a rule (:class:`RegionSpec`): ``central`` (a centred rectangle holding ``fraction``
  of the image area) or ``left_half`` (the left ``fraction`` of the width).

An image without a region is annotated everywhere (the behaviour without this module).
"""

from __future__ import annotations

import csv
import json
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
import numpy as np

from weakseg.data.points_io import replace_array
from weakseg.errors import DataError

#: Name of the region a user imports for an image (used whenever the label source brings none).
ANNOTATED = "annotated"
#: Rows rendered at a time when a rule region is written (bounded memory for huge images).
BAND = 512


# --------------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class RegionSpec:
    """A region drawn by a rule: ``{type: central, fraction: 0.5}`` or ``{type: left_half}``."""

    #: ``central``: a centred rectangle with the image's aspect ratio holding ``fraction`` of its area;
    #: ``left_half``: the left ``fraction`` of the image width (all rows).
    type: Literal["central", "left_half"] = "central"
    #: Share of the image area (``central``) or of its width (``left_half``) that is annotated.
    fraction: float = attrs.field(default=0.5, validator=[attrs.validators.gt(0), attrs.validators.le(1)])

    def bbox(self, shape: tuple[int, int]) -> tuple[int, int, int, int]:
        """The region as a pixel box (y0, y1, x0, x1) of an image of ``shape`` (H, W)."""
        h, w = int(shape[0]), int(shape[1])
        if self.type == "left_half":
            return 0, h, 0, max(1, int(round(w * self.fraction)))
        side = float(np.sqrt(self.fraction))
        rh, rw = max(1, int(round(h * side))), max(1, int(round(w * side)))
        y0, x0 = (h - rh) // 2, (w - rw) // 2
        return y0, y0 + rh, x0, x0 + rw

    def render(self, shape: tuple[int, int], rows: tuple[int, int] | None = None) -> np.ndarray:
        """The mask (uint8, 1 = annotated) of ``rows`` (y0, y1) of an image of ``shape`` (all rows by default)."""
        r0, r1 = rows if rows is not None else (0, int(shape[0]))
        y0, y1, x0, x1 = self.bbox(shape)
        out = np.zeros((r1 - r0, int(shape[1])), np.uint8)
        out[max(y0 - r0, 0) : max(min(y1, r1) - r0, 0), x0:x1] = 1
        return out

    def contains(self, points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """Which points (N, 2) (y, x, pixel centres at i + 0.5) lie in the region: bool (N,)."""
        y0, y1, x0, x1 = self.bbox(shape)
        pts = np.asarray(points, np.float64).reshape(-1, 2)
        iy, ix = np.floor(pts[:, 0]), np.floor(pts[:, 1])
        return (iy >= y0) & (iy < y1) & (ix >= x0) & (ix < x1)

    def key(self) -> str:
        """The store name of this rule's region, e.g. ``central-0.5``."""
        return f"{self.type}-{self.fraction:g}"


# --------------------------------------------------------------------------------------------
# Storage: images/<id>/regions/<name>
# --------------------------------------------------------------------------------------------


def region_folder(image_group: Path, name: str) -> Path:
    return Path(image_group) / "regions" / name


def region_exists(image_group: Path, name: str) -> bool:
    return (region_folder(image_group, name) / "zarr.json").is_file()


def region_attrs(image_group: Path, name: str) -> dict[str, Any] | None:
    """``{provenance, bbox}`` of a stored region, or None when it is absent."""
    meta_file = region_folder(image_group, name) / "zarr.json"
    try:
        meta = json.loads(meta_file.read_text())
    except FileNotFoundError:
        return None
    return dict(meta.get("attributes", {}).get("weakseg", {}))


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Bounding box (y0, y1, x0, x1) of the non-zero pixels, or None when there are none."""
    rows = np.flatnonzero(np.asarray(mask).any(axis=1))
    if not len(rows):
        return None
    cols = np.flatnonzero(np.asarray(mask).any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def write_region(
    image_group: Path, name: str, mask: np.ndarray | RegionSpec, shape: tuple[int, int], provenance: Mapping[str, Any]
) -> None:
    """Store ``regions/<name>`` atomically (a temporary array, then a directory rename).

    ``mask`` is a (Y, X) array (non-zero = annotated) or a :class:`RegionSpec`, rendered band by band.
    """
    import zarr

    from weakseg.data.store import CHUNK

    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"invalid region name {name!r}")
    h, w = int(shape[0]), int(shape[1])
    if isinstance(mask, RegionSpec):
        bbox: tuple[int, int, int, int] | None = mask.bbox((h, w))
    else:
        mask = (np.asarray(mask) != 0).astype(np.uint8)
        if mask.shape != (h, w):
            raise DataError(f"the region mask is {mask.shape[0]}x{mask.shape[1]} but its image is {h}x{w}")
        bbox = mask_bbox(mask)
    if bbox is None:
        raise DataError("the region is empty (no annotated pixel); an image needs some annotated area")
    folder = Path(image_group) / "regions"
    if not (folder / "zarr.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        zarr.open_group(str(folder), mode="a", zarr_format=3)
    tmp = folder / f".tmp-{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    arr = zarr.create_array(
        str(tmp), shape=(h, w), dtype="uint8", chunks=(min(h, CHUNK), min(w, CHUNK)), fill_value=0,
        zarr_format=3, dimension_names=("y", "x"),
        attributes={"weakseg": {"provenance": dict(provenance), "bbox": list(bbox), "values": "1 = annotated"}},
    )
    for r0 in range(0, h, BAND):
        r1 = min(h, r0 + BAND)
        arr[r0:r1] = mask.render((h, w), (r0, r1)) if isinstance(mask, RegionSpec) else mask[r0:r1]
    replace_array(tmp, folder / name)


# --------------------------------------------------------------------------------------------
# Importing masks: label images and napari shapes CSVs
# --------------------------------------------------------------------------------------------

_SHAPE_COLUMNS = ("index", "shape-type", "vertex-index")


def read_region_file(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """A region mask (H, W) uint8 from a napari shapes CSV (``.csv``) or a label image (non-zero = annotated)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: region file not found; give a napari shapes CSV or a label image")
    if path.suffix.lower() == ".csv":
        return shapes_csv_mask(path, shape)
    from weakseg.data.readers import read_plane

    image = np.asarray(read_plane(path, lazy_pixels=1 << 62, what="region image"))
    if image.shape != tuple(shape):
        raise DataError(
            f"{path}: the region image has shape {image.shape} but the image is {shape[0]}x{shape[1]}; "
            "give a single-channel image of the same size (non-zero = annotated)"
        )
    return (image != 0).astype(np.uint8)


def read_shapes_csv(path: Path) -> list[tuple[str, np.ndarray]]:
    """The shapes of a napari shapes-layer CSV: (shape type, vertices (K, 2) as (axis-0, axis-1)) each.

    With more than two axes the last two are y and x (napari writes ``axis-0 .. axis-N``).
    """
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    header = [h.strip().lower() for h in rows[0]] if rows else []
    axes = sorted((int(h[5:]), i) for i, h in enumerate(header) if h.startswith("axis-") and h[5:].isdigit())
    if not all(c in header for c in _SHAPE_COLUMNS) or len(axes) < 2:
        raise DataError(
            f"{path}: not a napari shapes CSV (header {rows[0] if rows else []}); expected the columns "
            "index, shape-type, vertex-index, axis-0, axis-1 (save a shapes layer as CSV in napari)"
        )
    ci, ct, cy, cx = header.index("index"), header.index("shape-type"), axes[-2][1], axes[-1][1]
    shapes: dict[str, tuple[str, list[tuple[float, float]]]] = {}
    for n, row in enumerate(rows[1:], start=2):
        if not row or not any(v.strip() for v in row):
            continue
        try:
            vertex = (float(row[cy]), float(row[cx]))
        except (ValueError, IndexError):
            raise DataError(f"{path}, line {n}: not a coordinate pair in row {row}") from None
        if not np.isfinite(vertex).all():
            raise DataError(f"{path}, line {n}: non-finite coordinate in row {row}")
        kind = row[ct].strip().lower()
        shapes.setdefault(row[ci].strip(), (kind, []))[1].append(vertex)
    if not shapes:
        raise DataError(f"{path}: the shapes CSV holds no shape; draw rectangles or polygons over the annotated areas")
    return [(kind, np.asarray(v, np.float64)) for kind, v in shapes.values()]


def shapes_csv_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """Fill the rectangles, ellipses and polygons of a napari shapes CSV into a (H, W) uint8 mask.

    napari puts pixel centres at integer coordinates, as scikit-image's drawing functions do, so the
    vertices are used as they are; a pixel is annotated when its centre lies inside a shape.
    """
    from skimage.draw import polygon

    mask = np.zeros(tuple(int(v) for v in shape), np.uint8)
    for k, (kind, v) in enumerate(read_shapes_csv(path)):
        if kind in ("rectangle", "polygon"):
            rr, cc = polygon(v[:, 0], v[:, 1], shape=mask.shape)
        elif kind == "ellipse":
            rr, cc = _ellipse_pixels(v, mask.shape)
        else:
            raise DataError(
                f"{path}: shape {k} is a {kind!r}, which encloses no area; draw rectangles, ellipses or polygons"
            )
        mask[rr, cc] = 1
    if not mask.any():
        raise DataError(f"{path}: no shape covers any pixel of the {shape[0]}x{shape[1]} image; check the coordinates")
    return mask


def _ellipse_pixels(v: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixels whose centre lies in the ellipse inscribed in napari's 4 box vertices (any rotation)."""
    centre = v[:4].mean(axis=0)
    a, b = (v[1] - v[0]) / 2, (v[2] - v[1]) / 2  # the two semi-axes (napari keeps the box rectangular)
    reach = np.abs(a) + np.abs(b)
    y0, x0 = (np.floor(centre - reach).astype(int)).clip(0)
    y1 = min(int(np.ceil(centre[0] + reach[0])) + 1, shape[0])
    x1 = min(int(np.ceil(centre[1] + reach[1])) + 1, shape[1])
    if y1 <= y0 or x1 <= x0:
        return np.zeros(0, int), np.zeros(0, int)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    d = np.stack([yy - centre[0], xx - centre[1]], -1)
    la, lb = max(float(a @ a), 1e-12), max(float(b @ b), 1e-12)
    inside = (d @ a) ** 2 / la**2 + (d @ b) ** 2 / lb**2 <= 1.0
    return yy[inside], xx[inside]
