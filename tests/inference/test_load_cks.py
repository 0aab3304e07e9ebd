"""``weakseg.load`` on a real checkpoint of a tiny CKS strategy (ConvNeXt-atto + LACSS head)."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import yaml

import weakseg

from .blob_model import disc_image

pytestmark = pytest.mark.slow  # builds and runs a real (tiny) CKS model: about a minute on 2 busy cores


@pytest.fixture(scope="module")
def cks_checkpoint(tmp_path_factory):
    import torch

    from weakseg.build import build_strategy
    from weakseg.checkpoint import make_payload, save_checkpoint
    from weakseg.components import DataSummary
    from weakseg.recipe import recipe_from_yaml_text

    recipe = recipe_from_yaml_text(
        yaml.safe_dump(
            {
                "name": "tiny-cks",
                "data": {"store": "unused.zarr"},
                "model": {"backbone": {"type": "convnext_atto"}, "head": {"type": "lacss", "max_detections": 100}},
                "collaborator": {"type": "cks"},
                "strategy": {"type": "cks"},
            }
        )
    )
    torch.manual_seed(0)
    summary = DataSummary(in_channels=1)
    strategy = build_strategy(recipe, summary)
    payload = make_payload(recipe_yaml=recipe.to_yaml(), data_summary=summary, state_dict=strategy.state_dict(), step=0)
    return save_checkpoint(payload, tmp_path_factory.mktemp("ckpt") / "cks.ckpt")


def test_load_cks_checkpoint_and_predict_tiled(cks_checkpoint):
    import torch

    image, _ = disc_image((300, 380), 20, seed=5)
    pred = weakseg.load(cks_checkpoint, tile_size=224, overlap=128, score_threshold=0.0)
    assert pred.in_channels == 1 and len(pred.plan((300, 380))) >= 4
    inst = pred.predict_instances(image)
    assert inst.image_shape == (300, 380) and inst.masks.shape[1:] == (96, 96)
    assert torch.all(inst.scores[:-1] >= inst.scores[1:])
    assert inst.locations[:, 0].max() < 300 and inst.locations[:, 1].max() < 380
    labels = pred.predict(image)
    assert labels.dtype == np.int32 and labels.shape == (300, 380)


def test_load_cks_checkpoint_scaled_bf16(cks_checkpoint):
    image, _ = disc_image((160, 200), 10, seed=6)
    pred = weakseg.load(cks_checkpoint, scale=0.5, precision="bf16", score_threshold=0.0)
    inst = pred.predict_instances(image)
    assert inst.image_shape == (160, 200)
    assert len(inst) == 0 or inst.masks.shape[1:] == (193, 193)  # ceil(96 / 0.5) + 1
    assert pred.predict(image).shape == (160, 200)


def test_cks_model_finds_nothing_in_blank_or_nan_images(cks_checkpoint):
    pred = weakseg.load(cks_checkpoint, tile_size=224, overlap=128, score_threshold=0.0)
    blank = {
        "zeros": np.zeros((300, 380), np.uint16),
        "constant": np.full((256, 256), 1234, np.uint16),
        "all_nan": np.full((256, 256), np.nan, np.float32),
    }
    from weakseg.inference.predictor import InputWarning

    for name, image in blank.items():
        warns = pytest.warns(InputWarning, match="NaN") if name == "all_nan" else contextlib.nullcontext()
        with warns:
            assert len(pred.predict_instances(image)) == 0, name
        with warns:
            assert pred.predict(image).max() == 0, name
    image, _ = disc_image((256, 256), 10, seed=8)
    assert len(pred.predict_instances(image)) > 0  # the same model does find something in a real image
