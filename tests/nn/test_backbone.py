"""timm backbone + FPN: strides, channels, the FPN wiring by hand, registry entries and errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from weakseg.errors import RecipeError
from weakseg.nn.backbone import FPN, FeaturePyramidBackbone
from weakseg.nn.plugin import BACKBONES
from weakseg.recipe import BackboneSpec


@pytest.mark.parametrize("in_channels", [1, 2, 3])
def test_convnext_returns_strides_4_to_32_with_fpn_channels(in_channels):
    bb = BackboneSpec.of("convnext_atto", fpn_channels=24).build(in_channels=in_channels)
    feats = bb(torch.randn(2, in_channels, 64, 96))
    assert bb.strides == (4, 8, 16, 32) and bb.out_channels == 24
    assert [tuple(f.shape) for f in feats] == [(2, 24, 64 // s, 96 // s) for s in (4, 8, 16, 32)]
    assert all((f >= 0).all() for f in feats)  # every level ends in a ReLU


def test_fpn_wiring_by_hand():
    torch.manual_seed(0)
    fpn = FPN([3, 5, 7], 4)
    xs = [torch.randn(1, 3, 8, 8), torch.randn(1, 5, 4, 4), torch.randn(1, 7, 2, 2)]
    out = fpn(xs)
    lat = [F.relu(conv(x)) for conv, x in zip(fpn.lateral, xs, strict=True)]
    p2 = lat[2]  # the coarsest level is the projection alone
    p1 = F.relu(fpn.smooth[1](lat[1] + p2.repeat_interleave(2, -1).repeat_interleave(2, -2)))
    p0 = F.relu(fpn.smooth[0](lat[0] + p1.repeat_interleave(2, -1).repeat_interleave(2, -2)))
    for got, want in zip(out, [p0, p1, p2], strict=True):
        assert torch.allclose(got, want, atol=1e-6)
    assert len(fpn.smooth) == 2  # no extra levels, no conv on the coarsest


def test_generic_timm_backbone_picks_the_stride_4_to_32_levels():
    bb = BackboneSpec.of("timm", model_name="resnet18", fpn_channels=16).build(in_channels=2)
    feats = bb(torch.randn(1, 2, 64, 64))
    assert [f.shape[-1] for f in feats] == [16, 8, 4, 2]


def test_unknown_timm_name_suggests_close_matches():
    with pytest.raises(RecipeError, match="convnext_small"):
        FeaturePyramidBackbone("convnext_smal", 1, 16)


def test_backbone_without_stride_4_is_a_recipe_error():
    with pytest.raises(RecipeError, match="strides"):
        FeaturePyramidBackbone("vit_tiny_patch16_224", 3, 16)


def test_every_registered_backbone_builds_on_meta():
    for name in BACKBONES:
        if name == "timm":
            continue
        with torch.device("meta"):
            bb = BackboneSpec.of(name).build(in_channels=1)
        assert bb.out_channels == BackboneSpec.of(name).config.fpn_channels
        assert bb.body.feature_info.reduction() == [4, 8, 16, 32]
