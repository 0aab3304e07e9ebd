"""Recipe config of the LACSS principal head (torch-free, so listing plugins stays fast).

Registered as the principal head ``lacss`` in :mod:`weakseg_cks.plugin`. Defaults are the CKS
paper / reference implementation (>= 0.5) values; the ablation switches of the paper (Table II:
single-scale detection, constant cosine position encoding) and the detector's inference settings
are fields.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

from weakseg.validators import non_negative, positive

_STRIDES = (4, 8, 16, 32)


def _check_levels(instance: Any, attribute: attrs.Attribute, value: tuple[int, ...]) -> None:
    if not value:
        raise ValueError("detection_levels must name at least one stride (4, 8, 16 or 32)")
    bad = [v for v in value if v not in _STRIDES]
    if bad:
        raise ValueError(f"detection_levels: strides must be among {_STRIDES}, got {list(bad)}")
    if len(set(value)) != len(value):
        raise ValueError(f"detection_levels: a stride is listed twice in {list(value)}")


def _check_crop(instance: Any, attribute: attrs.Attribute, value: int) -> None:
    if value < 8 or value % 8:
        raise ValueError(
            f"crop_size must be a positive multiple of 8 (the window is crop_size/4 feature pixels, even), got {value}"
        )


@attrs.frozen(kw_only=True)
class LacssHeadConfig:
    """LACSS principal head (CKS paper): shared multi-scale point detector + windowed instance segmentation."""

    #: Strides of the FPN levels the shared detection head runs on; ``[4]`` is the single-scale ablation.
    detection_levels: tuple[int, ...] = attrs.field(default=(4, 8, 16), validator=_check_levels)
    #: Conv + norm + ReLU layers of the detection head, and their width (None: the FPN width).
    detection_layers: int = attrs.field(default=4, validator=non_negative)
    detection_channels: int | None = attrs.field(default=None, validator=positive)
    #: Pixels closer than this (image px) to a point are positives, at every level.
    detection_roi: float = attrs.field(default=8.0, validator=positive)
    focal_gamma: float = attrs.field(default=2.0, validator=non_negative)
    huber_delta: float = attrs.field(default=1.0, validator=positive)
    #: Divide the offset loss by the total pixel count (reference >= 0.4) or by the positives (v0.3.0).
    localization_norm: Literal["pixels", "positives"] = "pixels"
    #: Inference / training-location proposals: distance NMS (px; 0 disables), output cap, score floor.
    nms_distance: float = attrs.field(default=8.0, validator=non_negative)
    max_detections: int = attrs.field(default=2560, validator=positive)
    min_score: float = attrs.field(default=0.2, validator=non_negative)
    #: During training a point is replaced by the best detection closer than this (px).
    max_proposal_offset: float = attrs.field(default=12.0, validator=non_negative)
    #: Segmentation head: conv + norm + ReLU layers and width (None: the FPN width), instance channels.
    segmentation_layers: int = attrs.field(default=3, validator=non_negative)
    segmentation_channels: int | None = attrs.field(default=None, validator=positive)
    instance_channels: int = attrs.field(default=64, validator=positive)
    #: Side of the square mask crop in image pixels (the paper's "maximum segmentation area").
    crop_size: int = attrs.field(default=96, validator=_check_crop)
    #: ``learned`` (MLP from the feature at the location) or ``cosine`` (fixed; the paper's ablation).
    position_encoding: Literal["learned", "cosine"] = "learned"
    encoder_hidden: tuple[int, ...] = (256, 256)
    encoder_dims: tuple[int, int, int] = (8, 8, 4)
    #: Run the convolutions in channels-last memory format (faster on CPU and tensor cores).
    channels_last: bool = True

    def build(self, backbone: Any, in_channels: int) -> Any:
        from weakseg_cks.principal import LacssPrincipal

        return LacssPrincipal(backbone, in_channels, self)
