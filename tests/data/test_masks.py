"""Largest connected component per id, centroids (+0.5), tiled vs. whole processing."""

from __future__ import annotations

import numpy as np
import pytest

from weakseg.data.masks import count_instances, instance_centroids, largest_components

from .io_fixtures import blob_labels


def test_single_pixel_centroid_is_pixel_centre():
    labels = np.zeros((10, 10), np.int32)
    labels[3, 4] = 7
    ids, pts, area = instance_centroids(labels)
    assert ids.tolist() == [7]
    assert pts.tolist() == [[3.5, 4.5]]
    assert area.tolist() == [1]


def test_fragment_is_ignored_and_counted_once():
    labels = np.zeros((20, 20), np.int32)
    labels[10:14, 10:16] = 3  # main body: rows 10-13, cols 10-15
    labels[0:2, 0:2] = 3  # a stray fragment of the same id
    ids, pts, area = instance_centroids(labels)
    assert ids.tolist() == [3]
    np.testing.assert_allclose(pts[0], [11.5 + 0.5, 12.5 + 0.5])
    assert area[0] == 24
    cleaned = largest_components(labels)
    assert cleaned[0:2, 0:2].sum() == 0 and (cleaned[10:14, 10:16] == 3).all()


def test_touching_cells_of_different_ids_stay_apart():
    labels = np.zeros((10, 10), np.int32)
    labels[2:8, 2:5] = 1
    labels[2:8, 5:8] = 2
    ids, pts, _ = instance_centroids(labels)
    assert ids.tolist() == [1, 2]
    np.testing.assert_allclose(pts, [[5.0, 3.5], [5.0, 6.5]])


def test_diagonal_fragment_joins_with_8_connectivity_only():
    labels = np.zeros((6, 6), np.int32)
    labels[1:3, 1:3] = 1
    labels[3, 3] = 1  # touches the block at a corner
    assert largest_components(labels, connectivity=2)[3, 3] == 1
    assert largest_components(labels, connectivity=1)[3, 3] == 0


@pytest.mark.parametrize("tile", [32, 50])
def test_tiled_equals_whole(tile):
    labels = blob_labels((150, 170), n=40, seed=3, radius=5)
    labels[0:3, 160:163] = 5  # fragments far from their main body
    labels[148:150, 0:2] = 9
    whole = instance_centroids(labels)
    tiled = instance_centroids(labels, tile=tile)
    np.testing.assert_array_equal(whole[0], tiled[0])
    np.testing.assert_allclose(whole[1], tiled[1])
    np.testing.assert_array_equal(whole[2], tiled[2])
    assert len(whole[0]) == len(np.unique(labels)) - 1


def test_count_instances_on_lazy_array(tmp_path):
    import zarr

    labels = blob_labels((120, 90), n=12, seed=1)
    z = zarr.create_array(str(tmp_path / "l.zarr"), shape=labels.shape, chunks=(32, 32), dtype="int32")
    z[...] = labels
    assert count_instances(z, tile=40) == count_instances(labels) == 12
