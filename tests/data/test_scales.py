"""One InputScale per run: the training loader, the evaluation images and the checkpoint share its factors."""

from __future__ import annotations

import attrs
import numpy as np
import pytest

from weakseg.data.dataset import build_train_dataset, iter_eval_images, make_train_loader
from weakseg.data.scales import InputScale, compute_input_scale
from weakseg.recipe import DataConfig

from .test_augment import disc_labels
from .test_dataset import cell_image, write_store


@pytest.fixture
def store(tmp_path):
    la = disc_labels((150, 170), 60, seed=1)
    lb = disc_labels((120, 90), 12, seed=2, r=(10, 12))
    lv = disc_labels((100, 100), 20, seed=3)
    images = [
        {"id": "a", "image": cell_image(la), "labels": la, "group": "g1"},
        {"id": "b", "image": cell_image(lb), "labels": lb, "group": "g2"},
        {"id": "v", "image": cell_image(lv), "labels": lv, "group": "g1", "split": "val"},
        {"id": "t", "image": cell_image(lv), "labels": lv, "group": "g3", "split": "test"},
    ]
    return write_store(tmp_path / "store.zarr", images)


def config(path, **kw) -> DataConfig:
    return DataConfig(store=str(path), crop_size=48, num_workers=0, **kw)


def test_the_given_scale_reaches_loader_and_evaluation_unchanged(store):
    """Factors unlike any the store would give: if either side re-measured, they would not match."""
    cfg = config(store, target_cell_size=32.0)
    given = InputScale(
        group_scales={"g1": 0.7310, "g2": 1.3702, "g3": 0.9}, trained_groups=("g1", "g2"), cell_diameter=32.0
    )
    assert given.group_scales != compute_input_scale(cfg).group_scales
    entries = {e.image_id: e.scale for e in build_train_dataset(cfg, seed=0, scale=given).entries}
    assert entries == {"a": 0.7310, "b": 1.3702}
    with make_train_loader(cfg, batch_size=1, seed=0, scale=given) as loader:
        assert {e.image_id: e.scale for e in loader.dataset.entries} == entries
    evals = {
        ev.image_id: ev.scale for split in ("train", "val", "test") for ev in iter_eval_images(cfg, split, scale=given)
    }
    assert evals == {"a": 0.7310, "b": 1.3702, "v": 0.7310, "t": 0.9}


def test_a_measured_scale_gives_training_and_evaluation_the_same_factors(store):
    cfg = config(store, target_cell_size=32.0)
    scale = compute_input_scale(cfg, seed=5)
    assert set(scale.group_scales) == {"g1", "g2", "g3"} and scale.trained_groups == ("g1", "g2")
    assert scale.group_scales["g1"] != scale.group_scales["g2"]  # small and large cells
    train = {e.image_id: e.scale for e in build_train_dataset(cfg, seed=5, scale=scale).entries}
    evals = {ev.image_id: ev.scale for ev in iter_eval_images(cfg, "train", scale=scale)}
    assert train == evals == {"a": scale.group_scales["g1"], "b": scale.group_scales["g2"]}
    # the untrained group g3 is measured on its own images and kept for its evaluation
    assert next(iter_eval_images(cfg, "test", scale=scale)).scale == scale.group_scales["g3"] != 1.0


def test_per_image_factors_are_shared_too(store):
    cfg = config(store, target_cell_size=20.0, rescale="image")
    scale = compute_input_scale(cfg)
    assert scale.rescale == "image" and set(scale.image_scales) >= {"a", "b"}
    odd = attrs.evolve(scale, image_scales={**scale.image_scales, "a": 0.4242})
    train = {e.image_id: e.scale for e in build_train_dataset(cfg, seed=0, scale=odd).entries}
    evals = {ev.image_id: ev.scale for ev in iter_eval_images(cfg, "train", scale=odd)}
    assert train["a"] == evals["a"] == 0.4242
    assert train["b"] == evals["b"] == scale.image_scales["b"]
    # a validation image the run did not measure is scored at its own known cell size
    (val,) = iter_eval_images(cfg, "val", scale=odd)
    from weakseg.data.cellsize import diameter_from_labels

    labels = disc_labels((100, 100), 20, seed=3)
    assert val.scale == pytest.approx(20.0 / diameter_from_labels(labels), rel=1e-6)


def test_to_dict_and_from_dict_round_trip_through_a_checkpoint(store, tmp_path):
    from weakseg.checkpoint import load_checkpoint, make_payload, save_checkpoint
    from weakseg.components import DataSummary

    scale = compute_input_scale(config(store, target_cell_size=20.0, rescale="image"), seed=2)
    assert InputScale.from_dict(scale.to_dict()) == scale
    payload = make_payload(
        recipe_yaml="name: x\ndata: {store: s.zarr}\nstrategy: {type: cks}\n",
        data_summary=DataSummary(in_channels=1),
        state_dict={},
        step=0,
        input_scale=scale.to_dict(),
    )
    ckpt = load_checkpoint(save_checkpoint(payload, tmp_path / "s.ckpt"))  # weights_only=True
    restored = InputScale.from_dict(ckpt.input_scale)
    assert restored == scale
    # what prediction chooses from: the training groups only
    assert ckpt.input_scale["group_scales"] == restored.trained_group_scales
    assert set(restored.trained_group_scales) == {"g1", "g2"}


def test_older_checkpoint_dicts_read_with_defaults():
    old = InputScale.from_dict({"group_scales": {"all": 0.5}, "cell_diameter": 30, "pixel_size": None})
    assert old == InputScale(group_scales={"all": 0.5}, trained_groups=("all",), cell_diameter=30.0)
    assert old.rescale == "group" and old.image_scale("x", "all") == 0.5 and old.group_scale("other") == 1.0


def test_unscaled_runs_record_factor_one(store):
    scale = compute_input_scale(config(store))
    assert scale.group_scales == {"g1": 1.0, "g2": 1.0, "g3": 1.0}
    assert scale.cell_diameter is None and scale.rescale == "group" and not scale.image_scales
    assert np.isclose(scale.image_scale("a", "g1"), 1.0)
