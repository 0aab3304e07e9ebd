"""The ``points`` importer: images plus one CSV of point labels per image.

Recognised CSV columns (header names, case-insensitive):

* ``axis-0, axis-1`` - a napari points layer saved as CSV (``index,axis-0,axis-1``; with more axes the
  last two are y and x). napari puts pixel centres at integer coordinates, weakseg at ``i + 0.5``, so
  0.5 is added unless ``offset`` says otherwise.
* ``y, x`` (or ``Y, X`` as Fiji exports them, any order) - weakseg's convention, no offset.
* ``centroid-0, centroid-1`` - a scikit-image regionprops table (pixel indices: +0.5).
* no header, two numeric columns - ``y, x``.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from weakseg.components import ImageRecord
from weakseg.data.importers.common import (
    CommonOptions,
    assign_splits,
    find_files,
    group_for,
    make_ids,
    posix_rel,
    resolve_template,
    template_fields,
)
from weakseg.errors import DataError


def _numeric(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _pair(row: list[str] | dict[str, str], yi: Any, xi: Any, where: str) -> tuple[float, float]:
    """The (y, x) of one CSV row; empty, text, NaN or infinite coordinates are DataErrors naming ``where``."""
    try:
        y, x = float(row[yi]), float(row[xi])
    except (ValueError, IndexError, KeyError, TypeError):
        raise DataError(f"{where}: not a number pair in row {row}") from None
    if not (math.isfinite(y) and math.isfinite(x)):
        raise DataError(
            f"{where}: non-finite coordinate (NaN or infinite) in row {row}; fill in or remove the row"
        )
    return y, x


def _columns(header: list[str], path: Path, columns: tuple[str, str] | None) -> tuple[int, int, float]:
    """(y column, x column, default offset) from a header row."""
    low = [h.strip().lower() for h in header]
    if columns is not None:
        try:
            return low.index(columns[0].lower()), low.index(columns[1].lower()), 0.0
        except ValueError:
            raise DataError(f"{path}: columns {columns} not in the header {header}") from None
    axes = sorted((int(m.group(1)), i) for i, h in enumerate(low) if (m := re.fullmatch(r"axis-(\d+)", h)))
    if len(axes) >= 2:
        return axes[-2][1], axes[-1][1], 0.5
    cents = sorted((int(m.group(1)), i) for i, h in enumerate(low) if (m := re.fullmatch(r"centroid-(\d+)", h)))
    if len(cents) >= 2:
        return cents[-2][1], cents[-1][1], 0.5
    if "y" in low and "x" in low:
        return low.index("y"), low.index("x"), 0.0
    raise DataError(
        f"{path}: cannot tell which columns hold the coordinates (header {header}); expected napari's "
        "axis-0/axis-1, y/x, or set columns=[YCOL, XCOL]"
    )


def read_points_csv(
    path: str | Path, *, offset: float | None = None, columns: tuple[str, str] | None = None
) -> np.ndarray:
    """Points (N, 2) float32 (y, x) in weakseg's convention from one CSV file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise DataError(f"{path}: cannot read the points CSV ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text CSV file") from None
    try:
        dialect = csv.Sniffer().sniff(text[:2048], delimiters=",;\t ")
    except csv.Error:
        dialect = csv.excel
    rows = [r for r in csv.reader(text.splitlines(), dialect) if any(c.strip() for c in r)]
    if not rows:
        return np.zeros((0, 2), np.float32)
    if all(_numeric(c) for c in rows[0] if c.strip()) and len(rows[0]) >= 2:
        yi, xi, default = len(rows[0]) - 2, len(rows[0]) - 1, 0.0
        body, first_line = rows, 1
    else:
        yi, xi, default = _columns(rows[0], path, columns)
        body, first_line = rows[1:], 2
    out = np.zeros((len(body), 2), np.float64)
    for k, row in enumerate(body):
        out[k] = _pair(row, yi, xi, f"{path}:{first_line + k}")
    return (out + (default if offset is None else offset)).astype(np.float32)


def read_points_csv_table(path: Path) -> dict[str, np.ndarray]:
    """One CSV for many images: columns image_id (or image / file / filename) plus coordinates."""
    from weakseg.data.importers.common import sniff_table

    rows = sniff_table(path)
    if not rows:
        return {}
    header = list(rows[0])
    low = [h.lower() for h in header]
    key = next((header[low.index(k)] for k in ("image_id", "image", "file", "filename") if k in low), None)
    if key is None:
        raise DataError(f"{path}: needs a column image_id (or image, file, filename) naming each point's image")
    yi, xi, default = _columns(header, path, None)
    table: dict[str, list[tuple[float, float]]] = {}
    for k, row in enumerate(rows):
        pt = _pair(row, header[yi], header[xi], f"{path}:{k + 2}")
        table.setdefault(Path(row[key]).stem if "." in row[key] else row[key], []).append(pt)
    return {k: np.asarray(v, np.float64) + default for k, v in table.items()}


@attrs.frozen(kw_only=True)
class PointsImporter(CommonOptions):
    """Images with one CSV of points each (y, x columns, or a napari points-layer CSV)."""

    #: Glob of image files relative to SOURCE.
    images: str = "**/*"
    #: Template of each image's points CSV ({stem}, {name}, {parent}, {suffix}; globs ok).
    points: str = "{parent}/{stem}.csv"
    #: Optional template of instance masks (kept for scoring).
    labels: str | None = None
    #: Added to the coordinates; None: 0.5 for napari / regionprops CSVs (pixel indices), 0 for y, x.
    offset: float | None = None
    #: Explicit (y column, x column) header names.
    columns: tuple[str, str] | None = None
    #: Images without a points CSV are an error (True) or left out (False).
    require_points: bool = True

    def build(self) -> PointsImporter:
        return self

    def scan(self, source: Path) -> Iterator[ImageRecord]:
        from weakseg.data.importers.folder import label_loader
        from weakseg.data.readers import read_image

        root = Path(source)
        if not root.is_dir():
            raise DataError(f"{root}: not a folder (the points importer reads a directory of images and CSVs)")
        found = []
        used: set[Path] = set()
        for img in find_files(root, self.images):
            rel = posix_rel(img, root)
            pts = resolve_template(root, self.points, rel, what="points", image=img)
            lab = resolve_template(root, self.labels, rel, what="labels", image=img) if self.labels else None
            found.append((img, rel, pts, lab))
            used.update(p for p in (lab,) if p is not None)
        found = [f for f in found if f[0] not in used]
        if not self.require_points:
            found = [f for f in found if f[2] is not None]
        if not found:
            raise DataError(f"{root}: no image files match {self.images!r}")
        ids = make_ids([f[1] for f in found], self.id)
        records = []
        for (img, rel, pts, lab), image_id in zip(found, ids, strict=True):
            files = {"image": str(img), "points": str(pts) if pts else self.points}
            if lab is not None:
                files["labels"] = str(lab)

            def load_points(p: Path | None = pts, img: Path = img, rel: str = rel) -> np.ndarray:
                if p is None:
                    from weakseg.data.importers.common import format_template

                    raise DataError(f"{img}: no points CSV ({format_template(self.points, rel)}); add it or use "
                                    "--skip-bad")
                return read_points_csv(p, offset=self.offset, columns=self.columns)

            records.append(
                ImageRecord(
                    image_id=image_id,
                    source=str(img),
                    load_image=(lambda p=img: read_image(p)),
                    load_points=load_points,
                    load_labels=label_loader(lab, img, self.labels) if lab is not None else None,
                    group=group_for(rel, self),
                    split="train",
                    pixel_size=self.pixel_size,
                    metadata={"files": files, "relative_path": rel, "stem": template_fields(rel)["stem"]},
                )
            )
        return iter(assign_splits(records, self, dict(zip(ids, [f[1] for f in found], strict=True))))
