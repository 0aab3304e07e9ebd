"""Crop augmentations: geometry keeps points on their cells, reads only what it needs, intensities."""

from __future__ import annotations

import math

import numpy as np
import pytest

from weakseg.data.augment import (
    CropTransform,
    ImageStats,
    IntensityJitter,
    apply_intensity,
    cut_instances,
    draw_intensity,
    draw_transform,
    resample,
)
from weakseg.data.normalize import standardize
from weakseg.recipe import AugmentConfig


def disc_labels(shape: tuple[int, int], n: int, seed: int, r: tuple[int, int] = (5, 11)) -> np.ndarray:
    """Non-overlapping discs with ids 1..k (later discs do not overwrite earlier ones)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    k = 0
    for _ in range(n):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        rad = rng.uniform(*r)
        disc = (yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2 < rad**2
        if labels[disc].any():
            continue
        k += 1
        labels[disc] = k
    return labels


def centroids(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids = np.unique(labels)
    ids = ids[ids > 0]
    pts = []
    for i in ids:
        ys, xs = np.nonzero(labels == i)
        pts.append((ys.mean() + 0.5, xs.mean() + 0.5))
    return np.asarray(pts, np.float32), ids


@pytest.mark.parametrize("size", [64, 57, 101])
def test_points_stay_on_their_cells(size):
    labels = disc_labels((150, 130), 60, seed=size)
    points, ids = centroids(labels)
    cfg = AugmentConfig(scale_range=(0.8, 1.2), anisotropic=True)
    checked = 0
    for seed in range(25):
        rng = np.random.default_rng(seed)
        tf = draw_transform(rng, labels.shape, size, cfg, base_scale=1.0 + 0.3 * (seed % 3 - 1))
        box = tf.source_box()
        mask = tf.warp(labels[box[0] : box[1], box[2] : box[3]], box, order=0)
        mask[~tf.valid()] = 0
        mapped, keep = tf.points(points)
        assert mapped.shape == (keep.sum(), 2)
        assert ((mapped >= 0) & (mapped < size)).all()
        iy, ix = np.floor(mapped).astype(int).T
        assert np.array_equal(mask[iy, ix], ids[keep]), f"seed {seed}: a point left its cell"
        checked += len(mapped)
        # every visible cell whose centre falls in the crop kept its point
        assert set(np.unique(mask)) - {0} >= set(ids[keep].tolist())
    assert checked > 100


def test_orientation_matches_numpy_flips_and_rotations():
    rng = np.random.default_rng(0)
    image = rng.random((2, 40, 50)).astype(np.float32)
    plain = CropTransform((40, 50), 31, origin=(4, 9))
    base = plain.warp(image, (0, 40, 0, 50))
    assert np.allclose(base, image[:, 4:35, 9:40])
    for flip_y in (False, True):
        for flip_x in (False, True):
            for k in range(4):
                tf = CropTransform((40, 50), 31, origin=(4, 9), flip_y=flip_y, flip_x=flip_x, rot90=k)
                expected = base[:, ::-1] if flip_y else base
                expected = expected[:, :, ::-1] if flip_x else expected
                expected = np.rot90(expected, k, axes=(1, 2))
                assert np.allclose(tf.warp(image, (0, 40, 0, 50)), expected)


def test_reading_only_the_source_box_gives_the_same_crop():
    rng = np.random.default_rng(1)
    image = rng.random((1, 300, 280)).astype(np.float32) * 1000
    cfg = AugmentConfig(scale_range=(0.5, 1.6))
    for seed in range(10):
        tf = draw_transform(np.random.default_rng(seed), (300, 280), 63, cfg)
        y0, y1, x0, x1 = box = tf.source_box()
        assert (y1 - y0) * (x1 - x0) < 300 * 280
        from_box = tf.warp(image[:, y0:y1, x0:x1], box)
        from_full = tf.warp(image, (0, 300, 0, 280))
        valid = tf.valid()
        assert np.allclose(from_box[:, valid], from_full[:, valid], rtol=1e-5, atol=1e-3)


def test_resize_is_bilinear_and_antialiased():
    yy, xx = np.mgrid[:200, :200].astype(np.float32)
    ramp = (2.0 * yy + 0.5 * xx)[None]
    tf = CropTransform((200, 200), 40, scale=(1.25, 0.8), origin=(50, 40))
    out = tf.warp(ramp, (0, 200, 0, 200))[0]
    cy = (50 + np.arange(40) + 0.5) / 1.25 - 0.5
    cx = (40 + np.arange(40) + 0.5) / 0.8 - 0.5
    assert np.allclose(out, 2.0 * cy[:, None] + 0.5 * cx[None, :], atol=1e-2)
    checker = ((yy + xx) % 2)[None]
    shrunk = CropTransform((200, 200), 50, scale=(0.5, 0.5), origin=(10, 10)).warp(checker, (0, 200, 0, 200))
    assert shrunk.std() < 0.05  # without antialiasing it would alias to stripes of 0/1
    assert abs(shrunk.mean() - 0.5) < 0.05


def test_small_images_are_padded():
    image = np.arange(20 * 30, dtype=np.float32).reshape(1, 20, 30)
    cfg = AugmentConfig(flips=False, rot90=False, scale_range=(1.0, 1.0))
    tf = draw_transform(np.random.default_rng(2), (20, 30), 45, cfg)
    valid = tf.valid()
    assert valid.sum() == 20 * 30
    out = tf.warp(image, tf.source_box())
    assert np.array_equal(out[0][valid].reshape(20, 30), image[0])
    assert tf.origin[0] <= 0 and tf.origin[1] <= 0


def test_cut_instances_uses_half_of_the_box():
    labels = np.zeros((100, 100), np.int32)
    labels[10:30, 38:48] = 1  # 10 wide, crop starts at x=40: keeps 8/10
    labels[50:70, 34:44] = 2  # keeps 4/10 -> cut
    labels[80:90, 60:70] = 3  # fully inside
    tf = CropTransform((100, 100), 60, origin=(0, 40))
    assert cut_instances(labels, (0, 100, 0, 100), tf).tolist() == [2]
    # same answer from a region read with a margin
    sub = labels[0:70, 20:100]
    assert cut_instances(sub, (0, 70, 20, 100), tf).tolist() == [2]


def test_intensity_neutral_draw_is_plain_standardisation():
    rng = np.random.default_rng(3)
    image = rng.gamma(2.0, 100.0, size=(2, 64, 64)).astype(np.float32)
    stats = ImageStats.from_pixels(image)
    out = apply_intensity(image, stats, IntensityJitter())
    assert np.allclose(out, standardize(image), atol=1e-4)
    shifted = apply_intensity(image, stats, IntensityJitter(contrast=1.3, brightness=0.2))
    assert np.allclose(shifted.mean(axis=(1, 2)), 0.2, atol=1e-3)
    assert np.allclose(shifted.std(axis=(1, 2)), 1.3, atol=1e-3)
    gamma = apply_intensity(image, stats, IntensityJitter(gamma=0.6))
    assert np.allclose(gamma.mean(axis=(1, 2)), 0.0, atol=0.1)  # stats estimated from a 1024-pixel sample
    assert np.allclose(gamma.std(axis=(1, 2)), 1.0, atol=0.1)
    assert not np.allclose(gamma, out, atol=0.05)


def test_draws_respect_the_config():
    cfg = AugmentConfig(scale_range=(0.85, 1.15), anisotropic=False, brightness=0.3, contrast=(0.6, 1.4))
    for seed in range(50):
        rng = np.random.default_rng(seed)
        tf = draw_transform(rng, (500, 500), 100, cfg, base_scale=2.0)
        assert tf.scale[0] == tf.scale[1] and 1.7 <= tf.scale[0] <= 2.3
        jit = draw_intensity(rng, cfg)
        assert 0.5 <= jit.gamma <= 2.0 and 0.6 <= jit.contrast <= 1.4 and abs(jit.brightness) <= 0.3
    off = AugmentConfig(flips=False, rot90=False)
    tfs = [draw_transform(np.random.default_rng(s), (500, 500), 100, off) for s in range(20)]
    assert not any(t.flip_y or t.flip_x or t.rot90 for t in tfs)


def test_resample_off_draws_exactly_as_before_and_on_loses_fine_detail():
    cfg = AugmentConfig()
    assert cfg.resample == 1.0
    for seed in range(20):
        rng, ref = np.random.default_rng(seed), np.random.default_rng(seed)
        jit = draw_intensity(rng, cfg)
        g0, g1 = cfg.gamma  # the three draws of the augmentation without resampling, in order
        gamma = float(math.exp(ref.uniform(math.log(g0), math.log(g1))))
        contrast, brightness = ref.uniform(*cfg.contrast), ref.uniform(-cfg.brightness, cfg.brightness)
        assert (jit.gamma, jit.contrast, jit.brightness, jit.resample) == (gamma, contrast, brightness, 1.0)
        assert rng.random() == ref.random()  # no extra draw: the following crops are unchanged too
    factors = [draw_intensity(np.random.default_rng(s), AugmentConfig(resample=3.0)).resample for s in range(200)]
    resampled = [f for f in factors if f != 1.0]
    assert 60 < len(resampled) < 140 and all(1.0 <= f <= 3.0 for f in resampled)

    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, 64, 64)).astype(np.float32)  # pixel-level detail only
    out = resample(image, 3.0)
    assert out.shape == image.shape and out.dtype == np.float32
    assert out.std() < 0.5 * image.std()  # detail finer than 3 pixels is gone
    smooth = np.broadcast_to(np.linspace(0, 1, 64, dtype=np.float32), (1, 64, 64))
    assert np.allclose(resample(smooth, 3.0)[:, 8:-8, 8:-8], smooth[:, 8:-8, 8:-8], atol=0.02)  # coarse kept
    stats = ImageStats.from_pixels(image)
    std = apply_intensity(image, stats, IntensityJitter(resample=2.0))
    assert std.shape == image.shape and not np.allclose(std, apply_intensity(image, stats, IntensityJitter()))
