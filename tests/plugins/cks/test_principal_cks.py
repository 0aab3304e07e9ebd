"""The LACSS principal model: shapes, crop geometry, gradients, ablation switches, parameter count."""

from __future__ import annotations

import pytest
import torch
from principal_helpers import one_thread, tiny_principal  # noqa: F401 (fixture)
from weakseg_cks.segmentation import gather_windows, window_indices

from weakseg.errors import DataError, RecipeError
from weakseg.nn.instances import Instances
from weakseg.recipe import BackboneSpec, HeadSpec, structure

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return tiny_principal(in_channels=2)


@pytest.mark.parametrize("shape", [(70, 45), (33, 97)])
def test_shapes_for_odd_sizes_and_zero_points(model, shape):
    h, w = shape
    image = torch.randn(2, 2, h, w)
    out = model.forward_train(image)
    ph, pw = -(-h // 32) * 32, -(-w // 32) * 32
    assert [tuple(f.shape[-2:]) for f in out.features] == [(ph // s, pw // s) for s in (4, 8, 16, 32)]
    assert [tuple(x.shape) for x in out.det_logits] == [(2, 1, ph // s, pw // s) for s in (4, 8, 16)]
    assert out.image_shape == shape
    points = [torch.tensor([[3.0, 4.0], [h - 1.0, w - 1.0], [h / 2, w / 2]]), torch.zeros(0, 2)]
    loss = model.detection_loss(out, points)
    assert loss.ndim == 0 and torch.isfinite(loss)
    locs = model.training_locations(out, points)
    assert [tuple(p.shape) for p in locs] == [(3, 2), (0, 2)]
    crops = model.segment(out, locs)
    assert tuple(crops.logits.shape) == (3, 96, 96) and crops.batch_index.tolist() == [0, 0, 0]
    assert crops.counts(2) == [3, 0]
    empty = model.segment(out, [torch.zeros(0, 2), torch.zeros(0, 2)])
    assert tuple(empty.logits.shape) == (0, 96, 96) and empty.origins.dtype == torch.long
    preds = model.predict(image)
    assert len(preds) == 2 and all(isinstance(p, Instances) for p in preds)
    for p in preds:
        assert p.image_shape == shape
        assert p.masks.shape[1:] == (96, 96) and len(p.masks) == len(p.scores) == len(p.origins)
        assert ((p.locations >= 0) & (p.locations < torch.tensor(shape))).all()
        assert (p.scores >= model.config.min_score).all() and (p.masks >= 0).all() and (p.masks <= 1).all()
        assert p.to_label_image().shape == shape
    assert model.training  # predict restores the mode


def test_wrong_channel_count_is_a_data_error(model):
    with pytest.raises(DataError, match="2-channel"):
        model.forward_train(torch.randn(1, 3, 32, 32))


def test_window_gather_reads_the_right_feature_pixels_with_zero_padding():
    b, h, w = 2, 10, 13
    idx = torch.arange(b * h * w, dtype=torch.float32).reshape(b, 1, h, w) + 1
    feats = (idx * torch.tensor([1.0, -1.0, 2.0]).view(1, 3, 1, 1)).contiguous(memory_format=torch.channels_last)
    top_left = torch.tensor([[-3, -2], [4, 9], [0, 0], [8, -5]])
    batch_index = torch.tensor([0, 1, 1, 0])
    got = gather_windows(feats, batch_index, top_left, 6)
    padded = torch.nn.functional.pad(feats, (10, 10, 10, 10))
    for m in range(4):
        y0, x0 = top_left[m].tolist()
        want = padded[batch_index[m], :, y0 + 10 : y0 + 16, x0 + 10 : x0 + 16]
        assert torch.equal(got[m], want)
    assert (got[0, :, :3, :] == 0).all() and (got[0, :, 3:, 2:] != 0).all()


def test_crop_origins_follow_the_reference_formula(model):
    out = model.forward_train(torch.randn(1, 2, 64, 128))
    locs = torch.tensor([[3.9, 130.0], [40.2, 17.0], [0.0, 0.0]])
    crops = model.segment(out, [locs])
    cell = torch.stack([(locs[:, 0] // 4).clamp(0, 15), (locs[:, 1] // 4).clamp(0, 31)], 1).long()
    assert torch.equal(crops.origins, 4 * (cell - 12))
    assert torch.equal(window_indices(locs, (16, 32)), cell)
    assert torch.allclose(crops.centers, crops.origins.float() + 48)
    inside = crops.inside_image()
    ys, xs = crops.pixel_indices()
    assert inside[2, :48, :].sum() == 0 and inside[2, 48:, 48:].all()  # crop 2 starts at (-48, -48)
    assert ys[1, 0] == crops.origins[1, 0] and xs[1, -1] == crops.origins[1, 1] + 95


def test_a_crop_pixel_maps_to_the_image_pixel_under_its_feature_pixel(model):
    head = model.segmentor
    window = head.window
    patches = torch.zeros(1, head.upsample.in_channels, window, window)
    k, l_ = 5, 17
    patches[0, :, k, l_] = 1.0
    with torch.no_grad():
        head.upsample.weight.fill_(1.0)
        head.upsample.bias.zero_()
        logits = head.decode(patches, torch.zeros(1, head.encoder_dims[2], window, window))
    # feature pixel (k, l) of the window covers crop pixels 4k .. 4k+3: the response is centred there
    ys, xs = torch.meshgrid(torch.arange(96.0), torch.arange(96.0), indexing="ij")
    mass = logits[0].clamp_min(0)
    centre = torch.stack([(mass * ys).sum(), (mass * xs).sum()]) / mass.sum()
    assert torch.allclose(centre, torch.tensor([4 * k + 1.5, 4 * l_ + 1.5]), atol=1e-4)


@pytest.mark.parametrize("encoding", ["learned", "cosine"])
def test_window_decoding_equals_the_convolutional_form(encoding):
    """relu(window + 1x1 conv(code)) -> ConvTranspose(2, stride 2) -> bilinear, written with the nn modules."""
    head = tiny_principal(position_encoding=encoding).segmentor
    torch.manual_seed(1)
    with torch.no_grad():
        head.upsample.bias.fill_(0.3)
    s = head.window
    patches = torch.randn(3, head.upsample.in_channels, s, s, requires_grad=True)
    code = torch.randn(3, head.encoder_dims[2], s, s) if encoding == "learned" else head.cosine
    got = head.decode(patches, code)
    enc = head.encoder_proj(code if code.dim() == 4 else code[None])
    want = torch.nn.functional.interpolate(
        head.upsample(torch.relu(patches + enc)), size=(head.crop_size,) * 2, mode="bilinear", align_corners=False
    )[:, 0]
    assert torch.allclose(got, want, atol=1e-5)
    g1 = torch.autograd.grad(got.square().sum(), [patches, head.upsample.weight, head.encoder_proj.weight])
    g2 = torch.autograd.grad(want.square().sum(), [patches, head.upsample.weight, head.encoder_proj.weight])
    for a, b in zip(g1, g2, strict=True):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("batch", [1, 3])
def test_channels_last_instance_norm_equals_group_norm(batch):
    from weakseg_cks.detection import ChannelNorm

    torch.manual_seed(batch)
    norm = ChannelNorm(6)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(batch, 6, 5, 7) * 3 + 1
    g = torch.randn(batch, 6, 5, 7)
    a = x.clone().requires_grad_()
    b = x.clone().contiguous(memory_format=torch.channels_last).requires_grad_()
    ya = torch.nn.functional.group_norm(a, 6, norm.weight, norm.bias, 1e-6)
    yb = norm(b)
    assert yb.is_contiguous(memory_format=torch.channels_last) and "InstanceNorm" in type(yb.grad_fn).__name__
    assert torch.allclose(ya, yb, atol=1e-5)
    grads_a = torch.autograd.grad((ya * g).sum(), [a, norm.weight, norm.bias])
    grads_b = torch.autograd.grad((yb * g).sum(), [b, norm.weight, norm.bias])
    for u, v in zip(grads_a, grads_b, strict=True):
        assert torch.allclose(u, v, atol=1e-4)


def test_gradients_flow_where_the_method_says():
    model = tiny_principal()
    image = torch.randn(1, 1, 64, 64)
    out = model.forward_train(image)
    points = [torch.tensor([[20.0, 20.0], [40.0, 44.0]])]
    model.detection_loss(out, points).backward(retain_graph=True)
    assert all(p.grad is None for p in model.segmentor.parameters())
    assert model.detector.score.weight.grad is not None
    model.zero_grad(set_to_none=True)
    locs = model.training_locations(out, points)
    model.segment(out, locs).logits.sum().backward()
    assert all(p.grad is None for p in model.detector.parameters())
    assert model.segmentor.encoder[0].weight.grad.abs().sum() > 0  # the learned position encoding
    assert model.backbone.fpn.lateral[0].weight.grad.abs().sum() > 0


def test_ablation_switches():
    single = tiny_principal(detection_levels=(4,), position_encoding="cosine", crop_size=64, max_detections=3)
    out = single.forward_train(torch.randn(1, 1, 64, 64))
    assert len(out.det_logits) == 1 and out.det_strides == (4,)
    crops = single.segment(out, [torch.tensor([[30.0, 30.0], [10.0, 50.0]])])
    assert tuple(crops.logits.shape) == (2, 64, 64) and not hasattr(single.segmentor, "encoder")
    (pred,) = single.predict(torch.randn(1, 1, 64, 64))
    assert len(pred) <= 3
    floor = tiny_principal(min_score=0.999)
    (pred,) = floor.predict(torch.randn(1, 1, 64, 64))
    assert (pred.scores >= 0.999).all()
    for key, bad in [("crop_size", 90), ("detection_levels", [2]), ("position_encoding", "sine")]:
        with pytest.raises(RecipeError, match=rf"recipe\.model\.head.*{key}"):
            structure({"type": "lacss", key: bad}, HeadSpec, root="recipe.model.head")


def test_bf16_autocast_runs_the_training_api():
    model = tiny_principal()
    image = torch.randn(1, 1, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.forward_train(image)
        points = [torch.tensor([[20.0, 20.0]])]
        loss = model.detection_loss(out, points)
        crops = model.segment(out, model.training_locations(out, points))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    (loss + crops.logits.float().mean()).backward()
    assert torch.isfinite(model.segmentor.upsample.weight.grad).all()


def test_paper_size_parameter_count():
    """ConvNeXt-S + FPN 384 + heads as in the reference: 63.74 M (lacss 0.8.1, measured by jax.eval_shape)."""
    with torch.device("meta"):
        backbone = BackboneSpec.of("convnext_small").build(in_channels=3)
        model = HeadSpec.of("lacss").build(backbone=backbone, in_channels=3)

    def count(module):
        return sum(p.numel() for p in module.parameters())

    assert abs(count(model.backbone) - 53.99e6) < 0.01e6
    assert abs(count(model.detector) - 5.31e6) < 0.01e6
    assert abs(count(model.segmentor) - 4.44e6) < 0.01e6
    assert abs(count(model) - 63.74e6) < 0.01e6


def test_features_are_the_fpn_maps_of_the_padded_image(model):
    """What the size model (weakseg.inference.sizing) reads: one map per stride, as forward_train computes."""
    image = torch.randn(1, 2, 70, 45)
    with torch.no_grad():
        maps = model.features(image)
        out = model.forward_train(image)
    assert [tuple(m.shape[-2:]) for m in maps] == [(96 // s, 64 // s) for s in (4, 8, 16, 32)]
    for got, want in zip(maps, out.features, strict=True):
        torch.testing.assert_close(got, want)
    with pytest.raises(DataError, match="channels"):
        model.features(torch.randn(1, 3, 32, 32))
