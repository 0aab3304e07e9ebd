"""Instance label images: largest connected component per id, centroids, instance counts.

Hand-drawn instance masks often carry stray fragments beside a cell's main body (about 11 % of the
Usiigaci ids). A cell is one point, so every id is reduced to its largest connected component before
a centroid is taken; an id with fragments still yields exactly one point.

Centroid convention (as LIVECell / LACSS >= 0.4): the mean pixel index of the component plus 0.5, so
that a pixel's centre sits at ``i + 0.5`` (the weakseg convention for all points).

Large label images are processed in tiles (never loaded whole): a first pass finds each id's bounding
box, a second pass loads, per tile, the region covering the ids that start there.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

#: Label images with at most this many pixels are processed in one piece.
SINGLE_PASS_PIXELS = 4096 * 4096
#: Tile edge (pixels) for the tiled path.
TILE = 2048


def _components(labels: np.ndarray, connectivity: int) -> np.ndarray:
    """Connected components of equal, non-zero value (touching cells of different ids stay apart)."""
    from skimage.measure import label as cc_label

    return cc_label(labels, background=0, connectivity=connectivity)


def _largest_component_table(
    labels: np.ndarray, connectivity: int = 2
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For every id of ``labels``: (ids, component image, chosen component per id, component sizes)."""
    comp = _components(labels, connectivity)
    n_comp = int(comp.max())
    flat = comp.ravel()
    sizes = np.bincount(flat, minlength=n_comp + 1)
    comp_id = np.zeros(n_comp + 1, dtype=np.int64)
    comp_id[flat] = labels.ravel()
    if n_comp == 0:
        empty = np.zeros(0, np.int64)
        return empty, comp, empty, sizes
    cand = np.arange(1, n_comp + 1)
    # sort by id, then by decreasing size (ties: lower component index, i.e. first in raster order)
    order = np.lexsort((cand, -sizes[1:], comp_id[1:]))
    sorted_ids = comp_id[1:][order]
    first = np.r_[True, sorted_ids[1:] != sorted_ids[:-1]]
    chosen = cand[order][first]
    return sorted_ids[first], comp, chosen, sizes


def largest_components(labels: np.ndarray, connectivity: int = 2) -> np.ndarray:
    """Return a copy of ``labels`` keeping only the largest connected component of each id.

    ``connectivity`` 2 (default) joins diagonal neighbours (8-connectivity), 1 only edge neighbours.
    """
    labels = np.asarray(labels)
    _ids, comp, chosen, sizes = _largest_component_table(labels, connectivity)
    keep = np.zeros(sizes.shape[0], dtype=bool)
    keep[chosen] = True
    return np.where(keep[comp], labels, 0).astype(labels.dtype, copy=False)


def _centroids_in_memory(labels: np.ndarray, connectivity: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids, comp, chosen, sizes = _largest_component_table(labels, connectivity)
    if ids.size == 0:
        return ids, np.zeros((0, 2), np.float64), np.zeros(0, np.int64)
    h, w = labels.shape
    flat = comp.ravel()
    n = sizes.shape[0]
    rows = np.repeat(np.arange(h, dtype=np.float64), w)
    cols = np.tile(np.arange(w, dtype=np.float64), h)
    sum_y = np.bincount(flat, weights=rows, minlength=n)
    sum_x = np.bincount(flat, weights=cols, minlength=n)
    area = sizes[chosen]
    pts = np.stack([sum_y[chosen] / area, sum_x[chosen] / area], axis=1) + 0.5
    return ids, pts, area


def _tiles(shape: tuple[int, int], tile: int) -> Iterator[tuple[int, int, int, int]]:
    for y0 in range(0, shape[0], tile):
        for x0 in range(0, shape[1], tile):
            yield y0, min(y0 + tile, shape[0]), x0, min(x0 + tile, shape[1])


def _bounding_boxes(labels: Any, tile: int) -> dict[int, list[int]]:
    """id -> [y0, y1, x0, x1] over the whole (lazy) label image, read tile by tile."""
    from scipy.ndimage import find_objects

    boxes: dict[int, list[int]] = {}
    for y0, y1, x0, x1 in _tiles(labels.shape, tile):
        block = np.asarray(labels[y0:y1, x0:x1])
        if not block.any():
            continue
        if block.min() >= 0 and int(block.max()) < (1 << 24):
            present = np.flatnonzero(np.bincount(block.ravel()))
            slices = find_objects(block)
            pairs = [(int(v), slices[v - 1]) for v in present if v != 0]
        else:
            ids, inverse = np.unique(block, return_inverse=True)
            slices = find_objects(inverse.reshape(block.shape).astype(np.int64) + 1)
            pairs = [(int(v), sl) for v, sl in zip(ids, slices, strict=True) if v != 0 and sl is not None]
        for value, sl in pairs:
            box = [y0 + sl[0].start, y0 + sl[0].stop, x0 + sl[1].start, x0 + sl[1].stop]
            old = boxes.get(value)
            if old is None:
                boxes[value] = box
            else:
                boxes[value] = [min(old[0], box[0]), max(old[1], box[1]), min(old[2], box[2]), max(old[3], box[3])]
    return boxes


def _centroids_tiled(labels: Any, connectivity: int, tile: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    boxes = _bounding_boxes(labels, tile)
    by_tile: dict[tuple[int, int], list[int]] = {}
    for value, (by0, _by1, bx0, _bx1) in boxes.items():
        by_tile.setdefault((by0 // tile, bx0 // tile), []).append(value)
    out_ids: list[np.ndarray] = []
    out_pts: list[np.ndarray] = []
    out_area: list[np.ndarray] = []
    for (ty, tx), members in sorted(by_tile.items()):
        ry0, rx0 = ty * tile, tx * tile
        ry1 = max(boxes[v][1] for v in members)
        rx1 = max(boxes[v][3] for v in members)
        region = np.asarray(labels[ry0:ry1, rx0:rx1])
        ids, pts, area = _centroids_in_memory(region, connectivity)
        mine = np.isin(ids, np.asarray(members, dtype=ids.dtype))
        out_ids.append(ids[mine])
        out_pts.append(pts[mine] + np.array([ry0, rx0], np.float64))
        out_area.append(area[mine])
    if not out_ids:
        return np.zeros(0, np.int64), np.zeros((0, 2), np.float64), np.zeros(0, np.int64)
    ids = np.concatenate(out_ids)
    order = np.argsort(ids, kind="stable")
    return ids[order], np.concatenate(out_pts)[order], np.concatenate(out_area)[order]


def instance_centroids(
    labels: Any, *, connectivity: int = 2, tile: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One point per instance id: the centroid (+0.5) of the id's largest connected component.

    ``labels`` is a 2-D integer array or a lazy array-like (zarr) that is sliced in tiles when it is
    larger than :data:`SINGLE_PASS_PIXELS` (or than ``tile`` squared when ``tile`` is given).
    Returns ``(ids, points (N, 2) float64 (y, x), areas)`` sorted by id.
    """
    shape = tuple(labels.shape)
    if len(shape) != 2:
        raise ValueError(f"expected a 2-D label image, got shape {shape}")
    if tile is None:
        if shape[0] * shape[1] <= SINGLE_PASS_PIXELS:
            return _centroids_in_memory(np.asarray(labels[...]), connectivity)
        tile = TILE
    elif shape[0] <= tile and shape[1] <= tile:
        return _centroids_in_memory(np.asarray(labels[...]), connectivity)
    return _centroids_tiled(labels, connectivity, tile)


def count_instances(labels: Any, *, tile: int = TILE) -> int:
    """Number of distinct non-zero ids in a (possibly lazy) label image, read in tiles."""
    shape = tuple(labels.shape)
    if isinstance(labels, np.ndarray) and labels.size <= SINGLE_PASS_PIXELS:
        top = int(labels.max()) if labels.size else 0
        if labels.min() >= 0 and top < (1 << 24):
            return int(np.count_nonzero(np.bincount(labels.ravel(), minlength=1)[1:]))
        ids = np.unique(labels)
        return int((ids != 0).sum())
    seen = np.zeros(1, bool)
    other: set[int] = set()
    for y0, y1, x0, x1 in _tiles(shape, tile):
        block = np.asarray(labels[y0:y1, x0:x1])
        if not block.any():
            continue
        if block.min() >= 0 and int(block.max()) < (1 << 24):
            counts = np.bincount(block.ravel())
            if counts.size > seen.size:
                seen = np.concatenate([seen, np.zeros(counts.size - seen.size, bool)])
            seen[: counts.size] |= counts > 0
        else:
            other.update(int(v) for v in np.unique(block))
    seen[0] = False
    other.discard(0)
    return int(seen.sum()) + len({v for v in other if not (0 <= v < seen.size and seen[v])})
