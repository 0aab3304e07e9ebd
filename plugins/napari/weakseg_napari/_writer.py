"""napari writer: a points layer as the CSV that ``weakseg data import points`` reads.

The file is napari's own points format (``index,axis-0,axis-1``, napari coordinates) with the
layer's numeric or text features as extra columns (a detection ``score``, for instance); the points
importer takes the last two axes as (y, x) and adds 0.5 to reach weakseg's pixel-centre convention.
Save it as ``<image stem>.csv`` beside the image (``--set points=...`` names other layouts).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _columns(meta: dict[str, Any], n: int) -> dict[str, list[Any]]:
    """Feature columns of the layer with one value per point (napari's ``features`` or ``properties``)."""
    table = meta.get("features")
    if table is None or len(getattr(table, "columns", table)) == 0:
        table = meta.get("properties") or {}
    out: dict[str, list[Any]] = {}
    for name in getattr(table, "columns", table):
        values = list(np.asarray(table[name]).tolist())
        if len(values) == n and name not in ("index",) and not str(name).startswith("axis-"):
            out[str(name)] = values
    return out


def write_points(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write one points layer (``data`` (N, D) in napari coordinates) to ``path`` (.csv added if missing)."""
    from weakseg.inference.correct import write_points_csv

    target = Path(path)
    if target.suffix.lower() != ".csv":
        target = target.with_name(target.name + ".csv")
    points = np.asarray(data, np.float64)
    points = points.reshape(0, 2) if points.size == 0 else points
    write_points_csv(target, points, _columns(meta, len(points)))
    return [str(target)]
