"""The weakseg store: one zarr v3 group per data set, OME-Zarr (NGFF 0.5) compatible.

Layout (``STORE`` is a directory)::

    STORE/zarr.json                      root group; attrs["weakseg"] = {format, complete, images: [...], groups, ...}
    STORE/images/<image_id>/             NGFF image group: attrs["ome"] multiscales (axes c, y, x), one level "0"
    STORE/images/<image_id>/0            image (C, Y, X), source dtype, chunks (C, 512, 512)
    STORE/images/<image_id>/labels/cells/0   instance labels (Y, X) int32, 0 = background (NGFF label image)
    STORE/images/<image_id>/nuclei       optional nuclear-stain image (Y, X), same chunks
    STORE/images/<image_id>/points/<source>  point labels (N, 2) float32 (y, x), pixel centres at i + 0.5;
                                          attrs["weakseg"] = {provenance, axes, convention}
    STORE/import_report.json             what an import skipped and why (when it skipped anything)

The image index and ``complete: true`` are written to the root attributes last: a store whose import
was interrupted is never mistaken for a complete one, and :class:`StoreWriter` resumes it (every image
group carries its own index entry once it is fully written).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from weakseg.errors import DataError

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


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _ome_multiscales(name: str, axes: list[dict[str, str]], scale: list[float]) -> dict[str, Any]:
    return {
        "name": name,
        "axes": axes,
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
    }


def _space_axes(pixel_size: float | None) -> list[dict[str, str]]:
    out = []
    for name in ("y", "x"):
        ax = {"name": name, "type": "space"}
        if pixel_size is not None:
            ax["unit"] = "micrometer"
        out.append(ax)
    return out


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
    final = folder / source
    if final.exists():
        shutil.rmtree(final, ignore_errors=True)
    try:
        os.replace(tmp, final)
    except OSError:  # another process stored the same set meanwhile
        shutil.rmtree(tmp, ignore_errors=True)


def _as_cyx(image: Any, source: str) -> Any:
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = image[None]
        if image.ndim != 3:
            raise DataError(f"{source}: expected an image (C, Y, X) or (Y, X), got shape {image.shape}")
        return image
    shape = tuple(getattr(image, "shape", ()))
    if len(shape) == 2:

        class _Expand:  # (Y, X) lazy -> (1, Y, X)
            def __init__(self, inner: Any) -> None:
                self.inner, self.shape, self.dtype, self.ndim = inner, (1, *shape), np.dtype(inner.dtype), 3

            def __getitem__(self, key: Any) -> np.ndarray:
                key = key if isinstance(key, tuple) else (key,)
                key = key + (slice(None),) * (3 - len(key))
                return np.asarray(self.inner[key[1:]])[None][key[0]]

        return _Expand(image)
    if len(shape) != 3:
        raise DataError(f"{source}: expected an image (C, Y, X) or (Y, X), got shape {shape}")
    return image


def _store_dtype(dtype: np.dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return np.dtype(np.uint8)
    if dtype.kind == "f" and dtype.itemsize > 4:
        return np.dtype(np.float32)
    if dtype.kind not in "uif":
        raise DataError(f"unsupported image data type {dtype}")
    return dtype


def _materialize(arr: Any, limit: int) -> Any:
    """Small lazy inputs are read whole; large ones stay lazy."""
    if isinstance(arr, np.ndarray):
        return arr
    shape = tuple(arr.shape)
    if shape[-1] * shape[-2] <= limit:
        return np.asarray(arr[(slice(None),) * len(shape)])
    return arr


def _copy_into(target: Any, source: Any) -> None:
    """Copy a (possibly lazy, possibly huge) array into a zarr array, in parallel chunk-aligned blocks."""
    if isinstance(source, np.ndarray):
        target[...] = source
        return
    import dask.array as da

    shape = tuple(source.shape)
    chunks = (*shape[:-2], min(shape[-2], CHUNK * 2), min(shape[-1], CHUNK * 8))
    lazy = da.from_array(source, chunks=chunks, asarray=True, lock=False, fancy=False)
    da.store(lazy, target, lock=False, scheduler="threads")


class StoreWriter:
    """Write images into a store; ``close()`` writes the index and marks the store complete.

    An unfinished store at ``path`` made from the same import (same ``fingerprint``) is resumed: images
    whose groups are complete are kept (:meth:`done`), the rest are rewritten. Otherwise an existing
    store is an error unless ``overwrite`` is set.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        overwrite: bool = False,
        fingerprint: Mapping[str, Any] | None = None,
        chunk: int = CHUNK,
    ) -> None:
        import zarr

        self.path = Path(path)
        self.chunk = chunk
        self.fingerprint = json.loads(json.dumps(dict(fingerprint or {}), default=str))
        self._entries: dict[str, ImageInfo] = {}
        self.resumed: list[str] = []
        existing = _read_root_meta(self.path) if self.path.exists() else None
        resume = False
        if self.path.exists():
            if existing is None:
                if self.path.is_dir() and not any(self.path.iterdir()):
                    pass  # an empty folder is fine
                elif overwrite and (self.path / "zarr.json").is_file():
                    shutil.rmtree(self.path)
                else:
                    raise DataError(
                        f"{self.path}: exists and is not a weakseg store; choose another output path "
                        "(weakseg never deletes folders it did not create)"
                    )
            elif overwrite:
                shutil.rmtree(self.path)
            elif existing.get("complete"):
                raise DataError(f"{self.path}: a complete store already exists; add --overwrite to replace it")
            elif fingerprint is not None and existing.get("fingerprint") == self.fingerprint:
                resume = True
            else:
                raise DataError(
                    f"{self.path}: holds an unfinished import of other data or with other options; "
                    "add --overwrite to start again"
                )
        if resume:
            self.root = zarr.open_group(str(self.path), mode="r+")
        else:
            self.root = zarr.open_group(str(self.path), mode="w", zarr_format=3)
            self.root.attrs["weakseg"] = {
                "format": FORMAT,
                "complete": False,
                "fingerprint": self.fingerprint,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            self.root.require_group("images")
        self._resume = resume
        self._images = self.root["images"]
        report = self.path / REPORT_NAME
        if report.exists() and not resume:
            report.unlink()

    # ---- resume support -------------------------------------------------------------------
    def done(self, image_id: str) -> ImageInfo | None:
        """The index entry of an image fully written by an earlier run of this import, if any."""
        if not self._resume:
            return None
        meta_file = self.path / _image_group_path(image_id) / "zarr.json"
        if not meta_file.is_file():
            return None
        try:
            entry = json.loads(meta_file.read_text()).get("attributes", {}).get("weakseg")
        except (OSError, json.JSONDecodeError):
            return None
        if not entry:
            return None
        info = ImageInfo.from_dict(entry)
        self._entries[image_id] = info
        self.resumed.append(image_id)
        return info

    def discard(self, image_id: str) -> None:
        """Remove whatever was written for ``image_id`` (a failed or skipped image)."""
        self._entries.pop(image_id, None)
        shutil.rmtree(self.path / _image_group_path(image_id), ignore_errors=True)

    # ---- writing one image ----------------------------------------------------------------
    def add(
        self,
        record: Any,
        *,
        label_sources: Sequence[Any] | None = None,
        lazy_pixels: int = LAZY_COPY_PIXELS,
    ) -> ImageInfo:
        """Validate and write one :class:`~weakseg.components.ImageRecord`; returns its index entry.

        ``label_sources``: label-source objects whose points are computed and stored now (under their
        cache key); ``None`` means "centroids when the image has masks".
        """
        from weakseg.data.labels import compute_import_points

        image_id = record.image_id
        if not valid_image_id(image_id):
            raise DataError(f"{record.source}: invalid image id {image_id!r} (no '/', not empty, no leading '__')")
        files = dict(record.metadata.get("files", {})) if record.metadata else {}
        image_file = files.get("image", record.source)

        image = _call_loader(record.load_image, image_file, "image")
        image = _materialize(_as_cyx(image, image_file), lazy_pixels)
        c, h, w = (int(v) for v in image.shape)
        dtype = _store_dtype(image.dtype)

        labels = None
        if record.load_labels is not None:
            label_file = files.get("labels", record.source)
            labels = _materialize(_call_loader(record.load_labels, label_file, "label image"), lazy_pixels)
            _check_plane(labels, (h, w), label_file, image_file, "label image")
            if np.dtype(labels.dtype).kind not in "uib" and not (
                isinstance(labels, np.ndarray) and np.array_equal(labels, np.round(labels))
            ):
                raise DataError(f"{label_file}: the label image holds non-integer values; expected instance ids")
            if isinstance(labels, np.ndarray):
                if labels.size and (labels.min() < 0 or labels.max() > np.iinfo(np.int32).max):
                    raise DataError(f"{label_file}: label ids must lie in 0 .. 2^31-1")
                labels = labels.astype(np.int32, copy=False)
                if not labels.any():
                    raise DataError(
                        f"{label_file}: the label image has no cells (all zero); remove the image or use --skip-bad"
                    )

        nuclei = None
        if record.load_nuclei is not None:
            nuclei_file = files.get("nuclei", record.source)
            nuclei = _materialize(_call_loader(record.load_nuclei, nuclei_file, "nuclear image"), lazy_pixels)
            if isinstance(nuclei, np.ndarray) and nuclei.ndim == 3 and nuclei.shape[0] == 1:
                nuclei = nuclei[0]
            _check_plane(nuclei, (h, w), nuclei_file, image_file, "nuclear image")

        given = None
        if record.load_points is not None:
            points_file = files.get("points", record.source)
            given = _call_loader(record.load_points, points_file, "points")
            from weakseg.components import as_points

            given = as_points(given)
            check_points_inside(given, (h, w), points_file)
            if len(given) == 0:
                raise DataError(f"{points_file}: no points for image {image_file}; an image needs at least one cell")

        # ---- write -------------------------------------------------------------------------
        self.discard(image_id)
        ps = float(record.pixel_size or 1.0)
        group = self._images.create_group(
            image_id,
            attributes={
                "ome": {
                    "version": "0.5",
                    "multiscales": [
                        _ome_multiscales(
                            image_id, [{"name": "c", "type": "channel"}, *_space_axes(record.pixel_size)], [1.0, ps, ps]
                        )
                    ],
                }
            },
        )
        arr = self._write_array(group, "0", image, (c, h, w), dtype, ("c", "y", "x"))
        n_instances = 0
        label_arr = None
        if labels is not None:
            lab_group = group.create_group("labels", attributes={"ome": {"version": "0.5", "labels": [LABEL_NAME]}})
            cells = lab_group.create_group(
                LABEL_NAME,
                attributes={
                    "ome": {
                        "version": "0.5",
                        "image-label": {"source": {"image": "../../"}},
                        "multiscales": [_ome_multiscales(LABEL_NAME, _space_axes(record.pixel_size), [ps, ps])],
                    }
                },
            )
            label_arr = self._write_array(cells, "0", labels, (h, w), np.dtype(np.int32), ("y", "x"))
            from weakseg.data.masks import count_instances

            n_instances = count_instances(labels if isinstance(labels, np.ndarray) else label_arr)
            if n_instances == 0:
                raise DataError(f"{files.get('labels', record.source)}: the label image has no cells (all zero)")
        nuclei_arr = None
        if nuclei is not None:
            nuclei_arr = self._write_array(group, "nuclei", nuclei, (h, w), _store_dtype(nuclei.dtype), ("y", "x"))
        group.create_group("points")

        image_group = self.path / _image_group_path(image_id)
        n_points: dict[str, int] = {}
        if given is not None:
            write_points_array(image_group, "csv", given, {"label_source": "csv", "file": str(files.get("points", ""))})
            n_points["csv"] = len(given)
        computed = compute_import_points(
            label_sources,
            image_id=image_id,
            image=image if isinstance(image, np.ndarray) else arr,
            labels=labels if isinstance(labels, np.ndarray) or labels is None else label_arr,
            points=given,
            nuclei=nuclei if isinstance(nuclei, np.ndarray) or nuclei is None else nuclei_arr,
        )
        for key, (pts, provenance) in computed.items():
            if len(pts) == 0:
                raise DataError(
                    f"{image_file}: label source {provenance.get('label_source', key)!r} found no cells in this image"
                )
            check_points_inside(pts, (h, w), image_file)
            write_points_array(image_group, key, pts, provenance)
            n_points[key] = len(pts)

        info = ImageInfo(
            image_id=image_id,
            split=record.split,
            group=record.group,
            shape=(c, h, w),
            dtype=str(dtype),
            n_instances=int(n_instances),
            has_labels=labels is not None,
            has_nuclei=nuclei is not None,
            point_sources=tuple(n_points),
            n_points=n_points,
            pixel_size=record.pixel_size,
            source=str(record.source),
            metadata=_jsonable(record.metadata or {}),
        )
        group.attrs["weakseg"] = info.to_dict()  # written last: marks the image group complete
        self._entries[image_id] = info
        return info

    def _write_array(
        self, group: Any, name: str, data: Any, shape: tuple[int, ...], dtype: np.dtype, dims: tuple[str, ...]
    ) -> Any:
        """Create ``group/name`` chunked (C, chunk, chunk) and fill it (numpy in one go, lazy input in blocks)."""
        chunks = (*shape[:-2], min(self.chunk, shape[-2]), min(self.chunk, shape[-1]))
        if isinstance(data, np.ndarray):
            data = data if data.dtype == dtype else data.astype(dtype)
            return group.create_array(name, data=data, chunks=chunks, dimension_names=dims)
        arr = group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, dimension_names=dims)
        _copy_into(arr, data)
        return arr

    def write_points(self, image_id: str, source: str, points: np.ndarray, provenance: Mapping[str, Any]) -> None:
        """Add a point set to an image already written by this writer."""
        if image_id not in self._entries:
            raise KeyError(f"image {image_id!r} was not written by this writer")
        write_points_array(self.path / _image_group_path(image_id), source, points, provenance)
        info = self._entries[image_id]
        n_points = {**info.n_points, source: int(len(points))}
        sources = tuple(dict.fromkeys((*info.point_sources, source)))
        info = attrs.evolve(info, point_sources=sources, n_points=n_points)
        self.root["images"][image_id].attrs["weakseg"] = info.to_dict()
        self._entries[image_id] = info

    # ---- many images in parallel ------------------------------------------------------------
    def add_all(
        self,
        records: Iterable[Any],
        *,
        label_sources: Sequence[Any] | None = None,
        skip_bad: bool = False,
        workers: int | None = None,
        progress: Callable[[str, str], None] | None = None,
        lazy_pixels: int = LAZY_COPY_PIXELS,
    ) -> list[dict[str, str]]:
        """Write records in parallel (one dask task per image); returns the skipped ones.

        Images already complete from an interrupted run of the same import are kept. A bad image
        (unreadable, shape mismatch, points outside, no cells) raises :class:`DataError` naming the
        file, or, with ``skip_bad``, is left out and listed in the returned report.
        """
        import dask

        records = list(records)
        seen: dict[str, str] = {}
        for r in records:
            if r.image_id in seen:
                raise DataError(
                    f"two images map to the same image id {r.image_id!r}: {seen[r.image_id]} and {r.source}; "
                    "set the importer's id option (e.g. --set id=path)"
                )
            seen[r.image_id] = str(r.source)
        todo = []
        for r in records:
            if self.done(r.image_id) is not None:
                if progress:
                    progress(r.image_id, "resumed")
                continue
            todo.append(r)

        failures: list[BaseException] = []  # the first one aborts the rest (non-skip mode)

        def one(record: Any) -> dict[str, str] | None:
            if failures:
                return None  # aborting: leave the remaining images for a resumed run
            try:
                self.add(record, label_sources=label_sources, lazy_pixels=lazy_pixels)
            except DataError as exc:
                self.discard(record.image_id)
                if not skip_bad:
                    failures.append(exc)
                    return None
                if progress:
                    progress(record.image_id, "skipped")
                return {"image_id": record.image_id, "source": str(record.source), "error": str(exc)}
            except BaseException as exc:  # noqa: BLE001 - re-raised below, once every task has stopped
                self.discard(record.image_id)
                failures.append(exc)
                return None
            if progress:
                progress(record.image_id, "written")
            return None

        tasks = [dask.delayed(one, pure=False)(r) for r in todo]
        n = workers or min(len(todo), os.cpu_count() or 1) or 1
        results = dask.compute(*tasks, scheduler="threads", num_workers=n) if tasks else ()
        if failures:
            # no task is still writing now: an immediate re-run resumes cleanly
            exc = failures[0]
            if isinstance(exc, DataError) and len(todo) > 1:
                raise DataError(f"{exc}\n(the import stopped; fix the file and re-run to resume, or add --skip-bad "
                                "to import the rest and get a report)") from None
            raise exc
        skipped = [r for r in results if r is not None]
        self.order = [r.image_id for r in records]
        return skipped

    # ---- finishing --------------------------------------------------------------------------
    def close(self, *, extra: Mapping[str, Any] | None = None, skipped: Sequence[Mapping[str, str]] = ()) -> Store:
        """Write the index and ``complete: true`` (last); returns the store opened for reading."""
        order = getattr(self, "order", None) or list(self._entries)
        entries = [self._entries[i] for i in order if i in self._entries]
        entries += [e for i, e in self._entries.items() if i not in set(order)]
        if not entries:
            raise DataError(f"{self.path}: no image could be imported; nothing was written")
        groups = sorted({e.group for e in entries})
        meta = dict(self.root.attrs["weakseg"])
        meta.update(
            {
                "images": [e.to_dict() for e in entries],
                "groups": groups,
                "skipped": len(skipped),
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                **_jsonable(dict(extra or {})),
            }
        )
        meta["complete"] = False
        self.root.attrs["weakseg"] = meta
        if skipped:
            (self.path / REPORT_NAME).write_text(
                json.dumps({"store": str(self.path), "imported": len(entries), "skipped": list(skipped)}, indent=2)
            )
        meta["complete"] = True
        self.root.attrs["weakseg"] = meta  # the last write: the store is complete
        return open_store(self.path)

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        # an exception leaves the store incomplete on purpose (re-running resumes it)
        return None


def _call_loader(loader: Callable[[], Any], file: str, what: str) -> Any:
    try:
        return loader()
    except DataError:
        raise
    except (OSError, ValueError, TypeError, KeyError, IndexError, RuntimeError) as exc:
        raise DataError(f"{file}: cannot read the {what} ({type(exc).__name__}: {exc})") from None


def _check_plane(arr: Any, shape: tuple[int, int], file: str, image_file: str, what: str) -> None:
    got = tuple(int(v) for v in arr.shape)
    if len(got) != 2:
        raise DataError(f"{file}: the {what} has shape {got}; expected a single-channel 2-D image")
    if got != shape:
        raise DataError(
            f"{file}: the {what} has shape {got[0]}x{got[1]} but its image {image_file} is {shape[0]}x{shape[1]}; "
            "check that the files belong together"
        )


def check_points_inside(points: np.ndarray, shape: tuple[int, int], file: str) -> None:
    """Points must lie inside the image: 0 <= y <= H and 0 <= x <= W (pixel edges included)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if not len(pts):
        return
    bad = ~np.isfinite(pts).all(axis=1) | (pts[:, 0] < 0) | (pts[:, 1] < 0) | (pts[:, 0] > shape[0]) | (
        pts[:, 1] > shape[1]
    )
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{file}: {int(bad.sum())} point(s) lie outside the {shape[0]}x{shape[1]} image, first: point {k} at "
            f"(y={pts[k, 0]:.1f}, x={pts[k, 1]:.1f}); check the column order (y, x) and the coordinate units"
        )


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
