"""The blob-scale size cue (weakseg.inference.blob_size): scale equivariance, calibration, storage."""

from __future__ import annotations

import math

import numpy as np
import pytest

from weakseg.inference.blob_size import BlobCalibration, blob_profile, fit_blob_calibration, profile_peak


def discs(diameter: float, side: int = 512, seed: int = 0, dark: bool = False) -> np.ndarray:
    """A (1, side, side) image of non-overlapping discs of ``diameter`` on a noisy background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side]
    img = np.zeros((side, side), np.float32)
    step = int(diameter * 1.6)
    for cy in range(step // 2, side - step // 2, step):
        for cx in range(step // 2, side - step // 2, step):
            r = diameter / 2 * rng.uniform(0.9, 1.1)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1.0
    img = -img if dark else img
    return (img + rng.normal(0, 0.05, img.shape).astype(np.float32))[None]


def test_the_profile_peak_follows_the_cell_size():
    peaks = []
    for d in (8.0, 16.0, 32.0):
        log_sigmas, profiles = blob_profile(discs(d))
        peak, on_edge = profile_peak(log_sigmas, profiles["bright"])
        assert not on_edge
        peaks.append(peak)
    # doubling the diameter moves the peak by log 2 (within 15 %)
    assert np.diff(peaks) == pytest.approx([math.log(2)] * 2, rel=0.15)


def test_a_calibration_recovers_held_out_diameters_of_bright_and_dark_cells():
    train = [8.0, 12.0, 20.0, 30.0]
    for dark in (False, True):
        cal = fit_blob_calibration([discs(d, seed=i, dark=dark) for i, d in enumerate(train)], train)
        assert cal.usable and cal.error90 < 0.15
        for d in (10.0, 24.0):
            assert cal.diameter(discs(d, seed=7, dark=dark)) == pytest.approx(d, rel=0.15)


def test_texture_only_images_are_not_a_usable_calibration():
    rng = np.random.default_rng(0)
    noise = [rng.normal(size=(1, 256, 256)).astype(np.float32) for _ in range(4)]
    cal = fit_blob_calibration(noise, [10.0, 20.0, 40.0, 80.0])
    assert not cal.usable or cal.error90 > 0.5


def test_a_size_model_with_a_calibration_round_trips_and_sizes_by_blobs_alone():
    from weakseg.inference.sizing import N_BANDS, SizeModel, estimate_diameter

    cal = fit_blob_calibration([discs(d, seed=i) for i, d in enumerate((8.0, 16.0, 32.0))], [8.0, 16.0, 32.0])
    model = SizeModel(np.zeros(N_BANDS), 0.0, np.zeros(N_BANDS), np.ones(N_BANDS), 20.0, blob=cal)
    again = SizeModel.from_dict(model.to_dict())
    assert again.blob == cal and again.method == "blob scale"
    # no principal is needed: the blob scale alone sizes the image
    assert estimate_diameter(None, again, discs(24.0, seed=3)) == pytest.approx(24.0, rel=0.15)
    assert SizeModel.from_dict({**model.to_dict(), "blob": None}).method == "regression"
    assert BlobCalibration.from_dict({"polarity": "sideways"}) is None
