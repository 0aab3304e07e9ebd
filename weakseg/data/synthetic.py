"""Seeded synthetic microscopy: touching irregular cells, a nuclear channel, instance masks.

Two looks, both single-channel uint16 like real data:

* ``phase`` - phase-contrast-like: a grey, unevenly lit background; cells slightly darker and
  textured, a dark rim inside the membrane and a bright halo outside it, darker nuclei.
* ``fluorescence`` - a cytoplasmic stain: dark background, cells of varying brightness that is
  highest around the nucleus, shot noise.

Cells are star-shaped blobs (an ellipse with random low harmonics on its radius) placed on a jittered
grid with gaps; where neighbours overlap, each pixel goes to the cell it is relatively deepest in, so
touching cells share irregular borders. Every cell has one nucleus, stored as a separate nuclear-stain
image (the A431 setting of the CKS paper, where points come from a nuclear counter-stain).

``weakseg.data.prepare.ensure_store`` writes such a store for demo recipes (``data.synthetic``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from weakseg.recipe import SyntheticData


@attrs.frozen
class SyntheticImage:
    """One generated image: ``image`` (1, H, W) uint16, ``labels`` (H, W) int32, ``nuclei`` (H, W) uint16."""

    image_id: str
    modality: str
    image: np.ndarray
    labels: np.ndarray
    nuclei: np.ndarray
    centers: np.ndarray  # (N, 2) nucleus centres (y, x), pixel-centre convention, one per label id 1..N


def _modality(cfg: SyntheticData, index: int) -> str:
    if cfg.modality == "mixed":
        return "phase" if index % 2 == 0 else "fluorescence"
    return cfg.modality


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter, zoom

    if sigma > 4:  # low frequencies: smooth a coarse grid, then upsample (a large kernel is slow)
        factor = sigma / 2
        coarse = tuple(max(4, int(np.ceil(s / factor))) for s in shape)
        n = gaussian_filter(rng.standard_normal(coarse).astype(np.float32), 2.0)
        n = zoom(n, (shape[0] / coarse[0], shape[1] / coarse[1]), order=1)[: shape[0], : shape[1]]
    else:
        n = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return n / (n.std() + 1e-6)


def _cells(rng: np.random.Generator, size: int, diameter: float) -> tuple[np.ndarray, list[dict[str, float]]]:
    """Touching irregular cells: (labels int32, per-cell shape parameters)."""
    from weakseg.data.masks import largest_components

    h = w = size
    spacing = diameter * rng.uniform(0.85, 1.05)
    keep_fraction = rng.uniform(0.6, 0.9)
    best = np.full((h, w), np.inf, np.float32)
    labels = np.zeros((h, w), np.int32)
    cells: list[dict[str, float]] = []
    rows = np.arange(spacing / 2, h, spacing * 0.87)
    for r_i, cy0 in enumerate(rows):
        offset = spacing / 2 if r_i % 2 else 0.0
        for cx0 in np.arange(offset + spacing / 4, w, spacing):
            if rng.random() > keep_fraction:
                continue
            cy = cy0 + rng.normal(0, 0.18 * spacing)
            cx = cx0 + rng.normal(0, 0.18 * spacing)
            radius = diameter / 2 * rng.uniform(0.8, 1.3)
            elong = rng.uniform(1.0, 1.7)
            theta = rng.uniform(0, np.pi)
            harm = [(k, rng.normal(0, 0.1 / k * 1.5), rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4, 5)]
            reach = int(np.ceil(radius * elong * 1.6)) + 2
            y0, y1 = max(0, int(cy) - reach), min(h, int(cy) + reach + 1)
            x0, x1 = max(0, int(cx) - reach), min(w, int(cx) + reach + 1)
            if y1 <= y0 or x1 <= x0:
                continue
            yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
            dy, dx = yy + 0.5 - cy, xx + 0.5 - cx
            u = dx * np.cos(theta) + dy * np.sin(theta)
            v = -dx * np.sin(theta) + dy * np.cos(theta)
            u = u / np.sqrt(elong)
            v = v * np.sqrt(elong)
            phi = np.arctan2(v, u)
            rad = np.ones_like(phi)
            for k, a, p in harm:
                rad = rad + a * np.cos(k * phi + p)
            nd = np.hypot(u, v) / (radius * np.clip(rad, 0.55, 1.6))
            win_best = best[y0:y1, x0:x1]
            take = (nd < 1.0) & (nd < win_best)
            if take.sum() < 0.2 * np.pi * radius**2:
                continue
            cell_id = len(cells) + 1
            win_best[take] = nd[take]
            labels[y0:y1, x0:x1][take] = cell_id
            cells.append({"cy": cy, "cx": cx, "radius": radius, "elong": elong, "theta": theta})
    labels = largest_components(labels)
    # drop cells squeezed to slivers, then renumber 1..N
    counts = np.bincount(labels.ravel(), minlength=len(cells) + 1)
    alive = [i for i in range(1, len(cells) + 1) if counts[i] >= 0.25 * np.pi * (diameter / 2) ** 2]
    lut = np.zeros(len(cells) + 1, np.int32)
    lut[alive] = np.arange(1, len(alive) + 1)
    return lut[labels], [cells[i - 1] for i in alive]


def _nuclei(rng: np.random.Generator, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A nucleus mask per cell (inside the cell, near its centroid) and the nucleus centres."""
    from weakseg.data.masks import instance_centroids

    ids, cents, areas = instance_centroids(labels)
    nuc = np.zeros(labels.shape, np.int32)
    centers = np.zeros((len(ids), 2), np.float64)
    h, w = labels.shape
    for k, (cid, (cy, cx), area) in enumerate(zip(ids, cents, areas, strict=True)):
        r_cell = np.sqrt(area / np.pi)
        rn = r_cell * rng.uniform(0.38, 0.5)
        ny = cy + rng.normal(0, 0.12 * r_cell)
        nx = cx + rng.normal(0, 0.12 * r_cell)
        reach = int(np.ceil(rn * 1.5)) + 2
        y0, y1 = max(0, int(ny) - reach), min(h, int(ny) + reach + 1)
        x0, x1 = max(0, int(nx) - reach), min(w, int(nx) + reach + 1)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        e = rng.uniform(1.0, 1.35)
        t = rng.uniform(0, np.pi)
        dy, dx = yy + 0.5 - ny, xx + 0.5 - nx
        u = (dx * np.cos(t) + dy * np.sin(t)) / np.sqrt(e)
        v = (-dx * np.sin(t) + dy * np.cos(t)) * np.sqrt(e)
        inside = (np.hypot(u, v) < rn) & (labels[y0:y1, x0:x1] == cid)
        if not inside.any():  # keep one nucleus per cell even in slivers
            inside = labels[y0:y1, x0:x1] == cid
        nuc[y0:y1, x0:x1][inside] = cid
        ys, xs = np.nonzero(nuc[y0:y1, x0:x1] == cid)
        centers[k] = (ys.mean() + y0 + 0.5, xs.mean() + x0 + 0.5) if len(ys) else (cy, cx)
    return nuc, centers


def _render_phase(rng: np.random.Generator, labels: np.ndarray, nuc: np.ndarray) -> np.ndarray:
    from scipy.ndimage import distance_transform_edt, gaussian_filter
    from skimage.segmentation import find_boundaries

    h, w = labels.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / max(h, w)
    img = 0.5 + 0.08 * (rng.uniform(-1, 1) * yy + rng.uniform(-1, 1) * xx) + 0.03 * _smooth_noise(rng, (h, w), h / 6)
    fg = labels > 0
    interior = fg & ~find_boundaries(labels, mode="inner")
    d_in = distance_transform_edt(interior)
    d_out = distance_transform_edt(~fg)
    per_cell = rng.uniform(-0.12, -0.04, size=int(labels.max()) + 1).astype(np.float32)
    per_cell[0] = 0
    texture = 0.035 * _smooth_noise(rng, (h, w), 1.2)
    img = img + per_cell[labels] + fg * texture
    img = img - 0.16 * fg * np.exp(-d_in / 1.5)  # dark rim inside the membrane
    img = img + 0.22 * (~fg) * np.exp(-d_out / 2.5)  # bright phase halo outside
    img = img - 0.07 * (nuc > 0)
    img = gaussian_filter(img.astype(np.float32), 0.8) + rng.normal(0, 0.015, size=(h, w)).astype(np.float32)
    return np.clip(img * 40000, 0, 65535).astype(np.uint16)


def _render_fluorescence(rng: np.random.Generator, labels: np.ndarray, nuc: np.ndarray) -> np.ndarray:
    from scipy.ndimage import distance_transform_edt, gaussian_filter
    from skimage.segmentation import find_boundaries

    h, w = labels.shape
    fg = labels > 0
    interior = fg & ~find_boundaries(labels, mode="inner")
    d_in = distance_transform_edt(interior)
    bright = rng.uniform(0.25, 0.9, size=int(labels.max()) + 1).astype(np.float32)
    bright[0] = 0
    profile = 1 - np.exp(-d_in / 3.0)  # dimmer towards the membrane
    img = 0.04 + bright[labels] * (0.45 + 0.55 * profile) * (1 + 0.15 * _smooth_noise(rng, (h, w), 1.5))
    img = img + 0.25 * bright[labels] * (nuc > 0)
    img = gaussian_filter(img.astype(np.float32), 1.0)
    photons = rng.poisson(np.clip(img, 0, None) * 400).astype(np.float32) / 400
    return np.clip(photons * 30000 + rng.normal(300, 60, size=(h, w)), 0, 65535).astype(np.uint16)


def _render_nuclei(rng: np.random.Generator, nuc: np.ndarray) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    h, w = nuc.shape
    level = rng.uniform(0.5, 1.0, size=int(nuc.max()) + 1).astype(np.float32)
    level[0] = 0
    img = gaussian_filter(level[nuc], 1.2) * (1 + 0.1 * _smooth_noise(rng, (h, w), 2.0)) + 0.03
    photons = rng.poisson(np.clip(img, 0, None) * 300).astype(np.float32) / 300
    return np.clip(photons * 30000 + rng.normal(200, 40, size=(h, w)), 0, 65535).astype(np.uint16)


def synthetic_image(cfg: SyntheticData, index: int) -> SyntheticImage:
    """Image ``index`` of the synthetic set ``cfg`` (deterministic in ``(cfg.seed, index)``)."""
    rng = np.random.default_rng([cfg.seed, index, 7])
    modality = _modality(cfg, index)
    diameter = cfg.cell_diameter * rng.uniform(0.85, 1.15)
    labels, _cells_params = _cells(rng, cfg.size, diameter)
    nuc, centers = _nuclei(rng, labels)
    image = _render_phase(rng, labels, nuc) if modality == "phase" else _render_fluorescence(rng, labels, nuc)
    nuclei = _render_nuclei(rng, nuc)
    return SyntheticImage(
        image_id=f"{modality}_{index:04d}",
        modality=modality,
        image=image[None],
        labels=labels,
        nuclei=nuclei,
        centers=centers.astype(np.float32),
    )


def synthetic_images(cfg: SyntheticData) -> Iterator[SyntheticImage]:
    for i in range(cfg.n_images):
        yield synthetic_image(cfg, i)


def synthetic_records(cfg: SyntheticData) -> list[Any]:
    """Image records (one per synthetic image) for :class:`~weakseg.data.store.StoreWriter`, splits assigned."""
    import functools

    from weakseg.components import ImageRecord
    from weakseg.data.importers.common import CommonOptions, assign_splits

    @functools.lru_cache(maxsize=32)  # the three loaders of one record run back to back
    def make(i: int) -> SyntheticImage:
        return synthetic_image(cfg, i)

    records = []
    for i in range(cfg.n_images):
        modality = _modality(cfg, i)
        records.append(
            ImageRecord(
                image_id=f"{modality}_{i:04d}",
                source=f"synthetic(seed={cfg.seed}, index={i})",
                load_image=lambda i=i: make(i).image,
                load_labels=lambda i=i: make(i).labels,
                load_nuclei=lambda i=i: make(i).nuclei,
                group=modality,
                split="train",
                metadata={"modality": modality, "generator": "weakseg.data.synthetic"},
            )
        )
    rules = CommonOptions(val_fraction=cfg.val_fraction, split_seed=cfg.seed)
    records = assign_splits(records, rules)
    # a tiny set still gets a val image when a fraction was asked for
    if cfg.val_fraction > 0 and not any(r.split == "val" for r in records) and len(records) > 1:
        records[-1] = attrs.evolve(records[-1], split="val")
    return records


def write_synthetic_store(
    path: str | Path, cfg: SyntheticData | None = None, *, overwrite: bool = False, workers: int | None = None
) -> Any:
    """Generate ``cfg.n_images`` images and write them (with masks, centroid points, nuclei) as a store."""
    from weakseg.data.store import StoreWriter

    cfg = cfg or SyntheticData()
    desc = attrs.asdict(cfg)
    writer = StoreWriter(path, overwrite=overwrite, fingerprint={"synthetic": desc})
    writer.add_all(synthetic_records(cfg), workers=workers)
    return writer.close(extra={"importer": {"type": "synthetic", **desc}, "synthetic": desc})
