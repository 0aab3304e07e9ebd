"""The weakseg store: one zarr v3 group per data set, OME-Zarr (NGFF 0.5) compatible.

Layout (``STORE`` is a directory)::

    STORE/zarr.json                      root group; attrs["weakseg"] = {format, complete, images: [...], groups, ...}
    STORE/images/<image_id>/             NGFF image group: attrs["ome"] multiscales (axes c, y, x), one level "0"
    STORE/images/<image_id>/0            image (C, Y, X), source dtype, chunks (C, 512, 512)
    STORE/images/<image_id>/labels/cells/0   instance labels (Y, X) int32, 0 = background (NGFF label image)
    STORE/images/<image_id>/nuclei       optional nuclear-stain image (Y, X), same chunks
    STORE/images/<image_id>/points/<source>  point labels (N, 2) float32 (y, x), pixel centres at i + 0.5;
                                          attrs["weakseg"] = {provenance, axes, convention}
    STORE/images/<image_id>/regions/<name>   optional region mask (Y, X) uint8, 1 = annotated (the points are
                                          complete there); attrs["weakseg"] = {provenance, bbox}
    STORE/import_report.json             what an import skipped and why (when it skipped anything)

The image index and ``complete: true`` are written to the root attributes last: a store whose import
was interrupted is never mistaken for a complete one, and :class:`StoreWriter` resumes it (every image
group carries its own index entry once it is fully written).

This module reads stores; :mod:`weakseg.data.writer` writes them (:class:`StoreWriter`, importable
from here too), :mod:`weakseg.data.records` checks what an importer hands over and
:mod:`weakseg.data.points_io` reads and writes the point arrays.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from weakseg.data.points_io import check_points_inside, read_points_array, write_points_array
from weakseg.errors import DataError

__all__ = [
    "CHUNK",
    "FORMAT",
    "LABEL_NAME",
    "LAZY_COPY_PIXELS",
    "REPORT_NAME",
    "ImageInfo",
    "Store",
    "check_points_inside",
    "open_store",
    "read_points_array",
    "summarize",
    "valid_image_id",
    "write_points_array",
]

FORMAT = "weakseg-store/1"
#: Spatial chunk edge of image, label and nuclei arrays.
CHUNK = 512
#: Name of the NGFF label image holding the instance masks.
LABEL_NAME = "cells"
#: Non-ndarray (lazy) inputs larger than this many pixels are copied block by block.
LAZY_COPY_PIXELS = 4096 * 4096
REPORT_NAME = "import_report.json"


def _image_group_path(image_id: str) -> str:
    return f"images/{image_id}"


def valid_image_id(image_id: str) -> bool:
    """Image ids become zarr node names: no '/', not empty, not '.'/'..', no leading '__'."""
    return bool(image_id) and "/" not in image_id and image_id not in (".", "..") and not image_id.startswith("__")


@attrs.frozen(kw_only=True)
class ImageInfo:
    """What the store knows about one image without reading its arrays."""

    image_id: str
    split: str = "train"
    group: str = "all"
    shape: tuple[int, int, int]  # (C, Y, X)
    dtype: str = "uint8"
    n_instances: int = 0
    has_labels: bool = False
    has_nuclei: bool = False
    #: Point sets written at import (``points/<name>``); sources cached later are found with Store.point_sources.
    point_sources: tuple[str, ...] = ()
    n_points: Mapping[str, int] = attrs.field(factory=dict, eq=False)
    pixel_size: float | None = None
    source: str = ""
    metadata: Mapping[str, Any] = attrs.field(factory=dict, eq=False)

    def to_dict(self) -> dict[str, Any]:
        d = attrs.asdict(self)
        d["shape"] = list(self.shape)
        d["point_sources"] = list(self.point_sources)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ImageInfo:
        d = dict(d)
        d["shape"] = tuple(int(v) for v in d["shape"])
        d["point_sources"] = tuple(d.get("point_sources", ()))
        known = {a.name for a in attrs.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


class Store:
    """A complete weakseg store opened for reading (picklable: it re-opens lazily in each process)."""

    def __init__(self, path: Path, meta: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.meta = dict(meta)
        self.images: list[ImageInfo] = [ImageInfo.from_dict(d) for d in self.meta.get("images", [])]
        self._by_id = {info.image_id: info for info in self.images}
        self.groups: list[str] = list(self.meta.get("groups", []))
        self._arrays: dict[str, Any] = {}

    # pickling: drop open arrays (workers re-open them)
    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "meta": self.meta}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["meta"])

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, images={len(self.images)}, groups={self.groups})"

    def __len__(self) -> int:
        return len(self.images)

    @property
    def splits(self) -> list[str]:
        """Split names present, in first-seen order."""
        return list(dict.fromkeys(info.split for info in self.images))

    def info(self, image_id: str) -> ImageInfo:
        try:
            return self._by_id[image_id]
        except KeyError:
            from weakseg.registry import close_matches

            raise DataError(
                f"{self.path}: no image {image_id!r} in the store{close_matches(image_id, list(self._by_id))}"
                " (run `weakseg data info STORE` to list images)"
            ) from None

    def group_index(self, group: str) -> int:
        return self.groups.index(group)

    def select(self, split: str | None = None, groups: Sequence[str] = ()) -> list[ImageInfo]:
        """Images of ``split`` (all when None) whose group is in ``groups`` (all when empty)."""
        out = [i for i in self.images if (split is None or i.split == split) and (not groups or i.group in groups)]
        return out

    def _open(self, rel: str) -> Any:
        arr = self._arrays.get(rel)
        if arr is None:
            import zarr

            try:
                arr = zarr.open_array(str(self.path / rel), mode="r")
            except (FileNotFoundError, KeyError) as exc:
                msg = f"{self.path / rel}: array missing from the store ({exc}); re-import the data"
                raise DataError(msg) from None
            self._arrays[rel] = arr
        return arr

    def image(self, image_id: str) -> Any:
        """The image array (C, Y, X), lazy: slice it to read."""
        self.info(image_id)
        return self._open(f"{_image_group_path(image_id)}/0")

    def labels(self, image_id: str) -> Any | None:
        """The instance label array (Y, X) int32, lazy; None when the image has no masks."""
        if not self.info(image_id).has_labels:
            return None
        return self._open(f"{_image_group_path(image_id)}/labels/{LABEL_NAME}/0")

    def nuclei(self, image_id: str) -> Any | None:
        """The nuclear-stain image (Y, X), lazy; None when the import had none."""
        if not self.info(image_id).has_nuclei:
            return None
        return self._open(f"{_image_group_path(image_id)}/nuclei")

    def point_sources(self, image_id: str) -> list[str]:
        """Every point set stored for the image (written at import or cached by label sources)."""
        self.info(image_id)
        folder = self.path / _image_group_path(image_id) / "points"
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if (p / "zarr.json").is_file() and not p.name.startswith("."))

    def points(self, image_id: str, source: str) -> np.ndarray | None:
        """Points (N, 2) float32 (y, x) of one stored point set, or None when it is absent."""
        self.info(image_id)
        folder = self.path / _image_group_path(image_id) / "points" / source
        return read_points_array(folder)

    def points_provenance(self, image_id: str, source: str) -> dict[str, Any] | None:
        folder = self.path / _image_group_path(image_id) / "points" / source
        if not (folder / "zarr.json").is_file():
            return None
        meta = json.loads((folder / "zarr.json").read_text())
        return meta.get("attributes", {}).get("weakseg", {}).get("provenance")

    def write_points(self, image_id: str, source: str, points: np.ndarray, provenance: Mapping[str, Any]) -> None:
        """Store (or replace) a point set; safe when several processes write the same set at once."""
        self.info(image_id)
        write_points_array(self.path / _image_group_path(image_id), source, points, provenance)

    def regions(self, image_id: str) -> list[str]:
        """Names of the region masks stored for the image (see :mod:`weakseg.data.regions`)."""
        self.info(image_id)
        folder = self.path / _image_group_path(image_id) / "regions"
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if (p / "zarr.json").is_file() and not p.name.startswith("."))

    def region(self, image_id: str, name: str = "annotated") -> Any | None:
        """The region mask (Y, X) uint8 (1 = annotated), lazy; None when the image has no such region."""
        from weakseg.data.regions import region_exists

        self.info(image_id)
        if not region_exists(self.path / _image_group_path(image_id), name):
            return None
        return self._open(f"{_image_group_path(image_id)}/regions/{name}")

    def region_attrs(self, image_id: str, name: str = "annotated") -> dict[str, Any] | None:
        """``{provenance, bbox}`` of a stored region (bbox: y0, y1, x0, x1), or None when it is absent."""
        from weakseg.data.regions import region_attrs

        self.info(image_id)
        return region_attrs(self.path / _image_group_path(image_id), name)

    def write_region(self, image_id: str, mask: Any, provenance: Mapping[str, Any], name: str = "annotated") -> None:
        """Store (or replace) a region mask (Y, X), non-zero = annotated, or a rule (``RegionSpec``)."""
        from weakseg.data.regions import write_region

        info = self.info(image_id)
        write_region(self.path / _image_group_path(image_id), name, mask, info.shape[-2:], provenance)
        self._arrays.pop(f"{_image_group_path(image_id)}/regions/{name}", None)

    def summary(self) -> dict[str, Any]:
        """Counts for ``weakseg data info``: images, instances, points, groups and sizes per split."""
        return summarize(self)


def _read_root_meta(path: Path) -> dict[str, Any] | None:
    meta_file = path / "zarr.json"
    if not meta_file.is_file():
        return None
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(
            f"{path}: the store's zarr.json is unreadable ({exc}); re-run the import with --overwrite"
        ) from None
    return meta.get("attributes", {}).get("weakseg")


def open_store(path: str | Path) -> Store:
    """Open a complete store for reading; a missing or unfinished store raises DataError naming it."""
    path = Path(path)
    if not path.exists():
        raise DataError(
            f"{path}: store not found; create it with `weakseg data import IMPORTER SOURCE -o {path}` "
            "(or give the recipe a data.synthetic section for demo data)"
        )
    meta = _read_root_meta(path)
    if meta is None or meta.get("format") != FORMAT:
        raise DataError(f"{path}: not a weakseg store (no weakseg attributes in zarr.json)")
    if not meta.get("complete"):
        raise DataError(
            f"{path}: the store is incomplete (its import was interrupted or failed); re-run the same "
            "`weakseg data import` command to resume it, or add --overwrite to start again"
        )
    return Store(path, meta)


def summarize(store: Store) -> dict[str, Any]:
    def block(infos: list[ImageInfo]) -> dict[str, Any]:
        points: dict[str, int] = {}
        for i in infos:
            for name, n in i.n_points.items():
                points[name] = points.get(name, 0) + int(n)
        groups: dict[str, int] = {}
        for i in infos:
            groups[i.group] = groups.get(i.group, 0) + 1
        shapes: dict[str, int] = {}
        for i in infos:
            key = f"{i.shape[1]}x{i.shape[2]}"
            shapes[key] = shapes.get(key, 0) + 1
        return {
            "images": len(infos),
            "instances": int(sum(i.n_instances for i in infos)),
            "images_with_labels": sum(1 for i in infos if i.has_labels),
            "points": points,
            "groups": dict(sorted(groups.items())),
            "sizes": dict(sorted(shapes.items(), key=lambda kv: -kv[1])),
            "pixels": int(sum(i.shape[1] * i.shape[2] for i in infos)),
        }

    out = {
        "store": str(store.path),
        "format": store.meta.get("format"),
        "complete": bool(store.meta.get("complete")),
        "channels": sorted({i.shape[0] for i in store.images}),
        "dtypes": sorted({i.dtype for i in store.images}),
        "group_names": list(store.groups),
        **block(store.images),
        "splits": {split: block(store.select(split)) for split in store.splits},
    }
    if store.meta.get("importer"):
        out["importer"] = store.meta["importer"]
    if store.meta.get("skipped"):
        out["skipped"] = store.meta["skipped"]
    return out



def __getattr__(name: str) -> Any:
    """``StoreWriter`` lives in :mod:`weakseg.data.writer` (which imports this module): loaded on first use."""
    if name == "StoreWriter":
        from weakseg.data.writer import StoreWriter

        return StoreWriter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
