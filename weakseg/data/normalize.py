"""Per-image intensity standardisation, shared by training, evaluation and prediction.

The principal model does no normalisation of its own (as in the reference implementation); every
image is standardised per channel to zero mean and unit variance before it reaches a model. This
module is the one home of that arithmetic:

- :func:`channel_stats` / :func:`standardize`: mean and standard deviation of an image in memory,
  and the standardisation itself (used by training crops, evaluation and every prediction tile);
- :class:`ImageStats`: the statistics a training sample keeps per image (mean, std, a robust range
  and a pixel sample for the gamma augmentation);
- :func:`scan_image`: the same mean and std over an image of any size, read band by band, counting
  NaN / infinite pixels on the way;
- :func:`has_signal`: whether a region carries any signal at all. Standardising a constant region
  divides (nearly) nothing by (nearly) nothing, and a model fed the result finds cells everywhere,
  so prediction skips regions without signal (see the rule below).

Signal rule: a region has signal when, in some channel, the peak-to-peak range of its finite pixel
values exceeds ``SIGNAL_FRACTION`` of the image's level ``max(|mean|, std)`` (per channel, over the
whole image), and also exceeds one count for integer images (one count is quantisation, not
signal). The peak-to-peak range rather than a percentile range keeps a tile holding a single small
cell: a 24-pixel cell covers 0.04 % of a 1024 x 1024 tile, below any percentile worth computing.
A zero, constant or all-NaN image has level or range 0 everywhere and never reaches the model.

Non-finite pixels (NaN, +-inf) carry no usable intensity: they are left out of the statistics and
set to the channel mean (0 after standardisation, i.e. a flat region) before a model sees them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import attrs
import numpy as np

#: Pixels per band when statistics walk over a large array.
BAND_PIXELS = 1 << 22
#: A region without a range above this fraction of the image's level carries no signal.
SIGNAL_FRACTION = 0.01


def channel_stats(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of a (C, H, W) image, as float64 arrays of shape (C,)."""
    img = np.asarray(image, dtype=np.float64)
    flat = img.reshape(img.shape[0], -1)
    return flat.mean(axis=1), flat.std(axis=1)


def standardize(image: np.ndarray, mean: np.ndarray | None = None, std: np.ndarray | None = None) -> np.ndarray:
    """Return a float32 (C, H, W) copy with each channel at zero mean and unit variance.

    ``mean``/``std`` may be given (e.g. computed once over a whole large image, then applied per tile).
    A constant channel (std 0) maps to zeros rather than dividing by zero; non-finite pixels map to 0.
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 2:
        img = img[None]
    if mean is None or std is None:
        mean, std = channel_stats(img)
    mean = np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(std, dtype=np.float32).reshape(-1, 1, 1)
    out = (img - mean) / np.maximum(std, 1e-6)
    if not np.isfinite(out).all():
        out[~np.isfinite(out)] = 0.0
    return out


# ------------------------------------------------------------------------------------------
# Training: statistics kept per image
# ------------------------------------------------------------------------------------------


@attrs.frozen
class ImageStats:
    """Per-channel intensity statistics of one image, from a (sub)sample of its pixels.

    ``sample`` (C, K) keeps a few pixel values per channel so the mean/std after a gamma can be
    estimated without touching the image again.
    """

    mean: np.ndarray  # (C,) float64
    std: np.ndarray  # (C,)
    lo: np.ndarray  # (C,) low end of the range used to map intensities to [0, 1] for gamma
    hi: np.ndarray  # (C,)
    sample: np.ndarray  # (C, K) float32

    @classmethod
    def from_pixels(cls, pixels: np.ndarray, keep: int = 1024, limit: int = 1 << 18) -> ImageStats:
        """Statistics from pixel values (C, ...) (a whole image or a subsample of it).

        At most ``limit`` pixels per channel are used (an even stride through the rest), which keeps
        the cost and the memory of a large image small while the estimates stay accurate.
        """
        flat = np.asarray(pixels).reshape(pixels.shape[0], -1)
        if flat.shape[1] > limit:
            flat = flat[:, :: int(math.ceil(flat.shape[1] / limit))]
        data = flat.astype(np.float64)
        mean, std = channel_stats(data)
        lo, hi = np.percentile(data, [0.1, 99.9], axis=1)
        sample = flat[:, :: max(1, flat.shape[1] // keep)][:, :keep]  # evenly spaced, deterministic
        return cls(mean, std, lo, hi, np.asarray(sample, np.float32))

    def to_unit(self, image: np.ndarray) -> np.ndarray:
        """Map intensities (C, ...) to [0, 1] by the image's robust range (values below 0 clipped)."""
        shape = (-1,) + (1,) * (image.ndim - 1)
        span = np.maximum(self.hi - self.lo, 1e-12).astype(np.float32).reshape(shape)
        return np.maximum((image - self.lo.astype(np.float32).reshape(shape)) / span, 0.0)

    def gamma_stats(self, gamma: float) -> tuple[np.ndarray, np.ndarray]:
        """Estimated per-channel (mean, std) of the image after :meth:`to_unit` and ``** gamma``."""
        values = self.to_unit(self.sample).astype(np.float64) ** gamma
        return values.mean(axis=1), values.std(axis=1)


# ------------------------------------------------------------------------------------------
# Prediction: statistics of an image of any size, and the signal test
# ------------------------------------------------------------------------------------------


@attrs.frozen
class ImageScan:
    """Whole-image statistics for prediction: per-channel ``mean``/``std`` (float64, (C,)) over the
    finite pixels, the number of non-finite pixel values, and the image dtype."""

    mean: np.ndarray
    std: np.ndarray
    nonfinite: int
    values: int
    dtype: np.dtype

    @property
    def level(self) -> np.ndarray:
        """Per-channel intensity level, the scale against which a region's range is judged."""
        return np.maximum(np.abs(self.mean), self.std)

    def min_range(self) -> np.ndarray:
        """Per-channel range a region must exceed to carry signal (see the module docstring)."""
        floor = 1.0 if np.issubdtype(self.dtype, np.integer) else 0.0
        return np.maximum(SIGNAL_FRACTION * self.level, floor)


def row_bands(height: int, width: int) -> Iterator[tuple[int, int]]:
    """(y0, y1) bands of rows holding about ``BAND_PIXELS`` pixels each."""
    rows = max(1, BAND_PIXELS // max(width, 1))
    for y0 in range(0, height, rows):
        yield y0, min(height, y0 + rows)


def _read_band(image: Any, y0: int, y1: int) -> np.ndarray:
    if hasattr(image, "read"):
        return np.asarray(image.read(y0, y1))
    return np.asarray(image[:, y0:y1])


def scan_image(image: Any) -> ImageScan:
    """Per-channel mean and std of the finite pixels of a (C, H, W) image, read band by band.

    ``image`` is a numpy-like (C, H, W) array or a view with ``shape`` and ``read(y0, y1)`` (as
    :class:`weakseg.inference.tiling.ChannelFirst`). Exact, combined with Chan's parallel update, so
    only one band of rows is ever held as floats: a 10000 x 10000 image costs a few tens of MB here.
    """
    c, h, w = (int(v) for v in image.shape)
    count = np.zeros(c)
    mean = np.zeros(c)
    m2 = np.zeros(c)
    nonfinite = 0
    for y0, y1 in row_bands(h, w):
        band = _read_band(image, y0, y1).reshape(c, -1).astype(np.float64)
        finite = np.isfinite(band)
        if not finite.all():
            nonfinite += int(band.size - finite.sum())
            n_b = finite.sum(axis=1).astype(np.float64)
            band = np.where(finite, band, 0.0)
            mean_b = band.sum(axis=1) / np.maximum(n_b, 1)
            m2_b = (np.where(finite, band - mean_b[:, None], 0.0) ** 2).sum(axis=1)
        else:
            n_b = np.full(c, float(band.shape[1]))
            mean_b = band.mean(axis=1)
            m2_b = ((band - mean_b[:, None]) ** 2).sum(axis=1)
        total = count + n_b
        delta = mean_b - mean
        weight = np.divide(n_b, total, out=np.zeros(c), where=total > 0)
        mean = mean + delta * weight
        m2 = m2 + m2_b + delta**2 * count * weight
        count = total
    std = np.sqrt(m2 / np.maximum(count, 1))
    return ImageScan(mean, std, nonfinite, c * h * w, np.dtype(image.dtype))


def image_stats(image: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (mean, std) of :func:`scan_image`."""
    scan = scan_image(image)
    return scan.mean, scan.std


def has_signal(region: np.ndarray, min_range: np.ndarray) -> bool:
    """Whether a (C, h, w) region's finite values span more than ``min_range`` (C,) in some channel."""
    flat = np.asarray(region).reshape(region.shape[0], -1)
    if flat.shape[1] == 0:
        return False
    finite = np.isfinite(flat) if np.issubdtype(flat.dtype, np.floating) else None
    if finite is not None and not finite.all():
        if not finite.any():
            return False
        with np.errstate(all="ignore"):
            hi = np.where(finite, flat, -np.inf).max(axis=1).astype(np.float64)
            lo = np.where(finite, flat, np.inf).min(axis=1).astype(np.float64)
            spread = np.where(np.isfinite(hi - lo), hi - lo, 0.0)
    else:
        spread = flat.max(axis=1).astype(np.float64) - flat.min(axis=1)
    return bool((spread > np.asarray(min_range, np.float64)).any())
