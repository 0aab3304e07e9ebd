"""weakseg.data: built-in importers and label sources (registered through the weakseg entry-point group).

Cheap to import: the config classes import numpy and attrs only; readers, zarr, scikit-image and
pycocotools are imported when an importer or label source runs.
"""

from __future__ import annotations

from weakseg.hookspecs import hookimpl
from weakseg.registry import RegistrySink


@hookimpl
def weakseg_register_label_sources(registry: RegistrySink) -> None:
    from weakseg.data.labels import BUILTIN_LABEL_SOURCES

    for name, cls in BUILTIN_LABEL_SOURCES.items():
        registry.add(name, cls)


@hookimpl
def weakseg_register_importers(registry: RegistrySink) -> None:
    from weakseg.data.importers import BUILTIN_IMPORTERS

    for name, cls in BUILTIN_IMPORTERS.items():
        registry.add(name, cls)
