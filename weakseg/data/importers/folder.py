"""The ``folder`` importer: images plus instance label images found by file patterns.

Known layouts are detected when ``images``/``labels`` are not given:

==========================  ==================================  ==================================
layout                      images                              labels
==========================  ==================================  ==================================
images/ + labels/ (Kromp)   ``images/*``                        ``labels/{stem}.*``
images/ + masks/            ``images/*``                        ``masks/{stem}.*``
Usiigaci                    ``*/raw.*``                         ``{parent}/instances_ids.*``
Cellpose                    ``**/*`` (not ``*_masks``)          ``{parent}/{stem}_masks.*``
==========================  ==================================  ==================================

Templates take ``{stem}``, ``{name}``, ``{parent}`` (folder relative to SOURCE) and ``{suffix}``, and may
hold glob characters. A CSV in SOURCE whose first column names the images (Kromp's
``image_description.csv``) is attached as metadata; ``group_column`` takes the group from it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

from weakseg.components import ImageRecord
from weakseg.data.importers.common import (
    CommonOptions,
    assign_splits,
    find_files,
    group_for,
    load_metadata_table,
    make_ids,
    posix_rel,
    resolve_template,
    template_fields,
)
from weakseg.errors import DataError

#: (name, images glob, labels template, test) in detection order.
LAYOUTS: tuple[tuple[str, str, str], ...] = (
    ("images/ + labels/", "images/*", "labels/{stem}.*"),
    ("images/ + masks/", "images/*", "masks/{stem}.*"),
    ("Usiigaci (set*/raw.tif + instances_ids.png)", "*/raw.*", "{parent}/instances_ids.*"),
    ("Cellpose (NAME.tif + NAME_masks.tif)", "**/*", "{parent}/{stem}_masks.*"),
)


def detect_layout(root: Path) -> tuple[str, str, str]:
    if (root / "images").is_dir() and (root / "labels").is_dir():
        return LAYOUTS[0]
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return LAYOUTS[1]
    if any(root.glob("*/raw.*")):
        return LAYOUTS[2]
    if any(root.glob("**/*_masks.*")):
        return LAYOUTS[3]
    known = "\n".join(f"  {name}: --set images='{img}' --set labels='{lab}'" for name, img, lab in LAYOUTS)
    raise DataError(
        f"{root}: no known folder layout found; give the patterns explicitly, e.g.\n{known}"
    )


def label_loader(path: Path | None, image: Path, template: str | None) -> Any:
    from weakseg.data.readers import read_plane

    if path is None:
        def missing() -> Any:
            raise DataError(f"{image}: no label image found (template {template!r}); add it or use --skip-bad")

        return missing
    return lambda: read_plane(path, what="label image")


@attrs.frozen(kw_only=True)
class FolderImporter(CommonOptions):
    """Images and instance label images found by file patterns (Usiigaci, Kromp, Cellpose layouts)."""

    #: Glob of image files relative to SOURCE (``**`` recurses); None detects a known layout.
    images: str | None = None
    #: Template of each image's label file (see module docs); None: from the detected layout.
    labels: str | None = None
    #: Template of a nuclear-stain image per image (optional).
    nuclei: str | None = None
    #: An image without a label file is an error (True) or imported without masks (False).
    require_labels: bool = True
    #: Metadata CSV (first column = image name): a path relative to SOURCE, "auto" or None.
    metadata_csv: str | None = "auto"
    #: Metadata column giving each image's group (e.g. Diagnosis for Kromp).
    group_column: str | None = None
    #: Metadata column giving each image's split (train / val / test; e.g. "Train-/Testset split" for Kromp).
    split_column: str | None = None
    #: Globs of files (relative to SOURCE) never taken as images.
    exclude: tuple[str, ...] = ()

    def build(self) -> FolderImporter:
        return self

    def scan(self, source: Path) -> Iterator[ImageRecord]:
        from weakseg.data.readers import read_image, read_plane

        root = Path(source)
        if not root.is_dir():
            raise DataError(f"{root}: not a folder (the folder importer reads a directory of images)")
        images_glob, labels_tpl = self.images, self.labels
        if images_glob is None:
            _name, images_glob, detected_labels = detect_layout(root)
            labels_tpl = labels_tpl or detected_labels
        candidates = find_files(root, images_glob)
        excluded: set[Path] = set()
        for pattern in self.exclude:
            excluded.update(root.glob(pattern))
        pairs: list[tuple[Path, Path | None, Path | None]] = []
        used: set[Path] = set()
        for img in candidates:
            rel = posix_rel(img, root)
            lab = resolve_template(root, labels_tpl, rel, what="labels", image=img) if labels_tpl else None
            nuc = resolve_template(root, self.nuclei, rel, what="nuclei", image=img) if self.nuclei else None
            pairs.append((img, lab, nuc))
            used.update(p for p in (lab, nuc) if p is not None)
        # files that serve as another image's labels / nuclei are not images themselves
        broad = "*" in images_glob.split("/")[-1] and images_glob.split("/")[-1].strip("*") in ("", ".")
        pairs = [
            p for p in pairs if p[0] not in used and p[0] not in excluded and not (broad and _looks_like_mask(p[0]))
        ]
        if not pairs:
            raise DataError(f"{root}: no image files match {images_glob!r}")
        rels = [posix_rel(img, root) for img, _, _ in pairs]
        ids = make_ids(rels, self.id)
        keys = {template_fields(r)["stem"] for r in rels} | set(ids)
        table, table_file = load_metadata_table(root, self.metadata_csv, keys)
        for option in ("group_column", "split_column"):
            if getattr(self, option) and not table:
                raise DataError(f"{root}: {option}={getattr(self, option)!r} needs a metadata CSV (metadata_csv=FILE)")
        records = []
        for (img, lab, nuc), rel, image_id in zip(pairs, rels, ids, strict=True):
            meta_row = table.get(image_id) or table.get(template_fields(rel)["stem"]) or {}
            for column in (self.group_column, self.split_column):
                if column and meta_row and column not in meta_row:
                    raise DataError(f"{table_file}: no column {column!r} (columns: {', '.join(meta_row)})")
            split = "train"
            if self.split_column and meta_row.get(self.split_column):
                split = meta_row[self.split_column].strip().lower()
            files = {"image": str(img)}
            if lab is not None:
                files["labels"] = str(lab)
            if nuc is not None:
                files["nuclei"] = str(nuc)
            load_labels = None
            if labels_tpl and (lab is not None or self.require_labels):
                load_labels = label_loader(lab, img, labels_tpl)
            records.append(
                ImageRecord(
                    image_id=image_id,
                    source=str(img),
                    load_image=(lambda p=img: read_image(p)),
                    load_labels=load_labels,
                    load_nuclei=(lambda p=nuc: read_plane(p, what="nuclear image")) if nuc is not None else None,
                    group=group_for(rel, self, meta_row, self.group_column),
                    split=split,
                    pixel_size=self.pixel_size,
                    metadata={"files": files, "relative_path": rel, **({"table": meta_row} if meta_row else {})},
                )
            )
        return iter(assign_splits(records, self, dict(zip(ids, rels, strict=True))))


def _looks_like_mask(path: Path) -> bool:
    stem = path.name.split(".")[0].lower()
    return stem.endswith(("_masks", "_mask", "_flows", "_seg", "_cp_masks"))
