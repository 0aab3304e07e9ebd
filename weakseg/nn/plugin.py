"""weakseg.nn: built-in timm backbones (registered through the weakseg entry-point group).

Each backbone is a timm ``features_only`` encoder plus an FPN returning maps at strides 4, 8, 16
and 32 (see :mod:`weakseg.nn.backbone`). ``convnext_small`` with an FPN of 384 channels is the CKS
paper's configuration; the smaller ConvNeXt variants are for tests, demos and CPU runs, and
``timm`` takes any timm model name. Torch and timm are imported only in ``build``.
"""

from __future__ import annotations

from typing import Any

import attrs

from weakseg.hookspecs import hookimpl
from weakseg.validators import positive as _check_positive


def _check_rate(instance: Any, attribute: attrs.Attribute, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{attribute.name} must be in [0, 1), got {value}")


def _build(model_name: str, config: Any, in_channels: int) -> Any:
    from weakseg.nn.backbone import FeaturePyramidBackbone

    return FeaturePyramidBackbone(
        model_name,
        in_channels,
        config.fpn_channels,
        pretrained=config.pretrained,
        drop_path_rate=config.drop_path_rate,
    )


@attrs.frozen(kw_only=True)
class TimmBackboneConfig:
    """Any timm features_only model (by name) + FPN at strides 4, 8, 16, 32."""

    model_name: str
    fpn_channels: int = attrs.field(default=256, validator=_check_positive)
    drop_path_rate: float = attrs.field(default=0.0, validator=_check_rate)
    pretrained: bool = False

    def build(self, in_channels: int) -> Any:
        return _build(self.model_name, self, in_channels)


@attrs.frozen(kw_only=True)
class ConvNextSmallConfig:
    """ConvNeXt-S (patch 4) + FPN 384: the CKS paper's principal backbone."""

    fpn_channels: int = attrs.field(default=384, validator=_check_positive)
    drop_path_rate: float = attrs.field(default=0.4, validator=_check_rate)
    pretrained: bool = False

    def build(self, in_channels: int) -> Any:
        return _build("convnext_small", self, in_channels)


@attrs.frozen(kw_only=True)
class ConvNextBaseConfig:
    """ConvNeXt-B + FPN 512 (the reference's lacss_medium configuration)."""

    fpn_channels: int = attrs.field(default=512, validator=_check_positive)
    drop_path_rate: float = attrs.field(default=0.4, validator=_check_rate)
    pretrained: bool = False

    def build(self, in_channels: int) -> Any:
        return _build("convnext_base", self, in_channels)


@attrs.frozen(kw_only=True)
class ConvNextTinyConfig:
    """ConvNeXt-T + FPN 256 (the reference's v0.3.0 default)."""

    fpn_channels: int = attrs.field(default=256, validator=_check_positive)
    drop_path_rate: float = attrs.field(default=0.2, validator=_check_rate)
    pretrained: bool = False

    def build(self, in_channels: int) -> Any:
        return _build("convnext_tiny", self, in_channels)


@attrs.frozen(kw_only=True)
class ConvNextNanoConfig:
    """ConvNeXt-nano (15 M) + FPN 160, for CPU experiments."""

    fpn_channels: int = attrs.field(default=160, validator=_check_positive)
    drop_path_rate: float = attrs.field(default=0.0, validator=_check_rate)
    pretrained: bool = False

    def build(self, in_channels: int) -> Any:
        return _build("convnext_nano", self, in_channels)


@attrs.frozen(kw_only=True)
class ConvNextPicoConfig:
    """ConvNeXt-pico (9 M) + FPN 128, for CPU experiments."""

    fpn_channels: int = attrs.field(default=128, validator=_check_positive)
    drop_path_rate: float = attrs.field(default=0.0, validator=_check_rate)
    pretrained: bool = False

    def build(self, in_channels: int) -> Any:
        return _build("convnext_pico", self, in_channels)


@attrs.frozen(kw_only=True)
class ConvNextFemtoConfig:
    """ConvNeXt-femto (5 M) + FPN 96, for tests and demos."""

    fpn_channels: int = attrs.field(default=96, validator=_check_positive)
    drop_path_rate: float = attrs.field(default=0.0, validator=_check_rate)
    pretrained: bool = False

    def build(self, in_channels: int) -> Any:
        return _build("convnext_femto", self, in_channels)


@attrs.frozen(kw_only=True)
class ConvNextAttoConfig:
    """ConvNeXt-atto (3.4 M) + FPN 64, the smallest: for tests and demos."""

    fpn_channels: int = attrs.field(default=64, validator=_check_positive)
    drop_path_rate: float = attrs.field(default=0.0, validator=_check_rate)
    pretrained: bool = False

    def build(self, in_channels: int) -> Any:
        return _build("convnext_atto", self, in_channels)


#: registry name -> config class (also used by the tests).
BACKBONES: dict[str, type] = {
    "convnext_small": ConvNextSmallConfig,
    "convnext_base": ConvNextBaseConfig,
    "convnext_tiny": ConvNextTinyConfig,
    "convnext_nano": ConvNextNanoConfig,
    "convnext_pico": ConvNextPicoConfig,
    "convnext_femto": ConvNextFemtoConfig,
    "convnext_atto": ConvNextAttoConfig,
    "timm": TimmBackboneConfig,
}


@hookimpl
def weakseg_register_backbones(registry: Any) -> None:
    for name, config_cls in BACKBONES.items():
        registry.add(name, config_cls)
