"""Training crops from a real zarr store: shapes, points on cells, padding, determinism, memory."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from weakseg.data.dataset import CropDataset, ImageEntry, TrainLoader, crops_per_image, sample_pixels
from weakseg.data.sampling import StreamSampler
from weakseg.recipe import AugmentConfig

from .test_augment import centroids, disc_labels


def write_store(path: Path, images: list[dict], centroids: bool = True) -> Path:
    """Import in-memory images (``id``, ``image``, optional ``labels``, ``group``, ``split``) with StoreWriter."""
    from weakseg.components import ImageRecord
    from weakseg.data.store import StoreWriter

    writer = StoreWriter(path)
    for item in images:
        labels = item.get("labels")
        record = ImageRecord(
            image_id=item["id"],
            source=f"memory:{item['id']}",
            load_image=lambda item=item: item["image"],
            load_labels=None if labels is None else (lambda labels=labels: labels),
            group=item.get("group", "all"),
            split=item.get("split", "train"),
        )
        writer.add(record, label_sources=None if centroids else [])
    writer.close()
    return path


def cell_image(labels: np.ndarray, dtype=np.uint16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = 200.0 + 800.0 * (labels > 0) + rng.normal(0, 30, labels.shape)
    return np.clip(img, 0, np.iinfo(dtype).max).astype(dtype)


@pytest.fixture
def store(tmp_path):
    la = disc_labels((150, 170), 70, seed=1)
    lb = disc_labels((120, 90), 30, seed=2)
    images = [
        {"id": "a", "image": cell_image(la), "labels": la, "group": "g1"},
        {"id": "b", "image": cell_image(lb, np.uint8), "labels": lb, "group": "g2"},
    ]
    path = write_store(tmp_path / "store.zarr", images)
    return path, {"a": la, "b": lb}


def make_dataset(path, labels, crop_size=64, augment=AugmentConfig(), seed=0, scales=(1.0, 1.0)):
    from weakseg.data.store import open_store

    store = open_store(path)
    entries, points = [], []
    for info, scale in zip(store.images, scales, strict=True):
        entries.append(
            ImageEntry(
                image_id=info.image_id,
                shape=info.shape,
                group_index=store.groups.index(info.group),
                scale=scale,
                has_labels=info.has_labels,
                n_crops=crops_per_image(info.shape, scale, crop_size),
            )
        )
        points.append(centroids(labels[info.image_id])[0])
    return CropDataset(path, entries, points, crop_size=crop_size, augment=augment, seed=seed)


@pytest.mark.parametrize("crop_size", [64, 47])
def test_crops_have_points_on_their_cells(store, crop_size):
    path, labels = store
    ds = make_dataset(path, labels, crop_size=crop_size, scales=(1.0, 1.3))
    assert len(ds) == crops_per_image((1, 150, 170), 1.0, crop_size) + crops_per_image((1, 120, 90), 1.3, crop_size)
    n_points = 0
    for epoch in range(3):
        for index in range(len(ds)):
            s = ds[(epoch, index)]
            assert s.image.shape == (1, crop_size, crop_size) and s.image.dtype == np.float32
            assert s.mask.shape == (crop_size, crop_size) and s.mask.dtype.kind == "i"
            pts = s.points
            assert ((pts >= 0) & (pts < crop_size)).all()
            if len(pts):
                iy, ix = np.floor(pts).astype(int).T
                on = s.mask[iy, ix]
                assert (on > 0).all(), "a point fell off its cell"
                assert len(set(on.tolist())) == len(on), "two points on one cell"
            n_points += len(pts)
            assert s.group == (0 if s.image_id == "a" else 1)
    assert n_points > 50


def test_images_smaller_than_the_crop_are_padded(store):
    path, labels = store
    ds = make_dataset(path, labels, crop_size=200, augment=AugmentConfig(scale_range=(1.0, 1.0), gamma=(1.0, 1.0)))
    s = ds[(0, 1)]  # image b: 120 x 90 inside a 200 x 200 crop
    image, mask = s.image[0], s.mask
    inside = np.abs(image) > 0
    assert 0.9 * 120 * 90 <= inside.sum() <= 120 * 90
    assert set(np.unique(mask[~inside])) <= {0}
    assert (mask > 0).sum() == pytest.approx((labels["b"] > 0).sum(), rel=0.1)
    assert len(s.points) == len(centroids(labels["b"])[0])


def test_samples_are_deterministic_per_key(store):
    path, labels = store
    ds = make_dataset(path, labels)
    again = make_dataset(path, labels)
    for key in [(0, 0), (0, 3), (2, 3)]:
        a, b = ds[key], again[key]
        assert np.array_equal(a.image, b.image)
        assert np.array_equal(a.points, b.points)
        assert np.array_equal(a.mask, b.mask)
    assert not np.array_equal(ds[(0, 3)].image, ds[(1, 3)].image)


def test_crops_without_points_are_redrawn(tmp_path):
    labels = np.zeros((400, 400), np.int32)
    labels[10:20, 10:20] = 1  # one small cell in a corner
    path = write_store(tmp_path / "s.zarr", [{"id": "x", "image": cell_image(labels), "labels": labels}])
    ds = make_dataset(
        path, {"x": labels}, crop_size=150, augment=AugmentConfig(flips=False, rot90=False), scales=(1.0,)
    )
    hits = [len(ds[(e, i)].points) for e in range(4) for i in range(len(ds))]
    # a uniform 150-px window holds the corner cell with probability (16/251)^2 < 1 %; the last retry
    # places the window around a point
    assert all(n == 1 for n in hits)


def test_resumed_loader_gives_the_same_batches(store):
    path, labels = store
    ds = make_dataset(path, labels)
    full = TrainLoader(ds, StreamSampler(len(ds), batch_size=2, seed=4), num_workers=0)
    batches = [next(full) for _ in range(6)]
    resumed = TrainLoader(ds, StreamSampler(len(ds), batch_size=2, seed=4, start_step=4), num_workers=0)
    for want in batches[4:]:
        got = next(resumed)
        assert got.image_ids == want.image_ids
        assert np.array_equal(got.image.numpy(), want.image.numpy())
        assert all(np.array_equal(p.numpy(), q.numpy()) for p, q in zip(got.points, want.points, strict=True))
    assert batches[0].image.shape == (2, 1, 64, 64)
    assert batches[0].group.dtype.is_floating_point is False


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) / 1024


def test_spawned_workers_give_the_same_batches_stay_small_and_exit_cleanly(store):
    path, labels = store
    ds = make_dataset(path, labels, crop_size=544)
    serial = TrainLoader(ds, StreamSampler(len(ds), batch_size=2, seed=1), num_workers=0)
    expected = [next(serial) for _ in range(4)]
    with TrainLoader(ds, StreamSampler(len(ds), batch_size=2, seed=1), num_workers=2) as parallel:
        for want in expected:
            got = next(parallel)
            assert got.image_ids == want.image_ids
            assert np.array_equal(got.image.numpy(), want.image.numpy())
            assert all(np.array_equal(p.numpy(), q.numpy()) for p, q in zip(got.points, want.points, strict=True))
            assert all(np.array_equal(p.numpy(), q.numpy()) for p, q in zip(got.masks, want.masks, strict=True))
            assert str(got.masks[0].dtype) == "torch.int64"
        pool = parallel.pool
        from multiprocessing.popen_spawn_posix import Popen as SpawnPopen

        assert all(isinstance(w._popen, SpawnPopen) and w.is_alive() for w in pool.workers)
        # workers never import torch (alone ~570 MB resident with the CUDA build)
        assert all(rss_mb(w.pid) < 350 for w in pool.workers), [rss_mb(w.pid) for w in pool.workers]
    assert pool.exitcodes == [0, 0]


def test_a_failing_worker_reports_its_error(tmp_path, store):
    path, labels = store
    ds = make_dataset(path, labels)
    ds.path = str(tmp_path / "gone.zarr")  # the workers cannot open the store
    loader = TrainLoader(ds, StreamSampler(len(ds), batch_size=2, seed=1), num_workers=1)
    with loader, pytest.raises(RuntimeError, match="store not found"):
        next(loader)


def test_a_crop_reads_a_region_not_the_whole_image(tmp_path):
    h = w = 3000
    yy, xx = np.mgrid[:h, :w]
    labels = (((yy // 40) * (w // 40) + xx // 40 + 1) * (((yy % 40) > 5) & ((xx % 40) > 5))).astype(np.int32)
    image = ((yy % 40) * 20 + (xx % 40) * 10).astype(np.uint16)
    path = write_store(tmp_path / "big.zarr", [{"id": "big", "image": image, "labels": labels}], centroids=False)
    points = centroids_grid(h, w)
    ds = CropDataset(
        path,
        [ImageEntry(image_id="big", shape=(1, h, w), group_index=0, scale=1.0, has_labels=True, n_crops=4)],
        [points],
        crop_size=96,
        augment=AugmentConfig(),
        seed=0,
    )
    whole = h * w * 2  # the image's own bytes (uint16); reading it whole would allocate at least this
    tracemalloc.start()
    try:
        for index in range(4):
            s = ds[(0, index)]
            assert len(s.points) > 0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < whole / 2, f"peak {peak / 1e6:.1f} MB while the image is {whole / 1e6:.1f} MB"


def centroids_grid(h: int, w: int) -> np.ndarray:
    ys, xs = np.mgrid[0 : h // 40, 0 : w // 40]
    return np.stack([ys.ravel() * 40 + 23.0, xs.ravel() * 40 + 23.0], axis=1).astype(np.float32)


def test_sample_pixels_reads_windows_of_a_large_image(tmp_path):
    import zarr

    arr = zarr.create_array(str(tmp_path / "a.zarr"), shape=(2, 1500, 1600), chunks=(2, 256, 256), dtype="uint8")
    arr[...] = 7
    small = sample_pixels(arr, budget=1500 * 1600)
    assert small.shape == (2, 1500 * 1600)
    windows = sample_pixels(arr, budget=1000, windows=9)
    assert windows.shape[0] == 2 and 0 < windows.shape[1] <= 9 * 128 * 128
    assert (windows == 7).all()
