"""The ``livecell`` preset: LIVECell (Edlund et al., Nature Methods 2021) through the coco importer.

SOURCE is the folder holding (or receiving) the official files::

    SOURCE/annotations/LIVECell/livecell_coco_train.json
    SOURCE/annotations/LIVECell/livecell_coco_val.json
    SOURCE/annotations/LIVECell/livecell_coco_test.json
    SOURCE/images/livecell_train_val_images/<images>.tif   (optionally in one folder per cell line)
    SOURCE/images/livecell_test_images/<images>.tif

Missing files are downloaded with pooch from the official bucket when the network allows; offline, the
error lists the URLs and this layout. The CKS paper trains on LIVECell's train split (3253 images),
validates on val (570) and reports test (1564) per cell line; LACSS removes duplicated annotations
(box IoU > 0.75), which ``dedupe_iou`` does here by default.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import attrs

from weakseg.components import ImageRecord
from weakseg.data.importers.coco import LIVECELL_GROUP_PATTERN, CocoImporter
from weakseg.data.importers.common import CommonOptions, _check_regex
from weakseg.errors import DataError

#: The official bucket (override with WEAKSEG_LIVECELL_URL, e.g. a local mirror).
LIVECELL_URL = "http://livecell-dataset.s3.eu-central-1.amazonaws.com/LIVECell_dataset_2021"
ANNOTATION_DIR = "annotations/LIVECell"
IMAGE_DIRS = {"train": "images/livecell_train_val_images", "val": "images/livecell_train_val_images",
              "test": "images/livecell_test_images"}
#: Known sha256 checksums of the official files ("" = not pinned here; pooch then only logs the hash).
LIVECELL_SHA256: dict[str, str] = {
    "images.zip": "",
    "livecell_coco_train.json": "",
    "livecell_coco_val.json": "",
    "livecell_coco_test.json": "",
}
CELL_LINES = ("A172", "BT474", "BV2", "Huh7", "MCF7", "SHSY5Y", "SKOV3", "SkBr3")


def livecell_urls(base: str | None = None) -> dict[str, str]:
    base = (base or os.environ.get("WEAKSEG_LIVECELL_URL") or LIVECELL_URL).rstrip("/")
    urls = {"images.zip": f"{base}/images.zip"}
    for split in ("train", "val", "test"):
        urls[f"livecell_coco_{split}.json"] = f"{base}/{ANNOTATION_DIR}/livecell_coco_{split}.json"
    return urls


def layout_help(root: Path, parts: tuple[str, ...]) -> str:
    urls = livecell_urls()
    lines = [f"  {name}: {url}" for name, url in urls.items()]
    layout = [f"  {root}/{ANNOTATION_DIR}/livecell_coco_{s}.json" for s in parts]
    layout += [f"  {root}/{d}/  (the .tif images, from images.zip)" for d in sorted({IMAGE_DIRS[s] for s in parts})]
    return "download these files:\n" + "\n".join(lines) + "\nand arrange them as:\n" + "\n".join(layout) + (
        f"\n(unzip images.zip inside {root}; it holds images/livecell_train_val_images and "
        "images/livecell_test_images)"
    )


def _missing(root: Path, parts: tuple[str, ...]) -> list[str]:
    names = [f"livecell_coco_{s}.json" for s in parts]
    missing = [n for n in names if not (root / ANNOTATION_DIR / n).is_file()]
    if any(not (root / IMAGE_DIRS[s]).is_dir() for s in parts):
        missing.append("images.zip")
    return missing


def download_livecell(root: Path, files: list[str]) -> None:
    """Fetch the missing official files with pooch (checksums where pinned); unzip the images."""
    import pooch

    urls = livecell_urls()
    for name in files:
        target_dir = root / ANNOTATION_DIR if name.endswith(".json") else root
        target_dir.mkdir(parents=True, exist_ok=True)
        sha = LIVECELL_SHA256.get(name) or None
        path = pooch.retrieve(urls[name], known_hash=f"sha256:{sha}" if sha else None, fname=name,
                              path=target_dir, progressbar=False)
        if name == "images.zip":
            with zipfile.ZipFile(path) as zf:
                zf.extractall(root)


@attrs.frozen(kw_only=True)
class LivecellImporter(CommonOptions):
    """LIVECell's official COCO files (downloaded with pooch when missing and the network allows)."""

    #: SOURCE may not exist yet: it is where the files are downloaded to.
    downloads_into_source: ClassVar[bool] = True

    group_pattern: str | None = attrs.field(default=LIVECELL_GROUP_PATTERN, validator=_check_regex)
    #: Which official splits to import.
    parts: tuple[str, ...] = ("train", "val", "test")
    #: Only these cell lines (empty: all eight).
    cell_lines: tuple[str, ...] = ()
    #: Download missing files (needs network); False fails with the URLs and the layout instead.
    download: bool = True
    dedupe_iou: float | None = 0.75

    def build(self) -> LivecellImporter:
        return self

    def scan(self, source: Path) -> Iterator[ImageRecord]:
        root = Path(source)
        bad = [p for p in self.parts if p not in IMAGE_DIRS]
        if bad:
            raise DataError(f"livecell: unknown parts {bad}; choose from train, val, test")
        missing = _missing(root, self.parts)
        if missing:
            if not self.download:
                raise DataError(
                    f"{root}: LIVECell files missing ({', '.join(missing)}); {layout_help(root, self.parts)}"
                )
            try:
                download_livecell(root, missing)
            except Exception as exc:  # noqa: BLE001 - offline, proxy, checksum: all end in the same advice
                raise DataError(
                    f"{root}: could not download LIVECell ({type(exc).__name__}: {exc}); "
                    f"{layout_help(root, self.parts)}"
                ) from None
            still = _missing(root, self.parts)
            if still:
                raise DataError(f"{root}: LIVECell files still missing after download ({', '.join(still)}); "
                                f"{layout_help(root, self.parts)}")
        coco = CocoImporter(
            group=self.group,
            group_pattern=self.group_pattern,
            splits=self.splits,
            val_fraction=self.val_fraction,
            test_fraction=self.test_fraction,
            split_seed=self.split_seed,
            pixel_size=self.pixel_size,
            id=self.id,
            annotations=tuple(f"{ANNOTATION_DIR}/livecell_coco_{s}.json" for s in self.parts),
            images="images",
            dedupe_iou=self.dedupe_iou,
        )
        records = coco.scan(root)
        if self.cell_lines:
            wanted = {c.lower() for c in self.cell_lines}
            records = (r for r in records if r.group.lower() in wanted)
        return iter(list(records))
