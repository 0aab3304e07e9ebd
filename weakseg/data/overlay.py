"""Overlays for looking at data: image (contrast-stretched), instance outlines and points, as RGB uint8."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def to_display(image: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """(C, H, W) or (H, W) -> (H, W, 3) uint8: one channel in grey, 2-3 channels as RGB, per-channel stretch."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 2:
        img = img[None]
    chans = img[:3] if img.shape[0] in (2, 3) else img[:1]
    out = np.zeros((*img.shape[1:], 3), np.float32)
    for k, ch in enumerate(chans):
        lo, hi = np.percentile(ch, percentiles)
        scaled = np.clip((ch - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
        if len(chans) == 1:
            out[:] = scaled[..., None]
        else:
            out[..., k] = scaled
    return (out * 255).round().astype(np.uint8)


def label_colors(ids: np.ndarray) -> np.ndarray:
    """A stable, bright colour per id (same id, same colour in every overlay)."""
    ids = np.asarray(ids, dtype=np.uint64)
    h = (ids * np.uint64(2654435761)) % np.uint64(2**32)
    hue = (h % np.uint64(360)).astype(np.float32) / 360.0
    # HSV (s=0.85, v=1) -> RGB
    i = np.floor(hue * 6).astype(int) % 6
    f = hue * 6 - np.floor(hue * 6)
    v, s = 1.0, 0.85
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = np.stack(
        [
            np.select([i == 0, i == 1, i == 2, i == 3, i == 4, i == 5], [v, q, p, p, t, v]),
            np.select([i == 0, i == 1, i == 2, i == 3, i == 4, i == 5], [t, v, v, q, p, p]),
            np.select([i == 0, i == 1, i == 2, i == 3, i == 4, i == 5], [p, p, t, v, v, q]),
        ],
        axis=-1,
    )
    return (table * 255).astype(np.uint8)


def render_overlay(
    image: np.ndarray,
    labels: np.ndarray | None = None,
    points: np.ndarray | None = None,
    *,
    fill_alpha: float = 0.25,
    point_radius: float = 2.5,
    point_color: tuple[int, int, int] = (255, 255, 0),
    region: np.ndarray | None = None,
    region_color: tuple[int, int, int] = (0, 255, 255),
) -> np.ndarray:
    """Image with each instance tinted and outlined in its colour, points as dots and the outline of an
    annotated ``region`` (H, W) (non-zero = annotated) in ``region_color``; (H, W, 3) uint8."""
    rgb = to_display(image).astype(np.float32)
    if region is not None:
        from scipy import ndimage

        inside = np.asarray(region) != 0
        edge = inside & ~ndimage.binary_erosion(inside, iterations=2, border_value=1)
        rgb[edge] = region_color
    if labels is not None:
        from skimage.segmentation import find_boundaries

        labels = np.asarray(labels)
        ids = np.unique(labels)
        ids = ids[ids != 0]
        if ids.size:
            lut = np.zeros((int(ids.max()) + 1, 3), np.float32) if ids.max() < 1 << 24 else None
            if lut is not None:
                lut[ids] = label_colors(ids)
                colors = lut[labels]
            else:
                colors = label_colors(labels.ravel()).reshape(*labels.shape, 3).astype(np.float32)
            inside = labels > 0
            rgb[inside] = (1 - fill_alpha) * rgb[inside] + fill_alpha * colors[inside]
            edge = find_boundaries(labels, mode="inner") & inside
            rgb[edge] = colors[edge]
    if points is not None and len(points):
        h, w = rgb.shape[:2]
        r = point_radius
        yy, xx = np.mgrid[-int(np.ceil(r)) - 1 : int(np.ceil(r)) + 2, -int(np.ceil(r)) - 1 : int(np.ceil(r)) + 2]
        for y, x in np.asarray(points, dtype=np.float64).reshape(-1, 2):
            cy, cx = int(np.floor(y)), int(np.floor(x))  # the pixel holding the point (centres at i + 0.5)
            py, px = cy + yy, cx + xx
            d2 = (py + 0.5 - y) ** 2 + (px + 0.5 - x) ** 2
            ok = (py >= 0) & (py < h) & (px >= 0) & (px < w)
            ring = ok & (d2 <= (r + 1) ** 2)
            dot = ok & (d2 <= r**2)
            rgb[py[ring], px[ring]] = 0
            rgb[py[dot], px[dot]] = point_color
    return np.clip(rgb, 0, 255).astype(np.uint8)


def check_png_target(path: str | Path) -> Path:
    """``path`` as a PNG file to write; a folder there is a DataError (checked before any drawing)."""
    from weakseg.errors import DataError

    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder; give the PNG file to write, e.g. -o {path / 'overlay.png'}")
    return path


def save_png(rgb: np.ndarray, path: str | Path) -> Path:
    """Write an RGB overlay as PNG (whatever the file name's extension); a path that cannot be written
    is a DataError naming it."""
    from PIL import Image

    from weakseg.errors import DataError

    path = check_png_target(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(path, format="PNG")
    except OSError as exc:
        raise DataError(f"{path}: cannot write the PNG ({exc.strerror or exc})") from None
    return path


def store_overlay(
    store: Any,
    image_id: str,
    *,
    points_source: str | None = None,
    label_source: Any = None,
    show_labels: bool = True,
    region: tuple[int, int, int, int] | None = None,
    max_size: int = 2048,
    annotated: str | None = None,
) -> np.ndarray:
    """Overlay of one store image: region (y0, y1, x0, x1) or the whole image, strided down to ``max_size``.

    The outline of the stored region ``annotated`` (default: ``annotated``, else the image's only stored
    region) shows where the points are complete.
    """
    info = store.info(image_id)
    _c, h, w = info.shape
    y0, y1, x0, x1 = region if region is not None else (0, h, 0, w)
    y0, x0 = max(0, y0), max(0, x0)
    y1, x1 = min(h, y1), min(w, x1)
    if y1 <= y0 or x1 <= x0:
        from weakseg.errors import DataError

        raise DataError(f"region {region} is empty for image {image_id!r} of size {h}x{w}")
    step = max(1, int(np.ceil(max(y1 - y0, x1 - x0) / max_size)))
    image = np.asarray(store.image(image_id)[:, y0:y1:step, x0:x1:step])
    labels = None
    if show_labels and info.has_labels:
        labels = np.asarray(store.labels(image_id)[y0:y1:step, x0:x1:step])
    names = store.regions(image_id)
    if annotated is None:
        annotated = "annotated" if "annotated" in names else (names[0] if len(names) == 1 else None)
    elif annotated not in names:
        from weakseg.errors import DataError

        raise DataError(f"{store.path}: image {image_id!r} has no region {annotated!r} (it has: {names})")
    mask = None if annotated is None else np.asarray(store.region(image_id, annotated)[y0:y1:step, x0:x1:step])
    points = None
    if label_source is not None:
        from weakseg.data.labels import points_for

        points = points_for(store, info, label_source)
    else:
        sources = store.point_sources(image_id)
        name = points_source or (info.point_sources[0] if info.point_sources else (sources[0] if sources else None))
        if name is not None:
            points = store.points(image_id, name)
            if points is None:
                from weakseg.errors import DataError

                raise DataError(f"{store.path}: image {image_id!r} has no point set {name!r} (it has: {sources})")
    if points is not None:
        pts = np.asarray(points, np.float64)
        inside = (pts[:, 0] >= y0) & (pts[:, 0] < y1) & (pts[:, 1] >= x0) & (pts[:, 1] < x1)
        points = (pts[inside] - [y0, x0]) / step
    return render_overlay(image, labels, points, region=mask)
