"""Per-image intensity standardisation, shared by training, evaluation and prediction.

The principal model does no normalisation of its own (as in the reference implementation); every
image is standardised per channel to zero mean and unit variance before it reaches a model.
"""

from __future__ import annotations

import numpy as np


def channel_stats(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of a (C, H, W) image, as float64 arrays of shape (C,)."""
    img = np.asarray(image, dtype=np.float64)
    flat = img.reshape(img.shape[0], -1)
    return flat.mean(axis=1), flat.std(axis=1)


def standardize(image: np.ndarray, mean: np.ndarray | None = None, std: np.ndarray | None = None) -> np.ndarray:
    """Return a float32 (C, H, W) copy with each channel at zero mean and unit variance.

    ``mean``/``std`` may be given (e.g. computed once over a whole large image, then applied per tile).
    A constant channel (std 0) maps to zeros rather than dividing by zero.
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 2:
        img = img[None]
    if mean is None or std is None:
        mean, std = channel_stats(img)
    mean = np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(std, dtype=np.float32).reshape(-1, 1, 1)
    return (img - mean) / np.maximum(std, 1e-6)
