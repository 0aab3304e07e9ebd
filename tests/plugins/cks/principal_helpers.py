"""Small LACSS principal models for fast tests."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from weakseg.recipe import BackboneSpec, HeadSpec


def tiny_principal(in_channels: int = 1, fpn: int = 32, **head: Any) -> Any:
    """ConvNeXt-atto + FPN 32 with narrow heads (same structure as the paper-size model)."""
    torch.manual_seed(0)
    backbone = BackboneSpec.of("convnext_atto", fpn_channels=fpn).build(in_channels=in_channels)
    kwargs = {"instance_channels": 16, "encoder_hidden": (32, 32), **head}
    return HeadSpec.of("lacss", **kwargs).build(backbone=backbone, in_channels=in_channels)


@pytest.fixture
def one_thread():
    """Tiny convolutions run faster on one thread, and far faster when other jobs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
