"""Cell diameter from the scale at which an image's blobs respond most: a training-free size cue.

The scale-normalised Laplacian of Gaussian, ``-sigma**2 * LoG_sigma * image``, responds most to a disc of
diameter ``D`` at ``sigma = D / (2 * sqrt(2))`` whatever the image's magnification (Lindeberg's automatic
scale selection). Over a whole image, the high quantile of that response as a function of sigma (the
*profile*) peaks near the typical blob size, so ``log D = log sigma_peak + offset`` with one offset per
kind of image. The offset (and whether cells are bright or dark blobs) is calibrated on the training
images, whose diameters are known from masks or points (:func:`fit_blob_calibration`).

The profile is computed on a pyramid: octave ``k`` (sigma in ``[2**k, 2**(k+1))`` original pixels) is
measured on the image shrunk by ``2**(k-1)`` (sigma 2-4 pixels there), so every octave costs about the
same and images of any size and cell size are handled alike. Works best where cells are compact blobs
(nuclei, fluorescence). Where fine texture dominates (phase contrast) the peak follows the texture, not
the cells: the calibration's left-out error shows it (or :attr:`BlobCalibration.usable` is false when
peaks sit on the profile's edge), and the regression of :mod:`weakseg.inference.sizing` stays in charge.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np

#: Sigma steps per octave of the profile.
STEPS_PER_OCTAVE = 8
#: Largest side (pixels at one pyramid level) of the regions the quantile is taken over: larger levels
#: are measured on a grid of such tiles, so memory stays flat in the image size.
TILE = 512
#: Quantile of the response taken at each sigma.
QUANTILE = 99.0
#: Smallest sigma in original pixels (a 3 px cell).
MIN_SIGMA = 1.0
#: A calibration whose peaks sit on the smallest sigma of the profile for more than this share of the
#: training images measures texture, not cells.
MAX_EDGE_SHARE = 0.25
POLARITIES = ("bright", "dark")
#: Fewest training images a calibration is trusted on (each is left out of its own offset once).
MIN_IMAGES = 3


def _smooth_shrink(gray: np.ndarray, factor: int) -> np.ndarray:
    """``gray`` shrunk by an integer factor (block mean, a box anti-aliasing filter)."""
    if factor <= 1:
        return gray
    h, w = (gray.shape[0] // factor) * factor, (gray.shape[1] // factor) * factor
    return gray[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))


def _tiles(h: int, w: int, side: int) -> list[tuple[int, int, int, int]]:
    """At most 2 x 2 tiles of ``side`` spread over an (h, w) image (the whole image when smaller)."""
    ys = sorted({0, max(0, h - side)})
    xs = sorted({0, max(0, w - side)})
    return [(y, min(h, y + side), x, min(w, x + side)) for y in ys for x in xs]


def blob_profile(image: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``(log sigmas, {polarity: profile})`` of a (C, H, W) or (H, W) image, sigma in its own pixels.

    Sigmas run from :data:`MIN_SIGMA` to an eighth of the shorter side. Each profile value is the
    :data:`QUANTILE` of the scale-normalised LoG response of bright (``-LoG``) or dark (``+LoG``) blobs,
    the image standardised first.
    """
    from scipy import ndimage

    gray = np.asarray(image, np.float32)
    if gray.ndim == 3:
        gray = gray.mean(axis=0)
    gray = (gray - gray.mean()) / max(float(gray.std()), 1e-6)
    top = math.log2(max(MIN_SIGMA * 2, min(gray.shape) / 8))
    log_sigmas, bright, dark = [], [], []
    octave = 0
    while octave < top:
        shrink = 2 ** max(0, octave - 1)  # sigma stays >= 2 level pixels above the first octave
        level = _smooth_shrink(gray, shrink)
        if min(level.shape) < 16:
            break
        for step in range(STEPS_PER_OCTAVE):
            s = 2.0 ** (octave + step / STEPS_PER_OCTAVE)
            if math.log2(s) > top:
                break
            s_level = MIN_SIGMA * s / shrink
            hi, lo = [], []
            for y0, y1, x0, x1 in _tiles(*level.shape, TILE):
                r = -(s_level**2) * ndimage.gaussian_laplace(level[y0:y1, x0:x1], s_level, mode="reflect")
                hi.append(np.percentile(r, QUANTILE))
                lo.append(np.percentile(-r, QUANTILE))
            log_sigmas.append(math.log(s * MIN_SIGMA))
            bright.append(float(np.mean(hi)))
            dark.append(float(np.mean(lo)))
        octave += 1
    return np.asarray(log_sigmas), {"bright": np.asarray(bright), "dark": np.asarray(dark)}


def profile_peak(log_sigmas: np.ndarray, profile: np.ndarray) -> tuple[float, bool]:
    """(log sigma of the profile's maximum, refined by a parabola through its neighbours; whether the
    maximum lies on the first or last sigma)."""
    k = int(np.argmax(profile))
    if k == 0 or k == len(profile) - 1:
        return float(log_sigmas[k]), True
    a, b, c = profile[k - 1], profile[k], profile[k + 1]
    den = a - 2 * b + c
    offset = 0.5 * (a - c) / den if den < 0 else 0.0
    step = float(log_sigmas[k + 1] - log_sigmas[k])
    return float(log_sigmas[k] + np.clip(offset, -0.5, 0.5) * step), False


@attrs.frozen
class BlobCalibration:
    """``log diameter = log sigma_peak(polarity) + offset``, fitted on the training images.

    ``error`` is the median and ``error90`` the 90th percentile of the relative error on the training
    images (each left out of its own offset); ``edge_share`` the share of them whose peak sat on the edge of
    the profile.
    """

    polarity: str
    offset: float
    error: float = math.nan
    error90: float = math.nan
    edge_share: float = 0.0
    n_images: int = 0

    @property
    def usable(self) -> bool:
        """Whether the profile found the cells of the training images (peaks inside the profile)."""
        return self.n_images >= MIN_IMAGES and self.edge_share <= MAX_EDGE_SHARE and math.isfinite(self.error90)

    def diameter(self, image: np.ndarray) -> float:
        """The typical cell diameter of a raw (C, H, W) image, in its pixels."""
        log_sigmas, profiles = blob_profile(image)
        peak, _ = profile_peak(log_sigmas, profiles[self.polarity])
        return float(math.exp(peak + self.offset))

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> BlobCalibration | None:
        if not d or d.get("polarity") not in POLARITIES:
            return None
        return cls(**{f.name: d[f.name] for f in attrs.fields(cls) if f.name in d})


def fit_blob_calibration(images: Sequence[np.ndarray], diameters: Sequence[float]) -> BlobCalibration | None:
    """The polarity and offset that best predict ``diameters`` (pixels) of the raw ``images``.

    The offset is the median of ``log D - log sigma_peak``; the polarity with the lower 90th-percentile
    leave-one-out error wins. ``None`` without images.
    """
    if not images:
        return None
    peaks: dict[str, list[tuple[float, bool]]] = {p: [] for p in POLARITIES}
    for image in images:
        log_sigmas, profiles = blob_profile(image)
        for p in POLARITIES:
            peaks[p].append(profile_peak(log_sigmas, profiles[p]))
    logd = np.log(np.asarray(diameters, np.float64))
    best: BlobCalibration | None = None
    for p in POLARITIES:
        resid = logd - np.asarray([v for v, _ in peaks[p]])
        loo = [abs(math.expm1(resid[i] - np.median(np.delete(resid, i)))) for i in range(len(resid))]
        loo = loo if len(resid) > 1 else [0.0]
        cal = BlobCalibration(
            polarity=p,
            offset=float(np.median(resid)),
            error=float(np.median(loo)),
            error90=float(np.percentile(loo, 90)),
            edge_share=float(np.mean([edge for _, edge in peaks[p]])),
            n_images=len(resid),
        )
        if best is None or (cal.usable, -cal.error90) > (best.usable, -best.error90):
            best = cal
    return best
