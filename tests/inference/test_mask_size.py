"""The mask-size cue of the size model (weakseg.inference.mask_size): measuring, fitting, storing, using."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.ndimage import zoom

from weakseg.data.cellsize import diameter_from_labels
from weakseg.inference.mask_size import MaskSizeCalibration, fit_mask_calibration, mask_diameter

from .blob_model import BlobModel, disc_image

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FACTOR = 0.8


def _training_set():
    """Disc images of four cell sizes (radius 5-13 px) with their true diameters."""
    images, diameters = [], []
    for k, r in enumerate((5, 7, 9, 11, 13)):
        image, labels = disc_image((256, 256), 16, seed=k, radius=(r, r * 1.15))
        images.append(image.astype(np.float32))
        diameters.append(diameter_from_labels(labels))
    return images, diameters


def test_a_scale_equivariant_model_gives_a_unit_slope_and_recovers_a_held_out_rescale():
    """The blob model's masks follow the cells exactly, so the fit is log D = log(d / factor) and a
    held-out image magnified 1.5x is measured within 15 % of its true diameter."""
    model = BlobModel(threshold=1.0, crop_size=64)
    images, diameters = _training_set()
    measured = [mask_diameter(model, im, FACTOR) for im in images]
    assert all(m is not None for m in measured)
    cal = fit_mask_calibration(measured, diameters, FACTOR)
    assert cal is not None and cal.usable and cal.n_images == len(images)
    assert cal.slope == pytest.approx(1.0, abs=0.15)
    assert cal.error90 < 0.1

    image, labels = disc_image((256, 256), 16, seed=50, radius=(6, 7))
    true = diameter_from_labels(labels) * 1.5
    found = cal.diameter(model, zoom(image[0].astype(np.float32), 1.5, order=1)[None])
    assert found == pytest.approx(true, rel=0.15)


def test_a_compressed_mask_response_is_undone_by_the_fitted_slope():
    """Masks that grow only half as fast as the cells (d = c * D**0.5) give slope 2 and exact estimates."""
    diameters = [20.0, 30.0, 45.0, 60.0, 80.0]
    measured = [FACTOR * 3.0 * math.sqrt(d) for d in diameters]
    cal = fit_mask_calibration(measured, diameters, FACTOR)
    assert cal.slope == pytest.approx(2.0, rel=1e-6)
    assert cal.diameter_from(FACTOR * 3.0 * math.sqrt(37.0)) == pytest.approx(37.0, rel=1e-6)
    assert cal.error90 < 1e-6


def test_too_few_measured_images_give_no_calibration_and_blank_images_are_not_measured():
    assert fit_mask_calibration([10.0, None, 12.0, None, 14.0], [20.0, 25.0, 24.0, 30.0, 28.0], 1.0) is None
    blank = np.zeros((1, 128, 128), np.float32)
    assert mask_diameter(BlobModel(threshold=1.0), blank, 1.0) is None


def test_a_size_model_with_a_mask_calibration_round_trips_and_sizes_images_with_it(tmp_path):
    import torch

    from weakseg.inference.sizing import N_BANDS, SizeModel, estimate_diameter

    model = BlobModel(threshold=1.0, crop_size=64)
    images, diameters = _training_set()
    cal = fit_mask_calibration([mask_diameter(model, im, FACTOR) for im in images], diameters, FACTOR)
    size_model = SizeModel(np.zeros(N_BANDS), math.log(500.0), np.zeros(N_BANDS), np.ones(N_BANDS), 20.0, mask=cal)
    torch.save({"size_model": size_model.to_dict()}, tmp_path / "m.pt")
    back = SizeModel.from_dict(torch.load(tmp_path / "m.pt", weights_only=True)["size_model"])
    assert back.method == "mask size" and back.mask == cal
    # the mask cue sizes the image (the regression's constant 500 px is not used)
    image, labels = disc_image((256, 256), 16, seed=51, radius=(8, 9))
    assert estimate_diameter(model, back, image.astype(np.float32)) == pytest.approx(
        diameter_from_labels(labels), rel=0.15
    )
    # an image without detections falls back to the diameter the calibration factor implies
    blank = np.zeros((1, 128, 128), np.float32)
    assert estimate_diameter(model, back, blank) == pytest.approx(20.0 / FACTOR)
    assert MaskSizeCalibration.from_dict(None) is None
