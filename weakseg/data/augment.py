"""Training augmentations of the CKS paper, applied to one crop read from a (possibly huge) image.

The paper (Ji & Wu, CKS, "Preprocessing and augmentation") uses rotation, flipping, resizing by
+-15 % and random brightness/contrast; its implementation adds a random gamma in [0.5, 2], resizes
y and x independently (antialiased bilinear), crops or pads to 544 x 544 and drops instances whose
bounding box keeps less than half of its area after cropping.

Everything here works on a crop, never on a whole image: a :class:`CropTransform` maps the source
image into an output crop (scale per axis, then a crop window in the scaled frame, then flips and
a 90-degree rotation); :meth:`CropTransform.source_box` says which source pixels are needed, so a
caller reads just that region from zarr and hands it to :meth:`CropTransform.warp`.

Coordinates are (y, x) with pixel centres at ``i + 0.5``. A continuous source coordinate ``u``
becomes ``u * s`` in the scaled frame and ``u * s - origin`` in the crop, before orientation.

Intensities: gamma acts on intensities mapped to [0, 1] by the image's range, before the per-image
standardisation; contrast and brightness act on the standardised image (``z * contrast + brightness``)
so that they are not undone by the standardisation (brightness is in units of the image's std).
"""

from __future__ import annotations

import math

import attrs
import numpy as np
from scipy import ndimage

from weakseg.data.normalize import ImageStats, standardize  # ImageStats: importable from here too
from weakseg.recipe import AugmentConfig

# ------------------------------------------------------------------------------------------
# Geometry
# ------------------------------------------------------------------------------------------


@attrs.frozen
class CropTransform:
    """Source image -> square output crop: per-axis scale, crop window, flips, rot90.

    ``scale`` (sy, sx) multiplies source coordinates; ``origin`` (oy, ox) is the crop's top-left in
    the scaled frame (negative or beyond the scaled image where the crop pads); ``size`` is the
    crop side; the crop is then flipped (y first, then x) and rotated ``rot90`` times by 90 degrees
    counter-clockwise (``np.rot90`` over the last two axes).
    """

    image_shape: tuple[int, int]  # source (H, W)
    size: int
    scale: tuple[float, float] = (1.0, 1.0)
    origin: tuple[int, int] = (0, 0)
    flip_y: bool = False
    flip_x: bool = False
    rot90: int = 0

    # -- where the crop lies in the source ------------------------------------------------
    def window(self) -> tuple[float, float, float, float]:
        """The crop window in continuous source coordinates (y0, y1, x0, x1), before clipping."""
        (sy, sx), (oy, ox) = self.scale, self.origin
        return oy / sy, (oy + self.size) / sy, ox / sx, (ox + self.size) / sx

    def _sample_coords(self, axis: int) -> np.ndarray:
        """Source index coordinates (pixel i has its centre at i) of the output samples along one axis."""
        s, o = self.scale[axis], self.origin[axis]
        return (o + np.arange(self.size) + 0.5) / s - 0.5

    def antialias_sigma(self) -> tuple[float, float]:
        """Gaussian prefilter sigma (source pixels) per axis when shrinking (as scikit-image uses)."""
        return tuple(max(0.0, (1.0 / s - 1.0) / 2.0) for s in self.scale)  # type: ignore[return-value]

    def source_box(self, margin: int = 0) -> tuple[int, int, int, int]:
        """Integer source region (y0, y1, x0, x1) to read for :meth:`warp`, clipped to the image.

        It covers the interpolation support, the antialiasing filter and ``margin`` extra pixels.
        An empty box (y0 == y1) means the crop does not overlap the image at all.
        """
        out = []
        sigmas = self.antialias_sigma()
        for axis in (0, 1):
            coords = self._sample_coords(axis)
            extra = int(math.ceil(4 * sigmas[axis])) + margin
            lo = int(math.floor(coords[0])) - extra
            hi = int(math.floor(coords[-1])) + 2 + extra
            n = self.image_shape[axis]
            out.extend([min(max(lo, 0), n), min(max(hi, 0), n)])
        return out[0], out[1], out[2], out[3]

    def valid(self) -> np.ndarray:
        """Bool (size, size) map of output pixels that come from inside the image (False = padding)."""
        rows = self._inside(0)
        cols = self._inside(1)
        return self._orient(np.logical_and(rows[:, None], cols[None, :]))

    def _inside(self, axis: int) -> np.ndarray:
        coords = self._sample_coords(axis) + 0.5  # continuous coordinate of each sample centre
        return (coords >= 0) & (coords < self.image_shape[axis])

    # -- resampling -----------------------------------------------------------------------
    def warp(self, region: np.ndarray, box: tuple[int, int, int, int], *, order: int = 1) -> np.ndarray:
        """Resample a region ``(..., h, w)`` read at ``box`` into the oriented output crop.

        ``order=1``: antialiased bilinear (images, float32 out); ``order=0``: nearest (labels,
        dtype kept). Padding pixels repeat the nearest image pixel; use :meth:`valid` to blank them.
        """
        y0, y1, x0, x1 = box
        if y1 <= y0 or x1 <= x0:
            shape = (*region.shape[:-2], self.size, self.size)
            return np.zeros(shape, np.float32 if order else region.dtype)
        if order == 0:
            iy = np.clip(np.floor(self._sample_coords(0) + 0.5).astype(np.int64) - y0, 0, y1 - y0 - 1)
            ix = np.clip(np.floor(self._sample_coords(1) + 0.5).astype(np.int64) - x0, 0, x1 - x0 - 1)
            out = region[..., iy, :][..., ix]
            return self._orient(out)
        data = np.asarray(region, dtype=np.float32)
        sig_y, sig_x = self.antialias_sigma()
        if sig_y > 0:
            data = ndimage.gaussian_filter1d(data, sig_y, axis=-2, mode="nearest", truncate=4.0)
        if sig_x > 0:
            data = ndimage.gaussian_filter1d(data, sig_x, axis=-1, mode="nearest", truncate=4.0)
        data = _linear_along(data, self._sample_coords(0) - y0, axis=-2)
        data = _linear_along(data, self._sample_coords(1) - x0, axis=-1)
        return self._orient(data)

    def _orient(self, array: np.ndarray) -> np.ndarray:
        if self.flip_y:
            array = array[..., ::-1, :]
        if self.flip_x:
            array = array[..., :, ::-1]
        if self.rot90 % 4:
            array = np.rot90(array, self.rot90 % 4, axes=(-2, -1))
        return np.ascontiguousarray(array)

    # -- points ---------------------------------------------------------------------------
    def points(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Map source points (N, 2) (y, x) into the crop; returns (mapped (M, 2) float32, keep (N,) bool).

        Points that leave the crop are dropped (``keep`` marks the ones returned).
        """
        yx = self._scaled(points)
        n = self.size
        keep = (yx[:, 0] >= 0) & (yx[:, 0] < n) & (yx[:, 1] >= 0) & (yx[:, 1] < n)
        mapped = self.orient(yx[keep]).astype(np.float32)
        # a point exactly on the far edge after flipping maps to n: keep it inside the crop
        np.clip(mapped, 0.0, np.nextafter(np.float32(n), np.float32(0)), out=mapped)
        return mapped, keep

    def points_anywhere(self, points: np.ndarray) -> np.ndarray:
        """Map source points (N, 2) (y, x) into the crop's frame without dropping any: points outside the
        crop get coordinates outside [0, size) (for marking cells just beyond its edge)."""
        return self.orient(self._scaled(points))

    def _scaled(self, points: np.ndarray) -> np.ndarray:
        """Source points (N, 2) in the scaled frame, relative to the crop's top-left (float64)."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        return np.stack([pts[:, 0] * self.scale[0] - self.origin[0], pts[:, 1] * self.scale[1] - self.origin[1]], 1)

    def orient(self, yx: np.ndarray) -> np.ndarray:
        """Apply the crop's flips and rotations to (N, 2) scaled-frame coordinates."""
        n = self.size
        y, x = yx[:, 0].copy(), yx[:, 1].copy()
        if self.flip_y:
            y = n - y
        if self.flip_x:
            x = n - x
        for _ in range(self.rot90 % 4):  # np.rot90: out[i, j] = in[j, n - 1 - i]
            y, x = n - x, y
        return np.stack([y, x], axis=1) if len(y) else np.zeros((0, 2), np.float64)


def _linear_along(data: np.ndarray, coords: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of ``data`` at index coordinates ``coords`` along ``axis`` (edges clamped)."""
    n = data.shape[axis]
    coords = np.clip(coords, 0.0, n - 1)
    i0 = np.floor(coords).astype(np.int64)
    i1 = np.minimum(i0 + 1, n - 1)
    w = (coords - i0).astype(np.float32)
    shape = [1] * data.ndim
    shape[axis] = len(coords)
    w = w.reshape(shape)
    a = np.take(data, i0, axis=axis)
    b = np.take(data, i1, axis=axis)
    return a + (b - a) * w


def draw_transform(
    rng: np.random.Generator,
    image_shape: tuple[int, int],
    size: int,
    cfg: AugmentConfig,
    base_scale: float = 1.0,
    contains: tuple[float, float] | None = None,
) -> CropTransform:
    """Draw a random crop transform (scale jitter, window, flips, rotation) for one sample.

    The scale is ``base_scale`` (per-group rescaling) times a jitter uniform in ``cfg.scale_range``,
    drawn per axis when ``cfg.anisotropic``. The window is uniform over the scaled image; when the
    scaled image is smaller than the crop it is placed at a random offset inside the padded crop.
    ``contains`` (a source point (y, x)) instead places the window so that it holds the point, away
    from the window's edges where the image allows.
    """
    lo, hi = cfg.scale_range
    jitter = rng.uniform(lo, hi, size=2) if cfg.anisotropic else np.repeat(rng.uniform(lo, hi), 2)
    scale = (float(base_scale * jitter[0]), float(base_scale * jitter[1]))
    if contains is None:
        origin = tuple(_draw_origin(rng, image_shape[a] * scale[a], size) for a in (0, 1))
    else:
        origin = tuple(_origin_around(rng, contains[a] * scale[a], image_shape[a] * scale[a], size) for a in (0, 1))
    flip_y = bool(cfg.flips and rng.random() < 0.5)
    flip_x = bool(cfg.flips and rng.random() < 0.5)
    rot = int(rng.integers(0, 4)) if cfg.rot90 else 0
    return CropTransform(image_shape, size, scale, origin, flip_y, flip_x, rot)  # type: ignore[arg-type]


def _draw_origin(rng: np.random.Generator, scaled_extent: float, size: int) -> int:
    extent = int(math.floor(scaled_extent))
    if extent >= size:
        return int(rng.integers(0, extent - size + 1))
    return -int(rng.integers(0, size - extent + 1))  # pad: image placed anywhere inside the crop


def _origin_around(rng: np.random.Generator, coord: float, scaled_extent: float, size: int) -> int:
    extent = int(math.floor(scaled_extent))
    offset = int(rng.integers(size // 8, max(size // 8 + 1, size - size // 8)))
    origin = int(math.floor(coord)) - offset
    if extent >= size:
        return min(max(origin, 0), extent - size)
    return min(max(origin, extent - size), 0)


def identity_transform(image_shape: tuple[int, int], size: int, origin: tuple[int, int] = (0, 0)) -> CropTransform:
    """A plain crop (no scaling or orientation change)."""
    return CropTransform(image_shape, size, (1.0, 1.0), origin)


# ------------------------------------------------------------------------------------------
# Instances cut by the crop
# ------------------------------------------------------------------------------------------


def cut_instances(
    labels: np.ndarray, box: tuple[int, int, int, int], transform: CropTransform, min_kept: float = 0.5
) -> np.ndarray:
    """Ids of the instances whose bounding box keeps less than ``min_kept`` of its area in the crop.

    ``labels`` is the source label region read at ``box`` (read it with a margin: boxes are
    measured within the region, so an instance larger than the margin is judged by its visible
    part). Only instances touching the crop window's border can be cut, so only those are measured.
    """
    y0, y1, x0, x1 = box
    wy0, wy1, wx0, wx1 = transform.window()
    # the source pixels whose centres fall inside the window, in region coordinates
    ry0, ry1 = math.ceil(wy0 - 0.5) - y0, math.ceil(wy1 - 0.5) - y0
    rx0, rx1 = math.ceil(wx0 - 0.5) - x0, math.ceil(wx1 - 0.5) - x0
    ry0, rx0 = max(ry0, 0), max(rx0, 0)
    ry1, rx1 = min(ry1, y1 - y0), min(rx1, x1 - x0)
    if ry1 <= ry0 or rx1 <= rx0:
        return np.zeros(0, labels.dtype)
    inner = labels[ry0:ry1, rx0:rx1]
    ring = np.concatenate([inner[0], inner[-1], inner[:, 0], inner[:, -1]])
    candidates = np.unique(ring)
    candidates = candidates[candidates > 0]
    if not len(candidates):
        return candidates
    # bounding boxes of the candidates within the region: relabel them 1..K through a lookup
    # table (everything else 0) and let find_objects measure them in one pass
    top = int(candidates[-1])
    lut = np.zeros(top + 2, np.int32)
    lut[candidates] = np.arange(1, len(candidates) + 1, dtype=np.int32)
    compact = lut[np.minimum(labels, top + 1)]
    boxes = ndimage.find_objects(compact, max_label=len(candidates))
    cut = []
    for c, sl in zip(candidates, boxes, strict=True):
        by0, by1, bx0, bx1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
        ky = max(0, min(by1, ry1) - max(by0, ry0))
        kx = max(0, min(bx1, rx1) - max(bx0, rx0))
        if ky * kx < min_kept * (by1 - by0) * (bx1 - bx0):
            cut.append(c)
    return np.asarray(cut, labels.dtype)


# ------------------------------------------------------------------------------------------
# Intensities
# ------------------------------------------------------------------------------------------


@attrs.frozen
class IntensityJitter:
    """One draw of the intensity augmentation."""

    gamma: float = 1.0
    contrast: float = 1.0
    brightness: float = 0.0
    resample: float = 1.0  #: shrink-and-enlarge factor (1: none), see :func:`resample`


def draw_intensity(rng: np.random.Generator, cfg: AugmentConfig) -> IntensityJitter:
    """Gamma log-uniform in ``cfg.gamma``, contrast uniform in ``cfg.contrast``, brightness in +-``cfg.brightness``;
    with ``cfg.resample`` above 1, half the crops get a resample factor log-uniform in [1, resample] (drawn
    last, so that crops without it are drawn exactly as before)."""
    g0, g1 = cfg.gamma
    gamma = float(math.exp(rng.uniform(math.log(g0), math.log(g1)))) if g0 != g1 else float(g0)
    contrast = float(rng.uniform(*cfg.contrast))
    brightness = float(rng.uniform(-cfg.brightness, cfg.brightness)) if cfg.brightness else 0.0
    factor = 1.0
    if cfg.resample > 1.0 and rng.random() < 0.5:
        factor = float(math.exp(rng.uniform(0.0, math.log(cfg.resample))))
    return IntensityJitter(gamma, contrast, brightness, factor)


def resample(image: np.ndarray, factor: float) -> np.ndarray:
    """Shrink a (C, H, W) crop by ``factor`` (antialiased) and enlarge it back to its size: detail finer
    than ``factor`` pixels is lost, as in a lower-magnification image brought to the training cell size."""
    if factor <= 1.0:
        return image
    _, h, w = image.shape
    sigma = 0.5 * math.sqrt(factor**2 - 1.0)
    blurred = ndimage.gaussian_filter(np.asarray(image, np.float32), (0, sigma, sigma), mode="nearest")
    sh, sw = max(1, round(h / factor)), max(1, round(w / factor))
    small = ndimage.zoom(blurred, (1, sh / h, sw / w), order=1, mode="nearest", grid_mode=True)
    return ndimage.zoom(small, (1, h / sh, w / sw), order=1, mode="nearest", grid_mode=True)


def apply_intensity(image: np.ndarray, stats: ImageStats, jitter: IntensityJitter) -> np.ndarray:
    """Resampling, gamma, per-image standardisation, then contrast and brightness; float32 (C, H, W) out."""
    if jitter.resample != 1.0:
        image = resample(image, jitter.resample)
    if jitter.gamma != 1.0:
        image = stats.to_unit(image) ** np.float32(jitter.gamma)
        mean, std = stats.gamma_stats(jitter.gamma)
    else:
        mean, std = stats.mean, stats.std
    out = standardize(image, mean, std)
    if jitter.contrast != 1.0:
        out *= np.float32(jitter.contrast)
    if jitter.brightness:
        out += np.float32(jitter.brightness)
    return out
