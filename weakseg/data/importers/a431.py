"""The ``a431`` importer: images with a nuclear counter-stain, for unsupervised point labels.

The A431 set of the CKS paper (Shrestha, Kuang & Yu, Mendeley Data 89s3ymz5wn) labels cells by blob
detection on a nuclear stain; this importer stores the stain beside each image so that the ``nuclei``
label source can find the points (``--label-source '{type: nuclei, diameter: 20}'`` computes them at
import, otherwise the recipe's label source does at training time). The stain is either

* a separate file per image (``nuclei='nuclei/{stem}.tif'``, ``nuclei='{parent}/{stem:_cyto=_nuc}.tif'``), or
* a channel of each image (``nuclear_channel=1``), removed from the image unless ``keep_nuclear_channel``.

Optional: instance masks for scoring (``labels='{parent}/{stem:img=masks}.tif'``, the A431 test layout)
and LACSS-style location files (``locations='train.json'``: a list of ``{"image_file": ..., "locations":
[[y, x], ...]}``), stored as the ``csv`` point set.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
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
)
from weakseg.errors import DataError


def _read_locations(path: Path, offset: float) -> dict[str, np.ndarray]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read the locations json ({exc})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of {{image_file, locations}} entries")
    out: dict[str, np.ndarray] = {}
    for k, entry in enumerate(data):
        if not isinstance(entry, dict) or "image_file" not in entry or "locations" not in entry:
            raise DataError(f"{path}: entry {k} lacks image_file or locations")
        pts = np.asarray(entry["locations"], np.float64).reshape(-1, 2) + offset
        out[Path(str(entry["image_file"])).name] = pts
    return out


@attrs.frozen(kw_only=True)
class A431Importer(CommonOptions):
    """Images plus a nuclear-stain image or channel, for nucleus-derived points (the A431 setting)."""

    #: Glob of image files relative to SOURCE.
    images: str = "**/*"
    #: Template of a separate nuclear-stain image per image.
    nuclei: str | None = None
    #: Or: the nuclear stain is this channel of each image.
    nuclear_channel: int | None = None
    #: Keep the nuclear channel in the image too (default: removed).
    keep_nuclear_channel: bool = False
    #: Optional template of instance masks (scoring).
    labels: str | None = None
    #: Optional LACSS-style json with given locations per image file (stored as the csv point set).
    locations: str | None = None
    #: Added to the given locations (0.5 if they are pixel indices).
    offset: float = 0.0

    def build(self) -> A431Importer:
        return self

    def scan(self, source: Path) -> Iterator[ImageRecord]:
        root = Path(source)
        if not root.is_dir():
            raise DataError(f"{root}: not a folder")
        self._check_stain_options()
        locations = {}
        if self.locations is not None:
            loc_path = Path(self.locations) if Path(self.locations).is_absolute() else root / self.locations
            locations = _read_locations(loc_path, self.offset)
        found = self._find(root, locations)
        ids = make_ids([f[1] for f in found], self.id)
        records = [
            self._record(img, rel, nuc, lab, image_id, locations.get(img.name), bool(locations))
            for (img, rel, nuc, lab), image_id in zip(found, ids, strict=True)
        ]
        return iter(assign_splits(records, self, dict(zip(ids, [f[1] for f in found], strict=True))))

    def _check_stain_options(self) -> None:
        """The stain comes from a file template or a channel (exactly one), unless points are given."""
        if self.nuclei is None and self.nuclear_channel is None and self.locations is None:
            raise DataError(
                "the a431 importer needs the nuclear stain: --set nuclei='TEMPLATE' (a separate image per image, "
                "e.g. 'nuclei/{stem}.tif') or --set nuclear_channel=N (a channel of each image); or given "
                "points: --set locations=train.json"
            )
        if self.nuclei is not None and self.nuclear_channel is not None:
            raise DataError("the a431 importer takes nuclei=TEMPLATE or nuclear_channel=N, not both")

    def _find(self, root: Path, locations: dict[str, np.ndarray]) -> list[tuple[Path, str, Path | None, Path | None]]:
        """(image, relative path, nuclear-stain file, mask file) of every image; stain and mask files
        are not images themselves; with given locations only, images without any are left out."""
        found = []
        used: set[Path] = set()
        for img in find_files(root, self.images):
            rel = posix_rel(img, root)
            nuc = resolve_template(root, self.nuclei, rel, what="nuclei", image=img) if self.nuclei else None
            lab = resolve_template(root, self.labels, rel, what="labels", image=img) if self.labels else None
            found.append((img, rel, nuc, lab))
            used.update(p for p in (nuc, lab) if p is not None)
        found = [f for f in found if f[0] not in used]
        if locations:
            found = [f for f in found if f[0].name in locations or self.nuclei or self.nuclear_channel is not None]
        if not found:
            raise DataError(f"{root}: no image files match {self.images!r}")
        return found

    def _record(
        self,
        img: Path,
        rel: str,
        nuc: Path | None,
        lab: Path | None,
        image_id: str,
        pts: np.ndarray | None,
        has_locations: bool,
    ) -> ImageRecord:
        """The record of one image: its loaders (image without the stain channel, stain, masks, points)."""
        from weakseg.data.importers.folder import label_loader

        files = {"image": str(img)}
        if nuc is not None:
            files["nuclei"] = str(nuc)
        if lab is not None:
            files["labels"] = str(lab)
        if has_locations:
            files["points"] = str(self.locations)
        whole = functools.lru_cache(maxsize=1)(functools.partial(_read_whole, img))
        return ImageRecord(
            image_id=image_id,
            source=str(img),
            load_image=functools.partial(self._load_image, whole, img),
            load_nuclei=self._nuclei_loader(whole, img, nuc),
            load_labels=label_loader(lab, img, self.labels) if lab is not None else None,
            load_points=(lambda p=pts: p) if pts is not None else None,
            group=group_for(rel, self),
            split="train",
            pixel_size=self.pixel_size,
            metadata={"files": files, "relative_path": rel},
        )

    def _load_image(self, whole: Callable[[], Any], img: Path) -> Any:
        """The image, without its nuclear channel unless ``keep_nuclear_channel``."""
        arr = whole()
        channel = self.nuclear_channel
        if channel is None or self.keep_nuclear_channel:
            return arr
        if channel >= arr.shape[0]:
            raise DataError(f"{img}: nuclear_channel={channel} but the image has {arr.shape[0]} channel(s)")
        if arr.shape[0] == 1:
            raise DataError(f"{img}: the image has one channel; it cannot also hold the nuclear stain")
        keep = [c for c in range(arr.shape[0]) if c != channel]
        return np.asarray(arr)[keep]

    def _nuclei_loader(self, whole: Callable[[], Any], img: Path, nuc: Path | None) -> Callable[[], Any] | None:
        """The loader of the nuclear stain (a file or a channel); None without a stain."""
        from weakseg.data.readers import read_plane

        channel = self.nuclear_channel

        def from_file() -> Any:
            return read_plane(nuc, what="nuclear image")

        def from_channel() -> Any:
            arr = whole()
            if channel is None or channel >= arr.shape[0]:
                raise DataError(f"{img}: nuclear_channel={channel} but the image has {arr.shape[0]} channel(s)")
            return np.asarray(arr[channel])

        def missing() -> Any:
            raise DataError(f"{img}: no nuclear-stain image found for template {self.nuclei!r}")

        if self.nuclei is not None:
            return from_file if nuc is not None else missing
        return from_channel if channel is not None else None


def _read_whole(path: Path) -> Any:
    from weakseg.data.readers import read_image

    return read_image(path)
