"""Predictor: tiled prediction equals untiled prediction, scaling maps back, precision, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from weakseg.errors import DataError, WeaksegError
from weakseg.inference.predictor import Predictor, rescale_instances
from weakseg.nn.instances import Instances

from .blob_model import BlobModel, disc_image, same_partition


@pytest.fixture(scope="module")
def discs():
    return disc_image((600, 700), 120, seed=0)


def test_untiled_prediction_finds_every_disc(discs):
    image, truth = discs
    labels = Predictor(BlobModel(), tile_size=1024).predict(image)
    assert labels.dtype == np.int32 and labels.shape == truth.shape
    assert same_partition(labels, truth)


def test_tiled_equals_untiled_including_cut_discs(discs):
    image, truth = discs
    model = BlobModel()
    tiled = Predictor(model, tile_size=192, overlap=80, batch_size=3)
    tiles = tiled.plan(truth.shape)
    assert len(tiles) >= 12
    # the test is only meaningful if tile edges cut discs
    cut = set()
    for t in tiles:
        region = truth[t.y0 : t.y1, t.x0 : t.x1]
        edges = [region[0], region[-1], region[:, 0], region[:, -1]]
        cut |= {int(v) for edge, inner in zip(edges, t.inner, strict=True) if inner for v in np.unique(edge)}
    assert len(cut - {0}) >= 20
    labels = tiled.predict(image)
    untiled = Predictor(BlobModel(), tile_size=1024).predict(image)
    assert same_partition(labels, untiled)
    assert {s[-2:] for s in model.calls} == {(192, 192)} and max(s[0] for s in model.calls) == 3
    # instances: same set of detections as untiled
    inst_t = tiled.predict_instances(image)
    inst_u = Predictor(BlobModel(), tile_size=1024).predict_instances(image)
    assert len(inst_t) == len(inst_u) == truth.max()
    np.testing.assert_allclose(np.sort(inst_t.scores.numpy()), np.sort(inst_u.scores.numpy()), rtol=1e-6)
    np.testing.assert_array_equal(inst_t.to_label_image() > 0, truth > 0)


@pytest.mark.parametrize("scale", [2.0, 0.5])
def test_scale_maps_results_back_to_original_pixels(discs, scale):
    image, truth = discs
    model = BlobModel(crop_size=48 if scale < 1 else 96)
    pred = Predictor(model, scale=scale, tile_size=2048, score_threshold=0.0)
    labels = pred.predict(image)
    assert labels.shape == truth.shape
    assert model.calls[0][-2:] == (round(600 * scale), round(700 * scale))
    # every disc is found, at its place, with a close mask
    ious = []
    for k in range(1, truth.max() + 1):
        t = truth == k
        ids, counts = np.unique(labels[t], return_counts=True)
        best = ids[np.argmax(counts)]
        assert best > 0
        p = labels == best
        ious.append((t & p).sum() / (t | p).sum())
    assert np.median(ious) > 0.85 and min(ious) > 0.6


def test_scale_with_tiles_matches_scale_without(discs):
    image, _ = discs
    one = Predictor(BlobModel(crop_size=96), scale=2.0, tile_size=2048).predict(image)
    many = Predictor(BlobModel(crop_size=96), scale=2.0, tile_size=384, overlap=128).predict(image)
    assert abs(int(one.max()) - int(many.max())) == 0
    assert (one > 0).sum() == pytest.approx((many > 0).sum(), rel=0.01)


def test_rescale_instances_identity_geometry():
    # a crop upsampled by 2 and mapped back lands on the original pixels
    m = torch.zeros(1, 8, 8)
    m[0, 2:6, 2:6] = 1
    inst = Instances(torch.ones(1), torch.tensor([[24.0, 44.0]]), m, torch.tensor([[20, 40]]), (64, 64))
    back = rescale_instances(inst, 0.5, 0.5, (128, 128)).to_label_image()
    assert back.sum() > 0
    ys, xs = np.nonzero(back)
    assert ys.min() >= 20 * 2 + 2 * 2 - 1 and ys.max() <= 20 * 2 + 6 * 2
    assert xs.min() >= 40 * 2 + 2 * 2 - 1 and xs.max() <= 40 * 2 + 6 * 2
    assert back.sum() == pytest.approx(64, abs=16)


def test_dtype_and_2d_and_channel_last_inputs(discs):
    image, truth = discs
    pred = Predictor(BlobModel())
    ref = pred.predict(image)
    assert same_partition(pred.predict(image[0].astype(np.float64)), ref)
    rgb = np.repeat(image, 3, axis=0)
    assert same_partition(Predictor(BlobModel(), in_channels=1).predict(rgb), ref)


def test_bf16_precision_runs_and_agrees(discs):
    image, _ = discs
    # blob model thresholds the input; bf16 autocast must not change a clear answer
    a = Predictor(BlobModel(), precision="bf16").predict(image)
    b = Predictor(BlobModel(), precision="fp32").predict(image)
    assert same_partition(a, b)


def test_predict_batch_equals_single(discs):
    image, _ = discs
    crops = [image[:, :200, :300], image[:, 200:400, :300], image[:, 400:, 300:600]]
    pred = Predictor(BlobModel(), batch_size=2)
    batch = pred.predict_batch(crops)
    for crop, inst in zip(crops, batch, strict=True):
        single = pred.predict_instances(crop)
        np.testing.assert_allclose(inst.scores.numpy(), single.scores.numpy())


def test_bad_arguments_are_user_errors():
    with pytest.raises(WeaksegError, match="precision"):
        Predictor(BlobModel(), precision="fp8")
    with pytest.raises(WeaksegError, match="scale"):
        Predictor(BlobModel(), scale=0)
    with pytest.raises(DataError, match="channels"):
        Predictor(BlobModel(), in_channels=2).predict(np.zeros((5, 20, 20)))
    with pytest.raises(DataError, match="shape"):
        Predictor(BlobModel()).predict(np.zeros((2, 3, 20, 20)))


def test_empty_image_gives_empty_results():
    pred = Predictor(BlobModel(), tile_size=64, overlap=16)
    flat = np.zeros((100, 130), np.uint8)
    assert pred.predict(flat).max() == 0
    assert len(pred.predict_instances(flat)) == 0


class CountingArray:
    """A lazy (C, H, W) array that records the size of every region read from it."""

    def __init__(self, array):
        self.array = array
        self.shape = array.shape
        self.dtype = array.dtype
        self.reads = []

    def __getitem__(self, index):
        out = self.array[index]
        self.reads.append(out.size)
        return out


def test_large_input_is_read_tile_by_tile_into_a_zarr_label_array(tmp_path, discs, monkeypatch):
    import zarr

    from weakseg.data import normalize
    from weakseg.inference import tiling

    image, truth = discs
    monkeypatch.setattr(tiling, "BAND_PIXELS", 20_000)  # relabelling bands
    monkeypatch.setattr(normalize, "BAND_PIXELS", 20_000)  # statistics bands
    lazy = CountingArray(image)
    out = zarr.create_array(tmp_path / "labels.zarr", shape=truth.shape, chunks=(128, 128), dtype="int32", fill_value=0)
    pred = Predictor(BlobModel(), tile_size=160, overlap=64)
    labels, table = pred.predict_labels(lazy, out=out)
    assert labels is out and len(table.scores) == truth.max()
    assert same_partition(np.asarray(out[:]), truth)
    assert max(lazy.reads) <= max(160 * 160, 20_000 + 700)  # never the whole image at once
    assert sum(lazy.reads) < 4 * image.size


class AdaptiveCropBlobs(BlobModel):
    """Like Nishimura-1's per-image windows: every forward pass picks its own crop size."""

    def predict(self, image: torch.Tensor) -> list[Instances]:
        self.crop_size = (40, 48, 56)[len(self.calls) % 3]
        return super().predict(image)


def test_tiles_with_different_crop_sizes_are_merged(discs):
    image, truth = discs
    model = AdaptiveCropBlobs()
    inst = Predictor(model, tile_size=192, overlap=80, batch_size=1).predict_instances(image)
    assert len(model.calls) >= 3 and inst.masks.shape[-1] == 56
    assert len(inst) == truth.max()
    untiled = Predictor(BlobModel(), tile_size=1024).predict(image)
    assert same_partition(inst.to_label_image(), untiled)


class TwiceFiringBlobs(BlobModel):
    """Fires twice on every blob, like a detector on cells unlike its training cells: a second, weaker
    detection 12 px away (beyond the 8 px of distance NMS) with the same mask."""

    def predict(self, image: torch.Tensor) -> list[Instances]:
        out = []
        for inst in super().predict(image):
            twin = Instances(inst.scores * 0.9, inst.locations + 12.0, inst.masks, inst.origins, inst.image_shape)
            out.append(Instances.concat([inst, twin], inst.image_shape))
        return out


def test_mask_nms_drops_second_detections_of_one_cell(discs):
    image, truth = discs
    inst = Predictor(TwiceFiringBlobs(), tile_size=1024).predict_instances(image)
    assert len(inst) == truth.max()
    labels = Predictor(TwiceFiringBlobs(), tile_size=256, overlap=100).predict(image)
    assert same_partition(labels, truth)
    assert len(Predictor(TwiceFiringBlobs(), max_overlap=1.0).predict_instances(image)) == 2 * truth.max()
    with pytest.raises(WeaksegError, match="max_overlap"):
        Predictor(BlobModel(), max_overlap=1.5)
