"""Writing prediction results: label TIFFs, OME-Zarr labels, COCO json, per-cell CSV, PNG overlays.

Every writer is atomic: it writes beside the target under a temporary name and moves it into place
with :func:`os.replace`, so an interrupted run never leaves a half-written file that looks finished.
Measurements are computed band by band (``numpy.bincount`` per band of rows), so a 10000 x 10000
image is never held as floats; they match :func:`skimage.measure.regionprops` (area, centroid,
bounding box, mean intensity per channel), with centroids in this project's convention of pixel
centres at i + 0.5.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from weakseg.inference.tiling import ChannelFirst, LabelTable, as_view, row_bands

FORMATS = ("tiff", "zarr", "coco", "csv", "png")
LABEL_NAME = "cells"


# ------------------------------------------------------------------------------------------------
# Atomic writes
# ------------------------------------------------------------------------------------------------


def umask() -> int:
    """The process's file-creation mask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one step.

    The temporary file is private while it is written (``mkstemp``: mode 0600); the finished file
    gets the mode any new file would get (0666 less the umask, so 0644 under the usual 022).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it takes the place of ``path``
    (an old ``path`` is moved aside first and deleted after the swap). The folder gets the mode a
    new folder would get (0777 less the umask), not ``mkdtemp``'s private 0700."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~umask())
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# Label images
# ------------------------------------------------------------------------------------------------


def write_tiff(path: str | Path, labels: Any) -> Path:
    """An int32 label TIFF, zlib-compressed (tiled when large, so viewers can read it in parts)."""
    import tifffile

    labels = np.asarray(labels, dtype=np.int32)
    tile = (512, 512) if max(labels.shape) > 4096 else None
    with atomic_file(path) as tmp:
        big = labels.nbytes > 2**31
        tifffile.imwrite(tmp, labels, compression="zlib", tile=tile, metadata={"axes": "YX"}, bigtiff=big)
    return Path(path)


def _label_group_attrs(name: str, pixel_size: float | None) -> dict[str, Any]:
    axes = [{"name": a, "type": "space", **({"unit": "micrometer"} if pixel_size else {})} for a in ("y", "x")]
    scale = [float(pixel_size or 1.0)] * 2
    return {
        "version": "0.5",
        "image-label": {"source": {"image": "../../"}},
        "multiscales": [
            {
                "name": name,
                "axes": axes,
                "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
            }
        ],
    }


def _fill_label_array(group: Any, labels: Any, chunk: int) -> None:
    h, w = labels.shape
    arr = group.create_array("0", shape=(h, w), chunks=(min(chunk, h), min(chunk, w)), dtype="int32", fill_value=0)
    for y0, y1 in row_bands(h, w):
        arr[y0:y1] = np.asarray(labels[y0:y1], dtype=np.int32)


def write_zarr_labels(
    path: str | Path, labels: Any, *, name: str = LABEL_NAME, pixel_size: float | None = None, chunk: int = 1024
) -> Path:
    """A new OME-Zarr (NGFF 0.5) store at ``path`` holding ``labels/<name>`` as an NGFF label image."""
    import zarr

    with atomic_dir(path) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        root.attrs["ome"] = {"version": "0.5"}
        lab = root.create_group("labels")
        lab.attrs["ome"] = {"version": "0.5", "labels": [name]}
        grp = lab.create_group(name)
        grp.attrs["ome"] = _label_group_attrs(name, pixel_size)
        _fill_label_array(grp, labels, chunk)
    return Path(path)


def add_labels_to_ome_zarr(image_group: str | Path, labels: Any, *, name: str = LABEL_NAME, chunk: int = 1024) -> Path:
    """Write ``labels/<name>`` inside an existing OME-Zarr image group (the NGFF place for labels).

    The label group is written under a temporary name and moved into place; the ``labels`` list in
    ``labels/zarr.json`` is updated last.
    """
    import zarr

    image_group = Path(image_group)
    root = zarr.open_group(str(image_group), mode="r+")
    lab = root.require_group("labels")
    target = image_group / "labels" / name
    with atomic_dir(target) as tmp:
        grp = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        grp.attrs["ome"] = _label_group_attrs(name, None)
        _fill_label_array(grp, labels, chunk)
    ome = dict(lab.attrs.get("ome", {}) or {})
    names = list(ome.get("labels", []))
    if name not in names:
        names.append(name)
    lab.attrs["ome"] = {**ome, "version": ome.get("version", "0.5"), "labels": names}
    return target


# ------------------------------------------------------------------------------------------------
# COCO json
# ------------------------------------------------------------------------------------------------


def _uncompressed_rle(sub: np.ndarray, y0: int, x0: int, h: int, w: int) -> list[int]:
    """COCO run lengths (column-major, starting with background, summing to h * w) of a mask whose
    bounding-box crop ``sub`` sits at (y0, x0) in an image of shape (h, w)."""
    xs, ys = np.nonzero(sub.T)  # column-major order: by x, then y
    idx = (x0 + xs).astype(np.int64) * h + (y0 + ys)
    breaks = np.nonzero(np.diff(idx) != 1)[0]
    starts = np.concatenate([[idx[0]], idx[breaks + 1]])
    ends = np.concatenate([idx[breaks], [idx[-1]]]) + 1
    counts = np.empty(2 * len(starts) + 1, np.int64)
    counts[0:-1:2] = starts - np.concatenate([[0], ends[:-1]])
    counts[1::2] = ends - starts
    counts[-1] = h * w - ends[-1]
    return counts.tolist()


def coco_dict(
    labels: Any, table: LabelTable | None = None, *, file_name: str = "image", image_id: int = 1, category: str = "cell"
) -> dict[str, Any]:
    """A COCO dataset dict for one image: one annotation per label (RLE mask, bbox [x, y, w, h],
    area, ``score`` from ``table``, and the model's ``point`` (y, x))."""
    from pycocotools import mask as mask_utils
    from scipy import ndimage

    labels = np.asarray(labels)
    h, w = labels.shape
    slices = ndimage.find_objects(labels)
    annotations = []
    for k, sl in enumerate(slices, start=1):
        if sl is None:
            continue
        sub = labels[sl] == k
        y0, x0 = sl[0].start, sl[1].start
        rle = mask_utils.frPyObjects({"size": [h, w], "counts": _uncompressed_rle(sub, y0, x0, h, w)}, h, w)
        rle["counts"] = rle["counts"].decode("ascii")
        ann: dict[str, Any] = {
            "id": k,
            "image_id": image_id,
            "category_id": 1,
            "segmentation": rle,
            "area": int(sub.sum()),
            "bbox": [float(x0), float(y0), float(sl[1].stop - x0), float(sl[0].stop - y0)],
            "iscrowd": 0,
        }
        if table is not None and k <= len(table.scores):
            ann["score"] = float(table.scores[k - 1])
            ann["point"] = [float(v) for v in table.locations[k - 1]]
        annotations.append(ann)
    return {
        "images": [{"id": image_id, "file_name": file_name, "height": int(h), "width": int(w)}],
        "annotations": annotations,
        "categories": [{"id": 1, "name": category}],
    }


def write_coco(path: str | Path, labels: Any, table: LabelTable | None = None, **kwargs: Any) -> Path:
    """:func:`coco_dict` as a json file."""
    data = coco_dict(labels, table, **kwargs)
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data))
    return Path(path)


# ------------------------------------------------------------------------------------------------
# Measurements
# ------------------------------------------------------------------------------------------------


def _empty_boxes(n: int, h: int, w: int) -> np.ndarray:
    """(n, 4) boxes (y0, x0, y1, x1) that any real box shrinks/grows into."""
    return np.stack([np.full(n, h), np.full(n, w), np.zeros(n, np.int64), np.zeros(n, np.int64)], 1)


def measure(labels: Any, image: Any = None, table: LabelTable | None = None) -> dict[str, np.ndarray]:
    """Per-label measurements as columns: label, score, area, centroid_y/x (pixel centres at
    i + 0.5), bbox_y0/x0/y1/x1 (half-open), mean_intensity_c<k> per channel of ``image``.

    Labels absent from the image are left out. Works band by band on any numpy-like arrays.
    """
    from scipy import ndimage

    h, w = labels.shape
    view: ChannelFirst | None = None if image is None else as_view(image)
    n_ch = 0 if view is None else view.shape[0]
    n = len(table.scores) if table is not None else 0
    area = np.zeros(n + 1, np.int64)
    sy = np.zeros(n + 1)
    sx = np.zeros(n + 1)
    si = np.zeros((n_ch, n + 1))
    bbox = _empty_boxes(n + 1, h, w)
    for y0, y1 in row_bands(h, w):
        band = np.asarray(labels[y0:y1], dtype=np.int64)
        top = int(band.max(initial=0))
        if top > n:  # labels beyond the table (or no table): grow
            extra = top - n
            area = np.concatenate([area, np.zeros(extra, np.int64)])
            sy, sx = np.concatenate([sy, np.zeros(extra)]), np.concatenate([sx, np.zeros(extra)])
            si = np.concatenate([si, np.zeros((n_ch, extra))], 1)
            bbox = np.concatenate([bbox, _empty_boxes(extra, h, w)])
            n = top
        flat = band.ravel()
        area += np.bincount(flat, minlength=n + 1)
        rows = np.arange(y0, y1, dtype=np.float64) + 0.5
        sy += np.bincount(flat, weights=np.repeat(rows, w), minlength=n + 1)
        sx += np.bincount(flat, weights=np.tile(np.arange(w, dtype=np.float64) + 0.5, y1 - y0), minlength=n + 1)
        if view is not None:
            pixels = view.read(y0, y1)
            for c in range(n_ch):
                si[c] += np.bincount(flat, weights=pixels[c].ravel().astype(np.float64), minlength=n + 1)
        for k, sl in enumerate(ndimage.find_objects(band.astype(np.int32)), start=1):
            if sl is None:
                continue
            b = bbox[k]
            b[0], b[1] = min(b[0], sl[0].start + y0), min(b[1], sl[1].start)
            b[2], b[3] = max(b[2], sl[0].stop + y0), max(b[3], sl[1].stop)
    ids = np.nonzero(area)[0]
    ids = ids[ids > 0]
    a = area[ids].astype(np.float64)
    cols: dict[str, np.ndarray] = {"label": ids.astype(np.int64)}
    if table is not None:
        scores = np.full(len(ids), np.nan)
        known = ids <= len(table.scores)
        scores[known] = table.scores[ids[known] - 1]
        cols["score"] = scores
    cols.update(
        {
            "area": area[ids],
            "centroid_y": sy[ids] / a,
            "centroid_x": sx[ids] / a,
            "bbox_y0": bbox[ids, 0],
            "bbox_x0": bbox[ids, 1],
            "bbox_y1": bbox[ids, 2],
            "bbox_x1": bbox[ids, 3],
        }
    )
    for c in range(n_ch):
        cols[f"mean_intensity_c{c}"] = si[c, ids] / a
    return cols


def write_csv(path: str | Path, labels: Any, image: Any = None, table: LabelTable | None = None) -> Path:
    """:func:`measure` as a CSV file with a header row, one row per cell."""
    cols = measure(labels, image, table)
    names = list(cols)
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(names)
        for row in zip(*(cols[k].tolist() for k in names), strict=True):
            writer.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in row])
    return Path(path)


# ------------------------------------------------------------------------------------------------
# Overlays
# ------------------------------------------------------------------------------------------------


def overlay_rgb(labels: Any, image: Any, max_side: int = 2048) -> np.ndarray:
    """An RGB uint8 picture of ``image`` (percentile-stretched; 1 channel grey, 2 as red/green, first
    3 as RGB) with label outlines in yellow, subsampled so its longer side is at most ``max_side``."""
    from skimage.segmentation import find_boundaries

    view = as_view(image)
    c, h, w = view.shape
    step = max(1, int(np.ceil(max(h, w) / max_side)))
    rows = []
    for y0, y1 in row_bands(h, w):
        first = y0 + (-y0) % step
        if first < y1:
            rows.append(view.read(first, y1)[:, ::step, ::step].astype(np.float32))
    small = np.concatenate(rows, axis=1)
    lab = np.asarray(labels[::step, ::step])
    rgb = np.zeros((3, *small.shape[1:]), np.float32)
    for k in range(min(c, 3)):
        ch = small[k]
        lo, hi = np.percentile(ch, [1, 99.5])
        rgb[k] = np.clip((ch - lo) / max(hi - lo, 1e-6), 0, 1)
    if c == 1:
        rgb[1] = rgb[2] = rgb[0]
    out = (np.moveaxis(rgb, 0, -1) * 255).astype(np.uint8)
    edge = find_boundaries(lab, mode="inner")
    out[edge] = (255, 220, 0)
    return out


def write_png_overlay(path: str | Path, labels: Any, image: Any, max_side: int = 2048) -> Path:
    from PIL import Image

    picture = overlay_rgb(labels, image, max_side)
    with atomic_file(path) as tmp:
        Image.fromarray(picture).save(tmp, format="PNG")
    return Path(path)
