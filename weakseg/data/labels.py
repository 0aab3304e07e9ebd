"""Label sources: where a training image's point labels come from.

* ``centroids`` - one point per instance mask, the centroid (+0.5) of the id's largest connected
  component (the LIVECell setting of the CKS paper, Sec. IV-A).
* ``nuclei`` - blob detection (Laplacian or difference of Gaussians, scikit-image) on a nuclear-stain
  image with an expected nucleus size: the fully unsupervised A431 setting of the CKS paper
  (Sec. V-F: "point labels generated using an unsupervised blob detection algorithm based on nuclei
  counter-stain data").
* ``csv`` - points given by the user (imported with the ``points`` importer, or read from a CSV file).
* ``jitter`` - another source's points with a fraction moved (by pixels or a fraction of the cell
  diameter) and a fraction dropped (seeded), to study sloppy labels.
* ``region`` (:mod:`weakseg.data.partial`) - another source's points inside a region only, the region
  stored so that the losses know where the points are complete.

:func:`points_for` is the one entry point the data pipeline uses; deterministic sources are cached in
the store as ``points/<cache key>`` once computed.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import attrs
import numpy as np

from weakseg.data.blobs import detect_nuclei
from weakseg.data.partial import RegionSource
from weakseg.errors import DataError
from weakseg.recipe import LabelSourceSpec

_EMPTY = np.zeros((0, 2), np.float32)


def _digest(config: Any) -> str:
    text = json.dumps(attrs.asdict(config, value_serializer=_ser), sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def _ser(_inst: Any, _field: Any, value: Any) -> Any:
    if hasattr(value, "config") and hasattr(value, "type"):  # a nested component spec
        return {"type": value.type, **attrs.asdict(value.config, value_serializer=_ser)}
    return value


def _config_dict(config: Any) -> dict[str, Any]:
    if attrs.has(type(config)):
        return json.loads(json.dumps(attrs.asdict(config, value_serializer=_ser), default=str))
    return {}


def image_rng(seed: int, image_id: str) -> np.random.Generator:
    """A generator seeded by (seed, image id): the same points in every process and on every run."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(image_id.encode())])


# --------------------------------------------------------------------------------------------
# The built-in label sources (attrs configs; build() returns the source itself)
# --------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class CentroidsSource:
    """One point per instance mask: centroid (+0.5) of each id's largest connected component."""

    name: ClassVar[str] = "centroids"
    needs: ClassVar[tuple[str, ...]] = ("labels",)

    #: 2 joins diagonal neighbours into one component (8-connectivity), 1 only edge neighbours.
    connectivity: Literal[1, 2] = 2

    def build(self) -> CentroidsSource:
        return self

    def cache_key(self, seed: int) -> str | None:
        return self.name if self == CentroidsSource() else f"{self.name}-{_digest(self)}"

    def points(self, *, image: Any, labels: Any, points: Any, nuclei: Any, rng: np.random.Generator) -> np.ndarray:
        if labels is None:
            raise DataError(
                "label source 'centroids' needs instance masks and this image has none; "
                "use label_source: {type: nuclei, diameter: ...} or {type: csv}"
            )
        from weakseg.data.masks import instance_centroids

        _ids, pts, _area = instance_centroids(labels, connectivity=self.connectivity)
        return pts.astype(np.float32)


@attrs.frozen(kw_only=True)
class NucleiSource:
    """Blob detection (LoG/DoG) on a nuclear stain with an expected nucleus size: unsupervised points."""

    name: ClassVar[str] = "nuclei"
    needs: ClassVar[tuple[str, ...]] = ("nuclei", "image")

    #: Expected nucleus diameter in pixels; blobs from diameter/size_range to diameter*size_range are found.
    diameter: float = attrs.field(default=12.0, validator=attrs.validators.gt(0))
    size_range: float = attrs.field(default=1.5, validator=attrs.validators.ge(1))
    method: Literal["log", "dog"] = "log"
    #: Detection threshold on the image scaled to [0, 1] by its percentiles; lower finds fainter nuclei.
    threshold: float = attrs.field(default=0.05, validator=attrs.validators.gt(0))
    #: Blobs overlapping more than this fraction are merged (skimage ``overlap``).
    overlap: float = 0.5
    #: The nuclear stain is this channel of the image; None: the stored nuclear image, else channel 0.
    channel: int | None = None
    #: Dark nuclei on a bright background.
    invert: bool = False
    percentiles: tuple[float, float] = (1.0, 99.8)

    def build(self) -> NucleiSource:
        return self

    def cache_key(self, seed: int) -> str | None:
        return f"{self.name}-{_digest(self)}"

    def _plane(self, image: Any, nuclei: Any) -> Any:
        if self.channel is not None:
            if image is None or self.channel >= image.shape[0]:
                n = None if image is None else image.shape[0]
                raise DataError(f"label source 'nuclei': channel {self.channel} does not exist (the image has {n})")
            from weakseg.data.readers import Plane

            return image[self.channel] if isinstance(image, np.ndarray) else Plane(image, self.channel)
        if nuclei is not None:
            return nuclei
        if image is not None and image.shape[0] == 1:
            from weakseg.data.readers import Plane

            return image[0] if isinstance(image, np.ndarray) else Plane(image, 0)
        raise DataError(
            "label source 'nuclei' needs a nuclear stain: import one (a431 importer) or set channel: N "
            "to use a channel of the image"
        )

    def points(self, *, image: Any, labels: Any, points: Any, nuclei: Any, rng: np.random.Generator) -> np.ndarray:
        plane = self._plane(image, nuclei)
        return detect_nuclei(
            plane,
            diameter=self.diameter,
            size_range=self.size_range,
            method=self.method,
            threshold=self.threshold,
            overlap=self.overlap,
            invert=self.invert,
            percentiles=self.percentiles,
        )


@attrs.frozen(kw_only=True)
class CsvSource:
    """Points given by the user: imported with the ``points`` importer, or read from a CSV file."""

    name: ClassVar[str] = "csv"
    needs: ClassVar[tuple[str, ...]] = ("points",)

    #: CSV file with columns image_id (or image), y, x; None: the points the importer stored.
    path: str | None = None
    #: Added to coordinates read from ``path`` (0.5 for pixel-index coordinates such as napari's).
    offset: float = 0.0

    def build(self) -> CsvSource:
        return self

    def cache_key(self, seed: int) -> str | None:
        return None  # reading is as cheap as a cache

    def points_for_image(self, image_id: str) -> np.ndarray | None:
        if self.path is None:
            return None
        table = _read_points_table(str(Path(self.path).resolve()))
        pts = table.get(image_id)
        if pts is None:
            return _EMPTY.copy()
        return (pts + self.offset).astype(np.float32)

    def points(self, *, image: Any, labels: Any, points: Any, nuclei: Any, rng: np.random.Generator) -> np.ndarray:
        if points is None:
            raise DataError(
                "label source 'csv' found no given points for this image: import them with the points "
                "importer, or set path: FILE.csv (columns image_id, y, x)"
            )
        return np.asarray(points, np.float32).reshape(-1, 2)


@functools.cache
def _read_points_table(path: str) -> dict[str, np.ndarray]:
    from weakseg.data.importers.points import read_points_csv_table

    return read_points_csv_table(Path(path))


@attrs.frozen(kw_only=True)
class JitterSource:
    """Another source's points, a fraction moved by up to ``distance`` px and a fraction dropped (seeded)."""

    name: ClassVar[str] = "jitter"
    needs: ClassVar[tuple[str, ...]] = ()

    base: LabelSourceSpec = attrs.field(factory=lambda: LabelSourceSpec.of("centroids"))
    #: Fraction of points displaced.
    move: float = attrs.field(default=0.5, validator=[attrs.validators.ge(0), attrs.validators.le(1)])
    #: Displaced points move this far at most, in a uniformly random direction (see ``distance_unit``).
    distance: float = attrs.field(default=5.0, validator=attrs.validators.ge(0))
    #: ``pixels``, or ``diameter``: ``distance`` is a fraction of the image's cell diameter (importer
    #: metadata ``cell_diameter``, else the masks, else the point spacing), e.g. 0.15.
    distance_unit: Literal["pixels", "diameter"] = "pixels"
    #: Fraction of points removed.
    drop: float = attrs.field(default=0.1, validator=[attrs.validators.ge(0), attrs.validators.le(1)])
    #: Fixed seed; None uses the run's seed.
    seed: int | None = None

    def build(self) -> JitterSource:
        return self

    def cache_key(self, seed: int) -> str | None:
        return None  # cheap to recompute from the (cached) base points

    def in_pixels(self, diameter: float | None) -> JitterSource:
        """The same source with ``distance`` in pixels, given the image's cell diameter."""
        if self.distance_unit == "pixels":
            return self
        if diameter is None or not diameter > 0:
            raise DataError(
                "label source 'jitter' with distance_unit: diameter needs the image's cell diameter: importer "
                "metadata cell_diameter, instance masks or at least two points; or use distance_unit: pixels"
            )
        return attrs.evolve(self, distance=self.distance * float(diameter), distance_unit="pixels")

    def points(self, *, image: Any, labels: Any, points: Any, nuclei: Any, rng: np.random.Generator) -> np.ndarray:
        pts = np.asarray(points if points is not None else _EMPTY, np.float64).reshape(-1, 2)
        n = len(pts)
        if n == 0:
            return _EMPTY.copy()
        n_drop = int(round(self.drop * n))
        n_move = int(round(self.move * n))
        order = rng.permutation(n)
        keep = np.sort(order[n_drop:])
        moved = rng.permutation(keep)[: min(n_move, len(keep))]
        out = pts.copy()
        angle = rng.uniform(0, 2 * np.pi, size=len(moved))
        radius = self.distance * np.sqrt(rng.uniform(0, 1, size=len(moved)))  # uniform over the disc
        out[moved, 0] += radius * np.sin(angle)
        out[moved, 1] += radius * np.cos(angle)
        if image is not None:
            h, w = image.shape[-2:]
            out[:, 0] = np.clip(out[:, 0], 0, h)
            out[:, 1] = np.clip(out[:, 1], 0, w)
        return out[keep].astype(np.float32)


BUILTIN_LABEL_SOURCES: dict[str, type] = {
    "centroids": CentroidsSource,
    "nuclei": NucleiSource,
    "csv": CsvSource,
    "jitter": JitterSource,
    "region": RegionSource,
}


# --------------------------------------------------------------------------------------------
# Resolving and computing
# --------------------------------------------------------------------------------------------


def resolve_label_source(spec: Any) -> Any:
    """A label-source object from a recipe spec, a registered name, a YAML-ish mapping or an object."""
    from weakseg.recipe import ComponentSpec, structure

    if isinstance(spec, ComponentSpec):
        return spec.build()
    if isinstance(spec, str | Mapping):
        return structure(spec, LabelSourceSpec, root="label_source").build()
    if hasattr(spec, "points"):
        return spec
    raise TypeError(f"not a label source: {spec!r}")


def source_name(src: Any) -> str:
    return str(getattr(src, "name", type(src).__name__))


def cache_key(src: Any, seed: int) -> str | None:
    fn = getattr(src, "cache_key", None)
    if fn is None:
        return None
    return fn(seed)


def provenance(src: Any, seed: int) -> dict[str, Any]:
    from weakseg import __version__

    return {"label_source": source_name(src), "config": _config_dict(src), "seed": int(seed),
            "weakseg": __version__}


def _in_pixels(src: Any, info: Any, labels: Any, points: Any) -> Any:
    """A jitter source measured in cell diameters, turned into pixels for one image."""
    if getattr(src, "distance_unit", "pixels") != "diameter":
        return src
    from weakseg.data.cellsize import image_diameter

    def load_labels() -> Any:
        arr = labels() if callable(labels) else labels
        return None if arr is None else np.asarray(arr[...])

    return src.in_pixels(image_diameter(info, load_labels, lambda: points))


def _compute(src: Any, arrays: Mapping[str, Any], image_id: str, seed: int, base_points: Any = None) -> np.ndarray:
    rng_seed = seed if getattr(src, "seed", None) is None else src.seed
    pts = src.points(
        image=arrays.get("image"),
        labels=arrays.get("labels"),
        points=base_points if base_points is not None else arrays.get("points"),
        nuclei=arrays.get("nuclei"),
        rng=image_rng(rng_seed, image_id),
    )
    from weakseg.components import as_points

    return as_points(pts)


def compute_import_points(
    label_sources: Sequence[Any] | None,
    *,
    image_id: str,
    image: Any,
    labels: Any,
    points: Any,
    nuclei: Any,
    seed: int = 0,
) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
    """Points of the import-time label sources, keyed by their store name (cache key or source name).

    ``None`` means the default: ``centroids`` when the image has masks, nothing otherwise.
    """
    if label_sources is None:
        label_sources = [CentroidsSource()] if labels is not None else []
    arrays = {"image": image, "labels": labels, "points": points, "nuclei": nuclei}
    out: dict[str, tuple[np.ndarray, dict[str, Any]]] = {}
    for spec in label_sources:
        src = resolve_label_source(spec)
        base = None
        if isinstance(getattr(src, "base", None), LabelSourceSpec | str | Mapping):
            base_src = resolve_label_source(src.base)
            base = _compute(base_src, arrays, image_id, seed)
        if isinstance(src, CsvSource) and src.path is not None:
            pts = src.points_for_image(image_id)
        else:
            info = _ShapeOnly(np.shape(image), has_labels=labels is not None)
            pts = _compute(_in_pixels(src, info, labels, base), arrays, image_id, seed, base)
        key = cache_key(src, seed) or source_name(src)
        out[key] = (pts, provenance(src, seed))
    return out


def _arrays_for(store: Any, info: Any, needs: Sequence[str] | None, lazy_pixels: int) -> dict[str, Any]:
    """Arrays a label source needs, read whole when small, kept lazy (zarr) when large."""
    big = info.shape[1] * info.shape[2] > lazy_pixels
    wanted = set(needs) if needs is not None else {"image", "labels", "nuclei", "points"}

    def load(arr: Any) -> Any:
        if arr is None:
            return None
        return arr if big else np.asarray(arr[...])

    arrays: dict[str, Any] = {}
    if "image" in wanted:
        arrays["image"] = load(store.image(info.image_id))
    if "labels" in wanted:
        arrays["labels"] = load(store.labels(info.image_id))
    if "nuclei" in wanted:
        arrays["nuclei"] = load(store.nuclei(info.image_id))
    if "points" in wanted:
        arrays["points"] = store.points(info.image_id, "csv")
    return arrays


def points_for(
    store: Any,
    image_info: Any,
    label_source_spec: Any,
    seed: int = 0,
    *,
    cache: bool = True,
    lazy_pixels: int = 8192 * 8192,
) -> np.ndarray:
    """Point labels (N, 2) float32 (y, x) of one image from the chosen label source.

    ``label_source_spec`` is a recipe ``LabelSourceSpec`` (``cfg.label_source``), a registered name, a
    mapping ``{type: ..., ...}`` or a built source. Deterministic sources are read from / cached in the
    store as ``points/<cache key>`` (a read-only store just skips the cache).
    """
    src = resolve_label_source(label_source_spec)
    image_id = image_info.image_id
    key = cache_key(src, seed)
    if key is not None:
        cached = store.points(image_id, key)
        if cached is not None:
            return cached
    try:
        base = None
        if isinstance(getattr(src, "base", None), LabelSourceSpec | str | Mapping):
            base = points_for(store, image_info, src.base, seed, cache=cache, lazy_pixels=lazy_pixels)
        if isinstance(src, CsvSource) and src.path is not None:
            pts = src.points_for_image(image_id)
        else:
            arrays = _arrays_for(store, image_info, getattr(src, "needs", None), lazy_pixels)
            if base is not None:
                arrays.setdefault("image", _ShapeOnly(image_info.shape))
            src = _in_pixels(src, image_info, lambda: store.labels(image_id), base)
            pts = _compute(src, arrays, image_id, seed, base)
    except DataError as exc:
        raise DataError(f"{store.path} image {image_id!r}: {exc}") from None
    if key is not None and cache:
        with contextlib.suppress(OSError):  # a read-only store: no cache
            store.write_points(image_id, key, pts, provenance(src, seed))
    return pts


class _ShapeOnly:
    """Stands in for an image when a source only needs its shape (jitter clips to the image)."""

    def __init__(self, shape: tuple[int, ...], has_labels: bool = False) -> None:
        self.shape = tuple(shape)
        self.has_labels = has_labels


def all_points(store: Any, infos: Sequence[Any], label_source_spec: Any, seed: int = 0) -> dict[str, np.ndarray]:
    """:func:`points_for` over many images (call it once in the main process, before workers start)."""
    return {info.image_id: points_for(store, info, label_source_spec, seed) for info in infos}
