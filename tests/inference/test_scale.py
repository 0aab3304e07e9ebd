"""The resize factor for new images: explicit, from a cell diameter, a pixel size or the checkpoint."""

from __future__ import annotations

import pytest

import weakseg
from weakseg.errors import WeaksegError
from weakseg.inference.scale import resolve_scale

from . import blob_model

KROMP_LIKE = {"group_scales": {"tissue": 0.5, "cells": 1.5, "cytospin": 1.0}, "cell_diameter": 34.0, "pixel_size": 0.65}


@pytest.fixture
def scaled_checkpoint(tmp_path, plugin_registration):
    plugin_registration(blob_model)
    return lambda info: blob_model.write_blob_checkpoint(tmp_path / "scaled.ckpt", input_scale=info)


def test_checkpoint_factor_is_the_default(scaled_checkpoint):
    path = scaled_checkpoint({"group_scales": {"all": 0.53}, "cell_diameter": 34.6, "pixel_size": None})
    assert weakseg.load(path).scale == pytest.approx(0.53)
    # a cell-diameter override: cells of 69.2 px in the new images are halved to the trained 34.6
    assert weakseg.load(path, diameter=69.2).scale == pytest.approx(0.5)
    assert weakseg.load(path, scale=2.0).scale == 2.0


def test_groups_resized_differently(scaled_checkpoint):
    path = scaled_checkpoint(KROMP_LIKE)
    with pytest.warns(UserWarning, match=r"median 1.*--group"):
        assert weakseg.load(path).scale == pytest.approx(1.0)
    assert weakseg.load(path, group="cells").scale == pytest.approx(1.5)
    # pixel size: the group's factor times the ratio of pixel sizes
    assert weakseg.load(path, group="tissue", pixel_size=1.3).scale == pytest.approx(0.5 * 1.3 / 0.65)
    with pytest.raises(WeaksegError, match="unknown training group 'cell'.*cells, cytospin, tissue"):
        weakseg.load(path, group="cell")


def test_user_errors_name_the_missing_information(scaled_checkpoint):
    path = scaled_checkpoint({"group_scales": {"all": 1.0}, "cell_diameter": None, "pixel_size": None})
    with pytest.raises(WeaksegError, match="target_cell_size.*--scale"):
        weakseg.load(path, diameter=30.0)
    with pytest.raises(WeaksegError, match="training pixel size"):
        weakseg.load(path, pixel_size=0.5)
    with pytest.raises(WeaksegError, match="not scale and diameter"):
        weakseg.load(path, scale=1.0, diameter=3.0)
    with pytest.raises(WeaksegError, match="positive"):
        weakseg.load(path, diameter=-3.0)


def test_old_checkpoint_without_factors_and_without_resizing_predicts_at_scale_1(blob_checkpoint):
    assert weakseg.load(blob_checkpoint).scale == 1.0


def test_old_checkpoint_with_an_unreachable_store_warns(tmp_path, plugin_registration):
    plugin_registration(blob_model)
    path = blob_model.write_blob_checkpoint(
        tmp_path / "old.ckpt", recipe_extra={"data": {"store": str(tmp_path / "gone.zarr"), "target_cell_size": 30.0}}
    )
    with pytest.warns(UserWarning, match="does not record the factors"):
        assert weakseg.load(path).scale == 1.0


def test_resolve_scale_recomputes_factors_of_an_old_checkpoint_from_its_store(tmp_path):
    from data.test_augment import disc_labels
    from data.test_dataset import cell_image, write_store

    from weakseg.checkpoint import Checkpoint
    from weakseg.data.dataset import resolve_group_scales
    from weakseg.recipe import recipe_from_yaml_text

    labels = disc_labels((150, 170), 40, seed=1)
    store = write_store(tmp_path / "s.zarr", [{"id": "a", "image": cell_image(labels), "labels": labels}])
    recipe = recipe_from_yaml_text(
        f"name: old\ndata: {{store: {store}, target_cell_size: 20.0}}\nstrategy: {{type: cks}}\n"
    )
    old = Checkpoint(
        path=tmp_path / "x.ckpt", recipe=recipe, recipe_yaml="", data_summary=None, state_dict={}, step=0, raw={}
    )
    expected = next(iter(resolve_group_scales(recipe.data).values()))
    assert expected != 1.0 and resolve_scale(old) == pytest.approx(expected)


def test_a_per_image_model_asks_for_the_diameter(scaled_checkpoint):
    info = {"group_scales": {"all": 0.5}, "cell_diameter": 34.6, "pixel_size": None, "rescale": "image"}
    path = scaled_checkpoint(info)
    with pytest.warns(UserWarning, match="pass diameter=/--diameter"):
        assert weakseg.load(path).scale == pytest.approx(0.5)
    assert weakseg.load(path, diameter=17.3).scale == pytest.approx(2.0)


def test_prediction_uses_the_checkpoint_factors_with_the_training_store_deleted(tmp_path, plugin_registration):
    import shutil
    import warnings

    import numpy as np
    from data.test_augment import disc_labels
    from data.test_dataset import cell_image, write_store

    from weakseg.data.scales import compute_input_scale
    from weakseg.recipe import DataConfig

    plugin_registration(blob_model)
    labels = disc_labels((150, 170), 40, seed=1)
    image = cell_image(labels)
    store = write_store(tmp_path / "train.zarr", [{"id": "a", "image": image, "labels": labels}])
    scale = compute_input_scale(DataConfig(store=str(store), target_cell_size=20.0))
    factor = scale.group_scales["all"]
    assert factor != pytest.approx(1.0)
    path = blob_model.write_blob_checkpoint(
        tmp_path / "new.ckpt",
        recipe_extra={"data": {"store": str(store), "target_cell_size": 20.0}},
        input_scale=scale.to_dict(),
    )
    shutil.rmtree(store)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "cannot be read" fallback: the store is never opened
        model = weakseg.load(path)
        assert model.scale == pytest.approx(factor)
        assert weakseg.load(path, diameter=40.0).scale == pytest.approx(0.5)
        labels_out = np.asarray(model.predict(image.astype(np.float32)))
    assert labels_out.shape == labels.shape


def test_a_run_records_its_input_scale_and_its_model_predicts_without_the_store(tmp_path, plugin_registration):
    """run_recipe measures the factors once (with train.seed) and writes them into the checkpoint; the
    model then predicts at those factors after the training store is gone."""
    import shutil
    import warnings

    from data.test_augment import disc_labels
    from data.test_dataset import cell_image, write_store

    from weakseg.checkpoint import load_checkpoint
    from weakseg.data.scales import InputScale, compute_input_scale
    from weakseg.engine.run import run_recipe
    from weakseg.recipe import recipe_from_yaml_text

    plugin_registration(blob_model)
    small, large = disc_labels((150, 170), 40, seed=1), disc_labels((140, 140), 10, seed=2, r=(14, 16))
    store = write_store(
        tmp_path / "train.zarr",
        [
            {"id": "a", "image": cell_image(small), "labels": small, "group": "small"},
            {"id": "b", "image": cell_image(large), "labels": large, "group": "large"},
            {"id": "v", "image": cell_image(small), "labels": small, "group": "small", "split": "val"},
        ],
    )
    recipe = recipe_from_yaml_text(
        f"name: scaled\ndata: {{store: {store}, target_cell_size: 20.0}}\nstrategy: {{type: {blob_model.STRATEGY}}}\n"
        f"train: {{device: cpu, seed: 3}}\neval: {{panel: false}}\noutput: {{dir: {tmp_path / 'runs'}}}\n"
    )
    result = run_recipe(recipe, progress=False)
    recorded = InputScale.from_dict(load_checkpoint(result.checkpoint).input_scale)
    assert recorded == compute_input_scale(recipe.data, seed=3)
    assert recorded.group_scales["small"] != recorded.group_scales["large"]
    shutil.rmtree(store)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert weakseg.load(result.checkpoint, group="large").scale == pytest.approx(recorded.group_scales["large"])
