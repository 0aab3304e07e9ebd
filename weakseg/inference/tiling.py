"""Tiles with overlap for images of any size, and stitching of the instances found in them.

Why tiles: a whole-slide image does not fit through the network at once, and batching equal tiles
keeps the accelerator busy. The pieces:

- :func:`plan_tiles` cuts the image into equal tiles that overlap by at least ``overlap`` pixels.
  Every tile owns a *core*: the cores partition the image, and each core edge that borders another
  tile lies at least ``overlap / 2`` pixels inside the tile. An instance is kept only from the tile
  whose core holds its location, so an instance whose mask reaches no further than ``overlap / 2``
  from its location is always kept whole, from a tile that saw all of it; instances cut by a tile
  edge have their location near that edge, outside the core, and are dropped there. A small tolerance
  around internal core edges lets a cell whose location wobbles across a core edge between the two
  tiles survive; the (rare) duplicates this produces are removed by distance, as the model's own
  non-maximum suppression would (8 px in the paper's detector).
- :func:`read_tile` standardises a tile with statistics of the whole image (computed band by band
  by :func:`weakseg.data.normalize.scan_image`, so a 10k x 10k image is never held as floats): the
  model expects per-image standardisation, and weakseg.data.normalize is its one home.
- :class:`LabelStitcher` pastes instances tile by tile into an int32 label array (numpy, memmap or
  zarr), the higher score winning where instances overlap, and finally renumbers labels 1..M in
  order of decreasing score, like :meth:`weakseg.nn.instances.Instances.to_label_image`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import attrs
import numpy as np

from weakseg.data.normalize import image_stats, standardize
from weakseg.data.readers import channel_layout, guess_axes, to_cyx
from weakseg.errors import DataError

__all__ = [
    "ChannelFirst",
    "LabelStitcher",
    "LabelTable",
    "Tile",
    "as_view",
    "axis_tiles",
    "cross_tile_duplicates",
    "image_stats",
    "in_core",
    "plan_tiles",
    "read_tile",
    "row_bands",
]

#: Pixels per band when relabelling or measuring walks over a large label array.
BAND_PIXELS = 1 << 22


# --------------------------------------------------------------------------------------------
# Image views: anything sliceable in (C, Y, X) order
# --------------------------------------------------------------------------------------------


class ChannelFirst:
    """A (C, H, W) view of a numpy-like array (numpy, memmap, zarr) that is read region by region.

    ``axes`` names the axes of the underlying array, one letter each; which of them are channels is
    decided by :func:`weakseg.data.readers.channel_layout` (the rule the data importers use too):
    ``y`` and ``x`` are required, ``t`` and ``z`` must have length 1, every other axis (``c``,
    ``s`` for RGB samples, ``q``...) is a channel axis. Nothing is read until :meth:`read` is
    called, so lazy arrays stay lazy.
    """

    def __init__(self, array: Any, axes: str = "cyx", name: str = "image") -> None:
        axes = axes.lower()
        shape = tuple(int(v) for v in array.shape)
        self._other, self._y, self._x = channel_layout(axes, shape, name)
        self.array = array
        self.axes = axes
        self.name = name

    @property
    def shape(self) -> tuple[int, int, int]:
        s = tuple(int(v) for v in self.array.shape)
        channels = int(np.prod([s[i] for i in self._other])) if self._other else 1
        return (channels, s[self._y], s[self._x])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    def read(self, y0: int = 0, y1: int | None = None, x0: int = 0, x1: int | None = None) -> np.ndarray:
        """The region [y0:y1, x0:x1] of every channel as a (C, h, w) numpy array of the stored dtype."""
        _, h, w = self.shape
        index: list[Any] = [slice(None)] * len(self.axes)
        index[self._y] = slice(y0, h if y1 is None else y1)
        index[self._x] = slice(x0, w if x1 is None else x1)
        return to_cyx(np.asarray(self.array[tuple(index)]), self._other, self._y, self._x)


def as_view(image: Any, name: str = "image") -> ChannelFirst:
    """Wrap an array of any layout :func:`weakseg.data.readers.guess_axes` accepts ((H, W),
    (C, H, W), (H, W, C) RGB...), or pass a :class:`ChannelFirst` through."""
    if isinstance(image, ChannelFirst):
        return image
    return ChannelFirst(image, guess_axes(tuple(image.shape), name), name)


# --------------------------------------------------------------------------------------------
# Tile plan
# --------------------------------------------------------------------------------------------


@attrs.frozen
class Tile:
    """One tile: the region read ``[y0:y1, x0:x1]`` and the core ``[cy0:cy1, cx0:cx1]`` it owns.

    ``inner`` tells, for the top, bottom, left and right core edge, whether it borders another tile
    (True) or the image border (False).
    """

    y0: int
    y1: int
    x0: int
    x1: int
    cy0: int
    cy1: int
    cx0: int
    cx1: int
    inner: tuple[bool, bool, bool, bool]

    @property
    def shape(self) -> tuple[int, int]:
        return (self.y1 - self.y0, self.x1 - self.x0)


def axis_tiles(length: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """(start, stop, core_start, core_stop) of equal tiles covering ``[0, length)`` along one axis.

    Tiles are ``min(tile, length)`` long; consecutive tiles overlap by at least ``overlap``; the
    last tile is shifted back to end at ``length`` (so no tile needs padding); core edges sit in the
    middle of each overlap, hence at least ``overlap // 2`` from the edges of the tile owning them.
    """
    if length <= 0:
        raise DataError(f"cannot tile an axis of length {length}")
    if tile <= 0 or overlap < 0:
        raise ValueError(f"tile ({tile}) must be positive and overlap ({overlap}) non-negative")
    if length <= tile:
        return [(0, length, 0, length)]
    if overlap >= tile:
        raise ValueError(f"overlap ({overlap}) must be smaller than the tile size ({tile})")
    step = tile - overlap
    n = math.ceil((length - overlap) / step)
    starts = sorted({min(i * step, length - tile) for i in range(n)})
    cuts = [(starts[i + 1] + starts[i] + tile) // 2 for i in range(len(starts) - 1)]
    bounds = [0, *cuts, length]
    return [(s, s + tile, bounds[i], bounds[i + 1]) for i, s in enumerate(starts)]


def plan_tiles(shape: tuple[int, int], tile_size: int, overlap: int) -> list[Tile]:
    """Row-major tiles for an image of ``shape`` (H, W); see :func:`axis_tiles`."""
    rows = axis_tiles(int(shape[0]), tile_size, overlap)
    cols = axis_tiles(int(shape[1]), tile_size, overlap)
    tiles = []
    for i, (y0, y1, cy0, cy1) in enumerate(rows):
        for j, (x0, x1, cx0, cx1) in enumerate(cols):
            inner = (i > 0, i < len(rows) - 1, j > 0, j < len(cols) - 1)
            tiles.append(Tile(y0, y1, x0, x1, cy0, cy1, cx0, cx1, inner))
    return tiles


def in_core(locations: np.ndarray, tile: Tile, tolerance: float = 0.0) -> np.ndarray:
    """Boolean (N,): is each (y, x) location (image pixels) inside the tile's core?

    Internal core edges are widened by ``tolerance`` so that an instance lying on a core edge is
    kept by both tiles rather than by neither; duplicates are removed afterwards.
    """
    top, bottom, left, right = tile.inner
    y, x = locations[:, 0], locations[:, 1]
    ya = tile.cy0 - (tolerance if top else math.inf)
    yb = tile.cy1 + (tolerance if bottom else math.inf)
    xa = tile.cx0 - (tolerance if left else math.inf)
    xb = tile.cx1 + (tolerance if right else math.inf)
    return (y >= ya) & (y < yb) & (x >= xa) & (x < xb)


def cross_tile_duplicates(
    locations: np.ndarray, scores: np.ndarray, tile_ids: np.ndarray, distance: float
) -> np.ndarray:
    """Boolean (N,) keep-mask: drop an instance lying within ``distance`` of a higher-scoring one
    found in another tile (greedy in score order, as distance NMS)."""
    n = len(scores)
    keep = np.ones(n, bool)
    if n < 2 or distance <= 0:
        return keep
    from scipy.spatial import cKDTree

    pairs = cKDTree(locations).query_pairs(distance, output_type="ndarray")
    if len(pairs) == 0:
        return keep
    pairs = pairs[tile_ids[pairs[:, 0]] != tile_ids[pairs[:, 1]]]
    rank = np.empty(n, np.int64)
    rank[np.lexsort((np.arange(n), -scores))] = np.arange(n)
    # orient every pair as (better, worse); then walk the worse ones in rank order of their better
    better = np.where(rank[pairs[:, 0]] < rank[pairs[:, 1]], pairs[:, 0], pairs[:, 1])
    worse = np.where(rank[pairs[:, 0]] < rank[pairs[:, 1]], pairs[:, 1], pairs[:, 0])
    for k in np.argsort(rank[better], kind="stable"):
        if keep[better[k]]:
            keep[worse[k]] = False
    return keep


# --------------------------------------------------------------------------------------------
# Statistics and reading
# --------------------------------------------------------------------------------------------


def row_bands(height: int, width: int) -> Iterator[tuple[int, int]]:
    """(y0, y1) bands of rows holding about ``BAND_PIXELS`` pixels each."""
    rows = max(1, BAND_PIXELS // max(width, 1))
    for y0 in range(0, height, rows):
        yield y0, min(height, y0 + rows)


def read_tile(image: ChannelFirst, tile: Tile, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """The tile's region standardised with whole-image statistics: float32 (C, h, w)."""
    return standardize(image.read(tile.y0, tile.y1, tile.x0, tile.x1), mean, std)


# --------------------------------------------------------------------------------------------
# Stitching into a label image
# --------------------------------------------------------------------------------------------


@attrs.define
class LabelTable:
    """What is known of each label in a stitched label image (row k describes label k + 1)."""

    scores: np.ndarray  # (M,) float32
    locations: np.ndarray  # (M, 2) float32, (y, x) image pixels


class LabelStitcher:
    """Paste instances tile by tile into an int32 label array without holding full-size masks.

    ``out`` may be any numpy-like 2-D int32 array (numpy, memmap, zarr); it must start zeroed.
    Each :meth:`add` call reads the affected region once, pastes all instances of the tile into it
    (binarised at ``mask_threshold``; the higher score wins each pixel; instances below
    ``score_threshold`` or with no more than ``min_area`` pixels in the image are skipped) and
    writes it back. An instance within ``dedup_distance`` of an already pasted one from another
    tile is a duplicate: the lower score goes. :meth:`finish` renumbers labels 1..M by decreasing
    score and returns the table of scores and locations.
    """

    def __init__(
        self,
        shape: tuple[int, int],
        out: Any = None,
        *,
        score_threshold: float = 0.5,
        mask_threshold: float = 0.5,
        min_area: int = 0,
        dedup_distance: float = 8.0,
    ) -> None:
        self.shape = (int(shape[0]), int(shape[1]))
        self.label = np.zeros(self.shape, np.int32) if out is None else out
        if tuple(self.label.shape) != self.shape:
            raise ValueError(f"label array shape {tuple(self.label.shape)} != image shape {self.shape}")
        self.score_threshold = score_threshold
        self.mask_threshold = mask_threshold
        self.min_area = min_area
        self.dedup_distance = dedup_distance
        self._n = 0
        cap = 1024
        self._scores = np.full(cap + 1, -np.inf, np.float32)  # index = label id; 0 is background
        self._locs = np.zeros((cap + 1, 2), np.float32)
        self._tile = np.full(cap + 1, -1, np.int64)
        self._bbox = np.zeros((cap + 1, 4), np.int64)
        self._alive = np.zeros(cap + 1, bool)

    def _grow(self, need: int) -> None:
        cap = len(self._scores) - 1
        if need <= cap:
            return
        new = max(need, 2 * cap)
        extra = new - cap
        self._scores = np.concatenate([self._scores, np.full(extra, -np.inf, np.float32)])
        self._locs = np.concatenate([self._locs, np.zeros((extra, 2), np.float32)])
        self._tile = np.concatenate([self._tile, np.full(extra, -1, np.int64)])
        self._bbox = np.concatenate([self._bbox, np.zeros((extra, 4), np.int64)])
        self._alive = np.concatenate([self._alive, np.zeros(extra, bool)])

    def _erase(self, ids: list[int]) -> None:
        """Clear the pixels of already pasted labels (replaced by a better duplicate)."""
        for i in ids:
            y0, y1, x0, x1 = self._bbox[i]
            region = np.array(self.label[y0:y1, x0:x1])
            hit = region == i
            if hit.any():
                region[hit] = 0
                self.label[y0:y1, x0:x1] = region

    def add(
        self, scores: np.ndarray, locations: np.ndarray, masks: np.ndarray, origins: np.ndarray, tile_index: int = 0
    ) -> int:
        """Paste one tile's instances (image coordinates; masks (N, S, S) probabilities or booleans).

        Returns the number of instances pasted.
        """
        scores = np.asarray(scores, np.float32)
        keep = scores >= self.score_threshold
        if not keep.any():
            return 0
        scores, locations = scores[keep], np.asarray(locations, np.float32)[keep]
        masks = np.asarray(masks)
        binary = (masks if masks.dtype == bool else masks >= self.mask_threshold)[keep]  # bool: 4x less memory
        origins = np.asarray(origins, np.int64)[keep]
        h, w = self.shape
        s_h, s_w = binary.shape[1:]
        # clip every crop to the image, drop those that are empty or too small there
        ya = np.clip(origins[:, 0], 0, h)
        yb = np.clip(origins[:, 0] + s_h, 0, h)
        xa = np.clip(origins[:, 1], 0, w)
        xb = np.clip(origins[:, 1] + s_w, 0, w)
        areas = np.array(
            [
                binary[
                    k, ya[k] - origins[k, 0] : yb[k] - origins[k, 0], xa[k] - origins[k, 1] : xb[k] - origins[k, 1]
                ].sum()
                for k in range(len(scores))
            ]
        )
        ok = (yb > ya) & (xb > xa) & (areas > self.min_area)
        if not ok.any():
            return 0
        idx = np.nonzero(ok)[0]
        # duplicates of instances pasted from other tiles
        alive = np.nonzero(self._alive[: self._n + 1])[0]
        if len(alive) and self.dedup_distance > 0:
            old_locs = self._locs[alive]
            lo = locations[idx].min(axis=0) - self.dedup_distance
            hi = locations[idx].max(axis=0) + self.dedup_distance
            near = np.all((old_locs >= lo) & (old_locs <= hi), axis=1) & (self._tile[alive] != tile_index)
            cand = alive[near]
            if len(cand):
                d2 = ((locations[idx, None, :] - self._locs[cand][None]) ** 2).sum(-1)
                drop_new = np.zeros(len(idx), bool)
                removed: list[int] = []
                for k in np.argsort(-scores[idx], kind="stable"):
                    dups = cand[(d2[k] < self.dedup_distance**2) & self._alive[cand]]
                    if len(dups) == 0:
                        continue
                    if scores[idx[k]] > self._scores[dups].max():
                        self._alive[dups] = False
                        removed.extend(int(i) for i in dups)
                    else:
                        drop_new[k] = True
                self._erase(removed)
                idx = idx[~drop_new]
        if len(idx) == 0:
            return 0
        # one read / write of the region all crops touch
        by0, by1, bx0, bx1 = int(ya[idx].min()), int(yb[idx].max()), int(xa[idx].min()), int(xb[idx].max())
        buf = np.array(self.label[by0:by1, bx0:bx1], dtype=np.int32)
        self._grow(self._n + len(idx))
        for k in idx:
            self._n += 1
            new_id = self._n
            r0, r1, c0, c1 = ya[k] - by0, yb[k] - by0, xa[k] - bx0, xb[k] - bx0
            m = binary[k, ya[k] - origins[k, 0] : yb[k] - origins[k, 0], xa[k] - origins[k, 1] : xb[k] - origins[k, 1]]
            region = buf[r0:r1, c0:c1]
            take = m & (scores[k] > self._scores[region])
            region[take] = new_id
            self._scores[new_id] = scores[k]
            self._locs[new_id] = locations[k]
            self._tile[new_id] = tile_index
            self._bbox[new_id] = (ya[k], yb[k], xa[k], xb[k])
            self._alive[new_id] = True
        self.label[by0:by1, bx0:bx1] = buf
        return len(idx)

    def finish(self) -> tuple[Any, LabelTable]:
        """Renumber labels 1..M by decreasing score (dropping fully overwritten ones); return
        the label array and the per-label table."""
        h, w = self.shape
        n = self._n
        present = np.zeros(n + 1, bool)
        for y0, y1 in row_bands(h, w):
            present[np.unique(np.asarray(self.label[y0:y1]))] = True
        present[0] = False
        ids = np.nonzero(present)[0]
        order = ids[np.lexsort((ids, -self._scores[ids]))]
        lut = np.zeros(n + 1, np.int32)
        lut[order] = np.arange(1, len(order) + 1, dtype=np.int32)
        if not np.array_equal(order, np.arange(1, n + 1)):  # identity: nothing to rewrite
            for y0, y1 in row_bands(h, w):
                self.label[y0:y1] = lut[np.asarray(self.label[y0:y1])]
        table = LabelTable(scores=self._scores[order].astype(np.float32), locations=self._locs[order].copy())
        return self.label, table
