"""Point sets on disk: ``images/<id>/points/<source>``, tiny (N, 2) float32 zarr arrays (y, x).

Reading goes straight to the single uncompressed chunk when the layout allows it (stores of
thousands of images read every point set at the start of training); writing is atomic (a temporary
array, then a directory rename), so several processes may cache the same set at once. The checks
here are the ones every point set passes before it is stored: finite coordinates inside the image.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from weakseg.errors import DataError


def read_points_array(folder: Path) -> np.ndarray | None:
    """A stored point set (N, 2) float32, or None when absent.

    Point sets are tiny, single-chunk, uncompressed arrays: they are read straight from the chunk file
    (about 100x faster than a zarr round trip, which matters for stores of thousands of images); any
    other layout goes through zarr.
    """
    meta_file = folder / "zarr.json"
    try:
        meta = json.loads(meta_file.read_text())
    except FileNotFoundError:
        return None
    shape = [int(v) for v in meta.get("shape", [])]
    codecs = meta.get("codecs", [])
    chunk_shape = meta.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape")
    simple = (
        meta.get("data_type") == "float32"
        and len(shape) == 2
        and chunk_shape is not None
        and chunk_shape[0] >= shape[0]
        and len(codecs) == 1
        and codecs[0].get("name") == "bytes"
        and codecs[0].get("configuration", {}).get("endian", "little") == "little"
        and meta.get("chunk_key_encoding", {}).get("name") == "default"
        and meta.get("chunk_key_encoding", {}).get("configuration", {}).get("separator", "/") == "/"
    )
    if simple:
        if shape[0] == 0:
            return np.zeros((0, 2), np.float32)
        chunk = folder / "c" / "0" / "0"
        if not chunk.is_file():  # an all-fill-value chunk is not written
            return np.full(shape, meta.get("fill_value") or 0.0, np.float32).reshape(-1, 2)
        data = np.fromfile(chunk, dtype="<f4")
        return data.reshape(chunk_shape)[: shape[0]].astype(np.float32).reshape(-1, 2)
    import zarr

    arr = zarr.open_array(str(folder), mode="r")
    return np.asarray(arr[...], dtype=np.float32).reshape(-1, 2)


def write_points_array(image_group: Path, source: str, points: np.ndarray, provenance: Mapping[str, Any]) -> None:
    """Write ``points/<source>`` under an image group atomically (temp array, then a directory rename)."""
    import zarr

    if not source or "/" in source or source.startswith("."):
        raise ValueError(f"invalid point source name {source!r}")
    pts = np.asarray(points, dtype=np.float32).reshape(-1, 2)
    folder = image_group / "points"
    if not (folder / "zarr.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        zarr.open_group(str(folder), mode="a", zarr_format=3)
    tmp = folder / f".tmp-{source}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    zarr.create_array(
        str(tmp), data=pts, chunks=(max(len(pts), 1), 2), zarr_format=3, dimension_names=("point", "axis"),
        compressors=None,
        attributes={"weakseg": {"provenance": dict(provenance), "axes": ["y", "x"],
                                "convention": "pixel centres at i + 0.5"}},
    )
    replace_array(tmp, folder / source)


def replace_array(tmp: Path, final: Path) -> None:
    """Move a zarr array written under the temporary name ``tmp`` into place at ``final``, replacing an older
    one; when another process stored the same array meanwhile, its copy wins and ``tmp`` is dropped."""
    if final.exists():
        shutil.rmtree(final, ignore_errors=True)
    try:
        os.replace(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


def check_points_inside(points: np.ndarray, shape: tuple[int, int], file: str) -> None:
    """Points must be finite and lie inside the image: 0 <= y <= H and 0 <= x <= W (pixel edges included).

    A NaN or infinite coordinate is reported as such (an empty cell or a text value in a CSV), not as a
    point outside the image, so the message points at the row to fix.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if not len(pts):
        return
    finite = np.isfinite(pts).all(axis=1)
    if not finite.all():
        k = int(np.flatnonzero(~finite)[0])
        raise DataError(
            f"{file}: {int((~finite).sum())} point(s) have non-finite (NaN or infinite) coordinates, first: point "
            f"{k} at (y={pts[k, 0]}, x={pts[k, 1]}); fill in or remove those rows"
        )
    bad = (pts[:, 0] < 0) | (pts[:, 1] < 0) | (pts[:, 0] > shape[0]) | (pts[:, 1] > shape[1])
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{file}: {int(bad.sum())} point(s) lie outside the {shape[0]}x{shape[1]} image, first: point {k} at "
            f"(y={pts[k, 0]:.1f}, x={pts[k, 1]:.1f}); check the column order (y, x) and the coordinate units"
        )
