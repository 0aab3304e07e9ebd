"""Partially annotated images: the ``region`` label source and the region a training image uses.

``region`` wraps another label source and keeps only its points inside a rule region
(:class:`~weakseg.data.regions.RegionSpec`, e.g. the central half of each image), storing that region
as ``regions/<rule>`` so the losses know where the points are complete. It turns complete point sets
into partial ones for experiments::

    label_source: {type: region, base: {type: centroids}, region: {type: central, fraction: 0.5}}

:func:`region_for` says which stored region a training image uses: the region of the label source
when it has one, else the ``annotated`` region a user imported (``weakseg data region``), else none
(the image is annotated everywhere).
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
import numpy as np

from weakseg.data.regions import ANNOTATED, RegionSpec
from weakseg.errors import DataError
from weakseg.recipe import LabelSourceSpec


@attrs.frozen(kw_only=True)
class RegionSource:
    """Another source's points inside a region only; the region is stored so the losses know it."""

    name: ClassVar[str] = "region"
    needs: ClassVar[tuple[str, ...]] = ()

    #: The label source whose points are kept where they fall inside ``region``.
    base: LabelSourceSpec = attrs.field(factory=lambda: LabelSourceSpec.of("centroids"))
    #: Where the points are kept (and the image counts as annotated): ``{type: central, fraction: 0.5}``
    #: (a centred rectangle of that share of the area) or ``{type: left_half, fraction: 0.5}`` (of the width).
    region: RegionSpec = attrs.field(factory=RegionSpec)

    def build(self) -> RegionSource:
        return self

    def cache_key(self, seed: int) -> str | None:
        return None  # cheap to recompute from the (cached) base points

    def region_name(self) -> str:
        """The store name of the region this source writes, e.g. ``central-0.5``."""
        return self.region.key()

    def points(self, *, image: Any, labels: Any, points: Any, nuclei: Any, rng: np.random.Generator) -> np.ndarray:
        pts = np.zeros((0, 2), np.float32) if points is None else np.asarray(points, np.float32).reshape(-1, 2)
        if image is None:
            raise DataError("label source 'region' needs the image's size; give it a base source")
        shape = tuple(int(v) for v in image.shape[-2:])
        return pts[self.region.contains(pts, shape)]  # type: ignore[arg-type]


def _chain(src: Any) -> list[Any]:
    """A label source and the sources it wraps (``base``), outermost first."""
    from weakseg.data.labels import resolve_label_source

    out = [src]
    base = getattr(src, "base", None)
    while base is not None and len(out) < 16:
        try:
            inner = resolve_label_source(base)
        except TypeError:
            break
        out.append(inner)
        base = getattr(inner, "base", None)
    return out


def source_region(label_source_spec: Any) -> RegionSource | None:
    """The region source in a label source's chain of ``base`` sources, or None."""
    from weakseg.data.labels import resolve_label_source

    for src in _chain(resolve_label_source(label_source_spec)):
        if isinstance(src, RegionSource):
            return src
    return None


def region_for(store: Any, info: Any, label_source_spec: Any) -> str | None:
    """The name of the stored region a training image uses (written first for a rule), or None.

    None means the image is annotated everywhere: its label source draws no region and the store
    holds no ``annotated`` region for it.
    """
    src = source_region(label_source_spec)
    if src is None:
        return ANNOTATED if ANNOTATED in store.regions(info.image_id) else None
    name = src.region_name()
    if name not in store.regions(info.image_id):
        from weakseg import __version__

        provenance = {"label_source": "region", "rule": attrs.asdict(src.region), "weakseg": __version__}
        try:
            store.write_region(info.image_id, src.region, provenance, name=name)
        except OSError as exc:
            raise DataError(
                f"{store.path}: cannot store region {name!r} of image {info.image_id!r} ({exc}); the label "
                "source 'region' needs a writable store"
            ) from None
    return name
