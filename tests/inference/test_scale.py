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
