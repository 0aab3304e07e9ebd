"""make_train_loader, data_summary and iter_eval_images over a store made by StoreWriter."""

from __future__ import annotations

import numpy as np
import pytest

from weakseg.data.dataset import build_train_dataset, data_summary, iter_eval_images, make_train_loader
from weakseg.errors import DataError
from weakseg.recipe import AugmentConfig, DataConfig, LabelSourceSpec

from .test_augment import disc_labels
from .test_dataset import cell_image, write_store


@pytest.fixture
def store(tmp_path):
    la = disc_labels((150, 170), 70, seed=1)
    lb = disc_labels((120, 90), 30, seed=2)
    lc = disc_labels((100, 100), 20, seed=3)
    one = np.zeros((80, 80), np.int32)
    one[30:40, 30:40] = 1
    images = [
        {"id": "a", "image": cell_image(la), "labels": la, "group": "g1"},
        {"id": "b", "image": cell_image(lb), "labels": lb, "group": "g2"},
        {"id": "one", "image": cell_image(one), "labels": one, "group": "g2"},
        {"id": "v", "image": cell_image(lc), "labels": lc, "group": "g1", "split": "val"},
    ]
    return write_store(tmp_path / "store.zarr", images), {"a": la, "b": lb, "one": one, "v": lc}


def config(path, **kw) -> DataConfig:
    return DataConfig(store=str(path), crop_size=kw.pop("crop_size", 48), num_workers=0, **kw)


def test_summary_describes_the_train_split(store):
    path, _ = store
    summary = data_summary(config(path))
    assert summary.in_channels == 1
    assert summary.group_names == ("g1", "g2") and summary.n_groups == 2
    assert summary.has_masks is True
    with pytest.raises(DataError, match="no images in split 'nope'"):
        data_summary(config(path, train_split="nope"))
    with pytest.raises(DataError, match="store not found"):
        data_summary(config(path.parent / "missing.zarr"))


def test_loader_makes_standardised_batches(store):
    path, _ = store
    loader = make_train_loader(config(path), batch_size=3, seed=0)
    for _ in range(4):
        batch = next(loader)
        assert batch.image.shape == (3, 1, 48, 48) and str(batch.image.dtype) == "torch.float32"
        assert str(batch.group.dtype) == "torch.int64" and set(batch.group.tolist()) <= {0, 1}
        for pts, mask, gid, image_id in zip(batch.points, batch.masks, batch.group, batch.image_ids, strict=True):
            assert pts.shape[1] == 2 and str(pts.dtype) == "torch.float32"
            assert mask.shape == (48, 48) and str(mask.dtype) == "torch.int64"
            assert int(gid) == (0 if image_id == "a" else 1)
        assert abs(float(batch.image.mean())) < 1.5
    loader.close()


def test_ranks_read_disjoint_shards_and_resume_is_exact(store):
    path, _ = store
    cfg = config(path, augment=AugmentConfig(flips=False))
    r0 = make_train_loader(cfg, batch_size=1, seed=2, rank=0, world_size=2)
    r1 = make_train_loader(cfg, batch_size=1, seed=2, rank=1, world_size=2)
    n = len(r0.dataset)
    seen0 = [tuple(k) for s in range(n // 2) for k in r0.sampler.batch_at(s)]
    seen1 = [tuple(k) for s in range(n // 2) for k in r1.sampler.batch_at(s)]
    assert not set(seen0) & set(seen1)
    first = [next(r0) for _ in range(5)]
    resumed = make_train_loader(cfg, batch_size=1, seed=2, rank=0, world_size=2, start_step=3)
    for want in first[3:]:
        got = next(resumed)
        assert got.image_ids == want.image_ids
        assert np.array_equal(got.image.numpy(), want.image.numpy())
        assert np.array_equal(got.points[0].numpy(), want.points[0].numpy())


def test_images_without_points_are_left_out_with_a_warning(store):
    path, _ = store
    jitter = LabelSourceSpec.of("jitter", drop=0.6, move=0.0)  # the one-cell image keeps round(0.4) = 0 points
    with pytest.warns(UserWarning, match="no points from label source 'jitter'.*one"):
        ds = build_train_dataset(config(path, label_source=jitter), seed=0)
    assert [e.image_id for e in ds.entries] == ["a", "b"]
    everything = LabelSourceSpec.of("jitter", drop=1.0)
    with pytest.raises(DataError, match="no training image has any point"), pytest.warns(UserWarning):
        build_train_dataset(config(path, label_source=everything), seed=0)


def test_eval_images_are_raw_whole_images(store):
    path, labels = store
    items = list(iter_eval_images(config(path), "val"))
    assert [e.image_id for e in items] == ["v"]
    ev = items[0]
    assert ev.image.shape == (1, 100, 100) and ev.image.dtype == np.float32
    assert np.array_equal(ev.image[0], cell_image(labels["v"]).astype(np.float32))
    assert ev.labels.dtype == np.int32 and np.array_equal(ev.labels, labels["v"])
    assert (ev.group, ev.group_index, ev.scale) == ("g1", 0, 1.0)
    assert len(list(iter_eval_images(config(path), "train", max_images=2))) == 2


def test_group_scales_from_config_and_from_cell_size(store):
    path, labels = store
    fixed = next(iter_eval_images(config(path, group_scales={"g1": 2.5}), "val"))
    assert fixed.scale == 2.5
    target = next(iter_eval_images(config(path, target_cell_size=32.0), "val"))
    areas = np.unique(labels["a"][labels["a"] > 0], return_counts=True)[1]
    expected = 32.0 / np.median(np.sqrt(4 * areas / np.pi))  # g1's train image decides
    assert target.scale == pytest.approx(expected, rel=1e-6)
    ds = build_train_dataset(config(path, target_cell_size=32.0), seed=0)
    assert ds.entries[0].scale == pytest.approx(expected, rel=1e-6)
    assert ds.entries[0].n_crops >= 1


def test_input_scale_info_records_how_training_images_were_resized(store):
    from weakseg.data.dataset import input_scale_info, resolve_group_scales

    path, _ = store
    cfg = config(path, target_cell_size=32.0)
    info = input_scale_info(cfg)
    assert info["group_scales"] == pytest.approx(resolve_group_scales(cfg))
    assert set(info["group_scales"]) == {"g1", "g2"} and info["group_scales"]["g1"] != 1.0
    assert info["cell_diameter"] == 32.0
    plain = input_scale_info(config(path))
    assert plain["group_scales"] == {"g1": 1.0, "g2": 1.0} and plain["cell_diameter"] is None


def test_rescale_image_gives_each_training_image_its_own_factor(tmp_path):
    """One group that mixes magnifications: per group, both images share one factor (the small cells end
    far below the target size); with data.rescale: image each image's cells reach the target."""
    from weakseg.data.cellsize import diameter_from_labels

    small = disc_labels((160, 160), 40, seed=1, r=(5, 6))
    large = disc_labels((160, 160), 12, seed=2, r=(14, 16))
    path = write_store(
        tmp_path / "mixed.zarr",
        [
            {"id": "lo", "image": cell_image(small), "labels": small},
            {"id": "hi", "image": cell_image(large), "labels": large},
        ],
    )
    per_group = {e.image_id: e.scale for e in build_train_dataset(config(path, target_cell_size=20.0), seed=0).entries}
    assert per_group["lo"] == per_group["hi"]
    per_image = build_train_dataset(config(path, target_cell_size=20.0, rescale="image"), seed=0)
    scales = {e.image_id: e.scale for e in per_image.entries}
    for image_id, labels in (("lo", small), ("hi", large)):
        assert scales[image_id] * diameter_from_labels(labels) == pytest.approx(20.0, rel=1e-6)
    assert scales["lo"] > 2 * scales["hi"]
    # evaluation images are scored at their own known size too
    per_image_cfg = config(path, target_cell_size=20.0, rescale="image")
    evals = {ev.image_id: ev.scale for ev in iter_eval_images(per_image_cfg, "train")}
    assert evals == pytest.approx(scales)
    assert {ev.scale for ev in iter_eval_images(config(path, target_cell_size=20.0), "train")} == {per_group["lo"]}


@pytest.mark.slow
def test_a_synthetic_recipe_store_is_generated_then_streamed(tmp_path):
    from weakseg.recipe import SyntheticData

    cfg = DataConfig(
        store=str(tmp_path / "demo.zarr"),
        synthetic=SyntheticData(n_images=4, size=96, val_fraction=0.25),
        crop_size=64,
        num_workers=0,
    )
    summary = data_summary(cfg)
    assert summary.has_masks and summary.in_channels >= 1
    with make_train_loader(cfg, batch_size=2, seed=0) as loader:
        batch = next(loader)
    assert batch.image.shape == (2, summary.in_channels, 64, 64)
    assert sum(len(p) for p in batch.points) > 0
    assert [e.image_id for e in iter_eval_images(cfg, cfg.val_split)]
