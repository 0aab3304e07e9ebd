"""Importers: turn user data (COCO json, folders of images and masks, point CSVs, nuclear stains) into records.

Each importer is an attrs config class registered under a name; ``build()`` returns an object with
``scan(source) -> Iterable[ImageRecord]`` whose loaders read files lazily. ``weakseg data import``
writes the records with :class:`weakseg.data.store.StoreWriter`.
"""

from __future__ import annotations

from weakseg.data.importers.a431 import A431Importer
from weakseg.data.importers.coco import CocoImporter
from weakseg.data.importers.folder import FolderImporter
from weakseg.data.importers.livecell import LivecellImporter
from weakseg.data.importers.points import PointsImporter

BUILTIN_IMPORTERS: dict[str, type] = {
    "folder": FolderImporter,
    "coco": CocoImporter,
    "livecell": LivecellImporter,
    "points": PointsImporter,
    "a431": A431Importer,
}

__all__ = ["A431Importer", "BUILTIN_IMPORTERS", "CocoImporter", "FolderImporter", "LivecellImporter", "PointsImporter"]
