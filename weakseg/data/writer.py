"""Writing a weakseg store: :class:`StoreWriter` (one image group per record, resumable, in parallel).

Every image group gets its own index entry as its last write, and the root index with ``complete:
true`` is written by :meth:`StoreWriter.close` last of all: an interrupted import leaves a store that
:func:`~weakseg.data.store.open_store` refuses and that the same import resumes.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from weakseg.data.points_io import check_points_inside, write_points_array
from weakseg.data.records import (
    LoadedRecord,
    copy_into,
    jsonable,
    load_record,
    ome_multiscales,
    space_axes,
    store_dtype,
)
from weakseg.data.store import (
    CHUNK,
    FORMAT,
    LABEL_NAME,
    LAZY_COPY_PIXELS,
    REPORT_NAME,
    ImageInfo,
    Store,
    _image_group_path,
    _read_root_meta,
    open_store,
    valid_image_id,
)
from weakseg.errors import DataError


class StoreWriter:
    """Write images into a store; ``close()`` writes the index and marks the store complete.

    An unfinished store at ``path`` made from the same import (same ``fingerprint``) is resumed: images
    whose groups are complete are kept (:meth:`done`), the rest are rewritten. Otherwise an existing
    store is an error unless ``overwrite`` is set. The store that ``overwrite`` replaces is moved aside
    (``.<name>.replaced`` beside it) and deleted only when the new one is complete; an import that
    writes no image puts it back.
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
        self._had_folder = self.path.exists()
        self._aside = self.path.with_name(f".{self.path.name}.replaced")
        if self.path.exists():
            if existing is None:
                if self.path.is_dir() and not any(self.path.iterdir()):
                    pass  # an empty folder is fine
                elif overwrite and (self.path / "zarr.json").is_file():
                    self._set_aside()
                else:
                    raise DataError(
                        f"{self.path}: exists and is not a weakseg store; choose another output path "
                        "(weakseg never deletes folders it did not create)"
                    )
            elif overwrite:
                self._set_aside()
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

    def _set_aside(self) -> None:
        """Move the store being replaced out of the way (kept until the new one is complete).

        When an earlier replacement already keeps a store aside (its import did not finish), that one
        is the original: the unfinished store at ``path`` is deleted instead.
        """
        if self._aside.exists():
            shutil.rmtree(self.path)
        else:
            os.replace(self.path, self._aside)
        self._had_folder = False

    @property
    def n_written(self) -> int:
        """Images written (or kept from an interrupted run) so far."""
        return len(self._entries)

    def remove_unfinished(self) -> None:
        """Delete the unfinished store when no image could be written, so that nothing looking like a
        store is left behind (a folder that existed before is emptied of what the writer put there)."""
        if self._entries:
            raise DataError(f"{self.path}: {len(self._entries)} image(s) are written; refusing to remove the store")
        if self._aside.exists():  # the store --overwrite was to replace: nothing replaces it
            shutil.rmtree(self.path, ignore_errors=True)
            os.replace(self._aside, self.path)
            return
        if not self._had_folder:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        for name in ("zarr.json", "images", REPORT_NAME):
            target = self.path / name
            if target.is_dir():
                shutil.rmtree(target, ignore_errors=True)
            elif target.exists():
                target.unlink()

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
        image_id = record.image_id
        if not valid_image_id(image_id):
            raise DataError(f"{record.source}: invalid image id {image_id!r} (no '/', not empty, no leading '__')")
        loaded = load_record(record, lazy_pixels)
        self.discard(image_id)
        group, image_arr = self._write_image(image_id, loaded, record.pixel_size)
        label_arr, n_instances = self._write_labels(group, loaded, record)
        nuclei_arr = None
        if loaded.nuclei is not None:
            nuclei_arr = self._write_array(
                group, "nuclei", loaded.nuclei, loaded.shape[1:], store_dtype(loaded.nuclei.dtype), ("y", "x")
            )
        group.create_group("points")
        arrays = {"image": image_arr, "labels": label_arr, "nuclei": nuclei_arr}
        n_points = self._write_point_sets(image_id, loaded, arrays, label_sources)
        info = ImageInfo(
            image_id=image_id,
            split=record.split,
            group=record.group,
            shape=loaded.shape,
            dtype=str(loaded.dtype),
            n_instances=int(n_instances),
            has_labels=loaded.labels is not None,
            has_nuclei=loaded.nuclei is not None,
            point_sources=tuple(n_points),
            n_points=n_points,
            pixel_size=record.pixel_size,
            source=str(record.source),
            metadata=jsonable(record.metadata or {}),
        )
        group.attrs["weakseg"] = info.to_dict()  # written last: marks the image group complete
        self._entries[image_id] = info
        return info

    def _write_image(self, image_id: str, loaded: LoadedRecord, pixel_size: float | None) -> tuple[Any, Any]:
        """The NGFF image group (axes c, y, x; scale from the pixel size) and its array ``0``."""
        ps = float(pixel_size or 1.0)
        axes = [{"name": "c", "type": "channel"}, *space_axes(pixel_size)]
        group = self._images.create_group(
            image_id,
            attributes={"ome": {"version": "0.5", "multiscales": [ome_multiscales(image_id, axes, [1.0, ps, ps])]}},
        )
        arr = self._write_array(group, "0", loaded.image, loaded.shape, loaded.dtype, ("c", "y", "x"))
        return group, arr

    def _write_labels(self, group: Any, loaded: LoadedRecord, record: Any) -> tuple[Any, int]:
        """The NGFF label image ``labels/cells`` and its number of instances ((None, 0) without masks)."""
        if loaded.labels is None:
            return None, 0
        from weakseg.data.masks import count_instances

        ps = float(record.pixel_size or 1.0)
        lab_group = group.create_group("labels", attributes={"ome": {"version": "0.5", "labels": [LABEL_NAME]}})
        cells = lab_group.create_group(
            LABEL_NAME,
            attributes={
                "ome": {
                    "version": "0.5",
                    "image-label": {"source": {"image": "../../"}},
                    "multiscales": [ome_multiscales(LABEL_NAME, space_axes(record.pixel_size), [ps, ps])],
                }
            },
        )
        labels = loaded.labels
        label_arr = self._write_array(cells, "0", labels, loaded.shape[1:], np.dtype(np.int32), ("y", "x"))
        n_instances = count_instances(labels if isinstance(labels, np.ndarray) else label_arr)
        if n_instances == 0:
            raise DataError(f"{loaded.files.get('labels', record.source)}: the label image has no cells (all zero)")
        return label_arr, n_instances

    def _write_point_sets(
        self, image_id: str, loaded: LoadedRecord, arrays: Mapping[str, Any], label_sources: Sequence[Any] | None
    ) -> dict[str, int]:
        """The given points (as ``csv``) and those the label sources compute now; ``{name: count}``."""
        from weakseg.data.labels import compute_import_points

        image_group = self.path / _image_group_path(image_id)
        n_points: dict[str, int] = {}
        given = loaded.points
        if given is not None:
            provenance = {"label_source": "csv", "file": str(loaded.files.get("points", ""))}
            write_points_array(image_group, "csv", given, provenance)
            n_points["csv"] = len(given)

        def numpy_or_array(name: str) -> Any:  # computed points read numpy inputs, else the written arrays
            value = getattr(loaded, name)
            return value if value is None or isinstance(value, np.ndarray) else arrays[name]

        computed = compute_import_points(
            label_sources,
            image_id=image_id,
            image=numpy_or_array("image"),
            labels=numpy_or_array("labels"),
            points=given,
            nuclei=numpy_or_array("nuclei"),
        )
        for key, (pts, provenance) in computed.items():
            if len(pts) == 0:
                raise DataError(
                    f"{loaded.image_file}: label source {provenance.get('label_source', key)!r} found no cells "
                    "in this image"
                )
            check_points_inside(pts, loaded.shape[1:], loaded.image_file)
            write_points_array(image_group, key, pts, provenance)
            n_points[key] = len(pts)
        return n_points

    def _write_array(
        self, group: Any, name: str, data: Any, shape: tuple[int, ...], dtype: np.dtype, dims: tuple[str, ...]
    ) -> Any:
        """Create ``group/name`` chunked (C, chunk, chunk) and fill it (numpy in one go, lazy input in blocks)."""
        chunks = (*shape[:-2], min(self.chunk, shape[-2]), min(self.chunk, shape[-1]))
        if isinstance(data, np.ndarray):
            data = data if data.dtype == dtype else data.astype(dtype)
            return group.create_array(name, data=data, chunks=chunks, dimension_names=dims)
        arr = group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, dimension_names=dims)
        copy_into(arr, data)
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

        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise DataError(f"workers must be a positive number of parallel image writers, got {workers!r}")
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
            self.remove_unfinished()
            raise DataError(f"{self.path}: no image could be imported; nothing was written")
        groups = sorted({e.group for e in entries})
        meta = dict(self.root.attrs["weakseg"])
        meta.update(
            {
                "images": [e.to_dict() for e in entries],
                "groups": groups,
                "skipped": len(skipped),
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                **jsonable(dict(extra or {})),
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
        shutil.rmtree(self._aside, ignore_errors=True)  # the replaced store, if any
        return open_store(self.path)

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        # an exception leaves the store incomplete on purpose (re-running resumes it)
        return None

