"""The size model: the typical cell diameter of a new image, estimated from the image itself.

A model segments cells of about the size it was trained on, and a new set of images need not share the
magnification of the training images. As Cellpose does, a checkpoint may hold a small regression from
what the principal model sees in an image to the log of its cell diameter, so that every new image is
resized to the training cell size by its own estimate.

Features of a (C, H, W) standardised crop: the global average of each channel of the two coarsest maps
of the principal's backbone (``principal.features(image) -> list of (B, F, h, w)``, finest first; a
strategy whose principal does not offer ``features`` gets no size model), plus the share of the image's
power in log-spaced bands of spatial frequency (a direct, training-free cue: halving the cell size
moves the power one band up). A ridge regression on the standardised features (or on the bands alone,
when cross-validation finds the backbone features add nothing but noise), with its strength chosen by
cross-validation, predicts the log diameter.

Estimation runs in passes: the image is resized by a first factor (the training factor), the diameter
estimated there, and the image resized again to the training cell size by that estimate and measured
once more, so that the last estimate is made where the regression was trained best.

Where cells are compact blobs (nuclei), the scale at which the whole image's blobs respond most
(:mod:`weakseg.inference.blob_size`, calibrated on the training images) is a sharper and training-free
cue; a size model carries that calibration and uses it instead of the regression when it was the more
accurate of the two on the training images (:attr:`SizeModel.blob`). Where the blob scale follows texture
(phase contrast), the size of the principal's own masks at the training factor, mapped to a diameter by
a fit on the training images (:mod:`weakseg.inference.mask_size`), is the third estimator; the most
accurate of the three on the training images sizes new images.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import numpy as np
import torch
import torch.nn.functional as F

from weakseg.inference.blob_size import BlobCalibration
from weakseg.inference.mask_size import MaskSizeCalibration, standardized_at

FORMAT = "weakseg-size-model/1"
#: Side of the square crops the size model sees, in model-input pixels (smaller regions are padded
#: at the mean level, larger ones cut to it, so that every crop is seen at one size).
CROP = 128
#: Number of frequency bands of the power-spectrum features.
N_BANDS = 32
#: Training crops are resized by 2**U(-LOG2_RANGE, LOG2_RANGE) around the training cell size.
LOG2_RANGE = 1.5
#: Estimation passes (each resizes the image by the previous estimate).
PASSES = 3
#: Crops averaged per pass: up to this many along each axis (a 3 x 3 grid on large images).
CROPS_PER_AXIS = 3
#: Estimates are kept within this factor of the training cell diameter (a blank or odd image cannot ask
#: for a resize that would blow up memory).
MAX_FACTOR = 16.0
#: Largest side of the image region a blob calibration measures (a centre cut of larger images).
BLOB_REGION = 4096
_RIDGE = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)


def features_of(principal: Any) -> Callable[[torch.Tensor], Sequence[torch.Tensor]] | None:
    """The principal's ``features`` method (backbone maps of a batch, finest first), or ``None``."""
    fn = getattr(principal, "features", None)
    return fn if callable(fn) else None


def spectrum_features(x: torch.Tensor) -> torch.Tensor:
    """Log share of the power of a (C, H, W) image in :data:`N_BANDS` log-spaced frequency bands."""
    g = x.float().mean(0)
    g = g - g.mean()
    h, w = g.shape
    win = (
        torch.hann_window(h, periodic=False, device=g.device)[:, None]
        * torch.hann_window(w, periodic=False, device=g.device)[None, :]
    )
    power = torch.fft.rfft2(g * win).abs() ** 2
    fy = torch.fft.fftfreq(h, device=g.device)[:, None]
    fx = torch.fft.rfftfreq(w, device=g.device)[None, :]
    radius = torch.sqrt(fy**2 + fx**2)
    edges = torch.logspace(math.log10(1 / 256), math.log10(0.5), N_BANDS + 1, device=g.device)
    band = torch.bucketize(radius, edges).clamp(1, N_BANDS) - 1
    energy = torch.zeros(N_BANDS, device=g.device).scatter_add_(0, band.flatten(), power.flatten())
    return torch.log(energy / energy.sum().clamp_min(1e-12) + 1e-6)


def crop_features(principal: Any, x: torch.Tensor) -> np.ndarray:
    """Feature vector of one standardised (C, H, W) crop (see the module docstring)."""
    fn = features_of(principal)
    if fn is None:
        raise ValueError("the principal model offers no backbone features")
    with torch.inference_mode():
        maps = list(fn(x[None].float()))
        pooled = [m.float().mean(dim=(-2, -1))[0] for m in maps[-2:]]
        parts = [spectrum_features(x), *pooled]
        return torch.cat([p.flatten().cpu() for p in parts]).double().numpy()


def resized(region: np.ndarray, factor: float, device: Any = "cpu") -> torch.Tensor:
    """A raw (C, h, w) region standardised, resized by ``factor`` (antialiased when shrinking) and made
    :data:`CROP` x :data:`CROP` (centre cut, or padded with zeros)."""
    x = standardized_at(region, factor, device)
    h, w = x.shape[-2:]
    y0, x0 = max(0, (h - CROP) // 2), max(0, (w - CROP) // 2)
    x = x[..., y0 : y0 + CROP, x0 : x0 + CROP]
    ph, pw = CROP - x.shape[-2], CROP - x.shape[-1]
    if ph or pw:  # zeros are the mean level of the standardised region
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
    return x[0]


#: Training images whose cell diameters span at least this ratio (largest / smallest) make the size
#: model the default sizing of new images (see :attr:`SizeModel.sizes_new_images`).
VARIED_SPREAD = 1.5


@attrs.frozen
class SizeModel:
    """A ridge regression of log cell diameter (input pixels) on crop features, and the training cell size.

    ``cell_diameter`` is the typical cell diameter the model was trained at (model-input pixels): a new
    image of estimated diameter D is resized by ``cell_diameter / D``. ``error`` is the cross-validated
    median relative error of the fit (0.1 = 10 %), ``n_samples`` the number of training crops.
    """

    weights: np.ndarray
    bias: float
    mean: np.ndarray
    std: np.ndarray
    cell_diameter: float
    error: float = math.nan
    n_samples: int = 0
    #: Largest / smallest native cell diameter among the training images (nan: not recorded).
    diameter_spread: float = math.nan
    #: 90th percentile of the cross-validated relative error.
    error90: float = math.nan
    #: The blob-scale calibration, when it estimates diameters better than the regression: then it alone
    #: sizes images (see :func:`estimate_diameter`).
    blob: BlobCalibration | None = None
    #: The mask-size calibration, when it was the most accurate estimator: then it alone sizes images.
    mask: MaskSizeCalibration | None = None

    @property
    def method(self) -> str:
        """``"mask size"``, ``"blob scale"`` or ``"regression"``: what estimates a diameter."""
        if self.mask is not None:
            return "mask size"
        return "blob scale" if self.blob is not None else "regression"

    @property
    def sizes_new_images(self) -> bool:
        """Whether prediction sizes each new image with this model by default: when the training images
        came at clearly different cell sizes (a spread of at least :data:`VARIED_SPREAD`), as sets that mix
        magnifications do. A model trained at one magnification keeps the recorded training factor, which
        is exact for images like its own; ``--diameter`` or ``--scale`` size anything else."""
        return not self.diameter_spread < VARIED_SPREAD

    def predict_log(self, features: np.ndarray) -> float:
        """The log diameter for one feature vector."""
        z = (np.asarray(features, np.float64) - self.mean) / self.std
        return float(z @ self.weights + self.bias)

    def to_dict(self) -> dict[str, Any]:
        """Tensors and primitives for a checkpoint (``torch.load(weights_only=True)`` reads them)."""
        return {
            "format": FORMAT,
            "weights": torch.from_numpy(np.asarray(self.weights, np.float64)),
            "bias": float(self.bias),
            "mean": torch.from_numpy(np.asarray(self.mean, np.float64)),
            "std": torch.from_numpy(np.asarray(self.std, np.float64)),
            "cell_diameter": float(self.cell_diameter),
            "error": float(self.error),
            "n_samples": int(self.n_samples),
            "diameter_spread": float(self.diameter_spread),
            "error90": float(self.error90),
            **({"blob": self.blob.to_dict()} if self.blob is not None else {}),
            **({"mask": self.mask.to_dict()} if self.mask is not None else {}),
            "crop": CROP,
            "bands": N_BANDS,
        }

    @classmethod
    def from_dict(cls, d: Any) -> SizeModel | None:
        """The inverse of :meth:`to_dict`; ``None`` for a missing entry or another format."""
        if not d or d.get("format") != FORMAT:
            return None
        return cls(
            weights=np.asarray(d["weights"], np.float64),
            bias=float(d["bias"]),
            mean=np.asarray(d["mean"], np.float64),
            std=np.asarray(d["std"], np.float64),
            cell_diameter=float(d["cell_diameter"]),
            error=float(d.get("error", math.nan)),
            n_samples=int(d.get("n_samples", 0)),
            diameter_spread=float(d.get("diameter_spread", math.nan)),
            error90=float(d.get("error90", math.nan)),
            blob=BlobCalibration.from_dict(d.get("blob")),
            mask=MaskSizeCalibration.from_dict(d.get("mask")),
        )


def fit_ridge(
    x: np.ndarray, y: np.ndarray, cell_diameter: float, groups: Sequence[int] | None = None, seed: int = 0
) -> SizeModel:
    """Ridge regression of ``y`` (log diameters) on the rows of ``x``, strength chosen by 5-fold CV.

    ``groups`` (the source image of each row) keeps the crops of one image in one fold, so that the
    strength is chosen for images the fit has not seen.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    mean, std = x.mean(0), x.std(0)
    std = np.where(std > 1e-9, std, 1.0)
    z = (x - mean) / std
    if groups is not None and len(set(groups)) >= 2:
        ids = np.unique(np.asarray(groups), return_inverse=True)[1]
        folds = np.random.default_rng(seed).permutation(ids.max() + 1)[ids] % 5
    else:
        folds = np.random.default_rng(seed).permutation(len(y)) % 5
    best = (math.inf, _RIDGE[0], math.nan)
    for lam in _RIDGE:
        errs = []
        for k in range(5):
            tr, te = folds != k, folds == k
            if not te.any() or tr.sum() < 2:
                continue
            w, b = _solve(z[tr], y[tr], lam)
            errs.append(np.abs(np.expm1(z[te] @ w + b - y[te])))
        err = float(np.median(np.concatenate(errs))) if errs else math.nan
        if err < best[0]:
            best = (err, lam, float(np.percentile(np.concatenate(errs), 90)))
    w, b = _solve(z, y, best[1])
    return SizeModel(w, b, mean, std, float(cell_diameter), best[0], len(y), error90=best[2])


def fit_size_regression(
    x: np.ndarray, y: np.ndarray, cell_diameter: float, groups: Sequence[int] | None = None, seed: int = 0
) -> SizeModel:
    """:func:`fit_ridge` on all features and on the power-spectrum bands alone (the first :data:`N_BANDS`
    columns); the one with the lower cross-validated error is kept (the other columns then weigh 0).

    Backbone features help when the backbone has learnt what cells look like; from a barely trained one
    they mostly add noise, and the cross-validation sees which is the case.
    """
    full = fit_ridge(x, y, cell_diameter, groups, seed)
    x = np.asarray(x, np.float64)
    if x.shape[1] <= N_BANDS:
        return full
    bands = fit_ridge(x[:, :N_BANDS], y, cell_diameter, groups, seed)
    if not bands.error < full.error:
        return full
    n = x.shape[1]
    weights = np.zeros(n)
    weights[:N_BANDS] = bands.weights
    mean, std = np.zeros(n), np.ones(n)
    mean[:N_BANDS], std[:N_BANDS] = bands.mean, bands.std
    return attrs.evolve(bands, weights=weights, mean=mean, std=std)


def _solve(z: np.ndarray, y: np.ndarray, lam: float) -> tuple[np.ndarray, float]:
    """Closed-form ridge with an unpenalised intercept (``lam`` scaled by the number of rows)."""
    ym = y.mean()
    zm = z.mean(0)
    zc = z - zm
    a = zc.T @ zc + lam * len(y) * np.eye(z.shape[1])
    w = np.linalg.solve(a, zc.T @ (y - ym))
    return w, float(ym - zm @ w)


def _boxes(h: int, w: int, side: int, n: int) -> list[tuple[int, int, int, int]]:
    """Up to ``n`` x ``n`` square boxes (y0, y1, x0, x1) of ``side``, evenly spread over an (h, w) image
    (overlapping where the image is less than ``n`` sides wide)."""
    sy, sx = min(side, h), min(side, w)
    ys = sorted({round(v) for v in np.linspace(0, h - sy, min(n, 1 + (h - sy) // max(1, sy // 4)))})
    xs = sorted({round(v) for v in np.linspace(0, w - sx, min(n, 1 + (w - sx) // max(1, sx // 4)))})
    return [(y, y + sy, x, x + sx) for y in ys for x in xs]


def estimate_diameter(
    principal: Any, model: SizeModel, image: Any, *, start: float = 1.0, device: Any = "cpu"
) -> float:
    """Typical cell diameter (pixels of ``image``) of a raw (C, H, W) array or view with ``read``.

    ``start`` is the first resize factor (the training factor); each later pass resizes by
    ``cell_diameter`` / the previous estimate (see the module docstring). A model with a blob
    calibration measures the image's blob scale instead (on its central :data:`BLOB_REGION` pixels at
    most), one with a mask-size calibration the size of the principal's masks at the calibration's factor.
    The estimate stays within :data:`MAX_FACTOR` of ``cell_diameter`` either way.
    """
    _, h, w = (int(v) for v in image.shape)
    lo, hi = model.cell_diameter / MAX_FACTOR, model.cell_diameter * MAX_FACTOR
    if model.mask is not None:
        found = model.mask.diameter(principal, image, device)
        # too few detections to measure: the training factor's diameter
        estimate = found if found is not None else model.cell_diameter / model.mask.factor
        return float(min(max(estimate, lo), hi))
    if model.blob is not None:
        y0, x0 = max(0, (h - BLOB_REGION) // 2), max(0, (w - BLOB_REGION) // 2)
        y1, x1 = min(h, y0 + BLOB_REGION), min(w, x0 + BLOB_REGION)
        region = image.read(y0, y1, x0, x1) if hasattr(image, "read") else image[:, y0:y1, x0:x1]
        return float(min(max(model.blob.diameter(np.asarray(region, np.float32)), lo), hi))
    factor = float(start)
    diameter = model.cell_diameter / factor
    for _ in range(PASSES):
        side = max(8, math.ceil(CROP / factor))
        logs = []
        for y0, y1, x0, x1 in _boxes(h, w, side, CROPS_PER_AXIS):
            region = image.read(y0, y1, x0, x1) if hasattr(image, "read") else image[:, y0:y1, x0:x1]
            x = resized(np.asarray(region, np.float32), factor, device)
            logs.append(model.predict_log(crop_features(principal, x)))
        diameter = math.exp(float(np.mean(logs))) / factor
        diameter = min(max(diameter, lo), hi)
        factor = model.cell_diameter / diameter
    return float(diameter)
