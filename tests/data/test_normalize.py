"""Per-image standardisation: whole-image statistics of any size, non-finite pixels, the signal test."""

from __future__ import annotations

import numpy as np

from weakseg.data import normalize
from weakseg.data.normalize import image_stats, scan_image
from weakseg.inference.tiling import ChannelFirst


def test_image_stats_banded_equal_numpy(monkeypatch):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 60000, size=(2, 301, 203)).astype(np.uint16)
    monkeypatch.setattr(normalize, "BAND_PIXELS", 1000)  # many bands
    mean, std = image_stats(img)
    ref = img.reshape(2, -1).astype(np.float64)
    np.testing.assert_allclose(mean, ref.mean(1), rtol=1e-10)
    np.testing.assert_allclose(std, ref.std(1), rtol=1e-9)


def test_image_stats_channel_last_view():
    rng = np.random.default_rng(2)
    img = rng.random((40, 30, 3)).astype(np.float32)
    mean, _ = image_stats(ChannelFirst(img, "yxc"))
    np.testing.assert_allclose(mean, img.reshape(-1, 3).mean(0), rtol=1e-5)




def test_scan_counts_and_skips_non_finite_pixels(monkeypatch):
    monkeypatch.setattr(normalize, "BAND_PIXELS", 500)
    rng = np.random.default_rng(3)
    img = rng.normal(50, 7, size=(2, 60, 40)).astype(np.float32)
    img[0, 5:9, :] = np.nan
    img[1, 30, 3] = np.inf
    scan = scan_image(img)
    assert scan.nonfinite == 4 * 40 + 1 and scan.values == img.size
    for c in range(2):
        finite = img[c][np.isfinite(img[c])].astype(np.float64)
        np.testing.assert_allclose(scan.mean[c], finite.mean(), rtol=1e-10)
        np.testing.assert_allclose(scan.std[c], finite.std(), rtol=1e-9)
    out = normalize.standardize(img, scan.mean, scan.std)
    assert np.isfinite(out).all() and np.all(out[0, 5:9] == 0)


def test_all_nan_image_has_zero_statistics_and_no_signal():
    img = np.full((1, 20, 30), np.nan, np.float32)
    scan = scan_image(img)
    assert scan.nonfinite == img.size and scan.mean[0] == 0 and scan.std[0] == 0
    assert not normalize.has_signal(img, scan.min_range())


def test_signal_rule_on_constant_near_constant_and_sparse_images():
    zeros = np.zeros((1, 64, 64), np.uint16)
    const = np.full((1, 64, 64), 1234, np.uint16)
    rng = np.random.default_rng(0)
    near = (1000 + rng.integers(-2, 3, size=(1, 64, 64))).astype(np.uint16)  # +-2 counts on 1000
    for img in (zeros, const, near):
        assert not normalize.has_signal(img, scan_image(img).min_range())
    sparse = near.copy()
    sparse[0, 10:14, 20:24] += 200  # one small cell
    assert normalize.has_signal(sparse, scan_image(sparse).min_range())
    flat_float = np.full((1, 32, 32), 0.25, np.float32) + np.float32(1e-7) * rng.random((1, 32, 32), np.float32)
    assert not normalize.has_signal(flat_float, scan_image(flat_float).min_range())
    real = rng.random((1, 32, 32)).astype(np.float32) * 1e-3  # tiny values are still signal
    assert normalize.has_signal(real, scan_image(real).min_range())


def test_channel_stats_and_image_stats_agree():
    rng = np.random.default_rng(4)
    img = rng.integers(0, 255, size=(3, 50, 70)).astype(np.uint8)
    np.testing.assert_allclose(np.stack(normalize.channel_stats(img)), np.stack(image_stats(img)), rtol=1e-12)
    stats = normalize.ImageStats.from_pixels(img)
    np.testing.assert_allclose(stats.mean, img.reshape(3, -1).mean(1), rtol=1e-12)
