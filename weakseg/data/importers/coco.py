"""The ``coco`` importer: COCO instance-segmentation json files plus their image folder(s).

LIVECell conventions are the defaults: the group (cell line) is the file-name prefix before the first
``_`` (``A172_Phase_A7_1_00d00h00m_1.tif`` -> ``A172``), and the split comes from the json file name
(``livecell_coco_val.json`` -> ``val``). Polygons and RLE (compressed or not) are rasterised with
pycocotools into one instance label image per picture, larger instances first so that a small cell
lying on a larger one stays visible; instance ids follow the annotation order (1..N).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import attrs
import numpy as np

from weakseg.components import ImageRecord
from weakseg.data.importers.common import CommonOptions, _check_regex, assign_splits, group_for
from weakseg.errors import DataError

#: LIVECell cell line = file-name prefix before the first underscore.
LIVECELL_GROUP_PATTERN = r"^([A-Za-z0-9]+)_"


def split_from_name(name: str, default: str = "train") -> str:
    stem = Path(name).stem.lower()
    for split in ("train", "val", "test"):
        if re.search(rf"(^|[^a-z]){split}([^a-z]|$)", stem) or stem.endswith(split):
            return split
    return default


def _rle(segmentation: Any, h: int, w: int) -> Any:
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        if not segmentation:
            return None
        if isinstance(segmentation[0], int | float):  # a single flat polygon
            segmentation = [segmentation]
        polys = [p for p in segmentation if len(p) >= 6]
        if not polys:
            return None
        return mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
    if isinstance(segmentation, dict) and "counts" in segmentation:
        if isinstance(segmentation["counts"], list):  # uncompressed RLE
            return mask_utils.frPyObjects(segmentation, h, w)
        counts = segmentation["counts"]
        return {"size": segmentation["size"], "counts": counts.encode() if isinstance(counts, str) else counts}
    return None


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of one xywh box against many."""
    ax1, ay1 = a[0] + a[2], a[1] + a[3]
    bx1, by1 = b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.clip(np.minimum(ax1, bx1) - np.maximum(a[0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(ay1, by1) - np.maximum(a[1], b[:, 1]), 0, None)
    inter = iw * ih
    return inter / np.maximum(a[2] * a[3] + b[:, 2] * b[:, 3] - inter, 1e-9)


def dedupe(anns: list[dict[str, Any]], iou: float) -> list[dict[str, Any]]:
    """Drop annotations whose box overlaps a larger kept one above ``iou`` (LIVECell duplicates)."""
    if len(anns) < 2:
        return anns
    boxes = np.asarray([a.get("bbox", [0, 0, 0, 0]) for a in anns], np.float64).reshape(-1, 4)
    order = np.argsort(-(boxes[:, 2] * boxes[:, 3]), kind="stable")
    kept: list[int] = []
    for k in order:
        if kept and (_box_iou(boxes[k], boxes[kept]) > iou).any():
            continue
        kept.append(int(k))
    return [anns[k] for k in sorted(kept)]


def rasterize(anns: Sequence[dict[str, Any]], h: int, w: int, *, where: str) -> np.ndarray:
    """Instance label image (H, W) int32 from COCO annotations; id k+1 for annotation k."""
    from pycocotools import mask as mask_utils

    rles = []
    for k, ann in enumerate(anns):
        rle = _rle(ann.get("segmentation"), h, w)
        if rle is None:
            raise DataError(
                f"{where}: annotation {ann.get('id', k)} has no usable segmentation (polygon or RLE); "
                "box-only annotations cannot make masks"
            )
        rles.append(rle)
    labels = np.zeros((h, w), np.int32)
    if not rles:
        return labels
    areas = mask_utils.area(rles)
    for k in np.argsort(-np.asarray(areas), kind="stable"):
        with warnings.catch_warnings():  # pycocotools' numpy-2 copy-keyword notice
            warnings.simplefilter("ignore", DeprecationWarning)
            m = mask_utils.decode(rles[k]).astype(bool)
        if m.shape != (h, w):
            raise DataError(f"{where}: annotation {anns[k].get('id', k)} has mask size {m.shape}, image is {(h, w)}")
        labels[m] = k + 1
    return labels


def _index_files(folder: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for dirpath, _dirs, files in os.walk(folder):
        for f in files:
            out.setdefault(f, Path(dirpath) / f)
    return out


@attrs.frozen(kw_only=True)
class CocoImporter(CommonOptions):
    """COCO instance-segmentation json + image folder; LIVECell conventions (cell line from the file name)."""

    group_pattern: str | None = attrs.field(default=LIVECELL_GROUP_PATTERN, validator=_check_regex)
    #: Annotation json files (relative to SOURCE or absolute); empty: every *.json under SOURCE.
    annotations: tuple[str, ...] = ()
    #: Folder searched (recursively, by file name) for the images; None: SOURCE.
    images: str | None = None
    #: Take train / val / test from the json file name (livecell_coco_val.json -> val).
    split_from_file: bool = True
    #: Drop duplicated annotations whose boxes overlap a larger one above this IoU (LACSS uses 0.75 on LIVECell).
    dedupe_iou: float | None = None
    #: Import crowd annotations (iscrowd: 1) as instances too.
    include_crowd: bool = False

    def build(self) -> CocoImporter:
        return self

    def _json_files(self, root: Path) -> list[Path]:
        if root.is_file():
            return [root]
        if self.annotations:
            files = [Path(a) if Path(a).is_absolute() else root / a for a in self.annotations]
            for f in files:
                if not f.is_file():
                    raise DataError(f"{f}: COCO annotation file not found")
            return files
        files = sorted(p for p in root.rglob("*.json") if not any(s.startswith(".") for s in p.parts))
        files = [f for f in files if not (f.parent / "zarr.json").exists() and f.name != "zarr.json"]
        if not files:
            raise DataError(f"{root}: no COCO .json annotation file found (give --set 'annotations=[FILE.json]')")
        return files

    def scan(self, source: Path) -> Iterator[ImageRecord]:
        from weakseg.data.readers import read_image

        root = Path(source)
        base = root.parent if root.is_file() else root
        image_root = Path(self.images) if self.images and Path(self.images).is_absolute() else (
            base / self.images if self.images else base
        )
        if not image_root.is_dir():
            raise DataError(f"{image_root}: image folder not found")
        index = _index_files(image_root)
        records: list[ImageRecord] = []
        for json_file in self._json_files(root):
            try:
                with open(json_file) as fh:
                    data = json.load(fh)
            except (OSError, json.JSONDecodeError) as exc:
                raise DataError(f"{json_file}: cannot read the COCO json ({exc})") from None
            if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
                raise DataError(f"{json_file}: not a COCO instance file (needs 'images' and 'annotations')")
            split = split_from_name(json_file.name) if self.split_from_file else "train"
            by_image: dict[Any, list[dict[str, Any]]] = {}
            for ann in data["annotations"]:
                if ann.get("iscrowd", 0) and not self.include_crowd:
                    continue
                by_image.setdefault(ann.get("image_id"), []).append(ann)
            for img in data["images"]:
                file_name = str(img.get("file_name", ""))
                h, w = int(img.get("height", 0)), int(img.get("width", 0))
                path = image_root / file_name
                if not path.is_file():
                    path = index.get(PurePosixPath(file_name).name, path)
                anns = by_image.get(img.get("id"), [])
                if self.dedupe_iou is not None:
                    anns = dedupe(anns, self.dedupe_iou)
                where = f"{json_file} image {file_name!r}"
                records.append(
                    ImageRecord(
                        image_id=Path(file_name).stem,
                        source=str(path),
                        load_image=(lambda p=path: read_image(p)),
                        load_labels=(lambda a=anns, h=h, w=w, where=where: rasterize(a, h, w, where=where)),
                        group=group_for(PurePosixPath(file_name).name, self),
                        split=split,
                        pixel_size=self.pixel_size,
                        metadata={
                            "files": {"image": str(path), "labels": where},
                            "coco": {"json": str(json_file), "image_id": img.get("id"), "file_name": file_name,
                                     "annotations": len(anns)},
                        },
                    )
                )
        return iter(assign_splits(records, self))
