"""The size model (weakseg.inference.sizing, size_fit): fitting, accuracy, storage, precedence of the options."""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml

#: The tiny CKS principal of tests/test_api.py (ConvNeXt-atto, narrow FPN), with random weights.
TINY_RECIPE = {
    "name": "tiny-size",
    "data": {"store": "unused.zarr"},
    "model": {
        "backbone": {"type": "convnext_atto", "fpn_channels": 32},
        "head": {"type": "lacss", "crop_size": 32, "encoder_hidden": [32], "detection_layers": 1},
    },
    "collaborator": {"type": "cks"},
    "strategy": {"type": "cks"},
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny convolutions run fastest on one thread


def tiny_principal():
    import torch

    from weakseg.build import build_strategy
    from weakseg.components import DataSummary
    from weakseg.recipe import recipe_from_yaml_text

    torch.manual_seed(0)
    recipe = recipe_from_yaml_text(yaml.safe_dump(TINY_RECIPE))
    return build_strategy(recipe, DataSummary(in_channels=1)).principal().eval()


@pytest.mark.slow  # 16 synthetic images, 256 crops through a tiny backbone, 9 held-out estimates: ~30 s
def test_size_model_recovers_a_known_rescale_of_held_out_synthetic_cells(tmp_path):
    """Fitted on random-weight ConvNeXt-atto features plus power-spectrum bands (cross-validation keeps the
    bands alone here), on training crops at random rescales: for held-out images (another seed) rescaled by
    known factors, the rescale is recovered within 15 % and the diameter within 15 % (median)."""
    from scipy.ndimage import zoom

    from weakseg.data import cellsize
    from weakseg.data.scales import compute_input_scale
    from weakseg.data.synthetic import synthetic_image, write_synthetic_store
    from weakseg.inference.size_fit import fit_size_model
    from weakseg.inference.sizing import estimate_diameter
    from weakseg.recipe import DataConfig, SyntheticData

    train = SyntheticData(n_images=16, size=192, cell_diameter=16.0, modality="phase", val_fraction=0.0, seed=0)
    write_synthetic_store(tmp_path / "s.zarr", train)
    cfg = DataConfig(store=str(tmp_path / "s.zarr"))
    principal = tiny_principal()
    model = fit_size_model(principal, cfg, compute_input_scale(cfg), in_channels=1, n_samples=256)
    assert model is not None and model.n_samples == 256 and 12 < model.cell_diameter < 18
    assert model.mask is None  # one training cell size: the mask cue is not fitted

    held_out = SyntheticData(n_images=3, size=192, cell_diameter=16.0, modality="phase", seed=5)
    errors, ratio_errors = [], []
    for i in range(3):
        im = synthetic_image(held_out, i)
        true = cellsize.diameter_from_labels(im.labels)
        found = {}
        for f in (0.6, 1.0, 1.6):
            found[f] = estimate_diameter(principal, model, zoom(im.image[0].astype(np.float32), f, order=1)[None])
            errors.append(abs(found[f] / (true * f) - 1))
        ratio_errors.append(abs(found[1.6] / found[0.6] / (1.6 / 0.6) - 1))
    assert max(ratio_errors) < 0.15, ratio_errors  # the rescale between two views of an image is recovered
    assert float(np.median(errors)) < 0.15, errors  # and the diameter itself
    assert max(errors) < 0.35, errors  # no image far off


def test_size_model_round_trips_through_a_weights_only_checkpoint_entry(tmp_path):
    import torch

    from weakseg.inference.sizing import N_BANDS, SizeModel, fit_ridge, fit_size_regression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5))
    y = x @ np.array([0.5, -0.2, 0.0, 0.1, 0.3]) + 2.5
    model = fit_ridge(x, y, cell_diameter=20.0, groups=np.arange(60) % 6)
    assert model.error < 0.05 and model.n_samples == 60
    torch.save({"size_model": model.to_dict()}, tmp_path / "m.pt")
    back = SizeModel.from_dict(torch.load(tmp_path / "m.pt", weights_only=True)["size_model"])
    assert back is not None and back.cell_diameter == 20.0
    assert back.predict_log(x[0]) == pytest.approx(model.predict_log(x[0]))
    assert back.predict_log(x[0]) == pytest.approx(y[0], abs=0.05)
    assert SizeModel.from_dict(None) is None and SizeModel.from_dict({"format": "other"}) is None

    # columns past the spectrum bands that are only noise are dropped by the cross-validation
    bands = rng.normal(size=(60, N_BANDS))
    noisy = np.hstack([bands, rng.normal(size=(60, 40))])
    target = bands[:, 0] * 0.3 + 2.0
    chosen = fit_size_regression(noisy, target, 20.0, groups=np.arange(60) % 6)
    assert not chosen.weights[N_BANDS:].any() and chosen.error < 0.05
    assert chosen.predict_log(noisy[1]) == pytest.approx(target[1], abs=0.05)


class _Ckpt:
    """What image_sizer reads from a checkpoint: its path, recorded input scale and size model."""

    def __init__(self, size_model=None, **input_scale):
        self.path = "fake.ckpt"
        self.input_scale = {"group_scales": {"a": 0.5}, "cell_diameter": 10.0, **input_scale}
        self.size_model = size_model


class _Principal:
    def features(self, image):  # pragma: no cover - only its presence matters here
        raise AssertionError


def _constant_model(diameter: float, cell_diameter: float = 10.0):
    from weakseg.inference.sizing import N_BANDS, SizeModel

    n = N_BANDS
    return SizeModel(np.zeros(n), math.log(diameter), np.zeros(n), np.ones(n), cell_diameter).to_dict()


def test_user_options_win_over_the_size_model_and_no_model_keeps_the_training_factor():
    from weakseg.inference.scale import image_sizer

    with_model = _Ckpt(_constant_model(40.0))
    sizer = image_sizer(with_model, _Principal())
    assert sizer.per_image and sizer.fixed.scale == 0.5  # estimation starts at the training factor
    for options, scale, source in (({"scale": 2.0}, 2.0, "scale"), ({"diameter": 20.0}, 0.5, "diameter")):
        fixed = image_sizer(with_model, _Principal(), **options)
        assert not fixed.per_image and fixed.fixed.scale == scale and fixed.fixed.source == source
    assert image_sizer(with_model, _Principal(), diameter=20.0).fixed.diameter == 20.0
    # a principal without features cannot use the model: the recorded factor, as without one
    assert not image_sizer(with_model, object()).per_image
    plain = image_sizer(_Ckpt(), _Principal())
    assert not plain.per_image and plain.fixed.scale == 0.5 and plain.fixed.diameter == pytest.approx(20.0)
    assert plain.fixed.source == "training factor"
    with pytest.warns(UserWarning, match="data.rescale: image"):
        image_sizer(_Ckpt(rescale="image"), _Principal())


def test_a_model_trained_at_one_cell_size_keeps_the_training_factor_by_default():
    """New images are sized one by one only when the training images came at different cell sizes."""
    from weakseg.inference.scale import image_sizer

    one_size = _constant_model(40.0)
    one_size["diameter_spread"] = 1.2
    assert not image_sizer(_Ckpt(one_size), _Principal()).per_image
    assert image_sizer(_Ckpt(one_size), _Principal()).fixed.scale == 0.5
    mixed = dict(one_size, diameter_spread=2.0)  # e.g. two magnifications in the training set
    assert image_sizer(_Ckpt(mixed), _Principal()).per_image
    assert image_sizer(_Ckpt(one_size, rescale="image"), _Principal()).per_image
    groups = {"group_scales": {"a": 0.5, "b": 2.0}, "trained_groups": ["a", "b"]}
    assert image_sizer(_Ckpt(one_size, **groups), _Principal()).per_image


def test_evaluate_sizes_by_group_where_predict_has_no_group():
    from weakseg.inference.scale import image_sizer

    ckpt = _Ckpt()
    ckpt.input_scale = {"group_scales": {"a": 0.5, "b": 2.0}, "cell_diameter": 10.0}
    with pytest.warns(UserWarning, match="median"):
        assert image_sizer(ckpt).size(np.zeros((1, 8, 8))).scale == pytest.approx(1.25)
    sizer = image_sizer(ckpt, groups_known=True)
    assert sizer.size(np.zeros((1, 8, 8)), "b").scale == 2.0 and sizer.size(np.zeros((1, 8, 8)), "b").diameter == 5.0
    assert image_sizer(ckpt, groups_known=True, scale=3.0).size(np.zeros((1, 8, 8)), "b").scale == 3.0


def test_an_estimate_stays_within_a_bounded_factor_of_the_training_size():
    """A blank image (or one the model has never seen the like of) cannot ask for a runaway resize."""
    import torch

    from weakseg.inference.sizing import MAX_FACTOR, N_BANDS, SizeModel, estimate_diameter

    class Flat:
        def features(self, image):
            return [torch.zeros(1, 4, 2, 2)]

    n = N_BANDS + 4  # the spectrum bands and the 4 channels of the one map
    for predicted, bound in ((1e6, 10.0 * MAX_FACTOR), (1e-6, 10.0 / MAX_FACTOR)):
        model = SizeModel(np.zeros(n), math.log(predicted), np.zeros(n), np.ones(n), 10.0)
        assert estimate_diameter(Flat(), model, np.zeros((1, 50, 60), np.float32)) == pytest.approx(bound)
