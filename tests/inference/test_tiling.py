"""Tile plans and label stitching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from weakseg.inference.tiling import LabelStitcher, axis_tiles, plan_tiles
from weakseg.nn.instances import Instances


@pytest.mark.parametrize("length,tile,overlap", [(100, 200, 10), (1000, 256, 64), (513, 256, 64), (257, 256, 100)])
def test_axis_tiles_cover_with_overlap_and_cores_partition(length, tile, overlap):
    tiles = axis_tiles(length, tile, overlap)
    assert tiles[0][0] == 0 and tiles[-1][1] == length
    assert all(stop - start == min(tile, length) for start, stop, _, _ in tiles)
    cores = [(a, b) for _, _, a, b in tiles]
    assert cores[0][0] == 0 and cores[-1][1] == length
    assert all(cores[i][1] == cores[i + 1][0] for i in range(len(cores) - 1))
    for i, (start, stop, a, b) in enumerate(tiles):
        if i > 0:
            assert a - start >= overlap // 2
            assert tiles[i - 1][1] - start >= overlap
        if i < len(tiles) - 1:
            assert stop - b >= overlap // 2


def test_plan_marks_inner_edges():
    tiles = plan_tiles((300, 500), 256, 64)
    assert len(tiles) == 2 * 3
    assert tiles[0].inner == (False, True, False, True)
    assert tiles[-1].inner == (True, False, True, False)


def _random_instances(n, shape, s=20, seed=0):
    rng = np.random.default_rng(seed)
    origins = np.stack([rng.integers(-5, shape[0] - 5, n), rng.integers(-5, shape[1] - 5, n)], 1)
    yy, xx = np.mgrid[:s, :s]
    masks = np.stack([((yy - s / 2) ** 2 + (xx - s / 2) ** 2 < rng.uniform(3, 10) ** 2) for _ in range(n)])
    masks = masks.astype(np.float32) * rng.uniform(0.4, 1.0, size=(n, 1, 1)).astype(np.float32)
    scores = rng.permutation(np.linspace(0.3, 0.99, n)).astype(np.float32)
    locs = origins + s / 2
    return Instances(
        torch.from_numpy(scores),
        torch.from_numpy(locs).float(),
        torch.from_numpy(masks),
        torch.from_numpy(origins),
        shape,
    )


@pytest.mark.parametrize("min_area", [0, 60])
def test_stitcher_equals_to_label_image_in_any_paste_order(min_area):
    shape = (120, 150)
    inst = _random_instances(60, shape)
    ref = inst.to_label_image(0.5, 0.5, min_area)
    # paste in three arbitrary "tiles" (no dedup) in shuffled order: the higher score still wins each pixel
    st = LabelStitcher(shape, score_threshold=0.5, min_area=min_area, dedup_distance=0)
    order = np.random.default_rng(3).permutation(len(inst))
    for k, part in enumerate(np.array_split(order, 3)):
        sub = inst.select(torch.from_numpy(part))
        st.add(sub.scores.numpy(), sub.locations.numpy(), sub.masks.numpy(), sub.origins.numpy(), tile_index=k)
    labels, table = st.finish()
    np.testing.assert_array_equal(labels, ref)
    assert np.all(np.diff(table.scores) <= 0) and len(table.scores) == ref.max()


def test_stitcher_writes_into_zarr_and_drops_cross_tile_duplicates(tmp_path):
    import zarr

    shape = (64, 64)
    out = zarr.create_array(tmp_path / "l.zarr", shape=shape, chunks=(32, 32), dtype="int32", fill_value=0)
    st = LabelStitcher(shape, out, score_threshold=0.5, dedup_distance=8)
    mask = np.zeros((1, 10, 10), np.float32)
    mask[0, 2:8, 2:8] = 1
    st.add(np.array([0.7]), np.array([[25.0, 25.0]]), mask, np.array([[20, 20]]), tile_index=0)
    # the same cell seen by a second tile, slightly shifted and more confident: replaces the first
    st.add(np.array([0.9]), np.array([[27.0, 25.0]]), mask, np.array([[22, 20]]), tile_index=1)
    # a third copy, less confident: dropped
    st.add(np.array([0.6]), np.array([[26.0, 26.0]]), mask, np.array([[21, 21]]), tile_index=2)
    labels, table = st.finish()
    arr = np.asarray(labels[:])
    assert set(np.unique(arr)) == {0, 1}
    assert (arr == 1).sum() == 36 and arr[24:30, 22:28].all()
    np.testing.assert_allclose(table.scores, [0.9])
