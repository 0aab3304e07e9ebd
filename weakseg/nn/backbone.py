"""Any timm ``features_only`` backbone plus a feature pyramid network, at strides 4, 8, 16 and 32.

The CKS paper (Sec. III-A) uses ConvNeXt with patch size 4 and an FPN that integrates its four
stage outputs *without* adding extra coarser levels (cells are small). The FPN follows the
reference implementation: each level is projected by a 1x1 convolution + ReLU; then, from coarse
to fine, the coarser (already merged) map is nearest-upsampled, added to the finer one and passed
through a 3x3 convolution + ReLU. The coarsest level is the projection alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from weakseg.errors import RecipeError
from weakseg.nn.depthwise import accelerate_depthwise_convs

#: The strides every weakseg backbone returns, finest first.
STRIDES: tuple[int, ...] = (4, 8, 16, 32)


class FPN(nn.Module):
    """Top-down feature pyramid: 1x1 projection + ReLU, nearest-upsample + add, 3x3 conv + ReLU."""

    def __init__(self, in_channels: list[int], out_channels: int) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.smooth = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels[:-1])

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        out = [F.relu(lat(x)) for lat, x in zip(self.lateral, features, strict=True)]
        for k in range(len(out) - 1, 0, -1):
            up = F.interpolate(out[k], size=out[k - 1].shape[-2:], mode="nearest")
            out[k - 1] = F.relu(self.smooth[k - 1](out[k - 1] + up))
        return out


class FeaturePyramidBackbone(nn.Module):
    """A timm ``features_only`` encoder and an :class:`FPN`: image (B, C, H, W) -> 4 maps (strides 4..32).

    Attributes ``out_channels`` (FPN width) and ``strides`` tell a head what it receives. H and W
    should be multiples of 32 (principal models pad their input).
    """

    def __init__(
        self,
        model_name: str,
        in_channels: int,
        fpn_channels: int,
        *,
        pretrained: bool = False,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.model_name = model_name
        self.in_channels = in_channels
        self.body = create_features_model(model_name, in_channels, pretrained=pretrained, drop_path_rate=drop_path_rate)
        # ConvNeXt's depthwise 7x7 convs: the stock CPU backward is 15-40x slower than the forward
        accelerate_depthwise_convs(self.body)
        self.fpn = FPN(list(self.body.feature_info.channels()), fpn_channels)
        self.out_channels = fpn_channels
        self.strides = STRIDES

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        return self.fpn(list(self.body(image)))


def create_features_model(
    model_name: str, in_channels: int, *, pretrained: bool = False, drop_path_rate: float = 0.0
) -> nn.Module:
    """``timm.create_model(features_only=True)`` restricted to the levels at strides 4, 8, 16, 32.

    Raises :class:`RecipeError` (naming ``model.backbone``) for unknown names, backbones without
    those four strides, and pretrained weights that cannot be fetched.
    """
    import timm

    if not timm.is_model(model_name):
        from weakseg.registry import close_matches

        hint = close_matches(model_name, timm.list_models())
        raise RecipeError(
            f"recipe.model.backbone.model_name: timm has no model {model_name!r}{hint} "
            "(see `python -c 'import timm; print(timm.list_models())'`)"
        )
    kwargs = {"drop_path_rate": drop_path_rate} if drop_path_rate else {}
    try:
        probe = timm.create_model(model_name, features_only=True, pretrained=False, in_chans=in_channels, **kwargs)
    except (TypeError, RuntimeError, ValueError, AssertionError) as exc:
        raise RecipeError(
            f"recipe.model.backbone: timm model {model_name!r} cannot be built as a feature extractor "
            f"with {in_channels} input channels: {exc}"
        ) from None
    reductions = list(probe.feature_info.reduction())
    missing = [s for s in STRIDES if s not in reductions]
    if missing:
        raise RecipeError(
            f"recipe.model.backbone.model_name: timm model {model_name!r} has feature strides {reductions}; "
            f"weakseg needs 4, 8, 16 and 32 (missing {missing}). Pick a CNN with a stride-4 level, e.g. convnext_*"
        )
    indices = tuple(reductions.index(s) for s in STRIDES)
    if not pretrained and indices == tuple(range(len(reductions))):
        return probe
    try:
        return timm.create_model(
            model_name, features_only=True, pretrained=pretrained, in_chans=in_channels, out_indices=indices, **kwargs
        )
    except Exception as exc:  # network / hub errors when fetching pretrained weights
        raise RecipeError(
            f"recipe.model.backbone.pretrained: cannot create {model_name!r} with pretrained weights ({exc}). "
            "Set pretrained: false or make the weights available in the timm/HF cache."
        ) from None
