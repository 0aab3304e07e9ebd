"""Cells cut by the edge of a training crop: kept as points for point supervision, spared when just outside."""

from __future__ import annotations

import numpy as np
import pytest

from weakseg.data.augment import CropTransform
from weakseg.data.dataset import CropDataset, ImageEntry, build_train_dataset, crops_per_image
from weakseg.data.loader import edge_cells
from weakseg.recipe import AugmentConfig, DataConfig

from .test_augment import centroids, disc_labels
from .test_dataset import cell_image, write_store


@pytest.fixture
def store(tmp_path):
    labels = disc_labels((160, 160), 80, seed=4, r=(8, 14))
    path = write_store(tmp_path / "store.zarr", [{"id": "a", "image": cell_image(labels), "labels": labels}])
    return path, labels


def dataset(path, labels, *, keep_cut_points=False, edge_radius=0.0, crop_size=48):
    entry = ImageEntry(image_id="a", shape=(1, *labels.shape), group_index=0, scale=1.0, has_labels=True,
                       n_crops=crops_per_image(labels.shape, 1.0, crop_size), edge_radius=edge_radius)
    return CropDataset(path, [entry], [centroids(labels)[0]], crop_size=crop_size, augment=AugmentConfig(),
                       seed=0, keep_cut_points=keep_cut_points)


def test_points_of_cut_cells_are_dropped_for_masks_and_kept_for_point_supervision(store):
    path, labels = store
    dropped, kept = dataset(path, labels), dataset(path, labels, keep_cut_points=True)
    n_dropped = n_kept = off_mask = 0
    for key in [(e, i) for e in range(4) for i in range(len(dropped))]:
        a, b = dropped[key], kept[key]
        assert np.array_equal(a.mask, b.mask) and np.array_equal(a.image, b.image)  # the same crop
        n_dropped, n_kept = n_dropped + len(a.points), n_kept + len(b.points)
        iy, ix = np.floor(b.points).astype(int).T
        off_mask += int((b.mask[iy, ix] == 0).sum())  # a kept point whose cut cell left the mask
        ay, ax = np.floor(a.points).astype(int).T
        assert (a.mask[ay, ax] > 0).all()
    assert off_mask > 0 and n_kept == n_dropped + off_mask


def test_pixels_near_a_point_just_outside_the_crop_are_not_background(store):
    path, labels = store
    ds = dataset(path, labels, edge_radius=5.0)
    t = CropTransform(image_shape=labels.shape, size=40, origin=(30, 30))
    points = np.asarray([[5.0, 5.0], [28.0, 50.0], [50.0, 50.0]], np.float32)  # far away, 2 px above, inside
    out = ds._edge_cells(points, points[:, 0].copy(), t, 5.0, None)
    zeros = np.argwhere(out == 0)
    assert len(zeros) and zeros[:, 0].max() <= 2 and zeros[:, 1].min() >= 15 and zeros[:, 1].max() <= 24
    assert out.sum() == out.size - len(zeros)
    flipped = ds._edge_cells(points, points[:, 0].copy(), CropTransform(labels.shape, 40, origin=(30, 30),
                                                                       flip_y=True), 5.0, None)
    assert np.array_equal(flipped, out[::-1])  # follows the crop's flips
    far = points[[0, 2]]
    assert ds._edge_cells(far, far[:, 0].copy(), t, 5.0, None) is None  # nothing near: no mask at all
    region = np.ones((40, 40), np.uint8)
    region[30:, 30:] = 0
    both = ds._edge_cells(points, points[:, 0].copy(), t, 5.0, region)
    assert np.array_equal(both, np.minimum(out, region))


def test_crop_edge_cells_follow_the_strategy_and_the_cell_size(store):
    path, _ = store
    cfg = DataConfig(store=str(path), crop_size=48, num_workers=0, target_cell_size=20.0)
    assert edge_cells(cfg, points_only=True) == "background"  # the default
    auto = DataConfig(store=str(path), crop_size=48, num_workers=0, target_cell_size=20.0, crop_edge_cells="auto")
    assert edge_cells(auto, points_only=True) == "ignore" and edge_cells(auto, points_only=False) == "background"
    ds = build_train_dataset(auto, seed=0, points_only=True)
    assert ds.keep_cut_points and all(e.edge_radius == 10.0 for e in ds.entries)
    spaced = DataConfig(store=str(path), crop_size=48, num_workers=0, crop_edge_cells="ignore")
    radius = build_train_dataset(spaced, seed=0).entries[0].edge_radius
    assert 5.0 < radius < 20.0  # half the point spacing of cells of 16-28 px
    plain = build_train_dataset(cfg, seed=0, points_only=True)
    assert not plain.keep_cut_points and plain.entries[0].edge_radius == 0.0
    sample = ds[(0, 0)]
    assert sample.annotated is None or sample.annotated.shape == (48, 48)
